//! A small private PKI for a greenslice cluster: one CA, the controller's server certificate and
//! one client certificate per node agent (its node name as DNS SAN, so the controller can check
//! an agent registers only as its own node). `greenslice-controller pki` writes them; tests
//! use the same code. Sites with their own CA or cert-manager use those instead: the controller
//! only needs PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Everything `pki` makes.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    /// The CA (signs the controller's and the agents' certificates).
    pub ca: Pem,
    /// The controller's server certificate.
    pub controller: Pem,
    /// One client certificate per agent, by node name.
    pub agents: Vec<(String, Pem)>,
}

/// Valid from a day ago (a skewed clock does not make fresh certificates invalid) for `days`.
/// (Until 2026-11 this rounded to calendar years: a "one-year" certificate made in November
/// expired on the first of January.)
fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
}

/// Days a controller or agent certificate made by [`generate`] is valid.
pub const LEAF_VALIDITY_DAYS: i64 = 365;

/// Days the CA made by [`generate`] is valid.
pub const CA_VALIDITY_DAYS: i64 = 10 * 365;

fn leaf(
    names: &[String],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'_, KeyPair>,
) -> Result<Pem, PkiError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    validity(&mut p, LEAF_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA's name and uses: one home, because a revocation list must name its issuer exactly as
/// the CA certificate does (see [`revocation_list`]).
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, "greenslice cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// A revocation list of the `pki` CA `ca` (its certificate and key) naming the certificates
/// `revoke` (PEM) and the serial numbers already listed in `previous` (a PEM list of this CA, or
/// empty): give it to the controller as `[security] agent_crl`. Valid for a year; the controller
/// does not refuse a list past its next update (an old list still revokes what it names).
pub fn revocation_list(ca: &Pem, revoke: &[String], previous: &str) -> Result<String, PkiError> {
    use rcgen::{CertificateRevocationListParams, RevokedCertParams, SerialNumber};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

    let key = KeyPair::from_pem(&ca.key)?;
    let issuer = rcgen::Issuer::new(ca_params()?, key);
    let now = time::OffsetDateTime::now_utc();
    let mut revoked: Vec<RevokedCertParams> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for crl in CertificateRevocationListDer::pem_slice_iter(previous.as_bytes()) {
        let crl = crl.map_err(|e| PkiError::Invalid(format!("previous revocation list: {e}")))?;
        let list = webpki::BorrowedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| PkiError::Invalid(format!("previous revocation list: {e}")))?;
        for r in &list {
            let r = r.map_err(|e| PkiError::Invalid(format!("previous revocation list: {e}")))?;
            let at = time::OffsetDateTime::from_unix_timestamp(r.revocation_date.as_secs() as i64)
                .unwrap_or(now);
            if seen.insert(r.serial_number.to_vec()) {
                revoked.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.serial_number),
                    revocation_time: at,
                    reason_code: None,
                    invalidity_date: None,
                });
            }
        }
    }
    for pem in revoke {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("certificate to revoke: {e}")))?;
        let facts = super::tls::cert_facts(&der)
            .ok_or_else(|| PkiError::Invalid("certificate to revoke: not X.509".into()))?;
        if seen.insert(facts.serial.clone()) {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&facts.serial),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(365),
        // Increases with time, so a newer list always has the larger number.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

/// Checks every name can go into a certificate as a DNS name or IP address.
fn check_names(controller_names: &[String], agents: &[String]) -> Result<(), PkiError> {
    for (what, name) in controller_names
        .iter()
        .map(|n| ("controller name", n))
        .chain(agents.iter().map(|n| ("node name", n)))
    {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(PkiError::Invalid(format!(
                "{what} {name:?} is not a DNS name or IP address"
            )));
        }
    }
    Ok(())
}

fn controller_leaf(names: &[String], ca: &rcgen::Issuer<'_, KeyPair>) -> Result<Pem, PkiError> {
    if names.is_empty() {
        return Err(PkiError::Invalid(
            "give at least one name the controller is reached by".into(),
        ));
    }
    leaf(
        names,
        "greenslice-controller",
        ExtendedKeyUsagePurpose::ServerAuth,
        ca,
    )
}

fn agent_leaves(
    agents: &[String],
    ca: &rcgen::Issuer<'_, KeyPair>,
) -> Result<Vec<(String, Pem)>, PkiError> {
    agents
        .iter()
        .map(|node| {
            let pem = leaf(
                std::slice::from_ref(node),
                &format!("greenslice-agent {node}"),
                ExtendedKeyUsagePurpose::ClientAuth,
                ca,
            )?;
            Ok((node.clone(), pem))
        })
        .collect()
}

/// Makes a CA, a server certificate for `controller_names` (DNS names or IP addresses) and a client
/// certificate for each node in `agents`.
pub fn generate(controller_names: &[String], agents: &[String]) -> Result<ClusterPki, PkiError> {
    check_names(controller_names, agents)?;
    let mut p = ca_params()?;
    validity(&mut p, CA_VALIDITY_DAYS);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(p, ca_key)?;
    Ok(ClusterPki {
        controller: controller_leaf(controller_names, &ca)?,
        agents: agent_leaves(agents, &ca)?,
        ca: Pem {
            cert: ca.pem(),
            key: ca_key_pem,
        },
    })
}

