//! Audit and repair: the read side compared with the rebuild oracle, and put right.
//!
//! The audit buckets every row by its owner (`owner % buckets`, the original design's shard
//! rule), compares a count and an order-independent checksum per bucket on both sides, and
//! diffs rows only in the buckets that differ. A mismatch is classified by primary key:
//! `missing` (expected, absent), `extra` (present, not expected) or `field` (both, with the
//! differing columns named). The consistency rate is the share of right rows among the expected
//! rows and the extra ones (see [`AuditReport::consistency_rate`]).
//!
//! Repair deletes the wrong rows and recomputes them from the write side through the
//! projection, in one transaction. Deleting first matters: a corrupted row can carry versions as
//! new as the correct one, and the projection's guarded upsert would rightly keep it.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use hermet_core::projection::{Affected, ProjectionConfig, ReadModels};
use serde_json::Value;

use crate::oracle;
use crate::{project, views, StoreError};

/// One audited table: its oracle and live queries, key columns and owner column.
struct Audited {
    table: &'static str,
    expected: &'static str,
    actual: &'static str,
    key: &'static [&'static str],
    owner: &'static str,
}

const AUDITED: [Audited; 5] = [
    Audited {
        table: "user_conversation_view",
        expected: oracle::EXPECTED_CONVERSATIONS,
        actual: oracle::ACTUAL_CONVERSATIONS,
        key: &["user_id", "channel_id"],
        owner: "user_id",
    },
    Audited {
        table: "channel_view",
        expected: oracle::EXPECTED_CHANNELS,
        actual: oracle::ACTUAL_CHANNELS,
        key: &["channel_id"],
        owner: "channel_id",
    },
    Audited {
        table: "user_contact_view",
        expected: oracle::EXPECTED_CONTACTS,
        actual: oracle::ACTUAL_CONTACTS,
        key: &["user_id", "contact_id"],
        owner: "user_id",
    },
    Audited {
        table: "conversation_reverse_index",
        expected: oracle::EXPECTED_CONVERSATION_REFS,
        actual: oracle::ACTUAL_CONVERSATION_REFS,
        key: &["peer_user_id", "owner_user_id", "channel_id"],
        owner: "peer_user_id",
    },
    Audited {
        table: "contact_reverse_index",
        expected: oracle::EXPECTED_CONTACT_REFS,
        actual: oracle::ACTUAL_CONTACT_REFS,
        key: &["contact_user_id", "owner_user_id"],
        owner: "contact_user_id",
    },
];

impl Audited {
    /// Whether the oracle query takes the preview length as `$1`.
    fn takes_preview(&self) -> bool {
        matches!(self.table, "user_conversation_view" | "channel_view")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Missing,
    Extra,
    Field,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Field => "field differs",
        }
    }
}

/// One wrong row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub table: &'static str,
    pub kind: Kind,
    /// The primary key, as `column=value` pairs.
    pub key: Vec<(String, i64)>,
    /// For `Field`: the columns that differ.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub buckets: u32,
    pub audited_buckets: u32,
    pub differing_buckets: u32,
    /// Expected rows in the audited buckets (all four tables).
    pub expected_rows: u64,
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// Share of rows that are right among the rows that should be there and the rows that are
    /// there without being expected: `1 − wrong / (expected + extra)`, 1.0 when there is nothing
    /// to audit. Extra rows count as wrong (and in the whole), so a read side full of spurious
    /// rows does not read as 100 % (`hermet_consistency_rate` is what the alert watches).
    pub fn consistency_rate(&self) -> f64 {
        let extra = self
            .findings
            .iter()
            .filter(|f| f.kind == Kind::Extra)
            .count() as u64;
        let whole = self.expected_rows + extra;
        if whole == 0 {
            return 1.0;
        }
        let wrong = self.findings.len() as f64;
        (1.0 - wrong / whole as f64).clamp(0.0, 1.0)
    }

    /// Findings counted by table and kind.
    pub fn summary(&self) -> BTreeMap<(&'static str, Kind), usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry((f.table, f.kind)).or_insert(0) += 1;
        }
        m
    }
}

