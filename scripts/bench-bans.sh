#!/usr/bin/env bash
# Blocking at scale. Two throwaway network namespaces joined by a veth pair: a victim
# (10.197.0.1) and an attacker (10.197.0.2). Three measurements, printed as figures:
#
# 1. Bans per second through the agent. The victim runs
#      synwatch run --iface VETH --format json --block B --ban-rate 0 --ban 1h
#                   --state-dir TMP --log-limit-source 0 --log-limit-global 0
#    and the attacker sends, from each of N consecutive spoofed sources starting at
#    10.128.0.1, 4 SYNs to 4 distinct ports (raw Ethernet frames to the victim's MAC,
#    scripts/bench-bans-send.py), so every source is a port scan. Reported: first `scan`
#    event to last `block` event (event timestamps), sender start to all N bans applied
#    (wall clock, /metrics polled every 50 ms, then the kernel set read once), bans/s,
#    kernel runs (distinct `block` timestamps: each apply is one nft/ipset run), the
#    agent's CPU and its children's (nft, ipset), capture drops, peak RSS, and whether the
#    kernel set holds exactly the N expected addresses (XDP: the program's ban4 map, read
#    with bpftool), and the agent's longest pipeline turn (synwatch_pipeline_longest_turn_seconds).
#    The sender: with SEND=tcpreplay (the default when tcpreplay is installed) the frames
#    are written to a pcap once per N (scripts/bench-bans-send.py --pcap, untimed) and sent
#    with `tcpreplay --topspeed -i VETH` from the attacker namespace; with SEND=python the
#    Python sender writes them itself (about 90,000 frames/s here: slower than the agent). The agent's teardown at SIGTERM
#    is timed and checked, and on the last run of each size the CPU the agent (and the
#    programs it runs) use while holding the bans idle, over IDLE_SECONDS.
# 2. The rule-per-address peer, in a third namespace: N `iptables -w -I INPUT -s ADDR -j
#    DROP` runs, one process per ban as fail2ban does (capped at PEER_SECONDS), and one
#    `iptables-restore --noflush` of N `-A INPUT` rules. Plus, for reference, the
#    agent's own kernel primitives alone: one `nft -f -` and one `ipset restore -exist`
#    of N bans in the exact text synwatch writes.
# 3. Ordinary traffic (iperf3 TCP, and 64-byte UDP for packets/s) from the unbanned
#    attacker address to the victim with: no rules; the agent running with --block none
#    (its capture alone), and tcpdump with the agent's capture filter and settings as its
#    control; TPUT_N elements in synwatch's nft set; TPUT_N entries in its
#    ipset + SYNWATCH chain (both loaded with the texts synwatch writes); a linear chain
#    of TPUT_N `-s ADDR -j DROP` rules in INPUT; and the agent itself running with each
#    backend, restoring the TPUT_N bans saved by the last end-to-end run of that size
#    (the time to its banner is the restore). Cases alternate, TPUT_RUNS rounds.
#
# usage: [SYNWATCH=target/release/synwatch] [SIZES="10000 100000"] [RUNS=3]
#        [BACKENDS="nftables iptables" (also: xdp)] [RATE=0 (sender packets/s cap; 0 = none)]
#        [SEND=tcpreplay|python] [SECTIONS="1 2 2b 3"]
#        [PEER_N=10000] [PEER_SECONDS=240] [BATCH_SIZES="10000 100000"]
#        [TPUT_N=100000] [TPUT_SECONDS=5] [TPUT_RUNS=3] [IDLE_SECONDS=10]
#        [BENCH_DIR=target/bench] [NS_TAG=swb (namespace name prefix)]
#        [AGENT_CPUS= SENDER_CPUS= (taskset CPU lists)] [QUIET_VICTIM=0|1 (see below)]
#        scripts/bench-bans.sh
# Needs root and: iproute2, nftables, iptables, ipset, iperf3, python3, curl, tcpdump. Traffic
# only ever goes between the namespaces it creates; every firewall change is made inside
# them; they are removed (with every process the script started) on every exit path.
# Files of the last run are left in BENCH_DIR/bans.*.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"

synwatch=${SYNWATCH:-target/release/synwatch}
sizes=${SIZES:-10000 100000}
runs=${RUNS:-3}
backends=${BACKENDS:-nftables iptables}
rate=${RATE:-0}
peer_n=${PEER_N:-10000}
peer_secs=${PEER_SECONDS:-240}
batch_sizes=${BATCH_SIZES:-10000 100000}
tput_n=${TPUT_N:-100000}
tput_secs=${TPUT_SECONDS:-5}
tput_runs=${TPUT_RUNS:-3}
idle_secs=${IDLE_SECONDS:-10}
dir=${BENCH_DIR:-target/bench}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sender=${SENDER:-$here/bench-bans-send.py}
send_mode=${SEND:-$(command -v tcpreplay >/dev/null && echo tcpreplay || echo python)}
sections=" ${SECTIONS:-1 2 2b 3} "
stall_secs=60
# AGENT_CPUS / SENDER_CPUS: taskset CPU lists for the agent and the sender (none: any).
agent_pin=(env)
[ -n "${AGENT_CPUS:-}" ] && agent_pin=(taskset -c "$AGENT_CPUS")
sender_pin=(env)
[ -n "${SENDER_CPUS:-}" ] && sender_pin=(taskset -c "$SENDER_CPUS")

for tool in ip nft iptables iptables-restore ipset iperf3 python3 curl tcpdump; do
    command -v "$tool" >/dev/null || { echo "bench-bans: $tool is missing (apt-get install iproute2 nftables iptables ipset iperf3 python3 curl tcpdump)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-bans: needs root (network namespaces, firewall)" >&2; exit 2; }
