//! Live capture through libpcap: one handle per interface, with a kernel-side BPF filter
//! so that only what the detector needs reaches user space.
//!
//! The filter keeps TCP segments with SYN set (connection attempts, whatever else is set
//! with ACK clear, SYN+RST included as SPEC §2 and the other paths count it; and the
//! SYN-ACKs that answer them: an attempt nobody answered counts toward an address sweep)
//! and segments with none of SYN, ACK, RST (stealth probes), over IPv4 and IPv6. libpcap's
//! `tcp[...]` offsets only cover IPv4, so IPv6 has its own expression on the fixed header;
//! IPv6 packets whose next header is an extension header cannot be matched at a fixed
//! offset and are all passed up for the decoder to walk (they are rare).
//!
//! What the kernel reassembles, synwatch must see, so every IPv4 fragment passes too (of
//! every protocol, at every offset), for user space to reassemble: `nmap -f` cuts the TCP
//! header into 8-byte pieces, and the kernel counts every protocol's fragments toward
//! `ipfrag_max_dist` and discards a datagram on an overlap anywhere in it, which a scanner
//! can use to have junk held for a SYN's IP id thrown away. IPv6 fragments pass with the
//! extension headers.
//!
//! On Ethernet the same tests are repeated behind one and two in-band VLAN tags (802.1Q,
//! 802.1ad, 0x9100), and a frame with three in-band tags or more passes whole, for the
//! decoder (which walks eight, as XDP and replay do). Live, the kernel has already moved
//! the outer 802.1Q/802.1ad tag into packet metadata before the filter runs, so these
//! clauses are what lets frames with two tags or more through; in a capture file every
//! tag is in-band.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use std::os::fd::AsFd;

use ::pcap::{Active, Capture, Linktype, Precision};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::Packet;

/// The kernel-side filter of untagged packets, in libpcap syntax (any link type).
///
/// Order matters: a classic BPF load past the end of the packet rejects it outright, so
/// the fragment test (a first fragment may end inside the TCP header) comes before any
/// load of the TCP flags.
pub const FILTER: &str = "(ip and (ip[6:2] & 0x3fff) != 0) \
     or (tcp[tcpflags] & tcp-syn != 0) \
     or (tcp[tcpflags] & (tcp-syn|tcp-ack|tcp-rst) == 0) \
     or (ip6 and (ip6[6] == 0 or ip6[6] == 43 or ip6[6] == 44 or ip6[6] == 51 or ip6[6] == 60 \
         or (ip6[6] == 6 and ((ip6[53] & 0x02) == 0x02 or (ip6[53] & 0x16) == 0))))";

/// The filter of `synwatch inventory`: every IP packet (the decoder keeps TCP and UDP,
/// whatever extension headers come first).
pub const INVENTORY_FILTER: &str = "ip or ip6";

/// Which traffic a live handle passes to user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Connection attempts, stealth probes and what reassembly needs ([`FILTER`], and on
    /// Ethernet the same behind VLAN tags).
    Attempts,
    /// Every IP packet ([`INVENTORY_FILTER`]).
    Inventory,
}

impl Filter {
    /// The filter text for a link type (a pcap `LINKTYPE_*`/DLT number).
    pub fn text(self, linktype: u32) -> String {
        match self {
            Filter::Inventory => INVENTORY_FILTER.to_owned(),
            // DLT_EN10MB: raw `ether[]` loads exist only on Ethernet.
            // Three in-band tags or more (four or more on the wire, the outer one in
            // metadata): rare enough to pass whole, for the decoder, which walks eight.
            Filter::Attempts if linktype == 1 => format!(
                "({FILTER}) or ({tag0} and {one}) or ({tag0} and {tag1} and {two}) \
                 or ({tag0} and {tag1} and {tag2})",
                tag0 = vlan_tag_at(12),
                tag1 = vlan_tag_at(16),
                tag2 = vlan_tag_at(20),
                one = attempts_at(18),
                two = attempts_at(22),
            ),
            Filter::Attempts => FILTER.to_owned(),
        }
    }

