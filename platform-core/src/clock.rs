//! The wall clock as the crates store it: milliseconds since the Unix epoch in an
//! `i64`, the type SQL columns, Redis scores and message headers hold.

use std::time::Duration;

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

/// A time as milliseconds since the Unix epoch (saturating).
pub fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(if t.year() < 1970 { i64::MIN } else { i64::MAX })
}

/// Milliseconds since the Unix epoch as a time; `None` out of range.
pub fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A duration in whole milliseconds, saturating at a quarter of `i64::MAX` so that a
/// time plus a duration never overflows.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4).min(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_and_saturate() {
        let now = now_ms();
        assert!(now > 1_700_000_000_000, "{now}");
        let t = from_ms(now).expect("in range");
        assert_eq!(to_ms(t), now);
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::MAX), i64::MAX / 4);
        assert!(now + duration_ms(Duration::MAX) > now);
        assert_eq!(from_ms(i64::MAX), None);
    }
}
