//! The CrowdSec Local API (v1) as synwatch uses it: the machine credentials file, the
//! watcher login, alerts, and the bouncer's decision stream; with the parsing and the
//! mapping of decisions to bans, which need no network (unit-tested below).
//!
//! Field names follow CrowdSec's swagger (pkg/models): an alert needs `scenario`,
//! `scenario_hash`, `scenario_version`, `message`, `events_count`, `start_at`,
//! `stop_at`, `capacity`, `leakspeed`, `simulated`, `events` and `source`, or a 1.4 LAPI
//! refuses it.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The largest answer read from the LAPI (a decision is about 150 bytes: this is room
/// for some 800,000 of them). A longer one is refused with an error, never held.
pub const MAX_BODY: u64 = 128 << 20;
/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Machine credentials: CrowdSec's own `local_api_credentials.yaml`, as written by
/// `cscli machines add NAME --auto -f FILE`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub url: String,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// The most bytes a credentials or bouncer key file may hold (they hold a few hundred).
const SMALL_FILE: u64 = 64 << 10;

impl Credentials {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = crate::config::read_small_file(path, SMALL_FILE)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|why| format!("{}: {why}", path.display()))
    }

    /// The file is flat YAML (`key: value` lines); only the top-level `url`, `login` and
    /// `password` are read, as CrowdSec reads them: from the first document only (a
    /// `---` or `...` line after them ends it), each key once (CrowdSec refuses a file
    /// that repeats one, so the two never read different servers from one file).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut url, mut login, mut password) = (None, None, None);
        let mut any = false;
        let mut top: Option<usize> = None;
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("---") || line == "..." {
                if any {
                    break;
                }
                continue;
            }
            any = true;
            // A line indented past the first key's belongs to a nested mapping, not the
            // file's own keys.
            let indent = raw.len() - raw.trim_start().len();
            if indent > *top.get_or_insert(indent) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = unquote(value.trim());
            let (key, slot) = match key.trim() {
                "url" => ("url", &mut url),
                "login" => ("login", &mut login),
                "password" => ("password", &mut password),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(format!(
                    "`{key}:` is given twice in the CrowdSec credentials file"
                ));
            }
        }
        let need = |v: Option<String>, key: &str| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| format!("no `{key}:` in the CrowdSec credentials file"))
        };
        Ok(Self {
            url: need(url, "url")?,
            login: need(login, "login")?,
            password: need(password, "password")?,
        })
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    v.to_owned()
}

/// Reads a bouncer key (`cscli bouncers add NAME -o raw`): the file's first line.
pub fn read_key(path: &Path) -> Result<String, String> {
    let text = crate::config::read_small_file(path, SMALL_FILE)
        .map_err(|e| format!("cannot read the bouncer key file {}: {e}", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_owned();
    if key.is_empty() || key.chars().any(|c| c.is_control()) {
        return Err(format!(
            "the bouncer key file {} holds no key (write the output of `cscli bouncers add NAME -o raw` into it)",
            path.display()
        ));
    }
    Ok(key)
}

/// `url` checked and without a trailing slash.
pub fn base_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(rest) if authority_is_valid(rest) => Ok(trimmed.to_owned()),
        _ => Err(format!(
            "invalid CrowdSec LAPI URL '{url}': expected http://HOST:PORT or https://HOST:PORT"
        )),
    }
}

/// Whether what follows the scheme is a host (a name, an IPv4 address or a bracketed
/// IPv6 one), an optional port from 1 to 65535, and an optional path: no query, fragment,
/// credentials or spaces, which the API's paths are appended to.
fn authority_is_valid(rest: &str) -> bool {
    if rest.contains(['?', '#', '@']) || rest.contains(char::is_whitespace) {
        return false;
    }
    let Some(a) = super::host::Authority::of(rest.split('/').next().unwrap_or_default()) else {
        return false;
    };
    // A zone index (`fe80::1%25eth0`) follows a link-local address.
    let host_is_valid = if a.bracketed {
        let bare = a.host.split('%').next().unwrap_or_default();
        bare.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !a.host.contains(':')
    };
    host_is_valid && a.port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// What went wrong talking to the LAPI, said so that the operator knows what to do.
#[derive(Debug)]
pub enum LapiError {
    /// Not reached (refused, timed out, DNS): the LAPI is away.
    Unreachable(String),
    /// It answered with an HTTP error status.
    Status { code: u16, body: String },
    /// It answered with something that is not what the API says.
    Invalid(String),
}

impl LapiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for LapiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "the LAPI is unreachable: {why}"),
            Self::Status { code, body } => {
                write!(f, "the LAPI answered HTTP {code}")?;
                let body = body.trim();
                if !body.is_empty() {
                    let cut: String = body.chars().take(200).collect();
                    write!(f, ": {cut}")?;
                }
                Ok(())
            }
            Self::Invalid(why) => write!(f, "the LAPI's answer is not valid: {why}"),
        }
    }
}

