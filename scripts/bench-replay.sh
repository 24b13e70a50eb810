#!/usr/bin/env bash
# Replay throughput: synwatch against tcpdump's filter on the same 3M-packet capture,
# alternating runs. Prints packets/s for each and the ratio. Run from the repo root after
# `cargo build --release` (make bench does both).
set -euo pipefail
dir=${BENCH_DIR:-target/bench}
runs=${RUNS:-5}
packets=${PACKETS:-3000000}
mkdir -p "$dir"
cap="$dir/bench-$packets.pcap"
[ -s "$cap" ] || target/release/synwatch-gen bench "$cap" --packets "$packets"

filter='tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn'
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
sw=(); td=()
for i in $(seq "$runs"); do
    sw+=("$(secs target/release/synwatch replay --format json --no-summary "$cap")")
    td+=("$(secs tcpdump -r "$cap" -w /dev/null "$filter")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
msw=$(median "${sw[@]}"); mtd=$(median "${td[@]}")
echo "capture: $cap ($packets packets, $(du -h "$cap" | cut -f1))"
echo "synwatch replay --format json: runs (us) ${sw[*]}; median $msw us = $(( packets * 1000 / msw )) k packets/s"
echo "tcpdump -r ... -w /dev/null:   runs (us) ${td[*]}; median $mtd us = $(( packets * 1000 / mtd )) k packets/s"
awk -v a="$mtd" -v b="$msw" 'BEGIN { printf "synwatch / tcpdump packet rate: %.2fx\n", a / b }'
target/release/synwatch replay --format json "$cap" 2>&1 >/dev/null | sed 's/^/  /'
