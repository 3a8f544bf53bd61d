//! Errors are replies: each bad input gets its stable code and class and is acked;
//! unanswerable messages are dead-lettered with the reason in headers.

use lapin::BasicProperties;
use serde_json::{Value as Json, json};

use crate::support::{TestEnv, envelope};
use crate::wire::{Peer, header, next};

fn error_of(reply: &Json) -> (&str, &str) {
    assert_eq!(reply["status"], "error", "{reply}");
    (
        reply["error"]["code"].as_str().unwrap(),
        reply["error"]["class"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn bad_requests_get_stable_error_codes_and_are_acked() {
    let env = TestEnv::new("errors");
    let server = env.start().await;
    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let write = env.queue("rec.write");
    let missing = uuid::Uuid::now_v7();

    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        (
            "unknown template",
            &read,
            envelope("tweet", "fetch", json!({"key": {"id": missing}})),
            "unknown_template",
            "contract",
        ),
        (
            "unknown domain",
            &read,
            serde_json::to_vec(
                &json!({"v":1,"id":missing,"domain":"nope","template":"user","op":"fetch"}),
            )
            .unwrap(),
            "unknown_domain",
            "contract",
        ),
        (
            "unknown operation",
            &read,
            envelope("user", "explode", json!({})),
            "unknown_operation",
            "contract",
        ),
        (
            "malformed JSON",
            &read,
            b"{\"v\":1, \"id\": ".to_vec(),
            "malformed_json",
            "contract",
        ),
        (
            "unsupported version",
            &read,
            serde_json::to_vec(&json!({"v": 9, "id": missing})).unwrap(),
            "unsupported_version",
            "contract",
        ),
        (
            "invalid envelope",
            &read,
            serde_json::to_vec(&json!({"v": 1, "id": missing, "domain": "spew"})).unwrap(),
            "invalid_envelope",
            "contract",
        ),
        (
            "write on the read queue",
            &read,
            envelope("user", "create", json!({"data": {}})),
            "wrong_queue",
            "contract",
        ),
        (
            "missing field",
            &write,
            envelope("user", "create", json!({"data": {"handle": "ada"}})),
            "invalid_input",
            "validation",
        ),
        (
            "wrong-typed field",
            &write,
            envelope(
                "user",
                "create",
                json!({"data": {"handle": 42, "display_name": "A"}}),
            ),
            "invalid_input",
            "validation",
        ),
        (
            "too-long string",
            &write,
            envelope(
                "user",
                "create",
                json!({"data": {"handle": "a".repeat(16), "display_name": "A"}}),
            ),
            "invalid_input",
            "validation",
        ),
        (
            "missing record",
            &read,
            envelope("user", "fetch", json!({"key": {"id": missing}})),
            "not_found",
            "not_found",
        ),
    ];
    for (what, queue, body, code, class) in &cases {
        let reply = raw.request(queue, body).await;
        assert_eq!(error_of(&reply), (*code, *class), "{what}: {reply}");
    }

    // The details name each field problem, all at once, and are the same every time.
    let body = envelope(
        "user",
        "create",
        json!({"data": {"handle": 42, "color": "red"}}),
    );
    let first = raw.request(&write, &body).await;
    let details: Vec<(String, String)> = first["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_string(),
                d["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        details,
        [
            ("data.color", "unknown"),
            ("data.handle", "wrong_type"),
            ("data.display_name", "missing")
        ]
        .map(|(f, c)| (f.to_string(), c.to_string()))
    );
    let second = raw.request(&write, &body).await;
    assert_eq!(
        first["error"], second["error"],
        "the same bad input yields the same error body"
    );
    let too_long = raw
        .request(
            &write,
            &envelope(
                "user",
                "create",
                json!({"data": {"handle": "a".repeat(16), "display_name": "A"}}),
            ),
        )
        .await;
    assert_eq!(too_long["error"]["details"][0]["code"], "too_long");

    // Every request above was answered and acked: nothing is back in the queues.
    server.stop().await;
    assert_eq!(env.depth(&read).await, 0);
    assert_eq!(env.depth(&write).await, 0);
    assert_eq!(env.depth(&format!("{read}.dlq")).await, 0);
}

#[tokio::test]
async fn unanswerable_messages_go_to_the_dead_letter_queue() {
    let env = TestEnv::new("dead_letter");
    let server = env.start().await;
    let peer = Peer::connect(&env).await;
    let read = env.queue("rec.read");
    let mut dlq = peer.dead_letters(&format!("{read}.dlq")).await;

    let no_reply_to = envelope("user", "list", json!({}));
    peer.send(
        &read,
        &no_reply_to,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let binary = vec![0xff, 0xfe, 0x00, 0x01];
    peer.send(
        &read,
        &binary,
        BasicProperties::default().with_reply_to(peer.reply_queue.as_str().into()),
    )
    .await;

    let mut dead = Vec::new();
    for _ in 0..2 {
        let msg = next(&mut dlq, "a dead letter").await;
        let expected = if msg.data == no_reply_to {
            "no_reply_to"
        } else {
            "undecodable"
        };
        assert_eq!(
            header(&msg, "x-beds-error-code").as_deref(),
            Some(expected),
            "the reason travels with the dead letter"
        );
        assert_eq!(
            header(&msg, "x-beds-error-class").as_deref(),
            Some("contract")
        );
        assert!(!header(&msg, "x-beds-reason").unwrap_or_default().is_empty());
        dead.push(msg.data.clone());
    }
    dead.sort();
    let mut expected = vec![no_reply_to, binary];
    expected.sort();
    assert_eq!(
        dead, expected,
        "both unanswerable messages are in the DLQ, unchanged"
    );

    server.stop().await;
    assert_eq!(env.depth(&read).await, 0);
}

/// A request body from a JSON object (keys in the order written).
fn body(request: Json) -> Vec<u8> {
    serde_json::to_vec(&request).unwrap()
}

/// `(field, code)` of each detail of an error reply.
fn details(reply: &Json) -> Vec<(String, String)> {
    reply["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("details in {reply}"))
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_string(),
                d["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn limit_and_cursor_problems_are_input_errors_answered_in_the_conversation() {
    let env = TestEnv::new("limit_cursor");
    let server = env.start().await;
    let mut peer = Peer::connect(&env).await;
    let read = env.queue("rec.read");
    let (id, conversation) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let list = |extra: Json| {
        let mut req = json!({"v": 1, "id": id, "correlation_id": conversation,
            "domain": "spew", "template": "user", "op": "list"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body(req)
    };
    for (limit, code) in [
        (json!(-1), "below_min"),
        (json!(4_294_967_296_u64), "above_max"),
        (json!(101), "above_max"),
        (json!("5"), "wrong_type"),
    ] {
        let reply = peer.request(&read, &list(json!({ "limit": limit }))).await;
        assert_eq!(error_of(&reply), ("invalid_input", "validation"), "{reply}");
        assert_eq!(details(&reply), [("limit".to_string(), code.to_string())]);
        assert_eq!(reply["correlation_id"], json!(conversation), "{reply}");
        assert_eq!(reply["causation_id"], json!(id), "{reply}");
    }
    let query = body(json!({"v": 1, "id": id, "domain": "spew", "op": "query",
        "query": "user_timeline", "params": {"author": id}, "cursor": "abc"}));
    let reply = peer.request(&read, &query).await;
    assert_eq!(
        details(&reply),
        [("cursor".to_string(), "wrong_type".to_string())]
    );
    assert_eq!(
        reply["correlation_id"],
        json!(id),
        "a root request's conversation is its id"
    );
    // An envelope that is readable but wrong still answers in the conversation.
    let reply = peer.request(&read, &list(json!({ "colour": 1 }))).await;
    assert_eq!(error_of(&reply).0, "invalid_envelope");
    assert_eq!(reply["correlation_id"], json!(conversation), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn fields_an_operation_does_not_take_are_refused_by_name() {
    let env = TestEnv::new("unused_fields");
    let server = env.start().await;
    let mut peer = Peer::connect(&env).await;
    let (read, write) = (env.queue("rec.read"), env.queue("rec.write"));
    let some = uuid::Uuid::now_v7();
    let template = |op: &str, extra: Json| {
        let mut req = json!({"v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew",
            "template": "user", "op": op});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body(req)
    };
    let query = |name: &str, extra: Json| {
        let mut req = json!({"v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew",
            "op": "query", "query": name, "params": {"author": some}});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body(req)
    };
    let create = json!({"data": {"handle": "ada", "display_name": "Ada"}});
    let with = |base: &Json, extra: Json| {
        let mut req = base.clone();
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        req
    };
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            &write,
            template("create", with(&create, json!({"key": {"id": some}}))),
            "key",
            "`create`",
        ),
        (
            &write,
            template("create", with(&create, json!({"expect_version": 1}))),
            "expect_version",
            "`create`",
        ),
        (
            &write,
            template("create", with(&create, json!({"query": "x"}))),
            "query",
            "`create`",
        ),
        (
            &read,
            template("fetch", json!({"key": {"id": some}, "data": {}})),
            "data",
            "`fetch`",
        ),
        (
            &read,
            template("fetch", json!({"key": {"id": some}, "params": {}})),
            "params",
            "`fetch`",
        ),
        (
            &read,
            template("fetch", json!({"key": {"id": some}, "cursor": []})),
            "cursor",
            "`fetch`",
        ),
        (
            &read,
            template("fetch", json!({"key": {"id": some}, "limit": 5})),
            "limit",
            "`fetch`",
        ),
        (
            &read,
            template("list", json!({"cursor": []})),
            "cursor",
            "`list`",
        ),
        (
            &write,
            template("delete", json!({"key": {"id": some}, "data": {}})),
            "data",
            "`delete`",
        ),
        (
            &read,
            query("user_timeline", json!({"template": "spew"})),
            "template",
            "the query `user_timeline`",
        ),
        (
            &read,
            query("user_timeline", json!({"after": some})),
            "after",
            "the query `user_timeline`",
        ),
        (
            &read,
            query("spew_count_by_author", json!({"cursor": []})),
            "cursor",
            "the count query `spew_count_by_author`",
        ),
        (
            &read,
            query("spew_count_by_author", json!({"limit": 5})),
            "limit",
            "the count query `spew_count_by_author`",
        ),
    ];
    for (queue, request, field, what) in &cases {
        let reply = peer.request(queue, request).await;
        assert_eq!(
            error_of(&reply),
            ("invalid_envelope", "contract"),
            "{field} on {what}: {reply}"
        );
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{what} does not take `{field}`")),
            "{message}"
        );
    }
    // Nothing was created on the way.
    assert_eq!(env.rows().await.total("spw_users").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_reply_to_is_dead_lettered_before_anything_runs() {
    let env = TestEnv::new("empty_reply_to");
    let server = env.start().await;
    let peer = Peer::connect(&env).await;
    let (read, write) = (env.queue("rec.read"), env.queue("rec.write"));
    let mut read_dlq = peer.dead_letters(&format!("{read}.dlq")).await;
    let mut write_dlq = peer.dead_letters(&format!("{write}.dlq")).await;
    let empty = |c: &str| peer.props(c).with_reply_to("".into());
    let list = envelope("user", "list", json!({}));
    let create = envelope(
        "user",
        "create",
        json!({"data": {"handle": "ada", "display_name": "Ada"}}),
    );
    peer.send(&read, &list, empty("r")).await;
    peer.send(&write, &create, empty("w")).await;
    for (dlq, sent) in [(&mut read_dlq, &list), (&mut write_dlq, &create)] {
        let dead = next(dlq, "the dead letter").await;
        assert_eq!(&dead.data, sent);
        assert_eq!(
            header(&dead, "x-beds-error-code").as_deref(),
            Some("no_reply_to")
        );
    }
    server.stop().await;
    assert_eq!(
        env.rows().await.total("spw_users").await,
        0,
        "the write was not applied"
    );
}

#[tokio::test]
async fn json_is_read_in_any_case_with_a_utf8_charset_and_nothing_else() {
    let env = TestEnv::new("content_type");
    let server = env.start().await;
    let mut peer = Peer::connect(&env).await;
    let read = env.queue("rec.read");
    let mut dlq = peer.dead_letters(&format!("{read}.dlq")).await;
    let list = envelope("user", "list", json!({}));
    for (i, ct) in [
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        Some("application/json;charset=\"UTF-8\""),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let correlation = format!("ok-{i}");
        let props = BasicProperties::default()
            .with_reply_to(peer.reply_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        let props = match ct {
            Some(ct) => props.with_content_type(ct.into()),
            None => props,
        };
        peer.send(&read, &list, props).await;
        let reply = peer.reply(&correlation).await;
        assert_eq!(reply["status"], "ok", "{ct:?}: {reply}");
    }
    for (ct, why) in [
        (
            "application/json; charset=iso-8859-1",
            "the charset must be utf-8",
        ),
        ("text/plain", "the media type must be application/json"),
    ] {
        peer.send(&read, &list, peer.props("bad").with_content_type(ct.into()))
            .await;
        let dead = next(&mut dlq, "the dead letter").await;
        assert_eq!(
            header(&dead, "x-beds-error-code").as_deref(),
            Some("undecodable")
        );
        let reason = header(&dead, "x-beds-reason").unwrap();
        assert!(reason.contains(ct) && reason.contains(why), "{reason}");
    }
    server.stop().await;
}

#[tokio::test]
async fn repeated_keys_are_refused_at_every_level() {
    let env = TestEnv::new("duplicate_keys");
    let server = env.start().await;
    let mut peer = Peer::connect(&env).await;
    let (read, write) = (env.queue("rec.read"), env.queue("rec.write"));
    let id = uuid::Uuid::now_v7();
    let head = format!(r#""v":1,"id":"{id}","domain":"spew""#);
    let create = format!(
        r#"{{{head},"template":"user","op":"create","data":{{"handle":"ada","display_name":"A","handle":"bob"}}}}"#
    );
    let reply = peer.request(&write, create.as_bytes()).await;
    assert_eq!(error_of(&reply), ("invalid_input", "validation"), "{reply}");
    assert_eq!(
        details(&reply),
        [("data.handle".to_string(), "duplicate".to_string())]
    );
    assert_eq!(reply["causation_id"], json!(id));
    let fetch = format!(
        r#"{{{head},"template":"user","op":"fetch","key":{{"handle":"ada","handle":"bob"}}}}"#
    );
    let reply = peer.request(&read, fetch.as_bytes()).await;
    assert_eq!(
        details(&reply),
        [("key.handle".to_string(), "duplicate".to_string())]
    );
    let query = format!(
        r#"{{{head},"op":"query","query":"spews_by_handle","params":{{"handle":"a","handle":"b"}}}}"#
    );
    let reply = peer.request(&read, query.as_bytes()).await;
    assert_eq!(
        details(&reply),
        [("params.handle".to_string(), "duplicate".to_string())]
    );
    let top = format!(r#"{{{head},"template":"user","op":"list","op":"list"}}"#);
    let reply = peer.request(&read, top.as_bytes()).await;
    assert_eq!(
        error_of(&reply),
        ("invalid_envelope", "contract"),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("field `op` appears more than once")
    );
    server.stop().await;
    assert_eq!(env.rows().await.total("spw_users").await, 0);
}
