//! Bad input on every endpoint of `docs/api.md`: each case must get its documented 4xx status and the
//! JSON error shape `{"error": {"code", "message", "field"?}}` — never a 500, never a non-JSON
//! body — and must change nothing: after every rejected write the database is byte-for-byte the
//! same, and at the end every user's profile, contacts, conversation list and histories are too.
//!
//! The cases are a table (see [`cases`]); add a line to cover a new kind of bad input. Cases that
//! apply to every endpoint (authentication, body syntax, body size, path ids) are generated from
//! the endpoint list in [`endpoints`].

use std::time::{SystemTime, UNIX_EPOCH};

use hermet_core::validate::MAX_IDS_PER_CALL;
use hermet_testkit::{TestApp, TestDb, User, TEST_SECRET};

/// `limits.max_group_members` of the app of [`every_endpoint_refuses_bad_values`].
const GROUP_LIMIT: usize = 500;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use serde_json::{json, Value};

/// An id no row has.
const UNKNOWN: i64 = 999_999_999;
/// Larger than the default body limit of 64 KiB.
const OVERSIZE: usize = 70 * 1024;
/// Tables whose contents must not change on a rejected request, besides the write side
/// (`hermet_core::rows::WRITE_TABLES`).
const VIEW_TABLES: [&str; 2] = ["user_conversation_view", "user_contact_view"];

#[derive(Clone, Debug)]
enum Auth {
    None,
    Bearer(String),
    /// The raw value of the `Authorization` header.
    Header(HeaderValue),
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>, &'static str),
}

/// One request and what must come back.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    method: &'static str,
    path: String,
    auth: Auth,
    body: Body,
    headers: Vec<(&'static str, String)>,
    /// Accepted statuses (the first is the documented one).
    status: Vec<u16>,
    /// The error code, when it is part of what clients rely on.
    code: Option<&'static str>,
}

impl Case {
    fn json(mut self, v: Value) -> Self {
        self.body = Body::Json(v);
        self
    }

    fn raw(mut self, body: impl Into<Vec<u8>>, ctype: &'static str) -> Self {
        self.body = Body::Raw(body.into(), ctype);
        self
    }

    fn by(mut self, u: &User) -> Self {
        self.auth = Auth::Bearer(u.token.clone());
        self
    }

    fn auth(mut self, a: Auth) -> Self {
        self.auth = a;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = vec![status];
        self.code = Some(code);
        self
    }

    fn status(mut self, status: u16) -> Self {
        self.status = vec![status];
        self.code = None;
        self
    }

    /// Also accept `status` (when two answers are both defensible).
    fn or_status(mut self, status: u16) -> Self {
        self.status.push(status);
        self.code = None;
        self
    }
}

/// The users and channels the cases refer to.
struct Ctx {
    /// Friend of bob, owner of `grp`, ex-friend of erin.
    ann: User,
    bob: User,
    /// Nobody's friend, in no channel.
    carol: User,
    erin: User,
    /// ann–bob single chat, one message.
    ch: i64,
    /// Group of ann (owner) and bob, one message.
    grp: i64,
    /// ann–erin single chat, closed by ann deleting erin.
    closed: i64,
}

