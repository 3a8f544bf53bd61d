//! 1,000 requests in flight from one client, each answered and matched to its own
//! correlation id.

use beds::spew::{self, UserCreate};
use futures_util::future::join_all;

use crate::support::TestEnv;

#[tokio::test]
async fn a_thousand_requests_in_flight() {
    let mut env = TestEnv::new("concurrency");
    env.config.client.timeout = beds_runtime::config::Millis(60_000);
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();

    let handles: Vec<String> = (0..1000).map(|i| format!("user_{i:04}")).collect();
    let inputs: Vec<UserCreate> = handles
        .iter()
        .map(|h| UserCreate {
            handle: h.clone(),
            display_name: format!("name of {h}"),
            bio: None,
        })
        .collect();
    let replies = join_all(inputs.iter().map(|input| users.create(input))).await;
    for (sent, reply) in handles.iter().zip(&replies) {
        let user = reply
            .as_ref()
            .unwrap_or_else(|e| panic!("request for {sent} failed: {e}"));
        assert_eq!(&user.handle, sent, "each reply belongs to its own request");
        assert_eq!(user.display_name, format!("name of {sent}"));
    }
    let db = env.db().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 1000);

    // And 1,000 reads at once, against the rows just written.
    let fetched = join_all(replies.iter().map(|r| users.fetch(r.as_ref().unwrap().id))).await;
    for (reply, got) in replies.iter().zip(fetched) {
        assert_eq!(&got.unwrap(), reply.as_ref().unwrap());
    }
    client.close().await.unwrap();
    server.stop().await;
}
