//! `hermet-bench auth`: what verifying a bearer token costs, per request: in process, then
//! through the HTTP API ([`http`]).
//!
//! In process (no database, no HTTP): hermet's own HS256 token (`TokenKeys::verify`), and
//! identity-provider tokens through `JwksVerifier::verify` signed with RS256 (2048-bit), ES256
//! and EdDSA (Ed25519), plus two refusals an attacker can make the server do for free: an ES256
//! token with a bad signature, and a token naming an unknown `kid` (refused without re-reading
//! the key set: the re-read is rate-limited, and the one it allows happens in the warm-up). Keys
//! come from the test identity provider ([`hermet_testkit::idp`]: made for the run, none
//! committed); the key set is a temporary file.
//!
//! `--concurrency` workers (default 1) verify in a closed loop for `--duration-secs` per case,
//! cases in turn, `--runs` times. Reported per case and run: verifications/s (all workers),
//! mean CPU-time-ish cost (wall time × workers / verifications) and per-call latency p50, p99,
//! p99.9 in nanoseconds; then the medians. The HTTP part follows, on a scratch database.

mod http;

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermet_api::jwks::JwksVerifier;
use hermet_api::TokenKeys;
use hermet_testkit::idp::{self, KeyFile, Signer};
use serde::Serialize;

use crate::report::median;
use crate::{BenchEnv, BenchError, BenchOptions};

pub use http::{HttpReport, HttpRow, HttpSummary};

/// Distinct tokens per case, used in turn.
const TOKENS: usize = 64;
/// Lifetime of the run's provider tokens: longer than any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// One case of one run.
#[derive(Debug, Clone, Serialize)]
pub struct AuthRow {
    pub run: usize,
    pub case: &'static str,
    pub verifications: u64,
    pub per_s: f64,
    /// Wall time × workers / verifications.
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    /// Outcomes other than the case's (accepted for the valid tokens, refused for the others).
    pub unexpected: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthReport {
    pub concurrency: usize,
    pub duration_secs: u64,
    pub rows: Vec<AuthRow>,
    /// The same token kinds through `GET /v1/me`.
    pub http: HttpReport,
}

impl fmt::Display for AuthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "auth: token verification in process, {} worker(s), {} s per case and run\n",
            self.concurrency, self.duration_secs
        );
        out.push_str(
            "| run | case | verifications/s | mean ns | p50 ns | p99 ns | p99.9 ns | unexpected |\n\
             |---|---|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                r.run, r.case, r.per_s, r.mean_ns, r.p50_ns, r.p99_ns, r.p999_ns, r.unexpected
            );
        }
        for case in first_seen(self.rows.iter().map(|r| r.case)) {
            let rs: Vec<&AuthRow> = self.rows.iter().filter(|r| r.case == case).collect();
            let m = |get: &dyn Fn(&AuthRow) -> f64| median(rs.iter().map(|r| get(r)).collect());
            let _ = writeln!(
                out,
                "| **median** | **{case}** | **{:.0}** | **{:.0}** | {:.0} | **{:.0}** | {:.0} | |",
                m(&|r| r.per_s),
                m(&|r| r.mean_ns),
                m(&|r| r.p50_ns as f64),
                m(&|r| r.p99_ns as f64),
                m(&|r| r.p999_ns as f64),
            );
        }
        out.push('\n');
        f.write_str(&out)?;
        self.http.fmt(f)
    }
}

/// The distinct values of `items` in the order they first appear.
fn first_seen<T: PartialEq + Copy>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Who verifies a case's tokens.
#[derive(Clone)]
enum Verifier {
    Secret(Arc<TokenKeys>),
    Jwks(Arc<JwksVerifier>),
}

struct Case {
    name: &'static str,
    verifier: Verifier,
    tokens: Arc<Vec<String>>,
    /// Whether the tokens are valid.
    valid: bool,
}

impl Verifier {
    async fn verify(&self, token: &str) -> bool {
        match self {
            Verifier::Secret(keys) => keys.verify(token).is_ok(),
            Verifier::Jwks(v) => v.verify(token).await.is_ok(),
        }
    }
}

