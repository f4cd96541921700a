//! The time zone a report is shown in, and ISO 8601 dates in it. Reports keep Unix ms in their
//! data; only what a person reads is a date.

use std::fmt;

use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, Zoned};

/// Why a `--tz` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error(
        "invalid time zone {0:?}: use UTC, a fixed offset such as +02:00 or -05:30, or an IANA name such as Europe/Berlin"
    )]
    Syntax(String),
    #[error(
        "unknown time zone {name:?} ({why}); the IANA names come from the system's zoneinfo (tzdata)"
    )]
    Unknown { name: String, why: String },
}

/// A time zone: UTC, a fixed offset from UTC, or an IANA zone (with its daylight saving rules).
#[derive(Clone)]
pub struct Zone {
    /// As the user named it (`UTC`, `+02:00`, `Europe/Berlin`).
    name: String,
    tz: TimeZone,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::utc()
    }
}

impl Zone {
    /// UTC, the default.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }

    /// Parses `UTC` (or `Z`), a fixed offset `±HH:MM` (or `±HH`, `±HHMM`), or an IANA name.
    pub fn parse(s: &str) -> Result<Zone, ZoneError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" || t == "z" {
            return Ok(Zone::utc());
        }
        if let Some(rest) = t.strip_prefix(['+', '-']) {
            let neg = t.starts_with('-');
            let digits: String = rest.chars().filter(|c| *c != ':').collect();
            let colon_ok = match rest.find(':') {
                None => true,
                Some(i) => i == 2 && rest.len() == 5,
            };
            if !colon_ok
                || !(digits.len() == 2 || digits.len() == 4)
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(ZoneError::Syntax(s.to_string()));
            }
            let h: i32 = digits[..2]
                .parse()
                .map_err(|_| ZoneError::Syntax(s.to_string()))?;
            let m: i32 = if digits.len() == 4 {
                digits[2..]
                    .parse()
                    .map_err(|_| ZoneError::Syntax(s.to_string()))?
            } else {
                0
            };
            if h > 18 || m > 59 || (h == 18 && m > 0) {
                return Err(ZoneError::Syntax(s.to_string()));
            }
            let secs = (h * 3600 + m * 60) * if neg { -1 } else { 1 };
            let offset =
                Offset::from_seconds(secs).map_err(|_| ZoneError::Syntax(s.to_string()))?;
            return Ok(Zone {
                name: format!("{}{:02}:{:02}", if neg { '-' } else { '+' }, h, m),
                tz: TimeZone::fixed(offset),
            });
        }
        let plausible = !t.is_empty()
            && t.len() <= 64
            && t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
            && !t.contains("..");
        if !plausible {
            return Err(ZoneError::Syntax(s.to_string()));
        }
        TimeZone::get(t)
            .map(|tz| Zone {
                name: t.to_string(),
                tz,
            })
            .map_err(|e| ZoneError::Unknown {
                name: t.to_string(),
                why: e.to_string(),
            })
    }

    /// The zone as given (`UTC`, `+02:00`, `Europe/Berlin`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, unix_ms: u64) -> Option<Zoned> {
        let ms = i64::try_from(unix_ms).ok()?;
        Some(
            Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.tz.clone()),
        )
    }

    /// An instant as ISO 8601 with its offset: `2026-12-02T15:52:00Z`, `2026-12-02T17:52:00+02:00`
    /// (seconds, no fraction). An instant outside the calendar jiff supports is shown as Unix ms.
    pub fn iso(&self, unix_ms: u64) -> String {
        match self.zoned(unix_ms) {
            Some(z) => {
                let off = z.offset().seconds();
                let base = z.strftime("%Y-%m-%dT%H:%M:%S").to_string();
                if off == 0 && self.tz == TimeZone::UTC {
                    format!("{base}Z")
                } else {
                    format!("{base}{}", z.strftime("%:z"))
                }
            }
            None => format!("{unix_ms} (Unix ms)"),
        }
    }

    /// The calendar date of an instant in this zone, `2026-12-02`.
    pub fn date(&self, unix_ms: u64) -> String {
        self.zoned(unix_ms)
            .map(|z| z.strftime("%Y-%m-%d").to_string())
            .unwrap_or_else(|| unix_ms.to_string())
    }

    /// The wall-clock time of an instant in this zone, `15:52` (or `15:52:30` when `seconds`).
    pub fn clock(&self, unix_ms: u64, seconds: bool) -> String {
        self.zoned(unix_ms)
            .map(|z| {
                z.strftime(if seconds { "%H:%M:%S" } else { "%H:%M" })
                    .to_string()
            })
            .unwrap_or_else(|| unix_ms.to_string())
    }

    /// The offset from UTC at an instant, in seconds (east positive).
    pub fn offset_s(&self, unix_ms: u64) -> i64 {
        self.zoned(unix_ms)
            .map(|z| i64::from(z.offset().seconds()))
            .unwrap_or(0)
    }

    /// The zone as shown beside a period: `UTC`, `UTC+02:00`, `Europe/Berlin (UTC+01:00)`.
    pub fn label(&self, at_ms: u64) -> String {
        let off = self.offset_s(at_ms);
        let sign = if off < 0 { '-' } else { '+' };
        let fixed = format!(
            "UTC{sign}{:02}:{:02}",
            off.abs() / 3600,
            off.abs() % 3600 / 60
        );
        if self.tz == TimeZone::UTC {
            "UTC".into()
        } else if self.name.starts_with(['+', '-']) {
            fixed
        } else {
            format!("{} ({fixed})", self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T15:52:00Z.
    const T: u64 = 1_796_226_720_000;

    #[test]
    fn utc_is_the_default_and_ends_in_z() {
        assert_eq!(Zone::default().iso(T), "2026-12-02T15:52:00Z");
        assert_eq!(Zone::parse("utc").unwrap().iso(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn fixed_offsets_shift_the_wall_clock_and_say_so() {
        let z = Zone::parse("+02:00").unwrap();
        assert_eq!(z.iso(T), "2026-12-02T17:52:00+02:00");
        assert_eq!(z.label(T), "UTC+02:00");
        let w = Zone::parse("-0530").unwrap();
        assert_eq!(w.iso(T), "2026-12-02T10:22:00-05:30");
        assert_eq!(w.name(), "-05:30");
        assert_eq!(Zone::parse("+09").unwrap().date(T), "2026-12-03");
    }

    #[test]
    fn bad_zones_are_refused_with_the_forms_that_work() {
        for bad in [
            "",
            "+2",
            "+25:00",
            "+02:60",
            "02:00",
            "+02:0",
            "../etc/passwd",
            "Europe/../x",
        ] {
            let e = Zone::parse(bad).unwrap_err().to_string();
            assert!(e.contains("+02:00") || e.contains("zoneinfo"), "{bad}: {e}");
        }
    }

    #[test]
    fn iana_names_follow_daylight_saving_when_the_system_has_tzdata() {
        let Ok(z) = Zone::parse("Europe/Berlin") else {
            eprintln!("SKIP: no system zoneinfo for Europe/Berlin (install tzdata)");
            return;
        };
        // Winter: +01:00; summer (2026-07-01T12:00:00Z): +02:00.
        assert_eq!(z.iso(T), "2026-12-02T16:52:00+01:00");
        assert_eq!(z.iso(1_782_907_200_000), "2026-07-01T14:00:00+02:00");
        assert_eq!(z.label(T), "Europe/Berlin (UTC+01:00)");
        assert!(matches!(
            Zone::parse("Mars/Olympus_Mons"),
            Err(ZoneError::Unknown { .. })
        ));
    }
}
