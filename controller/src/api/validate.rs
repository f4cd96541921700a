//! Validation of every message the controller receives, against the limits of
//! [`greenslice_core::limits`]. Pure: each function takes a wire message and answers `Ok` or an
//! INVALID_ARGUMENT status naming the field and the limit. Handlers call them first, before anything
//! is looked up, allocated or stored.
//!
//! What is checked here is the shape of a message (lengths, counts, alphabets, ranges). Whether a
//! well-formed message makes sense against the state (an unknown slice, a GPU the node does not
//! have) is the handler's business, with its own status.

use std::collections::HashSet;

use greenslice_core::convert::spec_from_pb;
use greenslice_core::limits::{self as lim, Alphabet, Checked, LimitError};
use greenslice_core::slice::validate_idempotency_key;
use greenslice_proto::v1 as pb;
use tonic::Status;

use crate::model::page::SliceFilter;

/// The INVALID_ARGUMENT status for a field outside its limit.
pub fn invalid(e: LimitError) -> Status {
    crate::error::ControllerError::Field(e).into()
}

/// The INVALID_ARGUMENT status for a spec or name the domain rules refuse, with its field.
fn refused(e: greenslice_core::slice::ValidationError) -> Status {
    crate::error::ControllerError::Invalid(e).into()
}

fn status(c: Checked) -> Result<(), Status> {
    c.map_err(invalid)
}

// ---- TenantService ---------------------------------------------------------------------------------

/// RequestSlice: tenant, idempotency key, spec (sizes, profile, model and class names) and the
/// workload's host CPU and memory (within what one node may report).
pub fn request_slice(r: &pb::RequestSliceRequest) -> Result<(), Status> {
    status(lim::check_tenant("tenant", &r.tenant))?;
    validate_idempotency_key(&r.idempotency_key).map_err(refused)?;
    if r.idempotency_key.starts_with(crate::model::dra::KEY_PREFIX) {
        return Err(invalid(LimitError::new(
            "idempotency_key",
            format!(
                "keys starting with {:?} are reserved for ResourceClaims",
                crate::model::dra::KEY_PREFIX
            ),
        )));
    }
    spec_from_pb(r.spec.as_ref()).map_err(refused)?;
    status(lim::check_max(
        "host_cpu_milli",
        r.host_cpu_milli,
        lim::MAX_CPU_MILLI,
        "milli-cores (what one node may report)",
    ))?;
    status(lim::check_max(
        "host_memory_bytes",
        r.host_memory_bytes,
        lim::MAX_HOST_MEMORY_BYTES,
        "bytes (what one node may report)",
    ))?;
    Ok(())
}

/// GetSlice and ReleaseSlice: a slice id.
pub fn slice_id(id: &str) -> Result<(), Status> {
    status(lim::check_slice_id("slice_id", id))
}

/// ListSlices: optional tenant, node, state and time filters and a page token (its contents are
/// checked by the engine); the filters as the engine takes them.
pub fn list_slices(r: &pb::ListSlicesRequest) -> Result<SliceFilter, Status> {
    status(lim::check_opt_tenant("tenant", &r.tenant))?;
    if !r.node.is_empty() {
        status(lim::check_node("node", &r.node))?;
    }
    page_token(&r.page_token)?;
    let state = match r.state {
        0 => None,
        v => Some(greenslice_core::convert::state_from_pb(v).ok_or_else(|| {
            invalid(LimitError::new(
                "state",
                format!("must be a SliceState (0-5), got {v}"),
            ))
        })?),
    };
    if !(0..=lim::MAX_UNIX_MS).contains(&r.created_after_unix_ms) {
        return Err(invalid(LimitError::new(
            "created_after_unix_ms",
            format!(
                "must be 0-{} ms since the Unix epoch, got {}",
                lim::MAX_UNIX_MS,
                r.created_after_unix_ms
            ),
        )));
    }
    Ok(SliceFilter {
        tenant: r.tenant.clone(),
        node: r.node.clone(),
        state,
        include_terminal: r.include_terminal,
        created_after_ms: r.created_after_unix_ms,
    })
}

