//! Errors are replies: each bad input gets its stable code and class and is acked;
//! unanswerable messages are dead-lettered with the reason in headers.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use serde_json::{Value as Json, json};

use crate::support::{TestEnv, envelope};

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
    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let dlq = format!("{read}.dlq");

    let no_reply_to = envelope("user", "list", json!({}));
    raw.publish(
        &read,
        &no_reply_to,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let binary = vec![0xff, 0xfe, 0x00, 0x01];
    raw.publish(
        &read,
        &binary,
        BasicProperties::default().with_reply_to(raw.reply_queue.as_str().into()),
    )
    .await;

    let mut dead = Vec::new();
    for _ in 0..100 {
        if let Some(msg) = raw
            .channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let header = |k: &str| match msg
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(k).cloned())
            {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => panic!("dead letter header {k}: {other:?}"),
            };
            let expected = if msg.delivery.data == no_reply_to {
                "no_reply_to"
            } else {
                "undecodable"
            };
            assert_eq!(
                header("x-beds-error-code"),
                expected,
                "the reason travels with the dead letter"
            );
            assert_eq!(header("x-beds-error-class"), "contract");
            assert!(!header("x-beds-reason").is_empty());
            dead.push(msg.delivery.data.clone());
            if dead.len() == 2 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
