//! The idle policy: when a slice counts as idle, how long it may stay so, and who is exempt. Read from
//! the `[idle]` section of the controller's TOML config, with overrides per tenant and per slice class
//! (a class rule wins over a tenant rule, which wins over the defaults).
//!
//! ```toml
//! [idle]
//! threshold_pct = 5.0          # compute under 5% of the slice's own capacity...
//! window_s = 1800              # ...for 30 minutes is idle: the tenant is warned
//! grace_s = 600                # reclaimed 10 minutes after the warning unless used or kept
//! max_keep_s = 28800           # `greenslice keep --for` at most 8 hours
//! exempt_classes = ["serving"] # never reclaimed
//! dry_run = false              # true: only report what would be reclaimed
//! [idle.tenants.research]
//! window_s = 7200
//! [idle.classes.notebook]
//! window_s = 900
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use crate::telemetry::IdleTest;

/// Overrides for one tenant or slice class; unset fields fall through.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleRule {
    pub threshold_pct: Option<f64>,
    pub memory_threshold_pct: Option<f64>,
    pub window_s: Option<u64>,
    pub grace_s: Option<u64>,
    pub max_keep_s: Option<u64>,
    /// Never reclaim (e.g. latency-sensitive serving).
    pub exempt: Option<bool>,
}

/// The idle policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdlePolicy {
    /// Whether idle slices are warned and reclaimed at all.
    pub enabled: bool,
    /// Report what would be reclaimed (log, metrics, `greenslice usage`) without warning or
    /// reclaiming.
    pub dry_run: bool,
    /// Compute activity under this percent of the slice's own capacity is idle.
    pub threshold_pct: f64,
    /// Memory-controller activity under this percent is idle; applies where it is measured (a GPU
    /// held whole), elsewhere compute alone decides.
    pub memory_threshold_pct: f64,
    /// How long a slice must stay idle before its tenant is warned, seconds.
    pub window_s: u64,
    /// Time between the warning and the reclaim, seconds.
    pub grace_s: u64,
    /// Longest `keep` a tenant may ask for, seconds.
    pub max_keep_s: u64,
    /// How often the controller checks, seconds.
    pub check_interval_s: u64,
    /// Slice classes never reclaimed.
    pub exempt_classes: Vec<String>,
    /// Overrides by tenant name.
    pub tenants: BTreeMap<String, IdleRule>,
    /// Overrides by slice class (win over tenant overrides).
    pub classes: BTreeMap<String, IdleRule>,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            enabled: true,
            dry_run: false,
            threshold_pct: 5.0,
            memory_threshold_pct: 5.0,
            window_s: 1800,
            grace_s: 600,
            max_keep_s: 8 * 3600,
            check_interval_s: 30,
            exempt_classes: vec!["serving".to_string()],
            tenants: BTreeMap::new(),
            classes: BTreeMap::new(),
        }
    }
}

/// The rule in force for one slice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub threshold_pct: f64,
    pub memory_threshold_pct: f64,
    /// ms.
    pub window_ms: i64,
    /// ms.
    pub grace_ms: i64,
    /// ms.
    pub max_keep_ms: i64,
    pub exempt: bool,
}

impl Resolved {
    /// The idle test for a slice holding `allocated_gpus`.
    pub fn test(&self, allocated_gpus: f64) -> IdleTest {
        IdleTest {
            allocated_gpus,
            threshold_pct: self.threshold_pct,
            memory_threshold_pct: self.memory_threshold_pct,
        }
    }
}

/// A policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("invalid [idle] policy: {0}")]
pub struct PolicyError(pub String);

/// Longest window or grace accepted, seconds (the hour rollups hold 7 days).
pub const MAX_WINDOW_S: u64 = 6 * 24 * 3600;

