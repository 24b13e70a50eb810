#!/usr/bin/env bash
# synwatch side by side with the port-scan blockers operators use today (issue 21):
# portsentry, psad, fail2ban and CrowdSec (+ its firewall bouncer), each configured as its
# documentation recommends for "more than 3 ports in 60 s" with auto-blocking on, and
# synwatch twice (--source pcap --block nftables; --source xdp --block xdp), on the same
# workloads in a network-namespace lab. Every tool x workload cell gets fresh namespaces:
#
#   <tag>s   a bridge joining the three others
#   <tag>v   the victim, running the tool: 10.67.0.1, fd67::1; servers on 22, 80, 443 and
#            8080 (dual stack); default routes via 10.67.0.254 / fd67::fe (the "gateway",
#            an address of the attacker's namespace)
#   <tag>a   the attacker: 10.67.0.2, fd67::2, the gateway's 10.67.0.254 / fd67::fe, and
#            fd68:0:0:1::11 .. ::18 (one /64, reached through the victim's default route)
#   <tag>c   a benign client: 10.67.0.3, fd67::3
#
# Workloads (all nmap runs -n -Pn; each capped by `timeout`, see CAP):
#   syn-T4 -sS -T4 -p1-1000     syn-T5 -sS -T5 -p1-1000     connect -sT -T4 -p1-1000
#   ipv6   -6 -sS -T4 -p1-1000  fin -sF -T4 -p1-200         xmas -sX -T4 -p1-200
#   slow   -sS --scan-delay 3s --max-retries 0 -p1-6 (the 4th port 9 s after the 1st)
#   frag   -sS -f -T4 -p1-200
#   rot64  SYNs (scapy) from 8 addresses of fd68:0:0:1::/64, 3 distinct ports each
#   gwburst 4 SYNs (scapy) forged from the victim's default gateway 10.67.0.254 to
#          ports 901-904 (closed; below 1024, so portsentry -atcp watches them too)
#   benign the client: 20 curls to :8080, 5 to :443, 5 over IPv6
# After each scan a tail probe connects from the scanner's address to :8080 every 0.2 s
# (0.3 s timeout) for up to TAIL seconds, stopping after 5 failures, so a ban that lands
# after a fast scan is still seen; then the benign client tries :8080 over v4 and v6.
#
# Measured per cell (see docs/COMPARISON.md for how to read them):
#   detected  the tool's own record of the scanner (log line, alert, scan event)
#   banned    the scanner's address (any form) in the tool's firewall state in the victim
#   fw_s      first time a 50 ms poller of that state saw the ban, minus the first probe
#   ban_s     attacker-side capture: the victim's last answer (SYN-ACK or RST) to the
#             scanner minus the first probe (only when banned and the tail probe ended
#             refused)
#   cross_s   the same from the probe that reached the 4th distinct port ("none": that
#             probe got no answer, the ban was already in place)
#   ports     distinct victim ports that answered the scanner (SYN-ACK or RST)
#   after     the tail probe's last connect: refused (blocked) or ok
#   benign    the client's :8080 v4+v6 connects after the workload (ok/FAIL) and whether
#             the client's address was banned
#   cpu_s     utime+stime (+ reaped children) of the tool's processes over the workload
#
# usage: make bench-peers   or   scripts/bench-peers.sh   (root)
#   SYNWATCH=path/to/synwatch (default target/release/synwatch)
#   TOOLS="synwatch-pcap synwatch-xdp portsentry psad fail2ban crowdsec" (also
#         synwatch-ipt: --source pcap --block iptables, not in the default list)
#   WORKLOADS="syn-T4 syn-T5 connect ipv6 fin xmas slow frag rot64 gwburst benign"
#   OUT=file (results TSV; default: printed only)  CAP=20 (nmap cap, s)  TAIL=6
#   KEEP=1 keeps the work directory (logs, captures, configurations) for a look
# Traffic only goes between the namespaces it creates. On every exit path it removes
# them (and every process in them) and /etc/netns/<victim> (the victim's resolv.conf and
# hosts), restores net.netfilter.nf_log_all_netns and, if it installed packages,
# /usr/sbin/policy-rc.d, and stops the helpers it started; the peers' configuration lives
# in a temporary directory. The one other host file it may write is CrowdSec's
# online_api_credentials.yaml, when it installs CrowdSec (see install_peers).
# Takes about 16 minutes (66 cells) once the packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

SYNWATCH=$(realpath "${SYNWATCH:-target/release/synwatch}")
TOOLS=${TOOLS:-synwatch-pcap synwatch-xdp portsentry psad fail2ban crowdsec}
WORKLOADS=${WORKLOADS:-syn-T4 syn-T5 connect ipv6 fin xmas slow frag rot64 gwburst benign}
CAP=${CAP:-20}
TAIL=${TAIL:-6}
OUT=${OUT:-}
PY=/usr/bin/python3   # Debian's, for python3-scapy (not a pyenv or venv one)

[ "$(id -u)" -eq 0 ] || { echo "bench-peers: needs root (namespaces, firewalls, daemons)" >&2; exit 2; }
[ -x "$SYNWATCH" ] || { echo "bench-peers: $SYNWATCH not found ('make build' first)" >&2; exit 2; }

