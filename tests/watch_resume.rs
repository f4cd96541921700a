//! Resumable watches: every slice event carries a revision; a watcher that went away resumes from
//! its last revision and gets each event it missed exactly once and in order; list then watch from
//! the list's revision misses nothing; a revision no longer kept (or from before a controller
//! restart) is refused with OUT_OF_RANGE and reason REVISION_COMPACTED.

mod common;

use std::time::Duration;

use common::{free_port, start_controller};
use greenslice::harness::{self, ClusterSpec, NodeSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::engine::CoreConfig;
use greenslice_proto::v1 as pb;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn share_req(tenant: &str) -> pb::RequestSliceRequest {
    pb::RequestSliceRequest {
        tenant: tenant.into(),
        spec: Some(pb::SliceSpec {
            kind: Some(Kind::Share(pb::ShareSlice {
                compute_fraction: 0.1,
                memory_bytes: 1 << 30,
            })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
        ..Default::default()
    }
}

/// What identifies an event: its revision, kind, slice and the slice's state.
type Seen = (u64, i32, String, i32);

fn seen(ev: &pb::SliceEvent) -> Seen {
    let (id, state) = ev
        .slice
        .as_ref()
        .map_or((String::new(), 0), |s| (s.id.clone(), s.state));
    (ev.revision, ev.kind, id, state)
}

async fn watch(
    c: &mut TenantServiceClient<Channel>,
    from: u64,
) -> Result<tonic::Streaming<pb::SliceEvent>, tonic::Status> {
    c.watch_slices(pb::WatchSlicesRequest {
        start_revision: from,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The next `n` events of a stream (panics after 10 s).
async fn take(s: &mut tonic::Streaming<pb::SliceEvent>, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("an event, not an error");
        out.push(seen(&ev));
    }
    out
}

/// State events of one request and release: ACTIVE, RELEASING, RELEASED.
const PER: usize = 3;

/// Requests and releases `n` slices: [`PER`] state events each.
async fn churn(c: &mut TenantServiceClient<Channel>, n: usize) {
    for _ in 0..n {
        let s = c
            .request_slice(share_req("team-a"))
            .await
            .unwrap()
            .into_inner()
            .slice
            .unwrap();
        c.release_slice(pb::ReleaseSliceRequest { slice_id: s.id })
            .await
            .unwrap();
    }
}

fn compacted(s: &tonic::Status) -> bool {
    s.code() == Code::OutOfRange
        && s.get_error_details()
            .error_info()
            .is_some_and(|i| i.reason == "REVISION_COMPACTED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_away_for_10_s_resumes_and_gets_each_missed_event_once_in_order() {
    let cluster = harness::start(ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0)))
        .await
        .unwrap();
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    churn(&mut c, 2).await;
    // List, then watch from the list's revision: a control that stays connected throughout...
    let listed = c
        .list_slices(pb::ListSlicesRequest {
            include_terminal: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.slices.len(), 2);
    let mut control = watch(&mut c, listed.revision).await.unwrap();
    // ...and a watcher that sees a few events, then goes away.
    let mut away = watch(&mut c, listed.revision).await.unwrap();
    churn(&mut c, 3).await;
    // It goes away in the middle of the third slice's events.
    let before = take(&mut away, 7).await;
    drop(away);
    let last = before.last().unwrap().0;
    // Away for 10 s while slices come and go.
    let t0 = tokio::time::Instant::now();
    let mut missed_n = 3 * PER - 7;
    while t0.elapsed() < Duration::from_secs(10) {
        churn(&mut c, 1).await;
        missed_n += PER;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut resumed = watch(&mut c, last).await.unwrap();
    let missed = take(&mut resumed, missed_n).await;
    let all = take(&mut control, 7 + missed_n).await;
    assert_eq!(
        before,
        all[..7],
        "the first watcher saw what the control saw"
    );
    assert_eq!(
        missed,
        all[7..],
        "each missed event once, in order, nothing else"
    );
    // Revisions are consecutive and the events are the slices' real changes.
    for w in all.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
    }
    assert!(all[0].0 > listed.revision);
    // And it goes on live.
    churn(&mut c, 1).await;
    assert_eq!(take(&mut resumed, PER).await, take(&mut control, PER).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_no_longer_kept_is_refused_as_compacted_and_bookmarks_keep_an_idle_watcher_fresh()
 {
    let core = CoreConfig {
        event_log_capacity: 8,
        bookmark_interval: Duration::from_millis(200),
        ..CoreConfig::default()
    };
    let cluster = harness::start_with(
        ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0)),
        core,
    )
    .await
    .unwrap();
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let first = c
        .list_slices(pb::ListSlicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    churn(&mut c, 5).await; // 15 events, the last 8 kept
    let made = 5 * PER as u64;
    let err = watch(&mut c, first).await.unwrap_err();
    assert!(compacted(&err), "{err:?}");
    assert!(err.message().contains("list again"), "{}", err.message());
    let err = watch(&mut c, first + made - 9).await.unwrap_err();
    assert!(compacted(&err), "one before the oldest kept: {err:?}");
    // Right before the oldest kept event is still resumable.
    let mut ok = watch(&mut c, first + made - 8).await.unwrap();
    let kept = take(&mut ok, 8).await;
    assert_eq!(kept.first().map(|s| s.0), Some(first + made - 7));
    assert_eq!(kept.last().map(|s| s.0), Some(first + made));
    // An idle watcher with bookmarks gets the revision it is at.
    let head = c
        .list_slices(pb::ListSlicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut idle = c
        .watch_slices(pb::WatchSlicesRequest {
            start_revision: head,
            bookmarks: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(5), idle.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, pb::SliceEventKind::Bookmark as i32);
    assert_eq!(ev.revision, head);
    assert!(ev.slice.is_none());
    cluster.shutdown().await;
}

/// Checks `events` (a resume after `after`) against `listed`, the slices a list shows after
/// them: revisions grow, no event twice, and each listed slice's last event is its listed state.
fn matches_the_list(after: u64, events: &[Seen], listed: &[pb::Slice]) {
    assert!(events.first().is_none_or(|e| e.0 > after));
    for w in events.windows(2) {
        assert!(w[1].0 > w[0].0, "revisions grow: {w:?}");
    }
    let mut distinct = events.to_vec();
    distinct.dedup_by_key(|e| (e.2.clone(), e.3));
    assert_eq!(distinct.len(), events.len(), "no change twice: {events:?}");
    for s in listed {
        let last = events.iter().rev().find(|e| e.2 == s.id);
        if let Some(last) = last {
            assert_eq!(
                last.3, s.state,
                "slice {}: its last event is its state",
                s.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_controller_sigkill_and_restart_a_watcher_resumes_from_its_last_revision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("controller.log");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let nodes = vec![NodeSpec {
        name: "node-0".into(),
        machine: Machine::DgxH100,
        gpus: 8,
        mig_gpus: 0,
    }];
    let _agents = harness::start_agents(std::slice::from_ref(&url), &nodes).unwrap();
    let args = ["--ledger", "redb", "--data-dir", data.to_str().unwrap()];
    let mut ctl = start_controller(port, &args, &log).await;
    common::wait_settled(&url, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let mut c = TenantServiceClient::connect(url.clone()).await.unwrap();
    let from = c
        .list_slices(pb::ListSlicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    // A control that stays until the kill, and a watcher that sees 4 events and goes away.
    let mut control = watch(&mut c, from).await.unwrap();
    let mut away = watch(&mut c, from).await.unwrap();
    churn(&mut c, 2).await;
    let seen_before = take(&mut away, 4).await;
    drop(away);
    let last = seen_before.last().unwrap().0;
    // Slices come and go while it is away; then the controller is killed (SIGKILL: nothing is
    // flushed or closed) once the control saw everything delivered.
    churn(&mut c, 2).await;
    let delivered = take(&mut control, 4 * PER).await;
    assert_eq!(delivered[..4], seen_before[..]);
    ctl.kill().await;
    let _ctl = start_controller(port, &args, &log).await;
    common::wait_settled(&url, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let mut c = TenantServiceClient::connect(url.clone()).await.unwrap();
    churn(&mut c, 1).await;
    // It resumes from its last revision on the restarted controller: every event it missed,
    // from before the kill and after the restart, once and in order.
    let mut resumed = watch(&mut c, last)
        .await
        .expect("a resume from before the restart is served");
    let missed = take(&mut resumed, 4 * PER - 4 + PER).await;
    assert_eq!(
        missed[..4 * PER - 4],
        delivered[4..],
        "what was delivered before the kill, the same revisions"
    );
    // The restart started no revision over: the new slice's events follow the old ones.
    let after = &missed[4 * PER - 4..];
    assert!(after[0].0 > delivered.last().unwrap().0);
    assert_eq!(after[PER - 1].3, pb::SliceState::Released as i32);
    let listed = c
        .list_slices(pb::ListSlicesRequest {
            include_terminal: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.slices.len(), 5);
    matches_the_list(last, &missed, &listed.slices);
    assert_eq!(
        listed.revision,
        after[PER - 1].0,
        "the list reflects the last event"
    );
    // Nothing more comes (no event twice), and a revision from before the kept events is still
    // told to list again.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), resumed.next())
            .await
            .is_err()
    );
    let err = watch(&mut c, from - 1).await.unwrap_err();
    assert!(compacted(&err), "{err:?}");
}
