//! The manifests in `deploy/`: every one parses into the Kubernetes API types (k8s-openapi), every
//! kustomization names files that exist, and the agent DaemonSet's flags, config file and host paths
//! match the real agent binary. (The controller's flags are checked in controller/tests/deploy.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use greenslice_agent::AgentConfig;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            serde_json::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every Kubernetes object in deploy/ (kustomizations aside), by kind.
#[derive(Default)]
struct Objects {
    config_maps: Vec<ConfigMap>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    count: usize,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    device_classes: Vec<DeviceClass>,
    claim_templates: Vec<ResourceClaimTemplate>,
    pods: Vec<Pod>,
}

/// Parses a document into its API type, and checks nothing was dropped on the way: serde skips
/// unknown fields, so a misspelt field would otherwise pass unnoticed.
fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: serde_json::Value,
    path: &Path,
) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not a valid {}: {e}",
            path.display(),
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&t).unwrap();
    if let Some(field) = dropped(&v, &back, String::new()) {
        panic!(
            "{}: field {field} is not part of {} (misspelt or misplaced?)",
            path.display(),
            std::any::type_name::<T>()
        );
    }
    t
}

/// The first path in `orig` that `back` lacks or holds differently (`back` may add fields, such as
/// the apiVersion and kind of embedded objects).
fn dropped(orig: &serde_json::Value, back: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (orig, back) {
        (Object(o), Object(b)) => o.iter().find_map(|(k, v)| match b.get(k) {
            Some(bv) => dropped(v, bv, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Array(o), Array(b)) if o.len() == b.len() => o
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (ov, bv))| dropped(ov, bv, format!("{at}[{i}]"))),
        _ if orig == back => None,
        _ => Some(at),
    }
}

fn objects() -> Objects {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let mut o = Objects::default();
    for f in files.iter().filter(|f| !f.ends_with("kustomization.yaml")) {
        for v in documents(f) {
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            o.count += 1;
            match kind.as_str() {
                "Namespace" => drop(parse::<Namespace>(v, f)),
                "ServiceAccount" => drop(parse::<ServiceAccount>(v, f)),
                "ClusterRole" => o.cluster_roles.push(parse(v, f)),
                "ClusterRoleBinding" => o.cluster_role_bindings.push(parse(v, f)),
                "PersistentVolumeClaim" => drop(parse::<PersistentVolumeClaim>(v, f)),
                "StatefulSet" => drop(parse::<StatefulSet>(v, f)),
                "ConfigMap" => o.config_maps.push(parse(v, f)),
                "Deployment" => o.deployments.push(parse(v, f)),
                "DaemonSet" => o.daemon_sets.push(parse(v, f)),
                "Service" => o.services.push(parse(v, f)),
                "DeviceClass" => o.device_classes.push(parse(v, f)),
                "ResourceClaimTemplate" => o.claim_templates.push(parse(v, f)),
                "Pod" => o.pods.push(parse(v, f)),
                "ValidatingAdmissionPolicy" => drop(parse::<ValidatingAdmissionPolicy>(v, f)),
                "ValidatingAdmissionPolicyBinding" => {
                    drop(parse::<ValidatingAdmissionPolicyBinding>(v, f))
                }
                other => panic!("{}: no test knows kind {other:?}", f.display()),
            }
        }
    }
    o
}

#[test]
fn every_manifest_parses_into_the_kubernetes_api_types() {
    let o = objects();
    assert!(o.count >= 14, "only {} objects found", o.count);
    assert_eq!(o.deployments.len(), 1);
    assert_eq!(o.daemon_sets.len(), 1);
}

#[test]
fn kustomizations_name_files_that_exist() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let ks: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.ends_with("kustomization.yaml"))
        .collect();
    assert_eq!(ks.len(), 4, "{ks:?}");
    for k in ks {
        let dir = k.parent().unwrap();
        let v = &documents(k)[0];
        assert_eq!(v["kind"], "Kustomization", "{}", k.display());
        for r in v["resources"].as_array().into_iter().flatten() {
            let p = dir.join(r.as_str().unwrap());
            assert!(p.exists(), "{} names missing {}", k.display(), p.display());
        }
        for g in v["configMapGenerator"].as_array().into_iter().flatten() {
            for f in g["files"].as_array().unwrap() {
                let name = f.as_str().unwrap();
                let file = name.split_once('=').map_or(name, |(_, f)| f);
                let p = dir.join(file);
                assert!(p.exists(), "{} names missing {}", k.display(), p.display());
            }
        }
        for p in v["patches"].as_array().into_iter().flatten() {
            let text = p["patch"].as_str().expect("inline patch");
            serde_norway::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| panic!("{}: patch is not YAML: {e}", k.display()));
        }
    }
}

