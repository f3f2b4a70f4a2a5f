//! Rate limits: per-key GCRA buckets (`governor`'s keyed limiters), answered with 429.
//!
//! Contract:
//! - Four limits, each a rate (`per_second`) and a bucket (`burst`); a rate of 0 turns that limit
//!   off, and [`RateLimits::default`] has every limit off (the API library limits nothing unless
//!   told; the binary's `[rate_limits]` defaults are the production ones).
//!   - [`Bucket::Send`], per user: `POST /v1/channels/{channel_id}/messages`;
//!   - [`Bucket::Write`], per user: every authenticated `POST`, `PATCH` and `DELETE`, sends
//!     included (a send takes from both buckets);
//!   - [`Bucket::Signup`], per client address: `POST /v1/users`;
//!   - [`Bucket::AuthFailure`], per client address: each request whose bearer token is refused
//!     (bad signature, expired, not a user: what a guesser sends; a missing or malformed header
//!     guesses nothing and is not counted) takes one from the address's bucket and is answered
//!     401 while the bucket has some left. Once it is empty, further refused tokens are answered
//!     429 instead of 401 until it refills, so a guesser learns nothing more while throttled. A
//!     request whose token *is* valid is never held back by this bucket: users behind the same
//!     address as a guesser keep working.
//! - Over a limit: 429 `rate_limited` with `Retry-After`, the whole seconds (at least 1) until
//!   the bucket has room again, and `hermet_rate_limited_total{limit}` counts it. The request did
//!   nothing.
//! - The client address is the TCP peer (`ConnectInfo<SocketAddr>`, which the server must be
//!   started with: `into_make_service_with_connect_info::<SocketAddr>()`). When the peer is one
//!   of [`RateLimits::trusted_proxies`], the address is the right-most `X-Forwarded-For` hop that
//!   is not a trusted proxy (each proxy appends the peer it saw, so hops left of the first
//!   untrusted one are whatever the client wrote); a header that does not parse, or one made of
//!   trusted proxies only, leaves the peer. Without trusted proxies the header is ignored, so
//!   behind a load balancer that is not listed every client shares the balancer's buckets. A
//!   request without `ConnectInfo` (a router driven by `oneshot` in a test) is keyed as one
//!   shared unknown address.
//! - Memory: a keyed limiter keeps an entry per key it has seen. [`sweep`] drops entries whose
//!   bucket is full again (`retain_recent`: forgetting them changes no answer) and is run by
//!   `serve` as a task every [`SWEEP_EVERY`]; so memory follows the keys active in the last
//!   `burst / per_second` seconds, not every key ever seen.
//! - Limits are per process: behind N API processes a client gets up to N times the rate.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hermet_core::rows::UserId;
use serde::Deserialize;

use crate::error::ApiError;
use crate::{telemetry, AppState};

/// How often `serve` drops the entries of idle keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The route whose `POST` is a send.
const SEND_ROUTE: &str = "/v1/channels/{channel_id}/messages";

/// One limit: `per_second` requests a second on average, at most `burst` at once. A
/// `per_second` of 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: u32,
    pub burst: u32,
}

impl Limit {
    pub const OFF: Limit = Limit {
        per_second: 0,
        burst: 0,
    };

    pub const fn new(per_second: u32, burst: u32) -> Limit {
        Limit { per_second, burst }
    }

    pub fn is_on(&self) -> bool {
        self.per_second > 0
    }

    /// The limit as a quota: `None` when off; an error when on with a `burst` of 0 (a bucket
    /// that holds nothing refuses everything, which is never what was meant).
    pub fn quota(&self) -> Result<Option<Quota>, InvalidLimit> {
        let Some(rate) = NonZeroU32::new(self.per_second) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.burst).ok_or(InvalidLimit::ZeroBurst)?;
        Ok(Some(Quota::per_second(rate).allow_burst(burst)))
    }
}

/// A limit that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLimit {
    #[error(
        "burst must be at least 1 when per_second is above 0 (per_second = 0 turns the limit off)"
    )]
    ZeroBurst,
}

/// Which limit (label `limit` of `hermet_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Send,
    Write,
    Signup,
    AuthFailure,
}

impl Bucket {
    pub const ALL: [Bucket; 4] = [
        Bucket::Send,
        Bucket::Write,
        Bucket::Signup,
        Bucket::AuthFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Send => "send",
            Bucket::Write => "write",
            Bucket::Signup => "signup",
            Bucket::AuthFailure => "auth_failure",
        }
    }
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or one address of proxies whose `X-Forwarded-For` is
/// believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

/// A `trusted_proxies` entry that is not an address or a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or network (like 10.0.0.0/8)")]
pub struct InvalidProxyNet(String);

impl FromStr for ProxyNet {
    type Err = InvalidProxyNet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidProxyNet(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        Ok(ProxyNet { addr, prefix })
    }
}

