//! Every scenario of design §3 (docs/design.md) through the HTTP API against a real PostgreSQL, in `dual_write`
//! mode, with the read side checked against the rebuild oracle after each.

use hermet_core::Lsn;
use hermet_testkit::{Resp, TestApp};
use serde_json::json;

#[tokio::test]
async fn add_friend_creates_both_sides() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;

    let a = app.conversation(&ann, ch).await.expect("ann sees the chat");
    assert_eq!(a["type"], "single");
    assert_eq!(a["name"], "Bob");
    assert_eq!(a["peer_user_id"], bob.id);
    assert_eq!(a["unread_count"], 0);
    assert!(a["last_message"].is_null());
    let b = app.conversation(&bob, ch).await.expect("bob sees the chat");
    assert_eq!(b["name"], "Ann");

    let ac = app.contacts(&ann).await;
    assert_eq!(ac.len(), 1);
    assert_eq!(ac[0]["contact_id"], bob.id);
    assert_eq!(ac[0]["nickname"], "Bob");
    assert_eq!(app.contacts(&bob).await[0]["nickname"], "Ann");

    let again = app
        .post("/v1/friends", &bob, json!({"friend_id": ann.id}))
        .await;
    assert_eq!((again.status, again.code()), (409, "already_friends"));
    app.assert_converged().await;
}

