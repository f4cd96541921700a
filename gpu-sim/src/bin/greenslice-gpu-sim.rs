//! `greenslice-gpu-sim`: the workload's side of the simulated GPU machine. Starts and stops
//! simulated processes, injects XIDs and driver reloads, drives time, prints the state as JSON.
//!
//! The state file comes from `--state` or `GREENSLICE_NVML_SIM_STATE`; a missing one is created
//! from `--machine`/`--gpus`/`--mig-gpus` (or their `GREENSLICE_NVML_SIM_*` variables).
//! Exit codes: 0 success, 1 I/O or a corrupt state file, 2 bad input or a refused change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpu_sim::machine::Process;
use gpu_sim::store::{ENV_STATE, InitSpec};
use gpu_sim::{MachineKind, Store, StoreError, TimeMode, Workload};

#[derive(Parser)]
#[command(
    name = "greenslice-gpu-sim",
    about = "The simulated GPU machine, from the workload's side"
)]
struct Cli {
    /// The machine's state file.
    #[arg(long, env = ENV_STATE)]
    state: PathBuf,
    /// Machine kind of a new state file.
    #[arg(long, env = "GREENSLICE_NVML_SIM_MACHINE", default_value = "dgx-h100")]
    machine: MachineKind,
    /// GPUs of a new state file.
    #[arg(long, env = "GREENSLICE_NVML_SIM_GPUS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=64))]
    gpus: u32,
    /// GPUs of a new state file that start in MIG mode.
    #[arg(long, env = "GREENSLICE_NVML_SIM_MIG_GPUS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    mig_gpus: u32,
    /// A new state file's time moves only with `advance`.
    #[arg(long)]
    manual_time: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the machine's state as JSON.
    State,
    /// Starts a simulated process.
    Start {
        #[arg(long)]
        pid: u32,
        /// GPU index.
        #[arg(long)]
        gpu: u32,
        /// GPU instance id (MIG); omit for a GPU without MIG.
        #[arg(long)]
        gi: Option<u32>,
        /// Used memory, MiB.
        #[arg(long, default_value_t = 1024)]
        memory_mib: u64,
        /// SM utilization, %.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        sm: u32,
        /// Memory utilization (DRAM bandwidth), %.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        mem_util: u32,
        /// Tensor-core activity, %.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        tensor: u32,
        /// What it runs (its power coefficients): generic, compute_bound, memory_bound or
        /// tensor_heavy.
        #[arg(long, default_value = "generic")]
        workload: Workload,
        /// Environment, KEY=VALUE (repeatable), e.g. GREENSLICE_SLICE_ID=s-1.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
    },
    /// Changes a running process's utilization (its work changed).
    SetUtil {
        #[arg(long)]
        pid: u32,
        /// SM utilization, %.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        sm: u32,
        /// Memory utilization (DRAM bandwidth), %.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        mem_util: u32,
        /// Tensor-core activity, %.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        tensor: u32,
    },
    /// Ends a simulated process.
    Stop {
        #[arg(long)]
        pid: u32,
    },
    /// Raises an XID on a GPU.
    Xid {
        #[arg(long)]
        gpu: u32,
        #[arg(long)]
        xid: u64,
    },
    /// Reloads the driver: energy counters restart, MIG instances and processes are gone.
    ReloadDriver,
    /// Moves simulated time forward.
    Advance {
        #[arg(long)]
        ms: u32,
    },
    /// Sets a GPU's MIG mode.
    MigMode {
        #[arg(long)]
        gpu: u32,
        #[arg(long, action = clap::ArgAction::Set)]
        on: bool,
    },
    /// Sets a GPU's power limit.
    PowerLimit {
        #[arg(long)]
        gpu: u32,
        #[arg(long)]
        watts: u32,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{k:?} is not an environment variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn run(cli: Cli) -> Result<(), StoreError> {
    let init = InitSpec {
        kind: cli.machine,
        gpus: cli.gpus,
        mig_gpus: cli.mig_gpus,
        time_mode: if cli.manual_time {
            TimeMode::Manual
        } else {
            TimeMode::Wall
        },
    };
    let mut store = Store::open(&cli.state, &init)?;
    match cli.cmd {
        Cmd::State => {
            let m = store.read()?;
            let text = serde_json::to_string_pretty(m).map_err(|err| StoreError::Corrupt {
                path: cli.state.clone(),
                err,
            })?;
            println!("{text}");
        }
        Cmd::Start {
            pid,
            gpu,
            gi,
            memory_mib,
            sm,
            mem_util,
            tensor,
            workload,
            env,
        } => {
            let bytes = memory_mib.checked_mul(1024 * 1024).ok_or_else(|| {
                StoreError::Sim(gpu_sim::SimError::Invalid(format!(
                    "--memory-mib {memory_mib} is too large"
                )))
            })?;
            let p = Process {
                pid,
                gpu_instance_id: gi,
                compute_instance_id: None,
                used_memory_bytes: bytes,
                sm_util_pct: sm,
                mem_util_pct: mem_util,
                tensor_pct: tensor,
                workload,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
                ..Process::default()
            };
            store.update(|m| m.start_process(gpu, gi, p))?;
        }
        Cmd::SetUtil {
            pid,
            sm,
            mem_util,
            tensor,
        } => store.update(|m| m.set_process_activity(pid, sm, mem_util, tensor))?,
        Cmd::Stop { pid } => store.update(|m| m.stop_process(pid))?,
        Cmd::Xid { gpu, xid } => store.update(|m| m.inject_xid(gpu, xid))?,
        Cmd::ReloadDriver => store.update(|m| {
            m.reload_driver();
            Ok(())
        })?,
        Cmd::Advance { ms } => store.update(|m| {
            let to = m.now_ms + i64::from(ms);
            m.advance_to(to);
            Ok(())
        })?,
        Cmd::MigMode { gpu, on } => {
            let (cur, pending) = store.update(|m| m.set_mig_mode(gpu, on))?;
            println!("{{\"current\":{cur},\"pending\":{pending}}}");
        }
        Cmd::PowerLimit { gpu, watts } => {
            let mw = watts.saturating_mul(1000);
            store.update(|m| m.set_power_limit(gpu, mw))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (StoreError::Sim(_) | StoreError::BadEnv { .. })) => {
            eprintln!("greenslice-gpu-sim: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("greenslice-gpu-sim: {e}");
            ExitCode::from(1)
        }
    }
}
