//! The monitoring kit in `deploy/` against promtool and against what the agent really
//! serves: the alerting rules pass `promtool check rules` and their unit tests pass
//! `promtool test rules` (and those tests fail when any alert is made dead, so they
//! really test every alert); the example Prometheus configuration passes `promtool check
//! config`; the Grafana dashboard is well-formed and its queries are valid PromQL; and
//! every `synwatch_*` metric the rules and the dashboard name is one the agent writes.
//! The live test starts the agent in the network-namespace lab, makes traffic, and checks
//! its `/metrics` page with `promtool check metrics` (no lint problems at all), then
//! checks the kit's metric names, and the unit tests' input series, against that page.
//!
//! promtool comes with the Debian package prometheus (`make deps`). The live test needs
//! root; `make test` runs it as root.

#[expect(dead_code, reason = "this test uses part of the shared lab")]
mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lab::{Agent, CLIENT, Deadline, Lab, SCANNER, VICTIM};
use serde_json::Value;

const PROMTOOL_MISSING: &str =
    "promtool is missing: make deps installs it (Debian package prometheus)";

const RULES: &str = "prometheus/synwatch.rules.yml";
const RULE_TESTS: &str = "prometheus/synwatch.rules.test.yml";
const CONFIG: &str = "prometheus/prometheus.yml";
const DASHBOARD: &str = "grafana/synwatch-dashboard.json";

/// Families each part of the kit must use (the brief of the alerts and of the panels).
const RULE_FAMILIES: [&str; 9] = [
    "synwatch_port_scans_total",
    "synwatch_pipeline_heartbeat_timestamp_seconds",
    "synwatch_rules_reinstated_total",
    "synwatch_blocks_total",
    "synwatch_blocked_sources",
    "synwatch_ban_failures_total",
    "synwatch_capture_drops_total",
    "synwatch_packets_total",
    "synwatch_interface_drops_total",
];
const DASHBOARD_FAMILIES: [&str; 14] = [
    "synwatch_rules_reinstated_total",
    "synwatch_new_connections_total",
    "synwatch_port_scans_total",
    "synwatch_blocks_total",
    "synwatch_unblocks_total",
    "synwatch_blocked_sources",
    "synwatch_tracked_sources",
    "synwatch_packets_total",
    "synwatch_capture_drops_total",
    "synwatch_interface_drops_total",
    "synwatch_decode_errors_total",
    "synwatch_events_suppressed_total",
    "synwatch_ban_failures_total",
    "synwatch_build_info",
];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs promtool with `args` (and `stdin` as its standard input); fails the test, never
/// skips it, when promtool is not installed.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = match Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{PROMTOOL_MISSING}"),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let writer = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("promtool's stdin");
        let text = text.to_owned();
        std::thread::spawn(move || pipe.write_all(text.as_bytes()))
    });
    let out = child.wait_with_output().expect("wait for promtool");
    if let Some(writer) = writer {
        writer
            .join()
            .expect("the stdin writer")
            .expect("write to promtool");
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs promtool and asserts it succeeded; its whole output.
fn promtool_ok(args: &[&str]) -> String {
    let out = promtool(args, None);
    let all = text(&out);
    assert!(out.status.success(), "promtool {args:?} failed:\n{all}");
    all
}

/// One rule of a rules file, as written (the test's own small reader of the layout the
/// file uses; `promtool check rules` must count the same number of rules).
#[derive(Debug)]
struct Rule {
    alert: bool,
    name: String,
    expr: String,
    /// The rule's own lines (from its `- alert:` or `- record:` to the next rule).
    block: String,
    /// Lines `expr_lines.0..expr_lines.1` hold the expression.
    expr_lines: (usize, usize),
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn rule_start(line: &str) -> Option<(bool, &str)> {
    let t = line.trim_start();
    t.strip_prefix("- alert:")
        .map(|n| (true, n.trim()))
        .or_else(|| t.strip_prefix("- record:").map(|n| (false, n.trim())))
}

fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| rule_start(lines[i]).is_some())
        .collect();
    let mut rules = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let (alert, name) = rule_start(lines[start]).expect("a rule start");
        let at = (start + 1..end)
            .find(|&i| lines[i].trim_start().starts_with("expr:"))
            .unwrap_or_else(|| panic!("rule {name} has no expr"));
        let first = lines[at]
            .trim_start()
            .strip_prefix("expr:")
            .expect("expr:")
            .trim();
        assert!(
            !first.starts_with(['"', '\'']),
            "rule {name}: write the expr plain or as a block scalar (| or >), not quoted"
        );
        let mut expr = if first.starts_with(['|', '>']) {
            String::new()
        } else {
            first.to_owned()
        };
        let mut stop = at + 1;
        while stop < end
            && (lines[stop].trim().is_empty() || indent(lines[stop]) > indent(lines[at]))
        {
            expr.push(' ');
            expr.push_str(lines[stop].trim());
            stop += 1;
        }
        rules.push(Rule {
            alert,
            name: name.to_owned(),
            expr: expr.trim().to_owned(),
            block: lines[start..end].join("\n"),
            expr_lines: (at, stop),
        });
    }
    rules
}

