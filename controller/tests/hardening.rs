//! Input hardening: the request validators and the trace, config and CSV parsers take arbitrary
//! input without panicking, and accept exactly what they document.

use std::path::Path;

use greenslice_controller::config::ControllerConfig;
use greenslice_controller::energy::HourlySeries;
use greenslice_controller::placement::openb;
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
