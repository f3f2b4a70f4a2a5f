//! User tokens signed by the product's identity provider, verified against its published key
//! set (JWKS, RFC 7517).
//!
//! Contract:
//! - [`JwksConfig`] (`[auth.jwks]`) names the key set (`source`: a file path, or an `http://` /
//!   `https://` URL), the `issuer` and `audience` every token must carry, and the accepted
//!   algorithms: a subset of RS256, ES256 and EdDSA (Ed25519). Shared-secret (`HS*`) algorithms
//!   and `none` are refused by [`JwksConfig::validate`]: the key set is public, so a key from it
//!   used as an HMAC secret would let anyone sign.
//! - [`JwksVerifier::new`] loads the key set once and fails if that load fails or yields no
//!   usable key: a server that cannot verify its users must not start.
//! - [`JwksVerifier::verify`] accepts a token only if: its header's `alg` is one of the configured
//!   algorithms (so `none` and `HS*` are refused before any key is looked at); its `kid` names a
//!   key of the set (a set of one key also accepts a token without `kid`); that key's own type and
//!   `alg` are those of the header's `alg`; the signature verifies; `iss` and `aud` match; `exp`
//!   is present and not past, `nbf` (when present) is not ahead, both with `leeway_secs`; `sub` is
//!   a non-empty string of at most [`MAX_SUBJECT_BYTES`] bytes. Keys of the set that are symmetric
//!   (`kty: oct`), for encryption, of another curve or of an algorithm not configured are never
//!   loaded.
//! - An unknown `kid` makes the verifier re-read the key set and try once more (the provider
//!   rotated its keys), at most once per `refresh_min_interval_secs`: a flood of tokens with
//!   made-up `kid`s costs the provider at most one request per interval. [`JwksVerifier::refresh`]
//!   re-reads on demand and [`JwksVerifier::refresh_periodically`] every `refresh_interval_secs`.
//!   A failed or empty re-read keeps the previous keys (and logs a warning); a successful one
//!   replaces them, so a key the provider withdrew stops verifying.
//! - The keys are parsed once per load and read without a lock ([`ArcSwap`]); verifying a token
//!   allocates only for its header, its claims and the identity returned.
//! - [`JwksError`]: every variant but [`JwksError::Unavailable`] is the token's fault (401);
//!   `Unavailable` (no key at all) is the server's (503). No message repeats the token.
//! - Routing: [`token_kind`] tells from the header's `alg` alone (without verifying) whether a
//!   bearer token is for this verifier or for the HS256 secret ([`crate::auth::TokenKeys`]).
//!
//! The verifier maps a token to an [`ExternalIdentity`] (the provider's `sub` and a nickname);
//! mapping that to a hermet user (`external_id`) is the caller's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;

/// Largest key-set document read, from a file or over HTTP.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Longest accepted `sub` (the external id a user is mapped by).
pub const MAX_SUBJECT_BYTES: usize = 255;

/// Longest accepted encoded token header: real ones are about 100 bytes; a header with a
/// certificate chain is not something this verifier uses.
const MAX_HEADER_CHARS: usize = 4096;

/// The algorithms a key set may be used with.
pub const SUPPORTED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// `[auth.jwks]`: where the identity provider's keys are and what its tokens must say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The key set: a file path (re-read on every refresh) or an `http://` / `https://` URL.
    pub source: String,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` (one of them) every token must carry.
    pub audience: Audiences,
    /// Accepted header `alg`s: a subset of `RS256`, `ES256`, `EdDSA`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// An unknown `kid` re-reads the key set at most once per this interval.
    #[serde(default = "default_refresh_min_interval_secs")]
    pub refresh_min_interval_secs: u64,
    /// The key set is re-read this often in the background (0: only on an unknown `kid`).
    #[serde(default = "default_refresh_interval_secs")]
    pub refresh_interval_secs: u64,
    /// Longest a fetch of a URL source may take (connect and body).
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// A valid token whose `sub` is no user yet creates one (otherwise it is refused).
    #[serde(default)]
    pub create_users: bool,
    /// The claim a new user's nickname is taken from; `preferred_username`, then `sub`, when the
    /// token lacks it.
    #[serde(default = "default_nickname_claim")]
    pub nickname_claim: String,
}

/// `audience = "x"` or `audience = ["x", "y"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Audiences::One(a) => std::slice::from_ref(a),
            Audiences::Many(v) => v,
        }
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_refresh_min_interval_secs() -> u64 {
    60
}
fn default_refresh_interval_secs() -> u64 {
    3600
}
fn default_fetch_timeout_ms() -> u64 {
    5_000
}
fn default_nickname_claim() -> String {
    "name".into()
}

