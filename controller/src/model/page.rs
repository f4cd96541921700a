//! Pages of a list (AIP-158), pure: the filters a page is for, the opaque token that carries where
//! the previous page ended, and the page size rules.
//!
//! Paging is by key (keyset), never by offset: a token names the last key of the page it ended
//! (a slice id, which sorts by creation time; a node name), and the next page starts strictly after
//! it. A record that exists throughout is therefore listed exactly once however many records are
//! created or forgotten meanwhile, and a record created while paging is listed if its key sorts
//! after the cursor (slice ids made later always do).
//!
//! A token binds the filters it was made for (a fingerprint of them) and carries a checksum, so a
//! forged, truncated or mismatched token is refused instead of silently listing something else.
//! The checksum is not a secret: a token grants nothing, every page is authorized and filtered
//! again, and a fixed checksum keeps tokens valid across controller restarts and failovers.

use greenslice_core::slice::SliceState;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::slice::SliceRecord;

/// Why a page request is refused; each names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PageError {
    #[error("page_size must be 0 (the default, {default}) to {max}, got {got}")]
    Size {
        got: i32,
        default: usize,
        max: usize,
    },
    #[error(
        "page_token is not a token this controller made (forged or damaged); list again without it"
    )]
    Forged,
    #[error(
        "page_token was made for other filters (or another list); repeat the first page's filters or list again without it"
    )]
    Mismatch,
}

impl PageError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PageError::Size { .. } => "page_size",
            PageError::Forged | PageError::Mismatch => "page_token",
        }
    }
}

/// A list's page size rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Used when the request says 0.
    pub default: usize,
    /// The most a request may ask for.
    pub max: usize,
}

/// ListSlices: 500 slices of about 0.6 KiB are about 300 KiB; 2000 stay under 1.5 MiB.
pub const SLICE_PAGES: PageLimits = PageLimits {
    default: 500,
    max: 2000,
};

/// Inventory: a node of 8 GPUs with 56 MIG slices is about 30 KiB; 64 of them about 2 MiB.
pub const NODE_PAGES: PageLimits = PageLimits {
    default: 64,
    max: 256,
};

impl PageLimits {
    /// The page size for a request's `page_size`.
    pub fn size(&self, requested: i32) -> Result<usize, PageError> {
        match usize::try_from(requested) {
            Ok(0) => Ok(self.default),
            Ok(n) if n <= self.max => Ok(n),
            _ => Err(PageError::Size {
                got: requested,
                default: self.default,
                max: self.max,
            }),
        }
    }
}

/// Which slices a ListSlices page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceFilter {
    /// Only this tenant's (empty: all).
    pub tenant: String,
    /// Only those on this node (empty: all).
    pub node: String,
    /// Only those in this state; None: any live one, or any at all with `include_terminal`.
    pub state: Option<SliceState>,
    pub include_terminal: bool,
    /// Only those created at or after this time, ms since the Unix epoch.
    pub created_after_ms: i64,
}

impl SliceFilter {
    pub fn matches(&self, s: &SliceRecord) -> bool {
        (self.tenant.is_empty() || s.tenant == self.tenant)
            && (self.node.is_empty() || s.node == self.node)
            && match self.state {
                Some(st) => s.state == st,
                None => self.include_terminal || s.is_live(),
            }
            && s.created_ms >= self.created_after_ms
    }

    /// What a token binds: the list and every filter.
    fn scope(&self) -> String {
        format!(
            "slices\0{}\0{}\0{}\0{}\0{}",
            self.tenant,
            self.node,
            self.state.map_or("", |s| s.as_str()),
            self.include_terminal,
            self.created_after_ms
        )
    }
}

/// The scope a token of the inventory's node pages binds.
pub const NODE_SCOPE: &str = "nodes";

/// The scope of a slice list with `filter`.
pub fn slice_scope(filter: &SliceFilter) -> String {
    filter.scope()
}

