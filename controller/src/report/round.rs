//! Figures as a person reads them: rounded to fit their magnitude. The report's JSON and CSV keep
//! the exact values; only the table and the HTML round.

/// `x` with `sig` significant figures, in plain decimal notation (`32.0`, `0.00123`, `12300`).
pub fn sig(x: f64, sig: u32) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let sig = sig.max(1) as i32;
    let mag = x.abs().log10().floor() as i32;
    let decimals = (sig - 1 - mag).max(0) as usize;
    // Rounding can carry into a new digit (9.995 -> 10.0): then one decimal fewer.
    let text = format!("{x:.decimals$}");
    let digits = text.chars().filter(|c| c.is_ascii_digit()).count();
    let leading_zeros = text
        .trim_start_matches('-')
        .chars()
        .take_while(|c| *c == '0' || *c == '.')
        .filter(|c| *c == '0')
        .count();
    if decimals > 0 && digits - leading_zeros > sig as usize {
        return format!("{x:.prec$}", prec = decimals - 1);
    }
    if decimals == 0 && mag >= sig {
        let unit = 10f64.powi(mag + 1 - sig);
        return format!("{:.0}", (x / unit).round() * unit);
    }
    text
}

/// Energy in kWh with 3 significant figures: `32.0 kWh`.
pub fn kwh(kwh: f64) -> String {
    format!("{} kWh", sig(kwh, 3))
}

/// CO2e with 3 significant figures, in kg below a tonne and in t from there: `23.7 kg`, `1.24 t`.
pub fn co2e(kg: f64) -> String {
    let (v, u) = co2e_parts(kg);
    format!("{v} {u}")
}

/// [`co2e`] as (number, unit).
pub fn co2e_parts(kg: f64) -> (String, &'static str) {
    if kg.abs() >= 1000.0 {
        (sig(kg / 1000.0, 3), "t")
    } else {
        (sig(kg, 3), "kg")
    }
}

/// A percentage with 3 significant figures (one decimal at least below 100): `16.2%`.
pub fn pct(p: f64) -> String {
    format!("{}%", sig(p, 3))
}

/// GPU-hours with 3 significant figures: `6.16 GPU-h`.
pub fn gpu_h(h: f64) -> String {
    format!("{} GPU-h", sig(h, 3))
}

/// A length of time as a person says it: `36.8 s`, `45.0 min`, `3.0 h`, `2.5 d`.
pub fn duration(ms: u64) -> String {
    let min = ms as f64 / 60_000.0;
    if min < 2.0 {
        format!("{} s", sig(ms as f64 / 1000.0, 3))
    } else if min < 120.0 {
        format!("{} min", sig(min, 3))
    } else if min < 72.0 * 60.0 {
        format!("{:.1} h", min / 60.0)
    } else {
        format!("{:.1} d", min / 1440.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_significant_figures_at_every_magnitude() {
        for (x, want) in [
            (32.048625, "32.0"),
            (5.6104, "5.61"),
            (0.0012345, "0.00123"),
            (0.0, "0"),
            (123.45, "123"),
            (12345.0, "12300"),
            (9.996, "10.0"),
            (0.09996, "0.100"),
            (999.7, "1000"),
            (-4.5678, "-4.57"),
            (1.0, "1.00"),
        ] {
            assert_eq!(sig(x, 3), want, "{x}");
        }
    }

    #[test]
    fn co2e_switches_to_tonnes_at_a_tonne() {
        assert_eq!(co2e(23.748), "23.7 kg");
        assert_eq!(co2e(999.4), "999 kg");
        assert_eq!(co2e(1234.0), "1.23 t");
        assert_eq!(co2e(0.004157), "0.00416 kg");
        assert_eq!(kwh(32.0486), "32.0 kWh");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(36_840), "36.8 s");
        assert_eq!(duration(45 * 60_000), "45.0 min");
        assert_eq!(duration(3 * 3_600_000), "3.0 h");
        assert_eq!(duration(60 * 3_600_000), "60.0 h");
        assert_eq!(duration(7 * 86_400_000), "7.0 d");
    }
}
