//! Who is calling, and what they may do.
//!
//! - Tenants and ops present a bearer token (`authorization: Bearer gst_...`); the controller keeps
//!   only SHA-256 hashes of tokens ([`tokens`]). A tenant token acts for one tenant: it sees and
//!   changes only that tenant's slices. An ops token may do everything on the tenant and ops
//!   services.
//! - Node agents present a client certificate signed by the agent CA (mutual TLS, [`tls`]); the
//!   agent and kubelet services accept nobody else, and an agent may register only as a node its
//!   certificate names.
//! - `--insecure` turns all of this off (no TLS, no tokens: everyone may do everything) for local
//!   demos and tests on loopback; it is loud about it.
//!
//! The [`Gate`] interceptor in front of each service authenticates the caller and puts its
//! [`Principal`] into the request; handlers then ask the principal whether it may act for a tenant
//! ([`Principal::act_as`], [`Principal::may_access`]). Decisions are pure functions of the
//! principal and the request, tested below; the I/O edges are the interceptor and the token-file
//! reloader.
//!
//! Tier 0 (a lower room). Imports `obs` only for its metric families; nothing of the engine, API or
//! server.

pub mod pki;
pub mod tls;
pub mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{error, info, warn};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokens::{TokenRole, TokenStore};

use crate::obs::RefusalLabels;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Insecure mode: nobody is authenticated and everyone may do everything.
    Anyone,
    /// A tenant token.
    Tenant {
        /// Token name.
        name: String,
        /// The tenant it acts for.
        tenant: String,
    },
    /// An ops token.
    Ops {
        /// Token name.
        name: String,
    },
    /// A node agent, by its verified client certificate.
    Agent {
        /// The leaf certificate it presented (already verified against the agent CA by TLS).
        cert: CertificateDer<'static>,
        /// The intermediate certificates it presented after the leaf, if any (to verify the
        /// chain again when the agent CA or its revocation lists change).
        intermediates: Vec<CertificateDer<'static>>,
    },
}

impl Principal {
    /// Short description for logs and error messages (never secret).
    pub fn describe(&self) -> String {
        match self {
            Principal::Anyone => "anyone (insecure mode)".into(),
            Principal::Tenant { name, tenant } => format!("token {name:?} (tenant {tenant})"),
            Principal::Ops { name } => format!("token {name:?} (ops)"),
            Principal::Agent { cert, .. } => match tls::dns_names(cert) {
                Ok(names) => format!("agent certificate for {}", names.join(",")),
                Err(_) => "agent certificate".into(),
            },
        }
    }

    /// The one tenant this caller is confined to, if any.
    pub fn confined_to(&self) -> Option<&str> {
        match self {
            Principal::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The tenant a request acts for: a tenant token acts for its own tenant (an empty tenant
    /// field means it) and may not name another; ops and insecure callers act for whatever the
    /// request names (empty: all tenants, where that means something).
    pub fn act_as(&self, requested: &str) -> Result<String, Status> {
        match self.confined_to() {
            None => Ok(requested.to_string()),
            Some(mine) if requested.is_empty() || requested == mine => Ok(mine.to_string()),
            Some(mine) => Err(Status::permission_denied(format!(
                "{} acts for tenant {mine}, not {}",
                self.describe(),
                // Not yet validated: never echo more than a tenant name's length.
                requested.chars().take(64).collect::<String>()
            ))),
        }
    }

    /// Checks the caller may see or change slice `slice_id`, owned by `owner`.
    pub fn may_access(&self, owner: &str, slice_id: &str) -> Result<(), Status> {
        match self.confined_to() {
            Some(mine) if mine != owner => Err(Status::permission_denied(format!(
                "slice {slice_id} belongs to another tenant; {} acts for tenant {mine}",
                self.describe()
            ))),
            _ => Ok(()),
        }
    }

    /// The certificate chain (leaf first) of an agent; empty for every other caller.
    pub fn agent_chain(&self) -> Vec<CertificateDer<'static>> {
        match self {
            Principal::Agent {
                cert,
                intermediates,
            } => std::iter::once(cert)
                .chain(intermediates)
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Checks an agent may register as `node`.
    pub fn may_register(&self, node: &str) -> Result<(), Status> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::Agent { cert, .. } if tls::certifies_node(cert, node) => Ok(()),
            Principal::Agent { .. } => Err(Status::permission_denied(format!(
                "{} may not register as node {node}: the certificate must name the node as a DNS \
                 subject alternative name",
                self.describe()
            ))),
            other => Err(Status::permission_denied(format!(
                "{} is not a node agent",
                other.describe()
            ))),
        }
    }
}

/// The principal the [`Gate`] put into a request. A request that did not pass a gate has none and
/// is refused.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request did not pass authentication"))
}

/// OpsService methods a tenant token may call, answered for its own tenant only (its slices'
/// utilization, its energy and CO2e). Every other ops method needs an ops token: a new method is
/// closed to tenants until it is listed here.
pub const TENANT_OPS_METHODS: [&str; 2] = [
    "/greenslice.v1.OpsService/Usage",
    "/greenslice.v1.OpsService/EnergyReport",
];

/// The gRPC method a request is for (`/package.Service/Method`), put into the request by
/// [`WithPath`] so the gate can decide per method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcPath(pub String);

/// Wraps a service so its requests carry their [`RpcPath`] (tonic's interceptors do not see the
/// URI).
#[derive(Debug, Clone)]
pub struct WithPath<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithPath<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for WithPath<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = RpcPath(req.uri().path().to_string());
        req.extensions_mut().insert(path);
        self.0.call(req)
    }
}

