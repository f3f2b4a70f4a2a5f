//! `bench modes --stage-metrics`: where the sync lag goes.
//!
//! A `metrics` recorder that keeps the sync pipeline's own latency series (the ones `serve`
//! exports, README "Metrics") exactly, in HDR histograms per label set, and drops every other
//! series. The benchmark resets it when a measured phase starts and reports it when the phase
//! ends, so set-up traffic (populating, catching up) is not mixed in. An exporter's summaries
//! would not do: they are rolling windows, not phases.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use crate::report::{histogram, quantile_ms};
use crate::BenchError;

/// The series kept: relay commit → Kafka ack, write-side commit → view applied (per view),
/// time to apply one batch (per projector). All in seconds.
pub const STAGES: &[&str] = &[
    hermet_cdc::telemetry::COMMIT_TO_ACK.name,
    hermet_projector::telemetry::SYNC_LAG.name,
    hermet_projector::telemetry::BATCH.name,
];

type Series = Arc<Mutex<Histogram<u64>>>;

/// The recorder; clones share the series.
#[derive(Clone, Default)]
pub struct StageRecorder {
    series: Arc<Mutex<BTreeMap<Key, Series>>>,
}

struct Stage(Series);

impl HistogramFn for Stage {
    fn record(&self, seconds: f64) {
        // Microseconds, as the benchmark's own histograms.
        let us = (seconds * 1e6).round().clamp(1.0, 3.6e9) as u64;
        let _ = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(us);
    }
}

impl StageRecorder {
    /// Installs a recorder as the process's global one. Fails if the process already has one.
    pub fn install() -> Result<StageRecorder, BenchError> {
        let r = StageRecorder::default();
        metrics::set_global_recorder(r.clone()).map_err(|e| {
            BenchError::InvalidOptions(format!(
                "--stage-metrics: a metrics recorder is already installed: {e}"
            ))
        })?;
        Ok(r)
    }

    /// Forgets everything recorded so far (the series stay).
    pub fn reset(&self) {
        for s in self.lock().values() {
            s.lock().unwrap_or_else(PoisonError::into_inner).reset();
        }
    }

    /// One line per series with samples: count, p50, p99 and max in milliseconds.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (key, s) in self.lock().iter() {
            let h = s.lock().unwrap_or_else(PoisonError::into_inner);
            if h.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "  {}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                series_name(key),
                h.len(),
                quantile_ms(&h, 0.5),
                quantile_ms(&h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Series>> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `name{k="v",…}`, as Prometheus would write the series.
fn series_name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for StageRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        if !STAGES.contains(&key.name()) {
            return metrics::Histogram::noop();
        }
        // Called on every recording: a histogram is only made for a series not seen before.
        let mut all = self.lock();
        let series = match all.get(key) {
            Some(s) => s.clone(),
            None => {
                let Ok(h) = histogram() else {
                    return metrics::Histogram::noop();
                };
                let s = Arc::new(Mutex::new(h));
                all.insert(key.clone(), s.clone());
                s
            }
        };
        metrics::Histogram::from_arc(Arc::new(Stage(series)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_stages_exactly_and_resets() {
        use hermet_projector::telemetry::{sync_lag, LagMode, LagView};
        use std::time::Duration;

        let r = StageRecorder::default();
        metrics::with_local_recorder(&r, || {
            for ms in 1..=100u32 {
                sync_lag(LagView::Contact, LagMode::Cdc, f64::from(ms) / 1000.0);
                hermet_api::telemetry::request(
                    "/v1/users".to_owned(),
                    "GET",
                    200,
                    Duration::from_millis(1),
                );
            }
        });
        let out = r.report();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("hermet_sync_lag_seconds{view=\"contact\",mode=\"cdc\"}: 100 samples, p50 50.0 ms, p99 99.0 ms, max 100.0 ms"),
            "{out}"
        );
        r.reset();
        assert_eq!(r.report(), "");
    }
}
