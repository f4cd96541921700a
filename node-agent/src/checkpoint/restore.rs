//! Pure decisions about what an agent takes back after a restart.
//!
//! With a checkpoint, [`against_hardware`] keeps what the hardware still holds and says why the rest
//! was dropped (the controller then marks those slices lost: their hardware is gone). Without one
//! (missing, truncated, bad checksum, unknown version), [`from_hardware`] takes what the hardware
//! itself shows (owners of MIG instances from the GREENSLICE_SLICE_ID of processes on them), and
//! once the controller answers the registration, [`from_ledger`] adds the ledger's slices that
//! the hardware still has room for.

use greenslice_core::inventory::{Gpu, MigInstance};

use super::{NodeState, Owned, OwnedMig, OwnedShare, OwnedWhole};

/// What is taken back, and one line per recorded thing that is not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    pub owned: Owned,
    pub dropped: Vec<String>,
}

/// A process on a GPU whose environment names a slice: a hardware fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEvidence {
    pub gpu: String,
    /// The MIG GPU instance it runs in, on a MIG GPU.
    pub gpu_instance_id: Option<u32>,
    pub slice_id: String,
}

/// A live slice as the controller's ledger holds it on this node (`Registered.adopt`).
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerSlice {
    pub slice_id: String,
    pub gpus: Vec<String>,
    pub kind: LedgerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LedgerKind {
    Whole,
    Share {
        compute_fraction: f64,
        memory_bytes: u64,
    },
    Mig {
        gpu_instance_id: u32,
        start: u8,
        profile: String,
        /// Empty when the ledger does not know it.
        mig_uuid: String,
    },
}

fn gpu<'a>(gpus: &'a [Gpu], uuid: &str) -> Option<&'a Gpu> {
    gpus.iter().find(|g| g.uuid == uuid)
}

/// Why a GPU cannot hold a share or a whole-GPU slice, if it cannot.
fn not_for_sharing(gpus: &[Gpu], uuid: &str) -> Option<String> {
    match gpu(gpus, uuid) {
        None => Some(format!("GPU {uuid} is gone")),
        Some(g) if g.mig_enabled => Some(format!("GPU {uuid} is in MIG mode now")),
        Some(_) => None,
    }
}

/// The instance on the hardware that is `m`: same GPU instance id, start and profile, and the same
/// MIG UUID where both are known (a driver reload gives new UUIDs to instances made again).
fn instance<'a>(
    gpus: &'a [Gpu],
    gpu_uuid: &str,
    gi: u32,
    start: u8,
    profile: &str,
    mig_uuid: &str,
) -> Result<&'a MigInstance, String> {
    let g = gpu(gpus, gpu_uuid).ok_or_else(|| format!("GPU {gpu_uuid} is gone"))?;
    if !g.mig_enabled {
        return Err(format!("GPU {gpu_uuid} is not in MIG mode now"));
    }
    let i = g
        .mig_instances
        .iter()
        .find(|i| i.gpu_instance_id == gi && i.start == start)
        .ok_or_else(|| format!("no GPU instance {gi} at slice {start} on {gpu_uuid}"))?;
    if !profile.is_empty() && i.profile != profile {
        return Err(format!(
            "GPU instance {gi} on {gpu_uuid} is a {} now, not a {profile}",
            i.profile
        ));
    }
    if !mig_uuid.is_empty() && !i.mig_uuid.is_empty() && i.mig_uuid != mig_uuid {
        return Err(format!(
            "GPU instance {gi} on {gpu_uuid} is a different instance ({} , was {mig_uuid})",
            i.mig_uuid
        ));
    }
    Ok(i)
}

/// The owner the hardware (or a backend wrapper) already names for an instance.
fn named_owner(i: &MigInstance) -> Option<&str> {
    i.slice_id.as_deref().filter(|s| !s.is_empty())
}

/// Adds `m` to `o` unless the instance is someone else's; returns why not.
fn add_mig(o: &mut Owned, gpus: &[Gpu], m: OwnedMig) -> Result<(), String> {
    let i = instance(
        gpus,
        &m.gpu,
        m.gpu_instance_id,
        m.start,
        &m.profile,
        &m.mig_uuid,
    )?;
    let taken = o
        .mig
        .iter()
        .find(|x| x.gpu == m.gpu && x.gpu_instance_id == m.gpu_instance_id)
        .map(|x| x.slice_id.clone())
        .or_else(|| named_owner(i).map(str::to_string));
    match taken {
        Some(other) if other != m.slice_id => Err(format!(
            "GPU instance {} on {} is owned by {other}",
            m.gpu_instance_id, m.gpu
        )),
        Some(_) => Ok(()),
        None => {
            o.mig.push(OwnedMig {
                profile: i.profile.clone(),
                mig_uuid: i.mig_uuid.clone(),
                ..m
            });
            Ok(())
        }
    }
}

