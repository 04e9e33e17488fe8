//! Hash slots: the unit in which the keyspace is divided among cores (and,
//! later, among Raft groups and nodes).
//!
//! `hash_slot(tenant, key) = crc32c(tenant_len_le32 || tenant || key) % 16384`
//!
//! The tenant takes part in the hash so that one tenant's keys spread over all
//! slots independently of another's. The tenant's length is hashed first so
//! that ("ab", "c") and ("a", "bc") are different inputs. CRC-32C (Castagnoli)
//! is used because it is stable, specified, hardware-accelerated on x86 and
//! ARM, and already needed for WAL checksums. This function is part of the
//! on-disk and wire contract: changing it moves every key.

/// A hash slot number, `0..SLOT_COUNT`.
pub type Slot = u16;

/// Number of hash slots. Fixed for the life of a cluster; the same number as
/// Redis Cluster, enough to spread load over hundreds of shards.
pub const SLOT_COUNT: usize = 16384;

const _: () = assert!(SLOT_COUNT.is_power_of_two() && SLOT_COUNT <= u16::MAX as usize + 1);

/// The slot of `key` in `tenant` (the tenant's name, not its local id, so the
/// result is the same on every node whatever order tenants were created in).
pub fn hash_slot(tenant: &str, key: &[u8]) -> Slot {
    let tenant_len = u32::try_from(tenant.len()).expect("tenant name over 4 GiB");
    let mut crc = crc32c::crc32c(&tenant_len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, tenant.as_bytes());
    crc = crc32c::crc32c_append(crc, key);
    (crc as usize % SLOT_COUNT) as Slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_stable() {
        // Pinned values: if these change, every stored key moves.
        assert_eq!(hash_slot("default", b"foo"), hash_slot("default", b"foo"));
        let pinned = [
            hash_slot("default", b"foo"),
            hash_slot("default", b""),
            hash_slot("acme", b"user:1"),
        ];
        assert_eq!(pinned, [PINNED_FOO, PINNED_EMPTY, PINNED_ACME]);
    }

    const PINNED_FOO: Slot = 2282;
    const PINNED_EMPTY: Slot = 4388;
    const PINNED_ACME: Slot = 11003;

    #[test]
    fn tenant_boundary_is_part_of_the_hash() {
        assert_ne!(hash_slot("ab", b"c"), hash_slot("a", b"bc"));
    }

    #[test]
    fn slots_spread_evenly() {
        let mut counts = vec![0u32; SLOT_COUNT];
        let keys = SLOT_COUNT * 16;
        for i in 0..keys {
            counts[hash_slot("default", format!("key:{i}").as_bytes()) as usize] += 1;
        }
        let max = *counts.iter().max().unwrap();
        assert!(max < 48, "a slot got {max} of {keys} keys (mean 16)");
    }
}
