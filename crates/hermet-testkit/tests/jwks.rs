//! The JWKS verifier against key sets made here: ES256 and Ed25519 pairs generated with `ring`,
//! RSA pairs with `openssl genpkey` (ring cannot generate RSA keys); no key is committed. Key
//! sets are served from a file and from a small HTTP server on 127.0.0.1 that counts its
//! fetches.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hermet_api::jwks::{
    token_kind, Audiences, FetchError, JwksConfig, JwksConfigError, JwksError, JwksLoadError,
    JwksVerifier, TokenKind,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use hermet_testkit::idp::*;

#[tokio::test]
async fn accepts_rs256_es256_and_eddsa_tokens_from_a_key_file() {
    let (rs, es, ed) = (
        Signer::rs256("r1"),
        Signer::es256("e1"),
        Signer::eddsa("d1"),
    );
    let file = KeyFile::new(&key_set(&[&rs, &es, &ed]));
    let v = JwksVerifier::new(&config(&file.source()))
        .await
        .expect("load");
    for s in [&rs, &es, &ed] {
        let token = s.token(&format!("user-{}", s.kid));
        assert_eq!(token_kind(&token), TokenKind::External, "{:?}", s.alg);
        let id = v
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", s.alg));
        assert_eq!(id.subject, format!("user-{}", s.kid));
        assert_eq!(
            id.nickname.as_deref(),
            Some(&*format!("Name of user-{}", s.kid))
        );
        assert_eq!(id.expires_at, claims("x")["exp"].as_u64().unwrap());
        let iat = id.issued_at_ms.expect("iat");
        assert!((iat / 1000).abs_diff(now() as i64) < 5, "{iat}");
    }
    assert_eq!(v.fetch_count(), 1, "known kids need no re-read");
}

#[tokio::test]
async fn the_nickname_falls_back_to_preferred_username_then_sub() {
    let es = Signer::es256("e1");
    let file = KeyFile::new(&key_set(&[&es]));
    let mut cfg = config(&file.source());
    cfg.nickname_claim = "nick".into();
    let v = JwksVerifier::new(&cfg).await.expect("load");
    let mut c = claims("s1");
    c["nick"] = json!("Nicky");
    c["preferred_username"] = json!("pref");
    assert_eq!(
        v.verify(&es.sign(&c)).await.unwrap().nickname.as_deref(),
        Some("Nicky")
    );
    c.as_object_mut().unwrap().remove("nick");
    assert_eq!(
        v.verify(&es.sign(&c)).await.unwrap().nickname.as_deref(),
        Some("pref")
    );
    c.as_object_mut().unwrap().remove("preferred_username");
    let id = v.verify(&es.sign(&c)).await.unwrap();
    assert_eq!(id.nickname, None);
    assert_eq!(id.display_name(), "s1");
}