/// One `alert_rule_test` entry of the unit tests: which alert, and whether it is
/// expected to fire (`exp_alerts` with alerts) or not (`exp_alerts: []`).
#[derive(Debug)]
struct Case {
    alertname: String,
    fires: bool,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut current: Option<(Option<String>, Option<bool>)> = None;
    let mut finish = |c: Option<(Option<String>, Option<bool>)>| {
        if let Some((name, fires)) = c {
            cases.push(Case {
                alertname: name.expect("an alert_rule_test entry without alertname"),
                fires: fires.expect("an alert_rule_test entry without exp_alerts"),
            });
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("- eval_time:") {
            finish(current.take());
            current = Some((None, None));
        } else if t.starts_with("- name:") || t.starts_with("input_series:") {
            finish(current.take());
        } else if let Some(c) = current.as_mut() {
            if let Some(name) = t.strip_prefix("alertname:") {
                c.0 = Some(name.trim().to_owned());
            } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
                c.1 = Some(rest.trim() != "[]");
            }
        }
    }
    finish(current);
    cases
}

/// The input series of the unit tests, as (metric name, label names).
fn parse_input_series(text: &str) -> Vec<(String, BTreeSet<String>)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- series:"))
        .map(|s| {
            let s = s.trim().trim_matches(['\'', '"']);
            let (name, labels) = split_series(s);
            (name.to_owned(), labels.into_keys().collect())
        })
        .collect()
}

/// `name{a="x",b="y"}` into the name and its labels (escapes in values kept as written).
fn split_series(s: &str) -> (&str, BTreeMap<String, String>) {
    let Some((name, rest)) = s.split_once('{') else {
        return (s.trim(), BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        let key = key.trim().to_owned();
        if key.is_empty() || key.starts_with('}') {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted value for {key} in {s}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    value.push(c);
                    value.extend(chars.next());
                }
                '"' => break,
                _ => value.push(c),
            }
        }
        labels.insert(key, value);
    }
    (name.trim(), labels)
}

/// The identifiers naming synwatch series in a PromQL expression (string literals, such
/// as label values, left out).
fn synwatch_names(expr: &str) -> BTreeSet<String> {
    let mut bare = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                bare.push(' ');
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                bare.push(' ');
            }
            None => bare.push(c),
        }
    }
    bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("synwatch"))
        .map(str::to_owned)
        .collect()
}

fn rules() -> Vec<Rule> {
    let rules = parse_rules(&read(&deploy(RULES)));
    assert!(!rules.is_empty(), "no rules read from {RULES}");
    rules
}

fn dashboard() -> Value {
    let text = read(&deploy(DASHBOARD));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn variables(d: &Value) -> &Vec<Value> {
    d["templating"]["list"].as_array().expect("templating.list")
}

/// Every PromQL expression of the dashboard: the panels' targets and the query
/// variables' queries.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for v in variables(d).iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("a query variable's query");
        exprs.push(query.to_owned());
    }
    exprs
}

