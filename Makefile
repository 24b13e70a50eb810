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
             ipset:ipset hping3:hping3 iperf3:iperf3 clang:clang ethtool:ethtool \
             ping:iputils-ping xdp-filter:xdp-tools bpftool:bpftool tcpreplay:tcpreplay
# only for `make test` (promtool comes with the Prometheus server package; faketime brings
# libfaketime, which steps the wall clock for the agent alone in lab_faults; scapy, for
# Debian's /usr/bin/python3, crafts the lab's evasive packets;
# crowdsec: lab_fleet.rs runs its Local API in a namespace, with a config and database of its own;
# bpftool: lab_xdp detaches the XDP program from outside; sysctl: the lab's links skip
# duplicate address detection)
TEST_TOOLS := groff:groff-base systemd-analyze:systemd setpriv:util-linux promtool:prometheus \
              scapy:python3-scapy faketime:faketime cscli:crowdsec bpftool:bpftool sysctl:procps
# header file -> Debian package, for crates that link C libraries
DEB_HEADERS := /usr/include/pcap/pcap.h:libpcap-dev /usr/include/bpf/bpf_helpers.h:libbpf-dev \
               /usr/include/linux/bpf.h:linux-libc-dev

.PHONY: all deps test-deps build install install-files uninstall run demo replay-sample bench-flood bench-bans bench-xdp bench-peers bench-crowdsec test image-test check lint fmt bench fuzz clean

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
	    case " $$pkgs " in *" crowdsec "*) \
	        [ -s /etc/crowdsec/online_api_credentials.yaml ] || { \
	            echo "crowdsec: skipping Central API registration (the tests use a Local API of their own)"; \
	            $$sudo mkdir -p /etc/crowdsec && \
	            echo "# no Central API: written before installing crowdsec, so that its postinst does not register (README.Debian)" \
	                | $$sudo tee /etc/crowdsec/online_api_credentials.yaml >/dev/null; };; \
	    esac; \
	    $$sudo apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust 1.95 (rustup) first" >&2; exit 1; }

test-deps:
	@$(MAKE) --no-print-directory deps DEB_TOOLS="$(DEB_TOOLS) $(TEST_TOOLS)"

build: deps
	$(CARGO) build --release --locked

## install: the binary, systemd unit, default configuration (kept if present), manual
## pages and shell completions; PREFIX=/usr/local and DESTDIR= as usual. Then:
## systemctl daemon-reload && systemctl enable --now synwatch
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: build
	$(MAKE) --no-print-directory install-files

# install-files: what install does once BIN is built (the tests run it with their binary)
install-files:
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/synwatch
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man1 \
	    $(DESTDIR)$(DATADIR)/bash-completion/completions \
	    $(DESTDIR)$(DATADIR)/zsh/site-functions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	sed -e 's|/usr/local/bin/synwatch|$(BINDIR)/synwatch|' \
	    -e 's|/etc/synwatch/|$(SYSCONFDIR)/synwatch/|' deploy/systemd/synwatch.service \
	    > $(DESTDIR)$(UNITDIR)/synwatch.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/synwatch.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/synwatch/synwatch.toml ]; then \
	    echo "keeping $(DESTDIR)$(SYSCONFDIR)/synwatch/synwatch.toml"; \
	else \
	    install -D -m 0644 deploy/synwatch.toml $(DESTDIR)$(SYSCONFDIR)/synwatch/synwatch.toml; \
	fi
	$(BIN) man --out-dir $(DESTDIR)$(MANDIR)/man1
	$(BIN) completions bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/synwatch
	$(BIN) completions zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_synwatch
	$(BIN) completions fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/synwatch.fish
	@echo "installed; start it with: systemctl daemon-reload && systemctl enable --now synwatch"

## uninstall: removes what install put in place, except the configuration and saved bans
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/synwatch $(DESTDIR)$(UNITDIR)/synwatch.service \
	    $(DESTDIR)$(MANDIR)/man1/synwatch.1 $(DESTDIR)$(MANDIR)/man1/synwatch-*.1 \
	    $(DESTDIR)$(DATADIR)/bash-completion/completions/synwatch \
	    $(DESTDIR)$(DATADIR)/zsh/site-functions/_synwatch \
	    $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/synwatch.fish

## run: build, then run the agent with the defaults (every interface that is up,
## scanners banned with nftables or iptables for an hour); RUN_ARGS adds options,
## e.g. make run RUN_ARGS="--block none"
RUN_ARGS ?=
run: build
	@sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	$$sudo $(BIN) run $(RUN_ARGS)

## demo: synwatch catching and banning an nmap scan in two network namespaces (root)
demo: build
	@sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	$$sudo env DEMO_PAUSE=$${DEMO_PAUSE:-1} BIN=$(BIN) scripts/demo.sh

## replay-sample: replay the bundled capture of a real nmap scan (no privileges needed)
replay-sample: build
	$(BIN) replay --local 10.199.0.1 --local fd99::1 $(SAMPLE)

## test: formatting, lints, the code's shape (scripts/check-layout.py), the container
## image test, and every test (lab tests need root and run for real)
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	scripts/check-layout.py crates
	@if [ "$$(id -u)" -eq 0 ]; then scripts/image-test.sh; \
	else echo "make test: the container image test needs root: run sudo make image-test" >&2; exit 1; fi
	$(CARGO) test --workspace --locked -- --include-ignored

## image-test: build the container image (Dockerfile) with podman, then check in the
## namespace lab that the container bans a real scan (root; installs podman and
## debootstrap when missing, and makes its own base images: no registry needed)
image-test:
	scripts/image-test.sh

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

## bench-xdp: XDP against nftables and xdp-filter dropping a banned SYN flood, and time to ban (root)
bench-xdp: build
	scripts/bench-xdp.sh

## bench-peers: synwatch side by side with portsentry, psad, fail2ban and CrowdSec in a
## namespace lab (root; installs the peers from Debian when missing; ~16 min; see
## docs/COMPARISON.md). SYNWATCH= another binary, TOOLS=, WORKLOADS=, OUT=results.tsv
bench-peers: build
	scripts/bench-peers.sh

## bench-crowdsec: a startup pull of N=100000 CrowdSec decisions, synwatch against
## crowdsec-firewall-bouncer on the same LAPI (root; needs crowdsec and
## crowdsec-firewall-bouncer from Debian; see docs/FLEET.md)
bench-crowdsec: build
	scripts/bench-crowdsec.sh

## fuzz: run each fuzz target for FUZZ_SECONDS (needs cargo-fuzz; stable, no sanitizer)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in decode reassembly capture_reader; do \
	    $(CARGO) fuzz run -s none $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
