//! A test identity provider: signing keys made in the test (ES256 and Ed25519 pairs generated
//! with `ring`, an RSA pair from `openssl genpkey`, since ring cannot generate RSA keys; no key is
//! committed), the key set (JWKS) they publish, as a file or served over HTTP on 127.0.0.1 with a
//! count of fetches, and a [`JwksConfig`] that trusts them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hermet_api::jwks::{Audiences, JwksConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.test/";
pub const AUDIENCE: &str = "hermet-test";

/// A private key to sign with and its public JWK.
#[derive(Clone)]
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
    pub jwk: Value,
    /// What a key-confusion attacker would use as an HMAC secret: the public key's bytes.
    pub public_bytes: Vec<u8>,
}

impl Signer {
    pub fn es256(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate P-256");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("read P-256");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref().to_vec();
        assert_eq!(point.len(), 65);
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
            public_bytes: point,
        }
    }

    pub fn eddsa(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("read Ed25519");
        let public = pair.public_key().as_ref().to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(&public)}),
            public_bytes: public,
        }
    }

    /// RS256 with a 2048-bit key from `openssl genpkey` (generated once per test binary: it
    /// takes a moment).
    pub fn rs256(kid: &str) -> Signer {
        static PEM: OnceLock<String> = OnceLock::new();
        let pem = PEM.get_or_init(|| {
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("the RSA test keys come from `openssl genpkey`: is openssl installed?");
            assert!(out.status.success(), "openssl genpkey failed: {out:?}");
            String::from_utf8(out.stdout).expect("PEM is text")
        });
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("PEM body");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("read RSA PKCS#8");
        let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA PEM"),
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                        "n": B64.encode(&public.n), "e": B64.encode(&public.e)}),
            public_bytes: pair.public().as_ref().to_vec(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    pub fn token(&self, sub: &str) -> String {
        self.sign(&claims(sub))
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims of a token for `sub` valid for ten minutes from now.
pub fn claims(sub: &str) -> Value {
    claims_valid_for(sub, 600)
}

/// [`claims`] valid for `secs` from now (a benchmark outlasting ten minutes needs more).
pub fn claims_valid_for(sub: &str, secs: u64) -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + secs,
           "name": format!("Name of {sub}")})
}

pub fn key_set(signers: &[&Signer]) -> Value {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()})
}

pub fn config(source: &str) -> JwksConfig {
    JwksConfig {
        source: source.into(),
        issuer: ISSUER.into(),
        audience: Audiences::Many(vec!["other".into(), AUDIENCE.into()]),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_secs: 5,
        refresh_min_interval_secs: 60,
        refresh_interval_secs: 0,
        fetch_timeout_ms: 2_000,
        create_users: false,
        nickname_claim: "name".into(),
    }
}

/// A key-set file of its own, removed when dropped.
pub struct KeyFile(pub PathBuf);

impl KeyFile {
    pub fn new(doc: &Value) -> KeyFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hermet-jwks-test-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = KeyFile(path);
        f.write(doc);
        f
    }
    pub fn write(&self, doc: &Value) {
        std::fs::write(&self.0, doc.to_string()).expect("write key set");
    }
    pub fn source(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An identity provider's key-set endpoint: serves `doc` (or `status` when not 200) and
/// counts the requests.
#[derive(Clone)]
pub struct Idp {
    doc: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
    pub url: String,
}

impl Idp {
    pub async fn start(doc: &Value) -> Idp {
        let state = Arc::new(Mutex::new((200u16, doc.to_string())));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (state.clone(), fetches.clone());
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = s.lock().expect("idp state").clone();
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp {
            doc: state,
            fetches,
            url: format!("http://{addr}/.well-known/jwks.json"),
        }
    }
    pub fn serve(&self, doc: &Value) {
        *self.doc.lock().expect("idp state") = (200, doc.to_string());
    }
    pub fn fail_with(&self, status: u16) {
        self.doc.lock().expect("idp state").0 = status;
    }
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
