//! OpenTelemetry tracing: spans of sampled client requests along their
//! path, exported with OTLP over HTTP/protobuf (docs/observability.md).
//!
//! Off unless `[tracing] otlp_endpoint` is set. Then:
//! - a front end starts a trace for a share `sample_ratio` of pipelines
//!   ([`start_trace`]: one relaxed load and a thread-local random number;
//!   with tracing off, the load alone): the root span (`resp.pipeline`,
//!   `fbs.pipeline`);
//! - the trace follows the request explicitly where tracing's own context
//!   cannot (a task spawned on a core, a message to another core, a Raft
//!   entry): [`current_parent`] takes the current span's context as a
//!   [`TraceParent`] (W3C `traceparent`'s fields), [`child_of`] makes a
//!   span under one;
//! - a traced write's `Ops` entry carries its `TraceParent`, so every
//!   replica's apply (`raft.apply`) joins the trace, the leader's and the
//!   followers', and a write a follower forwards to the leader carries it
//!   inside the forwarded command;
//! - only the spans named in [`TRACED_SPANS`] are exported: not openraft's
//!   own, not the admin plane's.
//!
//! The exporter runs on the SDK's batch thread (never on a core or the
//! admin runtime), created by [`init`] in `main` before any core is pinned,
//! with a bounded queue ([`MAX_QUEUED_SPANS`]; beyond it spans are
//! dropped, never waited for). Spans carry ids, command names, ranges and
//! counts: never a key, a value or a password.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tinkerdb_replication::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TracingConfig;

/// The spans TinkerDB exports (their names), in the order a write meets
/// them.
pub const TRACED_SPANS: [&str; 7] = [
    "resp.pipeline",
    "fbs.pipeline",
    "coord.hop",
    "wal.durable",
    "raft.propose",
    "raft.forward",
    "raft.apply",
];

/// Spans queued for the exporter at most (then new ones are dropped).
pub const MAX_QUEUED_SPANS: usize = 4096;

/// How often the batch thread sends what is queued.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);

/// How long one export may take (the collector is expected nearby).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether tracing is on (an exporter runs).
static ON: AtomicBool = AtomicBool::new(false);

/// A pipeline starts a trace when a 53-bit random number is below this
/// (`sample_ratio` x 2^53).
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// The node's exporter; dropping it (or [`Telemetry::shutdown`]) flushes
/// what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The tracer the `tracing-opentelemetry` layer records into.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("tinkerdb")
    }

    /// Sends what is queued and stops the batch thread.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "tracing: the last spans were not exported");
        }
    }
}

/// Starts the exporter of `config` (`None` when tracing is off), for a
/// node known to the collector as `instance` (`service.instance.id`).
/// Call it before the cores start: the batch thread takes the caller's CPU
/// affinity.
pub fn init(config: &TracingConfig, instance: &str) -> anyhow::Result<Option<Telemetry>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        // Explicit, so OTEL_EXPORTER_OTLP_PROTOCOL cannot change it.
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|error| anyhow::anyhow!("tracing.otlp_endpoint: {error}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // The ratio is applied by the front ends (`start_trace`): a span
        // that exists is one to keep, and a child follows its parent.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    let threshold = (config.sample_ratio * (1u64 << 53) as f64) as u64;
    ROOT_THRESHOLD.store(threshold, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok(Some(Telemetry { provider }))
}

/// The filter of the OpenTelemetry layer: the spans of [`TRACED_SPANS`]
/// only (no events, no other crate's spans).
pub fn only_traced_spans(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && TRACED_SPANS.contains(&metadata.name())
}

/// Whether tracing is on.
#[inline]
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

thread_local! {
    /// xorshift64* state of this thread's sampling decisions.
    static SAMPLER_STATE: Cell<u64> = Cell::new({
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let thread = std::thread::current().id();
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&thread, &mut hasher);
        (nanos ^ std::hash::Hasher::finish(&hasher)) | 1
    });
}

/// Whether the front end should trace the pipeline it is about to run
/// (tracing on, and the sampling ratio's coin says so).
#[inline]
pub fn start_trace() -> bool {
    if !is_on() {
        return false;
    }
    let threshold = ROOT_THRESHOLD.load(Ordering::Relaxed);
    let draw = SAMPLER_STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
    });
    draw < threshold
}

/// The trace context of the current span, if tracing is on and the
/// current span is a sampled one: what a message to another core or a
/// Raft entry carries.
pub fn current_parent() -> Option<TraceParent> {
    if !is_on() {
        return None;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    if !span_context.is_valid() || !span_context.is_sampled() {
        return None;
    }
    Some(TraceParent {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// Whether the current span belongs to a sampled trace (so a child span
/// made now is exported); false whenever tracing is off.
pub fn in_trace() -> bool {
    current_parent().is_some()
}

/// Runs `future` inside `span` when there is one (a traced request),
/// as it is otherwise.
pub async fn within<F: std::future::Future>(span: Option<&tracing::Span>, future: F) -> F::Output {
    use tracing::Instrument;
    match span {
        Some(span) => future.instrument(span.clone()).await,
        None => future.await,
    }
}

/// Makes `span` (new, not yet entered) a child of `parent` (a span of
/// another core or node). An invalid parent is ignored: `span` stays a
/// root. Returns `span`.
pub fn child_of(span: tracing::Span, parent: &TraceParent) -> tracing::Span {
    if !parent.is_valid() || span.is_disabled() {
        return span;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    let context = opentelemetry::Context::new().with_remote_span_context(remote);
    // Fails only without the OpenTelemetry layer (then nothing is
    // exported anyway) or on an entered span (not ours to pass).
    let _ = span.set_parent(context);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_no_trace_and_no_parent() {
        // No `init` in unit tests: tracing is off.
        assert!(!is_on());
        assert!((0..1000).all(|_| !start_trace()));
        assert_eq!(current_parent(), None);
    }

    #[test]
    fn every_traced_span_name_is_distinct() {
        let mut names = TRACED_SPANS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TRACED_SPANS.len());
    }
}
