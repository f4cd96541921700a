//! Bearer tokens: the tokens file (SHA-256 hashes only, never the tokens), minting new tokens, and
//! looking a presented token up.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is the right hash (as for GitHub or GitLab access
//! tokens): a slow password hash protects guessable secrets, and these are not guessable. A stolen
//! tokens file therefore gives an attacker nothing to present.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every greenslice token, so secret scanners can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "gst_";

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Requests, sees and changes only its own tenant's slices.
    Tenant,
    /// Everything: all tenants' slices, inventory, usage, energy reports, draining nodes.
    Ops,
}

/// One `[[token]]` entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (shown in logs and audit lines; never secret).
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// The tenant a `tenant` token acts for (required for tenant tokens, refused for ops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
    /// When the token stops working, seconds since the Unix epoch (absent: it does not expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {why}")]
    Invalid { path: String, why: String },
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    /// The entry's name.
    pub name: String,
    /// Its role.
    pub role: TokenRole,
    /// Its tenant (tenant tokens).
    pub tenant: Option<String>,
    /// When it stops working, seconds since the Unix epoch.
    pub expires_unix_s: Option<i64>,
}

impl TokenHolder {
    /// True when the token has expired at `now_unix_s`.
    pub fn expired(&self, now_unix_s: i64) -> bool {
        self.expires_unix_s.is_some_and(|e| now_unix_s >= e)
    }
}

/// The loaded tokens, keyed by hash.
#[derive(Debug, Clone, Default)]
pub struct TokenStore {
    by_hash: HashMap<[u8; 32], TokenHolder>,
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Mints a new random token and its tokens-file entry. The token is shown once; only the entry
/// (with the hash) is kept.
pub fn mint(
    name: &str,
    role: TokenRole,
    tenant: Option<&str>,
) -> Result<(String, TokenEntry), String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", to_hex(&bytes));
    let entry = TokenEntry {
        name: name.to_string(),
        role,
        tenant: tenant.map(str::to_string),
        sha256: to_hex(&hash_token(&token)),
        expires_unix_s: None,
    };
    check_entry(&entry)?;
    Ok((token, entry))
}

/// Renders entries as tokens-file TOML.
pub fn to_toml(entries: &[TokenEntry]) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        token: &'a [TokenEntry],
    }
    toml::to_string(&Out { token: entries }).unwrap_or_default()
}

fn check_entry(e: &TokenEntry) -> Result<(), String> {
    if e.name.is_empty() || e.name.len() > 128 || e.name.chars().any(char::is_control) {
        return Err(format!(
            "token name {:?} must be 1-128 printable characters",
            e.name
        ));
    }
    if from_hex(&e.sha256).is_none() {
        return Err(format!(
            "token {:?}: sha256 must be 64 lowercase hex digits",
            e.name
        ));
    }
    match (e.role, &e.tenant) {
        (TokenRole::Tenant, None) => {
            Err(format!("token {:?} has role tenant but no tenant", e.name))
        }
        (TokenRole::Tenant, Some(t)) => greenslice_core::slice::validate_tenant(t)
            .map_err(|err| format!("token {:?}: {err}", e.name)),
        (TokenRole::Ops, Some(_)) => Err(format!(
            "token {:?} has role ops and a tenant: ops tokens act for every tenant",
            e.name
        )),
        (TokenRole::Ops, None) => Ok(()),
    }
}

impl TokenStore {
    /// Parses a tokens file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<TokenStore, TokenFileError> {
        let invalid = |why: String| TokenFileError::Invalid {
            path: path.to_string(),
            why,
        };
        let file: TokenFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut by_hash = HashMap::new();
        let mut names = HashSet::new();
        for e in file.token {
            check_entry(&e).map_err(invalid)?;
            if !names.insert(e.name.clone()) {
                return Err(invalid(format!("token name {:?} appears twice", e.name)));
            }
            let hash = from_hex(&e.sha256).ok_or_else(|| invalid("bad sha256".into()))?;
            let holder = TokenHolder {
                name: e.name,
                role: e.role,
                tenant: e.tenant,
                expires_unix_s: e.expires_unix_s,
            };
            if by_hash.insert(hash, holder).is_some() {
                return Err(invalid("two entries have the same sha256".into()));
            }
        }
        Ok(TokenStore { by_hash })
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<TokenStore, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TokenStore::parse(&text, &path.display().to_string())
    }

    /// Who holds `token`, if anyone.
    pub fn lookup(&self, token: &str) -> Option<&TokenHolder> {
        self.by_hash.get(&hash_token(token))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_round_trip_through_the_file_and_only_the_hash_is_stored() {
        let (ta, ea) = mint("alice", TokenRole::Tenant, Some("team-a")).unwrap();
        let (to, eo) = mint("ops", TokenRole::Ops, None).unwrap();
        assert!(ta.starts_with(TOKEN_PREFIX) && ta.len() == 4 + 64);
        assert_ne!(ta, to);
        let text = to_toml(&[ea, eo]);
        assert!(!text.contains(&ta) && !text.contains(&to), "{text}");
        let store = TokenStore::parse(&text, "t").unwrap();
        assert_eq!(store.len(), 2);
        let a = store.lookup(&ta).unwrap();
        assert_eq!(
            (a.role, a.tenant.as_deref()),
            (TokenRole::Tenant, Some("team-a"))
        );
        assert_eq!(store.lookup(&to).unwrap().role, TokenRole::Ops);
        assert!(store.lookup("gst_nope").is_none());
        assert!(store.lookup(&ta[..ta.len() - 1]).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let h = to_hex(&hash_token("x"));
        let cases = [
            (
                format!("[[token]]\nname='a'\nrole='tenant'\nsha256='{h}'"),
                "no tenant",
            ),
            (
                format!("[[token]]\nname='a'\nrole='ops'\ntenant='t'\nsha256='{h}'"),
                "every tenant",
            ),
            (
                "[[token]]\nname='a'\nrole='ops'\nsha256='abc'".to_string(),
                "64 lowercase hex",
            ),
            (
                format!("[[token]]\nname='a'\nrole='root'\nsha256='{h}'"),
                "unknown variant",
            ),
            (
                format!(
                    "[[token]]\nname='a'\nrole='ops'\nsha256='{h}'\n[[token]]\nname='a'\nrole='ops'\nsha256='{}'",
                    to_hex(&hash_token("y"))
                ),
                "twice",
            ),
            (
                format!(
                    "[[token]]\nname='a'\nrole='ops'\nsha256='{h}'\n[[token]]\nname='b'\nrole='ops'\nsha256='{h}'"
                ),
                "same sha256",
            ),
            (
                format!("[[token]]\nname='a'\nrole='tenant'\ntenant='Bad Name!'\nsha256='{h}'"),
                "tenant",
            ),
            (
                format!("[[token]]\nname='a'\nrole='ops'\nsha256='{h}'\ntoken='plain'"),
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = TokenStore::parse(&text, "tokens.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?} gave {e:?}, want {want:?}");
            assert!(e.contains("tokens.toml"), "{e}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_store() {
        assert!(TokenStore::parse("", "t").unwrap().is_empty());
    }
}
