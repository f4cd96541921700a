//! The control daemons as processes: starting one (`nvidia-cuda-mps-control -d`), seeing whether it
//! runs (its pid file in its pipe folder and /proc), and sending it commands (the same binary
//! without `-d`, one command a line on its stdin, in the daemon's CUDA_MPS_PIPE_DIRECTORY).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::plan::{self, Daemon};

/// The pid file the control daemon writes in its pipe folder.
pub const PID_FILE: &str = "nvidia-cuda-mps-control.pid";

/// How long a start or a command may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemons are and how they are run.
#[derive(Debug, Clone)]
pub struct Control {
    /// The control binary (a path, or a name on PATH).
    pub binary: PathBuf,
    /// Parent of the per-GPU pipe folders.
    pub pipe_base: PathBuf,
    /// Parent of the per-GPU log folders.
    pub log_base: PathBuf,
}

impl Control {
    pub fn pipe_dir(&self, gpu: &str) -> PathBuf {
        plan::gpu_dir(&self.pipe_base, gpu)
    }

    pub fn log_dir(&self, gpu: &str) -> PathBuf {
        plan::gpu_dir(&self.log_base, gpu)
    }

    fn command(&self, gpu: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.env("CUDA_MPS_PIPE_DIRECTORY", self.pipe_dir(gpu))
            .env("CUDA_MPS_LOG_DIRECTORY", self.log_dir(gpu));
        c
    }

    /// What runs in `gpu`'s pipe folder. The pid file's process counts as its daemon only while it
    /// runs and, where its environment can be read, names this pipe folder (a pid taken again by
    /// another process after the daemon died is not it).
    pub fn observe(&self, gpu: &str) -> Daemon {
        let pipe = self.pipe_dir(gpu);
        let text = std::fs::read_to_string(pipe.join(PID_FILE)).ok();
        let pipe = pipe.to_string_lossy();
        plan::read_pid_file(text.as_deref(), |pid| {
            process_runs(pid)
                && std::fs::read(format!("/proc/{pid}/environ")).map_or(true, |env| {
                    plan::environ_holds(&env, "CUDA_MPS_PIPE_DIRECTORY", &pipe)
                })
        })
    }

    /// The GPUs with a pid file under the pipe base (daemons this agent may have started before).
    pub fn folders(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.pipe_base) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter(|e| e.path().join(PID_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Starts `gpu`'s daemon, serving that GPU only; returns its pid once it runs.
    pub fn start(&self, gpu: &str) -> Result<u32, String> {
        let pipe = self.pipe_dir(gpu);
        let log = self.log_dir(gpu);
        for d in [&pipe, &log] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        // A pid file left by a daemon that died would be taken for the new one.
        let _ = std::fs::remove_file(pipe.join(PID_FILE));
        // Its stderr goes to a file, not a pipe: a daemon that keeps the inherited descriptor
        // would hold a pipe open for its whole life.
        let err_path = log.join("agent-start.err");
        let err = std::fs::File::create(&err_path)
            .map_err(|e| format!("cannot create {}: {e}", err_path.display()))?;
        let child = self
            .command(gpu)
            .arg("-d")
            .env("CUDA_VISIBLE_DEVICES", gpu)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let status = exited(child, TIMEOUT)?.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            let why = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "{} -d failed ({status}): {}",
                self.binary.display(),
                why.trim()
            ));
        }
        // -d returns once the daemon listens; the pid file may come a moment later.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.observe(gpu) {
                Daemon::Alive(pid) => return Ok(pid),
                d if Instant::now() > deadline => {
                    return Err(format!(
                        "the daemon did not come up in {} ({d:?})",
                        pipe.display()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends `commands` to `gpu`'s daemon and returns what it answered.
    pub fn send(&self, gpu: &str, commands: &[&str]) -> Result<String, String> {
        let mut child = self
            .command(gpu)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let text: String = commands.iter().map(|c| format!("{c}\n")).collect();
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| format!("cannot write to {}: {e}", self.binary.display()))?;
        }
        let out = exited(child, TIMEOUT)?
            .wait_with_output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{commands:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops `gpu`'s daemon (`pid`): `quit`, then SIGTERM and SIGKILL if it does not go.
    pub fn stop(&self, gpu: &str, pid: u32) -> Result<(), String> {
        let quit = self.send(gpu, &["quit"]);
        if quit.is_ok() && wait_gone(pid, Duration::from_secs(5)) {
            return Ok(());
        }
        for sig in [
            crate::enforce::StopSignal::Term,
            crate::enforce::StopSignal::Kill,
        ] {
            let _ = crate::backend::signal::send(pid, sig);
            if wait_gone(pid, Duration::from_secs(2)) {
                let _ = std::fs::remove_file(self.pipe_dir(gpu).join(PID_FILE));
                return Ok(());
            }
        }
        Err(format!(
            "daemon {pid} of {gpu} does not stop ({})",
            quit.err().unwrap_or_else(|| "quit answered".into())
        ))
    }

    /// Forgets a dead daemon's pid file.
    pub fn forget(&self, gpu: &str) {
        let _ = std::fs::remove_file(self.pipe_dir(gpu).join(PID_FILE));
    }
}

/// Whether process `pid` runs (a zombie does not).
pub fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| plan::stat_runs(&s))
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !process_runs(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !process_runs(pid)
}

/// The child once it has exited, or an error (the child killed) when it runs past `within`.
fn exited(mut child: std::process::Child, within: Duration) -> Result<std::process::Child, String> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(child),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", within.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether `binary` can be run: a path to an executable file, or a name found on PATH.
pub fn found(binary: &Path) -> bool {
    if binary.components().count() > 1 {
        return std::fs::metadata(binary).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
    }
    std::env::var_os("PATH").is_some_and(|p| crate::backend::on_path(&binary.to_string_lossy(), &p))
}
