//! Tenant and ops commands: thin gRPC clients that print tables or JSON.

use anyhow::Context;
use greenslice_proto::client::{Authed, Conn, ConnectError};
use greenslice_proto::v1 as pb;
use pb::ops_service_client::OpsServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use tokio_stream::StreamExt;

use crate::output::{self, Format};

/// Process exit codes, by what went wrong (documented in the README).
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const NO_ROOM: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
    pub const DENIED: u8 = 6;
}

/// Maps an error (a gRPC status, usually) to the exit code.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        use tonic::Code::*;
        return match s.code() {
            InvalidArgument | FailedPrecondition | OutOfRange => exit::INVALID,
            NotFound => exit::NOT_FOUND,
            ResourceExhausted => exit::NO_ROOM,
            Unavailable | DeadlineExceeded => exit::UNAVAILABLE,
            PermissionDenied | Unauthenticated => exit::DENIED,
            _ => exit::OTHER,
        };
    }
    if e.downcast_ref::<tonic::transport::Error>().is_some() {
        return exit::UNAVAILABLE;
    }
    if let Some(c) = e.downcast_ref::<ConnectError>() {
        return match c {
            ConnectError::Transport { .. } => exit::UNAVAILABLE,
            ConnectError::Read { .. } | ConnectError::Config(_) => exit::INVALID,
        };
    }
    if e.downcast_ref::<ArgError>().is_some() {
        return exit::INVALID;
    }
    exit::OTHER
}

