//! Generates the gRPC code from `proto/` with a vendored protoc: no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos: [PathBuf; 5] = [
        root.join("greenslice/v1/types.proto"),
        root.join("greenslice/v1/tenant.proto"),
        root.join("greenslice/v1/agent.proto"),
        root.join("greenslice/v1/ops.proto"),
        root.join("greenslice/v1/kubelet.proto"),
    ];
    // The kubelet's own APIs, wire-compatible with upstream k8s.io/kubelet (packages `v1beta1` and
    // `v1`), compiled apart so the greenslice descriptor set (served by reflection) stays ours only.
    let k8s_root = root.join("k8s");
    let k8s_protos: [PathBuf; 5] = [
        k8s_root.join("deviceplugin/v1beta1/api.proto"),
        k8s_root.join("podresources/v1/api.proto"),
        k8s_root.join("pluginregistration/v1/api.proto"),
        k8s_root.join("dra/v1/api.proto"),
        k8s_root.join("dra/v1beta1/api.proto"),
    ];
    for p in protos.iter().chain(&k8s_protos) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("greenslice_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&root))?;
    let mut k8s_config = tonic_prost_build::Config::new();
    k8s_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        k8s_config,
        &k8s_protos,
        std::slice::from_ref(&k8s_root),
    )?;
    Ok(())
}
