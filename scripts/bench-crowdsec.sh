#!/usr/bin/env bash
# The startup pull at fleet scale: N ban decisions (default 100,000) in a CrowdSec Local
# API (Debian's crowdsec, its own config and SQLite database in a tempdir, in a network
# namespace of its own), then, one after the other on the same LAPI:
#   - synwatch run --block nftables with a bouncer key, and
#   - crowdsec-firewall-bouncer (Debian's, nftables mode),
# each timed from its start until the kernel's set holds all N addresses, with its peak
# resident memory (VmHWM) at that moment. Prints one line per tool.
#
# Needs root, crowdsec and crowdsec-firewall-bouncer (apt-get install crowdsec
# crowdsec-firewall-bouncer; on a host with systemd, stop the services the packages
# start: this script runs its own LAPI and bouncer inside the namespace).
#   N=100000 SYNWATCH=target/release/synwatch scripts/bench-crowdsec.sh
# TOOLS="synwatch" measures synwatch only (the bouncer takes minutes at 100,000).
set -euo pipefail

N=${N:-100000}
TOOLS=${TOOLS:-synwatch bouncer}
SYNWATCH=${SYNWATCH:-target/release/synwatch}
SYNWATCH=$(realpath "$SYNWATCH")
NS=swfbench$$
DIR=$(mktemp -d)
PORT=8080
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

for tool in crowdsec cscli crowdsec-firewall-bouncer nft python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "$SYNWATCH" ] || { echo "missing: $SYNWATCH (make build)" >&2; exit 1; }

inns() { ip netns exec "$NS" "$@"; }
now() { date +%s.%N; }

ip netns add "$NS"
inns ip link set lo up
mkdir -p "$DIR/data" "$DIR/hub"
echo '{}' > "$DIR/hub/.index.json"
echo 'simulation: false' > "$DIR/simulation.yaml"
cat > "$DIR/profiles.yaml" <<'EOF'
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
EOF
cat > "$DIR/config.yaml" <<EOF
common:
  daemonize: false
  log_media: stdout
  log_level: warning
  working_dir: .
config_paths:
  config_dir: $DIR/
  data_dir: $DIR/data/
  simulation_path: $DIR/simulation.yaml
  hub_dir: $DIR/hub/
  index_path: $DIR/hub/.index.json
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
db_config:
  type: sqlite
  db_path: $DIR/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: $DIR/local_api_credentials.yaml
  server:
    listen_uri: 127.0.0.1:$PORT
    profiles_path: $DIR/profiles.yaml
prometheus:
  enabled: false
EOF
cscli() { inns /usr/bin/cscli -c "$DIR/config.yaml" "$@"; }
cscli machines add cli --auto --url "http://127.0.0.1:$PORT" >/dev/null 2>&1
ip netns exec "$NS" crowdsec -no-cs -c "$DIR/config.yaml" > "$DIR/lapi.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    inns curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/decisions" && break
    sleep 0.2
done

# N addresses in 100.64.0.0/10, imported in one file.
python3 - "$N" > "$DIR/decisions.json" <<'EOF'
import json, sys
n = int(sys.argv[1])
print(json.dumps([{"duration": "4h", "scope": "ip", "type": "ban", "origin": "bench",
                   "reason": "bench", "value": "100.%d.%d.%d" % (64 + (i >> 16), (i >> 8) & 255, i & 255)}
                  for i in range(1, n + 1)]))
EOF
t0=$(now)
cscli decisions import -i "$DIR/decisions.json" > "$DIR/import.log" 2>&1
t1=$(now)
echo "imported $N decisions into the LAPI in $(echo "$t1 - $t0" | bc) s"

# The LAPI's own share: one startup pull of everything, by curl (a bouncer of its own).
PROBE=$(cscli bouncers add probe -o raw)
t0=$(now)
bytes=$(inns curl -sf -H "X-Api-Key: $PROBE" "http://127.0.0.1:$PORT/v1/decisions/stream?startup=true" | wc -c)
t1=$(now)
echo "the LAPI answers a startup pull of $N decisions ($((bytes / 1024)) KiB) in $(echo "$t1 - $t0" | bc) s"
# What a fleet of pulling hosts costs it: 200 pulls of the changes (none), one after the
# other, by one curl on one connection (no process start between them).
urls=()
for _ in $(seq 200); do urls+=("http://127.0.0.1:$PORT/v1/decisions/stream" -o /dev/null); done
t0=$(now)
inns curl -sf -H "X-Api-Key: $PROBE" "${urls[@]}"
t1=$(now)
echo "200 pulls of no changes, one after the other, with $N decisions held: $(echo "scale=1; 200 / ($t1 - $t0)" | bc) pulls/s"

