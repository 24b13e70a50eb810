//! Ban time. Expiry, the cap on new bans a minute and the offender memory count on
//! CLOCK_BOOTTIME, the clock the XDP program stamps with (monotonic, and counting through
//! suspend), so that a step of the wall clock (an NTP correction at boot, `date -s`, a
//! VM restored from a snapshot) neither expires every ban at once nor freezes the cap.
//!
//! Inside the agent a time is *agent time*: Unix seconds as the wall clock read when the
//! process started, advanced by the boot clock since. Until the wall clock is stepped the
//! two agree; after a step they differ by the step ([`wall_offset`]). What leaves the
//! process in wall time (the state file, whose `until` must mean the same moment after a
//! reboot, and the timestamps printed) is converted at that edge with the offset read then
//! ([`Offset`]), and what is read back from the state file is converted into agent time.
//!
//! This module is an edge that reads clocks; [`Origin`] and [`Offset`] are pure, so the
//! conversions are tested with clocks given by hand.

use std::sync::OnceLock;

use nix::time::{ClockId, clock_gettime};

const NANOS: i128 = 1_000_000_000;

/// Where agent time starts: Unix nanoseconds minus boot-clock nanoseconds, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    unix_minus_boot: i128,
}

impl Origin {
    /// The origin of a process that read `unix_ns` on the wall clock and `boot_ns` on the
    /// boot clock at the same moment.
    pub fn new(unix_ns: i128, boot_ns: i128) -> Self {
        Self {
            unix_minus_boot: unix_ns - boot_ns,
        }
    }

    /// Agent time (whole seconds) at boot-clock nanoseconds `boot_ns`.
    pub fn agent_secs(self, boot_ns: i128) -> i64 {
        secs((boot_ns + self.unix_minus_boot).div_euclid(NANOS))
    }

    /// How far the wall clock is from agent time when it reads `unix_ns` at boot-clock
    /// `boot_ns`: zero until someone steps it, rounded to whole seconds (slewing by NTP
    /// moves it by milliseconds, which round away).
    pub fn offset(self, unix_ns: i128, boot_ns: i128) -> Offset {
        let drift = unix_ns - boot_ns - self.unix_minus_boot;
        Offset {
            secs: secs((drift + NANOS / 2).div_euclid(NANOS)),
        }
    }
}

/// Wall time minus agent time, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset {
    pub secs: i64,
}

impl Offset {
    /// The wall-clock time of agent time `t`. `i64::MAX` ("never") stays what it is.
    pub fn to_wall(self, t: i64) -> i64 {
        if t == i64::MAX {
            t
        } else {
            t.saturating_add(self.secs)
        }
    }

    /// The agent time of wall-clock time `t`. `i64::MAX` ("never") stays what it is.
    pub fn to_agent(self, t: i64) -> i64 {
        if t == i64::MAX {
            t
        } else {
            t.saturating_sub(self.secs)
        }
    }
}

fn secs(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

fn read(id: ClockId) -> i128 {
    clock_gettime(id)
        .map(|t| i128::from(t.tv_sec()) * NANOS + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

fn origin() -> Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    *ORIGIN
        .get_or_init(|| Origin::new(read(ClockId::CLOCK_REALTIME), read(ClockId::CLOCK_BOOTTIME)))
}

/// Agent time now: what bans, their expiry and the cap are counted in.
pub fn now() -> i64 {
    origin().agent_secs(read(ClockId::CLOCK_BOOTTIME))
}

/// Wall time minus agent time now, for converting at the edges.
pub fn wall_offset() -> Offset {
    let o = origin();
    let boot = read(ClockId::CLOCK_BOOTTIME);
    let unix = read(ClockId::CLOCK_REALTIME);
    o.offset(unix, boot)
}

/// The monotonic clock (the agent is an edge that reads clocks).
pub fn monotonic() -> std::time::Instant {
    #[expect(
        clippy::disallowed_methods,
        reason = "the agent is the edge that reads clocks"
    )]
    std::time::Instant::now()
}

/// Unix time now in whole seconds.
pub fn unix_now() -> i64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "the agent is the edge that reads clocks"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix time now in nanoseconds, for events the agent itself causes (bans).
pub fn wall_nanos() -> i64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "the agent is the edge that reads clocks"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i128 = 1_700_000_000 * NANOS;

    #[test]
    fn agent_time_starts_at_the_wall_clock_and_follows_the_boot_clock() {
        let o = Origin::new(T0 + 250_000_000, 5 * NANOS);
        assert_eq!(o.agent_secs(5 * NANOS), 1_700_000_000);
        assert_eq!(o.agent_secs(65 * NANOS), 1_700_000_060);
        assert_eq!(o.offset(T0 + 60 * NANOS + 250_000_000, 65 * NANOS).secs, 0);
    }

    #[test]
    fn a_step_of_the_wall_clock_moves_only_the_offset() {
        let o = Origin::new(T0, 0);
        // An hour later on the boot clock someone sets the wall clock back a day.
        let boot = 3600 * NANOS;
        let wall = T0 + boot - 86_400 * NANOS;
        assert_eq!(o.agent_secs(boot), 1_700_003_600, "agent time goes on");
        let off = o.offset(wall, boot);
        assert_eq!(off.secs, -86_400);
        // A ban until agent time T is printed and saved at the stepped wall time.
        assert_eq!(off.to_wall(1_700_007_200), 1_700_007_200 - 86_400);
        assert_eq!(off.to_agent(off.to_wall(1_700_007_200)), 1_700_007_200);
    }

    #[test]
    fn slewing_rounds_away() {
        let o = Origin::new(T0, 0);
        assert_eq!(o.offset(T0 + 10 * NANOS + 300_000_000, 10 * NANOS).secs, 0);
        assert_eq!(o.offset(T0 + 10 * NANOS - 300_000_000, 10 * NANOS).secs, 0);
    }

    #[test]
    fn a_saved_until_means_the_same_moment_after_a_reboot() {
        // First boot: the wall clock was an hour behind at start and NTP stepped it.
        let first = Origin::new(T0 - 3600 * NANOS, 0);
        let boot = 100 * NANOS;
        let agent_now = first.agent_secs(boot);
        let until = agent_now + 600; // a ban with ten minutes left
        let on_disk = first.offset(T0 + boot, boot).to_wall(until);
        assert_eq!(on_disk, 1_700_000_100 + 600, "saved in true wall time");
        // After a reboot (boot clock from zero again), five minutes later in wall time.
        let second = Origin::new(T0 + 400 * NANOS, 0);
        let restored = second.offset(T0 + 400 * NANOS, 0).to_agent(on_disk);
        assert_eq!(restored - second.agent_secs(0), 300, "five minutes left");
    }

    #[test]
    fn never_stays_never_and_extremes_saturate() {
        let off = Offset { secs: 3600 };
        assert_eq!(off.to_wall(i64::MAX), i64::MAX);
        assert_eq!(off.to_agent(i64::MAX), i64::MAX);
        assert_eq!(off.to_wall(i64::MAX - 1), i64::MAX);
        assert_eq!(Offset { secs: -1 }.to_agent(i64::MAX - 1), i64::MAX);
        assert_eq!(Origin::new(0, i128::MAX / 2).agent_secs(0), i64::MIN);
    }
}
