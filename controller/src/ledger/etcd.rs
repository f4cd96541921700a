//! The etcd ledger: desired state in etcd, for several controller replicas with one elected leader.
//!
//! ## Key layout (under a prefix, default `/greenslice/`)
//! - `<prefix>leader`: [`LeaderInfo`] as JSON (the leader's id and the URL it serves on), attached to
//!   the leader's etcd lease. It disappears when the lease expires.
//! - `<prefix>slices/<slice id>`: the [`SliceRecord`] as JSON.
//! - `<prefix>energy/hours/<hour start>`: the [`HourRollup`] of one hour of energy history as JSON;
//!   the hour start is Unix ms, zero-padded to 16 digits so keys sort by time.
//! - `<prefix>events/<revision>`: a [`SliceEvent`] as JSON, the revision zero-padded to 20 digits
//!   so keys sort by revision: the last events, each written in the fenced transaction of the
//!   change it describes, pruned by count in that transaction (one range delete). A standby that
//!   takes over loads them and goes on above the last, so watches resume across a failover.
//!
//! ## Election and fencing
//! A controller campaigns by granting itself a lease of `lease_ttl_s` seconds and creating the leader
//! key in a transaction that succeeds only if the key does not exist. The winner keeps the lease
//! alive (a keep-alive every third of the TTL); standbys poll the key and campaign again when it is
//! gone, so a dead leader is replaced within about one TTL plus one poll interval. Every write of
//! the leader is a transaction guarded by "the leader key still has the create revision I made it
//! with": a deposed leader (paused, partitioned, its lease expired) cannot write even before it
//! notices, because a new leader's key has another create revision. A leader that loses its lease
//! stops serving (see [`Leadership::lost`]); the binary exits and its supervisor restarts it as a
//! standby.
//!
//! ## Compaction
//! etcd keeps every revision until compacted; under allocation churn its 2 GB default quota fills
//! and every write fails with "database space exceeded". The leader compacts: every
//! `compact_interval` it compacts up to the revision it saw one interval earlier, so about one
//! interval of history is kept. Compaction frees space inside etcd's file for reuse; shrinking the
//! file itself (`etcdctl defrag`) is left to operators because it blocks the member while it runs.
//!
//! Group commit: one transaction holds at most [`MAX_TXN_OPS`] ops (etcd's default
//! `--max-txn-ops`), batched by [`GroupCommit`] up to one less, which leaves room for the range
//! delete that prunes the events.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tracing::{info, warn};

use std::future::Future;
use std::pin::Pin;

use super::{
    BatchStore, Commit, GroupCommit, Ledger, LedgerError, LoadEvents, LoadHours, Op,
    events_prune_through,
};
use crate::energy::history::HourRollup;
use crate::model::events::SliceEvent;
use crate::model::slice::SliceRecord;

/// The generated client for the subset of etcd's v3 API in `controller/proto/etcd/rpc.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;

/// Most operations etcd accepts in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Records read per range request when loading slices (about 630 bytes each).
const PAGE: i64 = 1000;
/// Hour rollups read per range request: at most [`crate::energy::history::MAX_HOUR_BYTES`] each, so
/// a page stays under tonic's default 4 MiB message limit.
const HOURS_PAGE: i64 = 3;

/// How to reach etcd and how to lead.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix; several clusters can share one etcd under different prefixes.
    pub prefix: String,
    /// Leader lease time to live, seconds: how long a dead leader blocks a takeover.
    pub lease_ttl_s: i64,
    /// How often the leader compacts old revisions.
    pub compact_interval: Duration,
    /// How often a standby checks whether the leader key is gone.
    pub poll_interval: Duration,
    /// Timeout of each etcd request.
    pub request_timeout: Duration,
    /// TLS to etcd (`https://` endpoints): the CA of etcd's certificate and the controller's
    /// client certificate when etcd asks for one (`--client-cert-auth`).
    pub tls: greenslice_proto::client::ClientTls,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/greenslice/".into(),
            lease_ttl_s: 5,
            compact_interval: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            request_timeout: Duration::from_secs(5),
            tls: Default::default(),
        }
    }
}

/// The leader, as the leader key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// Unique id of the controller process.
    pub id: String,
    /// URL its gRPC API is served on (what standbys tell clients).
    pub url: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("etcd {what}: {e}"))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A connection to etcd.
#[derive(Debug, Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    config: EtcdConfig,
}

