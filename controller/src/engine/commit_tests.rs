//! Memory never runs ahead of the ledger: a commit that fails leaves memory as the ledger holds it,
//! and an idempotent retry during a request's in-flight PENDING commit answers only once that
//! commit is durable. The ledger here fails or holds commits on demand; it shares no code with
//! the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenslice_core::clock::ManualClock;
use greenslice_core::slice::SliceState;
use tokio::sync::watch;

use super::retention_tests::{T0, controller, fake_node, retention, share, spec};
use crate::ledger::{Commit, Ledger, LedgerError, LoadHours, MemoryLedger, Op};
use crate::model::slice::SliceRecord;

/// A memory ledger that refuses submissions while `fail` is set (storing nothing), and holds the
/// durability of every submission while `hold` is true.
struct Flaky {
    inner: MemoryLedger,
    fail: AtomicBool,
    hold: watch::Sender<bool>,
}

impl Flaky {
    fn new() -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: MemoryLedger::default(),
            fail: AtomicBool::new(false),
            hold: watch::Sender::new(false),
        })
    }
}

impl Ledger for Flaky {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        let mut held = self.hold.subscribe();
        let fail = self.fail.load(Ordering::SeqCst);
        let inner = (!fail).then(|| self.inner.submit(ops));
        Box::pin(async move {
            let _ = held.wait_for(|h| !*h).await;
            match inner {
                Some(c) => c.await,
                None => Err(LedgerError::Unavailable("refused on demand".into())),
            }
        })
    }
    fn load(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>,
    > {
        self.inner.load()
    }
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_> {
        self.inner.load_hours(from_ms, to_ms)
    }
    fn load_events(&self) -> crate::ledger::LoadEvents<'_> {
        self.inner.load_events()
    }
}

/// Polls `f` for up to 5 s.
async fn eventually<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn stored(l: &Flaky, id: &str) -> Option<SliceRecord> {
    l.inner
        .load()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
}

/// A controller on a [`Flaky`] ledger with a node of 2 GPUs.
async fn started() -> (Arc<Flaky>, Arc<crate::engine::Controller>) {
    let ledger = Flaky::new();
    let clock = ManualClock::new(T0);
    let c = controller(
        ledger.clone(),
        &clock,
        retention(Duration::from_secs(600), 100),
    )
    .await;
    fake_node(&c, 2);
    (ledger, c)
}

/// A share request for `tenant` with idempotency `key`, running on its own task.
fn spawn_request(
    c: &Arc<crate::engine::Controller>,
    tenant: &'static str,
    fraction: f64,
    key: &'static str,
) -> tokio::task::JoinHandle<Result<crate::engine::Requested, crate::error::ControllerError>> {
    let c = c.clone();
    tokio::spawn(async move { c.request(tenant, &spec(share(fraction)), key).await })
}

#[tokio::test]
async fn a_failed_commit_leaves_memory_as_the_ledger_holds_it() {
    let (ledger, c) = started().await;

    // A request whose PENDING commit fails: nothing anywhere, and the capacity is free again.
    ledger.fail.store(true, Ordering::SeqCst);
    let e = c.request("team-a", &spec(share(0.5)), "k1").await;
    assert!(e.is_err());
    assert_eq!(c.with_state(|st| st.slice_count()), 0);
    assert!(ledger.inner.load().await.unwrap().is_empty());

    // An active slice whose release commit fails: still ACTIVE in memory and in the ledger.
    ledger.fail.store(false, Ordering::SeqCst);
    let s = c
        .request("team-a", &spec(share(0.5)), "k2")
        .await
        .unwrap()
        .slice;
    assert_eq!(s.state, SliceState::Active);
    // The ACTIVE commit went in the background: let it land.
    assert!(
        eventually(|| async {
            stored(&ledger, &s.id)
                .await
                .is_some_and(|r| r.state == SliceState::Active)
        })
        .await
    );
    ledger.fail.store(true, Ordering::SeqCst);
    assert!(c.release(&s.id, "done").await.is_err());
    let mem = c.get(&s.id).unwrap();
    let disk = stored(&ledger, &s.id).await.expect("still stored");
    assert_eq!(mem.state, SliceState::Active, "memory ran ahead: {mem:?}");
    assert_eq!(
        mem, disk,
        "memory and ledger disagree after a failed commit"
    );
    // Once the ledger is back, the release goes through.
    ledger.fail.store(false, Ordering::SeqCst);
    let r = c.release(&s.id, "done").await.unwrap();
    assert_eq!(r.state, SliceState::Released);
}

#[tokio::test]
async fn a_retry_during_the_pending_commit_waits_for_it() {
    let (ledger, c) = started().await;

    ledger.hold.send_replace(true);
    let first = spawn_request(&c, "team-a", 0.5, "same");
    // The first request placed its slice (PENDING, in memory) and waits for its commit.
    assert!(eventually(|| async { c.with_state(|st| st.slice_count()) == 1 }).await);
    let retry = spawn_request(&c, "team-a", 0.5, "same");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !retry.is_finished(),
        "the retry answered from a record that is not durable yet"
    );
    ledger.hold.send_replace(false);
    let a = first.await.unwrap().unwrap();
    let b = retry.await.unwrap().unwrap();
    assert!(!a.replayed && b.replayed);
    assert_eq!(a.slice.id, b.slice.id);
    assert!(stored(&ledger, &a.slice.id).await.is_some());

    // The same, but the held commit fails: the retry does not return the phantom slice; it is
    // placed anew.
    ledger.hold.send_replace(true);
    ledger.fail.store(true, Ordering::SeqCst);
    let first = spawn_request(&c, "team-b", 0.25, "again");
    assert!(eventually(|| async { c.with_state(|st| st.slice_count()) == 2 }).await);
    let retry = spawn_request(&c, "team-b", 0.25, "again");
    tokio::time::sleep(Duration::from_millis(100)).await;
    ledger.fail.store(false, Ordering::SeqCst);
    ledger.hold.send_replace(false);
    assert!(first.await.unwrap().is_err());
    let b = retry.await.unwrap().unwrap();
    assert!(!b.replayed, "a retry of a failed request is a new request");
    assert!(stored(&ledger, &b.slice.id).await.is_some());
}
