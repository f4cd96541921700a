//! Connecting to the controller: TLS (with an optional client certificate, which node agents
//! present) and a bearer token (which tenants and ops present). One home for what every client of
//! the controller (CLI, node agent, benchmarks, tests) needs to reach it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A certificate, key or token file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The URL or TLS settings are unusable.
    #[error("{0}")]
    Config(String),
    /// The controller could not be reached.
    #[error("cannot reach the controller at {url}: {source}")]
    Transport {
        url: String,
        source: tonic::transport::Error,
    },
}

/// How a client secures its connection to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA that signed the controller's certificate. `None` with an `https://` URL: the
    /// URL is refused (greenslice does not trust the system roots for its own controller).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key this client presents (node agents: their mTLS identity).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name the controller's certificate must carry; default: the URL's host.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the CA and, when both are given, the client certificate and key from PEM files.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, ConnectError> {
        let ca_pem = ca.map(|p| read(p, "CA certificate")).transpose()?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c, "certificate")?, read(k, "key")?)),
            (None, None) => None,
            _ => {
                return Err(ConnectError::Config(
                    "a client certificate needs both the certificate and the key file".into(),
                ));
            }
        };
        Ok(ClientTls {
            ca_pem,
            identity,
            server_name: None,
        })
    }
}

/// Where a client's TLS files are, for clients that connect again and again (node agents): read
/// before every connection, so rotated files take effect at the next one without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA that signed the controller's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl ClientTlsFiles {
    /// Reads the files (see [`ClientTls::from_files`]).
    pub fn read(&self) -> Result<ClientTls, ConnectError> {
        ClientTls::from_files(
            self.ca.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the endpoint for `url` (`http://` plaintext, `https://` TLS with `tls`), without
/// connecting.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, ConnectError> {
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| ConnectError::Config(format!("invalid controller URL {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let Some(ca) = &tls.ca_pem else {
            return Err(ConnectError::Config(format!(
                "{url} is https: give the CA that signed its certificate (CLI: --ca-cert or \
                 GREENSLICE_CA_CERT; agent: --ca-cert or [tls] ca_cert; controller to etcd: \
                 [etcd] ca_cert)"
            )));
        };
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(name) = &tls.server_name {
            cfg = cfg.domain_name(name.clone());
        }
        if let Some((cert, key)) = &tls.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        ep.tls_config(cfg)
            .map_err(|e| ConnectError::Config(format!("TLS settings for {url}: {e}")))
    } else if url.starts_with("http://") {
        if tls.identity.is_some() {
            return Err(ConnectError::Config(format!(
                "{url} is plaintext http but a client certificate was given: use https://"
            )));
        }
        Ok(ep)
    } else {
        Err(ConnectError::Config(format!(
            "controller URL {url:?} must start with http:// or https://"
        )))
    }
}

/// Connects to `url`.
pub async fn connect(url: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    endpoint(url, tls)?
        .connect()
        .await
        .map_err(|source| ConnectError::Transport {
            url: url.to_string(),
            source,
        })
}

/// Adds `authorization: Bearer <token>` to every call (nothing when there is no token).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// A bearer for `token`; an empty token sends nothing.
    pub fn new(token: Option<&str>) -> Result<Bearer, ConnectError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| Bearer(Some(v)))
                .map_err(|_| {
                    ConnectError::Config("the token has characters a header cannot carry".into())
                }),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that carries a bearer token on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Everything a tenant or ops client needs to reach the controller.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Controller URL.
    pub url: String,
    /// TLS settings.
    pub tls: ClientTls,
    /// Bearer token (tenants, ops).
    pub token: Option<String>,
}

impl Conn {
    /// A plaintext, token-less connection (a controller in `--insecure` mode).
    pub fn insecure(url: impl Into<String>) -> Conn {
        Conn {
            url: url.into(),
            ..Conn::default()
        }
    }

    /// Connects and wraps the channel with the token.
    pub async fn channel(&self) -> Result<Authed, ConnectError> {
        let bearer = Bearer::new(self.token.as_deref())?;
        let ch = connect(&self.url, &self.tls).await?;
        Ok(InterceptedService::new(ch, bearer))
    }

    /// A tenant-service client.
    pub async fn tenant(
        &self,
    ) -> Result<crate::v1::tenant_service_client::TenantServiceClient<Authed>, ConnectError> {
        Ok(crate::v1::tenant_service_client::TenantServiceClient::new(
            self.channel().await?,
        ))
    }

    /// An ops-service client.
    pub async fn ops(
        &self,
    ) -> Result<crate::v1::ops_service_client::OpsServiceClient<Authed>, ConnectError> {
        Ok(crate::v1::ops_service_client::OpsServiceClient::new(
            self.channel().await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_without_a_ca_is_refused_with_a_hint() {
        let e = endpoint("https://controller:7070", &ClientTls::default()).unwrap_err();
        assert!(e.to_string().contains("--ca-cert"), "{e}");
    }

    #[test]
    fn a_client_certificate_over_plaintext_is_refused() {
        let tls = ClientTls {
            identity: Some((b"c".to_vec(), b"k".to_vec())),
            ..ClientTls::default()
        };
        assert!(endpoint("http://127.0.0.1:7070", &tls).is_err());
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(endpoint("ftp://x", &ClientTls::default()).is_err());
        assert!(endpoint("127.0.0.1:7070", &ClientTls::default()).is_err());
    }

    #[test]
    fn bearer_adds_the_header_only_with_a_token() {
        let mut b = Bearer::new(Some("gst_abc")).unwrap();
        let r = b.call(tonic::Request::new(())).unwrap();
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer gst_abc");
        let mut none = Bearer::new(Some("  ")).unwrap();
        let r = none.call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
        assert!(Bearer::new(Some("bad\ntoken")).is_err());
    }
}
