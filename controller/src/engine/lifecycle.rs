//! A slice's way in: validate, check quotas, place, commit PENDING, drive the agent, commit ACTIVE;
//! and the reads of slices (get, list) and keeps.

use std::collections::BTreeMap;

use crate::agents::{AgentAction, CommandOutcome};
use greenslice_core::slice::{self, SliceKind, SliceSpec, SliceState};
use tracing::{info, warn};

use super::{Controller, Requested, new_slice_id};
use crate::agents::AgentError;
use crate::error::ControllerError;
use crate::model::page::{self, Page};
use crate::model::slice::{HostDemand, MigAssignment, SliceRecord};
use crate::model::state::ClusterState;
use crate::placement::{Request, Unplaceable};

/// Refuses a MIG profile that no GPU of the (requested) model in the cluster has, listing valid ones.
fn check_model_profile(st: &ClusterState, spec: &SliceSpec) -> Result<(), ControllerError> {
    let SliceKind::Mig { profile } = &spec.kind else {
        return Ok(());
    };
    let models: std::collections::BTreeSet<_> = st
        .nodes
        .values()
        .flat_map(|n| &n.gpus)
        .filter(|g| g.mig_enabled)
        .filter(|g| spec.gpu_model.as_ref().is_none_or(|m| *m == g.model))
        .map(|g| g.model.clone())
        .collect();
    if models.is_empty()
        || models
            .iter()
            .any(|m| greenslice_core::mig::profile(m, profile).is_some())
    {
        return Ok(());
    }
    let valid: Vec<String> = models
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m.name(),
                greenslice_core::mig::profiles(m)
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    Err(ControllerError::MigProfileUnknown {
        profile: profile.clone(),
        message: format!(
            "MIG profile {profile} exists on no MIG GPU in the cluster; valid profiles: {}",
            valid.join("; ")
        ),
    })
}

impl Controller {
    /// Commits a tenant's keep of an active slice (see [`Controller::keep`]); no state event,
    /// the state does not change.
    pub async fn record_keep(
        &self,
        id: &str,
        until_ms: i64,
    ) -> Result<SliceRecord, ControllerError> {
        let (prior, updated, commit) = self
            .transition_queued(id, Some(SliceState::Active), true, |r| {
                r.kept_until_ms = Some(until_ms);
            })?
            .ok_or_else(|| ControllerError::WrongState {
                id: id.to_string(),
                state: "not active",
                what: "only an active slice can be kept".into(),
            })?;
        self.durable_or_undo(prior, &updated, commit).await?;
        Ok(updated)
    }

    /// Places, commits and applies a slice whose workload said nothing of its host CPU and
    /// memory (see [`Controller::request_with_host`]).
    pub async fn request(
        &self,
        tenant: &str,
        spec: &SliceSpec,
        idempotency_key: &str,
    ) -> Result<Requested, ControllerError> {
        self.request_at(
            tenant,
            spec,
            HostDemand::default(),
            idempotency_key,
            None,
            None,
        )
        .await
    }

    /// Places, commits and applies a slice. Answers once the agent confirmed. `host` is what the
    /// workload needs of its node's CPU and memory (0: not said): the policy places it only where
    /// it fits beside the live slices' own, and learns its target workload from it.
    pub async fn request_with_host(
        &self,
        tenant: &str,
        spec: &SliceSpec,
        host: HostDemand,
        idempotency_key: &str,
    ) -> Result<Requested, ControllerError> {
        self.request_at(tenant, spec, host, idempotency_key, None, None)
            .await
    }

