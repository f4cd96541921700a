//! Input limits: the one home for how long, how many and how large any field the controller or an
//! agent receives may be, and the primitive checks that enforce them.
//!
//! Every string and repeated field that crosses a gRPC edge has a limit here, so a bug or a
//! compromised peer cannot make the receiver allocate without bound or store garbage. The per-message
//! validators (the controller's `api::validate`, the agent's command and device-plugin checks) are
//! built from these checks; each failure is a [`LimitError`] that names the field and the limit, and
//! maps to gRPC INVALID_ARGUMENT.
//!
//! Whole-message byte caps (what tonic refuses before decoding, with OUT_OF_RANGE) are here too, so
//! servers and clients agree on them.

use thiserror::Error;

use crate::MILLI_PER_GPU;

// ---- Whole messages (bytes, gRPC framing) -------------------------------------------------------

/// Largest request a TenantService call may carry: its requests are a few short strings.
pub const TENANT_MAX_REQUEST_BYTES: usize = 64 << 10;
/// Largest TenantService answer (a ListSlices over a large cluster).
pub const TENANT_MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Largest request an OpsService call may carry: a few selectors and times.
pub const OPS_MAX_REQUEST_BYTES: usize = 64 << 10;
/// Largest OpsService answer (an Inventory or Usage of a large cluster, an energy report).
pub const OPS_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Largest KubeletService request (at most [`MAX_CANDIDATES`] candidates).
pub const KUBELET_MAX_REQUEST_BYTES: usize = 256 << 10;
/// Largest KubeletService answer.
pub const KUBELET_MAX_RESPONSE_BYTES: usize = 64 << 10;
/// Largest message an agent may send on its stream: a sample batch of [`MAX_SAMPLES_PER_BATCH`]
/// samples, or a Register of [`MAX_GPUS_PER_NODE`] GPUs with their instances and shares.
pub const AGENT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest message the controller sends an agent (one command).
pub const CONTROLLER_MAX_MESSAGE_BYTES: usize = 64 << 10;

// ---- Strings (bytes) ------------------------------------------------------------------------------

/// Slice ids: `s-` or `k-` and 16 hex digits when the controller or the kubelet reporter makes
/// them; [A-Za-z0-9-._].
pub const MAX_SLICE_ID_LEN: usize = 64;
/// Node names: a Kubernetes node name (DNS subdomain), [A-Za-z0-9-._].
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Tenant names, [a-z0-9-_.] (see [`crate::slice::validate_tenant`]).
pub const MAX_TENANT_LEN: usize = crate::slice::MAX_TENANT_LEN;
/// Idempotency keys, printable ASCII.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = crate::slice::MAX_IDEMPOTENCY_KEY_LEN;
/// GPU and MIG device UUIDs ("GPU-" or "MIG-" and a UUID: 40 characters), printable ASCII.
pub const MAX_UUID_LEN: usize = 128;
/// Short names and labels: GPU model, slice class, backend, agent version, PCI bus id, the names
/// of unsupported sample fields.
pub const MAX_LABEL_LEN: usize = crate::slice::MAX_NAME_LEN;
/// MIG profile names ("1g.10gb+me"), printable ASCII.
pub const MAX_PROFILE_LEN: usize = 32;
/// Kubernetes names the kubelet reports: namespace, pod, container, extended resource.
pub const MAX_K8S_NAME_LEN: usize = 253;
/// Device-plugin device ids (the agent makes them at most 63 characters; the kubelet echoes them).
pub const MAX_DEVICE_ID_LEN: usize = 63;
/// Environment variable names ([A-Za-z_][A-Za-z0-9_]*).
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Environment variable values (no control characters).
pub const MAX_ENV_VALUE_LEN: usize = 4096;
/// Free text: an agent's error message (UTF-8, no control characters but tab and newline).
pub const MAX_MESSAGE_LEN: usize = 4096;

// ---- Repeated fields (entries) --------------------------------------------------------------------

