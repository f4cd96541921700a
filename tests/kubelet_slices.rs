//! Pods' kubelet allocations become slices of the pods' tenants in the controller: they are listed,
//! counted as held capacity, cannot be released through the tenant API, and end with their pod.

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use greenslice_controller::api::kubelet::grants_from_pb;
use greenslice_proto::v1 as pb;
use pb::tenant_service_client::TenantServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_allocations_become_tenant_slices_until_the_pod_ends() {
    let cluster = harness::start(ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0)))
        .await
        .unwrap();
    let (nodes, _, _) = cluster.controller.snapshot();
    let gpu = nodes[0].gpus[0].uuid.clone();
    let report = pb::KubeletAllocations {
        allocations: vec![pb::KubeletAllocation {
            slice_id: "k-0001".into(),
            tenant: "ml-team".into(),
            namespace: "ml-team".into(),
            pod: "trainer-0".into(),
            container: "main".into(),
            resource: "greenslice.io/gpu".into(),
            device_ids: vec![gpu.clone()],
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                gpu_model: String::new(),
                slice_class: "kubelet".into(),
            }),
            gpu_uuids: vec![gpu.clone()],
            mig: None,
        }],
        eviction_allowed: false,
        observed_unix_ms: 0,
    };
    assert_eq!(
        cluster
            .controller
            .apply_kubelet_allocations("node-00", &grants_from_pb(&report).unwrap())
            .await
            .unwrap(),
        1
    );
    // Reporting the same state again changes nothing.
    assert_eq!(
        cluster
            .controller
            .apply_kubelet_allocations("node-00", &grants_from_pb(&report).unwrap())
            .await
            .unwrap(),
        0
    );

    let mut c = TenantServiceClient::connect(cluster.url.clone())
        .await
        .unwrap();
    let listed = c
        .list_slices(pb::ListSlicesRequest {
            tenant: "ml-team".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .slices;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].gpu_uuids, vec![gpu.clone()]);
    // Ops see it in /metrics by node, tenant and resource.
    let kubelet_gauge = |c: &greenslice_controller::engine::Controller| {
        c.refresh_gauges();
        c.metrics
            .kubelet_allocations
            .get_or_create(&greenslice_controller::obs::KubeletLabels {
                node: "node-00".into(),
                tenant: "ml-team".into(),
                resource: "greenslice.io/gpu".into(),
            })
            .get()
    };
    assert_eq!(kubelet_gauge(&cluster.controller), 1);
    // The pod's GPU is not offered to tenants: 7 whole GPUs fit, not 8.
    let err = c
        .request_slice(pb::RequestSliceRequest {
            tenant: "other".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 8 })),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // A tenant cannot release a pod's slice.
    let err = c
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: "k-0001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("delete the pod"));

    // The pod ended: an empty report releases its slice.
    let empty = pb::KubeletAllocations::default();
    assert_eq!(
        cluster
            .controller
            .apply_kubelet_allocations("node-00", &grants_from_pb(&empty).unwrap())
            .await
            .unwrap(),
        1
    );
    let s = cluster.controller.get("k-0001").unwrap();
    assert_eq!(s.state.as_str(), "released");
    assert_eq!(kubelet_gauge(&cluster.controller), 0);
    // Bad reports are refused and change nothing.
    let mut bad = report.clone();
    bad.allocations[0].slice_id = "not-k".into();
    assert_eq!(
        grants_from_pb(&bad).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(cluster.controller.list("ml-team", "", false).len(), 0);
    cluster.shutdown().await;
}

/// The agent advertises a `+me` MIG profile under a name with `.` for `+`; a pod holding it becomes a
/// kubelet slice whose `/metrics` resource label is that same name, so a dashboard's resource is the
/// one a pod asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_a_me_profile_with_the_resource_the_agent_advertises() {
    use greenslice_agent::kubelet::{devices::DeviceTable, podresources};
    use greenslice_core::inventory::{Gpu, MigInstance};
    use greenslice_proto::podresources::v1 as pr;

    let cluster = harness::start(ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0)))
        .await
        .unwrap();
    // The agent's side: a MIG GPU with one free 1g.10gb+me instance, offered to the kubelet.
    let gpu = Gpu {
        uuid: "GPU-me".into(),
        index: 0,
        model: greenslice_core::gpu::GpuModel::H100Sxm5_80Gb,
        memory_bytes: 80 << 30,
        mig_capable: true,
        mig_enabled: true,
        pci_bus_id: String::new(),
        power_limit_mw: 0,
        healthy: true,
        mig_instances: vec![MigInstance {
            gpu_instance_id: 9,
            profile: "1g.10gb+me".into(),
            start: 0,
            size: 1,
            mig_uuid: "MIG-me".into(),
            slice_id: None,
        }],
        shares: Vec::new(),
        whole_slice_id: None,
    };
    let (table, warnings) = DeviceTable::build(&[gpu], &[]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let advertised: Vec<String> = table.resources().map(str::to_string).collect();
    assert_eq!(advertised, ["greenslice.io/mig-1g.10gb.me"]);
    assert!(greenslice_core::kubelet::is_extended_resource_name(
        &advertised[0]
    ));
    let held = pr::ListPodResourcesResponse {
        pod_resources: vec![pr::PodResources {
            name: "infer-0".into(),
            namespace: "ml-team".into(),
            containers: vec![pr::ContainerResources {
                name: "main".into(),
                devices: vec![pr::ContainerDevices {
                    resource_name: advertised[0].clone(),
                    device_ids: vec!["MIG-me".into()],
                    topology: None,
                }],
                ..Default::default()
            }],
        }],
    };
    let (allocations, warnings) = podresources::allocations("node-00", &held, &table);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(allocations.len(), 1);
    let report = pb::KubeletAllocations {
        allocations,
        eviction_allowed: false,
        observed_unix_ms: 0,
    };
    // The controller's side: the slice it makes is labelled with the advertised name.
    assert_eq!(
        cluster
            .controller
            .apply_kubelet_allocations("node-00", &grants_from_pb(&report).unwrap())
            .await
            .unwrap(),
        1
    );
    cluster.controller.refresh_gauges();
    let gauge = cluster
        .controller
        .metrics
        .kubelet_allocations
        .get_or_create(&greenslice_controller::obs::KubeletLabels {
            node: "node-00".into(),
            tenant: "ml-team".into(),
            resource: advertised[0].clone(),
        })
        .get();
    assert_eq!(gauge, 1);
    cluster.shutdown().await;
}