    /// [`Filter::text`], and for attempts, packets coming in from one of the address
    /// blocks `own` (this host's addresses, [`own_blocks`]) left out, IPv4 and IPv6,
    /// fragments too: the kernel drops them as martians, so they are no attempt and
    /// answer nothing; a sweeper that forges a SYN-ACK "from" each address it probed must
    /// not have its attempts taken as answered. Packets coming in from anyone else still
    /// pass: behind destination NAT, or on a gateway watched on one side, a real answer
    /// comes in. The first [`MAX_OWN_IN_FILTER`] blocks are named (the kernel bounds a
    /// filter's size, and each block is a test for every attempt). On Ethernet the same
    /// test is made behind one and two VLAN tags in the frame, not behind more.
    pub fn text_for(self, linktype: u32, own: &[IpNet]) -> String {
        let text = self.text(linktype);
        if self != Filter::Attempts || own.is_empty() {
            return text;
        }
        let own = &own[..own.len().min(MAX_OWN_IN_FILTER)];
        let mut from: Vec<String> = own
            .iter()
            .map(|b| {
                let ip = if b.addr().is_ipv4() { "ip" } else { "ip6" };
                if b.prefix_len() == b.max_prefix_len() {
                    format!("{ip} src host {}", b.addr())
                } else {
                    format!("{ip} src net {}", b.trunc())
                }
            })
            .collect();
        // On Ethernet, behind one or two tags in the frame too (an unknown tag protocol
        // such as 0x9100, or the inner tags of QinQ), which the decoder walks.
        if linktype == 1 {
            let tag0 = vlan_tag_at(12);
            let tag1 = vlan_tag_at(16);
            from.push(format!("({tag0} and ({}))", sources_at(18, own)));
            from.push(format!("({tag0} and {tag1} and ({}))", sources_at(22, own)));
        }
        // The addresses before the packet type: libpcap's own interpreter cannot read
        // the packet type and drops a packet that gets that far, so were this filter
        // ever run there, only packets from the host's own addresses could be lost.
        // ([`LiveCapture::set_own`] sets it in the kernel alone.)
        format!("({text}) and not (({}) and inbound)", from.join(" or "))
    }
}

/// A test that the IP source of an Ethernet frame whose IP header starts at byte `l3`
/// (its ethertype in the two bytes before) is in one of `blocks`, with raw loads.
fn sources_at(l3: usize, blocks: &[IpNet]) -> String {
    let mut tests = Vec::new();
    for b in blocks {
        let (ethertype, src, bits, octets) = match b.trunc().addr() {
            IpAddr::V4(a) => (0x0800, l3 + 12, b.prefix_len(), a.octets().to_vec()),
            IpAddr::V6(a) => (0x86dd, l3 + 8, b.prefix_len(), a.octets().to_vec()),
        };
        let mut words = Vec::new();
        for (i, word) in octets.chunks(4).enumerate() {
            let covered = u32::from(bits).saturating_sub(32 * i as u32).min(32);
            if covered == 0 {
                break;
            }
            let mask = u32::MAX.checked_shl(32 - covered).unwrap_or(0);
            let value = u32::from_be_bytes([word[0], word[1], word[2], word[3]]) & mask;
            let at = src + 4 * i;
            words.push(if covered == 32 {
                format!("ether[{at}:4] == {value:#x}")
            } else {
                format!("ether[{at}:4] & {mask:#x} == {value:#x}")
            });
        }
        if words.is_empty() {
            words.push("1 == 1".to_owned());
        }
        tests.push(format!(
            "(ether[{}:2] == {ethertype:#x} and {})",
            l3 - 2,
            words.join(" and ")
        ));
    }
    tests.join(" or ")
}

/// The fewest address blocks that hold exactly the addresses `own` (a load balancer's
/// 256 addresses of one /24 are one block), as [`Filter::text_for`] takes them.
pub fn own_blocks(own: &[IpAddr]) -> Vec<IpNet> {
    IpNet::aggregate(&own.iter().map(|&a| IpNet::from(a)).collect())
}

