// SPDX-License-Identifier: GPL-2.0
/*
 * synwatch's XDP program: runs on every packet an interface receives, before the
 * network stack.
 *
 * 1. Drops packets from banned sources (hash maps ban4/ban6 for addresses, consulted
 *    first, then LPM tries bannet4/bannet6 for ranges; expiry in the value against the
 *    kernel's boot clock), unless the source is on the allowlist (LPM tries
 *    allow4/allow6, which win over a ban). The ban goes by the L3 source, so it
 *    covers every protocol, fragments and malformed packets alike.
 * 2. Judges what it can exactly as user space's decode() (crates/decode) does, and
 *    reports SYN-without-ACK segments and stealth probes (no SYN, ACK or RST) through
 *    the ring buffer `events` (EV_PROBE), when user space observes through XDP.
 *    Judged here: Ethernet with up to 8 VLAN tags (0x8100, 0x88a8, 0x9100; a 9th is
 *    refused, as decode refuses it); IPv4 with IHL >= 5, the payload bounded by the
 *    total length (0: by the frame, as for TSO captures); IPv6 with the payload bounded
 *    by the payload length (0: by the frame) and no extension header; TCP with data
 *    offset >= 5 and the
 *    whole header, options included, inside the IP payload. Anything else is no
 *    attempt and is passed on untouched. A malformed packet (counted as
 *    C_PASSED_UNPARSED) is counted here by the kind decode() gives it (C_BAD_LINK ..
 *    C_BAD_DOFF, added to user space's decode errors): counted, not handed up, so that
 *    a flood of them takes no room in the ring from the probes.
 * 3. Hands up what it cannot judge (EV_RAW records, only with CFG_EMIT): IPv4
 *    fragments (MF set or an offset) of every protocol, since the kernel's reassembly
 *    counts them all (ipfrag_max_dist) and discards a datagram on an overlap anywhere
 *    in it, IPv6 packets with any extension header (Linux refuses
 *    some: a hop-by-hop header not first, a routing header with segments left, options
 *    against its padding rules; decode judges each chain as the kernel does), and IPv6
 *    packets from a multicast or IPv4-mapped source (decode refuses them). The
 *    record carries the packet from its L3 header on (after Ethernet and VLAN tags,
 *    so user space decodes it as raw IP), at most RAW_CAP bytes of it, libpcap's snap
 *    length (C_RAW_TRUNCATED counts the cut ones), with the length the frame held; an
 *    IPv4 fragment that cannot hold part of a TCP header (another protocol's, or at
 *    offset * 8 >= 60) brings only its first FRAG_HEAD bytes, its IP header: user space
 *    needs its place in the datagram, not its data. User space reassembles and judges
 *    them; they are passed (unless banned) and never counted by step 4.
 * 3a. With CFG_SAME (the XDP source), judges SYN retransmissions as the user-space
 *    detector does: a SYN whose 4-tuple the LRU map `attempts` saw within config.same_ns
 *    is counted (C_SAME) and passed, neither sent up nor counted toward a scan. User
 *    space judges the SYNs it reassembles from raw records against the same map and
 *    records their sightings there, so both share one table of last sightings.
 * 4. Detects scans in the kernel when blocking in XDP: each source's distinct
 *    destination ports within the window are kept in an LRU map (at most
 *    max_ports + 1 of them); the packet that takes a source over max_ports bans it
 *    and is dropped, and user space hears of it through the ring buffer. A source is
 *    what the user-space detector counts as one (crates/detect source_of): an IPv4
 *    address; an IPv6 address's network of config.ipv6_prefix bits, banned as a range
 *    in bannet6, unless the LPM trie peraddr6 (prefixes holding a protected address,
 *    NAT64's and link-local's: crates/detect per_address_prefixes)
 *    holds the address, which then counts per address.
 *
 * Per-CPU counters record what it did. The layouts shared with user space are mirrored
 * in crates/xdp/src/layout.rs (checked by _Static_assert here and by tests there); keep
 * the two in step. Needs Linux 5.18 (bpf_xdp_load_bytes).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Ports a source's track can hold: max_ports + 1 <= TRACK_PORTS. */