impl TryFrom<String> for ProxyNet {
    type Error = InvalidProxyNet;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl ProxyNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may come as IPv4-mapped IPv6 from a dual-stack listener.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// The settings (see the module doc); [`Default`] turns every limit off.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub send: Limit,
    pub write: Limit,
    pub signup: Limit,
    pub auth_failure: Limit,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ProxyNet>,
}

impl RateLimits {
    /// Every limit with its name, for validation and messages.
    pub fn each(&self) -> [(Bucket, Limit); 4] {
        [
            (Bucket::Send, self.send),
            (Bucket::Write, self.write),
            (Bucket::Signup, self.signup),
            (Bucket::AuthFailure, self.auth_failure),
        ]
    }

    /// The first limit that cannot be applied.
    pub fn validate(&self) -> Result<(), (Bucket, InvalidLimit)> {
        for (bucket, limit) in self.each() {
            limit.quota().map_err(|e| (bucket, e))?;
        }
        Ok(())
    }
}

/// The client address a per-address limit is keyed by; `None`: unknown (no `ConnectInfo`).
type AddrKey = Option<IpAddr>;

/// The limiters of one process (in [`AppState`]).
pub(crate) struct Limiters {
    send: Option<DefaultKeyedRateLimiter<UserId>>,
    write: Option<DefaultKeyedRateLimiter<UserId>>,
    signup: Option<DefaultKeyedRateLimiter<AddrKey>>,
    auth_failure: Option<DefaultKeyedRateLimiter<AddrKey>>,
    trusted: Vec<ProxyNet>,
    clock: DefaultClock,
}

impl Limiters {
    /// A limit that cannot be applied (burst 0) is left off with an error logged: the binary
    /// validates its configuration before it gets here.
    pub(crate) fn new(cfg: &RateLimits) -> Limiters {
        fn keyed<K: std::hash::Hash + Eq + Clone>(
            bucket: Bucket,
            limit: Limit,
        ) -> Option<DefaultKeyedRateLimiter<K>> {
            match limit.quota() {
                Ok(q) => q.map(RateLimiter::keyed),
                Err(e) => {
                    tracing::error!(limit = bucket.as_str(), error = %e, "rate limit left off");
                    None
                }
            }
        }
        telemetry::rate_limits_registered();
        Limiters {
            send: keyed(Bucket::Send, cfg.send),
            write: keyed(Bucket::Write, cfg.write),
            signup: keyed(Bucket::Signup, cfg.signup),
            auth_failure: keyed(Bucket::AuthFailure, cfg.auth_failure),
            trusted: cfg.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one from `key`'s bucket of `limiter` (none: the limit is off).
    fn take<K: std::hash::Hash + Eq + Clone>(
        &self,
        bucket: Bucket,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            telemetry::rate_limited(bucket);
            let wait = not_until.wait_time_from(self.clock.now());
            rate_limited(bucket, wait)
        })
    }

    fn sweep(&self) {
        fn one<K: std::hash::Hash + Eq + Clone>(l: &Option<DefaultKeyedRateLimiter<K>>) {
            if let Some(l) = l {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        one(&self.send);
        one(&self.write);
        one(&self.signup);
        one(&self.auth_failure);
    }

    /// The client address of a request (see the module doc).
    fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> AddrKey {
        let peer = peer?;
        if !self.trusted.iter().any(|n| n.contains(peer)) {
            return Some(peer);
        }
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            for hop in value.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => return Some(peer),
                }
            }
        }
        let client = hops
            .into_iter()
            .rev()
            .find(|ip| !self.trusted.iter().any(|n| n.contains(*ip)));
        Some(client.unwrap_or(peer))
    }
}

/// The 429 answer of `bucket`, to come back after `wait`.
fn rate_limited(bucket: Bucket, wait: Duration) -> ApiError {
    // Whole seconds, rounded up: a client that waits what it is told finds room.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many requests ({} limit); retry after {} s",
            bucket.as_str(),
            secs.max(1)
        ),
    );
    e.retry_after = Some(secs.max(1));
    e
}

/// The client address of a request, as the per-address limits key it. Never rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    pub fn of(parts: &Parts, state: &AppState) -> ClientAddr {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        ClientAddr(state.inner.limits.client(peer, &parts.headers))
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(ClientAddr::of(parts, state))
    }
}

/// After a user's token verified: the write limit for `POST`/`PATCH`/`DELETE`, and the send
/// limit too for a send.
pub(crate) fn check_user(state: &AppState, parts: &Parts, user: UserId) -> Result<(), ApiError> {
    let l = &state.inner.limits;
    if !matches!(parts.method, Method::POST | Method::PATCH | Method::DELETE) {
        return Ok(());
    }
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if parts.method == Method::POST && route == Some(SEND_ROUTE) {
        l.take(Bucket::Send, &l.send, &user)?;
    }
    l.take(Bucket::Write, &l.write, &user)
}