/// Audits the buckets in `only` (all `buckets` when `None`).
pub async fn audit(
    client: &deadpool_postgres::Client,
    preview_chars: i32,
    buckets: u32,
    only: Option<&[i32]>,
) -> Result<AuditReport, StoreError> {
    let n = i64::from(buckets.max(1));
    let all: Vec<i32> = (0..buckets.max(1) as i32).collect();
    let chosen: Vec<i32> = only.map(<[i32]>::to_vec).unwrap_or(all);
    let mut report = AuditReport {
        buckets,
        audited_buckets: chosen.len() as u32,
        ..AuditReport::default()
    };
    let mut differing: BTreeSet<i32> = BTreeSet::new();
    for t in &AUDITED {
        let takes_preview = t.takes_preview();
        // Both sides as the same columns, bucketed by owner; a bucket differs when its row
        // count or its XOR of row hashes does.
        let sql = format!(
            "WITH e AS (SELECT * FROM ({exp}) e WHERE ({o} % {n})::int = ANY($B)),
                  a AS (SELECT * FROM ({act}) a WHERE ({o} % {n})::int = ANY($B)),
                  es AS (SELECT ({o} % {n})::int AS b, count(*) AS c,
                                bit_xor(hashtextextended(e::text, 0)) AS h FROM e GROUP BY 1),
                  xs AS (SELECT ({o} % {n})::int AS b, count(*) AS c,
                                bit_xor(hashtextextended(a::text, 0)) AS h FROM a GROUP BY 1)
             SELECT COALESCE(es.b, xs.b), COALESCE(es.c, 0),
                    es.c IS DISTINCT FROM xs.c OR es.h IS DISTINCT FROM xs.h
               FROM es FULL JOIN xs ON es.b = xs.b",
            exp = t.expected,
            act = t.actual,
            o = t.owner,
        );
        let rows = if takes_preview {
            client
                .query(&sql.replace("$B", "$2"), &[&preview_chars, &chosen])
                .await?
        } else {
            client.query(&sql.replace("$B", "$1"), &[&chosen]).await?
        };
        for r in rows {
            let (b, c, differs): (i32, i64, bool) = (r.get(0), r.get(1), r.get(2));
            report.expected_rows += c as u64;
            if differs {
                differing.insert(b);
            }
        }
    }
    report.differing_buckets = differing.len() as u32;
    if differing.is_empty() {
        return Ok(report);
    }
    let diff_buckets: Vec<i32> = differing.into_iter().collect();
    for t in &AUDITED {
        let takes_preview = t.takes_preview();
        let sql = format!(
            "WITH e AS (SELECT * FROM ({exp}) e WHERE ({o} % {n})::int = ANY($B)),
                  a AS (SELECT * FROM ({act}) a WHERE ({o} % {n})::int = ANY($B))
             SELECT 'missing', row_to_json(x)::text FROM (SELECT * FROM e EXCEPT ALL SELECT * FROM a) x
             UNION ALL
             SELECT 'extra', row_to_json(y)::text FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM e) y",
            exp = t.expected,
            act = t.actual,
            o = t.owner,
        );
        let rows = if takes_preview {
            client
                .query(&sql.replace("$B", "$2"), &[&preview_chars, &diff_buckets])
                .await?
        } else {
            client
                .query(&sql.replace("$B", "$1"), &[&diff_buckets])
                .await?
        };
        classify(t, rows, &mut report.findings)?;
    }
    Ok(report)
}