/// Certificates issued by an existing CA (see [`issue`]).
#[derive(Debug, Clone)]
pub struct Issued {
    /// A new server certificate, when asked for.
    pub controller: Option<Pem>,
    /// New client certificates, by node name.
    pub agents: Vec<(String, Pem)>,
}

/// Issues certificates with the `pki` CA `ca` (its certificate and key): a server certificate for
/// `controller_names` when given (renewal before expiry), and a client certificate for each node in
/// `agents` (a new node, or a renewed or replaced certificate: revoke the old one).
pub fn issue(
    ca: &Pem,
    controller_names: Option<&[String]>,
    agents: &[String],
) -> Result<Issued, PkiError> {
    check_names(controller_names.unwrap_or_default(), agents)?;
    let ca = rcgen::Issuer::new(ca_params()?, KeyPair::from_pem(&ca.key)?);
    Ok(Issued {
        controller: controller_names
            .map(|names| controller_leaf(names, &ca))
            .transpose()?,
        agents: agent_leaves(agents, &ca)?,
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

/// Writes `(name, PEM, secret)` files into `dir` (created if missing; secrets readable by the owner
/// only). Returns the paths written.
fn write_all(dir: &Path, files: Vec<(String, &str, bool)>) -> Result<Vec<PathBuf>, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let p = dir.join(name);
        write(&p, text, secret)?;
        written.push(p);
    }
    Ok(written)
}

/// The file names and texts of a server certificate and agent certificates.
fn leaf_files<'a>(
    controller: Option<&'a Pem>,
    agents: &'a [(String, Pem)],
) -> Vec<(String, &'a str, bool)> {
    let mut files = Vec::new();
    if let Some(c) = controller {
        files.push(("controller.crt".to_string(), c.cert.as_str(), false));
        files.push(("controller.key".to_string(), c.key.as_str(), true));
    }
    for (node, pem) in agents {
        files.push((format!("agent-{node}.crt"), pem.cert.as_str(), false));
        files.push((format!("agent-{node}.key"), pem.key.as_str(), true));
    }
    files
}

impl ClusterPki {
    /// Writes `ca.crt`, `ca.key`, `controller.crt`, `controller.key`, and `agent-<node>.crt` /
    /// `.key` into `dir` (keys readable by the owner only). Returns the paths written.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
        let mut files = vec![
            ("ca.crt".to_string(), self.ca.cert.as_str(), false),
            ("ca.key".to_string(), self.ca.key.as_str(), true),
        ];
        files.extend(leaf_files(Some(&self.controller), &self.agents));
        write_all(dir, files)
    }
}

impl Issued {
    /// Writes `controller.crt`/`.key` (if issued) and `agent-<node>.crt`/`.key` into `dir`,
    /// replacing those there. Returns the paths written.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
        write_all(dir, leaf_files(self.controller.as_ref(), &self.agents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_name_their_node_and_chain_to_the_ca() {
        let pki = generate(
            &["localhost".into(), "127.0.0.1".into()],
            &["node-0".into()],
        )
        .unwrap();
        let (node, pem) = &pki.agents[0];
        assert_eq!(node, "node-0");
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
        let names = super::super::tls::dns_names(&der).unwrap();
        assert_eq!(names, vec!["node-0".to_string()]);
        assert!(pki.ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.controller.key.contains("PRIVATE KEY"));
    }

    #[test]
    fn certificates_issued_later_chain_to_the_same_ca() {
        use rustls_pki_types::pem::PemObject;
        let pki = generate(&["localhost".into()], &["n1".into()]).unwrap();
        let more = issue(&pki.ca, Some(&["localhost".into()]), &["n2".into()]).unwrap();
        let tls = super::super::tls::ServerTls::from_pem(super::super::tls::TlsPem {
            cert: more.controller.unwrap().cert.into_bytes(),
            key: pki.controller.key.clone().into_bytes(),
            agent_ca: pki.ca.cert.clone().into_bytes(),
            agent_crl: Vec::new(),
        });
        assert!(tls.is_err(), "a renewed certificate has a new key");
        let tls = super::super::tls::ServerTls::from_pem(super::super::tls::TlsPem {
            cert: pki.controller.cert.clone().into_bytes(),
            key: pki.controller.key.clone().into_bytes(),
            agent_ca: pki.ca.cert.clone().into_bytes(),
            agent_crl: Vec::new(),
        })
        .unwrap();
        let n2 = rustls_pki_types::CertificateDer::from_pem_slice(more.agents[0].1.cert.as_bytes())
            .unwrap();
        tls.verify_agent(&[n2]).unwrap();
        let other = generate(&["localhost".into()], &[]).unwrap();
        let foreign = issue(&other.ca, None, &["n3".into()]).unwrap();
        let n3 =
            rustls_pki_types::CertificateDer::from_pem_slice(foreign.agents[0].1.cert.as_bytes())
                .unwrap();
        assert!(tls.verify_agent(&[n3]).is_err());
        assert!(issue(&pki.ca, None, &["not a name".into()]).is_err());
        assert!(issue(&pki.ca, Some(&[]), &[]).is_err());
    }

    #[test]
    fn keys_are_written_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(&["localhost".into()], &["n1".into()]).unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        assert_eq!(files.len(), 6);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("agent-n1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
    }
}
