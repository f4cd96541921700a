//! A stand-in for NVIDIA's `nvidia-cuda-mps-control`, for tests on the simulated machine. It speaks
//! the real control protocol and keeps what it was told; it runs no MPS server and serves no CUDA
//! client (there is no CUDA here).
//!
//! - `nvidia-cuda-mps-control -d`: starts the control daemon in the background and returns once it
//!   listens (as the real one daemonizes). `-f`: the daemon in the foreground.
//!   The daemon owns `$CUDA_MPS_PIPE_DIRECTORY` (default /tmp/nvidia-mps): its control socket
//!   `control` and its pid file `nvidia-cuda-mps-control.pid`, both as the real daemon names them;
//!   it logs to `$CUDA_MPS_LOG_DIRECTORY/control.log` (default /var/log/nvidia-mps). A second daemon
//!   on the same pipe folder refuses to start.
//! - `nvidia-cuda-mps-control` (no option): reads commands from stdin, one a line, sends each to the
//!   daemon of `$CUDA_MPS_PIPE_DIRECTORY` and prints its answer on stdout. Without a daemon there it
//!   says so on stderr and exits 1.
//!
//! Commands: `get_server_list`, `get_client_list PID`, `set_default_active_thread_percentage P`,
//! `get_default_active_thread_percentage`, `set_active_thread_percentage PID P`,
//! `set_default_device_pinned_mem_limit DEV LIMIT`, `get_default_device_pinned_mem_limit DEV`,
//! `set_device_pinned_mem_limit PID DEV LIMIT`, `quit` (stops the daemon).
//!
//! This file shares no code with the agent's supervisor: it is the other side of the protocol.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PID_FILE: &str = "nvidia-cuda-mps-control.pid";
const SOCKET: &str = "control";

fn pipe_dir() -> PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/nvidia-mps".into())
}

fn log_dir() -> PathBuf {
    std::env::var_os("CUDA_MPS_LOG_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/log/nvidia-mps".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => client(),
        Some("-d") => background(),
        Some("-f") => foreground(),
        Some("-h" | "--help") => {
            println!("usage: nvidia-cuda-mps-control [-d | -f]  (commands on stdin without one)");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("nvidia-cuda-mps-control: unknown option {other}");
            ExitCode::from(2)
        }
    }
}

/// `-d`: the daemon runs on in a process of its own, in a new process group (so the caller's
/// signals do not reach it); this returns once it listens, as the real daemon does.
fn background() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("nvidia-cuda-mps-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match Command::new(exe)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nvidia-cuda-mps-control: cannot start the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = pipe_dir().join(PID_FILE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            eprint!("{err}");
            return ExitCode::FAILURE;
        }
        let ready =
            std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == child.id().to_string());
        if ready {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("nvidia-cuda-mps-control: the daemon did not come up within 5 s");
    ExitCode::FAILURE
}

/// What the daemon was told.
#[derive(Default)]
struct Settings {
    default_thread_percentage: Option<f64>,
    /// Device ordinal to limit, as given (e.g. "2G").
    default_pinned: BTreeMap<String, String>,
}

struct Log(Option<std::fs::File>);

impl Log {
    fn line(&mut self, level: &str, msg: &str) {
        if let Some(f) = &mut self.0 {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(f, "[{secs}] [{level}] {msg}");
        }
    }
}

/// `-f`: the control daemon itself.
fn foreground() -> ExitCode {
    let dir = pipe_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "nvidia-cuda-mps-control: cannot create {}: {e}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let sock = dir.join(SOCKET);
    if UnixStream::connect(&sock).is_ok() {
        eprintln!(
            "An instance of this daemon is already running with pipe directory {}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    // A socket left by a daemon that died.
    let _ = std::fs::remove_file(&sock);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "nvidia-cuda-mps-control: cannot listen on {}: {e}",
                sock.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let logs = log_dir();
    let _ = std::fs::create_dir_all(&logs);
    let mut log = Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("control.log"))
        .ok());
    let devices = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    log.line(
        "INFO",
        &format!(
            "Startup pid {} pipe {} CUDA_VISIBLE_DEVICES={devices}",
            std::process::id(),
            dir.display()
        ),
    );
    // The pid file last: it says the daemon listens.
    let pid_file = dir.join(PID_FILE);
    let tmp = dir.join(format!(".{PID_FILE}.tmp"));
    if std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, &pid_file))
        .is_err()
    {
        eprintln!(
            "nvidia-cuda-mps-control: cannot write {}",
            pid_file.display()
        );
        return ExitCode::FAILURE;
    }
    let mut settings = Settings::default();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            // A probe (a second daemon checking for this one).
            continue;
        }
        log.line("INFO", &format!("Command: {line}"));
        if line.split_whitespace().next() == Some("quit") {
            let _ = std::fs::remove_file(&pid_file);
            let _ = std::fs::remove_file(&sock);
            log.line("INFO", "Shutdown");
            let _ = conn.flush();
            return ExitCode::SUCCESS;
        }
        let answer = answer(&mut settings, line);
        let _ = conn.write_all(answer.as_bytes());
    }
    ExitCode::SUCCESS
}

/// The answer to one command, lines ending in '\n' (empty for none).
fn answer(s: &mut Settings, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let percentage = |p: &str| p.parse::<f64>().ok().filter(|p| *p > 0.0 && *p <= 100.0);
    let limit_ok = |l: &str| {
        let digits = l.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    match words.as_slice() {
        // No CUDA client has come, so no MPS server runs.
        ["get_server_list"] => String::new(),
        ["get_client_list", pid] if pid.parse::<u32>().is_ok() => String::new(),
        ["set_default_active_thread_percentage", p] => match percentage(p) {
            Some(p) => {
                s.default_thread_percentage = Some(p);
                format!("{p:.1}\n")
            }
            None => format!("Invalid active thread percentage {p}\n"),
        },
        ["get_default_active_thread_percentage"] => {
            format!("{:.1}\n", s.default_thread_percentage.unwrap_or(100.0))
        }
        ["set_default_device_pinned_mem_limit", dev, limit]
            if dev.parse::<u32>().is_ok() && limit_ok(limit) =>
        {
            s.default_pinned.insert(dev.to_string(), limit.to_string());
            String::new()
        }
        ["get_default_device_pinned_mem_limit", dev] => match s.default_pinned.get(*dev) {
            Some(l) => format!("{l}\n"),
            None => "0\n".into(),
        },
        [
            "set_active_thread_percentage" | "set_device_pinned_mem_limit",
            pid,
            ..,
        ] => {
            format!("Server {pid} not found\n")
        }
        [] => String::new(),
        _ => format!("Invalid command {line}\n"),
    }
}

/// No option: commands from stdin to the daemon of the pipe folder.
fn client() -> ExitCode {
    let sock = pipe_dir().join(SOCKET);
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match send(&sock, line) {
            Ok(a) => {
                let _ = out.write_all(a.as_bytes());
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!(
                    "Cannot find MPS control daemon process (pipe directory {}): {e}",
                    pipe_dir().display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn send(sock: &Path, line: &str) -> std::io::Result<String> {
    let mut c = UnixStream::connect(sock)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(format!("{line}\n").as_bytes())?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut a = String::new();
    c.read_to_string(&mut a)?;
    Ok(a)
}
