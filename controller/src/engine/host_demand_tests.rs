//! The host CPU and memory a request says its workload needs, through the controller: kept on the
//! slice and in the ledger, counted against the node's reported capacity while the slice is live,
//! given back on release, and refused with the reason when a node has too little left.

use std::sync::Arc;
use std::time::Duration;

use greenslice_core::clock::ManualClock;
use greenslice_proto::v1 as pb;

use super::retention_tests::{
    NODE, T0, done, registration, retention, serve_commands, share, spec,
};
use crate::error::ControllerError;
use crate::ledger::{Ledger, MemoryLedger};
use crate::model::slice::HostDemand;
use crate::placement::policies::{LIVE_REFRESH, PolicyKind, ScoredPolicy};
use crate::placement::{ClusterView, Placement, Policy, Request, Unplaceable};

const GIB: u64 = 1 << 30;

/// A controller placing with `policy`, with one node of 4 GPUs, 16 cores and 64 GiB of host
/// memory.
async fn started_with(policy: Box<dyn Policy>) -> (Arc<MemoryLedger>, Arc<super::Controller>) {
    let ledger = Arc::new(MemoryLedger::default());
    let clock = ManualClock::new(T0);
    let c = super::Controller::new(
        ledger.clone(),
        policy,
        Arc::new(clock),
        retention(Duration::from_secs(600), 1000),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    c.agents.connect(NODE, tx);
    c.register_node(&registration(pb::Register {
        node: NODE.into(),
        cpu_milli: 16_000,
        memory_bytes: 64 * GIB,
        gpus: (0..4)
            .map(|i| pb::GpuInfo {
                uuid: format!("GPU-{NODE}-{i}"),
                index: i,
                model: "H100-SXM5-80GB".into(),
                memory_bytes: 80 * GIB,
                healthy: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }));
    serve_commands(&c, rx, done);
    (ledger, c)
}

/// [`started_with`] the default policy.
async fn started() -> (Arc<MemoryLedger>, Arc<super::Controller>) {
    started_with(crate::placement::default_policy()).await
}

/// A policy the test keeps a handle on, to read the target workload it learnt.
struct Shared(Arc<ScoredPolicy>);

impl Policy for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn place(&self, view: &ClusterView, req: &Request) -> Result<Placement, Unplaceable> {
        self.0.place(view, req)
    }
    fn observe(&self, req: &Request) {
        self.0.observe(req)
    }
    fn place_versioned(
        &self,
        view: &ClusterView,
        versions: &[u64],
        req: &Request,
    ) -> Result<Placement, Unplaceable> {
        self.0.place_versioned(view, versions, req)
    }
}

fn host(cores: u64, memory_gib: u64) -> HostDemand {
    HostDemand {
        cpu_milli: cores * 1000,
        memory_bytes: memory_gib * GIB,
    }
}

#[tokio::test]
async fn host_cpu_and_memory_are_held_while_the_slice_lives() {
    let (ledger, c) = started().await;
    let a = c
        .request_with_host("t", &spec(share(0.2)), host(12, 8), "")
        .await
        .unwrap()
        .slice;
    assert_eq!(a.host, host(12, 8));
    let stored = ledger.load().await.unwrap();
    assert_eq!(stored.iter().find(|r| r.id == a.id).unwrap().host, a.host);

    // 12 of 16 cores are held: 8 more do not fit, and the refusal says what is left.
    let e = c
        .request_with_host("t", &spec(share(0.2)), host(8, 1), "")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ControllerError::Unplaceable(_)), "{e:?}");
    assert!(
        msg.contains("8 CPU cores") && msg.contains("most host CPU free on one node: 4 cores"),
        "{msg}"
    );
    // Memory too: 8 of 64 GiB are held.
    let e = c
        .request_with_host("t", &spec(share(0.2)), host(1, 60), "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("56.0 GiB"), "{e}");
    // What is left fits; a request that says nothing is not counted.
    c.request_with_host("t", &spec(share(0.2)), host(4, 56), "")
        .await
        .unwrap();
    c.request("t", &spec(share(0.2)), "").await.unwrap();

    // Released, its CPU is free again.
    c.release(&a.id, "done").await.unwrap();
    c.request_with_host("t", &spec(share(0.2)), host(12, 8), "")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_live_target_workload_learns_the_cpu_of_requests() {
    let pol = Arc::new(ScoredPolicy::new(PolicyKind::DEFAULT));
    let (_, c) = started_with(Box::new(Shared(pol.clone()))).await;
    assert_eq!(
        pol.workload().cpu_per_gpu_milli(),
        0.0,
        "the prior has no CPU"
    );
    // CPU-heavy pods: 8 cores per quarter GPU, each released before the next.
    for _ in 0..(LIVE_REFRESH * 20) {
        let s = c
            .request_with_host("t", &spec(share(0.25)), host(8, 16), "")
            .await
            .unwrap()
            .slice;
        c.release(&s.id, "done").await.unwrap();
    }
    let w = pol.workload();
    let top = w.classes()[0].demand;
    assert_eq!((top.gpus, top.milli, top.cpu), (1, 250, 8000));
    // The prior's whole GPUs (no CPU) still weigh a little: the ratio is below 8000 / 0.25.
    let ratio = w.cpu_per_gpu_milli();
    assert!(
        ratio > 10.0 && ratio < 32.0,
        "{ratio} milli-cores per milli-GPU"
    );
}
