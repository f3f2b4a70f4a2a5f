//! The metrics hermet-store records (see `hermet_core::telemetry` for the contract): view rows
//! written by the projection, whichever path runs it.

use hermet_core::telemetry::Metric;

const VIEW_UPDATES: Metric = Metric::counter(
    "hermet_view_updates_total",
    "View rows written by projections.",
)
.labels(&["view"]);

/// Every series of this crate.
pub const METRICS: &[Metric] = &[VIEW_UPDATES];

/// The view table a projection wrote rows of (label `view`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenView {
    /// `user_conversation_view`.
    Conversation,
    /// `channel_view` (groups in read diffusion).
    Channel,
    /// `user_contact_view`.
    Contact,
}

impl WrittenView {
    pub fn as_str(self) -> &'static str {
        match self {
            WrittenView::Conversation => "conversation",
            WrittenView::Channel => "channel",
            WrittenView::Contact => "contact",
        }
    }
}

/// `rows` rows of `view` written.
pub fn view_rows_written(view: WrittenView, rows: usize) {
    metrics::counter!(VIEW_UPDATES.name, "view" => view.as_str()).increment(rows as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_core::telemetry;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            view_rows_written(WrittenView::Conversation, 1);
            view_rows_written(WrittenView::Channel, 1);
            view_rows_written(WrittenView::Contact, 1);
        });
        assert!(problems.is_empty(), "{problems:?}");
    }
}
