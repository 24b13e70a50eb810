//! The per-observation step that the live agent and replay share: the detector observes,
//! a new attempt is logged, the scans it completes are reported. What logging and
//! reporting mean (a log limiter and a blocker live, lines formatted ahead in a replay)
//! is the caller's [`StepSink`].

use std::io;

use synwatch_detect::{Detector, Direction, Observation, Scan, Seen};

/// How many observations ahead of the one stepped the detector's table slots are
/// prefetched (replay and the live agent alike): far enough for the loads to arrive, near
/// enough that they are still in the cache when used.
pub const PREFETCH_AHEAD: usize = 8;

/// Where one observation's results go. The step owns this seam; `run` and `replay`
/// implement it.
pub trait StepSink {
    /// Before the detector sees `obs`.
    fn before(&mut self, _obs: &Observation) -> io::Result<()> {
        Ok(())
    }

    /// Right after the detector saw `obs`, before anything is logged.
    fn observed(&mut self, _obs: &Observation) {}

    /// `obs` is a new connection attempt (going `direction`) to log.
    fn connection(&mut self, obs: &Observation, direction: Direction) -> io::Result<()>;

    /// The detector recognised `scan` (a port scan or an address sweep).
    fn scan(&mut self, detector: &Detector, scan: &Scan) -> io::Result<()>;
}

/// One observation through the detector and out to `sink`. Every call to the sink is
/// made even after one of them failed, and the first error is returned: a sink that
/// must stop writing at its first error skips what comes after it.
pub fn step(
    detector: &mut Detector,
    obs: &Observation,
    sink: &mut impl StepSink,
) -> io::Result<()> {
    let mut result = sink.before(obs);
    let out = detector.observe(obs);
    sink.observed(obs);
    // Sweeps found while time advanced to `obs` were made by attempts judged before it
    // (stamped at their answer time's end): they come first, so that events stay in
    // time order.
    for scan in &out.sweeps {
        result = result.and(sink.scan(detector, scan));
    }
    if out.log {
        let direction = match out.seen {
            Seen::Attempt(d) => d,
            _ => Direction::In,
        };
        result = result.and(sink.connection(obs, direction));
    }
    if let Some(scan) = &out.scan {
        result = result.and(sink.scan(detector, scan));
    }
    result
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use synwatch_decode::TcpFlags;

    /// Records the calls in order; fails the writes listed in `fail`.
    #[derive(Default)]
    struct Record {
        calls: Vec<String>,
        fail: Vec<&'static str>,
    }

    impl Record {
        fn call(&mut self, what: String, kind: &'static str) -> io::Result<()> {
            self.calls.push(what);
            match self.fail.contains(&kind) {
                true => Err(io::Error::other(kind)),
                false => Ok(()),
            }
        }
    }

    impl StepSink for Record {
        fn before(&mut self, obs: &Observation) -> io::Result<()> {
            self.call(format!("before {}", obs.dport), "before")
        }
        fn observed(&mut self, obs: &Observation) {
            self.calls.push(format!("observed {}", obs.dport));
        }
        fn connection(&mut self, obs: &Observation, direction: Direction) -> io::Result<()> {
            self.call(
                format!("connection {} {direction:?}", obs.dport),
                "connection",
            )
        }
        fn scan(&mut self, detector: &Detector, scan: &Scan) -> io::Result<()> {
            let seen = detector.stats().scans;
            self.call(format!("scan {} ({seen} seen)", scan.ports.len()), "scan")
        }
    }

    fn syn(dport: u16) -> Observation {
        Observation {
            foreign: false,
            ts: 1_700_000_000_000_000_000 + i64::from(dport) * 1_000_000,
            src: "198.51.100.7".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            sport: 40000 + dport,
            dport,
            flags: TcpFlags(TcpFlags::SYN),
        }
    }

    fn detector() -> Detector {
        Detector::new(synwatch_detect::Config {
            locals: [synwatch_detect::parse_cidr("192.0.2.1").unwrap()]
                .into_iter()
                .collect(),
            ..synwatch_detect::Config::default()
        })
    }

    #[test]
    fn each_attempt_is_logged_after_the_detector_saw_it_and_the_fourth_port_is_a_scan() {
        let mut det = detector();
        let mut sink = Record::default();
        for port in [22, 23, 25, 80] {
            step(&mut det, &syn(port), &mut sink).unwrap();
        }
        // A retransmission is observed but not logged again.
        step(&mut det, &syn(80), &mut sink).unwrap();
        let want = [22, 23, 25, 80].iter().flat_map(|p| {
            [
                format!("before {p}"),
                format!("observed {p}"),
                format!("connection {p} In"),
            ]
        });
        let mut want: Vec<String> = want.collect();
        want.push("scan 4 (1 seen)".into());
        want.extend(["before 80".into(), "observed 80".into()]);
        assert_eq!(sink.calls, want);
    }

    #[test]
    fn a_sweep_judged_as_time_advances_comes_before_the_attempt_that_advanced_it() {
        // 17 hosts on port 22, unanswered: judged once the answer time (3 s) is over,
        // which a later attempt's time tells. The sweep (stamped 3 s after its last
        // attempt) used to be printed after that later attempt's connection line.
        let mut det = detector();
        let mut sink = Record::default();
        for host in 1..=17u8 {
            let mut obs = syn(22);
            obs.dst = std::net::IpAddr::from([10, 0, 0, host]);
            obs.ts += i64::from(host) * 1_000_000;
            step(&mut det, &obs, &mut sink).unwrap();
        }
        sink.calls.clear();
        let mut later = syn(80);
        later.src = "203.0.113.9".parse().unwrap();
        later.ts += 10_000_000_000;
        step(&mut det, &later, &mut sink).unwrap();
        assert_eq!(
            sink.calls,
            [
                "before 80",
                "observed 80",
                "scan 1 (0 seen)",
                "connection 80 In"
            ]
        );
    }

    #[test]
    fn after_a_failed_write_the_step_goes_on_and_returns_the_first_error() {
        let mut det = detector();
        let mut sink = Record::default();
        for port in [22, 23, 25] {
            step(&mut det, &syn(port), &mut sink).unwrap();
        }
        sink.fail = vec!["connection", "scan"];
        let e = step(&mut det, &syn(80), &mut sink).unwrap_err();
        assert_eq!(e.to_string(), "connection");
        assert_eq!(
            sink.calls[sink.calls.len() - 2..],
            ["connection 80 In".to_owned(), "scan 4 (1 seen)".to_owned()]
        );
    }
}
