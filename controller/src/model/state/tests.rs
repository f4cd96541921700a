//! Unit tests of `state`.

use greenslice_core::slice::SliceState;

use super::*;

fn rec(id: &str, gpus: &[&str], state: SliceState) -> SliceRecord {
    let mut r = crate::ledger::tests::record(id, state);
    r.gpus = gpus.iter().map(|g| g.to_string()).collect();
    r
}

fn on(st: &ClusterState, gpu: &str) -> Vec<String> {
    let mut v: Vec<String> = st.slices_on_gpu(gpu).map(|s| s.id.clone()).collect();
    v.sort();
    v
}

#[test]
fn pages_walk_ids_in_order_from_the_cursor_with_the_filters_and_follow_removals() {
    use crate::model::page::SliceFilter;
    let mut st = ClusterState::default();
    for (i, state) in [
        SliceState::Active,
        SliceState::Released,
        SliceState::Active,
        SliceState::Failed,
        SliceState::Active,
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rec(&format!("s-{i}"), &["G1"], state);
        r.created_ms = i as i64 * 10;
        st.put(r);
    }
    let ids = |p: &crate::model::page::Page<SliceRecord>| -> Vec<String> {
        p.items.iter().map(|s| s.id.clone()).collect()
    };
    let live = SliceFilter::default();
    let p = st.page_slices(&live, None, 2);
    assert_eq!(ids(&p), ["s-0", "s-2"]);
    assert_eq!(p.next_after.as_deref(), Some("s-2"));
    // The cursor's own slice going away does not move the next page.
    st.remove_slice("s-2");
    let p = st.page_slices(&live, Some("s-2"), 2);
    assert_eq!(ids(&p), ["s-4"]);
    assert_eq!(p.next_after, None);
    let terminal = SliceFilter {
        include_terminal: true,
        created_after_ms: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(&st.page_slices(&terminal, None, 10)),
        ["s-1", "s-3", "s-4"]
    );
    let failed = SliceFilter {
        state: Some(SliceState::Failed),
        ..Default::default()
    };
    assert_eq!(ids(&st.page_slices(&failed, None, 10)), ["s-3"]);
}

#[test]
fn the_gpu_index_follows_puts_replacements_and_removals() {
    let mut st = ClusterState::default();
    st.put(rec("a", &["G1", "G2"], SliceState::Active));
    st.put(rec("b", &["G1"], SliceState::Released));
    assert_eq!(on(&st, "G1"), ["a", "b"], "finished slices stay indexed");
    assert_eq!(on(&st, "G2"), ["a"]);
    // Re-put with other GPUs (a kubelet slice re-reported): it leaves the GPU it no longer names.
    st.put(rec("a", &["G2", "G3"], SliceState::Active));
    assert_eq!(on(&st, "G1"), ["b"]);
    assert_eq!(on(&st, "G3"), ["a"]);
    st.remove_slice("b");
    assert!(on(&st, "G1").is_empty());
    assert!(on(&st, "nope").is_empty());
}

/// A slice on `gpu` that finished (`state`) at `ended_ms`, created 1 s before.
fn ended(id: &str, gpu: &str, state: SliceState, ended_ms: i64) -> SliceRecord {
    let mut r = rec(id, &[gpu], state);
    r.created_ms = ended_ms - 1000;
    r.updated_ms = ended_ms;
    r
}

fn limits(older_than_ms: i64, keep_at_most: usize) -> PruneLimits {
    PruneLimits {
        older_than_ms,
        keep_at_most,
        examine_at_most: usize::MAX,
    }
}

/// No GPU has an open energy interval: energy needs nothing.
fn no_energy(_: &str) -> Option<i64> {
    None
}

fn forgotten(p: &Pruned) -> Vec<(&str, Expiry)> {
    p.forgotten
        .iter()
        .map(|(r, e)| (r.id.as_str(), *e))
        .collect()
}

fn ids(st: &ClusterState) -> Vec<String> {
    let mut v: Vec<String> = st.all().map(|s| s.id.clone()).collect();
    v.sort();
    v
}

#[test]
fn the_finished_count_follows_puts_updates_and_removals() {
    let mut st = ClusterState::default();
    st.put(rec("a", &["G1"], SliceState::Active));
    st.put(ended("b", "G1", SliceState::Released, 5_000));
    assert_eq!(st.finished_count(), 1);
    st.update("a", |r| {
        r.state = SliceState::Released;
        r.updated_ms = 6_000;
    });
    assert_eq!(st.finished_count(), 2);
    // Re-put as live (a kubelet allocation reported again) and finished at another time.
    st.put(rec("b", &["G1"], SliceState::Active));
    assert_eq!(st.finished_count(), 1);
    st.put(ended("b", "G1", SliceState::Failed, 7_000));
    st.update("b", |r| r.updated_ms = 8_000);
    assert_eq!(st.finished_count(), 2);
    st.remove_slice("a");
    assert_eq!(st.finished_count(), 1);
    // Nothing stale is left behind: pruning everything forgets exactly what is there.
    let p = st.prune_finished(&limits(i64::MAX, 0), &no_energy);
    assert_eq!(forgotten(&p), [("b", Expiry::Age)]);
    assert_eq!(st.finished_count(), 0);
    assert!(st.all().next().is_none());
}

