//! Prometheus metrics of the controller (prometheus-client), served at `/metrics` on
//! `--metrics-listen`. Names follow Prometheus conventions: the unit in the name (`_seconds`,
//! `_bytes`, `_ratio` for 0..1, `_gpus` for capacity in GPUs), counters exposed with `_total`.
//!
//! A leaf: it owns the metric families and their `record_*`-style setters, and imports nothing of
//! the controller. The engine pushes into it (`Controller::refresh_gauges` sets the gauges computed
//! from its state before every scrape and after every idle check); `server::http` serves it.
//! Other parts add their own families with [`Metrics::register`] (e.g. energy:
//! `metrics.register("greenslice_energy_joules", "...", family.clone())`).

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// Help of `greenslice_leading`, on the leader and on a standby.
pub const LEADING_HELP: &str = "1 when this replica leads and serves the API, 0 on a standby";

/// A float gauge.
pub type FGauge = Gauge<f64, AtomicU64>;

/// A counter of a real quantity (joules, grams).
pub type FCounter = Counter<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub node: String,
    pub gpu: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SliceLabels {
    pub slice: String,
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// A Kubernetes ResourceClaim (DRA): its namespace (the tenant) and name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    pub namespace: String,
    pub claim: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub node: String,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// A kubelet allocation's node, tenant (the pod's namespace) and extended resource.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeletLabels {
    pub node: String,
    pub tenant: String,
    pub resource: String,
}

/// A refused call: which service group, and the gRPC code it got.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub surface: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

