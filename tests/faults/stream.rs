//! A stream of spew creates with distinct bodies, resent (same request, same id) after a
//! time-out or a transport error, and the exactly-once check on the rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    applied: Arc<AtomicUsize>,
    /// Set to stop issuing new writes (an endless stream's end).
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Outcome>>,
}

/// When a stream's writes give up.
#[derive(Clone, Copy)]
enum GiveUp {
    /// The whole stream, at this instant.
    At(Instant),
    /// Each write, this long after its first send.
    After(Duration),
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
        Stream::spawn(env, author, n, 64, GiveUp::At(two_minutes())).await
    }

    /// `n` writes, all in flight at once.
    pub async fn start_burst(env: &TestEnv, author: UserId, n: usize) -> Stream {
        Stream::spawn(env, author, n, n, GiveUp::At(two_minutes())).await
    }

    /// Writes, `in_flight` at a time, until [`Stream::stop`]; each write is resent for up to
    /// two minutes after its first send.
    pub async fn endless(env: &TestEnv, author: UserId, in_flight: usize) -> Stream {
        let per_write = GiveUp::After(Duration::from_secs(120));
        Stream::spawn(env, author, usize::MAX, in_flight, per_write).await
    }

    async fn spawn(
        env: &TestEnv,
        author: UserId,
        n: usize,
        in_flight: usize,
        give_up: GiveUp,
    ) -> Stream {
        let client = Arc::new(
            Client::connect(ClientOptions::from_config(&env.config, "fault-stream"))
                .await
                .unwrap(),
        );
        let done = Arc::new(AtomicUsize::new(0));
        let applied = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, applied_counter, stopped) = (done.clone(), applied.clone(), stop.clone());
        let task = tokio::spawn(async move {
            futures_util::stream::iter(0..n)
                .take_while(move |_| std::future::ready(!stopped.load(Ordering::Relaxed)))
                .map(|i| {
                    let (client, counter) = (client.clone(), counter.clone());
                    let applied = applied_counter.clone();
                    let give_up = match give_up {
                        GiveUp::At(at) => at,
                        GiveUp::After(after) => Instant::now() + after,
                    };
                    async move {
                        let outcome = write(&client, author, format!("w{i:05}"), give_up).await;
                        counter.fetch_add(1, Ordering::Relaxed);
                        if matches!(outcome, Outcome::Applied(_)) {
                            applied.fetch_add(1, Ordering::Relaxed);
                        }
                        outcome
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await
        });
        Stream {
            done,
            applied,
            stop,
            task,
        }
    }

    /// Writes answered as applied so far.
    pub fn applied(&self) -> usize {
        self.applied.load(Ordering::Relaxed)
    }

    /// Issues no new writes; the ones in flight still finish ([`Stream::finish`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
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

    /// Whether `n` writes are answered as applied within `within`.
    pub async fn applied_within(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.applied() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn finish(self) -> Vec<Outcome> {
        self.task.await.expect("the stream task")
    }
}

/// The give-up instant of a stream of fixed length: a stall fails the test in bounded time.
fn two_minutes() -> Instant {
    Instant::now() + Duration::from_secs(120)
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