[ -x "$synwatch" ] || { echo "bench-bans: no synwatch binary at $synwatch (cargo build --release, or set SYNWATCH)" >&2; exit 2; }
[ -r "$sender" ] || { echo "bench-bans: no sender at $sender" >&2; exit 2; }
case $send_mode in
    python) ;;
    tcpreplay) command -v tcpreplay >/dev/null || { echo "bench-bans: tcpreplay is missing (apt-get install tcpreplay, or SEND=python)" >&2; exit 2; }
               [ "$rate" = 0 ] || { echo "bench-bans: RATE needs SEND=python" >&2; exit 2; } ;;
    *) echo "bench-bans: SEND is tcpreplay or python" >&2; exit 2 ;;
esac
for v in runs peer_n peer_secs tput_n tput_secs tput_runs idle_secs; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-bans: $v must be a positive whole number" >&2; exit 2; }
done
for n in $sizes $batch_sizes; do
    [[ "$n" =~ ^[1-9][0-9]*$ && "$n" -le 4000000 ]] || { echo "bench-bans: sizes must be whole numbers up to 4000000" >&2; exit 2; }
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

tag="${NS_TAG:-swb}$$"
victim="${tag}v"
attacker="${tag}a"
peer="${tag}p"
vif="${tag:0:11}v0"
aif="${tag:0:11}a0"
victim_ip=10.197.0.1
attacker_ip=10.197.0.2
first_src=10.128.0.1          # scanners: 10.128.0.1 onwards (10.128.0.0/9)
metrics_url=http://127.0.0.1:9809/metrics
results="$dir/bans.results.tsv"
rm -f "$dir"/bans.*
: >"$results"

pids=()
tmpdirs=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "$victim" "$attacker" "$peer"; do ip netns del "$ns" 2>/dev/null || true; done
    for d in "${tmpdirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

lab_pair "$victim" "$attacker" "$vif" "$aif" "$victim_ip/24" "$attacker_ip/24"
ip netns add "$peer"
ip -n "$peer" link set lo up
victim_mac=$(cat "/sys/class/net/$vif/address" 2>/dev/null || ip netns exec "$victim" cat "/sys/class/net/$vif/address")
# QUIET_VICTIM=1: the victim drops the scanners' frames in prerouting before conntrack
# (priority -400; the capture, a packet socket, sees them before that), as a host with a
# default-drop firewall would: no conntrack entry, no TCP, no RST back for each of them.
# The agent's work is the same; the kernel's and the sender's, sharing the 2 vCPUs, less.
if [ "${QUIET_VICTIM:-0}" = 1 ]; then
    ip netns exec "$victim" nft -f - <<EOF
table inet bench_quiet {
    chain pre {
        type filter hook prerouting priority -400; policy accept;
        ip saddr 10.128.0.0/9 drop
    }
}
EOF
fi

in_victim() { ip netns exec "$victim" "$@"; }
in_attacker() { ip netns exec "$attacker" "$@"; }
in_peer() { ip netns exec "$peer" "$@"; }
now() { date +%s.%N; }
record() { printf '%s\n' "$*" >>"$results"; }
metric() { # metric PAGE NAME-PREFIX: the sum of the samples whose line starts with it
    awk -v m="$2" 'index($0, m) == 1 { v += $NF } END { printf "%d\n", v + 0 }' <<<"$1"
}
# utime stime cutime cstime of a process, in clock ticks (fields 14-17 of /proc/PID/stat).
cpu_ticks() {
    local stat rest f
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo "${f[11]} ${f[12]} ${f[13]} ${f[14]}"
}
hz=$(getconf CLK_TCK)

# The addresses of the kernel's set, one per line: nft set banned4 or ipset synwatch4.
kernel_addrs() { # kernel_addrs BACKEND NS
    if [ "$1" = nftables ]; then
        ip netns exec "$2" nft -j list set inet synwatch banned4 | python3 -c '
import json, sys
for item in json.load(sys.stdin)["nftables"]:
    for e in item.get("set", {}).get("elem", []):
        print(e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e)'
    elif [ "$1" = xdp ]; then
        # The ban4 map of the program attached to the victim's veth (maps are not per
        # namespace: found through the program, not by name). Keys: the address bytes.
        local prog map
        prog=$(ip -n "$2" -j link show "$vif" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["xdp"]["prog"]["id"])')
        for map in $(bpftool -j prog show id "$prog" | python3 -c 'import json, sys; print(*json.load(sys.stdin)["map_ids"])'); do
            bpftool -j map show id "$map" | grep -q '"name":"ban4"' || continue
            bpftool -j map dump id "$map" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    print(".".join(str(int(b, 16)) for b in e["key"]))'
        done
    else
        ip netns exec "$2" ipset save synwatch4 | awk '$1 == "add" { print $3 }'
    fi
}
# Compares addresses on stdin with FIRST..FIRST+N-1: "count missing extra".
check_addrs() { # check_addrs FIRST N
    python3 -c '
import ipaddress, sys
first, n = int(ipaddress.IPv4Address(sys.argv[1])), int(sys.argv[2])
got = {int(ipaddress.IPv4Address(l.strip())) for l in sys.stdin if l.strip()}
want = set(range(first, first + n))
print(len(got), len(want - got), len(got - want))' "$1" "$2"
}
nth_addr() { # nth_addr FIRST I: FIRST + I as a dotted quad
    python3 -c 'import ipaddress, sys; print(ipaddress.IPv4Address(sys.argv[1]) + int(sys.argv[2]))' "$1" "$2"
}

# ---------------------------------------------------------------- the iperf3 server
# Started with ip netns exec directly (not through a function), so that $! is the PID of
# the program itself (ip execs it), not of a subshell.
ip netns exec "$victim" iperf3 -s -B "$victim_ip" -p 5201 >"$dir/bans.iperf3-server.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
    in_victim ss -Hltn "sport = :5201" | grep -q 5201 && break
    sleep 0.05