/// The controller's registry and families.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Newest compute utilization of each GPU, 0..1.
    pub gpu_utilization: Family<GpuLabels, FGauge>,
    /// Newest compute utilization of each live slice relative to its own capacity, 0..1.
    pub slice_utilization: Family<SliceLabels, FGauge>,
    /// Capacity held by slices that are idle now (by their idle policy), GPUs.
    pub idle_allocated: Family<TenantLabels, FGauge>,
    /// Capacity held by live slices, GPUs.
    pub allocated: Family<TenantLabels, FGauge>,
    pub idle_warnings: Family<ReasonLabels, Counter>,
    /// Limit notices from the node agents (share limits enforced by watching), by kind.
    pub limit_notices: Family<LimitLabels, Counter>,
    pub reclaims: Family<ReasonLabels, Counter>,
    /// Slices warned and not yet reclaimed or withdrawn.
    pub warned_slices: Gauge,
    /// Dry run: slices the last check would have reclaimed.
    pub dry_run_candidates: Gauge,
    pub mig_relayouts: Counter,
    /// Controller clock minus the newest sample time of each node's last batch, seconds.
    pub agent_sample_lag: Family<NodeLabels, FGauge>,
    /// Bytes held by utilization histories and accounts.
    pub history_bytes: Gauge,
    /// Slices with a utilization history.
    pub tracked_slices: Gauge,
    /// Energy attributed to each tenant, J (see docs/ENERGY.md).
    pub tenant_energy: Family<TenantLabels, FCounter>,
    /// Energy attributed to each DRA ResourceClaim's slices, J (a part of its namespace's).
    pub claim_energy: Family<ClaimLabels, FCounter>,
    /// CO2e of each tenant's energy (location-based, including PUE), g.
    pub tenant_co2e: Family<TenantLabels, FCounter>,
    /// Measured energy of each GPU, J.
    pub gpu_energy: Family<GpuLabels, FCounter>,
    /// Static energy of GPU capacity nobody held, J.
    pub gpu_unallocated_idle_energy: Family<GpuLabels, FCounter>,
    /// Dynamic energy no slice's activity accounts for, J.
    pub gpu_unattributed_energy: Family<GpuLabels, FCounter>,
    /// Live slices the kubelet made for pods, by node, tenant and resource.
    pub kubelet_allocations: Family<KubeletLabels, Gauge>,
    /// Calls refused by authentication or authorization.
    pub auth_refusals: Family<RefusalLabels, Counter>,
    /// 1 when the controller serves without TLS or authentication.
    pub insecure: Gauge,
    /// 1: this replica leads (a controller that has metrics leads; see [`serve_controller_endpoint`]).
    pub leading: Gauge,
    /// Finished (released, failed) slices kept, in memory and in the ledger.
    pub finished_slices: Gauge,
    /// Of them, those kept past their retention because energy attribution still needs them.
    pub finished_held_for_energy: Gauge,
    /// Finished slices forgotten, by why (`age`, `count`).
    pub finished_forgotten: Family<ReasonLabels, Counter>,
    /// Hours of energy history stored in the ledger (each flush of a changed hour counts).
    pub history_hours_stored: Counter,
    /// Flushes of the energy history that failed (the ledger refused or was unreachable).
    pub history_flush_failures: Counter,
    /// Hours of energy history too large to store, kept in memory only (at the last flush).
    pub history_hours_unstored: Gauge,
    /// Attributed intervals whose carbon factor stood in for an hour the configured hourly series
    /// lacks (their energy is recorded; their CO2e is an estimate).
    pub carbon_factor_gap_intervals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            gpu_utilization: Family::default(),
            slice_utilization: Family::default(),
            idle_allocated: Family::default(),
            allocated: Family::default(),
            idle_warnings: Family::default(),
            limit_notices: Family::default(),
            reclaims: Family::default(),
            warned_slices: Gauge::default(),
            dry_run_candidates: Gauge::default(),
            mig_relayouts: Counter::default(),
            agent_sample_lag: Family::default(),
            history_bytes: Gauge::default(),
            tracked_slices: Gauge::default(),
            tenant_energy: Family::default(),
            claim_energy: Family::default(),
            tenant_co2e: Family::default(),
            gpu_energy: Family::default(),
            gpu_unallocated_idle_energy: Family::default(),
            gpu_unattributed_energy: Family::default(),
            kubelet_allocations: Family::default(),
            auth_refusals: Family::default(),
            insecure: Gauge::default(),
            leading: Gauge::default(),
            finished_slices: Gauge::default(),
            finished_held_for_energy: Gauge::default(),
            finished_forgotten: Family::default(),
            history_hours_stored: Counter::default(),
            history_flush_failures: Counter::default(),
            history_hours_unstored: Gauge::default(),
            carbon_factor_gap_intervals: Counter::default(),
        };
        m.register(
            "greenslice_carbon_factor_gap_intervals",
            "Attributed intervals whose carbon intensity stood in for an hour missing from the configured hourly series (energy recorded, CO2e estimated)",
            m.carbon_factor_gap_intervals.clone(),
        );
        m.register(
            "greenslice_energy_history_rollups_stored",
            "Hour rollups of energy history written to the ledger (one per changed hour per flush)",
            m.history_hours_stored.clone(),
        );
        m.register(
            "greenslice_energy_history_flush_failures",
            "Flushes of the energy history that failed; the hours stay changed and are retried",
            m.history_flush_failures.clone(),
        );
        m.register(
            "greenslice_energy_history_rollups_unstored",
            "Hours of energy history too large to store (over 1.4 MB), kept in memory only",
            m.history_hours_unstored.clone(),
        );
        m.leading.set(1);
        m.register("greenslice_leading", LEADING_HELP, m.leading.clone());
        m.register(
            "greenslice_finished_slices",
            "Finished (released, failed) slices kept for get, list and idempotent retries",
            m.finished_slices.clone(),
        );
        m.register(
            "greenslice_finished_slices_held_for_energy",
            "Finished slices kept past terminal_retention_s or terminal_retention_max because \
             energy attribution still needs them",
            m.finished_held_for_energy.clone(),
        );
        m.register(
            "greenslice_finished_slices_forgotten",
            "Finished slices forgotten, in memory and in the ledger, by reason (age, count)",
            m.finished_forgotten.clone(),
        );
        m.register(
            "greenslice_kubelet_allocations",
            "Live allocations the kubelet made for pods (from the agents' pod-resources reports)",
            m.kubelet_allocations.clone(),
        );
        m.register(
            "greenslice_auth_refusals",
            "Calls refused for a missing or bad token or certificate, or a role not allowed",
            m.auth_refusals.clone(),
        );
        m.register(
            "greenslice_insecure_mode",
            "1 when the controller serves without TLS or authentication (--insecure)",
            m.insecure.clone(),
        );
        m.register(
            "greenslice_tenant_energy_joules",
            "GPU energy attributed to a tenant (static and dynamic), in joules",
            m.tenant_energy.clone(),
        );
        m.register(
            "greenslice_claim_energy_joules",
            "GPU energy attributed to a Kubernetes ResourceClaim's devices (DRA), in joules; part of its namespace's tenant energy",
            m.claim_energy.clone(),
        );
        m.register(
            "greenslice_tenant_co2e_grams",
            "CO2e of a tenant's attributed energy (location-based, including PUE), in grams",
            m.tenant_co2e.clone(),
        );
        m.register(
            "greenslice_gpu_energy_joules",
            "Measured energy of a GPU (counter deltas, or power integrals where estimated), in joules",
            m.gpu_energy.clone(),
        );
        m.register(
            "greenslice_gpu_unallocated_idle_energy_joules",
            "Static energy of GPU capacity no slice held, in joules",
            m.gpu_unallocated_idle_energy.clone(),
        );
        m.register(
            "greenslice_gpu_unattributed_energy_joules",
            "Dynamic GPU energy no slice's activity accounts for, in joules",
            m.gpu_unattributed_energy.clone(),
        );
        m.register(
            "greenslice_gpu_utilization_ratio",
            "Newest compute utilization of a GPU (0..1)",
            m.gpu_utilization.clone(),
        );
        m.register(
            "greenslice_slice_utilization_ratio",
            "Newest compute utilization of a slice, relative to the capacity it holds (0..1)",
            m.slice_utilization.clone(),
        );
        m.register(
            "greenslice_idle_allocated_gpus",
            "Capacity held by slices idle now by their idle policy, in GPUs",
            m.idle_allocated.clone(),
        );
        m.register(
            "greenslice_allocated_gpus",
            "Capacity held by live slices, in GPUs",
            m.allocated.clone(),
        );
        m.register(
            "greenslice_idle_warnings",
            "Idle warnings sent to tenants",
            m.idle_warnings.clone(),
        );
        m.register(
            "greenslice_limit_notices",
            "Share limits enforced by the node agents: over-limit warnings, SIGTERMs, SIGKILLs and compute reports, by node and kind",
            m.limit_notices.clone(),
        );
        m.register(
            "greenslice_reclaims",
            "Slices reclaimed by the idle policy",
            m.reclaims.clone(),
        );
        m.register(
            "greenslice_idle_warned_slices",
            "Slices warned and awaiting reclaim",
            m.warned_slices.clone(),
        );
        m.register(
            "greenslice_reclaim_dry_run_candidates",
            "Dry run: slices the last idle check would have reclaimed",
            m.dry_run_candidates.clone(),
        );
        m.register(
            "greenslice_mig_relayouts",
            "MIG re-layouts: free instances destroyed to fit a request",
            m.mig_relayouts.clone(),
        );
        m.register(
            "greenslice_agent_sample_lag_seconds",
            "Controller clock minus the newest sample time of a node's last batch",
            m.agent_sample_lag.clone(),
        );
        m.register(
            "greenslice_telemetry_history_bytes",
            "Bytes held by utilization histories and usage accounts",
            m.history_bytes.clone(),
        );
        m.register(
            "greenslice_telemetry_tracked_slices",
            "Slices with a utilization history",
            m.tracked_slices.clone(),
        );
        m
    }
}

