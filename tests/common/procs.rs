//! Helpers for end-to-end tests that drive the real binaries as separate processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary. `greenslice` comes from Cargo; `greenslice-controller` and
/// `greenslice-agent` sit beside it because their packages have integration tests too, so
/// `cargo test --workspace` builds them.
pub fn bin(name: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_greenslice"));
    if name == "greenslice" {
        return me;
    }
    let p = me.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        p.display()
    );
    p
}

/// A child process killed when dropped, with the temporary folder it uses (if any).
pub struct Proc(pub Child, pub Option<tempfile::TempDir>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the controller in insecure mode on an ephemeral port with its redb ledger in a temporary
/// folder; returns it and its URL.
pub fn start_controller(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--insecure"];
    args.extend_from_slice(extra);
    spawn_controller(&args, "http")
}

/// [`start_controller`] with `config` (TOML) as its config file.
pub fn start_controller_with_config(config: &str) -> (Proc, String) {
    let dir = tempfile::tempdir().expect("temp data dir");
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, config).expect("controller config");
    let path = path.to_str().expect("a UTF-8 temp path").to_string();
    let (child, url) = spawn_controller_on(dir.path(), &["--insecure", "--config", &path], "http");
    (Proc(child, Some(dir)), url)
}

/// Like [`start_controller`] without `--insecure`: `extra` gives the TLS and token flags.
pub fn start_secure_controller(extra: &[&str]) -> (Proc, String) {
    spawn_controller(extra, "https")
}

fn spawn_controller(extra: &[&str], scheme: &str) -> (Proc, String) {
    let dir = tempfile::tempdir().expect("temp data dir");
    let (child, url) = spawn_controller_on(dir.path(), extra, scheme);
    (Proc(child, Some(dir)), url)
}

/// Starts the controller with its redb ledger in `dir` (which outlives it, so a restart finds the
/// same ledger); returns the child and its URL.
pub fn spawn_controller_on(dir: &std::path::Path, extra: &[&str], scheme: &str) -> (Child, String) {
    let mut child = Command::new(bin("greenslice-controller"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start greenslice-controller");
    let stdout = child.stdout.take().expect("controller stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read controller address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected controller output {line:?}"))
        .to_string();
    (child, format!("{scheme}://{addr}"))
}

/// Starts a simulated agent.
pub fn start_agent(url: &str, node: &str, machine: &str, mig_gpus: u32) -> Proc {
    start_agent_with(url, node, machine, mig_gpus, &[])
}

/// Starts a simulated agent with extra flags (TLS).
pub fn start_agent_with(
    url: &str,
    node: &str,
    machine: &str,
    mig_gpus: u32,
    extra: &[&str],
) -> Proc {
    let child = Command::new(bin("greenslice-agent"))
        .args([
            "--controller",
            url,
            "--node",
            node,
            "--backend",
            "sim",
            "--machine",
            machine,
        ])
        .args(["--mig-gpus", &mig_gpus.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start greenslice-agent");
    Proc(child, None)
}

/// Runs the CLI against a controller.
pub fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(bin("greenslice"))
        .args(["--controller", url])
        .args(args)
        .env_remove("GREENSLICE_TENANT")
        .env_remove("GREENSLICE_TOKEN")
        .env_remove("GREENSLICE_CA_CERT")
        .output()
        .expect("run greenslice")
}

/// Runs the CLI with `-o json` and parses stdout; panics with stderr when it fails.
pub fn cli_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let out = cli(url, &a);
    assert!(
        out.status.success(),
        "greenslice {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}"))
}

/// `greenslice get ID` as JSON, or Null while the controller does not know the slice.
pub fn slice_or_null(url: &str, id: &str) -> serde_json::Value {
    let out = cli(url, &["-o", "json", "get", id]);
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Polls until `f` returns true or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