/// The most blocks of this host's addresses the filter names (see [`Filter::text_for`]).
pub const MAX_OWN_IN_FILTER: usize = 64;

/// A VLAN tag protocol identifier at byte `at` of an Ethernet frame.
fn vlan_tag_at(at: usize) -> String {
    format!("(ether[{at}:2] == 0x8100 or ether[{at}:2] == 0x88a8 or ether[{at}:2] == 0x9100)")
}

/// [`FILTER`] written with raw loads, for an IP header at byte `l3` of an Ethernet frame
/// (its ethertype in the two bytes before).
fn attempts_at(l3: usize) -> String {
    let et = l3 - 2;
    let flags4 = format!("ether[{l3} + ((ether[{l3}] & 0xf) << 2) + 13]");
    let flags6 = l3 + 53;
    let next6 = l3 + 6;
    format!(
        "((ether[{et}:2] == 0x0800 and \
           ((ether[{l3} + 6:2] & 0x3fff) != 0 \
            or (ether[{l3} + 9] == 6 and \
                (({flags4} & 0x02) == 0x02 or ({flags4} & 0x16) == 0)))) \
         or (ether[{et}:2] == 0x86dd and \
           (ether[{next6}] == 0 or ether[{next6}] == 43 or ether[{next6}] == 44 \
            or ether[{next6}] == 51 or ether[{next6}] == 60 \
            or (ether[{next6}] == 6 and \
                ((ether[{flags6}] & 0x02) == 0x02 or (ether[{flags6}] & 0x16) == 0)))))"
    )
}

/// Bytes kept of each packet. Linux walks an IPv6 header chain as long as the packet
/// (a destination-options header alone may hold 2 KiB of options), so the whole of a
/// jumbo frame is kept; what the filter passes is almost only SYNs and probes, whose
/// frames are short, so this costs nothing on ordinary traffic.
pub const SNAPLEN: i32 = 9216;

/// How a live handle is opened.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Bytes kept of each packet: enough for the link, IP (with options or extension
    /// headers) and TCP headers.
    pub snaplen: i32,
    /// Kernel ring buffer size in bytes.
    pub buffer_bytes: i32,
    /// How long a read waits for packets before returning with none, in milliseconds.
    pub timeout_ms: i32,
    /// The most a packet waits in the kernel's ring before it is handed up, in
    /// milliseconds (the block timer; a flood fills blocks sooner, so batches stay large).
    pub block_ms: i32,
    /// Which traffic passes the kernel-side filter.
    pub filter: Filter,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            snaplen: SNAPLEN,
            buffer_bytes: 16 << 20,
            timeout_ms: 100,
            block_ms: 1,
            filter: Filter::Attempts,
        }
    }
}

/// Counters of one live handle, as the kernel reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Packets that passed the filter.
    pub received: u64,
    /// Packets the kernel dropped because the ring buffer was full.
    pub dropped: u64,
    /// Packets the interface (driver) dropped, where it says.
    pub if_dropped: u64,
}

/// Why a live capture failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Opening packet capture is not allowed: CAP_NET_RAW is missing.
    #[error(
        "not allowed to capture on {iface}: {message} (needs CAP_NET_RAW: run as root, or \
         `sudo setcap cap_net_raw,cap_net_admin+ep $(command -v synwatch)`, or in a container \
         add --cap-add NET_RAW)"
    )]
    Permission { iface: String, message: String },
    /// The interface does not exist or cannot be captured on.
    #[error("cannot capture on {iface}: {source}")]
    Open {
        iface: String,
        #[source]
        source: pcap::Error,
    },
    /// The BPF filter could not be compiled or installed.
    #[error("cannot install the capture filter on {iface}: {source}")]
    Filter {
        iface: String,
        #[source]
        source: pcap::Error,
    },
    /// Reading from or querying the handle failed.
    #[error("capture on {iface} failed: {source}")]
    Read {
        iface: String,
        #[source]
        source: pcap::Error,
    },
}