T0=$(date +%s)
TAG="${NS_TAG:-pb}$$"
S=${TAG}s V=${TAG}v A=${TAG}a C=${TAG}c
VIF=${TAG}v0 AIF=${TAG}a0 CIF=${TAG}c0
VIP=10.67.0.1 AIP=10.67.0.2 CIPV4=10.67.0.3 GW=10.67.0.254
VIP6=fd67::1 AIP6=fd67::2 CIP6=fd67::3 GW6=fd67::fe
ROT=(fd68:0:0:1::11 fd68:0:0:1::12 fd68:0:0:1::13 fd68:0:0:1::14
     fd68:0:0:1::15 fd68:0:0:1::16 fd68:0:0:1::17 fd68:0:0:1::18)
ROT_PROBE=fd68:0:0:1::99   # the tail probe of rot64: same /64, never scanned
WORK=$(mktemp -d /tmp/bench-peers.XXXXXX)
chmod 755 "$WORK"
MADE_NETNS_ETC=""   # set when this script created /etc/netns (removed again if empty)
[ -d /etc/netns ] || MADE_NETNS_ETC=1
HELPERS=()          # pids of helpers in the root namespace (kmsg forwarder, syslog sink)
OLD_NFLOG=""
POLICY_BACKUP=""

# --- installing the peers -----------------------------------------------------------------
install_peers() {
    local need="" pkg
    for pkg in portsentry psad fail2ban python3-pyinotify crowdsec crowdsec-firewall-bouncer \
               nmap hping3 python3-scapy tcpdump curl nftables iptables iproute2 util-linux; do
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
    done
    # CrowdSec's postinst registers with the Central API (the internet); offline that
    # fails and leaves the package unconfigured. Its documented way out: a non-empty
    # online_api_credentials.yaml written before configuring. The lab never uses CAPI.
    local capi=/etc/crowdsec/online_api_credentials.yaml
    if [ -z "$need" ] && ! dpkg-query -W -f '${Status}' crowdsec | grep -q "ok installed"; then
        need=crowdsec
    fi
    [ -n "$need" ] || return 0
    echo "bench-peers: installing from Debian:$need"
    # No daemon may start in the host's namespace during the install.
    if [ -e /usr/sbin/policy-rc.d ]; then
        POLICY_BACKUP="$WORK/policy-rc.d.orig"; cp -p /usr/sbin/policy-rc.d "$POLICY_BACKUP"
    else
        POLICY_BACKUP="none"
    fi
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    apt-get update -qq
    mkdir -p /etc/crowdsec
    [ -s "$capi" ] || echo "# CAPI registration skipped: offline lab (synwatch scripts/bench-peers.sh)" >"$capi"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log" >&2; DEBIAN_FRONTEND=noninteractive dpkg --configure -a; }
    restore_policy
}
restore_policy() {
    case $POLICY_BACKUP in
        "") ;;
        none) rm -f /usr/sbin/policy-rc.d ;;
        *) cp -p "$POLICY_BACKUP" /usr/sbin/policy-rc.d ;;
    esac
    POLICY_BACKUP=""
}

# --- cleanup ------------------------------------------------------------------------------
teardown_lab() {
    local ns pid
    for ns in "$V" "$A" "$C" "$S"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    for _ in $(seq 30); do   # up to 3 s to exit on SIGTERM (fail2ban flushes its bans)
        [ -z "$(ip netns pids "$V" 2>/dev/null)" ] && break
        sleep 0.1
    done
    for ns in "$V" "$A" "$C" "$S"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "/etc/netns/$V"
    [ -n "$MADE_NETNS_ETC" ] && rmdir /etc/netns 2>/dev/null || true
}
stop_helpers() {
    local pid
    for pid in "${HELPERS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    HELPERS=()
}
cleanup() {
    local rc=$?
    set +e
    teardown_lab
    stop_helpers
    [ -n "$OLD_NFLOG" ] && sysctl -q -w net.netfilter.nf_log_all_netns="$OLD_NFLOG"
    restore_policy
    if [ -n "${KEEP:-}" ]; then echo "bench-peers: kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

install_peers
for tool in ip nmap tcpdump curl python3 nft iptables unshare portsentry psad fail2ban-server crowdsec cscli crowdsec-firewall-bouncer; do
    command -v $tool >/dev/null || { echo "bench-peers: $tool is missing" >&2; exit 2; }
done

OLD_NFLOG=$(sysctl -n net.netfilter.nf_log_all_netns)
# The LOG target's lines from a non-initial namespace reach the kernel log only with this.
sysctl -q -w net.netfilter.nf_log_all_netns=1

# --- helpers written to the work dir -------------------------------------------------------
# Kernel log lines with our prefix -> a syslog-format file (this host need not run rsyslog;
# the forwarder's cost is not charged to the tools, rsyslog's would not be either).
cat >"$WORK/kmsg.py" <<'EOF'
import os, sys, time, socket
prefix, out = sys.argv[1], sys.argv[2]
host = "pbvictim"
fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
os.lseek(fd, 0, os.SEEK_END)
os.set_blocking(fd, True)
f = open(out, "a", buffering=1)
while True:
    try:
        rec = os.read(fd, 8192).decode("utf-8", "replace")
    except BrokenPipeError:      # overwritten records
        continue
    head, _, msg = rec.partition(";")
    msg = msg.split("\n", 1)[0]
    if prefix not in msg:
        continue
    mono = int(head.split(",")[2]) / 1e6
    f.write("%s %s kernel: [%12.6f] %s\n" % (time.strftime("%b %e %H:%M:%S"), host, mono, msg))
EOF
# A syslog receiver for portsentry (it logs only through syslog(3)); stamps each line
# with the receive time in ms.
cat >"$WORK/syslog.py" <<'EOF'
import os, sys, socket, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path); os.chmod(path, 0o666)
f = open(out, "a", buffering=1)
while True:
    m = s.recv(65536).decode("utf-8", "replace")
    f.write("%.3f %s\n" % (time.time(), m.rstrip("\n\0")))
