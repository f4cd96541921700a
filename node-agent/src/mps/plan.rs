//! The supervisor's decisions, without any process I/O: which GPUs need a control daemon, where
//! each daemon's folders are, and what to start, restart or stop given what runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What runs for one GPU's pipe folder, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// No pid file: no daemon was started there, or it quit.
    Absent,
    /// Its process runs.
    Alive(u32),
    /// Its pid file names a process that is gone (killed, crashed).
    Dead(u32),
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a daemon for a GPU that holds shares and has none.
    Start { gpu: String },
    /// Start a daemon again for a GPU that holds shares and whose daemon died.
    Restart { gpu: String, dead_pid: u32 },
    /// Quit the daemon of a GPU that holds no share.
    Stop { gpu: String, pid: u32 },
    /// Forget the pid file of a dead daemon no GPU needs.
    Forget { gpu: String },
}

/// The GPUs that need a daemon: those that hold at least one share. `shares` gives the GPU of each.
pub fn wanted<'a>(shares: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    shares.into_iter().map(str::to_string).collect()
}

/// What to do so that exactly the `wanted` GPUs have a live daemon. `seen` covers at least the
/// wanted GPUs (a GPU missing from it is taken as [`Daemon::Absent`]). The daemon of a GPU not
/// wanted is stopped when the agent wanted it before (`was_wanted`: its last share went) or when
/// `ownership_known`: until the agent knows every share it holds (its checkpoint read, or the
/// controller's ledger answered), a daemon found from before may serve a share not yet taken back.
pub fn plan(
    wanted: &BTreeSet<String>,
    seen: &BTreeMap<String, Daemon>,
    ownership_known: bool,
    was_wanted: &BTreeSet<String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for gpu in wanted {
        match seen.get(gpu).copied().unwrap_or(Daemon::Absent) {
            Daemon::Alive(_) => {}
            Daemon::Absent => out.push(Action::Start { gpu: gpu.clone() }),
            Daemon::Dead(pid) => out.push(Action::Restart {
                gpu: gpu.clone(),
                dead_pid: pid,
            }),
        }
    }
    for (gpu, d) in seen {
        if wanted.contains(gpu) {
            continue;
        }
        match *d {
            Daemon::Alive(pid) if ownership_known || was_wanted.contains(gpu) => {
                out.push(Action::Stop {
                    gpu: gpu.clone(),
                    pid,
                })
            }
            Daemon::Dead(_) => out.push(Action::Forget { gpu: gpu.clone() }),
            _ => {}
        }
    }
    out
}

/// The limits a GPU's daemon gives a client that sets none of its own: the tightest of the GPU's
/// shares, so a share that drops its environment gains nothing (MPS thread percentage, pinned
/// device memory in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub thread_percentage: u32,
    pub pinned_mib: u64,
}

/// The daemon defaults of each GPU from its shares, given as (GPU, compute fraction, memory bytes).
/// The percentage and MiB are rounded up as in the share's own environment.
pub fn defaults<'a>(
    shares: impl IntoIterator<Item = (&'a str, f64, u64)>,
) -> BTreeMap<String, Defaults> {
    let mut out: BTreeMap<String, Defaults> = BTreeMap::new();
    for (gpu, f, mem) in shares {
        let d = Defaults {
            thread_percentage: ((f * 100.0).ceil() as u32).clamp(1, 100),
            pinned_mib: mem.div_ceil(1 << 20).max(1),
        };
        out.entry(gpu.to_string())
            .and_modify(|e| {
                e.thread_percentage = e.thread_percentage.min(d.thread_percentage);
                e.pinned_mib = e.pinned_mib.min(d.pinned_mib);
            })
            .or_insert(d);
    }
    out
}

/// The control commands that set `d` on a daemon serving one GPU (device ordinal 0 in its view).
pub fn default_commands(d: &Defaults) -> Vec<String> {
    vec![
        format!(
            "set_default_active_thread_percentage {}",
            d.thread_percentage
        ),
        format!("set_default_device_pinned_mem_limit 0 {}M", d.pinned_mib),
    ]
}

/// The folder name of a GPU under the pipe and log folders: its UUID, with anything but letters,
/// digits, '-', '_' and '.' replaced by '_' (a UUID never has them; a path must not escape).
pub fn folder_name(gpu: &str) -> String {
    let s: String = gpu
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("gpu-{}", s.len()),
        _ => s,
    }
}

/// The GPU's own folder under `base` (its pipe folder under the pipe base, its log folder under the
/// log base).
pub fn gpu_dir(base: &Path, gpu: &str) -> PathBuf {
    base.join(folder_name(gpu))
}

/// A daemon's state from its pid file's text and whether that process runs (`alive(pid)`).
pub fn read_pid_file(text: Option<&str>, alive: impl Fn(u32) -> bool) -> Daemon {
    match text
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| *p > 1)
    {
        None => Daemon::Absent,
        Some(pid) if alive(pid) => Daemon::Alive(pid),
        Some(pid) => Daemon::Dead(pid),
    }
}

