//! The web client (`/`) and the operations page (`/ops`) in a real browser, in each sync mode.
//!
//! `hermet serve` runs as child processes (the API, the relay in `cdc`, and the projectors as a
//! process of their own so the operations page can watch a lag rise while they are stopped).
//! Debian's chromium, headless, is driven over WebDriver (`hermet_testkit::browser`). Two people
//! in two browser sessions befriend, chat, see unread badges rise and clear, see a rename reach
//! the other's list and contacts, make a group of three that one leaves, and pin, mute and hide a
//! conversation; every step is checked in the page and against the API. Bad input typed into
//! the forms must show a message, and a revoked or expired token must return the person to
//! sign-in.
//!
//! With `HERMET_SCREENSHOTS=<folder>` the `cdc` run also writes the README's screenshots there
//! (`make screenshots`); without it the run writes nothing into the tree.
//!
//! Needs the services (`eval "$(scripts/services.sh env)"`) and chromium + chromedriver
//! (`scripts/install-deps.sh`). Runs alone (`SERIAL`): it holds two browsers.

mod common;
use common::*;

use hermet_testkit::browser::{Driver, Page, PAGE_WAIT};
use hermet_testkit::{ApiClient, User};
use serde_json::{json, Value};

/// The processes of one mode and what the checks need to reach the API.
struct Site {
    p: Pipeline,
    mode: &'static str,
    api: ApiClient,
    /// A server API key (`hermet admin apikey create`): the operations page and token revocation.
    key: String,
    /// Index in `p.procs` of the projector process (none in `dual_write`).
    projector: Option<usize>,
}

impl Site {
    async fn start(db: &TestDb, mode: &'static str) -> Site {
        let mut p = Pipeline::new(db, "web", 50);
        let addr = free_addr();
        let base = format!("http://{addr}");
        let env = vec![
            ("HERMET_SYNC_MODE".to_owned(), mode.to_owned()),
            ("HERMET_HTTP_ADDR".to_owned(), addr.clone()),
        ];
        let projector_env = vec![("HERMET_SYNC_MODE".to_owned(), mode.to_owned())];
        let (api, projector) = match mode {
            "cdc" => {
                let api = p.start(
                    "api+relay",
                    &["serve", "--role", "api", "--role", "cdc"],
                    &env,
                );
                p.wait_relay(api).await;
                let pr = p.start(
                    "projector",
                    &["serve", "--role", "projector"],
                    &projector_env,
                );
                (api, Some(pr))
            }
            "async" => {
                let api = p.start("api", &["serve", "--role", "api"], &env);
                let pr = p.start(
                    "projector",
                    &["serve", "--role", "projector"],
                    &projector_env,
                );
                (api, Some(pr))
            }
            _ => (p.start("all", &["serve"], &env), None),
        };
        wait_ready(&mut p.procs[api], &reqwest::Client::new(), &base).await;
        let mut key_env = p.env();
        key_env.push(("HERMET_SYNC_MODE".to_owned(), mode.to_owned()));
        let out = hermet(
            &["admin", "apikey", "create", "--name", "web test", "--json"],
            key_env,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "apikey create: {stdout}{stderr}");
        let created: Value = serde_json::from_str(stdout.trim()).expect("apikey JSON");
        let key = created["key"].as_str().expect("key").to_owned();
        Site {
            p,
            mode,
            api: ApiClient::new(base),
            key,
            projector,
        }
    }

    /// Waits until the API satisfies `check` (the read side catches up in the eventually
    /// consistent modes).
    async fn api_until(&self, what: &str, check: impl AsyncFn(&ApiClient) -> bool) {
        eventually(format!("the API shows {what}"), WAIT, async || {
            check(&self.api).await
        })
        .await
    }
}

/// A person in a browser, signed up through the page.
struct Person {
    page: Page,
    id: i64,
}

impl Person {
    /// The person as the API knows them: the id and the token the page stored.
    async fn user(&self) -> User {
        let token = self
            .page
            .js("return localStorage.getItem('hermet.token');", vec![])
            .await
            .as_str()
            .expect("a stored token")
            .to_owned();
        User { id: self.id, token }
    }

