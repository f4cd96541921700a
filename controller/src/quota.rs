//! Per-tenant quotas: how many whole GPUs, MIG slices and how much time-sliced share a tenant may
//! hold at once. Checked when a slice is requested, under the same lock as placement, so two
//! concurrent requests cannot both slip under a limit.
//!
//! ```toml
//! [quotas.default]          # tenants without their own entry (omit: unlimited)
//! gpus = 8
//! [quotas.tenant.team-a]    # replaces the default for team-a
//! gpus = 16                 # whole GPUs held at once
//! mig_slices = 32           # MIG instances held at once
//! share = 4.0               # sum of the compute fractions of its time-sliced shares
//! ```
//!
//! Slices count from the moment they are requested until they are released (PENDING, ACTIVE and
//! RELEASING). Slices the kubelet made for pods count towards their namespace's usage but are not
//! refused: the pod is already bound to the node when greenslice hears of it.

use std::collections::BTreeMap;

use greenslice_core::slice::{SliceKind, SliceSpec};
use serde::Deserialize;

use crate::model::slice::SliceRecord;

/// Limits for one tenant; an unset limit is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Whole GPUs held at once.
    pub gpus: Option<u32>,
    /// MIG instances held at once.
    pub mig_slices: Option<u32>,
    /// Sum of the compute fractions of time-sliced shares held at once.
    pub share: Option<f64>,
}

/// `[quotas]` in the controller config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// For tenants without an entry of their own.
    pub default: Option<Quota>,
    /// Per tenant.
    pub tenant: BTreeMap<String, Quota>,
}

/// What a tenant holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub gpus: u32,
    pub mig_slices: u32,
    pub share: f64,
}

impl Usage {
    /// Adds what `spec` asks for.
    pub fn add(&mut self, spec: &SliceSpec) {
        match &spec.kind {
            SliceKind::Whole { count } => self.gpus = self.gpus.saturating_add(*count),
            SliceKind::Mig { .. } => self.mig_slices = self.mig_slices.saturating_add(1),
            SliceKind::Share {
                compute_fraction, ..
            } => self.share += compute_fraction,
        }
    }

    /// What `tenant`'s live slices in `slices` hold.
    pub fn of<'a>(tenant: &str, slices: impl IntoIterator<Item = &'a SliceRecord>) -> Usage {
        let mut u = Usage::default();
        for s in slices {
            if s.tenant == tenant && s.is_live() {
                u.add(&s.spec);
            }
        }
        u
    }
}

/// A request that would take a tenant over its quota.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "tenant {tenant} is over its quota of {limit} {what}: it holds {held}, this request asks for {asked} more (quota in [quotas.{section}] of the controller config)"
)]
pub struct QuotaExceeded {
    pub tenant: String,
    pub what: &'static str,
    pub limit: String,
    pub held: String,
    pub asked: String,
    /// `default` or `tenant.<name>`: where the limit is set.
    pub section: String,
}

/// Tolerance for summing share fractions (0.1 + 0.2 must fit under 0.3).
const SHARE_EPSILON: f64 = 1e-9;