#define TRACK_PORTS 16
/* decode's MAX_VLAN_TAGS: a 9th tag makes the frame no attempt. */
#define VLAN_TAGS 8
/* Bytes of a raw packet (from its L3 header on) an EV_RAW record carries at most:
 * libpcap's snap length (crates/capture SNAPLEN), so that user space reaches every TCP
 * header libpcap reaches, however long the header chain before it. A record takes only
 * what it copies of the ring. */
#define RAW_CAP 9216
/* Bytes an IPv4 fragment that cannot hold part of a TCP header brings up: its IP header
 * (at most 60 bytes) and a little (layout.rs FRAG_HEAD). */
#define FRAG_HEAD 64
#define SLOTS 64
/* The size of the ring buffer `events` (layout.rs RING_BYTES). */
#define RING_BYTES (1 << 22)

/* config.flags */
#define CFG_EMIT 1      /* report every probe (the XDP source) */
#define CFG_DETECT 2    /* detect scans in the kernel and ban them */
#define CFG_SCOPE_NEW 4 /* a ban drops only new connections and probes */
#define CFG_SAME 8      /* judge SYN retransmissions here (config.same_ns) */

/* event.kind */
#define EV_PROBE 1  /* a SYN without ACK or a stealth probe */
#define EV_BANNED 2 /* this packet took its source over max_ports: banned, dropped */
#define EV_RAW 4    /* a packet the program cannot judge, handed up (struct raw_event) */

/* counters, per interface slot */
enum {
	C_PACKETS,
	C_EVENTS,
	C_RINGBUF_FULL,
	C_DROPPED,
	C_DROPPED_BYTES,
	C_KERNEL_BANS,
	C_PASSED_UNPARSED,
	C_RAW,           /* EV_RAW records sent */
	C_RAW_TRUNCATED, /* ...of which cut at RAW_CAP bytes */
	C_SAME,          /* SYNs judged retransmissions here (CFG_SAME), not sent up */
	/* Malformed packets, by the kind decode() gives them (crates/decode DecodeError): */
	C_BAD_LINK,      /* truncated_link: the Ethernet header or a VLAN tag cut short */
	C_VLAN_TAGS,     /* too_many_vlan_tags */
	C_TRUNCATED_IP,  /* truncated_ip: the IP header (or its options) cut short */
	C_BAD_VERSION,   /* bad_ip_version: the version disagrees with the EtherType */
	C_BAD_IHL,       /* bad_ip_header_length: IHL below 5 */
	C_BAD_TOTAL,     /* bad_ip_total_length: total length below the header's */
	C_TRUNCATED_TCP, /* truncated_tcp: the TCP header (or its options) cut short */
	C_BAD_DOFF,      /* bad_tcp_data_offset: data offset below 5 */
	C_COUNT = 32,    /* the stride of a slot's counters */
};

struct config {
	__u64 window_ns;
	__u64 ban_ns; /* a kernel ban's first length; 0: until removed */
	__u32 max_ports;
	__u32 flags;
	/* --ipv6-prefix: in-kernel detection counts an IPv6 source as its network of this
	 * length (1..127), unless peraddr6 holds it; 0 or 128: per address. */
	__u32 ipv6_prefix;
	__u32 pad;
	/* CFG_SAME: a SYN whose 4-tuple was last seen at most this long ago is a
	 * retransmission (SPEC §2 "same attempt", the detector's window). */
	__u64 same_ns;
};

/* In ban.expires: the ban drops only new connections and probes (the source held an
 * established connection when it was banned); boot-clock ns never reach this bit. */
#define BAN_NEW_ONLY (1ULL << 63)

struct ban {
	__u64 expires; /* boot-clock ns, | BAN_NEW_ONLY; 0: until removed */
	__u64 packets;
	__u64 bytes;
};

struct track {
	__u64 activity;
	__u64 last[TRACK_PORTS]; /* 0: an empty slot */
	__u16 port[TRACK_PORTS];
	__u32 episode;
	__u32 pad;
};

struct event {
	__u64 ts; /* boot-clock ns */
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 flags;
	__u8 family; /* 4 or 6 */
	__u8 kind;
	__u8 prefix; /* EV_BANNED: the length of the network counted and banned (IPv6
		      * counted per prefix), 0: the address */
	__u32 ifindex;
	__u32 pad2;
};