fn add_share(o: &mut Owned, gpus: &[Gpu], s: OwnedShare) -> Result<(), String> {
    if let Some(why) = not_for_sharing(gpus, &s.gpu) {
        return Err(why);
    }
    if let Some(w) = o.whole.iter().find(|w| w.gpu == s.gpu) {
        return Err(format!("GPU {} is held whole by {}", s.gpu, w.slice_id));
    }
    o.shares.retain(|x| x.slice_id != s.slice_id);
    o.shares.push(s);
    Ok(())
}

fn add_whole(o: &mut Owned, gpus: &[Gpu], w: OwnedWhole) -> Result<(), String> {
    if let Some(why) = not_for_sharing(gpus, &w.gpu) {
        return Err(why);
    }
    if let Some(other) = o.whole.iter().find(|x| x.gpu == w.gpu) {
        return if other.slice_id == w.slice_id {
            Ok(())
        } else {
            Err(format!("GPU {} is held whole by {}", w.gpu, other.slice_id))
        };
    }
    if let Some(s) = o.shares.iter().find(|s| s.gpu == w.gpu) {
        return Err(format!("GPU {} holds share {}", w.gpu, s.slice_id));
    }
    o.whole.push(w);
    Ok(())
}

/// What of a checkpoint the hardware still holds. MIG owners need their instance (same id, start,
/// profile and UUID); shares and whole GPUs need their GPU, out of MIG mode. An intent (a create
/// the file recorded before asking the driver) becomes an owner when an instance of its profile
/// that nobody owns sits at its start: the create happened, the answer was lost.
pub fn against_hardware(state: &NodeState, gpus: &[Gpu]) -> Restored {
    let mut r = Restored::default();
    let c = &state.owned;
    for m in &c.mig {
        if let Err(why) = add_mig(&mut r.owned, gpus, m.clone()) {
            r.dropped
                .push(format!("MIG instance of slice {}: {why}", m.slice_id));
        }
    }
    for w in &c.whole {
        if let Err(why) = add_whole(&mut r.owned, gpus, w.clone()) {
            r.dropped
                .push(format!("whole GPU of slice {}: {why}", w.slice_id));
        }
    }
    for s in &c.shares {
        if let Err(why) = add_share(&mut r.owned, gpus, s.clone()) {
            r.dropped
                .push(format!("share of slice {}: {why}", s.slice_id));
        }
    }
    for t in &state.intents {
        let found = gpu(gpus, &t.gpu).and_then(|g| {
            g.mig_instances.iter().find(|i| {
                i.start == t.start
                    && i.profile == t.profile
                    && named_owner(i).is_none()
                    && !r
                        .owned
                        .mig
                        .iter()
                        .any(|m| m.gpu == t.gpu && m.gpu_instance_id == i.gpu_instance_id)
            })
        });
        match found {
            Some(i) => r.owned.mig.push(OwnedMig {
                gpu: t.gpu.clone(),
                gpu_instance_id: i.gpu_instance_id,
                start: i.start,
                profile: i.profile.clone(),
                mig_uuid: i.mig_uuid.clone(),
                slice_id: t.slice_id.clone(),
            }),
            None => r.dropped.push(format!(
                "unfinished create of a {} at slice {} on {} for slice {}: no such instance",
                t.profile, t.start, t.gpu, t.slice_id
            )),
        }
    }
    r
}

