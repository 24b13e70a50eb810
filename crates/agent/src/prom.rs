//! The Prometheus text exposition format (version 0.0.4), as the metrics page and the
//! CrowdSec client's families write it.

use std::fmt::Write as _;

/// Writes one metric family: help, type and samples (label text, value).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}
