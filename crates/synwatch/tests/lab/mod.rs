//! A network-namespace lab for end-to-end tests: a victim namespace and an attacker
//! namespace joined by a veth pair. The victim is 10.77.0.1 and fd77::1 and serves HTTP
//! on port 8080; the attacker side has 10.77.0.2 and fd77::2 (the scanner), 10.77.0.3
//! (an ordinary client) and 10.77.0.4 (a scanner the tests allowlist). Addresses repeat
//! between labs without harm: each lab's namespaces are its own. Everything is removed
//! when the lab is dropped, on every exit path of a test, panics included.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A moment a test stops waiting at.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    #[expect(
        clippy::disallowed_methods,
        reason = "tests wait for real processes with deadlines"
    )]
    pub fn after(secs: u64) -> Self {
        Deadline(Instant::now() + Duration::from_secs(secs))
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "tests wait for real processes with deadlines"
    )]
    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// Waits up to `secs` for `cond`, failing the test with `what` otherwise.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Deadline::after(secs);
    while !cond() {
        assert!(!deadline.passed(), "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub const VICTIM: &str = "10.77.0.1";
#[allow(dead_code, reason = "not every test binary uses IPv6")]
pub const VICTIM6: &str = "fd77::1";
pub const SCANNER: &str = "10.77.0.2";
#[allow(dead_code, reason = "not every test binary uses IPv6")]
pub const SCANNER6: &str = "fd77::2";
pub const CLIENT: &str = "10.77.0.3";
#[allow(dead_code, reason = "not every test binary allowlists")]
pub const ALLOWED: &str = "10.77.0.4";
pub const HTTP_PORT: u16 = 8080;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root (network namespaces, capture, firewall); make test runs it as root"
    );
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Debug)]
pub struct Lab {
    pub victim: String,
    pub attacker: String,
    pub vif: String,
    /// The attacker's end of the veth pair.
    #[allow(
        dead_code,
        reason = "only some test binaries capture on the attacker's side"
    )]
    pub aif: String,
    children: Vec<Child>,
}