/// The synwatch names the rules and the dashboard use, each with where it was used.
fn kit_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for rule in rules() {
        for n in synwatch_names(&rule.expr) {
            names
                .entry(n)
                .or_insert_with(|| format!("rule {}", rule.name));
        }
    }
    for expr in dashboard_exprs(&dashboard()) {
        for n in synwatch_names(&expr) {
            names
                .entry(n)
                .or_insert_with(|| format!("dashboard expr {expr}"));
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let rules = rules();
    let out = promtool_ok(&["check", "rules", deploy(RULES).to_str().expect("utf-8")]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool and this test read a different number of rules ({}):\n{out}",
        rules.len()
    );
    for rule in rules.iter().filter(|r| r.alert) {
        let b = &rule.block;
        assert!(
            b.lines().any(|l| l.trim_start().starts_with("for: ")),
            "{}: no `for:`\n{b}",
            rule.name
        );
        assert!(
            ["critical", "warning", "info"]
                .iter()
                .any(|s| b.lines().any(|l| l.trim() == format!("severity: {s}"))),
            "{}: no severity label (critical, warning or info)\n{b}",
            rule.name
        );
        assert!(
            b.contains("summary: ") && b.contains("description: "),
            "{}: summary and description annotations\n{b}",
            rule.name
        );
        let uses_instance = b.contains("$labels.instance");
        let uses_job = b.contains("$labels.job");
        assert!(
            uses_instance || (rule.expr.starts_with("absent(") && uses_job),
            "{}: the annotations should name the instance\n{b}",
            rule.name
        );
        if rule.expr.contains("interface_drops") || rule.expr.contains("capture_drops") {
            assert!(
                b.contains("$labels.interface"),
                "{}: the annotations should name the interface\n{b}",
                rule.name
            );
        }
    }
    let used: BTreeSet<String> = rules.iter().flat_map(|r| synwatch_names(&r.expr)).collect();
    for family in RULE_FAMILIES {
        assert!(used.contains(family), "no rule uses {family}");
    }
    let exprs: Vec<&str> = rules.iter().map(|r| r.expr.as_str()).collect();
    assert!(
        exprs.contains(&r#"up{job="synwatch"} == 0"#),
        "an alert on up == 0: {exprs:#?}"
    );
    assert!(
        exprs.contains(&r#"absent(up{job="synwatch"})"#),
        "an alert on absent(up): {exprs:#?}"
    );
}

#[test]
fn the_rule_unit_tests_pass() {
    let out = promtool_ok(&["test", "rules", deploy(RULE_TESTS).to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_firing_and_quiet_cases_and_a_dead_alert_fails_the_tests() {
    let rules = rules();
    let tests = read(&deploy(RULE_TESTS));
    let cases = parse_cases(&tests);
    let alerts: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.alert)
        .map(|r| r.name.as_str())
        .collect();
    for case in &cases {
        assert!(
            alerts.contains(case.alertname.as_str()),
            "the unit tests test {}, which is not an alert of {RULES}",
            case.alertname
        );
    }
    for alert in &alerts {
        for fires in [true, false] {
            assert!(
                cases
                    .iter()
                    .any(|c| c.alertname == *alert && c.fires == fires),
                "{alert} has no unit test where it {}",
                if fires { "fires" } else { "does not fire" }
            );
        }
    }

    // Each alert made dead in turn (an expression that is never true): the unit tests
    // must notice, so each firing case really checks something.
    let rules_text = read(&deploy(RULES));
    let lines: Vec<&str> = rules_text.lines().collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("synwatch.rules.test.yml"), &tests).expect("copy the tests");
    let rules_copy = dir.path().join("synwatch.rules.yml");
    for rule in rules.iter().filter(|r| r.alert) {
        let (from, to) = rule.expr_lines;
        let mut mutated: Vec<String> = lines[..from].iter().map(|l| (*l).to_owned()).collect();
        mutated.push(format!(
            "{}expr: vector(0) > 1",
            " ".repeat(indent(lines[from]))
        ));
        mutated.extend(lines[to..].iter().map(|l| (*l).to_owned()));
        std::fs::write(&rules_copy, mutated.join("\n") + "\n").expect("write the mutant");
        promtool_ok(&["check", "rules", rules_copy.to_str().expect("utf-8")]);
        let out = promtool(
            &[
                "test",
                "rules",
                dir.path()
                    .join("synwatch.rules.test.yml")
                    .to_str()
                    .expect("utf-8"),
            ],
            None,
        );
        let all = text(&out);
        assert!(
            !out.status.success(),
            "with {} dead the unit tests still pass:\n{all}",
            rule.name
        );
        assert!(
            all.contains(&format!("alertname: {}", rule.name)),
            "with {} dead the unit tests fail, but not on it:\n{all}",
            rule.name
        );
    }
}

#[test]
fn the_example_configuration_passes_promtool_check_config() {
    let out = promtool_ok(&["check", "config", deploy(CONFIG).to_str().expect("utf-8")]);
    assert!(out.contains("1 rule files found"), "{out}");
    let config = read(&deploy(CONFIG));
    for want in ["job_name: synwatch", "127.0.0.1:9809", "synwatch.rules.yml"] {
        assert!(config.contains(want), "{CONFIG} lacks {want}");
    }
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()));

    let vars = variables(&d);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("DS_PROMETHEUS");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(
        instance["definition"],
        "label_values(synwatch_build_info, instance)"
    );
    assert_eq!(
        instance["query"]["query"],
        "label_values(synwatch_build_info, instance)"
    );
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    assert_eq!(instance["datasource"], datasource);

    let panels = panels(&d);
    assert!(!panels.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    for p in &panels {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("a panel without id: {p}"));
        assert!(ids.insert(id), "panel id {id} is used twice");
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "panel {id} has no title");
        for key in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][key].is_u64(),
                "panel {title}: gridPos.{key} missing"
            );
        }
        assert_eq!(p["datasource"], datasource, "panel {title}: datasource");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !expr.trim().is_empty(),
                "panel {title}: a target without expr"
            );
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "panel {title}: {expr} should follow the instance variable"
            );
            assert_eq!(t["datasource"], datasource, "panel {title}: {expr}");
            let r = t["refId"].as_str().unwrap_or("");
            assert!(!r.is_empty() && refs.insert(r), "panel {title}: refIds");
        }
    }
    let used: BTreeSet<String> = dashboard_exprs(&d)
        .iter()
        .flat_map(|e| synwatch_names(e))
        .collect();
    for family in DASHBOARD_FAMILIES {
        assert!(used.contains(family), "no panel uses {family}");
    }
}

