//! Tokens signed by the product's identity provider, through the HTTP API: a test provider's
//! keys (made in the test, see `hermet_testkit::idp`) publish a key set over HTTP; its RS256,
//! ES256 and EdDSA tokens authenticate as the user whose `external_id` is the token's `sub`
//! (created on first sight when configured), and every forgery or mismatch is a 401 — a rotated
//! key, a wrong issuer or audience, `alg: none`, an HS256 token signed with the public key (key
//! confusion), an expired token. Revocation and disabling apply to provider tokens as to minted
//! ones.
//!
//! Needs `HERMET_DATABASE_URL` (`eval "$(scripts/services.sh env)"`).

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hermet_api::jwks::JwksVerifier;
use hermet_api::ApiConfig;
use hermet_core::validate::KeyName;
use hermet_testkit::idp::{claims, config, key_set, Idp, Signer};
use hermet_testkit::{api_config, TestApp, TestDb};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An app trusting `idp`'s key set, and a server key for the `/v1/server` routes.
async fn app_trusting(idp: &Idp, create_users: bool) -> (TestApp, String) {
    let mut jwks = config(&idp.url);
    jwks.create_users = create_users;
    let verifier = JwksVerifier::new(&jwks).await.expect("the key set loads");
    let db = TestDb::new().await;
    let store = db.store(50);
    let cfg = ApiConfig {
        identity_provider: Some(Arc::new(verifier)),
        ..api_config()
    };
    let app = TestApp::spawn_configured(db, store, cfg).await;
    let key = app
        .store
        .create_api_key(&KeyName::parse("idp tests").expect("name"))
        .await
        .expect("api key")
        .key;
    (app, key)
}

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    let r = app.call("GET", "/v1/me", Some(token), None).await;
    (r.status, r.body)
}

/// Asserts a 401 and returns its error code.
async fn refused(app: &TestApp, token: &str, what: &str) -> String {
    let r = app.call("GET", "/v1/me", Some(token), None).await;
    assert_eq!(r.status, 401, "{what}: {r:?}");
    r.code().to_owned()
}