/// A blocking HTTP client for one LAPI (HTTPS with the system's roots through rustls).
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(base: String) -> Self {
        // Redirects are not followed: each request carries the bouncer key or the
        // machine's token, which a redirect would hand to whatever host it names.
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(TIMEOUT)
            .timeout_connect(Duration::from_secs(5))
            .user_agent(concat!("synwatch/", env!("CARGO_PKG_VERSION")))
            .build();
        Self { agent, base }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<Vec<u8>, LapiError> {
        match result {
            Ok(resp) if !(200..300).contains(&resp.status()) => {
                let code = resp.status();
                let to = printable(resp.header("location").unwrap_or("nowhere"), 200);
                Err(LapiError::Status {
                    code,
                    body: format!("a redirect to {to} (not followed: it would carry the key)"),
                })
            }
            Ok(resp) => read_limited(resp.into_reader()),
            Err(ureq::Error::Status(code, resp)) => {
                let body = read_limited(resp.into_reader()).unwrap_or_default();
                Err(LapiError::Status {
                    code,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(LapiError::Unreachable(t.to_string())),
        }
    }

    /// `POST /v1/watchers/login`: a JWT for the machine.
    pub fn login(&self, creds: &Credentials, scenarios: &[&str]) -> Result<String, LapiError> {
        let body = serde_json::json!({
            "machine_id": creds.login,
            "password": creds.password,
            "scenarios": scenarios,
        });
        let url = format!("{}/v1/watchers/login", self.base);
        let bytes = Self::answer(
            self.agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )?;
        #[derive(Deserialize)]
        struct Login {
            token: Option<String>,
        }
        let login: Login = serde_json::from_slice(&bytes)
            .map_err(|e| LapiError::Invalid(format!("login answer: {e}")))?;
        login
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LapiError::Invalid("login answer without a token".into()))
    }

    /// `POST /v1/alerts` with a JSON array of alerts.
    pub fn post_alerts(&self, token: &str, alerts: &[serde_json::Value]) -> Result<(), LapiError> {
        let url = format!("{}/v1/alerts", self.base);
        let body = serde_json::Value::Array(alerts.to_vec()).to_string();
        Self::answer(
            self.agent
                .post(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .set("Content-Type", "application/json")
                .send_string(&body),
        )
        .map(drop)
    }

    /// `DELETE /v1/decisions` of `scenario` on exactly `net`: the fleet's decisions of one
    /// of synwatch's scenarios on a network lifted here by hand. Returns how many the
    /// LAPI deleted. The filter is `value=`, the decision's value as synwatch's alerts
    /// give it (an address as itself, a range as ADDR/LEN), which the LAPI matches
    /// exactly; with `ip=` or `range=` it would delete every decision whose range
    /// contains `net` too (another host's /64 around a /128), or with `contains=false`
    /// every one inside it.
    pub fn delete_decisions(
        &self,
        token: &str,
        net: ipnet::IpNet,
        scenario: &str,
    ) -> Result<u64, LapiError> {
        let url = format!("{}/v1/decisions", self.base);
        let bytes = Self::answer(
            self.agent
                .delete(&url)
                .query("value", &synwatch_enforce::net_text(net))
                .query("scenario", scenario)
                .set("Authorization", &format!("Bearer {token}"))
                .call(),
        )?;
        #[derive(Deserialize)]
        struct Deleted {
            #[serde(rename = "nbDeleted", default)]
            deleted: serde_json::Value,
        }
        let n = serde_json::from_slice::<Deleted>(&bytes)
            .ok()
            .and_then(|d| match d.deleted {
                serde_json::Value::String(s) => s.parse().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            })
            .unwrap_or(0);
        Ok(n)
    }

    /// `GET /v1/decisions/stream`: every running decision with `startup`, else what
    /// changed since this bouncer's last pull.
    pub fn stream(&self, key: &str, startup: bool) -> Result<Stream, LapiError> {
        let url = format!("{}/v1/decisions/stream", self.base);
        let bytes = Self::answer(
            self.agent
                .get(&url)
                .query("startup", if startup { "true" } else { "false" })
                .set("X-Api-Key", key)
                .call(),
        )?;
        parse_stream(&bytes)
    }
}

fn read_limited(reader: impl std::io::Read) -> Result<Vec<u8>, LapiError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_BODY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LapiError::Unreachable(format!("reading the answer: {e}")))?;
    if bytes.len() as u64 > MAX_BODY {
        return Err(LapiError::Invalid(format!(
            "the answer is longer than {} MiB; not read",
            MAX_BODY >> 20
        )));
    }
    Ok(bytes)
}

/// A decision as the stream gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Decision {
    pub id: i64,
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
    pub simulated: Option<bool>,
}

