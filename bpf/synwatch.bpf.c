// SPDX-License-Identifier: GPL-2.0
/*
 * synwatch's XDP program: runs on every packet an interface receives, before the
 * network stack.
 *
 * 1. Drops packets from banned sources (hash maps ban4/ban6, expiry in the value
 *    against the kernel's boot clock), unless the source is on the allowlist (LPM
 *    tries allow4/allow6, which win over a ban).
 * 2. Reports SYN-without-ACK segments and stealth probes (no SYN, ACK or RST) to user
 *    space through the ring buffer `events`, when user space observes through XDP.
 * 3. Detects scans in the kernel when blocking in XDP: each source's distinct
 *    destination ports within the window are kept in an LRU map (at most
 *    max_ports + 1 of them); the packet that takes a source over max_ports bans it
 *    and is dropped, and user space hears of it through the ring buffer.
 *
 * Anything the program cannot parse (3 VLAN tags, more than 6 IPv6 extension headers,
 * truncated headers, non-first fragments) is passed on untouched for the stack and
 * for libpcap. Per-CPU counters record what it did. The layouts shared with user
 * space are mirrored in crates/xdp/src/layout.rs; keep the two in step.
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
#define VLAN_TAGS 2
#define IPV6_EXT_HEADERS 6
#define SLOTS 64

/* config.flags */
#define CFG_EMIT 1      /* report every probe (the XDP source) */
#define CFG_DETECT 2    /* detect scans in the kernel and ban them */
#define CFG_SCOPE_NEW 4 /* a ban drops only new connections and probes */

/* event.kind */
#define EV_PROBE 1  /* a SYN without ACK or a stealth probe */
#define EV_BANNED 2 /* this packet took its source over max_ports: banned, dropped */

/* counters, per interface slot */
enum {
	C_PACKETS,
	C_EVENTS,
	C_RINGBUF_FULL,
	C_DROPPED,
	C_DROPPED_BYTES,
	C_KERNEL_BANS,
	C_PASSED_UNPARSED,
	C_COUNT = 8,
};

struct config {
	__u64 window_ns;
	__u64 ban_ns; /* a kernel ban's first length; 0: until removed */
	__u32 max_ports;
	__u32 flags;
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
	__u8 pad;
	__u32 ifindex;
	__u32 pad2;
};

struct lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

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

/* Interface index -> counter slot + 1 (0: not watched), indexed by ifindex modulo
 * IFSLOTS: an array lookup, which the verifier inlines, costs next to nothing on the
 * drop path where a hash lookup would not. */
#define IFSLOTS 4096
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IFSLOTS);
	__type(key, __u32);
	__type(value, __u32);
} ifslot SEC(".maps");

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
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

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

SEC("xdp")
int synwatch_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 at = ifindex % IFSLOTS;
	__u32 *slotp = bpf_map_lookup_elem(&ifslot, &at);
	__u32 slot = (slotp && *slotp) ? ((*slotp - 1) & (SLOTS - 1)) : 0;
	count(slot, C_PACKETS, 1);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto unparsed;
	__u16 proto = eth->h_proto;
	void *cur = eth + 1;
	for (int i = 0; i < VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vh = cur;
		if ((void *)(vh + 1) > data_end)
			goto unparsed;
		proto = vh->proto;
		cur = vh + 1;
	}

	__u32 key = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &key);
	if (!cfg)
		return XDP_PASS;
	__u64 now = bpf_ktime_get_boot_ns();

	struct event ev = {};
	void *ban_map, *track_map, *allow_map;
	void *src_key;
	struct lpm4 a4;
	struct lpm6 a6;
	__u8 next;
	void *l4;
	int first_fragment = 1;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		if ((void *)(ip + 1) > data_end)
			goto unparsed;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			goto unparsed;
		__builtin_memcpy(ev.src, &ip->saddr, 4);
		__builtin_memcpy(ev.dst, &ip->daddr, 4);
		ev.family = 4;
		ban_map = &ban4;
		track_map = &track4;
		allow_map = &allow4;
		src_key = ev.src;
		a4.prefixlen = 32;
		__builtin_memcpy(a4.addr, &ip->saddr, 4);
		next = ip->protocol;
		if (ip->frag_off & bpf_htons(0x1fff))
			first_fragment = 0;
		l4 = cur + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		if ((void *)(ip6 + 1) > data_end)
			goto unparsed;
		__builtin_memcpy(ev.src, &ip6->saddr, 16);
		__builtin_memcpy(ev.dst, &ip6->daddr, 16);
		ev.family = 6;
		ban_map = &ban6;
		track_map = &track6;
		allow_map = &allow6;
		src_key = ev.src;
		a6.prefixlen = 128;
		__builtin_memcpy(a6.addr, &ip6->saddr, 16);
		next = ip6->nexthdr;
		l4 = ip6 + 1;
	} else {
		return XDP_PASS;
	}

	/* 1. Bans: every protocol from a banned source, unless it is allowlisted. */
	int is_allowed = -1; /* not looked up yet */
	void *allow_key = ev.family == 4 ? (void *)&a4 : (void *)&a6;
	struct ban *b = banned(ban_map, src_key, now);
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

	/* 2. Down to TCP: IPv6 extension headers, a bounded walk. */
	if (ev.family == 6) {
		for (int i = 0; i < IPV6_EXT_HEADERS; i++) {
			if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
			    next == IPPROTO_DSTOPTS) {
				__u8 *h = l4;
				if ((void *)(h + 2) > data_end)
					goto unparsed;
				next = h[0];
				l4 = h + (h[1] + 1) * 8;
			} else if (next == IPPROTO_FRAGMENT) {
				__u8 *h = l4;
				if ((void *)(h + 8) > data_end)
					goto unparsed;
				next = h[0];
				if (((h[2] << 8) | h[3]) & 0xfff8)
					first_fragment = 0;
				l4 = h + 8;
			} else {
				break;
			}
		}
	}
	if (next != IPPROTO_TCP || !first_fragment)
		return XDP_PASS;
	struct tcphdr *tcp = l4;
	if ((void *)(tcp + 1) > data_end)
		goto unparsed;
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

	/* 3. In-kernel detection. */
	int verdict = XDP_PASS;
	if (cfg->flags & CFG_DETECT) {
		if (is_allowed < 0)
			is_allowed = bpf_map_lookup_elem(allow_map, allow_key) != 0;
		struct track *t = bpf_map_lookup_elem(track_map, src_key);
		if (!t) {
			struct track fresh = {};
			bpf_map_update_elem(track_map, src_key, &fresh, BPF_NOEXIST);
			t = bpf_map_lookup_elem(track_map, src_key);
		}
		if (!is_allowed && crosses(t, ev.dport, now, cfg->window_ns, cfg->max_ports + 1)) {
			struct ban nb = {
				.expires = cfg->ban_ns ? now + cfg->ban_ns : 0,
				.packets = 1,
				.bytes = len,
			};
			bpf_map_update_elem(ban_map, src_key, &nb, BPF_ANY);
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

unparsed:
	count(slot, C_PASSED_UNPARSED, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