EOF
# The victim's servers: 22, 80, 443, 8080, dual stack, a tiny HTTP answer.
cat >"$WORK/servers.py" <<'EOF'
import socket, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
for p in (22, 80, 443, 8080):
    threading.Thread(target=S(("::", p), H).serve_forever, daemon=False).start()
EOF
# Crafted SYNs, as Ethernet frames to the victim's MAC (scapy's own IPv6 neighbour
# resolution picked a destination the victim's stack ignored).
cat >"$WORK/craft.py" <<'EOF'
import sys, random
from scapy.all import Ether, IP, IPv6, TCP, sendp, conf
conf.verb = 0
what, iface, mac = sys.argv[1], sys.argv[2], sys.argv[3]
def syn(l3, port):
    return Ether(dst=mac) / l3 / TCP(sport=random.randint(20000, 60000), dport=port, flags="S")
pkts = []
if what == "rot64":             # 3 distinct ports from each address, 24 ports in all
    dst, srcs = sys.argv[4], sys.argv[5:]
    port = 1001
    for s in srcs:
        for _ in range(3):
            pkts.append(syn(IPv6(src=s, dst=dst), port)); port += 1
elif what == "gwburst":         # 4 ports "from" the victim's default gateway
    src, dst = sys.argv[4], sys.argv[5]
    pkts = [syn(IP(src=src, dst=dst), p) for p in (901, 902, 903, 904)]
sendp(pkts, iface=iface, inter=0.02)
EOF
# The capture -> the cell's numbers.
cat >"$WORK/analyse.py" <<'EOF'
import sys, re
cap, scanners, t_ban = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]
victims = {"10.67.0.1", "fd67::1"}
first = cross = last_ans = None
ports, answered = [], set()
rx = re.compile(r"^(\d+\.\d+) IP6? (\S+) > (\S+): ")
def split(ep):
    a, _, p = ep.rpartition(".")
    return a, p
for line in open(cap):
    m = rx.match(line)
    if not m: continue
    t = float(m.group(1)); (sa, sp), (da, dp) = split(m.group(2)), split(m.group(3).rstrip(":"))
    if sa in scanners and da in victims:
        if first is None: first = t
        if dp not in ports:
            ports.append(dp)
            if len(ports) == 4: cross = t
    elif sa in victims and da in scanners:
        # an answer to an attempt: SYN-ACK or RST (not the victim's retransmissions on a
        # connection the tail probe opened just before the ban)
        fl = line.split("Flags [", 1)[1][:3] if "Flags [" in line else ""
        if "S" in fl or "R" in fl:
            last_ans = t
            if sp != "8080": answered.add(sp)
def f(x): return "-" if x is None else "%.3f" % x
ban_s = cross_s = None
if t_ban != "-" and last_ans is not None and first is not None:
    ban_s = last_ans - first
    if cross is not None: cross_s = last_ans - cross
fw = None
if t_ban not in ("-", "") and first is not None:
    fw = float(t_ban) - first
cs = f(cross_s)
if cross_s is not None and cross_s < 0: cs = "none"   # the crossing probe got no answer
print(f(first), f(ban_s), cs, f(fw), len(answered))
EOF

# --- the lab ------------------------------------------------------------------------------
inv() { ip netns exec "$V" "$@"; }
ina() { ip netns exec "$A" "$@"; }
inc() { ip netns exec "$C" "$@"; }