/// One answer of the decision stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    pub new: Vec<Decision>,
    pub deleted: Vec<Decision>,
    /// Entries of either list that are not decisions as the API gives them (a field of
    /// the wrong type or missing), each said in a line: left out one by one, so that
    /// one of them does not keep the others from being applied.
    pub malformed: Vec<String>,
}

/// The stream as it comes, each decision still unread. Both lists are required (each
/// `null` or an array), as a CrowdSec LAPI always sends them: a body without them (a
/// proxy's `{"message":"maintenance"}`, `{}`) is not an empty stream, and read as one it
/// would lift every pulled ban after a full pull.
#[derive(Deserialize)]
struct RawStream<'a> {
    #[serde(borrow, deserialize_with = "decision_list")]
    new: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow, deserialize_with = "decision_list")]
    deleted: Vec<&'a serde_json::value::RawValue>,
}

/// One list of the stream: `null` (none) or an array of decisions still unread. (A
/// field read with this is required: its absence is an error.)
fn decision_list<'de, D>(d: D) -> Result<Vec<&'de serde_json::value::RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<Vec<&'de serde_json::value::RawValue>>::deserialize(d).map(Option::unwrap_or_default)
}

/// A LAPI's text for a log line: without control characters, at most `max` of the rest.
pub fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

pub fn parse_stream(bytes: &[u8]) -> Result<Stream, LapiError> {
    let invalid = |why: &dyn std::fmt::Display| {
        let start = printable(&String::from_utf8_lossy(&bytes[..bytes.len().min(60)]), 60);
        LapiError::Invalid(format!(
            "the decision stream is not the JSON of the API ({why}); it starts with {start:?}"
        ))
    };
    // (serde would also take a struct written as an array, `[null,null]`.)
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(invalid(&"not a JSON object"));
    }
    let raw: RawStream<'_> = serde_json::from_slice(bytes).map_err(|e| invalid(&e))?;
    let mut stream = Stream::default();
    let read = |list: Vec<&serde_json::value::RawValue>, malformed: &mut Vec<String>| {
        let mut out = Vec::new();
        for d in list {
            match serde_json::from_str::<Decision>(d.get()) {
                Ok(d) => out.push(d),
                Err(e) => malformed.push(format!("{e} in {}", printable(d.get(), 120))),
            }
        }
        out
    };
    stream.new = read(raw.new, &mut stream.malformed);
    stream.deleted = read(raw.deleted, &mut stream.malformed);
    Ok(stream)
}

/// Why a pulled decision is not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a `ban` (captcha, throttle...).
    Type,
    /// Not of scope `Ip` or `Range` (Country, AS, Username...).
    Scope,
    /// Its value is not an address or range.
    Invalid,
    /// A decision of a scenario in simulation.
    Simulated,
    /// Its time is over.
    Expired,
    /// Pushed by this agent: it holds the ban already.
    Own,
    /// On an address synwatch never blocks (or a range covering one).
    Protected,
    /// A running ban holds it already (the same network or a wider one).
    Held,
}

