#!/usr/bin/env python3
"""Port scans from many spoofed sources, for scripts/bench-bans.sh.

Writes Ethernet frames with a raw AF_PACKET socket on IFACE (a veth end inside a network
namespace the benchmark created): for each of COUNT consecutive IPv4 source addresses
from FIRST_SRC, PORTS TCP SYNs to PORTS distinct destination ports of DST_IP, one source
after the other, so that every source is a port scan. Plain sockets cannot send from
addresses the host does not have, hence raw frames addressed to the victim's MAC.

--rate caps the packets per second (0: as fast as Python can write them). Frames are
built before the clock starts. Prints one JSON object: packets, send errors, wall-clock
start and end (Unix seconds), seconds spent sending.

--pcap FILE writes the same frames (source MAC: IFACE's) to a classic pcap file instead of
sending them, for a faster sender (tcpreplay --topspeed) to send; prints nothing.

usage: bench-bans-send.py IFACE DST_MAC DST_IP FIRST_SRC COUNT [--ports 4] [--rate PPS]
                          [--pcap FILE]
"""

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def words(b):
    return sum(struct.unpack("!%dH" % (len(b) // 2), b))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("iface")
    p.add_argument("dst_mac")
    p.add_argument("dst_ip")
    p.add_argument("first_src")
    p.add_argument("count", type=int)
    p.add_argument("--ports", type=int, default=4)
    p.add_argument("--first-port", type=int, default=1001)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--pcap")
    a = p.parse_args()

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((a.iface, 0))
    src_mac = sock.getsockname()[4]
    dst_mac = bytes.fromhex(a.dst_mac.replace(":", ""))
    dst = int(ipaddress.IPv4Address(a.dst_ip))
    first = int(ipaddress.IPv4Address(a.first_src))
    eth = dst_mac + src_mac + b"\x08\x00"

    # IPv4 (20 bytes) + TCP SYN (20 bytes, no options). Checksums: the part that does not
    # depend on the source address is summed once, the source's two words are added per
    # frame.
    ip_fixed = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, 0, dst)
    ip_base = words(ip_fixed)
    frames_by_port = []
    for k in range(a.ports):
        dport = a.first_port + k
        sport = 40000 + k
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 0x1000 + k, 0, 5 << 4, 0x02, 64240, 0, 0)
        pseudo = struct.pack("!IBBH", dst, 0, 6, 20)  # source added per frame
        frames_by_port.append((tcp, words(pseudo) + words(tcp)))

    frames = []
    for i in range(a.count):
        src = first + i
        sw = (src >> 16) + (src & 0xFFFF)
        ipc = (~fold(ip_base + sw)) & 0xFFFF
        iph = ip_fixed[:10] + struct.pack("!HI", ipc, src) + ip_fixed[16:]
        for tcp, tbase in frames_by_port:
            tc = (~fold(tbase + sw)) & 0xFFFF
            frames.append(eth + iph + tcp[:16] + struct.pack("!H", tc) + tcp[18:])

    if a.pcap:
        with open(a.pcap, "wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i, f in enumerate(frames):
                out.write(struct.pack("<IIII", i // 1000000, i % 1000000, len(f), len(f)))
                out.write(f)
        return

    send = sock.send
    errors = 0
    total = len(frames)
    start = time.time()
    t0 = time.monotonic()
    if a.rate > 0:
        # Bursts of up to 64 frames, each released when its schedule comes.
        burst = 64
        per = 1.0 / a.rate
        for off in range(0, total, burst):
            due = t0 + off * per
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            for f in frames[off:off + burst]:
                try:
                    send(f)
                except OSError:
                    errors += 1
    else:
        for f in frames:
            try:
                send(f)
            except OSError:
                errors += 1
    secs = time.monotonic() - t0
    end = time.time()
    json.dump({"packets": total - errors, "errors": errors, "start": start, "end": end,
               "seconds": secs}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
