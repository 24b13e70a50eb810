#!/usr/bin/env bash
# Holding many bans. For each backend, in a throwaway pair of network namespaces (victim
# 10.198.0.1, attacker 10.198.0.2, joined by a veth pair), the agent starts with N bans
# saved in its state file (10.128.0.1 onwards, an hour left each, written straight into
# bans.db by python3's sqlite3) and holds them:
#
#   synwatch run --iface VETH --source pcap|xdp --block B --state-dir TMP
#                --metrics-addr 127.0.0.1:9890 --format json
#
# Printed per backend: the time from start to the banner (restoring N bans), the bans
# held per /metrics, the agent's CPU (its own and its children's: nft, iptables, ipset)
# over HOLD_SECONDS of holding them idle, /metrics latency (LATENCY_GETS GETs, median and
# max), then the rules are torn down behind its back as a firewall reload would (nftables:
# `nft flush ruleset`; iptables: the built-in chains flushed, SYNWATCH flushed, the ipsets
# flushed; XDP has nothing to tear) and measured: the time until the rules are back, until
# the agent says every ban is back (synwatch_bans_reinstating 0, /metrics polled every
# 100 ms; the kernel's sets are counted once after that, not polled, since listing
# 100,000 elements costs seconds of CPU), and /metrics latency meanwhile. Last, the
# agent's own account of its pipeline:
# synwatch_pipeline_longest_turn_seconds (the longest any packet, ban or control request
# waited behind one piece of work since start, the start-up restore excluded) and
# synwatch_pipeline_slow_turns_total (turns over 50 ms).
#
# usage: [SYNWATCH=target/release/synwatch] [N=100000] [BACKENDS="nftables iptables xdp"]
#        [HOLD_SECONDS=60] [LATENCY_GETS=20] scripts/bench-hold.sh
# Needs root, iproute2, nftables, iptables, ipset, python3, curl. Every change is made
# inside the namespaces it creates; they are removed (with the agent) on every exit path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"

synwatch=${SYNWATCH:-target/release/synwatch}
n=${N:-100000}
backends=${BACKENDS:-nftables iptables xdp}
hold_secs=${HOLD_SECONDS:-60}
gets=${LATENCY_GETS:-20}

for tool in ip nft iptables ipset python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench-hold: $tool is missing (apt-get install iproute2 nftables iptables ipset python3 curl)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-hold: needs root (network namespaces, firewall)" >&2; exit 2; }
[ -x "$synwatch" ] || { echo "bench-hold: no synwatch binary at $synwatch (cargo build --release, or set SYNWATCH)" >&2; exit 2; }
for v in n hold_secs gets; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-hold: $v must be a positive whole number" >&2; exit 2; }
done
[ "$n" -le 4000000 ] || { echo "bench-hold: N is at most 4000000" >&2; exit 2; }

tag="${NS_TAG:-swh}$$"
victim="${tag}v"
attacker="${tag}a"
vif="${tag:0:11}v0"
aif="${tag:0:11}a0"
url=http://127.0.0.1:9890
agent_pid=""
work=$(mktemp -d)
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
    sleep 0.5
    [ -n "$agent_pid" ] && kill -KILL "$agent_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    for ns in "$victim" "$attacker"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lab_pair "$victim" "$attacker" "$vif" "$aif" 10.198.0.1/24 10.198.0.2/24

in_victim() { ip netns exec "$victim" "$@"; }
now() { date +%s.%N; }
page() { in_victim curl -s --max-time 10 "$url/metrics"; }
metric() { awk -v m="$1 " 'index($0, m) == 1 { print $NF; exit }' <<<"$2"; }
cpu_ticks() { # utime+stime, cutime+cstime of a process, in clock ticks
    local stat rest f
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo "$(( f[11] + f[12] )) $(( f[13] + f[14] ))"
}
latency() { # LATENCY_GETS GETs of /metrics: "median max" in ms
    local i
    for ((i = 0; i < gets; i++)); do
        in_victim curl -s -o /dev/null --max-time 10 -w '%{time_total}\n' "$url/metrics"
    done | sort -n | awk '{ t[NR] = $1 * 1000 } END { printf "%.1f %.1f\n", t[int((NR + 1) / 2)], t[NR] }'
}
held_in_kernel() { # bans in the kernel's sets or maps
    case $1 in
        nftables) in_victim nft -j list set inet synwatch banned4 2>/dev/null | python3 -c 'import json,sys
d=json.load(sys.stdin)
print(sum(len(x["set"].get("elem", [])) for x in d["nftables"] if "set" in x))' 2>/dev/null || echo 0 ;;
        iptables) in_victim ipset list synwatch4 -t 2>/dev/null | awk -F': ' '/Number of entries/ { print $2 }' || echo 0 ;;
        xdp) metric synwatch_blocked_sources "$(page)" ;;
    esac
}
tear() {
    case $1 in
        nftables) in_victim nft flush ruleset ;;
        iptables)
            for t in iptables ip6tables; do
                for c in INPUT FORWARD SYNWATCH; do in_victim "$t" -w -F "$c" 2>/dev/null || true; done
            done
            for s in $(in_victim ipset list -n); do in_victim ipset flush "$s"; done ;;
    esac
}