/// Runs the in-process part, then the HTTP part on a scratch database of `env`'s server.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<AuthReport, BenchError> {
    let concurrency = opts.concurrency.unwrap_or(1);
    if concurrency == 0 || opts.runs == 0 || opts.duration_secs == 0 {
        return Err(BenchError::InvalidOptions(
            "--concurrency, --runs and --duration-secs must be at least 1".into(),
        ));
    }
    eprintln!("bench auth: generating keys");
    let signers = [
        Signer::rs256("rs-1"),
        Signer::es256("es-1"),
        Signer::eddsa("ed-1"),
    ];
    let file = KeyFile::new(&idp::key_set(&signers.iter().collect::<Vec<_>>()));
    let mut cfg = idp::config(&file.source());
    // One re-read for the unknown-kid case (in the warm-up), none after.
    cfg.refresh_min_interval_secs = 86_400;
    let jwks = Arc::new(
        JwksVerifier::new(&cfg)
            .await
            .map_err(|e| BenchError::Scenario(format!("loading the key set: {e}")))?,
    );

    let secret = TokenKeys::new(&[7u8; 32], 3600);
    let hs: Vec<String> = (1..=TOKENS as i64)
        .map(|u| secret.issue(u))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Scenario(format!("issuing HS256 tokens: {e:?}")))?;
    let mut cases = vec![Case {
        name: "HS256 (TokenKeys)",
        verifier: Verifier::Secret(Arc::new(secret)),
        tokens: Arc::new(hs),
        valid: true,
    }];
    for (s, name) in signers.iter().zip(["RS256", "ES256", "EdDSA"]) {
        cases.push(Case {
            name,
            verifier: Verifier::Jwks(jwks.clone()),
            tokens: Arc::new(tokens(s)),
            valid: true,
        });
    }
    // Valid ES256 tokens with the signature of another.
    let es = &signers[1];
    let good = tokens(es);
    let forged = good
        .iter()
        .zip(good.iter().cycle().skip(1))
        .map(|(t, other)| {
            let (head, _) = t.rsplit_once('.').unwrap_or((t, ""));
            let (_, sig) = other.rsplit_once('.').unwrap_or((other, ""));
            format!("{head}.{sig}")
        })
        .collect();
    cases.push(Case {
        name: "ES256, bad signature",
        verifier: Verifier::Jwks(jwks.clone()),
        tokens: Arc::new(forged),
        valid: false,
    });
    let mut stranger = Signer::es256("unknown-kid");
    stranger.kid = "not-in-the-set".into();
    cases.push(Case {
        name: "unknown kid",
        verifier: Verifier::Jwks(jwks.clone()),
        tokens: Arc::new(tokens(&stranger)),
        valid: false,
    });

    eprintln!("bench auth: warm-up");
    let warmup = Duration::from_millis(300);
    for case in &cases {
        measure(case, concurrency, warmup).await?;
    }
    let duration = Duration::from_secs(opts.duration_secs);
    let mut rows = Vec::new();
    for run in 1..=opts.runs {
        for case in &cases {
            eprintln!("bench auth: run {run}, {}", case.name);
            let mut row = measure(case, concurrency, duration).await?;
            row.run = run;
            rows.push(row);
        }
    }
    let http = http::run(env, opts, &signers, &file.source()).await?;
    Ok(AuthReport {
        concurrency,
        duration_secs: opts.duration_secs,
        rows,
        http,
    })
}

/// [`TOKENS`] distinct valid tokens of `signer`, one subject each.
fn tokens(signer: &Signer) -> Vec<String> {
    (0..TOKENS)
        .map(|i| signer.sign(&idp::claims_valid_for(&format!("user-{i}"), TOKEN_TTL_SECS)))
        .collect()
}

/// `concurrency` workers verifying `case`'s tokens in a closed loop for `duration`.
async fn measure(
    case: &Case,
    concurrency: usize,
    duration: Duration,
) -> Result<AuthRow, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (verifier, tokens, valid) = (case.verifier.clone(), case.tokens.clone(), case.valid);
        workers.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
            let (mut n, mut unexpected) = (0u64, 0u64);
            let mut i = w;
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                let ok = verifier.verify(&tokens[i % tokens.len()]).await;
                h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
                unexpected += u64::from(ok != valid);
                n += 1;
                i += 1;
            }
            Ok::<_, BenchError>((h, n, unexpected))
        });
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
    let (mut n, mut unexpected) = (0u64, 0u64);
    while let Some(r) = workers.join_next().await {
        let (wh, wn, wu) = r??;
        h.add(&wh)
            .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
        n += wn;
        unexpected += wu;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(AuthRow {
        run: 0,
        case: case.name,
        verifications: n,
        per_s: n as f64 / secs,
        mean_ns: secs * 1e9 * concurrency as f64 / n.max(1) as f64,
        p50_ns: h.value_at_quantile(0.5),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        unexpected,
    })
}