impl Etcd {
    /// Connects (lazily, balanced over the endpoints) and checks that etcd answers.
    pub async fn connect(config: EtcdConfig) -> Result<Self, LedgerError> {
        if config.endpoints.is_empty() {
            return Err(LedgerError::Config("no etcd endpoints".into()));
        }
        if config.lease_ttl_s < 1 {
            return Err(LedgerError::Config("lease_ttl_s must be at least 1".into()));
        }
        let mut eps = Vec::new();
        for e in &config.endpoints {
            let ep = greenslice_proto::client::endpoint(e, &config.tls)
                .map_err(|err| LedgerError::Config(format!("etcd endpoint {e:?}: {err}")))?
                .connect_timeout(config.request_timeout)
                .timeout(config.request_timeout)
                .tcp_nodelay(true);
            eps.push(ep);
        }
        let channel = Channel::balance_list(eps.into_iter());
        let etcd = Etcd {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel),
            config,
        };
        etcd.leader().await?;
        Ok(etcd)
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.config.prefix).into_bytes()
    }

    fn leader_key(&self) -> Vec<u8> {
        self.key("leader")
    }

    fn slices_prefix(&self) -> Vec<u8> {
        self.key("slices/")
    }

    fn hours_prefix(&self) -> Vec<u8> {
        self.key("energy/hours/")
    }

    fn events_prefix(&self) -> Vec<u8> {
        self.key("events/")
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, LedgerError> {
        let r = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: self.leader_key(),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("read leader", e))?
            .into_inner();
        match r.kvs.first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| LedgerError::Corrupt(format!("leader key: {e}"))),
        }
    }

    /// Waits until this controller is the leader. While another one leads, `seen` holds it (for
    /// standbys to name it). Returns once the leader key is ours.
    pub async fn campaign(
        &self,
        me: &LeaderInfo,
        seen: &watch::Sender<Option<LeaderInfo>>,
    ) -> Result<Leadership, LedgerError> {
        let value = serde_json::to_vec(me).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        loop {
            match self.leader().await {
                Ok(Some(l)) => {
                    if seen.borrow().as_ref() != Some(&l) {
                        info!(leader = %l.id, url = %l.url, "standby: another controller leads");
                    }
                    seen.send_replace(Some(l));
                    tokio::time::sleep(self.config.poll_interval).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "standby: cannot read the leader key; retrying");
                    tokio::time::sleep(self.config.poll_interval).await;
                    continue;
                }
            }
            let granted_at = std::time::Instant::now();
            let grant = self
                .lease
                .clone()
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: self.config.lease_ttl_s,
                    id: 0,
                })
                .await
                .map_err(|e| unavailable("grant lease", e))?
                .into_inner();
            if !grant.error.is_empty() {
                return Err(unavailable("grant lease", grant.error));
            }
            let key = self.leader_key();
            let txn = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    range_end: Vec::new(),
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key,
                        value: value.clone(),
                        lease: grant.id,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let r = self
                .kv
                .clone()
                .txn(txn)
                .await
                .map_err(|e| unavailable("campaign", e))?
                .into_inner();
            if r.succeeded {
                let rev = r.header.map(|h| h.revision).unwrap_or_default();
                info!(id = %me.id, lease = grant.id, revision = rev, "elected leader");
                let (lost_tx, lost) = watch::channel(false);
                let valid = Arc::new(ValidUntil::new(granted_at, self.config.lease_ttl_s));
                tokio::spawn(keep_alive(self.clone(), grant.id, lost_tx, valid.clone()));
                return Ok(Leadership {
                    lease: grant.id,
                    revision: rev,
                    lost,
                    valid,
                });
            }
            // Someone else won the race; give our lease back and wait for them.
            let _ = self
                .lease
                .clone()
                .lease_revoke(pb::LeaseRevokeRequest { id: grant.id })
                .await;
        }
    }

    /// Gives leadership up now (clean shutdown): standbys take over without waiting for the TTL.
    pub async fn resign(&self, leadership: &Leadership) {
        let _ = self
            .lease
            .clone()
            .lease_revoke(pb::LeaseRevokeRequest {
                id: leadership.lease,
            })
            .await;
    }
}

/// This controller's leadership.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The lease the leader key is attached to.
    pub lease: i64,
    /// Create revision of our leader key (the fencing token).
    pub revision: i64,
    /// Becomes true when the lease could not be kept alive: stop serving.
    pub lost: watch::Receiver<bool>,
    /// Until when the lease is surely still alive at etcd.
    valid: Arc<ValidUntil>,
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|l| *l).await;
    }
}

