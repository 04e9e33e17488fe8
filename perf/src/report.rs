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
    /// Median server CPU per operation, when the runs measured it.
    cpu_us_per_op: Option<f64>,
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
        cpu_us_per_op: {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| r.server_cpu_us_per_op).collect();
            (!values.is_empty()).then(|| median(&mut values))
        },
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// One bar group of a chart: a configuration and each target's value.
struct ChartRow {
    label: String,
    values: Vec<(String, f64)>,
}

/// Writes a grouped bar chart as a self-contained SVG (no font or drawing
/// library needed: the browser renders the text).
fn write_bar_chart(path: &Path, title: &str, unit: &str, rows: &[ChartRow]) -> anyhow::Result<()> {
    use std::fmt::Write;
    let colors = ["#2f6fde", "#e0533d", "#3aa655", "#a05ad6"];
    let targets: Vec<&str> = {
        let mut targets: Vec<&str> = rows
            .iter()
            .flat_map(|r| r.values.iter().map(|(t, _)| t.as_str()))
            .collect();
        targets.sort();
        targets.dedup();
        targets
    };
    let max = rows
        .iter()
        .flat_map(|r| r.values.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, top, row_height, bar_width) =
        (330.0, 50.0, 18.0 * targets.len() as f64 + 14.0, 520.0);
    let height = top + row_height * rows.len() as f64 + 40.0;
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + bar_width + 120.0
    )?;
    writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{title}</text>"#
    )?;
    for (i, target) in targets.iter().enumerate() {
        let x = left + 140.0 * i as f64;
        writeln!(
            svg,
            r#"<rect x="{x}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="41">{target}</text>"#,
            colors[i % colors.len()],
            x + 16.0
        )?;
    }
    for (r, row) in rows.iter().enumerate() {
        let y = top + row_height * r as f64;
        writeln!(
            svg,
            r#"<text x="10" y="{}">{}</text>"#,
            y + row_height / 2.0,
            row.label
        )?;
        for (i, target) in targets.iter().enumerate() {
            let Some((_, value)) = row.values.iter().find(|(t, _)| t == target) else {
                continue;
            };
            let width = bar_width * value / max;
            let bar_y = y + 4.0 + 18.0 * i as f64;
            writeln!(
                svg,
                r#"<rect x="{left}" y="{bar_y}" width="{width:.1}" height="15" fill="{}"/><text x="{:.1}" y="{}">{value:.3} {unit}</text>"#,
                colors[i % colors.len()],
                left + width + 4.0,
                bar_y + 12.0
            )?;
        }
    }
    writeln!(svg, "</svg>")?;
    std::fs::write(path, svg)?;
    Ok(())
}

/// Prints the table for the JSON lines in `path` and draws its charts next
/// to it (`<stem>.throughput.svg`, `<stem>.p99.svg`).
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
        "{:<42} {:<9} {:>3} {:>10} {:>19} {:>8} {:>8} {:>8} {:>6} {:>9}",
        "configuration",
        "target",
        "n",
        "ops/s",
        "ops/s min-max",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "cpu us/op"
    );
    let mut throughput_rows = Vec::new();
    let mut p99_rows = Vec::new();
    for (config, targets) in &groups {
        let mut summaries = BTreeMap::new();
        for (target, runs) in targets {
            let s = summarise(runs);
            println!(
                "{:<42} {:<9} {:>3} {:>10.0} {:>9.0}-{:<9.0} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>9}",
                config,
                target,
                s.rounds,
                s.ops,
                s.ops_min,
                s.ops_max,
                s.p50_us / 1000.0,
                s.p99_us / 1000.0,
                s.p999_us / 1000.0,
                s.errors,
                s.cpu_us_per_op
                    .map_or_else(|| "-".to_string(), |cpu| format!("{cpu:.2}"))
            );
            summaries.insert(target.clone(), s);
        }
        let label = config.split_whitespace().collect::<Vec<_>>().join(" ");
        throughput_rows.push(ChartRow {
            label: label.clone(),
            values: summaries
                .iter()
                .map(|(t, s)| (t.clone(), s.ops / 1000.0))
                .collect(),
        });
        p99_rows.push(ChartRow {
            label,
            values: summaries
                .iter()
                .map(|(t, s)| (t.clone(), s.p99_us / 1000.0))
                .collect(),
        });
        if let (Some(ours), Some(peer)) = (
            summaries.get("tinkerdb"),
            summaries
                .iter()
                .find(|(t, _)| t.as_str() != "tinkerdb")
                .map(|(_, s)| s),
        ) {
            let cpu_ratio = ours
                .cpu_us_per_op
                .zip(peer.cpu_us_per_op)
                .map_or_else(String::new, |(ours, peer)| format!("{:.2}x", ours / peer));
            println!(
                "{:<42} {:<9} {:>3} {:>9.2}x {:>19} {:>7.2}x {:>7.2}x {:>7.2}x {:>6} {:>9}",
                "",
                "ratio",
                "",
                ours.ops / peer.ops,
                "(tinkerdb/peer)",
                ours.p50_us / peer.p50_us,
                ours.p99_us / peer.p99_us,
                ours.p999_us / peer.p999_us,
                "",
                cpu_ratio
            );
        }
    }
    let stem = path.with_extension("");
    write_bar_chart(
        &stem.with_extension("throughput.svg"),
        "Throughput (median of rounds)",
        "k ops/s",
        &throughput_rows,
    )?;
    write_bar_chart(
        &stem.with_extension("p99.svg"),
        "p99 latency (median of rounds)",
        "ms",
        &p99_rows,
    )?;
    println!(
        "charts: {} and {}",
        stem.with_extension("throughput.svg").display(),
        stem.with_extension("p99.svg").display()
    );
    Ok(())
}
