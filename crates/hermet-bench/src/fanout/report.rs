//! The report of `bench fanout`: one row per sync mode and group size, one list row per mode.

use std::fmt::{self, Write as _};

use serde::Serialize;

/// One group size in one sync mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SizeRow {
    pub mode: String,
    /// Members, the owner included.
    pub size: usize,
    /// How the members were added: `api` (`POST /v1/groups/{id}/members`, 1,000 per call) or
    /// `sql+api` (set-based SQL, then the last 1,000 through the API).
    pub setup: String,
    pub setup_secs: f64,
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub sent: u64,
    /// Scheduled sends skipped because the senders were more than one period late.
    pub missed: u64,
    pub errors: u64,
    pub send_p50_ms: f64,
    pub send_p99_ms: f64,
    /// (watcher, message) pairs timed: from the send request's start until the watcher's
    /// conversation list showed the group's last message at that seq or later.
    pub visible_samples: u64,
    /// Pairs not seen within the catch-up wait after the load.
    pub visible_timeouts: u64,
    pub visible_p50_ms: f64,
    pub visible_p99_ms: f64,
    pub visible_max_ms: f64,
    /// `n_tup_ins + n_tup_upd` of the `user_conversation_view` partitions during the phase.
    pub conversation_view_rows: i64,
    /// Same for `channel_view` (0 where the table does not exist).
    pub channel_view_rows: i64,
    /// Both, per message sent.
    pub rows_per_message: f64,
}

/// The conversation list of a member of many large groups, per mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListRow {
    pub mode: String,
    pub large_groups: usize,
    pub large_group_size: usize,
    pub small_conversations: usize,
    /// Conversations of the user with a last message (all of them, checked before reading).
    pub conversations: usize,
    pub page_size: i64,
    pub setup_secs: f64,
    pub reads: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    pub modes: Vec<String>,
    pub sizes: Vec<usize>,
    pub rate: f64,
    pub duration_secs: u64,
    pub senders: usize,
    pub watchers: usize,
    pub poll_ms: u64,
    /// `HERMET_FANOUT__READ_THRESHOLD` given to the servers; `None`: left unset.
    pub read_threshold: Option<u64>,
    /// The measured server's Redis list cache.
    pub cache: bool,
    pub shards: u32,
    pub sql_above: usize,
    pub hermet_bin: String,
    pub load_before: Option<String>,
    /// Per mode: seconds of the read-side rebuild after set-based member inserts (`dual_write`,
    /// `async`); `None` where none was needed.
    pub rebuild_secs: Vec<(String, Option<f64>)>,
    pub rows: Vec<SizeRow>,
    pub lists: Vec<ListRow>,
    pub error_samples: Vec<String>,
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let threshold = self
            .read_threshold
            .map_or_else(|| "unset".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "fanout: modes {}, group sizes {:?}, {:.0} msg/s offered for {} s per size by {} \
             senders, {} watchers polling every {} ms, fanout.read_threshold {threshold}, list \
             cache {}, {} shards, SQL set-up above {} members; {}; load average before: {}\n",
            self.modes.join(", "),
            self.sizes,
            self.rate,
            self.duration_secs,
            self.senders,
            self.watchers,
            self.poll_ms,
            if self.cache { "on" } else { "off" },
            self.shards,
            self.sql_above,
            self.hermet_bin,
            self.load_before.as_deref().unwrap_or("-")
        );
        out.push_str(
            "| mode | members | set-up | set-up s | offered msg/s | achieved msg/s | sent | missed | errors | send p50 ms | send p99 ms | visible samples (timed out) | visible p50 ms | visible p99 ms | visible max ms | view rows/msg | conversation_view rows | channel_view rows |\n\
             |---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {} ({}) | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                r.mode,
                r.size,
                r.setup,
                r.setup_secs,
                r.offered_per_s,
                r.achieved_per_s,
                r.sent,
                r.missed,
                r.errors,
                r.send_p50_ms,
                r.send_p99_ms,
                r.visible_samples,
                r.visible_timeouts,
                r.visible_p50_ms,
                r.visible_p99_ms,
                r.visible_max_ms,
                r.rows_per_message,
                r.conversation_view_rows,
                r.channel_view_rows
            );
        }
        out.push_str(
            "\nconversation list of a member of many large groups (first page, Redis cache off, one reader):\n\n\
             | mode | large groups × members | small conversations | conversations | page | set-up s | reads | errors | p50 ms | p99 ms | max ms |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for l in &self.lists {
            let _ = writeln!(
                out,
                "| {} | {} × {} | {} | {} | {} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} |",
                l.mode,
                l.large_groups,
                l.large_group_size,
                l.small_conversations,
                l.conversations,
                l.page_size,
                l.setup_secs,
                l.reads,
                l.errors,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
        for (mode, secs) in &self.rebuild_secs {
            if let Some(s) = secs {
                let _ = writeln!(
                    out,
                    "\n{mode}: read side rebuilt after the set-based member inserts in {s:.1} s \
                     (not in the set-up column)"
                );
            }
        }
        if !self.error_samples.is_empty() {
            let _ = writeln!(out, "\nerrors (first {}):", self.error_samples.len());
            for e in &self.error_samples {
                let _ = writeln!(out, "- {e}");
            }
        }
        f.write_str(&out)
    }
}