/// Why a [`JwksConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksConfigError {
    #[error("auth.jwks.source must be a file path or an http:// or https:// URL: {0}")]
    Source(String),
    #[error("auth.jwks.{0} must not be empty")]
    Empty(&'static str),
    #[error(
        "auth.jwks.algorithms: {0} is a shared-secret algorithm; tokens verified against a \
         public key set must be signed with RS256, ES256 or EdDSA"
    )]
    SharedSecretAlgorithm(String),
    #[error("auth.jwks.algorithms: `none` (unsigned tokens) is never accepted")]
    Unsigned,
    #[error("auth.jwks.algorithms: {0} is not supported (RS256, ES256 and EdDSA are)")]
    UnsupportedAlgorithm(String),
    #[error("auth.jwks.{field} must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
    },
}

/// Where the key set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(reqwest::Url),
}

impl JwksConfig {
    /// Checks everything that can be checked without reading the key set.
    pub fn validate(&self) -> Result<(), JwksConfigError> {
        self.source()?;
        if self.issuer.trim().is_empty() {
            return Err(JwksConfigError::Empty("issuer"));
        }
        let auds = self.audience.as_slice();
        if auds.is_empty() || auds.iter().any(|a| a.trim().is_empty()) {
            return Err(JwksConfigError::Empty("audience"));
        }
        self.accepted_algorithms()?;
        if self.nickname_claim.trim().is_empty() {
            return Err(JwksConfigError::Empty("nickname_claim"));
        }
        let range = |field, v: u64, min, max| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(JwksConfigError::OutOfRange { field, min, max })
            }
        };
        range("leeway_secs", self.leeway_secs, 0, 300)?;
        range(
            "refresh_min_interval_secs",
            self.refresh_min_interval_secs,
            1,
            86_400,
        )?;
        if self.refresh_interval_secs != 0 {
            range(
                "refresh_interval_secs",
                self.refresh_interval_secs,
                self.refresh_min_interval_secs,
                7 * 86_400,
            )?;
        }
        range("fetch_timeout_ms", self.fetch_timeout_ms, 100, 60_000)?;
        Ok(())
    }

    /// The parsed `source`.
    pub fn source(&self) -> Result<Source, JwksConfigError> {
        let s = self.source.trim();
        if s.is_empty() {
            return Err(JwksConfigError::Empty("source"));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url =
                reqwest::Url::parse(s).map_err(|e| JwksConfigError::Source(format!("{e}")))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(JwksConfigError::Source("the URL has no host".into()));
            }
            Ok(Source::Url(url))
        } else if lower.contains("://") {
            Err(JwksConfigError::Source(
                "only http:// and https:// URLs are fetched".into(),
            ))
        } else {
            Ok(Source::File(PathBuf::from(s)))
        }
    }

    /// The configured algorithms, each one of [`SUPPORTED_ALGORITHMS`], without repeats.
    pub fn accepted_algorithms(&self) -> Result<Vec<Algorithm>, JwksConfigError> {
        if self.algorithms.is_empty() {
            return Err(JwksConfigError::Empty("algorithms"));
        }
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let name = name.trim();
            if name.eq_ignore_ascii_case("none") {
                return Err(JwksConfigError::Unsigned);
            }
            if name.to_ascii_uppercase().starts_with("HS") {
                return Err(JwksConfigError::SharedSecretAlgorithm(name.to_owned()));
            }
            let alg = SUPPORTED_ALGORITHMS
                .into_iter()
                .find(|a| alg_name(*a) == name)
                .ok_or_else(|| JwksConfigError::UnsupportedAlgorithm(name.to_owned()))?;
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Who a valid token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// `sub`: the provider's id of the user, what hermet maps to a user (`external_id`).
    pub subject: String,
    /// The configured nickname claim, else `preferred_username` (non-empty strings only).
    pub nickname: Option<String>,
    /// `iat`, in milliseconds since the epoch.
    pub issued_at_ms: Option<i64>,
    /// `exp`, in seconds since the epoch.
    pub expires_at: u64,
}

