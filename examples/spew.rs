//! SPEW end to end: an appServer in this process, and a scripted social network driven
//! over AMQP only, through the typed client generated from `domains/spew.yaml`: a few
//! dozen users, a follow graph, a few hundred spews with replies, respews, hashtags and
//! mentions, likes; then a home timeline with counts, a thread, a tag search and a
//! follower list. The counts are maintained (`maintained: true` in the declaration): a
//! tercero node in this process keeps them from the appServer's write events, and the
//! reads wait until it has counted every write. An admin node in this process keeps the
//! lineage records every node publishes; the example ends by printing one spew create's
//! lineage tree, as `beds lineage` does.
//!
//! `cargo run --example spew` — needs RabbitMQ at the configured URL
//! (default amqp://guest:guest@127.0.0.1:5672/%2f; override with BEDS_AMQP__URL). The
//! database is the configured one (SQLite in a temporary directory unless
//! BEDS_DATABASE__DRIVER / BEDS_DATABASE__URL say otherwise).

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use beds::spew::{
    self, FollowCreate, FollowersParams, HomeTimelineParams, LikeByUserAndSpew, LikeCreate,
    LikesOfSpewParams, Spew, SpewCreate, SpewsByTagParams, SpewsMentioningParams, ThreadParams,
    User, UserCreate,
};
use beds_runtime::config::{Driver, redact};
use beds_runtime::lineage::{Record, RecordType};
use beds_runtime::{
    Client, ClientError, ClientOptions, Config, ErrorCode, Op, Request, Role, Server,
};
use futures_util::{StreamExt, stream};

/// How long a read waits for the tercero to count every write.
const COUNTED_WITHIN: Duration = Duration::from_secs(10);
/// How long the example waits for a write's whole lineage tree to reach the admin.
const TRACED_WITHIN: Duration = Duration::from_secs(10);
/// Requests kept in flight while seeding.
const IN_FLIGHT: usize = 32;
const USERS: usize = 36;
const SPEWS: usize = 300;
const LIKES: usize = 450;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/beds.yaml"))?;
    beds_runtime::telemetry::init("warn");
    // A fresh database and private queues, so runs never see each other's data.
    let data = tempfile::tempdir()?;
    config.database.data_dir = data.path().to_path_buf();
    config.admin.database.data_dir = data.path().to_path_buf();
    config.amqp.queue_tag = format!("example.{}.", std::process::id());
    // This example is the service that seeds the network and the web front end acting for
    // each user: the node trusts its broker user to say which user it acts for
    // (wiki/security.md); the seeding requests act with the role `admin`.
    let options = ClientOptions::from_config(&config, "spew-example");
    config.security.trusted_services = options.user_id.iter().cloned().collect();

    println!(
        "SPEW is a Twitter-like backend declared in domains/spew.yaml: users post spews (short\n\
         messages) that may reply to or respew (repost) another spew; users follow and like.\n"
    );
    // The admin and the tercero first: events and lineage records reach only the queues
    // bound when they are published.
    let mut admin_config = config.clone();
    admin_config.role = Role::Admin;
    admin_config.node = format!("{}-admin", config.node);
    let admin = Server::start(&admin_config, &beds::CATALOG).await?;
    let mut tercero_config = config.clone();
    tercero_config.role = Role::Tercero;
    tercero_config.node = format!("{}-tercero", config.node);
    let tercero = Server::start(&tercero_config, &beds::CATALOG).await?;
    let server = Server::start(&config, &beds::CATALOG).await?;
    println!(
        "appServer started in this process (the node role that serves the data):\n  \
         rBroker (pool of read workers) consumes the queue {0}rec.read\n  \
         wBroker (pool of write workers) consumes the queue {0}rec.write\n  \
         database: {1}\n\
         tercero node started in this process too: it consumes the write events the appServer\n  \
         publishes (queue {0}evt.tercero) and keeps SPEW's maintained counts (likes, replies,\n  \
         respews, followers, following, spews), which reads then take from a counter instead\n  \
         of COUNT(*); they lag writes by well under a second.\n\
         admin node started in this process too: it stores the lineage records every node\n  \
         publishes (queue {0}lineage; lineage.sample is {2} in this environment) in its own\n  \
         database, and answers administrative commands (queue {0}adm).\n\
         Every step below is a request to the appServer over RabbitMQ, sent by the typed client\n\
         generated from domains/spew.yaml.\n",
        config.amqp.queue_tag,
        database(&config),
        config.lineage.sample
    );
    let client = Client::connect(options.clone().as_subject(None, &["admin"])).await?;
    let result = match script(&client, &options).await {
        Ok(author) => {
            println!(
                "read cache: {} fetches answered from the node's memory (`user` declares \
                 cache: {{ ttl: 30s }}; a write drops its record on every node)",
                server.cache_hits()
            );
            traced(&client, &author).await
        }
        Err(e) => Err(e),
    };
    client.close().await?;
    // Stop serving before the queues go, so no worker sees its consumer vanish.
    server.stop().await;
    tercero.stop().await;
    admin.stop().await;
    beds_runtime::topology::remove(
        &config.amqp,
        &[
            beds_runtime::topology::READ_KEY,
            beds_runtime::topology::WRITE_KEY,
            beds_runtime::EVENT_QUEUE_KEY,
            beds_runtime::admin::ADMIN_KEY,
            beds_runtime::admin::lineage::LINEAGE_KEY,
        ],
    )
    .await?;
    result
}