/// GPUs one node may report (Register, StateReport).
pub const MAX_GPUS_PER_NODE: usize = 64;
/// MIG instances on one GPU: each covers at least one of its 8 memory slices.
pub const MAX_MIG_INSTANCES_PER_GPU: usize = crate::mig::MEMORY_SLICES as usize;
/// Shares on one GPU: each holds at least one milli-GPU.
pub const MAX_SHARES_PER_GPU: usize = MILLI_PER_GPU as usize;
/// Samples in one batch (64 GPUs x 60 samples).
pub const MAX_SAMPLES_PER_BATCH: usize = 3840;
/// Slice activities in one sample: at most every share, MIG instance and whole holder of one GPU.
pub const MAX_SLICES_PER_SAMPLE: usize = MAX_SHARES_PER_GPU + MAX_MIG_INSTANCES_PER_GPU + 1;
/// Names in a sample's `unsupported` list.
pub const MAX_UNSUPPORTED_PER_SAMPLE: usize = 16;
/// Environment entries in one command result.
pub const MAX_ENV_ENTRIES: usize = 64;
/// Kubelet allocations in one report: each holds at least one of the node's devices, and a GPU
/// offers at most 100 share units, 7 MIG instances and itself whole.
pub const MAX_KUBELET_ALLOCATIONS: usize = MAX_GPUS_PER_NODE * 128;
/// Device ids in one kubelet allocation or device-plugin container request: every share unit of
/// every GPU of a node.
pub const MAX_DEVICES_PER_REQUEST: usize = MAX_GPUS_PER_NODE * 100;
/// Candidate GPUs in one ChooseDevices request.
pub const MAX_CANDIDATES: usize = MAX_GPUS_PER_NODE;

// ---- Numbers ---------------------------------------------------------------------------------------

/// Latest accepted time, ms since the Unix epoch (9999-12-31T23:59:59.999Z).
pub const MAX_UNIX_MS: i64 = 253_402_300_799_999;
/// Most memory one GPU may report, bytes (1 TiB).
pub const MAX_GPU_MEMORY_BYTES: u64 = 1 << 40;
/// Most host memory a node may report, bytes (1 PiB).
pub const MAX_HOST_MEMORY_BYTES: u64 = 1 << 50;
/// Most CPU a node may report, milli-cores (one million cores).
pub const MAX_CPU_MILLI: u64 = 1_000_000_000;
/// Highest activity a sample may report, percent of one GPU. Per-process readings are summed and may
/// overshoot 100 a little; ten times that is garbage.
pub const MAX_ACTIVITY_PCT: f64 = 1000.0;
/// Largest clock reading an agent may report, MHz (today's GPUs run under 3,000 MHz).
pub const MAX_CLOCK_MHZ: u64 = 20_000;
/// Longest duration a request may give, seconds (one year); policies set tighter bounds.
pub const MAX_DURATION_S: u64 = 365 * 24 * 3600;

/// A field outside its limit. The message names the field (with its path in the message, e.g.
/// `gpus[3].uuid`) and the limit; it is the text of an INVALID_ARGUMENT status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} {problem}")]
pub struct LimitError {
    /// Path of the field in its message.
    pub field: String,
    /// What is wrong, with the limit.
    pub problem: String,
}

impl LimitError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        LimitError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error for a field inside `parent` (`parent.field`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Result of a limit check.
pub type Checked = Result<(), LimitError>;

/// Which bytes a string may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// [A-Za-z0-9-._]
    Name,
    /// Printable ASCII without space.
    Graphic,
    /// Printable ASCII with space.
    Printable,
    /// Any UTF-8 without control characters.
    NoControl,
    /// Any UTF-8 without control characters but tab and newline.
    Text,
}

impl Alphabet {
    fn allows(self, c: char) -> bool {
        match self {
            Alphabet::Name => c.is_ascii_alphanumeric() || "-._".contains(c),
            Alphabet::Graphic => c.is_ascii_graphic(),
            Alphabet::Printable => c.is_ascii_graphic() || c == ' ',
            Alphabet::NoControl => !c.is_control(),
            Alphabet::Text => !c.is_control() || c == '\n' || c == '\t',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Alphabet::Name => "of [A-Za-z0-9-._]",
            Alphabet::Graphic => "of printable ASCII without spaces",
            Alphabet::Printable => "of printable ASCII",
            Alphabet::NoControl => "without control characters",
            Alphabet::Text => "without control characters other than tab and newline",
        }
    }
}