# The number of IPv4 addresses in an nftables set.
count() { inns nft list set "$1" "$2" "$3" 2>/dev/null | grep -oE '100\.[0-9]+\.[0-9]+\.[0-9]+' | wc -l; }

# Waits for process $1's set ($2 $3 $4) to hold N addresses; prints seconds and peak RSS.
measure() {
    local pid=$1 family=$2 table=$3 set=$4 name=$5 start=$6
    local deadline=$(( $(date +%s) + 1500 ))
    while :; do
        local c
        c=$(count "$family" "$table" "$set")
        if [ "$c" -ge "$N" ]; then
            local t hwm
            t=$(now)
            hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
            printf '%s: %d decisions in the kernel set after %.1f s, peak RSS %d MiB\n' \
                "$name" "$N" "$(echo "$t - $start" | bc)" $(( hwm / 1024 ))
            return 0
        fi
        if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "$name: only $c of $N in the set (gave up)"; return 1
        fi
        sleep 0.5
    done
}

# synwatch.
if [[ " $TOOLS " == *" synwatch "* ]]; then
KEY=$(cscli bouncers add synwatch -o raw)
echo "$KEY" > "$DIR/synwatch.key"
start=$(now)
ip netns exec "$NS" "$SYNWATCH" run --iface lo --source pcap --block nftables --state-dir "$DIR/sw-state" \
    --metrics-addr 127.0.0.1:9899 --format json \
    --crowdsec-bouncer-key-file "$DIR/synwatch.key" --crowdsec-url "http://127.0.0.1:$PORT" \
    > "$DIR/synwatch.jsonl" 2> "$DIR/synwatch.log" &
SWPID=$!
PIDS+=($SWPID)
sleep 0.2
# ip netns exec execs (no function or subshell between): the pid is synwatch's.
# First by its own counter of bans the kernel took (cheap to poll), then as for the
# bouncer, by listing the kernel's set (a listing of 100,000 takes a second or more
# itself, so that time is late by up to one listing).
blocks=0
while [ "$blocks" -lt "$N" ]; do
    blocks=$(inns curl -sf --max-time 2 http://127.0.0.1:9899/metrics \
        | awk '$1 == "synwatch_blocks_total" {print $2}')
    blocks=${blocks:-0}
    kill -0 "$SWPID" 2>/dev/null || { tail -5 "$DIR/synwatch.log"; exit 1; }
    sleep 0.1
done
t=$(now)
printf 'synwatch: the kernel took %d bans after %.1f s (synwatch_blocks_total), peak RSS %d MiB\n' \
    "$N" "$(echo "$t - $start" | bc)" $(( $(awk '/VmHWM/ {print $2}' "/proc/$SWPID/status") / 1024 ))
measure "$SWPID" inet synwatch banned4 "synwatch $($SYNWATCH --version | cut -d' ' -f2)" "$start" \
    || { tail -5 "$DIR/synwatch.log"; exit 1; }
kill -TERM "$SWPID"; wait "$SWPID" 2>/dev/null || true
nft_synwatch_gone=$(inns nft list table inet synwatch >/dev/null 2>&1 && echo no || echo yes)
[ "$nft_synwatch_gone" = yes ] || echo "warning: synwatch's table is still there"
fi

# crowdsec-firewall-bouncer.
[[ " $TOOLS " == *" bouncer "* ]] || exit 0
KEY=$(cscli bouncers add fwbouncer -o raw)
cat > "$DIR/bouncer.yaml" <<EOF
mode: nftables
pid_dir: $DIR/
update_frequency: 10s
daemonize: false
log_mode: stdout
log_level: info
api_url: http://127.0.0.1:$PORT/
api_key: $KEY
disable_ipv6: false
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: crowdsec-blacklists
blacklists_ipv6: crowdsec6-blacklists
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: crowdsec
    chain: crowdsec-chain
  ipv6:
    enabled: true
    set-only: false
    table: crowdsec6
    chain: crowdsec6-chain
prometheus:
  enabled: false
EOF
start=$(now)
ip netns exec "$NS" crowdsec-firewall-bouncer -c "$DIR/bouncer.yaml" > "$DIR/bouncer.log" 2>&1 &
FBPID=$!
PIDS+=($FBPID)
measure "$FBPID" ip crowdsec crowdsec-blacklists \
    "crowdsec-firewall-bouncer $(dpkg-query -W -f='${Version}' crowdsec-firewall-bouncer)" "$start" \
    || { tail -5 "$DIR/bouncer.log"; exit 1; }