/// A small deterministic generator: the same network every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Skewed towards 0: popular users are followed and liked more (power law-ish).
    fn skewed(&mut self, n: usize) -> usize {
        let a = self.below(n);
        self.below(a + 1)
    }
}

/// Counts every request sent and every error reply, expected or not.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    errors: AtomicUsize,
    /// Error replies the script provokes on purpose.
    expected: AtomicUsize,
}

impl Tally {
    fn note<T>(&self, r: &Result<T, ClientError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const FIRST: &[&str] = &[
    "ada", "grace", "linus", "alan", "barbara", "edsger", "donald", "margaret", "ken", "dennis",
    "frances", "john", "radia", "tim", "guido", "bjarne", "niklaus", "leslie",
];
const TOPICS: &[&str] = &[
    "#Rust",
    "#beds",
    "#coffee",
    "#café",
    "#amqp",
    "#databases",
    "#weekend",
    "#RUST",
];
const LINES: &[&str] = &[
    "Shipping the new build today",
    "Reading about message brokers",
    "Who else is debugging on a Friday?",
    "Benchmarks look good so far",
    "Declarations beat hand-written CRUD",
    "Tea or coffee? Asking for science.",
    "Keyset pagination never skips a row",
];

/// Seeds the network and reads it; returns the user who posts the traced spew.
async fn script(
    client: &Client,
    options: &ClientOptions,
) -> Result<User, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let tally = Tally::default();
    let api = spew::client(client);
    let mut rng = Rng(0x5eed_beef_cafe_f00d);

    // Users.
    let inputs: Vec<UserCreate> = (0..USERS)
        .map(|i| UserCreate {
            handle: format!("{}{}", FIRST[i % FIRST.len()], i / FIRST.len() + 1),
            display_name: format!("{} #{}", capitalised(FIRST[i % FIRST.len()]), i + 1),
            bio: (i % 3 == 0).then(|| "Writes code, drinks coffee.".to_string()),
        })
        .collect();
    let (user_api, follow_api, spew_api, like_api) =
        (api.user(), api.follow(), api.spew(), api.like());
    let users: Vec<User> = in_flight(&tally, inputs.iter().map(|u| user_api.create(u))).await?;
    println!(
        "created {} users (@{} … @{})",
        users.len(),
        users[0].handle,
        users[USERS - 1].handle
    );

    // Follows: everyone follows a few, popular users more often.
    let mut pairs = Vec::new();
    for (i, _) in users.iter().enumerate() {
        for _ in 0..3 + rng.below(6) {
            let j = rng.skewed(USERS);
            if j != i && !pairs.contains(&(i, j)) {
                pairs.push((i, j));
            }
        }
    }
    let inputs: Vec<FollowCreate> = pairs
        .iter()
        .map(|&(i, j)| FollowCreate {
            follower: users[i].id,
            followee: users[j].id,
        })
        .collect();
    let follows = in_flight(&tally, inputs.iter().map(|f| follow_api.create(f))).await?;
    println!("created {} follows", follows.len());
    let (a, b) = pairs[0];
    let again = follow_api
        .create(&FollowCreate {
            follower: users[a].id,
            followee: users[b].id,
        })
        .await;
    expected(&tally, "follow twice", again)?;
    let own = follow_api
        .create(&FollowCreate {
            follower: users[0].id,
            followee: users[0].id,
        })
        .await;
    expected(&tally, "follow yourself", own)?;

    // Spews in rounds, so replies and respews point at spews that exist.
    let mut spews: Vec<Spew> = Vec::new();
    while spews.len() < SPEWS {
        let round: Vec<SpewCreate> = (0..50)
            .map(|_| {
                let author = rng.skewed(USERS);
                let mut body = LINES[rng.below(LINES.len())].to_string();
                if rng.below(2) == 0 {
                    body.push(' ');
                    body.push_str(TOPICS[rng.below(TOPICS.len())]);
                }
                if rng.below(4) == 0 {
                    body.push_str(&format!(" cc @{}", users[rng.skewed(USERS)].handle));
                }
                let (reply_to, respew_of) = match (spews.is_empty(), rng.below(10)) {
                    (false, 0..=1) => (Some(spews[rng.below(spews.len())].id), None),
                    (false, 2) => (None, Some(spews[rng.below(spews.len())].id)),
                    _ => (None, None),
                };
                SpewCreate {
                    author: users[author].id,
                    body,
                    reply_to,
                    respew_of,
                }
            })
            .collect();
        spews.extend(in_flight(&tally, round.iter().map(|s| spew_api.create(s))).await?);
    }
    let replies = spews.iter().filter(|s| s.reply_to.is_some()).count();
    let respews = spews.iter().filter(|s| s.respew_of.is_some()).count();
    println!(
        "created {} spews ({replies} replies, {respews} respews)",
        spews.len()
    );

    // Access rules (`access:` in domains/spew.yaml): a spew is edited only by its author.
    let target = &spews[0];
    let intruder = users
        .iter()
        .find(|u| u.id != target.author)
        .ok_or("no second user")?;
    let as_intruder = Client::connect(
        options
            .clone()
            .as_subject(Some(&intruder.id.to_string()), &[]),
    )
    .await?;
    let edit = spew::SpewPatch {
        body: Some("hijacked".into()),
        ..Default::default()
    };
    match spew::client(&as_intruder)
        .spew()
        .update(target.id, &edit)
        .await
    {
        Err(e) if e.code() == Some(ErrorCode::Forbidden) => {
            println!(
                "@{} tried to edit someone else's spew: refused: {e}",
                intruder.handle
            )
        }
        other => return Err(format!("editing another's spew was not refused: {other:?}").into()),
    }
    as_intruder.close().await?;

    // The journal (`journal: true` on spew): the author's edit keeps the text it replaced.
    let body: String = target.body.chars().take(270).collect();
    let edit = spew::SpewPatch {
        body: Some(format!("{body} (edited)")),
        ..Default::default()
    };
    spew_api.update(target.id, &edit).await?;
    let author = users
        .iter()
        .find(|u| u.id == target.author)
        .map_or("?", |u| u.handle.as_str());
    println!(
        "
history of a spew by @{author} after its edit (newest first):"
    );
    for v in spew_api.history(target.id, None, None).await?.items {
        println!(
            "  v{} {:<6} {}  {}",
            v.version,
            v.op.name(),
            v.written_at.format("%H:%M:%S%.3f"),
            v.record.body
        );
    }

    // Likes, popular spews more often; one duplicate and one unlike.
    let mut liked = Vec::new();
    while liked.len() < LIKES {
        let pair = (rng.below(USERS), spews.len() - 1 - rng.skewed(spews.len()));
        if !liked.contains(&pair) {
            liked.push(pair);
        }
    }
    let inputs: Vec<LikeCreate> = liked
        .iter()
        .map(|&(u, s)| LikeCreate {
            user: users[u].id,
            spew: spews[s].id,
        })
        .collect();
    let likes = in_flight(&tally, inputs.iter().map(|l| like_api.create(l))).await?;
    let twice = like_api
        .create(&LikeCreate {
            user: likes[0].user,
            spew: likes[0].spew,
        })
        .await;
    expected(&tally, "like twice", twice)?;
    let unlike = like_api
        .delete_by(&LikeByUserAndSpew {
            user: likes[0].user,
            spew: likes[0].spew,
        })
        .await;
    tally.note(&unlike);
    unlike?;
    println!("created {} likes, then unliked one", likes.len());

    // What the counts must say, from the writes made: maintained counts lag them.
    let likes_of = tally_by(likes.iter().skip(1).map(|l| l.spew));
    let replies_to = tally_by(spews.iter().filter_map(|s| s.reply_to));
    let respews_of = tally_by(spews.iter().filter_map(|s| s.respew_of));
    let followers_of = tally_by(follows.iter().map(|f| f.followee));
    let following_of = tally_by(follows.iter().map(|f| f.follower));
    let spews_of = tally_by(spews.iter().map(|s| s.author));

    // Reads.
    let me = &users[3];
    let waited = Instant::now();
    let home = counted(
        &tally,
        || {
            let (q, p) = (api.home_timeline(), HomeTimelineParams { user: me.id });
            async move { q.page(&p, Some(8), None).await }
        },
        |page| {
            page.items.iter().all(|i| {
                let w = &i.with;
                (w.likes, w.replies, w.respews)
                    == (
                        n(&likes_of, i.record.id),
                        n(&replies_to, i.record.id),
                        n(&respews_of, i.record.id),
                    )
                    && (w.author_followers, w.author_following, w.author_spews)
                        == (
                            n(&followers_of, i.record.author),
                            n(&following_of, i.record.author),
                            n(&spews_of, i.record.author),
                        )
            })
        },
    )
    .await?;
    println!(
        "\nthe tercero had counted every write {} ms after the last one",
        waited.elapsed().as_millis()
    );
    println!(
        "\nhome timeline of @{}: their spews and those of the users they follow, newest first\n\
         (first page of 8; time of posting in UTC, ♥ likes, ↩ replies, ⟳ respews):",
        me.handle
    );
    for item in home.items {
        let w = &item.with;
        println!(
            "  {} @{:<10} {:<58} ♥{:<3} ↩{:<2} ⟳{:<2} (author: {}, following {}, {})",
            item.record.created_at.format("%H:%M:%S%.3f"),
            w.author_handle,
            item.record.body,
            w.likes,
            w.replies,
            w.respews,
            plural(w.author_followers, "follower"),
            w.author_following,
            plural(w.author_spews, "spew")
        );
    }

    let root = spews
        .iter()
        .filter(|s| s.reply_to.is_none())
        .max_by_key(|s| spews.iter().filter(|r| r.reply_to == Some(s.id)).count())
        .expect("spews exist");
    let thread = counted(
        &tally,
        || {
            let (q, p) = (api.thread(), ThreadParams { spew: root.id });
            async move { q.page(&p, None, None).await }
        },
        |page| {
            page.items
                .iter()
                .all(|i| i.with.likes == n(&likes_of, i.record.id))
        },
    )
    .await?;
    println!(
        "\nthread of the spew with the most replies ({}): the spew, then its replies (↳),\n\
         oldest first:",
        root.id
    );
    for (i, item) in thread.items.iter().enumerate() {
        println!(
            "  {}@{:<10} {} (♥{})",
            if i == 0 { "" } else { "  ↳ " },
            item.with.author_handle,
            item.record.body,
            item.with.likes
        );
    }

    let tagged = api
        .spews_by_tag()
        .page(&SpewsByTagParams { tag: "rust".into() }, Some(5), None)
        .await;
    tally.note(&tagged);
    let tagged = tagged?;
    println!("\nspews tagged #rust, newest 5 (tags match case-insensitively: #Rust, #RUST):");
    for item in &tagged.items {
        println!("  @{:<10} {}", item.with.author_handle, item.record.body);
    }

    let star = &users[0];
    let mentioning = api
        .spews_mentioning()
        .page(
            &SpewsMentioningParams {
                handle: star.handle.to_uppercase(),
            },
            Some(3),
            None,
        )
        .await;
    tally.note(&mentioning);
    println!(
        "\nspews mentioning @{}, newest 3 (asked for @{}: handles are case-insensitive):",
        star.handle,
        star.handle.to_uppercase()
    );
    for item in mentioning?.items {
        println!("  @{:<10} {}", item.with.author_handle, item.record.body);
    }

    let followers = counted(
        &tally,
        || {
            let (q, p) = (api.followers(), FollowersParams { user: star.id });
            async move { q.page(&p, Some(10), None).await }
        },
        |page| {
            page.items.iter().all(|i| {
                let w = &i.with;
                (w.followers, w.following, w.spews)
                    == (
                        n(&followers_of, i.record.id),
                        n(&following_of, i.record.id),
                        n(&spews_of, i.record.id),
                    )
            })
        },
    )
    .await?;
    println!("\nfollowers of @{} (first 10 by handle):", star.handle);
    for item in followers.items {
        println!(
            "  @{:<10} {:<14} {}, following {}, {}",
            item.record.handle,
            item.record.display_name,
            plural(item.with.followers, "follower"),
            item.with.following,
            plural(item.with.spews, "spew")
        );
    }

    let hot = &spews[spews.len() - 1];
    let likers = api
        .likes_of_spew()
        .page(&LikesOfSpewParams { spew: hot.id }, Some(5), None)
        .await;
    tally.note(&likers);
    let handles: Vec<String> = likers?
        .items
        .iter()
        .map(|l| format!("@{}", l.with.user_handle))
        .collect();
    println!(
        "\nwho liked the latest spew, most recent first: {}",
        handles.join(", ")
    );

    // Profiles are read far more often than they change: every user's, five times.
    let views = users.iter().cycle().take(USERS * 5);
    in_flight(&tally, views.map(|u| user_api.fetch(u.id))).await?;
    println!("\nviewed every profile 5 times ({} fetches)", USERS * 5);

    let (errors, wanted) = (
        tally.errors.load(Ordering::Relaxed),
        tally.expected.load(Ordering::Relaxed),
    );
    println!(
        "\nsummary: {} requests over AMQP, {errors} error replies ({wanted} provoked on purpose), {} ms",
        tally.requests.load(Ordering::Relaxed),
        started.elapsed().as_millis()
    );
    if errors != wanted {
        return Err(format!("{} unexpected error replies", errors - wanted).into());
    }
    Ok(users[1].clone())
}

/// One more spew, then its lineage tree as the admin stores it (what `beds lineage ID`
/// prints), once it holds the request, reply, event, tercero effect and invalidation.
async fn traced(client: &Client, author: &User) -> Result<(), Box<dyn std::error::Error>> {
    let mut req = Request::new("spew", "spew", Op::Create);
    req.data = serde_json::json!({"author": author.id, "body": "Tracing this one #beds"})
        .as_object()
        .cloned();
    let id = req.id;
    client.exchange(req).await?.into_result()?;
    let complete = |rs: &[Record]| {
        let has = |t: RecordType| rs.iter().any(|r| r.kind_of == t);
        has(RecordType::Request)
            && has(RecordType::Reply)
            && has(RecordType::Event)
            && rs
                .iter()
                .any(|r| r.kind_of == RecordType::Effect && r.name.starts_with("tercero."))
            && has(RecordType::Invalidation)
    };
    let end = Instant::now() + TRACED_WITHIN;
    let records = loop {
        let mut fields = serde_json::Map::new();
        fields.insert("message_id".into(), id.to_string().into());
        let mut answer = client.admin("lineage", fields).await?;
        let records: Vec<Record> = serde_json::from_value(answer["records"].take())?;
        if complete(&records) {
            break records;
        }
        if Instant::now() >= end {
            return Err(format!(
                "the lineage tree of {id} was still incomplete after {TRACED_WITHIN:?}: {records:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "\nlineage of one more spew by @{}, as the admin node stored it: each message and effect\n\
         under the one that caused it, with the node that recorded it, its outcome, when it\n\
         started after the request and how long it took (`beds lineage {id}`\n\
         prints the same):",
        author.handle
    );
    for line in beds_runtime::lineage::render(&records).lines() {
        println!("  {line}");
    }
    Ok(())
}

/// How many times each key occurs.
fn tally_by<K: Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, i64> {
    let mut counts = HashMap::new();
    for k in keys {
        *counts.entry(k).or_insert(0) += 1;
    }
    counts
}

/// A key's count in `counts` (0 when it never occurred).
fn n<K: Hash + Eq>(counts: &HashMap<K, i64>, key: K) -> i64 {
    counts.get(&key).copied().unwrap_or(0)
}

/// Reads until `exact` holds for the reply: maintained counts lag the writes by the
/// tercero's staleness bound. An error reply, or counts still behind after
/// [`COUNTED_WITHIN`], fail the example.
async fn counted<T, F>(
    tally: &Tally,
    read: impl Fn() -> F,
    exact: impl Fn(&T) -> bool,
) -> Result<T, Box<dyn std::error::Error>>
where
    F: Future<Output = Result<T, ClientError>>,
{
    let end = Instant::now() + COUNTED_WITHIN;
    loop {
        let reply = read().await;
        tally.note(&reply);
        let reply = reply?;
        if exact(&reply) {
            return Ok(reply);
        }
        if Instant::now() >= end {
            return Err(format!("maintained counts still behind after {COUNTED_WITHIN:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `requests` with up to [`IN_FLIGHT`] outstanding, in order; stops at the first error.
async fn in_flight<T, F>(
    tally: &Tally,
    requests: impl Iterator<Item = F>,
) -> Result<Vec<T>, ClientError>
where
    F: Future<Output = Result<T, ClientError>>,
{
    let results: Vec<Result<T, ClientError>> =
        stream::iter(requests).buffered(IN_FLIGHT).collect().await;
    results.into_iter().inspect(|r| tally.note(r)).collect()
}

/// Prints an expected error reply; anything else is a failure of the example.
fn expected<T: std::fmt::Debug>(
    tally: &Tally,
    what: &str,
    result: Result<T, ClientError>,
) -> Result<(), Box<dyn std::error::Error>> {
    tally.note(&result);
    match result {
        Err(ClientError::Remote(e)) => {
            if tally.expected.fetch_add(1, Ordering::Relaxed) == 0 {
                println!(
                    "(three requests are wrong on purpose; the node must refuse each with an \
                     error reply,\n shown as its class/code: message)"
                );
            }
            println!(
                "refused as expected: {what:<15} -> {}/{}: {}",
                wire(&e.class),
                wire(&e.code),
                e.message
            );
            Ok(())
        }
        Err(other) => Err(other.into()),
        Ok(v) => Err(format!("{what} should have failed, got {v:?}").into()),
    }
}

/// The name a contract enum has on the wire (`unique_violation`), as other clients see it.
fn wire(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where the data lives, named as an operator would (passwords hidden).
fn database(config: &Config) -> String {
    let db = &config.database;
    let server = || db.url.as_deref().map(redact).unwrap_or_default();
    match db.driver {
        Driver::Sqlite => format!(
            "SQLite at {} (a fresh file, deleted at exit)",
            db.sqlite_path().display()
        ),
        Driver::Postgres => format!("PostgreSQL at {}", server()),
        Driver::Mariadb => format!("MariaDB at {}", server()),
    }
}

fn plural(n: impl Into<i64>, word: &str) -> String {
    let n = n.into();
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