/* An EV_RAW record: `kind` sits where struct event has it, so one byte tells the two
 * apart; only RAW_HEADER + copied bytes of it go into the ring. */
struct raw_event {
	__u64 ts;     /* boot-clock ns */
	__u32 ifindex;
	__u32 len;    /* bytes the frame held from the L3 header on */
	__u16 copied; /* bytes of data[] that follow: min(len, RAW_CAP) */
	__u8 pad[28];
	__u8 kind; /* EV_RAW */
	__u8 pad2;
	__u8 data[RAW_CAP];
};
#define RAW_HEADER 48

_Static_assert(sizeof(struct config) == 40, "struct config: layout.rs Config::to_bytes");
_Static_assert(sizeof(struct ban) == 24, "struct ban: layout.rs BanValue");
_Static_assert(sizeof(struct event) == 56, "struct event: layout.rs EVENT_LEN");
_Static_assert(__builtin_offsetof(struct event, flags) == 44, "layout.rs Event::parse");
_Static_assert(__builtin_offsetof(struct event, family) == 45, "layout.rs Event::parse");
_Static_assert(__builtin_offsetof(struct event, kind) == 46, "layout.rs KIND_AT");
_Static_assert(__builtin_offsetof(struct event, prefix) == 47, "layout.rs Event::parse");
_Static_assert(__builtin_offsetof(struct event, ifindex) == 48, "layout.rs Event::parse");
_Static_assert(__builtin_offsetof(struct raw_event, len) == 12, "layout.rs RawPacket::parse");
_Static_assert(__builtin_offsetof(struct raw_event, copied) == 16, "layout.rs RawPacket::parse");
_Static_assert(__builtin_offsetof(struct raw_event, kind) == 46, "layout.rs KIND_AT");
_Static_assert(__builtin_offsetof(struct raw_event, data) == RAW_HEADER, "layout.rs RAW_HEADER");
_Static_assert(sizeof(struct raw_event) == RAW_HEADER + RAW_CAP, "layout.rs RAW_CAP");
_Static_assert(C_BAD_DOFF < C_COUNT, "layout.rs COUNTERS_PER_SLOT");
_Static_assert(RAW_CAP <= 0xffff, "raw_event.copied holds it");
_Static_assert(FRAG_HEAD >= 60 && FRAG_HEAD <= RAW_CAP, "a fragment's head holds its IP header");
_Static_assert(RAW_HEADER + RAW_CAP + 8 <= RING_BYTES, "a whole record fits the ring");

/* The key of `attempts`: a SYN's 4-tuple (IPv4 addresses in the first 4 bytes of
 * src/dst, the rest zero) and its family. */
struct tuple {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct tuple) == 40, "layout.rs TUPLE_LEN");

struct lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

_Static_assert(sizeof(struct lpm4) == 8, "layout.rs: aya's lpm_trie::Key<[u8; 4]>");
_Static_assert(sizeof(struct lpm6) == 20, "layout.rs: aya's lpm_trie::Key<[u8; 16]>");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* Interface index -> counter slot, indexed by ifindex modulo IFSLOTS: an array lookup,
 * which the verifier inlines, costs next to nothing on the drop path where a hash
 * lookup would not. Each entry names its interface (ifindex 0: free), so that two whose
 * indexes share an entry are told apart: the one that came second is in ifslot_more,
 * looked up only then. An interface in neither counts in slot 0. */
#define IFSLOTS 4096
#define IFSLOTS_MORE 1024
struct ifslot_entry {
	__u32 ifindex;
	__u32 slot;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IFSLOTS);
	__type(key, __u32);
	__type(value, struct ifslot_entry);
} ifslot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, IFSLOTS_MORE);
	__type(key, __u32);
	__type(value, __u32);
} ifslot_more SEC(".maps");

/* The counter slot of interface `ifindex`. */
static __always_inline __u32 slot_of(__u32 ifindex)
{
	__u32 at = ifindex % IFSLOTS;
	struct ifslot_entry *e = bpf_map_lookup_elem(&ifslot, &at);
	if (e && e->ifindex == ifindex)
		return e->slot & (SLOTS - 1);
	__u32 *more = bpf_map_lookup_elem(&ifslot_more, &ifindex);
	return more ? (*more & (SLOTS - 1)) : 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS * C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct ban);
} ban4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[16]);
	__type(value, struct ban);
} ban6 SEC(".maps");

