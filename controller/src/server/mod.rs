//! Serving the controller's gRPC API (with server reflection) on a TCP listener.
//!
//! Tier 3. May import the API, the engine and everything below; never `cli`.

pub mod http;
pub mod standby;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use greenslice_core::limits;
use greenslice_proto::v1 as pb;
use tokio::net::TcpListener;

use tonic::service::interceptor::InterceptedService;

use crate::api::{agent::AgentApi, kubelet::KubeletApi, ops::OpsApi, tenant::TenantApi};
use crate::auth::tls::ServerTls;
use crate::auth::{Authenticator, Gate, Surface, WithPath};
use crate::engine::Controller;

/// Largest gRPC message accepted by any service, bytes (the agent stream's; the others take less,
/// see [`greenslice_core::limits`]).
pub const MAX_MESSAGE_BYTES: usize = limits::AGENT_MAX_MESSAGE_BYTES;

/// Transport settings of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// An agent (or any client) whose connection does not answer HTTP/2 keep-alive pings for this
    /// long is dropped: its session ends and its node is marked unreachable. Pings go out every
    /// third of it; each may wait two thirds of it for its answer.
    pub agent_lease: Duration,
    /// Who may call what. The default is insecure (everyone may do everything): only for tests and
    /// demos on loopback.
    pub auth: Arc<Authenticator>,
    /// TLS on the listener (required with enforced authentication: tokens must not travel in the
    /// clear, and agents are identified by their client certificates). Changes applied to it
    /// (see [`ServerTls::spawn_reload`]) reach new connections and open agent sessions.
    pub tls: Option<Arc<ServerTls>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            agent_lease: Duration::from_secs(15),
            auth: Arc::new(Authenticator::Insecure),
            tls: None,
        }
    }
}

/// Serves every service on `listener` until `shutdown` resolves, with default options.
pub async fn serve(
    controller: Arc<Controller>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with(controller, listener, ServeOptions::default(), shutdown).await
}

/// Serves every service on `listener` until `shutdown` resolves.
pub async fn serve_with(
    controller: Arc<Controller>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if !options.auth.is_insecure() && options.tls.is_none() {
        anyhow::bail!(
            "authentication is enforced but TLS is not configured: tokens would travel in the clear"
        );
    }
    controller
        .metrics
        .insecure
        .set(i64::from(options.auth.is_insecure()));
    if let Some(tls) = &options.tls {
        let m = &controller.metrics;
        m.register(
            "greenslice_tls_certificate_expiry_timestamp_seconds",
            "When the controller's server certificate in force expires (Unix time)",
            tls.metrics.cert_expiry.clone(),
        );
        m.register(
            "greenslice_tls_reloads",
            "Changes of the TLS files (certificate, key, agent CA, revocation lists) applied",
            tls.metrics.reloads.clone(),
        );
        m.register(
            "greenslice_tls_files_invalid",
            "1 while the TLS files differ from the settings in force and do not load",
            tls.metrics.files_invalid.clone(),
        );
    }
    let refusals = controller.metrics.auth_refusals.clone();
    let gate = |surface| {
        Gate::new(options.auth.clone(), surface)
            .counting(refusals.clone())
            .trusting(options.tls.clone())
    };
    // Reflection in both versions: grpc.reflection.v1, and v1alpha for the clients that speak only
    // it (grpcio-reflection, older grpcurl and grpcui).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Each service takes what its largest legitimate request needs (tonic refuses more with
    // OUT_OF_RANGE before decoding) and answers at most what its clients read; the proto files
    // document the figures. The gate in front of each authenticates the caller (see crate::auth).
    let tenant = InterceptedService::new(
        pb::tenant_service_server::TenantServiceServer::new(TenantApi {
            controller: controller.clone(),
        })
        .max_decoding_message_size(limits::TENANT_MAX_REQUEST_BYTES)
        .max_encoding_message_size(limits::TENANT_MAX_RESPONSE_BYTES),
        gate(Surface::Tenant),
    );
    let agent = InterceptedService::new(
        pb::agent_service_server::AgentServiceServer::new(AgentApi {
            controller: controller.clone(),
            tls: options.tls.clone(),
        })
        .max_decoding_message_size(limits::AGENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::CONTROLLER_MAX_MESSAGE_BYTES),
        gate(Surface::Agent),
    );
    let kubelet = InterceptedService::new(
        pb::kubelet_service_server::KubeletServiceServer::new(KubeletApi {
            controller: controller.clone(),
            policy: controller.policy(),
        })
        .max_decoding_message_size(limits::KUBELET_MAX_REQUEST_BYTES)
        .max_encoding_message_size(limits::KUBELET_MAX_RESPONSE_BYTES),
        gate(Surface::Agent),
    );
    // The ops gate decides per method (tenants may read their own usage and energy).
    let ops = WithPath(InterceptedService::new(
        pb::ops_service_server::OpsServiceServer::new(OpsApi { controller })
            .max_decoding_message_size(limits::OPS_MAX_REQUEST_BYTES)
            .max_encoding_message_size(limits::OPS_MAX_RESPONSE_BYTES),
        gate(Surface::Ops),
    ));
    let lease = options.agent_lease.max(Duration::from_millis(300));
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(lease / 3))
        .http2_keepalive_timeout(Some(lease * 2 / 3))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tenant)
        .add_service(agent)
        .add_service(ops)
        .add_service(kubelet);
    serve_router(router, listener, options.tls, shutdown).await?;
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` resolves: over TLS with the settings in force at
/// each accept, or in plaintext (insecure mode).
pub async fn serve_router(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(crate::auth::tls::incoming(listener, tls), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(plain_incoming(listener), shutdown)
                .await
        }
    }
}

/// Plaintext connections (insecure mode). Nagle's algorithm with delayed ACKs adds ~40 ms to every
/// command round trip on the agent stream; the builder's tcp_nodelay does not reach a listener we
/// pass in, so set it here.
fn plain_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
