//! The controller answers gRPC server reflection in both versions clients speak: grpc.reflection.v1
//! and v1alpha (grpcio-reflection, older grpcurl and grpcui know only v1alpha).

use greenslice::harness::{self, ClusterSpec};
use greenslice_agent::backend::sim::Machine;
use tonic_reflection::pb::{v1, v1alpha};

/// The greenslice services every reflection answer must name.
const SERVICES: [&str; 4] = [
    "greenslice.v1.AgentService",
    "greenslice.v1.KubeletService",
    "greenslice.v1.OpsService",
    "greenslice.v1.TenantService",
];

fn greenslice_only(mut names: Vec<String>) -> Vec<String> {
    names.retain(|n| n.starts_with("greenslice."));
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let cluster = harness::start(ClusterSpec::new(harness::nodes(1, &[Machine::DgxH100], 0)))
        .await
        .unwrap();

    let channel = tonic::transport::Endpoint::from_shared(cluster.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1alpha: not a service list: {answer:?}");
    };
    let names = greenslice_only(list.service.into_iter().map(|s| s.name).collect());
    assert_eq!(names, SERVICES);

    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1c
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: not a service list: {answer:?}");
    };
    let names = greenslice_only(list.service.into_iter().map(|s| s.name).collect());
    assert_eq!(names, SERVICES);
    cluster.shutdown().await;
}
