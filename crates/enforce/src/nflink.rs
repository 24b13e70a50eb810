//! A read-only look at synwatch's nftables table over nfnetlink, to check every few
//! seconds that nobody flushed or deleted its sets, chains or rules, and to read the drop
//! counters, without the `nft` program: nft 1.0.6 fetches every element of every set
//! before it lists even one chain (1.6 s for `nft -t list chain` with 100k bans, 2.2 s for
//! `nft get element`), while a dump of synwatch's four rules and a one-element lookup
//! take microseconds whatever the number of bans.
//!
//! It also writes, where speed matters: an address ban is a batch of set-element changes
//! sent over the same socket ([`element_batch`], [`Netlink::change_elements`]), which the
//! kernel applies as one transaction in tens of microseconds, where starting `nft` takes
//! milliseconds before it sends the same batch.
//!
//! The requests are built and the answers parsed by pure functions (tested below); the
//! socket is a thin edge. Answers come from outside the process, so parsing works through
//! bounds-checked slices only.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The `inet` family of nftables.
pub const NFPROTO_INET: u8 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// The verdict code of `drop` (`NF_DROP`).
pub const NF_DROP: i32 = 0;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const RECV_BUF_LEN: usize = 64 << 10;
/// Datagrams read for one answer before giving up (synwatch's table has four rules).
const MAX_READS: usize = 1024;
/// Element changes per transaction at most (about 80 bytes each): a request must fit the
/// socket's send buffer (208 KiB by default; a larger one failed with EMSGSIZE, and every
/// batch of more than about 500 bans then took the `nft` path).
const CHANGES_PER_BATCH: usize = 1_000;
/// ipset messages per request at most: each is acknowledged, and the acknowledgements of
/// one request must fit the receive buffer (ENOBUFS past it).
const IPSET_PER_REQUEST: usize = 100;

/// One rule as the kernel holds it: its chain, the sets it looks up, its counters, the
/// verdict codes it sets (`drop` is [`NF_DROP`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its table (a dump asked for one table gives only that table's rules, but kernels
    /// that ignored the filter gave every table's).
    pub table: String,
    pub chain: String,
    pub sets: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub verdicts: Vec<i32>,
}

/// Why a look failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookError {
    /// The table (or set) does not exist.
    Absent,
    /// Anything else, said in words.
    Failed(String),
}

impl fmt::Display for LookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookError::Absent => f.write_str("no such table or set"),
            LookError::Failed(why) => f.write_str(why),
        }
    }
}

fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn put_str(out: &mut Vec<u8>, kind: u16, s: &str) {
    let mut z = s.as_bytes().to_vec();
    z.push(0);
    put_attr(out, kind, &z);
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// The request dumping every rule of `table`.
pub fn rules_request(seq: u32, family: u8, table: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_str(&mut attrs, NFTA_RULE_TABLE, table);
    message(
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        &attrs,
    )
}

/// The request asking whether `addr` is an element of `set`.
pub fn element_request(seq: u32, family: u8, table: &str, set: &str, addr: IpAddr) -> Vec<u8> {
    let key = match addr.to_canonical() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut value = Vec::new();
    put_attr(&mut value, NFTA_DATA_VALUE, &key);
    let mut elem_key = Vec::new();
    put_attr(&mut elem_key, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
    let mut list = Vec::new();
    put_attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem_key);
    let mut attrs = Vec::new();
    put_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
    put_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
    put_attr(
        &mut attrs,
        NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
        &list,
    );
    message(
        NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        &attrs,
    )
}

/// One change to an element of a set, for [`element_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementChange<'a> {
    /// Add (an element already present stays as it is, as `nft add element` does) or
    /// delete.
    pub add: bool,
    pub set: &'a str,
    pub addr: IpAddr,
    /// The element's timeout, when added with one.
    pub timeout_ms: Option<u64>,
}

const NFNL_SUBSYS_IPSET: u16 = 6;
const IPSET_CMD_ADD: u16 = 9;
const IPSET_CMD_DEL: u16 = 10;
/// The ipset protocol version spoken (the kernel accepts 6 and 7).
const IPSET_PROTOCOL: u8 = 7;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const IPSET_ATTR_CIDR: u16 = 3;
const IPSET_ATTR_TIMEOUT: u16 = 6;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// One change to an ipset entry, for [`ipset_messages`]: as `ipset -exist add SET NET
/// timeout T` (an entry already present takes the new timeout; 0 lasts until removed) or
/// `ipset -exist del SET NET` (an absent one is no error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpsetChange<'a> {
    pub add: bool,
    pub set: &'a str,
    pub net: ipnet::IpNet,
    pub timeout_secs: u32,
}

