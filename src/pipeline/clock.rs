//! RFC 3339 timestamps in UTC for `started_at`, without a date crate: the
//! civil-from-days conversion of Howard Hinnant's `chrono`-compatible
//! algorithms (proleptic Gregorian calendar, no leap seconds, as Unix time).

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`. Times before 1970 (a clock set far
/// back) are written as the epoch rather than failing the run.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339_from_unix_millis(since.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339_from_unix_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epoch() {
        assert_eq!(rfc3339_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn millis_and_time_of_day() {
        assert_eq!(
            rfc3339_from_unix_millis(1_735_787_045_678),
            "2025-01-02T03:04:05.678Z"
        );
    }

    #[test]
    fn leap_day_2000() {
        assert_eq!(
            rfc3339_from_unix_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn day_after_leap_day_2024() {
        assert_eq!(
            rfc3339_from_unix_millis(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(1_709_251_200_000),
            "2024-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn century_without_leap_day_2100() {
        assert_eq!(
            rfc3339_from_unix_millis(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn end_of_year() {
        assert_eq!(
            rfc3339_from_unix_millis(1_704_067_199_000),
            "2023-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn before_epoch_clamps_to_epoch() {
        let t = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn system_time_matches_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(rfc3339(t), "2025-01-02T03:04:05.678Z");
    }
}
