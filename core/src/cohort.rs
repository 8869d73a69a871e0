//! Cohort bucketing for canary rollouts (DESIGN §7).
//!
//! A vehicle's bucket in a rollout is the first 8 bytes of `SHA-256(salt ‖ vehicle id)`,
//! read big-endian, as a fraction of 2^64. Phase k admits the buckets below its
//! cumulative percent. The bucket depends only on the rollout's salt and the vehicle id,
//! so membership is stable across restarts and replicas, reproducible by anyone holding
//! the salt, and independent of check-in order. A fresh salt per rollout keeps the same
//! vehicles from always being the first canaries.

use sha2::{Digest, Sha256};

/// The vehicle's bucket: a uniformly distributed `u64` (fraction = bucket / 2^64).
pub fn bucket(salt: &[u8], vehicle_id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(vehicle_id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The bucket as a fraction in `[0, 1)`.
pub fn fraction(salt: &[u8], vehicle_id: &str) -> f64 {
    bucket(salt, vehicle_id) as f64 / 18_446_744_073_709_551_616.0
}

/// The exclusive upper bucket bound of a cumulative percentage, computed in integers so
/// that 100% admits every bucket and 0% admits none (no floating-point edge cases).
/// `percent_millis` is the percentage in thousandths (12.5% = 12_500); values above
/// 100_000 are clamped.
pub fn bound(percent_millis: u32) -> u128 {
    let clamped = u128::from(percent_millis.min(100_000));
    (clamped << 64) / 100_000
}

/// Whether `vehicle_id` falls within the first `percent_millis` thousandths of a percent
/// of the fleet for this salt.
pub fn admits(salt: &[u8], vehicle_id: &str, percent_millis: u32) -> bool {
    bucket_admitted(bucket(salt, vehicle_id), percent_millis)
}

/// Whether a bucket lies below the exclusive bound of `percent_millis`.
pub fn bucket_admitted(bucket: u64, percent_millis: u32) -> bool {
    u128::from(bucket) < bound(percent_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_is_the_big_endian_prefix_of_the_digest() {
        let digest = Sha256::digest(b"salt-1vehicle-42");
        let expected = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(bucket(b"salt-1", "vehicle-42"), expected);
    }

    #[test]
    fn bounds_cover_nothing_at_zero_and_everything_at_one_hundred() {
        let cases = [
            (0u32, 0u128),
            (100_000, 1u128 << 64),
            (200_000, 1u128 << 64),
            (50_000, 1u128 << 63),
        ];
        for (percent_millis, expected) in cases {
            assert_eq!(bound(percent_millis), expected, "bound({percent_millis})");
        }
        assert!(admits(b"s", "v", 100_000), "100% must admit every vehicle");
        assert!(bucket_admitted(u64::MAX, 100_000));
        assert!(!admits(b"s", "v", 0), "0% must admit no vehicle");
    }

    #[test]
    fn the_bound_is_exclusive_so_0_percent_admits_not_even_bucket_0() {
        assert!(!bucket_admitted(0, 0));
        assert!(bucket_admitted(0, 1));
        assert!(bucket_admitted((1 << 63) - 1, 50_000));
        assert!(
            !bucket_admitted(1 << 63, 50_000),
            "half admits buckets below 2^63"
        );
    }

    #[test]
    fn cohorts_are_uniform_by_chi_square_over_100k_ids() {
        // 100 equal-width buckets, 100_000 ids: expected 1000 per cell. With 99 degrees
        // of freedom the 99.9th percentile of chi-square is about 148.2; a uniform hash
        // passes with overwhelming probability and a biased one fails.
        let cells = 100usize;
        let mut counts = vec![0u64; cells];
        for i in 0..100_000u32 {
            let f = fraction(b"rollout-salt", &format!("veh-{i}"));
            counts[((f * cells as f64) as usize).min(cells - 1)] += 1;
        }
        let expected = 1000.0;
        let chi_square: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(
            chi_square < 148.2,
            "bucket distribution should be uniform, chi-square = {chi_square}"
        );
    }

    #[test]
    fn admitted_share_matches_the_percentage() {
        let admitted = (0..100_000u32)
            .filter(|i| admits(b"another-salt", &format!("v{i}"), 10_000))
            .count();
        // 10% of 100k = 10k; 4 standard deviations is ~380.
        assert!(
            (9_600..=10_400).contains(&admitted),
            "10% should admit about 10000 of 100000, admitted {admitted}"
        );
    }

    proptest! {
        #[test]
        fn membership_is_stable_and_monotonic_in_percent(
            salt in proptest::collection::vec(any::<u8>(), 0..32),
            vid in "[a-z0-9-]{1,40}",
            lower in 0u32..=100_000,
            extra in 0u32..=100_000,
        ) {
            let higher = lower.saturating_add(extra).min(100_000);
            // Reproducible by anyone holding the salt: the bucket is the big-endian
            // prefix of SHA-256(salt ‖ vehicle id), nothing else (no process state).
            let digest = Sha256::digest([salt.as_slice(), vid.as_bytes()].concat());
            let expected = u64::from_be_bytes(digest[..8].try_into().unwrap());
            prop_assert_eq!(bucket(&salt, &vid), expected);
            prop_assert_eq!(admits(&salt, &vid, lower), u128::from(expected) < bound(lower));
            if admits(&salt, &vid, lower) {
                prop_assert!(admits(&salt, &vid, higher),
                    "a vehicle admitted at {}‰ must stay admitted at {}‰", lower, higher);
            }
        }
    }
}