/// The messages applying `changes` (ipset has no transactions: each is applied on its
/// own, as `ipset restore` does), numbered from `seq + 1`, each acknowledged; read the
/// answer with [`parse_acks`] and `seq`.
pub fn ipset_messages(seq: u32, changes: &[IpsetChange<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let (family, addr) = match c.net.addr().to_canonical() {
            IpAddr::V4(a) => (NFPROTO_IPV4, (IPSET_ATTR_IPADDR_IPV4, a.octets().to_vec())),
            IpAddr::V6(a) => (NFPROTO_IPV6, (IPSET_ATTR_IPADDR_IPV6, a.octets().to_vec())),
        };
        let prefix = match (c.net.addr().to_canonical(), c.net) {
            (IpAddr::V4(_), ipnet::IpNet::V6(n)) => n.prefix_len().saturating_sub(96),
            _ => c.net.prefix_len(),
        };
        let mut ip = Vec::new();
        put_attr(&mut ip, addr.0 | NLA_F_NET_BYTEORDER, &addr.1);
        let mut data = Vec::new();
        put_attr(&mut data, IPSET_ATTR_IP | NLA_F_NESTED, &ip);
        put_attr(&mut data, IPSET_ATTR_CIDR, &[prefix]);
        if c.add {
            put_attr(
                &mut data,
                IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER,
                &c.timeout_secs.to_be_bytes(),
            );
        }
        let mut attrs = Vec::new();
        put_attr(&mut attrs, IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
        put_str(&mut attrs, IPSET_ATTR_SETNAME, c.set);
        put_attr(&mut attrs, IPSET_ATTR_DATA | NLA_F_NESTED, &data);
        let cmd = if c.add { IPSET_CMD_ADD } else { IPSET_CMD_DEL };
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        // Without NLM_F_EXCL: the kernel's "-exist".
        let mut m = message(
            0,
            NLM_F_REQUEST | NLM_F_ACK,
            seq.wrapping_add(n),
            family,
            &attrs,
        );
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_IPSET << 8) | cmd).to_ne_bytes());
        out.extend(m);
    }
    out
}

/// A batch marker (begin or end) for the nftables subsystem.
fn batch_marker(kind: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, version 0, the subsystem as resource id (big-endian).
    m.push(0);
    m.push(0);
    m.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    m
}

/// The batch applying `changes` to sets of `table` in one transaction: a begin marker
/// numbered `seq`, each change numbered on from it, an end marker. Only the last change
/// asks for an acknowledgement (the kernel reports a failing change whether asked or
/// not, ahead of it): one per change filled the receive buffer past a few thousand
/// changes. Returns the batch and how many changes it holds.
pub fn element_batch(
    seq: u32,
    family: u8,
    table: &str,
    changes: &[ElementChange<'_>],
) -> (Vec<u8>, usize) {
    let mut out = batch_marker(NFNL_MSG_BATCH_BEGIN, seq);
    for (i, c) in changes.iter().enumerate() {
        let key = match c.addr.to_canonical() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut value = Vec::new();
        put_attr(&mut value, NFTA_DATA_VALUE, &key);
        let mut elem = Vec::new();
        put_attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
        if let Some(ms) = c.timeout_ms.filter(|_| c.add) {
            put_attr(&mut elem, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        let mut list = Vec::new();
        put_attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        put_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, c.set);
        put_attr(
            &mut attrs,
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            &list,
        );
        let (kind, flags) = if c.add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST)
        };
        let flags = if i + 1 == changes.len() {
            flags | NLM_F_ACK
        } else {
            flags
        };
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        out.extend(message(kind, flags, seq.wrapping_add(n), family, &attrs));
    }
    let n = u32::try_from(changes.len() + 1).unwrap_or(u32::MAX);
    out.extend(batch_marker(NFNL_MSG_BATCH_END, seq.wrapping_add(n)));
    (out, changes.len())
}

