//! The fleet for real (SPEC §7): CrowdSec's own Local API (Debian's `crowdsec`, run
//! with a config directory and SQLite database of its own in a tempdir) in a network
//! namespace of its own, joined by a veth pair to each of two victims, each with its
//! own attacker (two labs: the same addresses, in different namespaces). Victim A
//! observes and blocks through XDP, victim B through nftables; both push (machine
//! credentials from `cscli machines add`) and pull (a bouncer key from `cscli bouncers
//! add`) every 2 s.
//!
//! - a scan of A is banned on A and, through the LAPI, on B, whose `blocks list` names
//!   the origin; A does not ban it a second time from its own alert;
//! - `cscli decisions add --ip` and `--range` (IPv4, and an IPv6 /64) hold on both, and
//!   `cscli decisions delete` lifts them;
//! - a decision on B's gateway is not enforced (and said so);
//! - with the LAPI stopped the bans held stay enforced and a new local ban queues; when
//!   it returns the queued alert arrives, and the fleet is in step again;
//! - garbage, an endless answer and a refused key from a fake LAPI get a clear error,
//!   and the agent keeps running and enforcing.
//!
//! Needs root and `crowdsec` (make test-deps installs it); `make test` runs these.

#[expect(dead_code, reason = "the fleet tests use part of the lab")]
mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lab::{Agent, CLIENT, Lab, SCANNER, VICTIM, VICTIM6, blocks, eventually};
use serde_json::Value;

const PULL: &str = "2s";
/// One pull interval, with slack for the push, the LAPI and a loaded CI machine.
const WITHIN: u64 = 15;
/// Attacker addresses inside the ranges banned through the LAPI (IPv4, and an IPv6 /64
/// apart from the lab's own fd77::/64, which holds the victim).
const IN4: &str = "10.77.0.130";
const RANGE4: &str = "10.77.0.128/26";
const IN6: &str = "fd78:0:0:1::5";
const RANGE6: &str = "fd78:0:0:1::/64";
const LONE4: &str = "10.77.0.77";
/// The victims' gateway (nobody answers for it; the protection rule sees the route).
const GATEWAY: &str = "10.77.0.254";
const LAPI_PORT: u16 = 8080;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CrowdSec LAPI in a namespace of its own, linked to victims with `link`.
struct Lapi {
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    links: u32,
}

impl Lapi {
    fn start(dir: &Path) -> Self {
        assert!(
            Path::new("/usr/bin/crowdsec").exists(),
            "crowdsec is missing: make test-deps installs it"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("swf{}x{n}l", std::process::id());
        must(&["ip", "netns", "add", &ns]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let d = dir.display();
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        std::fs::create_dir_all(dir.join("hub")).expect("hub dir");
        std::fs::write(dir.join("hub/.index.json"), "{}").expect("hub index");
        std::fs::write(dir.join("simulation.yaml"), "simulation: false\n").expect("sim");
        std::fs::write(
            dir.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles");
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: .\n\
                 config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  plugin_dir: /usr/lib/crowdsec/plugins/\n\
                 cscli:\n  output: human\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n\
                 api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n  server:\n    listen_uri: 0.0.0.0:{LAPI_PORT}\n    profiles_path: {d}/profiles.yaml\n\
                 prometheus:\n  enabled: false\n"
            ),
        )
        .expect("config");
        let mut lapi = Lapi {
            ns,
            dir: dir.to_owned(),
            config,
            child: None,
            links: 0,
        };
        lapi.cscli(&[
            "machines",
            "add",
            "cli",
            "--auto",
            "--url",
            &format!("http://127.0.0.1:{LAPI_PORT}"),
        ]);
        lapi.resume();
        lapi
    }

    /// Starts (again) the LAPI, on the same database, and waits until it answers.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lapi.log"))
            .expect("lapi log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "crowdsec", "-no-cs", "-c"])
            .arg(&self.config)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start crowdsec");
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{LAPI_PORT}/v1/decisions");
        eventually(20, "the LAPI answers", || {
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ]);
            // Without a key it answers 403: it is up.
            String::from_utf8_lossy(&out.stdout).starts_with('4')
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            let _ = c.wait();
        }
    }

