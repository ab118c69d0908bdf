//! Keys to key groups to parallel instances.
//!
//! A key's key group is `xxh3_64(key bytes, seed 0) % max_parallelism`; the
//! hash is fixed forever because checkpoints and savepoints store state by key
//! group. Key group `g` belongs to instance `g * parallelism / max_parallelism`,
//! so each instance owns one contiguous range of key groups (the same
//! assignment as Flink's `KeyGroupRangeAssignment`), and changing the
//! parallelism moves whole key groups, never single keys.
//!
//! Invariants (tested): every key group belongs to exactly one instance; the
//! ranges of instances `0..parallelism` tile `0..max_parallelism` in order;
//! `parallelism <= max_parallelism`.

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

/// Key groups of a job when the spec names none.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// The key group of a key.
#[inline]
pub fn key_group(key: &[u8], max_parallelism: u32) -> u32 {
    let hash = xxh3_64(key);
    // The same result; a division takes as long as the hash of a short key.
    if max_parallelism.is_power_of_two() {
        (hash & u64::from(max_parallelism - 1)) as u32
    } else {
        (hash % u64::from(max_parallelism)) as u32
    }
}

/// The parallel instance that owns a key group.
#[inline]
pub fn instance_for_key_group(key_group: u32, max_parallelism: u32, parallelism: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// The key groups an instance owns.
pub fn key_group_range(instance: u32, max_parallelism: u32, parallelism: u32) -> Range<u32> {
    let (i, m, p) = (
        u64::from(instance),
        u64::from(max_parallelism),
        u64::from(parallelism),
    );
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m).div_ceil(p);
    start as u32..end as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_and_agree_with_instance_assignment() {
        for max in [1, 7, 128, 1000] {
            for p in 1..=max.min(40) {
                let mut next = 0;
                for i in 0..p {
                    let r = key_group_range(i, max, p);
                    assert_eq!(r.start, next, "max {max} p {p} instance {i}");
                    for g in r.clone() {
                        assert_eq!(instance_for_key_group(g, max, p), i);
                    }
                    next = r.end;
                }
                assert_eq!(next, max);
            }
        }
    }

    #[test]
    fn key_groups_are_stable() {
        // Savepoints depend on these exact values: changing the hash breaks them.
        for max in [1, 2, 7, 128, 1000, 32_768] {
            for i in 0..1000u32 {
                let key = format!("user-{i}");
                let expected = (xxh3_64(key.as_bytes()) % u64::from(max)) as u32;
                assert_eq!(key_group(key.as_bytes(), max), expected, "{key} of {max}");
            }
        }
        assert_eq!(key_group(b"", 128), (xxh3_64(b"") % 128) as u32);
    }
}
