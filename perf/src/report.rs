//! The comparison table: for each configuration (label, mix, connections,
//! pipeline, ...), the median of each target's rounds, the min-max spread of
//! throughput, and TinkerDB / peer ratios.

use std::collections::BTreeMap;
use std::path::Path;

use crate::RunResult;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

struct Summary {
    rounds: usize,
    ops: f64,
    ops_min: f64,
    ops_max: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
}

fn summarise(runs: &[&RunResult]) -> Summary {
    let pick = |f: fn(&RunResult) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(|r| f(r)).collect();
        median(&mut values)
    };
    Summary {
        rounds: runs.len(),
        ops: pick(|r| r.ops_per_second),
        ops_min: runs
            .iter()
            .map(|r| r.ops_per_second)
            .fold(f64::INFINITY, f64::min),
        ops_max: runs.iter().map(|r| r.ops_per_second).fold(0.0, f64::max),
        p50_us: pick(|r| r.p50_us as f64),
        p99_us: pick(|r| r.p99_us as f64),
        p999_us: pick(|r| r.p999_us as f64),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// Prints the table for the JSON lines in `path`.
pub fn print(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let results: Vec<RunResult> = text
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<&RunResult>>> = BTreeMap::new();
    for result in &results {
        let rate = if result.rate > 0 {
            format!(" rate={}", result.rate)
        } else {
            String::new()
        };
        let config = format!(
            "{:<8} {:<4} {:<8} c={:<3} p={:<3}{}",
            result.label,
            result.mix,
            result.distribution,
            result.connections,
            result.pipeline,
            rate
        );
        groups
            .entry(config)
            .or_default()
            .entry(result.target.clone())
            .or_default()
            .push(result);
    }
    if let Some(machine) = results
        .first()
        .map(|r| r.machine.as_str())
        .filter(|m| !m.is_empty())
    {
        println!("machine: {machine}");
    }
    println!(
        "{:<42} {:<9} {:>3} {:>10} {:>19} {:>8} {:>8} {:>8} {:>6}",
        "configuration",
        "target",
        "n",
        "ops/s",
        "ops/s min-max",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors"
    );
    for (config, targets) in &groups {
        let mut summaries = BTreeMap::new();
        for (target, runs) in targets {
            let s = summarise(runs);
            println!(
                "{:<42} {:<9} {:>3} {:>10.0} {:>9.0}-{:<9.0} {:>8.3} {:>8.3} {:>8.3} {:>6}",
                config,
                target,
                s.rounds,
                s.ops,
                s.ops_min,
                s.ops_max,
                s.p50_us / 1000.0,
                s.p99_us / 1000.0,
                s.p999_us / 1000.0,
                s.errors
            );
            summaries.insert(target.clone(), s);
        }
        if let (Some(ours), Some(peer)) = (
            summaries.get("tinkerdb"),
            summaries
                .iter()
                .find(|(t, _)| t.as_str() != "tinkerdb")
                .map(|(_, s)| s),
        ) {
            println!(
                "{:<42} {:<9} {:>3} {:>9.2}x {:>19} {:>7.2}x {:>7.2}x {:>7.2}x",
                "",
                "ratio",
                "",
                ours.ops / peer.ops,
                "(tinkerdb/peer)",
                ours.p50_us / peer.p50_us,
                ours.p99_us / peer.p99_us,
                ours.p999_us / peer.p999_us
            );
        }
    }
    Ok(())
}