impl super::LeaseGuard for Leadership {
    /// Held while the lease is surely alive at etcd: not flagged lost, and the last renewal etcd
    /// confirmed was asked for less than two thirds of the TTL ago. Checked against the clock at
    /// every call, so a process resumed after a pause (SIGSTOP, a long GC-like stall, a VM
    /// freeze) stops acting at once, before its keep-alive task has even run.
    fn held(&self) -> bool {
        !*self.lost.borrow() && self.valid.now_valid()
    }
}

/// The instant until which the leader lease is surely alive: etcd renews a lease no earlier than
/// it receives the keep-alive, so a renewal asked for at `t` keeps it alive until at least
/// `t + TTL`. Acting stops at `t + 2/3 TTL`, leaving a third of the TTL for clock-rate skew and
/// the time a write takes to reach etcd.
#[derive(Debug)]
struct ValidUntil {
    base: std::time::Instant,
    /// Nanoseconds after `base`.
    until_ns: AtomicI64,
    margin: Duration,
}

impl ValidUntil {
    fn new(asked_at: std::time::Instant, ttl_s: i64) -> ValidUntil {
        let ttl = Duration::from_secs(ttl_s.max(1) as u64);
        let v = ValidUntil {
            base: asked_at,
            until_ns: AtomicI64::new(0),
            margin: ttl * 2 / 3,
        };
        v.renewed(asked_at);
        v
    }

    /// A renewal asked for at `asked_at` was confirmed.
    fn renewed(&self, asked_at: std::time::Instant) {
        let until = asked_at.saturating_duration_since(self.base) + self.margin;
        let ns = i64::try_from(until.as_nanos()).unwrap_or(i64::MAX);
        self.until_ns.fetch_max(ns, Ordering::SeqCst);
    }

    fn now_valid(&self) -> bool {
        let now = std::time::Instant::now().saturating_duration_since(self.base);
        i64::try_from(now.as_nanos()).unwrap_or(i64::MAX) < self.until_ns.load(Ordering::SeqCst)
    }
}

/// Keeps the lease alive every third of its TTL; flags `lost` as soon as the lease is no longer
/// surely alive ([`ValidUntil`]), before etcd can have expired it.
async fn keep_alive(etcd: Etcd, lease: i64, lost: watch::Sender<bool>, valid: Arc<ValidUntil>) {
    let ttl = Duration::from_secs(etcd.config.lease_ttl_s.max(1) as u64);
    let every = ttl / 3;
    // When the request the next answer confirms was sent.
    let mut asked = std::time::Instant::now();
    // Steps down once the lease is no longer surely valid, whatever the stream is doing.
    let watchdog = {
        let (valid, lost) = (valid.clone(), lost.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if *lost.borrow() {
                    return;
                }
                if !valid.now_valid() {
                    warn!(
                        lease,
                        "leader lease not renewed in time: stepping down before it can expire"
                    );
                    lost.send_replace(true);
                    return;
                }
            }
        })
    };
    let _stop_watchdog = AbortOnDrop(watchdog);
    loop {
        let (tx, rx) = mpsc::channel(4);
        // etcd answers the stream's headers only once it has a request to handle: queue the first
        // one before waiting for the call, or the call never returns.
        asked = std::time::Instant::now().max(asked);
        let _ = tx.send(pb::LeaseKeepAliveRequest { id: lease }).await;
        let mut client = etcd.lease.clone();
        let call = client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Ok(Ok(resp)) = tokio::time::timeout(every, call).await {
            let mut inbound = resp.into_inner();
            loop {
                match tokio::time::timeout(every, inbound.message()).await {
                    Ok(Ok(Some(r))) if r.ttl > 0 => valid.renewed(asked),
                    Ok(Ok(Some(_))) => {
                        warn!(lease, "leader lease expired");
                        lost.send_replace(true);
                        return;
                    }
                    _ => break,
                }
                if lost.is_closed() || *lost.borrow() {
                    return;
                }
                tokio::time::sleep(every).await;
                asked = std::time::Instant::now();
                if tx
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        if *lost.borrow() || !valid.now_valid() {
            warn!(
                lease,
                "could not keep the leader lease alive: stepping down"
            );
            lost.send_replace(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes batches as fenced transactions.
struct Writer {
    kv: KvClient<Channel>,
    leader_key: Vec<u8>,
    leader_revision: i64,
    slices_prefix: Vec<u8>,
    hours_prefix: Vec<u8>,
    events_prefix: Vec<u8>,
    /// Highest store revision seen, for compaction.
    revision: Arc<AtomicI64>,
}

#[async_trait::async_trait]
impl BatchStore for Writer {
    async fn write_batch(&self, ops: Vec<Op>) -> Result<(), LedgerError> {
        let mut success = Vec::with_capacity(ops.len() + 1);
        let prune = events_prune_through(&ops);
        for op in ops {
            let slice_key = |id: &str| [self.slices_prefix.as_slice(), id.as_bytes()].concat();
            let request = match op {
                Op::Put(r) => {
                    let value = serde_json::to_vec(&r)
                        .map_err(|e| LedgerError::Corrupt(format!("encode {}: {e}", r.id)))?;
                    pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: slice_key(&r.id),
                        value,
                        ..Default::default()
                    })
                }
                Op::Delete(id) => {
                    pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: slice_key(&id),
                        ..Default::default()
                    })
                }
                Op::PutHour(h) => {
                    let value = serde_json::to_vec(&h).map_err(|e| {
                        LedgerError::Corrupt(format!("encode hour {}: {e}", h.hour_start_ms))
                    })?;
                    pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: hour_key(&self.hours_prefix, h.hour_start_ms),
                        value,
                        ..Default::default()
                    })
                }
                // Hour keys are zero-padded, so key order is time order: one range delete.
                Op::DeleteHoursBefore(t) => {
                    pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: hour_key(&self.hours_prefix, 0),
                        range_end: hour_key(&self.hours_prefix, t),
                        ..Default::default()
                    })
                }
                Op::PutEvent { event, .. } => {
                    let value = serde_json::to_vec(event.as_ref()).map_err(|e| {
                        LedgerError::Corrupt(format!("encode event {}: {e}", event.revision))
                    })?;
                    pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: event_key(&self.events_prefix, event.revision),
                        value,
                        ..Default::default()
                    })
                }
            };
            success.push(pb::RequestOp {
                request: Some(request),
            });
        }
        // Event keys are zero-padded, so key order is revision order: one range delete.
        if let Some(through) = prune {
            success.push(pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: event_key(&self.events_prefix, 0),
                        range_end: event_key(&self.events_prefix, through.saturating_add(1)),
                        ..Default::default()
                    },
                )),
            });
        }
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: self.leader_key.clone(),
                target_union: Some(TargetUnion::CreateRevision(self.leader_revision)),
                range_end: Vec::new(),
            }],
            success,
            failure: Vec::new(),
        };
        let r = self
            .kv
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("write", e))?
            .into_inner();
        if let Some(h) = &r.header {
            self.revision.fetch_max(h.revision, Ordering::Relaxed);
        }
        if r.succeeded {
            Ok(())
        } else {
            Err(LedgerError::NotLeader(
                "the leader key changed: another controller leads now".into(),
            ))
        }
    }
}