/// The longest page token accepted (the tokens this controller makes are about 200 bytes).
pub const MAX_PAGE_TOKEN_LEN: usize = 1024;

/// A page token's length and alphabet (what it says is the engine's business).
pub fn page_token(t: &str) -> Result<(), Status> {
    if t.len() > MAX_PAGE_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(LimitError::new(
            "page_token",
            format!(
                "must be at most {MAX_PAGE_TOKEN_LEN} printable ASCII characters, as a previous page's next_page_token"
            ),
        )));
    }
    Ok(())
}

/// WatchSlices: optional tenant filter.
pub fn watch_slices(r: &pb::WatchSlicesRequest) -> Result<(), Status> {
    status(lim::check_opt_tenant("tenant", &r.tenant))
}

/// KeepSlice: slice id, optional tenant, a duration of at most [`lim::MAX_DURATION_S`] (the idle
/// policy bounds it further).
pub fn keep_slice(r: &pb::KeepSliceRequest) -> Result<(), Status> {
    status(lim::check_slice_id("slice_id", &r.slice_id))?;
    status(lim::check_opt_tenant("tenant", &r.tenant))?;
    status(lim::check_max(
        "duration_s",
        r.duration_s,
        lim::MAX_DURATION_S,
        "seconds",
    ))
}

// ---- OpsService ------------------------------------------------------------------------------------

/// Usage: each selector given is well formed, times in range.
pub fn usage(r: &pb::UsageRequest) -> Result<(), Status> {
    if !r.slice_id.is_empty() {
        status(lim::check_slice_id("slice_id", &r.slice_id))?;
    }
    status(lim::check_opt_tenant("tenant", &r.tenant))?;
    if !r.node.is_empty() {
        status(lim::check_node("node", &r.node))?;
    }
    status(lim::check_unix_ms("from_unix_ms", r.from_unix_ms))?;
    status(lim::check_unix_ms("to_unix_ms", r.to_unix_ms))
}

/// EnergyReport: times in range, optional tenant.
pub fn energy_report(r: &pb::EnergyReportRequest) -> Result<(), Status> {
    status(lim::check_unix_ms("from_unix_ms", r.from_unix_ms))?;
    status(lim::check_unix_ms("to_unix_ms", r.to_unix_ms))?;
    status(lim::check_opt_tenant("tenant", &r.tenant))
}

/// DrainNode and UndrainNode: a node name.
pub fn node(name: &str) -> Result<(), Status> {
    status(lim::check_node("node", name))
}

// ---- KubeletService --------------------------------------------------------------------------------

/// ChooseDevices: node, resource and candidates (the spec is checked where it is used).
pub fn choose_devices(r: &pb::ChooseDevicesRequest) -> Result<(), Status> {
    status(lim::check_node("node", &r.node))?;
    status(k8s_name("resource", &r.resource))?;
    status(lim::check_count(
        "candidates",
        r.candidates.len(),
        1,
        lim::MAX_CANDIDATES,
    ))?;
    status(lim::check_each("candidates", &r.candidates, |f, c| {
        lim::check_uuid(&format!("{f}.gpu_uuid"), &c.gpu_uuid)?;
        lim::check_max(
            &format!("{f}.free_milli"),
            u64::from(c.free_milli),
            u64::from(greenslice_core::MILLI_PER_GPU),
            "milli-GPU",
        )
    }))
}