#[tokio::test]
async fn provider_tokens_authenticate_and_every_forgery_is_a_401() {
    let (rs, es, ed) = (
        Signer::rs256("rsa-1"),
        Signer::es256("ec-1"),
        Signer::eddsa("ed-1"),
    );
    let idp = Idp::start(&key_set(&[&rs, &es, &ed])).await;
    let (app, key) = app_trusting(&idp, true).await;

    // First sight creates the user, nicknamed from the `name` claim; each algorithm finds it.
    let (status, first) = me(&app, &rs.token("acct-ann")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["nickname"], "Name of acct-ann");
    let ann = first["id"].as_i64().expect("id");
    for token in [es.token("acct-ann"), ed.token("acct-ann")] {
        let (status, body) = me(&app, &token).await;
        assert_eq!((status, body["id"].as_i64()), (200, Some(ann)), "{body}");
    }
    // The user is the one the server routes know under that external id.
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-ann", "nickname": "Other"})),
        )
        .await;
    assert_eq!((r.status, r.body["id"].as_i64()), (200, Some(ann)), "{r:?}");
    // And writes work with the provider's token like with a minted one.
    let r = app
        .call(
            "PATCH",
            "/v1/me",
            Some(&es.token("acct-ann")),
            Some(json!({"nickname": "Ann"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Wrong issuer, wrong audience, expired, not yet valid.
    let mut c = claims("acct-ann");
    c["iss"] = json!("https://evil.test/");
    refused(&app, &es.sign(&c), "wrong issuer").await;
    let mut c = claims("acct-ann");
    c["aud"] = json!("someone-else");
    refused(&app, &es.sign(&c), "wrong audience").await;
    let mut c = claims("acct-ann");
    c["exp"] = json!(c["iat"].as_u64().expect("iat") - 120);
    refused(&app, &ed.sign(&c), "expired").await;

    // `alg: none`, unsigned, in the spellings attackers try.
    let payload = B64.encode(claims("acct-ann").to_string());
    for alg in ["none", "None", "NONE"] {
        let header = B64.encode(json!({"alg": alg, "typ": "JWT", "kid": "ec-1"}).to_string());
        refused(&app, &format!("{header}.{payload}."), "alg none").await;
    }

    // Key confusion: HS256 signed with the provider's public key as the HMAC secret.
    for signer in [&rs, &es, &ed] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(signer.kid.clone());
        let forged = jsonwebtoken::encode(
            &h,
            &claims("acct-ann"),
            &EncodingKey::from_secret(&signer.public_bytes),
        )
        .expect("sign");
        refused(&app, &forged, "HS256 with the public key").await;
    }

    // Rotation: the provider replaces ec-1 by ec-2. A token of the new key is unknown at first;
    // the server re-reads the key set and accepts it; the withdrawn key no longer verifies.
    let old_token = es.token("acct-ann");
    let es2 = Signer::es256("ec-2");
    idp.serve(&key_set(&[&rs, &es2, &ed]));
    let (status, body) = me(&app, &es2.token("acct-ann")).await;
    assert_eq!((status, body["id"].as_i64()), (200, Some(ann)), "{body}");
    refused(&app, &old_token, "withdrawn key").await;
    refused(&app, &es.token("acct-ann"), "withdrawn key, fresh token").await;
    assert_eq!(idp.fetches(), 2, "the start-up read and one re-read");

    // A key the provider does not publish (the re-read is spent for the interval: refused
    // without another fetch), and a signature by the wrong key under a published kid.
    let stranger = Signer::es256("ec-stranger");
    refused(&app, &stranger.token("acct-ann"), "unknown key").await;
    assert_eq!(
        idp.fetches(),
        2,
        "an unknown kid within the interval fetches nothing"
    );
    let impostor = Signer::es256("ec-2");
    refused(&app, &impostor.token("acct-ann"), "bad signature").await;
}

#[tokio::test]
async fn revocation_and_disabling_apply_to_provider_tokens() {
    let ed = Signer::eddsa("ed-1");
    let idp = Idp::start(&key_set(&[&ed])).await;
    let (app, key) = app_trusting(&idp, true).await;
    let token = ed.token("acct-bob");
    let (status, body) = me(&app, &token).await;
    assert_eq!(status, 200, "{body}");
    let bob = body["id"].as_i64().expect("id");

    let r = app
        .call(
            "PATCH",
            &format!("/v1/server/users/{bob}"),
            Some(&key),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(refused(&app, &token, "disabled").await, "user_disabled");
    let r = app
        .call(
            "PATCH",
            &format!("/v1/server/users/{bob}"),
            Some(&key),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(me(&app, &token).await.0, 200, "enabled again");

    let r = app
        .call(
            "DELETE",
            &format!("/v1/server/users/{bob}/tokens"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(refused(&app, &token, "revoked").await, "token_revoked");
    // `iat` has whole seconds: a token issued in the revocation's second counts as before it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        me(&app, &ed.token("acct-bob")).await.0,
        200,
        "a token issued after the revocation"
    );
}

#[tokio::test]
async fn unknown_subjects_are_refused_unless_users_are_created_on_first_sight() {
    let es = Signer::es256("ec-1");
    let idp = Idp::start(&key_set(&[&es])).await;
    let (app, key) = app_trusting(&idp, false).await;
    let token = es.token("acct-cat");
    assert_eq!(refused(&app, &token, "not imported").await, "unknown_user");
    let conn = app.store.pool().get().await.expect("connection");
    let users: i64 = conn
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(users, 0, "nothing created");

    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-cat", "nickname": "Cat"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let (status, body) = me(&app, &token).await;
    assert_eq!((status, body["id"].clone()), (200, r.body["id"].clone()));

    // A subject that is not a valid external id is refused, not mangled into one.
    refused(&app, &es.token(" acct-cat"), "padded subject").await;
}
