//! Unit tests of `auth`.

use super::*;
use tonic::Code;

fn store() -> (TokenStore, String, String) {
    let (ta, ea) = tokens::mint("alice", TokenRole::Tenant, Some("team-a")).unwrap();
    let (to, eo) = tokens::mint("root", TokenRole::Ops, None).unwrap();
    (
        TokenStore::parse(&tokens::to_toml(&[ea, eo]), "t").unwrap(),
        ta,
        to,
    )
}

fn req(auth: Option<&str>) -> Request<()> {
    let mut r = Request::new(());
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    r
}

#[test]
fn tokens_map_to_principals_and_roles_are_checked_per_surface() {
    let (s, ta, to) = store();
    let auth = Authenticator::with_tokens(s);
    let p = auth
        .admit(&req(Some(&format!("Bearer {ta}"))), Surface::Tenant)
        .unwrap();
    assert_eq!(p.confined_to(), Some("team-a"));
    let e = auth
        .admit(&req(Some(&format!("Bearer {ta}"))), Surface::Ops)
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let p = auth
        .admit(&req(Some(&format!("bearer {to}"))), Surface::Ops)
        .unwrap();
    assert!(matches!(p, Principal::Ops { .. }));
    for bad in [
        None,
        Some("Bearer gst_00"),
        Some("Basic abc"),
        Some(to.as_str()),
        Some("Bearer "),
    ] {
        let e = auth.admit(&req(bad), Surface::Tenant).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad:?}");
    }
    // A token never opens the agent services; only a client certificate does.
    let e = auth
        .admit(&req(Some(&format!("Bearer {to}"))), Surface::Agent)
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[test]
fn tenants_may_call_only_the_listed_ops_methods() {
    let (s, ta, _) = store();
    let auth = Authenticator::with_tokens(s);
    let at = |path: Option<&str>| {
        let mut r = req(Some(&format!("Bearer {ta}")));
        if let Some(p) = path {
            r.extensions_mut().insert(RpcPath(p.to_string()));
        }
        auth.admit(&r, Surface::Ops)
    };
    for m in TENANT_OPS_METHODS {
        assert!(at(Some(m)).is_ok(), "{m}");
    }
    for m in [
        Some("/greenslice.v1.OpsService/Inventory"),
        Some("/greenslice.v1.OpsService/DrainNode"),
        Some("/greenslice.v1.OpsService/SomethingNew"),
        None,
    ] {
        assert_eq!(at(m).unwrap_err().code(), Code::PermissionDenied, "{m:?}");
    }
}

#[test]
fn an_expired_token_is_unauthenticated_and_says_so() {
    let (old, mut eo) = tokens::mint("old", TokenRole::Ops, None).unwrap();
    let (fresh, mut ef) = tokens::mint("fresh", TokenRole::Ops, None).unwrap();
    eo.expires_unix_s = Some(1_000); // 1970
    ef.expires_unix_s = Some(32_503_680_000); // year 3000
    let store = TokenStore::parse(&tokens::to_toml(&[eo, ef]), "t").unwrap();
    let auth = Authenticator::with_tokens(store);
    let e = auth
        .admit(&req(Some(&format!("Bearer {old}"))), Surface::Tenant)
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
    assert!(
        auth.admit(&req(Some(&format!("Bearer {fresh}"))), Surface::Tenant)
            .is_ok()
    );
}

#[test]
fn insecure_mode_admits_everyone_everywhere() {
    let auth = Authenticator::Insecure;
    for s in [Surface::Tenant, Surface::Ops, Surface::Agent] {
        assert_eq!(auth.admit(&req(None), s).unwrap(), Principal::Anyone);
    }
    assert!(Principal::Anyone.may_register("any-node").is_ok());
}

#[test]
fn a_tenant_acts_only_for_itself() {
    let t = Principal::Tenant {
        name: "alice".into(),
        tenant: "team-a".into(),
    };
    assert_eq!(t.act_as("").unwrap(), "team-a");
    assert_eq!(t.act_as("team-a").unwrap(), "team-a");
    assert_eq!(
        t.act_as("team-b").unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(t.may_access("team-a", "s1").is_ok());
    assert_eq!(
        t.may_access("team-b", "s1").unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(t.may_register("node-0").is_err());
    let ops = Principal::Ops { name: "o".into() };
    assert_eq!(ops.act_as("").unwrap(), "");
    assert_eq!(ops.act_as("team-b").unwrap(), "team-b");
    assert!(ops.may_access("team-b", "s1").is_ok());
    assert!(ops.may_register("node-0").is_err());
}

#[tokio::test]
async fn a_token_removed_from_the_file_is_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let (ta, ea) = tokens::mint("alice", TokenRole::Tenant, Some("team-a")).unwrap();
    let (tb, eb) = tokens::mint("bob", TokenRole::Tenant, Some("team-b")).unwrap();
    std::fs::write(&path, tokens::to_toml(&[ea.clone(), eb])).unwrap();
    let auth = Arc::new(Authenticator::from_file(path.clone()).unwrap());
    auth.spawn_reload(Duration::from_millis(20));
    let bearer = |t: &str| req(Some(&format!("Bearer {t}")));
    assert!(auth.admit(&bearer(&tb), Surface::Tenant).is_ok());
    // A broken edit keeps the previous tokens.
    std::fs::write(&path, "[[token]]\nname = 'half-written'\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(auth.admit(&bearer(&tb), Surface::Tenant).is_ok());
    // Revoking bob takes effect; alice stays.
    std::fs::write(&path, tokens::to_toml(&[ea])).unwrap();
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if auth.admit(&bearer(&tb), Surface::Tenant).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "revoked token still accepted");
    assert!(auth.admit(&bearer(&ta), Surface::Tenant).is_ok());
}

#[test]
fn requests_that_skipped_the_gate_are_refused() {
    assert_eq!(
        principal(&Request::new(())).unwrap_err().code(),
        Code::Unauthenticated
    );
}
