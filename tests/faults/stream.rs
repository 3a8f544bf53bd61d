//! A stream of spew creates with distinct bodies, resent (same request, same id) after a
//! time-out or a transport error, and the exactly-once check on the rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate, UserId};
use beds_runtime::{Client, ClientError, ClientOptions, Op, Request};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::support::TestEnv;

/// How a write ended, by its body.
#[derive(Debug)]
pub enum Outcome {
    Applied(String),
    Failed(String, String),
}

pub struct Stream {
    done: Arc<AtomicUsize>,
    task: JoinHandle<Vec<Outcome>>,
}

/// One author for every spew of a stream.
pub async fn author(env: &TestEnv) -> UserId {
    let client = Client::connect(ClientOptions::from_config(&env.config, "fault-setup"))
        .await
        .unwrap();
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "streamer".into(),
            display_name: "S".into(),
            bio: None,
        })
        .await
        .unwrap();
    client.close().await.unwrap();
    user.id
}

impl Stream {
    /// `n` writes, 64 in flight.
    pub async fn start(env: &TestEnv, author: UserId, n: usize) -> Stream {
        Stream::spawn(env, author, n, 64).await
    }

    /// `n` writes, all in flight at once.
    pub async fn start_burst(env: &TestEnv, author: UserId, n: usize) -> Stream {
        Stream::spawn(env, author, n, n).await
    }

    async fn spawn(env: &TestEnv, author: UserId, n: usize, in_flight: usize) -> Stream {
        let client = Arc::new(
            Client::connect(ClientOptions::from_config(&env.config, "fault-stream"))
                .await
                .unwrap(),
        );
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        // The whole stream gives up after two minutes, so a stall fails the test in bounded time.
        let give_up = Instant::now() + Duration::from_secs(120);
        let task = tokio::spawn(async move {
            futures_util::stream::iter(0..n)
                .map(|i| {
                    let (client, counter) = (client.clone(), counter.clone());
                    async move {
                        let outcome = write(&client, author, format!("w{i:05}"), give_up).await;
                        counter.fetch_add(1, Ordering::Relaxed);
                        outcome
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await
        });
        Stream { done, task }
    }

    /// Waits (at most a minute) until `enough` holds for the number of finished writes.
    pub async fn wait_for(&self, enough: impl Fn(usize) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !enough(self.done.load(Ordering::Relaxed)) {
            assert!(
                Instant::now() < deadline,
                "the stream stalled at {}",
                self.done.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> Vec<Outcome> {
        self.task.await.expect("the stream task")
    }
}

/// One write, resent unchanged while the outcome is unknown (time-out, broken transport),
/// until `give_up`: the idempotency key (the request id) makes resending safe.
async fn write(client: &Client, author: UserId, body: String, give_up: Instant) -> Outcome {
    let mut req = Request::new("spew", "spew", Op::Create);
    req.data = Some(
        serde_json::from_value(serde_json::json!({ "author": author, "body": body })).unwrap(),
    );
    loop {
        let mut attempt = req.clone();
        attempt.deadline = None;
        match client.request(attempt).await {
            Ok(_) => return Outcome::Applied(body),
            Err(ClientError::Remote(e)) => return Outcome::Failed(body, e.to_string()),
            Err(e) if Instant::now() < give_up => {
                tracing::debug!(error = %e, "resending");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Outcome::Failed(body, e.to_string()),
        }
    }
}

/// Every applied write is stored once, every failed one at most once, nothing else.
pub async fn assert_exactly_once(env: &TestEnv, outcomes: &[Outcome]) {
    let db = env.db().await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT body_spw, COUNT(*) FROM spw_spews GROUP BY body_spw")
            .fetch_all(&db)
            .await
            .unwrap();
    let stored: HashMap<String, i64> = rows.into_iter().collect();
    let mut failed = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Applied(body) => {
                assert_eq!(
                    stored.get(body),
                    Some(&1),
                    "{body} was acknowledged: it is stored exactly once"
                );
            }
            Outcome::Failed(body, why) => {
                assert!(
                    stored.get(body).is_none_or(|n| *n == 1),
                    "{body} failed ({why}) but is stored twice"
                );
                failed.push(why.clone());
            }
        }
    }
    assert!(
        stored.values().all(|n| *n == 1),
        "no write is applied twice"
    );
    assert!(
        failed.is_empty(),
        "every write ends applied once resent: {} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(stored.len(), outcomes.len(), "every write is stored");
}