/// promtool parses the dashboard's queries (as recording rules, Grafana's variables
/// given example values).
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs(&dashboard());
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for expr in &exprs {
        if expr.starts_with("label_values(") {
            continue;
        }
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$__interval", "1m")
            .replace("$instance", ".+");
        assert!(!promql.contains('$'), "an unknown variable in {expr}");
        n += 1;
        file.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&promql).expect("JSON string")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &file).expect("write");
    let out = promtool_ok(&["check", "rules", path.to_str().expect("utf-8")]);
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "{out}\n{file}"
    );
}

/// Without root: each name the kit uses is written by metrics.rs (the live test below
/// checks the page the agent really serves).
#[test]
fn the_kit_names_only_metrics_that_metrics_rs_writes() {
    // The fleet's families are written by crowdsec/mod.rs, rendered into the same page.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let source = read(&src.join("metrics.rs")) + &read(&src.join("crowdsec/mod.rs"));
    let names = kit_names();
    assert!(names.len() >= DASHBOARD_FAMILIES.len(), "{names:?}");
    for (name, used) in &names {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} ({used}) is not a metric family metrics.rs writes"
        );
    }
}

/// The value of the sample `series` (name and labels exactly as served).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Families of an exposition page (`# TYPE` lines): name -> (type, label names).
fn families(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_owned(), (kind.trim().to_owned(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = split_series(series);
            let family = families
                .get_mut(name)
                .unwrap_or_else(|| panic!("sample before its # TYPE: {line}"));
            family.1.extend(labels.into_keys());
        }
    }
    families
}

/// Port of the agent's metrics server inside the lab's victim namespace (a fresh
/// namespace: only the lab's HTTP server on 8080 listens there).
const METRICS_PORT: u16 = 19809;