/// PrepareClaim: node, claim, namespace (the tenant) and 1-32 devices, each a spec of one GPU
/// (whole count 1, a MIG profile with its start, or a share) on a GPU; the devices as the engine
/// takes them.
pub fn prepare_claim(
    r: &pb::PrepareClaimRequest,
) -> Result<Vec<crate::engine::ClaimDevice>, Status> {
    status(lim::check_node("node", &r.node))?;
    status(lim::check_uuid("claim_uid", &r.claim_uid))?;
    status(lim::check_tenant("namespace", &r.namespace))?;
    status(lim::check_str(
        "claim_name",
        &r.claim_name,
        1,
        lim::MAX_K8S_NAME_LEN,
        Alphabet::Graphic,
    ))?;
    status(lim::check_count(
        "devices",
        r.devices.len(),
        1,
        crate::model::dra::MAX_CLAIM_DEVICES,
    ))?;
    let mut out = Vec::with_capacity(r.devices.len());
    for (i, d) in r.devices.iter().enumerate() {
        let f = |name: &str| format!("devices[{i}].{name}");
        status(k8s_name(&f("request"), &d.request))?;
        status(lim::check_str(
            &f("device"),
            &d.device,
            1,
            63,
            Alphabet::Name,
        ))?;
        status(lim::check_uuid(&f("gpu_uuid"), &d.gpu_uuid))?;
        let spec = spec_from_pb(d.spec.as_ref()).map_err(refused)?;
        use greenslice_core::slice::SliceKind;
        let shape = match (&spec.kind, d.mig_start) {
            (SliceKind::Whole { count: 1 }, None) | (SliceKind::Share { .. }, None) => Ok(()),
            (SliceKind::Mig { .. }, Some(start))
                if start < u32::from(greenslice_core::mig::MEMORY_SLICES) =>
            {
                Ok(())
            }
            (SliceKind::Whole { .. }, _) => {
                Err("a device is one whole GPU (count 1), with no mig_start")
            }
            (SliceKind::Mig { .. }, Some(_)) => Err("mig_start must be 0-7"),
            (SliceKind::Mig { .. }, None) => Err("a MIG device needs its mig_start"),
            (SliceKind::Share { .. }, Some(_)) => Err("a share has no mig_start"),
        };
        shape.map_err(|m| invalid(LimitError::new(f("spec"), m)))?;
        out.push(crate::engine::ClaimDevice {
            spec,
            pin: crate::placement::Pin {
                node: r.node.clone(),
                gpu_uuid: d.gpu_uuid.clone(),
                mig_start: d.mig_start.and_then(|s| u8::try_from(s).ok()),
            },
        });
    }
    Ok(out)
}

/// UnprepareClaim: node and claim.
pub fn unprepare_claim(r: &pb::UnprepareClaimRequest) -> Result<(), Status> {
    status(lim::check_node("node", &r.node))?;
    status(lim::check_uuid("claim_uid", &r.claim_uid))
}

// ---- AgentService ----------------------------------------------------------------------------------

/// A MIG instance an agent reports.
fn mig_instance(field: &str, m: &pb::MigInstance) -> Checked {
    lim::check_profile(&format!("{field}.profile"), &m.profile)?;
    mig_span(field, m.start, m.size)?;
    lim::check_str(
        &format!("{field}.mig_uuid"),
        &m.mig_uuid,
        0,
        lim::MAX_UUID_LEN,
        Alphabet::Graphic,
    )?;
    lim::check_opt_slice_id(&format!("{field}.slice_id"), &m.slice_id)
}

/// A MIG instance's first memory slice and size: within the GPU's 8 slices.
fn mig_span(field: &str, start: u32, size: u32) -> Checked {
    let slices = u32::from(greenslice_core::mig::MEMORY_SLICES);
    if start < slices && (1..=slices).contains(&size) {
        return Ok(());
    }
    Err(LimitError::new(
        field,
        format!(
            "start must be 0-{} and size 1-{slices}; got start {start}, size {size}",
            slices - 1
        ),
    ))
}

/// One GPU an agent reports (Register, StateReport).
fn gpu_info(field: &str, g: &pb::GpuInfo) -> Checked {
    let f = |name: &str| format!("{field}.{name}");
    lim::check_uuid(&f("uuid"), &g.uuid)?;
    lim::check_max(
        &f("index"),
        u64::from(g.index),
        lim::MAX_GPUS_PER_NODE as u64 - 1,
        "",
    )?;
    lim::check_label(&f("model"), &g.model)?;
    lim::check_max(
        &f("memory_bytes"),
        g.memory_bytes,
        lim::MAX_GPU_MEMORY_BYTES,
        "bytes",
    )?;
    lim::check_label(&f("pci_bus_id"), &g.pci_bus_id)?;
    lim::check_count(
        &f("mig_instances"),
        g.mig_instances.len(),
        0,
        lim::MAX_MIG_INSTANCES_PER_GPU,
    )?;
    lim::check_each(&f("mig_instances"), &g.mig_instances, mig_instance)?;
    lim::check_count(&f("shares"), g.shares.len(), 0, lim::MAX_SHARES_PER_GPU)?;
    lim::check_each(&f("shares"), &g.shares, |sf, s| {
        lim::check_slice_id(&format!("{sf}.slice_id"), &s.slice_id)?;
        lim::check_fraction(&format!("{sf}.compute_fraction"), s.compute_fraction)?;
        lim::check_max(
            &format!("{sf}.memory_bytes"),
            s.memory_bytes,
            lim::MAX_GPU_MEMORY_BYTES,
            "bytes",
        )
    })?;
    lim::check_opt_slice_id(&f("whole_slice_id"), &g.whole_slice_id)
}