/// A live capture on one interface.
pub struct LiveCapture {
    cap: Capture<Active>,
    iface: String,
    linktype: u32,
    timeout_ms: i32,
    filter: Filter,
    /// libpcap may hold packets already taken from the kernel ring: read until it says
    /// there are none before polling the descriptor again.
    pending: bool,
}

impl fmt::Debug for LiveCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCapture")
            .field("iface", &self.iface)
            .field("linktype", &self.linktype)
            .finish_non_exhaustive()
    }
}

fn is_permission(e: &pcap::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("permitted") || text.contains("permission")
}

impl LiveCapture {
    /// Opens `iface` with the filter installed and nanosecond kernel timestamps.
    pub fn open(iface: &str, opts: &LiveOptions) -> Result<Self, LiveError> {
        let open_err = |source: pcap::Error| {
            if is_permission(&source) {
                LiveError::Permission {
                    iface: iface.to_owned(),
                    message: source.to_string(),
                }
            } else {
                LiveError::Open {
                    iface: iface.to_owned(),
                    source,
                }
            }
        };
        let mut cap = Capture::from_device(iface)
            .map_err(open_err)?
            .snaplen(opts.snaplen)
            .buffer_size(opts.buffer_bytes)
            // libpcap's timeout is the kernel's block timer (TPACKET_V3): a block of
            // packets is handed up when full or when the timer runs out, so this bounds
            // how late a probe on a quiet link reaches the detector (and a scanner its
            // ban). Our own poll waits `timeout_ms`.
            .timeout(opts.block_ms)
            .precision(Precision::Nano)
            .promisc(false)
            .open()
            .map_err(open_err)?
            // Non-blocking, with our own poll: with TPACKET_V3 libpcap's read timeout
            // does not fire while no packet arrives, so a quiet interface would block a
            // blocking read (and shutdown) forever.
            .setnonblock()
            .map_err(open_err)?;
        let linktype = u32::try_from(cap.get_datalink().0).unwrap_or(u32::MAX);
        // Without the host's addresses ([`LiveCapture::set_own`] names them): libpcap
        // filters the packets already in its ring again in user space, where the packet
        // type (`inbound`) cannot be read.
        cap.filter(&opts.filter.text(linktype), true)
            .map_err(|source| LiveError::Filter {
                iface: iface.to_owned(),
                source,
            })?;
        Ok(Self {
            cap,
            iface: iface.to_owned(),
            linktype,
            timeout_ms: opts.timeout_ms,
            filter: opts.filter,
            pending: false,
        })
    }

    /// Sets the filter again for this host's addresses `own` ([`Filter::text_for`]),
    /// when they changed: in the kernel only, which swaps the two filters between one
    /// packet and the next. Set through libpcap, the packets its ring already held would
    /// be filtered again in user space, where the packet type cannot be read: the
    /// host's own outgoing packets (its SYN-ACKs among them) would be lost each time.
    pub fn set_own(&mut self, own: &[IpNet]) -> Result<(), pcap::Error> {
        let program = self
            .cap
            .compile(&self.filter.text_for(self.linktype, own), true)?;
        let mut code = kernel_program(&program, self.linktype).map_err(pcap::Error::PcapError)?;
        attach_in_kernel(self.cap.as_fd(), &mut code)
            .map_err(|e| pcap::Error::PcapError(format!("SO_ATTACH_FILTER: {e}")))
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The pcap `LINKTYPE_*` of this interface.
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// The next packet, or `None` when the read timeout passed without one.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, LiveError> {
        if !self.wait()? {
            return Ok(None);
        }
        match self.cap.next_packet() {
            Ok(p) => Ok(Some(packet(self.linktype, &p))),
            Err(::pcap::Error::TimeoutExpired) => {
                self.pending = false;
                Ok(None)
            }
            Err(source) => Err(LiveError::Read {
                iface: self.iface.clone(),
                source,
            }),
        }
    }