/* Range bans (a network, longest prefix first), with the same value as ban4/ban6;
 * looked up only when the exact-match hash has no running ban for the source. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4);
	__type(value, struct ban);
} bannet4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6);
	__type(value, struct ban);
} bannet6 SEC(".maps");

/* Which tries hold a range (RANGES_V4 for bannet4, RANGES_V6 for bannet6), set by user
 * space after each change: a source no ban holds then costs no trie lookup where no
 * range of its family is banned (an array lookup, which the verifier inlines). */
#define RANGES_V4 1
#define RANGES_V6 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ranges_held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4);
	__type(value, __u8);
} allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6);
	__type(value, __u8);
} allow6 SEC(".maps");

/* The IPv6 networks whose sources in-kernel detection counts per address although
 * config.ipv6_prefix is below 128: those holding this host's or its neighbours'
 * addresses (the user-space detector's rule), and ::ffff:0:0/96. Set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6);
	__type(value, __u8);
} peraddr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct track);
} track4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u8[16]);
	__type(value, struct track);
} track6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RING_BYTES);
} events SEC(".maps");

/* CFG_SAME: each SYN's 4-tuple -> the boot-clock ns of its last sighting, for the SYNs
 * the program judges and (written by user space) those it hands up raw. A SYN whose
 * 4-tuple was seen within config.same_ns is a retransmission: counted (C_SAME), not
 * sent up, not counted toward a scan. As many as the user-space detector's table
 * holds by default (2 x --max-sources). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct tuple);
	__type(value, __u64);
} attempts SEC(".maps");

/* Where a SYN's 4-tuple is put together (kept off the stack, which is near its limit). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tuple);
} tuple_scratch SEC(".maps");

/* Where a raw record is put together (too big for the stack; 9 KiB per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct raw_event);
} raw_scratch SEC(".maps");

static __always_inline void count(__u32 slot, __u32 which, __u64 by)
{
	__u32 key = slot * C_COUNT + which;
	__u64 *c = bpf_map_lookup_elem(&counters, &key);
	if (c)
		*c += by;
}

/* Whether a TCP flags byte is a SYN without ACK or a stealth probe (none of SYN, ACK,
 * RST): the same rule as synwatch_detect::Probe::classify. */
static __always_inline int is_probe(__u8 f)
{
	if (f & 0x02)
		return !(f & 0x10);
	return !(f & (0x10 | 0x04));
}

/* The ban on a source, when one is running now. */
static __always_inline struct ban *banned(void *map, void *key, __u64 now)
{
	struct ban *b = bpf_map_lookup_elem(map, key);
	if (!b)
		return 0;
	__u64 expires = b->expires & ~BAN_NEW_ONLY;
	if (expires == 0 || expires > now)
		return b;
	return 0;
}

/* Records a probe to `dport` against its source's track; returns 1 when it takes the
 * source over max_ports (the first time in an episode). Mirrors the user-space
 * detector: ports last seen longer than a window ago leave the track, only the
 * max_ports + 1 most recently seen are kept, and a source that stays quiet for a
 * window starts a new episode.
 *
 * The walk over the slots is a bpf_loop() callback, which the verifier checks once for
 * any slot, where an open-coded loop made it walk every combination of branches
 * (about three times as many paths for every slot added). */
struct walk {
	struct track *t;
	__u64 now;
	__u64 window;
	__u32 dport;
	__u32 valid;
	__u32 found;
	__u32 free;
	__u32 oldest;
	__u64 oldest_last;
};

static long walk_slot(__u64 index, void *arg)
{
	struct walk *w = arg;
	struct track *t = w->t;
	__u32 i = index & (TRACK_PORTS - 1);
	if (!t)
		return 1;
	__u64 last = t->last[i];
	if (last == 0 || (last < w->now && w->now - last > w->window)) {
		t->last[i] = 0;
		w->free = i;
		return 0;
	}
	w->valid++;
	if (t->port[i] == w->dport) {
		t->last[i] = w->now;
		w->found = 1;
	}
	if (last < w->oldest_last) {
		w->oldest_last = last;
		w->oldest = i;
	}
	return 0;
}