impl ExternalIdentity {
    /// The nickname for a new user: the nickname claim, else `sub`.
    pub fn display_name(&self) -> &str {
        self.nickname.as_deref().unwrap_or(&self.subject)
    }
}

/// Why a token is refused, or (`Unavailable`) cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not three base64url parts with a JSON header and claims, or a header naming critical
    /// extensions (`crit`).
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not one of the configured ones (`none` and `HS*` never are).
    #[error("token algorithm {0} is not accepted")]
    DisallowedAlgorithm(&'static str),
    /// No key of the set (even after a re-read) has the token's `kid`.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The token has no `kid` and the set has several keys.
    #[error("token names no key (kid) and the key set has several")]
    MissingKeyId,
    /// The key named by `kid` is not of the header's algorithm.
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or, for `sub`, is empty or too long.
    #[error("token claim {0} is invalid")]
    InvalidClaim(&'static str),
    /// No key at all to check against (the provider could not be read): the server's fault.
    #[error("the identity provider's keys are not available")]
    Unavailable,
}

impl JwksError {
    /// True for the one failure that is the server's, not the token's (503, not 401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, JwksError::Unavailable)
    }
}

impl From<JwksError> for ApiError {
    fn from(e: JwksError) -> ApiError {
        if e.is_unavailable() {
            ApiError::unavailable(e.to_string())
        } else {
            ApiError::unauthorized(e.to_string())
        }
    }
}

/// Why the key set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading the key set {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("fetching the key set: {0}")]
    Http(reqwest::Error),
    #[error("the key set answered HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not a JWKS document: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the key set has no usable key ({skipped} skipped: see the warnings)")]
    NoUsableKeys { skipped: usize },
}

/// Why a verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum JwksLoadError {
    #[error(transparent)]
    Config(#[from] JwksConfigError),
    #[error("auth.jwks: {0}")]
    Fetch(#[from] FetchError),
}

/// How a bearer token is to be verified, from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `HS256`/`HS384`/`HS512`: hermet's own secret ([`crate::auth::TokenKeys`]).
    SharedSecret,
    /// An asymmetric algorithm: the identity provider's key set ([`JwksVerifier`]), which
    /// refuses the ones not configured.
    External,
    /// No readable header or an algorithm no verifier accepts (`none`): refuse it (401); the
    /// HS256 verifier refuses it as well.
    Unrecognized,
}