/// The etcd-backed ledger of the elected leader.
pub struct EtcdLedger {
    etcd: Etcd,
    group: GroupCommit,
}

impl std::fmt::Debug for EtcdLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLedger")
            .field("prefix", &self.etcd.config.prefix)
            .finish()
    }
}

impl EtcdLedger {
    /// The ledger of a leader: writes are fenced by `leadership`, and old revisions are compacted
    /// until leadership is lost. Must run inside a tokio runtime.
    pub fn new(etcd: Etcd, leadership: &Leadership) -> Self {
        let revision = Arc::new(AtomicI64::new(leadership.revision));
        let writer = Writer {
            kv: etcd.kv.clone(),
            leader_key: etcd.leader_key(),
            leader_revision: leadership.revision,
            slices_prefix: etcd.slices_prefix(),
            hours_prefix: etcd.hours_prefix(),
            events_prefix: etcd.events_prefix(),
            revision: revision.clone(),
        };
        // One op left for the events' range delete (see the module doc).
        let group = GroupCommit::spawn(Arc::new(writer), MAX_TXN_OPS - 1);
        tokio::spawn(compactor(etcd.clone(), revision, leadership.clone()));
        EtcdLedger { etcd, group }
    }

    /// Group-commit counters.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }
}

/// Compacts up to the revision seen one interval ago, every interval, while leading.
async fn compactor(etcd: Etcd, revision: Arc<AtomicI64>, leadership: Leadership) {
    let mut previous = 0i64;
    let mut tick = tokio::time::interval(etcd.config.compact_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leadership.lost() => return,
        }
        if previous > 0 {
            match etcd
                .kv
                .clone()
                .compact(pb::CompactionRequest {
                    revision: previous,
                    physical: false,
                })
                .await
            {
                Ok(_) => info!(revision = previous, "etcd compacted"),
                // Already compacted past it (another leader did): nothing to do.
                Err(e) if e.message().contains("compacted") => {}
                Err(e) => warn!(error = %e, "etcd compaction failed; retrying next interval"),
            }
        }
        previous = revision.load(Ordering::Relaxed);
    }
}

