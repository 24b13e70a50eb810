#!/usr/bin/env bash
# Memory under spoofed sources: replays SOURCES (default 10M) SYNs from distinct random
# addresses and reports peak RSS, split into anonymous memory (the detector's state) and
# file pages of the mapped capture, sampled from /proc every 50 ms, and /usr/bin/time's
# maximum resident set size. Run from the repo root after `cargo build --release`
# (SYNWATCH=BIN measures another build).
set -euo pipefail
synwatch=${SYNWATCH:-target/release/synwatch}
dir=${BENCH_DIR:-target/bench}
sources=${SOURCES:-10000000}
mkdir -p "$dir"
cap="$dir/spoofed-$sources.pcap"
[ -s "$cap" ] || target/release/synwatch-gen spoofed "$cap" --sources "$sources"

for cap_sources in ${CAPS:-100000 1000000}; do
    "$synwatch" replay --format json --max-sources "$cap_sources" "$cap" \
        >/dev/null 2>"$dir/memory.summary" &
    pid=$!
    peak_anon=0; peak_file=0
    while kill -0 "$pid" 2>/dev/null; do
        read -r a f < <(awk '/RssAnon/{a=$2} /RssFile/{f=$2} END{print a+0, f+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0")
        [ "$a" -gt "$peak_anon" ] && peak_anon=$a
        [ "$f" -gt "$peak_file" ] && peak_file=$f
        sleep 0.05
    done
    wait "$pid"
    maxrss=$( { /usr/bin/time -f "%M" "$synwatch" replay --format json --no-summary \
        --max-sources "$cap_sources" "$cap" >/dev/null; } 2>&1 | tail -1)
    echo "--max-sources $cap_sources over $sources spoofed sources ($(du -h "$cap" | cut -f1) capture):"
    echo "  peak RssAnon ${peak_anon} kB, peak RssFile ${peak_file} kB, /usr/bin/time max RSS ${maxrss} kB"
    grep -E "sources tracked|elapsed" "$dir/memory.summary" | sed 's/^/ /'
done
