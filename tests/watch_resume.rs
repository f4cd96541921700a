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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_controller_sigkill_revisions_grow_and_a_resume_from_before_is_told_to_list_again()
{
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
    let mut w = watch(&mut c, from).await.unwrap();
    churn(&mut c, 2).await;
    let before = take(&mut w, 2 * PER).await;
    ctl.kill().await;
    let _ctl = start_controller(port, &args, &log).await;
    common::wait_settled(&url, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let mut c = TenantServiceClient::connect(url.clone()).await.unwrap();
    // What happened before the restart is not kept: the watcher is told to list again.
    let err = watch(&mut c, before.last().unwrap().0).await.unwrap_err();
    assert!(compacted(&err), "{err:?}");
    // It lists (the finished slices are still there) and watches from the new revision, which is
    // past every revision given before the restart.
    let listed = c
        .list_slices(pb::ListSlicesRequest {
            include_terminal: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.slices.len(), 2);
    assert!(listed.revision > before.last().unwrap().0);
    let mut w = watch(&mut c, listed.revision).await.unwrap();
    churn(&mut c, 1).await;
    let after = take(&mut w, PER).await;
    assert_eq!(after[0].0, listed.revision + 1);
    assert_eq!(after[PER - 1].3, pb::SliceState::Released as i32);
}