/// A node's GPUs: at most [`lim::MAX_GPUS_PER_NODE`], each well formed, UUIDs unique.
fn gpus(field: &str, gpus: &[pb::GpuInfo]) -> Checked {
    lim::check_count(field, gpus.len(), 0, lim::MAX_GPUS_PER_NODE)?;
    lim::check_each(field, gpus, gpu_info)?;
    let mut seen = HashSet::new();
    lim::check_each(field, gpus, |f, g| {
        if seen.insert(g.uuid.as_str()) {
            Ok(())
        } else {
            Err(LimitError::new(
                format!("{f}.uuid"),
                format!("{:?} is listed twice", g.uuid),
            ))
        }
    })
}

/// Register: node name, host figures, labels and the GPU inventory.
pub fn register(r: &pb::Register) -> Result<(), Status> {
    status(check_register(r).map_err(|e| e.within("register")))
}

fn check_register(r: &pb::Register) -> Checked {
    lim::check_node("node", &r.node)?;
    lim::check_max("cpu_milli", r.cpu_milli, lim::MAX_CPU_MILLI, "milli-cores")?;
    lim::check_max(
        "memory_bytes",
        r.memory_bytes,
        lim::MAX_HOST_MEMORY_BYTES,
        "bytes",
    )?;
    lim::check_label("backend", &r.backend)?;
    lim::check_label("agent_version", &r.agent_version)?;
    gpus("gpus", &r.gpus)
}

/// A command's result: error text, the MIG instance made, the environment.
fn command_result(r: &pb::CommandResult) -> Checked {
    lim::check_message("error", &r.error)?;
    if let Some(m) = &r.mig {
        mig_instance("mig", m)?;
    }
    lim::check_count("env", r.env.len(), 0, lim::MAX_ENV_ENTRIES)?;
    for (k, v) in &r.env {
        lim::check_env_entry("env", k, v)?;
    }
    Ok(())
}

/// One GPU sample.
fn sample(field: &str, s: &pb::GpuSample) -> Checked {
    let f = |name: &str| format!("{field}.{name}");
    lim::check_unix_ms(&f("at_unix_ms"), s.at_unix_ms)?;
    lim::check_uuid(&f("gpu_uuid"), &s.gpu_uuid)?;
    for (name, v) in [
        ("gpu_util_pct", s.gpu_util_pct),
        ("mem_util_pct", s.mem_util_pct),
    ] {
        if let Some(v) = v {
            lim::check_max(&f(name), u64::from(v), 100, "percent")?;
        }
    }
    if let Some(m) = s.memory_used_bytes {
        lim::check_max(
            &f("memory_used_bytes"),
            m,
            lim::MAX_GPU_MEMORY_BYTES,
            "bytes",
        )?;
    }
    lim::check_activity_pct(&f("unattributed_sm_pct"), s.unattributed_sm_pct)?;
    for (name, v) in [
        ("unattributed_dram_pct", s.unattributed_dram_pct),
        ("unattributed_tensor_pct", s.unattributed_tensor_pct),
    ] {
        if let Some(v) = v {
            lim::check_activity_pct(&f(name), v)?;
        }
    }
    for (name, v) in [
        ("sm_clock_mhz", s.sm_clock_mhz),
        ("max_sm_clock_mhz", s.max_sm_clock_mhz),
    ] {
        if let Some(v) = v {
            lim::check_max(&f(name), u64::from(v), lim::MAX_CLOCK_MHZ, "MHz")?;
        }
    }
    lim::check_count(&f("slices"), s.slices.len(), 0, lim::MAX_SLICES_PER_SAMPLE)?;
    lim::check_each(&f("slices"), &s.slices, |af, a| {
        lim::check_slice_id(&format!("{af}.slice_id"), &a.slice_id)?;
        lim::check_activity_pct(&format!("{af}.sm_pct"), a.sm_pct)?;
        for (name, v) in [("dram_pct", a.dram_pct), ("tensor_pct", a.tensor_pct)] {
            if let Some(v) = v {
                lim::check_activity_pct(&format!("{af}.{name}"), v)?;
            }
        }
        lim::check_max(
            &format!("{af}.memory_bytes"),
            a.memory_bytes,
            lim::MAX_GPU_MEMORY_BYTES,
            "bytes",
        )
    })?;
    lim::check_count(
        &f("unsupported"),
        s.unsupported.len(),
        0,
        lim::MAX_UNSUPPORTED_PER_SAMPLE,
    )?;
    lim::check_each(&f("unsupported"), &s.unsupported, |uf, u| {
        lim::check_label(uf, u)
    })
}

