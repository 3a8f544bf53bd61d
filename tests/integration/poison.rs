//! Poison messages: a request that panics its handler is dead-lettered at once while the
//! broker keeps serving; one that hangs the node every time is dead-lettered by the quorum
//! queue's delivery limit instead of looping for ever.

use std::time::Duration;

use beds_runtime::Server;
use beds_runtime::support as rt;
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{TestEnv, envelope};
use crate::wire::{self, Peer, next};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ToyId(pub uuid::Uuid);

impl rt::Key for ToyId {}

#[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
#[beds(domain = "toys", template = "toy", create = ToyInput, patch = ToyInput)]
pub struct Toy {
    pub id: ToyId,
    pub version: i64,
    #[beds(string, max = 20)]
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct ToyInput {
    pub name: String,
}

fn explode<'a>(_: &'a rt::Ctx, _: rt::Call<'a>) -> rt::HandlerFuture<'a> {
    Box::pin(async { panic!("poison: this request always crashes its handler") })
}

fn hang<'a>(_: &'a rt::Ctx, _: rt::Call<'a>) -> rt::HandlerFuture<'a> {
    Box::pin(std::future::pending())
}

static ROUTES: rt::Routes = rt::Routes {
    create: explode,
    update: hang,
    ..rt::Routes::of::<Toy>()
};
static DOMAIN: rt::DomainMeta = rt::DomainMeta {
    name: "toys",
    version: 1,
    templates: &[<Toy as rt::Record>::META],
    queries: &[],
};
static CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&DOMAIN],
    route: |domain, template| match (domain, template) {
        ("toys", "toy") => Ok(&ROUTES),
        ("toys", _) => Err(rt::RouteError::UnknownTemplate),
        _ => Err(rt::RouteError::UnknownDomain),
    },
};

fn toy(op: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_slice(&envelope("toy", op, extra)).unwrap();
    body["domain"] = json!("toys");
    serde_json::to_vec(&body).unwrap()
}

async fn dead_letter(
    raw: &crate::support::Raw,
    dlq: &str,
) -> Option<lapin::message::BasicGetMessage> {
    raw.channel
        .basic_get(dlq.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

fn header(msg: &lapin::message::BasicGetMessage, key: &str) -> Option<AMQPValue> {
    msg.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

#[tokio::test]
async fn a_panicking_request_is_dead_lettered_and_others_are_served() {
    let env = TestEnv::new("poison_panic");
    let server = Server::start(&env.config, &CATALOG).await.expect("start");
    let peer = Peer::connect(&env).await;
    let write = env.queue("rec.write");
    let mut dlq = peer.dead_letters(&format!("{write}.dlq")).await;
    let body = toy("create", json!({"data": {"name": "boom"}}));
    peer.send(&write, &body, peer.props("boom")).await;

    let msg = next(&mut dlq, "the poison request's dead letter").await;
    assert_eq!(msg.data, body);
    assert_eq!(
        wire::header(&msg, "x-beds-error-code").as_deref(),
        Some("handler_panicked")
    );
    let reason = wire::header(&msg, "x-beds-reason").unwrap_or_default();
    assert!(reason.contains("poison"), "{reason}");
    // The broker keeps serving after the panic.
    let client = env.client().await;
    assert!(
        client
            .template::<Toy>()
            .list(None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_hangs_every_node_hits_the_delivery_limit() {
    let mut env = TestEnv::new("poison_hang");
    env.config.amqp.queue_type = beds_runtime::config::QueueType::Quorum;
    env.config.amqp.delivery_limit = 1;
    env.config.shutdown.drain_timeout = beds_runtime::config::Millis(200);
    let raw = env.raw().await;
    let write = env.queue("rec.write");
    let body = toy(
        "update",
        json!({"key": {"id": uuid::Uuid::now_v7()}, "data": {"name": "x"}}),
    );
    let mut published = false;
    // Each node takes the message, hangs on it, and is stopped; the queue counts deliveries.
    for cycle in 1..=6 {
        let server = Server::start(&env.config, &CATALOG).await.expect("start");
        if !published {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_user_id(raw.login.as_str().into())
                .with_reply_to(raw.reply_queue.as_str().into());
            raw.publish(&write, &body, props).await;
            published = true;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(msg) = dead_letter(&raw, &format!("{write}.dlq")).await {
            assert_eq!(msg.delivery.data, body);
            let reason = header(&msg, "x-death").and_then(|d| match d {
                AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
                _ => None,
            });
            let reason = reason.and_then(|r| match r {
                AMQPValue::FieldTable(t) => t.inner().get("reason").cloned(),
                _ => None,
            });
            assert_eq!(reason, Some(AMQPValue::LongString("delivery_limit".into())));
            assert!(cycle >= 2, "dead-lettered only after the limit");
            return;
        }
    }
    panic!("the hanging request never reached the dead-letter queue");
}
