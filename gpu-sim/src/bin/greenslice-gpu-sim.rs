//! `greenslice-gpu-sim`: the workload's side of the simulated machine. Starts and stops processes on
//! a GPU or MIG instance, injects XIDs and driver reloads, drives a manual clock, and prints the
//! machine as JSON. It works on the same state file the simulated NVML library reads.
//!
//! Exit codes: 0 done; 1 the hardware refused (in use, out of memory...) or the state file could not
//! be used; 2 bad input (a flag, an unknown GPU, instance or process).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpu_sim::store::{CLOCK_ENV, MACHINE_ENV, MIG_GPUS_ENV, SEED_ENV};
use gpu_sim::{Clock, MachineSpec, STATE_ENV, SimError, Store, StoreError};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "greenslice-gpu-sim",
    about = "Drive a simulated GPU machine: processes, XIDs, driver reloads, its clock",
    after_help = "Example: greenslice-gpu-sim --state /tmp/node.json start --gpu 0 --memory 2048 --sm 60 --env GREENSLICE_SLICE_ID=s-1"
)]
struct Cli {
    /// The machine's state file (created on first use).
    #[arg(long, env = STATE_ENV)]
    state: PathBuf,
    /// Machine of a new state file: dgx-h100, dgx-a100-40, dgx-a100-80, dgx-h200, pcie-h100, l40s, mixed.
    #[arg(long, env = MACHINE_ENV, default_value = "dgx-h100")]
    machine: String,
    /// How many MIG-capable GPUs of a new machine start in MIG mode.
    #[arg(long, env = MIG_GPUS_ENV, default_value_t = 0)]
    mig_gpus: u32,
    /// Seed of a new machine's UUIDs.
    #[arg(long, env = SEED_ENV, default_value_t = 1)]
    seed: u64,
    /// Clock of a new machine: wall or manual.
    #[arg(long, env = CLOCK_ENV, default_value = "wall")]
    clock: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Creates the machine if the state file does not exist yet, and prints it.
    Init,
    /// Prints the machine as JSON, with each GPU's power and energy counter now.
    State,
    /// Starts a process; prints its pid.
    Start {
        /// GPU index.
        #[arg(long)]
        gpu: Option<u32>,
        /// Run on this MIG instance: a GPU instance id (with --gpu) or a MIG device UUID.
        #[arg(long)]
        mig: Option<String>,
        /// GPU memory it uses, MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u64,
        /// SM utilization it causes, percent.
        #[arg(long, default_value_t = 50)]
        sm: u32,
        /// Memory-controller utilization it causes, percent.
        #[arg(long, default_value_t = 20)]
        mem_util: u32,
        /// Its environment, KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
    },
    /// Ends a process.
    Stop { pid: u32 },
    /// Changes what a process does.
    Load {
        pid: u32,
        #[arg(long)]
        sm: u32,
        #[arg(long, default_value_t = 20)]
        mem_util: u32,
    },
    /// Raises an XID event on a GPU.
    Xid {
        #[arg(long)]
        gpu: u32,
        #[arg(long)]
        xid: u64,
    },
    /// Reloads the driver: processes end, MIG instances go, energy counters restart.
    ReloadDriver,
    /// Turns MIG mode on or off (no instances or processes may exist).
    MigMode {
        #[arg(long)]
        gpu: u32,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Switches to a manual clock at the present time.
    ClockManual,
    /// Moves a manual clock forward by MS milliseconds.
    Advance { ms: u64 },
    /// Follows the wall clock again.
    ClockWall,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greenslice-gpu-sim: {e}");
            let bad_input = matches!(
                e,
                StoreError::Config(_)
                    | StoreError::Sim(SimError::InvalidArgument(_) | SimError::NotFound(_))
            );
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<String, StoreError> {
    let spec = MachineSpec {
        kind: cli.machine.parse().map_err(StoreError::Config)?,
        mig_gpus: cli.mig_gpus,
        seed: cli.seed,
        manual_clock: match cli.clock.as_str() {
            "wall" => false,
            "manual" => true,
            c => {
                return Err(StoreError::Config(format!(
                    "--clock {c:?}: use wall or manual"
                )));
            }
        },
    };
    let mut store = Store::open(&cli.state, &spec)?;
    Ok(match cli.cmd {
        Cmd::Init | Cmd::State => state_json(&mut store)?,
        Cmd::Start {
            gpu,
            mig,
            memory,
            sm,
            mem_util,
            env,
        } => {
            let env: BTreeMap<_, _> = env.into_iter().collect();
            let pid = store.update(|m, now| {
                let (gpu, gi) = resolve_target(m, gpu, mig.as_deref())?;
                m.start_process(gpu, gi, memory, sm, mem_util, env, now)
            })?;
            pid.to_string()
        }
        Cmd::Stop { pid } => {
            store.update(|m, now| m.stop_process(pid, now))?;
            String::new()
        }
        Cmd::Load { pid, sm, mem_util } => {
            store.update(|m, now| m.set_process_load(pid, sm, mem_util, now))?;
            String::new()
        }
        Cmd::Xid { gpu, xid } => store
            .update(|m, now| m.inject_xid(gpu, xid, now))?
            .to_string(),
        Cmd::ReloadDriver => {
            store.update(|m, now| {
                m.reload_driver(now);
                Ok(())
            })?;
            String::new()
        }
        Cmd::MigMode { gpu, mode } => {
            store.update(|m, _| m.set_mig_mode(gpu, mode == "on"))?;
            String::new()
        }
        Cmd::ClockManual => {
            store.update(|m, now| {
                m.clock = Clock::Manual { now_ms: now };
                Ok(())
            })?;
            String::new()
        }
        Cmd::Advance { ms } => {
            store.update(|m, _| m.advance(ms))?;
            String::new()
        }
        Cmd::ClockWall => {
            store.update(|m, now| {
                m.settle(now);
                m.clock = Clock::Wall;
                let wall = gpu_sim::store::wall_ms();
                for g in &mut m.gpus {
                    g.settled_ms = wall;
                }
                Ok(())
            })?;
            String::new()
        }
    })
}

/// The GPU and GPU instance a `start` names: `--gpu I`, `--gpu I --mig GI`, or `--mig MIG-UUID`.
fn resolve_target(
    m: &gpu_sim::Machine,
    gpu: Option<u32>,
    mig: Option<&str>,
) -> Result<(u32, Option<u32>), SimError> {
    match (gpu, mig) {
        (Some(g), None) => Ok((g, None)),
        (Some(g), Some(gi)) => {
            let gi = gi.parse().map_err(|_| {
                SimError::InvalidArgument(format!("--mig {gi:?} with --gpu is a GPU instance id"))
            })?;
            Ok((g, Some(gi)))
        }
        (None, Some(uuid)) => m
            .gpus
            .iter()
            .find_map(|g| {
                g.gpu_instances
                    .iter()
                    .find(|i| i.uuid == uuid)
                    .map(|i| (g.index, Some(i.id)))
            })
            .ok_or_else(|| SimError::NotFound(format!("no MIG instance {uuid}"))),
        (None, None) => Err(SimError::InvalidArgument(
            "say where the process runs: --gpu I, --gpu I --mig GI, or --mig MIG-UUID".into(),
        )),
    }
}

fn state_json(store: &mut Store) -> Result<String, StoreError> {
    let path = store.path().to_path_buf();
    let m = store.machine()?;
    let now = m.now_ms(gpu_sim::store::wall_ms());
    let mut v = serde_json::to_value(m).map_err(|source| StoreError::Corrupt { path, source })?;
    if let Some(gpus) = v.get_mut("gpus").and_then(|g| g.as_array_mut()) {
        for (j, g) in gpus.iter_mut().enumerate() {
            if let (Some(obj), Some(gpu)) = (g.as_object_mut(), m.gpus.get(j)) {
                obj.insert("power_mw".into(), json!(gpu.power_mw()));
                obj.insert("energy_mj".into(), json!(gpu.energy_mj(now) as u64));
                obj.insert("model".into(), json!(gpu.spec().product_name));
            }
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("now_ms".into(), json!(now));
    }
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}
