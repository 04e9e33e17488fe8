//! The one shape of latency histogram in TinkerDB: microseconds from 1 us
//! to 60 s at 1% precision. The WAL's flush times, a core's request
//! latencies and the admin plane's merged series all use it, so they merge
//! and compare.

use hdrhistogram::Histogram;

/// Longest latency recorded, in microseconds (60 s); longer ones count as
/// this.
pub const MAX_RECORDED_MICROS: u64 = 60_000_000;

/// Significant decimal digits kept (2: 1% error, a few KiB per histogram).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 2;

/// An empty latency histogram in microseconds (1 us to 60 s).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, LATENCY_SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

/// Records `count` samples of `micros` (clamped to the histogram's range).
pub fn record_micros(histogram: &mut Histogram<u64>, micros: u64, count: u64) {
    let value = micros.clamp(1, MAX_RECORDED_MICROS);
    // Cannot fail: the value is within bounds and counts saturate.
    let _ = histogram.record_n(value, count);
}
