//! `GET /openapi.json` describes every endpoint the server routes (the sections of `docs/api.md`),
//! and every documented error response uses the error schema.

use hermet_testkit::TestApp;
use serde_json::Value;

/// The endpoints of `docs/api.md`, operational ones included.
const ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/v1/users"),
    ("get", "/v1/me"),
    ("patch", "/v1/me"),
    ("post", "/v1/friends"),
    ("delete", "/v1/friends/{friend_id}"),
    ("patch", "/v1/friends/{friend_id}"),
    ("get", "/v1/contacts"),
    ("post", "/v1/groups"),
    ("patch", "/v1/groups/{channel_id}"),
    ("post", "/v1/groups/{channel_id}/members"),
    ("delete", "/v1/groups/{channel_id}/members/{user_id}"),
    ("post", "/v1/channels/{channel_id}/messages"),
    ("get", "/v1/channels/{channel_id}/messages"),
    ("post", "/v1/channels/{channel_id}/read"),
    ("patch", "/v1/conversations/{channel_id}"),
    ("get", "/v1/conversations"),
    ("get", "/v1/ws"),
    ("post", "/v1/server/users"),
    ("patch", "/v1/server/users/{user_id}"),
    ("post", "/v1/server/users/{user_id}/tokens"),
    ("delete", "/v1/server/users/{user_id}/tokens"),
    ("get", "/v1/ops/status"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// Endpoints that take no bearer token.
const PUBLIC: &[(&str, &str)] = &[
    ("post", "/v1/users"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

const ERROR_SCHEMA: &str = "#/components/schemas/Error";
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Follows a local `$ref` (`#/a/b/c`) in the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = doc
                .pointer(ptr)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

async fn fetch() -> Value {
    let app = TestApp::spawn().await;
    let r = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content type: {:?}",
        r.header("content-type")
    );
    r.body
}

#[tokio::test]
async fn openapi_lists_every_endpoint_with_auth_and_error_schema() {
    let doc = fetch().await;
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths is an object");

    // Every endpoint is there, and nothing else.
    for (method, path) in ENDPOINTS {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{} {path} is missing from /openapi.json",
            method.to_uppercase()
        );
    }
    for (path, item) in paths {
        for method in METHODS {
            if item.get(*method).is_some() {
                assert!(
                    ENDPOINTS.contains(&(*method, path.as_str())),
                    "{} {path} is in the OpenAPI document but not in this list",
                    method.to_uppercase()
                );
            }
        }
    }

    // Bearer auth: a global requirement, lifted only on the public endpoints.
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    assert_eq!(doc["security"], serde_json::json!([{"bearerAuth": []}]));
    let key = &doc["components"]["securitySchemes"]["serverKey"];
    assert_eq!(
        (&key["type"], &key["scheme"]),
        (&"http".into(), &"bearer".into())
    );

    // The error schema has the documented shape.
    let err = doc
        .pointer("/components/schemas/Error")
        .expect("Error schema");
    assert_eq!(err["required"], serde_json::json!(["error"]));
    let inner = &err["properties"]["error"];
    assert_eq!(inner["required"], serde_json::json!(["code", "message"]));
    for f in ["code", "message", "field"] {
        assert_eq!(inner["properties"][f]["type"], "string", "error.{f}");
    }

    for (method, path) in ENDPOINTS {
        let name = format!("{} {path}", method.to_uppercase());
        let op = &paths[*path][*method];
        let public = PUBLIC.contains(&(*method, *path));
        // `/v1/ops/status` is the operators': the same key as the app server's routes.
        let server = path.starts_with("/v1/server/") || *path == "/v1/ops/status";
        match op.get("security") {
            // The server routes take the server key, and only it.
            Some(s) if server => assert_eq!(
                s,
                &serde_json::json!([{"serverKey": []}]),
                "{name}: the server routes take the server key"
            ),
            Some(s) => assert!(
                public && s.as_array().is_some_and(Vec::is_empty),
                "{name}: security override {s} (only public endpoints may lift auth)"
            ),
            None => assert!(!public && !server, "{name} inherits bearer auth"),
        }

        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: responses"));
        // The WebSocket succeeds by switching protocols.
        assert!(
            responses.keys().any(|k| k.starts_with('2') || k == "101"),
            "{name}: no success response"
        );
        if !public {
            assert!(
                responses.contains_key("401"),
                "{name}: 401 is not documented"
            );
        }
        for (status, resp) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let resp = resolve(&doc, resp);
            let schema = resp
                .pointer("/content/application~1json/schema")
                .unwrap_or_else(|| panic!("{name} {status}: no application/json schema"));
            assert_eq!(
                schema.get("$ref").and_then(Value::as_str),
                Some(ERROR_SCHEMA),
                "{name} {status}: does not use the error schema"
            );
        }
    }
}

