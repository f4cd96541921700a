//! TenantService: request, get, list, release and watch slices.
//!
//! Every handler first asks the caller's [`Principal`] (put there by the auth gate) which tenant it
//! may act for: a tenant token sees and changes only its own tenant's slices (PERMISSION_DENIED
//! otherwise), an ops token or an insecure-mode caller any.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use greenslice_proto::v1 as pb;
use pb::tenant_service_server::TenantService;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::validate;
use crate::auth::{Principal, principal};
use crate::engine::Controller;
use crate::model::events::{EventKind, SliceEvent};
use crate::model::slice::SliceRecord;

/// The tenant API.
#[derive(Debug, Clone)]
pub struct TenantApi {
    pub controller: Arc<Controller>,
}

impl TenantApi {
    /// The slice `id`, if the caller may see it.
    fn owned(&self, p: &Principal, id: &str) -> Result<SliceRecord, Status> {
        validate::slice_id(id)?;
        let s = self.controller.read_slice(id)?;
        p.may_access(&s.tenant, id)?;
        Ok(s)
    }

    /// Checks the caller may change slice `id` (release, keep) without copying the record: an
    /// unconfined caller (ops, insecure) needs no lookup here, the operation itself answers
    /// NOT_FOUND.
    fn check_owner(&self, p: &Principal, id: &str) -> Result<(), Status> {
        validate::slice_id(id)?;
        if p.confined_to().is_none() {
            return Ok(());
        }
        let owner = self
            .controller
            .with_state(|st| st.slice(id).map(|s| s.tenant.clone()))
            .ok_or_else(|| crate::error::ControllerError::NotFound(id.to_string()))?;
        p.may_access(&owner, id)
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn request_slice(
        &self,
        req: Request<pb::RequestSliceRequest>,
    ) -> Result<Response<pb::RequestSliceResponse>, Status> {
        let p = principal(&req)?;
        let mut r = req.into_inner();
        r.tenant = p.act_as(&r.tenant)?;
        validate::request_slice(&r)?;
        // Run to completion even if the caller goes away: a request half done (committed PENDING,
        // the agent asked) must reach ACTIVE or FAILED, not stay pending until a restart.
        let spec = greenslice_core::convert::spec_from_pb(r.spec.as_ref())
            .map_err(crate::error::ControllerError::from)?;
        let host = crate::model::slice::HostDemand {
            cpu_milli: r.host_cpu_milli,
            memory_bytes: r.host_memory_bytes,
        };
        let c = self.controller.clone();
        let out = tokio::spawn(async move {
            c.request_with_host(&r.tenant, &spec, host, &r.idempotency_key)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))??;
        Ok(Response::new(pb::RequestSliceResponse {
            slice: Some(super::slice_to_pb(&out.slice)),
            replayed: out.replayed,
        }))
    }

    async fn get_slice(
        &self,
        req: Request<pb::GetSliceRequest>,
    ) -> Result<Response<pb::GetSliceResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let s = self.owned(&p, &r.slice_id)?;
        Ok(Response::new(pb::GetSliceResponse {
            slice: Some(super::slice_to_pb(&s)),
        }))
    }

    async fn list_slices(
        &self,
        req: Request<pb::ListSlicesRequest>,
    ) -> Result<Response<pb::ListSlicesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let mut filter = validate::list_slices(&r)?;
        filter.tenant = p.act_as(&r.tenant)?;
        let (page, next_page_token, revision) =
            self.controller
                .list_page(&filter, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListSlicesResponse {
            slices: page.items.iter().map(super::slice_to_pb).collect(),
            next_page_token,
            revision,
        }))
    }

    async fn release_slice(
        &self,
        req: Request<pb::ReleaseSliceRequest>,
    ) -> Result<Response<pb::ReleaseSliceResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.check_owner(&p, &r.slice_id)?;
        let c = self.controller.clone();
        let s = tokio::spawn(async move { c.release(&r.slice_id, "released by tenant").await })
            .await
            .map_err(|e| Status::internal(format!("release task failed: {e}")))??;
        Ok(Response::new(pb::ReleaseSliceResponse {
            slice: Some(super::slice_to_pb(&s)),
        }))
    }

    async fn keep_slice(
        &self,
        req: Request<pb::KeepSliceRequest>,
    ) -> Result<Response<pb::KeepSliceResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        validate::keep_slice(&r)?;
        self.check_owner(&p, &r.slice_id)?;
        let ms = i64::try_from(r.duration_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let (s, until) = self.controller.keep(&r.slice_id, &r.tenant, ms).await?;
        Ok(Response::new(pb::KeepSliceResponse {
            slice: Some(super::slice_to_pb(&s)),
            kept_until_unix_ms: until,
        }))
    }

    type WatchSlicesStream = Pin<Box<dyn Stream<Item = Result<pb::SliceEvent, Status>> + Send>>;

    async fn watch_slices(
        &self,
        req: Request<pb::WatchSlicesRequest>,
    ) -> Result<Response<Self::WatchSlicesStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        validate::watch_slices(&r)?;
        let tenant = p.act_as(&r.tenant)?;
        let (backlog, rx) = self
            .controller
            .watch_from((r.start_revision != 0).then_some(r.start_revision))?;
        let bookmark_every = r.bookmarks.then(|| self.controller.bookmark_interval());
        Ok(Response::new(Box::pin(watch_stream(
            backlog,
            rx,
            tenant,
            r.start_revision,
            bookmark_every,
        ))))
    }
}

