#!/usr/bin/env bash
# Range bans against address bans, in the kernel primitives synwatch drives (the texts
# nftables.rs and iptables.rs write), for docs/PERFORMANCE.md. Two throwaway network
# namespaces joined by a veth pair: a victim (10.198.0.1) and an attacker (10.198.0.2).
# For each case:
#   nft-addr    N addresses in synwatch's address set (`flags timeout`, a hash);
#   nft-range   N /24s in its range set (`flags interval,timeout`), as synwatch adds
#               ranges the kernel does not hold (`add element` only);
#   nft-renew   the same N /24s added as renewals are (add, delete, add with the
#               timeout: what every address ban takes), for reference;
#   nft-ival    N addresses in an interval set, for reference (why addresses are not
#               kept in the range sets);
#   ipset-ip    N addresses in a hash:ip set (before range bans), for reference;
#   ipset-addr  N addresses in synwatch's hash:net set;
#   ipset-range N /24s in the same hash:net set (one prefix length);
# it times one `nft -f` / `ipset restore -exist` batch of the N bans (each with a 3600 s
# timeout), then measures 64-byte UDP packets/s received from the unbanned attacker
# (iperf3 -u -l 64 -b 0, RUN_SECONDS s, ROUNDS rounds, cases alternating) with the drop rule
# in place, beside a case with no rules (`none`). XDP's figures come from
# `cargo run --release -p synwatch-xdp --example ban_cost` (BPF_PROG_TEST_RUN).
#
# usage: [N=100000] [RUN_SECONDS=5] [ROUNDS=3] [CASES="none nft-addr ..."]
#        scripts/bench-ranges.sh   (nft-ival and nft-renew are not run by default:
#        quadratic in N)
# Needs root and: iproute2, nftables, iptables, ipset, iperf3, python3.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"

