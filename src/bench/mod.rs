//! `greenslice bench ...`: benchmarks. Each is a library function with its own arguments, so tests
//! and other tools can run them too.

pub mod attribution;
pub mod control_plane;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Replay the openb production trace under the FGD artifact's protocol and compare placement
    /// policies (unallocated GPU % at 100% and 130% arrival).
    Packing(greenslice_controller::bench::packing::Args),
    /// Request+release round trips per second and their latency through the real gRPC API, with
    /// simulated agents confirming every change, on a durable ledger.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Simulated node agents against a controller elsewhere, until stopped (what `control-plane
    /// --split` runs in a process of their own).
    Agents(control_plane::AgentsArgs),
    /// Replay openb arrivals and departures at virtual time with a share of slices going idle, and
    /// compare no reclaim with the idle policy (admitted, queueing delay, idle-allocated GPU-hours).
    Reclaim(greenslice_controller::bench::reclaim::Args),
    /// Seeded mixes of compute-bound, memory-bound, tensor-heavy and idle tenants on the simulated
    /// machine: each attribution method's per-tenant error against the machine's ground truth.
    Attribution(attribution::Args),
}

/// Runs a benchmark and prints its report (JSON when `json`, where the benchmark has one).
pub async fn run(cmd: BenchCommand, json: bool, controller: &str) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Packing(a) => {
            tokio::task::spawn_blocking(move || greenslice_controller::bench::packing::run(a))
                .await?
        }
        BenchCommand::ControlPlane(a) => {
            let report = control_plane::run(&a).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        BenchCommand::Agents(a) => control_plane::run_agents(&a, controller).await,
        BenchCommand::Attribution(a) => {
            let report = tokio::task::spawn_blocking(move || attribution::run(&a)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        BenchCommand::Reclaim(a) => {
            tokio::task::spawn_blocking(move || greenslice_controller::bench::reclaim::run(a, json))
                .await?
        }
    }
}
