//! CO2e from energy: energy x PUE x grid carbon intensity.
//!
//! Location-based intensity (the grid where the site is) is always given; market-based intensity
//! (after the site's energy contracts) only when configured. Each is configured per site as a
//! constant or an hourly series. What is not configured falls back to a published average, flagged
//! as an estimate with its source in every [`Factor`]:
//! - PUE [`DEFAULT_PUE`] ([`DEFAULT_PUE_SOURCE`]),
//! - location-based intensity [`DEFAULT_G_PER_KWH`] gCO2e/kWh ([`DEFAULT_G_PER_KWH_SOURCE`]).
//!
//! Hourly series CSV format: one `hour_start_unix_s,g_per_kwh` row per hour, hour starts (Unix
//! time in s, UTC) multiples of 3600 and strictly increasing; an optional header line
//! `hour_start_unix_s,g_per_kwh` first; blank lines and lines starting with `#` are skipped. A bad
//! row is a [`CsvError`] with its line number (from 1).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default PUE (dimensionless) when a site configures none.
pub const DEFAULT_PUE: f64 = 1.56;
/// Where [`DEFAULT_PUE`] comes from.
pub const DEFAULT_PUE_SOURCE: &str =
    "Uptime Institute Global Data Center Survey 2024: average annual PUE 1.56";
/// Default location-based grid carbon intensity in gCO2e/kWh when a site configures none.
pub const DEFAULT_G_PER_KWH: f64 = 475.0;
/// Where [`DEFAULT_G_PER_KWH`] comes from.
pub const DEFAULT_G_PER_KWH_SOURCE: &str =
    "IEA 2019: world average carbon intensity of electricity, 475 gCO2e/kWh";

/// mJ in one kWh.
const MJ_PER_KWH: f64 = 3.6e9;
/// The CSV header line that may open an hourly series.
const CSV_HEADER: &str = "hour_start_unix_s,g_per_kwh";

/// Where a factor's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FactorSource {
    /// Set in the configuration; `note` says where (site, constant or hourly series).
    Configured { note: String },
    /// Not configured: a published average, an estimate; `source` cites it.
    DefaultEstimate { source: String },
    /// The configured hourly series has no value for the hour: an estimate, `gap` says which series
    /// and what stood in (the series' last earlier hour, or the default when none).
    GapEstimate { gap: String },
}

/// A conversion factor and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    /// PUE (dimensionless) or carbon intensity in gCO2e/kWh, as the field holding it says.
    pub value: f64,
    pub source: FactorSource,
}

impl Factor {
    /// Whether the value is a default estimate rather than configured.
    pub fn is_estimate(&self) -> bool {
        matches!(
            self.source,
            FactorSource::DefaultEstimate { .. } | FactorSource::GapEstimate { .. }
        )
    }

    /// Whether the value stands in for an hour the configured series lacks.
    pub fn is_gap(&self) -> bool {
        matches!(self.source, FactorSource::GapEstimate { .. })
    }
}

/// The factors that apply to one site at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarbonFactors {
    /// Power usage effectiveness (facility energy / IT energy), dimensionless.
    pub pue: Factor,
    /// Location-based grid carbon intensity in gCO2e/kWh.
    pub location_g_per_kwh: Factor,
    /// Market-based grid carbon intensity in gCO2e/kWh, when configured.
    pub market_g_per_kwh: Option<Factor>,
}

impl CarbonFactors {
    /// The default factors (all estimates): PUE 1.56, 475 gCO2e/kWh, no market-based figure.
    pub fn defaults() -> CarbonFactors {
        CarbonFactors {
            pue: Factor {
                value: DEFAULT_PUE,
                source: FactorSource::DefaultEstimate {
                    source: DEFAULT_PUE_SOURCE.to_string(),
                },
            },
            location_g_per_kwh: Factor {
                value: DEFAULT_G_PER_KWH,
                source: FactorSource::DefaultEstimate {
                    source: DEFAULT_G_PER_KWH_SOURCE.to_string(),
                },
            },
            market_g_per_kwh: None,
        }
    }

