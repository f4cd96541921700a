//! TLS on the controller's listener, and what an agent's client certificate says about it.
//!
//! [`ServerTls`] holds the server certificate, the agent CA and the agent CA's revocation lists as
//! one rustls configuration, and re-reads their files while the controller runs
//! ([`ServerTls::spawn_reload`]): cert-manager or an operator can rotate the server certificate,
//! change the agent CA, or revoke an agent's certificate without a restart. A change that does not
//! load (a half-written rotation, a key that does not match its certificate) is refused and the
//! previous settings stay. New connections get the new settings; agent sessions already open are
//! checked again against them and ended if their certificate is no longer trusted
//! ([`ServerTls::verify_agent`], [`ServerTls::changes`]).
//!
//! [`incoming`] accepts TCP connections and completes each TLS handshake in its own task (with a
//! deadline), so the one listener serves tonic with the configuration current at each accept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};

/// A client that has not finished its TLS handshake this long after connecting is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the controller's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM server certificate (chain).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA whose client certificates identify node agents (mutual TLS).
    pub agent_ca: PathBuf,
    /// PEM certificate revocation lists of the agent CA (optional): a listed agent certificate is
    /// refused.
    pub agent_crl: Option<PathBuf>,
}

/// The parts of the TLS settings, each from its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    AgentCa,
    AgentCrl,
}

impl Part {
    /// How errors name it.
    pub fn what(self) -> &'static str {
        match self {
            Part::Cert => "TLS certificate",
            Part::Key => "TLS key",
            Part::AgentCa => "agent CA certificate",
            Part::AgentCrl => "agent CA revocation list",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what())
    }
}

/// Why TLS could not be set up (or a change of its files was refused).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: Part,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} ({origin}): {reason}")]
    Invalid {
        what: Part,
        origin: String,
        reason: String,
    },
}

/// The PEM texts one configuration is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub agent_ca: Vec<u8>,
    /// Empty: no revocation lists.
    pub agent_crl: Vec<u8>,
}

fn read(what: Part, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// Reads the files (all of them, every time: comparing contents, not modification times,
    /// also catches a Kubernetes Secret's symlink swap).
    pub fn read(&self) -> Result<TlsPem, TlsError> {
        Ok(TlsPem {
            cert: read(Part::Cert, &self.cert)?,
            key: read(Part::Key, &self.key)?,
            agent_ca: read(Part::AgentCa, &self.agent_ca)?,
            agent_crl: match &self.agent_crl {
                Some(p) => read(Part::AgentCrl, p)?,
                None => Vec::new(),
            },
        })
    }

    fn origin(&self, part: Part) -> String {
        let p = match part {
            Part::Cert => &self.cert,
            Part::Key => &self.key,
            Part::AgentCa => &self.agent_ca,
            Part::AgentCrl => self.agent_crl.as_ref().unwrap_or(&self.cert),
        };
        p.display().to_string()
    }
}

