//! Housekeeping sweeps: orphans on the nodes (things greenslice made with no live slice), free MIG
//! instances to destroy, and forgetting expired finished slices.

use std::collections::HashSet;

use crate::agents::AgentAction;
use tracing::warn;

use super::{Controller, PRUNE_STEP};
use crate::error::ControllerError;
use crate::model::state::Expiry;

/// Something greenslice made on a node, as the orphan sweep tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct OrphanKey {
    node: String,
    gpu: String,
    slice: String,
    /// MIG GPU instance id; None for shares and whole assignments.
    gpu_instance_id: Option<u32>,
    whole: bool,
}

impl Controller {
    /// Destroys a MIG instance that no live slice owns (MIG re-layout). Refuses an owned one.
    pub async fn destroy_free_mig(
        &self,
        node: &str,
        gpu: &str,
        gi: u32,
    ) -> Result<(), ControllerError> {
        let owned = self.lock().live_on_node(node).any(|s| {
            s.gpus.iter().any(|g| g == gpu)
                && s.mig
                    .as_ref()
                    .is_some_and(|m| m.gpu_instance_id == Some(gi))
        });
        if owned {
            return Err(ControllerError::BadRequest(format!(
                "MIG instance {gi} on {gpu} belongs to a live slice"
            )));
        }
        self.call(
            node,
            AgentAction::DestroyMig {
                gpu_uuid: gpu.to_string(),
                gpu_instance_id: gi,
                slice_id: String::new(),
            },
        )
        .await?;
        self.lock().mirror_mig_destroyed(node, gpu, gi);
        Ok(())
    }

    /// Finds things greenslice made on connected nodes that no live slice accounts for, and tears
    /// down those seen for longer than the orphan grace period. Returns how many were torn down.
    pub async fn sweep_orphans(&self) -> usize {
        let now = self.clock.now_ms();
        let grace = i64::try_from(self.config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
        let mut due: Vec<OrphanKey> = Vec::new();
        {
            let st = self.lock();
            let live: HashSet<(&str, &str)> = st
                .live_slices()
                .map(|s| (s.node.as_str(), s.id.as_str()))
                .collect();
            let mut found = Vec::new();
            for n in st.nodes.values().filter(|n| n.connected) {
                let owned = |slice: &str| live.contains(&(n.name.as_str(), slice));
                for g in &n.gpus {
                    let key = |slice: &str, gi: Option<u32>, whole: bool| OrphanKey {
                        node: n.name.clone(),
                        gpu: g.uuid.clone(),
                        slice: slice.to_string(),
                        gpu_instance_id: gi,
                        whole,
                    };
                    for i in &g.mig_instances {
                        // Instances made outside greenslice name no slice: never touched.
                        if let Some(sl) = &i.slice_id
                            && !owned(sl)
                        {
                            found.push(key(sl, Some(i.gpu_instance_id), false));
                        }
                    }
                    for sh in &g.shares {
                        if !owned(&sh.slice_id) {
                            found.push(key(&sh.slice_id, None, false));
                        }
                    }
                    if let Some(w) = &g.whole_slice_id
                        && !owned(w)
                    {
                        found.push(key(w, None, true));
                    }
                }
            }
            drop(st);
            let mut seen = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            let current: HashSet<&OrphanKey> = found.iter().collect();
            seen.retain(|k, _| current.contains(k));
            for k in &found {
                let first = *seen.entry(k.clone()).or_insert_with(|| {
                    warn!(node = %k.node, gpu = %k.gpu, slice = %k.slice, "orphan on node: no live slice in the ledger; cleaning up after the grace period");
                    now
                });
                if now - first >= grace {
                    due.push(k.clone());
                }
            }
        }
        let mut cleaned = 0;
        for k in due {
            let read_only =
                self.with_state(|st| st.nodes.get(&k.node).is_some_and(|n| !n.may_create_mig()));
            let action = match (k.gpu_instance_id, k.whole) {
                // A node that may not destroy instances only lent it: give it back.
                (Some(gi), _) if read_only => AgentAction::ReleaseMig {
                    gpu_uuid: k.gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: k.slice.clone(),
                },
                (Some(gi), _) => AgentAction::DestroyMig {
                    gpu_uuid: k.gpu.clone(),
                    gpu_instance_id: gi,
                    slice_id: k.slice.clone(),
                },
                (None, true) => AgentAction::UnassignGpu {
                    gpu_uuid: k.gpu.clone(),
                    slice_id: k.slice.clone(),
                },
                (None, false) => AgentAction::ClearShare {
                    gpu_uuid: k.gpu.clone(),
                    slice_id: k.slice.clone(),
                },
            };
            match self.call(&k.node, action).await {
                Ok(_) => {
                    let mut st = self.lock();
                    match k.gpu_instance_id {
                        Some(gi) if read_only => st.mirror_mig_returned(&k.node, &k.gpu, gi),
                        Some(gi) => st.mirror_mig_destroyed(&k.node, &k.gpu, gi),
                        None => st.mirror_cleared(&k.node, &k.gpu, &k.slice),
                    }
                    drop(st);
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&k);
                    warn!(node = %k.node, gpu = %k.gpu, slice = %k.slice, "orphan torn down");
                    cleaned += 1;
                }
                Err(e) => {
                    warn!(node = %k.node, slice = %k.slice, error = %e, "orphan cleanup failed; retrying")
                }
            }
        }
        cleaned
    }

