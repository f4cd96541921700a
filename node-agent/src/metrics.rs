//! Prometheus metrics of the node agent (prometheus-client), served at `/metrics` on
//! `--metrics-listen`. Names follow Prometheus conventions (units in names; counters exposed with
//! `_total`).

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// A float gauge.
pub type FGauge = Gauge<f64, AtomicU64>;

/// The agent's registry and metrics.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    /// Sampling passes done (each samples every GPU).
    pub samples: Counter,
    pub sample_errors: Counter,
    /// How late the last sampling pass started after its scheduled tick, seconds.
    pub sample_lag: FGauge,
    /// How long the last sampling pass took, seconds.
    pub sample_duration: FGauge,
    /// Batches sent to the controller.
    pub batches_sent: Counter,
    /// GPU samples waiting for the next batch.
    pub pending_samples: Gauge,
    /// What limit enforcement did or saw, by kind (`crate::enforce::NoticeKind`).
    pub limit_actions: Family<Vec<(String, String)>, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let m = AgentMetrics {
            registry: Mutex::new(Registry::default()),
            samples: Counter::default(),
            sample_errors: Counter::default(),
            sample_lag: FGauge::default(),
            sample_duration: FGauge::default(),
            batches_sent: Counter::default(),
            pending_samples: Gauge::default(),
            limit_actions: Family::default(),
        };
        m.register(
            "greenslice_agent_samples",
            "Sampling passes done (each samples every GPU)",
            m.samples.clone(),
        );
        m.register(
            "greenslice_agent_sample_errors",
            "Sampling passes that failed",
            m.sample_errors.clone(),
        );
        m.register(
            "greenslice_agent_sample_lag_seconds",
            "How late the last sampling pass started after its scheduled tick",
            m.sample_lag.clone(),
        );
        m.register(
            "greenslice_agent_sample_duration_seconds",
            "How long the last sampling pass took",
            m.sample_duration.clone(),
        );
        m.register(
            "greenslice_agent_batches_sent",
            "Sample batches sent to the controller",
            m.batches_sent.clone(),
        );
        m.register(
            "greenslice_agent_pending_samples",
            "GPU samples waiting for the next batch",
            m.pending_samples.clone(),
        );
        m.register(
            "greenslice_agent_limit_actions",
            "Share limits enforced by watching: over-limit warnings, SIGTERMs, SIGKILLs and compute reports, by kind",
            m.limit_actions.clone(),
        );
        m
    }
}

impl AgentMetrics {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a metric family (e.g. the device plugin's).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
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

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    metrics: std::sync::Arc<AgentMetrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            async move { exposition(&headers, &m.encode()) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