fn classify(
    t: &Audited,
    rows: Vec<tokio_postgres::Row>,
    out: &mut Vec<Finding>,
) -> Result<(), StoreError> {
    type Key = Vec<(String, i64)>;
    let mut missing: BTreeMap<Key, Value> = BTreeMap::new();
    let mut extra: BTreeMap<Key, Value> = BTreeMap::new();
    for r in rows {
        let side: String = r.get(0);
        let json: String = r.get(1);
        let v: Value =
            serde_json::from_str(&json).map_err(|e| StoreError::Decode(e.to_string()))?;
        let key: Key = t
            .key
            .iter()
            .map(|k| {
                (
                    (*k).to_owned(),
                    v.get(*k).and_then(Value::as_i64).unwrap_or(0),
                )
            })
            .collect();
        if side == "missing" {
            missing.insert(key, v);
        } else {
            extra.insert(key, v);
        }
    }
    for (key, exp) in &missing {
        match extra.remove(key) {
            Some(act) => {
                let fields = match (exp, &act) {
                    (Value::Object(e), Value::Object(a)) => e
                        .iter()
                        .filter(|(k, v)| a.get(*k) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .collect(),
                    _ => Vec::new(),
                };
                out.push(Finding {
                    table: t.table,
                    kind: Kind::Field,
                    key: key.clone(),
                    fields,
                });
            }
            None => out.push(Finding {
                table: t.table,
                kind: Kind::Missing,
                key: key.clone(),
                fields: Vec::new(),
            }),
        }
    }
    for key in extra.into_keys() {
        out.push(Finding {
            table: t.table,
            kind: Kind::Extra,
            key,
            fields: Vec::new(),
        });
    }
    Ok(())
}

fn key_of(f: &Finding, col: &str) -> i64 {
    f.key.iter().find(|(k, _)| k == col).map_or(0, |(_, v)| *v)
}

/// Deletes the rows of the findings and recomputes them from the write side, in `tx`.
/// Returns the number of view rows written.
pub async fn repair(
    tx: &Transaction<'_>,
    findings: &[Finding],
    cfg: &ProjectionConfig,
) -> Result<usize, StoreError> {
    // A custom plan of `DELETE … USING UNNEST` on a partitioned table scans every partition
    // (docs/sharding.md); the generic plan prunes at run time.
    tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
        .await?;
    let mut affected = Affected::default();
    let mut conv: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut cont: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut crefs: (Vec<i64>, Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new(), Vec::new());
    let mut trefs: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut chans: Vec<i64> = Vec::new();
    for f in findings {
        match f.table {
            "channel_view" => {
                let c = key_of(f, "channel_id");
                chans.push(c);
                affected.channel_rows.insert(c);
            }
            "user_conversation_view" => {
                let (u, c) = (key_of(f, "user_id"), key_of(f, "channel_id"));
                conv.0.push(u);
                conv.1.push(c);
                affected.conversation_keys.insert((u, c));
            }
            "user_contact_view" => {
                let (u, c) = (key_of(f, "user_id"), key_of(f, "contact_id"));
                cont.0.push(u);
                cont.1.push(c);
                affected.friend_pairs.insert((u, c));
            }
            "conversation_reverse_index" => {
                let (p, o, c) = (
                    key_of(f, "peer_user_id"),
                    key_of(f, "owner_user_id"),
                    key_of(f, "channel_id"),
                );
                crefs.0.push(p);
                crefs.1.push(o);
                crefs.2.push(c);
                affected.conversation_keys.insert((o, c));
            }
            _ => {
                let (c, o) = (key_of(f, "contact_user_id"), key_of(f, "owner_user_id"));
                trefs.0.push(c);
                trefs.1.push(o);
                affected.friend_pairs.insert((o, c));
            }
        }
    }
    tx.execute(
        "DELETE FROM user_conversation_view v USING UNNEST($1::bigint[], $2::bigint[]) k(u, c)
          WHERE v.user_id = k.u AND v.channel_id = k.c",
        &[&conv.0, &conv.1],
    )
    .await?;
    tx.execute(
        "DELETE FROM channel_view WHERE channel_id = ANY($1::bigint[])",
        &[&chans],
    )
    .await?;
    tx.execute(
        "DELETE FROM user_contact_view v USING UNNEST($1::bigint[], $2::bigint[]) k(u, c)
          WHERE v.user_id = k.u AND v.contact_id = k.c",
        &[&cont.0, &cont.1],
    )
    .await?;
    tx.execute(
        "DELETE FROM conversation_reverse_index r
          USING UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) k(p, o, c)
          WHERE r.peer_user_id = k.p AND r.owner_user_id = k.o AND r.channel_id = k.c",
        &[&crefs.0, &crefs.1, &crefs.2],
    )
    .await?;
    tx.execute(
        "DELETE FROM contact_reverse_index r USING UNNEST($1::bigint[], $2::bigint[]) k(c, o)
          WHERE r.contact_user_id = k.c AND r.owner_user_id = k.o",
        &[&trefs.0, &trefs.1],
    )
    .await?;
    let batch = project::compute(tx, &affected, ReadModels::ALL, cfg).await?;
    views::apply_batch(tx, &batch).await?;
    Ok(batch.len())
}

/// [`repair`] in a transaction of its own, then every cached list page retired (repairs are rare
/// and may touch anyone's rows). The one way the CLI and `serve`'s background audit repair.
pub async fn repair_committed(
    client: &mut deadpool_postgres::Client,
    findings: &[Finding],
    cfg: &ProjectionConfig,
    cache: &dyn hermet_core::cache::ListCache,
) -> Result<usize, StoreError> {
    let tx = client.transaction().await?;
    let rows = repair(&tx, findings, cfg).await?;
    tx.commit().await?;
    cache.invalidate_all().await;
    Ok(rows)
}

