//! Where the machine lives: a state file shared by every process that uses the simulated machine
//! (the NVML library inside the agent, the workload CLI, tests), or memory for in-process use.
//!
//! - Writes take an exclusive lock on `PATH.lock`, re-read the file, change it, and replace it
//!   atomically (write a temporary file, fsync, rename), so a reader never sees half a state.
//! - Reads are cached: the file is parsed again only when its (inode, size, mtime) changed, so the
//!   many NVML calls of one sample cost one `stat` each.
//! - With [`TimeMode::Wall`] a read advances the cached copy to the wall clock (energy integrates
//!   exactly the same whether advanced in one step or many), without writing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::device::MachineKind;
use crate::machine::{Machine, SimError, TimeMode};

/// Environment variable naming the state file.
pub const ENV_STATE: &str = "GREENSLICE_NVML_SIM_STATE";
/// Machine kind of a new state file (default `dgx-h100`).
pub const ENV_MACHINE: &str = "GREENSLICE_NVML_SIM_MACHINE";
/// GPUs of a new state file (default 8).
pub const ENV_GPUS: &str = "GREENSLICE_NVML_SIM_GPUS";
/// How many GPUs of a new state file start in MIG mode (default 0).
pub const ENV_MIG_GPUS: &str = "GREENSLICE_NVML_SIM_MIG_GPUS";
/// `manual` makes a new state file's time move only when driven.
pub const ENV_TIME: &str = "GREENSLICE_NVML_SIM_TIME";