const VERSION: &str = "1";

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"greenslice page token\0");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The token for the page after the one that ended at `last_key`, in `scope`.
pub fn token(scope: &str, last_key: &str) -> String {
    let fp = digest(&[scope]);
    let body = format!("{VERSION}.{}.{}", hex(last_key.as_bytes()), hex(&fp[..8]));
    let sum = digest(&[&body]);
    format!("{body}.{}", hex(&sum[..8]))
}

/// The key a token's page starts after (None for the empty token: the first page), checked
/// against `scope`.
pub fn resume_after(scope: &str, token: &str) -> Result<Option<String>, PageError> {
    if token.is_empty() {
        return Ok(None);
    }
    let (body, sum) = token.rsplit_once('.').ok_or(PageError::Forged)?;
    if unhex(sum).as_deref() != Some(&digest(&[body])[..8]) {
        return Err(PageError::Forged);
    }
    let mut parts = body.split('.');
    let (Some(VERSION), Some(key), Some(fp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PageError::Forged);
    };
    if unhex(fp).as_deref() != Some(&digest(&[scope])[..8]) {
        return Err(PageError::Mismatch);
    }
    let key = unhex(key)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(PageError::Forged)?;
    Ok(Some(key))
}

/// One page: the items, and the key to resume after when more may follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The last item's key when the page is full and more items follow; None on the last page.
    pub next_after: Option<String>,
}

/// Takes at most `size` of `items` (in key order, all after the cursor already); the page goes on
/// only if one more item exists.
pub fn take_page<'a, T: 'a>(items: impl Iterator<Item = (&'a str, T)>, size: usize) -> Page<T> {
    let mut out = Vec::with_capacity(size.min(1024));
    let mut last = None;
    let mut more = false;
    for (k, t) in items {
        if out.len() == size {
            more = true;
            break;
        }
        last = Some(k);
        out.push(t);
    }
    Page {
        items: out,
        next_after: if more { last.map(str::to_string) } else { None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_in_its_scope_only() {
        let t = token("slices\0alice", "s-0001");
        assert_eq!(
            resume_after("slices\0alice", &t),
            Ok(Some("s-0001".to_string()))
        );
        assert_eq!(resume_after("slices\0bob", &t), Err(PageError::Mismatch));
        assert_eq!(resume_after(NODE_SCOPE, &t), Err(PageError::Mismatch));
        assert_eq!(resume_after("x", ""), Ok(None));
    }

    #[test]
    fn a_changed_or_made_up_token_is_forged() {
        let t = token("s", "s-0001");
        // Point the cursor elsewhere, keeping the old checksum.
        let (body, sum) = t.rsplit_once('.').unwrap();
        let mut parts: Vec<&str> = body.split('.').collect();
        let other = hex(b"s-0009");
        parts[1] = &other;
        let moved = format!("{}.{sum}", parts.join("."));
        for bad in [
            moved.as_str(),
            "garbage",
            "1.73.00",
            &t[..t.len() - 1],
            &format!("{t}0"),
        ] {
            assert_eq!(resume_after("s", bad), Err(PageError::Forged), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(SLICE_PAGES.size(0), Ok(500));
        assert_eq!(SLICE_PAGES.size(7), Ok(7));
        assert_eq!(SLICE_PAGES.size(2000), Ok(2000));
        assert!(SLICE_PAGES.size(2001).is_err());
        assert!(SLICE_PAGES.size(-1).is_err());
    }

    #[test]
    fn a_page_goes_on_only_when_more_follow() {
        let keys = ["a", "b", "c"];
        let p = take_page(keys.iter().map(|k| (*k, *k)), 2);
        assert_eq!(p.items, ["a", "b"]);
        assert_eq!(p.next_after.as_deref(), Some("b"));
        let p = take_page(keys.iter().map(|k| (*k, *k)), 3);
        assert_eq!(p.items.len(), 3);
        assert_eq!(p.next_after, None);
    }
}
