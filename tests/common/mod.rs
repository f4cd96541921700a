//! Helpers shared by the cross-process tests: starting `greenslice controller` as a child process,
//! and checking that the ledger, the controller and the (simulated) hardware agree.
//!
//! The controller runs as the `greenslice controller` subcommand of this package's own binary
//! (`CARGO_BIN_EXE_greenslice`): cargo builds it for integration tests, whereas the
//! `greenslice-controller` binary of the controller package is not built for this package's tests.
//! Both run the same code (`greenslice_controller::cli::run`).

#![allow(dead_code)]

pub mod fake_apiserver;
pub mod fake_kubelet;
pub mod nvml_sim;
pub mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use greenslice::harness::AgentSet;
use greenslice_core::inventory::Gpu;
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Requests a slice of `kind` for `tenant` from the controller at `url`; panics on refusal.
pub async fn request_slice(url: &str, tenant: &str, kind: pb::slice_spec::Kind) -> pb::Slice {
    let mut c = TenantServiceClient::connect(url.to_string()).await.unwrap();
    c.request_slice(pb::RequestSliceRequest {
        tenant: tenant.into(),
        spec: Some(pb::SliceSpec {
            kind: Some(kind),
            ..Default::default()
        }),
        idempotency_key: String::new(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .slice
    .unwrap()
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A controller child process.
pub struct ControllerProc {
    pub child: Child,
    pub url: String,
}

/// Starts `greenslice controller ARGS --listen 127.0.0.1:PORT`, logging to `log`, and waits until
/// it prints its address (for etcd standbys that is before they lead).
pub async fn start_controller(port: u16, args: &[&str], log: &Path) -> ControllerProc {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("controller log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenslice"))
        .arg("controller")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--insecure"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf))
        .kill_on_drop(true)
        .spawn()
        .expect("start greenslice controller");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("controller printed its address within 30 s")
        .expect("controller stdout");
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("listening on")),
        "controller said {line:?}; log: {}",
        log.display()
    );
    ControllerProc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

impl ControllerProc {
    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub async fn channel(url: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .ok()
}

/// Waits until every node is connected and no slice is PENDING or RELEASING (recovery done).
pub async fn wait_settled(url: &str, nodes: usize, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(ch) = channel(url).await {
            let inv = OpsServiceClient::new(ch.clone())
                .inventory(pb::InventoryRequest::default())
                .await;
            let list = list_every(ch, pb::ListSlicesRequest::default()).await;
            match (inv, list) {
                (Ok(inv), Ok(list)) => {
                    let connected = inv.get_ref().nodes.iter().filter(|n| n.connected).count();
                    let busy = list
                        .iter()
                        .filter(|s| {
                            s.state == pb::SliceState::Pending as i32
                                || s.state == pb::SliceState::Releasing as i32
                        })
                        .count();
                    if connected == nodes && busy == 0 {
                        return Ok(());
                    }
                    last = format!("{connected}/{nodes} nodes connected, {busy} slices in flight");
                }
                (Err(e), _) | (_, Err(e)) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not settled within {within:?}: {last}"))
}

/// Every slice `req` matches, page after page.
pub async fn list_every(
    ch: Channel,
    mut req: pb::ListSlicesRequest,
) -> Result<Vec<pb::Slice>, tonic::Status> {
    let mut c = TenantServiceClient::new(ch);
    let mut out = Vec::new();
    loop {
        let r = c.list_slices(req.clone()).await?.into_inner();
        out.extend(r.slices);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        req.page_token = r.next_page_token;
    }
}

/// Every slice the controller knows, by id.
pub async fn all_slices(url: &str) -> BTreeMap<String, pb::Slice> {
    let ch = channel(url).await.expect("controller reachable");
    list_every(
        ch,
        pb::ListSlicesRequest {
            include_terminal: true,
            ..Default::default()
        },
    )
    .await
    .expect("list slices")
    .into_iter()
    .map(|s| (s.id.clone(), s))
    .collect()
}

/// (node, GPU uuid, slice id) of one thing greenslice made on a GPU.
pub type Held = BTreeSet<(String, String, String)>;

/// What the simulated hardware holds: (node, gpu uuid, slice id) for every MIG instance, share and
/// whole assignment; and the GPUs, by node.
pub fn hardware(agents: &AgentSet) -> (Held, Vec<(String, Gpu)>) {
    let mut held = BTreeSet::new();
    let mut gpus = Vec::new();
    for (node, b) in &agents.backends {
        let inv = b
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inventory()
            .expect("sim inventory");
        for g in inv {
            for i in &g.mig_instances {
                if let Some(s) = &i.slice_id {
                    held.insert((node.clone(), g.uuid.clone(), s.clone()));
                }
            }
            for s in &g.shares {
                held.insert((node.clone(), g.uuid.clone(), s.slice_id.clone()));
            }
            if let Some(w) = &g.whole_slice_id {
                held.insert((node.clone(), g.uuid.clone(), w.clone()));
            }
            gpus.push((node.clone(), g));
        }
    }
    (held, gpus)
}

/// Checks no GPU is oversubscribed on the hardware: shares within compute and memory, a whole
/// assignment alone, MIG instances not overlapping.
pub fn check_not_oversubscribed(gpus: &[(String, Gpu)]) -> Result<(), String> {
    for (node, g) in gpus {
        let milli: u32 = g
            .shares
            .iter()
            .map(|s| greenslice_core::slice::share_milli(s.compute_fraction))
            .sum();
        let mem: u64 = g.shares.iter().map(|s| s.memory_bytes).sum();
        if milli > 1000 || mem > g.memory_bytes {
            return Err(format!(
                "{node} {}: shares use {milli} milli-GPU and {mem} bytes",
                g.uuid
            ));
        }
        if g.whole_slice_id.is_some() && (!g.shares.is_empty() || !g.mig_instances.is_empty()) {
            return Err(format!("{node} {}: held whole and shared", g.uuid));
        }
        let mut used = 0u16;
        for i in &g.mig_instances {
            let mask = (((1u32 << i.size) - 1) << i.start) as u16;
            if used & mask != 0 {
                return Err(format!(
                    "{node} {}: MIG instances overlap at {}",
                    g.uuid, i.start
                ));
            }
            used |= mask;
        }
    }
    Ok(())
}

/// Checks the controller's live slices and the hardware hold exactly the same things.
pub fn check_ledger_matches_hardware(
    slices: &BTreeMap<String, pb::Slice>,
    held: &Held,
) -> Result<(), String> {
    let live_state = |s: &pb::Slice| {
        s.state == pb::SliceState::Active as i32
            || s.state == pb::SliceState::Pending as i32
            || s.state == pb::SliceState::Releasing as i32
    };
    let mut expected = BTreeSet::new();
    for s in slices.values().filter(|s| live_state(s)) {
        let n = if matches!(
            s.spec.as_ref().and_then(|p| p.kind.as_ref()),
            Some(pb::slice_spec::Kind::Whole(_))
        ) {
            s.gpu_uuids.len()
        } else {
            1
        };
        for g in s.gpu_uuids.iter().take(n) {
            expected.insert((s.node.clone(), g.clone(), s.id.clone()));
        }
    }
    let missing: Vec<_> = expected.difference(held).collect();
    let extra: Vec<_> = held.difference(&expected).collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "ledger and hardware differ: live in the ledger but not on hardware {missing:?}; on hardware but not live in the ledger {extra:?}"
        ))
    }
}

/// Runs `promtool check metrics` on `text`. Skips (with a message) when promtool is missing, unless
/// GREENSLICE_REQUIRE_PROMTOOL is set (CI), where a missing promtool fails the test.
pub fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("GREENSLICE_REQUIRE_PROMTOOL").is_none(),
                "GREENSLICE_REQUIRE_PROMTOOL is set but promtool cannot run ({e}); install Debian's `prometheus` package"
            );
            eprintln!(
                "SKIPPED promtool check of {what}: promtool not found ({e}); apt-get install prometheus"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed for {what}:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` on loopback `port` (HTTP/1.0): the whole response, empty if nothing answers.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
