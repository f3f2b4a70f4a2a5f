//! `hermet-bench auth`: what verifying a bearer token costs, per request, in process.
//!
//! Cases: hermet's own HS256 token (`TokenKeys::verify`), and identity-provider tokens through
//! `JwksVerifier::verify` signed with RS256 (2048-bit), ES256 and EdDSA (Ed25519), plus two
//! refusals an attacker can make the server do for free: an ES256 token with a bad signature,
//! and a token naming an unknown `kid` (refused without re-reading the key set: the re-read is
//! rate-limited, and the one it allows happens in the warm-up). Keys are generated for the run
//! (ES256, Ed25519 with `ring`; RSA with `openssl genpkey`); the key set is a temporary file.
//!
//! `--concurrency` workers (default 1) verify in a closed loop for `--duration-secs` per case,
//! cases in turn, `--runs` times. Reported per case and run: verifications/s (all workers),
//! mean CPU-time-ish cost (wall time × workers / verifications) and per-call latency p50, p99,
//! p99.9 in nanoseconds; then the medians. No database, no HTTP.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hermet_api::jwks::{Audiences, JwksConfig, JwksVerifier};
use hermet_api::TokenKeys;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde::Serialize;
use serde_json::{json, Value};

use crate::report::median;
use crate::{BenchError, BenchOptions};

const ISSUER: &str = "https://idp.bench/";
const AUDIENCE: &str = "hermet-bench";
/// Distinct tokens per case, used in turn.
const TOKENS: usize = 64;

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
        let mut cases: Vec<&'static str> = Vec::new();
        for r in &self.rows {
            if !cases.contains(&r.case) {
                cases.push(r.case);
            }
        }
        for case in cases {
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
        f.write_str(&out)
    }
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

pub async fn run(opts: &BenchOptions) -> Result<AuthReport, BenchError> {
    let concurrency = opts.concurrency.unwrap_or(1);
    if concurrency == 0 || opts.runs == 0 || opts.duration_secs == 0 {
        return Err(BenchError::InvalidOptions(
            "--concurrency, --runs and --duration-secs must be at least 1".into(),
        ));
    }
    eprintln!("bench auth: generating keys");
    let signers = [
        Signer::rs256("rs-1")?,
        Signer::es256("es-1")?,
        Signer::eddsa("ed-1")?,
    ];
    let file =
        KeyFile::new(&json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}))?;
    let cfg = JwksConfig {
        source: file.0.display().to_string(),
        issuer: ISSUER.into(),
        audience: Audiences::One(AUDIENCE.into()),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_secs: 30,
        // One re-read for the unknown-kid case (in the warm-up), none after.
        refresh_min_interval_secs: 86_400,
        refresh_interval_secs: 0,
        fetch_timeout_ms: 5_000,
        create_users: false,
        nickname_claim: "name".into(),
    };
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
            tokens: Arc::new(s.tokens()?),
            valid: true,
        });
    }
    // Valid ES256 tokens with the signature of another.
    let es = &signers[1];
    let good = es.tokens()?;
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
    let mut stranger = Signer::es256("unknown-kid")?;
    stranger.kid = "not-in-the-set".into();
    cases.push(Case {
        name: "unknown kid",
        verifier: Verifier::Jwks(jwks.clone()),
        tokens: Arc::new(stranger.tokens()?),
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
    Ok(AuthReport {
        concurrency,
        duration_secs: opts.duration_secs,
        rows,
    })
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

/// A private key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn crypto(what: &str) -> impl Fn(ring::error::Unspecified) -> BenchError + '_ {
    move |_| BenchError::Scenario(format!("{what} failed"))
}

impl Signer {
    fn es256(kid: &str) -> Result<Signer, BenchError> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(crypto("P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| BenchError::Scenario(format!("P-256 key: {e}")))?;
        let point = pair.public_key().as_ref();
        Ok(Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
                        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
        })
    }

    fn eddsa(kid: &str) -> Result<Signer, BenchError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(crypto("Ed25519 key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| BenchError::Scenario(format!("Ed25519 key: {e}")))?;
        Ok(Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
                        "x": B64.encode(pair.public_key().as_ref())}),
        })
    }

    /// `ring` does not generate RSA keys: `openssl genpkey` does.
    fn rs256(kid: &str) -> Result<Signer, BenchError> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .map_err(|source| BenchError::Io {
                what: "running openssl genpkey (RS256 key)".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Scenario(format!(
                "openssl genpkey: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let pem = out.stdout;
        let body: String = String::from_utf8_lossy(&pem)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|e| BenchError::Scenario(format!("RSA PEM: {e}")))?;
        let pair = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| BenchError::Scenario(format!("RSA key: {e}")))?;
        let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        Ok(Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&pem)
                .map_err(|e| BenchError::Scenario(format!("RSA PEM: {e}")))?,
            jwk: json!({"kty": "RSA", "alg": "RS256", "kid": kid,
                        "n": B64.encode(&public.n), "e": B64.encode(&public.e)}),
        })
    }

    fn tokens(&self) -> Result<Vec<String>, BenchError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        (0..TOKENS)
            .map(|i| {
                let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"),
                                    "iat": now, "exp": now + 3600, "name": format!("User {i}")});
                jsonwebtoken::encode(&header, &claims, &self.key)
                    .map_err(|e| BenchError::Scenario(format!("signing: {e}")))
            })
            .collect()
    }
}

/// The key-set file of the run, removed at the end.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(doc: &Value) -> Result<KeyFile, BenchError> {
        let path =
            std::env::temp_dir().join(format!("hermet-bench-jwks-{}.json", std::process::id()));
        std::fs::write(&path, doc.to_string()).map_err(|source| BenchError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        Ok(KeyFile(path))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