    fn conv(channel: i64) -> String {
        format!("#conversations li.conversation[data-channel-id=\"{channel}\"]")
    }

    fn contact(user: i64) -> String {
        format!("#contacts li.contact[data-contact-id=\"{user}\"]")
    }

    /// Opens conversation `channel` from the list.
    async fn open(&self, channel: i64) {
        let item = Self::conv(channel);
        let open = format!("{item} .conv-open");
        if self.page.find(&open).await.is_some() {
            self.page.click(&open).await;
        } else {
            self.page.click(&item).await;
        }
        self.page
            .wait_attr("#conversation", "data-channel-id", &channel.to_string())
            .await;
    }

    /// Sends `content` from the open conversation and waits until it is shown there.
    async fn send(&self, content: &str) {
        self.page.fill("#send-input", content).await;
        self.page.click("#send-submit").await;
        self.wait_message(content).await;
    }

    async fn wait_message(&self, content: &str) {
        let content = content.to_owned();
        eventually(
            format!("message {content:?} is shown"),
            PAGE_WAIT,
            async || self.messages().await.contains(&content),
        )
        .await;
    }

    /// The contents of the open conversation's messages, top to bottom.
    async fn messages(&self) -> Vec<String> {
        let v = self
            .page
            .js(
                "return [...document.querySelectorAll('#messages li.message .msg-content')]
                        .map(e => e.textContent);",
                vec![],
            )
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Submits form field `input` with `value` via `submit` and waits for a message in `error`.
    async fn refused(&self, fields: &[(&str, &str)], submit: &str, error: &str) -> String {
        for (f, v) in fields {
            self.page.fill(f, v).await;
        }
        // An earlier refusal's message must not pass for this one's.
        self.page
            .js(
                "const e = document.querySelector(arguments[0]); if (e) e.textContent = '';",
                vec![json!(error)],
            )
            .await;
        self.page.click(submit).await;
        let msg = self
            .page
            .wait_text(error, "shows why the input was refused", |t| !t.is_empty())
            .await;
        let mut shown = false;
        for view in ["#app", "#signin", "#ops-key-form", "#ops-status"] {
            shown |= self.page.shown(view).await;
        }
        assert!(shown, "a blank screen after refused input");
        msg
    }
}

/// Signs up `nickname` in a new browser session, after trying bad input in the sign-in forms.
async fn sign_up(driver: &Driver, site: &Site, nickname: &str) -> Person {
    let page = driver.page(1280, 900).await;
    page.goto(&format!("{}/", site.api.base)).await;
    page.wait_shown("#signin").await;
    let p = Person { page, id: 0 };
    // Blank, and longer than 64 characters: the client's check or the server's 400, shown.
    p.refused(
        &[("#signup-nickname", "   ")],
        "#signup-submit",
        "#signin-error",
    )
    .await;
    p.refused(
        &[("#signup-nickname", &"n".repeat(65))],
        "#signup-submit",
        "#signin-error",
    )
    .await;
    p.refused(
        &[("#token-input", "not-a-token")],
        "#token-submit",
        "#signin-error",
    )
    .await;
    assert!(p.page.shown("#signin").await);
    p.page.fill("#signup-nickname", nickname).await;
    p.page.click("#signup-submit").await;
    p.page.wait_shown("#app").await;
    p.page.wait_gone("#signin").await;
    let id: i64 = p
        .page
        .wait_text("#me-id", "the new user's id", |t| t.parse::<i64>().is_ok())
        .await
        .parse()
        .expect("id");
    p.page
        .wait_text("#me-nickname", "the nickname", |t| t == nickname)
        .await;
    p.page.wait_attr("#ws-status", "data-state", "open").await;
    Person { id, ..p }
}

async fn screenshot(page: &Page, name: &str) {
    let Ok(dir) = std::env::var("HERMET_SCREENSHOTS") else {
        return;
    };
    let png = page.screenshot().await;
    let path = std::path::Path::new(&dir).join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

async fn web_client(mode: &'static str) {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut site = Site::start(&db, mode).await;
    let driver = Driver::start().await;

    let ann = sign_up(&driver, &site, "Ann").await;
    let bob = sign_up(&driver, &site, "Bob").await;
    let (ua, ub) = (ann.user().await, bob.user().await);

    // Befriending: bad ids first, then Bob; both contact lists show the other.
    ann.refused(&[("#friend-id", "abc")], "#friend-submit", "#friend-error")
        .await;
    ann.refused(
        &[("#friend-id", "999999999")],
        "#friend-submit",
        "#friend-error",
    )
    .await;
    ann.page.fill("#friend-id", &bob.id.to_string()).await;
    ann.page.click("#friend-submit").await;
    ann.page.wait_shown(&Person::contact(bob.id)).await;
    bob.page.wait_shown(&Person::contact(ann.id)).await;
    let again = ann
        .refused(
            &[("#friend-id", &bob.id.to_string())],
            "#friend-submit",
            "#friend-error",
        )
        .await;
    assert!(
        again.contains("already friends"),
        "a second friend request shows the server's 409 message: {again:?}"
    );
    site.api_until("Ann in Bob's contacts", async |api| {
        api.contacts(&ub)
            .await
            .iter()
            .any(|c| c["contact_id"] == ann.id)
    })
    .await;

    // Chat: Ann opens the chat from her contacts and sends three; Bob's badge reads 3.
    ann.page
        .click(&format!("{} .contact-chat", Person::contact(bob.id)))
        .await;
    let chat: i64 = eventually("the chat opens", PAGE_WAIT, async || {
        ann.page
            .attr("#conversation", "data-channel-id")
            .await
            .and_then(|v| v.parse::<i64>().ok())
    })
    .await;
    // Longer than the 4,000 characters a message may have (set, not typed: typing is slow).
    ann.page.set_value("#send-input", &"x".repeat(4_001)).await;
    ann.page.click("#send-submit").await;
    ann.page
        .wait_text("#send-error", "why the message was refused", |t| {
            !t.is_empty()
        })
        .await;
    for i in 1..=3 {
        ann.send(&format!("hello {i}")).await;
    }
    bob.page
        .wait_attr(&Person::conv(chat), "data-unread", "3")
        .await;
    let badge = format!("{} .conv-unread", Person::conv(chat));
    assert!(bob.page.shown(&badge).await, "Bob's unread badge is shown");
    bob.page
        .wait_text(
            &format!("{} .conv-preview", Person::conv(chat)),
            "the last message's preview (the tests' preview is short)",
            |t| {
                let t = t.trim_end_matches('…');
                !t.is_empty() && "hello 3".starts_with(t)
            },
        )
        .await;
    site.api_until("Bob's unread count 3", async |api| {
        api.conversation(&ub, chat)
            .await
            .is_some_and(|c| c["unread_count"] == 3)
    })
    .await;

    // Bob opens it: the messages show and his badge clears, in the page and the API.
    bob.open(chat).await;
    bob.wait_message("hello 3").await;
    assert_eq!(bob.messages().await, ["hello 1", "hello 2", "hello 3"]);
    bob.page
        .wait_attr(&Person::conv(chat), "data-unread", "0")
        .await;
    assert!(!bob.page.shown(&badge).await, "a cleared badge is hidden");
    site.api_until("Bob's unread count 0", async |api| {
        api.conversation(&ub, chat)
            .await
            .is_some_and(|c| c["unread_count"] == 0)
    })
    .await;

    // Bob answers; Ann, who has the chat open, sees it arrive and stays at 0 unread.
    bob.send("hi ann").await;
    ann.wait_message("hi ann").await;
    site.api_until("Ann read Bob's answer", async |api| {
        api.conversation(&ua, chat)
            .await
            .is_some_and(|c| c["unread_count"] == 0 && c["last_message"]["sender_id"] == bob.id)
    })
    .await;

    // History: 55 more from Bob; Ann reopens the page and pages back to the first message.
    for i in 0..55 {
        site.api.send(&ub, chat, &format!("bulk {i}")).await;
    }
    ann.page.goto(&format!("{}/", site.api.base)).await;
    ann.page.wait_shown(&Person::conv(chat)).await;
    ann.open(chat).await;
    ann.wait_message("bulk 54").await;
    assert!(
        !ann.messages().await.contains(&"hello 1".to_owned()),
        "the first page is the newest 50"
    );
    ann.page.click("#load-older").await;
    ann.wait_message("hello 1").await;
    let all = ann.messages().await;
    assert_eq!(all.len(), 59, "every message once, in order: {all:?}");
    assert_eq!(all[0], "hello 1");
    assert_eq!(all[58], "bulk 54");

    // A rename reaches the other's contacts and conversation list.
    bob.refused(
        &[("#profile-nickname", &"r".repeat(65))],
        "#profile-submit",
        "#profile-error",
    )
    .await;
    bob.page.fill("#profile-nickname", "Robert").await;
    bob.page
        .fill("#profile-avatar", "https://example.com/robert.png")
        .await;
    bob.page.click("#profile-submit").await;
    bob.page
        .wait_text("#me-nickname", "the new nickname", |t| t == "Robert")
        .await;
    let bob_contact = Person::contact(bob.id);
    ann.page
        .wait_text(
            &format!("{bob_contact} .contact-nickname"),
            "Bob's new nickname",
            |t| t == "Robert",
        )
        .await;
    ann.page
        .wait_text(
            &format!("{} .conv-name", Person::conv(chat)),
            "the chat's new name",
            |t| t == "Robert",
        )
        .await;
    site.api_until("Robert in Ann's contacts", async |api| {
        api.contacts(&ua).await.iter().any(|c| {
            c["contact_id"] == bob.id
                && c["nickname"] == "Robert"
                && c["avatar"] == "https://example.com/robert.png"
        })
    })
    .await;

    // A remark and a star on the contact (a remark too long first).
    ann.refused(
        &[(
            &format!("{bob_contact} .contact-remark-input"),
            &"m".repeat(200),
        )],
        &format!("{bob_contact} .contact-remark-save"),
        "#contacts-error",
    )
    .await;
    ann.page
        .fill(&format!("{bob_contact} .contact-remark-input"), "Bobby")
        .await;
    ann.page
        .click(&format!("{bob_contact} .contact-remark-save"))
        .await;
    ann.page
        .wait_text(
            &format!("{bob_contact} .contact-remark"),
            "the remark",
            |t| t.contains("Bobby"),
        )
        .await;
    ann.page
        .click(&format!("{bob_contact} .contact-star"))
        .await;
    ann.page
        .wait_attr(&bob_contact, "data-starred", "true")
        .await;
    site.api_until("the remark and star", async |api| {
        api.contacts(&ua).await.iter().any(|c| {
            c["contact_id"] == bob.id && c["remark_name"] == "Bobby" && c["starred"] == true
        })
    })
    .await;

    // A group of three (Cy is made through the API), renamed, that Bob leaves.
    let uc = site.api.new_user("Cy").await;
    let cy_id = uc.id;
    ann.refused(
        &[("#group-name", ""), ("#group-members", &bob.id.to_string())],
        "#group-submit",
        "#group-create-error",
    )
    .await;
    ann.page.fill("#group-name", "Trio").await;
    ann.page
        .fill("#group-members", &format!("{}, {cy_id}", bob.id))
        .await;
    ann.page.click("#group-submit").await;
    let group: i64 = eventually("the group is listed", PAGE_WAIT, async || {
        ann.page
            .js(
                "const e = [...document.querySelectorAll('#conversations li.conversation')]
                    .find(e => e.dataset.type === 'group'
                            && e.querySelector('.conv-name').textContent.trim() === 'Trio');
                 return e ? Number(e.dataset.channelId) : null;",
                vec![],
            )
            .await
            .as_i64()
    })
    .await;
    bob.page.wait_shown(&Person::conv(group)).await;
    ann.open(group).await;
    ann.send("welcome").await;
    bob.page
        .wait_attr(&Person::conv(group), "data-unread", "1")
        .await;
    site.api_until("Cy's unread 1", async |api| {
        api.conversation(&uc, group)
            .await
            .is_some_and(|c| c["unread_count"] == 1)
    })
    .await;
    ann.refused(
        &[("#group-remove-id", "abc")],
        "#group-remove-submit",
        "#group-error",
    )
    .await;
    ann.refused(
        &[("#group-add-ids", "12x")],
        "#group-add-submit",
        "#group-error",
    )
    .await;
    ann.refused(
        &[("#group-rename-input", "  ")],
        "#group-rename-submit",
        "#group-error",
    )
    .await;
    ann.page.fill("#group-rename-input", "Trio 2").await;
    ann.page.click("#group-rename-submit").await;
    bob.page
        .wait_text(
            &format!("{} .conv-name", Person::conv(group)),
            "the new group name",
            |t| t == "Trio 2",
        )
        .await;
    site.api_until("the group's new name for Cy", async |api| {
        api.conversation(&uc, group)
            .await
            .is_some_and(|c| c["name"] == "Trio 2")
    })
    .await;
    bob.open(group).await;
    bob.page.click("#group-leave").await;
    bob.page.wait_gone(&Person::conv(group)).await;
    site.api_until("Bob out of the group", async |api| {
        api.conversation(&ub, group).await.is_none()
    })
    .await;
    ann.send("after bob left").await;
    site.api_until("Cy's unread 2", async |api| {
        api.conversation(&uc, group)
            .await
            .is_some_and(|c| c["unread_count"] == 2)
    })
    .await;
    // The owner removes Cy and adds Cy back, from the group's panel.
    ann.page.fill("#group-remove-id", &cy_id.to_string()).await;
    ann.page.click("#group-remove-submit").await;
    site.api_until("Cy removed", async |api| {
        api.conversation(&uc, group).await.is_none()
    })
    .await;
    ann.page.fill("#group-add-ids", &cy_id.to_string()).await;
    ann.page.click("#group-add-submit").await;
    site.api_until("Cy added back", async |api| {
        api.conversation(&uc, group).await.is_some()
    })
    .await;
    // Bob's page may not have re-read its list since: reload it (a fresh read), then check
    // the page and the API.
    bob.page.goto(&format!("{}/", site.api.base)).await;
    bob.page.wait_shown(&Person::conv(chat)).await;
    assert!(
        !bob.page.shown(&Person::conv(group)).await,
        "a message after leaving does not bring the group back"
    );
    assert!(
        site.api.conversation(&ub, group).await.is_none(),
        "nor does the API list it for Bob"
    );
    screenshot(&ann.page, "client.png").await;

    // Pin, mute, hide Ann's chat with Bob.
    ann.open(chat).await;
    ann.page.click("#conv-pin").await;
    ann.page
        .wait_attr("#conv-pin", "aria-pressed", "true")
        .await;
    ann.page
        .wait_attr(&Person::conv(chat), "data-pinned", "true")
        .await;
    let first = ann
        .page
        .attr("#conversations li.conversation", "data-channel-id")
        .await;
    assert_eq!(
        first,
        Some(chat.to_string()),
        "a pinned conversation comes first"
    );
    ann.page.click("#conv-mute").await;
    ann.page
        .wait_attr(&Person::conv(chat), "data-muted", "true")
        .await;
    site.api_until("pinned and muted", async |api| {
        api.conversation(&ua, chat)
            .await
            .is_some_and(|c| c["pinned"] == true && c["muted"] == true)
    })
    .await;
    ann.page.set_size(390, 844).await;
    let overflow = ann
        .page
        .js(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;",
            vec![],
        )
        .await;
    assert_eq!(
        overflow,
        json!(false),
        "no sideways scrolling at phone width"
    );
    screenshot(&ann.page, "client-phone.png").await;
    ann.page.set_size(1280, 900).await;
    ann.page.click("#conv-hide").await;
    ann.page.wait_gone(&Person::conv(chat)).await;
    site.api_until("the chat hidden", async |api| {
        api.conversation(&ua, chat).await.is_none()
    })
    .await;

    // Unfriending: gone from both contact lists, in the pages and the API.
    ann.page
        .click(&format!("{bob_contact} .contact-remove"))
        .await;
    ann.page.wait_gone(&bob_contact).await;
    bob.page.wait_gone(&Person::contact(ann.id)).await;
    site.api_until("Ann and Bob no longer friends", async |api| {
        !api.contacts(&ub)
            .await
            .iter()
            .any(|c| c["contact_id"] == ann.id)
    })
    .await;

    // The operations page: a wrong key is refused; the right one shows the mode, and in the
    // eventually consistent modes a lag that rises while the projectors are stopped.
    ann.page.goto(&format!("{}/ops", site.api.base)).await;
    ann.page.wait_shown("#ops-key-form").await;
    ann.refused(
        &[("#ops-key", "hmk_wrong")],
        "#ops-key-submit",
        "#ops-error",
    )
    .await;
    ann.page.fill("#ops-key", &site.key).await;
    ann.page.click("#ops-key-submit").await;
    ann.page.wait_shown("#ops-status").await;
    ann.page
        .wait_text("#ops-mode", "the sync mode", |t| t.contains(site.mode))
        .await;
    let lag_field = match mode {
        "cdc" => Some("#ops-group-lag"),
        "async" => Some("#ops-outbox"),
        _ => None,
    };
    if let (Some(field), Some(pr)) = (lag_field, site.projector) {
        ann.page.wait_attr(field, "data-value", "0").await;
        site.p.procs[pr].kill();
        for i in 0..5 {
            site.api
                .send(&uc, group, &format!("while stopped {i}"))
                .await;
        }
        let risen = eventually(format!("{field} rises"), PAGE_WAIT, async || {
            ann.page
                .attr(field, "data-value")
                .await
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v > 0)
        })
        .await;
        assert!(risen >= 1);
        screenshot(&ann.page, "ops.png").await;
        let env = vec![("HERMET_SYNC_MODE".to_owned(), mode.to_owned())];
        site.projector = Some(
            site.p
                .start("projector", &["serve", "--role", "projector"], &env),
        );
        ann.page.wait_attr(field, "data-value", "0").await;
    } else {
        ann.page.wait_attr("#ops-outbox", "data-value", "0").await;
        screenshot(&ann.page, "ops.png").await;
    }

    // Revoked: Bob's page returns to sign-in with a message.
    let r = site
        .api
        .call(
            "DELETE",
            &format!("/v1/server/users/{}/tokens", bob.id),
            Some(&site.key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "revoke: {:?}", r.body);
    bob.page.wait_shown("#signin").await;
    bob.page
        .wait_text("#signin-error", "why Bob is signed out", |t| {
            t.contains("session has ended")
        })
        .await;

    // Expired: a one-second token from the app server, stored, then the page reloaded.
    let minted = site
        .api
        .call(
            "POST",
            &format!("/v1/server/users/{}/tokens", ann.id),
            Some(&site.key),
            Some(json!({"ttl_secs": 1})),
        )
        .await;
    assert_eq!(minted.status, 201, "mint: {:?}", minted.body);
    let short = minted.body["token"].as_str().expect("token").to_owned();
    eventually("the short token expires", WAIT, async || {
        site.api
            .call("GET", "/v1/me", Some(&short), None)
            .await
            .status
            == 401
    })
    .await;
    ann.page.goto(&format!("{}/", site.api.base)).await;
    ann.page
        .js(
            "localStorage.setItem('hermet.token', arguments[0]);",
            vec![json!(short)],
        )
        .await;
    ann.page.goto(&format!("{}/", site.api.base)).await;
    ann.page.wait_shown("#signin").await;
    ann.page
        .wait_text("#signin-error", "why Ann is signed out", |t| {
            t.contains("session has ended")
        })
        .await;

    for person in [&ann, &bob] {
        let uncaught: Vec<String> = person
            .page
            .console_errors()
            .await
            .into_iter()
            .filter(|e| {
                e.contains("Uncaught")
                    || e.contains("Content Security Policy")
                    || e.contains("Refused to")
            })
            .collect();
        assert!(
            uncaught.is_empty(),
            "uncaught script errors or policy violations: {uncaught:?}"
        );
    }
    ann.page.close().await;
    bob.page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_cdc() {
    web_client("cdc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_async() {
    web_client("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_dual_write() {
    web_client("dual_write").await;
}