/// Which verifier a token is for, by its header's `alg`; nothing is verified.
pub fn token_kind(token: &str) -> TokenKind {
    match parse_header(token)
        .ok()
        .and_then(|h| known_algorithm(&h.alg))
    {
        Some(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => TokenKind::SharedSecret,
        Some(_) => TokenKind::External,
        None => TokenKind::Unrecognized,
    }
}

/// Shorthand: [`token_kind`] is [`TokenKind::External`].
pub fn is_external(token: &str) -> bool {
    token_kind(token) == TokenKind::External
}

/// The header fields the verifier routes on.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    /// Critical extensions (RFC 7515 §4.1.11): none is understood, so a token naming any is
    /// refused.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The decoded JSON of a token's header (the caller parses it, borrowing from it).
fn header_json(token: &str) -> Result<Vec<u8>, JwksError> {
    let (encoded, rest) = token.split_once('.').ok_or(JwksError::Malformed)?;
    if encoded.len() > MAX_HEADER_CHARS || rest.split('.').count() != 2 {
        return Err(JwksError::Malformed);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwksError::Malformed)
}

fn parse_header(token: &str) -> Result<OwnedHeader, JwksError> {
    let json = header_json(token)?;
    let h: RawHeader<'_> = serde_json::from_slice(&json).map_err(|_| JwksError::Malformed)?;
    if h.crit.is_some() {
        return Err(JwksError::Malformed);
    }
    Ok(OwnedHeader {
        alg: h.alg.into_owned(),
        kid: h.kid.map(Cow::into_owned),
    })
}

struct OwnedHeader {
    alg: String,
    kid: Option<String>,
}

fn known_algorithm(name: &str) -> Option<Algorithm> {
    name.parse::<Algorithm>().ok()
}

/// Where the key set is read from, with what.
enum Origin {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        http: reqwest::Client,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Url { url, .. } if url.password().is_some() => {
                // Logged: keep a password in the URL out of the logs.
                let mut shown = url.clone();
                let _ = shown.set_password(Some("***"));
                write!(f, "{shown}")
            }
            Origin::Url { url, .. } => write!(f, "{url}"),
        }
    }
}

/// A verification key of the set, parsed once per load.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one load.
struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, JwksError> {
        let candidates = |k: &&Key| match kid {
            Some(kid) => k.kid.as_deref() == Some(kid),
            None => true,
        };
        if kid.is_none() && self.keys.len() > 1 {
            return Err(JwksError::MissingKeyId);
        }
        let mut named = self.keys.iter().filter(candidates).peekable();
        if named.peek().is_none() {
            return Err(if self.keys.is_empty() {
                JwksError::Unavailable
            } else {
                JwksError::UnknownKey
            });
        }
        named.find(|k| k.alg == alg).ok_or(JwksError::KeyMismatch)
    }
}