setup_lab() {
    teardown_lab
    local ns
    # The victim's resolver: 127.0.0.1, where nothing listens, so a lookup fails at once.
    # (With the host's resolver, unreachable through the lab's "gateway", fail2ban's
    # ignoreself lookup of the host name stalled every first match for ~20 s.)
    mkdir -p "/etc/netns/$V"
    echo "nameserver 127.0.0.1" >"/etc/netns/$V/resolv.conf"
    printf '127.0.0.1 localhost %s\n::1 localhost\n' "$(hostname)" >"/etc/netns/$V/hosts"
    for ns in "$S" "$V" "$A" "$C"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    ip -n "$S" link add br0 type bridge
    ip -n "$S" link set br0 up
    ip link add "$VIF" netns "$V" type veth peer name sv netns "$S"
    ip link add "$AIF" netns "$A" type veth peer name sa netns "$S"
    ip link add "$CIF" netns "$C" type veth peer name sc netns "$S"
    for p in sv sa sc; do ip -n "$S" link set "$p" master br0; ip -n "$S" link set "$p" up; done
    ip -n "$V" addr add "$VIP/24" dev "$VIF"; ip -n "$V" addr add "$VIP6/64" dev "$VIF" nodad
    ip -n "$A" addr add "$AIP/24" dev "$AIF"; ip -n "$A" addr add "$AIP6/64" dev "$AIF" nodad
    ip -n "$A" addr add "$GW/24" dev "$AIF"; ip -n "$A" addr add "$GW6/64" dev "$AIF" nodad
    local r; for r in "${ROT[@]}" "$ROT_PROBE"; do ip -n "$A" addr add "$r/128" dev lo nodad; done
    ip -n "$C" addr add "$CIPV4/24" dev "$CIF"; ip -n "$C" addr add "$CIP6/64" dev "$CIF" nodad
    ip -n "$V" link set "$VIF" up; ip -n "$A" link set "$AIF" up; ip -n "$C" link set "$CIF" up
    VMAC=$(ip netns exec "$V" cat "/sys/class/net/$VIF/address")
    ip -n "$V" route add default via "$GW"
    ip -n "$V" -6 route add default via "$GW6" dev "$VIF"
    # XDP on a veth needs the peer to take the frames; GRO off keeps the paths comparable.
    ip netns exec "$V" "$PY" "$WORK/servers.py" >/dev/null 2>&1 & disown
    for _ in $(seq 50); do
        inc curl -s -o /dev/null -m1 "http://$VIP:8080/" && break; sleep 0.1
    done
}

