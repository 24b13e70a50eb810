//! The program stamps events and ban expiries with the kernel's boot clock
//! (`bpf_ktime_get_boot_ns`, CLOCK_BOOTTIME, which keeps counting through suspend);
//! synwatch's events and bans are in Unix time. The crate is an edge that reads clocks.

use nix::time::{ClockId, clock_gettime};

fn nanos(id: ClockId) -> i128 {
    clock_gettime(id)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

/// Boot-clock nanoseconds now.
pub fn boot_now() -> u64 {
    u64::try_from(nanos(ClockId::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// How to turn boot-clock times into Unix times, read once for a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootToUnix {
    /// Unix nanoseconds minus boot nanoseconds.
    offset: i128,
}

impl BootToUnix {
    pub fn now() -> Self {
        let boot = nanos(ClockId::CLOCK_BOOTTIME);
        let real = nanos(ClockId::CLOCK_REALTIME);
        Self {
            offset: real - boot,
        }
    }

    /// A fixed offset, for tests.
    pub fn with_offset(offset: i128) -> Self {
        Self { offset }
    }

    /// Unix nanoseconds of boot-clock time `ts`.
    pub fn unix(self, ts: u64) -> i64 {
        i64::try_from(i128::from(ts) + self.offset).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_become_unix_times_by_the_offset() {
        let c = BootToUnix::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.unix(5), 1_700_000_000_000_000_005);
    }

    #[test]
    fn the_live_offset_puts_now_at_now() {
        let c = BootToUnix::now();
        let real = nanos(ClockId::CLOCK_REALTIME);
        let unix_of_boot_now = i128::from(c.unix(boot_now()));
        assert!(
            (unix_of_boot_now - real).abs() < 1_000_000_000,
            "{unix_of_boot_now} vs {real}"
        );
    }
}