/// Checks a string: `min..=max` bytes of `alphabet`. The error quotes at most 40 characters of it.
pub fn check_str(field: &str, v: &str, min: usize, max: usize, alphabet: Alphabet) -> Checked {
    let bad_len = v.len() < min || v.len() > max;
    let bad_char = v.chars().find(|c| !alphabet.allows(*c));
    if !bad_len && bad_char.is_none() {
        return Ok(());
    }
    let range = if min == 0 {
        format!("at most {max}")
    } else {
        format!("{min}-{max}")
    };
    let got = match bad_char {
        Some(c) if !bad_len => format!("it holds {c:?}"),
        _ => format!("got {} bytes", v.len()),
    };
    Err(LimitError::new(
        field,
        format!(
            "must be {range} characters {}; {got}: {:?}",
            alphabet.describe(),
            v.chars().take(40).collect::<String>()
        ),
    ))
}

/// A slice id: 1-[`MAX_SLICE_ID_LEN`] of [A-Za-z0-9-._].
pub fn check_slice_id(field: &str, v: &str) -> Checked {
    check_str(field, v, 1, MAX_SLICE_ID_LEN, Alphabet::Name)
}

/// A slice id or nothing (fields that name an owner only when there is one).
pub fn check_opt_slice_id(field: &str, v: &str) -> Checked {
    if v.is_empty() {
        return Ok(());
    }
    check_slice_id(field, v)
}

/// A node name: 1-[`MAX_NODE_NAME_LEN`] of [A-Za-z0-9-._].
pub fn check_node(field: &str, v: &str) -> Checked {
    check_str(field, v, 1, MAX_NODE_NAME_LEN, Alphabet::Name)
}

/// A GPU or MIG device UUID: 1-[`MAX_UUID_LEN`] printable ASCII without spaces.
pub fn check_uuid(field: &str, v: &str) -> Checked {
    check_str(field, v, 1, MAX_UUID_LEN, Alphabet::Graphic)
}

/// A tenant name (the rule of [`crate::slice::validate_tenant`]), named as `field`.
pub fn check_tenant(field: &str, v: &str) -> Checked {
    match crate::slice::tenant_problem(v) {
        None => Ok(()),
        Some(problem) => Err(LimitError::new(field, problem)),
    }
}

/// A tenant name or nothing (filters where empty means all).
pub fn check_opt_tenant(field: &str, v: &str) -> Checked {
    if v.is_empty() {
        return Ok(());
    }
    check_tenant(field, v)
}

/// A short label: at most [`MAX_LABEL_LEN`] printable ASCII.
pub fn check_label(field: &str, v: &str) -> Checked {
    check_str(field, v, 0, MAX_LABEL_LEN, Alphabet::Printable)
}

/// A MIG profile name: 1-[`MAX_PROFILE_LEN`] printable ASCII without spaces.
pub fn check_profile(field: &str, v: &str) -> Checked {
    check_str(field, v, 1, MAX_PROFILE_LEN, Alphabet::Graphic)
}

/// Free text from a peer: at most [`MAX_MESSAGE_LEN`] bytes, no control characters but tab and
/// newline.
pub fn check_message(field: &str, v: &str) -> Checked {
    check_str(field, v, 0, MAX_MESSAGE_LEN, Alphabet::Text)
}

/// Cuts free text to what [`check_message`] accepts (for a sender: its own error text may be long).
pub fn truncate_message(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(MAX_MESSAGE_LEN));
    for c in v.chars() {
        let c = if Alphabet::Text.allows(c) { c } else { ' ' };
        if out.len() + c.len_utf8() > MAX_MESSAGE_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// One environment entry: a name of [A-Za-z_][A-Za-z0-9_]* up to [`MAX_ENV_KEY_LEN`], a value up
/// to [`MAX_ENV_VALUE_LEN`] without control characters.
pub fn check_env_entry(field: &str, key: &str, value: &str) -> Checked {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_ENV_KEY_LEN
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !key_ok {
        return Err(LimitError::new(
            format!("{field} key"),
            format!(
                "must be 1-{MAX_ENV_KEY_LEN} characters of [A-Za-z0-9_], not starting with a digit; got {:?}",
                key.chars().take(40).collect::<String>()
            ),
        ));
    }
    check_str(
        &format!("{field}[{key}]"),
        value,
        0,
        MAX_ENV_VALUE_LEN,
        Alphabet::NoControl,
    )
}

/// A repeated field of at most `max` entries (and at least `min`).
pub fn check_count(field: &str, n: usize, min: usize, max: usize) -> Checked {
    if (min..=max).contains(&n) {
        return Ok(());
    }
    let range = if min == 0 {
        format!("at most {max}")
    } else {
        format!("{min}-{max}")
    };
    Err(LimitError::new(
        field,
        format!("must have {range} entries, got {n}"),
    ))
}

/// A time in ms since the Unix epoch: 0 (unset) to [`MAX_UNIX_MS`].
pub fn check_unix_ms(field: &str, v: i64) -> Checked {
    if (0..=MAX_UNIX_MS).contains(&v) {
        return Ok(());
    }
    Err(LimitError::new(
        field,
        format!("must be a time in ms since the Unix epoch, 0-{MAX_UNIX_MS}; got {v}"),
    ))
}

/// A compute fraction: finite, in (0, 1].
pub fn check_fraction(field: &str, v: f64) -> Checked {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        return Ok(());
    }
    Err(LimitError::new(
        field,
        format!("must be in (0, 1]; got {v}"),
    ))
}