/// Recomputes everything about one user: their own rows and every row embedding them, found
/// through the write side (not only the reverse indexes, which may be what is broken).
/// Returns how many view rows were rewritten.
pub async fn repair_user(
    tx: &Transaction<'_>,
    user: i64,
    cfg: &ProjectionConfig,
) -> Result<usize, StoreError> {
    let mut findings = Vec::new();
    let rows = tx
        .query(
            "SELECT m.user_id, m.channel_id FROM channel_members m WHERE m.user_id = $1
             UNION
             SELECT m.user_id, m.channel_id FROM channel_members m JOIN channels c ON c.id = m.channel_id
              WHERE c.channel_type = 'single' AND (c.pair_low = $1 OR c.pair_high = $1)
             UNION
             SELECT owner_user_id, channel_id FROM conversation_reverse_index WHERE peer_user_id = $1
             UNION
             SELECT user_id, channel_id FROM user_conversation_view WHERE user_id = $1",
            &[&user],
        )
        .await?;
    for r in rows {
        let (u, c): (i64, i64) = (r.get(0), r.get(1));
        findings.push(Finding {
            table: "user_conversation_view",
            kind: Kind::Field,
            key: vec![("user_id".into(), u), ("channel_id".into(), c)],
            fields: Vec::new(),
        });
    }
    let rows = tx
        .query(
            "SELECT user_id, friend_id FROM friendships WHERE user_id = $1 OR friend_id = $1
             UNION
             SELECT owner_user_id, contact_user_id FROM contact_reverse_index WHERE contact_user_id = $1
             UNION
             SELECT user_id, contact_id FROM user_contact_view WHERE user_id = $1",
            &[&user],
        )
        .await?;
    for r in rows {
        let (u, c): (i64, i64) = (r.get(0), r.get(1));
        findings.push(Finding {
            table: "user_contact_view",
            kind: Kind::Field,
            key: vec![("user_id".into(), u), ("contact_id".into(), c)],
            fields: Vec::new(),
        });
    }
    // Index entries pointing at or from the user are rebuilt with the rows.
    tx.execute(
        "DELETE FROM conversation_reverse_index WHERE peer_user_id = $1 OR owner_user_id = $1",
        &[&user],
    )
    .await?;
    tx.execute(
        "DELETE FROM contact_reverse_index WHERE contact_user_id = $1 OR owner_user_id = $1",
        &[&user],
    )
    .await?;
    repair(tx, &findings, cfg).await
}

/// How many audit results `hermet_audit_runs` keeps.
const KEEP_RUNS: i64 = 100;

/// Records an audit result (for `hermet admin status`), keeping the newest [`KEEP_RUNS`].
pub async fn record(
    client: &deadpool_postgres::Client,
    source: &str,
    report: &AuditReport,
    repaired: bool,
) -> Result<(), StoreError> {
    let summary: serde_json::Map<String, Value> = report
        .summary()
        .into_iter()
        .map(|((table, kind), n)| (format!("{table} {}", kind.as_str()), Value::from(n)))
        .collect();
    client
        .execute(
            "WITH ins AS (
                 INSERT INTO hermet_audit_runs (source, finished_at, buckets, audited_buckets,
                     differing_buckets, expected_rows, findings, consistency_rate, summary, repaired)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id)
             DELETE FROM hermet_audit_runs
              WHERE id <= (SELECT id FROM ins) - $11",
            &[
                &source,
                &crate::now_ms(),
                &(report.buckets as i32),
                &(report.audited_buckets as i32),
                &(report.differing_buckets as i32),
                &(report.expected_rows as i64),
                &(report.findings.len() as i64),
                &report.consistency_rate(),
                &Value::Object(summary),
                &repaired,
                &KEEP_RUNS,
            ],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: Kind) -> Finding {
        Finding {
            table: "user_conversation_view",
            kind,
            key: vec![("user_id".into(), 1), ("channel_id".into(), 2)],
            fields: Vec::new(),
        }
    }

    fn report(expected_rows: u64, findings: Vec<Finding>) -> AuditReport {
        AuditReport {
            expected_rows,
            findings,
            ..AuditReport::default()
        }
    }

    /// Rows the oracle does not expect are wrong rows too: a read side full of spurious rows
    /// is not 100 % consistent.
    #[test]
    fn extra_rows_lower_the_consistency_rate() {
        let extras = |n| (0..n).map(|_| finding(Kind::Extra)).collect::<Vec<_>>();
        assert_eq!(report(100, Vec::new()).consistency_rate(), 1.0);
        // 100 right rows and 100 spurious ones: half of what the read side holds is wrong.
        assert_eq!(report(100, extras(100)).consistency_rate(), 0.5);
        assert_eq!(report(99, extras(1)).consistency_rate(), 0.99);
        // Nothing expected, something there: nothing is right.
        assert_eq!(report(0, extras(3)).consistency_rate(), 0.0);
        // Missing and differing rows count against the expected ones as before.
        let mixed = vec![
            finding(Kind::Missing),
            finding(Kind::Field),
            finding(Kind::Extra),
            finding(Kind::Extra),
        ];
        assert_eq!(report(98, mixed).consistency_rate(), 0.96);
    }
}