# --- the tools ------------------------------------------------------------------------------
log_rules() { # the LOG rules psad, fail2ban and CrowdSec document, v4 and v6
    local ipt
    for ipt in iptables ip6tables; do
        inv $ipt -A INPUT -i lo -j ACCEPT
        inv $ipt -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        inv $ipt -A INPUT -p tcp -m multiport --dports 22,80,443,8080 -j ACCEPT
        inv $ipt -A INPUT -p tcp -j LOG --log-prefix "$PFX " --log-tcp-options --log-ip-options
    done
}
start_kmsg() {
    echo "$(date '+%b %e %H:%M:%S') pbvictim kernel: [    0.000000] bench-peers: $TOOL $WL" >"$D/kern.log"
    chmod 644 "$D/kern.log"
    "$PY" "$WORK/kmsg.py" "$PFX " "$D/kern.log" & HELPERS+=($!)
}
wait_for() { # seconds command...: poll until the command succeeds
    local n=$(( $1 * 10 )); shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

start_tool() {
    case $TOOL in
    synwatch-pcap|synwatch-ipt|synwatch-xdp)
        local mode=(--source pcap --block nftables)
        [ "$TOOL" = synwatch-ipt ] && mode=(--source pcap --block iptables)
        [ "$TOOL" = synwatch-xdp ] && mode=(--source xdp --block xdp)
        ip netns exec "$V" "$SYNWATCH" run --iface "$VIF" --format json --state-dir "$D/state" \
            --metrics-addr 127.0.0.1:19809 "${mode[@]}" >"$D/events.json" 2>"$D/agent.err" & disown
        wait_for 15 grep -q watching "$D/agent.err" || { cat "$D/agent.err" >&2; return 1; } ;;
    portsentry)
        sed -e 's|^KILL_HOSTS_DENY=|#KILL_HOSTS_DENY=|' \
            -e 's|^KILL_ROUTE=.*|KILL_ROUTE="/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"|' \
            -e 's|^BLOCK_TCP=.*|BLOCK_TCP="1"|' -e 's|^BLOCK_UDP=.*|BLOCK_UDP="1"|' \
            -e 's|^SCAN_TRIGGER=.*|SCAN_TRIGGER="4"|' \
            -e "s|^IGNORE_FILE=.*|IGNORE_FILE=\"$D/portsentry.ignore\"|" \
            -e "s|^HISTORY_FILE=.*|HISTORY_FILE=\"$D/portsentry.history\"|" \
            -e "s|^BLOCKED_FILE=.*|BLOCKED_FILE=\"$D/portsentry.blocked\"|" \
            /etc/portsentry/portsentry.conf >"$D/portsentry.conf"
        printf '127.0.0.1/32\n0.0.0.0\n%s\n' "$VIP" >"$D/portsentry.ignore"
        : >"$D/portsentry.syslog"
        "$PY" "$WORK/syslog.py" "$D/log.sock" "$D/portsentry.syslog" & HELPERS+=($!)
        wait_for 5 test -S "$D/log.sock"
        touch "$D/devnull"
        # portsentry's config path is compiled in and it logs only to /dev/log: give it
        # its own mount namespace with our file over the config and a private /dev.
        ip netns exec "$V" unshare -m --propagation private sh -c "
            mount --bind '$D/portsentry.conf' /etc/portsentry/portsentry.conf &&
            mount --bind /dev/null '$D/devnull' &&
            mount -t tmpfs tmpfs /dev && touch /dev/null && mount --bind '$D/devnull' /dev/null &&
            ln -s '$D/log.sock' /dev/log && exec portsentry -atcp" >"$D/portsentry.out" 2>&1
        wait_for 10 grep -q "PortSentry is now active" "$D/portsentry.syslog" \
            || { cat "$D/portsentry.syslog" "$D/portsentry.out" >&2; return 1; }
        sleep 0.5 ;;
    psad)
        log_rules; start_kmsg
        mkdir -p "$D/psad/run" "$D/psad/fifo" "$D/psad/archive"
        sed -e "s|^HOSTNAME .*|HOSTNAME pbvictim;|" \
            -e "s|^ENABLE_AUTO_IDS .*|ENABLE_AUTO_IDS Y;|" \
            -e "s|^AUTO_IDS_DANGER_LEVEL .*|AUTO_IDS_DANGER_LEVEL 1;|" \
            -e "s|^DANGER_LEVEL1 .*|DANGER_LEVEL1 4;|" \
            -e "s|^PORT_RANGE_SCAN_THRESHOLD .*|PORT_RANGE_SCAN_THRESHOLD 3;|" \
            -e "s|^SCAN_TIMEOUT .*|SCAN_TIMEOUT 60;|" \
            -e "s|^CHECK_INTERVAL .*|CHECK_INTERVAL 1;|" \
            -e "s|^IPT_SYSLOG_FILE .*|IPT_SYSLOG_FILE $D/kern.log;|" \
            -e "s|^AUTO_DETECT_JOURNALCTL .*|AUTO_DETECT_JOURNALCTL N;|" \
            -e "s|^ALERTING_METHODS .*|ALERTING_METHODS noemail;|" \
            -e "s|^ENABLE_WHOIS_LOOKUPS .*|ENABLE_WHOIS_LOOKUPS N;|" \
            -e "s|^ENABLE_DNS_LOOKUPS .*|ENABLE_DNS_LOOKUPS N;|" \
            -e "s|^ENABLE_FW_LOGGING_CHECK .*|ENABLE_FW_LOGGING_CHECK N;|" \
            -e "s|^ENABLE_SIG_MSG_SYSLOG .*|ENABLE_SIG_MSG_SYSLOG N;|" \
            -e "s|^PSAD_DIR .*|PSAD_DIR $D/psad;|" \
            -e "s|^PSAD_RUN_DIR .*|PSAD_RUN_DIR $D/psad/run;|" \
            -e "s|^PSAD_FIFO_DIR .*|PSAD_FIFO_DIR $D/psad/fifo;|" \
            -e "s|^CONF_ARCHIVE_DIR .*|CONF_ARCHIVE_DIR $D/psad/archive;|" \
            /etc/psad/psad.conf >"$D/psad.conf"
        ip netns exec "$V" psad --no-daemon -c "$D/psad.conf" >"$D/psad.out" 2>&1 & disown
        wait_for 20 test -S "$D/psad/run/auto_ipt.sock" || { cat "$D/psad.out" >&2; return 1; } ;;
    fail2ban)
        log_rules; start_kmsg
        cp -a /etc/fail2ban "$D/f2b"
        rm -f "$D/f2b/jail.d/defaults-debian.conf"
        cat >"$D/f2b/fail2ban.local" <<EOF
[Definition]
logtarget = $D/fail2ban.log
loglevel = ${F2B_LOGLEVEL:-INFO}
socket = $D/f2b.sock
pidfile = $D/f2b.pid
dbfile = $D/f2b.sqlite3
EOF
        cat >"$D/f2b/filter.d/pbportscan.conf" <<EOF
[Definition]
failregex = kernel: \[\s*[\d.]+\] $PFX .*SRC=<HOST> DST=\S+ .*PROTO=TCP
EOF
        cat >"$D/f2b/jail.local" <<EOF
