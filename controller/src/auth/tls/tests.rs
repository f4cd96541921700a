//! Unit tests of `tls`.

use super::super::pki;
use super::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn pem_of(p: &pki::ClusterPki) -> TlsPem {
    TlsPem {
        cert: p.controller.cert.clone().into_bytes(),
        key: p.controller.key.clone().into_bytes(),
        agent_ca: p.ca.cert.clone().into_bytes(),
        agent_crl: Vec::new(),
    }
}

#[test]
fn an_agent_certificate_certifies_only_its_own_node() {
    let pki = pki::generate(&["localhost".into()], &["gpu-7".into()]).unwrap();
    let der = der(&pki.agents[0].1.cert);
    assert!(certifies_node(&der, "gpu-7"));
    assert!(!certifies_node(&der, "gpu-8"));
    assert!(!certifies_node(&der, "not a dns name"));
    assert!(!certifies_node(
        &CertificateDer::from(vec![1, 2, 3]),
        "gpu-7"
    ));
}

#[test]
fn der_contents_strips_one_element_and_refuses_the_rest() {
    assert_eq!(der_contents(&[0x30, 2, 5, 0]), Some(&[5u8, 0][..]));
    assert_eq!(der_contents(&[0x30, 0x81, 1, 9]), Some(&[9u8][..]));
    assert_eq!(der_contents(&[0x30, 3, 5, 0]), None);
    assert_eq!(der_contents(&[0x30]), None);
    assert_eq!(der_contents(&[0x30, 0x80]), None);
    assert_eq!(der_contents(&[]), None);
}

#[test]
fn missing_files_are_named() {
    let f = TlsFiles {
        cert: "/nonexistent/tls.crt".into(),
        key: "/nonexistent/tls.key".into(),
        agent_ca: "/nonexistent/ca.crt".into(),
        agent_crl: None,
    };
    let e = ServerTls::load(f).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/tls.crt"), "{e}");
}

#[test]
fn certificate_facts_are_read_and_garbage_is_not() {
    let pki = pki::generate(&["localhost".into()], &["n1".into()]).unwrap();
    let f = cert_facts(&der(&pki.controller.cert)).unwrap();
    let now_s = greenslice_core::clock::Clock::now_ms(&greenslice_core::clock::SystemClock) / 1000;
    // `pki` makes server certificates valid for a year from now.
    let year = pki::LEAF_VALIDITY_DAYS * 86_400;
    assert!((f.not_after_unix_s - (now_s + year)).abs() < 60, "{f:?}");
    assert!(!f.serial.is_empty());
    let other = cert_facts(&der(&pki.agents[0].1.cert)).unwrap();
    assert_ne!(f.serial, other.serial);
    assert_eq!(cert_facts(&[0x30, 0x03, 1, 2, 3]), None);
    assert_eq!(cert_facts(&[]), None);
}

#[test]
fn bad_material_is_refused_naming_the_part() {
    let a = pki::generate(&["localhost".into()], &[]).unwrap();
    let b = pki::generate(&["localhost".into()], &[]).unwrap();
    let ok = pem_of(&a);
    assert!(ServerTls::from_pem(ok.clone()).is_ok());
    let cases = [
        (
            TlsPem {
                key: b.controller.key.clone().into_bytes(),
                ..ok.clone()
            },
            "TLS key",
        ),
        (
            TlsPem {
                cert: b"not pem".to_vec(),
                ..ok.clone()
            },
            "TLS certificate",
        ),
        (
            TlsPem {
                agent_ca: Vec::new(),
                ..ok.clone()
            },
            "agent CA certificate",
        ),
        (
            TlsPem {
                agent_crl: b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_vec(),
                ..ok.clone()
            },
            "agent CA revocation list",
        ),
    ];
    for (pem, part) in cases {
        let e = ServerTls::from_pem(pem).unwrap_err().to_string();
        assert!(e.starts_with(part), "{part}: {e}");
    }
}

#[test]
fn a_refused_change_keeps_the_settings_in_force_and_a_good_one_replaces_them() {
    let a = pki::generate(&["localhost".into()], &["n1".into()]).unwrap();
    let b = pki::generate(&["localhost".into()], &["n1".into()]).unwrap();
    let tls = ServerTls::from_pem(pem_of(&a)).unwrap();
    let changes = tls.changes();
    let agent_a = vec![der(&a.agents[0].1.cert)];
    let agent_b = vec![der(&b.agents[0].1.cert)];
    tls.verify_agent(&agent_a).unwrap();
    assert!(tls.verify_agent(&agent_b).is_err());
    assert!(tls.verify_agent(&[]).is_err());
    assert_eq!(tls.apply(pem_of(&a)).unwrap(), Reload::Unchanged);
    // Half a rotation: b's certificate with a's key.
    let half = TlsPem {
        cert: b.controller.cert.clone().into_bytes(),
        ..pem_of(&a)
    };
    assert!(tls.apply(half).is_err());
    tls.verify_agent(&agent_a).unwrap();
    assert_eq!(*changes.borrow(), 0);
    assert_eq!(tls.metrics.files_invalid.get(), 1);
    assert_eq!(tls.metrics.reloads.get(), 0);
    assert_eq!(tls.apply(pem_of(&b)).unwrap(), Reload::Applied);
    assert_eq!(*changes.borrow(), 1);
    assert_eq!(tls.metrics.files_invalid.get(), 0);
    assert_eq!(tls.metrics.reloads.get(), 1);
    assert!(tls.metrics.cert_expiry.get() > 0);
    tls.verify_agent(&agent_b).unwrap();
    assert!(tls.verify_agent(&agent_a).is_err(), "the old CA is gone");
}

#[test]
fn a_revoked_agent_certificate_is_refused() {
    let p = pki::generate(&["localhost".into()], &["n1".into(), "n2".into()]).unwrap();
    let tls = ServerTls::from_pem(pem_of(&p)).unwrap();
    let n1 = vec![der(&p.agents[0].1.cert)];
    let n2 = vec![der(&p.agents[1].1.cert)];
    tls.verify_agent(&n1).unwrap();
    let crl = pki::revocation_list(&p.ca, &[p.agents[0].1.cert.clone()], "").unwrap();
    tls.apply(TlsPem {
        agent_crl: crl.clone().into_bytes(),
        ..pem_of(&p)
    })
    .unwrap();
    let e = tls.verify_agent(&n1).unwrap_err();
    assert!(e.to_lowercase().contains("revoked"), "{e}");
    tls.verify_agent(&n2).unwrap();
    // Revoking another keeps the first revoked; revoking again changes nothing.
    let both = pki::revocation_list(&p.ca, &[p.agents[1].1.cert.clone()], &crl).unwrap();
    let again = pki::revocation_list(&p.ca, &[p.agents[1].1.cert.clone()], &both).unwrap();
    tls.apply(TlsPem {
        agent_crl: again.into_bytes(),
        ..pem_of(&p)
    })
    .unwrap();
    assert!(tls.verify_agent(&n1).is_err());
    assert!(tls.verify_agent(&n2).is_err());
    assert_eq!(tls.current().revoked, 2);
    // A list signed by another CA does not load: it cannot speak for this one.
    let other = pki::generate(&["localhost".into()], &["n1".into()]).unwrap();
    let foreign = pki::revocation_list(&other.ca, &[other.agents[0].1.cert.clone()], "").unwrap();
    let e = tls
        .apply(TlsPem {
            agent_crl: foreign.into_bytes(),
            ..pem_of(&p)
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed by the agent CA"), "{e}");
    assert_eq!(tls.current().revoked, 2, "the list in force stays");
}
