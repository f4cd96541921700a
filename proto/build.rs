//! Generates the gRPC code from `proto/` with a vendored protoc: no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let protos: [PathBuf; 4] = [
        root.join("greenslice/v1/types.proto"),
        root.join("greenslice/v1/tenant.proto"),
        root.join("greenslice/v1/agent.proto"),
        root.join("greenslice/v1/ops.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("greenslice_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&root))?;
    Ok(())
}