hz=$(getconf CLK_TCK)
echo "bench-hold: N=$n, hold ${hold_secs} s, $(nproc) CPUs, $(uname -r), synwatch $("$synwatch" --version 2>/dev/null | awk '{ print $2 }')"
for backend in $backends; do
    state="$work/$backend"
    mkdir -p "$state"
    python3 - "$state/bans.db" "$n" <<'EOF'
import ipaddress, sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path)
db.executescript("""
PRAGMA journal_mode = WAL;
CREATE TABLE bans (addr TEXT PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER,
    reason TEXT NOT NULL, offences INTEGER NOT NULL, new_only INTEGER NOT NULL DEFAULT 0);
CREATE TABLE offenders (addr TEXT PRIMARY KEY, offences INTEGER NOT NULL,
    last_until INTEGER NOT NULL);
PRAGMA user_version = 1;
""")
now = int(time.time())
first = int(ipaddress.IPv4Address("10.128.0.1"))
rows = [(str(ipaddress.IPv4Address(first + i)), now, now + 3600, "1,2,3,4", 1, 0) for i in range(n)]
db.executemany("INSERT INTO bans VALUES (?, ?, ?, ?, ?, ?)", rows)
db.executemany("INSERT INTO offenders VALUES (?, 1, ?)", [(r[0], r[2]) for r in rows])
db.commit()
EOF
    case $backend in
        xdp) source=xdp ;;
        *) source=pcap ;;
    esac
    t0=$(now)
    # ip netns exec execs the agent: $! is the agent's own pid.
    ip netns exec "$victim" "$synwatch" run --iface "$vif" --source "$source" --block "$backend" \
        --state-dir "$state" --metrics-addr 127.0.0.1:9890 --format json \
        >"$work/$backend.jsonl" 2>"$work/$backend.log" &
    agent_pid=$!
    until grep -qs watching "$work/$backend.log"; do
        kill -0 "$agent_pid" 2>/dev/null || { cat "$work/$backend.log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(now)
    held=$(metric synwatch_blocked_sources "$(page)")
    read -r self0 child0 <<<"$(cpu_ticks "$agent_pid")"
    sleep "$hold_secs"
    read -r self1 child1 <<<"$(cpu_ticks "$agent_pid")"
    read -r lat_med lat_max <<<"$(latency)"
    p=$(page)
    idle_turn=$(metric synwatch_pipeline_longest_turn_seconds "$p")
    printf '%s: restore of %d bans to the banner %.2f s; held %s; idle %d s: agent CPU %.2f s, children %.2f s; /metrics median %s ms, max %s ms; longest turn %s s, turns over 50 ms %s\n' \
        "$backend" "$n" "$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')" "$held" "$hold_secs" \
        "$(awk -v t=$(( self1 - self0 )) -v h="$hz" 'BEGIN { print t / h }')" \
        "$(awk -v t=$(( child1 - child0 )) -v h="$hz" 'BEGIN { print t / h }')" \
        "$lat_med" "$lat_max" "$idle_turn" "$(metric synwatch_pipeline_slow_turns_total "$p")"
    if [ "$backend" != xdp ]; then
        reinstated0=$(metric synwatch_rules_reinstated_total "$p")
        t2=$(now)
        tear "$backend"
        until [ "$(metric synwatch_rules_reinstated_total "$(page)")" != "$reinstated0" ]; do
            sleep 0.1
            awk -v a="$(now)" -v b="$t2" 'BEGIN { exit !(a - b > 30) }' && { echo "bench-hold: $backend: not set up again within 30 s" >&2; exit 1; }
        done
        t3=$(now)
        read -r tl_med tl_max <<<"$(latency)"
        until [ "$(metric synwatch_bans_reinstating "$(page)")" = 0 ]; do
            sleep 0.1
            awk -v a="$(now)" -v b="$t2" 'BEGIN { exit !(a - b > 120) }' && { echo "bench-hold: $backend: bans not all back within 120 s" >&2; exit 1; }
        done
        t4=$(now)
        p=$(page)
        printf '%s: torn down: rules back after %.2f s, all bans back after %.2f s (kernel holds %s); /metrics meanwhile median %s ms, max %s ms; longest turn %s s, turns over 50 ms %s\n' \
            "$backend" "$(awk -v a="$t3" -v b="$t2" 'BEGIN { print a - b }')" \
            "$(awk -v a="$t4" -v b="$t2" 'BEGIN { print a - b }')" "$(held_in_kernel "$backend")" "$tl_med" "$tl_max" \
            "$(metric synwatch_pipeline_longest_turn_seconds "$p")" "$(metric synwatch_pipeline_slow_turns_total "$p")"
    fi
    kill "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=""
done