#[test]
fn grafana_dashboard_is_json_with_greenslice_metrics() {
    let text =
        std::fs::read_to_string(deploy_dir().join("monitoring/grafana-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let docs = std::fs::read_to_string(deploy_dir().join("../docs/KUBERNETES.md")).unwrap();
    // Every metric the dashboard uses is listed in docs/KUBERNETES.md for the metrics code to match.
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("greenslice_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(docs.contains(&format!("`{name}`")), "{name} not in docs");
            }
        }
    }
}

fn agent_accepts(args: &[String]) -> std::process::Output {
    // Clap checks every flag and value before it reaches the trailing --help, which then exits 0.
    Command::new(env!("CARGO_BIN_EXE_greenslice-agent"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap()
}

#[test]
fn agent_daemonset_matches_the_agent_binary_and_its_config() {
    let o = objects();
    let ds = &o.daemon_sets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();

    // Flags and values are the binary's (and an unknown flag would be caught).
    let out = agent_accepts(&args);
    assert!(
        out.status.success(),
        "agent refuses the DaemonSet's args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!agent_accepts(&["--no-such-flag".into()]).status.success());
    assert!(args.contains(&"--kubelet".to_string()));

    // --config names a file the ConfigMap volume provides, and the file is a valid agent config.
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let mounts = c.volume_mounts.clone().unwrap();
    let volumes = pod.volumes.clone().unwrap();
    let config_mount = mounts.iter().find(|m| m.mount_path == dir).unwrap();
    let config_volume = volumes
        .iter()
        .find(|v| v.name == config_mount.name)
        .unwrap();
    let cm_name = &config_volume.config_map.as_ref().unwrap().name;
    let cm = o
        .config_maps
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(cm_name))
        .unwrap();
    let toml = &cm.data.as_ref().unwrap()[file];
    let cfg = AgentConfig::parse(toml).unwrap_or_else(|e| panic!("{cm_name}/{file}: {e}"));

    // The kubelet folders the config names are mounted from the same host paths.
    let pod_resources_dir = Path::new(&cfg.kubelet.pod_resources_socket)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for want in [cfg.kubelet.device_plugin_dir.clone(), pod_resources_dir] {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == want)
            .unwrap_or_else(|| panic!("{want} is not mounted"));
        let v = volumes.iter().find(|v| v.name == m.name).unwrap();
        assert_eq!(
            v.host_path.as_ref().map(|h| h.path.as_str()),
            Some(want.as_str())
        );
    }

    // The node checkpoint lives on the host, so a new agent pod finds what the last one applied.
    let state_dir = cfg
        .agent
        .state_dir_for(cfg.backend)
        .expect("the NVML agent keeps a checkpoint");
    let state_dir = state_dir.to_str().unwrap();
    let m = mounts
        .iter()
        .find(|m| m.mount_path == state_dir)
        .unwrap_or_else(|| panic!("the checkpoint folder {state_dir} is not mounted"));
    assert_ne!(m.read_only, Some(true), "the checkpoint folder is written");
    let v = volumes.iter().find(|v| v.name == m.name).unwrap();
    assert_eq!(
        v.host_path.as_ref().map(|h| h.path.as_str()),
        Some(state_dir),
        "the checkpoint folder must be the host's"
    );

    // The host's pids: attribution reads /proc/PID/environ of the GPU processes NVML names, and
    // limit enforcement signals them.
    assert_eq!(pod.host_pid, Some(true), "the agent needs hostPID");
    // The shares' MPS pipe folder is the host's.
    let m = mounts
        .iter()
        .find(|m| m.mount_path == cfg.mps.pipe_dir)
        .unwrap_or_else(|| panic!("the MPS pipe folder {} is not mounted", cfg.mps.pipe_dir));
    let v = volumes.iter().find(|v| v.name == m.name).unwrap();
    assert_eq!(
        v.host_path.as_ref().map(|h| h.path.as_str()),
        Some(cfg.mps.pipe_dir.as_str())
    );
    // The agent supervises the MPS daemons, and the container runtime gives it the control
    // binary (NVIDIA's "compute" driver capability mounts nvidia-cuda-mps-control and -server).
    assert!(cfg.mps.supervise, "deploy runs MPS supervised");
    let caps = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NVIDIA_DRIVER_CAPABILITIES")
        .and_then(|e| e.value.clone())
        .expect("NVIDIA_DRIVER_CAPABILITIES is set");
    assert!(
        caps.split(',')
            .any(|c| c.trim() == "compute" || c.trim() == "all"),
        "the MPS control binary needs the compute capability: {caps}"
    );
    // Idle pods can be evicted: the DaemonSet's service account is bound to a role that may
    // create pods/eviction (kubelet.pod_reclaim = "evict").
    let sa = pod.service_account_name.clone().expect("a service account");
    let may_evict = o.cluster_role_bindings.iter().any(|b| {
        b.subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount" && s.name == sa)
            && o.cluster_roles
                .iter()
                .filter(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                .flat_map(|r| r.rules.iter().flatten())
                .any(|rule| {
                    rule.resources
                        .iter()
                        .flatten()
                        .any(|x| x == "pods/eviction")
                        && rule.verbs.iter().any(|v| v == "create")
                })
    });
    assert!(may_evict, "{sa} may not create pods/eviction");

    // Enforcement is on and its settings are valid.
    cfg.enforce.validate().expect("[enforce] is valid");
    assert_eq!(
        cfg.enforce.mode,
        greenslice_agent::enforce::EnforceMode::Enforce
    );

    // The TLS files the agent is given come from the node (a hostPath mount).
    for flag in ["--ca-cert", "--cert", "--key"] {
        let path = &args[args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing"))
            + 1];
        let (dir, _) = path.rsplit_once('/').unwrap();
        let m = mounts
            .iter()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("{dir} ({flag}) is not mounted"));
        let v = volumes.iter().find(|v| v.name == m.name).unwrap();
        assert!(v.host_path.is_some(), "{flag} should come from a hostPath");
    }

    // --controller names the controller Service and its gRPC port.
    let url = &args[args.iter().position(|a| a == "--controller").unwrap() + 1];
    let svc = o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("greenslice-controller"))
        .unwrap();
    let grpc = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap();
    assert_eq!(
        url,
        &format!(
            "https://greenslice-controller.{}.svc:{}",
            svc.metadata.namespace.as_deref().unwrap(),
            grpc.port
        )
    );
}