/// A sample batch: at most [`lim::MAX_SAMPLES_PER_BATCH`] well-formed samples.
fn sample_batch(b: &pb::SampleBatch) -> Checked {
    lim::check_count("samples", b.samples.len(), 0, lim::MAX_SAMPLES_PER_BATCH)?;
    lim::check_each("samples", &b.samples, sample)
}

/// A Kubernetes name the kubelet reports (namespace, pod, container, resource).
fn k8s_name(field: &str, v: &str) -> Checked {
    lim::check_str(field, v, 0, lim::MAX_K8S_NAME_LEN, Alphabet::Graphic)
}

/// One kubelet allocation's shape (its meaning is checked by `kubelet::kubelet_slice_changes`).
fn kubelet_allocation(field: &str, a: &pb::KubeletAllocation) -> Checked {
    let f = |name: &str| format!("{field}.{name}");
    lim::check_slice_id(&f("slice_id"), &a.slice_id)?;
    lim::check_tenant(&f("tenant"), &a.tenant)?;
    k8s_name(&f("namespace"), &a.namespace)?;
    k8s_name(&f("pod"), &a.pod)?;
    k8s_name(&f("container"), &a.container)?;
    k8s_name(&f("resource"), &a.resource)?;
    lim::check_count(
        &f("device_ids"),
        a.device_ids.len(),
        0,
        lim::MAX_DEVICES_PER_REQUEST,
    )?;
    lim::check_each(&f("device_ids"), &a.device_ids, |df, d| {
        lim::check_str(df, d, 1, lim::MAX_DEVICE_ID_LEN, Alphabet::Graphic)
    })?;
    lim::check_count(
        &f("gpu_uuids"),
        a.gpu_uuids.len(),
        0,
        lim::MAX_GPUS_PER_NODE,
    )?;
    lim::check_each(&f("gpu_uuids"), &a.gpu_uuids, |uf, u| {
        lim::check_uuid(uf, u)
    })?;
    if let Some(m) = &a.mig {
        lim::check_profile(&f("mig.profile"), &m.profile)?;
        mig_span(&f("mig"), m.start, m.size)?;
        lim::check_str(
            &f("mig.mig_uuid"),
            &m.mig_uuid,
            0,
            lim::MAX_UUID_LEN,
            Alphabet::Graphic,
        )?;
    }
    Ok(())
}

/// A kubelet report: at most [`lim::MAX_KUBELET_ALLOCATIONS`] well-formed allocations.
fn kubelet_allocations(k: &pb::KubeletAllocations) -> Checked {
    lim::check_unix_ms("observed_unix_ms", k.observed_unix_ms)?;
    lim::check_count(
        "allocations",
        k.allocations.len(),
        0,
        lim::MAX_KUBELET_ALLOCATIONS,
    )?;
    lim::check_each("allocations", &k.allocations, kubelet_allocation)
}