impl Lab {
    pub fn new() -> Self {
        require_root();
        for tool in ["ip", "nmap", "curl", "python3"] {
            assert!(
                sh(&["sh", "-c", &format!("command -v {tool}")])
                    .status
                    .success(),
                "{tool} is missing: make deps installs it"
            );
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("swl{}x{n}", std::process::id());
        let aif = format!("{}a", &tag[..tag.len().min(13)]);
        let lab = Lab {
            victim: format!("{tag}v"),
            attacker: format!("{tag}a"),
            vif: format!("{}v", &tag[..tag.len().min(13)]),
            aif: aif.clone(),
            children: Vec::new(),
        };
        must(&["ip", "netns", "add", &lab.victim]);
        let mut lab = lab;
        must(&["ip", "netns", "add", &lab.attacker]);
        lab.create_link();
        let server = Command::new("ip")
            .args(["netns", "exec", &lab.victim, "python3", "-m", "http.server"])
            .arg(HTTP_PORT.to_string())
            .args(["--bind", "::"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the HTTP server");
        lab.children.push(server);
        let deadline = Deadline::after(10);
        while !lab.connects(CLIENT, VICTIM) {
            assert!(!deadline.passed(), "the lab's HTTP server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab
    }

    /// Starts a long-running command in the attacker namespace (stopped with the lab).
    #[allow(dead_code, reason = "not every test binary starts extra servers")]
    pub fn spawn_in_attacker(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.attacker])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a command in the attacker namespace");
        self.children.push(child);
    }

    /// Files the victim namespace sees in /etc through `ip netns exec` (resolv.conf):
    /// /etc/netns/NAME, removed with the lab.
    #[allow(dead_code, reason = "not every test binary sets the victim's resolver")]
    pub fn victim_etc(&self, file: &str, text: &str) {
        let dir = Path::new("/etc/netns").join(&self.victim);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME");
        std::fs::write(dir.join(file), text).expect("write a file of /etc/netns/NAME");
    }

    /// SYNs with any source address `src` (forged: it need not be the attacker's), one
    /// to each of `ports` of `dst`, sent through a raw socket of the attacker namespace.
    #[allow(dead_code, reason = "not every test binary forges packets")]
    pub fn forge_syns(&self, src: &str, dst: &str, ports: &[u16]) {
        self.forge_syns_after(&[], 0, src, dst, ports);
    }

    /// [`Lab::forge_syns`], sent `delay_ms` after the command `first` (run by the same
    /// script, so the delay is not lost in a process start).
    #[allow(dead_code, reason = "not every test binary forges packets")]
    pub fn forge_syns_after(
        &self,
        first: &[&str],
        delay_ms: u32,
        src: &str,
        dst: &str,
        ports: &[u16],
    ) {
        let script = if first.is_empty() {
            FORGE_SYNS.to_owned()
        } else {
            format!(
                "import subprocess, time\nsubprocess.run({first:?}, check=True)\ntime.sleep({delay_ms} / 1000)\n{FORGE_SYNS}"
            )
        };
        let mut args = vec!["python3", "-c", &script, src, dst];
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        args.extend(ports.iter().map(String::as_str));
        let out = self.in_attacker(&args);
        assert!(
            out.status.success(),
            "forging SYNs from {src} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The veth pair between the namespaces, with the lab's addresses, up.
    pub fn create_link(&self) {
        must(&[
            "ip",
            "link",
            "add",
            &self.vif,
            "netns",
            &self.victim,
            "type",
            "veth",
            "peer",
            "name",
            &self.aif,
            "netns",
            &self.attacker,
        ]);
        for (ns, ifname, addrs) in [
            (&self.victim, &self.vif, vec!["10.77.0.1/24", "fd77::1/64"]),
            (
                &self.attacker,
                &self.aif,
                vec!["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24", "fd77::2/64"],
            ),
        ] {
            // No duplicate address detection on the link-local address the link gets
            // when it comes up either: while it is tentative the kernel sends no
            // neighbour solicitation for a packet whose source is not its own (a forged
            // one), so the first forged IPv6 SYNs of a young lab could be lost.
            let dad = format!("net.ipv6.conf.{ifname}.accept_dad=0");
            must(&["ip", "netns", "exec", ns, "sysctl", "-qw", &dad]);
            for a in addrs {
                let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", ifname];
                if a.contains(':') {
                    args.push("nodad");
                }
                must(&args);
            }
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            must(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
    }

    /// Deletes the veth pair (both ends go).
    #[allow(dead_code, reason = "only the fault tests delete the link")]
    pub fn delete_link(&self) {
        must(&["ip", "-n", &self.victim, "link", "del", &self.vif]);
    }

    /// Starts a long-running command in the victim namespace (stopped with the lab).
    #[allow(dead_code, reason = "not every test binary starts extra servers")]
    pub fn spawn_in_victim(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.victim])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a command in the victim namespace");
        self.children.push(child);
    }

    /// The victim interface's MAC address (what raw frames sent to the victim carry).
    #[allow(dead_code, reason = "only the tests that send raw frames need it")]
    pub fn victim_mac(&self) -> String {
        let out = self.in_victim(&["cat", &format!("/sys/class/net/{}/address", self.vif)]);
        let mac = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!mac.is_empty(), "no MAC for {}: {out:?}", self.vif);
        mac
    }

    /// Runs `body` in Debian's python3 with scapy in the attacker namespace, with `mac`
    /// (the victim interface's address) and `iface` (the attacker's end) defined.
    #[allow(dead_code, reason = "only the tests that craft packets need it")]
    pub fn scapy(&self, body: &str) {
        let mac = self.victim_mac();
        let script = format!(
            "from scapy.all import *\nconf.verb = 0\nmac = '{mac}'\niface = '{}'\n{body}",
            self.aif
        );
        let out = self.in_attacker(&["/usr/bin/python3", "-c", &script]);
        assert!(
            out.status.success(),
            "scapy failed (make test installs python3-scapy): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `/healthz` of the agent serving on the default address in the victim namespace:
    /// (status, body).
    #[allow(dead_code, reason = "only the fault and state tests read /healthz")]
    pub fn healthz(&self) -> (u32, String) {
        let out = self.in_victim(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:9809/healthz",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// A metric's value from the agent serving on the default address in the victim
    /// namespace (the first sample whose name and labels start with `name`).
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_at("127.0.0.1:9809", name)
    }

    #[allow(dead_code, reason = "not every test binary runs two agents")]
    pub fn metric_at(&self, addr: &str, name: &str) -> u64 {
        let url = format!("http://{addr}/metrics");
        let out = self.in_victim(&["curl", "-sf", "--max-time", "2", &url]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        page.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from:\n{page}"))
    }

    pub fn in_victim(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.victim];
        all.extend_from_slice(args);
        sh(&all)
    }

    pub fn in_attacker(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.attacker];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Whether an HTTP request from `src` (an attacker-side address) to `dst` gets an
    /// answer within a second.
    pub fn connects(&self, src: &str, dst: &str) -> bool {
        let url = if dst.contains(':') {
            format!("http://[{dst}]:{HTTP_PORT}/")
        } else {
            format!("http://{dst}:{HTTP_PORT}/")
        };
        self.in_attacker(&[
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "--interface",
            src,
            "--connect-timeout",
            "1",
            "--max-time",
            "2",
            &url,
        ])
        .status
        .success()
    }

    /// Adds an address (`ADDR/LEN`) to the attacker's end of the veth.
    #[allow(dead_code, reason = "only some test binaries add addresses")]
    pub fn add_attacker_address(&self, cidr: &str) {
        let mut args = vec!["ip", "addr", "add", cidr, "dev", &self.aif];
        if cidr.contains(':') {
            args.push("nodad");
        }
        let out = self.in_attacker(&args);
        assert!(out.status.success(), "adding {cidr}: {out:?}");
    }

    /// A SYN scan of `ports` from `src` (an attacker-side address) to `dst`.
    pub fn scan(&self, src: &str, dst: &str, ports: &str) {
        self.nmap(src, dst, ports, &[]);
    }

    /// `nmap -sS` from `src` (an attacker-side address) to `targets` (an address or an
    /// nmap range) on `ports`, with `extra` options (evasions, timing); its output.
    pub fn nmap(&self, src: &str, targets: &str, ports: &str, extra: &[&str]) -> String {
        self.nmap_via(&self.aif, src, targets, ports, extra)
    }

    /// [`Lab::nmap`] out of the attacker's interface `aif`.
    pub fn nmap_via(
        &self,
        aif: &str,
        src: &str,
        targets: &str,
        ports: &str,
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "-T4",
            "--max-retries",
            "1",
            "-e",
            aif,
            "-p",
            ports,
            "-S",
            src,
        ];
        args.extend_from_slice(extra);
        if targets.contains(':') {
            args.push("-6");
        }
        args.push(targets);
        let out = self.in_attacker(&args);
        assert!(
            out.status.success(),
            "nmap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.victim]);
        let _ = sh(&["ip", "netns", "del", &self.attacker]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.victim));
    }
}

/// A raw-socket SYN sender (no scapy needed): python3 -c FORGE_SYNS SRC DST PORT...
/// IPv4 and IPv6, headers and checksums written by hand.
const FORGE_SYNS: &str = r#"
import socket, struct, sys
src, dst, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
v6 = ':' in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET
sa, da = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i, port in enumerate(ports):
    tcp = struct.pack('!HHIIBBHHH', 41000 + i, port, 7000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = sa + da + (struct.pack('!IxxxB', len(tcp), 6) if v6 else struct.pack('!xBH', 6, len(tcp)))
    tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
    if v6:
        ip = struct.pack('!IHBB', 6 << 28, len(tcp), 6, 64) + sa + da
    else:
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1 + i, 0, 64, 6, 0, sa, da)
    raw.sendto(ip + tcp, (dst, 0))
"#;

/// `synwatch run` in the victim namespace, stdout and stderr in files.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Agent {
    /// Starts the agent on the lab's interface with `args`, and waits for its banner.
    pub fn start(lab: &Lab, dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::start_under(lab, dir, name, &[], args)
    }

    /// Like `start`, with the agent run by `wrapper` (a command taking the command to
    /// run as its last arguments, such as setpriv).
    pub fn start_under(lab: &Lab, dir: &Path, name: &str, wrapper: &[&str], args: &[&str]) -> Self {
        let out = dir.join(format!("{name}.jsonl"));
        let stdout = Stdio::from(std::fs::File::create(&out).expect("stdout file"));
        Self::start_with(lab, dir, name, wrapper, stdout, args)
    }

    /// Like `start_under`, with stdout going to `stdout` (a pipe, say) instead of the
    /// events file.
    pub fn start_with(
        lab: &Lab,
        dir: &Path,
        name: &str,
        wrapper: &[&str],
        stdout: Stdio,
        args: &[&str],
    ) -> Self {
        Self::spawn(lab, dir, name, wrapper, stdout, Some(&lab.vif), args)
    }

    /// Like `start`, watching `iface` instead of the lab's veth.
    #[allow(dead_code, reason = "only some tests watch another interface")]
    pub fn start_on(lab: &Lab, dir: &Path, name: &str, iface: &str, args: &[&str]) -> Self {
        let out = dir.join(format!("{name}.jsonl"));
        let stdout = Stdio::from(std::fs::File::create(&out).expect("stdout file"));
        Self::spawn(lab, dir, name, &[], stdout, Some(iface), args)
    }

    /// Like `start`, without `--iface`: the agent watches every interface that is up in
    /// the victim namespace, and those that come up later.
    #[allow(dead_code, reason = "only the fault tests watch every interface")]
    pub fn start_on_every_interface(lab: &Lab, dir: &Path, name: &str, args: &[&str]) -> Self {
        let out = dir.join(format!("{name}.jsonl"));
        let stdout = Stdio::from(std::fs::File::create(&out).expect("stdout file"));
        Self::spawn(lab, dir, name, &[], stdout, None, args)
    }

    fn spawn(
        lab: &Lab,
        dir: &Path,
        name: &str,
        wrapper: &[&str],
        stdout: Stdio,
        iface: Option<&str>,
        args: &[&str],
    ) -> Self {
        let out = dir.join(format!("{name}.jsonl"));
        let err = dir.join(format!("{name}.log"));
        // A state directory of the test's own unless it names one: never the host's
        // /var/lib/synwatch, whose bans (of a test run before, or of another test's agent
        // at the same time) would be restored into this one.
        let own_state = dir.join(format!("{name}.state"));
        let own_state = ["--state-dir", own_state.to_str().expect("utf-8 path")];
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.victim])
            .args(wrapper)
            .args([env!("CARGO_BIN_EXE_synwatch"), "run"])
            .args(iface.map(|i| ["--iface", i]).iter().flatten())
            .args(["--format", "json"])
            // The pipeline's tests observe through libpcap unless they say otherwise
            // (lab_xdp.rs tests the XDP source).
            .args(if args.contains(&"--source") {
                &[][..]
            } else {
                &["--source", "pcap"][..]
            })
            .args(if args.contains(&"--state-dir") {
                &[][..]
            } else {
                &own_state[..]
            })
            .args(args)
            .stdout(stdout)
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start synwatch");
        let mut agent = Agent {
            child: Some(child),
            out,
            err,
        };
        let deadline = Deadline::after(15);
        loop {
            let log = agent.log();
            if log.contains("watching") {
                break;
            }
            let exited = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "synwatch exited ({exited:?}): {log}");
            assert!(!deadline.passed(), "synwatch did not start: {log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The events written so far: every whole line (a line the agent is still writing,
    /// not yet ended by its newline, is not an event yet; every whole one must be JSON).
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }

    /// Waits up to `secs` for an event matching `pred`.
    pub fn wait_for(
        &self,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Deadline::after(secs);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                !deadline.passed(),
                "no such event within {secs} s; events: {:#?}\nlog: {}",
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    /// The agent's stdout when it was started with a pipe.
    #[allow(dead_code, reason = "only the fault tests pipe stdout")]
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// The agent's process id (`ip netns exec` execs it).
    #[allow(dead_code, reason = "only some test binaries look at the process")]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the agent is still running.
    #[allow(dead_code, reason = "only some test binaries look at the process")]
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then the exit code, which must come within `secs` (else the test fails
    /// and the agent is killed).
    #[allow(dead_code, reason = "only some test binaries time the stop")]
    pub fn stop_within(mut self, secs: u64) -> Option<i32> {
        self.signal("TERM");
        let deadline = Deadline::after(secs);
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if deadline.passed() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "SIGTERM did not stop the agent within {secs} s: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        status.and_then(|s| s.code())
    }

    /// SIGKILL: no chance to clean up.
    #[allow(dead_code, reason = "not every test binary kills its agent")]
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `synwatch blocks ARGS` in the victim namespace, JSON output; (exit code, stdout, stderr).
#[allow(dead_code, reason = "not every test binary asks the agent")]
pub fn blocks(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.victim,
            env!("CARGO_BIN_EXE_synwatch"),
            "blocks",
        ])
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("run synwatch blocks");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
