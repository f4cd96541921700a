//! CDI (Container Device Interface) specs for prepared claims: the file the container runtime
//! reads to give a claim's containers their devices. One spec file per claim,
//! `<cdi_dir>/greenslice.io-claim_<uid>.json`, kind [`CDI_KIND`], one CDI device per claim device
//! named `<uid>-<index>`, with the device nodes, the slice's environment (`GREENSLICE_SLICE_ID`,
//! the MPS limits) and, for an MPS share, the daemon's pipe folder mounted.
//!
//! Where the node has NVIDIA's own CDI spec (nvidia-ctk, kind `nvidia.com/gpu`) the answer also
//! names its device (by UUID, else by index), which brings the driver's libraries and tools; the
//! greenslice device then only adds what is greenslice's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// CDI kind of greenslice claim devices (vendor `greenslice.io`, class `claim`).
pub const CDI_KIND: &str = "greenslice.io/claim";
/// CDI kind of NVIDIA's GPUs (nvidia-ctk `cdi generate`).
pub const NVIDIA_CDI_KIND: &str = "nvidia.com/gpu";
/// CDI spec version written (supported by containerd 1.7+ and CRI-O 1.28+).
pub const CDI_VERSION: &str = "0.6.0";
/// Where CDI specs are looked for besides the agent's own folder.
pub const STATIC_CDI_DIR: &str = "/etc/cdi";
/// Device nodes every CUDA container needs besides its GPU's.
pub const CONTROL_NODES: [&str; 3] = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_edits: Option<ContainerEdits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// What one claim device's CDI device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEdits {
    /// `<uid>-<index>`.
    pub name: String,
    pub gpu_index: u32,
    /// The slice's environment (from the controller).
    pub env: BTreeMap<String, String>,
    /// Folders to mount at the same path (an MPS pipe folder).
    pub mounts: Vec<String>,
}

/// The spec file name of claim `uid`.
pub fn spec_file(uid: &str) -> String {
    format!("greenslice.io-claim_{uid}.json")
}

/// The fully qualified CDI id of a claim device.
pub fn device_id(name: &str) -> String {
    format!("{CDI_KIND}={name}")
}

/// The spec of a claim's devices (pure).
pub fn spec(devices: &[DeviceEdits]) -> Spec {
    Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: CDI_KIND.to_string(),
        devices: devices
            .iter()
            .map(|d| Device {
                name: d.name.clone(),
                container_edits: ContainerEdits {
                    env: d.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    device_nodes: vec![DeviceNode {
                        path: format!("/dev/nvidia{}", d.gpu_index),
                    }],
                    mounts: d
                        .mounts
                        .iter()
                        .map(|m| Mount {
                            host_path: m.clone(),
                            container_path: m.clone(),
                            options: vec!["rbind".into(), "rw".into()],
                        })
                        .collect(),
                },
            })
            .collect(),
        container_edits: Some(ContainerEdits {
            device_nodes: CONTROL_NODES
                .iter()
                .map(|p| DeviceNode {
                    path: (*p).to_string(),
                })
                .collect(),
            ..Default::default()
        }),
    }
}

/// Writes `spec` as `dir/name` atomically (temporary file, fsync, rename), so the runtime never
/// reads half a spec.
pub fn write(dir: &Path, name: &str, spec: &Spec) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Removes a spec file; one already gone is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The device names of NVIDIA's CDI specs (kind `nvidia.com/gpu`, JSON or YAML) in `dirs`.
/// Unreadable files are skipped: they are not ours.
pub fn nvidia_devices(dirs: &[PathBuf]) -> BTreeSet<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    #[derive(Deserialize)]
    struct AnySpec {
        kind: String,
        #[serde(default)]
        devices: Vec<Named>,
    }
    let mut out = BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let spec: Option<AnySpec> = match ext {
                "json" => serde_json::from_str(&text).ok(),
                "yaml" | "yml" => serde_norway::from_str(&text).ok(),
                _ => None,
            };
            if let Some(s) = spec.filter(|s| s.kind == NVIDIA_CDI_KIND) {
                out.extend(s.devices.into_iter().map(|d| d.name));
            }
        }
    }
    out
}

/// NVIDIA's CDI id for a GPU or MIG device, when its spec names it: by UUID, else by index
/// (`"0"`, or `"0:1"` for MIG device 1 of GPU 0).
pub fn nvidia_id(known: &BTreeSet<String>, uuid: &str, index: Option<&str>) -> Option<String> {
    [Some(uuid), index]
        .into_iter()
        .flatten()
        .find(|n| known.contains(*n))
        .map(|n| format!("{NVIDIA_CDI_KIND}={n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_spec_reads_back_and_names_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeviceEdits {
            name: "u1-0".into(),
            gpu_index: 3,
            env: BTreeMap::from([("GREENSLICE_SLICE_ID".into(), "s-1".into())]),
            mounts: vec!["/run/mps/GPU-3".into()],
        };
        let s = spec(std::slice::from_ref(&d));
        let p = write(dir.path(), &spec_file("u1"), &s).unwrap();
        let back: Spec = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.kind, CDI_KIND);
        let dev = &back.devices[0];
        assert_eq!(dev.container_edits.env, ["GREENSLICE_SLICE_ID=s-1"]);
        assert_eq!(dev.container_edits.device_nodes[0].path, "/dev/nvidia3");
        assert_eq!(
            dev.container_edits.mounts[0].container_path,
            "/run/mps/GPU-3"
        );
        assert_eq!(device_id("u1-0"), "greenslice.io/claim=u1-0");
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn nvidias_device_names_are_found_in_json_and_yaml_specs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nvidia.yaml"),
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: GPU-aaa\n  containerEdits: {}\n- name: \"0\"\n  containerEdits: {}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.json"),
            r#"{"cdiVersion":"0.6.0","kind":"vendor.com/nic","devices":[{"name":"GPU-bbb","containerEdits":{}}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let known = nvidia_devices(&[dir.path().to_path_buf(), dir.path().join("missing")]);
        assert_eq!(
            known,
            BTreeSet::from(["GPU-aaa".to_string(), "0".to_string()])
        );
        assert_eq!(
            nvidia_id(&known, "GPU-aaa", Some("0")).as_deref(),
            Some("nvidia.com/gpu=GPU-aaa")
        );
        assert_eq!(
            nvidia_id(&known, "GPU-zzz", Some("0")).as_deref(),
            Some("nvidia.com/gpu=0")
        );
        assert_eq!(nvidia_id(&known, "GPU-bbb", None), None);
    }
}