done

# tput_once CASE ROUND: one iperf3 TCP and one 64-byte UDP run from the unbanned attacker
# address.
tput_once() {
    local case=$1 i=$2 out bps pkts lost secs rx
    out=$(in_attacker iperf3 -c "$victim_ip" -p 5201 -B "$attacker_ip" -t "$tput_secs" -J) \
        || { echo "bench-bans: iperf3 TCP failed ($case)" >&2; echo "$out" >&2; exit 1; }
    bps=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' <<<"$out")
    record "tput	$case	tcp	$i	$bps"
    out=$(in_attacker iperf3 -c "$victim_ip" -p 5201 -B "$attacker_ip" -t "$tput_secs" -u -l 64 -b 0 -J) \
        || { echo "bench-bans: iperf3 UDP failed ($case)" >&2; echo "$out" >&2; exit 1; }
    read -r pkts lost secs < <(python3 -c '
import json, sys
s = json.load(sys.stdin)["end"]["sum"]
print(s["packets"], s["lost_packets"], s["seconds"])' <<<"$out")
    rx=$(python3 -c 'import sys; p, l, s = map(float, sys.argv[1:]); print((p - l) / s)' "$pkts" "$lost" "$secs")
    record "tput	$case	udp	$i	$rx	$pkts	$lost"
    echo "  $case round $i: TCP $(awk -v b="$bps" 'BEGIN { printf "%.2f Gbit/s", b / 1e9 }'), UDP 64 B: $(awk -v r="$rx" 'BEGIN { printf "%.0f", r }') packets/s received ($pkts sent, $lost lost)" >&2
}

# start_agent OUT LOG ARGS...: synwatch run on the victim's veth; sets agent_pid. Started
# with ip netns exec directly, so that $! is synwatch itself (ip execs it).
agent_pid=""
start_agent() {
    local out=$1 log=$2
    shift 2
    ip netns exec "$victim" "${agent_pin[@]}" "$synwatch" run --iface "$vif" --format json "$@" >"$out" 2>"$log" &
    agent_pid=$!
    pids+=("$agent_pid")
    for _ in $(seq 1200); do
        grep -q "watching" "$log" && return 0
        kill -0 "$agent_pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$log" >&2
    echo "bench-bans: synwatch did not start" >&2
    exit 1
}
# stop_agent: SIGTERM, then the exit code in agent_rc.
agent_rc=0
stop_agent() {
    agent_rc=0
    kill -TERM "$agent_pid"
    wait "$agent_pid" || agent_rc=$?
}
# send_tcpreplay PCAP OUT: sends PCAP from the attacker's veth end as fast as tcpreplay
# can, and writes the JSON the Python sender prints (seconds: tcpreplay's own account).
send_tcpreplay() {
    local start out
    start=$(now)
    out=$(in_attacker "${sender_pin[@]}" tcpreplay --topspeed -i "$aif" "$1" 2>&1) || { echo "$out" >&2; return 1; }
    python3 -c '
import json, re, sys
out, start, end = sys.stdin.read(), float(sys.argv[1]), float(sys.argv[2])
m = re.search(r"Actual: (\d+) packets .* sent in ([0-9.]+) seconds", out)
f = re.search(r"Failed packets:\s+(\d+)", out)
if not m:
    sys.exit("bench-bans: cannot read tcpreplay output:\n" + out)
json.dump({"packets": int(m.group(1)), "errors": int(f.group(1)) if f else 0, "start": start,
           "end": end, "seconds": float(m.group(2))}, sys.stdout)
print()' "$start" "$(now)" <<<"$out" >"$2"
}
# The state directory of the last end-to-end run of TPUT_N bans, per backend: section 3
# starts the agent on it again, and it restores those bans.
declare -A saved_state=()

# ---------------------------------------------------------------- 1. end to end
# e2e BACKEND N RUN
e2e() {
    local backend=$1 n=$2 run=$3
    local state events log sendout page blocks last_blocks last_change t_end
    state=$(mktemp -d /tmp/swb-state.XXXXXX)
    tmpdirs+=("$state")
    events="$dir/bans.$backend.$n.$run.jsonl"
    log="$dir/bans.$backend.$n.$run.log"
    sendout="$dir/bans.$backend.$n.$run.send.json"
    local source=pcap
    [ "$backend" = xdp ] && source=xdp
    start_agent "$events" "$log" --source "$source" --block "$backend" --ban-rate 0 --ban 1h --state-dir "$state" \
        --log-limit-source 0 --log-limit-global 0
    local cpu0 rx0 rxd0
    cpu0=$(cpu_ticks "$agent_pid")
    rx0=$(in_victim cat "/sys/class/net/$vif/statistics/rx_packets")
    rxd0=$(in_victim cat "/sys/class/net/$vif/statistics/rx_dropped")

    local rate_args=() tx0
    [ "$rate" != 0 ] && rate_args=(--rate "$rate")
    tx0=$(in_attacker cat "/sys/class/net/$aif/statistics/tx_packets")
    if [ "$send_mode" = tcpreplay ]; then
        send_tcpreplay "$dir/bans.frames.$n.pcap" "$sendout" &
    else
        ip netns exec "$attacker" python3 "$sender" "$aif" "$victim_mac" "$victim_ip" "$first_src" "$n" \
            "${rate_args[@]}" >"$sendout" &
    fi
    local send_pid=$!
    pids+=("$send_pid")
    # All bans applied: synwatch_blocks_total counts bans the kernel accepted (nft or
    # ipset exited 0), so reaching N means they are in. Polled every 50 ms.
    last_blocks=-1
    last_change=$(now)
    t_end=""
    while :; do
        page=$(in_victim curl -sf --max-time 2 "$metrics_url" || true)
        blocks=$(metric "$page" "synwatch_blocks_total")
        if [ "$blocks" -ge "$n" ]; then t_end=$(now); break; fi
        if [ "$blocks" != "$last_blocks" ]; then last_blocks=$blocks; last_change=$(now); fi
        if ! kill -0 "$agent_pid" 2>/dev/null; then echo "bench-bans: synwatch died" >&2; cat "$log" >&2; exit 1; fi
        if ! kill -0 "$send_pid" 2>/dev/null && awk -v a="$(now)" -v b="$last_change" -v s="$stall_secs" 'BEGIN { exit !(a - b > s) }'; then
            echo "bench-bans: $backend N=$n: bans stalled at $blocks of $n for $stall_secs s" >&2
            break
        fi
        sleep 0.05
    done
    wait "$send_pid" || { echo "bench-bans: the sender failed" >&2; exit 1; }
    # Let the capture threads publish their kernel drop counters (every second).
    sleep 1.5
    page=$(in_victim curl -sf --max-time 5 "$metrics_url")
    local cpu1 rx1 rxd1 tx1 t_list0 t_list1 check
    cpu1=$(cpu_ticks "$agent_pid")
    # Per thread of the agent (since its start): which one is busy.
    local threads=""
    for t in /proc/"$agent_pid"/task/*; do
        threads+=$(awk -v hz="$hz" '{ sub(/^[^(]*\(/, ""); name = $0; sub(/\).*/, "", name); sub(/^[^)]*\) /, ""); printf "%s %.2f s; ", name, ($12 + $13) / hz }' "$t/stat")
    done
    echo "  agent threads (CPU since start): $threads" >&2
    rx1=$(in_victim cat "/sys/class/net/$vif/statistics/rx_packets")
    rxd1=$(in_victim cat "/sys/class/net/$vif/statistics/rx_dropped")
    tx1=$(in_attacker cat "/sys/class/net/$aif/statistics/tx_packets")
    local turn slow qdrop
    qdrop=$(metric "$page" "synwatch_queue_dropped_total")
    turn=$(awk 'index($0, "synwatch_pipeline_longest_turn_seconds ") == 1 { print $NF }' <<<"$page")
    slow=$(metric "$page" "synwatch_pipeline_slow_turns_total")
    t_list0=$(now)
    check=$(kernel_addrs "$backend" "$victim" | check_addrs "$first_src" "$n")
    t_list1=$(now)

    local hwm idle0 idle1 idle_self="" idle_child=""
    hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$agent_pid/status")
    if [ "$run" = "$runs" ]; then
        # What holding N bans costs when nothing happens: the agent's CPU and its
        # children's (the nft/iptables runs that read the drop counters every 5 s).
        read -ra idle0 <<<"$(cpu_ticks "$agent_pid")"
        sleep "$idle_secs"
        read -ra idle1 <<<"$(cpu_ticks "$agent_pid")"
        idle_self=$(( idle1[0] + idle1[1] - idle0[0] - idle0[1] ))
        idle_child=$(( idle1[2] + idle1[3] - idle0[2] - idle0[3] ))
        echo "  idle $idle_secs s holding $n bans ($backend): agent CPU $(awk -v t="$idle_self" -v h="$hz" 'BEGIN { printf "%.2f", t / h }') s, its children $(awk -v t="$idle_child" -v h="$hz" 'BEGIN { printf "%.2f", t / h }') s" >&2
    fi
    [ "$n" = "$tput_n" ] && [ "$backend" != xdp ] && saved_state[$backend]=$state

    # SIGTERM: the agent removes its table/chain and sets; time it and check.
    local t_stop0 t_stop1 rc leftover
    t_stop0=$(now)
    stop_agent
    rc=$agent_rc
    t_stop1=$(now)
    if [ "$backend" = nftables ]; then
        leftover=$(in_victim nft list tables | grep -c synwatch || true)
    elif [ "$backend" = xdp ]; then
        leftover=$(in_victim ip link show "$vif" | grep -c "prog/xdp" || true)
    else
        leftover=$(( $(in_victim ipset list -n | grep -c synwatch || true) + $(in_victim iptables -S | grep -c SYNWATCH || true) ))
    fi
    local summary_drops
    summary_drops=$(awk '/dropped by the kernel/ { for (i = 1; i <= NF; i++) if ($i == "dropped") print $(i - 1) }' "$log" | head -1)

    python3 - "$events" "$sendout" "$t_end" "$n" "$backend" "$run" "$results" <<'EOF'
