//! Units of time, defined once. Unix-ms instants are `u64` in energy intervals and hour rollups and
//! `i64` where they come from the [`crate::clock::Clock`] (telemetry, usage queries), so the hour is
//! given in both types, the signed one derived from the other.

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;

/// [`HOUR_MS`] for signed Unix-ms arithmetic.
pub const HOUR_MS_I64: i64 = HOUR_MS as i64;

// The signed hour is the same length (the cast above cannot wrap).
const _: () = assert!(HOUR_MS_I64 > 0 && HOUR_MS_I64 as u64 == HOUR_MS);
