//! The tenant and ops API at scale, through real gRPC clients at the default 4 MiB receive limit
//! (tonic's, like grpc-go's, grpc-java's and grpcio's): pages that list every slice exactly once
//! while slices come and go, tokens that cannot be forged, watches that resume from a revision,
//! and refusals a program can act on.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::engine::CoreConfig;
use greenslice_controller::ledger::{Ledger, Op, memory::MemoryLedger};
use greenslice_controller::model::slice::SliceRecord;
use greenslice_core::clock::Clock;
use greenslice_core::slice::{SliceKind, SliceSpec, SliceState};
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

/// The receive limit of stock gRPC clients.
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;

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

/// `n` RELEASED slices, created a millisecond apart over the last minutes, as a storm leaves them.
fn finished_records(n: usize, now_ms: i64) -> Vec<SliceRecord> {
    let start = now_ms - n as i64 - 60_000;
    (0..n)
        .map(|i| {
            let at = start + i as i64;
            let mut r = SliceRecord::placed(
                format!("s-{:011x}{:05x}", at as u64, i & 0xf_ffff),
                &format!("team-{}", i % 7),
                SliceSpec {
                    kind: SliceKind::Share {
                        compute_fraction: 0.25,
                        memory_bytes: 10 << 30,
                    },
                    gpu_model: None,
                    slice_class: None,
                },
                "node-00".into(),
                vec!["GPU-00000000-0000-0000-0000-000000000000".into()],
                at,
            );
            r.state = SliceState::Released;
            r.reason = "released by tenant".into();
            r.env.insert("GREENSLICE_SLICE_ID".into(), r.id.clone());
            r.updated_ms = at + 1;
            r
        })
        .collect()
}

