//! `cargo run --release -p greenslice-controller --example bench_packing -- [ARGS]`: the packing
//! benchmark without the `greenslice` binary (same arguments as `greenslice bench packing`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Replay the openb trace under the FGD protocol for each placement policy")]
struct Cli {
    #[command(flatten)]
    args: greenslice_controller::bench::packing::Args,
}

fn main() -> anyhow::Result<()> {
    greenslice_controller::bench::packing::run(Cli::parse().args)
}
