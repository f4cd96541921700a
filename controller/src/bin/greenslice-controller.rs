//! `greenslice-controller`: the controller binary. See [`greenslice_controller::cli`] for flags.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the controller allocates and frees many small buffers per
/// call; glibc's malloc and free took 15 to 20% of the control-plane benchmark's CPU (see
/// docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    greenslice_controller::cli::main().await
}
