//! The controller's manifests in `deploy/` match the real controller binary: its flags and values
//! (base and the etcd-ha overlay), its config file, and the ports of its container and Service.
//! (Parsing every manifest into the Kubernetes API types is node-agent/tests/deploy.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use greenslice_controller::config::ControllerConfig;
use serde::Deserialize;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy().join(rel)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Runs the controller with `args` and a trailing --help: clap checks every flag and value first.
fn controller(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greenslice-controller"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap()
}

fn accepted(args: &[String]) {
    let out = controller(args);
    assert!(
        out.status.success(),
        "controller refuses {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    &args[args.iter().position(|a| a == flag).unwrap() + 1]
}

#[test]
fn base_deployment_matches_the_controller_binary() {
    assert!(!controller(&["--no-such-flag".into()]).status.success());
    let d = &docs("base/controller-deployment.yaml")[0];
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&c["args"]);
    accepted(&args);

    // --listen's port is the container's grpc port and the Service's target.
    let listen = flag_value(&args, "--listen");
    let port: i64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    let ports = c["ports"].as_array().unwrap();
    let grpc = ports.iter().find(|p| p["name"] == "grpc").unwrap();
    assert_eq!(grpc["containerPort"].as_i64(), Some(port));
    // Ready only while leading: the probe asks /readyz on the port --metrics-listen serves.
    let metrics_port: i64 = flag_value(&args, "--metrics-listen")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/readyz");
    let probe_port = ports.iter().find(|p| p["name"] == probe["port"]).unwrap();
    assert_eq!(probe_port["containerPort"].as_i64(), Some(metrics_port));
    let svc = &docs("base/controller-service.yaml")[0];
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["targetPort"] == "grpc" && p["port"].as_i64() == Some(port))
    );

    // --config is the mounted ConfigMap's key, and it is a valid controller config.
    let config = flag_value(&args, "--config");
    let (dir, key) = config.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap();
    let volume = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = &docs("base/controller-config.yaml")[0];
    assert_eq!(cm["metadata"]["name"], volume["configMap"]["name"]);
    let text = cm["data"][key].as_str().unwrap();
    let cfg: ControllerConfig = toml::from_str(text).unwrap();
    assert!(cfg.listen.ends_with(&format!(":{port}")));

    // Secure, with every TLS and token file coming from a mounted Secret.
    let s = &cfg.security;
    assert!(!s.insecure);
    for f in [&s.tls_cert, &s.tls_key, &s.agent_ca, &s.tokens] {
        let f = f.as_ref().expect("security file set").display().to_string();
        let (dir, _) = f.rsplit_once('/').unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{dir} not mounted"));
        let volume = d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert!(
            volume["secret"]["secretName"].is_string(),
            "{f} is not from a Secret"
        );
    }
}

#[test]
fn etcd_overlay_matches_the_controller_binary() {
    let k = &docs("overlays/etcd-ha/kustomization.yaml")[0];
    let patch = k["patches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["target"]["kind"] == "Deployment")
        .unwrap();
    let ops: Vec<Value> = serde_norway::from_str(patch["patch"].as_str().unwrap()).unwrap();
    let replicas = ops.iter().find(|o| o["path"] == "/spec/replicas").unwrap();
    assert_eq!(replicas["value"].as_i64(), Some(3));
    let args_op = ops
        .iter()
        .find(|o| o["path"] == "/spec/template/spec/containers/0/args")
        .unwrap();
    let args = strings(&args_op["value"]);
    assert_eq!(flag_value(&args, "--ledger"), "etcd");
    let endpoints = flag_value(&args, "--etcd-endpoints");
    assert_eq!(endpoints.split(',').count(), 3);
    // Each endpoint names a member of the overlay's etcd StatefulSet on its client port.
    let etcd = docs("overlays/etcd-ha/etcd.yaml");
    let sts = etcd.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let name = sts["metadata"]["name"].as_str().unwrap();
    for (i, e) in endpoints.split(',').enumerate() {
        assert_eq!(e, format!("http://{name}-{i}.{name}:2379"));
    }

    accepted(&args);
    // The overlay replaces the argument list: it must keep the endpoint the readiness probe asks,
    // or no replica would ever be ready.
    let base = strings(
        &docs("base/controller-deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    assert_eq!(
        flag_value(&args, "--metrics-listen"),
        flag_value(&base, "--metrics-listen")
    );
}
