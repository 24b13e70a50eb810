//! A SYN flood for scripts/bench-xdp.sh: sends `COUNT` TCP SYNs from `SRC` to
//! `DST:PORT` out of `IFACE` (run it in the attacker's namespace), each from a new
//! source port, as fast as the kernel takes them: BPF_PROG_TEST_RUN with live frames
//! and a program that returns XDP_TX (kernel 5.18 or later), since this kernel has no
//! pktgen. Prints one line: `sent COUNT in SECONDS s: RATE pps`.
//!
//! Usage: flood IFACE SRC_MAC DST_MAC SRC DST PORT COUNT

#![expect(
    clippy::print_stdout,
    reason = "a command-line tool printing its result"
)]

use std::net::Ipv4Addr;
use std::time::Instant;

use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, include_bytes_aligned};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood.bpf.o"));

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|e| format!("bad MAC {text}: {e}")))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| format!("bad MAC {text}"))
}

/// Ethernet + IPv4 + TCP SYN, checksums filled in.
fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [iface, src_mac, dst_mac, src, dst, port, count] = args.as_slice() else {
        return Err("usage: flood IFACE SRC_MAC DST_MAC SRC DST PORT COUNT".into());
    };
    let ifindex = nix::net::if_::if_nametoindex(iface.as_str())?;
    let data = frame(
        mac(src_mac)?,
        mac(dst_mac)?,
        src.parse()?,
        dst.parse()?,
        port.parse()?,
    );
    let count: u64 = count.parse()?;
    let mut ebpf = Ebpf::load(OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut("flood")
        .ok_or("no program flood")?
        .try_into()?;
    program.load()?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let mut ctx = Vec::with_capacity(24);
    for word in [0, data.len() as u32, 0, ifindex, 0, 0] {
        ctx.extend_from_slice(&word.to_ne_bytes());
    }
    #[expect(clippy::disallowed_methods, reason = "a benchmark tool timing itself")]
    let start = Instant::now();
    let mut left = count;
    while left > 0 {
        let repeat = left.min(1_000_000) as u32;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
        program.test_run(opts)?;
        left -= u64::from(repeat);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {count} in {secs:.3} s: {:.0} pps",
        count as f64 / secs
    );
    Ok(())
}