__noinline int crosses(struct track *t, __u32 dport, __u64 now, __u64 window, __u32 keep)
{
	if (!t || keep > TRACK_PORTS || keep == 0)
		return 0;
	if (now - t->activity > window)
		t->episode = 0;
	t->activity = now;

	struct walk w = {
		.t = t,
		.now = now,
		.window = window,
		.dport = dport,
		.free = TRACK_PORTS,
		.oldest_last = ~0ULL,
	};
	bpf_loop(keep, walk_slot, &w, 0);
	if (!w.found) {
		__u32 at = w.free;
		if (at >= TRACK_PORTS) {
			/* Full: the least recently seen port makes room. */
			at = w.oldest;
		} else {
			w.valid++;
		}
		t->port[at & (TRACK_PORTS - 1)] = dport;
		t->last[at & (TRACK_PORTS - 1)] = now;
	}
	if (t->episode || w.valid < keep)
		return 0;
	t->episode = 1;
	return 1;
}


/* Hands the packet up from its L3 header at `l3` on (EV_RAW), at most RAW_CAP bytes of
 * it, read with bpf_xdp_load_bytes() (which reads a multi-buffer frame's fragments too).
 * A ring record costs its 8-byte header plus RAW_HEADER + copied bytes rounded up to 8:
 * bpf_ringbuf_output() takes a variable length where bpf_ringbuf_reserve() would take
 * RAW_CAP for an 8-byte fragment too, so a small packet costs what it did when the cap
 * was 512, and only a long one costs more. */
__noinline int send_raw(struct xdp_md *ctx, __u32 l3, __u32 slot, __u64 now, __u32 cap)
{
	__u32 key = 0;
	struct raw_event *r = bpf_map_lookup_elem(&raw_scratch, &key);
	if (!r)
		return 0;
	/* The whole frame, fragments of a multi-buffer one included. */
	__u64 total = bpf_xdp_get_buff_len(ctx);
	if (total <= l3)
		return 0;
	__u64 len = total - l3;
	/* 64 bits: a 32-bit copy would be checked in a register the helper call does not
	 * use, and the verifier would see a possible zero-sized read. */
	__u64 copied = len < cap ? len : cap;
	if (copied == 0 || copied > RAW_CAP)
		return 0;
	r->ts = now;
	r->ifindex = ctx->ingress_ifindex;
	r->len = len;
	r->copied = copied;
	r->kind = EV_RAW;
	if (bpf_xdp_load_bytes(ctx, l3, r->data, copied))
		return 0;
	if (bpf_ringbuf_output(&events, r, RAW_HEADER + copied, 0)) {
		count(slot, C_RINGBUF_FULL, 1);
		return 0;
	}
	count(slot, C_RAW, 1);
	if (copied < len && cap == RAW_CAP)
		count(slot, C_RAW_TRUNCATED, 1);
	return 1;
}

/* Whether the SYN in `ev` repeats a 4-tuple seen within `same_ns` (a retransmission);
 * records this sighting either way. */
static __always_inline int same_attempt(struct event *ev, __u64 now, __u64 same_ns)
{
	__u32 zero = 0;
	struct tuple *k = bpf_map_lookup_elem(&tuple_scratch, &zero);
	if (!k)
		return 0;
	__builtin_memcpy(k->src, ev->src, 16);
	__builtin_memcpy(k->dst, ev->dst, 16);
	k->sport = ev->sport;
	k->dport = ev->dport;
	k->family = ev->family;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	__u64 *last = bpf_map_lookup_elem(&attempts, k);
	if (!last) {
		bpf_map_update_elem(&attempts, k, &now, BPF_ANY);
		return 0;
	}
	__u64 then = *last;
	*last = now;
	return then <= now && now - then <= same_ns;
}

/* Turns `k` (an address, /128) into its network of `plen` bits (1..127). */
static __always_inline void mask6(struct lpm6 *k, __u32 plen)
{
	__u64 hi, lo;
	__builtin_memcpy(&hi, k->addr, 8);
	__builtin_memcpy(&lo, k->addr + 8, 8);
	hi = bpf_be64_to_cpu(hi);
	lo = bpf_be64_to_cpu(lo);
	if (plen >= 64) {
		lo &= plen == 64 ? 0 : ~0ULL << ((128 - plen) & 63);
	} else {
		lo = 0;
		hi &= ~0ULL << ((64 - plen) & 63);
	}
	hi = bpf_cpu_to_be64(hi);
	lo = bpf_cpu_to_be64(lo);
	__builtin_memcpy(k->addr, &hi, 8);
	__builtin_memcpy(k->addr + 8, &lo, 8);
	k->prefixlen = plen;
}