/// The claims read from a verified token (`iss`, `aud`, `nbf` are checked by `jsonwebtoken`).
/// Every field is optional here so that a missing one is reported as such by the validation.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// Verifies tokens against the identity provider's key set; see the module doc.
pub struct JwksVerifier {
    origin: Origin,
    algorithms: Vec<Algorithm>,
    /// One validation per accepted algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    nickname_claim: String,
    create_users: bool,
    refresh_min_interval: Duration,
    refresh_interval: Option<Duration>,
    keys: ArcSwap<KeySet>,
    /// Serializes re-reads; holds when an unknown `kid` last made one start.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("source", &self.origin.to_string())
            .field("algorithms", &self.algorithms)
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// Validates `cfg` and loads the key set; fails if it cannot be read or has no usable key.
    pub async fn new(cfg: &JwksConfig) -> Result<JwksVerifier, JwksLoadError> {
        cfg.validate()?;
        let source = cfg.source()?;
        let algorithms = cfg.accepted_algorithms()?;
        let audiences = cfg.audience.as_slice();
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[cfg.issuer.as_str()]);
                v.set_audience(audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (alg, v)
            })
            .collect();
        let timeout = Duration::from_millis(cfg.fetch_timeout_ms);
        let origin = match source {
            Source::File(path) => Origin::File(path),
            Source::Url(url) => {
                if url.scheme() == "http" {
                    tracing::warn!(
                        url = %url,
                        "auth.jwks.source is plain http: whoever can alter the traffic can \
                         substitute keys; use https outside tests"
                    );
                }
                let http = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .user_agent(concat!("hermet/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(FetchError::Http)?;
                Origin::Url { url, http }
            }
        };
        let verifier = JwksVerifier {
            origin,
            algorithms,
            validations,
            nickname_claim: cfg.nickname_claim.clone(),
            create_users: cfg.create_users,
            refresh_min_interval: Duration::from_secs(cfg.refresh_min_interval_secs),
            refresh_interval: (cfg.refresh_interval_secs > 0)
                .then(|| Duration::from_secs(cfg.refresh_interval_secs)),
            keys: ArcSwap::from_pointee(KeySet { keys: Vec::new() }),
            refresh: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        };
        let count = verifier.refresh().await?;
        tracing::info!(source = %verifier.origin, keys = count, "identity provider keys loaded");
        Ok(verifier)
    }

    /// Whether a valid token of an unknown subject creates a user (`create_users`).
    pub fn creates_users(&self) -> bool {
        self.create_users
    }

    /// How many times the key set was read (loads and re-reads, failed ones included).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Verifies `token`; see the module doc for the rules.
    pub async fn verify(&self, token: &str) -> Result<ExternalIdentity, JwksError> {
        let header = parse_header(token)?;
        let alg = known_algorithm(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| {
                JwksError::DisallowedAlgorithm(known_algorithm(&header.alg).map_or("?", alg_name))
            })?;
        let kid = header.kid.as_deref();
        {
            let keys = self.keys.load();
            match keys.find(kid, alg) {
                Ok(key) => return self.decode(token, key, alg),
                Err(JwksError::UnknownKey) => {}
                Err(e) => return Err(e),
            }
        }
        // The provider may have rotated its keys since the last read.
        self.refresh_for_unknown_key().await;
        let keys = self.keys.load();
        let key = keys.find(kid, alg)?;
        self.decode(token, key, alg)
    }

    fn decode(
        &self,
        token: &str,
        key: &Key,
        alg: Algorithm,
    ) -> Result<ExternalIdentity, JwksError> {
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(JwksError::DisallowedAlgorithm(alg_name(alg)))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map_err(|e| token_error(e.kind()))?;
        let mut claims = data.claims;
        let subject = claims.sub.take().ok_or(JwksError::MissingClaim("sub"))?;
        if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
            return Err(JwksError::InvalidClaim("sub"));
        }
        let exp = claims.exp.ok_or(JwksError::MissingClaim("exp"))?;
        let mut take_string = |name: &str| match claims.rest.remove(name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        };
        let nickname = if self.nickname_claim == "sub" {
            Some(subject.clone())
        } else {
            take_string(&self.nickname_claim).or_else(|| take_string("preferred_username"))
        };
        Ok(ExternalIdentity {
            subject,
            nickname,
            issued_at_ms: claims
                .iat
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| (t * 1000.0) as i64),
            expires_at: exp as u64,
        })
    }

    /// Re-reads the key set after an unknown `kid`, unless an unknown `kid` made it re-read
    /// less than `refresh_min_interval` ago. Concurrent callers wait for the re-read in progress
    /// instead of starting their own.
    async fn refresh_for_unknown_key(&self) {
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.refresh_min_interval) {
            return;
        }
        *last = Some(Instant::now());
        // Failures are logged in `reload`; the previous keys stay.
        let _ = self.reload("unknown kid").await;
    }

    /// Re-reads the key set now; returns how many keys it has. On failure the previous keys
    /// stay.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let _serialized = self.refresh.lock().await;
        self.reload("refresh").await
    }

    /// Re-reads the key set every `refresh_interval_secs`, forever (returns at once when that
    /// is 0); spawn it and drop it to stop.
    pub async fn refresh_periodically(&self) {
        let Some(every) = self.refresh_interval else {
            return;
        };
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let _ = self.refresh().await;
        }
    }

    /// Reads the key set and, if it has a usable key, replaces the current one. The caller holds
    /// `refresh`.
    async fn reload(&self, why: &'static str) -> Result<usize, FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let loaded = self.fetch().await.and_then(|doc| self.parse_key_set(&doc));
        match loaded {
            Ok(set) => {
                let count = set.keys.len();
                let kids: Vec<&str> = set
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref().unwrap_or("-"))
                    .collect();
                tracing::debug!(source = %self.origin, why, keys = count, kids = ?kids, "identity provider keys read");
                self.keys.store(Arc::new(set));
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(
                    source = %self.origin,
                    why,
                    error = %e,
                    kept_keys = self.keys.load().keys.len(),
                    "could not read the identity provider's keys; keeping the previous ones"
                );
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        match &self.origin {
            Origin::File(path) => {
                let path = path.clone();
                let shown = path.display().to_string();
                let read = tokio::task::spawn_blocking(move || read_capped(&path)).await;
                match read {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(ReadError::TooLarge)) => Err(FetchError::TooLarge),
                    Ok(Err(ReadError::Io(source))) => Err(FetchError::File {
                        path: shown,
                        source,
                    }),
                    Err(join) => Err(FetchError::File {
                        path: shown,
                        source: std::io::Error::other(join.to_string()),
                    }),
                }
            }
            Origin::Url { url, http } => {
                // The URL is in the log line already (password masked): not in the error.
                let http_error = |e: reqwest::Error| FetchError::Http(e.without_url());
                let mut resp = http.get(url.clone()).send().await.map_err(http_error)?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                if resp
                    .content_length()
                    .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
                {
                    return Err(FetchError::TooLarge);
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
                    if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(FetchError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }

    /// The usable keys of a JWKS document; the others are skipped with a warning. A document
    /// with none is an error (the previous keys stay).
    fn parse_key_set(&self, doc: &[u8]) -> Result<KeySet, FetchError> {
        // Keys one at a time: one key of a type `jsonwebtoken` does not know must not hide the
        // others.
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(doc)?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        let mut skipped = 0;
        for value in doc.keys {
            let kid = value
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("-")
                .to_owned();
            match serde_json::from_value::<Jwk>(value)
                .map_err(|e| format!("not a key jsonwebtoken reads: {e}"))
                .and_then(|jwk| self.usable_key(&jwk))
            {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    skipped += 1;
                    tracing::warn!(source = %self.origin, kid, reason, "identity provider key skipped");
                }
            }
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys { skipped });
        }
        Ok(KeySet { keys })
    }

    fn usable_key(&self, jwk: &Jwk) -> Result<Key, String> {
        let common = &jwk.common;
        match &common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => return Err("not a signature key (use)".into()),
        }
        if let Some(ops) = &common.key_operations {
            if !ops.iter().any(|o| matches!(o, KeyOperations::Verify)) {
                return Err("not a verification key (key_ops)".into());
            }
        }
        // The one algorithm the key's type allows among the supported ones; HMAC keys never.
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::OctetKeyPair(_) => {
                return Err("curve not supported (P-256 and Ed25519 are)".into())
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric key: never used to verify".into())
            }
        };
        if let Some(declared) = common.key_algorithm {
            let same = matches!(
                (declared, alg),
                (KeyAlgorithm::RS256, Algorithm::RS256)
                    | (KeyAlgorithm::ES256, Algorithm::ES256)
                    | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
            );
            if !same {
                return Err(format!("alg {declared:?} not supported for this key type"));
            }
        }
        if !self.algorithms.contains(&alg) {
            return Err(format!("{} is not in auth.jwks.algorithms", alg_name(alg)));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable key: {e}"))?;
        Ok(Key {
            kid: common.key_id.clone(),
            alg,
            key,
        })
    }
}

enum ReadError {
    Io(std::io::Error),
    TooLarge,
}

fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// The token's fault, from `jsonwebtoken`'s error.
fn token_error(kind: &ErrorKind) -> JwksError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => JwksError::BadSignature,
        ErrorKind::ExpiredSignature => JwksError::Expired,
        ErrorKind::ImmatureSignature => JwksError::NotYetValid,
        ErrorKind::InvalidIssuer => JwksError::WrongIssuer,
        ErrorKind::InvalidAudience => JwksError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => JwksError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            _ => "?",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwksError::KeyMismatch,
        // The key could not be used with the token (e.g. an RSA modulus `ring` refuses).
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            JwksError::BadSignature
        }
        ErrorKind::Json(_) => JwksError::InvalidClaim("claims"),
        _ => JwksError::Malformed,
    }
}