impl Skip {
    pub const ALL: [Skip; 8] = [
        Self::Type,
        Self::Scope,
        Self::Invalid,
        Self::Simulated,
        Self::Expired,
        Self::Own,
        Self::Protected,
        Self::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Scope => "scope",
            Self::Invalid => "invalid",
            Self::Simulated => "simulated",
            Self::Expired => "expired",
            Self::Own => "own",
            Self::Protected => "protected",
            Self::Held => "held",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// A pulled decision that can be enforced: the network, for how long, and where it
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub net: IpNet,
    /// Seconds it still runs (at least 1).
    pub secs: u64,
    /// [`origin_label`]: `crowdsec/<scenario>`, `cscli`, `capi`...
    pub origin: String,
    /// A scenario of synwatch's (`synwatch/...`): pushed by a synwatch, maybe this one.
    pub synwatch: bool,
}

/// The network a decision names, for a new decision as for a deleted one.
pub fn decision_net(d: &Decision) -> Result<IpNet, Skip> {
    let value = d.value.trim();
    if d.scope.eq_ignore_ascii_case("ip") {
        if let Ok(a) = value.parse::<IpAddr>() {
            return Ok(IpNet::from(a));
        }
        // Some writers give an address as ADDR/32.
        return match value.parse::<IpNet>() {
            Ok(n) if synwatch_enforce::is_host(n) => Ok(n),
            _ => Err(Skip::Invalid),
        };
    }
    if d.scope.eq_ignore_ascii_case("range") {
        return match value.parse::<IpNet>() {
            Ok(n) => Ok(n.trunc()),
            Err(_) => match value.parse::<IpAddr>() {
                Ok(a) => Ok(IpNet::from(a)),
                Err(_) => Err(Skip::Invalid),
            },
        };
    }
    Err(Skip::Scope)
}

/// A new decision as a ban to enforce, or why not.
pub fn to_ban(d: &Decision) -> Result<Ban, Skip> {
    if !d.kind.eq_ignore_ascii_case("ban") {
        return Err(Skip::Type);
    }
    let net = decision_net(d)?;
    if d.simulated == Some(true) {
        return Err(Skip::Simulated);
    }
    let secs = match parse_go_duration(&d.duration) {
        Some(s) if s > 0.0 => s.ceil() as u64,
        Some(_) => return Err(Skip::Expired),
        None => return Err(Skip::Invalid),
    };
    Ok(Ban {
        id: d.id,
        net,
        secs: secs.max(1),
        origin: origin_label(&d.origin, &d.scenario),
        synwatch: d.scenario.starts_with("synwatch/"),
    })
}

/// Where a decision comes from, as `blocks list` shows it: `crowdsec/<scenario>` for a
/// CrowdSec scenario (a synwatch's included: `crowdsec/synwatch/port-scan`), `cscli` for
/// `cscli decisions add`, `capi` for the community blocklist, `lists/<name>` for a
/// subscribed list, else the origin as given.
pub fn origin_label(origin: &str, scenario: &str) -> String {
    // It goes into events and listings as is: only the characters of scenario names.
    let clean = |s: &str| -> String {
        s.chars()
            .take(100)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_./:@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    match origin.to_ascii_lowercase().as_str() {
        "crowdsec" if !scenario.is_empty() => format!("crowdsec/{}", clean(scenario)),
        "crowdsec" => "crowdsec".into(),
        "cscli" => "cscli".into(),
        "capi" => "capi".into(),
        "lists" => format!("lists/{}", clean(scenario)),
        "" => "lapi".into(),
        other => clean(other),
    }
}

/// A Go duration (`1h2m3.5s`, `-3s`, `59m59.93647s`, `150ms`) in seconds.
pub fn parse_go_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    if !total.is_finite() {
        return None;
    }
    Some(if negative { -total } else { total })
}

/// Whether `origin` (as [`origin_label`] gives it) is that of a decision of a synwatch.
pub fn is_synwatch_origin(origin: &str) -> bool {
    origin.starts_with("crowdsec/synwatch/")
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    fn decision(kind: &str, scope: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id: 7,
            origin: "crowdsec".into(),
            kind: kind.into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "crowdsecurity/ssh-bf".into(),
            simulated: None,
        }
    }