impl Ctx {
    /// A case sent as ann, expecting 400 until told otherwise.
    fn case(&self, name: impl Into<String>, method: &'static str, path: impl Into<String>) -> Case {
        Case {
            name: name.into(),
            method,
            path: path.into(),
            auth: Auth::Bearer(self.ann.token.clone()),
            body: Body::None,
            headers: Vec::new(),
            status: vec![400],
            code: None,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn jwt(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("encode")
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every way to send a token that must be refused with 401.
fn bad_auths(ctx: &Ctx) -> Vec<(&'static str, Auth)> {
    let t = now();
    let ann = ctx.ann.id.to_string();
    let secret = TEST_SECRET.as_bytes();
    let claims = |sub: Value, exp: u64| json!({"sub": sub, "iat": t, "exp": exp});
    let hs256 = |c: Value| Auth::Bearer(jwt(Algorithm::HS256, secret, &c));
    let header = |v: &[u8]| Auth::Header(HeaderValue::from_bytes(v).expect("header value"));
    // ann's real token with its payload swapped for bob's: the signature no longer matches.
    let parts: Vec<&str> = ctx.ann.token.split('.').collect();
    let bob_payload = b64url(
        claims(json!(ctx.bob.id.to_string()), t + 3600)
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{}.{}", parts[0], bob_payload, parts[2]);
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let none_payload = b64url(claims(json!(ann), t + 3600).to_string().as_bytes());
    vec![
        ("no Authorization header", Auth::None),
        ("Basic scheme", header(b"Basic YW5uOnNlY3JldA==")),
        ("Bearer without a token", header(b"Bearer")),
        ("Bearer with an empty token", header(b"Bearer ")),
        (
            "token without the Bearer scheme",
            header(ctx.ann.token.as_bytes()),
        ),
        ("non-ASCII Authorization header", header(b"Bearer \xff\xfe")),
        ("garbage token", Auth::Bearer("not-a-jwt".into())),
        ("three garbage segments", Auth::Bearer("a.b.c".into())),
        (
            "forged token (another secret)",
            Auth::Bearer(jwt(
                Algorithm::HS256,
                b"some-other-secret-some-other-secret!",
                &claims(json!(ann), t + 3600),
            )),
        ),
        ("expired token", hs256(claims(json!(ann), t - 3600))),
        ("token without exp", hs256(json!({"sub": ann, "iat": t}))),
        ("sub is not a number", hs256(claims(json!("ann"), t + 3600))),
        ("sub is zero", hs256(claims(json!("0"), t + 3600))),
        ("sub is negative", hs256(claims(json!("-5"), t + 3600))),
        (
            "sub is a JSON number",
            hs256(claims(json!(ctx.ann.id), t + 3600)),
        ),
        (
            "HS512 instead of HS256",
            Auth::Bearer(jwt(Algorithm::HS512, secret, &claims(json!(ann), t + 3600))),
        ),
        (
            "alg none",
            Auth::Bearer(format!("{none_header}.{none_payload}.")),
        ),
        ("tampered payload", Auth::Bearer(tampered)),
    ]
}

/// One endpoint of `docs/api.md` with valid path ids and (for writes) a valid body, from ann.
struct Endpoint {
    method: &'static str,
    /// The path with `{}` where an id goes.
    template: &'static str,
    ids: Vec<i64>,
    body: Option<Value>,
    /// The same body in serde's sequence form (a JSON array of the field values in order).
    seq_form: Option<Value>,
    public: bool,
}

impl Endpoint {
    fn path_with(&self, ids: &[String]) -> String {
        let mut out = String::new();
        let mut it = ids.iter();
        for (i, piece) in self.template.split("{}").enumerate() {
            if i > 0 {
                out.push_str(it.next().expect("an id per placeholder"));
            }
            out.push_str(piece);
        }
        out
    }

    fn path(&self) -> String {
        self.path_with(&self.ids.iter().map(i64::to_string).collect::<Vec<_>>())
    }

    fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

fn endpoints(ctx: &Ctx) -> Vec<Endpoint> {
    let (bob, carol, ch, grp) = (ctx.bob.id, ctx.carol.id, ctx.ch, ctx.grp);
    let e =
        |method, template, ids: Vec<i64>, body: Option<Value>, seq_form: Option<Value>| Endpoint {
            method,
            template,
            ids,
            body,
            seq_form,
            public: false,
        };
    vec![
        Endpoint {
            public: true,
            ..e(
                "POST",
                "/v1/users",
                vec![],
                Some(json!({"nickname": "Zed"})),
                Some(json!(["Zed", null])),
            )
        },
        e("GET", "/v1/me", vec![], None, None),
        e(
            "PATCH",
            "/v1/me",
            vec![],
            Some(json!({"nickname": "Ann2"})),
            Some(json!(["Ann2", null])),
        ),
        e(
            "POST",
            "/v1/friends",
            vec![],
            Some(json!({"friend_id": carol})),
            Some(json!([carol])),
        ),
        e("DELETE", "/v1/friends/{}", vec![bob], None, None),
        e(
            "PATCH",
            "/v1/friends/{}",
            vec![bob],
            Some(json!({"starred": true})),
            Some(json!([null, null, true])),
        ),
        e("GET", "/v1/contacts", vec![], None, None),
        e(
            "POST",
            "/v1/groups",
            vec![],
            Some(json!({"name": "G2", "member_ids": [bob]})),
            Some(json!(["G2", null, [bob]])),
        ),
        e(
            "PATCH",
            "/v1/groups/{}",
            vec![grp],
            Some(json!({"name": "G3"})),
            Some(json!(["G3", null])),
        ),
        e(
            "POST",
            "/v1/groups/{}/members",
            vec![grp],
            Some(json!({"user_ids": [carol]})),
            Some(json!([[carol]])),
        ),
        e(
            "DELETE",
            "/v1/groups/{}/members/{}",
            vec![grp, bob],
            None,
            None,
        ),
        e(
            "POST",
            "/v1/channels/{}/messages",
            vec![ch],
            Some(json!({"content": "hi"})),
            Some(json!(["hi", null])),
        ),
        e("GET", "/v1/channels/{}/messages", vec![ch], None, None),
        e(
            "POST",
            "/v1/channels/{}/read",
            vec![ch],
            Some(json!({"seq": 1})),
            Some(json!([1])),
        ),
        e(
            "PATCH",
            "/v1/conversations/{}",
            vec![ch],
            Some(json!({"pinned": true})),
            Some(json!([true, null, null])),
        ),
        e("GET", "/v1/conversations", vec![], None, None),
    ]
}

/// Cases every endpoint gets: bad tokens, bad bodies, bad path ids.
fn generated_cases(ctx: &Ctx) -> Vec<Case> {
    let mut out = Vec::new();
    let auths = bad_auths(ctx);
    for ep in endpoints(ctx) {
        let label = ep.label();
        let path = ep.path();
        let base = |what: &str| {
            let c = ctx.case(format!("{label}: {what}"), ep.method, path.clone());
            match &ep.body {
                Some(b) => c.json(b.clone()),
                None => c,
            }
        };

        if !ep.public {
            for (what, auth) in &auths {
                out.push(base(what).auth(auth.clone()).expect(401, "unauthorized"));
            }
        }

        if let Some(body) = &ep.body {
            let text = body.to_string();
            let obj = body.as_object().expect("bodies are objects");
            let (k, v) = obj.iter().next().expect("a field");
            let json_ct = "application/json";
            out.push(
                base("malformed JSON (truncated)")
                    .raw(&text[..text.len() - 1], json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("malformed JSON (single quotes)")
                    .raw(text.replace('"', "'"), json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("trailing garbage after the JSON")
                    .raw(format!("{text} x"), json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("two JSON values")
                    .raw(format!("{text}{text}"), json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("empty body with a JSON content type")
                    .raw("", json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("body not UTF-8")
                    .raw(b"{\"x\":\"\xff\xfe\"}".to_vec(), json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("JSON null")
                    .raw("null", json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("JSON string")
                    .raw("\"hello\"", json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("JSON number")
                    .raw("42", json_ct)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("empty JSON array")
                    .raw("[]", json_ct)
                    .expect(400, "invalid_json"),
            );
            if let Some(seq) = &ep.seq_form {
                // serde accepts a struct as an array of its field values; the API takes objects only.
                out.push(
                    base("JSON array of the field values")
                        .raw(seq.to_string(), json_ct)
                        .expect(400, "invalid_json"),
                );
            }
            out.push(
                base("duplicate key")
                    .raw(format!("{{\"{k}\":{v},{}", &text[1..]), json_ct)
                    .expect(400, "invalid_json"),
            );
            let mut unknown = body.clone();
            unknown["is_admin"] = json!(true);
            out.push(
                base("unknown field")
                    .json(unknown)
                    .expect(400, "invalid_json"),
            );
            out.push(
                base("no body and no content type")
                    .no_body()
                    .expect(400, "invalid_content_type"),
            );
            out.push(
                base("text/plain content type")
                    .raw(text.clone(), "text/plain")
                    .expect(400, "invalid_content_type"),
            );
            out.push(
                base("form content type")
                    .raw(format!("{k}=x"), "application/x-www-form-urlencoded")
                    .expect(400, "invalid_content_type"),
            );
            out.push(
                base("JSON with a non-JSON content type")
                    .raw(text.clone(), "application/xml")
                    .expect(400, "invalid_content_type"),
            );
            let big = format!("{{\"{k}\":\"{}\"}}", "a".repeat(OVERSIZE));
            out.push(
                base("body over 64 KiB")
                    .raw(big, json_ct)
                    .expect(413, "payload_too_large"),
            );
        }

        for pos in 0..ep.ids.len() {
            for (bad, code) in [
                ("abc", "invalid_path"),
                ("1.5", "invalid_path"),
                ("1e3", "invalid_path"),
                ("99999999999999999999", "invalid_path"),
                ("%20", "invalid_path"),
                ("0", "invalid_input"),
                ("-1", "invalid_input"),
                ("-9223372036854775808", "invalid_input"),
            ] {
                let mut ids: Vec<String> = ep.ids.iter().map(i64::to_string).collect();
                ids[pos] = bad.to_owned();
                let mut c = base(&format!("path id #{} = {bad:?}", pos + 1)).expect(400, code);
                c.path = ep.path_with(&ids);
                out.push(c);
            }
        }
    }
    out
}

impl Case {
    fn no_body(mut self) -> Self {
        self.body = Body::None;
        self
    }
}

/// Endpoint-specific cases: wrong types, missing fields, limits, permissions, unknown ids.
fn cases(ctx: &Ctx) -> Vec<Case> {
    let (ann, bob, carol, erin) = (&ctx.ann, &ctx.bob, &ctx.carol, &ctx.erin);
    let (ch, grp, closed) = (ctx.ch, ctx.grp, ctx.closed);
    let c = |name: &str, method: &'static str, path: &str| ctx.case(name, method, path);
    let long_url = format!("https://x.example/{}", "a".repeat(600 - 18));
    assert_eq!(long_url.len(), 600);
    let t = now();
    let ghost = Auth::Bearer(jwt(
        Algorithm::HS256,
        TEST_SECRET.as_bytes(),
        &json!({"sub": UNKNOWN.to_string(), "iat": t, "exp": t + 3600}),
    ));
    let msgs = |id: i64| format!("/v1/channels/{id}/messages");
    let read = |id: i64| format!("/v1/channels/{id}/read");
    let conv = |id: i64| format!("/v1/conversations/{id}");
    let group = |id: i64| format!("/v1/groups/{id}");
    let members = |id: i64| format!("/v1/groups/{id}/members");
    let member = |id: i64, u: i64| format!("/v1/groups/{id}/members/{u}");
    let friend = |id: i64| format!("/v1/friends/{id}");
    let unknown_members: Vec<i64> = (0..500).map(|i| 10_000_000 + i).collect();
    // More ids than one call takes (each distinct: the count alone is refused).
    let too_many: Vec<i64> = (0..=MAX_IDS_PER_CALL as i64)
        .map(|i| 20_000_000 + i)
        .collect();

    let mut v = Vec::new();

    // POST /v1/users
    let users =
        |name: &str| c(&format!("POST /v1/users: {name}"), "POST", "/v1/users").auth(Auth::None);
    let invalid = |name: &str, body: Value| users(name).json(body).expect(400, "invalid_input");
    let wrong = |name: &str, body: Value| users(name).json(body).expect(400, "invalid_json");
    v.extend([
        wrong(
            "nickname missing",
            json!({"avatar": "https://x.example/a.png"}),
        ),
        wrong("empty object", json!({})),
        wrong("nickname is a number", json!({"nickname": 42})),
        wrong("nickname is a bool", json!({"nickname": true})),
        wrong("nickname is null", json!({"nickname": null})),
        wrong("nickname is an array", json!({"nickname": ["Ann"]})),
        wrong(
            "nickname is an object",
            json!({"nickname": {"first": "Ann"}}),
        ),
        wrong(
            "avatar is a number",
            json!({"nickname": "Zed", "avatar": 7}),
        ),
        wrong(
            "avatar is a bool",
            json!({"nickname": "Zed", "avatar": false}),
        ),
        invalid("nickname of 65 chars", json!({"nickname": "x".repeat(65)})),
        invalid(
            "nickname of 65 CJK chars",
            json!({"nickname": "字".repeat(65)}),
        ),
        invalid("empty nickname", json!({"nickname": ""})),
        invalid("whitespace nickname", json!({"nickname": "   "})),
        invalid("tab and newline nickname", json!({"nickname": "\t\n "})),
        invalid("nickname with BEL", json!({"nickname": "a\u{7}b"})),
        invalid("nickname with NUL", json!({"nickname": "a\u{0}b"})),
        invalid("nickname with ESC", json!({"nickname": "\u{1b}[31mred"})),
        invalid("nickname with DEL", json!({"nickname": "a\u{7f}b"})),
        invalid("nickname with C1 control", json!({"nickname": "a\u{85}b"})),
        invalid(
            "nickname with a line break",
            json!({"nickname": "two\nlines"}),
        ),
        invalid(
            "avatar is not a URL",
            json!({"nickname": "Zed", "avatar": "not a url"}),
        ),
        invalid(
            "avatar ftp URL",
            json!({"nickname": "Zed", "avatar": "ftp://x.example/a.png"}),
        ),
        invalid(
            "avatar javascript URL",
            json!({"nickname": "Zed", "avatar": "javascript:alert(1)"}),
        ),
        invalid(
            "avatar scheme-relative URL",
            json!({"nickname": "Zed", "avatar": "//x.example/a.png"}),
        ),
        invalid(
            "avatar data URL",
            json!({"nickname": "Zed", "avatar": "data:image/png;base64,AAAA"}),
        ),
        invalid(
            "avatar with a space",
            json!({"nickname": "Zed", "avatar": "https://x.example/a b.png"}),
        ),
        invalid(
            "avatar with a control char",
            json!({"nickname": "Zed", "avatar": "https://x.example/\u{7}"}),
        ),
        invalid(
            "avatar of 600 bytes",
            json!({"nickname": "Zed", "avatar": long_url}),
        ),
        users("lone surrogate")
            .raw(r#"{"nickname":"\ud800"}"#, "application/json")
            .expect(400, "invalid_json"),
    ]);

    // GET/PATCH /v1/me
    let me =
        |name: &str, body: Value| c(&format!("PATCH /v1/me: {name}"), "PATCH", "/v1/me").json(body);
    v.extend([
        me("empty object", json!({})).expect(400, "nothing_to_change"),
        me("only nulls", json!({"nickname": null, "avatar": null}))
            .expect(400, "nothing_to_change"),
        me("nickname is a number", json!({"nickname": 12})).expect(400, "invalid_json"),
        me("nickname is a bool", json!({"nickname": false})).expect(400, "invalid_json"),
        me("nickname of 65 chars", json!({"nickname": "n".repeat(65)}))
            .expect(400, "invalid_input"),
        me("whitespace nickname", json!({"nickname": " \t "})).expect(400, "invalid_input"),
        me(
            "nickname with a control char",
            json!({"nickname": "a\u{8}b"}),
        )
        .expect(400, "invalid_input"),
        me(
            "avatar data URL",
            json!({"avatar": "data:image/png;base64,AAAA"}),
        )
        .expect(400, "invalid_input"),
        me("avatar of 600 bytes", json!({"avatar": long_url})).expect(400, "invalid_input"),
        me(
            "valid nickname, bad avatar",
            json!({"nickname": "Ok", "avatar": "nope"}),
        )
        .expect(400, "invalid_input"),
        c(
            "GET /v1/me: token of a user that does not exist",
            "GET",
            "/v1/me",
        )
        .auth(ghost.clone())
        .status(401)
        .or_status(404),
        me(
            "token of a user that does not exist",
            json!({"nickname": "Ghost"}),
        )
        .auth(ghost.clone())
        .status(401)
        .or_status(404),
    ]);

    // POST /v1/friends
    let add = |name: &str, body: Value| {
        c(&format!("POST /v1/friends: {name}"), "POST", "/v1/friends").json(body)
    };
    v.extend([
        add("friend_id missing", json!({})).expect(400, "invalid_json"),
        add(
            "friend_id is a numeric string",
            json!({"friend_id": carol.id.to_string()}),
        )
        .expect(400, "invalid_json"),
        add("friend_id is a string", json!({"friend_id": "abc"})).expect(400, "invalid_json"),
        add("friend_id is a bool", json!({"friend_id": true})).expect(400, "invalid_json"),
        add("friend_id is \"true\"", json!({"friend_id": "true"})).expect(400, "invalid_json"),
        add("friend_id is a float", json!({"friend_id": 1.5})).expect(400, "invalid_json"),
        add("friend_id in exponent form", json!({"friend_id": 1e3})).expect(400, "invalid_json"),
        add("friend_id is null", json!({"friend_id": null})).expect(400, "invalid_json"),
        add("friend_id is an array", json!({"friend_id": [carol.id]})).expect(400, "invalid_json"),
        c(
            "POST /v1/friends: friend_id above i64",
            "POST",
            "/v1/friends",
        )
        .raw(r#"{"friend_id": 99999999999999999999}"#, "application/json")
        .expect(400, "invalid_json"),
        add("friend_id zero", json!({"friend_id": 0})).expect(400, "invalid_input"),
        add("friend_id negative", json!({"friend_id": -1})).expect(400, "invalid_input"),
        add("self-friend", json!({"friend_id": ann.id})).expect(400, "invalid_input"),
        add("unknown user", json!({"friend_id": UNKNOWN})).expect(404, "user_not_found"),
        add("already friends", json!({"friend_id": bob.id})).expect(409, "already_friends"),
        add(
            "already friends, from the other side",
            json!({"friend_id": ann.id}),
        )
        .by(bob)
        .expect(409, "already_friends"),
        add(
            "token of a user that does not exist",
            json!({"friend_id": bob.id}),
        )
        .auth(ghost.clone())
        .status(401)
        .or_status(404),
    ]);

    // DELETE/PATCH /v1/friends/{friend_id}
    let del = |name: &str, id: i64| {
        c(
            &format!("DELETE /v1/friends/{{id}}: {name}"),
            "DELETE",
            &friend(id),
        )
    };
    let upd = |name: &str, id: i64, body: Value| {
        c(
            &format!("PATCH /v1/friends/{{id}}: {name}"),
            "PATCH",
            &friend(id),
        )
        .json(body)
    };
    v.extend([
        del("not a friend", carol.id).expect(404, "not_friends"),
        del("a former friend", erin.id).expect(404, "not_friends"),
        del("unknown user", UNKNOWN).status(404),
        del("self", ann.id).status(404),
        upd("empty object", bob.id, json!({})).expect(400, "nothing_to_change"),
        upd(
            "only nulls",
            bob.id,
            json!({"remark_name": null, "group_name": null, "starred": null}),
        )
        .expect(400, "nothing_to_change"),
        upd(
            "remark of 65 chars",
            bob.id,
            json!({"remark_name": "r".repeat(65)}),
        )
        .expect(400, "invalid_input"),
        upd(
            "remark of 65 CJK chars",
            bob.id,
            json!({"remark_name": "备".repeat(65)}),
        )
        .expect(400, "invalid_input"),
        upd(
            "remark with a control char",
            bob.id,
            json!({"remark_name": "a\u{7}"}),
        )
        .expect(400, "invalid_input"),
        upd(
            "group_name of 65 chars",
            bob.id,
            json!({"group_name": "g".repeat(65)}),
        )
        .expect(400, "invalid_input"),
        upd(
            "group_name with a control char",
            bob.id,
            json!({"group_name": "a\u{0}b"}),
        )
        .expect(400, "invalid_input"),
        upd(
            "valid starred, bad remark",
            bob.id,
            json!({"starred": true, "remark_name": "r".repeat(65)}),
        )
        .expect(400, "invalid_input"),
        upd("starred is \"true\"", bob.id, json!({"starred": "true"})).expect(400, "invalid_json"),
        upd("starred is 1", bob.id, json!({"starred": 1})).expect(400, "invalid_json"),
        upd("remark is a number", bob.id, json!({"remark_name": 5})).expect(400, "invalid_json"),
        upd("remark is an array", bob.id, json!({"remark_name": ["x"]}))
            .expect(400, "invalid_json"),
        upd("not a friend", carol.id, json!({"starred": true})).expect(404, "not_friends"),
        upd("a former friend", erin.id, json!({"starred": true})).expect(404, "not_friends"),
        upd("unknown user", UNKNOWN, json!({"starred": true})).status(404),
        upd("self", ann.id, json!({"starred": true})).status(404),
    ]);

    // GET /v1/contacts and GET /v1/conversations: X-Hermet-Min-Lsn
    for path in ["/v1/contacts", "/v1/conversations"] {
        for bad in [
            "bogus",
            "",
            "0/",
            "/0",
            "123456789/0",
            "0/XYZ",
            "-1/0",
            "0/1/2",
        ] {
            v.push(
                c(
                    &format!("GET {path}: X-Hermet-Min-Lsn {bad:?}"),
                    "GET",
                    path,
                )
                .header("x-hermet-min-lsn", bad)
                .expect(400, "invalid_lsn"),
            );
        }
    }

    // POST /v1/groups
    let mk = |name: &str, body: Value| {
        c(&format!("POST /v1/groups: {name}"), "POST", "/v1/groups").json(body)
    };
    v.extend([
        mk("empty object", json!({})).expect(400, "invalid_json"),
        mk("member_ids missing", json!({"name": "G"})).expect(400, "invalid_json"),
        mk("name missing", json!({"member_ids": [bob.id]})).expect(400, "invalid_json"),
        mk(
            "name is a number",
            json!({"name": 5, "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_json"),
        mk(
            "name is null",
            json!({"name": null, "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_json"),
        mk(
            "member_ids is a string",
            json!({"name": "G", "member_ids": "1,2"}),
        )
        .expect(400, "invalid_json"),
        mk(
            "member_ids is a number",
            json!({"name": "G", "member_ids": bob.id}),
        )
        .expect(400, "invalid_json"),
        mk(
            "member id is a string",
            json!({"name": "G", "member_ids": [bob.id.to_string()]}),
        )
        .expect(400, "invalid_json"),
        mk(
            "member id is a float",
            json!({"name": "G", "member_ids": [1.5]}),
        )
        .expect(400, "invalid_json"),
        mk(
            "member id is null",
            json!({"name": "G", "member_ids": [null]}),
        )
        .expect(400, "invalid_json"),
        mk("member id zero", json!({"name": "G", "member_ids": [0]})).expect(400, "invalid_input"),
        mk(
            "member id negative",
            json!({"name": "G", "member_ids": [bob.id, -3]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "name of 65 chars",
            json!({"name": "g".repeat(65), "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "whitespace name",
            json!({"name": "  ", "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "name with a control char",
            json!({"name": "a\u{0}", "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "avatar not a URL",
            json!({"name": "G", "avatar": "x", "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "avatar of 600 bytes",
            json!({"name": "G", "avatar": long_url, "member_ids": [bob.id]}),
        )
        .expect(400, "invalid_input"),
        mk(
            "unknown member",
            json!({"name": "G", "member_ids": [UNKNOWN]}),
        )
        .expect(404, "user_not_found"),
        mk(
            "a friend and an unknown member",
            json!({"name": "G", "member_ids": [bob.id, UNKNOWN]}),
        )
        .expect(404, "user_not_found"),
        mk(
            "1001 member ids",
            json!({"name": "G", "member_ids": too_many}),
        )
        .expect(400, "invalid_input"),
        mk(
            "500 others + the owner is over the limit",
            json!({"name": "G", "member_ids": unknown_members}),
        )
        .expect(400, "invalid_input"),
        mk(
            "token of a user that does not exist",
            json!({"name": "G", "member_ids": [bob.id]}),
        )
        .auth(ghost.clone())
        .status(401)
        .or_status(404),
    ]);

    // PATCH /v1/groups/{channel_id}
    let ren = |name: &str, id: i64, body: Value| {
        c(
            &format!("PATCH /v1/groups/{{id}}: {name}"),
            "PATCH",
            &group(id),
        )
        .json(body)
    };
    v.extend([
        ren("empty object", grp, json!({})).expect(400, "nothing_to_change"),
        ren("only nulls", grp, json!({"name": null, "avatar": null}))
            .expect(400, "nothing_to_change"),
        ren("name of 65 chars", grp, json!({"name": "g".repeat(65)})).expect(400, "invalid_input"),
        ren("whitespace name", grp, json!({"name": "\n"})).expect(400, "invalid_input"),
        ren("name with a control char", grp, json!({"name": "a\u{1}"}))
            .expect(400, "invalid_input"),
        ren(
            "avatar ftp URL",
            grp,
            json!({"avatar": "ftp://x.example/a.png"}),
        )
        .expect(400, "invalid_input"),
        ren("name is a number", grp, json!({"name": 1})).expect(400, "invalid_json"),
        ren("not the owner", grp, json!({"name": "X"}))
            .by(bob)
            .expect(403, "not_owner"),
        ren("not a member", grp, json!({"name": "X"}))
            .by(carol)
            .expect(403, "not_member"),
        ren("unknown channel", UNKNOWN, json!({"name": "X"})).status(404),
        ren("a single chat", ch, json!({"name": "X"})).expect(404, "group_not_found"),
        ren("a closed single chat", closed, json!({"name": "X"})).expect(404, "group_not_found"),
    ]);

    // POST /v1/groups/{channel_id}/members
    let addm = |name: &str, id: i64, body: Value| {
        c(
            &format!("POST /v1/groups/{{id}}/members: {name}"),
            "POST",
            &members(id),
        )
        .json(body)
    };
    v.extend([
        addm("empty object", grp, json!({})).expect(400, "invalid_json"),
        addm("empty list", grp, json!({"user_ids": []})).expect(400, "invalid_input"),
        addm("user_ids is a number", grp, json!({"user_ids": carol.id}))
            .expect(400, "invalid_json"),
        addm("user id is a string", grp, json!({"user_ids": ["x"]})).expect(400, "invalid_json"),
        addm("user id zero", grp, json!({"user_ids": [0]})).expect(400, "invalid_input"),
        addm("user id negative", grp, json!({"user_ids": [carol.id, -1]}))
            .expect(400, "invalid_input"),
        addm("1001 user ids", grp, json!({"user_ids": too_many})).expect(400, "invalid_input"),
        addm(
            "a user id twice",
            grp,
            json!({"user_ids": [carol.id, carol.id]}),
        )
        .expect(400, "invalid_input"),
        addm(
            "500 more than the group takes",
            grp,
            json!({"user_ids": unknown_members}),
        )
        .expect(400, "invalid_input"),
        addm("unknown user", grp, json!({"user_ids": [UNKNOWN]})).expect(404, "user_not_found"),
        addm("not a member", grp, json!({"user_ids": [carol.id]}))
            .by(carol)
            .expect(403, "not_member"),
        addm("unknown channel", UNKNOWN, json!({"user_ids": [carol.id]})).status(404),
        addm("a single chat", ch, json!({"user_ids": [carol.id]})).expect(404, "group_not_found"),
    ]);

    // DELETE /v1/groups/{channel_id}/members/{user_id}
    let rm = |name: &str, id: i64, u: i64| {
        c(
            &format!("DELETE /v1/groups/{{id}}/members/{{uid}}: {name}"),
            "DELETE",
            &member(id, u),
        )
    };
    v.extend([
        rm("not the owner", grp, ann.id)
            .by(bob)
            .expect(403, "not_owner"),
        rm("not a member removing someone", grp, bob.id)
            .by(carol)
            .expect(403, "not_member"),
        rm("not a member leaving", grp, carol.id)
            .by(carol)
            .expect(403, "not_member"),
        rm("target not a member", grp, carol.id).expect(404, "member_not_found"),
        rm("target unknown", grp, UNKNOWN).status(404),
        rm("unknown channel", UNKNOWN, bob.id).status(404),
        rm("a single chat", ch, bob.id).expect(404, "group_not_found"),
    ]);

    // POST /v1/channels/{channel_id}/messages
    let send = |name: &str, id: i64, body: Value| {
        c(
            &format!("POST /v1/channels/{{id}}/messages: {name}"),
            "POST",
            &msgs(id),
        )
        .json(body)
    };
    let bad_content = |name: &str, body: Value| send(name, ch, body).expect(400, "invalid_input");
    v.extend([
        send("empty object", ch, json!({})).expect(400, "invalid_json"),
        send("content missing", ch, json!({"type": "text"})).expect(400, "invalid_json"),
        send("content is a number", ch, json!({"content": 5})).expect(400, "invalid_json"),
        send("content is null", ch, json!({"content": null})).expect(400, "invalid_json"),
        send("content is a bool", ch, json!({"content": true})).expect(400, "invalid_json"),
        send("content is an array", ch, json!({"content": ["x"]})).expect(400, "invalid_json"),
        send("type is a number", ch, json!({"content": "x", "type": 1}))
            .expect(400, "invalid_json"),
        bad_content("empty content", json!({"content": ""})),
        bad_content("whitespace content", json!({"content": "   "})),
        bad_content("line breaks only", json!({"content": " \n\t\r\n "})),
        bad_content(
            "content of 4001 chars",
            json!({"content": "c".repeat(4001)}),
        ),
        bad_content(
            "content of 4001 two-byte chars",
            json!({"content": "é".repeat(4001)}),
        ),
        bad_content("content with NUL", json!({"content": "a\u{0}b"})),
        bad_content("content with BEL", json!({"content": "ding\u{7}"})),
        bad_content("content with ESC", json!({"content": "\u{1b}[2J"})),
        bad_content("content with a vertical tab", json!({"content": "a\u{b}b"})),
        bad_content(
            "type with capitals",
            json!({"content": "x", "type": "Image"}),
        ),
        bad_content("empty type", json!({"content": "x", "type": ""})),
        bad_content(
            "type of 33 chars",
            json!({"content": "x", "type": "t".repeat(33)}),
        ),
        bad_content(
            "type with a space",
            json!({"content": "x", "type": "te xt"}),
        ),
        bad_content(
            "type with punctuation",
            json!({"content": "x", "type": "text!"}),
        ),
        bad_content("type not ASCII", json!({"content": "x", "type": "тип"})),
        send(
            "unknown field sender_id",
            ch,
            json!({"content": "x", "sender_id": bob.id}),
        )
        .expect(400, "invalid_json"),
        send("a closed single chat", closed, json!({"content": "x"})).expect(403, "not_friends"),
        send(
            "a closed single chat, the other side",
            closed,
            json!({"content": "x"}),
        )
        .by(erin)
        .expect(403, "not_friends"),
        send(
            "not a member of the single chat",
            ch,
            json!({"content": "x"}),
        )
        .by(carol)
        .expect(403, "not_member"),
        send("not a member of the group", grp, json!({"content": "x"}))
            .by(carol)
            .expect(403, "not_member"),
        send("unknown channel", UNKNOWN, json!({"content": "x"})).expect(404, "channel_not_found"),
    ]);

    // GET /v1/channels/{channel_id}/messages
    let hist = |name: &str, path: String| {
        c(
            &format!("GET /v1/channels/{{id}}/messages: {name}"),
            "GET",
            &path,
        )
    };
    let q = |query: &str| format!("{}?{query}", msgs(ch));
    v.extend([
        hist("limit=0", q("limit=0")).expect(400, "invalid_limit"),
        hist("limit=101", q("limit=101")).expect(400, "invalid_limit"),
        hist("limit=-1", q("limit=-1")).expect(400, "invalid_limit"),
        hist("limit=abc", q("limit=abc")).expect(400, "invalid_query"),
        hist("limit=1.5", q("limit=1.5")).expect(400, "invalid_query"),
        hist("empty limit", q("limit=")).expect(400, "invalid_query"),
        hist("limit above i64", q("limit=99999999999999999999")).expect(400, "invalid_query"),
        hist("limit twice", q("limit=5&limit=6")).status(400),
        hist("before_seq=0", q("before_seq=0")).expect(400, "invalid_before_seq"),
        hist("before_seq=-1", q("before_seq=-1")).expect(400, "invalid_before_seq"),
        hist("before_seq=abc", q("before_seq=abc")).expect(400, "invalid_query"),
        hist("after_seq=-1", q("after_seq=-1")).expect(400, "invalid_after_seq"),
        hist("after_seq=abc", q("after_seq=abc")).expect(400, "invalid_query"),
        hist("not a member of the single chat", msgs(ch))
            .by(carol)
            .expect(403, "not_member"),
        hist("not a member of the group", msgs(grp))
            .by(carol)
            .expect(403, "not_member"),
        hist("a closed single chat", msgs(closed)).expect(403, "not_member"),
        hist("unknown channel", msgs(UNKNOWN)).expect(404, "channel_not_found"),
    ]);

    // POST /v1/channels/{channel_id}/read (ch and grp have one message each)
    let mark = |name: &str, id: i64, body: Value| {
        c(
            &format!("POST /v1/channels/{{id}}/read: {name}"),
            "POST",
            &read(id),
        )
        .json(body)
    };
    v.extend([
        mark("seq above the last", ch, json!({"seq": 2})).expect(400, "invalid_input"),
        mark("seq above the last in a group", grp, json!({"seq": 2})).expect(400, "invalid_input"),
        mark("seq i64::MAX", ch, json!({"seq": i64::MAX})).expect(400, "invalid_input"),
        mark("seq negative", ch, json!({"seq": -1})).expect(400, "invalid_input"),
        mark("seq i64::MIN", ch, json!({"seq": i64::MIN})).expect(400, "invalid_input"),
        mark("seq is a string", ch, json!({"seq": "1"})).expect(400, "invalid_json"),
        mark("seq is a float", ch, json!({"seq": 1.5})).expect(400, "invalid_json"),
        mark("seq is null", ch, json!({"seq": null})).expect(400, "invalid_json"),
        mark("seq is a bool", ch, json!({"seq": true})).expect(400, "invalid_json"),
        mark("seq missing", ch, json!({})).expect(400, "invalid_json"),
        mark("not a member", ch, json!({"seq": 1}))
            .by(carol)
            .expect(403, "not_member"),
        mark("a closed single chat", closed, json!({"seq": 1})).expect(403, "not_member"),
        mark("unknown channel", UNKNOWN, json!({"seq": 0})).expect(404, "channel_not_found"),
    ]);

    // GET /v1/conversations
    let list = |name: &str, query: &str| {
        c(
            &format!("GET /v1/conversations: {name}"),
            "GET",
            &format!("/v1/conversations?{query}"),
        )
    };
    v.extend([
        list("limit=0", "limit=0").expect(400, "invalid_limit"),
        list("limit=101", "limit=101").expect(400, "invalid_limit"),
        list("limit=-1", "limit=-1").expect(400, "invalid_limit"),
        list("limit=abc", "limit=abc").expect(400, "invalid_query"),
        list("empty limit", "limit=").expect(400, "invalid_query"),
        list("cursor garbage", "cursor=garbage").expect(400, "invalid_cursor"),
        list("cursor with a bad pinned flag", "cursor=2.1.1").expect(400, "invalid_cursor"),
        list("cursor too short", "cursor=1.2").expect(400, "invalid_cursor"),
        list("cursor too long", "cursor=1.2.3.4").expect(400, "invalid_cursor"),
        list("cursor with a bad time", "cursor=1.x.3").expect(400, "invalid_cursor"),
        list("cursor with a bad id", "cursor=0.1.y").expect(400, "invalid_cursor"),
        list("cursor above i64", "cursor=0.99999999999999999999.1").expect(400, "invalid_cursor"),
    ]);

    // PATCH /v1/conversations/{channel_id}
    let cv = |name: &str, id: i64, body: Value| {
        c(
            &format!("PATCH /v1/conversations/{{id}}: {name}"),
            "PATCH",
            &conv(id),
        )
        .json(body)
    };
    v.extend([
        cv("empty object", ch, json!({})).expect(400, "nothing_to_change"),
        cv(
            "only nulls",
            ch,
            json!({"pinned": null, "muted": null, "hidden": null}),
        )
        .expect(400, "nothing_to_change"),
        cv("pinned is \"true\"", ch, json!({"pinned": "true"})).expect(400, "invalid_json"),
        cv("muted is 1", ch, json!({"muted": 1})).expect(400, "invalid_json"),
        cv("hidden is \"yes\"", ch, json!({"hidden": "yes"})).expect(400, "invalid_json"),
        cv("unknown field", ch, json!({"archived": true})).expect(400, "invalid_json"),
        cv("not a member", ch, json!({"pinned": true}))
            .by(carol)
            .expect(403, "not_member"),
        cv("a closed single chat", closed, json!({"pinned": true})).expect(403, "not_member"),
        cv("unknown channel", UNKNOWN, json!({"pinned": true})).expect(404, "channel_not_found"),
    ]);

    // Routing: unknown routes and wrong methods answer in the error shape too.
    for path in [
        "/v1/nope",
        // `/` is the web client; only its own files are served.
        "/index.html",
        "/app.js/x",
        "/v1/me/",
        "/v2/me",
        "/v1/users/1",
        format!("{}/extra", msgs(ch)).as_str(),
    ] {
        v.push(c(&format!("unknown route GET {path}"), "GET", path).expect(404, "not_found"));
    }
    v.push(
        c("unknown route without a token", "GET", "/v1/nope")
            .auth(Auth::None)
            .expect(404, "not_found"),
    );
    for (method, path) in [
        ("PUT", "/v1/me".to_owned()),
        ("DELETE", "/v1/me".to_owned()),
        ("GET", "/v1/users".to_owned()),
        ("GET", "/v1/friends".to_owned()),
        ("POST", "/v1/contacts".to_owned()),
        ("GET", "/v1/groups".to_owned()),
        ("GET", group(grp)),
        ("DELETE", "/v1/conversations".to_owned()),
        ("PUT", msgs(ch)),
        ("GET", read(ch)),
        ("POST", "/healthz".to_owned()),
        ("POST", "/".to_owned()),
        ("DELETE", "/ops".to_owned()),
    ] {
        v.push(
            c(&format!("wrong method {method} {path}"), method, &path)
                .expect(405, "method_not_allowed"),
        );
    }
    v
}

struct Sent {
    status: u16,
    ctype: String,
    lsn: Option<String>,
    body: Vec<u8>,
}

async fn send(http: &reqwest::Client, app: &TestApp, case: &Case) -> Result<Sent, String> {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
    let mut req = http.request(method, app.url(&case.path));
    req = match &case.auth {
        Auth::None => req,
        Auth::Bearer(t) => req.bearer_auth(t),
        Auth::Header(v) => req.header(reqwest::header::AUTHORIZATION, v.clone()),
    };
    for (k, v) in &case.headers {
        req = req.header(*k, v);
    }
    req = match &case.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(b, ctype) => req.header("content-type", *ctype).body(b.clone()),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ctype = header("content-type").unwrap_or_default();
    let lsn = header("x-hermet-lsn");
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the body failed: {e}"))?
        .to_vec();
    Ok(Sent {
        status,
        ctype,
        lsn,
        body,
    })
}

/// What is wrong with the answer to `case`, if anything.
fn check(case: &Case, r: &Sent) -> Vec<String> {
    let mut bad = Vec::new();
    let text = String::from_utf8_lossy(&r.body);
    if !case.status.contains(&r.status) {
        bad.push(format!(
            "status {} (expected {:?}); body {text}",
            r.status, case.status
        ));
    }
    if r.status >= 500 {
        bad.push("a server error for bad input".into());
    }
    if !r.ctype.starts_with("application/json") {
        bad.push(format!("content-type {:?}, not JSON", r.ctype));
    }
    if let Some(lsn) = &r.lsn {
        bad.push(format!("an error carries X-Hermet-Lsn {lsn}"));
    }
    let body: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(_) => {
            bad.push(format!("body is not JSON: {text:?}"));
            return bad;
        }
    };
    let code = body["error"]["code"].as_str().unwrap_or("");
    let snake = !code.is_empty()
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !snake {
        bad.push(format!(
            "error.code is not a non-empty snake_case string: {body}"
        ));
    }
    if !matches!(body["error"]["message"].as_str(), Some(m) if !m.trim().is_empty()) {
        bad.push(format!("error.message is not a non-empty string: {body}"));
    }
    if let Some(f) = body["error"].get("field") {
        if !matches!(f.as_str(), Some(s) if !s.is_empty()) {
            bad.push(format!("error.field is not a non-empty string: {body}"));
        }
    }
    if let Some(expected) = case.code {
        if code != expected {
            bad.push(format!(
                "error.code {code:?}, expected {expected:?}: {body}"
            ));
        }
    }
    bad
}

/// A digest of every table, so a rejected write that changed anything shows up.
async fn digest(app: &TestApp) -> String {
    let conn = app.store.pool().get().await.expect("connection");
    let mut out = Vec::new();
    for t in hermet_core::rows::WRITE_TABLES.iter().chain(&VIEW_TABLES) {
        let sql = format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t"
        );
        let row = conn
            .query_one(sql.as_str(), &[])
            .await
            .expect("digest query");
        out.push(format!("{t}={}", row.get::<_, String>(0)));
    }
    out.join(" ")
}

/// What every user sees through the API.
async fn api_snapshot(app: &TestApp, ctx: &Ctx) -> Value {
    let mut out = serde_json::Map::new();
    for (name, u) in [
        ("ann", &ctx.ann),
        ("bob", &ctx.bob),
        ("carol", &ctx.carol),
        ("erin", &ctx.erin),
    ] {
        for path in ["/v1/me", "/v1/contacts", "/v1/conversations"] {
            let r = app.get(path, u).await;
            assert_eq!(r.status, 200, "{name} {path}: {:?}", r.body);
            out.insert(format!("{name} {path}"), r.body);
        }
    }
    for (name, u, ch) in [
        ("ann", &ctx.ann, ctx.ch),
        ("bob", &ctx.bob, ctx.ch),
        ("ann", &ctx.ann, ctx.grp),
    ] {
        let path = format!("/v1/channels/{ch}/messages");
        let r = app.get(&path, u).await;
        assert_eq!(r.status, 200, "{name} {path}: {:?}", r.body);
        out.insert(format!("{name} {path}"), r.body);
    }
    Value::Object(out)
}

async fn setup(app: &TestApp) -> Ctx {
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let carol = app.new_user("Carol").await;
    let erin = app.new_user("Erin").await;
    let ch = app.befriend(&ann, &bob).await;
    app.send(&ann, ch, "hello").await;
    let r = app
        .post(
            "/v1/groups",
            &ann,
            json!({"name": "Team", "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(r.status, 201, "create group: {:?}", r.body);
    let grp = r.body["channel_id"].as_i64().expect("channel_id");
    app.send(&ann, grp, "hi team").await;
    let closed = app.befriend(&ann, &erin).await;
    app.send(&erin, closed, "bye").await;
    let r = app.delete(&format!("/v1/friends/{}", erin.id), &ann).await;
    assert_eq!(r.status, 204, "delete friend: {:?}", r.body);
    Ctx {
        ann,
        bob,
        carol,
        erin,
        ch,
        grp,
        closed,
    }
}

/// Sends every case; returns one line per problem.
async fn run(app: &TestApp, cases: &[Case]) -> Vec<String> {
    let http = reqwest::Client::new();
    let before = digest(app).await;
    let mut failures = Vec::new();
    for case in cases {
        let problems = match send(&http, app, case).await {
            Ok(r) => check(case, &r),
            Err(e) => vec![e],
        };
        for p in problems {
            failures.push(format!(
                "[{}] {} {}: {p}",
                case.name, case.method, case.path
            ));
        }
        if case.method != "GET" {
            let after = digest(app).await;
            if after != before {
                failures.push(format!(
                    "[{}] the rejected request changed the database",
                    case.name
                ));
                panic!(
                    "[{}] changed the database; later cases would be meaningless.\nbefore: {before}\nafter:  {after}\nearlier failures:\n{}",
                    case.name,
                    failures.join("\n")
                );
            }
        }
    }
    failures
}

fn assert_no_failures(what: &str, n: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {n} {what} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_endpoint_refuses_bad_requests_generically() {
    let app = TestApp::spawn().await;
    let ctx = setup(&app).await;
    let snapshot = api_snapshot(&app, &ctx).await;
    let cases = generated_cases(&ctx);
    let failures = run(&app, &cases).await;
    assert_no_failures("generated", cases.len(), &failures);
    assert_eq!(
        api_snapshot(&app, &ctx).await,
        snapshot,
        "rejected requests changed what users see"
    );
    app.assert_converged().await;
}

#[tokio::test]
async fn every_endpoint_refuses_bad_values() {
    // Groups of at most 500, so the group-size limit is reachable with one call's ids.
    let db = TestDb::new().await;
    let mut cfg = db.store(50).config().clone();
    cfg.limits.max_group_members = GROUP_LIMIT;
    let store = db.store_with(cfg);
    let app = TestApp::spawn_with(db, store).await;
    let ctx = setup(&app).await;
    let snapshot = api_snapshot(&app, &ctx).await;
    let cases = cases(&ctx);
    let failures = run(&app, &cases).await;
    assert_no_failures("endpoint-specific", cases.len(), &failures);
    assert_eq!(
        api_snapshot(&app, &ctx).await,
        snapshot,
        "rejected requests changed what users see"
    );
    app.assert_converged().await;
}

/// The explicit version of the "changed nothing" rule for sends: after rejected sends of every
/// kind, both users' conversation lists and the history are exactly as before, and a valid send
/// afterwards gets the next seq (no seq was consumed by a rejected one).
#[tokio::test]
async fn rejected_sends_leave_conversations_and_history_alone() {
    let app = TestApp::spawn().await;
    let ctx = setup(&app).await;
    let path = format!("/v1/channels/{}/messages", ctx.ch);
    let state = |u: &User| {
        let (app, path) = (&app, path.clone());
        let u = u.clone();
        async move {
            let convs = app.conversations(&u).await;
            let hist = app.get(&path, &u).await;
            assert_eq!(hist.status, 200);
            (convs, hist.body)
        }
    };
    let (ann0, bob0) = (state(&ctx.ann).await, state(&ctx.bob).await);
    for body in [
        json!({"content": ""}),
        json!({"content": "c".repeat(4001)}),
        json!({"content": "a\u{0}b"}),
        json!({"content": "x", "type": "Bad"}),
        json!({"content": 1}),
    ] {
        let r = app.post(&path, &ctx.ann, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
    }
    let r = app
        .post(&path, &ctx.carol, json!({"content": "intruder"}))
        .await;
    assert_eq!((r.status, r.code()), (403, "not_member"));
    let r = app
        .post(
            &format!("/v1/channels/{}/messages", ctx.closed),
            &ctx.ann,
            json!({"content": "x"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "not_friends"));
    assert_eq!(
        state(&ctx.ann).await,
        ann0,
        "ann's conversations/history changed"
    );
    assert_eq!(
        state(&ctx.bob).await,
        bob0,
        "bob's conversations/history changed"
    );

    let r = app.send(&ctx.ann, ctx.ch, "after").await;
    assert_eq!(r.body["seq"], 2, "a rejected send consumed a seq");
    app.assert_converged().await;
}