n=${N:-100000}
# (Not SECONDS: bash's own variable.)
secs=${RUN_SECONDS:-5}
rounds=${ROUNDS:-3}
for tool in ip nft iptables ipset iperf3 python3; do
    command -v "$tool" >/dev/null || { echo "bench-ranges: $tool is missing" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-ranges: needs root (network namespaces)" >&2; exit 2; }

tag="swr$$"
victim="${tag}v"
attacker="${tag}a"
work=$(mktemp -d /tmp/swr-files.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$victim" 2>/dev/null || true
    ip netns del "$attacker" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
lab_pair "$victim" "$attacker" "${tag}x" "${tag}y" 10.198.0.1/24 10.198.0.2/24
in_victim() { ip netns exec "$victim" "$@"; }
ip netns exec "$victim" iperf3 -s -B 10.198.0.1 -p 5201 >/dev/null 2>&1 &
pids+=("$!")
sleep 0.5

# The texts: the set (nft) or sets (ipset) and one batch of N bans, as synwatch writes
# them (add, delete and add again with the timeout, for nft).
python3 - "$n" "$work" <<'EOF'
import ipaddress, sys
n, work = int(sys.argv[1]), sys.argv[2]
base = int(ipaddress.IPv4Address("16.0.0.0"))
addrs = [str(ipaddress.IPv4Address(base + i)) for i in range(n)]
ranges = ["%s/24" % ipaddress.IPv4Address(base + (i << 8)) for i in range(n)]
def nft_setup(flags):
    return ("add table inet synwatch\ndelete table inet synwatch\ntable inet synwatch {\n"
            "\tset banned4 {\n\t\ttype ipv4_addr\n\t\tflags %s\n\t\tcounter\n\t}\n"
            "\tchain input {\n\t\ttype filter hook input priority filter - 10; policy accept;\n"
            "\t\tip saddr @banned4 counter drop\n\t}\n}\n" % flags)
def nft_add(elems):
    lines = []
    for verb, timeout in (("add", False), ("delete", False), ("add", True)):
        for c in range(0, len(elems), 1000):
            body = ", ".join(e + " timeout 3600s" if timeout else e for e in elems[c:c + 1000])
            lines.append("%s element inet synwatch banned4 { %s }" % (verb, body))
    return "\n".join(lines) + "\n"
open(work + "/nft-addr.setup", "w").write(nft_setup("timeout"))
open(work + "/nft-range.setup", "w").write(nft_setup("interval,timeout"))
open(work + "/nft-ival.setup", "w").write(nft_setup("interval,timeout"))
open(work + "/nft-addr.add", "w").write(nft_add(addrs))
open(work + "/nft-range.add", "w").write("\n".join(
    "add element inet synwatch banned4 { %s }" % ", ".join(r + " timeout 3600s" for r in ranges[c:c + 1000])
    for c in range(0, n, 1000)) + "\n")
open(work + "/nft-renew.setup", "w").write(nft_setup("interval,timeout"))
open(work + "/nft-renew.add", "w").write(nft_add(ranges))
open(work + "/nft-ival.add", "w").write(nft_add(addrs))
for case, kind in (("ipset-ip", "hash:ip"), ("ipset-addr", "hash:net"), ("ipset-range", "hash:net")):
    open(work + "/%s.setup" % case, "w").write(
        "create synwatch4 %s family inet timeout 0 counters maxelem 1048576\n" % kind)
open(work + "/ipset-ip.add", "w").write("".join("add synwatch4 %s timeout 3600\n" % a for a in addrs))
open(work + "/ipset-addr.add", "w").write("".join("add synwatch4 %s timeout 3600\n" % a for a in addrs))
open(work + "/ipset-range.add", "w").write("".join("add synwatch4 %s timeout 3600\n" % r for r in ranges))
EOF

now() { date +%s.%N; }
clear_rules() {
    in_victim nft delete table inet synwatch 2>/dev/null || true
    in_victim iptables -w -F INPUT
    in_victim ipset destroy synwatch4 2>/dev/null || true
}
load() { # load CASE: set up CASE's rules and bans; prints the batch's seconds
    local case=$1 t0 t1
    clear_rules
    case $case in
    none) echo "-"; return ;;
    nft-*)
        in_victim nft -f "$work/$case.setup"
        t0=$(now); in_victim nft -f "$work/$case.add"; t1=$(now) ;;
    ipset-*)
        in_victim ipset restore -exist <"$work/$case.setup"
        in_victim iptables -w -I INPUT -m set --match-set synwatch4 src -j DROP
        t0=$(now); in_victim ipset restore -exist <"$work/$case.add"; t1=$(now) ;;
    esac
    awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.3f", a - b }'
}
held() { # held CASE: elements the kernel holds
    case $1 in
    none) echo 0 ;;
    nft-*) in_victim nft list set inet synwatch banned4 | grep -o 'timeout' | wc -l ;;
    ipset-*) in_victim ipset list -t synwatch4 | awk '/Number of entries/ { print $4 }' ;;
    esac
}
pps() { # pps: 64-byte UDP packets/s received from the unbanned attacker
    ip netns exec "$attacker" iperf3 -c 10.198.0.1 -p 5201 -B 10.198.0.2 -t "$secs" -u -l 64 -b 0 -J |
        python3 -c '
import json, sys
s = json.load(sys.stdin)["end"]["sum"]
print("%.0f" % ((s["packets"] - s["lost_packets"]) / s["seconds"]))'
}

cases=${CASES:-none nft-addr nft-range ipset-ip ipset-addr ipset-range}
echo "bench-ranges: N=$n, $(nproc) CPUs, $(uname -r), $(nft -v), ipset $(ipset -v | awk '{ sub(",", "", $2); print $2 }'), iperf3 UDP 64 B, $secs s x $rounds rounds" >&2
printf "case\tround\tinsert_s\theld\tpps\n"
for round in $(seq "$rounds"); do
    for case in $cases; do
        t=$(load "$case")
        h=$(held "$case")
        p=$(pps)
        printf "%s\t%s\t%s\t%s\t%s\n" "$case" "$round" "$t" "$h" "$p"
    done
done
clear_rules