#[tokio::test]
async fn tokens_with_wrong_claims_are_refused() {
    let es = Signer::es256("e1");
    let file = KeyFile::new(&key_set(&[&es]));
    let v = JwksVerifier::new(&config(&file.source()))
        .await
        .expect("load");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims("s1");
        change(&mut c);
        es.sign(&c)
    };
    let cases: Vec<(&str, String, JwksError)> = vec![
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.test/")),
            JwksError::WrongIssuer,
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("someone-else")),
            JwksError::WrongAudience,
        ),
        (
            "audience list without ours",
            with(&|c| c["aud"] = json!(["a", "b"])),
            JwksError::WrongAudience,
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 3600)),
            JwksError::Expired,
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 3600)),
            JwksError::NotYetValid,
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            JwksError::MissingClaim("exp"),
        ),
        (
            "no iss",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            JwksError::MissingClaim("iss"),
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            JwksError::MissingClaim("aud"),
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            JwksError::MissingClaim("sub"),
        ),
        (
            "empty sub",
            with(&|c| c["sub"] = json!("")),
            JwksError::InvalidClaim("sub"),
        ),
        (
            "long sub",
            with(&|c| c["sub"] = json!("x".repeat(256))),
            JwksError::InvalidClaim("sub"),
        ),
    ];
    for (what, token, expected) in cases {
        let got = v.verify(&token).await;
        assert_eq!(got, Err(expected), "{what}");
    }
    // Within the leeway, an expired token is still accepted.
    let just_expired = with(&|c| c["exp"] = json!(now() - 2));
    assert!(v.verify(&just_expired).await.is_ok());
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    let (rs, es, ed) = (
        Signer::rs256("r1"),
        Signer::es256("e1"),
        Signer::eddsa("d1"),
    );
    // An HMAC key in the set must never be used, even for a token that names it.
    let oct = json!({"kty": "oct", "kid": "h1", "alg": "HS256", "k": B64.encode(b"shared-secret-in-a-public-set")});
    let mut doc = key_set(&[&rs, &es, &ed]);
    doc["keys"].as_array_mut().unwrap().push(oct);
    let file = KeyFile::new(&doc);
    let v = JwksVerifier::new(&config(&file.source()))
        .await
        .expect("load");

    // Bad signature: another key of the same kid, and a payload swapped under a signature.
    for (signer, impostor) in [
        (&es, Signer::es256("e1")),
        (&ed, Signer::eddsa("d1")),
        (&rs, {
            let mut other = Signer::eddsa("r1");
            other.alg = Algorithm::EdDSA;
            other
        }),
    ] {
        let forged = impostor.token("victim");
        let expected = if impostor.alg == signer.alg {
            JwksError::BadSignature
        } else {
            JwksError::KeyMismatch
        };
        assert_eq!(v.verify(&forged).await, Err(expected), "{:?}", signer.alg);
        let genuine = signer.token("me");
        let other = signer.token("victim");
        let mut parts: Vec<&str> = genuine.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        assert_eq!(
            v.verify(&parts.join(".")).await,
            Err(JwksError::BadSignature),
            "{:?} payload swapped",
            signer.alg
        );
    }

    // `alg: none`, in several spellings, with and without a signature part.
    let payload = B64.encode(claims("victim").to_string());
    for alg in ["none", "None", "NONE"] {
        let header = B64.encode(json!({"alg": alg, "kid": "e1", "typ": "JWT"}).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_eq!(token_kind(&token), TokenKind::Unrecognized);
            assert_eq!(
                v.verify(&token).await,
                Err(JwksError::DisallowedAlgorithm("?"))
            );
        }
    }

    // Key confusion: HS256 tokens whose secret is the public key (its bytes, its JWK, the HMAC
    // key of the set), naming the key's kid.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for s in [&rs, &es, &ed] {
        secrets.push((s.kid.clone(), s.public_bytes.clone()));
        secrets.push((s.kid.clone(), s.jwk.to_string().into_bytes()));
    }
    secrets.push(("h1".into(), b"shared-secret-in-a-public-set".to_vec()));
    for (kid, secret) in secrets {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &claims("victim"),
            &EncodingKey::from_secret(&secret),
        )
        .expect("sign HS256");
        assert_eq!(token_kind(&token), TokenKind::SharedSecret);
        assert_eq!(
            v.verify(&token).await,
            Err(JwksError::DisallowedAlgorithm("HS256")),
            "HS256 with kid {kid}"
        );
    }

    // A token of one algorithm naming a key of another.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("r1".into());
    let token = jsonwebtoken::encode(&header, &claims("victim"), &es.key).expect("sign");
    assert_eq!(v.verify(&token).await, Err(JwksError::KeyMismatch));

    // A critical header extension nobody here understands.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("e1".into());
    let head = serde_json::to_value(&header).expect("header");
    let mut head = head.as_object().expect("object").clone();
    head.insert("crit".into(), json!(["exp-ext"]));
    head.insert("exp-ext".into(), json!(1));
    let signing_input = format!(
        "{}.{}",
        B64.encode(Value::Object(head).to_string()),
        B64.encode(claims("victim").to_string())
    );
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &es.key, Algorithm::ES256)
        .expect("sign");
    let token = format!("{signing_input}.{sig}");
    assert_eq!(v.verify(&token).await, Err(JwksError::Malformed), "crit");

    // Garbage.
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
        let got = v.verify(token).await;
        assert!(
            matches!(got, Err(JwksError::Malformed)),
            "{token:?}: {got:?}"
        );
    }
    assert_eq!(v.fetch_count(), 1, "none of these is a reason to re-read");
}

