//! The metrics of the conversation-list cache (see `hermet_core::telemetry` for the contract).

use hermet_core::telemetry::Metric;

const REQUESTS: Metric = Metric::counter(
    "hermet_cache_requests_total",
    "Conversation-list cache look-ups, by result (hit: a page under the owner's current version, before the check of its read-diffusion channel versions; miss).",
)
.labels(&["result"]);
const STORES: Metric = Metric::counter(
    "hermet_cache_stores_total",
    "Pages offered to the cache, by result (stored, stale: refused by the version check).",
)
.labels(&["result"]);
const INVALIDATIONS: Metric = Metric::counter(
    "hermet_cache_invalidations_total",
    "Owners whose cached pages were invalidated.",
);
const CHANNEL_INVALIDATIONS: Metric = Metric::counter(
    "hermet_cache_channel_invalidations_total",
    "Read-diffusion channels whose cache versions were invalidated (each retires the cached pages recorded against it).",
);
const FALLBACKS: Metric = Metric::counter(
    "hermet_cache_fallbacks_total",
    "Reads served from PostgreSQL because Redis was unreachable or untrusted.",
)
.starts_at_zero();
const ERRORS: Metric = Metric::counter(
    "hermet_cache_errors_total",
    "Failed Redis calls, by operation (lookup, store, channel_versions, invalidate, invalidate_channels, invalidate_all, epoch).",
)
.labels(&["op"]);

/// Every series of this crate.
pub const METRICS: &[Metric] = &[
    REQUESTS,
    STORES,
    INVALIDATIONS,
    CHANNEL_INVALIDATIONS,
    FALLBACKS,
    ERRORS,
];

/// A Redis call of the cache (label `op` of `hermet_cache_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    Lookup,
    Store,
    ChannelVersions,
    Invalidate,
    InvalidateChannels,
    InvalidateAll,
    /// Removing the epoch to make failed invalidations good.
    Epoch,
}

impl CacheOp {
    pub const ALL: [CacheOp; 7] = [
        CacheOp::Lookup,
        CacheOp::Store,
        CacheOp::ChannelVersions,
        CacheOp::Invalidate,
        CacheOp::InvalidateChannels,
        CacheOp::InvalidateAll,
        CacheOp::Epoch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOp::Lookup => "lookup",
            CacheOp::Store => "store",
            CacheOp::ChannelVersions => "channel_versions",
            CacheOp::Invalidate => "invalidate",
            CacheOp::InvalidateChannels => "invalidate_channels",
            CacheOp::InvalidateAll => "invalidate_all",
            CacheOp::Epoch => "epoch",
        }
    }
}

/// What a look-up found (label `result` of `hermet_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Hit,
    Miss,
}

impl LookupResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Hit => "hit",
            LookupResult::Miss => "miss",
        }
    }
}

/// What became of a page offered (label `result` of `hermet_cache_stores_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    Stored,
    /// Refused by the version check.
    Stale,
}

impl StoreResult {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreResult::Stored => "stored",
            StoreResult::Stale => "stale",
        }
    }
}

/// Whose versions an invalidation removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidated {
    /// Owners' (`hermet_cache_invalidations_total`).
    Owners,
    /// Read-diffusion channels' (`hermet_cache_channel_invalidations_total`).
    Channels,
}

/// Creates `hermet_cache_errors_total` at 0 for every operation (when a cache is configured).
pub fn register_errors() {
    for op in CacheOp::ALL {
        metrics::counter!(ERRORS.name, "op" => op.as_str()).increment(0);
    }
}

/// A failed (or untrustworthy) Redis call.
pub fn error(op: CacheOp) {
    metrics::counter!(ERRORS.name, "op" => op.as_str()).increment(1);
}

/// A read served by PostgreSQL because the cache could not be used.
pub fn fallback() {
    metrics::counter!(FALLBACKS.name).increment(1);
}

pub fn lookup(result: LookupResult) {
    metrics::counter!(REQUESTS.name, "result" => result.as_str()).increment(1);
}

pub fn stored(result: StoreResult) {
    metrics::counter!(STORES.name, "result" => result.as_str()).increment(1);
}

/// `n` owners' or channels' versions removed.
pub fn invalidated(whose: Invalidated, n: usize) {
    let name = match whose {
        Invalidated::Owners => INVALIDATIONS.name,
        Invalidated::Channels => CHANNEL_INVALIDATIONS.name,
    };
    metrics::counter!(name).increment(n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_core::telemetry;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            telemetry::register(METRICS);
            register_errors();
            error(CacheOp::Lookup);
            fallback();
            lookup(LookupResult::Hit);
            stored(StoreResult::Stale);
            invalidated(Invalidated::Owners, 1);
            invalidated(Invalidated::Channels, 1);
        });
        assert!(problems.is_empty(), "{problems:?}");
    }
}