#[test]
#[ignore = "needs root and network namespaces; make test runs it"]
fn the_live_metrics_page_passes_promtool_and_serves_every_metric_the_kit_uses() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{METRICS_PORT}");
    let agent = Agent::start(
        &lab,
        dir.path(),
        "monitoring",
        &["--block", "none", "--metrics-addr", &addr],
    );
    for _ in 0..3 {
        assert!(lab.connects(CLIENT, VICTIM), "the client connects");
    }
    lab.scan(SCANNER, VICTIM, "1-100");
    agent.wait_for(10, |e| e["event"] == "scan" && e["src"] == SCANNER);

    // The page once the counters show the traffic.
    let url = format!("http://{addr}/metrics");
    let packets = format!("synwatch_packets_total{{interface=\"{}\"}}", lab.vif);
    let deadline = Deadline::after(10);
    let page = loop {
        let out = lab.in_victim(&["curl", "-sf", "--max-time", "2", &url]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        let at_least = |series: &str, n: f64| sample(&page, series).is_some_and(|v| v >= n);
        if out.status.success()
            && at_least("synwatch_new_connections_total{direction=\"in\"}", 3.0)
            && at_least("synwatch_port_scans_total", 1.0)
            && at_least(&packets, 1.0)
        {
            break page;
        }
        assert!(
            !deadline.passed(),
            "the metrics do not show the traffic ({}):\n{page}\nlog: {}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // promtool's linter: exit 0 and nothing to say.
    let out = promtool(&["check", "metrics"], Some(&page));
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics (exit {:?}) on the live page says:\n{said}\npage:\n{page}",
        out.status.code()
    );

    // Every name the rules and the dashboard use is a family the agent serves.
    let served = families(&page);
    for (name, used) in kit_names() {
        assert!(
            served.contains_key(&name),
            "{name} ({used}) is not served; the agent serves: {:?}",
            served.keys().collect::<Vec<_>>()
        );
    }
    // The unit tests' input series look like the real ones: a served family, with
    // exactly its labels plus the instance and job Prometheus adds.
    for (name, labels) in parse_input_series(&read(&deploy(RULE_TESTS))) {
        if name == "up" {
            assert_eq!(
                labels,
                BTreeSet::from(["instance".to_owned(), "job".to_owned()])
            );
            continue;
        }
        let (_, served_labels) = served
            .get(&name)
            .unwrap_or_else(|| panic!("the unit tests use {name}, which is not served"));
        let mut want = served_labels.clone();
        want.extend(["instance".to_owned(), "job".to_owned()]);
        assert_eq!(labels, want, "labels of {name} in the unit tests");
    }
    let log = agent.err.clone();
    assert_eq!(agent.stop(), Some(0), "SIGTERM stops it: {}", read(&log));
}

#[test]
fn the_test_readers_read_what_they_should() {
    // The small readers above, on known input, so a broken reader cannot pass a broken kit.
    assert_eq!(
        synwatch_names(
            r#"sum by (instance) (rate(synwatch_a_total{job="synwatch_not_a_name", x=~'synwatch_b'}[5m])) / on() level:synwatch_c:rate5m"#
        ),
        BTreeSet::from([
            "synwatch_a_total".to_owned(),
            "level:synwatch_c:rate5m".to_owned()
        ])
    );
    let (name, labels) = split_series(r#"m{a="x\"y", b="z"}"#);
    assert_eq!(name, "m");
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        vec![
            ("a".to_owned(), r#"x\"y"#.to_owned()),
            ("b".to_owned(), "z".to_owned())
        ]
    );
    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          up\n            == 0\n        for: 1m\n      - record: r:x\n        expr: sum(x)\n",
    );
    assert_eq!(rules.len(), 2);
    assert!(rules[0].alert && rules[0].name == "A" && rules[0].expr == "up == 0");
    assert_eq!(rules[0].expr_lines, (4, 7));
    assert!(!rules[1].alert && rules[1].expr == "sum(x)");
    let cases = parse_cases(
        "tests:\n  - interval: 1m\n    alert_rule_test:\n      - eval_time: 1m\n        alertname: A\n        exp_alerts: []\n      - eval_time: 2m\n        alertname: A\n        exp_alerts:\n          - exp_labels: {}\n",
    );
    assert_eq!(cases.len(), 2);
    assert!(!cases[0].fires && cases[1].fires && cases[1].alertname == "A");
    let page = "# TYPE m counter\nm{a=\"1\"} 2\nm{b=\"2\"} 3\n# TYPE g gauge\ng 1\n";
    let f = families(page);
    assert_eq!(
        f["m"],
        (
            "counter".to_owned(),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        )
    );
    assert_eq!(sample(page, "m{b=\"2\"}"), Some(3.0));
    assert_eq!(sample(page, "g"), Some(1.0));
}