static __always_inline int is_vlan(__u16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
	       proto == bpf_htons(0x9100);
}

/* The IPv6 extension headers the walk steps over (the fragment header is handed up). */
static __always_inline int is_ipv6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_AH;
}

/* Whether an IPv6 source is one decode refuses: multicast, or IPv4-mapped. */
static __always_inline int is_refused_v6_source(const __u8 *a)
{
	if (a[0] == 0xff)
		return 1;
	for (int i = 0; i < 10; i++)
		if (a[i])
			return 0;
	return a[10] == 0xff && a[11] == 0xff;
}

SEC("xdp")
int synwatch_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 slot = slot_of(ifindex);
	count(slot, C_PACKETS, 1);
	/* A malformed packet's kind (its counter), for the label `malformed`. */
	__u32 bad = C_BAD_LINK;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto malformed;
	__u16 proto = eth->h_proto;
	void *cur = eth + 1;
	for (int i = 0; i < VLAN_TAGS; i++) {
		if (!is_vlan(proto))
			break;
		struct vlan_hdr *vh = cur;
		if ((void *)(vh + 1) > data_end)
			goto malformed;
		proto = vh->proto;
		cur = vh + 1;
	}
	if (is_vlan(proto)) {
		/* more tags than decode() takes */
		bad = C_VLAN_TAGS;
		goto malformed;
	}

	__u32 key = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &key);
	if (!cfg)
		return XDP_PASS;
	__u64 now = bpf_ktime_get_boot_ns();

	struct event ev = {};
	void *ban_map, *net_map, *track_map, *allow_map;
	void *src_key;
	struct lpm4 a4;
	struct lpm6 a6;
	__u8 next;
	/* Offsets from the L3 header: `avail` bytes of it are in the frame, the IP header
	 * says it ends at `lim` (<= avail), the transport header starts at `off`. */
	__u32 l3 = cur - data;
	__u32 avail = data_end - cur;
	__u32 lim, off;
	__u32 ihl = 0, total = 0, frag = 0;
	/* Bytes a raw record may carry (step 3). */
	__u32 raw_cap = RAW_CAP;
	/* Whether a packet handed up raw may start a TCP connection here, whole or once
	 * reassembled: what a ban on new connections only must drop (see raw:). */
	int may_be_syn = 1;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		if ((void *)((__u8 *)cur + 1) > data_end)
			goto no_ip_header;
		if (*(__u8 *)cur >> 4 != 4)
			goto bad_ip_version;
		if ((void *)(ip + 1) > data_end)
			goto no_ip_header;
		ihl = ip->ihl * 4;
		total = bpf_ntohs(ip->tot_len);
		frag = bpf_ntohs(ip->frag_off);
		__builtin_memcpy(ev.src, &ip->saddr, 4);
		__builtin_memcpy(ev.dst, &ip->daddr, 4);
		ev.family = 4;
		ban_map = &ban4;
		net_map = &bannet4;
		track_map = &track4;
		allow_map = &allow4;
		src_key = ev.src;
		a4.prefixlen = 32;
		__builtin_memcpy(a4.addr, &ip->saddr, 4);
		next = ip->protocol;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		if ((void *)((__u8 *)cur + 1) > data_end)
			goto no_ip_header;
		if (*(__u8 *)cur >> 4 != 6)
			goto bad_ip_version;
		if ((void *)(ip6 + 1) > data_end)
			goto no_ip_header;
		total = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(ev.src, &ip6->saddr, 16);
		__builtin_memcpy(ev.dst, &ip6->daddr, 16);
		ev.family = 6;
		ban_map = &ban6;
		net_map = &bannet6;
		track_map = &track6;
		allow_map = &allow6;
		src_key = ev.src;
		a6.prefixlen = 128;
		__builtin_memcpy(a6.addr, &ip6->saddr, 16);
		next = ip6->nexthdr;
	} else {
		return XDP_PASS;
	}

	/* 1. Bans: every protocol from a banned source, unless it is allowlisted. */
	int is_allowed = -1; /* not looked up yet */
	void *allow_key = ev.family == 4 ? (void *)&a4 : (void *)&a6;
	struct ban *b = banned(ban_map, src_key, now);
	if (!b) {
		__u32 *held = bpf_map_lookup_elem(&ranges_held, &key);
		if (held && (*held & (ev.family == 4 ? RANGES_V4 : RANGES_V6)))
			b = banned(net_map, allow_key, now); /* a range holding the source */
	}
	if (b) {
		is_allowed = bpf_map_lookup_elem(allow_map, allow_key) != 0;
		if (!is_allowed && !(cfg->flags & CFG_SCOPE_NEW) && !(b->expires & BAN_NEW_ONLY)) {
			b->packets++; /* per CPU races only undercount */
			b->bytes += len;
			count(slot, C_DROPPED, 1);
			count(slot, C_DROPPED_BYTES, len);
			return XDP_DROP;
		}
	}

	/* 2. Down to TCP, bounded as decode() bounds it. */
	if (ev.family == 4) {
		if (ihl < sizeof(struct iphdr)) {
			bad = C_BAD_IHL;
			goto malformed;
		}
		if (ihl > avail)
			goto no_ip_header;
		if (total == 0) {
			lim = avail; /* TSO: the frame is the only bound */
		} else if (total < ihl) {
			bad = C_BAD_TOTAL;
			goto malformed;
		} else {
			lim = total < avail ? total : avail;
		}
		if (frag & 0x3fff) {
			/* More fragments, or an offset: the kernel reassembles it, and so does
			 * user space, every protocol's; but not one with total length 0, which
			 * ip_rcv refuses. */
			if (total == 0)
				return XDP_PASS;
			if (next != IPPROTO_TCP || (frag & 0x1fff) * 8 >= 60)
				raw_cap = FRAG_HEAD;
			/* Only a TCP datagram's first fragment: without it the kernel
			 * completes nothing, and other protocols' fragments (IKE, large DNS
			 * answers) are no new connection. */
			may_be_syn = next == IPPROTO_TCP && !(frag & 0x1fff);
			goto raw;
		}
		off = ihl;
	} else {
		lim = total == 0 ? avail : (40 + total < avail ? 40 + total : avail);
		/* Any extension header, and a source decode refuses: user space judges. */
		if (next == IPPROTO_FRAGMENT) {
			/* As for IPv4: only a first fragment of what may be TCP (its next
			 * header TCP, or another extension header) may start a connection. */
			__u8 *fh = (__u8 *)cur + sizeof(struct ipv6hdr);
			if ((void *)(fh + 8) <= data_end) {
				__u16 foff = ((__u16)fh[2] << 8 | fh[3]) & 0xfff8;
				may_be_syn = foff == 0 && (fh[0] == IPPROTO_TCP || is_ipv6_ext(fh[0]) ||
							   fh[0] == IPPROTO_FRAGMENT);
			}
			goto raw;
		}
		if (is_ipv6_ext(next) || is_refused_v6_source(ev.src))
			goto raw;
		off = sizeof(struct ipv6hdr);
	}
	if (next != IPPROTO_TCP)
		return XDP_PASS;
	struct tcphdr *tcp = cur + off;
	/* In decode()'s order: the header's first 14 bytes (ports to flags), then the data
	 * offset, then the whole header with its options. */
	if (off + 14 > lim || (void *)((__u8 *)tcp + 14) > data_end)
		goto tcp_cut;
	if (tcp->doff < 5) {
		bad = C_BAD_DOFF;
		goto malformed;
	}
	if (off + tcp->doff * 4 > lim || (void *)(tcp + 1) > data_end)
		goto tcp_cut;
	__u8 flags = ((__u8 *)tcp)[13];
	if (!is_probe(flags))
		return XDP_PASS;
	if (b && !is_allowed) {
		/* --block-scope new, or a ban on a source with a session: only new connections
		 * and probes are dropped. */
		b->packets++; /* per CPU races only undercount */
		b->bytes += len;
		count(slot, C_DROPPED, 1);
		count(slot, C_DROPPED_BYTES, len);
		return XDP_DROP;
	}
	ev.ts = now;
	ev.sport = bpf_ntohs(tcp->source);
	ev.dport = bpf_ntohs(tcp->dest);
	ev.flags = flags;
	ev.ifindex = ifindex;
	ev.kind = (cfg->flags & CFG_EMIT) ? EV_PROBE : 0;

	/* A retransmitted SYN is not a new attempt: not sent up, and (as in the user-space
	 * detector) not counted toward a scan. */
	if ((cfg->flags & CFG_SAME) && (flags & 0x02) && same_attempt(&ev, now, cfg->same_ns)) {
		count(slot, C_SAME, 1);
		return XDP_PASS;
	}

	/* 3. In-kernel detection. */
	int verdict = XDP_PASS;
	if (cfg->flags & CFG_DETECT) {
		if (is_allowed < 0)
			is_allowed = bpf_map_lookup_elem(allow_map, allow_key) != 0;
		/* IPv6 counts per network (--ipv6-prefix), unless the network holds a
		 * protected address: a6 becomes the network, the key of its track and ban. */
		void *track_key = src_key;
		__u32 plen = cfg->ipv6_prefix;
		if (ev.family == 6 && plen > 0 && plen < 128 &&
		    !bpf_map_lookup_elem(&peraddr6, &a6)) {
			mask6(&a6, plen);
			track_key = a6.addr;
			ev.prefix = plen;
		}
		struct track *t = bpf_map_lookup_elem(track_map, track_key);
		if (!t) {
			struct track fresh = {};
			bpf_map_update_elem(track_map, track_key, &fresh, BPF_NOEXIST);
			t = bpf_map_lookup_elem(track_map, track_key);
		}
		if (!is_allowed && crosses(t, ev.dport, now, cfg->window_ns, cfg->max_ports + 1)) {
			struct ban nb = {
				.expires = cfg->ban_ns ? now + cfg->ban_ns : 0,
				.packets = 1,
				.bytes = len,
			};
			if (ev.prefix) {
				/* The network, as a range ban; the trie is looked up from now on. */
				bpf_map_update_elem(&bannet6, &a6, &nb, BPF_ANY);
				__u32 *held = bpf_map_lookup_elem(&ranges_held, &key);
				/* Not atomic: CPUs only ever set this bit here. */
				if (held && !(*held & RANGES_V6))
					*held |= RANGES_V6;
			} else {
				bpf_map_update_elem(ban_map, src_key, &nb, BPF_ANY);
			}
			count(slot, C_KERNEL_BANS, 1);
			count(slot, C_DROPPED, 1);
			count(slot, C_DROPPED_BYTES, len);
			ev.kind |= EV_BANNED;
			verdict = XDP_DROP;
		}
	}
	if (ev.kind) {
		struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(slot, C_RINGBUF_FULL, 1);
		} else {
			__builtin_memcpy(e, &ev, sizeof(ev));
			bpf_ringbuf_submit(e, 0);
			count(slot, C_EVENTS, 1);
		}
	}
	return verdict;

raw:
	/* Not judged here, nor counted toward a scan: user space reassembles and decides.
	 * From a source banned for new connections only (a session holder, or
	 * CFG_SCOPE_NEW), what may start a TCP connection is dropped: whether a first
	 * fragment or a segment behind IPv6 extension headers is a SYN cannot be told
	 * here, and passed, `nmap -f` reached the stack through the ban. A session's own
	 * TCP segments come whole; its other fragments pass. */
	if (b && !is_allowed && may_be_syn) {
		b->packets++; /* per CPU races only undercount */
		b->bytes += len;
		count(slot, C_DROPPED, 1);
		count(slot, C_DROPPED_BYTES, len);
		return XDP_DROP;
	}
	if (cfg->flags & CFG_EMIT)
		send_raw(ctx, l3, slot, now, raw_cap);
	return XDP_PASS;

tcp_cut:
	bad = C_TRUNCATED_TCP;
	goto malformed;
no_ip_header:
	bad = C_TRUNCATED_IP;
	goto malformed;
bad_ip_version:
	bad = C_BAD_VERSION;
malformed:
	/* Counted by its kind, and passed: the stack drops it. */
	count(slot, bad, 1);
	count(slot, C_PASSED_UNPARSED, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