fn keep_everything() -> CoreConfig {
    CoreConfig {
        terminal_retention: Duration::from_secs(86_400),
        terminal_retention_max: 1_000_000,
        ..CoreConfig::default()
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn bad_field(s: &tonic::Status) -> String {
    s.get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_100k_finished_slices_during_churn_lists_each_exactly_once() {
    const FINISHED: usize = 100_000;
    let now = greenslice_core::clock::SystemClock.now_ms();
    let ledger = Arc::new(MemoryLedger::default());
    let preloaded = finished_records(FINISHED, now);
    let preloaded_ids: BTreeSet<String> = preloaded.iter().map(|r| r.id.clone()).collect();
    ledger
        .submit(preloaded.into_iter().map(Op::Put).collect())
        .await
        .unwrap();
    let mut spec = ClusterSpec::new(harness::nodes(2, &[Machine::DgxH100], 0));
    spec.ledger = ledger;
    let cluster = harness::start_with(spec, keep_everything()).await.unwrap();

    // Churn: slices created and released all the while the list is paged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (url, stop) = (cluster.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = TenantServiceClient::connect(url).await.unwrap();
            let mut made = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = c
                    .request_slice(share_req("churn"))
                    .await
                    .unwrap()
                    .into_inner()
                    .slice
                    .unwrap();
                c.release_slice(pb::ReleaseSliceRequest { slice_id: s.id })
                    .await
                    .unwrap();
                made += 1;
            }
            made
        })
    };

    // A stock client: tonic's default 4 MiB decoding limit, not raised.
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let mut req = pb::ListSlicesRequest {
        include_terminal: true,
        ..Default::default()
    };
    let (mut seen, mut order) = (HashSet::new(), Vec::new());
    let (mut pages, mut largest) = (0usize, 0usize);
    let t0 = Instant::now();
    loop {
        let r = c.list_slices(req.clone()).await.unwrap().into_inner();
        pages += 1;
        largest = largest.max(r.encoded_len());
        assert!(r.revision > 0, "a page says the revision it reflects");
        for s in &r.slices {
            assert!(seen.insert(s.id.clone()), "{} listed twice", s.id);
            order.push(s.id.clone());
        }
        if pages == 3 {
            // A token is only good for the filters it was made for, and a forged one is refused.
            let other = c
                .list_slices(pb::ListSlicesRequest {
                    tenant: "team-1".into(),
                    page_token: r.next_page_token.clone(),
                    ..req.clone()
                })
                .await
                .unwrap_err();
            assert_eq!(other.code(), Code::InvalidArgument);
            assert_eq!(bad_field(&other), "page_token");
            let mut forged = r.next_page_token.clone().into_bytes();
            let i = forged.len() / 3;
            forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
            let forged = c
                .list_slices(pb::ListSlicesRequest {
                    page_token: String::from_utf8(forged).unwrap(),
                    ..req.clone()
                })
                .await
                .unwrap_err();
            assert_eq!(forged.code(), Code::InvalidArgument, "{forged:?}");
            assert_eq!(reason(&forged), "PAGE_TOKEN_INVALID");
            assert_eq!(bad_field(&forged), "page_token");
        }
        if r.next_page_token.is_empty() {
            break;
        }
        req.page_token = r.next_page_token;
    }
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = churn.await.unwrap();
    assert!(made > 0, "slices came and went while paging");
    for id in &preloaded_ids {
        assert!(seen.contains(id), "{id} was never listed");
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "pages come in id (creation) order");
    assert!(largest < CLIENT_LIMIT);
    println!(
        "listed {} slices in {pages} pages of the default size in {:.2} s ({:.0} slices/s, {:.1} pages/s) while {made} slices were made and released; largest page {largest} bytes",
        seen.len(),
        took.as_secs_f64(),
        seen.len() as f64 / took.as_secs_f64(),
        pages as f64 / took.as_secs_f64(),
    );

    // Sizes out of range are refused, naming the field.
    let big = c
        .list_slices(pb::ListSlicesRequest {
            page_size: 2001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&big), "page_size");
    // The largest page still fits a stock client.
    let max = c
        .list_slices(pb::ListSlicesRequest {
            page_size: 2000,
            include_terminal: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(max.slices.len(), 2000);
    println!("a page of 2000 slices: {} bytes", max.encoded_len());
    // Filters hold: a tenant and a state.
    let team = c
        .list_slices(pb::ListSlicesRequest {
            tenant: "team-3".into(),
            state: pb::SliceState::Released as i32,
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.slices.len(), 50);
    assert!(team.slices.iter().all(|s| s.tenant == "team-3"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_inventory_page_of_a_full_1280_node_cluster_exceeds_a_stock_clients_limit() {
    const NODES: usize = 1280;
    const FULL: usize = 64;
    let mut spec = ClusterSpec::new(harness::nodes(NODES, &[Machine::DgxH100], 8));
    // Agents sample rarely: 1,280 of them share two cores with the test.
    spec.sample_interval = Duration::from_secs(3600);
    spec.batch_interval = Duration::from_secs(3600);
    let cluster = harness::start_with(spec, CoreConfig::default())
        .await
        .unwrap();
    // The densest page: the first page's nodes each packed with 56 MIG slices (7 per GPU).
    let names: Vec<String> = {
        let mut n: Vec<String> = cluster
            .controller
            .with_state(|st| st.nodes.keys().cloned().collect());
        n.truncate(FULL);
        n
    };
    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let mut placed = 0usize;
    // Spread: fill the whole cluster's first FULL nodes by draining the rest while requesting.
    let mut ops = OpsServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let others: Vec<String> = cluster
        .controller
        .with_state(|st| st.nodes.keys().skip(FULL).cloned().collect());
    for n in &others {
        ops.drain_node(pb::DrainNodeRequest { node: n.clone() })
            .await
            .unwrap();
    }
    loop {
        let r = c
            .request_slice(pb::RequestSliceRequest {
                tenant: "dense".into(),
                spec: Some(pb::SliceSpec {
                    kind: Some(Kind::Mig(pb::MigSlice {
                        profile: "1g.10gb".into(),
                    })),
                    ..Default::default()
                }),
                idempotency_key: String::new(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => placed += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(reason(&s), "NO_CAPACITY");
                break;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(
        placed,
        FULL * 56,
        "every MIG slot of the first {FULL} nodes"
    );
    for n in &others {
        ops.undrain_node(pb::UndrainNodeRequest { node: n.clone() })
            .await
            .unwrap();
    }
    let mut req = pb::InventoryRequest::default();
    let (mut nodes, mut slices, mut pages, mut largest) = (0usize, 0usize, 0usize, 0usize);
    let mut first_names = Vec::new();
    loop {
        let r = ops.inventory(req.clone()).await.unwrap().into_inner();
        pages += 1;
        largest = largest.max(r.encoded_len());
        assert_eq!(r.gpus_total as usize, NODES * 8, "totals are the cluster's");
        assert_eq!(r.nodes_total as usize, NODES);
        if pages == 1 {
            first_names = r.nodes.iter().map(|n| n.name.clone()).collect();
            println!(
                "inventory page 1 ({} nodes, {} GPUs, {} slices): {} bytes",
                r.nodes.len(),
                r.capacity.len(),
                r.slices.len(),
                r.encoded_len()
            );
        }
        nodes += r.nodes.len();
        slices += r.slices.len();
        if r.next_page_token.is_empty() {
            break;
        }
        req.page_token = r.next_page_token;
    }
    assert_eq!(first_names, names, "the densest nodes are on one page");
    assert_eq!(nodes, NODES);
    assert_eq!(slices, placed);
    assert!(
        largest < CLIENT_LIMIT,
        "largest inventory page {largest} bytes"
    );
    // ListSlices of all of them, at the default page size.
    let mut lreq = pb::ListSlicesRequest::default();
    let mut largest_list = 0usize;
    loop {
        let r = c.list_slices(lreq.clone()).await.unwrap().into_inner();
        largest_list = largest_list.max(r.encoded_len());
        if r.next_page_token.is_empty() {
            break;
        }
        lreq.page_token = r.next_page_token;
    }
    assert!(largest_list < CLIENT_LIMIT);
    println!(
        "1280 nodes x 8 GPUs, {placed} MIG slices: {pages} inventory pages, largest {largest} bytes; largest ListSlices page {largest_list} bytes"
    );
    cluster.shutdown().await;
}
