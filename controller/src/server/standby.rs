//! What a standby controller serves while another replica leads: every call to the tenant, ops and
//! agent services is refused with UNAVAILABLE, naming the leader and its URL. Clients (the CLI, the
//! agents) retry against the next controller URL they know; a standby does not forward, so a
//! request is never applied by two controllers and no standby holds state that could go stale.
//!
//! The refusal is answered for any method of these services (a generic HTTP handler per service
//! name), so new RPCs are covered without touching this module.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::task::{Context, Poll};

use greenslice_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::ledger::etcd::LeaderInfo;

/// The message standbys answer with.
fn refusal(leader: &watch::Receiver<Option<LeaderInfo>>) -> Status {
    match leader.borrow().as_ref() {
        Some(l) => Status::unavailable(format!(
            "this controller is a standby; the leader is {} at {}",
            l.id, l.url
        )),
        None => Status::unavailable(
            "this controller is a standby and no leader is elected yet; retry shortly",
        ),
    }
}

macro_rules! refusing {
    ($ty:ident, $name:expr) => {
        #[derive(Debug, Clone)]
        struct $ty(watch::Receiver<Option<LeaderInfo>>);

        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl tonic::codegen::Service<http::Request<Body>> for $ty {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _: http::Request<Body>) -> Self::Future {
                ready(Ok(refusal(&self.0).into_http()))
            }
        }
    };
}

refusing!(Tenant, pb::tenant_service_server::SERVICE_NAME);
refusing!(Agent, pb::agent_service_server::SERVICE_NAME);
refusing!(Ops, pb::ops_service_server::SERVICE_NAME);

/// Serves refusals on `listener` until `shutdown` resolves, with the same TLS as the leader would
/// (so clients get the refusal naming the leader, not a handshake error). The refusal reveals only
/// the leader's URL, which every client is configured with anyway, so it needs no authentication.
pub async fn serve(
    listener: TcpListener,
    leader: watch::Receiver<Option<LeaderInfo>>,
    tls: Option<std::sync::Arc<crate::auth::tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let router = tonic::transport::Server::builder()
        .add_service(Tenant(leader.clone()))
        .add_service(Agent(leader.clone()))
        .add_service(Ops(leader));
    crate::server::serve_router(router, listener, tls, shutdown).await?;
    Ok(())
}