import json, sys, statistics
from datetime import datetime, timezone
events, sendout, t_end, n, backend, run, results = sys.argv[1:]
n = int(n)
def ts(s):
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in s else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()
scan, block = {}, {}
conn = 0
with open(events) as f:
    for line in f:
        if '"event":"connection"' in line:
            conn += 1
            continue
        e = json.loads(line)
        if e["event"] == "scan":
            scan.setdefault(e["src"], ts(e["ts"]))
        elif e["event"] == "block":
            block.setdefault(e["src"], ts(e["ts"]))
send = json.load(open(sendout))
first_scan = min(scan.values()) if scan else float("nan")
last_block = max(block.values()) if block else float("nan")
lat = sorted(block[s] - scan[s] for s in block if s in scan)
runs = {}
for t in block.values():
    runs[t] = runs.get(t, 0) + 1
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
row = {
    "scans": len(scan), "blocks": len(block), "connections": conn,
    "first_scan_to_last_block": last_block - first_scan,
    "send_start_to_first_scan": first_scan - send["start"],
    "send_seconds": send["seconds"], "send_packets": send["packets"],
    "send_errors": send["errors"],
    "wall": (float(t_end) - send["start"]) if t_end else float("nan"),
    "kernel_runs": len(runs), "max_bans_per_run": max(runs.values()) if runs else 0,
    "lat_median": q(0.5), "lat_p99": q(0.99), "lat_max": lat[-1] if lat else float("nan"),
}
with open(results, "a") as out:
    out.write("e2e\t%s\t%d\t%s\t%s\n" % (backend, n, run, json.dumps(row)))
