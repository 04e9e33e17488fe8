//! Which core owns which hash slot.
//!
//! The map is data, not `hash % cores`: today a node splits the slots into
//! equal contiguous ranges, one per core; later the same table says which Raft
//! group (and node) owns a slot, and rebalancing edits it. Invariant: every
//! slot has exactly one owner, and each core's slots form one contiguous range
//! (a cursor scan step relies on that to stay on one core).

use tinkerdb_storage::{Slot, SLOT_COUNT};

/// A core's index on this node, `0..cores`.
pub type CoreId = usize;

/// Slot -> owning core. Immutable once built; shared read-only by all cores.
#[derive(Debug, Clone)]
pub struct SlotMap {
    owner_by_slot: Box<[u16]>,
    cores: usize,
}

impl SlotMap {
    /// Splits the slots into `cores` contiguous ranges of (nearly) equal size.
    pub fn contiguous(cores: usize) -> SlotMap {
        assert!(
            (1..=SLOT_COUNT).contains(&cores),
            "cores must be 1..={SLOT_COUNT}"
        );
        let owner_by_slot = (0..SLOT_COUNT)
            .map(|slot| (slot * cores / SLOT_COUNT) as u16)
            .collect::<Box<[u16]>>();
        SlotMap {
            owner_by_slot,
            cores,
        }
    }

    /// The core that owns `slot`.
    #[inline]
    pub fn owner(&self, slot: Slot) -> CoreId {
        usize::from(self.owner_by_slot[usize::from(slot)])
    }

    /// Number of cores slots are spread over.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The contiguous range of slots `core` owns.
    pub fn slot_range(&self, core: CoreId) -> std::ops::Range<usize> {
        let start = self
            .owner_by_slot
            .partition_point(|&owner| usize::from(owner) < core);
        let end = self
            .owner_by_slot
            .partition_point(|&owner| usize::from(owner) <= core);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_one_owner_and_ranges_are_contiguous() {
        for cores in [1, 2, 3, 7, 64] {
            let map = SlotMap::contiguous(cores);
            let total: usize = (0..cores).map(|core| map.slot_range(core).len()).sum();
            assert_eq!(total, SLOT_COUNT);
            for slot in 1..SLOT_COUNT as u16 {
                assert!(map.owner(slot) >= map.owner(slot - 1));
            }
            assert_eq!(map.owner(0), 0);
            assert_eq!(map.owner((SLOT_COUNT - 1) as u16), cores - 1);
        }
    }
}
