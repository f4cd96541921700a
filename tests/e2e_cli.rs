//! End to end across processes: a controller and two simulated agents as separate processes, driven
//! through the `greenslice` CLI the way a tenant and an operator use it.

mod common;

use std::time::Duration;

use common::procs::*;
use greenslice_core::gpu::GpuModel;
use greenslice_core::mig::{self, Placed};
use serde_json::Value;

fn capacity_for<'a>(inv: &'a Value, gpu: &str) -> &'a Value {
    inv["capacity"]
        .as_array()
        .and_then(|c| c.iter().find(|g| g["gpu_uuid"] == gpu))
        .unwrap_or_else(|| panic!("GPU {gpu} not in inventory"))
}

#[test]
fn whole_mig_and_share_slices_land_legally_and_capacity_comes_back() {
    let (_ctl, url) = start_controller(&[]);
    let _a1 = start_agent(&url, "h100-a", "dgx-h100", 2);
    let _a2 = start_agent(&url, "a100-b", "dgx-a100-40", 2);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let inv = cli_json(&url, &["inventory"]);
            inv["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["connected"] == true).count() == 2)
        }),
        "agents did not register"
    );
    let before = cli_json(&url, &["inventory"]);
    assert_eq!(before["gpus_total"], 16);
    assert_eq!(before["allocated_milli"], 0);

    let whole = cli_json(&url, &["request", "--tenant", "team-a", "--whole", "2"]);
    let mig_slice = cli_json(
        &url,
        &["request", "--tenant", "team-b", "--profile", "3g.40gb"],
    );
    let share = cli_json(
        &url,
        &[
            "request",
            "--tenant",
            "team-c",
            "--share",
            "0.25",
            "--memory",
            "10GiB",
            "--model",
            "A100-SXM4-40GB",
        ],
    );
    for s in [&whole, &mig_slice, &share] {
        assert_eq!(s["state"], "active", "{s}");
        assert!(
            !s["env"]["NVIDIA_VISIBLE_DEVICES"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{s}"
        );
    }

    // Whole: two distinct non-MIG GPUs on one node.
    let w_gpus: Vec<&str> = whole["gpu_uuids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    assert_eq!(w_gpus.len(), 2);
    assert_ne!(w_gpus[0], w_gpus[1]);
    // MIG: 3g.40gb only exists on H100 here, at a legal start.
    assert_eq!(mig_slice["node"], "h100-a");
    let start = mig_slice["mig"]["start"].as_u64().unwrap() as u8;
    mig::check_create(&GpuModel::H100Sxm5_80Gb, &[], "3g.40gb", start).expect("legal MIG start");
    assert!(
        mig_slice["mig"]["mig_uuid"]
            .as_str()
            .unwrap()
            .starts_with("MIG-")
    );
    // Share: on the requested model, with MPS limits in the environment.
    assert_eq!(share["node"], "a100-b");
    assert_eq!(share["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");

    let during = cli_json(&url, &["inventory"]);
    assert_eq!(during["slices"].as_array().unwrap().len(), 3);
    for g in &w_gpus {
        assert_eq!(capacity_for(&during, g)["free_milli"], 0);
    }
    let mig_gpu = mig_slice["gpu_uuids"][0].as_str().unwrap();
    let placeable: Vec<String> = capacity_for(&during, mig_gpu)["placeable_profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let expect: Vec<String> = mig::placeable_profiles(
        &GpuModel::H100Sxm5_80Gb,
        &[Placed {
            profile: "3g.40gb".into(),
            start,
        }],
    )
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(placeable, expect);
    assert!(!placeable.contains(&"7g.80gb".to_string()));
    let share_gpu = share["gpu_uuids"][0].as_str().unwrap();
    assert_eq!(capacity_for(&during, share_gpu)["free_milli"], 750);
    assert_eq!(
        capacity_for(&during, share_gpu)["free_memory_bytes"],
        30u64 << 30
    );

    // get and list agree.
    let got = cli_json(&url, &["get", whole["id"].as_str().unwrap()]);
    assert_eq!(got["id"], whole["id"]);
    let listed = cli_json(&url, &["list", "--tenant", "team-b"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    for s in [&whole, &mig_slice, &share] {
        let r = cli_json(&url, &["release", s["id"].as_str().unwrap()]);
        assert_eq!(r["state"], "released");
    }
    let after = cli_json(&url, &["inventory"]);
    assert_eq!(after["allocated_milli"], 0);
    assert_eq!(after["slices"].as_array().unwrap().len(), 0);
    assert_eq!(
        capacity_for(&after, mig_gpu)["placeable_profiles"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        capacity_for(&after, share_gpu)["free_memory_bytes"],
        40u64 << 30
    );
}

#[test]
fn cli_exit_codes_follow_the_grpc_status() {
    let (_ctl, url) = start_controller(&[]);
    // No agent yet: nothing can be placed (Unavailable -> 5).
    let out = cli(&url, &["request", "--tenant", "t", "--whole", "1"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _a = start_agent(&url, "n1", "dgx-h100", 1);
    assert!(wait_until(Duration::from_secs(20), || cli(
        &url,
        &["request", "--tenant", "t", "--whole", "1"]
    )
    .status
    .success()));
    // Unknown profile -> InvalidArgument -> 2, and the message lists valid profiles.
    let out = cli(&url, &["request", "--tenant", "t", "--profile", "9g.99gb"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3g.40gb"));
    // Unknown slice -> NotFound -> 3.
    let out = cli(&url, &["get", "s-doesnotexist"]);
    assert_eq!(out.status.code(), Some(3));
    // No room -> ResourceExhausted -> 4.
    let out = cli(&url, &["request", "--tenant", "t", "--whole", "8"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Host CPU: more than the node has is no room (4), saying how much; more than any node may
    // report is InvalidArgument (2); what the live slices said they need is held.
    let out = cli(
        &url,
        &[
            "request",
            "--tenant",
            "t",
            "--whole",
            "1",
            "--cpu-milli",
            "200000",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("200 CPU cores"), "{err}");
    let out = cli(
        &url,
        &[
            "request",
            "--tenant",
            "t",
            "--whole",
            "1",
            "--cpu-milli",
            "2000000000",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("host_cpu_milli"), "{err}");
    let pod = [
        "request",
        "--tenant",
        "t",
        "--share",
        "0.1",
        "--memory",
        "1GiB",
        "--cpu-milli",
        "100000",
        "--host-memory",
        "64GiB",
    ];
    let out = cli(&url, &pod);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&url, &pod);
    assert_eq!(out.status.code(), Some(4), "100 + 100 of 112 cores");
    // Bad size on the command line -> 2 before any RPC.
    let out = cli(
        &url,
        &[
            "request", "--tenant", "t", "--share", "0.5", "--memory", "lots",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    // The energy report: JSON parses; a bad time is refused before any RPC.
    let rep = cli(&url, &["report", "--format", "json"]);
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert!(doc["tenants"].is_array() && doc["cluster"]["measured_mj"].is_u64());
    let out = cli(&url, &["report", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&url, &["report", "--from", "-1h", "--to", "-2h"]);
    assert_eq!(out.status.code(), Some(2));
    // Times in the zone asked for: the table and CSV date the period; a bad zone is a usage error.
    let rep = cli(&url, &["report", "--from", "-1h", "--tz", "+02:00"]);
    let table = String::from_utf8_lossy(&rep.stdout);
    assert!(
        rep.status.success() && table.contains("+02:00 .. ") && table.contains("(UTC+02:00)"),
        "{table}"
    );
    let rep = cli(&url, &["report", "--format", "csv", "--tz", "-05:30"]);
    let csv = String::from_utf8_lossy(&rep.stdout);
    assert!(
        csv.lines()
            .next()
            .unwrap_or("")
            .ends_with("period_from,period_to,period_from_unix_s,period_to_unix_s"),
        "{csv}"
    );
    let out = cli(&url, &["report", "--tz", "Mars/Olympus_Mons"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown time zone"));
    // Controller unreachable -> 5.
    let out = cli("http://127.0.0.1:1", &["inventory"]);
    assert_eq!(out.status.code(), Some(5));
}

/// The agent's TLS flags for `node`, with the files `pki --out <pki>` wrote.
fn agent_tls_args(pki: &str, node: &str) -> Vec<String> {
    vec![
        "--ca-cert".to_string(),
        format!("{pki}/ca.crt"),
        "--cert".to_string(),
        format!("{pki}/agent-{node}.crt"),
        "--key".to_string(),
        format!("{pki}/agent-{node}.key"),
    ]
}

/// Runs `greenslice-controller ARGS` (a setup tool) and returns its output.
fn controller_tool(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("greenslice-controller"))
        .args(args)
        .output()
        .expect("run greenslice-controller")
}

#[test]
fn a_secure_cluster_set_up_with_the_tools_serves_tenants_with_tokens_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    // An operator makes the PKI and two tokens with the controller's own tools.
    let out = controller_tool(&["pki", "--out", &d("pki"), "--agents", "gpu-a,gpu-b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = |name: &str, extra: &[&str]| {
        let mut a = vec!["token", "--name", name, "--append"];
        let tokens = d("tokens.toml");
        a.push(&tokens);
        a.extend_from_slice(extra);
        let out = controller_tool(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let alice = token("alice", &["--role", "tenant", "--tenant", "team-a"]);
    let ops = token("ops", &["--role", "ops"]);
    let file = std::fs::read_to_string(d("tokens.toml")).unwrap();
    assert!(
        !file.contains(&alice) && !file.contains(&ops),
        "tokens stored in clear"
    );
    // The same name twice is refused, and the file is left as it was.
    let out = controller_tool(&[
        "token",
        "--name",
        "alice",
        "--role",
        "ops",
        "--append",
        &d("tokens.toml"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(d("tokens.toml")).unwrap(), file);

    let (_ctl, url) = start_secure_controller(&[
        "--tls-cert",
        &d("pki/controller.crt"),
        "--tls-key",
        &d("pki/controller.key"),
        "--agent-ca",
        &d("pki/ca.crt"),
        "--tokens",
        &d("tokens.toml"),
    ]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let a_args = agent_tls_args(&d("pki"), "gpu-a");
    let _a = start_agent_with(
        &url,
        "gpu-a",
        "dgx-h100",
        0,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // gpu-b's agent uses gpu-a's certificate: it is refused and never shows up.
    let _b = start_agent_with(
        &url,
        "gpu-b",
        "dgx-h100",
        0,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let ca = d("pki/ca.crt");
    let as_ops = ["--ca-cert", ca.as_str(), "--token", ops.as_str()];
    let with = |auth: &[&str], args: &[&str]| {
        let mut v = auth.to_vec();
        v.extend_from_slice(args);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| cli(&url, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = run(with(&as_ops, &["-o", "json", "inventory"]));
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|inv| {
                    inv["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().filter(|n| n["connected"] == true).count() == 1)
                })
        }),
        "gpu-a never registered"
    );
    let inv: Value =
        serde_json::from_slice(&run(with(&as_ops, &["-o", "json", "inventory"])).stdout).unwrap();
    assert!(
        inv["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["name"] != "gpu-b"),
        "an agent registered with another node's certificate: {inv}"
    );

    // Alice requests without naming her tenant: the token says it.
    let as_alice = ["--ca-cert", ca.as_str(), "--token", alice.as_str()];
    let out = run(with(
        &as_alice,
        &[
            "-o", "json", "request", "--share", "0.5", "--memory", "8GiB",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slice: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(slice["tenant"], "team-a");
    // No token, a wrong token, or no CA: refused with the documented exit codes.
    let out = run(with(&["--ca-cert", ca.as_str()], &["list"]));
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(with(
        &["--ca-cert", ca.as_str(), "--token", "gst_wrong"],
        &["list"],
    ));
    assert_eq!(out.status.code(), Some(6));
    let out = run(with(&["--token", alice.as_str()], &["list"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "https without --ca-cert is a usage error"
    );
    // A tenant token cannot use ops commands.
    let out = run(with(&as_alice, &["inventory"]));
    assert_eq!(out.status.code(), Some(6));
}

/// The names of the nodes whose agents are connected, as ops see them (None if the call fails).
fn connected_nodes(url: &str, auth: &[&str]) -> Option<Vec<String>> {
    let mut args = auth.to_vec();
    args.extend_from_slice(&["-o", "json", "inventory"]);
    let out = cli(url, &args);
    let inv: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut names: Vec<String> = inv["nodes"]
        .as_array()?
        .iter()
        .filter(|n| n["connected"] == true)
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

#[test]
fn an_agent_is_revoked_reissued_and_the_server_certificate_rotated_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(controller_tool(&[
        "pki",
        "--out",
        &d("pki"),
        "--agents",
        "gpu-a,gpu-b",
    ]));
    // A second CA and server certificate to rotate to.
    ok(controller_tool(&["pki", "--out", &d("next")]));
    let ops = String::from_utf8(
        ok(controller_tool(&[
            "token",
            "--name",
            "ops",
            "--role",
            "ops",
            "--append",
            &d("tokens.toml"),
        ]))
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    // The controller reads its certificate from files an operator (or cert-manager) replaces.
    std::fs::create_dir(d("live")).unwrap();
    std::fs::copy(d("pki/controller.crt"), d("live/tls.crt")).unwrap();
    std::fs::copy(d("pki/controller.key"), d("live/tls.key")).unwrap();
    std::fs::write(d("pki/agent-ca.crl"), "").unwrap();
    let (_ctl, url) = start_secure_controller(&[
        "--tls-cert",
        &d("live/tls.crt"),
        "--tls-key",
        &d("live/tls.key"),
        "--agent-ca",
        &d("pki/ca.crt"),
        "--agent-crl",
        &d("pki/agent-ca.crl"),
        "--tokens",
        &d("tokens.toml"),
    ]);
    let agent = |node: &str| {
        let args = agent_tls_args(&d("pki"), node);
        start_agent_with(
            &url,
            node,
            "dgx-h100",
            0,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let _a = agent("gpu-a");
    let _b = agent("gpu-b");
    let (old_ca, new_ca) = (d("pki/ca.crt"), d("next/ca.crt"));
    let as_ops = |ca: &str| {
        vec![
            "--ca-cert".to_string(),
            ca.to_string(),
            "--token".into(),
            ops.clone(),
        ]
    };
    let nodes = |ca: &str| {
        let a = as_ops(ca);
        connected_nodes(&url, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let both = Some(vec!["gpu-a".to_string(), "gpu-b".to_string()]);
    assert!(
        wait_until(Duration::from_secs(20), || nodes(&old_ca) == both),
        "agents never registered: {:?}",
        nodes(&old_ca)
    );

    // Revoking gpu-b's certificate ends its open session; it cannot come back; gpu-a stays.
    ok(controller_tool(&[
        "revoke",
        "--pki",
        &d("pki"),
        "--cert",
        &d("pki/agent-gpu-b.crt"),
    ]));
    let only_a = Some(vec!["gpu-a".to_string()]);
    assert!(
        wait_until(Duration::from_secs(15), || nodes(&old_ca) == only_a),
        "the revoked agent is still connected: {:?}",
        nodes(&old_ca)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(nodes(&old_ca), only_a, "the revoked agent reconnected");

    // A new certificate for gpu-b from the same CA: the running agent reads its files again
    // before each connection attempt and is back without a restart.
    ok(controller_tool(&[
        "pki",
        "--out",
        &d("pki"),
        "--agents",
        "gpu-b",
    ]));
    assert!(
        wait_until(Duration::from_secs(20), || nodes(&old_ca) == both),
        "the agent did not come back with its new certificate: {:?}",
        nodes(&old_ca)
    );

    // Rotating the server certificate: new connections get the new one, the open agent sessions
    // are untouched. A half-done rotation (new certificate, old key) is refused meanwhile.
    assert_eq!(nodes(&new_ca), None, "the next CA is not trusted yet");
    std::fs::copy(d("next/controller.crt"), d("live/tls.crt")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        nodes(&old_ca),
        both,
        "a certificate without its key was applied"
    );
    std::fs::copy(d("next/controller.key"), d("live/tls.key")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || nodes(&new_ca) == both),
        "the rotated certificate is not served: {:?}",
        nodes(&new_ca)
    );
    assert_eq!(nodes(&old_ca), None, "the old certificate is still served");
}

#[test]
fn the_inventory_table_tells_every_gpu_of_a_node_apart() {
    let (_ctl, url) = start_controller(&[]);
    let _a = start_agent(&url, "h100-t", "dgx-h100", 2);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "agent did not register"
    );
    let out = cli(&url, &["inventory"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The GPU table's rows of this node: NODE IDX GPU MODEL ...
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 3 && c[0] == "h100-t" && c[2].starts_with("GPU-"))
        .collect();
    assert_eq!(rows.len(), 8, "{text}");
    let idx: std::collections::BTreeSet<String> = rows.iter().map(|r| r[1].to_string()).collect();
    let uuids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[2]).collect();
    let want: std::collections::BTreeSet<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(idx, want, "{text}");
    assert_eq!(
        uuids.len(),
        8,
        "every GPU shows a distinct UUID prefix: {text}"
    );
    let inv = cli_json(&url, &["inventory"]);
    for u in &uuids {
        let full: Vec<&str> = inv["capacity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["gpu_uuid"].as_str())
            .filter(|g| g.starts_with(u))
            .collect();
        assert_eq!(full.len(), 1, "{u} names exactly one GPU");
    }
}