EOF
    # Event files are large (N x 4 connection events): keep the last run's only.
    [ "$run" = "$runs" ] || rm -f "$events"
    local page_drops page_blocks page_pkts page_fail
    page_drops=$(metric "$page" "synwatch_capture_drops_total")
    page_blocks=$(metric "$page" "synwatch_blocks_total")
    page_pkts=$(metric "$page" "synwatch_packets_total")
    page_fail=$(metric "$page" "synwatch_ban_failures_total")
    local c0 c1
    read -ra c0 <<<"$cpu0"
    read -ra c1 <<<"$cpu1"
    record "e2e-extra	$backend	$n	$run	$(( c1[0] - c0[0] ))	$(( c1[1] - c0[1] ))	$(( c1[2] + c1[3] - c0[2] - c0[3] ))	$hz	$page_drops	${summary_drops:-?}	$page_blocks	$page_pkts	$page_fail	$(( rx1 - rx0 ))	$(( rxd1 - rxd0 ))	$check	$(awk -v a="$t_list1" -v b="$t_list0" 'BEGIN { print a - b }')	$(awk -v a="$t_stop1" -v b="$t_stop0" 'BEGIN { print a - b }')	$rc	$leftover	$hwm	$idle_self	$idle_child	$idle_secs	${turn:-?}	$slow	$(( tx1 - tx0 ))	$qdrop"
    tail -1 "$results" | awk -F'\t' -v b="$backend" -v n="$n" -v r="$run" '{
        split($16, k, " ");
        printf "  %s N=%d run %s: blocks_total %s, kernel set %s (missing %s, extra %s; read in %.2f s), capture drops %s (summary %s), ban failures %s, stop %.2f s, exit %s, left over %s; attacker tx %s, victim rx %s (dropped %s); longest pipeline turn %s s, turns over 50 ms %s; dropped on the way to the pipeline (queue full) %s\n",
            b, n, r, $11, k[1], k[2], k[3], $17, $9, $10, $13, $18, $19, $20, $27, $14, $15, $25, $26, $28 }' >&2
    grep '^e2e	' "$results" | tail -1 | cut -f5 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("    first scan -> last block %.2f s, sender start -> all in kernel %.2f s (sender %.2f s = %.0f frames/s), %d kernel runs (max %d bans), ban latency median %.3f s p99 %.3f s" % (
    r["first_scan_to_last_block"], r["wall"], r["send_seconds"], r["send_packets"] / r["send_seconds"], r["kernel_runs"], r["max_bans_per_run"], r["lat_median"], r["lat_p99"]))' >&2
}

echo "bench-bans: $(nproc) CPUs, $(uname -r), $(nft -v), $(iptables -V), ipset $(ipset -v | awk '{ sub(",", "", $2); print $2 }'), $(iperf3 -v | head -1 | awk '{print $1, $2}'), $("$synwatch" --version 2>/dev/null || echo synwatch)" >&2
echo "bench-bans: 1. bans per second through the agent (sender: $send_mode$([ "$send_mode" = tcpreplay ] && echo ", $(tcpreplay -V 2>&1 | head -1)"))" >&2
for n in $sizes; do
    [[ $sections == *" 1 "* ]] || break
    if [ "$send_mode" = tcpreplay ]; then
        in_attacker python3 "$sender" "$aif" "$victim_mac" "$victim_ip" "$first_src" "$n" --pcap "$dir/bans.frames.$n.pcap"
    fi
    for run in $(seq "$runs"); do
        for backend in $backends; do
            e2e "$backend" "$n" "$run"
        done
    done
done

# ---------------------------------------------------------------- 2. the peers
if [[ $sections == *" 2 "* ]]; then
echo "bench-bans: 2. one iptables rule per address (namespace $peer, $(iptables -V))" >&2
# One process per ban, PEER_N of them or PEER_SECONDS, whichever comes first; a line every
# 500 bans: "count elapsed-microseconds".
# shellcheck disable=SC2016
in_peer bash -c '
    first=$1; n=$2; cap=$(( $3 * 1000000 )); out=$4
    s=${EPOCHREALTIME/./}
    for ((i = 0; i < n; i++)); do
        a=$(( first + i ))
        iptables -w -I INPUT -s "$(( a >> 24 & 255 )).$(( a >> 16 & 255 )).$(( a >> 8 & 255 )).$(( a & 255 ))" -j DROP
        if (( (i + 1) % 500 == 0 || i + 1 == n )); then
            e=${EPOCHREALTIME/./}
            echo "$(( i + 1 )) $(( e - s ))" >>"$out"
            (( e - s < cap )) || break
        fi
    done' _ "$(python3 -c 'import ipaddress, sys; print(int(ipaddress.IPv4Address(sys.argv[1])))' "$first_src")" \
    "$peer_n" "$peer_secs" "$dir/bans.peer-insert.txt.tmp"
mv "$dir/bans.peer-insert.txt.tmp" "$dir/bans.peer-insert.txt"
peer_rules=$(in_peer iptables -S INPUT | grep -c -- '-j DROP' || true)
read -r peer_done peer_us < <(tail -1 "$dir/bans.peer-insert.txt")
record "peer-insert	$peer_n	$peer_done	$peer_us	$peer_rules	$(tr '\n' ' ' <"$dir/bans.peer-insert.txt")"
echo "  iptables -I x $peer_done: $(awk -v u="$peer_us" 'BEGIN { printf "%.1f s", u / 1e6 }'), $peer_rules rules in INPUT" >&2
t0=$(now); in_peer iptables -w -F INPUT; t1=$(now)
echo "  (iptables -F INPUT of them: $(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.2f s", a - b }'))" >&2
fi