#[test]
fn over_the_count_the_oldest_finished_slices_go_first_and_live_ones_stay() {
    let mut st = ClusterState::default();
    // Put in an order other than their end times.
    for (id, at) in [
        ("c", 3_000),
        ("a", 1_000),
        ("e", 5_000),
        ("b", 2_000),
        ("d", 4_000),
    ] {
        st.put(ended(id, "G1", SliceState::Released, at));
    }
    st.put(rec("live", &["G1"], SliceState::Active));
    let p = st.prune_finished(&limits(0, 2), &no_energy);
    assert_eq!(
        forgotten(&p),
        [
            ("a", Expiry::Count),
            ("b", Expiry::Count),
            ("c", Expiry::Count)
        ]
    );
    assert_eq!(ids(&st), ["d", "e", "live"]);
    assert_eq!(st.finished_count(), 2);
    assert_eq!(
        on(&st, "G1"),
        ["d", "e", "live"],
        "the GPU index forgets them too"
    );
    // At the count: nothing more.
    let p = st.prune_finished(&limits(0, 2), &no_energy);
    assert!(p.forgotten.is_empty() && p.examined == 0);
}

#[test]
fn slices_older_than_the_age_limit_go_whatever_the_count() {
    let mut st = ClusterState::default();
    st.put(ended("old", "G1", SliceState::Failed, 1_000));
    st.put(ended("older", "G1", SliceState::Released, 500));
    st.put(ended("new", "G1", SliceState::Released, 9_000));
    let p = st.prune_finished(&limits(1_001, 100), &no_energy);
    assert_eq!(
        forgotten(&p),
        [("older", Expiry::Age), ("old", Expiry::Age)]
    );
    assert_eq!(ids(&st), ["new"]);
}

#[test]
fn a_released_slice_an_open_energy_interval_needs_is_held_until_the_interval_passes_it() {
    let mut st = ClusterState::default();
    // G1's open energy interval started at 2_500: "b" (released at 3_000) held G1 in it.
    st.put(ended("a", "G1", SliceState::Released, 2_000));
    st.put(ended("b", "G1", SliceState::Released, 3_000));
    st.put(ended("f", "G1", SliceState::Failed, 3_500));
    st.put(ended("c", "G2", SliceState::Released, 4_000));
    let mut since = 2_500;
    let open = |g: &str| (g == "G1").then_some(since);
    let p = st.prune_finished(&limits(0, 0), &open);
    assert_eq!(
        forgotten(&p),
        [
            ("a", Expiry::Count),
            ("f", Expiry::Count),
            ("c", Expiry::Count)
        ],
        "a ended before the interval, a failed slice never held anything, G2 has no interval"
    );
    assert_eq!(ids(&st), ["b"]);
    assert_eq!((st.finished_count(), st.held_for_energy_count()), (1, 1));
    // Held aside: the next pass does not walk it again.
    let p = st.prune_finished(&limits(0, 0), &open);
    assert_eq!((p.examined, p.forgotten.len()), (0, 0));
    // The interval closed at 3_000 (held_ms of "b" in the next one would be 0): it may go.
    since = 3_000;
    let open = |g: &str| (g == "G1").then_some(since);
    let p = st.prune_finished(&limits(0, 0), &open);
    assert_eq!(forgotten(&p), [("b", Expiry::Count)]);
    assert_eq!((st.finished_count(), st.held_for_energy_count()), (0, 0));
}

#[test]
fn a_multi_gpu_slice_is_kept_until_every_gpu_it_held_is_attributed_past_it() {
    let mut st = ClusterState::default();
    let mut r = rec("w", &["G1", "G2"], SliceState::Released);
    (r.created_ms, r.updated_ms) = (1_000, 5_000);
    st.put(r);
    let open = |at: [i64; 2]| move |g: &str| Some(if g == "G1" { at[0] } else { at[1] });
    assert!(
        st.prune_finished(&limits(0, 0), &open([4_000, 4_000]))
            .forgotten
            .is_empty()
    );
    // G1 moved past it, G2 not yet.
    assert!(
        st.prune_finished(&limits(0, 0), &open([6_000, 4_000]))
            .forgotten
            .is_empty()
    );
    assert_eq!(st.held_for_energy_count(), 1);
    let p = st.prune_finished(&limits(0, 0), &open([6_000, 5_000]));
    assert_eq!(forgotten(&p), [("w", Expiry::Count)]);
}

#[test]
fn one_pass_looks_at_no_more_than_its_limit() {
    let mut st = ClusterState::default();
    for i in 0..10 {
        st.put(ended(
            &format!("s{i}"),
            "G1",
            SliceState::Released,
            1_000 + i,
        ));
    }
    let l = PruneLimits {
        examine_at_most: 4,
        ..limits(0, 0)
    };
    let p = st.prune_finished(&l, &no_energy);
    assert_eq!((p.examined, p.forgotten.len()), (4, 4));
    assert_eq!(st.finished_count(), 6);
    assert_eq!(p.forgotten[0].0.id, "s0");
}

#[test]
fn a_forgotten_slice_frees_its_idempotency_key() {
    let mut st = ClusterState::default();
    let mut r = ended("a", "G1", SliceState::Released, 1_000);
    r.idempotency_key = Some("k".into());
    st.put(r);
    st.prune_finished(&limits(i64::MAX, 0), &no_energy);
    assert!(st.idempotency.is_empty());
}

#[test]
fn live_slices_are_exactly_the_live_records() {
    let mut st = ClusterState::default();
    st.put(rec("a", &["G1"], SliceState::Active));
    st.put(rec("b", &["G1"], SliceState::Pending));
    st.put(rec("c", &["G2"], SliceState::Released));
    st.put(rec("b", &["G1"], SliceState::Failed));
    let mut live: Vec<&str> = st.live_slices().map(|s| s.id.as_str()).collect();
    live.sort();
    let mut want: Vec<&str> = st
        .all()
        .filter(|s| s.is_live())
        .map(|s| s.id.as_str())
        .collect();
    want.sort();
    assert_eq!(live, want);
    assert_eq!(live, ["a"]);
}