/// Reads one datagram of the answer to a batch begun at `seq` with `expected` changes:
/// counts their acknowledgements in `acked`, done at the last change's; the first error
/// fails the whole batch (the kernel has then applied none of it), as does an error
/// answering the batch itself (`seq`: the commit failed).
pub fn parse_acks(
    datagram: &[u8],
    seq: u32,
    expected: usize,
    acked: &mut usize,
) -> Result<Progress, LookError> {
    let mut rest = datagram;
    let mut last = false;
    while rest.len() >= NLMSG_HDRLEN {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(rest.get(at..at + 4)?.try_into().ok()?))
        };
        let len = word(0).unwrap_or(0) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let msg_seq = word(8).unwrap_or(0);
        if len < NLMSG_HDRLEN {
            return Err(LookError::Failed(
                "a netlink message shorter than its header".into(),
            ));
        }
        let Some(body) = rest.get(NLMSG_HDRLEN..len) else {
            return Err(LookError::Failed("a truncated netlink message".into()));
        };
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        let index = msg_seq.wrapping_sub(seq) as usize;
        if kind != NLMSG_ERROR || index > expected {
            continue;
        }
        let code = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        if index == 0 {
            if code != 0 {
                return Err(LookError::Failed(format!(
                    "the kernel refused the batch of {expected} changes: {}",
                    Errno::from_raw(-code)
                )));
            }
            continue;
        }
        if code != 0 {
            return Err(LookError::Failed(format!(
                "the kernel refused change {index} of {expected}: {}",
                Errno::from_raw(-code)
            )));
        }
        *acked += 1;
        last |= index == expected;
    }
    Ok(if *acked >= expected || last {
        Progress::Done
    } else {
        Progress::More
    })
}

/// The attributes in `data`: (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let payload = data.get(4..len)?;
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

fn text(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(payload.get(..end).unwrap_or_default()).into_owned()
}

