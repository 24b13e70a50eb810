#!/usr/bin/env bash
# The live agent under a SYN flood: two throwaway network namespaces joined by a veth pair,
# a victim (10.198.0.1) running `synwatch run` and, for comparison, tcpdump with the same
# SYN-without-ACK filter, and an attacker (10.198.0.2) running
# `hping3 --flood -S --rand-source -p 80` at the victim for SECONDS_FLOOD seconds (every
# packet a new random IPv4 source). Throughout the flood the agent's /metrics is fetched
# every 100 ms and its RSS sampled every 100 ms. Prints packets offered and seen, kernel
# drops, CPU (over the flood, and per packet over its second half, once the agent's tables
# have grown), peak memory, tracked sources, events written and the /metrics latency.
#
# usage: [SYNWATCH=target/release/synwatch] [SECONDS_FLOOD=20] [BENCH_DIR=target/bench] \
#        [HPING_PROCS=1] scripts/bench-flood.sh
# HPING_PROCS runs that many hping3 floods side by side (one hping3 tops out at one CPU).
# HPING_FLAGS (default -S) sets the packets' flags: "-S -x" sets More Fragments on every
# SYN, a flood of first fragments whose datagrams never complete (fragment reassembly
# under load: every one is held until pushed out of the bounded table). SYNWATCH_ARGS
# adds options to the agent's command line (e.g. "--source pcap"). HPING_SOURCE (default
# --rand-source) sets where the SYNs come from: "-k" floods from the attacker's own
# address and one source port, every SYN after the first a retransmission of it.
# NS_TAG (default swf) prefixes the namespaces' names (the PID follows).
# SLOW_SCAN=SECS adds a real scanner 2 s into the flood: `nmap -sS --scan-delay SECS` of
# ports 1-8 from 10.198.0.3 (a second attacker address), and reports whether synwatch
# reported its scan (the flood must last 2 + 8 x SECS seconds or more).
# Before the flood, /metrics is fetched 20 times on the idle agent as a baseline.
# Needs root, iproute2, hping3, tcpdump, curl. Traffic only ever goes between the two
# namespaces it creates, and they are removed (with every process it started) on every
# exit path. Files of the last run are left in BENCH_DIR/flood.*.
#
# The victim has a default route via the attacker, so the RSTs it answers the flood with
# go out of the veth like a real host's replies (and are dropped in the attacker
# namespace, which does not forward) instead of failing a route lookup.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"

synwatch=${SYNWATCH:-target/release/synwatch}
secs=${SECONDS_FLOOD:-20}
procs=${HPING_PROCS:-1}
read -r -a hping_flags <<<"${HPING_FLAGS:--S}"
read -r -a agent_args <<<"${SYNWATCH_ARGS:-}"
read -r -a hping_source <<<"${HPING_SOURCE:---rand-source}"
dir=${BENCH_DIR:-target/bench}
metrics_addr=127.0.0.1:9810

for tool in ip hping3 tcpdump curl; do
    command -v "$tool" >/dev/null \
        || { echo "bench-flood: $tool is missing (apt-get install iproute2 hping3 tcpdump curl)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-flood: needs root to create network namespaces" >&2; exit 2; }
[ -x "$synwatch" ] || { echo "bench-flood: no synwatch binary at $synwatch (cargo build --release, or set SYNWATCH)" >&2; exit 2; }
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "bench-flood: SECONDS_FLOOD must be a whole number of seconds" >&2; exit 2; }
[[ "$procs" =~ ^[1-9][0-9]*$ ]] || { echo "bench-flood: HPING_PROCS must be a whole number" >&2; exit 2; }
mkdir -p "$dir"

tag="${NS_TAG:-swf}$$"
victim="${tag}v"
attacker="${tag}a"
vif="${tag:0:11}v0"
aif="${tag:0:11}a0"
events="$dir/flood.events.jsonl"
agent_log="$dir/flood.synwatch.log"
tcpdump_log="$dir/flood.tcpdump.log"
hping_log="$dir/flood.hping3"
latency="$dir/flood.latency.txt"
idle_latency="$dir/flood.latency-idle.txt"
rss_log="$dir/flood.rss.txt"
metrics_page="$dir/flood.metrics.txt"
stop_file="$dir/flood.stop"
rm -f "$events" "$agent_log" "$tcpdump_log" "$hping_log".*.log "$latency" "$idle_latency" "$rss_log" \
    "$metrics_page" "$stop_file"

