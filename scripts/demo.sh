#!/usr/bin/env bash
# synwatch in five steps, in two network namespaces of its own (nothing leaves them):
# a victim running a web server and synwatch, an attacker with two addresses (one
# scans, one is an ordinary client). Needs root; `make demo` builds and runs it.
#
#   BIN=path/to/synwatch scripts/demo.sh     (default: target/release/synwatch)
#   DEMO_PAUSE=2 scripts/demo.sh             (seconds to pause between steps)
set -euo pipefail

BIN=${BIN:-target/release/synwatch}
BIN=$(realpath "$BIN")
PAUSE=${DEMO_PAUSE:-0}
TAG="swdemo$$"
VICTIM="${TAG}v" ATTACKER="${TAG}a" VIF="${TAG}v" AIF="${TAG}a"
VICTIM_IP=10.97.0.1 SCANNER_IP=10.97.0.2 CLIENT_IP=10.97.0.3
WORK=$(mktemp -d /tmp/synwatch-demo.XXXXXX)
AGENT_PID="" SERVER_PID=""

[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, capture, nftables)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "demo: $BIN not found: run 'make demo' (it builds first)" >&2; exit 2; }
for tool in ip nmap curl python3 nft; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is missing: 'make deps' installs it" >&2; exit 2; }
done

cleanup() {
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    # $SERVER_PID is the subshell around `ip netns exec`: end whatever still runs in
    # the namespaces (the web server) before removing them.
    for ns in "$VICTIM" "$ATTACKER"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
    done
    ip netns del "$VICTIM" 2>/dev/null || true
    ip netns del "$ATTACKER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() {
    sleep "$PAUSE"
    printf '\n\033[1m== %s\033[0m\n' "$*"
}
in_victim() { ip netns exec "$VICTIM" "$@"; }
in_attacker() { ip netns exec "$ATTACKER" "$@"; }
web() { # web FROM: fetch the victim's page from the attacker-side address FROM
    if in_attacker curl -s -o /dev/null --interface "$1" --connect-timeout 2 --max-time 3 \
        "http://$VICTIM_IP:8080/"; then
        echo "  $1 -> $VICTIM_IP:8080: page received"
    else
        echo "  $1 -> $VICTIM_IP:8080: no answer (curl exit $?)"
    fi
}

step "1. A lab: namespace $VICTIM ($VICTIM_IP, web server on 8080) and $ATTACKER ($SCANNER_IP scanner, $CLIENT_IP client)"
ip netns add "$VICTIM"
ip netns add "$ATTACKER"
ip link add "$VIF" netns "$VICTIM" type veth peer name "$AIF" netns "$ATTACKER"
in_victim ip addr add "$VICTIM_IP/24" dev "$VIF"
in_attacker ip addr add "$SCANNER_IP/24" dev "$AIF"
in_attacker ip addr add "$CLIENT_IP/24" dev "$AIF"
for ns in "$VICTIM" "$ATTACKER"; do ip -n "$ns" link set lo up; done
ip -n "$VICTIM" link set "$VIF" up
ip -n "$ATTACKER" link set "$AIF" up
in_victim python3 -m http.server 8080 --bind "$VICTIM_IP" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do
    in_attacker curl -s -o /dev/null --max-time 1 "http://$VICTIM_IP:8080/" && break
    sleep 0.1
done

step "2. synwatch starts on the victim (nftables bans for 10 minutes)"
echo "  $ $(basename "$BIN") run --iface $VIF --format table --block nftables --ban 10m"
ip netns exec "$VICTIM" "$BIN" run --iface "$VIF" --format table --block nftables --ban 10m \
    --state-dir "$WORK/state" >"$WORK/events" 2>"$WORK/log" &
AGENT_PID=$!
for _ in $(seq 100); do
    grep -q watching "$WORK/log" && break
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
    sleep 0.1
done
sed 's/^/  /' "$WORK/log"

step "3. Both attacker-side addresses reach the web server"
web "$SCANNER_IP"
web "$CLIENT_IP"

step "4. $SCANNER_IP scans ports 1-1000 (nmap -sS, 1000 probes a second)"
in_attacker nmap -n -Pn -sS -T4 --min-rate 1000 --max-rate 1000 --max-retries 0 --max-rtt-timeout 100ms \
    -p 1-1000 -S "$SCANNER_IP" -e "$AIF" "$VICTIM_IP" >"$WORK/nmap"
grep -E "Not shown|Nmap done" "$WORK/nmap" | sed 's/^/  nmap: /'
echo "  (closed ports answer with a reset until the ban takes effect; after it nothing"
echo "  answers, and nmap calls the rest filtered)"
for _ in $(seq 50); do
    grep -q "Blocked" "$WORK/events" && break
    sleep 0.1
done

step "5. What synwatch logged (stdout): connections, the scan, the ban"
total=$(grep -c "New connection" "$WORK/events" || true)
head -n 6 "$WORK/events" | sed 's/^/  /'
echo "  ... $total connection lines in all; the others:"
tail -n +7 "$WORK/events" | grep -v "New connection" | sed 's/^/  /'

step "6. Its metrics (http://127.0.0.1:9809/metrics inside the victim)"
in_victim curl -s http://127.0.0.1:9809/metrics \
    | grep -E '^synwatch_(new_connections_total|port_scans_total|blocked_sources|blocks_total|packets_total|capture_drops_total)' \
    | sed 's/^/  /'

step "7. The scanner is now cut off; the client still gets through"
web "$SCANNER_IP"
web "$CLIENT_IP"
echo "  the kernel's ban set:"
in_victim nft list set inet synwatch banned4 | grep -E "elements|$SCANNER_IP" | sed 's/^/  /'
echo "  $ synwatch blocks list"
in_victim "$BIN" blocks list --state-dir "$WORK/state" --format table | sed 's/^/  /'

step "8. synwatch stops (SIGTERM): it removes its rules and sums up"
kill "$AGENT_PID"
wait "$AGENT_PID" || true
AGENT_PID=""
tail -n 3 "$WORK/log" | sed 's/^/  /'
if in_victim nft list table inet synwatch >/dev/null 2>&1; then
    echo "  synwatch's table is still there" >&2
    exit 1
fi
echo "  no synwatch table left; namespaces removed on exit"