/// One loaded configuration.
struct Loaded {
    pem: TlsPem,
    config: Arc<ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// When the server certificate expires (seconds since the Unix epoch), if it could be read.
    not_after_unix_s: Option<i64>,
    revoked: usize,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server's TLS configuration from PEM: our identity, and client certificates verified
/// against the agent CA (and its revocation lists) when presented. Presenting one is optional at
/// the TLS layer because tenants and ops authenticate with bearer tokens on the same port; the
/// agent services refuse a caller without one (see [`super::Gate`]). `origin` names where each
/// part came from, for errors.
fn build(pem: TlsPem, origin: &dyn Fn(Part) -> String) -> Result<Loaded, TlsError> {
    let invalid = |what: Part, reason: String| TlsError::Invalid {
        what,
        origin: origin(what),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(Part::Cert, format!("not PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(Part::Cert, "no certificate in the file".into()));
    };
    let not_after_unix_s = cert_facts(leaf).map(|f| f.not_after_unix_s);
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| invalid(Part::Key, format!("no PEM private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem.agent_ca) {
        let c = c.map_err(|e| invalid(Part::AgentCa, format!("not PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| invalid(Part::AgentCa, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid(Part::AgentCa, "no certificate in the file".into()));
    }
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(&pem.agent_crl)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(Part::AgentCrl, format!("not PEM: {e}")))?;
    // A list from another CA would make every agent's revocation status unknown, and so refused
    // (or fail its signature check at every handshake): refuse the list instead, keeping the
    // settings in force. Two `pki` CAs share their name, so the signature decides.
    let mut revoked = 0;
    for crl in &crls {
        let list = webpki::BorrowedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| invalid(Part::AgentCrl, e.to_string()))?;
        revoked += (&list).into_iter().filter(Result::is_ok).count();
        if !roots.roots.iter().any(|ca| signed_by(crl.as_ref(), ca)) {
            return Err(invalid(
                Part::AgentCrl,
                "a list is not signed by the agent CA".into(),
            ));
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        // Only the agent's own certificate is looked up in the lists: the CA is the trust anchor.
        .only_check_end_entity_revocation()
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid(Part::AgentCrl, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(Part::Cert, e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|e| invalid(Part::Key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        pem,
        config: Arc::new(config),
        verifier,
        not_after_unix_s,
        revoked,
    })
}

/// True when the revocation list `crl` (DER) carries a valid signature of the trust anchor `ca`
/// (with one of the signature algorithms rustls verifies certificates with).
fn signed_by(crl: &[u8], ca: &rustls_pki_types::TrustAnchor<'_>) -> bool {
    let parsed = yasna::parse_der(crl, |r| {
        r.read_sequence(|r| {
            let tbs = r.next().read_der()?;
            let alg = r.next().read_der()?;
            let (sig, _) = r.next().read_bitvec_bytes()?;
            Ok((tbs, alg, sig))
        })
    });
    let spki = webpki::spki_for_anchor(ca);
    let key = yasna::parse_der(spki.as_ref(), |r| {
        r.read_sequence(|r| {
            let alg = r.next().read_der()?;
            let (key, _) = r.next().read_bitvec_bytes()?;
            Ok((alg, key))
        })
    });
    let (Ok((tbs, sig_alg, sig)), Ok((key_alg, key))) = (parsed, key) else {
        return false;
    };
    let (Some(sig_alg), Some(key_alg)) = (der_contents(&sig_alg), der_contents(&key_alg)) else {
        return false;
    };
    provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|a| a.signature_alg_id().as_ref() == sig_alg)
        .filter(|a| a.public_key_alg_id().as_ref() == key_alg)
        .any(|a| a.verify_signature(&key, &tbs, &sig).is_ok())
}

/// The contents of one DER element (its tag and length stripped), if `tlv` is exactly one.
fn der_contents(tlv: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = tlv.get(1..).and_then(|r| r.split_first())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() == len).then_some(rest)
}

/// What the TLS settings show ops (registered by the server's `serve_with`).
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    /// `greenslice_tls_certificate_expiry_timestamp_seconds`: the server certificate in force
    /// expires then (alert well before).
    pub cert_expiry: Gauge,
    /// `greenslice_tls_reloads_total`: changes of the TLS files applied.
    pub reloads: Counter,
    /// `greenslice_tls_files_invalid`: 1 while the files differ from the settings in force and do
    /// not load (a rotation is failing), else 0.
    pub files_invalid: Gauge,
}

/// The server's TLS settings, reloadable. Cheap to share; see the module docs.
pub struct ServerTls {
    /// None: built from PEM in memory (tests), nothing to reload.
    files: Option<TlsFiles>,
    current: RwLock<Arc<Loaded>>,
    /// Bumped at every applied change.
    generation: watch::Sender<u64>,
    pub metrics: TlsMetrics,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last loaded.
    Unchanged,
    /// The files changed and the new settings are in force.
    Applied,
}

impl ServerTls {
    /// Loads the files (see [`Self::spawn_reload`] to follow their changes).
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let pem = files.read()?;
        let loaded = build(pem, &|part| files.origin(part))?;
        Ok(Self::new(Some(files), loaded))
    }

    /// Settings from PEM in memory (tests, embedding); never reloaded.
    pub fn from_pem(pem: TlsPem) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = build(pem, &|_| "in memory".to_string())?;
        Ok(Self::new(None, loaded))
    }

    fn new(files: Option<TlsFiles>, loaded: Loaded) -> Arc<ServerTls> {
        info!(
            agent_crl_entries = loaded.revoked,
            cert_not_after_unix_s = ?loaded.not_after_unix_s,
            "TLS settings loaded"
        );
        let metrics = TlsMetrics::default();
        metrics
            .cert_expiry
            .set(loaded.not_after_unix_s.unwrap_or(0));
        Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(loaded)),
            generation: watch::channel(0).0,
            metrics,
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().config.clone())
    }

    /// When the server certificate in force expires (seconds since the Unix epoch).
    pub fn cert_not_after_unix_s(&self) -> Option<i64> {
        self.current().not_after_unix_s
    }

    /// Applies new PEM texts if they differ from those in force and load; on an error the settings
    /// in force stay.
    pub fn apply(&self, pem: TlsPem) -> Result<Reload, TlsError> {
        if self.current().pem == pem {
            self.metrics.files_invalid.set(0);
            return Ok(Reload::Unchanged);
        }
        let built = match &self.files {
            Some(f) => build(pem, &|part| f.origin(part)),
            None => build(pem, &|_| "in memory".to_string()),
        };
        self.metrics.files_invalid.set(i64::from(built.is_err()));
        let loaded = built?;
        self.metrics
            .cert_expiry
            .set(loaded.not_after_unix_s.unwrap_or(0));
        self.metrics.reloads.inc();
        info!(
            agent_crl_entries = loaded.revoked,
            cert_not_after_unix_s = ?loaded.not_after_unix_s,
            "TLS settings changed; new connections use them and agent sessions are checked again"
        );
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        self.generation.send_modify(|g| *g += 1);
        Ok(Reload::Applied)
    }

    /// Re-reads the files and applies them if they changed (see [`Self::apply`]).
    pub fn reload(&self) -> Result<Reload, TlsError> {
        match &self.files {
            Some(f) => match f.read() {
                Ok(pem) => self.apply(pem),
                Err(e) => {
                    self.metrics.files_invalid.set(1);
                    Err(e)
                }
            },
            None => Ok(Reload::Unchanged),
        }
    }

    /// Re-reads the files every `every` for as long as `self` lives. A failure is logged once per
    /// distinct error (and shown by [`TlsMetrics::files_invalid`] meanwhile).
    pub fn spawn_reload(self: &Arc<Self>, every: Duration) {
        if self.files.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { return };
                match me.reload() {
                    Ok(_) => last_error.clear(),
                    Err(e) => {
                        let msg = e.to_string();
                        if msg != last_error {
                            error!(error = %msg, "TLS files changed but do not load; keeping the settings in force");
                            last_error = msg;
                        }
                    }
                }
            }
        });
    }

    /// Follows applied changes (the value counts them): open agent sessions check their
    /// certificate again at each.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Checks an agent's certificate chain (leaf first) against the agent CA and revocation lists
    /// in force now, and its validity at this moment.
    pub fn verify_agent(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no client certificate".into());
        };
        self.current()
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Accepts connections on `listener` and yields them once their TLS handshake (with the settings
/// in force at the accept) is complete. Handshakes run in their own tasks with
/// [`HANDSHAKE_TIMEOUT`], so a slow or silent client holds up nobody. Ends when the returned stream
/// is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Nagle's algorithm with delayed ACKs adds ~40 ms to every command round trip on the
            // agent stream.
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// What the controller reads from a certificate besides what rustls checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The serial number's bytes (as encoded: big-endian, possibly with a leading zero).
    pub serial: Vec<u8>,
    /// The end of its validity, seconds since the Unix epoch.
    pub not_after_unix_s: i64,
}

/// Reads a certificate's serial number and expiry (None if it is not an X.509 certificate).
pub fn cert_facts(der: &[u8]) -> Option<CertFacts> {
    use yasna::Tag;
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let facts = r.next().read_sequence(|r| {
                // version [0] EXPLICIT, absent in v1 certificates.
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_i64()))?;
                let (serial, _) = r.next().read_bigint_bytes()?;
                r.next().read_der()?; // signature algorithm
                r.next().read_der()?; // issuer
                let not_after = r.next().read_sequence(|r| {
                    r.next().read_der()?; // not before
                    let t = r.next();
                    if t.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
                        Ok(t.read_utctime()?.datetime().unix_timestamp())
                    } else {
                        Ok(t.read_generalized_time()?.datetime().unix_timestamp())
                    }
                })?;
                // subject, public key, then optional unique ids and extensions.
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(CertFacts {
                    serial,
                    not_after_unix_s: not_after,
                })
            })?;
            r.next().read_der()?; // signature algorithm
            r.next().read_der()?; // signature
            Ok(facts)
        })
    })
    .ok()
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
mod tests;