/// What the hardware alone shows without a checkpoint: a MIG instance is its processes' slice's
/// when they all name the same one. Shares and whole GPUs carry no record of their limits on the
/// hardware; the ledger gives them back ([`from_ledger`]).
pub fn from_hardware(gpus: &[Gpu], processes: &[ProcessEvidence]) -> Owned {
    let mut o = Owned::default();
    for g in gpus.iter().filter(|g| g.mig_enabled) {
        for i in &g.mig_instances {
            let mut names: Vec<&str> = processes
                .iter()
                .filter(|p| p.gpu == g.uuid && p.gpu_instance_id == Some(i.gpu_instance_id))
                .map(|p| p.slice_id.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            let owner = match (named_owner(i), names.as_slice()) {
                (Some(s), _) => s.to_string(),
                (None, [one]) => one.to_string(),
                _ => continue,
            };
            o.mig.push(OwnedMig {
                gpu: g.uuid.clone(),
                gpu_instance_id: i.gpu_instance_id,
                start: i.start,
                profile: i.profile.clone(),
                mig_uuid: i.mig_uuid.clone(),
                slice_id: owner,
            });
        }
    }
    o
}

/// `current` (what the hardware showed) plus the ledger's slices the hardware still holds: a MIG
/// slice gets its instance when it is there and nobody else's; a share and a whole GPU get their
/// GPU when it is there, out of MIG mode and not held by another slice. A ledger slice that does
/// not fit is dropped with its reason (the controller has already marked those lost).
pub fn from_ledger(current: &Owned, gpus: &[Gpu], ledger: &[LedgerSlice]) -> Restored {
    let mut r = Restored {
        owned: current.clone(),
        dropped: Vec::new(),
    };
    for l in ledger {
        let gpu0 = l.gpus.first().cloned().unwrap_or_default();
        let res = match &l.kind {
            LedgerKind::Mig {
                gpu_instance_id,
                start,
                profile,
                mig_uuid,
            } => add_mig(
                &mut r.owned,
                gpus,
                OwnedMig {
                    gpu: gpu0,
                    gpu_instance_id: *gpu_instance_id,
                    start: *start,
                    profile: profile.clone(),
                    mig_uuid: mig_uuid.clone(),
                    slice_id: l.slice_id.clone(),
                },
            ),
            LedgerKind::Share {
                compute_fraction,
                memory_bytes,
            } => add_share(
                &mut r.owned,
                gpus,
                OwnedShare {
                    gpu: gpu0,
                    slice_id: l.slice_id.clone(),
                    compute_fraction: *compute_fraction,
                    memory_bytes: *memory_bytes,
                },
            ),
            LedgerKind::Whole => l.gpus.iter().try_for_each(|g| {
                add_whole(
                    &mut r.owned,
                    gpus,
                    OwnedWhole {
                        gpu: g.clone(),
                        slice_id: l.slice_id.clone(),
                    },
                )
            }),
        };
        if let Err(why) = res {
            r.dropped.push(format!("slice {}: {why}", l.slice_id));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::super::MigIntent;
    use super::*;
    use greenslice_core::gpu::GpuModel;

    fn gpu(uuid: &str, mig: bool, instances: Vec<MigInstance>) -> Gpu {
        Gpu {
            uuid: uuid.into(),
            index: 0,
            model: GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: mig,
            pci_bus_id: String::new(),
            power_limit_mw: 0,
            healthy: true,
            mig_instances: instances,
            shares: Vec::new(),
            whole_slice_id: None,
        }
    }

    fn inst(gi: u32, start: u8, profile: &str, uuid: &str) -> MigInstance {
        MigInstance {
            gpu_instance_id: gi,
            profile: profile.into(),
            start,
            size: 4,
            mig_uuid: uuid.into(),
            slice_id: None,
        }
    }

    fn owned_mig(gpu: &str, gi: u32, start: u8, profile: &str, uuid: &str, s: &str) -> OwnedMig {
        OwnedMig {
            gpu: gpu.into(),
            gpu_instance_id: gi,
            start,
            profile: profile.into(),
            mig_uuid: uuid.into(),
            slice_id: s.into(),
        }
    }

    fn share(gpu: &str, s: &str) -> OwnedShare {
        OwnedShare {
            gpu: gpu.into(),
            slice_id: s.into(),
            compute_fraction: 0.25,
            memory_bytes: 1 << 30,
        }
    }

    fn whole(gpu: &str, s: &str) -> OwnedWhole {
        OwnedWhole {
            gpu: gpu.into(),
            slice_id: s.into(),
        }
    }

    #[test]
    fn what_the_hardware_still_holds_is_kept_and_the_rest_is_dropped_with_its_reason() {
        let hw = vec![
            gpu("G0", true, vec![inst(1, 0, "3g.40gb", "MIG-a")]),
            gpu("G1", false, vec![]),
            gpu("G2", true, vec![]),
        ];
        let state = NodeState {
            node: "n".into(),
            owned: Owned {
                mig: vec![
                    owned_mig("G0", 1, 0, "3g.40gb", "MIG-a", "s-mig"),
                    // Same id and start after a driver reload: another instance.
                    owned_mig("G0", 1, 0, "3g.40gb", "MIG-old", "s-stale"),
                    owned_mig("G9", 2, 4, "3g.40gb", "MIG-b", "s-gone"),
                ],
                shares: vec![share("G1", "s-share"), share("G2", "s-share-mig")],
                whole: vec![whole("G1", "s-whole-clash"), whole("G3", "s-whole-gone")],
            },
            ..Default::default()
        };
        let r = against_hardware(&state, &hw);
        assert_eq!(
            r.owned.mig,
            vec![owned_mig("G0", 1, 0, "3g.40gb", "MIG-a", "s-mig")]
        );
        assert_eq!(r.owned.whole, vec![whole("G1", "s-whole-clash")]);
        assert!(r.owned.shares.is_empty(), "{:?}", r.owned.shares);
        let joined = r.dropped.join("\n");
        for s in [
            "s-stale",
            "s-gone",
            "s-share ",
            "s-share-mig",
            "s-whole-gone",
        ] {
            assert!(joined.contains(s.trim()), "{s} not dropped:\n{joined}");
        }
        assert!(joined.contains("MIG mode"), "{joined}");
    }

    #[test]
    fn an_unanswered_create_becomes_an_owner_when_its_instance_is_there() {
        let hw = vec![gpu(
            "G0",
            true,
            vec![
                inst(1, 0, "1g.10gb", "MIG-a"),
                inst(2, 4, "3g.40gb", "MIG-b"),
            ],
        )];
        let state = NodeState {
            intents: vec![
                MigIntent {
                    gpu: "G0".into(),
                    profile: "3g.40gb".into(),
                    start: 4,
                    slice_id: "s-new".into(),
                },
                MigIntent {
                    gpu: "G0".into(),
                    profile: "3g.40gb".into(),
                    start: 0,
                    slice_id: "s-never".into(),
                },
            ],
            ..Default::default()
        };
        let r = against_hardware(&state, &hw);
        assert_eq!(
            r.owned.mig,
            vec![owned_mig("G0", 2, 4, "3g.40gb", "MIG-b", "s-new")]
        );
        assert_eq!(r.dropped.len(), 1);
        assert!(r.dropped[0].contains("s-never"));
    }

    #[test]
    fn without_a_checkpoint_an_instance_is_its_processes_slice_only_when_they_agree() {
        let hw = vec![
            gpu(
                "G0",
                true,
                vec![
                    inst(1, 0, "1g.10gb", "MIG-a"),
                    inst(2, 1, "1g.10gb", "MIG-b"),
                    inst(3, 2, "1g.10gb", "MIG-c"),
                ],
            ),
            gpu("G1", false, vec![]),
        ];
        let p = |gpu: &str, gi: Option<u32>, s: &str| ProcessEvidence {
            gpu: gpu.into(),
            gpu_instance_id: gi,
            slice_id: s.into(),
        };
        let o = from_hardware(
            &hw,
            &[
                p("G0", Some(1), "s-a"),
                p("G0", Some(1), "s-a"),
                p("G0", Some(2), "s-b"),
                p("G0", Some(2), "s-c"),
                p("G1", None, "s-share"),
            ],
        );
        assert_eq!(
            o.mig,
            vec![owned_mig("G0", 1, 0, "1g.10gb", "MIG-a", "s-a")]
        );
        assert!(o.shares.is_empty() && o.whole.is_empty());
    }

    #[test]
    fn the_ledger_gives_back_what_fits_and_never_gives_one_thing_twice() {
        let hw = vec![
            gpu("G0", true, vec![inst(1, 0, "3g.40gb", "MIG-a")]),
            gpu("G1", false, vec![]),
            gpu("G2", false, vec![]),
        ];
        let current = Owned {
            mig: vec![owned_mig("G0", 1, 0, "3g.40gb", "MIG-a", "s-proc")],
            ..Default::default()
        };
        let l = |id: &str, gpus: &[&str], kind: LedgerKind| LedgerSlice {
            slice_id: id.into(),
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            kind,
        };
        let mig = |gi, start, uuid: &str| LedgerKind::Mig {
            gpu_instance_id: gi,
            start,
            profile: "3g.40gb".into(),
            mig_uuid: uuid.into(),
        };
        let sh = LedgerKind::Share {
            compute_fraction: 0.5,
            memory_bytes: 2 << 30,
        };
        let r = from_ledger(
            &current,
            &hw,
            &[
                l("s-proc", &["G0"], mig(1, 0, "MIG-a")),
                l("s-other", &["G0"], mig(1, 0, "")),
                l("s-w", &["G1", "G2"], LedgerKind::Whole),
                l("s-sh", &["G1"], sh.clone()),
                l("s-sh-gone", &["G7"], sh),
                l("s-w2", &["G2"], LedgerKind::Whole),
            ],
        );
        assert_eq!(r.owned.mig.len(), 1);
        assert_eq!(r.owned.mig[0].slice_id, "s-proc");
        assert_eq!(r.owned.whole, vec![whole("G1", "s-w"), whole("G2", "s-w")]);
        assert!(r.owned.shares.is_empty());
        let joined = r.dropped.join("\n");
        for s in ["s-other", "s-sh:", "s-sh-gone", "s-w2"] {
            assert!(joined.contains(s), "{s} not dropped:\n{joined}");
        }
    }
}
