//! The running synwatch agent as a library, without a command line and without stdout
//! (diagnostics go to stderr; events go to whatever writer the caller hands over).
//!
//! Layout: `agent` (the running agent: its settings, set-up, loop and stop; what the
//! binary hands it: where events go, the stop token, the reload request), `events` (the
//! events it reports and the `EventSink` seam the binary's printers implement), `block` (the blocker: ban book, kernel backends, the control handler),
//! `state` (the SQLite ban store), `limit` (the log limiter), `metrics` (Prometheus
//! counters and the HTTP server), `control` (the control socket's server and protocol),
//! `conns` (bounded, deadlined connection handling shared by both servers),
//! `event_queue` (the bounded queue in front of the event writer), `host` (this host's
//! interfaces and addresses), `pipeline` (the per-observation step that live runs and
//! replays share), `protect` (which addresses are never banned), `links` (interfaces
//! coming and going), `sockets` (the socket-table source), `owner` (which process owns
//! a socket), `privileges` (capabilities), `prom` (the Prometheus text format), `upkeep` (the rule check), `clock` (wall and
//! monotonic time at the edge), `crowdsec` (the CrowdSec Local API client: pushing
//! bans, pulling decisions), `timefmt` (RFC 3339 timestamps), `diag` (the subscriber that
//! writes diagnostics to stderr, as text or JSON), `xdp` (the XDP program: starting it,
//! its ring-buffer thread, what it is told).
//!
//! Moved here from the binary, so that it holds only its command line, the layering of
//! its options, its printers and one file per command: `replay` (the detection pipeline
//! over capture files, with no blocker), `packets` (capture files as one stream of time,
//! and the packet-to-segment step replay and inventory share), `inventory` (flows for
//! writing firewall policy, from capture files or live), `offline` (the ban list answered
//! with no agent running), `config` (validating the options, and their TOML form),
//! `event_text` (the events' JSON and table text, which the printers write).

pub mod agent;
pub mod block;
pub mod clock;
pub mod config;
pub mod conns;
pub mod control;
pub mod crowdsec;
pub mod diag;
pub mod event_queue;
pub mod event_text;
pub mod events;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod host;
pub mod inventory;
pub mod limit;
pub mod links;
pub mod metrics;
pub mod offline;
pub mod owner;
pub mod packets;
pub mod pipeline;
pub mod privileges;
pub mod prom;
pub mod protect;
pub mod replay;
pub mod sockets;
pub mod state;
pub mod timefmt;
pub mod upkeep;
pub mod xdp;