    /// Hands up to `max` waiting packets to `each`, as libpcap takes them from the
    /// kernel's ring, in one call (not one call a packet, as [`LiveCapture::next_packet`]);
    /// returns how many, 0 when the read timeout passed without any.
    pub fn dispatch(
        &mut self,
        max: usize,
        mut each: impl FnMut(Packet<'_>),
    ) -> Result<usize, LiveError> {
        if !self.wait()? {
            return Ok(0);
        }
        let linktype = self.linktype;
        let handed = self
            .cap
            .dispatch(Some(max.max(1)), |p| each(packet(linktype, &p)));
        match handed {
            Ok(0) => {
                self.pending = false;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(source) => Err(LiveError::Read {
                iface: self.iface.clone(),
                source,
            }),
        }
    }

    /// Whether libpcap may hold packets: it said so at the last read, or the descriptor
    /// became readable within the read timeout (waited for here, as the next
    /// [`LiveCapture::dispatch`] would, which then reads at once: the caller can act on
    /// what came meanwhile before the packets are read).
    pub fn wait(&mut self) -> Result<bool, LiveError> {
        if !self.pending {
            self.pending = self.poll_readable()?;
        }
        Ok(self.pending)
    }

    /// Polls the descriptor for up to the read timeout.
    fn poll_readable(&mut self) -> Result<bool, LiveError> {
        let fd = self.cap.as_fd();
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(self.timeout_ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(LiveError::Read {
                iface: self.iface.clone(),
                source: ::pcap::Error::IoError(std::io::Error::from(e).kind()),
            }),
        }
    }

    /// The kernel's counters for this handle.
    pub fn stats(&mut self) -> Result<LiveStats, LiveError> {
        let s = self.cap.stats().map_err(|source| LiveError::Read {
            iface: self.iface.clone(),
            source,
        })?;
        Ok(LiveStats {
            received: u64::from(s.received),
            dropped: u64::from(s.dropped),
            if_dropped: u64::from(s.if_dropped),
        })
    }
}

/// `program` as the kernel runs it on a capture socket whose link type is `linktype`:
/// classic BPF, the kernel's `sock_filter`, read through libpcap's printed form ("code jt
/// jf k") rather than by assuming the crate's layout. A cooked capture (`LINKTYPE_LINUX_SLL`
/// and `_SLL2`: PPP and other links libpcap reads without their own header) hands the
/// kernel's filter a packet that starts at the network header, the cooked header being
/// libpcap's own: its loads are moved as libpcap moves them (`fix_offset` in
/// pcap-linux.c), the header's fields to the kernel's ancillary loads.
fn kernel_program(
    program: &pcap::BpfProgram,
    linktype: u32,
) -> Result<Vec<nix::libc::sock_filter>, String> {
    let bad = |what: &str| format!("cannot read libpcap's program ({what})");
    let mut code = Vec::new();
    for insn in program.get_instructions() {
        let text = insn.to_string();
        let mut fields = text.split(' ').map(str::parse::<u32>);
        let mut next = || fields.next().and_then(Result::ok);
        let (Some(op), Some(jt), Some(jf), Some(k)) = (next(), next(), next(), next()) else {
            return Err(bad(&text));
        };
        let mut insn = nix::libc::sock_filter {
            code: u16::try_from(op).map_err(|_| bad(&text))?,
            jt: u8::try_from(jt).map_err(|_| bad(&text))?,
            jf: u8::try_from(jf).map_err(|_| bad(&text))?,
            k,
        };
        if matches!(linktype, 113 | 276) && loads_packet(insn.code) {
            insn.k = cooked_offset(linktype, insn.k)
                .ok_or_else(|| format!("a load of byte {k} of the cooked header"))?;
        }
        code.push(insn);
    }
    Ok(code)
}

/// Whether a classic BPF instruction loads from the packet (`BPF_LD`/`BPF_LDX` with an
/// absolute, indirect or IP-header-length address).
fn loads_packet(code: u16) -> bool {
    let class = code & 0x07;
    let mode = code & 0xe0;
    matches!(class, 0x00 | 0x01) && matches!(mode, 0x20 | 0x40 | 0xa0)
}

/// Where the kernel finds byte `k` of a cooked packet: past the cooked header, that much
/// less; its protocol, packet type and interface fields, in the ancillary data; `None`
/// for any other byte of it.
fn cooked_offset(linktype: u32, k: u32) -> Option<u32> {
    const AD: u32 = 0u32.wrapping_sub(0x1000); // SKF_AD_OFF
    const PROTOCOL: u32 = AD;
    const PKTTYPE: u32 = AD + 4;
    const IFINDEX: u32 = AD + 8;
    if k >= AD {
        return Some(k);
    }
    let (len, fields): (u32, &[(u32, u32)]) = if linktype == 276 {
        (20, &[(0, PROTOCOL), (4, IFINDEX), (10, PKTTYPE)])
    } else {
        (16, &[(0, PKTTYPE), (14, PROTOCOL)])
    };
    if k >= len {
        return Some(k - len);
    }
    fields.iter().find(|(at, _)| *at == k).map(|&(_, to)| to)
}

/// Attaches `code` to the capture socket `fd` as its kernel filter (`SO_ATTACH_FILTER`),
/// leaving libpcap's own state alone.
fn attach_in_kernel(
    fd: std::os::fd::BorrowedFd<'_>,
    code: &mut [nix::libc::sock_filter],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let prog = nix::libc::sock_fprog {
        len: u16::try_from(code.len()).map_err(std::io::Error::other)?,
        filter: code.as_mut_ptr(),
    };
    let size = nix::libc::socklen_t::try_from(std::mem::size_of::<nix::libc::sock_fprog>())
        .map_err(std::io::Error::other)?;
    #[allow(
        unsafe_code,
        reason = "setsockopt with a pointer to a sock_fprog that outlives the call"
    )]
    // SAFETY: `prog` points at `code.len()` initialised `sock_filter`s, both alive for
    // the call; the kernel copies the program before returning.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            size,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A packet libpcap handed up, on a link of type `linktype`. With nanosecond precision
/// libpcap puts nanoseconds in `tv_usec`.
#[inline]
fn packet<'a>(linktype: u32, p: &::pcap::Packet<'a>) -> Packet<'a> {
    let ts = &p.header.ts;
    Packet {
        ts_nanos: ts
            .tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_usec),
        linktype,
        iface: 0,
        data: p.data,
        orig_len: p.header.len,
    }
}