restore_file() { # restore_file N FILE: N -A INPUT rules as iptables-restore input
    python3 -c '
import ipaddress, sys
first, n = ipaddress.IPv4Address(sys.argv[1]), int(sys.argv[2])
out = ["*filter"] + ["-A INPUT -s %s -j DROP" % (first + i) for i in range(n)] + ["COMMIT", ""]
open(sys.argv[3], "w").write("\n".join(out))' "$first_src" "$1" "$2"
}
# The agent's own texts (nftables.rs setup_script/add_script, iptables.rs sets_script).
nft_files() { # nft_files N SETUP ADD: the empty table, and one batch adding N bans
    python3 -c '
import ipaddress, sys
first, n = ipaddress.IPv4Address(sys.argv[1]), int(sys.argv[2])
setup = """add table inet synwatch
delete table inet synwatch
table inet synwatch {
\tset banned4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tcounter\n\t}
\tset banned6 {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t\tcounter\n\t}
\tchain input {\n\t\ttype filter hook input priority filter - 10; policy accept;
\t\tip saddr @banned4 counter drop\n\t\tip6 saddr @banned6 counter drop\n\t}
\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tip saddr @banned4 counter drop\n\t\tip6 saddr @banned6 counter drop\n\t}
}
"""
open(sys.argv[3], "w").write(setup)
addrs = [str(first + i) for i in range(n)]
lines = []
for verb, timeout in (("add", False), ("delete", False), ("add", True)):
    for c in range(0, n, 1000):
        chunk = addrs[c:c + 1000]
        body = ", ".join(a + " timeout 3600s" if timeout else a for a in chunk)
        lines.append("%s element inet synwatch banned4 { %s }" % (verb, body))
open(sys.argv[4], "w").write("\n".join(lines) + "\n")' "$first_src" "$1" "$2" "$3"
}
ipset_files() { # ipset_files N SETS ADD
    python3 -c '
import ipaddress, sys
first, n = ipaddress.IPv4Address(sys.argv[1]), int(sys.argv[2])
sets = "".join("create %s hash:net family %s timeout 0 counters maxelem 1048576\nflush %s\n" % (s, f, s)
               for s, f in (("synwatch4", "inet"), ("synwatch6", "inet6")))
open(sys.argv[3], "w").write(sets)
open(sys.argv[4], "w").write("".join("add synwatch4 %s timeout 3600\n" % (first + i) for i in range(n)))' "$first_src" "$1" "$2" "$3"
}
# synwatch's capture filter (crates/capture/src/live.rs FILTER), for the tcpdump control.
capture_filter='(tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) or (tcp[tcpflags] & (tcp-syn|tcp-ack|tcp-rst) == 0) or (ip6 and (ip6[6] == 0 or ip6[6] == 43 or ip6[6] == 44 or ip6[6] == 51 or ip6[6] == 60 or (ip6[6] == 6 and ((ip6[53] & 0x12) == 0x02 or (ip6[53] & 0x16) == 0))))'
synwatch_chain='*filter
:SYNWATCH - [0:0]
-A SYNWATCH -m set --match-set synwatch4 src -j DROP
COMMIT'
work=$(mktemp -d /tmp/swb-files.XXXXXX)
tmpdirs+=("$work")

echo "bench-bans: 2b. one batch of N bans: iptables-restore rules, and synwatch's own nft and ipset texts" >&2
for n in $batch_sizes; do
    [[ $sections == *" 2b "* ]] || break
    restore_file "$n" "$work/rules.$n"
    nft_files "$n" "$work/nft-setup" "$work/nft-add.$n"
    ipset_files "$n" "$work/ipset-sets" "$work/ipset-add.$n"
    for run in $(seq "$runs"); do
        in_peer iptables -w -F INPUT
        t0=$(now); in_peer iptables-restore -w --noflush <"$work/rules.$n"; t1=$(now)
        got=$(in_peer iptables -S INPUT | grep -c -- '-j DROP' || true)
        record "batch	iptables-restore	$n	$run	$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')	$got"
        in_peer iptables -w -F INPUT

        in_peer nft -f "$work/nft-setup"
        t0=$(now); in_peer nft -f "$work/nft-add.$n"; t1=$(now)
        got=$(kernel_addrs nftables "$peer" | wc -l)
        record "batch	nft	$n	$run	$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')	$got"
        in_peer nft delete table inet synwatch

        in_peer ipset restore -exist <"$work/ipset-sets"
        t0=$(now); in_peer ipset restore -exist <"$work/ipset-add.$n"; t1=$(now)
        got=$(kernel_addrs iptables "$peer" | wc -l)
        record "batch	ipset	$n	$run	$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')	$got"
        in_peer ipset destroy synwatch4; in_peer ipset destroy synwatch6
        grep "^batch	" "$results" | tail -3 | awk -F'\t' '{ printf "  %s N=%s run %s: %.3f s (%s in the kernel)\n", $2, $3, $4, $5, $6 }' >&2
    done
done

# ---------------------------------------------------------------- 3. throughput
if [[ $sections == *" 3 "* ]]; then
echo "bench-bans: 3. ordinary traffic with $tput_n addresses banned (iperf3, $tput_secs s TCP + $tput_secs s UDP per case; $tput_runs rounds, cases alternating)" >&2
restore_file "$tput_n" "$work/rules.$tput_n"
nft_files "$tput_n" "$work/nft-setup" "$work/nft-add.$tput_n"
ipset_files "$tput_n" "$work/ipset-sets" "$work/ipset-add.$tput_n"
cases="none agent-none tcpdump nft-set ipset linear"
for b in $backends; do
    if [ -n "${saved_state[$b]:-}" ]; then cases="$cases agent-$b"; fi
done

