//! Agent restarts lose nothing: the real controller binary and the real agent binary with the NVML
//! backend on the simulated machine (`libgreenslice_nvml_sim.so`, state in a file that outlives the
//! agent, as a node's GPUs do). A storm of requests and releases (whole GPUs, MIG instances, shares)
//! runs over gRPC while the agent is killed with SIGKILL and started again, round after round; after
//! each restart every acknowledged slice must still be ACTIVE with the same devices, nothing may be
//! held twice, and no orphan may be left once the orphan grace has passed. Each round starts a new
//! agent process: no backend object survives a restart. The hardware is read with the
//! `greenslice-gpu-sim` CLI, which shares no code with the agent's view of it.
//!
//! Also: a checkpoint that is truncated, fails its checksum or has an unknown version is refused
//! with a log line naming the reason and rebuilt from the hardware and the controller's ledger,
//! losing nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nvml_sim::*;
use common::procs::*;
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::slice_spec::Kind;
use pb::tenant_service_client::TenantServiceClient;
use serde_json::Value;

const NODE: &str = "h100-restart";

/// Kill rounds: 20 as the issue asks. Each round is a kill, a restart and the checks (about a
/// second on a debug build).
const ROUNDS: usize = 20;

/// One simulated node: its machine file, the agent's state folder and log.
struct Node {
    lib: PathBuf,
    cli: PathBuf,
    machine: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Node {
    fn new(dir: &Path) -> Node {
        let (lib, cli) = sim_artifacts();
        let machine = dir.join("machine.json");
        // The machine exists before the agent, as hardware does: 8 H100s, the first 4 in MIG mode.
        gpu_sim(
            &cli,
            &machine,
            &["--machine", "dgx-h100", "--mig-gpus", "4", "state"],
        );
        std::fs::write(dir.join("agent.toml"), "[mig]\nmanage = true\n").expect("agent config");
        Node {
            lib,
            cli,
            machine,
            state_dir: dir.join("agent-state"),
            log: dir.join("agent.log"),
        }
    }

    /// A new agent process (its log appended to `self.log`).
    fn start(&self, url: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(bin("greenslice-agent"))
            .args(["--controller", url, "--node", NODE, "--backend", "nvml"])
            .arg("--nvml-library")
            .arg(&self.lib)
            .arg("--config")
            .arg(self.machine.with_file_name("agent.toml"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("GREENSLICE_NVML_SIM_STATE", &self.machine)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start greenslice-agent");
        Proc(child, None)
    }

    fn machine(&self) -> Value {
        machine(&self.cli, &self.machine)
    }

    /// The body of the agent's checkpoint (after its header line), or null while it is being
    /// replaced or damaged.
    fn checkpoint(&self) -> Value {
        let bytes = std::fs::read(self.state_dir.join("agent-checkpoint")).unwrap_or_default();
        let body = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(&[][..], |i| &bytes[i + 1..]);
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// SIGKILL (what `Child::kill` sends on Unix), and wait until the process is gone.
fn sigkill(p: &mut Proc) {
    let _ = p.0.kill();
    let _ = p.0.wait();
}

fn start_controller_for_restarts(dir: &Path) -> (Proc, String) {
    let cfg = dir.join("controller.toml");
    std::fs::write(&cfg, "orphan_grace_s = 1\ncommand_timeout_s = 3\n").expect("controller config");
    start_controller(&["--config", cfg.to_str().expect("utf-8 path")])
}

async fn tenant(url: &str) -> TenantServiceClient<tonic::transport::Channel> {
    TenantServiceClient::new(common::channel(url).await.expect("controller reachable"))
}

async fn inventory(url: &str) -> pb::InventoryResponse {
    let ch = common::channel(url).await.expect("controller reachable");
    OpsServiceClient::new(ch)
        .inventory(pb::InventoryRequest::default())
        .await
        .expect("inventory")
        .into_inner()
}

async fn wait_connected(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if inventory(url)
            .await
            .nodes
            .iter()
            .any(|n| n.name == NODE && n.connected)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent did not register within {within:?}");
}

type Tenant = TenantServiceClient<tonic::transport::Channel>;

async fn request(c: &mut Tenant, kind: Kind) -> Result<pb::Slice, tonic::Status> {
    let r = c
        .request_slice(pb::RequestSliceRequest {
            tenant: "team-a".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(kind),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await?;
    r.into_inner()
        .slice
        .ok_or_else(|| tonic::Status::internal("no slice in the answer"))
}

async fn release(c: &mut Tenant, id: &str) -> Result<pb::Slice, tonic::Status> {
    let r = c
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: id.to_string(),
        })
        .await?;
    r.into_inner()
        .slice
        .ok_or_else(|| tonic::Status::internal("no slice in the answer"))
}

/// The devices a tenant was told it holds: GPUs and, for MIG, the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Devices {
    gpus: Vec<String>,
    mig: Option<(u32, String)>,
}

fn devices(s: &pb::Slice) -> Devices {
    Devices {
        gpus: s.gpu_uuids.clone(),
        mig: s
            .mig
            .as_ref()
            .map(|m| (m.gpu_instance_id, m.mig_uuid.clone())),
    }
}

/// What the storm learned: slices acknowledged ACTIVE (and not asked to be released since), and
/// slices whose release was asked (their outcome is the controller's to finish).
#[derive(Debug, Default)]
struct Book {
    acked: BTreeMap<String, Devices>,
    releasing: BTreeSet<String>,
    requests: usize,
    /// Refusals by gRPC code.
    refused: BTreeMap<String, usize>,
}

fn kind_for(n: u64) -> Kind {
    match n % 6 {
        0 => Kind::Whole(pb::WholeGpus { count: 1 }),
        1 => Kind::Mig(pb::MigSlice {
            profile: "1g.10gb".into(),
        }),
        2 => Kind::Mig(pb::MigSlice {
            profile: "2g.20gb".into(),
        }),
        3 => Kind::Mig(pb::MigSlice {
            profile: "3g.40gb".into(),
        }),
        _ => Kind::Share(pb::ShareSlice {
            compute_fraction: 0.25,
            memory_bytes: 8 << 30,
        }),
    }
}

/// About this many slices are kept held while the storm runs: enough that every kill finds some
/// of each kind, not so many that the 8 GPUs are full.
const HELD: usize = 10;

/// Requests and releases until `stop`: a release (of a slice chosen round-robin) for every three
/// requests, or whenever about [`HELD`] slices are held.
async fn storm(url: String, book: Arc<Mutex<Book>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut c = tenant(&url).await;
    let mut n: usize = 0;
    let mut kinds: u64 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let victim = {
            let b = book.lock().unwrap();
            let held = b.acked.len();
            (held > 0 && (held >= HELD || n.is_multiple_of(4)))
                .then(|| b.acked.keys().nth(n % held).cloned())
                .flatten()
        };
        if let Some(id) = victim {
            {
                let mut b = book.lock().unwrap();
                b.acked.remove(&id);
                b.releasing.insert(id.clone());
            }
            let _ = release(&mut c, &id).await;
            continue;
        }
        kinds += 1;
        let r = request(&mut c, kind_for(kinds)).await;
        let down = matches!(&r, Err(e) if e.code() == tonic::Code::Unavailable);
        {
            let mut b = book.lock().unwrap();
            b.requests += 1;
            match r {
                Ok(s) if s.state == pb::SliceState::Active as i32 => {
                    b.acked.insert(s.id.clone(), devices(&s));
                }
                Ok(s) => *b.refused.entry(format!("{:?}", s.state())).or_default() += 1,
                Err(e) => *b.refused.entry(format!("{:?}", e.code())).or_default() += 1,
            }
        }
        if down {
            // The agent is away: no use asking again at once.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn is_live(s: &pb::Slice) -> bool {
    [
        pb::SliceState::Active,
        pb::SliceState::Pending,
        pb::SliceState::Releasing,
    ]
    .iter()
    .any(|st| s.state == *st as i32)
}

/// The simulated machine's MIG instances: (GPU UUID, GPU instance id) to MIG UUID.
fn hw_instances(m: &Value) -> BTreeMap<(String, u64), String> {
    let mut out = BTreeMap::new();
    for d in m["devices"].as_array().into_iter().flatten() {
        let uuid = d["uuid"].as_str().unwrap_or("").to_string();
        for g in d["gpu_instances"].as_array().into_iter().flatten() {
            out.insert(
                (uuid.clone(), g["id"].as_u64().unwrap_or(0)),
                g["mig_uuid"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    out
}

/// Every check of a settled node, or what is wrong.
fn check(
    book: &Book,
    slices: &BTreeMap<String, pb::Slice>,
    checkpoint: &Value,
    hw: &Value,
) -> Result<(), String> {
    // Every acknowledged slice is ACTIVE with the devices it was given.
    for (id, dev) in &book.acked {
        let s = slices
            .get(id)
            .ok_or_else(|| format!("acknowledged slice {id} is gone"))?;
        if s.state != pb::SliceState::Active as i32 {
            return Err(format!(
                "acknowledged slice {id} is {:?}: {}",
                s.state(),
                s.reason
            ));
        }
        if devices(s) != *dev {
            return Err(format!(
                "slice {id} was given {dev:?}, now holds {:?}",
                devices(s)
            ));
        }
    }
    // Settled: nothing in flight.
    if let Some(s) = slices.values().find(|s| {
        s.state == pb::SliceState::Pending as i32 || s.state == pb::SliceState::Releasing as i32
    }) {
        return Err(format!("slice {} still {:?}", s.id, s.state()));
    }
    let live: Vec<&pb::Slice> = slices.values().filter(|s| is_live(s)).collect();
    // Nothing given twice, in the ledger: a whole GPU to one slice and nothing else, a MIG instance
    // to one slice, shares within the GPU.
    let mut whole: BTreeMap<&str, &str> = BTreeMap::new();
    let mut other: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut mig: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    let mut shared: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    for s in &live {
        match s.spec.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(Kind::Whole(_)) => {
                for g in &s.gpu_uuids {
                    if let Some(prev) = whole.insert(g, &s.id) {
                        return Err(format!("GPU {g} held whole by {prev} and {}", s.id));
                    }
                }
            }
            Some(Kind::Mig(_)) => {
                let g = s.gpu_uuids.first().map(String::as_str).unwrap_or("");
                let gi = s.mig.as_ref().map(|m| m.gpu_instance_id).unwrap_or(0);
                if let Some(prev) = mig.insert((g, gi), &s.id) {
                    return Err(format!(
                        "MIG instance {gi} on {g} held by {prev} and {}",
                        s.id
                    ));
                }
                other.entry(g).or_default().push(&s.id);
            }
            Some(Kind::Share(sh)) => {
                let g = s.gpu_uuids.first().map(String::as_str).unwrap_or("");
                let e = shared.entry(g).or_default();
                e.0 += sh.compute_fraction;
                e.1 += sh.memory_bytes;
                other.entry(g).or_default().push(&s.id);
            }
            None => return Err(format!("slice {} has no kind", s.id)),
        }
    }
    for (g, w) in &whole {
        if let Some(o) = other.get(g) {
            return Err(format!("GPU {g} held whole by {w} and also by {o:?}"));
        }
    }
    for (g, (f, mem)) in &shared {
        if *f > 1.0 + 1e-9 || *mem > 80 << 30 {
            return Err(format!(
                "GPU {g} shared past its capacity: {f} and {mem} bytes"
            ));
        }
    }
    // A GPU held whole is in EXCLUSIVE_PROCESS compute mode on the hardware, every other in DEFAULT.
    for d in hw["devices"].as_array().into_iter().flatten() {
        let uuid = d["uuid"].as_str().unwrap_or("");
        let want = if whole.contains_key(uuid) {
            "exclusive_process"
        } else {
            "default"
        };
        if d["compute_mode"] != want {
            return Err(format!(
                "GPU {uuid} is in compute mode {}, should be {want}",
                d["compute_mode"]
            ));
        }
    }
    // The hardware: every live MIG slice's instance is on the simulated machine with its UUID, and
    // no instance is left that no live slice holds (orphans gone after the grace).
    let on_hw = hw_instances(hw);
    let mut expected = BTreeMap::new();
    for s in live.iter().filter(|s| s.mig.is_some()) {
        let m = s.mig.as_ref().unwrap();
        let g = s.gpu_uuids.first().cloned().unwrap_or_default();
        expected.insert((g, u64::from(m.gpu_instance_id)), m.mig_uuid.clone());
    }
    if on_hw != expected {
        return Err(format!(
            "MIG instances on the machine {on_hw:?}, held by live slices {expected:?}"
        ));
    }
    // The agent's own record (its checkpoint file: a header line, then JSON): it holds exactly the
    // live slices, each once.
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    for part in ["mig", "shares", "whole"] {
        for o in checkpoint["owned"][part].as_array().into_iter().flatten() {
            let key = (
                o["gpu"].as_str().unwrap_or("").to_string(),
                o["slice_id"].as_str().unwrap_or("").to_string(),
            );
            if !reported.insert(key.clone()) {
                return Err(format!("the agent records {key:?} twice"));
            }
        }
    }
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    for s in &live {
        let n = if matches!(
            s.spec.as_ref().and_then(|p| p.kind.as_ref()),
            Some(Kind::Whole(_))
        ) {
            s.gpu_uuids.len()
        } else {
            1
        };
        for g in s.gpu_uuids.iter().take(n) {
            want.insert((g.clone(), s.id.clone()));
        }
    }
    if reported != want {
        return Err(format!(
            "agent holds {:?} beyond the ledger, lacks {:?}",
            reported.difference(&want).collect::<Vec<_>>(),
            want.difference(&reported).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

async fn checked(url: &str, node: &Node, book: &Arc<Mutex<Book>>, within: Duration) {
    let deadline = Instant::now() + within;
    let mut first = String::new();
    let mut last = String::new();
    while Instant::now() < deadline {
        let slices = common::all_slices(url).await;
        let hw = node.machine();
        let checkpoint = node.checkpoint();
        let verdict = check(&book.lock().unwrap(), &slices, &checkpoint, &hw);
        match verdict {
            Ok(()) => return,
            Err(e) => {
                if first.is_empty() {
                    first = e.clone();
                }
                last = e
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slices = common::all_slices(url).await;
    let b = book.lock().unwrap();
    let states: Vec<String> = slices
        .values()
        .map(|s| {
            format!(
                "{} {:?} {:?} {}",
                s.id,
                s.state(),
                s.spec.as_ref().and_then(|p| p.kind.as_ref()),
                s.reason
            )
        })
        .collect();
    panic!(
        "not consistent within {within:?}: {last}\n(first seen: {first})\nstorm: {} requests, refused {:?}, acknowledged {:?}\nslices:\n{}\n--- agent log tail ---\n{}",
        b.requests,
        b.refused,
        b.acked.keys().collect::<Vec<_>>(),
        states.join("\n"),
        tail(&node.log(), 40)
    );
}

/// The agent's log since byte `from`, once it holds `needle` (panics after 10 s).
async fn logged_since(node: &Node, from: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = node.log().get(from..).unwrap_or("").to_string();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not log {needle:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_in_a_storm_of_requests_keeps_every_acknowledged_slice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::new(dir.path());
    let (_ctl, url) = start_controller_for_restarts(dir.path());
    let mut agent = node.start(&url);
    wait_connected(&url, Duration::from_secs(20)).await;
    let book = Arc::new(Mutex::new(Book::default()));
    let started = Instant::now();
    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storm = tokio::spawn(storm(url.clone(), book.clone(), stop.clone()));
        // Let the storm run, then kill the agent in the middle of it.
        tokio::time::sleep(Duration::from_millis(150 + 37 * (round as u64 % 7))).await;
        sigkill(&mut agent);
        tokio::time::sleep(Duration::from_millis(50)).await;
        agent = node.start(&url);
        wait_connected(&url, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        storm.await.expect("storm task");
        // Orphans (made for a request the kill left unanswered) go after the 1 s grace.
        checked(&url, &node, &book, Duration::from_secs(15)).await;
    }
    let b = book.lock().unwrap();
    eprintln!(
        "{ROUNDS} rounds in {:?}: {} requests, refused {:?}, {} slices acknowledged and kept",
        started.elapsed(),
        b.requests,
        b.refused,
        b.acked.len()
    );
    assert!(
        b.requests > ROUNDS && b.acked.len() > 3,
        "the storm did too little to test anything: {b:?}"
    );
    let log = node.log();
    assert!(
        log.matches("node checkpoint read").count() >= ROUNDS,
        "every restart reads the checkpoint"
    );
    assert!(
        !log.contains("node checkpoint refused"),
        "{}",
        tail(&log, 40)
    );
}

/// Damages the checkpoint in the ways a crash or a disk can, restarts the agent on it each time,
/// and checks the refusal is logged and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_corrupt_or_unknown_version_checkpoint_is_refused_and_rebuilt_losing_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::new(dir.path());
    let (_ctl, url) = start_controller_for_restarts(dir.path());
    let mut agent = node.start(&url);
    wait_connected(&url, Duration::from_secs(20)).await;
    let book = Arc::new(Mutex::new(Book::default()));
    for n in 0..6u64 {
        let s = request(&mut tenant(&url).await, kind_for(n))
            .await
            .expect("request");
        assert_eq!(s.state, pb::SliceState::Active as i32, "{s:?}");
        book.lock().unwrap().acked.insert(s.id.clone(), devices(&s));
    }
    checked(&url, &node, &book, Duration::from_secs(10)).await;
    let file = node.state_dir.join("agent-checkpoint");
    type Damage = fn(Vec<u8>) -> Vec<u8>;
    let damages: [(&str, &str, Damage); 3] = [
        ("truncated", "truncated", |b| b[..b.len() / 2].to_vec()),
        ("bad checksum", "bad checksum", |mut b| {
            let last = b.len() - 2;
            b[last] ^= 0x20;
            b
        }),
        ("unknown version", "unknown checkpoint version 99", |b| {
            let s = String::from_utf8(b).expect("text checkpoint");
            s.replacen(
                "greenslice-agent-checkpoint 1 ",
                "greenslice-agent-checkpoint 99 ",
                1,
            )
            .into_bytes()
        }),
    ];
    for (what, logged, damage) in damages {
        sigkill(&mut agent);
        let bytes = std::fs::read(&file).expect("checkpoint written");
        std::fs::write(&file, damage(bytes)).expect("damage the checkpoint");
        let before = node.log().len();
        agent = node.start(&url);
        wait_connected(&url, Duration::from_secs(20)).await;
        checked(&url, &node, &book, Duration::from_secs(10)).await;
        // The agent logs after it wrote: wait for the lines.
        let log = logged_since(&node, before, "rebuilt with the controller's ledger").await;
        let line = log
            .lines()
            .find(|l| l.contains("node checkpoint refused"))
            .unwrap_or_else(|| panic!("{what}: no refusal logged:\n{log}"));
        assert!(line.contains(logged), "{what}: {line}");
        // The rebuilt file is a good one again: the next restart reads it.
        sigkill(&mut agent);
        let before = node.log().len();
        agent = node.start(&url);
        wait_connected(&url, Duration::from_secs(20)).await;
        checked(&url, &node, &book, Duration::from_secs(10)).await;
        logged_since(&node, before, "node checkpoint read").await;
    }
    // A removed checkpoint is rebuilt the same way.
    sigkill(&mut agent);
    std::fs::remove_file(&file).expect("remove the checkpoint");
    let _agent = node.start(&url);
    wait_connected(&url, Duration::from_secs(20)).await;
    checked(&url, &node, &book, Duration::from_secs(10)).await;
}
