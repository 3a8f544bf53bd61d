//! Bounded input and output: requests over `limits.*` are answered `too_large` before they
//! are parsed, and error replies stay small however much unknown input a request holds.

use beds_runtime::{Client, ClientError, ClientOptions};
use serde_json::{Map, Value as Json, json};

use crate::support::{TestEnv, envelope};
use crate::wire::Peer;

fn error_of(reply: &Json) -> (&str, &str) {
    assert_eq!(reply["status"], "error", "{reply}");
    (
        reply["error"]["code"].as_str().unwrap(),
        reply["error"]["message"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn requests_over_a_configured_limit_are_answered_too_large_naming_its_key() {
    let mut env = TestEnv::new("bounds_limits");
    env.config.limits.max_message_bytes = 4096;
    env.config.limits.max_depth = 4;
    env.config.limits.max_fields = 12;
    let server = env.start().await;
    let mut peer = Peer::connect(&env).await;
    let read = env.queue("rec.read");
    let id = uuid::Uuid::now_v7();
    let list = |extra: Json| {
        let mut req = json!({"v": 1, "id": id, "domain": "spew", "template": "user",
            "op": "list"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&req).unwrap()
    };
    // Within every bound: answered as usual.
    let reply = peer.request(&read, &list(json!({"after": [[1]]}))).await;
    assert_eq!(error_of(&reply).0, "invalid_input", "{reply}");

    let many: Map<String, Json> = (0..13).map(|i| (format!("f{i}"), json!(i))).collect();
    for (body, key) in [
        (list(json!({"after": [[[[1]]]]})), "limits.max_depth"),
        (list(json!({"data": many})), "limits.max_fields"),
    ] {
        let reply = peer.request(&read, &body).await;
        let (code, message) = error_of(&reply);
        assert_eq!(code, "too_large", "{reply}");
        assert!(message.contains(key), "{message}");
        assert_eq!(reply["error"]["class"], "contract");
        // Bodies within the size bound still answer in their conversation.
        assert_eq!(reply["causation_id"], json!(id), "{reply}");
    }
    let big = list(json!({"query": "q".repeat(5000)}));
    let reply = peer.request(&read, &big).await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "too_large", "{reply}");
    assert!(
        message.contains(&format!("{} bytes", big.len()))
            && message.contains("limits.max_message_bytes"),
        "{message}"
    );
    // An oversized body is not read, not even for its ids.
    assert_eq!(reply["causation_id"], json!(uuid::Uuid::nil()), "{reply}");
    assert!(
        serde_json::to_vec(&reply).unwrap().len() < 1024,
        "the reply does not grow with the request"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_hundred_thousand_unknown_fields_get_a_reply_of_a_few_kilobytes() {
    let mut env = TestEnv::new("bounds_echo");
    // Raised so the request passes the bounds and reaches validation.
    env.config.limits.max_message_bytes = 16 * 1024 * 1024;
    env.config.limits.max_fields = 200_000;
    let server = env.start().await;
    let raw = env.raw().await;
    let data: Map<String, Json> = (0..100_000)
        .map(|i| (format!("unknown_field_number_{i}"), json!(i)))
        .collect();
    let body = envelope("user", "create", json!({ "data": data }));
    assert!(body.len() > 3_000_000);
    let reply = raw.request(&env.queue("rec.write"), &body).await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "invalid_input", "{message}");
    assert!(
        message.starts_with("1000")
            && message.ends_with("fields are invalid; the first 20 are listed"),
        "{message}"
    );
    assert_eq!(reply["error"]["details"].as_array().unwrap().len(), 20);
    let size = serde_json::to_vec(&reply).unwrap().len();
    assert!(size < 4096, "a {size}-byte reply to unknown fields");
    server.stop().await;
}

#[tokio::test]
async fn a_long_unknown_name_is_not_echoed_whole() {
    let env = TestEnv::new("bounds_names");
    let server = env.start().await;
    let raw = env.raw().await;
    let long = "t".repeat(200 * 1024);
    for (routing_key, body, code) in [
        (
            "rec.read",
            envelope(&long, "list", json!({})),
            "unknown_template",
        ),
        (
            "rec.read",
            envelope("user", &long, json!({})),
            "unknown_operation",
        ),
        (
            "rec.read",
            envelope("", "query", json!({"query": long})),
            "unknown_query",
        ),
        (
            "rec.write",
            envelope("user", "create", json!({"data": {long.clone(): 1}})),
            "invalid_input",
        ),
        (
            "rec.read",
            envelope("user", "fetch", json!({"key": {"id": long}})),
            "invalid_input",
        ),
    ] {
        let reply = raw.request(&env.queue(routing_key), &body).await;
        let (got, message) = error_of(&reply);
        assert_eq!(got, code, "{message}");
        let size = serde_json::to_vec(&reply).unwrap().len();
        assert!(size < 2048, "a {size}-byte {code} reply: {message}");
        assert!(
            message.contains(&format!("{}…", "t".repeat(64))) || code == "invalid_input",
            "{message}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_refuses_a_reply_over_its_limit_unread() {
    let env = TestEnv::new("bounds_client");
    let server = env.start().await;
    let mut options = ClientOptions::from_config(&env.config, "tests");
    options.max_reply_bytes = 64;
    let client = Client::connect(options)
        .await
        .expect("the test needs RabbitMQ");
    let req = beds_runtime::Request::new("spew", "user", beds_runtime::Op::List);
    match client.request(req).await {
        Err(ClientError::ReplyTooLarge { size, limit: 64 }) => assert!(size > 64),
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }
    client.close().await.unwrap();
    server.stop().await;
}
