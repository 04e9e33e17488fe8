//! Which nodes replicate each range: the cluster's range layout, fixed when
//! the cluster is created.
//!
//! A cluster of at most `replication_factor` seed nodes replicates every
//! range on every node (the layout is *full*: adding a node adds a replica
//! of everything, as before layouts existed). A larger cluster places each
//! range's replicas on `replication_factor` of its nodes with the
//! placement planner ([`placement::place_initial`]: replica and leader
//! counts per node within one of each other), so each node holds about
//! `replication_factor / nodes` of the data, and capacity grows with the
//! node count. A node that does not replicate a range forwards that range's
//! requests to one that does (`coord::forward`); clients see no difference.
//!
//! Every seed node computes the same layout from the same inputs (the seed
//! ids, the range count, the replication factor): the planner is
//! deterministic, so no node has to tell the others. Each node records the
//! layout in its data directory ([`LAYOUT_FILE`]) before its groups start,
//! and a restart reads it back instead of planning again, so a changed
//! configuration cannot silently change which ranges a data directory
//! holds: a different `replication_factor` is refused.
//!
//! What is not built yet (the issue "Scale-out"): a partial layout is fixed
//! for the cluster's life. Moving a replica between nodes, and so adding or
//! removing a node of a partial cluster, needs the scheduler, which will
//! keep the range table in the cluster metadata group (`cluster::meta`)
//! and change it replica by replica; until then the admin API refuses both
//! with `unsupported`.

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tinkerdb_replication::NodeId;

use crate::cluster::placement::{self, NewRange, NodeInfo};
use crate::slots::RangeId;

/// The file in the data directory that records the node's range layout
/// (JSON [`RangeLayout`]).
pub const LAYOUT_FILE: &str = "RANGES";

/// The version of [`LAYOUT_FILE`]'s format.
pub const LAYOUT_FORMAT: u32 = 1;

/// The cluster's range layout as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLayout {
    /// [`LAYOUT_FORMAT`].
    pub format: u32,
    /// Replicas per range the cluster was created with.
    pub replication_factor: usize,
    /// The replicas of each range, by range id, each list starting with
    /// the node the range's first leader is nudged to; `None` when every
    /// node replicates every range (a full layout).
    pub replicas: Option<Vec<Vec<NodeId>>>,
}

impl RangeLayout {
    /// The layout of a new cluster of `seeds` (node ids) with `ranges`
    /// ranges: full when there are at most `replication_factor` seeds,
    /// otherwise placed by [`placement::place_initial`]. The same inputs
    /// give the same layout on every node.
    pub fn plan(
        seeds: &[NodeId],
        ranges: usize,
        replication_factor: usize,
    ) -> anyhow::Result<RangeLayout> {
        if seeds.len() <= replication_factor {
            return Ok(RangeLayout::full(replication_factor));
        }
        let mut nodes: Vec<NodeId> = seeds.to_vec();
        nodes.sort_unstable();
        let infos: Vec<NodeInfo> = nodes.iter().map(|&id| NodeInfo::up(id)).collect();
        let new_ranges: Vec<NewRange> = (0..ranges)
            .map(|id| NewRange {
                id: id as u64,
                keys: 0,
            })
            .collect();
        let layout = placement::place_initial(&infos, &new_ranges, replication_factor)
            .map_err(|error| anyhow!("cannot place the ranges on nodes {nodes:?}: {error}"))?;
        let mut replicas = vec![Vec::new(); ranges];
        for range in layout.ranges {
            let mut nodes = range.replicas;
            nodes.sort_unstable();
            // The planned leader first: the node nudged to lead at start.
            if let Some(leader) = range.leader {
                nodes.retain(|&node| node != leader);
                nodes.insert(0, leader);
            }
            replicas[range.id as usize] = nodes;
        }
        Ok(RangeLayout {
            format: LAYOUT_FORMAT,
            replication_factor,
            replicas: Some(replicas),
        })
    }

    /// Every range on every node.
    pub fn full(replication_factor: usize) -> RangeLayout {
        RangeLayout {
            format: LAYOUT_FORMAT,
            replication_factor,
            replicas: None,
        }
    }

    /// Whether every node replicates every range.
    pub fn is_full(&self) -> bool {
        self.replicas.is_none()
    }

    /// Whether `node` replicates `range`.
    pub fn replicates(&self, node: NodeId, range: RangeId) -> bool {
        match &self.replicas {
            None => true,
            Some(replicas) => replicas
                .get(range)
                .is_some_and(|nodes| nodes.contains(&node)),
        }
    }

    /// The nodes replicating `range` (first: its preferred first leader);
    /// `None` in a full layout (every node).
    pub fn replicas_of(&self, range: RangeId) -> Option<&[NodeId]> {
        self.replicas
            .as_ref()
            .and_then(|replicas| replicas.get(range))
            .map(Vec::as_slice)
    }

