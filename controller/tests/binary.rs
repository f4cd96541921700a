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

/// `GET path` over HTTP/1.0 on loopback `port`: the whole response, or None if nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn serves_prometheus_metrics_and_readiness_when_asked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let running = spawn(
        &[
            "--ledger",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-listen",
            &metrics,
        ],
        false,
    );
    // Ready once it leads (at once with a local ledger; a standby of an etcd ledger is not).
    let mut ready = None;
    for _ in 0..100 {
        ready = http_get(port, "/readyz");
        if ready.as_deref().is_some_and(|r| r.contains("200 OK")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let body = http_get(port, "/metrics").unwrap_or_default();
    drop(running);
    let ready = ready.unwrap_or_default();
    assert!(
        ready.contains("200 OK") && ready.contains("leading"),
        "{ready}"
    );
    assert!(body.contains("200 OK"), "{body}");
    assert!(
        body.contains("# TYPE greenslice_idle_warned_slices gauge"),
        "{body}"
    );
    assert!(body.contains("\ngreenslice_leading 1\n"), "{body}");
}

/// A controller process started by [`spawn`]; killed when dropped.
struct Running {
    child: std::process::Child,
    /// The address it printed (`listening on ADDR`).
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the controller with `args` and waits for its address line. Its stderr is kept for the
/// caller when `capture_stderr` (read it only after stopping the process), dropped otherwise.
fn spawn(args: &[&str], capture_stderr: bool) -> Running {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(if capture_stderr {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected controller output {line:?}"))
        .to_string();
    Running { child, addr }
}

/// Starts the controller with `args`, waits for its address line, stops it, and returns what it
/// wrote on stderr.
fn start_and_stop(args: &[&str]) -> String {
    use std::io::Read;
    let mut r = spawn(args, true);
    let _ = r.child.kill();
    let _ = r.child.wait();
    let mut err = String::new();
    r.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn without_security_settings_or_insecure_it_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(
        dir.path(),
        "",
        &["--ledger", "memory", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("security is not configured") && err.contains("--insecure"),
        "{err}"
    );
    // Partly configured: the missing settings are named.
    let out = run_with_config(
        dir.path(),
        "[security]\ntls_cert = \"/x.crt\"\n",
        &["--ledger", "memory", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_key, agent_ca, tokens"), "{err}");
    // Configured with files that do not exist: named.
    let out = run_with_config(
        dir.path(),
        "[security]\ntls_cert = \"/no/tls.crt\"\ntls_key = \"/no/tls.key\"\nagent_ca = \"/no/ca.crt\"\ntokens = \"/no/tokens.toml\"\n",
        &["--ledger", "memory", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/tls.crt"));
}

#[test]
fn insecure_mode_is_loopback_only_and_loud() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(
        dir.path(),
        "",
        &["--ledger", "memory", "--listen", "0.0.0.0:0", "--insecure"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused on 0.0.0.0"));
    let err = start_and_stop(&[
        "--ledger",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(err.contains("INSECURE MODE"), "{err}");
}

#[test]
fn the_pki_tool_writes_a_ca_and_certificates_with_private_keys_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .args(["pki", "--out"])
        .arg(dir.path())
        .args(["--names", "ctl.example,10.0.0.1", "--agents", "n1,n2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.crt",
        "controller.crt",
        "controller.key",
        "agent-n1.crt",
        "agent-n2.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    // A bad name is refused with exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .args(["pki", "--out"])
        .arg(dir.path().join("x"))
        .args(["--names", ""])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Run again on the same folder, it keeps the CA: it issues the certificates asked for with it
    // and touches nothing else; asked for nothing, it says how to ask (exit 2).
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let (ca, server, n1) = (read("ca.crt"), read("controller.crt"), read("agent-n1.crt"));
    let pki = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
            .args(["pki", "--out"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = pki(&["--agents", "n3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read("ca.crt"), ca);
    assert_eq!(read("controller.crt"), server);
    assert_eq!(read("agent-n1.crt"), n1);
    assert!(dir.path().join("agent-n3.key").exists());
    let out = pki(&["--server", "--names", "ctl.example"]);
    assert!(out.status.success());
    assert_ne!(read("controller.crt"), server, "--server renews it");
    assert_eq!(read("ca.crt"), ca);
    let out = pki(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a CA"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flags for a secure controller on an ephemeral loopback port with a memory ledger, using the
/// files `pki --out <pki>` wrote and the tokens file `tokens`.
fn secure_flags(pki: &str, tokens: &str) -> Vec<String> {
    [
        "--ledger",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &format!("{pki}/controller.crt"),
        "--tls-key",
        &format!("{pki}/controller.key"),
        "--agent-ca",
        &format!("{pki}/ca.crt"),
        "--tokens",
        tokens,
    ]
    .map(str::to_string)
    .to_vec()
}

#[test]
fn revoke_and_agent_crl_refuse_bad_input_with_exit_2_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["pki", "--out", &d("pki"), "--agents", "n1"]);
    assert!(out.status.success());
    let out = run(&[
        "revoke",
        "--pki",
        &d("pki"),
        "--cert",
        &d("pki/agent-n1.crt"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crl = std::fs::read(d("pki/agent-ca.crl")).unwrap();
    std::fs::write(d("not-a-cert.pem"), "hello").unwrap();
    for (args, says) in [
        (
            vec![
                "revoke",
                "--pki",
                &d("nowhere"),
                "--cert",
                &d("pki/agent-n1.crt"),
            ],
            "ca.crt",
        ),
        (
            vec!["revoke", "--pki", &d("pki"), "--cert", &d("not-a-cert.pem")],
            "certificate to revoke",
        ),
        (
            vec!["revoke", "--pki", &d("pki"), "--cert", &d("missing.crt")],
            "missing.crt",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read(d("pki/agent-ca.crl")).unwrap(),
        crl,
        "a refused revoke leaves the list as it was"
    );
    // A configured revocation list that does not exist stops the start, naming it.
    let mut args = secure_flags(&d("pki"), &d("tokens.toml"));
    args.extend(["--agent-crl".to_string(), d("pki/none.crl")]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("none.crl"), "{err}");
}

#[test]
fn the_secure_controller_starts_with_files_from_the_tools() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let ok = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["pki", "--out", &d("pki")]);
    ok(&[
        "token",
        "--name",
        "ops",
        "--role",
        "ops",
        "--append",
        &d("tokens.toml"),
    ]);
    ok(&[
        "token",
        "--name",
        "ci",
        "--role",
        "tenant",
        "--tenant",
        "team-a",
        "--valid-for-days",
        "30",
        "--append",
        &d("tokens.toml"),
    ]);
    let file = std::fs::read_to_string(d("tokens.toml")).unwrap();
    let expires: i64 = file
        .lines()
        .find_map(|l| l.strip_prefix("expires_unix_s = "))
        .expect("the 30-day token has an expiry")
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (expires - now - 30 * 86_400).abs() < 120,
        "{expires} vs {now}"
    );
    let args = secure_flags(&d("pki"), &d("tokens.toml"));
    let err = start_and_stop(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!err.contains("INSECURE"), "{err}");
}

#[tokio::test]
async fn the_energy_report_uses_the_idle_policy_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[idle]\nthreshold_pct = 42.0\n").unwrap();
    let config = p.display().to_string();
    let running = spawn(
        &[
            "--config",
            &config,
            "--ledger",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ],
        false,
    );
    let addr = running.addr.clone();
    let report = async {
        let mut c = greenslice_proto::v1::ops_service_client::OpsServiceClient::connect(format!(
            "http://{addr}"
        ))
        .await?;
        let r = c
            .energy_report(greenslice_proto::v1::EnergyReportRequest::default())
            .await?
            .into_inner();
        anyhow::Ok(r.report_json)
    }
    .await;
    drop(running);
    let doc: serde_json::Value = serde_json::from_str(&report.unwrap()).unwrap();
    assert_eq!(doc["idle_threshold_pct"], 42.0);
}
