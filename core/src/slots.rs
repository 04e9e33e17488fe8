//! Which range owns which hash slot, and which core hosts which range.
//!
//! A **range** is a contiguous span of hash slots with its own store (and,
//! in cluster mode, its own Raft group, whose id is the range id): the unit
//! requests are routed to. A core hosts one or more ranges. The map is
//! data, not `hash % cores`: a node splits the slots into
//! `cores x ranges_per_core` equal contiguous ranges and gives each core a
//! contiguous block of them (its *home* ranges); a range can then move to
//! another core at runtime (`cluster::moves`), which changes only the
//! range -> core table here. Moves are recorded in the node's
//! [`PLACEMENT_FILE`] so a restarted node hosts each range where it was.
//!
//! Invariants: every slot has exactly one range (fixed for the node's
//! life), every range exactly one core at a time; each range's slots are
//! contiguous (a cursor scan step relies on a range's slots being one
//! span). The range -> core table is read by every core without locks (one
//! atomic per range); only a range move writes it, after the range runs on
//! its new core, so a reader that sees the new core finds the range there,
//! and one that saw the old core is sent on by it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use tinkerdb_storage::{Slot, SLOT_COUNT};

/// A core's index on this node, `0..cores`.
pub type CoreId = usize;

/// A range's id, `0..ranges`: in cluster mode also its Raft group's id.
pub type RangeId = usize;

/// Most ranges one core may host (`cluster.ranges_per_core`).
pub const MAX_RANGES_PER_CORE: usize = 256;

/// The file in the data directory that records the ranges hosted away
/// from their home core (one `range core` pair per line).
pub const PLACEMENT_FILE: &str = "PLACEMENT";