#[tokio::test]
async fn only_the_configured_algorithms_are_accepted() {
    let (rs, es) = (Signer::rs256("r1"), Signer::es256("e1"));
    let file = KeyFile::new(&key_set(&[&rs, &es]));
    let mut cfg = config(&file.source());
    cfg.algorithms = vec!["ES256".into()];
    let v = JwksVerifier::new(&cfg).await.expect("load");
    assert!(v.verify(&es.token("s")).await.is_ok());
    assert_eq!(
        v.verify(&rs.token("s")).await,
        Err(JwksError::DisallowedAlgorithm("RS256"))
    );
}

#[tokio::test]
async fn the_key_id_picks_the_key_and_one_key_may_go_without() {
    let (e1, e2) = (Signer::es256("e1"), Signer::es256("e2"));
    let no_kid =
        |s: &Signer| jsonwebtoken::encode(&Header::new(s.alg), &claims("s"), &s.key).expect("sign");
    let one = KeyFile::new(&key_set(&[&e1]));
    let v = JwksVerifier::new(&config(&one.source()))
        .await
        .expect("load");
    assert!(
        v.verify(&no_kid(&e1)).await.is_ok(),
        "one key: kid optional"
    );

    let two = KeyFile::new(&key_set(&[&e1, &e2]));
    let v = JwksVerifier::new(&config(&two.source()))
        .await
        .expect("load");
    assert_eq!(v.verify(&no_kid(&e1)).await, Err(JwksError::MissingKeyId));
    assert!(v.verify(&e1.token("s")).await.is_ok());
    assert!(v.verify(&e2.token("s")).await.is_ok());
}