/// The key of the event of `revision`: zero-padded (20 digits hold every u64) so keys sort by
/// revision.
fn event_key(prefix: &[u8], revision: u64) -> Vec<u8> {
    [prefix, format!("{revision:020}").as_bytes()].concat()
}

/// The key of the hour starting at `hour_start_ms`: zero-padded so keys sort by time.
fn hour_key(prefix: &[u8], hour_start_ms: u64) -> Vec<u8> {
    [prefix, format!("{hour_start_ms:016}").as_bytes()].concat()
}

impl EtcdLedger {
    /// Reads every record.
    pub async fn load_all(&self) -> Result<Vec<SliceRecord>, LedgerError> {
        let prefix = self.etcd.slices_prefix();
        let end = prefix_end(&prefix);
        self.range_json(prefix, end, PAGE).await
    }

    /// Reads the hour rollups starting in `[from_ms, to_ms)`.
    pub async fn load_hours_in(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<HourRollup>, LedgerError> {
        let prefix = self.etcd.hours_prefix();
        let (from, to) = (
            hour_key(&prefix, from_ms),
            hour_key(&prefix, to_ms.max(from_ms)),
        );
        self.range_json(from, to, HOURS_PAGE).await
    }

    /// Reads the stored events, by revision.
    pub async fn load_events_all(&self) -> Result<Vec<SliceEvent>, LedgerError> {
        let prefix = self.etcd.events_prefix();
        let end = prefix_end(&prefix);
        // About 1 kB an event: a page stays far under tonic's 4 MiB message limit.
        self.range_json(prefix, end, PAGE).await
    }

    /// Every value in `[from, end)`, decoded from JSON, in key order.
    async fn range_json<T: serde::de::DeserializeOwned>(
        &self,
        mut from: Vec<u8>,
        end: Vec<u8>,
        page: i64,
    ) -> Result<Vec<T>, LedgerError> {
        let mut out = Vec::new();
        // Every page at the revision of the first, so the load is one consistent snapshot.
        let mut at_revision = 0;
        loop {
            let r = self
                .etcd
                .kv
                .clone()
                .range(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: page,
                    revision: at_revision,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("load", e))?
                .into_inner();
            if at_revision == 0 {
                at_revision = r.header.as_ref().map_or(0, |h| h.revision);
            }
            for kv in &r.kvs {
                let v: T = serde_json::from_slice(&kv.value).map_err(|e| {
                    LedgerError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&kv.key)))
                })?;
                out.push(v);
            }
            match (r.more, r.kvs.last()) {
                (true, Some(last)) => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }
}

impl Ledger for EtcdLedger {
    fn submit(&self, ops: Vec<Op>) -> Commit {
        self.group.submit(ops)
    }

    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SliceRecord>, LedgerError>> + Send + '_>> {
        Box::pin(self.load_all())
    }

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn load_hours(&self, from_ms: u64, to_ms: u64) -> LoadHours<'_> {
        Box::pin(self.load_hours_in(from_ms, to_ms))
    }

    fn load_events(&self) -> LoadEvents<'_> {
        Box::pin(self.load_events_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/g/slices/"), b"/g/slices0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn event_keys_sort_by_revision() {
        let k = |r| event_key(b"/g/events/", r);
        assert!(k(9) < k(10) && k(10) < k(u64::MAX));
        assert_eq!(k(u64::MAX).len(), b"/g/events/".len() + 20);
    }

    #[test]
    fn the_lease_is_trusted_only_two_thirds_of_the_ttl_after_the_renewal_was_asked() {
        let now = std::time::Instant::now();
        let Some(asked) = now.checked_sub(Duration::from_millis(3_500)) else {
            return; // a clock this young cannot go back 3.5 s
        };
        // TTL 5 s: a renewal asked 3.5 s ago is past 2/3 of it (3.33 s), though etcd may still
        // hold the lease for up to 1.5 s more.
        let v = ValidUntil::new(asked, 5);
        assert!(!v.now_valid());
        // A later confirmed renewal extends it; an older one never shortens it.
        v.renewed(now);
        assert!(v.now_valid());
        v.renewed(asked);
        assert!(v.now_valid());
        // A process paused past the margin is not trusted when it wakes, before any task runs.
        let short = ValidUntil::new(now, 1);
        std::thread::sleep(Duration::from_millis(700));
        assert!(!short.now_valid());
    }
}
