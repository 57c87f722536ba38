//! When periodic jobs run: ticks aligned to the wall clock in UTC (an interval of 20m ticks at
//! :00, :20 and :40). Pure: `now` is always an argument.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The first aligned tick strictly after `now`. Ticks are multiples of `interval` since the Unix
/// epoch, which for intervals dividing a day means aligned to UTC midnight.
pub fn next_tick(now: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    let step = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1);
    let now_ms = now.timestamp_millis();
    let next_ms = (now_ms.div_euclid(step) + 1).saturating_mul(step);
    DateTime::from_timestamp_millis(next_ms).unwrap_or(now + TimeDelta::milliseconds(step))
}

/// How long to sleep before looking at the clock again: until `due`, but never longer than
/// `max_nap`, so a suspend (during which monotonic timers stop) is noticed soon after wake.
pub fn nap(now: DateTime<Utc>, due: DateTime<Utc>, max_nap: Duration) -> Duration {
    (due - now).to_std().unwrap_or(Duration::ZERO).min(max_nap)
}

/// True when `due` has come. A tick missed during a suspend is due once at wake; the caller
/// then computes the next tick from the current time, so several missed ticks run only once.
pub fn is_due(now: DateTime<Utc>, due: DateTime<Utc>) -> bool {
    now >= due
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).single().expect("valid")
    }

    const TWENTY: Duration = Duration::from_secs(20 * 60);

    #[test]
    fn ticks_align_to_the_utc_clock() {
        assert_eq!(next_tick(at(10, 0, 0), TWENTY), at(10, 20, 0));
        assert_eq!(next_tick(at(10, 0, 1), TWENTY), at(10, 20, 0));
        assert_eq!(next_tick(at(10, 19, 59), TWENTY), at(10, 20, 0));
        assert_eq!(next_tick(at(10, 40, 0), TWENTY), at(11, 0, 0));
        assert_eq!(
            next_tick(at(23, 50, 0), TWENTY),
            Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).single().expect("valid")
        );
        assert_eq!(
            next_tick(at(10, 7, 0), Duration::from_secs(86_400)),
            Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).single().expect("valid")
        );
        assert_eq!(next_tick(at(10, 0, 3), Duration::from_secs(5)), at(10, 0, 5));
    }

    #[test]
    fn naps_are_capped_so_suspends_are_noticed() {
        assert_eq!(
            nap(at(10, 0, 0), at(10, 20, 0), Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            nap(at(10, 19, 50), at(10, 20, 0), Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            nap(at(10, 21, 0), at(10, 20, 0), Duration::from_secs(30)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_tick_missed_during_suspend_runs_once() {
        let due = at(10, 20, 0);
        let woke = at(11, 5, 0);
        assert!(is_due(woke, due));
        // After running, the next one is the next aligned tick, not the three missed ones.
        assert_eq!(next_tick(woke, TWENTY), at(11, 20, 0));
        assert!(!is_due(at(10, 19, 59), due));
    }
}