/// A bad command-line value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Parses a size: plain bytes, or with a unit (KiB, MiB, GiB, TiB; K/M/G/T and KB/MB/GB also read
/// as binary units, as GPU memory is).
pub fn parse_bytes(s: &str) -> Result<u64, ArgError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        ArgError(format!(
            "invalid size {s:?}: expected e.g. 10GiB, 512MiB or 1073741824"
        ))
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(ArgError(format!(
                "invalid size unit {u:?} in {s:?}: use KiB, MiB, GiB or TiB"
            )));
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(ArgError(format!("size {s:?} out of range")));
    }
    Ok(v as u64)
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["whole", "profile", "share"])))]
pub struct RequestArgs {
    /// Tenant making the request (default: the tenant of a tenant token).
    #[arg(long, env = "GREENSLICE_TENANT")]
    pub tenant: Option<String>,
    /// Number of whole GPUs (1-8, one node).
    #[arg(long)]
    pub whole: Option<u32>,
    /// MIG profile, e.g. 3g.40gb.
    #[arg(long)]
    pub profile: Option<String>,
    /// Time-sliced share: fraction of a GPU's compute in (0, 1]; needs --memory.
    #[arg(long, requires = "memory")]
    pub share: Option<f64>,
    /// GPU memory for a share, e.g. 10GiB.
    #[arg(long, value_parser = |s: &str| parse_bytes(s))]
    pub memory: Option<u64>,
    /// Only GPUs of this model, e.g. H100-SXM5-80GB.
    #[arg(long)]
    pub model: Option<String>,
    /// Slice class for policies (e.g. serving).
    #[arg(long)]
    pub class: Option<String>,
    /// Idempotency key: retrying with the same key returns the same slice.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Host CPU the workload needs on its node, in milli-cores (4000 = four cores): the slice goes
    /// only where that much is left beside the other slices' (default: not said).
    #[arg(long)]
    pub cpu_milli: Option<u64>,
    /// Host memory the workload needs on its node, e.g. 64GiB (default: not said).
    #[arg(long, value_parser = |s: &str| parse_bytes(s))]
    pub host_memory: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this tenant's slices.
    #[arg(long, env = "GREENSLICE_TENANT")]
    pub tenant: Option<String>,
    /// Only slices on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Include released and failed slices.
    #[arg(long)]
    pub all: bool,
    /// Print at most this many slices (default: all; the list is read a page at a time).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The largest page the controller serves (ListSlices).
const SLICE_PAGE_MAX: usize = 2000;

/// Every slice a list's filters match, page after page, up to `limit`.
pub async fn list_all(
    c: &mut TenantServiceClient<Authed>,
    mut req: pb::ListSlicesRequest,
    limit: Option<usize>,
) -> anyhow::Result<Vec<pb::Slice>> {
    let mut out = Vec::new();
    loop {
        let want = limit.map(|l| l.saturating_sub(out.len()));
        if want == Some(0) {
            break;
        }
        req.page_size = want.map_or(0, |w| w.min(SLICE_PAGE_MAX) as i32);
        let r = c.list_slices(req.clone()).await?.into_inner();
        out.extend(r.slices);
        if r.next_page_token.is_empty() {
            break;
        }
        req.page_token = r.next_page_token;
    }
    if let Some(l) = limit {
        out.truncate(l);
    }
    Ok(out)
}

/// The whole inventory, its node pages merged into one answer.
pub async fn inventory_all(
    c: &mut OpsServiceClient<Authed>,
) -> anyhow::Result<pb::InventoryResponse> {
    let mut req = pb::InventoryRequest::default();
    let mut all = pb::InventoryResponse::default();
    loop {
        let page = c.inventory(req.clone()).await?.into_inner();
        all.nodes.extend(page.nodes);
        all.capacity.extend(page.capacity);
        all.slices.extend(page.slices);
        all.gpus_total = page.gpus_total;
        all.allocated_milli = page.allocated_milli;
        all.nodes_total = page.nodes_total;
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    all.slices.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

/// A tenant client that reads answers as large as the controller may send (a long slice list).
pub(crate) async fn tenant_client(conn: &Conn) -> anyhow::Result<TenantServiceClient<Authed>> {
    Ok(conn
        .tenant()
        .await?
        .max_decoding_message_size(greenslice_core::limits::TENANT_MAX_RESPONSE_BYTES))
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_slice(fmt: Format, s: &pb::Slice) -> anyhow::Result<()> {
    match fmt {
        Format::Json => print_json(&output::slice_json(s)),
        Format::Table => {
            println!("{}", output::slice_detail(s));
            Ok(())
        }
    }
}

/// Builds the wire spec from command-line flags.
pub fn spec_from_args(a: &RequestArgs) -> Result<pb::SliceSpec, ArgError> {
    let kind = if let Some(n) = a.whole {
        pb::slice_spec::Kind::Whole(pb::WholeGpus { count: n })
    } else if let Some(p) = &a.profile {
        pb::slice_spec::Kind::Mig(pb::MigSlice { profile: p.clone() })
    } else if let Some(f) = a.share {
        let memory_bytes = a
            .memory
            .ok_or_else(|| ArgError("--share needs --memory".into()))?;
        pb::slice_spec::Kind::Share(pb::ShareSlice {
            compute_fraction: f,
            memory_bytes,
        })
    } else {
        return Err(ArgError("give one of --whole, --profile or --share".into()));
    };
    Ok(pb::SliceSpec {
        kind: Some(kind),
        gpu_model: a.model.clone().unwrap_or_default(),
        slice_class: a.class.clone().unwrap_or_default(),
    })
}

pub async fn request(conn: &Conn, fmt: Format, a: RequestArgs) -> anyhow::Result<()> {
    let spec = spec_from_args(&a)?;
    let mut c = tenant_client(conn).await?;
    let r = c
        .request_slice(pb::RequestSliceRequest {
            tenant: a.tenant.clone().unwrap_or_default(),
            spec: Some(spec),
            idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
            host_cpu_milli: a.cpu_milli.unwrap_or_default(),
            host_memory_bytes: a.host_memory.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let s = r.slice.context("controller answered without a slice")?;
    if r.replayed && fmt == Format::Table {
        eprintln!("(idempotency key matched an earlier request: no new slice was allocated)");
    }
    print_slice(fmt, &s)
}

pub async fn get(conn: &Conn, fmt: Format, id: &str) -> anyhow::Result<()> {
    let mut c = tenant_client(conn).await?;
    let r = c
        .get_slice(pb::GetSliceRequest {
            slice_id: id.to_string(),
        })
        .await?
        .into_inner();
    print_slice(
        fmt,
        &r.slice.context("controller answered without a slice")?,
    )
}

pub async fn list(conn: &Conn, fmt: Format, a: ListArgs) -> anyhow::Result<()> {
    let mut c = tenant_client(conn).await?;
    let mut slices = list_all(
        &mut c,
        pb::ListSlicesRequest {
            tenant: a.tenant.unwrap_or_default(),
            node: a.node.unwrap_or_default(),
            include_terminal: a.all,
            ..Default::default()
        },
        a.limit,
    )
    .await?;
    // Newest first, as people read a list.
    slices.reverse();
    match fmt {
        Format::Json => print_json(&serde_json::Value::Array(
            slices.iter().map(output::slice_json).collect(),
        )),
        Format::Table => {
            println!("{}", output::slices_table(&slices));
            Ok(())
        }
    }
}

pub async fn release(conn: &Conn, fmt: Format, id: &str) -> anyhow::Result<()> {
    let mut c = tenant_client(conn).await?;
    let r = c
        .release_slice(pb::ReleaseSliceRequest {
            slice_id: id.to_string(),
        })
        .await?
        .into_inner();
    print_slice(
        fmt,
        &r.slice.context("controller answered without a slice")?,
    )
}

pub async fn watch(
    conn: &Conn,
    fmt: Format,
    tenant: Option<String>,
    from_revision: Option<u64>,
    zone: &greenslice_controller::report::Zone,
) -> anyhow::Result<()> {
    let mut c = tenant_client(conn).await?;
    let mut stream = c
        .watch_slices(pb::WatchSlicesRequest {
            tenant: tenant.unwrap_or_default(),
            start_revision: from_revision.unwrap_or(0),
            bookmarks: false,
        })
        .await?
        .into_inner();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let kind = pb::SliceEventKind::try_from(ev.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("SLICE_EVENT_KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        match fmt {
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "kind": kind, "message": ev.message, "at_unix_ms": ev.at_unix_ms,
                    "deadline_unix_ms": ev.deadline_unix_ms, "revision": ev.revision,
                    "slice": ev.slice.as_ref().map(output::slice_json),
                })
            ),
            Format::Table => println!(
                "{} {:<14} {}  (revision {})",
                zone.iso(u64::try_from(ev.at_unix_ms).unwrap_or(0)),
                kind,
                ev.message,
                ev.revision
            ),
        }
    }
    Ok(())
}

/// An ops client that reads answers as large as the controller may send (a large cluster's
/// inventory).
pub(crate) async fn ops_client(conn: &Conn) -> anyhow::Result<OpsServiceClient<Authed>> {
    Ok(conn
        .ops()
        .await?
        .max_decoding_message_size(greenslice_core::limits::OPS_MAX_RESPONSE_BYTES))
}

pub async fn drain(conn: &Conn, fmt: Format, node: &str) -> anyhow::Result<()> {
    let r = ops_client(conn)
        .await?
        .drain_node(pb::DrainNodeRequest {
            node: node.to_string(),
        })
        .await?
        .into_inner();
    match fmt {
        Format::Json => print_json(&output::drain_json(&r)),
        Format::Table => {
            println!("{}", output::drain_text(&r));
            Ok(())
        }
    }
}

pub async fn undrain(conn: &Conn, fmt: Format, node: &str) -> anyhow::Result<()> {
    let r = ops_client(conn)
        .await?
        .undrain_node(pb::UndrainNodeRequest {
            node: node.to_string(),
        })
        .await?
        .into_inner();
    match fmt {
        Format::Json => print_json(&serde_json::json!({
            "node": r.node, "drained": false, "was_drained": r.was_drained, "connected": r.connected,
        })),
        Format::Table => {
            let state = match (r.was_drained, r.connected) {
                (false, _) => "was not drained",
                (true, true) => "schedulable again",
                (true, false) => "undrained; schedulable again once its agent reconnects",
            };
            println!("node {}: {state}", r.node);
            Ok(())
        }
    }
}

pub async fn inventory(conn: &Conn, fmt: Format) -> anyhow::Result<()> {
    let mut c = ops_client(conn).await?;
    let inv = inventory_all(&mut c).await?;
    match fmt {
        Format::Json => print_json(&output::inventory_json(&inv)),
        Format::Table => {
            println!("{}", output::inventory_tables(&inv));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("ten gigs").is_err());
        assert!(parse_bytes("10XB").is_err());
        assert!(parse_bytes("").is_err());
    }
}