# case_up CASE ROUND: sets the case up in the victim namespace, records what it holds.
case_up() {
    local case=$1 round=$2 t0 t1 got=0
    t0=$(now)
    case $case in
        none) ;;
        agent-none)
            start_agent "$dir/bans.tput.$case.jsonl" "$dir/bans.tput.$case.log" --block none ;;
        tcpdump)
            # The control for agent-none: a capture with the agent's filter, snapshot
            # length, buffer and timestamp precision (crates/capture/src/live.rs).
            ip netns exec "$victim" tcpdump -i "$vif" -n -p --time-stamp-precision nano -s 256 \
                -B 16384 -w /dev/null "$capture_filter" 2>"$dir/bans.tput.tcpdump.log" &
            tcpdump_pid=$!
            pids+=("$tcpdump_pid")
            for _ in $(seq 200); do
                grep -q "listening on" "$dir/bans.tput.tcpdump.log" && break
                sleep 0.05
            done ;;
        nft-set)
            in_victim nft -f "$work/nft-setup"
            in_victim nft -f "$work/nft-add.$tput_n" ;;
        ipset)
            in_victim ipset restore -exist <"$work/ipset-sets"
            in_victim ipset restore -exist <"$work/ipset-add.$tput_n"
            in_victim iptables-restore -w --noflush <<<"$synwatch_chain"
            in_victim iptables -w -I INPUT 1 -j SYNWATCH
            in_victim iptables -w -I FORWARD 1 -j SYNWATCH ;;
        linear)
            in_victim iptables-restore -w --noflush <"$work/rules.$tput_n" ;;
        agent-*)
            # The agent restores the saved bans at start, in one transaction, before its
            # banner: the time to the banner is the restore.
            start_agent "$dir/bans.tput.$case.jsonl" "$dir/bans.tput.$case.log" --block "${case#agent-}" \
                --ban-rate 0 --ban 1h --state-dir "${saved_state[${case#agent-}]}" \
                --log-limit-source 0 --log-limit-global 0 ;;
    esac
    t1=$(now)
    case $case in
        nft-set) got=$(kernel_addrs nftables "$victim" | wc -l) ;;
        ipset) got=$(kernel_addrs iptables "$victim" | wc -l) ;;
        linear) got=$(in_victim iptables -S INPUT | grep -c -- '-j DROP' || true) ;;
        agent-none) ;;
        agent-*) got=$(kernel_addrs "${case#agent-}" "$victim" | wc -l) ;;
    esac
    record "tput-load	$case	$round	$got	$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')"
}
tcpdump_pid=""
case_down() {
    case $1 in
        agent-*) stop_agent ;;
        tcpdump) kill -INT "$tcpdump_pid"; wait "$tcpdump_pid" || true ;;
        nft-set) in_victim nft delete table inet synwatch ;;
        ipset)
            in_victim iptables -w -D INPUT -j SYNWATCH
            in_victim iptables -w -D FORWARD -j SYNWATCH
            in_victim iptables -w -F SYNWATCH
            in_victim iptables -w -X SYNWATCH
            in_victim ipset destroy synwatch4
            in_victim ipset destroy synwatch6 ;;
        linear) in_victim iptables -w -F INPUT ;;
    esac
}
for round in $(seq "$tput_runs"); do
    for case in $cases; do
        case_up "$case" "$round"
        tput_once "$case" "$round"
        case_down "$case"
    done
done
fi

# ---------------------------------------------------------------- summary
python3 - "$results" "$hz" <<'EOF'
import json, statistics, sys
results, hz = sys.argv[1], int(sys.argv[2])
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
med = statistics.median
def fmt(x, nd=0):
    return f"{x:,.{nd}f}"
print()
print("== 1. bans per second through the agent (medians of runs) ==")
e2e, extra = {}, {}
for r in rows:
    if r[0] == "e2e":
        e2e.setdefault((r[1], int(r[2])), []).append(json.loads(r[4]))
    elif r[0] == "e2e-extra":
        extra.setdefault((r[1], int(r[2])), []).append(r[4:])
