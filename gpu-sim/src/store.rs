//! The machine's state file: the hardware that outlives every process using it.
//!
//! Reads take no lock: a change is written to a temporary file, synced, and renamed over the state
//! file, so a reader sees the whole old or the whole new machine. The parsed machine is cached and
//! re-read only when the file changed (a rename makes a new inode). Changes take an exclusive lock
//! on `PATH.lock`, re-read the file, apply, and write; two writers never lose each other's change.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::devices::MachineKind;
use crate::machine::{Clock, Machine, SimError};

/// Environment variable naming the state file.
pub const STATE_ENV: &str = "GREENSLICE_NVML_SIM_STATE";
/// Machine kind of a new state file (`dgx-h100`, ...).
pub const MACHINE_ENV: &str = "GREENSLICE_NVML_SIM_MACHINE";
/// How many MIG-capable GPUs of a new machine start in MIG mode.
pub const MIG_GPUS_ENV: &str = "GREENSLICE_NVML_SIM_MIG_GPUS";
/// Seed of a new machine's UUIDs.
pub const SEED_ENV: &str = "GREENSLICE_NVML_SIM_SEED";
/// `wall` (default) or `manual`: the clock of a new machine.
pub const CLOCK_ENV: &str = "GREENSLICE_NVML_SIM_CLOCK";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a simulated machine's state: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid simulator setting: {0}")]
    Config(String),
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// What a new machine is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    pub kind: MachineKind,
    pub mig_gpus: u32,
    pub seed: u64,
    pub manual_clock: bool,
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec {
            kind: MachineKind::DgxH100,
            mig_gpus: 0,
            seed: 1,
            manual_clock: false,
        }
    }
}

impl MachineSpec {
    /// From the `GREENSLICE_NVML_SIM_*` environment; unset variables keep the defaults.
    pub fn from_env() -> Result<MachineSpec, StoreError> {
        let mut s = MachineSpec::default();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var(MACHINE_ENV) {
            s.kind = v.parse().map_err(StoreError::Config)?;
        }
        if let Some(v) = var(MIG_GPUS_ENV) {
            s.mig_gpus = v
                .parse()
                .map_err(|_| StoreError::Config(format!("{MIG_GPUS_ENV}={v:?} is not a count")))?;
        }
        if let Some(v) = var(SEED_ENV) {
            s.seed = v
                .parse()
                .map_err(|_| StoreError::Config(format!("{SEED_ENV}={v:?} is not a number")))?;
        }
        if let Some(v) = var(CLOCK_ENV) {
            s.manual_clock = match v.as_str() {
                "wall" => false,
                "manual" => true,
                _ => {
                    return Err(StoreError::Config(format!(
                        "{CLOCK_ENV}={v:?}: use wall or manual"
                    )));
                }
            };
        }
        Ok(s)
    }

    /// A freshly booted machine.
    pub fn build(&self) -> Machine {
        let now = wall_ms();
        let clock = if self.manual_clock {
            Clock::Manual { now_ms: now }
        } else {
            Clock::Wall
        };
        Machine::new(self.kind, self.mig_gpus, self.seed, clock, now)
    }
}

/// The wall clock, Unix ms.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Identity of one version of the file: a rename gives a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    })
}

/// A handle on the state file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    cache: Option<(Stamp, Machine)>,
}

impl Store {
    /// Opens the state file, creating a machine from `spec` when there is none yet.
    pub fn open(path: impl Into<PathBuf>, spec: &MachineSpec) -> Result<Store, StoreError> {
        let mut s = Store {
            path: path.into(),
            cache: None,
        };
        if !s.path.exists() {
            let _lock = s.lock()?;
            if !s.path.exists() {
                let m = spec.build();
                s.write(&m)?;
            }
        }
        s.machine()?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<File, StoreError> {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        Ok(f)
    }

    fn load(&self) -> Result<(Stamp, Machine), StoreError> {
        let st = stamp(&self.path).map_err(|e| self.io(e))?;
        let bytes = std::fs::read(&self.path).map_err(|e| self.io(e))?;
        let m = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        Ok((st, m))
    }

    /// The machine as the file holds it now.
    pub fn machine(&mut self) -> Result<&Machine, StoreError> {
        let now = stamp(&self.path).map_err(|e| self.io(e))?;
        let fresh = matches!(&self.cache, Some((s, _)) if *s == now);
        if !fresh {
            self.cache = Some(self.load()?);
        }
        match &self.cache {
            Some((_, m)) => Ok(m),
            None => Err(self.io(std::io::Error::other("state not loaded"))),
        }
    }

    /// Applies a change under the lock: `f` gets the machine and the simulated time now.
    pub fn update<T>(
        &mut self,
        f: impl FnOnce(&mut Machine, u64) -> Result<T, SimError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let (_, mut m) = self.load()?;
        let now = m.now_ms(wall_ms());
        let out = f(&mut m, now)?;
        self.write(&m)?;
        let st = stamp(&self.path).map_err(|e| self.io(e))?;
        self.cache = Some((st, m));
        Ok(out)
    }

    fn write(&self, m: &Machine) -> Result<(), StoreError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec_pretty(m).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))
    }
}
