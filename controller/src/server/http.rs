//! The controller's HTTP endpoint: `/metrics` (Prometheus, from [`crate::obs`]) and `/readyz`.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine::Controller;

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
    r.register("greenslice_leading", crate::obs::LEADING_HELP, g);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

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
                            c.refresh_gauges();
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
                        Some(c) if c.leading() => (axum::http::StatusCode::OK, "leading\n"),
                        Some(_) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "leadership in doubt: not serving\n",
                        ),
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
