//! How hermet declares its metrics.
//!
//! Contract: every crate that records metrics has a `telemetry` module that declares each of its
//! series once, as a [`Metric`] (name, kind, unit, label keys, help text) in one `METRICS` list,
//! and records them only through that module's small typed functions, whose label values are
//! enums (or data such as a consumer group's name), never strings written at a call site. The
//! binary passes every crate's list to [`register`] when it installs the exporter, which
//! describes each series and creates at 0 those marked [`Metric::starts_at_zero`]. A series
//! recorded by several crates is declared in the lowest crate they share.
//!
//! [`check`] lets each crate's tests prove that its typed functions record exactly its
//! declarations (name, kind, label keys); the binary's tests prove that the README's metrics
//! table lists every declared series with its label keys.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

pub use metrics::Unit;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One declared series.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// The label keys every sample of the series carries (none: `&[]`).
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
    /// Created at 0 when registered, so dashboards and alerts see 0 rather than "no data"
    /// (series without labels that only move on trouble).
    pub starts_at_zero: bool,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric::new(name, Kind::Counter, help)
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric::new(name, Kind::Gauge, help)
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Metric {
        Metric::new(name, Kind::Histogram, help)
    }

    const fn new(name: &'static str, kind: Kind, help: &'static str) -> Metric {
        Metric {
            name,
            kind,
            unit: None,
            labels: &[],
            help,
            starts_at_zero: false,
        }
    }

    pub const fn unit(self, unit: Unit) -> Metric {
        Metric {
            unit: Some(unit),
            ..self
        }
    }

    pub const fn labels(self, labels: &'static [&'static str]) -> Metric {
        Metric { labels, ..self }
    }

    /// Marks a counter or gauge without labels to be created at 0 by [`register`].
    pub const fn starts_at_zero(self) -> Metric {
        Metric {
            starts_at_zero: true,
            ..self
        }
    }

    /// Gives the installed recorder this series' unit and help text.
    pub fn describe(&self) {
        let (name, unit, help) = (
            KeyName::from_const_str(self.name),
            self.unit,
            SharedString::const_str(self.help),
        );
        metrics::with_recorder(|r| match self.kind {
            Kind::Counter => r.describe_counter(name, unit, help),
            Kind::Gauge => r.describe_gauge(name, unit, help),
            Kind::Histogram => r.describe_histogram(name, unit, help),
        });
    }
}

/// Describes every series of `all` to the installed recorder, and creates at 0 those marked
/// [`Metric::starts_at_zero`] (a gauge by adding 0, so a value another process set stays).
pub fn register(all: &[Metric]) {
    for m in all {
        m.describe();
        if !m.starts_at_zero {
            continue;
        }
        match m.kind {
            Kind::Counter => metrics::counter!(m.name).increment(0),
            Kind::Gauge => metrics::gauge!(m.name).increment(0.0),
            Kind::Histogram => {}
        }
    }
}

/// Runs `record` (which should call every typed function of a crate's telemetry module) under a
/// recorder of its own, and returns what disagrees with `declared`: a series recorded but not
/// declared, or with another kind or other label keys than declared, or a declared series that
/// `record` never recorded. Empty when all agree.
pub fn check(declared: &[Metric], record: impl FnOnce()) -> Vec<String> {
    let seen = Seen::default();
    metrics::with_local_recorder(&seen, record);
    let seen = seen.0.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut problems = Vec::new();
    for (name, kind, labels) in &seen {
        match declared.iter().find(|m| m.name == name) {
            None => problems.push(format!("{name} is recorded but not declared")),
            Some(m) if m.kind != *kind => problems.push(format!(
                "{name} is declared a {} but recorded as a {}",
                m.kind.as_str(),
                kind.as_str()
            )),
            Some(m) => {
                let want: BTreeSet<&str> = m.labels.iter().copied().collect();
                let got: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
                if want != got {
                    problems.push(format!(
                        "{name} is declared with labels {want:?} but recorded with {got:?}"
                    ));
                }
            }
        }
    }
    for m in declared {
        if !seen.iter().any(|(name, _, _)| name == m.name) {
            problems.push(format!("{} is declared but never recorded", m.name));
        }
    }
    let mut names = BTreeSet::new();
    for m in declared {
        if !names.insert(m.name) {
            problems.push(format!("{} is declared twice", m.name));
        }
    }
    problems
}

/// The series registered while [`check`] runs: name, kind, label keys.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, Kind, Vec<String>)>>);

impl Seen {
    fn note(&self, key: &Key, kind: Kind) {
        let labels = key.labels().map(|l| l.key().to_owned()).collect();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((
            key.name().to_owned(),
            kind,
            labels,
        ));
    }
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.note(key, Kind::Counter);
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.note(key, Kind::Gauge);
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.note(key, Kind::Histogram);
        Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECLARED: &[Metric] = &[
        Metric::counter("test_events_total", "Events.").labels(&["kind"]),
        Metric::histogram("test_wait_seconds", "Waits.").unit(Unit::Seconds),
    ];

    #[test]
    fn agreeing_functions_pass() {
        let problems = check(DECLARED, || {
            metrics::counter!("test_events_total", "kind" => "a").increment(1);
            metrics::histogram!("test_wait_seconds").record(0.1);
        });
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn every_disagreement_is_reported() {
        let problems = check(DECLARED, || {
            metrics::counter!("test_events_total", "type" => "a").increment(1);
            metrics::gauge!("test_undeclared").set(1.0);
        });
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("recorded with {\"type\"}"),
            "{problems:?}"
        );
        assert!(problems[1].contains("test_undeclared is recorded but not declared"));
        assert!(problems[2].contains("test_wait_seconds is declared but never recorded"));
    }

    #[test]
    fn a_kind_mismatch_is_reported() {
        let problems = check(DECLARED, || {
            metrics::counter!("test_events_total", "kind" => "a").increment(1);
            metrics::counter!("test_wait_seconds").increment(1);
        });
        assert_eq!(
            problems,
            ["test_wait_seconds is declared a histogram but recorded as a counter"]
        );
    }
}