#[tokio::test]
async fn rotated_keys_are_fetched_once_per_interval_over_http() {
    let (old, new) = (Signer::rs256("2026-old"), Signer::es256("2026-new"));
    let idp = Idp::start(&key_set(&[&old])).await;
    let v = JwksVerifier::new(&config(&idp.url)).await.expect("load");
    assert_eq!(idp.fetches(), 1);
    assert!(v.verify(&old.token("s")).await.is_ok());
    assert_eq!(idp.fetches(), 1, "a known kid is not fetched again");

    // The provider rotates: the new kid is unknown at first, so the set is re-read.
    idp.serve(&key_set(&[&new]));
    let id = v
        .verify(&new.token("s"))
        .await
        .expect("new key after a re-read");
    assert_eq!(id.subject, "s");
    assert_eq!(idp.fetches(), 2);

    // The old kid is gone: refused, and within the interval no re-read happens for it nor for
    // any number of made-up kids.
    assert_eq!(v.verify(&old.token("s")).await, Err(JwksError::UnknownKey));
    for i in 0..20 {
        let bogus = Signer::es256(&format!("bogus-{i}"));
        assert_eq!(
            v.verify(&bogus.token("s")).await,
            Err(JwksError::UnknownKey)
        );
    }
    assert_eq!(
        idp.fetches(),
        2,
        "unknown kids re-read at most once per interval"
    );
    assert_eq!(v.fetch_count(), 2);

    // Concurrent unknown kids after the interval: one fetch between them.
    let mut cfg = config(&idp.url);
    cfg.refresh_min_interval_secs = 1;
    let v = Arc::new(JwksVerifier::new(&cfg).await.expect("load"));
    assert_eq!(idp.fetches(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let v = v.clone();
        let token = Signer::es256(&format!("other-{i}")).token("s");
        tasks.spawn(async move { v.verify(&token).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("task"), Err(JwksError::UnknownKey));
    }
    assert_eq!(idp.fetches(), 4, "one re-read for all of them");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_previous_keys() {
    let es = Signer::es256("e1");
    let idp = Idp::start(&key_set(&[&es])).await;
    let v = JwksVerifier::new(&config(&idp.url)).await.expect("load");

    idp.fail_with(500);
    assert!(matches!(v.refresh().await, Err(FetchError::Status(500))));
    assert!(v.verify(&es.token("s")).await.is_ok(), "previous keys kept");

    // A set with no usable key (an HMAC key only) is a failed refresh too.
    idp.serve(&json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}));
    assert!(matches!(
        v.refresh().await,
        Err(FetchError::NoUsableKeys { skipped: 1 })
    ));
    idp.serve(&json!({"not": "a key set"}));
    assert!(matches!(v.refresh().await, Err(FetchError::Parse(_))));
    assert!(v.verify(&es.token("s")).await.is_ok(), "previous keys kept");

    // Larger than the cap.
    let huge = json!({"keys": [es.jwk.clone()], "padding": "x".repeat(1024 * 1024)});
    idp.serve(&huge);
    assert!(matches!(v.refresh().await, Err(FetchError::TooLarge)));

    // A key the set does not know (unknown kty) does not hide the others.
    let mut doc = key_set(&[&es]);
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"kty": "XYZ", "kid": "future"}));
    idp.serve(&doc);
    assert_eq!(v.refresh().await.expect("refresh"), 1);
}

#[tokio::test]
async fn a_file_source_is_re_read_on_refresh() {
    let (k1, k2) = (Signer::eddsa("k1"), Signer::eddsa("k2"));
    let file = KeyFile::new(&key_set(&[&k1]));
    let v = JwksVerifier::new(&config(&file.source()))
        .await
        .expect("load");
    file.write(&key_set(&[&k2]));
    assert_eq!(v.refresh().await.expect("refresh"), 1);
    assert!(v.verify(&k2.token("s")).await.is_ok());
    assert_eq!(v.verify(&k1.token("s")).await, Err(JwksError::UnknownKey));
}

#[tokio::test]
async fn start_up_fails_when_the_first_load_fails() {
    let missing = std::env::temp_dir().join("hermet-jwks-test-does-not-exist.json");
    let e = JwksVerifier::new(&config(&missing.display().to_string())).await;
    assert!(
        matches!(e, Err(JwksLoadError::Fetch(FetchError::File { .. }))),
        "{e:?}"
    );

    let file = KeyFile::new(&json!({"keys": []}));
    let e = JwksVerifier::new(&config(&file.source())).await;
    assert!(
        matches!(
            e,
            Err(JwksLoadError::Fetch(FetchError::NoUsableKeys {
                skipped: 0
            }))
        ),
        "{e:?}"
    );

    // Nothing listens on port 9 of 127.0.0.1 here.
    let e = JwksVerifier::new(&config("http://127.0.0.1:9/jwks.json")).await;
    assert!(
        matches!(e, Err(JwksLoadError::Fetch(FetchError::Http(_)))),
        "{e:?}"
    );

    let idp = Idp::start(&json!({})).await;
    idp.fail_with(404);
    let e = JwksVerifier::new(&config(&idp.url)).await;
    assert!(
        matches!(e, Err(JwksLoadError::Fetch(FetchError::Status(404)))),
        "{e:?}"
    );
}

