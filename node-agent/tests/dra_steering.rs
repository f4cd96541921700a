//! "Placement keeps its say" under DRA, measured: a deterministic simulation of the scheduler's
//! choice among the devices a node publishes.
//!
//! The scheduler's structured allocator walks a pool's slices and devices in order and takes the
//! first device that matches the request and whose counters still fit (for one-device claims it
//! never needs to backtrack). The simulation models exactly that, and the agent: each allocation
//! is prepared (its MIG instance created, held by a DRA slice), each release unprepared (the
//! instance destroyed), and the slices are rebuilt after every change, as the publisher does.
//!
//! Three publishers are compared on the same seeded sequences of MIG requests and releases
//! ([`Steering`]): every legal placement (`Off`: the first fit is the lowest GPU and start),
//! greenslice's preferred start per GPU and profile (`PerGpu`, `mig::best_start`), and greenslice's
//! one preferred placement per profile on the node (`Node`, `mig::placement_score`). Counted:
//! requests that found a device, and refusals while some GPU had the compute slices free
//! (fragmentation). The quick test runs 3 seeds at one load; the measurement in docs/KUBERNETES.md
//! is `cargo test -p greenslice-agent --release --test dra_steering -- --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet};

use greenslice_agent::dra::devices::DeviceRef;
use greenslice_agent::dra::quantity;
use greenslice_agent::dra::slices::{self, SliceOptions, Steering};
use greenslice_core::gpu::GpuModel;
use greenslice_core::inventory::{Gpu, MigInstance};
use greenslice_core::mig;
use rand::{Rng, SeedableRng};

const GPUS: u32 = 4;
const STEPS: usize = 300;
/// Request mix (profile, weight): many small, some large.
const MIX: &[(&str, u32)] = &[
    ("1g.10gb", 35),
    ("1g.20gb", 10),
    ("2g.20gb", 20),
    ("3g.40gb", 20),
    ("4g.40gb", 10),
    ("7g.80gb", 5),
];

fn node() -> Vec<Gpu> {
    (0..GPUS)
        .map(|i| Gpu {
            uuid: format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
            index: i,
            model: GpuModel::H100Sxm5_80Gb,
            memory_bytes: 80 << 30,
            mig_capable: true,
            mig_enabled: true,
            pci_bus_id: String::new(),
            power_limit_mw: 700_000,
            healthy: true,
            mig_instances: Vec::new(),
            shares: Vec::new(),
            whole_slice_id: None,
        })
        .collect()
}

/// One request's outcome counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    placed: u32,
    refused: u32,
    /// Refused although the node had enough free compute slices on one GPU.
    fragmented: u32,
}

fn counters_of(d: &k8s_openapi::api::resource::v1::Device) -> Vec<(String, String, u64)> {
    d.consumes_counters
        .iter()
        .flatten()
        .flat_map(|c| {
            c.counters.iter().map(move |(k, v)| {
                (
                    c.counter_set.clone(),
                    k.clone(),
                    quantity::parse(&v.value.0).unwrap(),
                )
            })
        })
        .collect()
}