impl Quotas {
    /// Checks config values.
    pub fn validate(&self) -> Result<(), String> {
        let all = self
            .default
            .iter()
            .map(|q| ("default".to_string(), q))
            .chain(self.tenant.iter().map(|(t, q)| (format!("tenant.{t}"), q)));
        for (section, q) in all {
            if let Some(s) = q.share
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(format!(
                    "[quotas.{section}] share must be a finite number >= 0, got {s}"
                ));
            }
        }
        for t in self.tenant.keys() {
            greenslice_core::slice::validate_tenant(t)
                .map_err(|e| format!("[quotas.tenant.{t}]: {e}"))?;
        }
        Ok(())
    }

    /// The quota that applies to `tenant`, and where it is set.
    pub fn for_tenant(&self, tenant: &str) -> Option<(Quota, String)> {
        match self.tenant.get(tenant) {
            Some(q) => Some((*q, format!("tenant.{tenant}"))),
            None => self.default.map(|q| (q, "default".to_string())),
        }
    }

    /// True when no quota is configured at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.tenant.is_empty()
    }

    /// Checks `tenant`, holding `held`, may also take `spec`.
    pub fn check(
        &self,
        tenant: &str,
        held: Usage,
        spec: &SliceSpec,
    ) -> Result<(), Box<QuotaExceeded>> {
        let Some((q, section)) = self.for_tenant(tenant) else {
            return Ok(());
        };
        let mut after = held;
        after.add(spec);
        let over = |what, limit: String, held: String, asked: String| {
            Box::new(QuotaExceeded {
                tenant: tenant.to_string(),
                what,
                limit,
                held,
                asked,
                section: section.clone(),
            })
        };
        match &spec.kind {
            SliceKind::Whole { count } => {
                if let Some(l) = q.gpus
                    && after.gpus > l
                {
                    return Err(over(
                        "whole GPUs",
                        l.to_string(),
                        held.gpus.to_string(),
                        count.to_string(),
                    ));
                }
            }
            SliceKind::Mig { .. } => {
                if let Some(l) = q.mig_slices
                    && after.mig_slices > l
                {
                    return Err(over(
                        "MIG slices",
                        l.to_string(),
                        held.mig_slices.to_string(),
                        "1".into(),
                    ));
                }
            }
            SliceKind::Share {
                compute_fraction, ..
            } => {
                if let Some(l) = q.share
                    && after.share > l + SHARE_EPSILON
                {
                    return Err(over(
                        "GPU share",
                        format!("{l}"),
                        format!("{:.3}", held.share),
                        format!("{compute_fraction}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SliceKind) -> SliceSpec {
        SliceSpec {
            kind,
            gpu_model: None,
            slice_class: None,
        }
    }

    fn quotas() -> Quotas {
        toml::from_str(
            "[default]\ngpus = 2\n[tenant.team-a]\ngpus = 4\nmig_slices = 1\nshare = 0.5\n",
        )
        .unwrap()
    }

    #[test]
    fn each_kind_is_limited_by_its_own_quota() {
        let q = quotas();
        let whole = |n| spec(SliceKind::Whole { count: n });
        let mig = spec(SliceKind::Mig {
            profile: "1g.10gb".into(),
        });
        let share = |f| {
            spec(SliceKind::Share {
                compute_fraction: f,
                memory_bytes: 1,
            })
        };
        let mut held = Usage::default();
        assert!(q.check("team-a", held, &whole(4)).is_ok());
        let e = q.check("team-a", held, &whole(5)).unwrap_err();
        assert_eq!(
            (e.what, e.section.as_str()),
            ("whole GPUs", "tenant.team-a")
        );
        assert!(e.to_string().contains("quota of 4 whole GPUs"), "{e}");
        held.add(&mig);
        assert!(q.check("team-a", held, &mig).is_err());
        // Other kinds are not limited by the MIG count.
        assert!(q.check("team-a", held, &whole(1)).is_ok());
        held.add(&share(0.2));
        held.add(&share(0.1));
        assert!(
            q.check("team-a", held, &share(0.2)).is_ok(),
            "0.1+0.2+0.2 fits 0.5"
        );
        assert!(q.check("team-a", held, &share(0.25)).is_err());
        // The default applies to others; unset limits are unlimited.
        assert!(q.check("team-b", Usage::default(), &whole(3)).is_err());
        assert!(q.check("team-b", Usage::default(), &mig).is_ok());
        assert!(Quotas::default().check("x", held, &whole(1000)).is_ok());
    }

    #[test]
    fn bad_quota_config_is_refused() {
        let q: Quotas = toml::from_str("[tenant.team-a]\nshare = -1.0\n").unwrap();
        assert!(q.validate().unwrap_err().contains("share"));
        let q: Quotas = toml::from_str("[tenant.'Bad Tenant']\ngpus = 1\n").unwrap();
        assert!(q.validate().is_err());
        assert!(toml::from_str::<Quotas>("[default]\ncpus = 1\n").is_err());
        assert!(quotas().validate().is_ok());
    }
}
