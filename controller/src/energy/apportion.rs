//! Largest-remainder apportionment: split an integer total into integer parts proportional to
//! weights, summing to the total exactly.

/// Splits `total` in proportion to `weights` (Hamilton's largest-remainder method).
///
/// Each part is its exact quota `total * w / sum(w)` rounded down, and the units left over go one
/// each to the parts with the largest remainders; equal remainders go to the lower index, so the
/// result depends only on the order of `weights`. A zero weight always gets 0. When every weight is
/// zero, the whole total goes to `fallback`.
///
/// Exact: `total * w` fits in u128 because both are u64.
///
/// # Panics
/// If `fallback` is not an index of `weights` (a bug in the caller, never outside input).
pub(crate) fn largest_remainder(total: u64, weights: &[u64], fallback: usize) -> Vec<u64> {
    assert!(fallback < weights.len(), "fallback index out of range");
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut parts = vec![0u64; weights.len()];
    if sum == 0 {
        parts[fallback] = total;
        return parts;
    }
    let total128 = u128::from(total);
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let product = total128 * u128::from(w);
        let floor = product / sum;
        given += floor;
        // floor <= total, so it fits in u64.
        parts[i] = floor as u64;
        remainders.push((product % sum, i));
    }
    // Leftover units: sum of remainders / sum, which is fewer than the count of non-zero remainders.
    let leftover = (total128 - given) as usize;
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(leftover) {
        parts[i] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_evenly_divisible_totals_exactly() {
        assert_eq!(largest_remainder(100, &[1, 3], 0), vec![25, 75]);
    }

    #[test]
    fn gives_leftover_units_to_largest_remainders() {
        // Quotas 2/7 * 10 = 2.857.., three times, and 1/7 * 10 = 1.428..: floors 2,2,2,1 = 7;
        // three units left go to the three 0.857 remainders.
        assert_eq!(largest_remainder(10, &[2, 2, 2, 1], 3), vec![3, 3, 3, 1]);
    }

    #[test]
    fn breaks_remainder_ties_by_lower_index() {
        assert_eq!(largest_remainder(10, &[1, 1, 1], 2), vec![4, 3, 3]);
    }

    #[test]
    fn gives_everything_to_fallback_when_all_weights_are_zero() {
        assert_eq!(largest_remainder(7, &[0, 0, 0], 1), vec![0, 7, 0]);
    }

    #[test]
    fn handles_extreme_values_without_overflow() {
        let parts = largest_remainder(u64::MAX, &[u64::MAX, u64::MAX, 1], 0);
        assert_eq!(
            parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
            u128::from(u64::MAX)
        );
    }

    proptest! {
        #[test]
        fn parts_sum_to_total_and_stay_within_one_of_the_quota(
            total in any::<u64>(),
            weights in prop::collection::vec(prop_oneof![Just(0u64), any::<u64>(), 0u64..1000], 1..12),
        ) {
            let fallback = weights.len() - 1;
            let parts = largest_remainder(total, &weights, fallback);
            let sum_parts: u128 = parts.iter().map(|&p| u128::from(p)).sum();
            prop_assert_eq!(sum_parts, u128::from(total));
            let sum_w: u128 = weights.iter().map(|&w| u128::from(w)).sum();
            for (i, (&p, &w)) in parts.iter().zip(&weights).enumerate() {
                if sum_w == 0 {
                    prop_assert_eq!(p, if i == fallback { total } else { 0 });
                    continue;
                }
                if w == 0 {
                    prop_assert_eq!(p, 0);
                }
                let floor = u128::from(total) * u128::from(w) / sum_w;
                prop_assert!(u128::from(p) == floor || u128::from(p) == floor + 1);
            }
        }
    }
}
