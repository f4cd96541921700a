//! Publishing the node's ResourceSlices through a (fake) API server with an unmodified kube-rs
//! client: the first publish, a re-layout (generation bump, old devices gone), an agent restart
//! that finds stale slices, other nodes' and drivers' slices left alone, and API errors retried.

#[path = "../../tests/common/fake_apiserver.rs"]
mod fake_apiserver;

use std::collections::BTreeSet;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use greenslice_agent::dra::devices::DRIVER;
use greenslice_agent::dra::publish::{self, NodeDevices, Publisher, RunOptions};
use greenslice_agent::dra::slices::{self, SliceOptions, Steering};
use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance};
use k8s_openapi::api::resource::v1::ResourceSlice;
use serde_json::{Value, json};
use tokio::sync::watch;

const RS: &str = "resource.k8s.io/v1";

fn client(s: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(kube::Config::new(s.uri())).expect("client")
}

fn gpu(index: u32, mig: bool) -> Gpu {
    Gpu {
        uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
        index,
        model: GpuModel::H100Sxm5_80Gb,
        memory_bytes: 80 << 30,
        mig_capable: true,
        mig_enabled: mig,
        pci_bus_id: format!("00000000:{:02X}:00.0", 0x10 + index),
        power_limit_mw: 700_000,
        healthy: true,
        mig_instances: Vec::new(),
        shares: Vec::new(),
        whole_slice_id: None,
    }
}

fn opts() -> SliceOptions {
    SliceOptions {
        share_gpus: vec![1],
        partitionable: true,
        consumable_capacity: true,
        dra_slices: BTreeSet::new(),
        steer: Steering::Off,
        allocated: BTreeSet::new(),
    }
}

fn node(gpus: Vec<Gpu>) -> NodeDevices {
    NodeDevices {
        gpus,
        dra_slices: BTreeSet::new(),
    }
}

/// The stored slices of `node`, typed.
fn stored(s: &FakeApiServer, node: &str) -> Vec<ResourceSlice> {
    s.objects(RS, "resourceslices")
        .into_iter()
        .filter(|o| o["spec"]["nodeName"] == node)
        .map(|o| serde_json::from_value(o).expect("a ResourceSlice"))
        .collect()
}

fn device_names(v: &[ResourceSlice]) -> BTreeSet<String> {
    slices::devices(v).into_keys().collect()
}

fn foreign_slice(name: &str, node: &str, driver: &str) -> Value {
    json!({
        "apiVersion": RS, "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {"driver": driver, "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "gpu-0"}]}
    })
}

#[tokio::test]
async fn publishes_then_relayouts_with_a_new_generation_and_no_stale_devices() {
    let s = FakeApiServer::start().await;
    s.insert(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    s.insert(foreign_slice("node-b-x", "node-b", DRIVER));
    s.insert(foreign_slice("node-a-other", "node-a", "other.example.com"));
    let mut p = Publisher::new(client(&s), "node-a", opts());

    let first = p
        .sync(&node(vec![gpu(0, false), gpu(1, false)]))
        .await
        .unwrap();
    assert_eq!(first.generation, 1);
    assert!(!first.created.is_empty() && first.replaced.is_empty());
    let v = stored(&s, "node-a")
        .into_iter()
        .filter(|x| x.spec.driver == DRIVER)
        .collect::<Vec<_>>();
    slices::validate(&v).unwrap();
    assert_eq!(
        device_names(&v),
        ["gpu-0", "gpu-1", "gpu-1-share"].map(String::from).into()
    );
    // Owned by the Node, so they go with it.
    let node_uid = s.objects("v1", "nodes")[0]["metadata"]["uid"].clone();
    for x in &v {
        let o = &x.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.name.as_str()), ("Node", "node-a"));
        assert_eq!(json!(o.uid), node_uid);
    }
    // The list asked only for this node's slices of this driver.
    assert!(s.requests().iter().any(|r| r.method == "GET"
        && r.path == "/apis/resource.k8s.io/v1/resourceslices"
        && r.query.contains("fieldSelector")));

    // The same inventory again: nothing written, same generation.
    s.clear_requests();
    let again = p
        .sync(&node(vec![gpu(0, false), gpu(1, false)]))
        .await
        .unwrap();
    assert!(again.unchanged(), "{again:?}");
    assert_eq!(again.generation, 1);
    assert!(s.requests().iter().all(|r| r.method == "GET"));

    // Re-layout: GPU 0 goes to MIG mode and three MIG GPUs join (three slices now). New
    // generation everywhere, whole GPU 0 gone.
    let relayout = p
        .sync(&node(vec![
            gpu(0, true),
            gpu(1, false),
            gpu(2, true),
            gpu(3, true),
            gpu(4, true),
        ]))
        .await
        .unwrap();
    assert_eq!(relayout.generation, 2);
    let v: Vec<_> = stored(&s, "node-a")
        .into_iter()
        .filter(|x| x.spec.driver == DRIVER)
        .collect();
    slices::validate(&v).unwrap();
    assert!(v.iter().all(|x| x.spec.pool.generation == 2));
    assert_eq!(v.len(), 3);
    let names = device_names(&v);
    assert!(!names.contains("gpu-0"));
    assert!(names.contains("gpu-0-mig-3g-40gb-4") && names.contains("gpu-1-share"));

    // Back to fewer slices: the extra ones are deleted.
    let smaller = p.sync(&node(vec![gpu(1, false)])).await.unwrap();
    assert_eq!(smaller.generation, 3);
    assert!(!smaller.deleted.is_empty());
    let v: Vec<_> = stored(&s, "node-a")
        .into_iter()
        .filter(|x| x.spec.driver == DRIVER)
        .collect();
    slices::validate(&v).unwrap();
    assert_eq!(
        device_names(&v),
        ["gpu-1", "gpu-1-share"].map(String::from).into()
    );

    // Other nodes and drivers are untouched.
    assert_eq!(stored(&s, "node-b").len(), 1);
    assert!(
        stored(&s, "node-a")
            .iter()
            .any(|x| x.spec.driver == "other.example.com")
    );
}

