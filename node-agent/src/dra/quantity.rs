//! Kubernetes resource quantities (`k8s.io/apimachinery/pkg/api/resource.Quantity`) as whole
//! numbers: what a share device's consumable capacity is counted in (milli-GPU, bytes).
//!
//! The accepted forms are the API's: a decimal number (`"250"`, `"1.5"`, `"1e3"`) with an optional
//! binary (`Ki Mi Gi Ti Pi Ei`) or decimal (`m k M G T P E`) suffix. A value that is not whole
//! rounds up, as the API server rounds quantities up to the smallest unit.

use thiserror::Error;

/// Why a quantity cannot be read as a whole number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("{0:?} is not a Kubernetes quantity")]
    Syntax(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// The quantity `q` as a whole number (rounded up).
pub fn parse(q: &str) -> Result<u64, QuantityError> {
    let syntax = || QuantityError::Syntax(q.to_string());
    let s = q.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    if frac_part.contains('.') {
        return Err(syntax());
    }
    // Value = digits * 10^exp10 * 2^exp2, digits without the point.
    let digits = format!("{int_part}{frac_part}");
    let mut exp10: i32 = -i32::try_from(frac_part.len()).map_err(|_| syntax())?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        e if e.starts_with(['e', 'E']) => {
            let x: i32 = e[1..].parse().map_err(|_| syntax())?;
            if !(-30..=30).contains(&x) {
                return Err(QuantityError::TooLarge(q.to_string()));
            }
            exp10 += x;
        }
        _ => return Err(syntax()),
    }
    let too_large = || QuantityError::TooLarge(q.to_string());
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(too_large());
    }
    let mut value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| syntax())?
    };
    value = value
        .checked_shl(exp2)
        .filter(|_| exp2 < 64)
        .ok_or_else(too_large)?;
    if value != 0 && negative {
        return Err(QuantityError::Negative(q.to_string()));
    }
    if exp10 >= 0 {
        for _ in 0..exp10 {
            value = value.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        let div = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(too_large)?;
        value = value.div_ceil(div);
    }
    u64::try_from(value).map_err(|_| too_large())
}

/// A whole number as a quantity, with the largest binary suffix that divides it when `binary`
/// (memory: `"20Gi"`), else plain digits (`"250"`).
pub fn format(value: u64, binary: bool) -> String {
    if binary && value > 0 {
        for (shift, suffix) in [
            (60, "Ei"),
            (50, "Pi"),
            (40, "Ti"),
            (30, "Gi"),
            (20, "Mi"),
            (10, "Ki"),
        ] {
            if value.is_multiple_of(1u64 << shift) {
                return format!("{}{suffix}", value >> shift);
            }
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_forms_read_as_whole_numbers() {
        for (q, v) in [
            ("250", 250),
            ("+250", 250),
            ("0", 0),
            ("-0", 0),
            ("1Ki", 1024),
            ("20Gi", 20 << 30),
            ("1.5Gi", 3 << 29),
            ("80G", 80_000_000_000),
            ("1k", 1000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("2.5", 3),
            ("1500m", 2),
            ("1000m", 1),
            ("1m", 1),
            (".5", 1),
            ("5.", 5),
        ] {
            assert_eq!(parse(q), Ok(v), "{q}");
        }
    }

    #[test]
    fn bad_quantities_are_refused() {
        for q in [
            "", "Gi", "1.2.3", "1 Gi", "1gi", "abc", "1Zi", "--1", "1e", "1ex",
        ] {
            assert!(matches!(parse(q), Err(QuantityError::Syntax(_))), "{q}");
        }
        assert!(matches!(parse("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse("16Ei"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(parse("1e30"), Err(QuantityError::TooLarge(_))));
    }

    #[test]
    fn written_quantities_read_back() {
        for (v, bin) in [
            (0, true),
            (250, false),
            (20 << 30, true),
            (1536, true),
            (1000, true),
        ] {
            assert_eq!(parse(&format(v, bin)), Ok(v));
        }
        assert_eq!(format(80 << 30, true), "80Gi");
        assert_eq!(
            format(1536, true),
            "3Ki".replace('3', "1536").replace("1536Ki", "1536"),
            "only whole suffixes"
        );
    }
}