    #[test]
    fn a_redirect_is_an_error_and_the_key_never_goes_where_it_points() {
        use std::io::{Read, Write};
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let there = elsewhere.local_addr().unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let lapi = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", lapi.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = lapi.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: http://{there}/v1/decisions/stream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        });
        let e = Client::new(base).stream("secret-key", true).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&e, LapiError::Status { code: 302, body } if body.contains("not followed")),
            "{e:?}"
        );
        assert!(
            elsewhere.accept().is_err(),
            "the redirect's target was contacted"
        );
    }

    #[test]
    fn credentials_are_read_from_cscli_s_file() {
        let c = Credentials::parse(
            "url: http://127.0.0.1:8080/\nlogin: m1\npassword: \"p:w d\"\n# comment\n",
        )
        .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8080/");
        assert_eq!(c.login, "m1");
        assert_eq!(c.password, "p:w d");
        let e = Credentials::parse("url: http://x\nlogin: m1\n").unwrap_err();
        assert!(e.contains("password"), "{e}");
        // As CrowdSec reads the file: a repeated key is refused, a second document and
        // nested keys are not the file's.
        let e = Credentials::parse("url: http://a\nlogin: m\npassword: p\nurl: http://b\n")
            .unwrap_err();
        assert!(e.contains("`url:` is given twice"), "{e}");
        let two = "---\nurl: http://a\nlogin: m\npassword: p\n---\nurl: http://b\n";
        assert_eq!(Credentials::parse(two).unwrap().url, "http://a");
        let nested = "extra:\n  url: http://b\nurl: http://a\nlogin: m\npassword: p\n";
        assert_eq!(Credentials::parse(nested).unwrap().url, "http://a");
        // Every key indented alike: still the file's own.
        let indented = "  url: http://a\n  login: m\n  password: p\n";
        assert_eq!(Credentials::parse(indented).unwrap().login, "m");
        assert!(!format!("{c:?}").contains("p:w d"));
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            base_url("http://10.0.0.1:8080/").unwrap(),
            "http://10.0.0.1:8080"
        );
        assert_eq!(base_url("https://lapi").unwrap(), "https://lapi");
        assert!(base_url("10.0.0.1:8080").is_err());
        assert!(base_url("http://").is_err());
        assert_eq!(
            base_url("http://[fd00::1]:8080").unwrap(),
            "http://[fd00::1]:8080"
        );
        assert_eq!(
            base_url("http://[fe80::9%25eth0]:8080").unwrap(),
            "http://[fe80::9%25eth0]:8080"
        );
        assert_eq!(
            base_url("https://lapi.example/crowdsec/").unwrap(),
            "https://lapi.example/crowdsec"
        );
        for bad in [
            "http://10.88.1.1:99999",
            "http://10.88.1.1:0",
            "http://10.88.1.1:80x",
            "http://[::1",
            "http://[::1]x",
            "http://[nothost]:8080",
            "http://10.88.1.1:8080#x",
            "http://10.88.1.1:8080?a=b",
            "http://user:pw@10.88.1.1:8080",
            "http://10.88.1 .1:8080",
            "http://:8080",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("3h"), Some(10_800.0));
        assert_eq!(parse_go_duration("1h2m3s"), Some(3723.0));
        let d = parse_go_duration("59m59.936473928s").unwrap();
        assert!((d - 3_599.936_473_928).abs() < 1e-6);
        assert_eq!(parse_go_duration("150ms"), Some(0.15));
        assert_eq!(parse_go_duration("-3s"), Some(-3.0));
        assert_eq!(parse_go_duration("0"), Some(0.0));
        for bad in ["", "3", "3x", "h", "1.2.3s", "--1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn decisions_map_to_bans_of_ip_and_range_in_both_families() {
        let b = to_ban(&decision("ban", "Ip", "192.0.2.7", "59m59.5s")).unwrap();
        assert_eq!(b.net, "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(b.secs, 3600);
        assert_eq!(b.origin, "crowdsec/crowdsecurity/ssh-bf");
        assert!(!b.synwatch);
        let b = to_ban(&decision("ban", "Range", "2001:db8:1:2::5/64", "1h")).unwrap();
        assert_eq!(b.net, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        let b = to_ban(&decision("ban", "range", "198.51.100.0/24", "1h")).unwrap();
        assert_eq!(b.net, "198.51.100.0/24".parse::<IpNet>().unwrap());
        let b = to_ban(&decision("ban", "Ip", "2001:db8::1", "1s")).unwrap();
        assert_eq!(b.net, "2001:db8::1/128".parse::<IpNet>().unwrap());
    }

    #[test]
    fn decisions_not_enforced_say_why() {
        let skip = |d: Decision| to_ban(&d).unwrap_err();
        assert_eq!(
            skip(decision("captcha", "Ip", "192.0.2.7", "1h")),
            Skip::Type
        );
        assert_eq!(skip(decision("ban", "Country", "FR", "1h")), Skip::Scope);
        assert_eq!(
            skip(decision("ban", "Ip", "not-an-ip", "1h")),
            Skip::Invalid
        );
        assert_eq!(
            skip(decision("ban", "Ip", "192.0.2.0/24", "1h")),
            Skip::Invalid
        );
        assert_eq!(
            skip(decision("ban", "Ip", "192.0.2.7", "-2s")),
            Skip::Expired
        );
        assert_eq!(
            skip(decision("ban", "Ip", "192.0.2.7", "soon")),
            Skip::Invalid
        );
        let mut d = decision("ban", "Ip", "192.0.2.7", "1h");
        d.simulated = Some(true);
        assert_eq!(skip(d), Skip::Simulated);
    }

    #[test]
    fn origins_are_labelled() {
        assert_eq!(
            origin_label("crowdsec", "synwatch/port-scan"),
            "crowdsec/synwatch/port-scan"
        );
        assert!(is_synwatch_origin(&origin_label(
            "crowdsec",
            "synwatch/address-sweep"
        )));
        assert_eq!(origin_label("cscli", "manual 'ban' from 'm1'"), "cscli");
        assert_eq!(origin_label("CAPI", "crowdsecurity/ssh-bf"), "capi");
        assert_eq!(origin_label("lists", "firehol"), "lists/firehol");
        assert_eq!(origin_label("", ""), "lapi");
        assert_eq!(origin_label("crowdsec", "a\"b\\c d\n"), "crowdsec/a_b_c_d_");
        assert_eq!(origin_label("we\"ird", ""), "we_ird");
    }

    #[test]
    fn streams_parse_with_null_lists_and_unknown_fields_and_refuse_garbage() {
        let s = parse_stream(br#"{"deleted":null,"new":[{"duration":"1h","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1","uuid":"u"}]}"#).unwrap();
        assert_eq!(s.new.len(), 1);
        assert!(s.deleted.is_empty());
        assert_eq!(s.new[0].origin, "cscli");
        let s = parse_stream(br#"{"new":null,"deleted":null}"#).unwrap();
        assert_eq!(s, Stream::default());
        let e = parse_stream(b"<html>502 Bad Gateway</html>").unwrap_err();
        assert!(e.to_string().contains("not the JSON"), "{e}");
        assert!(parse_stream(br#"[1,2]"#).is_err());
        assert!(parse_stream(br#"{"new":7}"#).is_err());
    }

    /// A 200 answer that is not the stream (a proxy's or a broken LAPI's) is an error of
    /// the pull, not an empty stream: read as one, a full pull would lift every pulled
    /// ban. CrowdSec always sends both lists, either of them maybe null.
    #[test]
    fn a_body_without_both_lists_is_not_an_empty_stream() {
        for body in [
            r#"{"message":"maintenance"}"#,
            "{}",
            "[]",
            "[null,null]",
            "null",
            r#"{"new":[]}"#,
            r#"{"deleted":null}"#,
            r#"{"new":null,"deleted":{}}"#,
        ] {
            let e = parse_stream(body.as_bytes()).unwrap_err();
            assert!(matches!(e, LapiError::Invalid(_)), "{body}: {e}");
        }
        let e = parse_stream(br#"{"message":"maintenance"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `new`"), "{e}");
        let s = parse_stream(br#"{"deleted":[],"new":null}"#).unwrap();
        assert_eq!(s, Stream::default());
    }

    #[test]
    fn a_malformed_decision_is_left_out_alone_and_said() {
        let good = r#"{"duration":"1h","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"}"#;
        let bad = [
            r#"{"id":"x"}"#,
            r#"{"duration":"1h","id":2,"origin":null,"scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.2"}"#,
            r#"{"duration":3600,"id":3,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.3"}"#,
            r#"{"duration":"1h","id":99999999999999999999,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.4"}"#,
            "null",
            "\"text\"",
        ];
        let body = format!(
            r#"{{"new":[{good},{}],"deleted":[{good},{}]}}"#,
            bad.join(","),
            bad[0]
        );
        let s = parse_stream(body.as_bytes()).unwrap();
        assert_eq!((s.new.len(), s.deleted.len()), (1, 1));
        assert_eq!(s.new[0].value, "192.0.2.1");
        assert_eq!(s.malformed.len(), bad.len() + 1, "{:#?}", s.malformed);
        assert!(s.malformed[1].contains("192.0.2.2"), "{}", s.malformed[1]);
    }

    #[test]
    fn an_empty_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_key(&p).unwrap_err().contains("holds no key"));
        std::fs::write(&p, "abc123\n").unwrap();
        assert_eq!(read_key(&p).unwrap(), "abc123");
    }
}
