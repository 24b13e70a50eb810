# synwatch: the two set-up commands of a fresh Debian machine are `make run` and
# `make test`; both install what is missing first.

SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/synwatch
SAMPLE := samples/lab-nmap-scan.pcap

# command -> Debian package that provides it
DEB_TOOLS := cc:build-essential pkg-config:pkg-config ip:iproute2 tcpdump:tcpdump \
             nmap:nmap curl:curl editcap:tshark mergecap:tshark python3:python3 \
             hyperfine:hyperfine /usr/bin/time:time nft:nftables iptables:iptables \
             ipset:ipset hping3:hping3 iperf3:iperf3
# header file -> Debian package, for crates that link C libraries
DEB_HEADERS := /usr/include/pcap/pcap.h:libpcap-dev

.PHONY: all deps build run replay-sample bench-flood bench-bans test check lint fmt bench fuzz clean

all: build

## deps: install the Debian packages the build, tests and benchmarks use (when missing)
deps:
	@missing=""; for pair in $(DEB_TOOLS); do \
	    cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	    command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	for pair in $(DEB_HEADERS); do \
	    file=$${pair%%:*}; pkg=$${pair##*:}; \
	    [ -e $$file ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	    pkgs=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	    echo "installing Debian packages:$$pkgs"; \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	    $$sudo apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust 1.95 (rustup) first" >&2; exit 1; }

build: deps
	$(CARGO) build --release --locked

## run: build, then run the agent with the defaults (every interface that is up,
## scanners banned with nftables or iptables for an hour); RUN_ARGS adds options,
## e.g. make run RUN_ARGS="--block none"
RUN_ARGS ?=
run: build
	@sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	$$sudo $(BIN) run $(RUN_ARGS)

## replay-sample: replay the bundled capture of a real nmap scan (no privileges needed)
replay-sample: build
	$(BIN) replay --local 10.199.0.1 --local fd99::1 $(SAMPLE)

## test: formatting, lints, and every test (lab tests need root and run for real)
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked -- --include-ignored

fmt:
	$(CARGO) fmt --all

## bench: the throughput and memory benchmarks recorded in docs/PERFORMANCE.md
bench: build
	scripts/bench-replay.sh
	scripts/bench-memory.sh

## bench-bans: bans/s and throughput with 100k bans, against one rule per address (root)
bench-bans: build
	scripts/bench-bans.sh

## bench-flood: the live agent under a SYN flood in the namespace lab (root)
bench-flood: build
	SECONDS_FLOOD=20 scripts/bench-flood.sh

## fuzz: run each fuzz target for FUZZ_SECONDS (needs cargo-fuzz; stable, no sanitizer)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in decode capture_reader; do \
	    $(CARGO) fuzz run -s none $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