/// Compiles the [`Filter::Attempts`] filter for a link type without opening any
/// interface (no privileges needed), so that what it passes can be checked on built
/// packets.
pub fn compiled_filter(linktype: u32) -> Result<pcap::BpfProgram, pcap::Error> {
    compiled_filter_for(linktype, &[])
}

/// [`compiled_filter`] naming this host's addresses `own` ([`Filter::text_for`]).
pub fn compiled_filter_for(linktype: u32, own: &[IpAddr]) -> Result<pcap::BpfProgram, pcap::Error> {
    let link = i32::try_from(linktype).unwrap_or(i32::MAX);
    let dead = Capture::dead(Linktype(link))?;
    dead.compile(&Filter::Attempts.text_for(linktype, &own_blocks(own)), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_every_live_link_type() {
        // DLT numbers, as libpcap reports a live interface (12 is DLT_RAW, e.g. tun),
        // with this host's addresses named too (as many as the filter takes).
        let own: Vec<IpAddr> = (0..MAX_OWN_IN_FILTER as u32)
            .map(|i| {
                if i % 2 == 0 {
                    IpAddr::from((0x0a00_0000 + i).to_be_bytes())
                } else {
                    IpAddr::from(((0xfe80_u128 << 112) + u128::from(i)).to_be_bytes())
                }
            })
            .collect();
        for linktype in [1u32, 113, 276, 12] {
            compiled_filter(linktype).unwrap_or_else(|e| panic!("linktype {linktype}: {e}"));
            compiled_filter_for(linktype, &own)
                .unwrap_or_else(|e| panic!("linktype {linktype}, own addresses: {e}"));
        }
        // More blocks than that: the first ones are named (the kernel bounds a
        // filter's size).
        let many: Vec<IpAddr> = (0..=MAX_OWN_IN_FILTER as u32)
            .map(|i| IpAddr::from((0x0a00_0000 + 2 * i).to_be_bytes()))
            .collect();
        let text = Filter::Attempts.text_for(1, &own_blocks(&many));
        assert!(text.contains("ip src host 10.0.0.0 or"), "{text}");
        assert!(text.contains(&format!("ip src host {} or", many[MAX_OWN_IN_FILTER - 1])));
        assert!(!text.contains(&many[MAX_OWN_IN_FILTER].to_string()));
        // Behind one or two tags in the frame, the same blocks as raw loads.
        assert!(
            text.contains("ether[16:2] == 0x800 and ether[30:4] == 0xa000000"),
            "{text}"
        );
        assert!(
            text.contains("ether[20:2] == 0x800 and ether[34:4] == 0xa000000"),
            "{text}"
        );
        assert!(!text.contains("0xa000080"), "{text}");
        // Addresses next to each other are named as the blocks that hold exactly them:
        // a load balancer's whole /24, and three of its neighbours.
        let vips: Vec<IpAddr> = (0..259u32)
            .map(|i| IpAddr::from((0x0a4d_0100 + i).to_be_bytes()))
            .collect();
        let text = Filter::Attempts.text_for(1, &own_blocks(&vips));
        assert!(
            text.contains(
                "ip src net 10.77.1.0/24 or ip src net 10.77.2.0/31 or ip src host 10.77.2.2"
            ),
            "{text}"
        );
        compiled_filter_for(1, &vips).expect("compile blocks");
        // IPv6 addresses make code of their own (libpcap's `tcp[]` tests, IPv4 only,
        // would have been optimised away for them).
        let v6_only: Vec<IpAddr> = own.iter().copied().filter(IpAddr::is_ipv6).collect();
        let size = |own: &[IpAddr]| {
            compiled_filter_for(1, own)
                .expect("compile")
                .get_instructions()
                .len()
        };
        assert!(
            size(&v6_only) > size(&[]) + v6_only.len(),
            "{}",
            size(&v6_only)
        );
        assert_eq!(
            Filter::Inventory.text_for(1, &own_blocks(&own)),
            Filter::Inventory.text(1)
        );
    }

    #[test]
    fn cooked_loads_move_as_libpcap_moves_them() {
        let ad = 0u32.wrapping_sub(0x1000);
        // SLL: packet type at 0, protocol at 14, 16 bytes of header.
        assert_eq!(cooked_offset(113, 0), Some(ad + 4));
        assert_eq!(cooked_offset(113, 14), Some(ad));
        assert_eq!(cooked_offset(113, 16 + 12), Some(12));
        assert_eq!(cooked_offset(113, 6), None);
        // SLL2: protocol at 0, interface at 4, packet type at 10, 20 bytes of header.
        assert_eq!(cooked_offset(276, 0), Some(ad));
        assert_eq!(cooked_offset(276, 4), Some(ad + 8));
        assert_eq!(cooked_offset(276, 10), Some(ad + 4));
        assert_eq!(cooked_offset(276, 20 + 9), Some(9));
        assert_eq!(cooked_offset(276, 14), None);
        // Ancillary loads stay as they are.
        assert_eq!(cooked_offset(113, ad + 4), Some(ad + 4));
        // Only loads from the packet are moved: ld [k], ldx 4*([k]&0xf), ld [x+k]; not
        // ld #k, st, or jumps.
        assert!(loads_packet(0x30) && loads_packet(0xb1) && loads_packet(0x50));
        assert!(!loads_packet(0x00) && !loads_packet(0x02) && !loads_packet(0x15));
    }
}