/// Slot -> owning range -> hosting core. Shared by all cores; the slot
/// table is immutable, the range -> core table changes when a range moves.
#[derive(Debug)]
pub struct SlotMap {
    range_by_slot: Box<[u16]>,
    core_by_range: Box<[AtomicU16]>,
    /// Each range's epoch on this node (cluster mode; 0 on a standalone
    /// node): see [`SlotMap::epoch`].
    epoch_by_range: Box<[AtomicU64]>,
    /// Cluster mode: the ranges this node does not replicate (the
    /// cluster's layout places them on other nodes, `cluster::layout`);
    /// their requests are forwarded (`coord::forward`).
    remote_by_range: Box<[AtomicBool]>,
    /// Held while the placement file is written.
    placement_lock: std::sync::Mutex<()>,
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
        assert!(cores <= usize::from(u16::MAX), "at most 65,535 cores");
        let range_by_slot = (0..SLOT_COUNT)
            .map(|slot| (slot * ranges / SLOT_COUNT) as u16)
            .collect::<Box<[u16]>>();
        let core_by_range = (0..ranges)
            .map(|range| AtomicU16::new((range / ranges_per_core) as u16))
            .collect();
        SlotMap {
            range_by_slot,
            epoch_by_range: (0..ranges).map(|_| AtomicU64::new(0)).collect(),
            remote_by_range: (0..ranges).map(|_| AtomicBool::new(false)).collect(),
            placement_lock: std::sync::Mutex::new(()),
            core_by_range,
            ranges_per_core,
            cores,
        }
    }

    /// The range that owns `slot`.
    #[inline]
    pub fn owner(&self, slot: Slot) -> RangeId {
        usize::from(self.range_by_slot[usize::from(slot)])
    }

    /// The core that hosts `range` now.
    #[inline]
    pub fn core_of(&self, range: RangeId) -> CoreId {
        usize::from(self.core_by_range[range].load(Ordering::Acquire))
    }

    /// `range`'s epoch on this node: the log index of the newest
    /// membership of its Raft group this node has applied (0 before any,
    /// and on a standalone node). Every change of the range's replicas
    /// raises it; a change of its slots will. A request routed with an
    /// older epoch is answered `StaleRoute` (`coord::routes`). Moving the
    /// range between this node's cores does not change it: routing inside
    /// a node is the node's business.
    pub fn epoch(&self, range: RangeId) -> u64 {
        self.epoch_by_range[range].load(Ordering::Acquire)
    }

    /// Raises `range`'s epoch to `epoch` (a membership applied; replays
    /// after a restart or a move apply older ones again: never lowered).
    pub fn raise_epoch(&self, range: RangeId, epoch: u64) {
        self.epoch_by_range[range].fetch_max(epoch, Ordering::AcqRel);
    }

    /// The core `range` is placed on at first (its home).
    pub fn home_core(&self, range: RangeId) -> CoreId {
        range / self.ranges_per_core
    }

    /// Records that `range` is hosted by `core` from now on (a move; the
    /// range must already run there).
    pub fn set_core(&self, range: RangeId, core: CoreId) {
        assert!(core < self.cores, "core {core} of {}", self.cores);
        self.core_by_range[range].store(core as u16, Ordering::Release);
    }

    /// Number of cores ranges are placed on.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Number of ranges (every slot belongs to one).
    pub fn ranges(&self) -> usize {
        self.core_by_range.len()
    }

    /// Ranges each core hosts at first.
    pub fn ranges_per_core(&self) -> usize {
        self.ranges_per_core
    }

    /// The ranges `core` hosts now, in id order (a range this node does
    /// not replicate is hosted by no core).
    pub fn ranges_of(&self, core: CoreId) -> Vec<RangeId> {
        (0..self.ranges())
            .filter(|&range| self.core_of(range) == core && !self.is_remote(range))
            .collect()
    }

    /// Whether `range` is replicated by other nodes only: no core of this
    /// node hosts it, and its requests are forwarded to a node that does.
    /// ([`Self::core_of`] still names a core: the range's home core, whose
    /// peer connections carry the forwarded requests.)
    #[inline]
    pub fn is_remote(&self, range: RangeId) -> bool {
        self.remote_by_range[range].load(Ordering::Acquire)
    }

    /// Marks `range` as replicated by other nodes only (set before the
    /// cores start, from the cluster's layout).
    pub fn set_remote(&self, range: RangeId) {
        self.remote_by_range[range].store(true, Ordering::Release);
    }

    /// The ranges whose home is `core` (contiguous).
    pub fn home_ranges(&self, core: CoreId) -> std::ops::Range<RangeId> {
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

    /// The contiguous span of slots of the ranges whose home is `core`.
    pub fn home_slot_range(&self, core: CoreId) -> std::ops::Range<usize> {
        let ranges = self.home_ranges(core);
        self.slot_range(ranges.start).start..self.slot_range(ranges.end - 1).end
    }

    /// The ranges hosted away from their home core, with their core.
    pub fn moved(&self) -> Vec<(RangeId, CoreId)> {
        self.moved_with(None)
    }

    /// [`Self::moved`], with `change` (a range and its new core) applied.
    fn moved_with(&self, change: Option<(RangeId, CoreId)>) -> Vec<(RangeId, CoreId)> {
        (0..self.ranges())
            .map(|range| match change {
                Some((changed, core)) if changed == range => (range, core),
                _ => (range, self.core_of(range)),
            })
            .filter(|&(range, core)| core != self.home_core(range))
            .collect()
    }

    /// Applies the placement recorded in `data_dir` (if any), checked
    /// against this map's ranges and cores.
    pub fn load_placement(&self, data_dir: &Path) -> Result<(), String> {
        let path = data_dir.join(PLACEMENT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad =
                |why: &str| format!("{} line {}: {why}: {line:?}", path.display(), number + 1);
            let mut fields = line.split_whitespace().map(str::parse::<usize>);
            let (Some(Ok(range)), Some(Ok(core)), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `range core`"));
            };
            if range >= self.ranges() || core >= self.cores {
                return Err(bad(&format!(
                    "this node has ranges 0..{} and cores 0..{}",
                    self.ranges(),
                    self.cores
                )));
            }
            self.set_core(range, core);
        }
        Ok(())
    }

    /// Records the current placement in `data_dir`, durably (a new file
    /// written, synced and renamed over the old one, the directory synced).
    pub fn save_placement(&self, data_dir: &Path) -> std::io::Result<()> {
        self.write_placement(data_dir, None)
    }

    /// Records the current placement with `range` on `core` (a move about
    /// to switch), durably, before the route itself switches.
    pub fn save_placement_with(
        &self,
        data_dir: &Path,
        range: RangeId,
        core: CoreId,
    ) -> std::io::Result<()> {
        self.write_placement(data_dir, Some((range, core)))
    }

    fn write_placement(
        &self,
        data_dir: &Path,
        change: Option<(RangeId, CoreId)>,
    ) -> std::io::Result<()> {
        use std::io::Write;
        // One writer at a time (the cores of a node share the file); the
        // text is taken under the lock, so no save undoes another's move.
        let _one_writer = self
            .placement_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::from(
            "# Ranges hosted away from their home core: `range core` per line.\n\
             # Written by TinkerDB when a range moves; read at start.\n",
        );
        for (range, core) in self.moved_with(change) {
            text.push_str(&format!("{range} {core}\n"));
        }
        let path = data_dir.join(PLACEMENT_FILE);
        let temp = data_dir.join(format!("{PLACEMENT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// The move state of every range of a node, shared by its cores (see
/// `cluster::moves`): one word per range, free, *claimed* for a target
/// core (the source stopped the range for it) or *committed* (the target
/// is switching the route). The source's giving up and the target's
/// commit exclude each other, so one copy of a range runs at a time.
#[derive(Debug)]
pub struct MoveClaims {
    states: Box<[AtomicU32]>,
}

/// What [`MoveClaims::give_up`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The claim is withdrawn: the target will not take the range.
    Given,
    /// The target committed: its switch (or retreat) is under way.
    Committed,
    /// Nothing was claimed.
    Free,
}

const MOVE_FREE: u32 = 0;
const MOVE_COMMITTED: u32 = u32::MAX;

fn move_claimed(target: CoreId) -> u32 {
    1 + target as u32
}

impl MoveClaims {
    /// No move under way for any of `ranges` ranges.
    pub fn new(ranges: usize) -> MoveClaims {
        MoveClaims {
            states: (0..ranges).map(|_| AtomicU32::new(MOVE_FREE)).collect(),
        }
    }

    fn swap(&self, range: RangeId, from: u32, to: u32) -> bool {
        self.states[range]
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The source claims `range` for a move to `target`; false if a move
    /// of it is under way.
    pub fn claim(&self, range: RangeId, target: CoreId) -> bool {
        self.swap(range, MOVE_FREE, move_claimed(target))
    }

    /// The target commits the move of `range` to it; false if the source
    /// gave up.
    pub fn commit(&self, range: RangeId, target: CoreId) -> bool {
        self.swap(range, move_claimed(target), MOVE_COMMITTED)
    }

    /// The target could not switch after committing: back to claimed.
    pub fn uncommit(&self, range: RangeId, target: CoreId) {
        assert!(self.swap(range, MOVE_COMMITTED, move_claimed(target)));
    }

    /// The target switched the route: the move of `range` is over.
    pub fn finish(&self, range: RangeId) {
        assert!(self.swap(range, MOVE_COMMITTED, MOVE_FREE));
    }

    /// The source withdraws its claim on `range`, unless the target
    /// committed.
    pub fn give_up(&self, range: RangeId) -> GiveUp {
        loop {
            match self.states[range].load(Ordering::Acquire) {
                MOVE_FREE => return GiveUp::Free,
                MOVE_COMMITTED => return GiveUp::Committed,
                claimed if self.swap(range, claimed, MOVE_FREE) => return GiveUp::Given,
                _ => continue,
            }
        }
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
                assert_eq!(map.home_slot_range(core).start, next_slot);
                assert_eq!(
                    map.ranges_of(core),
                    map.home_ranges(core).collect::<Vec<_>>()
                );
                for range in map.home_ranges(core) {
                    assert_eq!(map.core_of(range), core);
                    let slots = map.slot_range(range);
                    assert_eq!(slots.start, next_slot, "range {range} follows the last");
                    assert!(!slots.is_empty());
                    assert!(slots.clone().all(|slot| map.owner(slot as Slot) == range));
                    next_slot = slots.end;
                }
                assert_eq!(map.home_slot_range(core).end, next_slot);
            }
            assert_eq!(next_slot, SLOT_COUNT);
        }
    }

    #[test]
    fn a_moved_range_is_recorded_and_read_back_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("tinkerdb-placement-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = SlotMap::placed(2, 2);
        map.load_placement(&dir).unwrap(); // no file: home placement
        assert_eq!(map.moved(), vec![]);
        map.set_core(1, 1);
        assert_eq!((map.core_of(1), map.home_core(1)), (1, 0));
        assert_eq!(map.ranges_of(1), vec![1, 2, 3]);
        map.save_placement(&dir).unwrap();
        let again = SlotMap::placed(2, 2);
        again.load_placement(&dir).unwrap();
        assert_eq!(again.moved(), vec![(1, 1)]);
        assert_eq!(again.ranges_of(0), vec![0]);
        // Moved home again: nothing recorded.
        again.set_core(1, 0);
        again.save_placement(&dir).unwrap();
        let home = SlotMap::placed(2, 2);
        home.load_placement(&dir).unwrap();
        assert_eq!(home.moved(), vec![]);
        for bad in ["1 7\n", "9 0\n", "1\n", "1 0 0\n", "x y\n"] {
            std::fs::write(dir.join(PLACEMENT_FILE), bad).unwrap();
            let error = SlotMap::placed(2, 2).load_placement(&dir).unwrap_err();
            assert!(error.contains("line 1"), "{bad:?}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