#[tokio::test]
async fn a_restarted_agent_replaces_stale_slices_and_continues_the_generation() {
    let s = FakeApiServer::start().await;
    // What an agent before the restart left: generation 7, an older layout, in more slices.
    let old_opts = SliceOptions {
        share_gpus: vec![],
        ..opts()
    };
    let old = slices::build(
        "node-a",
        &[
            gpu(0, true),
            gpu(1, true),
            gpu(2, true),
            gpu(3, true),
            gpu(4, true),
        ],
        7,
        &old_opts,
    )
    .unwrap();
    assert!(old.len() > 2);
    for x in &old {
        let mut v = serde_json::to_value(x).unwrap();
        v["apiVersion"] = json!(RS);
        v["kind"] = json!("ResourceSlice");
        s.insert(v);
    }
    let mut p = Publisher::new(client(&s), "node-a", opts());
    let r = p
        .sync(&node(vec![gpu(0, false), gpu(1, false)]))
        .await
        .unwrap();
    assert_eq!(
        r.generation, 8,
        "continues from the API server's generation"
    );
    assert!(!r.deleted.is_empty());
    let v = stored(&s, "node-a");
    slices::validate(&v).unwrap();
    assert_eq!(v.len() as i64, v[0].spec.pool.resource_slice_count);
    assert!(v.iter().all(|x| x.spec.pool.generation == 8));
    assert!(!device_names(&v).iter().any(|n| n.contains("mig")));

    // A second restart with nothing changed writes nothing and keeps generation 8.
    let mut p2 = Publisher::new(client(&s), "node-a", opts());
    let r2 = p2
        .sync(&node(vec![gpu(0, false), gpu(1, false)]))
        .await
        .unwrap();
    assert!(r2.unchanged());
    assert_eq!((r2.generation, p2.generation()), (8, 8));
}

#[tokio::test]
async fn dra_slices_come_from_the_published_input() {
    let s = FakeApiServer::start().await;
    let mut g = gpu(0, true);
    g.mig_instances.push(MigInstance {
        gpu_instance_id: 1,
        profile: "7g.80gb".into(),
        start: 0,
        size: 8,
        mig_uuid: "MIG-x".into(),
        slice_id: Some("slice-1".into()),
    });
    let mut p = Publisher::new(client(&s), "n", opts());
    // Held by a slice DRA does not know: nothing of GPU 0 is offered.
    p.sync(&node(vec![g.clone()])).await.unwrap();
    assert!(device_names(&stored(&s, "n")).is_empty());
    // Once the slice is DRA's own, its placement (and the rest) are published.
    let r = p
        .sync(&NodeDevices {
            gpus: vec![g],
            dra_slices: ["slice-1".to_string()].into(),
        })
        .await
        .unwrap();
    assert_eq!(r.generation, 2);
    assert!(device_names(&stored(&s, "n")).contains("gpu-0-mig-7g-80gb-0"));
}