/// Which group of services a gate guards, and so which callers it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// TenantService: tenant and ops tokens.
    Tenant,
    /// OpsService: ops tokens.
    Ops,
    /// AgentService and KubeletService: node agents (client certificates).
    Agent,
}

/// How callers are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// No TLS, no tokens: every caller is [`Principal::Anyone`].
    Insecure,
    /// Tokens for tenants and ops, client certificates for agents.
    Enforced {
        /// The current tokens (replaced when the file changes).
        tokens: RwLock<Arc<TokenStore>>,
        /// The file they came from (reloaded on change), if any.
        path: Option<PathBuf>,
    },
}

/// The bearer token in a request's metadata.
fn bearer<T>(req: &Request<T>) -> Result<&str, Status> {
    let v = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: pass --token or set GREENSLICE_TOKEN \
                 (metadata `authorization: Bearer <token>`)",
            )
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
    let (scheme, token) = v.split_once(' ').ok_or_else(|| {
        Status::unauthenticated("authorization metadata must be `Bearer <token>`")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Status::unauthenticated(
            "authorization metadata must be `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

impl Authenticator {
    /// Enforcing authentication with a fixed token store (tests, embedding).
    pub fn with_tokens(store: TokenStore) -> Authenticator {
        Authenticator::Enforced {
            tokens: RwLock::new(Arc::new(store)),
            path: None,
        }
    }

    /// Enforcing authentication with the tokens in `path` (reloaded by [`Self::spawn_reload`]).
    pub fn from_file(path: PathBuf) -> Result<Authenticator, tokens::TokenFileError> {
        let store = TokenStore::load(&path)?;
        info!(tokens = store.len(), path = %path.display(), "bearer tokens loaded");
        Ok(Authenticator::Enforced {
            tokens: RwLock::new(Arc::new(store)),
            path: Some(path),
        })
    }

    /// True in insecure mode.
    pub fn is_insecure(&self) -> bool {
        matches!(self, Authenticator::Insecure)
    }

    fn store(&self) -> Arc<TokenStore> {
        match self {
            Authenticator::Insecure => Arc::new(TokenStore::default()),
            Authenticator::Enforced { tokens, .. } => tokens
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Authenticates a call to `surface` and checks the caller's role may use it.
    pub fn admit<T>(&self, req: &Request<T>, surface: Surface) -> Result<Principal, Status> {
        if self.is_insecure() {
            return Ok(Principal::Anyone);
        }
        if surface == Surface::Agent {
            let certs = req.peer_certs().unwrap_or_default();
            let (leaf, intermediates) = certs.split_first().ok_or_else(|| {
                Status::unauthenticated(
                    "node agent services need a client certificate signed by the agent CA",
                )
            })?;
            return Ok(Principal::Agent {
                cert: leaf.clone().into_owned(),
                intermediates: intermediates
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect(),
            });
        }
        let token = bearer(req)?;
        let store = self.store();
        let holder = store
            .lookup(token)
            .ok_or_else(|| Status::unauthenticated("invalid token (unknown or revoked)"))?;
        let now_s =
            greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock) / 1000;
        if holder.expired(now_s) {
            return Err(Status::unauthenticated(format!(
                "token {:?} has expired; ask your operator for a new one",
                holder.name
            )));
        }
        let p = match (holder.role, &holder.tenant) {
            (TokenRole::Ops, _) => Principal::Ops {
                name: holder.name.clone(),
            },
            (TokenRole::Tenant, Some(t)) => Principal::Tenant {
                name: holder.name.clone(),
                tenant: t.clone(),
            },
            (TokenRole::Tenant, None) => {
                return Err(Status::unauthenticated("tenant token without a tenant"));
            }
        };
        if surface == Surface::Ops && !matches!(p, Principal::Ops { .. }) {
            let path = req.extensions().get::<RpcPath>().map(|p| p.0.as_str());
            let tenant_readable = path.is_some_and(|m| TENANT_OPS_METHODS.contains(&m));
            if !tenant_readable {
                return Err(Status::permission_denied(format!(
                    "{} may not call {}: it needs an ops token",
                    p.describe(),
                    path.unwrap_or("this ops method")
                )));
            }
        }
        Ok(p)
    }

    /// Re-reads the tokens file every `every` when it changed, so tokens can be added or revoked
    /// without a restart. A file that no longer parses is logged and the previous tokens are kept.
    pub fn spawn_reload(self: &Arc<Self>, every: Duration) {
        let Authenticator::Enforced {
            path: Some(path), ..
        } = self.as_ref()
        else {
            return;
        };
        let path = path.clone();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last: Option<SystemTime> = mtime(&path);
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { return };
                let now = mtime(&path);
                if now == last {
                    continue;
                }
                last = now;
                match TokenStore::load(&path) {
                    Ok(store) => {
                        if let Authenticator::Enforced { tokens, .. } = me.as_ref() {
                            info!(tokens = store.len(), "bearer tokens reloaded");
                            *tokens
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Arc::new(store);
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "tokens file changed but is invalid; keeping the previous tokens")
                    }
                }
            }
        });
    }
}

/// `PermissionDenied` -> `permission_denied` (gRPC code names as label values).
fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The interceptor in front of a service: authenticates, checks the role, and hands the
/// [`Principal`] to the handler.
#[derive(Debug, Clone)]
pub struct Gate {
    auth: Arc<Authenticator>,
    surface: Surface,
    refusals: Option<Family<RefusalLabels, Counter>>,
    /// The TLS settings in force: an agent's certificate, verified at its handshake, is checked
    /// again at each call against the agent CA and revocation lists in force now.
    agent_trust: Option<Arc<tls::ServerTls>>,
}

impl Gate {
    /// A gate for `surface`.
    pub fn new(auth: Arc<Authenticator>, surface: Surface) -> Gate {
        Gate {
            auth,
            surface,
            refusals: None,
            agent_trust: None,
        }
    }

    /// Checks agents' certificates against `tls`'s settings in force at each call (they may have
    /// been revoked since the connection's handshake).
    pub fn trusting(mut self, tls: Option<Arc<tls::ServerTls>>) -> Gate {
        self.agent_trust = tls;
        self
    }

    fn admit<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = self.auth.admit(req, self.surface)?;
        if let (Principal::Agent { .. }, Some(t)) = (&p, &self.agent_trust) {
            t.verify_agent(&p.agent_chain()).map_err(|e| {
                Status::unauthenticated(format!("agent certificate no longer trusted: {e}"))
            })?;
        }
        Ok(p)
    }

    /// Counts refusals in `family` (by surface and code).
    pub fn counting(mut self, family: Family<RefusalLabels, Counter>) -> Gate {
        self.refusals = Some(family);
        self
    }
}

impl Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.admit(&req) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Ok(req)
            }
            Err(s) => {
                warn!(surface = ?self.surface, peer = ?req.remote_addr(), code = ?s.code(), "call refused: {}", s.message());
                if let Some(f) = &self.refusals {
                    f.get_or_create(&RefusalLabels {
                        surface: format!("{:?}", self.surface).to_lowercase(),
                        code: snake(&format!("{:?}", s.code())),
                    })
                    .inc();
                }
                Err(s)
            }
        }
    }
}

#[cfg(test)]
mod tests;