impl Metrics {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a metric family. Name it by Prometheus conventions; counters get `_total` appended.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Adds one attributed interval's energy on a GPU, joules: measured, unallocated idle and
    /// unattributed.
    pub fn record_gpu_energy(
        &self,
        node: &str,
        gpu: &str,
        measured_j: f64,
        unallocated_idle_j: f64,
        unattributed_j: f64,
    ) {
        let gpu = GpuLabels {
            node: node.to_string(),
            gpu: gpu.to_string(),
        };
        self.gpu_energy.get_or_create(&gpu).inc_by(measured_j);
        self.gpu_unallocated_idle_energy
            .get_or_create(&gpu)
            .inc_by(unallocated_idle_j);
        self.gpu_unattributed_energy
            .get_or_create(&gpu)
            .inc_by(unattributed_j);
    }

    /// Adds energy attributed to a tenant, joules, and its location-based CO2e, grams.
    pub fn record_tenant_energy(&self, tenant: &str, joules: f64, co2e_location_g: f64) {
        let t = TenantLabels {
            tenant: tenant.to_string(),
        };
        self.tenant_energy.get_or_create(&t).inc_by(joules);
        self.tenant_co2e.get_or_create(&t).inc_by(co2e_location_g);
    }

    /// Adds energy attributed to a ResourceClaim (`namespace/name`), joules.
    pub fn record_claim_energy(&self, claim: &str, joules: f64) {
        let (namespace, name) = claim.split_once('/').unwrap_or(("", claim));
        let c = ClaimLabels {
            namespace: namespace.to_string(),
            claim: name.to_string(),
        };
        self.claim_energy.get_or_create(&c).inc_by(joules);
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }

    pub fn limit_notice(&self, node: &str, kind: &str) {
        self.limit_notices
            .get_or_create(&LimitLabels {
                node: node.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn idle_warning(&self, reason: &str) {
        self.idle_warnings
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn reclaimed(&self, reason: &str) {
        self.reclaims
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts `n` finished slices forgotten for `reason`.
    pub fn finished_forgotten(&self, reason: &str, n: usize) {
        if n > 0 {
            self.finished_forgotten
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc_by(n as u64);
        }
    }

    pub fn relayout(&self) {
        self.mig_relayouts.inc();
    }

    pub fn agent_sample_lag(&self, node: &str, seconds: f64) {
        self.agent_sample_lag
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .set(seconds);
    }
}
