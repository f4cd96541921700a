//! The fake API server of tests/common speaks what kube-rs speaks: an unmodified kube client
//! creates, reads, lists with label and field selectors, replaces (with conflicts), patches and
//! deletes through it, and gets the API server's errors as `kube::Error::Api` with the right codes.

mod common;

use common::fake_apiserver::{FakeApiServer, plural_of};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn client(s: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(kube::Config::new(s.uri())).expect("client")
}

fn slice(name: &str, node: &str, driver: &str) -> ResourceSlice {
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name, "labels": {"owner": driver}},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0"}],
        }
    }))
    .expect("slice JSON")
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn kube_client_creates_gets_lists_replaces_and_deletes_cluster_scoped_objects() {
    let s = FakeApiServer::start().await;
    let api: Api<ResourceSlice> = Api::all(client(&s));
    let pp = PostParams::default();

    let a = api
        .create(&pp, &slice("n1-a", "n1", "gpu.greenslice.io"))
        .await
        .unwrap();
    let meta = &a.metadata;
    assert!(meta.uid.is_some() && meta.resource_version.is_some());
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    api.create(&pp, &slice("n2-a", "n2", "gpu.greenslice.io"))
        .await
        .unwrap();
    api.create(&pp, &slice("n1-other", "n1", "other.example.com"))
        .await
        .unwrap();

    // Creating it again: 409 AlreadyExists.
    let e = api
        .create(&pp, &slice("n1-a", "n1", "x"))
        .await
        .unwrap_err();
    assert_eq!(api_code(e), (409, "AlreadyExists".into()));
    // A missing object: 404 NotFound, and `get_opt` reads it as None.
    assert_eq!(
        api_code(api.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    assert!(api.get_opt("nope").await.unwrap().is_none());

    let lp = ListParams::default().fields("spec.nodeName=n1,spec.driver=gpu.greenslice.io");
    let list = api.list(&lp).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(names, ["n1-a"]);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(s.resource_version().to_string().as_str())
    );
    let by_label = api
        .list(&ListParams::default().labels("owner!=gpu.greenslice.io"))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 1);
    assert_eq!(
        api.list(&ListParams::default().labels("owner"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // The real API server supports only some fields of a ResourceSlice.
    let e = api
        .list(&ListParams::default().fields("spec.devices=x"))
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 400);

    // Replace: a stale resourceVersion is a conflict; the current one works and bumps the
    // generation when the spec changes.
    let mut stale = a.clone();
    let mut current = api.get("n1-a").await.unwrap();
    current.spec.pool.generation = 2;
    let replaced = api.replace("n1-a", &pp, &current).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.metadata.uid, a.metadata.uid);
    assert_ne!(
        replaced.metadata.resource_version,
        a.metadata.resource_version
    );
    stale.spec.pool.generation = 3;
    let e = api.replace("n1-a", &pp, &stale).await.unwrap_err();
    assert_eq!(api_code(e), (409, "Conflict".into()));
    assert_eq!(api.get("n1-a").await.unwrap().spec.pool.generation, 2);
    let e = api
        .replace("nope", &pp, &slice("nope", "n1", "d"))
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 404);

    // Merge patch.
    let patched = api
        .patch(
            "n2-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"patched": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["patched"], "yes");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );

    // Delete one, then a collection by field selector.
    api.delete("n2-a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_code(
            api.delete("n2-a", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().fields("spec.nodeName=n1"),
    )
    .await
    .unwrap();
    assert!(s.objects("resource.k8s.io/v1", "resourceslices").is_empty());

    let log = s.requests();
    assert!(
        log.iter()
            .any(|r| r.method == "DELETE" && r.path == "/apis/resource.k8s.io/v1/resourceslices")
    );
    assert!(
        log.iter()
            .any(|r| r.method == "PUT" && r.path == "/apis/resource.k8s.io/v1/resourceslices/n1-a")
    );
}

#[tokio::test]
async fn seeded_namespaced_objects_are_read_back_and_failures_can_be_injected() {
    let s = FakeApiServer::start().await;
    s.insert(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c1", "namespace": "team-a"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.greenslice.io"}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": "gpu.greenslice.io", "pool": "n1", "device": "gpu-0"}
        ]}}}
    }));
    let claims: Api<ResourceClaim> = Api::namespaced(client(&s), "team-a");
    let c = claims.get("c1").await.unwrap();
    let alloc = c.status.unwrap().allocation.unwrap();
    assert_eq!(alloc.devices.unwrap().results.unwrap()[0].device, "gpu-0");
    assert!(c.metadata.uid.is_some());
    // Another namespace does not see it; all namespaces do.
    let other: Api<ResourceClaim> = Api::namespaced(client(&s), "team-b");
    assert!(other.get_opt("c1").await.unwrap().is_none());
    let all: Api<ResourceClaim> = Api::all(client(&s));
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // Core-group objects, created through the client.
    let cms: Api<ConfigMap> = Api::namespaced(client(&s), "team-a");
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let stored = s.objects("v1", "configmaps");
    assert_eq!(stored[0]["metadata"]["namespace"], "team-a");

    s.fail_next(2, 500);
    assert_eq!(api_code(cms.get("x").await.unwrap_err()).0, 500);
    assert_eq!(api_code(cms.get("x").await.unwrap_err()).0, 500);
    assert!(cms.get("x").await.is_ok());
    // kube-rs itself retries 429, 503 and 504 (its default `RetryPolicy::server_retry`): one 503
    // costs a second request, not an error.
    s.clear_requests();
    s.fail_next(1, 503);
    assert!(cms.get("x").await.is_ok());
    assert_eq!(s.requests().len(), 2);

    assert_eq!(plural_of("DeviceClass"), "deviceclasses");
    assert_eq!(plural_of("ResourceSlice"), "resourceslices");
    assert_eq!(plural_of("NetworkPolicy"), "networkpolicies");
}
