//! The dashboard's live series: once a second the sampler asks every core
//! for its report and turns the change since the previous report into one
//! point per core and one for the node (requests per second and latency
//! percentiles of the requests answered in that second).
//!
//! Percentiles come from the difference of two cumulative hdrhistograms, so
//! they describe exactly the requests of the interval, and the node's point
//! merges the cores' histograms (percentiles cannot be averaged).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use utoipa::ToSchema;

use crate::link::{now_unix_ms, CoreRequest, CoreResponse, NodeHandle};
use crate::report::{latency_histogram, CoreReport};

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Samples kept (five minutes at one a second).
pub const MAX_SAMPLES: usize = 300;

/// How long the sampler waits for a core's report before skipping a tick.
pub const REPORT_TIMEOUT: Duration = Duration::from_millis(800);

/// Throughput and latency over one interval.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Point {
    /// Requests answered per second.
    pub ops_per_sec: f64,
    /// Errors answered per second.
    pub errors_per_sec: f64,
    /// Median latency, microseconds (0 without requests).
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
}

/// One core's point.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CorePoint {
    /// The core.
    pub core: usize,
    /// Its figures.
    #[serde(flatten)]
    pub point: Point,
}

/// One second of the node.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sample {
    /// Sequence number, increasing by one per sample.
    pub seq: u64,
    /// End of the interval, Unix milliseconds.
    pub unix_ms: u64,
    /// The whole node.
    pub node: Point,
    /// Each core.
    pub cores: Vec<CorePoint>,
}

/// The last [`MAX_SAMPLES`] samples.
#[derive(Debug, Default)]
pub struct LiveSeries {
    samples: VecDeque<Sample>,
    next_seq: u64,
}

impl LiveSeries {
    /// Samples newer than `since` (all if `None`), oldest first.
    pub fn since(&self, since: Option<u64>) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|sample| since.is_none_or(|since| sample.seq > since))
            .cloned()
            .collect()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    fn push(&mut self, unix_ms: u64, node: Point, cores: Vec<CorePoint>) {
        self.next_seq += 1;
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            seq: self.next_seq,
            unix_ms,
            node,
            cores,
        });
    }
}

fn point(requests: u64, errors: u64, latency: &Histogram<u64>, seconds: f64) -> Point {
    let percentile = |q: f64| {
        if latency.is_empty() {
            0
        } else {
            latency.value_at_quantile(q)
        }
    };
    Point {
        ops_per_sec: requests as f64 / seconds,
        errors_per_sec: errors as f64 / seconds,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
    }
}

/// Runs the sampler until the runtime stops.
pub async fn sample_forever(node: NodeHandle, series: Arc<Mutex<LiveSeries>>) {
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(Instant, Vec<CoreReport>)> = None;
    loop {
        ticker.tick().await;
        let reports = match node.call_all(|| CoreRequest::Report, REPORT_TIMEOUT).await {
            Ok(answers) => answers
                .into_iter()
                .filter_map(|answer| match answer {
                    CoreResponse::Report(report) => Some(*report),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(error) => {
                tracing::debug!(%error, "live sample skipped");
                continue;
            }
        };
        let now = Instant::now();
        if let Some((then, before)) = &previous {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            let mut node_latency = latency_histogram();
            let (mut node_requests, mut node_errors) = (0, 0);
            let mut cores = Vec::with_capacity(reports.len());
            for (report, before) in reports.iter().zip(before) {
                let requests = report.requests_total.saturating_sub(before.requests_total);
                let errors = report.errors_total.saturating_sub(before.errors_total);
                let mut latency = report.request_latency.clone();
                // Cumulative histograms only grow, so this cannot underflow.
                let _ = latency.subtract(&before.request_latency);
                let _ = node_latency.add(&latency);
                node_requests += requests;
                node_errors += errors;
                cores.push(CorePoint {
                    core: report.core,
                    point: point(requests, errors, &latency, seconds),
                });
            }
            let node_point = point(node_requests, node_errors, &node_latency, seconds);
            series
                .lock()
                .expect("live series lock")
                .push(now_unix_ms(), node_point, cores);
        }
        previous = Some((now, reports));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::record_micros;

    #[test]
    fn keeps_the_newest_samples_and_answers_since() {
        let mut series = LiveSeries::default();
        for _ in 0..MAX_SAMPLES + 5 {
            series.push(0, Point::default(), Vec::new());
        }
        let all = series.since(None);
        assert_eq!(all.len(), MAX_SAMPLES);
        assert_eq!(all[0].seq, 6);
        assert_eq!(series.since(Some(300)).len(), 5);
        assert_eq!(series.latest().unwrap().seq, 305);
    }

    #[test]
    fn percentiles_of_an_interval() {
        let mut latency = latency_histogram();
        record_micros(&mut latency, 100, 990);
        record_micros(&mut latency, 5_000, 10);
        let p = point(1000, 0, &latency, 2.0);
        assert_eq!(p.ops_per_sec, 500.0);
        assert!((99..=101).contains(&p.p50_us), "{p:?}");
        assert!((99..=101).contains(&p.p99_us), "{p:?}");
        assert!((4_950..=5_050).contains(&p.p999_us), "{p:?}");
        assert_eq!(point(0, 0, &latency_histogram(), 1.0).p99_us, 0);
    }
}
