//! `docs/api.md` is the readable reference of the OpenAPI document the server serves. This test
//! keeps the two from drifting: every operation of the document has a section (a `### `METHOD
//! /path`` heading), the page has no section for an operation the document lacks, and each
//! section names every status code the document gives that operation.

use std::collections::BTreeSet;
use std::path::Path;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn api_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("../src/openapi.json")).expect("openapi.json parses")
}

/// The `### `METHOD /path`` sections of the page, each with its text.
fn sections(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("### `").and_then(|t| t.strip_suffix('`')) {
            out.push((title.to_owned(), String::new()));
        } else if line.starts_with("## ") || line.starts_with("### ") {
            // A heading that is not an operation ends the section before it.
            out.push((String::new(), String::new()));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out.retain(|(title, _)| !title.is_empty());
    out
}

#[test]
fn every_operation_is_documented_with_its_status_codes() {
    let spec = openapi();
    let doc = api_doc();
    let sections = sections(&doc);

    let mut in_spec = BTreeSet::new();
    let paths = spec["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let title = format!("{} {path}", method.to_uppercase());
            let text = sections
                .iter()
                .find(|(t, _)| *t == title)
                .map(|(_, text)| text)
                .unwrap_or_else(|| panic!("docs/api.md has no section `### `{title}``"));
            let statuses = op["responses"].as_object().expect("responses");
            for status in statuses.keys() {
                assert!(
                    text.contains(status.as_str()),
                    "docs/api.md, section {title}: status {status} of the OpenAPI document is not mentioned"
                );
            }
            in_spec.insert(title);
        }
    }

    let in_doc: BTreeSet<String> = sections.iter().map(|(t, _)| t.clone()).collect();
    let extra: Vec<_> = in_doc.difference(&in_spec).collect();
    assert!(
        extra.is_empty(),
        "docs/api.md documents operations the OpenAPI document lacks: {extra:?}"
    );
    assert_eq!(
        in_doc.len(),
        sections.len(),
        "an operation has two sections in docs/api.md"
    );
}