    /// The intensity that stood in for an hour a configured series lacks, if any (location-based
    /// first).
    pub fn gap(&self) -> Option<&Factor> {
        [
            Some(&self.location_g_per_kwh),
            self.market_g_per_kwh.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|f| f.is_gap())
    }

    /// CO2e of `energy_mj` mJ of IT (GPU) energy: energy x PUE x intensity.
    pub fn co2e(&self, energy_mj: u64) -> Co2e {
        let facility_kwh = energy_mj as f64 / MJ_PER_KWH * self.pue.value;
        Co2e {
            location_g: facility_kwh * self.location_g_per_kwh.value,
            market_g: self
                .market_g_per_kwh
                .as_ref()
                .map(|m| facility_kwh * m.value),
        }
    }
}

/// CO2e amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Co2e {
    /// Location-based CO2e in g.
    pub location_g: f64,
    /// Market-based CO2e in g, when market-based intensity is configured.
    pub market_g: Option<f64>,
}

/// A carbon intensity setting. Not `Deserialize`: build it through [`HourlySeries::parse_csv`] and
/// [`SiteCarbon::new`], which check it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    /// The same intensity at all times, gCO2e/kWh.
    Constant(f64),
    /// One intensity per hour.
    Hourly(HourlySeries),
}

/// Carbon intensity per hour, gCO2e/kWh keyed by the hour's start (Unix time in s).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HourlySeries {
    hours: BTreeMap<u64, f64>,
}

/// What is wrong with a CSV row.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CsvErrorKind {
    #[error("expected 2 fields `hour_start_unix_s,g_per_kwh`, found {found}")]
    FieldCount { found: usize },
    #[error("hour start {value:?} is not a Unix time in s")]
    BadHour { value: String },
    #[error("hour start {hour_start_unix_s} is not a multiple of 3600")]
    NotOnHour { hour_start_unix_s: u64 },
    #[error("intensity {value:?} is not a number")]
    BadIntensity { value: String },
    #[error("intensity {value} gCO2e/kWh must be finite and at least 0")]
    IntensityOutOfRange { value: f64 },
    #[error("hour start {hour_start_unix_s} is not after the previous row's {previous}")]
    NotIncreasing {
        hour_start_unix_s: u64,
        previous: u64,
    },
    #[error("no data rows")]
    NoRows,
}

/// A bad row in an hourly series CSV.
#[derive(Debug, Clone, PartialEq, Error)]
pub struct CsvError {
    /// Line number, from 1.
    pub line: usize,
    pub kind: CsvErrorKind,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl HourlySeries {
    /// Parses the CSV format described in the module docs.
    pub fn parse_csv(text: &str) -> Result<HourlySeries, CsvError> {
        let mut hours = BTreeMap::new();
        let mut previous: Option<u64> = None;
        let mut seen_line = false;
        let mut last_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            last_line = line;
            let row = raw.trim();
            if row.is_empty() || row.starts_with('#') {
                continue;
            }
            let first = !seen_line;
            seen_line = true;
            if first && row.replace(' ', "").eq_ignore_ascii_case(CSV_HEADER) {
                continue;
            }
            let err = |kind| CsvError { line, kind };
            let fields: Vec<&str> = row.split(',').map(str::trim).collect();
            let [hour, value] = fields[..] else {
                return Err(err(CsvErrorKind::FieldCount {
                    found: fields.len(),
                }));
            };
            let hour_start: u64 = hour.parse().map_err(|_| {
                err(CsvErrorKind::BadHour {
                    value: hour.chars().take(40).collect(),
                })
            })?;
            if !hour_start.is_multiple_of(3600) {
                return Err(err(CsvErrorKind::NotOnHour {
                    hour_start_unix_s: hour_start,
                }));
            }
            let g: f64 = value.parse().map_err(|_| {
                err(CsvErrorKind::BadIntensity {
                    value: value.chars().take(40).collect(),
                })
            })?;
            if !g.is_finite() || g < 0.0 {
                return Err(err(CsvErrorKind::IntensityOutOfRange { value: g }));
            }
            if let Some(p) = previous.filter(|&p| hour_start <= p) {
                return Err(err(CsvErrorKind::NotIncreasing {
                    hour_start_unix_s: hour_start,
                    previous: p,
                }));
            }
            previous = Some(hour_start);
            hours.insert(hour_start, g);
        }
        if hours.is_empty() {
            return Err(CsvError {
                line: last_line,
                kind: CsvErrorKind::NoRows,
            });
        }
        Ok(HourlySeries { hours })
    }