    fn cscli(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns, "cscli", "-c"];
        let config = self.config.to_str().expect("utf-8");
        all.push(config);
        all.extend_from_slice(args);
        must(&all)
    }

    /// Links the victim of `lab` to the LAPI; returns the LAPI's URL as the victim sees it.
    fn link(&mut self, lab: &Lab) -> String {
        self.links += 1;
        let k = self.links;
        let (here, there) = (format!("{}f{k}", self.ns), format!("swfl{k}"));
        must(&[
            "ip",
            "link",
            "add",
            &here,
            "netns",
            &self.ns,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &lab.victim,
        ]);
        let (mine, theirs) = (format!("10.78.{k}.1"), format!("10.78.{k}.2"));
        must(&[
            "ip",
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{mine}/24"),
            "dev",
            &here,
        ]);
        must(&[
            "ip",
            "-n",
            &lab.victim,
            "addr",
            "add",
            &format!("{theirs}/24"),
            "dev",
            &there,
        ]);
        must(&["ip", "-n", &self.ns, "link", "set", &here, "up"]);
        must(&["ip", "-n", &lab.victim, "link", "set", &there, "up"]);
        format!("http://{mine}:{LAPI_PORT}")
    }

    /// Machine credentials and a bouncer key for a victim, in files under `dir`.
    fn register(&self, name: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let creds = dir.join(format!("{name}.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--auto",
            "-f",
            creds.to_str().expect("utf-8"),
        ]);
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&key_file, key.trim()).expect("key file");
        (creds, key_file)
    }

    /// The decisions of the LAPI, as JSON.
    fn decisions(&self) -> Vec<Value> {
        let out = self.cscli(&["decisions", "list", "-o", "json"]);
        let alerts: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        alerts
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["decisions"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn has_decision(&self, value: &str, scenario_prefix: &str) -> bool {
        self.decisions().iter().any(|d| {
            d["value"] == value
                && d["scenario"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(scenario_prefix))
        })
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

/// A lab for one victim of the fleet: attacker addresses inside the ranges, a gateway.
fn victim_lab() -> Lab {
    let lab = Lab::new();
    lab.add_attacker_address(&format!("{IN4}/24"));
    lab.add_attacker_address(&format!("{LONE4}/24"));
    lab.add_attacker_address(&format!("{IN6}/64"));
    let out = lab.in_victim(&["ip", "-6", "route", "add", RANGE6, "dev", &lab.vif]);
    assert!(out.status.success(), "{out:?}");
    let out = lab.in_victim(&["ip", "route", "add", "default", "via", GATEWAY]);
    assert!(out.status.success(), "{out:?}");
    lab
}

/// The agent of a victim of the fleet: `backend` args, state under `dir/name`.
fn fleet_agent(
    lab: &Lab,
    dir: &Path,
    name: &str,
    url: &str,
    (creds, key): &(PathBuf, PathBuf),
    backend: &[&str],
) -> Agent {
    let state = dir.join(format!("{name}-state"));
    let mut args = backend.to_vec();
    args.extend([
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--crowdsec-credentials",
        creds.to_str().expect("utf-8"),
        "--crowdsec-bouncer-key-file",
        key.to_str().expect("utf-8"),
        "--crowdsec-url",
        url,
        "--crowdsec-pull",
        PULL,
        "--ban",
        "10m",
    ]);
    Agent::start(lab, dir, name, &args)
}

/// The bans `blocks list` shows on the victim of `lab`.
/// The agent's crowdsec-push and crowdsec-pull threads: name, CapEff, CapPrm.
fn fleet_thread_capabilities(pid: u32) -> Vec<(String, u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    let mut found = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let name = field("Name:");
        if name.starts_with("crowdsec-pu") {
            let mask = |key| u64::from_str_radix(&field(key), 16).expect("a capability mask");
            found.push((name, mask("CapEff:"), mask("CapPrm:")));
        }
    }
    found
}

fn listed(lab: &Lab, state: &Path) -> Vec<Value> {
    let (code, out, err) = blocks(
        lab,
        &["list", "--state-dir", state.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "blocks list: {err}");
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ban_of<'a>(bans: &'a [Value], addr: &str) -> Option<&'a Value> {
    bans.iter().find(|b| b["addr"] == addr)
}

fn reaches(lab: &Lab, src: &str) -> bool {
    let dst = if src.contains(':') { VICTIM6 } else { VICTIM };
    lab.connects(src, dst)
}

const XDP: &[&str] = &["--source", "xdp", "--block", "xdp"];
const NFT: &[&str] = &["--block", "nftables"];

#[test]
#[ignore = "needs root, network namespaces and crowdsec; make test runs it"]
fn a_fleet_shares_bans_and_enforces_cscli_decisions_through_a_real_lapi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lapi_dir = dir.path().join("lapi");
    let mut lapi = Lapi::start(&lapi_dir);
    let (a, b) = (victim_lab(), victim_lab());
    let (url_a, url_b) = (lapi.link(&a), lapi.link(&b));
    let (cred_a, cred_b) = (
        lapi.register("victim-a", dir.path()),
        lapi.register("victim-b", dir.path()),
    );
    let agent_a = fleet_agent(&a, dir.path(), "a", &url_a, &cred_a, XDP);
    let agent_b = fleet_agent(&b, dir.path(), "b", &url_b, &cred_b, NFT);
    let (state_a, state_b) = (dir.path().join("a-state"), dir.path().join("b-state"));
    for (lab, agent) in [(&a, &agent_a), (&b, &agent_b)] {
        assert!(reaches(lab, SCANNER), "{}", agent.log());
        assert!(reaches(lab, IN4) && reaches(lab, IN6) && reaches(lab, LONE4));
        eventually(WITHIN, "a first sync", || {
            lab.metric("synwatch_crowdsec_last_sync_timestamp_seconds") > 0
        });
        // The threads that talk to the LAPI and parse its answers hold no capability.
        let fleet_threads = fleet_thread_capabilities(agent.pid());
        assert_eq!(fleet_threads.len(), 2, "push and pull: {fleet_threads:?}");
        for (name, eff, prm) in fleet_threads {
            assert_eq!((eff, prm), (0, 0), "{name} holds capabilities");
        }
    }

    // A scan of A: banned on A, pushed, pulled by B.
    a.scan(SCANNER, VICTIM, "1-200");
    eventually(WITHIN, "A bans the scanner", || {
        ban_of(&listed(&a, &state_a), SCANNER).is_some()
    });
    assert!(!reaches(&a, SCANNER));
    eventually(WITHIN, "A's alert reaches the LAPI", || {
        lapi.has_decision(SCANNER, "synwatch/port-scan")
    });
    eventually(WITHIN, "B bans the scanner A saw", || {
        ban_of(&listed(&b, &state_b), SCANNER).is_some()
    });
    let on_b = listed(&b, &state_b);
    let ban = ban_of(&on_b, SCANNER).expect("listed");
    assert_eq!(ban["origin"], "crowdsec/synwatch/port-scan", "{ban}");
    assert_eq!(ban["in_kernel"], true, "{ban}");
    assert!(!reaches(&b, SCANNER), "B drops A's scanner");
    assert!(reaches(&b, CLIENT), "and nobody else");
    let on_a = listed(&a, &state_a);
    assert_eq!(
        ban_of(&on_a, SCANNER).expect("listed")["origin"],
        "synwatch"
    );
    eventually(WITHIN, "A skips its own decision", || {
        a.metric("synwatch_crowdsec_decisions_skipped_total{origin=\"synwatch\",reason=\"own\"}")
            >= 1
    });
    assert!(a.metric("synwatch_crowdsec_alerts_pushed_total") >= 1);

    // cscli's decisions: an address, an IPv4 range and an IPv6 /64, on both victims.
    lapi.cscli(&["decisions", "add", "--ip", LONE4, "-d", "1h"]);
    lapi.cscli(&["decisions", "add", "--range", RANGE4, "-d", "1h"]);
    lapi.cscli(&["decisions", "add", "--range", RANGE6, "-d", "1h"]);
    lapi.cscli(&["decisions", "add", "--ip", GATEWAY, "-d", "1h"]);
    for (lab, state, name) in [(&a, &state_a, "A (XDP)"), (&b, &state_b, "B (nftables)")] {
        eventually(
            WITHIN,
            &format!("{name} enforces cscli's decisions"),
            || {
                let bans = listed(lab, state);
                [LONE4, RANGE4, RANGE6]
                    .iter()
                    .all(|n| ban_of(&bans, n).is_some_and(|b| b["origin"] == "cscli"))
            },
        );
        for src in [LONE4, IN4, IN6] {
            eventually(5, &format!("{name} drops {src}"), || !reaches(lab, src));
        }
        assert!(reaches(lab, CLIENT), "{name}: the client still connects");
        assert!(
            ban_of(&listed(lab, state), GATEWAY).is_none(),
            "{name} enforced a decision on its gateway"
        );
        assert!(
            lab.metric(
                "synwatch_crowdsec_decisions_skipped_total{origin=\"cscli\",reason=\"protected\"}"
            ) >= 1
        );
    }
    assert!(
        agent_b
            .log()
            .contains("not enforcing the CrowdSec decision")
            && agent_b.log().contains(GATEWAY),
        "{}",
        agent_b.log()
    );
    // Lifted when deleted in the LAPI.
    lapi.cscli(&["decisions", "delete", "--ip", LONE4]);
    lapi.cscli(&["decisions", "delete", "--range", RANGE4]);
    lapi.cscli(&["decisions", "delete", "--range", RANGE6]);
    for (lab, state, name) in [(&a, &state_a, "A (XDP)"), (&b, &state_b, "B (nftables)")] {
        eventually(
            WITHIN,
            &format!("{name} lifts the deleted decisions"),
            || {
                let bans = listed(lab, state);
                [LONE4, RANGE4, RANGE6]
                    .iter()
                    .all(|n| ban_of(&bans, n).is_none())
            },
        );
        for src in [LONE4, IN4, IN6] {
            eventually(5, &format!("{name} lets {src} in again"), || {
                reaches(lab, src)
            });
        }
        assert!(!reaches(lab, SCANNER), "{name}: the scan's ban stays");
    }
    let events_b = agent_b.events();
    assert!(
        events_b
            .iter()
            .any(|e| e["event"] == "unblock" && e["reason"] == "deleted"),
        "B reports the lifts"
    );

    // A's operator lifts the scan's ban by hand (a forged scan of a friend, say): it is
    // withdrawn from the fleet, so B lifts it too and it does not come back to A.
    let (code, _, err) = blocks(
        &a,
        &[
            "remove",
            SCANNER,
            "--state-dir",
            state_a.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "blocks remove: {err}");
    eventually(WITHIN, "the LAPI drops A's decision", || {
        !lapi.has_decision(SCANNER, "synwatch/")
    });
    eventually(WITHIN, "B lifts the withdrawn ban", || {
        ban_of(&listed(&b, &state_b), SCANNER).is_none()
    });
    assert!(reaches(&a, SCANNER) && reaches(&b, SCANNER));
    assert!(agent_a.log().contains("withdrew"), "{}", agent_a.log());
    lapi.stop();
    for agent in [agent_a, agent_b] {
        assert_eq!(agent.stop(), Some(0));
    }
}

#[test]
#[ignore = "needs root, network namespaces and crowdsec; make test runs it"]
fn with_the_lapi_away_bans_stay_enforced_and_local_bans_queue_until_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lapi = Lapi::start(&dir.path().join("lapi"));
    let (a, b) = (victim_lab(), victim_lab());
    let (url_a, url_b) = (lapi.link(&a), lapi.link(&b));
    let (cred_a, cred_b) = (
        lapi.register("victim-a", dir.path()),
        lapi.register("victim-b", dir.path()),
    );
    let agent_a = fleet_agent(&a, dir.path(), "a", &url_a, &cred_a, NFT);
    let agent_b = fleet_agent(&b, dir.path(), "b", &url_b, &cred_b, NFT);
    let state_b = dir.path().join("b-state");
    lapi.cscli(&["decisions", "add", "--range", RANGE4, "-d", "1h"]);
    eventually(WITHIN, "B enforces the range", || !reaches(&b, IN4));

    lapi.stop();
    eventually(WITHIN, "B notices the LAPI is away", || {
        b.metric("synwatch_crowdsec_pull_errors_total") >= 2
    });
    assert!(
        !reaches(&b, IN4),
        "the range stays enforced without the LAPI"
    );
    assert!(ban_of(&listed(&b, &state_b), RANGE4).is_some());
    // A bans a scanner meanwhile: its alert waits.
    a.scan(SCANNER, VICTIM, "1-200");
    eventually(WITHIN, "A bans the scanner", || !reaches(&a, SCANNER));
    eventually(WITHIN, "A's alert waits in its queue", || {
        a.metric("synwatch_crowdsec_push_queue") == 1
            && a.metric("synwatch_crowdsec_push_errors_total") >= 1
    });
    assert!(reaches(&b, SCANNER), "B cannot know yet");
    assert!(
        agent_a.log().contains("alert(s) queued"),
        "{}",
        agent_a.log()
    );
    // A restart meanwhile loses nothing: the queue is saved at stop and queued again at
    // the next start.
    assert_eq!(agent_a.stop(), Some(0));
    let agent_a = fleet_agent(&a, dir.path(), "a", &url_a, &cred_a, NFT);
    eventually(WITHIN, "A's saved alert waits in its queue again", || {
        a.metric("synwatch_crowdsec_push_queue") == 1
    });
    assert!(agent_a.log().contains("queued again"), "{}", agent_a.log());

    lapi.resume();
    eventually(40, "A's queued alert arrives once the LAPI is back", || {
        a.metric("synwatch_crowdsec_push_queue") == 0
            && lapi.has_decision(SCANNER, "synwatch/port-scan")
    });
    eventually(WITHIN, "B bans it in turn", || !reaches(&b, SCANNER));
    assert!(!reaches(&b, IN4), "the range held throughout");
    assert_eq!(a.metric("synwatch_crowdsec_push_dropped_total"), 0);
    // The resync gave nothing twice and lifted nothing: the range is the same ban.
    let events_b = agent_b.events();
    let range_blocks = events_b
        .iter()
        .filter(|e| e["event"] == "block" && e["prefix"] == RANGE4)
        .count();
    let range_lifts = events_b
        .iter()
        .filter(|e| e["event"] == "unblock" && e["prefix"] == RANGE4)
        .count();
    assert_eq!((range_blocks, range_lifts), (1, 0), "{events_b:?}");
    assert!(agent_b.log().contains("answers again"), "{}", agent_b.log());
    for agent in [agent_a, agent_b] {
        assert_eq!(agent.stop(), Some(0));
    }
}

/// A fake LAPI (python3 in the victim's namespace) answering the decision stream with
/// what the file `mode` says: `garbage`, `endless`, `forbidden`, `stall` (no answer at
/// all) or `ok`.
const FAKE_LAPI: &str = r#"
import http.server, sys, json
mode_file = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        mode = open(mode_file).read().strip()
        if mode == 'stall':
            import time
            time.sleep(3600)
            return
        if mode == 'forbidden':
            body = b'{"message":"access forbidden"}'
            self.send_response(403)
        elif mode == 'garbage':
            body = b'<html>nginx: 502 Bad Gateway</html>'
            self.send_response(200)
        elif mode == 'endless':
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.end_headers()
            try:
                self.wfile.write(b'{"new":[')
                one = b'{"id":1,"origin":"cscli","type":"ban","scope":"Ip","value":"10.77.0.9","duration":"1h","scenario":"x"},' * 1000
                for _ in range(2000):
                    self.wfile.write(one)
            except Exception:
                pass
            return
        else:
            body = json.dumps({"new": [{"id": 5, "origin": "cscli", "type": "ban", "scope": "Ip",
                "value": "10.77.0.77", "duration": "1h", "scenario": "manual"}], "deleted": None}).encode()
            self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn bad_answers_from_the_lapi_get_a_clear_error_and_the_agent_keeps_running() {
    let mut lab = victim_lab();
    let dir = tempfile::tempdir().expect("tempdir");
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "garbage").expect("mode");
    let script = dir.path().join("fake_lapi.py");
    std::fs::write(&script, FAKE_LAPI).expect("script");
    lab.spawn_in_victim(&[
        "python3",
        script.to_str().expect("utf-8"),
        "18080",
        mode.to_str().expect("utf-8"),
    ]);
    let key = dir.path().join("key");
    std::fs::write(&key, "not-the-key\n").expect("key");
    let state = dir.path().join("state");
    // The fake server needs a moment to listen; the agent retries anyway.
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = Agent::start(
        &lab,
        dir.path(),
        "agent",
        &[
            "--block",
            "nftables",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--crowdsec-bouncer-key-file",
            key.to_str().expect("utf-8"),
            "--crowdsec-url",
            "http://127.0.0.1:18080/",
            "--crowdsec-pull",
            "1s",
        ],
    );
    let errors = |lab: &Lab| lab.metric("synwatch_crowdsec_pull_errors_total");
    eventually(WITHIN, "garbage is refused", || {
        agent.log().contains("is not the JSON of the API")
    });
    assert!(agent.log().contains("nginx: 502"), "{}", agent.log());
    std::fs::write(&mode, "endless").expect("mode");
    let before = errors(&lab);
    eventually(60, "an endless answer is cut", || errors(&lab) > before);
    std::fs::write(&mode, "forbidden").expect("mode");
    eventually(WITHIN, "a refused key is said so", || {
        agent.log().contains("HTTP 403") && agent.log().contains("--crowdsec-bouncer-key-file")
    });
    assert!(agent.running(), "{}", agent.log());
    assert!(
        reaches(&lab, LONE4),
        "nothing was enforced from bad answers"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    // The LAPI makes sense again: its decision is enforced.
    std::fs::write(&mode, "ok").expect("mode");
    eventually(WITHIN, "a good answer after bad ones is applied", || {
        !reaches(&lab, LONE4)
    });
    assert!(reaches(&lab, CLIENT));
    // A LAPI that stops answering mid-request does not hold the agent's exit for the
    // request's timeout (20 s).
    std::fs::write(&mode, "stall").expect("mode");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.stop_within(8), Some(0));
}

#[test]
#[ignore = "needs root and crowdsec; make test runs it"]
fn unreadable_crowdsec_files_stop_the_agent_at_start_with_one_clear_line() {
    let lab = victim_lab();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let out = lab.in_victim(&[
        env!("CARGO_BIN_EXE_synwatch"),
        "run",
        "--iface",
        &lab.vif,
        "--block",
        "nftables",
        "--state-dir",
        dir.path().join("state").to_str().expect("utf-8"),
        "--crowdsec-credentials",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("nope.yaml"),
        "{err}"
    );
    // Nothing was set up.
    let nft = lab.in_victim(&["nft", "list", "table", "inet", "synwatch"]);
    assert!(!nft.status.success(), "the rules were set up anyway");
}