fn ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl IdlePolicy {
    /// The rule for a slice of `tenant` and `class`.
    pub fn resolve(&self, tenant: &str, class: Option<&str>) -> Resolved {
        let mut r = Resolved {
            threshold_pct: self.threshold_pct,
            memory_threshold_pct: self.memory_threshold_pct,
            window_ms: ms(self.window_s),
            grace_ms: ms(self.grace_s),
            max_keep_ms: ms(self.max_keep_s),
            exempt: class.is_some_and(|c| self.exempt_classes.iter().any(|e| e == c)),
        };
        let rules = [
            self.tenants.get(tenant),
            class.and_then(|c| self.classes.get(c)),
        ];
        for rule in rules.into_iter().flatten() {
            r.threshold_pct = rule.threshold_pct.unwrap_or(r.threshold_pct);
            r.memory_threshold_pct = rule.memory_threshold_pct.unwrap_or(r.memory_threshold_pct);
            r.window_ms = rule.window_s.map_or(r.window_ms, ms);
            r.grace_ms = rule.grace_s.map_or(r.grace_ms, ms);
            r.max_keep_ms = rule.max_keep_s.map_or(r.max_keep_ms, ms);
            r.exempt = rule.exempt.unwrap_or(r.exempt);
        }
        r
    }

    /// Checks ranges: thresholds in 0..=100, windows within [`MAX_WINDOW_S`], a check interval of
    /// at least 1 s.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let pct = |name: &str, v: Option<f64>| match v {
            Some(v) if !(0.0..=100.0).contains(&v) => Err(PolicyError(format!(
                "{name} must be within 0..=100, got {v}"
            ))),
            _ => Ok(()),
        };
        let secs = |name: &str, v: Option<u64>| match v {
            Some(v) if v > MAX_WINDOW_S => Err(PolicyError(format!(
                "{name} must be at most {MAX_WINDOW_S} s, got {v}"
            ))),
            _ => Ok(()),
        };
        let base = IdleRule {
            threshold_pct: Some(self.threshold_pct),
            memory_threshold_pct: Some(self.memory_threshold_pct),
            window_s: Some(self.window_s),
            grace_s: Some(self.grace_s),
            max_keep_s: Some(self.max_keep_s),
            exempt: None,
        };
        let all = std::iter::once(("idle".to_string(), &base))
            .chain(
                self.tenants
                    .iter()
                    .map(|(k, v)| (format!("idle.tenants.{k}"), v)),
            )
            .chain(
                self.classes
                    .iter()
                    .map(|(k, v)| (format!("idle.classes.{k}"), v)),
            );
        for (at, r) in all {
            pct(&format!("{at}.threshold_pct"), r.threshold_pct)?;
            pct(
                &format!("{at}.memory_threshold_pct"),
                r.memory_threshold_pct,
            )?;
            secs(&format!("{at}.window_s"), r.window_s)?;
            secs(&format!("{at}.grace_s"), r.grace_s)?;
            secs(&format!("{at}.max_keep_s"), r.max_keep_s)?;
            if r.window_s == Some(0) {
                return Err(PolicyError(format!("{at}.window_s must be positive")));
            }
        }
        if self.check_interval_s == 0 {
            return Err(PolicyError("check_interval_s must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_rules_win_over_tenant_rules_over_defaults() {
        let p: IdlePolicy = toml::from_str(
            r#"
            window_s = 600
            [tenants.research]
            window_s = 7200
            threshold_pct = 2.0
            [classes.notebook]
            window_s = 900
            [classes.batch]
            exempt = true
            "#,
        )
        .unwrap();
        p.validate().unwrap();
        assert_eq!(p.resolve("x", None).window_ms, 600_000);
        let r = p.resolve("research", None);
        assert_eq!((r.window_ms, r.threshold_pct), (7_200_000, 2.0));
        let r = p.resolve("research", Some("notebook"));
        assert_eq!((r.window_ms, r.threshold_pct), (900_000, 2.0));
        assert!(p.resolve("x", Some("serving")).exempt);
        assert!(p.resolve("x", Some("batch")).exempt);
        assert!(!p.resolve("x", Some("notebook")).exempt);
    }

    #[test]
    fn rejects_out_of_range_values_and_unknown_keys() {
        let p = IdlePolicy {
            threshold_pct: 120.0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        assert!(toml::from_str::<IdlePolicy>("windw_s = 3").is_err());
        let p: IdlePolicy = toml::from_str("[classes.x]\ngrace_s = 99999999").unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .0
                .contains("idle.classes.x.grace_s")
        );
    }
}