/// At the top of `POST /v1/users`.
pub(crate) fn check_signup(state: &AppState, addr: ClientAddr) -> Result<(), ApiError> {
    let l = &state.inner.limits;
    l.take(Bucket::Signup, &l.signup, &addr.0)
}

/// A bearer token was refused with `refused`: what to answer (the refusal, or 429 once the
/// address's bucket of failures is empty).
pub(crate) fn auth_failed(state: &AppState, addr: ClientAddr, refused: ApiError) -> ApiError {
    telemetry::auth_failure();
    let l = &state.inner.limits;
    match l.take(Bucket::AuthFailure, &l.auth_failure, &addr.0) {
        Ok(()) => refused,
        Err(limited) => limited,
    }
}

/// Drops the entries of keys whose bucket is full again, every `every`, until the task is
/// cancelled (`serve` runs it through its `Tasks`).
pub async fn sweep(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.inner.limits.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiters(trusted: &[&str]) -> Limiters {
        Limiters::new(&RateLimits {
            signup: Limit::new(1, 2),
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            ..RateLimits::default()
        })
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_429_with_whole_seconds() {
        let l = limiters(&[]);
        let key = Some(ip("192.0.2.1"));
        assert!(l.take(Bucket::Signup, &l.signup, &key).is_ok());
        assert!(l.take(Bucket::Signup, &l.signup, &key).is_ok());
        let e = l.take(Bucket::Signup, &l.signup, &key).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!((e.code, e.retry_after), ("rate_limited", Some(1)));
        // Another address has a bucket of its own.
        assert!(l
            .take(Bucket::Signup, &l.signup, &Some(ip("192.0.2.2")))
            .is_ok());
        // Off limits never refuse.
        for _ in 0..100 {
            assert!(l.take(Bucket::Send, &l.send, &7).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        let secs = |d| rate_limited(Bucket::Write, d).retry_after;
        assert_eq!(secs(Duration::ZERO), Some(1));
        assert_eq!(secs(Duration::from_millis(10)), Some(1));
        assert_eq!(secs(Duration::from_millis(1001)), Some(2));
        assert_eq!(secs(Duration::from_secs(3)), Some(3));
    }

    #[test]
    fn a_burst_of_zero_is_refused_when_on() {
        assert_eq!(Limit::new(5, 0).quota(), Err(InvalidLimit::ZeroBurst));
        assert_eq!(Limit::new(0, 0).quota(), Ok(None));
        assert!(Limit::new(5, 1).quota().unwrap().is_some());
        let cfg = RateLimits {
            auth_failure: Limit::new(1, 0),
            ..RateLimits::default()
        };
        assert_eq!(
            cfg.validate(),
            Err((Bucket::AuthFailure, InvalidLimit::ZeroBurst))
        );
    }

    #[test]
    fn proxy_networks_parse_and_match() {
        let net: ProxyNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        let one: ProxyNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: ProxyNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let odd: ProxyNet = "10.0.0.0/9".parse().unwrap();
        assert!(odd.contains(ip("10.127.0.1")) && !odd.contains(ip("10.128.0.1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer = Some(ip("10.0.0.5"));
        // Not trusted: the header is ignored.
        assert_eq!(limiters(&[]).client(peer, &xff("203.0.113.9")), peer);
        let l = limiters(&["10.0.0.0/8"]);
        assert_eq!(l.client(peer, &xff("203.0.113.9")), Some(ip("203.0.113.9")));
        // The right-most untrusted hop: what the client wrote on the left is not believed.
        assert_eq!(
            l.client(peer, &xff("198.51.100.1, 203.0.113.9, 10.0.0.7")),
            Some(ip("203.0.113.9"))
        );
        // Only proxies, a hop that does not parse, or no header: the peer.
        assert_eq!(l.client(peer, &xff("10.0.0.7")), peer);
        assert_eq!(l.client(peer, &xff("203.0.113.9, junk")), peer);
        assert_eq!(l.client(peer, &HeaderMap::new()), peer);
        // No ConnectInfo: the shared unknown key.
        assert_eq!(l.client(None, &xff("203.0.113.9")), None);
    }

    #[test]
    fn sweep_forgets_full_buckets() {
        let l = Limiters::new(&RateLimits {
            signup: Limit::new(1000, 1),
            ..RateLimits::default()
        });
        l.take(Bucket::Signup, &l.signup, &Some(ip("192.0.2.1")))
            .unwrap();
        let len = |l: &Limiters| l.signup.as_ref().map_or(0, |s| s.len());
        assert_eq!(len(&l), 1);
        // A thousandth of a second refills it.
        std::thread::sleep(Duration::from_millis(20));
        l.sweep();
        assert_eq!(len(&l), 0, "a bucket that refilled is dropped");
    }
}