#[tokio::test]
async fn messages_count_as_unread_for_others_only() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;
    for text in ["one", "two", "three"] {
        app.send(&ann, ch, text).await;
    }
    let b = app.conversation(&bob, ch).await.unwrap();
    assert_eq!(b["unread_count"], 3);
    assert_eq!(b["last_message"]["content"], "three");
    assert_eq!(b["last_message"]["seq"], 3);
    assert_eq!(b["last_message"]["sender_id"], ann.id);
    assert_eq!(b["last_message"]["sender_name"], "Ann");
    let a = app.conversation(&ann, ch).await.unwrap();
    assert_eq!(a["unread_count"], 0, "own messages are never unread");

    // Bob replies: his own message clears nothing of Ann's, but his read position moves.
    app.send(&bob, ch, "hi").await;
    assert_eq!(app.conversation(&bob, ch).await.unwrap()["unread_count"], 0);
    assert_eq!(app.conversation(&ann, ch).await.unwrap()["unread_count"], 1);

    // Mark read never goes backwards.
    let r = app
        .post(&format!("/v1/channels/{ch}/read"), &ann, json!({"seq": 2}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.conversation(&ann, ch).await.unwrap()["unread_count"],
        1,
        "ann had read up to 3 by sending; 2 does not move her back"
    );
    let r = app
        .post(&format!("/v1/channels/{ch}/read"), &ann, json!({"seq": 4}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.conversation(&ann, ch).await.unwrap()["unread_count"], 0);
    let r = app
        .post(&format!("/v1/channels/{ch}/read"), &bob, json!({"seq": 0}))
        .await;
    assert_eq!(r.status, 200, "seq 0 is a valid no-op");
    let r = app
        .post(&format!("/v1/channels/{ch}/read"), &bob, json!({"seq": 5}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_input"),
        "beyond the last seq"
    );
    app.assert_converged().await;
}

#[tokio::test]
async fn mark_read_moves_unread_down_monotonically() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;
    for i in 0..5 {
        app.send(&ann, ch, &format!("m{i}")).await;
    }
    let path = format!("/v1/channels/{ch}/read");
    let read = |seq: i64| app.post(&path, &bob, json!({"seq": seq}));
    assert_eq!(read(3).await.status, 200);
    assert_eq!(app.conversation(&bob, ch).await.unwrap()["unread_count"], 2);
    assert_eq!(read(1).await.status, 200);
    assert_eq!(
        app.conversation(&bob, ch).await.unwrap()["unread_count"],
        2,
        "not backwards"
    );
    assert_eq!(read(5).await.status, 200);
    assert_eq!(app.conversation(&bob, ch).await.unwrap()["unread_count"], 0);
    app.assert_converged().await;
}

#[tokio::test]
async fn preview_is_truncated_on_characters_and_history_is_whole() {
    let app = TestApp::spawn_with_preview(5).await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;
    app.send(&ann, ch, "héllo wörld 👍").await;
    let b = app.conversation(&bob, ch).await.unwrap();
    assert_eq!(b["last_message"]["content"], "héllo");
    app.send(&ann, ch, "日本").await;
    assert_eq!(
        app.conversation(&bob, ch).await.unwrap()["last_message"]["content"],
        "日本"
    );
    let h = app.get(&format!("/v1/channels/{ch}/messages"), &bob).await;
    assert_eq!(h.body["messages"][1]["content"], "héllo wörld 👍");
    app.assert_converged().await;
}

#[tokio::test]
async fn remark_name_wins_over_nickname_and_profile_changes_fan_out() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let cat = app.new_user("Cat").await;
    let ab = app.befriend(&ann, &bob).await;
    let cb = app.befriend(&cat, &bob).await;

    let r = app
        .patch(
            &format!("/v1/friends/{}", bob.id),
            &ann,
            json!({"remark_name": "Bobby"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.conversation(&ann, ab).await.unwrap()["name"], "Bobby");

    let r = app
        .patch(
            "/v1/me",
            &bob,
            json!({"nickname": "Robert", "avatar": "https://img.example/r.png"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["nickname"], "Robert");
    assert_eq!(r.body["profile_ver"], 2);

    let a = app.conversation(&ann, ab).await.unwrap();
    assert_eq!(a["name"], "Bobby", "the remark still wins");
    assert_eq!(a["avatar"], "https://img.example/r.png");
    let c = app.conversation(&cat, cb).await.unwrap();
    assert_eq!(c["name"], "Robert", "no remark: the new nickname");
    let contact = &app.contacts(&ann).await[0];
    assert_eq!(contact["nickname"], "Robert");
    assert_eq!(contact["remark_name"], "Bobby");
    assert_eq!(app.contacts(&cat).await[0]["nickname"], "Robert");

    // Clearing the remark shows the nickname again.
    let r = app
        .patch(
            &format!("/v1/friends/{}", bob.id),
            &ann,
            json!({"remark_name": ""}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.conversation(&ann, ab).await.unwrap()["name"], "Robert");
    app.assert_converged().await;
}

#[tokio::test]
async fn hidden_conversation_comes_back_on_a_new_message() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;
    app.send(&bob, ch, "first").await;
    let r = app
        .patch(
            &format!("/v1/conversations/{ch}"),
            &ann,
            json!({"hidden": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(app.conversation(&ann, ch).await.is_none(), "hidden");
    assert!(app.conversation(&bob, ch).await.is_some(), "only for ann");
    app.send(&bob, ch, "second").await;
    let a = app
        .conversation(&ann, ch)
        .await
        .expect("back after a new message");
    assert_eq!(a["last_message"]["content"], "second");
    assert_eq!(a["unread_count"], 2);
    app.assert_converged().await;
}

#[tokio::test]
async fn pinned_first_then_newest_with_cursor_pages() {
    let app = TestApp::spawn().await;
    let me = app.new_user("Me").await;
    let mut channels = Vec::new();
    for i in 0..5 {
        let f = app.new_user(&format!("F{i}")).await;
        let ch = app.befriend(&me, &f).await;
        channels.push((ch, f));
    }
    // Messages in order 0..5: channel 4 is the newest.
    for (ch, f) in &channels {
        app.send(f, *ch, "hello").await;
    }
    let pinned = channels[1].0;
    let r = app
        .patch(
            &format!("/v1/conversations/{pinned}"),
            &me,
            json!({"pinned": true, "muted": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    let all = app.conversations(&me).await;
    let order: Vec<i64> = all
        .iter()
        .map(|c| c["channel_id"].as_i64().unwrap())
        .collect();
    let expected = vec![
        channels[1].0,
        channels[4].0,
        channels[3].0,
        channels[2].0,
        channels[0].0,
    ];
    assert_eq!(order, expected);
    assert_eq!(all[0]["pinned"], true);
    assert_eq!(all[0]["muted"], true);

    // The same order, two at a time.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/conversations?limit=2".to_owned(),
            Some(c) => format!("/v1/conversations?limit=2&cursor={c}"),
        };
        let r = app.get(&path, &me).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for c in r.body["conversations"].as_array().unwrap() {
            paged.push(c["channel_id"].as_i64().unwrap());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, expected);
    app.assert_converged().await;
}

#[tokio::test]
async fn conversations_without_messages_sort_by_when_they_opened() {
    let app = TestApp::spawn().await;
    let me = app.new_user("Me").await;
    let a = app.new_user("A").await;
    let b = app.new_user("B").await;
    let ca = app.befriend(&me, &a).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cb = app.befriend(&me, &b).await;
    let order: Vec<i64> = app
        .conversations(&me)
        .await
        .iter()
        .map(|c| c["channel_id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![cb, ca]);
}

#[tokio::test]
async fn group_lifecycle() {
    let app = TestApp::spawn().await;
    let owner = app.new_user("Owner").await;
    let bob = app.new_user("Bob").await;
    let cat = app.new_user("Cat").await;
    let dan = app.new_user("Dan").await;

    // Members need not be friends of the creator.
    let r = app
        .post(
            "/v1/groups",
            &owner,
            json!({"name": "Team", "member_ids": [bob.id, cat.id, bob.id]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let g = r.body["channel_id"].as_i64().unwrap();
    for u in [&owner, &bob, &cat] {
        let c = app
            .conversation(u, g)
            .await
            .expect("every member sees the group");
        assert_eq!(c["type"], "group");
        assert_eq!(c["name"], "Team");
        assert!(c["peer_user_id"].is_null());
    }
    app.send(&bob, g, "hello team").await;
    app.send(&cat, g, "hi").await;
    assert_eq!(
        app.conversation(&owner, g).await.unwrap()["unread_count"],
        2
    );
    assert_eq!(app.conversation(&bob, g).await.unwrap()["unread_count"], 1);

    // Only the owner renames; the new name fans out to every member.
    let r = app
        .patch(&format!("/v1/groups/{g}"), &bob, json!({"name": "Mine"}))
        .await;
    assert_eq!((r.status, r.code()), (403, "not_owner"));
    let r = app
        .patch(
            &format!("/v1/groups/{g}"),
            &owner,
            json!({"name": "Team 2", "avatar": "https://x.example/g.png"}),
        )
        .await;
    assert_eq!(r.status, 200);
    for u in [&owner, &bob, &cat] {
        let c = app.conversation(u, g).await.unwrap();
        assert_eq!(c["name"], "Team 2");
        assert_eq!(c["avatar"], "https://x.example/g.png");
    }

    // Any member adds; a new member starts with nothing unread but sees the last message.
    let r = app
        .post(
            &format!("/v1/groups/{g}/members"),
            &bob,
            json!({"user_ids": [dan.id]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let d = app.conversation(&dan, g).await.expect("dan joined");
    assert_eq!(d["unread_count"], 0);
    assert_eq!(d["last_message"]["content"], "hi");
    app.send(&cat, g, "welcome").await;
    assert_eq!(app.conversation(&dan, g).await.unwrap()["unread_count"], 1);

    // Only the owner removes others; the removed member's row is closed.
    let r = app
        .delete(&format!("/v1/groups/{g}/members/{}", cat.id), &bob)
        .await;
    assert_eq!((r.status, r.code()), (403, "not_owner"));
    let r = app
        .delete(&format!("/v1/groups/{g}/members/{}", cat.id), &owner)
        .await;
    assert_eq!(r.status, 204);
    assert!(app.conversation(&cat, g).await.is_none(), "closed for cat");
    let r = app
        .post(
            &format!("/v1/channels/{g}/messages"),
            &cat,
            json!({"content": "let me in"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "not_member"));
    let r = app.get(&format!("/v1/channels/{g}/messages"), &cat).await;
    assert_eq!(r.status, 403);

    // Messages after leaving do not reach the former member's row.
    app.send(&bob, g, "after cat left").await;
    app.assert_converged().await;

    // Leaving: the owner leaves, the longest-standing member becomes owner.
    let r = app
        .delete(&format!("/v1/groups/{g}/members/{}", owner.id), &owner)
        .await;
    assert_eq!(r.status, 204);
    assert!(app.conversation(&owner, g).await.is_none());
    let r = app
        .patch(&format!("/v1/groups/{g}"), &bob, json!({"name": "Bob's"}))
        .await;
    assert_eq!(r.status, 200, "bob inherited ownership: {:?}", r.body);
    assert_eq!(app.conversation(&dan, g).await.unwrap()["name"], "Bob's");

    // A removed member can be added back: the row reopens with nothing unread.
    let r = app
        .post(
            &format!("/v1/groups/{g}/members"),
            &dan,
            json!({"user_ids": [cat.id]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let c = app.conversation(&cat, g).await.expect("cat is back");
    assert_eq!(c["unread_count"], 0);
    assert_eq!(c["last_message"]["content"], "after cat left");
    assert_eq!(c["name"], "Bob's");
    app.assert_converged().await;
}

#[tokio::test]
async fn deleting_a_friend_closes_the_chat_and_adding_again_reopens_it() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let ch = app.befriend(&ann, &bob).await;
    app.send(&ann, ch, "before").await;
    app.patch(
        &format!("/v1/friends/{}", bob.id),
        &ann,
        json!({"remark_name": "B", "starred": true}),
    )
    .await;

    let r = app.delete(&format!("/v1/friends/{}", bob.id), &ann).await;
    assert_eq!(r.status, 204);
    assert!(app.contacts(&ann).await.is_empty());
    assert!(app.contacts(&bob).await.is_empty(), "both directions");
    assert!(app.conversation(&ann, ch).await.is_none(), "closed");
    assert!(app.conversation(&bob, ch).await.is_none(), "closed");
    let r = app
        .post(
            &format!("/v1/channels/{ch}/messages"),
            &bob,
            json!({"content": "hey"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "not_friends"));
    let r = app.delete(&format!("/v1/friends/{}", bob.id), &ann).await;
    assert_eq!((r.status, r.code()), (404, "not_friends"));
    // A profile change still reaches the closed rows: they stay equal to a rebuild.
    app.patch("/v1/me", &bob, json!({"nickname": "Bobby"}))
        .await;
    app.assert_converged().await;

    let again = app.befriend(&bob, &ann).await;
    assert_eq!(again, ch, "a pair keeps its channel and history");
    let a = app.conversation(&ann, ch).await.expect("reopened");
    assert_eq!(a["name"], "Bobby", "the old remark does not come back");
    assert_eq!(a["last_message"]["content"], "before");
    assert_eq!(app.contacts(&ann).await[0]["starred"], false);
    let h = app.get(&format!("/v1/channels/{ch}/messages"), &bob).await;
    assert_eq!(h.body["messages"].as_array().unwrap().len(), 1);
    app.assert_converged().await;
}

/// The seqs of a message page, in the order given.
fn message_seqs(r: &Resp) -> Vec<i64> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn message_history_pages_newest_first() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let eve = app.new_user("Eve").await;
    let ch = app.befriend(&ann, &bob).await;
    for i in 1..=5 {
        app.send(&ann, ch, &format!("m{i}")).await;
    }
    let r = app
        .get(&format!("/v1/channels/{ch}/messages?limit=2"), &bob)
        .await;
    let seqs = message_seqs(&r);
    assert_eq!(seqs, vec![5, 4]);
    let m = &r.body["messages"][0];
    assert_eq!(m["content"], "m5");
    assert_eq!(m["type"], "text");
    assert_eq!(m["sender_name"], "Ann");
    let r = app
        .get(
            &format!("/v1/channels/{ch}/messages?before_seq=4&limit=10"),
            &bob,
        )
        .await;
    let seqs = message_seqs(&r);
    assert_eq!(seqs, vec![3, 2, 1]);
    // Catch-up: oldest first after the last seq the client has, paged by the largest seq seen.
    let forward = |after: i64, limit: i64| {
        let (app, bob) = (&app, &bob);
        async move {
            let path = format!("/v1/channels/{ch}/messages?after_seq={after}&limit={limit}");
            let r = app.get(&path, bob).await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["seq"].as_i64().unwrap(), m["content"].clone()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        forward(2, 2).await,
        vec![(3, json!("m3")), (4, json!("m4"))]
    );
    assert_eq!(forward(4, 10).await, vec![(5, json!("m5"))]);
    assert_eq!(forward(5, 10).await, vec![], "caught up");
    let all: Vec<i64> = forward(0, 100).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(all, vec![1, 2, 3, 4, 5], "after_seq=0: from the start");
    // Both bounds: the messages strictly between them, oldest first.
    let r = app
        .get(
            &format!("/v1/channels/{ch}/messages?after_seq=1&before_seq=4"),
            &bob,
        )
        .await;
    let seqs = message_seqs(&r);
    assert_eq!(seqs, vec![2, 3]);
    let r = app
        .get(&format!("/v1/channels/{ch}/messages?after_seq=1"), &eve)
        .await;
    assert_eq!((r.status, r.code()), (403, "not_member"));
    let r = app.get(&format!("/v1/channels/{ch}/messages"), &eve).await;
    assert_eq!((r.status, r.code()), (403, "not_member"));
    let r = app.get("/v1/channels/999999/messages", &eve).await;
    assert_eq!((r.status, r.code()), (404, "channel_not_found"));
    // The sender name is the nickname at send time.
    app.patch("/v1/me", &ann, json!({"nickname": "Anna"})).await;
    let r = app
        .get(&format!("/v1/channels/{ch}/messages?limit=1"), &bob)
        .await;
    assert_eq!(r.body["messages"][0]["sender_name"], "Ann");
}

#[tokio::test]
async fn contacts_are_starred_first_then_by_nickname() {
    let app = TestApp::spawn().await;
    let me = app.new_user("Me").await;
    let mut ids = std::collections::HashMap::new();
    for name in ["Zed", "amy", "Bea", "Cal"] {
        let u = app.new_user(name).await;
        app.befriend(&me, &u).await;
        ids.insert(name, u.id);
    }
    let r = app
        .patch(
            &format!("/v1/friends/{}", ids["Zed"]),
            &me,
            json!({"starred": true, "group_name": "work"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let names: Vec<String> = app
        .contacts(&me)
        .await
        .iter()
        .map(|c| c["nickname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names[0], "Zed");
    let rest = &names[1..];
    let mut sorted = rest.to_vec();
    sorted.sort();
    assert_eq!(rest, sorted.as_slice(), "then by nickname");
    let zed = app
        .contacts(&me)
        .await
        .into_iter()
        .find(|c| c["nickname"] == "Zed")
        .unwrap();
    assert_eq!(zed["group_name"], "work");
    app.assert_converged().await;
}

#[tokio::test]
async fn writes_carry_their_lsn_and_reads_accept_a_minimum() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    let bob = app.new_user("Bob").await;
    let r = app
        .post("/v1/friends", &ann, json!({"friend_id": bob.id}))
        .await;
    let first: Lsn = r
        .header("x-hermet-lsn")
        .expect("lsn header")
        .parse()
        .expect("lsn");
    let ch = r.body["channel_id"].as_i64().unwrap();
    let r = app.send(&ann, ch, "x").await;
    let second: Lsn = r.header("x-hermet-lsn").unwrap().parse().unwrap();
    assert!(second > first, "{second} after {first}");

    let resp = reqwest::Client::new()
        .get(app.url("/v1/conversations"))
        .bearer_auth(&bob.token)
        .header("X-Hermet-Min-Lsn", second.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-hermet-stale").is_none(),
        "dual_write reads are fresh"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["conversations"][0]["last_message"]["content"], "x");

    let resp = reqwest::Client::new()
        .get(app.url("/v1/conversations"))
        .bearer_auth(&bob.token)
        .header("X-Hermet-Min-Lsn", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn me_and_service_endpoints() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("  Ann  ").await;
    let r = app.get("/v1/me", &ann).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"id": ann.id, "nickname": "Ann", "avatar": "", "profile_ver": 1})
    );
    for path in ["/healthz", "/readyz"] {
        let r = app.call("GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
    }
    let r = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap_or("").starts_with("3."));
}

/// A long list is gzipped for a client that accepts it (what a phone on a slow link downloads),
/// the same bytes otherwise; a small answer is never compressed.
#[tokio::test]
async fn long_lists_are_gzipped_when_accepted() {
    let app = TestApp::spawn().await;
    let ann = app.new_user("Ann").await;
    for i in 0..12 {
        let friend = app.new_user(&format!("friend number {i}")).await;
        app.befriend(&ann, &friend).await;
    }
    let http = reqwest::Client::new();
    let get = async |path: &str, encoding: &str| {
        let r = http
            .get(app.url(path))
            .bearer_auth(&ann.token)
            .header("accept-encoding", encoding)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path}");
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        (enc, r.bytes().await.expect("body").len())
    };
    let (plain_enc, plain) = get("/v1/conversations?limit=100", "identity").await;
    let (gz_enc, gz) = get("/v1/conversations?limit=100", "gzip").await;
    assert!(
        plain > 1024,
        "the list is long enough to compress: {plain} bytes"
    );
    assert_eq!(plain_enc, None);
    assert_eq!(gz_enc.as_deref(), Some("gzip"));
    assert!(gz * 2 < plain, "gzip {gz} bytes against {plain}");
    let (me_enc, _) = get("/v1/me", "gzip").await;
    assert_eq!(me_enc, None, "small answers are not compressed");
}