fn slice_notice(n: &pb::SliceNotice) -> Checked {
    lim::check_slice_id("slice_id", &n.slice_id)?;
    if greenslice_core::notice::NoticeKind::parse(&n.kind).is_none() {
        return Err(LimitError::new(
            "kind",
            format!(
                "{:?} is not a limit notice kind (one of {})",
                n.kind,
                greenslice_core::notice::NoticeKind::ALL
                    .map(|k| k.as_str())
                    .join(", ")
            ),
        ));
    }
    lim::check_message("message", &n.message)?;
    lim::check_unix_ms("at_unix_ms", n.at_unix_ms)
}

/// A message on an agent's stream after its Register. A second Register is a protocol error; a
/// message with no known content (a newer agent's) passes and is ignored by the caller.
pub fn agent_message(m: &pb::AgentMessage) -> Result<(), Status> {
    use pb::agent_message::Msg;
    let checked = match &m.msg {
        Some(Msg::Register(_)) => {
            return Err(Status::invalid_argument(
                "Register is only valid as the first message of a session",
            ));
        }
        Some(Msg::Result(r)) => command_result(r).map_err(|e| e.within("result")),
        Some(Msg::State(s)) => gpus("gpus", &s.gpus).map_err(|e| e.within("state")),
        Some(Msg::Samples(b)) => sample_batch(b).map_err(|e| e.within("samples")),
        Some(Msg::Kubelet(k)) => kubelet_allocations(k).map_err(|e| e.within("kubelet")),
        Some(Msg::Notice(n)) => slice_notice(n).map_err(|e| e.within("notice")),
        None => Ok(()),
    };
    status(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn gpu(i: u32) -> pb::GpuInfo {
        pb::GpuInfo {
            uuid: format!("GPU-{i}"),
            index: i,
            model: "H100-SXM5-80GB".into(),
            memory_bytes: 80 << 30,
            healthy: true,
            ..Default::default()
        }
    }

    fn reg(gpus: Vec<pb::GpuInfo>) -> pb::Register {
        pb::Register {
            node: "n1".into(),
            backend: "sim".into(),
            gpus,
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_field_once() {
        let req = |tenant: &str, key: &str| pb::RequestSliceRequest {
            tenant: tenant.into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                ..Default::default()
            }),
            idempotency_key: key.into(),
            ..Default::default()
        };
        let e = request_slice(&req("Team A", "")).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "tenant must be 1-63 characters of [a-z0-9-_.], got \"Team A\""
        );
        let e = request_slice(&req("team-a", &"k".repeat(300))).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("idempotency key must be at most"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn host_demand_beyond_what_a_node_may_report_is_refused() {
        let req = |cpu: u64, mem: u64| pb::RequestSliceRequest {
            tenant: "t".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count: 1 })),
                ..Default::default()
            }),
            host_cpu_milli: cpu,
            host_memory_bytes: mem,
            ..Default::default()
        };
        assert!(request_slice(&req(0, 0)).is_ok(), "0: not said");
        assert!(request_slice(&req(lim::MAX_CPU_MILLI, lim::MAX_HOST_MEMORY_BYTES)).is_ok());
        let e = request_slice(&req(lim::MAX_CPU_MILLI + 1, 0)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "host_cpu_milli must be at most 1000000000 milli-cores (what one node may report); got 1000000001"
        );
        let e = request_slice(&req(1000, u64::MAX)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("host_memory_bytes must be at most"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn register_limits() {
        assert!(register(&reg((0..8).map(gpu).collect())).is_ok());
        let many: Vec<pb::GpuInfo> = (0..10_000).map(|i| gpu(i % 64)).collect();
        let e = register(&reg(many)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("register.gpus") && e.message().contains("at most 64"));
        let mut g = gpu(0);
        g.shares.push(pb::ShareLimit {
            slice_id: "s-1".into(),
            compute_fraction: f64::NAN,
            memory_bytes: 1,
        });
        let e = register(&reg(vec![g])).unwrap_err();
        assert!(
            e.message()
                .contains("register.gpus[0].shares[0].compute_fraction"),
            "{}",
            e.message()
        );
        let e = register(&reg(vec![gpu(0), gpu(0)])).unwrap_err();
        assert!(e.message().contains("twice"), "{}", e.message());
        let mut r = reg(vec![]);
        r.node = "x".repeat(300);
        assert!(
            register(&r)
                .unwrap_err()
                .message()
                .contains("register.node")
        );
    }

    #[test]
    fn stream_messages() {
        use pb::agent_message::Msg;
        let ok = pb::AgentMessage {
            msg: Some(Msg::Result(pb::CommandResult {
                command_id: 1,
                ok: false,
                error: "no room\non GPU".into(),
                ..Default::default()
            })),
        };
        assert!(agent_message(&ok).is_ok());
        let again = pb::AgentMessage {
            msg: Some(Msg::Register(reg(vec![]))),
        };
        assert_eq!(
            agent_message(&again).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut env = std::collections::HashMap::new();
        env.insert("BAD KEY".to_string(), "v".to_string());
        let bad_env = pb::AgentMessage {
            msg: Some(Msg::Result(pb::CommandResult {
                env,
                ..Default::default()
            })),
        };
        assert!(
            agent_message(&bad_env)
                .unwrap_err()
                .message()
                .contains("result.env")
        );
        let nan = pb::AgentMessage {
            msg: Some(Msg::Samples(pb::SampleBatch {
                samples: vec![pb::GpuSample {
                    at_unix_ms: 1,
                    gpu_uuid: "GPU-0".into(),
                    unattributed_sm_pct: f64::INFINITY,
                    ..Default::default()
                }],
            })),
        };
        assert!(
            agent_message(&nan)
                .unwrap_err()
                .message()
                .contains("samples.samples[0].unattributed_sm_pct")
        );
        // The DRAM, tensor and clock signals are held to limits too.
        let bad_dram = pb::AgentMessage {
            msg: Some(Msg::Samples(pb::SampleBatch {
                samples: vec![pb::GpuSample {
                    at_unix_ms: 1,
                    gpu_uuid: "GPU-0".into(),
                    slices: vec![pb::SliceActivity {
                        slice_id: "s-1".into(),
                        dram_pct: Some(f64::NAN),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })),
        };
        assert!(
            agent_message(&bad_dram)
                .unwrap_err()
                .message()
                .contains("samples.samples[0].slices[0].dram_pct")
        );
        let bad_clock = pb::AgentMessage {
            msg: Some(Msg::Samples(pb::SampleBatch {
                samples: vec![pb::GpuSample {
                    at_unix_ms: 1,
                    gpu_uuid: "GPU-0".into(),
                    sm_clock_mhz: Some(u32::MAX),
                    ..Default::default()
                }],
            })),
        };
        assert!(
            agent_message(&bad_clock)
                .unwrap_err()
                .message()
                .contains("samples.samples[0].sm_clock_mhz")
        );
        assert!(agent_message(&pb::AgentMessage { msg: None }).is_ok());
        let notice = |slice: &str, kind: &str| pb::AgentMessage {
            msg: Some(Msg::Notice(pb::SliceNotice {
                slice_id: slice.into(),
                kind: kind.into(),
                pid: 7,
                message: "over its limit".into(),
                at_unix_ms: 1,
            })),
        };
        assert!(agent_message(&notice("s-1", "process_stopped")).is_ok());
        let e = agent_message(&notice("s-1", "process_nuked")).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("notice.kind"), "{}", e.message());
        let e = agent_message(&notice("s 1", "process_stopped")).unwrap_err();
        assert!(e.message().contains("notice.slice_id"), "{}", e.message());
    }

    #[test]
    fn tenant_and_ops_requests() {
        let e = slice_id(&"s".repeat(300)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("slice_id") && e.message().contains("1-64"));
        assert!(
            usage(&pb::UsageRequest {
                node: "n1".into(),
                to_unix_ms: i64::MIN,
                ..Default::default()
            })
            .is_err()
        );
        assert!(node("node-00").is_ok() && node("").is_err() && node("a b").is_err());
        assert!(
            keep_slice(&pb::KeepSliceRequest {
                slice_id: "s-1".into(),
                tenant: String::new(),
                duration_s: u64::MAX,
            })
            .is_err()
        );
    }
}