    /// Intensity in gCO2e/kWh of the hour containing `unix_ms`, if the series has that hour.
    pub fn at(&self, unix_ms: u64) -> Option<f64> {
        self.hours.get(&hour_start_s(unix_ms)).copied()
    }

    /// The last hour before the one containing `unix_ms` that the series has: (hour start, Unix
    /// s; gCO2e/kWh).
    pub fn before(&self, unix_ms: u64) -> Option<(u64, f64)> {
        self.hours
            .range(..hour_start_s(unix_ms))
            .next_back()
            .map(|(h, v)| (*h, *v))
    }

    /// Number of hours in the series.
    pub fn len(&self) -> usize {
        self.hours.len()
    }

    /// Whether the series has no hours (never true for a parsed series).
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }
}

fn hour_start_s(unix_ms: u64) -> u64 {
    unix_ms / 1000 / 3600 * 3600
}

/// Why carbon factors are not available.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CarbonError {
    #[error("site {site}: PUE {value} must be finite and at least 1")]
    InvalidPue { site: String, value: f64 },
    #[error("site {site}: {basis} intensity {value} gCO2e/kWh must be finite and at least 0")]
    InvalidIntensity {
        site: String,
        basis: &'static str,
        value: f64,
    },
    #[error("hourly series: {0}")]
    Csv(#[from] CsvError),
}

/// The carbon configuration of one site, checked by [`SiteCarbon::new`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteCarbon {
    site: String,
    pue: Option<f64>,
    location: Option<Intensity>,
    market: Option<Intensity>,
}

impl SiteCarbon {
    /// A site with nothing configured: every factor is a default estimate.
    pub fn unconfigured(site: &str) -> SiteCarbon {
        SiteCarbon {
            site: site.to_string(),
            pue: None,
            location: None,
            market: None,
        }
    }

    /// A site with the given settings; `None` means "use the default" (PUE, location-based) or
    /// "not reported" (market-based). Constants are checked here.
    pub fn new(
        site: &str,
        pue: Option<f64>,
        location: Option<Intensity>,
        market: Option<Intensity>,
    ) -> Result<SiteCarbon, CarbonError> {
        if let Some(value) = pue.filter(|p| !p.is_finite() || *p < 1.0) {
            return Err(CarbonError::InvalidPue {
                site: site.to_string(),
                value,
            });
        }
        for (basis, intensity) in [("location-based", &location), ("market-based", &market)] {
            if let Some(Intensity::Constant(value)) = intensity
                && (!value.is_finite() || *value < 0.0)
            {
                return Err(CarbonError::InvalidIntensity {
                    site: site.to_string(),
                    basis,
                    value: *value,
                });
            }
        }
        Ok(SiteCarbon {
            site: site.to_string(),
            pue,
            location,
            market,
        })
    }

