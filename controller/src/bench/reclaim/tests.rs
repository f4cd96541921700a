//! Unit tests of `reclaim`.

use super::*;

fn task(arrive_s: i64, life_s: i64) -> TimedTask {
    TimedTask {
        cpu_milli: 0,
        num_gpu: 1,
        gpu_milli: 1000,
        arrive_s,
        life_s,
    }
}

fn one_gpu() -> ClusterView {
    cluster(
        &[crate::bench::openb::TraceNode {
            name: "n".into(),
            cpu_milli: 64_000,
            memory_mib: 0,
            gpus: 1,
            model: String::new(),
        }],
        1,
    )
}

#[test]
fn reclaiming_an_idle_slice_lets_the_waiting_request_in_sooner() {
    let args = Args {
        nodes: PathBuf::new(),
        pods: PathBuf::new(),
        node_stride: 1,
        speedup: 1.0,
        idle_share: 1.0,
        serving_share: 0.0,
        policy: "first-fit".into(),
        window_s: 1800,
        grace_s: 600,
        retry: 8,
        seed: 1,
        history: false,
        history_sample_s: 5,
    };
    // A 10 h slice that goes idle early, and a request arriving an hour later.
    let tasks = vec![task(0, 36_000), task(3_600, 3_600)];
    let p = crate::placement::FirstFit;
    let a = replay(&one_gpu(), &tasks, &args, &p, false);
    let b = replay(&one_gpu(), &tasks, &args, &p, true);
    assert_eq!((a.admitted, b.admitted), (2, 2));
    assert_eq!(b.reclaimed_slices, 1);
    assert!(b.mean_wait_h < a.mean_wait_h, "{a:?} {b:?}");
    assert!(b.idle_allocated_gpu_h < a.idle_allocated_gpu_h);
}

#[test]
fn history_memory_is_bounded_by_the_live_slices() {
    let h = history_replay(300, 1, 60, 7);
    // Slices tracked at the peak plus at most 256 GPUs, and one tenant's accounts.
    let bound = (h.peak_tracked_slices + 256) * (h.bytes_per_series + 64) + 64 * 1024;
    assert!(h.peak_history_bytes <= bound, "{h:?}");
    assert!(h.end_history_bytes < h.peak_history_bytes);
}
