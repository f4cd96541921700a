//! Prometheus metrics of the controller (prometheus-client), served at `/metrics` on
//! `--metrics-listen`. Names follow Prometheus conventions: the unit in the name (`_seconds`,
//! `_bytes`, `_ratio` for 0..1, `_gpus` for capacity in GPUs), counters exposed with `_total`.
//!
//! Other parts add their own families with [`Metrics::register`] (e.g. energy:
//! `metrics.register("greenslice_energy_joules", "...", family.clone())`); gauges computed from the
//! controller's state are set in [`refresh`], which runs before every scrape and after every idle
//! check.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::engine::Controller;
use crate::reclaim::UsageView;

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
            reclaims: Family::default(),
            warned_slices: Gauge::default(),
            dry_run_candidates: Gauge::default(),
            mig_relayouts: Counter::default(),
            agent_sample_lag: Family::default(),
            history_bytes: Gauge::default(),
            tracked_slices: Gauge::default(),
            tenant_energy: Family::default(),
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
        };
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

    /// Adds the energy of attributed intervals to the energy counters.
    pub fn record_energy(&self, records: &[crate::energy::accounting::IntervalRecord]) {
        for r in records {
            let gpu = GpuLabels {
                node: r.node.clone(),
                gpu: r.gpu.clone(),
            };
            self.gpu_energy
                .get_or_create(&gpu)
                .inc_by(r.measured_mj as f64 / 1000.0);
            self.gpu_unallocated_idle_energy
                .get_or_create(&gpu)
                .inc_by(r.unallocated_idle_mj as f64 / 1000.0);
            self.gpu_unattributed_energy
                .get_or_create(&gpu)
                .inc_by(r.unattributed_mj as f64 / 1000.0);
            for s in &r.slices {
                let mj = s.static_mj + s.dynamic_mj;
                let t = TenantLabels {
                    tenant: s.tenant.clone(),
                };
                self.tenant_energy
                    .get_or_create(&t)
                    .inc_by(mj as f64 / 1000.0);
                self.tenant_co2e
                    .get_or_create(&t)
                    .inc_by(r.factors.co2e(mj).location_g);
            }
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
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

/// Sets the gauges computed from the controller's state and telemetry.
pub fn refresh(c: &Controller) {
    let m = &c.metrics;
    let policy = c.reclaim.policy();
    let now = c.now_ms();
    m.gpu_utilization.clear();
    for uuid in c.telemetry.gpus() {
        if let Some(h) = c.telemetry.gpu_history(&uuid)
            && let Some(p) = h.history.latest()
        {
            m.gpu_utilization
                .get_or_create(&GpuLabels {
                    node: h.node.clone(),
                    gpu: uuid.clone(),
                })
                .set(f64::from(p.sm_pct) / 100.0);
        }
    }
    let (live, finished, held): (Vec<(crate::slice::SliceRecord, f64)>, usize, usize) = c
        .with_state(|st| {
            let live = st
                .live_slices()
                .map(|r| (r.clone(), crate::reclaim::allocated_gpus(r, st)))
                .collect();
            (live, st.finished_count(), st.held_for_energy_count())
        });
    m.finished_slices
        .set(i64::try_from(finished).unwrap_or(i64::MAX));
    m.finished_held_for_energy
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    m.slice_utilization.clear();
    m.idle_allocated.clear();
    m.allocated.clear();
    m.kubelet_allocations.clear();
    for (r, gpus) in &live {
        if crate::api::kubelet::is_kubelet_slice(r) {
            m.kubelet_allocations
                .get_or_create(&KubeletLabels {
                    node: r.node.clone(),
                    tenant: r.tenant.clone(),
                    resource: crate::api::kubelet::resource_of(&r.spec)
                        .unwrap_or_else(|| "invalid".into()),
                })
                .inc();
        }
        let t = TenantLabels {
            tenant: r.tenant.clone(),
        };
        m.allocated.get_or_create(&t).inc_by(*gpus);
        m.idle_allocated.get_or_create(&t).inc_by(0.0);
        if let Some(p) = c
            .telemetry
            .with_slice(&r.id, |s| s.history.latest().copied())
            .flatten()
        {
            m.slice_utilization
                .get_or_create(&SliceLabels {
                    slice: r.id.clone(),
                    tenant: r.tenant.clone(),
                })
                .set(f64::from(p.sm_pct) / 100.0 / gpus.max(1e-9));
        }
        let rule = policy.resolve(&r.tenant, r.spec.slice_class.as_deref());
        let fresh = c
            .telemetry
            .latest_ms(&r.id)
            .is_some_and(|t| now - t <= crate::reclaim::decide::MAX_GAP_MS);
        if fresh && c.telemetry.idle_since(&r.id, &rule.test(*gpus)).is_some() {
            m.idle_allocated.get_or_create(&t).inc_by(*gpus);
        }
    }
    let marks = c.reclaim.marks_snapshot();
    m.warned_slices.set(marks.warned.len() as i64);
    m.dry_run_candidates
        .set(c.reclaim.would_reclaim().len() as i64);
    m.history_bytes
        .set(i64::try_from(c.telemetry.history_bytes()).unwrap_or(i64::MAX));
    m.tracked_slices
        .set(c.telemetry.tracked_slices().len() as i64);
}

/// The body in the format the scraper asked for: OpenMetrics, or the classic text format.
pub fn exposition(
    headers: &axum::http::HeaderMap,
    openmetrics: &str,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = greenslice_core::expfmt::negotiate(accept, openmetrics);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}

/// The controller a process serves once it leads (set once; empty while it is a standby). The
/// HTTP endpoint answers from the moment the process starts, standby or not.
#[derive(Debug, Default)]
pub struct Leading(std::sync::OnceLock<std::sync::Arc<Controller>>);

impl Leading {
    /// Marks the process as leading with `c` (later calls are ignored).
    pub fn set(&self, c: std::sync::Arc<Controller>) {
        let _ = self.0.set(c);
    }

    fn get(&self) -> Option<&std::sync::Arc<Controller>> {
        self.0.get()
    }
}

/// The exposition of a standby: only `greenslice_leading 0` (the leader's says 1), so every replica
/// is a healthy scrape target and a dashboard can tell which one leads.
fn standby_exposition() -> String {
    let mut r = Registry::default();
    let g: Gauge = Gauge::default();
    r.register("greenslice_leading", LEADING_HELP, g);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

const LEADING_HELP: &str = "1 when this replica leads and serves the API, 0 on a standby";

/// Serves, until `shutdown` resolves:
/// - `/metrics`: the controller's metrics (refreshed on every scrape); a standby's says only
///   `greenslice_leading 0`;
/// - `/readyz`: 200 while this process leads and serves, 503 on a standby. A Kubernetes readiness
///   probe on it sends the Service's traffic to the leader only (standbys refuse every call).
pub async fn serve_controller_endpoint(
    leading: std::sync::Arc<Leading>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (l1, l2) = (leading.clone(), leading);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let l = l1.clone();
                async move {
                    let body = match l.get() {
                        Some(c) => {
                            refresh(c);
                            c.metrics.encode()
                        }
                        None => standby_exposition(),
                    };
                    exposition(&headers, &body)
                }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let l = l2.clone();
                async move {
                    match l.get() {
                        Some(_) => (axum::http::StatusCode::OK, "leading\n"),
                        None => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "standby: not leading\n",
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the metrics of a controller that leads (see [`serve_controller_endpoint`]).
pub async fn serve_controller(
    c: std::sync::Arc<Controller>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let leading = std::sync::Arc::new(Leading::default());
    leading.set(c);
    serve_controller_endpoint(leading, listener, shutdown).await
}