#[tokio::test]
async fn openapi_documents_limits_and_consistency_headers() {
    let doc = fetch().await;
    let op = |method: &str, path: &str| doc["paths"][path][method].clone();
    let params = |method: &str, path: &str| -> Vec<Value> {
        let mut all: Vec<Value> = doc["paths"][path]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        all.extend(
            op(method, path)["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        all.iter().map(|p| resolve(&doc, p).clone()).collect()
    };
    let param = |method: &str, path: &str, name: &str| -> Value {
        params(method, path)
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path}: parameter {name} is missing"))
    };

    for path in ["/v1/conversations", "/v1/channels/{channel_id}/messages"] {
        let limit = param("get", path, "limit");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1, "{path}");
        assert_eq!(limit["schema"]["maximum"], 100, "{path}");
    }
    for path in ["/v1/conversations", "/v1/contacts"] {
        let h = param("get", path, "X-Hermet-Min-Lsn");
        assert_eq!(h["in"], "header", "{path}");
        let ok = resolve(&doc, &op("get", path)["responses"]["200"]).clone();
        assert!(
            ok["headers"].get("X-Hermet-Stale").is_some(),
            "{path}: X-Hermet-Stale"
        );
    }
    for (path, name) in [
        ("/v1/friends/{friend_id}", "friend_id"),
        ("/v1/groups/{channel_id}/members/{user_id}", "user_id"),
        ("/v1/conversations/{channel_id}", "channel_id"),
    ] {
        let method = if path.starts_with("/v1/conversations") {
            "patch"
        } else {
            "delete"
        };
        let p = param(method, path, name);
        assert_eq!(p["in"], "path");
        assert_eq!(p["required"], true);
        assert_eq!(p["schema"]["type"], "integer");
    }

    // Writes carry X-Hermet-Lsn on success (minting a token writes nothing).
    for (method, path) in ENDPOINTS {
        if *method == "get" || (*method, *path) == ("post", "/v1/server/users/{user_id}/tokens") {
            continue;
        }
        let responses = op(method, path)["responses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (status, ok) = responses
            .iter()
            .find(|(k, _)| k.starts_with('2'))
            .expect("success");
        let ok = resolve(&doc, ok);
        assert!(
            ok["headers"].get("X-Hermet-Lsn").is_some(),
            "{} {path} {status}: X-Hermet-Lsn is not documented",
            method.to_uppercase()
        );
    }

    // Request bodies: required fields and length limits of hermet_core::validate::Limits.
    let body = |method: &str, path: &str| -> Value {
        let rb = resolve(&doc, &op(method, path)["requestBody"]).clone();
        resolve(&doc, &rb["content"]["application/json"]["schema"]).clone()
    };
    let users = body("post", "/v1/users");
    assert_eq!(users["required"], serde_json::json!(["nickname"]));
    assert_eq!(users["properties"]["nickname"]["maxLength"], 64);
    assert_eq!(users["properties"]["avatar"]["maxLength"], 512);
    let friend = body("patch", "/v1/friends/{friend_id}");
    assert_eq!(friend["properties"]["remark_name"]["maxLength"], 64);
    let send = body("post", "/v1/channels/{channel_id}/messages");
    assert_eq!(send["required"], serde_json::json!(["content"]));
    assert_eq!(send["properties"]["content"]["maxLength"], 4000);
    assert_eq!(send["properties"]["type"]["pattern"], "^[a-z0-9_]{1,32}$");
    let group = body("post", "/v1/groups");
    assert_eq!(
        group["properties"]["member_ids"]["maxItems"],
        hermet_core::validate::MAX_IDS_PER_CALL
    );
    let add = body("post", "/v1/groups/{channel_id}/members");
    assert_eq!(
        add["properties"]["user_ids"]["maxItems"],
        hermet_core::validate::MAX_IDS_PER_CALL
    );
    assert_eq!(add["properties"]["user_ids"]["uniqueItems"], true);
    assert_eq!(
        body("post", "/v1/channels/{channel_id}/read")["required"],
        serde_json::json!(["seq"])
    );
}
