//! `placement`: what the replica placement planner
//! (`tinkerdb_core::cluster::placement`) moves when one node joins a
//! balanced cluster, next to the ideal 1/(N+1) of all replicas and keys
//! (the issue "Scale-out" targets at most 1.1x). Pure computation, no
//! sockets: the same planner the scheduler will run, on a simulated
//! layout, so the figures are exact and the same on every machine.
//!
//! `cargo run --release -p tinkerdb-perf --bin placement` prints one line
//! per (N, G, key sizes) and the worst ratios.

use tinkerdb_core::cluster::placement::{simulate_add_node, synthetic_ranges, KeySizes};

/// Replicas per range.
const REPLICATION_FACTOR: usize = 3;
/// Mean keys per range of the synthetic layouts.
const MEAN_KEYS_PER_RANGE: u64 = 100_000;

fn main() {
    println!("adding one node to N balanced nodes holding G ranges (RF {REPLICATION_FACTOR})");
    println!(
        "{:>3} {:>5} {:>7} {:>9} {:>9} {:>8} {:>8}",
        "N", "G", "sizes", "moved", "ideal", "replica", "keys"
    );
    let mut worst = (0.0f64, 0.0f64);
    for nodes in 3..=12 {
        for ranges in [16, 64, 256, 1024] {
            for (name, sizes) in [
                ("equal", KeySizes::Equal),
                ("varied", KeySizes::Varied { seed: 7 }),
            ] {
                let layout = synthetic_ranges(ranges, MEAN_KEYS_PER_RANGE, sizes);
                let simulated =
                    simulate_add_node(nodes, &layout, REPLICATION_FACTOR).expect("a valid layout");
                let figures = simulated.figures;
                worst.0 = worst.0.max(figures.replica_ratio());
                worst.1 = worst.1.max(figures.keys_ratio());
                println!(
                    "{nodes:>3} {ranges:>5} {name:>7} {:>9} {:>9.2} {:>8.3} {:>8.3}",
                    figures.replicas_moved,
                    figures.ideal_replicas_moved,
                    figures.replica_ratio(),
                    figures.keys_ratio()
                );
            }
        }
    }
    println!(
        "worst ratio to the ideal: replicas {:.3}, keys {:.3} (target: at most 1.1)",
        worst.0, worst.1
    );
}