/// Applies a kustomize JSON 6902 patch (`add`, `replace`, `remove`; `/-` appends) to `doc`.
fn json_patch(doc: &mut serde_json::Value, ops: &serde_json::Value) {
    for op in ops.as_array().expect("a JSON patch is a list") {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("patch path {parent} does not exist"));
        let value = op["value"].clone();
        match (op["op"].as_str().unwrap(), target) {
            ("add", serde_json::Value::Array(a)) if last == "-" => a.push(value),
            ("add" | "replace", serde_json::Value::Array(a)) => {
                let i: usize = last.parse().unwrap();
                assert!(i < a.len(), "{path} is past the end");
                a[i] = value;
            }
            ("add" | "replace", serde_json::Value::Object(m)) => {
                if op["op"] == "replace" {
                    assert!(m.contains_key(last), "replace of missing {path}");
                }
                m.insert(last.to_string(), value);
            }
            ("remove", serde_json::Value::Array(a)) => {
                a.remove(last.parse::<usize>().unwrap());
            }
            ("remove", serde_json::Value::Object(m)) => {
                m.remove(last)
                    .unwrap_or_else(|| panic!("remove of missing {path}"));
            }
            (o, _) => panic!("unsupported patch op {o} at {path}"),
        }
    }
}

/// The DRA overlay: its DaemonSet patch applies to base's DaemonSet and gives the agent the
/// kubelet's DRA folders, the CDI folder and the [dra] config; its DeviceClasses select the device
/// types the agent publishes; its examples use those classes with amounts the share devices'
/// request policies accept; its RBAC allows what the publisher and prepare do.
#[test]
fn the_dra_overlay_wires_the_agent_as_a_dra_driver() {
    use greenslice_agent::dra::devices::{CAPACITY_COMPUTE, CAPACITY_MEMORY, DRIVER};
    use greenslice_agent::dra::quantity;
    use greenslice_agent::dra::slices;

    let dir = deploy_dir().join("overlays/dra");
    let k = &documents(&dir.join("kustomization.yaml"))[0];
    let base_ds = documents(&deploy_dir().join("base/agent-daemonset.yaml")).remove(0);
    let mut ds_json = base_ds.clone();
    let mut patched = 0;
    for p in k["patches"].as_array().unwrap() {
        if p["target"]["kind"] == "DaemonSet" {
            let ops: serde_json::Value =
                serde_norway::from_str(p["patch"].as_str().unwrap()).unwrap();
            json_patch(&mut ds_json, &ops);
            patched += 1;
        }
    }
    assert_eq!(patched, 1);
    let path = dir.join("kustomization.yaml");
    let ds: DaemonSet = parse(ds_json, &path);
    let pod = ds.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let out = agent_accepts(&args);
    assert!(
        out.status.success(),
        "agent refuses the DRA DaemonSet's args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !args.contains(&"--kubelet".to_string()),
        "no device plugin under DRA"
    );

    // The config volume is the overlay's ConfigMap; its [dra] keys are the lead's names.
    let volumes = pod.volumes.clone().unwrap();
    let mounts = c.volume_mounts.clone().unwrap();
    let cm_name = volumes[0].config_map.as_ref().unwrap().name.clone();
    assert_eq!(cm_name, "greenslice-agent-config-dra");
    let cm: ConfigMap = parse(
        documents(&dir.join("agent-config-dra.yaml")).remove(0),
        &dir.join("agent-config-dra.yaml"),
    );
    assert_eq!(cm.metadata.name.as_deref(), Some(cm_name.as_str()));
    let text = &cm.data.as_ref().unwrap()["agent.toml"];
    let t: toml::Table = toml::from_str(text).expect("agent.toml is TOML");
    let dra = t["dra"].as_table().expect("a [dra] section");
    assert_eq!(dra["enabled"].as_bool(), Some(true));
    assert_eq!(dra["partitionable"].as_bool(), Some(true));
    assert_eq!(dra["consumable_capacity"].as_bool(), Some(true));
    assert!(dra["share_gpus"].as_array().is_some());
    assert_eq!(
        dra["plugin_dir"].as_str(),
        Some(format!("/var/lib/kubelet/plugins/{DRIVER}").as_str())
    );
    assert_eq!(t["kubelet"]["enabled"].as_bool(), Some(false));
    // The whole file is the agent's config, and says what the keys above say.
    let parsed = AgentConfig::parse(&toml::to_string(&t).unwrap())
        .unwrap_or_else(|e| panic!("agent-config-dra.yaml: {e}"));
    assert!(parsed.dra.enabled && !parsed.kubelet.enabled);
    assert_eq!(
        parsed.dra.cdi_dir,
        dra["cdi_dir"].as_str().unwrap_or_default()
    );

    // Each folder [dra] names is a hostPath mount of the same path (plugin_dir under one).
    let mounted_from_host = |want: &str| {
        mounts
            .iter()
            .filter(|m| want == m.mount_path || want.starts_with(&format!("{}/", m.mount_path)))
            .any(|m| {
                volumes.iter().any(|v| {
                    v.name == m.name && v.host_path.as_ref().is_some_and(|h| h.path == m.mount_path)
                })
            })
    };
    for key in ["plugin_dir", "registry_dir", "cdi_dir"] {
        let d = dra[key].as_str().unwrap();
        assert!(
            mounted_from_host(d),
            "[dra] {key} = {d} is not mounted from the host"
        );
    }

    // DeviceClasses select the driver's device types.
    let o = objects();
    for (class, ty) in [
        ("gpu.greenslice.io", "gpu"),
        ("mig.greenslice.io", "mig"),
        ("share.greenslice.io", "share"),
    ] {
        let dc = o
            .device_classes
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(class))
            .unwrap_or_else(|| panic!("no DeviceClass {class}"));
        let cel = &dc.spec.as_ref().unwrap().selectors.as_ref().unwrap()[0]
            .cel
            .as_ref()
            .unwrap()
            .expression;
        assert!(
            cel.contains(&format!("device.driver == \"{DRIVER}\"")),
            "{class}: {cel}"
        );
        assert!(
            cel.contains(&format!(".type == \"{ty}\"")),
            "{class}: {cel}"
        );
    }
    // The classes the examples use exist; opaque configs are greenslice's GpuConfig; the share
    // amounts lie on the share devices' request policies.
    let classes: Vec<&str> = o
        .device_classes
        .iter()
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    assert_eq!(o.claim_templates.len(), 3);
    let policy_ok = |cap: &str, v: u64| {
        let (step, total) = if cap == CAPACITY_COMPUTE {
            (slices::SHARE_COMPUTE_STEP, 1000)
        } else {
            (slices::SHARE_MEMORY_STEP, 80 << 30)
        };
        v >= step && v <= total && v.is_multiple_of(step)
    };
    for t in &o.claim_templates {
        let spec = t.spec.as_ref().unwrap().spec.as_ref().unwrap();
        for r in spec.devices.as_ref().unwrap().requests.iter().flatten() {
            let e = r.exactly.as_ref().unwrap();
            assert!(
                classes.contains(&e.device_class_name.as_str()),
                "{}",
                e.device_class_name
            );
            for (cap, q) in e.capacity.iter().flat_map(|c| c.requests.iter().flatten()) {
                assert!(
                    [CAPACITY_COMPUTE, CAPACITY_MEMORY].contains(&cap.as_str()),
                    "{cap}"
                );
                let v = quantity::parse(&q.0).unwrap();
                assert!(
                    policy_ok(cap, v),
                    "{cap} = {} is off the request policy",
                    q.0
                );
            }
        }
        for cfg in spec.devices.as_ref().unwrap().config.iter().flatten() {
            let op = cfg.opaque.as_ref().unwrap();
            assert_eq!(op.driver, DRIVER);
            let p = &op.parameters.0;
            assert_eq!(p["apiVersion"], "resource.greenslice.io/v1alpha1");
            assert_eq!(p["kind"], "GpuConfig");
            assert!(["MPS", "TimeSlicing"].contains(&p["sharing"]["strategy"].as_str().unwrap()));
        }
    }
    // Pods name templates that exist, and their containers the pod's claims.
    let templates: Vec<&str> = o
        .claim_templates
        .iter()
        .filter_map(|t| t.metadata.name.as_deref())
        .collect();
    assert_eq!(o.pods.len(), 3);
    for p in &o.pods {
        let spec = p.spec.as_ref().unwrap();
        let claims = spec.resource_claims.as_ref().unwrap();
        for c in claims {
            assert!(templates.contains(&c.resource_claim_template_name.as_deref().unwrap()));
        }
        for c in &spec.containers {
            for rc in c.resources.as_ref().unwrap().claims.iter().flatten() {
                assert!(claims.iter().any(|x| x.name == rc.name), "{}", rc.name);
            }
        }
    }

    // RBAC: claims read, slices written, Node read, bound to the agent's service account.
    let role = o
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("greenslice-agent-dra"))
        .unwrap();
    let allows = |res: &str, verb: &str| {
        role.rules.iter().flatten().any(|r| {
            r.resources.iter().flatten().any(|x| x == res) && r.verbs.iter().any(|v| v == verb)
        })
    };
    for verb in ["get", "list", "watch"] {
        assert!(allows("resourceclaims", verb), "resourceclaims {verb}");
    }
    for verb in ["create", "update", "delete", "list", "watch"] {
        assert!(allows("resourceslices", verb), "resourceslices {verb}");
    }
    assert!(allows("nodes", "get"));
    let sa = pod.service_account_name.unwrap();
    assert!(o.cluster_role_bindings.iter().any(|b| {
        b.role_ref.name == "greenslice-agent-dra"
            && b.subjects.iter().flatten().any(|s| s.name == sa)
    }));
}
