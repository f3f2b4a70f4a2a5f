//! Topic routing: `<prefix>.<schema>.<table>` through a template, like Debezium with the original
//! design's `RegexRouter` (see the parent module's docs).

use std::fmt;

/// A bad [`TopicRouter`] template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("topic template {template:?}: {reason}")]
    BadTemplate {
        template: String,
        reason: &'static str,
    },
    #[error("topic prefix {0:?} is empty or not a valid Kafka topic name part")]
    BadPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Prefix,
    Schema,
    Table,
}

/// Maps a table to its Kafka topic.
///
/// Debezium's topic is `<prefix>.<schema>.<table>`. A router with a `schema` sends that schema's
/// tables to `template` (placeholders `{prefix}`, `{schema}`, `{table}`) and leaves the others on
/// the Debezium name, as a `RegexRouter` leaves unmatched topics alone. [`TopicRouter::hermet_default`]
/// is the original design's `hermet\.public\.(.*)` → `$1.changed`. Characters Kafka does not
/// allow in topic names (anything but ASCII letters, digits, `.`, `_`, `-`) become `_`, as
/// Debezium does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRouter {
    prefix: String,
    schema: Option<String>,
    template: Vec<Piece>,
}

impl fmt::Display for TopicRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.", self.prefix)?;
        match &self.schema {
            Some(s) => write!(f, "{s}")?,
            None => write!(f, "*")?,
        }
        write!(f, ".<table> -> ")?;
        for p in &self.template {
            match p {
                Piece::Literal(s) => write!(f, "{s}")?,
                Piece::Prefix => write!(f, "{{prefix}}")?,
                Piece::Schema => write!(f, "{{schema}}")?,
                Piece::Table => write!(f, "{{table}}")?,
            }
        }
        Ok(())
    }
}

impl TopicRouter {
    /// `schema`: the schema whose tables are routed by `template` (`None`: every schema).
    pub fn new(prefix: &str, schema: Option<&str>, template: &str) -> Result<Self, RouteError> {
        if prefix.is_empty() || sanitize(prefix) != prefix {
            return Err(RouteError::BadPrefix(prefix.to_owned()));
        }
        let bad = |reason| RouteError::BadTemplate {
            template: template.to_owned(),
            reason,
        };
        let mut pieces = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(at) => {
                    let (lit, tail) = rest.split_at(at);
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(lit.to_owned()));
                    }
                    if tail.starts_with('}') {
                        return Err(bad("unmatched '}'"));
                    }
                    let close = tail.find('}').ok_or_else(|| bad("unclosed '{'"))?;
                    pieces.push(match tail.get(1..close) {
                        Some("prefix") => Piece::Prefix,
                        Some("schema") => Piece::Schema,
                        Some("table") => Piece::Table,
                        _ => {
                            return Err(bad(
                                "unknown placeholder (use {prefix}, {schema}, {table})",
                            ))
                        }
                    });
                    rest = tail.get(close + 1..).unwrap_or_default();
                }
            }
        }
        if !pieces.contains(&Piece::Table) {
            return Err(bad("must contain {table}, or all tables share one topic"));
        }
        Ok(TopicRouter {
            prefix: prefix.to_owned(),
            schema: schema.map(str::to_owned),
            template: pieces,
        })
    }

    /// Debezium's own naming, `<prefix>.<schema>.<table>`, for every table.
    pub fn debezium(prefix: &str) -> Result<Self, RouteError> {
        Self::new(prefix, None, "{prefix}.{schema}.{table}")
    }

    /// The original design: prefix `hermet`, `public.<table>` → `<table>.changed`.
    pub fn hermet_default() -> Self {
        TopicRouter {
            prefix: "hermet".to_owned(),
            schema: Some("public".to_owned()),
            template: vec![Piece::Table, Piece::Literal(".changed".to_owned())],
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Debezium's topic name before routing.
    pub fn debezium_topic(&self, schema: &str, table: &str) -> String {
        sanitize(&format!("{}.{schema}.{table}", self.prefix))
    }

    /// The topic of a table's change events.
    pub fn topic(&self, schema: &str, table: &str) -> String {
        if self.schema.as_deref().is_some_and(|s| s != schema) {
            return self.debezium_topic(schema, table);
        }
        let mut out = String::new();
        for p in &self.template {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Prefix => out.push_str(&self.prefix),
                Piece::Schema => out.push_str(schema),
                Piece::Table => out.push_str(table),
            }
        }
        sanitize(&out)
    }

    /// Debezium's transaction metadata topic, `<prefix>.transaction`.
    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.prefix)
    }
}

fn sanitize(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
