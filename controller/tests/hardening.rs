//! Input hardening: the request validators and the trace, config and CSV parsers take arbitrary
//! input without panicking, and accept exactly what they document.

use std::path::Path;

use greenslice_controller::bench::openb;
use greenslice_controller::config::ControllerConfig;
use greenslice_controller::energy::HourlySeries;
use greenslice_core::convert::spec_from_pb;
use greenslice_core::slice::{self, SliceKind};
use greenslice_proto::v1 as pb;
use proptest::prelude::*;

fn kind_strategy() -> impl Strategy<Value = Option<pb::slice_spec::Kind>> {
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(|count| Some(pb::slice_spec::Kind::Whole(pb::WholeGpus { count }))),
        ".{0,80}".prop_map(|profile| Some(pb::slice_spec::Kind::Mig(pb::MigSlice { profile }))),
        (any::<f64>(), any::<u64>()).prop_map(|(compute_fraction, memory_bytes)| {
            Some(pb::slice_spec::Kind::Share(pb::ShareSlice {
                compute_fraction,
                memory_bytes,
            }))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any wire spec is either refused or accepted with sizes in their documented ranges.
    #[test]
    fn request_validation_accepts_only_documented_ranges(
        kind in kind_strategy(),
        model in ".{0,100}",
        class in ".{0,100}",
    ) {
        let spec = pb::SliceSpec { kind, gpu_model: model, slice_class: class };
        if let Ok(s) = spec_from_pb(Some(&spec)) {
            match s.kind {
                SliceKind::Whole { count } => prop_assert!((1..=slice::MAX_WHOLE_GPUS).contains(&count)),
                SliceKind::Mig { profile } => prop_assert!(greenslice_core::mig::profile_exists_anywhere(&profile)),
                SliceKind::Share { compute_fraction, memory_bytes } => {
                    prop_assert!(compute_fraction > 0.0 && compute_fraction <= 1.0);
                    prop_assert!(memory_bytes > 0);
                }
            }
        }
    }

    /// Tenant names and idempotency keys: accepted only within their length and alphabet.
    #[test]
    fn tenant_and_key_validation(t in ".{0,100}", k in ".{0,200}") {
        if slice::validate_tenant(&t).is_ok() {
            prop_assert!(!t.is_empty() && t.len() <= slice::MAX_TENANT_LEN);
            prop_assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
        if slice::validate_idempotency_key(&k).is_ok() {
            prop_assert!(k.len() <= slice::MAX_IDEMPOTENCY_KEY_LEN);
        }
    }

    /// Trace files: arbitrary rows give a result or a typed error, never a panic.
    #[test]
    fn trace_parsers_never_panic(body in "([a-z0-9,|.\\-]{0,40}\n){0,8}") {
        let nodes = format!("sn,cpu_milli,memory_mib,gpu,model\n{body}");
        let _ = openb::parse_nodes(&nodes, Path::new("nodes.csv"));
        let pods = format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n{body}");
        let _ = openb::parse_tasks(&pods, Path::new("pods.csv"));
    }

    /// Config files and carbon series: arbitrary text is refused with an error, never a panic.
    #[test]
    fn config_and_csv_parsers_never_panic(text in ".{0,300}") {
        let _ = toml::from_str::<ControllerConfig>(&text);
        let _ = HourlySeries::parse_csv(&text);
    }
}

#[test]
fn trace_row_errors_name_the_line() {
    let e = openb::parse_nodes(
        "sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,2,P100\nn2,lots,1,1,T4\n",
        Path::new("nodes.csv"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nodes.csv") && e.contains('3'), "{e}");
}

/// Decodes `bytes` as each request type the controller serves and, when that works, runs the
/// request's validator: neither may panic, whatever the bytes.
fn decode_and_validate(bytes: &[u8]) {
    use greenslice_controller::api::validate as v;
    use prost::Message;
    if let Ok(r) = pb::RequestSliceRequest::decode(bytes) {
        let _ = v::request_slice(&r);
    }
    if let Ok(r) = pb::GetSliceRequest::decode(bytes) {
        let _ = v::slice_id(&r.slice_id);
    }
    if let Ok(r) = pb::ReleaseSliceRequest::decode(bytes) {
        let _ = v::slice_id(&r.slice_id);
    }
    if let Ok(r) = pb::ListSlicesRequest::decode(bytes) {
        let _ = v::list_slices(&r);
    }
    if let Ok(r) = pb::WatchSlicesRequest::decode(bytes) {
        let _ = v::watch_slices(&r);
    }
    if let Ok(r) = pb::KeepSliceRequest::decode(bytes) {
        let _ = v::keep_slice(&r);
    }
    if let Ok(r) = pb::UsageRequest::decode(bytes) {
        let _ = v::usage(&r);
    }
    if let Ok(r) = pb::EnergyReportRequest::decode(bytes) {
        let _ = v::energy_report(&r);
    }
    let _ = pb::InventoryRequest::decode(bytes);
    if let Ok(r) = pb::DrainNodeRequest::decode(bytes) {
        let _ = v::node(&r.node);
    }
    if let Ok(r) = pb::UndrainNodeRequest::decode(bytes) {
        let _ = v::node(&r.node);
    }
    if let Ok(r) = pb::ChooseDevicesRequest::decode(bytes) {
        let _ = v::choose_devices(&r);
    }
    if let Ok(m) = pb::AgentMessage::decode(bytes) {
        match &m.msg {
            Some(pb::agent_message::Msg::Register(r)) => {
                let _ = v::register(r);
            }
            _ => {
                let _ = v::agent_message(&m);
            }
        }
    }
}

/// Well-formed encodings of each request with one field of each kind set, as seeds to mutate.
fn seed_messages() -> Vec<Vec<u8>> {
    use prost::Message;
    let gpu = pb::GpuInfo {
        uuid: "GPU-1".into(),
        mig_instances: vec![pb::MigInstance {
            profile: "1g.10gb".into(),
            start: 1,
            size: 1,
            ..Default::default()
        }],
        shares: vec![pb::ShareLimit {
            slice_id: "s-1".into(),
            compute_fraction: 0.5,
            memory_bytes: 1,
        }],
        ..Default::default()
    };
    vec![
        pb::RequestSliceRequest {
            tenant: "t".into(),
            spec: Some(pb::SliceSpec {
                kind: Some(pb::slice_spec::Kind::Share(pb::ShareSlice {
                    compute_fraction: 0.5,
                    memory_bytes: 1,
                })),
                gpu_model: "m".into(),
                slice_class: "c".into(),
            }),
            idempotency_key: "k".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::UsageRequest {
            slice_id: "s-1".into(),
            from_unix_ms: 5,
            to_unix_ms: 10,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                node: "n".into(),
                gpus: vec![gpu.clone()],
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Samples(pb::SampleBatch {
                samples: vec![pb::GpuSample {
                    at_unix_ms: 1,
                    gpu_uuid: "GPU-1".into(),
                    slices: vec![pb::SliceActivity {
                        slice_id: "s-1".into(),
                        sm_pct: 1.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })),
        }
        .encode_to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes into prost decode of every request type, then its validator: no panic.
    #[test]
    fn arbitrary_bytes_decode_and_validate_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_and_validate(&bytes);
    }

    /// Well-formed requests with bytes flipped, cut or appended: no panic.
    #[test]
    fn mutated_requests_decode_and_validate_without_panicking(
        seed in 0usize..4,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = seed_messages()[seed].clone();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend(tail);
        decode_and_validate(&bytes);
    }
}
