//! The controller binary's own behaviour at its edges.

use std::process::Command;

/// Runs the controller with `config` as its config file (plus `args`); returns its output.
fn run_with_config(dir: &std::path::Path, config: &str, args: &[&str]) -> std::process::Output {
    let p = dir.join("c.toml");
    std::fs::write(&p, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .arg("--config")
        .arg(&p)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_config_file_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(dir.path(), "listen = 5\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config"));
}

#[test]
fn unknown_config_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(dir.path(), "listne = \"127.0.0.1:1\"\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn bad_carbon_settings_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("grid.csv");
    std::fs::write(&csv, "0,200\n3600,not-a-number\n").unwrap();
    let config = format!("[carbon]\nlocation_csv = {:?}\n", csv.display().to_string());
    let out = run_with_config(
        dir.path(),
        &config,
        &["--ledger", "memory", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grid.csv"));
}

#[test]
fn serves_prometheus_metrics_when_asked() {
    use std::io::{BufRead, BufReader, Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .args(["--ledger", "memory", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.contains("200 OK"), "{body}");
    assert!(
        body.contains("# TYPE greenslice_idle_warned_slices gauge"),
        "{body}"
    );
}