pids=()
cleanup() {
    touch "$stop_file" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$victim" 2>/dev/null || true
    ip netns del "$attacker" 2>/dev/null || true
    rm -f "$stop_file"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

load0=$(cut -d' ' -f1-3 /proc/loadavg)
lab_pair "$victim" "$attacker" "$vif" "$aif" 10.198.0.1/24 10.198.0.2/24
ip -n "$victim" route add default via 10.198.0.2 dev "$vif"

in_victim() { ip netns exec "$victim" "$@"; }
wait_for() { # wait_for FILE TEXT PID WHAT
    for _ in $(seq 200); do grep -q "$2" "$1" && return 0; kill -0 "$3" 2>/dev/null || break; sleep 0.05; done
    grep -q "$2" "$1" || { cat "$1" >&2; echo "bench-flood: $4 did not start" >&2; exit 1; }
}
counter() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3"; }
# Host-wide (all namespaces, all CPUs) packets dropped because a CPU's input backlog was full.
backlog_drops() {
    local s=0 dropped
    while read -r _ dropped _; do s=$(( s + 16#$dropped )); done </proc/net/softnet_stat
    echo "$s"
}
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    local stat rest f
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo $(( f[11] + f[12] ))
}
# Nanoseconds a process's threads have run so far (the first field of each thread's
# schedstat: finer than clock ticks, for the flood's second half alone).
cpu_ns() {
    local s=0 t run _
    for t in /proc/"$1"/task/*/schedstat; do
        read -r run _ <"$t" 2>/dev/null && s=$(( s + run ))
    done
    echo "$s"
}
# The machine's CPU time so far (all CPUs, clock ticks): "user+nice system irq+softirq idle+iowait total".
machine_cpu() {
    local _cpu user nice system idle iowait irq softirq steal
    read -r _cpu user nice system idle iowait irq softirq steal _ </proc/stat
    echo "$(( user + nice )) $system $(( irq + softirq )) $(( idle + iowait )) $(( user + nice + system + idle + iowait + irq + softirq + steal ))"
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# The agent and the peer, both on the victim's interface. `ip netns exec` execs the
# command, so these are the PIDs of synwatch and tcpdump themselves (not so through a shell
# function, which would run in a subshell of its own). `--block none`: this measures
# detection and reporting, and an agent that blocks would keep its bans and control
# socket in the host's --state-dir, which the namespaces do not separate.
ip netns exec "$victim" "$synwatch" run --iface "$vif" --format json --metrics-addr "$metrics_addr" \
    --block none "${agent_args[@]}" >"$events" 2>"$agent_log" &
agent_pid=$!
pids+=("$agent_pid")
ip netns exec "$victim" tcpdump -i "$vif" -n -w /dev/null -B 8192 'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn' \
    2>"$tcpdump_log" &
tcpdump_pid=$!
pids+=("$tcpdump_pid")
wait_for "$agent_log" "watching" "$agent_pid" "synwatch"
wait_for "$tcpdump_log" "listening on" "$tcpdump_pid" "tcpdump"

tx0=$(counter "$attacker" "$aif" tx_packets)
txd0=$(counter "$attacker" "$aif" tx_dropped)
rx0=$(counter "$victim" "$vif" rx_packets)
rxd0=$(counter "$victim" "$vif" rx_dropped)
bl0=$(backlog_drops)
agent_cpu0=$(cpu_ticks "$agent_pid")
tcpdump_cpu0=$(cpu_ticks "$tcpdump_pid")
read -r m_user0 m_sys0 m_irq0 m_idle0 m_total0 < <(machine_cpu)

# /metrics every 100 ms from inside the victim namespace, one line per fetch:
# "HTTP-code seconds curl-exit"; until STOP_FILE exists or COUNT fetches were made.
scrape() { # scrape STOP_FILE COUNT
    # shellcheck disable=SC2016
    ip netns exec "$victim" bash -c '
        n=0
        while [ ! -e "$1" ] && [ "$n" -lt "$3" ]; do
            rc=0
            r=$(curl -s -o /dev/null -w "%{http_code} %{time_total}" --max-time 2 "http://$2/metrics") || rc=$?
            echo "$r $rc"
            n=$((n + 1))
            sleep 0.1
        done' _ "$1" "$metrics_addr" "$2"
}
read -r _ _ _ q_idle0 q_total0 < <(machine_cpu)
scrape "$stop_file" 20 >"$idle_latency"
read -r _ _ _ q_idle1 q_total1 < <(machine_cpu)

scrape "$stop_file" 1000000000 >"$latency" &
scrape_pid=$!
pids+=("$scrape_pid")
# synwatch's resident memory every 100 ms (kB).
(
    while [ ! -e "$stop_file" ]; do
        while read -r key value _; do
            [ "$key" = "VmRSS:" ] && { echo "$value"; break; }
        done <"/proc/$agent_pid/status" || break
        sleep 0.1
    done
) >"$rss_log" &
rss_pid=$!
pids+=("$rss_pid")

echo "bench-flood: flooding 10.198.0.1:80 from random sources for $secs s ($procs hping3)..." >&2
flood_pids=()
for i in $(seq "$procs"); do
    ip netns exec "$attacker" timeout "$secs" hping3 --flood "${hping_flags[@]}" "${hping_source[@]}" -p 80 10.198.0.1 \
        >"$hping_log.$i.log" 2>&1 &
    flood_pids+=("$!")
    pids+=("$!")
done
# Halfway through, the tables have grown to their caps (a start-up cost, the kernel zeroing
# their pages): the second half's CPU and packets give the cost of holding a flood.
half="$dir/flood.half"
rm -f "$half"
(
    sleep "$(awk -v s="$secs" 'BEGIN { print s / 2 }')"
    echo "$(cpu_ns "$agent_pid") $(cpu_ns "$tcpdump_pid") $(counter "$victim" "$vif" rx_packets)" >"$half"
) &
pids+=("$!")
slow_scan=${SLOW_SCAN:-}
if [ -n "$slow_scan" ]; then
    ip -n "$attacker" addr add 10.198.0.3/24 dev "$aif"
    (
        sleep 2
        ip netns exec "$attacker" nmap -n -Pn -sS --scan-delay "${slow_scan}s" --max-retries 0 \
            -e "$aif" -S 10.198.0.3 -p 1-8 10.198.0.1
    ) >"$dir/flood.nmap.log" 2>&1 &
    pids+=("$!")
fi
for i in "${!flood_pids[@]}"; do
    flood_rc=0
    wait "${flood_pids[$i]}" || flood_rc=$?
    [ "$flood_rc" -eq 124 ] || { cat "$hping_log.$((i + 1)).log" >&2; echo "bench-flood: hping3 ended early (exit $flood_rc)" >&2; exit 1; }
done
read -r m_user1 m_sys1 m_irq1 m_idle1 m_total1 < <(machine_cpu)
half_end="$(cpu_ns "$agent_pid") $(cpu_ns "$tcpdump_pid") $(counter "$victim" "$vif" rx_packets)"
touch "$stop_file"
sleep 1

kill -0 "$agent_pid" 2>/dev/null || { cat "$agent_log" >&2; echo "bench-flood: synwatch died during the flood" >&2; exit 1; }
tx1=$(counter "$attacker" "$aif" tx_packets)
txd1=$(counter "$attacker" "$aif" tx_dropped)
rx1=$(counter "$victim" "$vif" rx_packets)
rxd1=$(counter "$victim" "$vif" rx_dropped)
bl1=$(backlog_drops)
in_victim curl -sf --max-time 2 "http://$metrics_addr/metrics" >"$metrics_page" \
    || { echo "bench-flood: cannot read synwatch's metrics after the flood" >&2; exit 1; }
agent_cpu1=$(cpu_ticks "$agent_pid")
tcpdump_cpu1=$(cpu_ticks "$tcpdump_pid")
hwm=$(status_kb "$agent_pid" VmHWM)
rss_end=$(status_kb "$agent_pid" VmRSS)
wait "$scrape_pid" "$rss_pid" 2>/dev/null || true

# Stops PID with SIGNAL, waiting up to 10 s before SIGKILL; returns its exit code.
stop() {
    kill "-$2" "$1"
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && { echo "bench-flood: PID $1 ignored SIG$2, killing it" >&2; kill -KILL "$1"; }
    local rc=0; wait "$1" || rc=$?
    return "$rc"
}
agent_rc=0; stop "$agent_pid" TERM || agent_rc=$?
stop "$tcpdump_pid" INT || true
pids=()

metric() { awk -v m="$1" 'index($0, m) == 1 { v = $2 } END { print v + 0 }' "$metrics_page"; }
seen=$(metric "synwatch_packets_total{")
drops=$(metric "synwatch_capture_drops_total{")
new_in=$(metric 'synwatch_new_connections_total{direction="in"}')
retrans=$(metric "synwatch_retransmitted_attempts_total ")
tracked=$(metric "synwatch_tracked_sources ")
evicted=$(metric "synwatch_sources_evicted_total ")
suppressed=$(metric "synwatch_events_suppressed_total ")
max_sources=$("$synwatch" run --print-config 2>/dev/null | awk -F' *= *' '$1 == "max_sources" { print $2 }')
max_sources=${max_sources:-100000}
td_captured=$(awk '/packets captured/ { print $1 }' "$tcpdump_log")
td_received=$(awk '/packets received by filter/ { print $1 }' "$tcpdump_log")
td_dropped=$(awk '/packets dropped by kernel/ { print $1 }' "$tcpdump_log")

offered=$(( tx1 - tx0 + txd1 - txd0 ))
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "n/a" }'; }
cpu() { awk -v t="$1" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'; }
agent_ticks=$(( agent_cpu1 - agent_cpu0 ))
tcpdump_ticks=$(( tcpdump_cpu1 - tcpdump_cpu0 ))
peak_rss=$(sort -n "$rss_log" | tail -1)
lines=$(wc -l <"$events")
bytes=$(wc -c <"$events")

echo "synwatch run under $procs x hping3 --flood ${hping_flags[*]} ${hping_source[*]} for $secs s ($(nproc) CPUs shared by hping3, the kernel, synwatch and tcpdump)"
echo "  load average before the run: $load0"
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }
m_total=$(( m_total1 - m_total0 ))
echo "  machine before the flood (idle agent, 20 /metrics fetches):" \
    "$(pct $(( q_total1 - q_total0 - (q_idle1 - q_idle0) )) $(( q_total1 - q_total0 ))) of all CPUs busy"
echo "  machine during the flood: $(pct $(( m_total - (m_idle1 - m_idle0) )) "$m_total") of all CPUs busy" \
    "(user $(pct $(( m_user1 - m_user0 )) "$m_total"), system $(pct $(( m_sys1 - m_sys0 )) "$m_total")," \
    "irq+softirq $(pct $(( m_irq1 - m_irq0 )) "$m_total"))"
echo "  packets offered (attacker veth tx + tx_dropped): $offered = $(( offered / secs )) /s  (tx_dropped $(( txd1 - txd0 ));" \
    "hping3 says $(cat "$hping_log".*.log | awk '/packets transmitted/ { s += $1 } END { print s + 0 }') transmitted)"
# A veth's rx_packets is its peer's tx count (packets handed over); what the victim's
# input backlog could not take shows as the attacker's tx_dropped and in softnet_stat.
echo "  packets reaching the victim veth (rx):         $(( rx1 - rx0 )) (rx_dropped $(( rxd1 - rxd0 )); host-wide backlog drops $(( bl1 - bl0 )))"
echo "  synwatch: packets seen $seen ($(ratio "$seen" "$offered") of offered), kernel drops $drops;" \
    "new connections $new_in, retransmissions $retrans"
echo "  tcpdump (peer): packets captured ${td_captured:-?} ($(ratio "${td_captured:-0}" "$offered") of offered)," \
    "received by filter ${td_received:-?}, dropped by kernel ${td_dropped:-?}"
echo "  synwatch CPU: $(cpu "$agent_ticks") s over the flood" \
    "($(awk -v t="$agent_ticks" -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.0f%%", 100 * t / hz / s }') of one CPU)," \
    "$(awk -v t="$agent_ticks" -v hz="$hz" -v n="$seen" 'BEGIN { if (n > 0) printf "%.2f", t / hz / (n / 1e6); else print "n/a" }') s per million packets seen;" \
    "tcpdump CPU: $(cpu "$tcpdump_ticks") s," \
    "$(awk -v t="$tcpdump_ticks" -v hz="$hz" -v n="${td_captured:-0}" 'BEGIN { if (n > 0) printf "%.3f", t / hz / (n / 1e6); else print "n/a" }') s per million packets captured"
echo "  synwatch / tcpdump CPU per packet: $(awk -v a="$agent_ticks" -v b="$tcpdump_ticks" -v n="$seen" -v m="${td_captured:-0}" \
    'BEGIN { if (b > 0 && n > 0 && m > 0) printf "%.1fx", (a / n) / (b / m); else print "n/a (tcpdump used under one clock tick)" }')"
if [ -s "$half" ]; then
    # Both saw every packet (checked above): the veth's count is each one's packets.
    read -r a0 t0 r0 <"$half"
    read -r a1 t1 r1 <<<"$half_end"
    echo "  second half of the flood ($(( r1 - r0 )) packets, tables grown):" \
        "$(awk -v a=$(( a1 - a0 )) -v t=$(( t1 - t0 )) -v n=$(( r1 - r0 )) 'BEGIN {
            if (n > 0 && t > 0) printf "synwatch %.3f s, tcpdump %.3f s per million packets: %.1fx", a / n / 1e3, t / n / 1e3, a / t;
            else print "n/a" }')"
fi
echo "  synwatch memory: peak VmRSS sampled ${peak_rss:-?} kB, VmHWM $hwm kB, VmRSS after the flood $rss_end kB"
echo "  tracked sources: $tracked (cap --max-sources $max_sources: $( [ "$tracked" -le "$max_sources" ] && echo "bounded" || echo "EXCEEDED")), evicted $evicted"
echo "  fragment reassembly: $(metric "synwatch_fragments_total ") fragments, $(metric "synwatch_reassembled_datagrams_total ") judged," \
    "$(metric 'synwatch_reassembly_failures_total{reason="evicted"}') evicted; held at the end $(metric "synwatch_reassembly_datagrams ") datagrams," \
    "$(metric "synwatch_reassembly_bytes ") bytes"
echo "  events on stdout: $lines lines, $bytes bytes" \
    "($(grep -c '"event":"connection"' "$events" || true) connection, $(grep -c '"event":"suppressed"' "$events" || true) suppressed," \
    "$(grep -c '"event":"scan"' "$events" || true) scan); held back by the log limit (metric): $suppressed"
latency_summary() { # latency_summary WHAT FILE
    sort -k2,2g "$2" | awk -v limit=0.1 -v what="$1" '
        { n++; if ($1 != "200" || $3 != 0) fail++; else { t[++ok] = $2; if ($2 >= limit) slow++ } }
        END {
            if (ok == 0) { printf "  /metrics %s: %d fetches, %d failed, none answered\n", what, n, fail; exit }
            p = int(0.99 * ok + 0.999999); if (p < 1) p = 1
            printf "  /metrics %s: %d fetches, %d failed (non-200 or timeout); latency median %.1f ms, p99 %.1f ms, max %.1f ms; %s\n",
                what, n, fail, 1000 * t[int((ok + 1) / 2)], 1000 * t[p], 1000 * t[ok],
                (slow + fail == 0) ? "all under 100 ms" : sprintf("%d NOT under 100 ms", slow + fail)
        }'
}
if [ -n "$slow_scan" ]; then
    found=$(grep '"event":"scan"' "$events" | grep '"src":"10.198.0.3"' | head -1 || true)
    echo "  slow scanner (nmap -sS --scan-delay ${slow_scan}s -p 1-8 from 10.198.0.3, 2 s into the flood):" \
        "$( [ -n "$found" ] && echo "reported: $found" || echo "NOT reported")"
    grep -q 'Nmap done' "$dir/flood.nmap.log" || echo "  (nmap had not finished when the flood ended: see $dir/flood.nmap.log)"
fi
latency_summary "on the idle agent" "$idle_latency"
latency_summary "during the flood" "$latency"
echo "  synwatch exit code after SIGTERM: $agent_rc; its summary:"
sed -n '/stopped/,$p' "$agent_log" | sed 's/^/    /'
echo "  files: $dir/flood.*"
[ "$agent_rc" -eq 0 ] || { echo "bench-flood: synwatch exited with $agent_rc" >&2; exit 1; }
[ "$tracked" -le "$max_sources" ] || { echo "bench-flood: synwatch tracked more sources than --max-sources" >&2; exit 1; }