[pbportscan]
enabled = true
filter = pbportscan
logpath = $D/kern.log
backend = ${F2B_BACKEND:-pyinotify}
maxretry = 4
findtime = 60
bantime = 3600
banaction = nftables-allports
EOF
        ip netns exec "$V" fail2ban-server -f -x -c "$D/f2b" >"$D/f2b.out" 2>&1 & disown
        wait_for 15 grep -q "Jail 'pbportscan' started" "$D/fail2ban.log" \
            || { cat "$D/f2b.out" "$D/fail2ban.log" >&2; return 1; } ;;
    crowdsec)
        log_rules; start_kmsg
        local c="$D/cs" hub=/var/lib/crowdsec/hub
        mkdir -p "$c/data" "$c/parsers/s00-raw" "$c/parsers/s01-parse" "$c/parsers/s02-enrich" "$c/scenarios"
        ln -s "$hub/parsers/s00-raw/crowdsecurity/syslog-logs.yaml" "$c/parsers/s00-raw/"
        ln -s "$hub/parsers/s01-parse/crowdsecurity/iptables-logs.yaml" "$c/parsers/s01-parse/"
        ln -s "$hub/parsers/s02-enrich/crowdsecurity/dateparse-enrich.yaml" "$c/parsers/s02-enrich/"
        # the hub scenario, 15 ports / 5 s leak by default, set to overflow on the 4th
        # distinct port, leaking one every 20 s (about "more than 3 in 60 s")
        sed -e 's/^capacity: .*/capacity: 3/' -e 's/^leakspeed: .*/leakspeed: 20s/' \
            "$hub/scenarios/crowdsecurity/iptables-scan-multi_ports.yaml" >"$c/scenarios/iptables-scan-multi_ports.yaml"
        ln -s /etc/crowdsec/patterns "$c/patterns"
        cp /etc/crowdsec/profiles.yaml /etc/crowdsec/simulation.yaml "$c/"
        cp /usr/share/crowdsec/data/* "$c/data/" 2>/dev/null || true
        printf 'filenames:\n  - %s\nlabels:\n  type: syslog\n' "$D/kern.log" >"$c/acquis.yaml"
        cat >"$c/config.yaml" <<EOF
common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: $c/
  working_dir: .
config_paths:
  config_dir: $c/
  data_dir: $c/data/
  simulation_path: $c/simulation.yaml
  hub_dir: $hub/
  index_path: $hub/.index.json
  notification_dir: $c/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: $c/acquis.yaml
  parser_routines: 1
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: $c/data/crowdsec.db
api:
  client:
    insecure_skip_verify: false
    credentials_path: $c/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:18080
    profiles_path: $c/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
EOF
        inv cscli -c "$c/config.yaml" machines add pbvictim --auto -f "$c/local_api_credentials.yaml" --force >"$D/cscli.out" 2>&1 \
            || { cat "$D/cscli.out" >&2; return 1; }
        local key
        key=$(inv cscli -c "$c/config.yaml" bouncers add pbbouncer -o raw 2>>"$D/cscli.out")
        sed -e "s|^mode: .*|mode: nftables|" -e "s|^update_frequency: .*|update_frequency: 1s|" \
            -e "s|^daemonize: .*|daemonize: false|" -e "s|^log_dir: .*|log_dir: $c/|" \
            -e "s|^api_url: .*|api_url: http://127.0.0.1:18080/|" -e "s|^api_key: .*|api_key: $key|" \
            -e "s|^pid_dir: .*|pid_dir: $c/|" \
            /etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml >"$c/bouncer.yaml"
        "$PY" - "$c/bouncer.yaml" <<'EOF'
import sys, re
p = sys.argv[1]; t = open(p).read()
t = re.sub(r"(?m)^prometheus:\n  enabled: true", "prometheus:\n  enabled: false", t)
open(p, "w").write(t)
EOF
        ip netns exec "$V" crowdsec -c "$c/config.yaml" -no-capi >"$D/crowdsec.out" 2>&1 & disown
        wait_for 30 inv curl -s -o /dev/null http://127.0.0.1:18080/ \
            || { cat "$D/crowdsec.out" "$c/crowdsec.log" >&2; return 1; }
        ip netns exec "$V" crowdsec-firewall-bouncer -c "$c/bouncer.yaml" >"$D/bouncer.out" 2>&1 & disown
        wait_for 15 inv nft list table ip crowdsec \
            || { cat "$D/bouncer.out" "$c/crowdsec-firewall-bouncer.log" >&2; return 1; }
        sleep 1 ;;
    esac
}

# --- per-cell judgments -----------------------------------------------------------------------
expand6() { "$PY" -c 'import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]).exploded)' "$1"; }
# every form of the scanner's address(es), as a grep -E alternation
addr_re() { # addr...
    local a out=""
    for a in "$@"; do
        out="$out|$(printf '%s' "$a" | sed 's/\./\\./g')"
        case $a in *:*) out="$out|$(expand6 "$a")" ;; esac
    done
    case "$*" in *fd68:0:0:1::*) out="$out|fd68:0:0:1::/64|fd68::?0?:?0?:?1::/64|fd68:0:0:1::/64" ;; esac
    echo "(^|[^0-9a-f:.])(${out#|})([^0-9a-f:]|$)"
}
fw_state() { # where each tool puts its bans, read cheaply (a 50 ms poller runs this)
    case $TOOL in
        # not `synwatch blocks list` in nftables mode: it costs the agent ~7.5 ms of CPU
        # a call (measured), which the poller would charge to synwatch's CPU
        synwatch-pcap) inv nft list table inet synwatch 2>/dev/null ;;
        synwatch-xdp) inv "$SYNWATCH" blocks list --state-dir "$D/state" 2>/dev/null ;;
        synwatch-ipt) inv ipset list 2>/dev/null ;;
        portsentry) inv iptables -S INPUT 2>/dev/null ;;
        psad) inv iptables -S PSAD_BLOCK_INPUT 2>/dev/null; inv ip6tables -S PSAD_BLOCK_INPUT 2>/dev/null ;;
        fail2ban) inv nft list table inet f2b-table 2>/dev/null ;;
        crowdsec) inv nft list table ip crowdsec 2>/dev/null; inv nft list table ip6 crowdsec6 2>/dev/null ;;
    esac
    return 0
}
# (the state is read first, then searched: `cmd | grep -q` fails under pipefail when
# grep stops reading early)
banned() { local s; s=$(fw_state); grep -Eqi "$1" <<<"$s"; }
detected() { # regex
    local s=""
    case $TOOL in
        synwatch-*) s=$(grep '"event":"scan"' "$D/events.json") ;;
        portsentry) s=$(grep -i attackalert "$D/portsentry.syslog") ;;
        psad) # a source psad has given a danger level of at least 1
            local f
            for f in "$D"/psad/*/danger_level; do
                [ -e "$f" ] && [ "$(cat "$f")" -ge 1 ] && s="$s $(basename "$(dirname "$f")")"
            done ;;
        fail2ban) s=$(grep -E "\] Ban " "$D/fail2ban.log") ;;
        crowdsec) s=$(inv cscli -c "$D/cs/config.yaml" alerts list -o raw 2>/dev/null) ;;
    esac
    grep -Eqi "$1" <<<"$s"
}
tool_pids() { # every process in the victim's namespace but the servers
    local p
    for p in $(ip netns pids "$V"); do
        [ "$p" = "$SERVERS" ] && continue
        grep -q servers.py "/proc/$p/cmdline" 2>/dev/null && continue
        echo "$p"
    done
}
cpu_of() { # pids -> clock ticks (utime+stime+cutime+cstime)
    local p t=0 v
    for p in "$@"; do
        v=$(awk '{print $14+$15+$16+$17}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo $t
}

tail_probe() { # from-address url-host: connect until refused 5 times or TAIL s; last result
    local from=$1 host=$2 fails=0 last=ok end=$(( $(date +%s%N) + TAIL * 1000000000 ))
    while [ "$(date +%s%N)" -lt "$end" ]; do
        if ina curl -s -o /dev/null --interface "$from" --connect-timeout 0.3 -m 0.6 "http://$host:8080/"; then
            last=ok; fails=0
        else
            last=blocked; fails=$((fails + 1)); [ $fails -ge 5 ] && break
        fi
        sleep 0.2
    done
    echo $last
}

run_workload() {
    local tgt=$VIP
    case $WL in
        syn-T4)  ina timeout "$CAP" nmap -n -Pn -sS -T4 -p1-1000 "$tgt" ;;
        syn-T5)  ina timeout "$CAP" nmap -n -Pn -sS -T5 -p1-1000 "$tgt" ;;
        connect) ina timeout "$CAP" nmap -n -Pn -sT -T4 -p1-1000 "$tgt" ;;
        ipv6)    ina timeout "$CAP" nmap -n -Pn -6 -sS -T4 -p1-1000 -S "$AIP6" -e "$AIF" "$VIP6" ;;
        fin)     ina timeout "$CAP" nmap -n -Pn -sF -T4 -p1-200 "$tgt" ;;
        xmas)    ina timeout "$CAP" nmap -n -Pn -sX -T4 -p1-200 "$tgt" ;;
        slow)    ina timeout 60 nmap -n -Pn -sS --scan-delay 3s --max-retries 0 -p1-6 "$tgt" ;;
        frag)    ina timeout "$CAP" nmap -n -Pn -sS -f -T4 -p1-200 "$tgt" ;;
        rot64)   ina "$PY" "$WORK/craft.py" rot64 "$AIF" "$VMAC" "$VIP6" "${ROT[@]}" ;;
        gwburst) ina "$PY" "$WORK/craft.py" gwburst "$AIF" "$VMAC" "$GW" "$VIP" ;;
        benign)
            local i ok=0 n=0
            for i in $(seq 20); do n=$((n+1)); inc curl -s -o /dev/null -m2 "http://$VIP:8080/" && ok=$((ok+1)); done
            for i in $(seq 5); do n=$((n+1)); inc curl -s -o /dev/null -m2 "http://$VIP:443/" && ok=$((ok+1)); done
            for i in $(seq 5); do n=$((n+1)); inc curl -s -o /dev/null -m2 "http://[$VIP6]:8080/" && ok=$((ok+1)); done
            echo "$ok/$n" >"$D/benign.count" ;;
    esac
}