/// The wall clock, ms since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What goes wrong with the state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{ENV_STATE} is not set: it names the simulated machine's state file")]
    NoPath,
    #[error("bad {var}: {msg}")]
    BadEnv { var: &'static str, msg: String },
    #[error("state file {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("state file {path} is not a simulated machine: {err}")]
    Corrupt {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// How a missing state file is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSpec {
    pub kind: MachineKind,
    pub gpus: u32,
    pub mig_gpus: u32,
    pub time_mode: TimeMode,
}

impl Default for InitSpec {
    fn default() -> Self {
        InitSpec {
            kind: MachineKind::DgxH100,
            gpus: 8,
            mig_gpus: 0,
            time_mode: TimeMode::Wall,
        }
    }
}

impl InitSpec {
    /// From `GREENSLICE_NVML_SIM_MACHINE`, `_GPUS`, `_MIG_GPUS`, `_TIME`.
    pub fn from_env() -> Result<InitSpec, StoreError> {
        let mut s = InitSpec::default();
        if let Ok(v) = std::env::var(ENV_MACHINE) {
            s.kind = v.parse().map_err(|msg| StoreError::BadEnv {
                var: ENV_MACHINE,
                msg,
            })?;
        }
        let num = |var: &'static str, v: String| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n <= 64)
                .ok_or(StoreError::BadEnv {
                    var,
                    msg: format!("{v:?} is not a number 0-64"),
                })
        };
        if let Ok(v) = std::env::var(ENV_GPUS) {
            s.gpus = num(ENV_GPUS, v)?;
        }
        if let Ok(v) = std::env::var(ENV_MIG_GPUS) {
            s.mig_gpus = num(ENV_MIG_GPUS, v)?;
        }
        if let Ok(v) = std::env::var(ENV_TIME) {
            s.time_mode = match v.as_str() {
                "wall" => TimeMode::Wall,
                "manual" => TimeMode::Manual,
                _ => {
                    return Err(StoreError::BadEnv {
                        var: ENV_TIME,
                        msg: format!("{v:?}: wall or manual"),
                    });
                }
            };
        }
        Ok(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

#[derive(Debug)]
enum Backing {
    File {
        path: PathBuf,
        cached: Option<(Stamp, Machine)>,
    },
    Memory(Machine),
}

/// The simulated machine, in a file or in memory.
#[derive(Debug)]
pub struct Store {
    backing: Backing,
}

struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Store {
    /// A machine that lives only in this process.
    pub fn memory(m: Machine) -> Store {
        Store {
            backing: Backing::Memory(m),
        }
    }

    /// The machine in `GREENSLICE_NVML_SIM_STATE`, created from the environment's [`InitSpec`]
    /// when the file does not exist yet.
    pub fn from_env() -> Result<Store, StoreError> {
        let path = std::env::var_os(ENV_STATE).ok_or(StoreError::NoPath)?;
        Store::open(Path::new(&path), &InitSpec::from_env()?)
    }

    /// The machine in `path`, created as `init` says when missing.
    pub fn open(path: &Path, init: &InitSpec) -> Result<Store, StoreError> {
        let store = Store {
            backing: Backing::File {
                path: path.to_path_buf(),
                cached: None,
            },
        };
        let _lock = store.lock()?;
        if !path.exists() {
            let seed = path.to_string_lossy().to_string();
            let mut m = Machine::new(init.kind, init.gpus, init.mig_gpus, &seed, wall_ms());
            m.time_mode = init.time_mode;
            write_atomic(path, &m)?;
        }
        Ok(store)
    }

    fn lock(&self) -> Result<Option<Lock>, StoreError> {
        let Backing::File { path, .. } = &self.backing else {
            return Ok(None);
        };
        let lock_path = lock_path(path);
        let io = |err| StoreError::Io {
            path: lock_path.clone(),
            err,
        };
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        f.lock().map_err(io)?;
        Ok(Some(Lock(f)))
    }

    /// The machine now (cached; re-read only when the file changed).
    pub fn read(&mut self) -> Result<&Machine, StoreError> {
        match &mut self.backing {
            Backing::Memory(m) => {
                if m.time_mode == TimeMode::Wall {
                    m.advance_to(wall_ms());
                }
                Ok(m)
            }
            Backing::File { path, cached } => {
                let meta = fs::metadata(&*path).map_err(|err| StoreError::Io {
                    path: path.clone(),
                    err,
                })?;
                let st = stamp(&meta);
                if cached.as_ref().is_none_or(|(s, _)| *s != st) {
                    *cached = Some((st, load(path)?));
                }
                let Some((_, m)) = cached.as_mut() else {
                    unreachable!("cached was just filled")
                };
                if m.time_mode == TimeMode::Wall {
                    m.advance_to(wall_ms());
                }
                Ok(m)
            }
        }
    }

    /// Changes the machine under the lock and writes it back; nothing is written when `f` fails.
    pub fn update<R>(
        &mut self,
        f: impl FnOnce(&mut Machine) -> Result<R, SimError>,
    ) -> Result<R, StoreError> {
        let _lock = self.lock()?;
        match &mut self.backing {
            Backing::Memory(m) => {
                if m.time_mode == TimeMode::Wall {
                    m.advance_to(wall_ms());
                }
                let mut next = m.clone();
                let r = f(&mut next)?;
                *m = next;
                Ok(r)
            }
            Backing::File { path, cached } => {
                let mut m = load(path)?;
                if m.time_mode == TimeMode::Wall {
                    m.advance_to(wall_ms());
                }
                let r = f(&mut m)?;
                write_atomic(path, &m)?;
                let meta = fs::metadata(&*path).map_err(|err| StoreError::Io {
                    path: path.clone(),
                    err,
                })?;
                *cached = Some((stamp(&meta), m));
                Ok(r)
            }
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn load(path: &Path) -> Result<Machine, StoreError> {
    let bytes = fs::read(path).map_err(|err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
        path: path.to_path_buf(),
        err,
    })
}

fn write_atomic(path: &Path, m: &Machine) -> Result<(), StoreError> {
    let io = |err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec(m).map_err(|err| StoreError::Corrupt {
        path: path.to_path_buf(),
        err,
    })?;
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_through_one_store_is_seen_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let init = InitSpec {
            mig_gpus: 2,
            time_mode: TimeMode::Manual,
            ..InitSpec::default()
        };
        let mut a = Store::open(&path, &init).unwrap();
        let mut b = Store::open(&path, &init).unwrap();
        assert_eq!(b.read().unwrap().devices.len(), 8);
        let gi = a
            .update(|m| m.create_gpu_instance(0, 2, Some((0, 4))))
            .unwrap();
        assert_eq!(b.read().unwrap().devices[0].gpu_instances[0].id, gi);
        // A refused change writes nothing.
        let before = b.read().unwrap().generation;
        assert!(
            a.update(|m| m.create_gpu_instance(0, 2, Some((0, 4))))
                .is_err()
        );
        assert_eq!(b.read().unwrap().generation, before);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, b"{not json").unwrap();
        let mut s = Store::open(&path, &InitSpec::default()).unwrap();
        let e = s.read().unwrap_err().to_string();
        assert!(
            e.contains("m.json") && e.contains("not a simulated machine"),
            "{e}"
        );
    }
}
