//! The demo's HTML report in a real browser: the `greenslice demo` binary writes it, headless
//! Chromium (Debian's `chromium`) loads it from disk; the page must log no console message and
//! make no network request (Chromium's own net log is the witness), and every headline figure
//! in the DOM Chromium built must equal the JSON report's. A screenshot is saved beside the test's
//! files (and into `docs/` with `GREENSLICE_UPDATE_SCREENSHOT=1`).
//!
//! Without Chromium the test says so and passes, unless `CI` or `GREENSLICE_REQUIRE_CHROMIUM` is
//! set (`.ci/run` installs it), where a missing browser fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The browser to use: `GREENSLICE_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GREENSLICE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs a command to completion within `limit`, killing it past that. Returns its stdout and
/// stderr.
fn run_for(mut cmd: Command, limit: Duration, what: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_p, err_p) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}; stderr: {}",
                std::fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        std::fs::read_to_string(&out_p).unwrap_or_default(),
        std::fs::read_to_string(&err_p).unwrap_or_default(),
    );
    assert!(status.success(), "{what} failed ({status}): {err}");
    (out, err)
}

/// Chromium, headless, with its own empty profile, no background traffic of its own (updates,
/// sync, component downloads), every console message on stderr and a net log of every request.
fn browser(bin: &Path, profile: &Path, net_log: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck",
        "--metrics-recording-only",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--log-net-log={}", net_log.display()));
    c
}

/// Every URL the page asked for, other than the report file itself, from the net log: requests
/// whose initiator is the page (a file:// page's origin is opaque: "null") or whose network
/// isolation key is the file:// page's. Chromium's own traffic (update checks and the like, which
/// the flags above do not stop entirely) has initiator "not an origin" and another key.
fn requests(net_log: &Path, page: &str) -> Vec<String> {
    let text = std::fs::read_to_string(net_log).unwrap();
    // Chromium ends the log with "]}" only on a clean exit; tolerate a missing tail.
    let log: Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .expect("net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("net log names URL_REQUEST_START_JOB");
    let mut urls: Vec<String> = log["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .map(|e| &e["params"])
        .filter(|p| {
            p["initiator"].as_str() != Some("not an origin")
                || p["network_isolation_key"]
                    .as_str()
                    .is_some_and(|k| k.contains("file://"))
        })
        .filter_map(|p| p["url"].as_str().map(str::to_string))
        .filter(|u| u != page)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// The value of attribute `name` in the tag text `tag` (`<span a="1" b="2">`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let rest = &tag[tag.find(&key)? + key.len()..];
    rest.find('"').map(|end| &rest[..end])
}

/// Every headline figure in a DOM: (field, exact value, unit, text shown).
fn headline_figures(dom: &str) -> Vec<(String, String, String, String)> {
    dom.match_indices("data-headline=\"")
        .map(|(i, _)| {
            let start = dom[..i].rfind('<').unwrap();
            let end = i + dom[i..].find('>').unwrap();
            let tag = &dom[start..end];
            let text = &dom[end + 1..end + 1 + dom[end + 1..].find('<').unwrap()];
            (
                attr(tag, "data-headline").unwrap().to_string(),
                attr(tag, "data-value").unwrap_or_default().to_string(),
                attr(tag, "data-unit").unwrap_or_default().to_string(),
                text.to_string(),
            )
        })
        .collect()
}

/// The headline's fields as the JSON file writes them (number text, or `null`): compared as text,
/// since serde_json's default float parsing may be off by one unit in the last place.
fn raw_headline(json_text: &str) -> std::collections::BTreeMap<String, String> {
    let block = json_text
        .split("\"headline\": {")
        .nth(1)
        .expect("the JSON report has a headline")
        .split('}')
        .next()
        .unwrap();
    block
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.trim().trim_matches('"').to_string(), v.trim().to_string()))
        })
        .collect()
}