/// An activity reading: finite, 0 to [`MAX_ACTIVITY_PCT`] percent.
pub fn check_activity_pct(field: &str, v: f64) -> Checked {
    if v.is_finite() && (0.0..=MAX_ACTIVITY_PCT).contains(&v) {
        return Ok(());
    }
    Err(LimitError::new(
        field,
        format!("must be a percentage in 0-{MAX_ACTIVITY_PCT}; got {v}"),
    ))
}

/// An unsigned quantity of at most `max` (bytes, milli-units, percent).
pub fn check_max(field: &str, v: u64, max: u64, unit: &str) -> Checked {
    if v <= max {
        return Ok(());
    }
    Err(LimitError::new(
        field,
        format!("must be at most {max} {unit}; got {v}"),
    ))
}

/// Checks `items` with `check`, each under `field[i]`; stops at the first failure.
pub fn check_each<'a, T>(
    field: &str,
    items: &'a [T],
    mut check: impl FnMut(&str, &'a T) -> Checked,
) -> Checked {
    for (i, item) in items.iter().enumerate() {
        check(&format!("{field}[{i}]"), item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_the_limit() {
        let e = check_slice_id("slice_id", &"a".repeat(300)).unwrap_err();
        assert_eq!(e.field, "slice_id");
        let m = e.to_string();
        assert!(
            m.starts_with("slice_id ") && m.contains("1-64") && m.contains("300"),
            "{m}"
        );
        let e = check_count("gpus", 10_000, 0, MAX_GPUS_PER_NODE).unwrap_err();
        assert!(e.to_string().contains("at most 64") && e.to_string().contains("10000"));
        let e = check_node("node", "bad node").unwrap_err();
        assert!(e.to_string().contains("' '"), "{e}");
    }

    #[test]
    fn alphabets() {
        assert!(check_slice_id("s", "s-0001a2b3").is_ok());
        assert!(check_slice_id("s", "").is_err());
        assert!(check_slice_id("s", "s/1").is_err());
        assert!(check_uuid("u", "MIG-GPU-1/2/0").is_ok());
        assert!(check_uuid("u", "GPU 1").is_err());
        assert!(check_message("m", "line one\nline\ttwo é").is_ok());
        assert!(check_message("m", "bell\u{7}").is_err());
        assert!(check_env_entry("env", "CUDA_MPS_PIPE_DIRECTORY", "/tmp/mps").is_ok());
        assert!(check_env_entry("env", "1X", "v").is_err());
        assert!(check_env_entry("env", "X", "a\nb").is_err());
    }

    #[test]
    fn numbers() {
        for f in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(check_fraction("f", f).is_err(), "{f}");
        }
        assert!(check_fraction("f", 1.0).is_ok());
        assert!(check_activity_pct("p", f64::NAN).is_err());
        assert!(check_activity_pct("p", -1.0).is_err());
        assert!(check_activity_pct("p", 100.5).is_ok());
        assert!(check_unix_ms("t", -1).is_err());
        assert!(check_unix_ms("t", i64::MAX).is_err());
        assert!(check_unix_ms("t", 1_700_000_000_000).is_ok());
    }

    #[test]
    fn truncation_fits_the_check() {
        let long = "é\u{1}".repeat(5000);
        let t = truncate_message(&long);
        assert!(check_message("m", &t).is_ok());
        assert!(t.len() <= MAX_MESSAGE_LEN && !t.is_empty());
    }

    #[test]
    fn nested_fields() {
        let e = check_each("gpus", &["ok", ""], |f, u| check_uuid(f, u))
            .unwrap_err()
            .within("register");
        assert_eq!(e.field, "register.gpus[1]");
    }
}
