#!/usr/bin/env bash
# Records a real scan in a two-namespace lab: a victim (10.199.0.1, fd99::1) serving HTTP
# on port 8080, an attacker namespace with a scanner address (10.199.0.2, fd99::2) that
# runs `nmap -sS` over IPv4 and IPv6, and a client address (10.199.0.3) that makes
# ordinary curl requests. tcpdump on the victim's interface writes the capture.
#
# usage: scripts/lab-capture.sh OUT.pcap [PORTS] [CURL_REQUESTS]
# Needs root, iproute2, tcpdump, nmap, curl, python3. Only the lab's own namespaces are
# touched, and they are removed on every exit path.
#
# With LAB_AGENT set, that command also runs in the victim namespace for the whole of
# the traffic ({iface} in it becomes the victim's interface), with stdout and stderr
# written to LAB_AGENT_OUT and LAB_AGENT_ERR; it is started first, waited for until its
# stderr says "watching", stopped with SIGTERM at the end, and its exit code written to
# LAB_AGENT_OUT.exit; with LAB_AGENT_METRICS (a URL) the agent's metrics are fetched
# inside the victim namespace just before it is stopped, into LAB_AGENT_OUT.metrics. E.g.:
#   LAB_AGENT='target/debug/synwatch run --iface {iface} --format json' \
#   LAB_AGENT_OUT=events.jsonl LAB_AGENT_ERR=agent.log scripts/lab-capture.sh lab.pcap
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"

out=${1:?usage: $0 OUT.pcap [PORTS] [CURL_REQUESTS]}
ports=${2:-1-100}
requests=${3:-20}

agent_pid=""
for tool in ip tcpdump nmap curl python3; do
    command -v "$tool" >/dev/null || { echo "lab-capture: $tool is missing (make deps installs it)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "lab-capture: needs root to create network namespaces" >&2; exit 2; }

tag="sw$$$RANDOM"
victim="${tag}v"
attacker="${tag}a"
vif="${tag:0:11}v0"
aif="${tag:0:11}a0"
pids=()

cleanup() {
    [ -n "$agent_pid" ] && kill -KILL "$agent_pid" 2>/dev/null
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$victim" 2>/dev/null || true
    ip netns del "$attacker" 2>/dev/null || true
}
trap cleanup EXIT

lab_pair "$victim" "$attacker" "$vif" "$aif" "10.199.0.1/24 fd99::1/64" \
    10.199.0.2/24 10.199.0.3/24 fd99::2/64

# Dual-stack HTTP server on the victim.
ip netns exec "$victim" python3 -m http.server 8080 --bind :: >/dev/null 2>&1 &
pids+=($!)

errlog=$(mktemp)
ip netns exec "$victim" tcpdump -i "$vif" --immediate-mode -U -n -s 2048 -B 8192 -w "$out" 2>"$errlog" &
tcpdump_pid=$!
pids+=("$tcpdump_pid")
for _ in $(seq 100); do grep -q "listening on" "$errlog" && break; sleep 0.05; done
grep -q "listening on" "$errlog" || { cat "$errlog" >&2; echo "lab-capture: tcpdump did not start" >&2; exit 1; }
for _ in $(seq 100); do
    ip netns exec "$victim" python3 -c 'import socket; socket.create_connection(("::1", 8080), 0.2)' 2>/dev/null && break
    sleep 0.05
done

if [ -n "${LAB_AGENT:-}" ]; then
    : "${LAB_AGENT_OUT:?LAB_AGENT needs LAB_AGENT_OUT}" "${LAB_AGENT_ERR:?LAB_AGENT needs LAB_AGENT_ERR}"
    agent_cmd=${LAB_AGENT//\{iface\}/$vif}
    # shellcheck disable=SC2086
    ip netns exec "$victim" $agent_cmd >"$LAB_AGENT_OUT" 2>"$LAB_AGENT_ERR" &
    agent_pid=$!
    for _ in $(seq 200); do grep -q "watching" "$LAB_AGENT_ERR" && break; kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.05; done
    grep -q "watching" "$LAB_AGENT_ERR" || { cat "$LAB_AGENT_ERR" >&2; echo "lab-capture: the agent did not start" >&2; exit 1; }
fi

for i in $(seq "$requests"); do
    ip netns exec "$attacker" curl -sf --interface 10.199.0.3 -o /dev/null "http://10.199.0.1:8080/" \
        || { echo "lab-capture: curl request $i failed" >&2; exit 1; }
done
ip netns exec "$attacker" nmap -n -Pn -sS -p "$ports" -e "$aif" -S 10.199.0.2 10.199.0.1 >/dev/null
ip netns exec "$attacker" nmap -n -Pn -6 -sS -p "$ports" fd99::1 >/dev/null
sleep 0.3

kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
if [ -n "$agent_pid" ]; then
    # The agent's metrics as its own namespace sees them (LAB_AGENT_METRICS: the URL).
    if [ -n "${LAB_AGENT_METRICS:-}" ]; then
        sleep 0.5
        ip netns exec "$victim" curl -sf --max-time 2 "$LAB_AGENT_METRICS" >"$LAB_AGENT_OUT.metrics" \
            || { echo "lab-capture: cannot read the agent's metrics" >&2; exit 1; }
    fi
    kill -TERM "$agent_pid"
    rc=0; wait "$agent_pid" || rc=$?
    echo "$rc" >"$LAB_AGENT_OUT.exit"
    agent_pid=""
fi
cat "$errlog" >&2
echo "lab-capture: wrote $out" >&2