fn be64(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The verdict code an immediate expression's data holds, if it holds a verdict.
fn verdict(data: &[u8]) -> Option<i32> {
    let (_, v) = attrs(data).find(|(k, _)| *k == NFTA_DATA_VERDICT)?;
    let (_, code) = attrs(v).find(|(k, _)| *k == NFTA_VERDICT_CODE)?;
    Some(i32::from_be_bytes(code.get(..4)?.try_into().ok()?))
}

/// One rule from the attributes of a NEWRULE message.
fn rule(data: &[u8]) -> RuleInfo {
    let mut info = RuleInfo::default();
    for (kind, payload) in attrs(data) {
        match kind {
            NFTA_RULE_TABLE => info.table = text(payload),
            NFTA_RULE_CHAIN => info.chain = text(payload),
            NFTA_RULE_EXPRESSIONS => {
                for (_, expr) in attrs(payload).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
                    let mut name = String::new();
                    let mut body: &[u8] = &[];
                    for (k, p) in attrs(expr) {
                        match k {
                            NFTA_EXPR_NAME => name = text(p),
                            NFTA_EXPR_DATA => body = p,
                            _ => {}
                        }
                    }
                    for (k, p) in attrs(body) {
                        match (name.as_str(), k) {
                            ("lookup", NFTA_LOOKUP_SET) => info.sets.push(text(p)),
                            ("counter", NFTA_COUNTER_PACKETS) => info.packets += be64(p),
                            ("counter", NFTA_COUNTER_BYTES) => info.bytes += be64(p),
                            ("immediate", NFTA_IMMEDIATE_DATA) => {
                                info.verdicts.extend(verdict(p));
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Where an answer stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

/// The messages of one datagram: calls `each(message type, payload after nfgenmsg)` for
/// answers to `seq`; `Done` at NLMSG_DONE or an acknowledgement, an error for an error.
fn messages(
    datagram: &[u8],
    seq: u32,
    mut each: impl FnMut(u16, &[u8]),
) -> Result<Progress, LookError> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(rest.get(at..at + 4)?.try_into().ok()?))
        };
        let len = word(0).unwrap_or(0) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let msg_seq = word(8).unwrap_or(0);
        let Some(body) = rest.get(NLMSG_HDRLEN..len.max(NLMSG_HDRLEN)) else {
            return Err(LookError::Failed("a truncated netlink message".into()));
        };
        if len < NLMSG_HDRLEN {
            return Err(LookError::Failed(
                "a netlink message shorter than its header".into(),
            ));
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(Progress::Done),
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                return match code {
                    0 => Ok(Progress::Done),
                    c if -c == Errno::ENOENT as i32 => Err(LookError::Absent),
                    c => Err(LookError::Failed(format!(
                        "the kernel answered {}",
                        Errno::from_raw(-c)
                    ))),
                };
            }
            _ => each(kind & 0xff, body.get(NFGENMSG_LEN..).unwrap_or_default()),
        }
    }
    Ok(Progress::More)
}

/// Adds the rules of one datagram of a rule dump to `out`.
pub fn parse_rules(
    datagram: &[u8],
    seq: u32,
    out: &mut Vec<RuleInfo>,
) -> Result<Progress, LookError> {
    messages(datagram, seq, |kind, body| {
        if kind == NFT_MSG_NEWRULE {
            out.push(rule(body));
        }
    })
}

/// Reads one datagram of an element lookup; `found` is set when the element came back.
pub fn parse_element(datagram: &[u8], seq: u32, found: &mut bool) -> Result<Progress, LookError> {
    messages(datagram, seq, |kind, _| {
        if kind == NFT_MSG_NEWSETELEM {
            *found = true;
        }
    })
}

/// A NETLINK_NETFILTER socket for the looks (needs CAP_NET_ADMIN, as every nftables
/// request does).
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").field("fd", &self.fd).finish()
    }
}

impl Netlink {
    pub fn open() -> Result<Self, LookError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| LookError::Failed(format!("cannot open a netfilter netlink socket: {e}")))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(1000))
            .map_err(|e| LookError::Failed(format!("cannot set a receive timeout: {e}")))?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// Every rule of `table`; [`LookError::Absent`] when there is no such table.
    pub fn rules(&mut self, family: u8, table: &str) -> Result<Vec<RuleInfo>, LookError> {
        let mut out = Vec::new();
        self.ask(
            |seq| rules_request(seq, family, table),
            |d, seq| parse_rules(d, seq, &mut out),
        )?;
        Ok(out)
    }

    /// Whether `addr` is in `set` of `table`; [`LookError::Absent`] for no such set.
    pub fn has_element(
        &mut self,
        family: u8,
        table: &str,
        set: &str,
        addr: IpAddr,
    ) -> Result<bool, LookError> {
        let mut found = false;
        match self.ask(
            |seq| element_request(seq, family, table, set, addr),
            |d, seq| parse_element(d, seq, &mut found),
        ) {
            Ok(()) => Ok(found),
            // ENOENT for the element as for the set: either way the canary is missing,
            // unless the set is gone, which the rule dump tells apart.
            Err(LookError::Absent) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies `changes` to sets of `table`, in transactions (all or none each) of at most
    /// [`CHANGES_PER_BATCH`] changes that never split one address's changes. At the first
    /// refused the rest are not sent; the transactions before it stay applied.
    pub fn change_elements(
        &mut self,
        family: u8,
        table: &str,
        changes: &[ElementChange<'_>],
    ) -> Result<(), LookError> {
        // Transactions of at most CHANGES_PER_BATCH changes, each address's in one.
        let mut rest = changes;
        while !rest.is_empty() {
            let mut end = rest.len().min(CHANGES_PER_BATCH);
            while end < rest.len() && rest[end].addr == rest[end - 1].addr {
                end += 1;
            }
            let (batch, later) = rest.split_at(end);
            rest = later;
            let mut acked = 0;
            let result = self.ask(
                |seq| element_batch(seq, family, table, batch).0,
                |d, seq| parse_acks(d, seq, batch.len(), &mut acked),
            );
            // The batch took sequence numbers up to its end marker: the next request must
            // not take one of them for its own.
            self.seq = self
                .seq
                .wrapping_add(u32::try_from(batch.len() + 1).unwrap_or(u32::MAX));
            result?;
        }
        Ok(())
    }

    /// Applies `changes` to ipsets, each on its own (see [`ipset_messages`]).
    pub fn change_ipsets(&mut self, changes: &[IpsetChange<'_>]) -> Result<(), LookError> {
        for part in changes.chunks(IPSET_PER_REQUEST) {
            let mut acked = 0;
            let result = self.ask(
                |seq| ipset_messages(seq, part),
                |d, seq| parse_acks(d, seq, part.len(), &mut acked),
            );
            self.seq = self
                .seq
                .wrapping_add(u32::try_from(part.len()).unwrap_or(u32::MAX));
            result?;
        }
        Ok(())
    }

    fn ask(
        &mut self,
        request: impl FnOnce(u32) -> Vec<u8>,
        mut parse: impl FnMut(&[u8], u32) -> Result<Progress, LookError>,
    ) -> Result<(), LookError> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(self.seq);
        let fail = |what: &str, e: Errno| LookError::Failed(format!("cannot {what}: {e}"));
        sendto(
            self.fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| fail("send a netfilter netlink request", e))?;
        for _ in 0..MAX_READS {
            let (len, from) = match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // A half-read answer would confuse the next request: start afresh.
                    if let Ok(fresh) = Self::open() {
                        *self = Self {
                            seq: self.seq,
                            ..fresh
                        };
                    }
                    return Err(fail("read the netfilter netlink answer", e));
                }
            };
            if from.is_some_and(|a| a.pid() != 0) {
                continue;
            }
            let data = self.buf.get(..len).unwrap_or_default();
            if parse(data, self.seq)? == Progress::Done {
                return Ok(());
            }
        }
        Err(LookError::Failed("the netlink answer did not end".into()))
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// A NEWRULE message as the kernel sends it for `ip saddr @banned4 counter drop`
    /// (the expressions that matter here: lookup and counter).
    fn newrule(seq: u32, chain: &str, set: &str, packets: u64, bytes: u64) -> Vec<u8> {
        let mut lookup = Vec::new();
        put_str(&mut lookup, NFTA_LOOKUP_SET, set);
        let mut counter = Vec::new();
        put_attr(&mut counter, NFTA_COUNTER_BYTES, &bytes.to_be_bytes());
        put_attr(&mut counter, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        let mut code = Vec::new();
        put_attr(&mut code, NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes());
        let mut verdict = Vec::new();
        put_attr(&mut verdict, NFTA_DATA_VERDICT | NLA_F_NESTED, &code);
        let mut immediate = Vec::new();
        put_attr(&mut immediate, NFTA_IMMEDIATE_DATA | NLA_F_NESTED, &verdict);
        let mut exprs = Vec::new();
        for (name, data) in [
            ("payload", Vec::new()),
            ("lookup", lookup),
            ("counter", counter),
            ("immediate", immediate),
        ] {
            let mut e = Vec::new();
            put_str(&mut e, NFTA_EXPR_NAME, name);
            put_attr(&mut e, NFTA_EXPR_DATA | NLA_F_NESTED, &data);
            put_attr(&mut exprs, NFTA_LIST_ELEM | NLA_F_NESTED, &e);
        }
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_RULE_TABLE, "synwatch");
        put_str(&mut attrs, NFTA_RULE_CHAIN, chain);
        put_attr(&mut attrs, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &exprs);
        message(NFT_MSG_NEWRULE, 2, seq, NFPROTO_INET, &attrs)
    }

    fn control(kind: u16, seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn a_rule_dump_gives_each_rules_chain_sets_and_counters() {
        let mut datagram = newrule(7, "input", "banned4", 3, 180);
        datagram.extend(newrule(6, "input", "stale", 0, 0)); // another request's
        datagram.extend(newrule(7, "forward", "banned6", 1, 80));
        let mut rules = Vec::new();
        assert_eq!(parse_rules(&datagram, 7, &mut rules), Ok(Progress::More));
        assert_eq!(
            rules,
            vec![
                RuleInfo {
                    table: "synwatch".into(),
                    chain: "input".into(),
                    sets: vec!["banned4".into()],
                    packets: 3,
                    bytes: 180,
                    verdicts: vec![NF_DROP],
                },
                RuleInfo {
                    table: "synwatch".into(),
                    chain: "forward".into(),
                    sets: vec!["banned6".into()],
                    packets: 1,
                    bytes: 80,
                    verdicts: vec![NF_DROP],
                },
            ]
        );
        assert_eq!(
            parse_rules(&control(NLMSG_DONE, 7, 0), 7, &mut rules),
            Ok(Progress::Done)
        );
        assert_eq!(
            parse_rules(
                &control(NLMSG_ERROR, 7, -(Errno::ENOENT as i32)),
                7,
                &mut rules
            ),
            Err(LookError::Absent)
        );
        assert!(matches!(
            parse_rules(
                &control(NLMSG_ERROR, 7, -(Errno::EPERM as i32)),
                7,
                &mut rules
            ),
            Err(LookError::Failed(_))
        ));
    }

    #[test]
    fn an_element_lookup_is_found_or_not() {
        let mut found = false;
        let mut answer = message(NFT_MSG_NEWSETELEM, 0, 3, NFPROTO_INET, &[]);
        answer.extend(control(NLMSG_ERROR, 3, 0));
        assert_eq!(parse_element(&answer, 3, &mut found), Ok(Progress::Done));
        assert!(found);
        let mut found = false;
        assert_eq!(
            parse_element(
                &control(NLMSG_ERROR, 3, -(Errno::ENOENT as i32)),
                3,
                &mut found
            ),
            Err(LookError::Absent)
        );
        assert!(!found);
    }

    #[test]
    fn requests_carry_the_table_set_and_key() {
        let r = element_request(
            9,
            NFPROTO_INET,
            "synwatch",
            "banned4",
            "0.0.0.1".parse().unwrap(),
        );
        assert_eq!(
            r.len(),
            u32::from_ne_bytes(r[..4].try_into().unwrap()) as usize
        );
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), (10 << 8) | 13);
        let find = |needle: &[u8]| r.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"synwatch\0") && find(b"banned4\0") && find(&[0, 0, 0, 1]));
        let d = rules_request(1, NFPROTO_INET, "synwatch");
        assert_eq!(u16::from_ne_bytes([d[6], d[7]]), NLM_F_REQUEST | NLM_F_DUMP);
    }

    #[test]
    fn garbage_is_an_error_or_nothing_never_a_panic() {
        let mut rules = Vec::new();
        for bad in [
            &[][..],
            &[1, 2, 3],
            &[8, 0, 0, 0, 6, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            &[255, 255, 0, 0, 6, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        ] {
            let _ = parse_rules(bad, 1, &mut rules);
        }
        // Attributes running past their message.
        let mut m = newrule(1, "input", "banned4", 1, 1);
        m.truncate(m.len() - 9);
        let len = u32::try_from(m.len()).unwrap();
        m[..4].copy_from_slice(&len.to_ne_bytes());
        let _ = parse_rules(&m, 1, &mut rules);
    }

    /// The messages of a batch: (type, flags, seq, attributes after nfgenmsg).
    fn split(batch: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = batch;
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let flags = u16::from_ne_bytes([rest[6], rest[7]]);
            let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            out.push((
                kind,
                flags,
                seq,
                rest[NLMSG_HDRLEN + NFGENMSG_LEN..len].to_vec(),
            ));
            rest = &rest[len.next_multiple_of(4)..];
        }
        out
    }

    #[test]
    fn an_element_batch_is_begin_changes_end_with_keys_and_timeouts() {
        let changes = [
            ElementChange {
                add: true,
                set: "banned4",
                addr: "192.0.2.7".parse().unwrap(),
                timeout_ms: Some(60_000),
            },
            ElementChange {
                add: false,
                set: "banned6_new",
                addr: "2001:db8::7".parse().unwrap(),
                timeout_ms: None,
            },
        ];
        let (batch, expected) = element_batch(40, NFPROTO_INET, "synwatch", &changes);
        assert_eq!(expected, 2);
        let msgs = split(&batch);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(
            msgs.iter().map(|m| m.2).collect::<Vec<_>>(),
            [40, 41, 42, 43]
        );
        // Only the last change asks for an acknowledgement.
        assert_eq!(msgs[1].1, NLM_F_REQUEST | NLM_F_CREATE);
        assert_eq!(msgs[2].1, NLM_F_REQUEST | NLM_F_ACK);
        // The batch markers name the nftables subsystem.
        assert_eq!(&batch[NLMSG_HDRLEN + 2..NLMSG_HDRLEN + 4], &[0, 10]);
        for (m, (set, key, timeout)) in msgs[1..3].iter().zip([
            ("banned4", vec![192, 0, 2, 7], Some(60_000u64)),
            (
                "banned6_new",
                "2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec(),
                None,
            ),
        ]) {
            let top: Vec<(u16, &[u8])> = attrs(&m.3).collect();
            assert_eq!(text(top[0].1), "synwatch");
            assert_eq!(text(top[1].1), set);
            let (_, elem) = attrs(top[2].1).next().unwrap();
            let mut got_key = None;
            let mut got_timeout = None;
            for (k, p) in attrs(elem) {
                match k {
                    NFTA_SET_ELEM_KEY => got_key = Some(attrs(p).next().unwrap().1.to_vec()),
                    NFTA_SET_ELEM_TIMEOUT => got_timeout = Some(be64(p)),
                    _ => panic!("unexpected attribute {k}"),
                }
            }
            assert_eq!(got_key, Some(key));
            assert_eq!(got_timeout, timeout);
        }
    }

    /// An acknowledgement (or error) for `seq`, as the kernel sends it.
    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn a_batch_is_done_at_its_last_acknowledgement_and_fails_at_an_error() {
        let mut acked = 0;
        let mut d = ack(7, 0); // another request's
        d.extend(ack(11, 0));
        assert_eq!(parse_acks(&d, 10, 2, &mut acked), Ok(Progress::More));
        assert_eq!(acked, 1);
        assert_eq!(
            parse_acks(&ack(12, 0), 10, 2, &mut acked),
            Ok(Progress::Done)
        );
        let mut acked = 0;
        let err = parse_acks(&ack(12, -(Errno::ENOENT as i32)), 10, 2, &mut acked).unwrap_err();
        assert!(err.to_string().contains("change 2 of 2"), "{err}");
        // Only the last change asked: its acknowledgement ends the batch; an error for an
        // earlier change comes first and fails it; so does one answering the batch itself.
        let mut acked = 0;
        assert_eq!(
            parse_acks(&ack(12, 0), 10, 2, &mut acked),
            Ok(Progress::Done)
        );
        let mut d = ack(11, -(Errno::EEXIST as i32));
        d.extend(ack(12, 0));
        let err = parse_acks(&d, 10, 2, &mut 0).unwrap_err();
        assert!(err.to_string().contains("change 1 of 2"), "{err}");
        let err = parse_acks(&ack(10, -(Errno::ENOMEM as i32)), 10, 2, &mut 0).unwrap_err();
        assert!(err.to_string().contains("the batch of 2 changes"), "{err}");
        assert!(
            parse_acks(
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                10,
                2,
                &mut acked
            )
            .is_err()
        );
    }

    #[test]
    fn ipset_messages_are_exist_style_adds_and_deletes_with_net_and_timeout() {
        let changes = [
            IpsetChange {
                add: true,
                set: "synwatch4",
                net: "192.0.2.7/32".parse().unwrap(),
                timeout_secs: 600,
            },
            IpsetChange {
                add: false,
                set: "synwatch6_new",
                net: "2001:db8::/48".parse().unwrap(),
                timeout_secs: 0,
            },
        ];
        let msgs = split(&ipset_messages(20, &changes));
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].0, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD);
        assert_eq!(msgs[1].0, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_DEL);
        // No NLM_F_EXCL: an entry already there (or already gone) is no error.
        assert!(msgs.iter().all(|m| m.1 == NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(msgs.iter().map(|m| m.2).collect::<Vec<_>>(), [21, 22]);
        for (m, (set, key, cidr, timeout)) in msgs.iter().zip([
            ("synwatch4", vec![192, 0, 2, 7], 32u8, Some(600u32)),
            (
                "synwatch6_new",
                "2001:db8::"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec(),
                48,
                None,
            ),
        ]) {
            let top: Vec<(u16, &[u8])> = attrs(&m.3).collect();
            assert_eq!(top[0], (IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL][..]));
            assert_eq!(text(top[1].1), set);
            let data: Vec<(u16, &[u8])> = attrs(top[2].1).collect();
            assert_eq!(attrs(data[0].1).next().unwrap().1, &key[..]);
            assert_eq!(data[1], (IPSET_ATTR_CIDR, &[cidr][..]));
            let got = data
                .get(2)
                .map(|d| u32::from_be_bytes(d.1.try_into().unwrap()));
            assert_eq!(got, timeout);
        }
    }
}
