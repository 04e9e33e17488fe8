//! Which range owns which hash slot, and which core hosts which range.
//!
//! A **range** is a contiguous span of hash slots with its own store (and,
//! in cluster mode, its own Raft group, whose id is the range id): the unit
//! requests are routed to. A core hosts one or more ranges. The map is
//! data, not `hash % cores`: today a node splits the slots into
//! `cores x ranges_per_core` equal contiguous ranges and gives each core a
//! contiguous block of them; later rebalancing edits it.
//!
//! Invariants: every slot has exactly one range, every range exactly one
//! core; each range's slots and each core's ranges are contiguous (a
//! cursor scan step relies on a range's slots being one span).

use tinkerdb_storage::{Slot, SLOT_COUNT};

/// A core's index on this node, `0..cores`.
pub type CoreId = usize;

/// A range's id, `0..ranges`: in cluster mode also its Raft group's id.
pub type RangeId = usize;

/// Most ranges one core may host (`cluster.ranges_per_core`).
pub const MAX_RANGES_PER_CORE: usize = 256;

/// Slot -> owning range -> hosting core. Immutable once built; shared
/// read-only by all cores.
#[derive(Debug, Clone)]
pub struct SlotMap {
    range_by_slot: Box<[u16]>,
    ranges_per_core: usize,
    cores: usize,
}

impl SlotMap {
    /// One range per core: the slots split into `cores` contiguous ranges
    /// of (nearly) equal size.
    pub fn contiguous(cores: usize) -> SlotMap {
        SlotMap::placed(cores, 1)
    }

    /// `cores x ranges_per_core` contiguous ranges of (nearly) equal size;
    /// core `c` hosts ranges `c * ranges_per_core ..` (a contiguous block).
    pub fn placed(cores: usize, ranges_per_core: usize) -> SlotMap {
        assert!(
            (1..=MAX_RANGES_PER_CORE).contains(&ranges_per_core),
            "ranges per core must be 1..={MAX_RANGES_PER_CORE}"
        );
        let ranges = cores * ranges_per_core;
        assert!(
            (1..=SLOT_COUNT).contains(&ranges),
            "cores x ranges per core must be 1..={SLOT_COUNT}"
        );
        let range_by_slot = (0..SLOT_COUNT)
            .map(|slot| (slot * ranges / SLOT_COUNT) as u16)
            .collect::<Box<[u16]>>();
        SlotMap {
            range_by_slot,
            ranges_per_core,
            cores,
        }
    }

    /// The range that owns `slot`.
    #[inline]
    pub fn owner(&self, slot: Slot) -> RangeId {
        usize::from(self.range_by_slot[usize::from(slot)])
    }

    /// The core that hosts `range`.
    #[inline]
    pub fn core_of(&self, range: RangeId) -> CoreId {
        range / self.ranges_per_core
    }

    /// Number of cores ranges are placed on.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Number of ranges (every slot belongs to one).
    pub fn ranges(&self) -> usize {
        self.cores * self.ranges_per_core
    }

    /// Ranges each core hosts.
    pub fn ranges_per_core(&self) -> usize {
        self.ranges_per_core
    }

    /// The ranges `core` hosts (contiguous).
    pub fn ranges_of(&self, core: CoreId) -> std::ops::Range<RangeId> {
        core * self.ranges_per_core..(core + 1) * self.ranges_per_core
    }

    /// The contiguous span of slots `range` owns.
    pub fn slot_range(&self, range: RangeId) -> std::ops::Range<usize> {
        let start = self
            .range_by_slot
            .partition_point(|&owner| usize::from(owner) < range);
        let end = self
            .range_by_slot
            .partition_point(|&owner| usize::from(owner) <= range);
        start..end
    }

    /// The contiguous span of slots of every range `core` hosts.
    pub fn core_slot_range(&self, core: CoreId) -> std::ops::Range<usize> {
        let ranges = self.ranges_of(core);
        self.slot_range(ranges.start).start..self.slot_range(ranges.end - 1).end
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

    #[test]
    fn several_ranges_per_core_are_placed_in_contiguous_blocks() {
        for (cores, per_core) in [(1, 4), (2, 2), (3, 5), (2, 256)] {
            let map = SlotMap::placed(cores, per_core);
            assert_eq!(map.ranges(), cores * per_core);
            let mut next_slot = 0;
            for core in 0..cores {
                assert_eq!(map.core_slot_range(core).start, next_slot);
                for range in map.ranges_of(core) {
                    assert_eq!(map.core_of(range), core);
                    let slots = map.slot_range(range);
                    assert_eq!(slots.start, next_slot, "range {range} follows the last");
                    assert!(!slots.is_empty());
                    assert!(slots.clone().all(|slot| map.owner(slot as Slot) == range));
                    next_slot = slots.end;
                }
                assert_eq!(map.core_slot_range(core).end, next_slot);
            }
            assert_eq!(next_slot, SLOT_COUNT);
        }
    }
}