/// Runs one seeded sequence; requests live `life` steps (uniform).
fn simulate(seed: u64, steer: Steering, life: std::ops::Range<usize>) -> Outcome {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut gpus = node();
    let mut live: Vec<(String, usize)> = Vec::new(); // (claim slice id, release step)
    let mut out = Outcome::default();
    let total: u32 = MIX.iter().map(|m| m.1).sum();
    for step in 0..STEPS {
        // Releases due now: unprepare destroys the instance.
        let (gone, kept): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, end)| *end <= step);
        live = kept;
        for (id, _) in gone {
            for g in &mut gpus {
                g.mig_instances
                    .retain(|m| m.slice_id.as_deref() != Some(id.as_str()));
            }
        }
        // The request.
        let mut pick = rng.random_range(0..total);
        let profile = MIX
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|m| m.0)
            .unwrap();
        let lifetime = rng.random_range(life.clone());
        let dra: BTreeSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
        let opts = SliceOptions {
            share_gpus: vec![],
            partitionable: true,
            consumable_capacity: false,
            dra_slices: dra,
            steer,
            allocated: BTreeSet::new(),
        };
        let published = slices::build("sim", &gpus, step as i64 + 1, &opts).unwrap();
        if step % 50 == 0 {
            slices::validate(&published).unwrap();
        }
        // Counters left: the sets minus what allocated devices (the live instances) consume.
        let mut left: BTreeMap<(String, String), u64> = published
            .iter()
            .flat_map(|s| s.spec.shared_counters.iter().flatten())
            .flat_map(|cs| {
                cs.counters.iter().map(|(k, v)| {
                    (
                        (cs.name.clone(), k.clone()),
                        quantity::parse(&v.value.0).unwrap(),
                    )
                })
            })
            .collect();
        let allocated: BTreeSet<String> = gpus
            .iter()
            .flat_map(|g| {
                g.mig_instances.iter().map(|m| {
                    DeviceRef::Mig {
                        gpu: g.index,
                        profile: m.profile.clone(),
                        start: m.start,
                    }
                    .name()
                })
            })
            .collect();
        let in_order: Vec<&k8s_openapi::api::resource::v1::Device> = published
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .collect();
        for d in in_order.iter().filter(|d| allocated.contains(&d.name)) {
            for (set, k, v) in counters_of(d) {
                let e = left.get_mut(&(set, k)).expect("consumed counter exists");
                *e = e
                    .checked_sub(v)
                    .expect("allocated devices fit their counters");
            }
        }
        // The scheduler: first matching device whose counters fit.
        let chosen = in_order.iter().find(|d| {
            let a = d.attributes.as_ref().unwrap();
            a["profile"].string.as_deref() == Some(profile)
                && !allocated.contains(&d.name)
                && counters_of(d)
                    .iter()
                    .all(|(set, k, v)| left[&(set.clone(), k.clone())] >= *v)
        });
        match chosen {
            Some(d) => {
                let Ok(DeviceRef::Mig {
                    gpu,
                    profile,
                    start,
                }) = DeviceRef::parse(&d.name)
                else {
                    panic!("{} is not a MIG device", d.name);
                };
                // Prepare: the instance the allocation names is created, held by the claim's slice.
                let g = gpus.iter_mut().find(|g| g.index == gpu).unwrap();
                mig::check_create(&g.model, &g.mig_layout(), &profile, start)
                    .expect("the scheduler only picks legal placements");
                let id = format!("claim-{step}");
                g.mig_instances.push(MigInstance {
                    gpu_instance_id: step as u32 + 1,
                    profile,
                    start,
                    size: 0,
                    mig_uuid: format!("MIG-{step}"),
                    slice_id: Some(id.clone()),
                });
                live.push((id, step + lifetime));
                out.placed += 1;
            }
            None => {
                out.refused += 1;
                let need = mig::profile(&GpuModel::H100Sxm5_80Gb, profile)
                    .unwrap()
                    .compute_slices;
                let room = gpus.iter().any(|g| {
                    mig::compute_slices(&g.model) - mig::used_compute(&g.model, &g.mig_layout())
                        >= need
                });
                if room {
                    out.fragmented += 1;
                }
            }
        }
    }
    out
}

const VARIANTS: [Steering; 3] = [Steering::Off, Steering::PerGpu, Steering::Node];

/// Totals over `seeds` for each variant, printed as a table.
fn measure(seeds: std::ops::RangeInclusive<u64>, life: std::ops::Range<usize>) -> [Outcome; 3] {
    let mut sum = [Outcome::default(); 3];
    eprintln!("lifetime {life:?} steps; per seed: placed/refused(fragmented) for {VARIANTS:?}");
    for seed in seeds {
        let mut row = format!("seed {seed:3}:");
        for (s, v) in sum.iter_mut().zip(VARIANTS) {
            let o = simulate(seed, v, life.clone());
            row += &format!("  {}/{}({})", o.placed, o.refused, o.fragmented);
            s.placed += o.placed;
            s.refused += o.refused;
            s.fragmented += o.fragmented;
        }
        eprintln!("{row}");
    }
    for (s, v) in sum.iter().zip(VARIANTS) {
        eprintln!("total {v:?}: {s:?}");
    }
    sum
}

#[test]
fn the_simulation_is_deterministic_and_can_fill_the_node() {
    let life = 5..40;
    assert_eq!(
        simulate(3, Steering::Node, life.clone()),
        simulate(3, Steering::Node, life.clone())
    );
    let sum = measure(1..=3, life);
    for o in sum {
        assert!(
            o.placed > 0 && o.refused > 0,
            "the load must fill the node: {o:?}"
        );
    }
}

/// The measurement of docs/KUBERNETES.md ("Placement keeps its say"): 20 seeds at three loads.
/// What steering measurably does is turn refusals for fragmentation into refusals for capacity;
/// that is asserted (per load, for node steering), the placed counts are only printed.
#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn measure_steering_against_first_fit() {
    for life in [5..20, 5..40, 5..80] {
        let sum = measure(1..=20, life);
        assert!(
            sum[2].fragmented < sum[0].fragmented,
            "node steering left more fragmentation: {sum:?}"
        );
    }
}
