//! The monitoring files in `deploy/` (issue 6): the alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`); the Grafana dashboard is valid JSON; and every
//! `hermet_*` series the rules, the dashboard and the README name is one hermet exports
//! (declared in the crates' `src/telemetry.rs`), and the README documents every series it
//! exports.
//!
//! Needs `promtool` (Debian `prometheus`, installed by `scripts/install-deps.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool (Debian `prometheus`, installed by scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hermet_*` names in `text`, with histogram suffixes folded into their family.
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("hermet_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let name = &text[start..end];
        if before_ok && !name.ends_with('_') {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// The series hermet exports: the name of each `Metric::counter`/`gauge`/`histogram` declared
/// in a crate's `src/telemetry.rs` (see `hermet_core::telemetry`).
fn exported() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let crates = std::fs::read_dir(root().join("crates")).expect("crates/");
    for dir in crates.map(|e| e.expect("crates/ entry").path()) {
        let Ok(src) = std::fs::read_to_string(dir.join("src/telemetry.rs")) else {
            continue;
        };
        for chunk in src.split("Metric::").skip(1) {
            let Some(args) = ["counter(", "gauge(", "histogram("]
                .iter()
                .find_map(|kind| chunk.strip_prefix(kind))
            else {
                continue;
            };
            let args = args.trim_start();
            let Some(rest) = args.strip_prefix('"') else {
                continue;
            };
            let name = &rest[..rest.find('"').expect("a closed string")];
            if name.starts_with("hermet_") {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// The README's "Observability" section (the rest names tables and functions, not series).
fn readme_metrics() -> String {
    let readme = read("README.md");
    let start = readme
        .find("## Observability")
        .expect("README has an Observability section");
    let rest = &readme[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn dashboard_rules_and_readme_name_only_exported_series() {
    let exported = exported();
    assert!(
        exported.len() >= 40,
        "the telemetry modules declare {exported:?}"
    );
    let dashboard = read("deploy/grafana/hermet-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    for (file, text) in [
        ("deploy/grafana/hermet-dashboard.json", dashboard.clone()),
        (
            "deploy/prometheus/alerts.yml",
            read("deploy/prometheus/alerts.yml"),
        ),
        ("README.md (Observability)", readme_metrics()),
    ] {
        let unknown: Vec<_> = families(&text)
            .into_iter()
            .filter(|f| !exported.contains(f) && !f.starts_with("hermet_test"))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names series hermet does not export: {unknown:?}"
        );
    }
    let readme = families(&readme_metrics());
    let undocumented: Vec<_> = exported.difference(&readme).collect();
    assert!(
        undocumented.is_empty(),
        "README does not document: {undocumented:?}"
    );
}
