//! Turning measurements into the figures we publish: throughput and latency percentiles.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

/// A histogram of microseconds, wide enough for 1 us .. 10 min at 3 significant digits.
/// Writes `report` as pretty JSON to `path` (the `--json` option of the commands).
pub fn write_json(path: &std::path::Path, report: &impl Serialize) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    std::fs::write(path, json).map_err(|error| format!("writing {}: {error}", path.display()))
}

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    pub fn from_micros(histogram: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            samples: histogram.len(),
        }
    }
}

/// Records and bytes over a time span.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub records: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
}

impl Throughput {
    pub fn new(records: u64, record_bytes: usize, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Throughput {
            records,
            seconds,
            records_per_second: records as f64 / seconds,
            megabytes_per_second: records as f64 * record_bytes as f64 / seconds / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut histogram = latency_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let latency = Latency::from_micros(&histogram);
        assert!((latency.p50_ms - 500.0).abs() < 1.0, "{latency:?}");
        assert!((latency.p99_ms - 990.0).abs() < 1.5, "{latency:?}");
        assert!((latency.max_ms - 1000.0).abs() < 1.0, "{latency:?}");
        assert_eq!(latency.samples, 1000);
    }

    #[test]
    fn throughput_divides_by_elapsed_time() {
        let throughput = Throughput::new(200_000, 1024, Duration::from_secs(2));
        assert_eq!(throughput.records_per_second, 100_000.0);
        assert!((throughput.megabytes_per_second - 102.4).abs() < 1e-9);
    }
}