agent_rate = {}
print("| backend | N | runs | first scan -> last block | bans/s (events) | sender start -> all N in kernel | bans/s (wall) | sender time | kernel runs (max bans/run) | ban latency median / p99 | agent CPU user+sys / children | capture drops | kernel set | stop (teardown) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (b, n), rs in sorted(e2e.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    ex = extra[(b, n)]
    span = med([r["first_scan_to_last_block"] for r in rs])
    wall = med([r["wall"] for r in rs])
    agent_rate[(b, n)] = n / span
    ucpu = med([(int(e[0]) + int(e[1])) / hz for e in ex])
    ccpu = med([int(e[2]) / hz for e in ex])
    drops = ",".join(e[4] if e[4] == e[5] else "%s (summary %s)" % (e[4], e[5]) for e in ex)
    sets = ",".join(e[11].split()[0] + ("" if e[11].split()[1:] == ["0", "0"] else " (missing %s, extra %s)" % tuple(e[11].split()[1:])) for e in ex)
    print(f"| {b} | {fmt(n)} | {len(rs)} | {span:.2f} s | {fmt(n / span)} | {wall:.2f} s | {fmt(n / wall)} | "
          f"{med([r['send_seconds'] for r in rs]):.2f} s | {fmt(med([r['kernel_runs'] for r in rs]))} ({max(r['max_bans_per_run'] for r in rs)}) | "
          f"{med([r['lat_median'] for r in rs]) * 1000:.0f} ms / {med([r['lat_p99'] for r in rs]) * 1000:.0f} ms | "
          f"{ucpu:.2f} s / {ccpu:.2f} s | {drops} | {sets} | {med([float(e[13]) for e in ex]):.2f} s |")
    print("  runs (first scan -> last block, s):", " ".join(f"{r['first_scan_to_last_block']:.2f}" for r in rs),
          "; wall:", " ".join(f"{r['wall']:.2f}" for r in rs),
          "; scans/blocks events:", " ".join(f"{r['scans']}/{r['blocks']}" for r in rs),
          "; veth rx / rx_dropped:", " ".join(f"{e[9]}/{e[10]}" for e in ex),
          "; ban failures:", " ".join(e[8] for e in ex), "; exit:", " ".join(e[14] for e in ex),
          "; left over after stop:", " ".join(e[15] for e in ex),
          "; agent peak RSS (VmHWM, kB):", " ".join(e[16] for e in ex),
          "; sender frames/s:", " ".join(f"{r['send_packets'] / r['send_seconds']:,.0f}" for r in rs),
          "; attacker tx:", " ".join(e[22] if len(e) > 22 else "?" for e in ex),
          "; longest pipeline turn (s) / turns over 50 ms:", " ".join(f"{e[20]}/{e[21]}" if len(e) > 21 else "?" for e in ex),
          "; queue drops (synwatch_queue_dropped_total):", " ".join(e[23] if len(e) > 23 else "?" for e in ex))
    for e in ex:
        if e[17]:
            print(f"  idle {e[19]} s holding {n:,} bans: agent CPU {int(e[17]) / hz:.2f} s, children (nft/iptables) {int(e[18]) / hz:.2f} s"
                  f" = {100 * (int(e[17]) + int(e[18])) / hz / float(e[19]):.0f}% of one CPU")

print()
print("== 2. the rule-per-address peer ==")
for r in rows:
    if r[0] == "peer-insert":
        want, done, us, rules = int(r[1]), int(r[2]), int(r[3]), int(r[4])
        marks = [int(x) for x in r[5].split()]
        pairs = list(zip(marks[0::2], marks[1::2]))
        secs = us / 1e6
        print(f"iptables -w -I INPUT -s ADDR -j DROP, one process each: {fmt(done)} of {fmt(want)} in {secs:.1f} s = {fmt(done / secs)} bans/s; {fmt(rules)} rules in INPUT")
        if len(pairs) >= 2:
            (c0, t0), (c1, t1) = pairs[0], pairs[-1]
            prev = pairs[-2]
            print(f"  first {c0}: {c0 / (t0 / 1e6):,.0f}/s; last {c1 - prev[0]}: {(c1 - prev[0]) / ((t1 - prev[1]) / 1e6):,.0f}/s")
        for i, (c, t) in enumerate(pairs):
            if c in (1000, 10000, 25000, 50000, 100000) and i > 0:
                pc, pt = pairs[i - 1]
                print(f"  {c:,} rules after {t / 1e6:.1f} s ({c / (t / 1e6):,.0f}/s on average; {(c - pc) / ((t - pt) / 1e6):,.0f}/s for the last {c - pc})")
        at = dict(pairs)
        for (b, n), v in sorted(agent_rate.items()):
            if n in at:
                peer, how = n / (at[n] / 1e6), f"its first {n:,} ({n / (at[n] / 1e6):,.0f}/s)"
            else:
                peer, how = done / secs, f"its {done:,} in {secs:.0f} s ({done / secs:,.0f}/s; N={n:,} not reached)"
            print(f"  synwatch {b} N={n:,} ({v:,.0f}/s): {v / peer:.1f}x {how}")
batch = {}
for r in rows:
    if r[0] == "batch":
        batch.setdefault((r[1], int(r[2])), []).append((float(r[4]), int(r[5])))
print("| one batch of N | N | median time | bans/s | in the kernel | runs (s) |")
print("| --- | --- | --- | --- | --- | --- |")
for (k, n), vs in sorted(batch.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    t = med([v[0] for v in vs])
    print(f"| {k} | {fmt(n)} | {t:.3f} s | {fmt(n / t)} | {','.join(str(v[1]) for v in vs)} | {' '.join(f'{v[0]:.3f}' for v in vs)} |")
for (b, n), v in sorted(agent_rate.items()):
    for k in (("nft",) if b == "nftables" else ("ipset",)) + ("iptables-restore",):
        if (k, n) in batch:
            t = med([x[0] for x in batch[(k, n)]])
            print(f"  synwatch {b} N={n:,} end to end ({v:,.0f}/s) = {v / (n / t):.3f}x one {k} batch of the same N")

print()
print("== 3. ordinary traffic through the veth (medians) ==")
tp = {}
for r in rows:
    if r[0] == "tput":
        tp.setdefault((r[1], r[2]), []).append(float(r[4]))
    if r[0] == "tput-load" and r[1] not in ("none", "tcpdump", "agent-none"):
        what = "start to banner, restoring the saved bans" if r[1].startswith("agent-") else "loaded"
        print(f"{r[1]} (round {r[2]}): {what} in {float(r[4]):.2f} s; {r[3]} addresses in the kernel")
base_tcp = med(tp.get(("none", "tcp"), [float("nan")]))
base_udp = med(tp.get(("none", "udp"), [float("nan")]))
print("| rules | TCP Gbit/s | vs none | UDP 64 B packets/s received | vs none | runs TCP | runs UDP |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for case in ["none", "agent-none", "tcpdump", "nft-set", "ipset", "linear", "agent-nftables", "agent-iptables"]:
    if (case, "tcp") not in tp:
        continue
    t, u = med(tp[(case, "tcp")]), med(tp[(case, "udp")])
    print(f"| {case} | {t / 1e9:.3f} | {t / base_tcp:.3f}x | {fmt(u)} | {u / base_udp:.3f}x | "
          f"{' '.join(f'{x / 1e9:.3f}' for x in tp[(case, 'tcp')])} | {' '.join(f'{x:,.0f}' for x in tp[(case, 'udp')])} |")
EOF
echo "files: $dir/bans.*"