/// Whether a watch for `tenant` (empty: all) sees event `ev`.
fn for_tenant(tenant: &str, ev: &SliceEvent) -> bool {
    tenant.is_empty() || ev.slice.tenant == tenant
}

/// An engine event as the wire message.
fn event_to_pb(ev: &SliceEvent) -> pb::SliceEvent {
    let kind = match ev.kind {
        EventKind::StateChanged => pb::SliceEventKind::StateChanged,
        EventKind::IdleWarning => pb::SliceEventKind::IdleWarning,
        EventKind::Reclaimed => pb::SliceEventKind::Reclaimed,
        EventKind::Lost => pb::SliceEventKind::Lost,
        EventKind::Limit => pb::SliceEventKind::Limit,
    };
    pb::SliceEvent {
        kind: kind as i32,
        slice: Some(super::slice_to_pb(&ev.slice)),
        message: ev.message.clone(),
        deadline_unix_ms: ev.deadline_unix_ms,
        at_unix_ms: ev.at_unix_ms,
        revision: ev.revision,
    }
}

/// A watch: the replayed `backlog`, then the live events of `rx` after it, those of `tenant` only,
/// each once and in revision order; with `bookmark_every`, a BOOKMARK carrying the last revision
/// passed after that long without an event. Ends with DATA_LOSS when the watcher fell so far
/// behind that live events were dropped for it (it resumes from its last revision).
fn watch_stream(
    backlog: Vec<Arc<SliceEvent>>,
    rx: broadcast::Receiver<Arc<SliceEvent>>,
    tenant: String,
    start: u64,
    bookmark_every: Option<std::time::Duration>,
) -> impl Stream<Item = Result<pb::SliceEvent, Status>> + Send {
    struct Watch {
        backlog: std::collections::VecDeque<Arc<SliceEvent>>,
        rx: broadcast::Receiver<Arc<SliceEvent>>,
        tenant: String,
        /// The revision of the last event passed (sent or filtered out).
        last: u64,
        bookmark_every: Option<std::time::Duration>,
        done: bool,
    }
    let w = Watch {
        last: backlog.last().map_or(start, |e| e.revision),
        backlog: backlog.into(),
        rx,
        tenant,
        bookmark_every,
        done: false,
    };
    futures::stream::unfold(w, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            if let Some(ev) = w.backlog.pop_front() {
                w.last = ev.revision;
                if for_tenant(&w.tenant, &ev) {
                    return Some((Ok(event_to_pb(&ev)), w));
                }
                continue;
            }
            let next = match w.bookmark_every {
                Some(every) => match tokio::time::timeout(every, w.rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        let bookmark = pb::SliceEvent {
                            kind: pb::SliceEventKind::Bookmark as i32,
                            revision: w.last,
                            ..Default::default()
                        };
                        return Some((Ok(bookmark), w));
                    }
                },
                None => w.rx.recv().await,
            };
            match next {
                // Subscribed before the backlog was read: skip what it replayed already.
                Ok(ev) if ev.revision <= w.last => continue,
                Ok(ev) => {
                    w.last = ev.revision;
                    if for_tenant(&w.tenant, &ev) {
                        return Some((Ok(event_to_pb(&ev)), w));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    w.done = true;
                    let status = Status::data_loss(format!(
                        "watcher fell behind and missed {n} events; watch again from revision {} (start_revision)",
                        w.last
                    ));
                    return Some((Err(status), w));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
