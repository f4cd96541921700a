//! A slice's way out on the node: its processes are stopped before its capacity is given back.
//!
//! When the controller tears a slice down (a release or an idle reclaim), the agent first stops
//! the processes it can prove are the slice's (their `GREENSLICE_SLICE_ID`) on the slice's GPU or
//! MIG instance: SIGTERM, then SIGKILL once `term_grace_ms` has passed. Until none is left the
//! teardown is refused as "in use"; the controller keeps the slice RELEASING and retries, so the
//! capacity is placed again only once the hardware shows it free. A process that names no slice is
//! never signalled (it may not be the slice's); on a MIG instance the driver then refuses the
//! teardown itself while it runs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::backend::{BackendError, GpuBackend};
use crate::enforce::StopSignal;

/// What to do about a slice's remaining processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// None left: tear down.
    Proceed,
    /// Send SIGTERM (the first attempt).
    Term,
    /// SIGTERM's grace has passed: send SIGKILL.
    Kill,
    /// Signalled; wait for them to exit.
    Wait,
}

/// When a slice's processes were signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub term_ms: i64,
    pub killed: bool,
}

/// The decision, given how many of the slice's processes remain and what was sent already.
pub fn decide(remaining: usize, sent: Option<Sent>, now_ms: i64, term_grace_ms: i64) -> Step {
    match (remaining, sent) {
        (0, _) => Step::Proceed,
        (_, None) => Step::Term,
        (_, Some(s)) if !s.killed && now_ms - s.term_ms >= term_grace_ms => Step::Kill,
        _ => Step::Wait,
    }
}

/// The slices whose processes are being stopped, shared by every teardown of the agent.
#[derive(Debug)]
pub struct WorkStop {
    term_grace_ms: i64,
    sent: Mutex<HashMap<String, Sent>>,
}

impl WorkStop {
    pub fn new(term_grace_ms: u64) -> Self {
        WorkStop {
            term_grace_ms: i64::try_from(term_grace_ms).unwrap_or(i64::MAX),
            sent: Mutex::new(HashMap::new()),
        }
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sent>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the processes of `slice_id` on `gpu` (only those in MIG instance `gi` when given).
    /// `Ok` once none is left; `Err(InUse)` while some still run (signalled; ask again).
    pub fn stop(
        &self,
        b: &mut dyn GpuBackend,
        gpu: &str,
        gi: Option<u32>,
        slice_id: &str,
        now_ms: i64,
    ) -> Result<(), BackendError> {
        let mut remaining = slice_processes(b, gpu, gi, slice_id)?;
        let sent = self.sent().get(slice_id).copied();
        let step = decide(remaining.len(), sent, now_ms, self.term_grace_ms);
        let signal = match step {
            Step::Proceed => {
                self.sent().remove(slice_id);
                return Ok(());
            }
            Step::Term => Some(StopSignal::Term),
            Step::Kill => Some(StopSignal::Kill),
            Step::Wait => None,
        };
        if let Some(sig) = signal {
            for pid in &remaining {
                if let Err(e) = b.signal_process(*pid, sig) {
                    tracing::warn!(pid, slice = %slice_id, error = %e, "cannot stop a process of a slice being torn down");
                }
            }
            tracing::info!(slice = %slice_id, %gpu, pids = ?remaining, ?sig, "stopping the slice's processes before its teardown");
            self.sent().insert(
                slice_id.to_string(),
                Sent {
                    term_ms: sent.map_or(now_ms, |s| s.term_ms),
                    killed: sig == StopSignal::Kill || sent.is_some_and(|s| s.killed),
                },
            );
            // Looked at once more, without waiting: the agent applies one command at a time,
            // so a wait here would hold up every other command of the node. Whatever still runs
            // is refused as in use, and the controller asks again within a second.
            remaining = slice_processes(b, gpu, gi, slice_id)?;
            if remaining.is_empty() {
                self.sent().remove(slice_id);
                return Ok(());
            }
        }
        let s = self.sent().get(slice_id).copied();
        Err(BackendError::InUse {
            gpu: gpu.to_string(),
            slice: slice_id.to_string(),
            pids: remaining,
            what: match s {
                Some(s) if s.killed => "SIGKILL sent".to_string(),
                _ => format!(
                    "SIGTERM sent, SIGKILL after {} s",
                    self.term_grace_ms / 1000
                ),
            },
        })
    }
}

/// The processes on `gpu` (in instance `gi` when given) whose environment names `slice_id`. A
/// process that has exited has no environment left to read, so it is not counted.
fn slice_processes(
    b: &mut dyn GpuBackend,
    gpu: &str,
    gi: Option<u32>,
    slice_id: &str,
) -> Result<Vec<u32>, BackendError> {
    let procs = b.compute_processes(gpu)?;
    let mut pids: Vec<u32> = procs
        .iter()
        .filter(|p| gi.is_none() || p.gpu_instance_id == gi)
        .filter(|p| b.process_owner(p.pid).as_deref() == Some(slice_id))
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_first_kill_after_the_grace_and_proceed_once_none_is_left() {
        assert_eq!(decide(0, None, 0, 10_000), Step::Proceed);
        assert_eq!(decide(2, None, 0, 10_000), Step::Term);
        let termed = Sent {
            term_ms: 1_000,
            killed: false,
        };
        assert_eq!(decide(2, Some(termed), 10_999, 10_000), Step::Wait);
        assert_eq!(decide(2, Some(termed), 11_000, 10_000), Step::Kill);
        let killed = Sent {
            killed: true,
            ..termed
        };
        assert_eq!(decide(1, Some(killed), 60_000, 10_000), Step::Wait);
        assert_eq!(decide(0, Some(killed), 60_000, 10_000), Step::Proceed);
    }
}