/// Whether a NUL-separated environment block (/proc/PID/environ) holds `key=value`: a daemon
/// inherits the CUDA_MPS_PIPE_DIRECTORY it was started with, so a process whose environment names
/// another folder (or none) is not that folder's daemon, only a process that took its pid again.
pub fn environ_holds(environ: &[u8], key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// Whether a /proc/PID/stat line is of a process that still runs (not a zombie, not dead).
pub fn stat_runs(stat: &str) -> bool {
    // "PID (comm) S ...": the state follows the last ')', as comm may hold anything.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| !matches!(s, "Z" | "X" | "x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(g: &[&str]) -> BTreeSet<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    fn seen(v: &[(&str, Daemon)]) -> BTreeMap<String, Daemon> {
        v.iter().map(|(g, d)| (g.to_string(), *d)).collect()
    }

    #[test]
    fn a_gpu_with_shares_gets_one_daemon_and_one_without_none() {
        let w = wanted(["GPU-a", "GPU-a", "GPU-b"]);
        assert_eq!(w, set(&["GPU-a", "GPU-b"]));
        assert_eq!(
            plan(&w, &seen(&[("GPU-b", Daemon::Alive(7))]), true, &set(&[])),
            [Action::Start {
                gpu: "GPU-a".into()
            }]
        );
        assert!(plan(&set(&[]), &seen(&[]), true, &set(&[])).is_empty());
    }

    #[test]
    fn a_dead_daemon_of_a_gpu_with_shares_is_restarted() {
        assert_eq!(
            plan(
                &set(&["GPU-a"]),
                &seen(&[("GPU-a", Daemon::Dead(42))]),
                false,
                &set(&[])
            ),
            [Action::Restart {
                gpu: "GPU-a".into(),
                dead_pid: 42
            }]
        );
    }

    #[test]
    fn a_daemon_of_a_gpu_without_shares_quits_once_ownership_is_known() {
        let s = seen(&[("GPU-a", Daemon::Alive(9)), ("GPU-b", Daemon::Dead(3))]);
        assert_eq!(
            plan(&set(&[]), &s, true, &set(&[])),
            [
                Action::Stop {
                    gpu: "GPU-a".into(),
                    pid: 9
                },
                Action::Forget {
                    gpu: "GPU-b".into()
                }
            ]
        );
        assert_eq!(
            plan(&set(&[]), &s, true, &set(&[])),
            plan(&set(&[]), &s, true, &set(&["GPU-a"]))
        );
        // Before: a daemon found from before may serve a share the agent has not taken back yet...
        assert_eq!(
            plan(&set(&[]), &s, false, &set(&[])),
            [Action::Forget {
                gpu: "GPU-b".into()
            }]
        );
        // ...but the daemon of a GPU whose last share the agent cleared goes at once.
        assert_eq!(
            plan(&set(&[]), &s, false, &set(&["GPU-a"]))[0],
            Action::Stop {
                gpu: "GPU-a".into(),
                pid: 9
            }
        );
    }

    #[test]
    fn each_gpu_has_its_own_folder_that_cannot_escape_the_base() {
        let base = Path::new("/run/nvidia-mps");
        assert_eq!(
            gpu_dir(base, "GPU-1b2c3d4e-0000-1111-2222-333344445555"),
            Path::new("/run/nvidia-mps/GPU-1b2c3d4e-0000-1111-2222-333344445555")
        );
        assert_eq!(gpu_dir(base, "../etc"), Path::new("/run/nvidia-mps/.._etc"));
        assert_eq!(folder_name(".."), "gpu-2");
        assert_eq!(folder_name("a/b"), "a_b");
        assert_ne!(gpu_dir(base, "GPU-a"), gpu_dir(base, "GPU-b"));
    }

    #[test]
    fn the_pid_file_says_whether_a_daemon_runs() {
        assert_eq!(read_pid_file(None, |_| true), Daemon::Absent);
        assert_eq!(read_pid_file(Some("junk"), |_| true), Daemon::Absent);
        assert_eq!(read_pid_file(Some("1\n"), |_| true), Daemon::Absent);
        assert_eq!(read_pid_file(Some("123\n"), |_| true), Daemon::Alive(123));
        assert_eq!(read_pid_file(Some("123\n"), |_| false), Daemon::Dead(123));
    }

    #[test]
    fn a_daemon_defaults_to_the_tightest_share_of_its_gpu() {
        let d = defaults([
            ("GPU-a", 0.25, 1 << 30),
            ("GPU-a", 0.5, 512 << 20),
            ("GPU-b", 0.333, (1 << 20) + 1),
        ]);
        assert_eq!(
            d["GPU-a"],
            Defaults {
                thread_percentage: 25,
                pinned_mib: 512
            }
        );
        assert_eq!(
            d["GPU-b"],
            Defaults {
                thread_percentage: 34,
                pinned_mib: 2
            }
        );
        assert_eq!(
            default_commands(&d["GPU-a"]),
            [
                "set_default_active_thread_percentage 25",
                "set_default_device_pinned_mem_limit 0 512M"
            ]
        );
        assert!(defaults([]).is_empty());
    }

    #[test]
    fn a_daemon_is_known_by_the_pipe_folder_in_its_environment() {
        let env = b"PATH=/bin\0CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps/GPU-a\0HOME=/\0";
        assert!(environ_holds(
            env,
            "CUDA_MPS_PIPE_DIRECTORY",
            "/run/nvidia-mps/GPU-a"
        ));
        assert!(!environ_holds(
            env,
            "CUDA_MPS_PIPE_DIRECTORY",
            "/run/nvidia-mps/GPU-b"
        ));
        assert!(!environ_holds(
            env,
            "CUDA_MPS_PIPE_DIRECTORY",
            "/run/nvidia-mps"
        ));
        assert!(!environ_holds(b"", "CUDA_MPS_PIPE_DIRECTORY", "/x"));
    }

    #[test]
    fn a_zombie_does_not_run() {
        assert!(stat_runs("42 (nvidia-cuda-mps) S 1 42 42 0"));
        assert!(stat_runs("42 (a) b) R 1"));
        assert!(!stat_runs("42 (nvidia-cuda-mps) Z 1 42"));
        assert!(!stat_runs(""));
    }
}