poll_ban() { # regex: write the wall time the ban first shows up
    local re=$1
    while :; do
        if banned "$re"; then date +%s.%N >"$D/ban.t"; return; fi
        sleep 0.05
    done
}

cell() {
    D="$WORK/$TOOL.$WL"; mkdir -p "$D"; chmod 755 "$D"
    PFX="PB$$${WL//-/}"
    PFX=${PFX:0:20}
    setup_lab
    SERVERS=""
    local scanners from host
    case $WL in
        ipv6)    scanners=$AIP6; from=$AIP6; host="[$VIP6]" ;;
        rot64)   scanners=$(IFS=,; echo "${ROT[*]}"); from=$ROT_PROBE; host="[$VIP6]" ;;
        gwburst) scanners=$GW; from=$GW; host=$VIP ;;
        benign)  scanners=$CIPV4,$CIP6; from=""; host=$VIP ;;
        *)       scanners=$AIP; from=$AIP; host=$VIP ;;
    esac
    local re; re=$(addr_re ${scanners//,/ })
    local t_start; t_start=$(date +%s.%N)
    if ! start_tool; then
        printf '%s\t%s\tTOOL-FAILED-TO-START\n' "$TOOL" "$WL" | tee -a "$RESULTS"
        stop_helpers; teardown_lab; return
    fi
    local ready; ready=$(date +%s.%N)
    # Every tool gets 2 s to settle after it says it is ready (fail2ban's file watch is
    # only in place a moment after "Jail started"; a scan right then goes unread).
    sleep 2
    local pids; pids=$(tool_pids | tr '\n' ' ')
    # shellcheck disable=SC2086
    local c0; c0=$(cpu_of $pids)
    ina tcpdump -i "$AIF" -n --immediate-mode -B 65536 -U -w "$D/cap.pcap" tcp 2>"$D/tcpdump.err" &
    local tcpd=$!
    wait_for 5 grep -q "listening on" "$D/tcpdump.err"
    poll_ban "$re" & local poller=$!
    local w0 w1; w0=$(date +%s.%N)
    run_workload >"$D/workload.out" 2>&1 || true
    w1=$(date +%s.%N)
    local after="-"
    [ -n "$from" ] && after=$(tail_probe "$from" "$host")
    sleep 1.5     # the slowest pollers (CrowdSec's bouncer: 1 s) get their turn
    local benign4="ok" benign6="ok"
    inc curl -s -o /dev/null -m2 "http://$VIP:8080/" || benign4=FAIL
    inc curl -s -o /dev/null -m2 "http://[$VIP6]:8080/" || benign6=FAIL
    # shellcheck disable=SC2086
    local c1; c1=$(cpu_of $pids)
    kill "$poller" 2>/dev/null || true; wait "$poller" 2>/dev/null || true
    kill "$tcpd" 2>/dev/null || true; wait "$tcpd" 2>/dev/null || true
    tcpdump -r "$D/cap.pcap" -n -tt 2>/dev/null >"$D/cap.txt" || true
    local dropped; dropped=$(awk '/dropped by kernel/{print $1}' "$D/tcpdump.err")
    local det=n ban=n
    detected "$re" && det=y
    banned "$re" && ban=y
    [ -s "$D/ban.t" ] && ban=y
    local cben=n; banned "$(addr_re $CIPV4 $CIP6)" && cben=y
    [ "$WL" = benign ] && detected "$(addr_re $CIPV4 $CIP6)" && cben=y
    local tban="-"; [ "$ban" = y ] && [ -s "$D/ban.t" ] && tban=$(cat "$D/ban.t")
    local first ban_s cross_s fw_s ports
    read -r first ban_s cross_s fw_s ports < <("$PY" "$WORK/analyse.py" "$D/cap.txt" "$scanners" "$tban")
    # ban_s from the capture only means something when the tail probe ended refused
    [ "$after" = blocked ] || { ban_s="-"; cross_s="-"; }
    local hz; hz=$(getconf CLK_TCK)
    local cpu; cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)/hz}')
    local dur; dur=$(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.1f", b-a}')
    local startup; startup=$(awk -v a="$t_start" -v b="$ready" 'BEGIN{printf "%.1f", b-a}')
    [ "$WL" = benign ] && { ports="-"; after="$(cat "$D/benign.count") ok"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$TOOL" "$WL" "$det" "$ban" \
        "$fw_s" "$ban_s" "$cross_s" "$ports" "$after" "$benign4/$benign6" "$cben" "$cpu" "$dur" "$startup" \
        | tee -a "$RESULTS"
    stop_helpers
    teardown_lab
}

RESULTS="$WORK/results.tsv"
printf 'tool\tworkload\tdetected\tbanned\tfw_s\tban_s\tcross_s\tports\tafter\tbenign_v4/v6\tbenign_banned\tcpu_s\twl_s\tstart_s\n' | tee "$RESULTS"
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
read -r b0 all0 < <(busy)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, kernel $(uname -r), load average at start $LOAD0" >&2
echo "# synwatch: $SYNWATCH ($("$SYNWATCH" --version 2>/dev/null | head -1))" >&2
for pkg in portsentry psad fail2ban crowdsec crowdsec-firewall-bouncer nmap; do
    echo "# $pkg $(dpkg-query -W -f '${Version}' "$pkg")" >&2
done
for TOOL in $TOOLS; do
    for WL in $WORKLOADS; do cell; done
done
read -r b1 all1 < <(busy)
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# machine busy over the run: $(awk -v a="$b0" -v b="$b1" -v x="$all0" -v y="$all1" 'BEGIN{printf "%.0f%%", 100*(b-a)/(y-x)}') of $(nproc) CPUs; load average at end $LOAD1; run time $(( $(date +%s) - T0 )) s" | tee -a "$RESULTS" >&2
[ -n "$OUT" ] && cp "$RESULTS" "$OUT"
exit 0
