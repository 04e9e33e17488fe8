//! `/metrics`: the node in the Prometheus text format.
//!
//! Built at scrape time from fresh core reports, as Prometheus metric
//! families (the `prometheus` crate's model and text encoder), so a scrape
//! always sees current values and nothing is kept twice. Latency histograms
//! are the cores' hdrhistograms read at fixed bucket bounds; their `_sum` is
//! the histogram's mean times its count (within the 1% precision of the
//! recording).
//!
//! Naming follows Prometheus conventions: `tinkerdb_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters, one label per dimension
//! (`core`, `tenant`).

use hdrhistogram::Histogram;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as PromHistogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::link::{now_unix_ms, NodeFacts, Usage};
use crate::report::CoreReport;
use crate::tenants_file::TenantSpec;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Everything one scrape renders.
pub struct Scrape<'a> {
    /// Static facts.
    pub facts: &'a NodeFacts,
    /// Every core's report, in core order.
    pub reports: &'a [CoreReport],
    /// Tenants, in id order.
    pub tenants: &'a [TenantSpec],
    /// Each tenant's usage summed over the cores, in id order.
    pub usage: &'a [Usage],
}

fn labels(pairs: &[(&str, String)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut label = LabelPair::default();
            label.set_name(name.to_string());
            label.set_value(value.clone());
            label
        })
        .collect()
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Family(family)
    }

    fn gauge(mut self, pairs: &[(&str, String)], value: f64) -> Family {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_gauge(gauge);
        self.0.mut_metric().push(metric);
        self
    }

    fn counter(mut self, pairs: &[(&str, String)], value: f64) -> Family {
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_counter(counter);
        self.0.mut_metric().push(metric);
        self
    }

    fn histogram(mut self, pairs: &[(&str, String)], micros: &Histogram<u64>) -> Family {
        let mut histogram = PromHistogram::default();
        histogram.set_sample_count(micros.len());
        histogram.set_sample_sum(micros.mean() * micros.len() as f64 / 1e6);
        let buckets = LATENCY_BUCKETS_SECONDS
            .iter()
            .map(|&bound| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                let bound_micros = (bound * 1e6) as u64;
                bucket.set_cumulative_count(if micros.is_empty() {
                    0
                } else {
                    micros.count_between(0, bound_micros)
                });
                bucket
            })
            .collect();
        histogram.set_bucket(buckets);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_histogram(histogram);
        self.0.mut_metric().push(metric);
        self
    }

    fn per_core(
        self,
        scrape: &Scrape<'_>,
        counter: bool,
        value: impl Fn(&CoreReport) -> f64,
    ) -> Family {
        scrape.reports.iter().fold(self, |family, report| {
            let pairs = [("core", report.core.to_string())];
            if counter {
                family.counter(&pairs, value(report))
            } else {
                family.gauge(&pairs, value(report))
            }
        })
    }
}

