//! A clean stop with the real binaries (issue 16): SIGTERM reaches a controller that has an agent
//! session and a tenant's watch stream open. It must exit within its shutdown bound, lose nothing
//! it acknowledged, and have stored the energy attributed since its last flush (the periodic flush
//! runs every 60 s, longer than this test, so energy found after the restart was stored by the
//! stop itself).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::*;

/// Starts the controller on `dir` (its redb ledger) with `config`; returns it and its URL.
fn controller(dir: &Path, config: &Path) -> (Child, String) {
    let config = config.display().to_string();
    spawn_controller_on(dir, &["--insecure", "--config", &config], "http")
}

fn measured_mj(url: &str) -> u64 {
    let out = cli(url, &["report", "--format", "json", "--from", "-1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    doc["cluster"]["measured_mj"].as_u64().expect("measured_mj")
}

fn sigterm(child: &Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

#[test]
fn sigterm_with_agents_and_streams_open_stops_in_bound_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("controller.toml");
    // Attribution windows of 5 s, so intervals close within the test; a 3 s stop bound.
    std::fs::write(
        &config,
        "attribution_window_s = 5\nshutdown_timeout_s = 3\n",
    )
    .expect("write config");
    let (mut ctl, url) = controller(&data, &config);
    let _agent = start_agent(&url, "n1", "dgx-h100", 2);
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli_json(&url, &["inventory"])["gpus_total"] == 8
        }),
        "agent did not register"
    );
    let share = cli_json(
        &url,
        &[
            "request", "--tenant", "team-a", "--share", "0.5", "--memory", "4GiB",
        ],
    );
    assert_eq!(share["state"], "active", "{share}");
    let whole = cli_json(&url, &["request", "--tenant", "team-b", "--whole", "1"]);
    assert_eq!(whole["state"], "active", "{whole}");
    // A tenant's watch: a stream that never ends by itself.
    let mut watch = Command::new(bin("greenslice"))
        .args(["--controller", &url, "watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start greenslice watch");
    // Intervals close and are attributed (energy in memory, not yet flushed).
    assert!(
        wait_until(Duration::from_secs(30), || measured_mj(&url) > 0),
        "no energy attributed"
    );
    let before = measured_mj(&url);

    let asked = Instant::now();
    sigterm(&ctl);
    let status = loop {
        if let Some(s) = ctl.try_wait().expect("wait controller") {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "controller still running 10 s after SIGTERM (bound 3 s)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = asked.elapsed();
    assert!(status.success(), "controller exited with {status}");
    assert!(
        took < Duration::from_secs(3 + 3),
        "stop took {took:?}, bound 3 s (+3 s for the flush and exit)"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Restarted on the same ledger: what was acknowledged is there, and the energy too.
    let (mut ctl2, url2) = controller(&data, &config);
    for s in [&share, &whole] {
        let id = s["id"].as_str().expect("id");
        let got = cli_json(&url2, &["get", id]);
        assert_eq!(got["state"], "active", "{got}");
        assert_eq!(got["gpus"], s["gpus"], "{got}");
    }
    let after = measured_mj(&url2);
    assert!(
        after >= before,
        "energy attributed before the stop ({before} mJ) not all stored ({after} mJ after restart)"
    );
    let _ = ctl2.kill();
    let _ = ctl2.wait();
}