#[test]
fn the_demo_report_renders_in_chromium_offline_with_the_json_figures() {
    let required = std::env::var_os("CI").is_some()
        || std::env::var_os("GREENSLICE_REQUIRE_CHROMIUM").is_some();
    let Some(bin) = chromium() else {
        assert!(
            !required,
            "CI (or GREENSLICE_REQUIRE_CHROMIUM) is set but no chromium was found: install Debian's `chromium` package (.ci/run does)"
        );
        eprintln!(
            "SKIPPED the browser check of the HTML report: chromium not found (apt-get install chromium, or set GREENSLICE_CHROMIUM)"
        );
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    // The witnesses work: a page that fetches an image and logs to the console is caught by both.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        r#"<!doctype html><p>x</p><img src="http://127.0.0.1:9/x.png"><script>console.error("bad page")</script>"#,
    )
    .unwrap();
    let bad_url = format!("file://{}", bad.display());
    let bad_log = dir.path().join("bad-net.json");
    let mut probe = browser(&bin, &dir.path().join("profile0"), &bad_log);
    probe.arg("--dump-dom").arg(&bad_url);
    let (_, probe_err) = run_for(probe, Duration::from_secs(90), "chromium on a bad page");
    assert!(
        probe_err.contains("CONSOLE"),
        "console messages are not visible: {probe_err}"
    );
    assert_eq!(requests(&bad_log, &bad_url), ["http://127.0.0.1:9/x.png"]);

    // The demo, as a user runs it (fewer requests, to keep the test short).
    let out = dir.path().join("greenslice-demo");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_greenslice"));
    demo.args(["demo", "--requests", "300", "--nodes", "2", "--out"])
        .arg(&out);
    run_for(demo, Duration::from_secs(180), "greenslice demo");
    let html = out.join("report.html");
    let json_text = std::fs::read_to_string(out.join("report.json")).unwrap();
    let url = format!("file://{}", html.display());

    // Load it and dump the DOM Chromium built.
    let net_log = dir.path().join("net.json");
    let mut load = browser(&bin, &dir.path().join("profile"), &net_log);
    load.arg("--dump-dom").arg(&url);
    let (dom, stderr) = run_for(load, Duration::from_secs(90), "chromium --dump-dom");
    assert!(
        dom.contains("id=\"headline\""),
        "Chromium did not render the report: {}",
        &dom[..dom.len().min(500)]
    );
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let fetched = requests(&net_log, &url);
    assert!(
        fetched.is_empty(),
        "the report made network requests: {fetched:#?}"
    );

    // Every headline figure equals the JSON's, exactly in data-value and to 3 significant
    // figures in the text shown.
    let headline = raw_headline(&json_text);
    let figures = headline_figures(&dom);
    let shown: std::collections::BTreeSet<&str> = figures.iter().map(|f| f.0.as_str()).collect();
    for key in [
        "measured_kwh",
        "co2e_location_kg",
        "co2e_market_kg",
        "kwh_per_gpu_hour",
        "idle_allocated_gpu_hours",
        "idle_allocated_kwh",
        "unallocated_idle_kwh",
        "unallocated_idle_pct",
        "unattributed_kwh",
        "unattributed_pct",
        "saved_kwh",
        "saved_pct",
        "gpu_hours_reclaimed",
    ] {
        assert!(shown.contains(key), "the headline does not show {key}");
    }
    for (key, value, unit, text) in &figures {
        let raw = headline
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in the JSON headline"));
        if raw == "null" {
            assert_eq!(value, "", "{key}: JSON null, page {value:?}");
            assert_eq!(text, "not configured", "{key}");
            continue;
        }
        assert_eq!(value, raw, "{key}: data-value differs from the JSON");
        let want: f64 = raw
            .parse()
            .unwrap_or_else(|_| panic!("{key}: JSON {raw:?}"));
        let scale = if unit == "t" { 1000.0 } else { 1.0 };
        let seen: f64 = text
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{key}: text {text:?}"))
            * scale;
        assert!(
            (seen - want).abs() <= 0.005 * want.abs() + 1e-12,
            "{key}: shown {text} {unit}, JSON {want}"
        );
    }
    // The period reads as dates, not Unix ms.
    let period = dom
        .split("id=\"period\"")
        .nth(1)
        .unwrap()
        .split("</p>")
        .next()
        .unwrap();
    assert!(period.contains('T') && period.contains('Z'), "{period}");
    assert!(!dom.contains("Unix ms"));

    // A screenshot of the first screenful, for docs/.
    let shot = dir.path().join("report.png");
    let mut snap = browser(
        &bin,
        &dir.path().join("profile2"),
        &dir.path().join("net2.json"),
    );
    snap.arg("--window-size=1100,1500")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    run_for(snap, Duration::from_secs(90), "chromium --screenshot");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    let fetched = requests(&dir.path().join("net2.json"), &url);
    assert!(
        fetched.is_empty(),
        "the screenshot load made requests: {fetched:#?}"
    );
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    std::fs::write(&keep, &png).unwrap();
    eprintln!("screenshot: {}", keep.display());
    if std::env::var_os("GREENSLICE_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report-screenshot.png");
        std::fs::write(&docs, &png).unwrap();
        eprintln!("screenshot saved to {}", docs.display());
    }
}