/// Resident memory of this process in bytes: `VmRSS` of
/// `/proc/self/status`, which the kernel gives in KiB whatever the page
/// size (`statm` counts pages, 4 KiB on x86-64 but 16 or 64 KiB on some
/// arm64 kernels).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Renders one scrape as Prometheus text.
pub fn render(scrape: &Scrape<'_>) -> String {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let facts = scrape.facts;
    let mut families = vec![
        Family::new(
            "tinkerdb_info",
            "Version and durability mode of this node (always 1).",
            GAUGE,
        )
        .gauge(
            &[
                ("version", facts.version.clone()),
                ("durability", facts.durability.clone()),
            ],
            1.0,
        ),
        Family::new(
            "tinkerdb_start_time_seconds",
            "Unix time at which the node started.",
            GAUGE,
        )
        .gauge(&[], facts.started_unix_ms as f64 / 1e3),
        Family::new(
            "tinkerdb_uptime_seconds",
            "Seconds since the node started.",
            GAUGE,
        )
        .gauge(
            &[],
            now_unix_ms().saturating_sub(facts.started_unix_ms) as f64 / 1e3,
        ),
        Family::new("tinkerdb_cores", "Cores (executors) serving.", GAUGE)
            .gauge(&[], facts.cores as f64),
        Family::new(
            "tinkerdb_resident_memory_bytes",
            "Resident memory of the process.",
            GAUGE,
        )
        .gauge(&[], resident_memory_bytes().unwrap_or(0) as f64),
        Family::new(
            "tinkerdb_requests_total",
            "Client requests answered, errors included.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.requests_total as f64),
        Family::new(
            "tinkerdb_request_errors_total",
            "Client requests answered with an error.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.errors_total as f64),
        scrape.reports.iter().fold(
            Family::new(
                "tinkerdb_request_errors_by_code_total",
                "Client requests answered with an error, by code: the flatbuffers \
                 protocol's ErrorCode names, Redis errors by their prefix (ERR, WRONGTYPE...).",
                COUNTER,
            ),
            |family, report| {
                report
                    .errors_by_code
                    .iter()
                    .fold(family, |family, (code, count)| {
                        let pairs = [("core", report.core.to_string()), ("code", code.clone())];
                        family.counter(&pairs, *count as f64)
                    })
            },
        ),
        Family::new(
            "tinkerdb_peer_requests_total",
            "Requests received from other cores.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.peer_requests_total as f64),
        Family::new(
            "tinkerdb_forwarded_requests_total",
            "Requests for ranges this node does not replicate, forwarded to a node that does.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.forwarded_requests_total as f64),
        Family::new(
            "tinkerdb_connections_accepted_total",
            "Client connections accepted.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.connections_total as f64),
        Family::new(
            "tinkerdb_connections_open",
            "Client connections open.",
            GAUGE,
        )
        .per_core(scrape, false, |r| r.connections_open as f64),
        Family::new("tinkerdb_keys", "Live keys.", GAUGE)
            .per_core(scrape, false, |r| r.keys as f64),
        Family::new(
            "tinkerdb_data_bytes",
            "Bytes of keys and values held.",
            GAUGE,
        )
        .per_core(scrape, false, |r| r.data_bytes as f64),
        Family::new(
            "tinkerdb_wal_written_bytes_total",
            "Bytes written to the WAL.",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.wal_bytes_written as f64),
        Family::new(
            "tinkerdb_wal_fsyncs_total",
            "WAL flushes (one write and one fdatasync each).",
            COUNTER,
        )
        .per_core(scrape, true, |r| r.wal_fsyncs as f64),
        Family::new(
            "tinkerdb_wal_poisoned",
            "1 once the WAL refuses writes after a failed write or fsync.",
            GAUGE,
        )
        .per_core(scrape, false, |r| f64::from(u8::from(r.wal_poisoned))),
        Family::new(
            "tinkerdb_last_snapshot_timestamp_seconds",
            "Unix time of the last snapshot installed (0: none).",
            GAUGE,
        )
        .per_core(scrape, false, |r| {
            r.last_snapshot.map_or(0.0, |s| s.unix_ms as f64 / 1e3)
        }),
        Family::new(
            "tinkerdb_last_snapshot_bytes",
            "Size of the last snapshot installed.",
            GAUGE,
        )
        .per_core(scrape, false, |r| {
            r.last_snapshot.map_or(0.0, |s| s.bytes as f64)
        }),
    ];
    let mut latency = Family::new(
        "tinkerdb_request_duration_seconds",
        "Server-side request latency: from reading a request to writing its answer.",
        HISTOGRAM,
    );
    let mut fsync = Family::new(
        "tinkerdb_wal_fsync_duration_seconds",
        "Duration of one WAL flush (write plus fdatasync).",
        HISTOGRAM,
    );
    for report in scrape.reports {
        let pairs = [("core", report.core.to_string())];
        latency = latency.histogram(&pairs, &report.request_latency);
        fsync = fsync.histogram(&pairs, &report.wal_fsync_latency);
    }
    families.push(latency);
    families.push(fsync);

    let mut tenant_requests = Family::new(
        "tinkerdb_tenant_requests_total",
        "Client requests answered, by tenant.",
        COUNTER,
    );
    let mut tenant_keys = Family::new("tinkerdb_tenant_keys", "Live keys, by tenant.", GAUGE);
    let mut tenant_bytes = Family::new(
        "tinkerdb_tenant_data_bytes",
        "Bytes of keys and values, by tenant.",
        GAUGE,
    );
    let mut quota_keys = Family::new(
        "tinkerdb_tenant_quota_keys",
        "Key quota, by tenant (absent: unlimited).",
        GAUGE,
    );
    let mut quota_bytes = Family::new(
        "tinkerdb_tenant_quota_bytes",
        "Byte quota, by tenant (absent: unlimited).",
        GAUGE,
    );
    for (id, tenant) in scrape.tenants.iter().enumerate() {
        if tenant.deleted {
            continue;
        }
        let pairs = [("tenant", tenant.name.clone())];
        let requests: u64 = scrape
            .reports
            .iter()
            .map(|r| r.tenant_requests.get(id).copied().unwrap_or(0))
            .sum();
        let usage = scrape.usage.get(id).copied().unwrap_or_default();
        tenant_requests = tenant_requests.counter(&pairs, requests as f64);
        tenant_keys = tenant_keys.gauge(&pairs, usage.keys as f64);
        tenant_bytes = tenant_bytes.gauge(&pairs, usage.bytes as f64);
        if let Some(max) = tenant.max_keys {
            quota_keys = quota_keys.gauge(&pairs, max as f64);
        }
        if let Some(max) = tenant.max_bytes {
            quota_bytes = quota_bytes.gauge(&pairs, max as f64);
        }
    }
    families.extend([
        tenant_requests,
        tenant_keys,
        tenant_bytes,
        quota_keys,
        quota_bytes,
    ]);

    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|family| family.0)
        .filter(|family| !family.get_metric().is_empty())
        .collect();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of well-formed families");
    String::from_utf8(out).expect("the text format is UTF-8")
}