    /// Forgets finished (RELEASED, FAILED) slices past their retention, oldest first, in memory
    /// and in the ledger: those older than `terminal_retention`, and the oldest beyond
    /// `terminal_retention_max`. Returns how many were forgotten.
    ///
    /// Never loses energy: a released slice that held a GPU after the start of that GPU's open
    /// energy interval is a holder of that interval, so it is kept (past either limit, counted in
    /// `greenslice_finished_slices_held_for_energy` and logged) until the interval is attributed.
    /// A GPU that has sent no samples yet has no open interval; the accountant is told what was
    /// forgotten on it, so its first interval cannot start before those slices ended.
    ///
    /// Works in steps of [`PRUNE_STEP`] slices under the state lock, each followed by its ledger
    /// deletes, so a large backlog (a restart after a long outage, a lowered cap) neither stalls
    /// requests nor queues one huge ledger transaction ahead of theirs.
    pub async fn prune_terminal(&self) -> Result<usize, ControllerError> {
        let keep_ms = i64::try_from(self.config.terminal_retention.as_millis()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let limits = crate::model::state::PruneLimits {
                older_than_ms: self.clock.now_ms().saturating_sub(keep_ms),
                keep_at_most: self.config.terminal_retention_max,
                examine_at_most: PRUNE_STEP,
            };
            let (pruned, commit) = {
                let mut st = self.lock();
                let mut energy = self.energy_lock();
                let open_since = |gpu: &str| {
                    energy
                        .unattributed_since(gpu)
                        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
                };
                let pruned = st.prune_finished(&limits, &open_since);
                for (r, _) in &pruned.forgotten {
                    if let Some((_, until)) = r.held_ms() {
                        for g in &r.gpus {
                            energy.holder_forgotten(g, u64::try_from(until).unwrap_or(0));
                        }
                    }
                }
                drop(energy);
                let ids: Vec<String> = pruned.forgotten.iter().map(|(r, _)| r.id.clone()).collect();
                // Queued under the state lock: after the slices' last records, as memory saw them.
                let commit = self.ledger.remove(&ids);
                (pruned, commit)
            };
            for why in [Expiry::Age, Expiry::Count] {
                let n = pruned.forgotten.iter().filter(|(_, w)| *w == why).count();
                self.metrics.finished_forgotten(why.as_str(), n);
            }
            total += pruned.forgotten.len();
            Self::durable(commit).await?;
            if pruned.examined < PRUNE_STEP {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.warn_held_for_energy();
        Ok(total)
    }

    /// Logs, at most once a minute, that finished slices are kept past their retention because
    /// energy attribution still needs them.
    fn warn_held_for_energy(&self) {
        use std::sync::atomic::Ordering;
        let (held, finished) =
            self.with_state(|st| (st.held_for_energy_count(), st.finished_count()));
        let now = self.clock.now_ms();
        let last = self.held_warned_ms.load(Ordering::Relaxed);
        if held == 0 || now.saturating_sub(last) < 60_000 {
            return;
        }
        self.held_warned_ms.store(now, Ordering::Relaxed);
        warn!(
            held,
            finished,
            max = self.config.terminal_retention_max,
            retention_s = self.config.terminal_retention.as_secs(),
            "finished slices kept past terminal_retention_s / terminal_retention_max: the energy of \
             GPUs they held is not attributed yet"
        );
    }
}
