//! TLS on the controller's listener, and what an agent's client certificate says about it.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Where the controller's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM server certificate (chain).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA whose client certificates identify node agents (mutual TLS).
    pub agent_ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {path}: {source}")]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// The server's TLS settings: our identity, and client certificates verified against the agent
    /// CA when presented. Presenting one is optional at the TLS layer because tenants and ops
    /// authenticate with bearer tokens on the same port; the agent services refuse a caller
    /// without one (see [`super::Gate`]).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read("TLS certificate", &self.cert)?;
        let key = read("TLS key", &self.key)?;
        let ca = read("agent CA certificate", &self.agent_ca)?;
        Ok(server_config(cert, key, ca))
    }
}

/// The server's TLS settings from PEM: see [`TlsFiles::server_config`].
pub fn server_config(
    cert: impl AsRef<[u8]>,
    key: impl AsRef<[u8]>,
    agent_ca: impl AsRef<[u8]>,
) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(agent_ca))
        .client_auth_optional(true)
}

/// The DNS names (subject alternative names) of a certificate.
pub fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| e.to_string())?;
    Ok(cert.valid_dns_names().map(str::to_string).collect())
}

/// True when the (already chain-verified) agent certificate names `node` as a DNS SAN, i.e. the
/// agent may register as that node.
pub fn certifies_node(der: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn an_agent_certificate_certifies_only_its_own_node() {
        let pki = super::super::pki::generate(&["localhost".into()], &["gpu-7".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(pki.agents[0].1.cert.as_bytes()).unwrap();
        assert!(certifies_node(&der, "gpu-7"));
        assert!(!certifies_node(&der, "gpu-8"));
        assert!(!certifies_node(&der, "not a dns name"));
        assert!(!certifies_node(
            &CertificateDer::from(vec![1, 2, 3]),
            "gpu-7"
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let f = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
            agent_ca: "/nonexistent/ca.crt".into(),
        };
        let e = f.server_config().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/tls.crt"), "{e}");
    }
}