    /// The site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The factors that apply at `unix_ms` (Unix time in ms; an hourly series uses the hour
    /// containing it). Pass an interval's start.
    pub fn factors_at(&self, unix_ms: u64) -> Result<CarbonFactors, CarbonError> {
        let defaults = CarbonFactors::defaults();
        let pue = match self.pue {
            Some(value) => Factor {
                value,
                source: FactorSource::Configured {
                    note: format!("site {}: constant PUE", self.site),
                },
            },
            None => defaults.pue,
        };
        let location_g_per_kwh = match &self.location {
            Some(i) => self.intensity_at(i, "location-based", unix_ms)?,
            None => defaults.location_g_per_kwh,
        };
        let market_g_per_kwh = match &self.market {
            Some(i) => Some(self.intensity_at(i, "market-based", unix_ms)?),
            None => None,
        };
        Ok(CarbonFactors {
            pue,
            location_g_per_kwh,
            market_g_per_kwh,
        })
    }

    fn intensity_at(
        &self,
        intensity: &Intensity,
        basis: &'static str,
        unix_ms: u64,
    ) -> Result<Factor, CarbonError> {
        match intensity {
            Intensity::Constant(value) => Ok(Factor {
                value: *value,
                source: FactorSource::Configured {
                    note: format!("site {}: constant {basis} intensity", self.site),
                },
            }),
            Intensity::Hourly(series) => match series.at(unix_ms) {
                Some(value) => Ok(Factor {
                    value,
                    source: FactorSource::Configured {
                        note: format!("site {}: hourly {basis} intensity series", self.site),
                    },
                }),
                // A gap (or the series' end) never drops energy: the hour gets an estimate,
                // labelled as one. The series' last earlier hour stands in where there is one.
                None => Ok(match series.before(unix_ms) {
                    Some((hour, value)) => Factor {
                        value,
                        source: FactorSource::GapEstimate {
                            gap: format!(
                                "site {}: the hourly {basis} series lacks this hour; its last earlier hour (starting {hour} Unix s) stands in",
                                self.site
                            ),
                        },
                    },
                    None => Factor {
                        value: DEFAULT_G_PER_KWH,
                        source: FactorSource::GapEstimate {
                            gap: format!(
                                "site {}: the hourly {basis} series starts later; the default {DEFAULT_G_PER_KWH} gCO2e/kWh stands in ({DEFAULT_G_PER_KWH_SOURCE})",
                                self.site
                            ),
                        },
                    },
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KWH_MJ: u64 = 3_600_000_000;

    #[test]
    fn defaults_are_flagged_estimates_with_their_sources() {
        let f = SiteCarbon::unconfigured("dc1")
            .factors_at(0)
            .expect("defaults");
        assert_eq!(f.pue.value, 1.56);
        assert_eq!(f.location_g_per_kwh.value, 475.0);
        assert!(f.pue.is_estimate() && f.location_g_per_kwh.is_estimate());
        assert!(
            matches!(&f.pue.source, FactorSource::DefaultEstimate { source } if source.contains("Uptime Institute"))
        );
        assert!(
            matches!(&f.location_g_per_kwh.source, FactorSource::DefaultEstimate { source } if source.contains("IEA 2019"))
        );
        assert_eq!(f.market_g_per_kwh, None);
    }

    #[test]
    fn one_kwh_at_default_factors_is_741_grams() {
        let c = CarbonFactors::defaults().co2e(KWH_MJ);
        assert!((c.location_g - 741.0).abs() < 1e-9);
        assert_eq!(c.market_g, None);
    }

    #[test]
    fn reports_market_based_beside_location_based_when_configured() {
        let site = SiteCarbon::new(
            "dc1",
            Some(1.2),
            Some(Intensity::Constant(400.0)),
            Some(Intensity::Constant(50.0)),
        )
        .expect("valid");
        let f = site.factors_at(0).expect("constants");
        assert!(!f.pue.is_estimate());
        let c = f.co2e(KWH_MJ);
        assert!((c.location_g - 480.0).abs() < 1e-9);
        assert!((c.market_g.expect("configured") - 60.0).abs() < 1e-9);
    }

    #[test]
    fn looks_up_the_hour_containing_the_time() {
        let csv =
            "# grid operator export\nhour_start_unix_s,g_per_kwh\n0,100\n3600, 200.5\n\n7200,300\n";
        let series = HourlySeries::parse_csv(csv).expect("valid");
        assert_eq!(series.len(), 3);
        assert_eq!(series.at(3_599_999), Some(100.0));
        assert_eq!(series.at(3_600_000), Some(200.5));
        assert_eq!(series.at(10_800_000), None);
        let site =
            SiteCarbon::new("dc1", None, Some(Intensity::Hourly(series)), None).expect("valid");
        assert_eq!(
            site.factors_at(5_000_000)
                .expect("covered")
                .location_g_per_kwh
                .value,
            200.5
        );
        // After the series ends: its last hour stands in, labelled as a gap estimate.
        let gap = site.factors_at(10_800_000).expect("a gap is estimated");
        assert_eq!(gap.location_g_per_kwh.value, 300.0);
        assert!(gap.location_g_per_kwh.is_gap() && gap.location_g_per_kwh.is_estimate());
        // Before it starts: the default, labelled.
        let late = HourlySeries::parse_csv("7200,100\n").expect("valid");
        let site = SiteCarbon::new("dc1", None, Some(Intensity::Hourly(late)), None).unwrap();
        let early = site.factors_at(0).expect("estimated").location_g_per_kwh;
        assert_eq!(early.value, DEFAULT_G_PER_KWH);
        assert!(early.is_gap());
    }

    #[test]
    fn rejects_bad_csv_rows_with_their_line_number() {
        let cases: [(&str, usize, CsvErrorKind); 7] = [
            ("0,1\n3600", 2, CsvErrorKind::FieldCount { found: 1 }),
            ("0,1,2", 1, CsvErrorKind::FieldCount { found: 3 }),
            ("x,1", 1, CsvErrorKind::BadHour { value: "x".into() }),
            (
                "-3600,1",
                1,
                CsvErrorKind::BadHour {
                    value: "-3600".into(),
                },
            ),
            (
                "\n\n60,1",
                3,
                CsvErrorKind::NotOnHour {
                    hour_start_unix_s: 60,
                },
            ),
            (
                "0,abc",
                1,
                CsvErrorKind::BadIntensity {
                    value: "abc".into(),
                },
            ),
            (
                "3600,1\n0,2",
                2,
                CsvErrorKind::NotIncreasing {
                    hour_start_unix_s: 0,
                    previous: 3600,
                },
            ),
        ];
        for (csv, line, kind) in cases {
            assert_eq!(
                HourlySeries::parse_csv(csv),
                Err(CsvError { line, kind }),
                "{csv:?}"
            );
        }
        assert_eq!(
            HourlySeries::parse_csv("0,-5").map_err(|e| e.kind),
            Err(CsvErrorKind::IntensityOutOfRange { value: -5.0 })
        );
        assert!(matches!(
            HourlySeries::parse_csv("0,NaN").map_err(|e| e.kind),
            Err(CsvErrorKind::IntensityOutOfRange { .. })
        ));
        assert_eq!(
            HourlySeries::parse_csv("hour_start_unix_s,g_per_kwh\n# none\n"),
            Err(CsvError {
                line: 2,
                kind: CsvErrorKind::NoRows
            })
        );
        let e = HourlySeries::parse_csv("0,1\n3600").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "line 2: expected 2 fields `hour_start_unix_s,g_per_kwh`, found 1"
        );
    }

    #[test]
    fn rejects_impossible_constants() {
        assert!(matches!(
            SiteCarbon::new("dc1", Some(0.9), None, None),
            Err(CarbonError::InvalidPue { .. })
        ));
        assert!(matches!(
            SiteCarbon::new("dc1", None, None, Some(Intensity::Constant(f64::INFINITY))),
            Err(CarbonError::InvalidIntensity {
                basis: "market-based",
                ..
            })
        ));
    }
}