    /// The layout recorded in `data_dir`, or, on a first start, the one
    /// planned for `seeds` (a joining node, `seeds` empty, takes a full
    /// layout: only a full cluster accepts a join), recorded durably
    /// before it is returned. A data directory that already holds Raft
    /// state but no layout (`has_raft_state`: written by a version before
    /// layouts, when every node held every range) takes a full layout
    /// whatever the seeds: planning a partial one would make the node drop
    /// the ranges it was not given. Refuses a recorded layout of another
    /// replication factor or range count, or a file it cannot read.
    pub fn load_or_plan(
        data_dir: &Path,
        seeds: &[NodeId],
        ranges: usize,
        replication_factor: usize,
        has_raft_state: bool,
    ) -> anyhow::Result<RangeLayout> {
        let path = data_dir.join(LAYOUT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let layout: RangeLayout = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a range layout", path.display()))?;
                layout.check(ranges, replication_factor).with_context(|| {
                    format!("{} does not match this node's settings", path.display())
                })?;
                Ok(layout)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let layout = match seeds.is_empty() || has_raft_state {
                    true => RangeLayout::full(replication_factor),
                    false => RangeLayout::plan(seeds, ranges, replication_factor)?,
                };
                layout
                    .save(data_dir)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(layout)
            }
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Checks a recorded layout against the node's settings.
    fn check(&self, ranges: usize, replication_factor: usize) -> anyhow::Result<()> {
        if self.format != LAYOUT_FORMAT {
            anyhow::bail!(
                "format {} (this version reads {LAYOUT_FORMAT})",
                self.format
            );
        }
        if self.replication_factor != replication_factor {
            anyhow::bail!(
                "it was created with replication_factor = {}, not {replication_factor}; the \
                 replication factor is fixed for a cluster's data",
                self.replication_factor
            );
        }
        if let Some(replicas) = &self.replicas {
            if replicas.len() != ranges {
                anyhow::bail!("it lists {} ranges, this node has {ranges}", replicas.len());
            }
            for (range, nodes) in replicas.iter().enumerate() {
                let mut distinct = nodes.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if nodes.is_empty() || distinct.len() != nodes.len() {
                    anyhow::bail!("range {range} has replicas {nodes:?}");
                }
            }
        }
        Ok(())
    }

    /// Writes the layout whole or not at all, durably.
    fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let temp = data_dir.join(format!("{LAYOUT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        let text = serde_json::to_vec_pretty(self).expect("a layout serialises");
        std::io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
        std::fs::rename(&temp, data_dir.join(LAYOUT_FILE))?;
        tinkerdb_storage::wal::sync_dir(data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_replication_factor_of_seeds_replicate_everything() {
        for seeds in [vec![1], vec![1, 2, 3]] {
            let layout = RangeLayout::plan(&seeds, 8, 3).unwrap();
            assert!(layout.is_full());
            assert!((0..8).all(|range| seeds.iter().all(|&n| layout.replicates(n, range))));
        }
    }

    #[test]
    fn more_seeds_get_a_balanced_partial_layout_the_same_on_every_node() {
        let seeds = [5, 1, 4, 2, 3];
        let layout = RangeLayout::plan(&seeds, 16, 3).unwrap();
        // Seeds listed in another order plan the same layout.
        assert_eq!(layout, RangeLayout::plan(&[1, 2, 3, 4, 5], 16, 3).unwrap());
        let replicas = layout.replicas.as_ref().unwrap();
        let mut per_node = std::collections::BTreeMap::<NodeId, usize>::new();
        let mut leaders = std::collections::BTreeMap::<NodeId, usize>::new();
        for nodes in replicas {
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            let mut distinct = nodes.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "two replicas on one node: {nodes:?}");
            for node in nodes {
                *per_node.entry(*node).or_default() += 1;
            }
            *leaders.entry(nodes[0]).or_default() += 1;
        }
        // 48 replicas on 5 nodes: 9 or 10 each; 16 leaders: 3 or 4 each.
        assert_eq!(per_node.len(), 5);
        assert!(
            per_node.values().all(|&n| (9..=10).contains(&n)),
            "{per_node:?}"
        );
        assert!(
            leaders.values().all(|&n| (3..=4).contains(&n)),
            "{leaders:?}"
        );
    }

    #[test]
    fn a_recorded_layout_is_read_back_and_another_factor_is_refused() {
        let dir = std::env::temp_dir().join(format!("layout-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = RangeLayout::load_or_plan(&dir, &[1, 2, 3, 4, 5], 8, 3, false).unwrap();
        assert!(!first.is_full());
        // Other seeds on a restart: the recorded layout stands.
        let again = RangeLayout::load_or_plan(&dir, &[1, 2, 3], 8, 3, false).unwrap();
        assert_eq!(first, again);
        let refused = RangeLayout::load_or_plan(&dir, &[1, 2, 3, 4, 5], 8, 5, false).unwrap_err();
        assert!(
            format!("{refused:#}").contains("replication_factor = 3"),
            "{refused:#}"
        );
        let refused = RangeLayout::load_or_plan(&dir, &[1, 2, 3, 4, 5], 16, 3, false).unwrap_err();
        assert!(
            format!("{refused:#}").contains("lists 8 ranges"),
            "{refused:#}"
        );
        std::fs::write(dir.join(LAYOUT_FILE), b"{not json").unwrap();
        assert!(RangeLayout::load_or_plan(&dir, &[1, 2, 3], 8, 3, false).is_err());
        // A node of five from before layouts (every range on every node):
        // it stays full rather than drop the ranges a plan would not give it.
        std::fs::remove_file(dir.join(LAYOUT_FILE)).unwrap();
        let upgraded = RangeLayout::load_or_plan(&dir, &[1, 2, 3, 4, 5], 8, 3, true).unwrap();
        assert!(upgraded.is_full());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