#[tokio::test]
async fn run_retries_api_errors_and_follows_inventory_changes() {
    let s = FakeApiServer::start().await;
    // 500s are not retried by kube-rs itself: run's backoff has to.
    s.fail_next(3, 500);
    let (tx, rx) = watch::channel(node(vec![gpu(0, false)]));
    let task = tokio::spawn(publish::run(
        client(&s),
        "node-r",
        opts(),
        RunOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            resync: Duration::from_secs(3600),
        },
        rx,
    ));
    let wait_for = |want: &'static str| {
        let s = &s;
        async move {
            for _ in 0..300 {
                if device_names(&stored(s, "node-r")).contains(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{want} never published; requests: {:?}", s.requests());
        }
    };
    wait_for("gpu-0").await;
    let failed_first = s.requests().len();
    assert!(
        failed_first >= 4,
        "three failures then success: {failed_first} requests"
    );

    // A conflicting write (someone else changed a slice since it was read) is retried too.
    s.fail_next_method("PUT", 1, 409);
    tx.send(node(vec![gpu(0, false), gpu(1, false)])).unwrap();
    wait_for("gpu-1-share").await;
    assert!(
        s.requests().iter().filter(|r| r.method == "PUT").count() >= 2,
        "the conflicting replace was retried"
    );
    let v = stored(&s, "node-r");
    slices::validate(&v).unwrap();
    assert!(v.iter().all(|x| x.spec.pool.generation == 2));

    drop(tx);
    let last = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends when the sender goes")
        .unwrap();
    assert_eq!(last, 2);
}

#[tokio::test]
async fn steering_keeps_publishing_what_claims_have_allocated() {
    let s = FakeApiServer::start().await;
    // A claim allocated 1g.10gb at start 0 of GPU 0, not yet prepared (no instance exists).
    s.insert(json!({
        "apiVersion": RS, "kind": "ResourceClaim",
        "metadata": {"name": "c", "namespace": "team-a"},
        "spec": {"devices": {"requests": [{"name": "mig", "exactly": {"deviceClassName": "mig.greenslice.io"}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "mig", "driver": DRIVER, "pool": "n", "device": "gpu-0-mig-1g-10gb-0"}
        ]}}}
    }));
    let steered = SliceOptions {
        steer: Steering::Node,
        ..opts()
    };
    let mut p = Publisher::new(client(&s), "n", steered);
    p.sync(&node(vec![gpu(0, true)])).await.unwrap();
    let names = device_names(&stored(&s, "n"));
    assert!(names.contains("gpu-0-mig-1g-10gb-0"), "{names:?}");
    // Steering's own choice for 1g.10gb on an empty GPU is elsewhere (start 6).
    assert!(names.contains("gpu-0-mig-1g-10gb-6"), "{names:?}");
    let plain_1g = names
        .iter()
        .filter(|n| {
            matches!(
                greenslice_agent::dra::devices::DeviceRef::parse(n),
                Ok(greenslice_agent::dra::devices::DeviceRef::Mig { ref profile, .. }) if profile == "1g.10gb"
            )
        })
        .count();
    assert_eq!(plain_1g, 2, "{names:?}");
    // A failed claim list fails the sync (run retries it): steering never guesses.
    s.fail_next(1, 500);
    assert!(p.sync(&node(vec![gpu(0, true)])).await.is_err());
}

#[tokio::test]
async fn a_node_registered_later_becomes_the_owner_without_a_new_generation() {
    let s = FakeApiServer::start().await;
    let mut p = Publisher::new(client(&s), "late", opts());
    let devices = node(vec![gpu(0, false)]);
    assert_eq!(p.sync(&devices).await.unwrap().generation, 1);
    assert!(
        stored(&s, "late")
            .iter()
            .all(|x| x.metadata.owner_references.is_none())
    );
    s.insert(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "late"}}));
    let r = p.sync(&devices).await.unwrap();
    assert_eq!(r.generation, 1);
    assert!(!r.replaced.is_empty());
    assert!(stored(&s, "late").iter().all(|x| {
        x.spec.pool.generation == 1
            && x.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o[0].kind == "Node")
    }));
    // And then nothing more to do.
    assert!(p.sync(&devices).await.unwrap().unchanged());
}