#[test]
fn the_configuration_is_validated() {
    let ok = config("/etc/hermet/jwks.json");
    assert_eq!(ok.validate(), Ok(()));
    let bad = |change: &dyn Fn(&mut JwksConfig)| {
        let mut c = ok.clone();
        change(&mut c);
        c.validate()
    };
    assert_eq!(
        bad(&|c| c.algorithms = vec!["RS256".into(), "HS256".into()]),
        Err(JwksConfigError::SharedSecretAlgorithm("HS256".into()))
    );
    assert_eq!(
        bad(&|c| c.algorithms = vec!["hs512".into()]),
        Err(JwksConfigError::SharedSecretAlgorithm("hs512".into()))
    );
    assert_eq!(
        bad(&|c| c.algorithms = vec!["none".into()]),
        Err(JwksConfigError::Unsigned)
    );
    assert_eq!(
        bad(&|c| c.algorithms = vec!["PS256".into()]),
        Err(JwksConfigError::UnsupportedAlgorithm("PS256".into()))
    );
    assert_eq!(
        bad(&|c| c.algorithms = vec![]),
        Err(JwksConfigError::Empty("algorithms"))
    );
    assert_eq!(
        bad(&|c| c.issuer = " ".into()),
        Err(JwksConfigError::Empty("issuer"))
    );
    assert_eq!(
        bad(&|c| c.audience = Audiences::Many(vec![])),
        Err(JwksConfigError::Empty("audience"))
    );
    assert!(matches!(
        bad(&|c| c.source = "ftp://x/jwks".into()),
        Err(JwksConfigError::Source(_))
    ));
    assert!(matches!(
        bad(&|c| c.source = "https://".into()),
        Err(JwksConfigError::Source(_))
    ));
    assert!(matches!(
        bad(&|c| c.leeway_secs = 3600),
        Err(JwksConfigError::OutOfRange {
            field: "leeway_secs",
            ..
        })
    ));
    assert!(matches!(
        bad(&|c| c.refresh_min_interval_secs = 0),
        Err(JwksConfigError::OutOfRange {
            field: "refresh_min_interval_secs",
            ..
        })
    ));
    assert!(matches!(
        bad(&|c| c.refresh_interval_secs = 10),
        Err(JwksConfigError::OutOfRange {
            field: "refresh_interval_secs",
            ..
        })
    ));
    assert_eq!(
        bad(&|c| c.refresh_interval_secs = 0),
        Ok(()),
        "0: no periodic refresh"
    );

    let parsed: JwksConfig = serde_json::from_value(json!({
        "source": "https://idp/jwks", "issuer": "i", "audience": "a"
    }))
    .expect("defaults");
    assert_eq!(parsed.algorithms, ["RS256", "ES256", "EdDSA"]);
    assert_eq!(parsed.audience.as_slice(), ["a"]);
    assert_eq!(parsed.nickname_claim, "name");
    assert!(
        serde_json::from_value::<JwksConfig>(json!({
            "source": "s", "issuer": "i", "audience": "a", "algorithm": ["RS256"]
        }))
        .is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn errors_do_not_repeat_the_token_and_map_to_401_or_503() {
    let es = Signer::es256("e1");
    let token = es.token("secret-subject");
    for e in [
        JwksError::Malformed,
        JwksError::DisallowedAlgorithm("HS256"),
        JwksError::UnknownKey,
        JwksError::BadSignature,
        JwksError::Expired,
        JwksError::WrongIssuer,
        JwksError::WrongAudience,
        JwksError::MissingClaim("exp"),
        JwksError::InvalidClaim("sub"),
        JwksError::Unavailable,
    ] {
        let text = e.to_string();
        assert!(
            !text.contains(&token) && !text.contains("secret-subject"),
            "{text}"
        );
        let api: hermet_api::ApiError = e.clone().into();
        let status = axum::response::IntoResponse::into_response(api)
            .status()
            .as_u16();
        assert_eq!(
            status,
            if e == JwksError::Unavailable {
                503
            } else {
                401
            },
            "{e}"
        );
    }
}
