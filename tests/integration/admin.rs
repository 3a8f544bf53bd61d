//! The admin role's `adm` route: who may send commands, what an unknown op says, and
//! what happens to a message that cannot be answered.

use beds_runtime::{Client, ClientOptions, ErrorCode};
use lapin::BasicProperties;
use serde_json::{Map, json};

use crate::support::TestEnv;
use crate::vhost::Vhost;

#[tokio::test]
async fn an_admin_node_answers_admin_services_only() {
    let mut broker = Vhost::new("adm");
    let outsider = broker.open_user("outsider");
    let mut env = TestEnv::new("adm");
    env.config.amqp.url = broker.url("guest", "guest");
    let admin = env.start_admin().await;
    assert!(admin.admin_store().is_some());
    let client = env.client().await;

    // guest holds `admin` in the test overlay.
    let pong = client.admin("ping", Map::new()).await.expect("ping");
    assert_eq!(pong["role"], "admin");
    assert_eq!(pong["node"], json!(format!("{}-admin", env.config.node)));

    let e = client.admin("pnig", Map::new()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownOperation), "{e}");
    assert!(e.to_string().contains("did you mean `ping`"), "{e}");
    assert!(e.to_string().contains("the admin answers ping"), "{e}");

    // Another broker user without the role is refused, saying how to grant it.
    let other = Client::connect(
        ClientOptions::from_config(&env.config, "outsider")
            .with_url(&broker.url(&outsider, "secret")),
    )
    .await
    .expect("the outsider connects");
    let reply = other
        .admin_exchange("ping", Map::new())
        .await
        .expect("a reply");
    let e = reply.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    assert!(
        e.message.contains(&outsider) && e.message.contains("security.service_roles"),
        "{}",
        e.message
    );

    // Without a user_id the caller is unknown.
    let raw = env.raw().await;
    let reply = raw
        .request_with(
            &env.queue("adm"),
            br#"{"v":1,"op":"ping"}"#,
            BasicProperties::default(),
        )
        .await;
    assert_eq!(reply["error"]["code"], "unauthenticated", "{reply}");
    // A body that is no adm request is answered as such.
    let reply = raw.request(&env.queue("adm"), br#"{"v":1}"#).await;
    assert_eq!(reply["error"]["code"], "invalid_envelope", "{reply}");
    let reply = raw
        .request(&env.queue("adm"), br#"{"v":2,"op":"ping"}"#)
        .await;
    assert_eq!(reply["error"]["code"], "unsupported_version", "{reply}");

    // No reply_to: dead-lettered on the adm queue's DLQ, not dropped.
    raw.publish(
        &env.queue("adm"),
        br#"{"v":1,"op":"ping"}"#,
        BasicProperties::default().with_user_id(raw.login.as_str().into()),
    )
    .await;
    let dlq = format!("{}.dlq", env.queue("adm"));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while env.depth(&dlq).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter on {dlq}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin.stop().await;
}

#[tokio::test]
async fn without_an_admin_node_the_client_says_to_start_one() {
    let env = TestEnv::new("adm_none");
    // The exchange exists (as any node declares it), so only the missing queue is tested.
    let raw = env.raw().await;
    beds_runtime::topology::declare(&raw.channel, &env.config.amqp, &[])
        .await
        .expect("the exchanges");
    let client = env.client().await;
    let e = client.admin("ping", Map::new()).await.unwrap_err();
    assert!(e.to_string().contains("start an admin node"), "{e}");
}