    /// Like [`Controller::request_with_host`], with the placement fixed by `pin` when given (a DRA
    /// allocation: the Kubernetes scheduler chose the device) instead of chosen by the policy. A
    /// pinned slice is checked against the controller's view and refused when its place is taken.
    /// `claim` names the ResourceClaim (`namespace/name`) a DRA slice stands for.
    pub async fn request_at(
        &self,
        tenant: &str,
        spec: &SliceSpec,
        host: HostDemand,
        idempotency_key: &str,
        pin: Option<&crate::placement::Pin>,
        claim: Option<&str>,
    ) -> Result<Requested, ControllerError> {
        self.ensure_leading()?;
        slice::validate_tenant(tenant)?;
        slice::validate_idempotency_key(idempotency_key)?;
        // Specs come validated from the API; one built in code is checked the same way.
        let spec = slice::validate(
            Some(spec.kind.clone()),
            spec.gpu_model.as_ref().map_or("", |m| m.name()),
            spec.slice_class.as_deref().unwrap_or(""),
        )?;
        let key = (!idempotency_key.is_empty()).then(|| idempotency_key.to_string());
        let now = self.clock.now_ms();
        match (pin, &spec.kind) {
            // A MIG request that fits nowhere may fit once free instances are re-partitioned.
            (None, _) => {
                self.make_room(&spec).await;
            }
            // A pinned one needs its own place cleared of free instances.
            (Some(pin), SliceKind::Mig { profile }) => self.make_room_at(pin, profile).await,
            (Some(_), _) => {}
        }

        let (record, commit, advisory_share, durable_tx) = loop {
            // Answer a retry only from durable state: while the first request's PENDING commit
            // is in flight, wait for it (then answer, or, if it failed, start anew).
            let in_flight = key.as_ref().and_then(|k| {
                let st = self.lock();
                let id = st.idempotency.get(&(tenant.to_string(), k.clone()))?;
                st.slice(id)?;
                self.undurable_lock().get(id).cloned()
            });
            if let Some(mut rx) = in_flight {
                let _ = rx.wait_for(|v| v.is_some()).await;
                continue;
            }
            let mut st = self.lock();
            if let Some(k) = &key
                && let Some(id) = st.idempotency.get(&(tenant.to_string(), k.clone()))
                && let Some(existing) = st.slice(id)
            {
                if self.undurable_lock().contains_key(id) {
                    // Submitted between the two looks: wait for it.
                    continue;
                }
                return Ok(Requested {
                    slice: existing.clone(),
                    replayed: true,
                });
            }
            if !self.config.quotas.is_empty() {
                let held = crate::quota::Usage::of(tenant, st.live_slices());
                self.config.quotas.check(tenant, held, &spec)?;
            }
            check_model_profile(&st, &spec)?;
            let req = Request {
                spec: spec.clone(),
                cpu_milli: host.cpu_milli,
                memory_bytes: host.memory_bytes,
            };
            // The policy learns its target workload from what is asked, placed or not.
            self.policy.observe(&req);
            let (view, versions) = st.view_versioned();
            let p = match pin {
                Some(pin) => crate::placement::pinned(view, &req, pin)?,
                None => self.policy.place_versioned(view, versions, &req)?,
            };
            let node = &view.nodes[p.node];
            let gpus: Vec<String> = p.gpus.iter().map(|i| node.gpus[*i].uuid.clone()).collect();
            let model = node.gpus[p.gpus[0]].model.clone();
            let mig_create = node.mig_create;
            let node_name = node.name.clone();
            let mig = match (&spec.kind, p.mig_start) {
                (SliceKind::Mig { profile }, Some(start)) => {
                    let size =
                        greenslice_core::mig::profile(&model, profile).map_or(0, |pp| pp.size);
                    // A node that may not create instances gets the slice only on a free existing
                    // instance (placement chose its start): lend that one.
                    // A pinned slice takes a free instance at its place where there is one.
                    let lent = (!mig_create || pin.is_some())
                        .then(|| {
                            st.nodes
                                .get(&node_name)?
                                .gpus
                                .iter()
                                .find(|g| g.uuid == gpus[0])?
                                .mig_instances
                                .iter()
                                .find(|i| {
                                    i.start == start
                                        && i.profile == *profile
                                        && i.slice_id.is_none()
                                })
                                .cloned()
                        })
                        .flatten();
                    if !mig_create && lent.is_none() {
                        // The view and the node record disagree: refuse rather than create.
                        return Err(ControllerError::Unplaceable(Unplaceable::NoRoom {
                            wanted: spec.describe(),
                            free: format!(
                                "no free {profile} at slice {start} on {node_name} to lend"
                            ),
                        }));
                    }
                    Some(MigAssignment {
                        profile: profile.clone(),
                        start,
                        size,
                        gpu_instance_id: lent.as_ref().map(|i| i.gpu_instance_id),
                        mig_uuid: lent.as_ref().map(|i| i.mig_uuid.clone()),
                        lent: lent.is_some(),
                    })
                }
                _ => None,
            };
            let advisory_share = matches!(spec.kind, SliceKind::Share { .. })
                && st.nodes.get(&node_name).is_some_and(|n| !n.mps());
            let mut id = new_slice_id(now);
            while st.contains(&id) {
                id = new_slice_id(now);
            }
            let r = SliceRecord {
                mig,
                idempotency_key: key.clone(),
                claim: claim.map(str::to_string),
                host,
                ..SliceRecord::placed(id, tenant, spec.clone(), node_name, gpus, now)
            };
            st.put(r.clone());
            let commit = self.submit(&r);
            let (tx, rx) = tokio::sync::watch::channel(None);
            self.undurable_lock().insert(r.id.clone(), rx);
            break (r, commit, advisory_share, tx);
        };
        let durable = Self::durable(commit).await;
        {
            let mut st = self.lock();
            if durable.is_err() {
                // Never acknowledged: forget it entirely (a waiting retry then starts anew).
                st.remove_slice(&record.id);
            }
            self.undurable_lock().remove(&record.id);
            durable_tx.send_replace(Some(durable.is_ok()));
        }
        durable?;
        match self.apply(&record).await {
            Ok((mut env, inst)) => {
                // Lets the agent map the slice's processes back to it (see node-agent usage.rs).
                env.insert("GREENSLICE_SLICE_ID".to_string(), record.id.clone());
                if advisory_share {
                    // No MPS on the node: the limits in the environment are not enforced.
                    env.insert(
                        "GREENSLICE_SHARE_LIMITS".to_string(),
                        "advisory".to_string(),
                    );
                }
                let node = record.node.clone();
                let gpu0 = record.gpus.first().cloned().unwrap_or_default();
                if let Some(i) = &inst {
                    self.lock().mirror_mig_created(&node, &gpu0, i.clone());
                }
                // PENDING is durable and the agent confirmed: the allocation is safe to
                // acknowledge. ACTIVE goes to the ledger behind it without being waited for; a
                // crash before it is durable leaves PENDING, which recovery confirms ACTIVE from
                // the hardware (see `transition_in_background`).
                let slice = self.transition_in_background(&record.id, |r| {
                    r.state = SliceState::Active;
                    r.env = env;
                    if let (Some(m), Some(i)) = (&mut r.mig, inst) {
                        m.gpu_instance_id = Some(i.gpu_instance_id);
                        m.mig_uuid = Some(i.mig_uuid);
                    }
                })?;
                info!(slice = %slice.id, tenant, node = %slice.node, spec = %slice.spec.describe(), "slice active");
                Ok(Requested {
                    slice,
                    replayed: false,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                let _ = self
                    .transition(&record.id, |r| {
                        r.state = SliceState::Failed;
                        r.reason = reason.clone();
                    })
                    .await;
                warn!(slice = %record.id, error = %reason, "slice failed");
                Err(e)
            }
        }
    }

    fn undurable_lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, tokio::sync::watch::Receiver<Option<bool>>>,
    > {
        // Plain data updated in short critical sections that do not panic midway.
        self.undurable.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn agent_err(node: &str, e: AgentError) -> ControllerError {
        ControllerError::AgentUnavailable {
            node: node.to_string(),
            why: e.to_string(),
        }
    }

    pub(super) async fn call(
        &self,
        node: &str,
        action: AgentAction,
    ) -> Result<CommandOutcome, ControllerError> {
        // Every agent command is fenced by the leadership it is sent under.
        self.ensure_leading()?;
        let r = self
            .agents
            .call(node, action, self.config.command_timeout)
            .await
            .map_err(|e| Self::agent_err(node, e))?;
        if r.ok {
            Ok(r)
        } else {
            Err(ControllerError::AgentRefused {
                node: node.to_string(),
                error: r.error,
            })
        }
    }

    /// Drives the agent to apply a pending slice; on failure undoes what was applied.
    async fn apply(
        &self,
        r: &SliceRecord,
    ) -> Result<
        (
            BTreeMap<String, String>,
            Option<greenslice_core::inventory::MigInstance>,
        ),
        ControllerError,
    > {
        let mut env = BTreeMap::new();
        match &r.spec.kind {
            SliceKind::Whole { .. } => {
                let mut done: Vec<String> = Vec::new();
                for g in &r.gpus {
                    let res = self
                        .call(
                            &r.node,
                            AgentAction::AssignGpu {
                                gpu_uuid: g.clone(),
                                slice_id: r.id.clone(),
                            },
                        )
                        .await;
                    if let Err(e) = res {
                        for d in done {
                            let _ = self
                                .call(
                                    &r.node,
                                    AgentAction::UnassignGpu {
                                        gpu_uuid: d,
                                        slice_id: r.id.clone(),
                                    },
                                )
                                .await;
                        }
                        return Err(e);
                    }
                    done.push(g.clone());
                }
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), r.gpus.join(","));
                Ok((env, None))
            }
            SliceKind::Mig { profile } => {
                let m = r.mig.as_ref().ok_or_else(|| {
                    ControllerError::BadRequest("MIG slice without placement".into())
                })?;
                let gpu_uuid = r.gpus.first().cloned().unwrap_or_default();
                let action = match (m.lent, m.gpu_instance_id) {
                    (true, Some(gi)) => AgentAction::ClaimMig {
                        gpu_uuid,
                        gpu_instance_id: gi,
                        slice_id: r.id.clone(),
                    },
                    _ => AgentAction::CreateMig {
                        gpu_uuid,
                        profile: profile.clone(),
                        start: u32::from(m.start),
                        slice_id: r.id.clone(),
                    },
                };
                let res = self.call(&r.node, action).await?;
                let inst = res.mig.ok_or_else(|| ControllerError::AgentRefused {
                    node: r.node.clone(),
                    error: "agent confirmed a MIG instance without describing it".into(),
                })?;
                Ok((res.env.into_iter().collect(), Some(inst)))
            }
            SliceKind::Share {
                compute_fraction,
                memory_bytes,
            } => {
                let res = self
                    .call(
                        &r.node,
                        AgentAction::SetShare {
                            gpu_uuid: r.gpus.first().cloned().unwrap_or_default(),
                            slice_id: r.id.clone(),
                            compute_fraction: *compute_fraction,
                            memory_bytes: *memory_bytes,
                        },
                    )
                    .await?;
                Ok((res.env.into_iter().collect(), None))
            }
        }
    }

    /// Returns one slice.
    /// A slice for a caller outside the controller (GetSlice): a deposed leader's memory may be
    /// stale, so only the leader answers, as for lists.
    pub fn read_slice(&self, id: &str) -> Result<SliceRecord, ControllerError> {
        self.ensure_leading()?;
        self.get(id)
    }

    pub fn get(&self, id: &str) -> Result<SliceRecord, ControllerError> {
        self.lock()
            .slice(id)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    /// Lists slices, newest first.
    pub fn list(&self, tenant: &str, node: &str, include_terminal: bool) -> Vec<SliceRecord> {
        let st = self.lock();
        let mut v: Vec<SliceRecord> = st
            .all()
            .filter(|s| tenant.is_empty() || s.tenant == tenant)
            .filter(|s| node.is_empty() || s.node == node)
            .filter(|s| include_terminal || s.is_live())
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    /// One page of the slices `filter` matches, oldest first (by id), after the page `token`
    /// ended (empty: the first page), and the revision it reflects (see [`Controller::revision`]):
    /// a watch from it misses no later change. Refused when the page size is out of range or the
    /// token is forged or made for other filters.
    pub fn list_page(
        &self,
        filter: &crate::model::page::SliceFilter,
        page_size: i32,
        token: &str,
    ) -> Result<(Page<SliceRecord>, String, u64), ControllerError> {
        // A deposed leader's memory may be stale: it answers no lists.
        self.ensure_leading()?;
        let size = page::SLICE_PAGES.size(page_size)?;
        let scope = page::slice_scope(filter);
        let after = page::resume_after(&scope, token)?;
        // The revision before the state: a change whose event has a revision up to it is already
        // in the state read next, and every later one reaches a watch from it.
        let revision = self.revision();
        let p = self.lock().page_slices(filter, after.as_deref(), size);
        let next = p
            .next_after
            .as_deref()
            .map(|k| page::token(&scope, k))
            .unwrap_or_default();
        Ok((p, next, revision))
    }
}
