//! Time and duration flags, parsed one way for every command (`--from`, `--to`, `--for`).
//!
//! A time is `now`; a duration ago (`10m` or `-10m`, `2h`, `1h30m`, `7d`, `90s`); a date
//! (`2026-11-01`, midnight UTC); an RFC 3339 instant (`2026-11-01T12:00:00Z`, `...+01:00`); or
//! Unix milliseconds (a bare integer).

use crate::cli::ArgError;

/// The forms a time flag accepts, as every time flag's help says.
macro_rules! time_forms {
    () => {
        "now, a duration ago (10m or -10m, 2h, 1h30m, 7d), a date (2026-11-01, UTC), RFC 3339 (2026-11-01T12:00:00Z) or Unix ms"
    };
}
pub(crate) use time_forms;

/// A time flag's value, resolved against "now" when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    Now,
    /// This many ms before now.
    Ago(i64),
    /// Unix ms.
    At(i64),
}

impl TimeArg {
    /// Parses any of the forms in [`time_forms`].
    pub fn parse(s: &str) -> Result<TimeArg, ArgError> {
        let t = s.trim();
        let bad = || ArgError(format!("invalid time {s:?}: use {}", time_forms!()));
        if t == "now" {
            return Ok(TimeArg::Now);
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse().map(TimeArg::At).map_err(|_| bad());
        }
        let ago = t.strip_prefix('-').unwrap_or(t);
        if ago.starts_with(|c: char| c.is_ascii_digit()) && ago.ends_with(['s', 'm', 'h', 'd']) {
            return parse_duration_ms(ago).map(TimeArg::Ago).map_err(|_| bad());
        }
        parse_date_time(t).map(TimeArg::At).ok_or_else(bad)
    }

    /// Unix ms, given now.
    pub fn resolve(self, now_ms: i64) -> i64 {
        match self {
            TimeArg::Now => now_ms,
            TimeArg::Ago(ms) => now_ms.saturating_sub(ms),
            TimeArg::At(ms) => ms,
        }
    }
}

/// Parses a duration: "90s", "30m", "2h", "1h30m", "1d" (a bare number is seconds). Returns ms.
pub fn parse_duration_ms(s: &str) -> Result<i64, ArgError> {
    let bad = || {
        ArgError(format!(
            "invalid duration {s:?}: use e.g. 90s, 30m, 2h or 1h30m"
        ))
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<i64>() {
        return n.checked_mul(1000).filter(|v| *v >= 0).ok_or_else(bad);
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match ch {
            's' => 1_000,
            'm' => 60_000,
            'h' => greenslice_core::time::HOUR_MS_I64,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339 `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`, as Unix ms.
fn parse_date_time(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        t.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse::<i64>().ok())
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, mo, d) * 86_400_000;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if b.len() < 20 || !(b[10] == b'T' || b[10] == b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac_ms = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
        if digits == 0 {
            return None;
        }
        let ms: String = f[..digits].chars().chain("000".chars()).take(3).collect();
        frac_ms = ms.parse().ok()?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o[1..3].parse().ok()?;
            let om: i64 = o[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    Some(day_ms + (h * 3600 + mi * 60 + se - offset_s) * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_to_the_right_time() {
        let now = 1_800_000_000_000;
        for (s, want) in [
            ("now", now),
            ("10m", now - 600_000),
            ("-10m", now - 600_000),
            ("1h30m", now - 5_400_000),
            ("-7d", now - 7 * 86_400_000),
            ("90s", now - 90_000),
            ("2026-11-29", 1_795_910_400_000),
            ("2026-11-29T12:00:00Z", 1_795_953_600_000),
            ("2026-11-29T13:00:00+01:00", 1_795_953_600_000),
            ("1970-01-01T00:00:01.5Z", 1_500),
            ("12345", 12_345),
        ] {
            assert_eq!(TimeArg::parse(s).unwrap().resolve(now), want, "{s}");
        }
        for bad in [
            "",
            "yesterday",
            "-2w",
            "10",
            "2026-13-01",
            "2026-11-29T25:00:00Z",
            "2026-11-29T12:00:00",
            "--10m",
            "1.5h",
            "2026-1-01",
        ] {
            let e = TimeArg::parse(bad);
            if bad == "10" {
                // A bare integer is Unix ms, not a duration.
                assert_eq!(e.unwrap(), TimeArg::At(10));
                continue;
            }
            let e = e.unwrap_err().0;
            assert!(e.contains("2026-11-01") && e.contains("10m"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("90").unwrap(), 90_000);
        assert!(parse_duration_ms("2x").is_err());
        assert!(parse_duration_ms("h").is_err());
        assert!(parse_duration_ms("5m3").is_err());
    }
}
