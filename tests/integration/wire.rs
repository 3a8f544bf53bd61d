//! The wire as a client in another language sees it: raw JSON bytes over AMQP, with the
//! properties such a client sets. The golden files in `tests/wire/` (see its README) are
//! replayed here against a real node, in file order.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::support::TestEnv;

/// The files pin SPEW's wire, so the node serves SPEW alone: domains compiled beside it (the
/// gate adds the fixture domains) would change replies that list what a node serves.
static SPEW_ONLY: std::sync::LazyLock<beds_runtime::Catalog> =
    std::sync::LazyLock::new(|| beds_runtime::Catalog {
        domains: std::slice::from_ref(
            beds::CATALOG
                .domains
                .iter()
                .find(|d| d.name == "spew")
                .expect("SPEW is compiled"),
        ),
        route: beds::CATALOG.route,
    });

/// The id of the spew the replay finds in COLD storage.
const COLD_SPEW: &str = "0193a000-0000-7000-8000-00000000c01d";

/// That spew in its wire shape, as retention wrote it to its COLD file.
fn cold_spew() -> Json {
    serde_json::json!({
        "id": COLD_SPEW,
        "author": "0193a000-0000-7000-8000-00000000a11c",
        "body": "an old spew, kept in the cold files",
        "reply_to": null,
        "respew_of": null,
        "created_at": "2024-01-31T12:00:00.000000Z",
        "version": 1
    })
}

/// How long a reply or a dead letter may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A bare AMQP peer: publishes bytes, takes replies from its own queue and dead letters
/// from the node's dead-letter queues.
pub struct Peer {
    _conn: Connection,
    /// The broker user: the `user_id` every request carries, as a client sets it.
    login: String,
    channel: Channel,
    pub reply_queue: String,
    replies: lapin::Consumer,
}

impl Peer {
    pub async fn connect(env: &TestEnv) -> Peer {
        let (conn, channel, reply_queue, replies) = env.amqp_peer("wire").await;
        Peer {
            _conn: conn,
            login: env.login(),
            channel,
            reply_queue,
            replies,
        }
    }

    /// What a client sets: JSON, its user id, its reply queue and a correlation id to
    /// match on.
    pub fn props(&self, correlation: &str) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id(self.login.as_str().into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.into())
    }

    /// Publishes `body` to `beds.events` with `routing_key`.
    pub async fn send(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                "beds.events".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
    }

    /// The next reply, which must carry `correlation` as its AMQP correlation id.
    pub async fn reply(&mut self, correlation: &str) -> Json {
        let delivery = next(&mut self.replies, "a reply").await;
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some(correlation),
            "the reply carries the request's AMQP correlation id"
        );
        serde_json::from_slice(&delivery.data).expect("replies are JSON")
    }

    /// Sends `body` with the usual properties and returns the reply.
    pub async fn request(&mut self, routing_key: &str, body: &[u8]) -> Json {
        let correlation = uuid::Uuid::now_v7().to_string();
        self.send(routing_key, body, self.props(&correlation)).await;
        self.reply(&correlation).await
    }

    /// Takes the messages of a dead-letter queue as they arrive.
    pub async fn dead_letters(&self, queue: &str) -> lapin::Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the dead-letter queue")
    }
}

/// The next delivery of `consumer` within [`WAIT`].
pub async fn next(consumer: &mut lapin::Consumer, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
        .expect("consumer open")
        .expect("delivery")
}

/// A text header of a delivery.
pub fn header(delivery: &Delivery, key: &str) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
    {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The versions the golden files were recorded for (`tests/wire/manifest.json`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    envelope_version: u32,
    /// Domain name -> declared `version`.
    domains: BTreeMap<String, u32>,
}

impl Manifest {
    /// What this build speaks, for the domains the files use.
    fn running(recorded: &Manifest) -> Manifest {
        Manifest {
            envelope_version: beds_runtime::envelope::VERSION,
            domains: recorded
                .domains
                .keys()
                .map(|name| {
                    let domain = beds::CATALOG
                        .domains
                        .iter()
                        .find(|d| d.name == name)
                        .unwrap_or_else(|| panic!("the golden files use domain `{name}`"));
                    (name.clone(), domain.version)
                })
                .collect(),
        }
    }
}

/// One golden case (tests/wire/README.md describes the fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    about: String,
    routing_key: String,
    #[serde(default)]
    properties: Properties,
    #[serde(default)]
    request: Option<Json>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_bytes: Option<Vec<u8>>,
    /// Present (maybe `null` before the first bless) when the node answers.
    #[serde(default, deserialize_with = "present")]
    reply: Option<Json>,
    /// Present when the message is dead-lettered instead.
    #[serde(default, deserialize_with = "present")]
    dead_letter: Option<Json>,
}

/// Tells a key written as `null` (`Some(Null)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Json>, D::Error> {
    Json::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Properties {
    content_type: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    delivery_mode: Option<u8>,
}

/// What the replay knows: values captured from earlier replies, by placeholder name.
struct Replay {
    captured: BTreeMap<String, Json>,
    /// UUIDs written in the files' requests, and the nil UUID: deterministic, so never
    /// masked.
    literal: HashSet<String>,
    uuid: Regex,
    timestamp: Regex,
    placeholder: Regex,
}

impl Replay {
    fn new(texts: &[String]) -> Replay {
        let uuid =
            Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
        let literal = texts
            .iter()
            .flat_map(|t| uuid.find_iter(t).map(|m| m.as_str().to_string()))
            .chain([uuid::Uuid::nil().to_string()])
            .collect();
        Replay {
            captured: BTreeMap::new(),
            literal,
            uuid,
            timestamp: Regex::new(
                r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
            )
            .unwrap(),
            placeholder: Regex::new(r"\{\{([a-z0-9_.]+)\}\}").unwrap(),
        }
    }

    fn value(&self, name: &str, case: &str) -> &Json {
        self.captured.get(name).unwrap_or_else(|| {
            panic!("case {case}: `{{{{{name}}}}}` names nothing captured by an earlier case")
        })
    }

    /// A string with its placeholders replaced by their text.
    fn fill_text(&self, text: &str, case: &str) -> String {
        self.placeholder
            .replace_all(text, |c: &regex::Captures| match self.value(&c[1], case) {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
            .into_owned()
    }

    /// A request with its placeholders replaced: a string that is one placeholder becomes
    /// the captured JSON value (a cursor is an array), others are filled as text.
    fn fill(&self, j: &Json, case: &str) -> Json {
        match j {
            Json::String(s) => match self.placeholder.captures(s) {
                Some(c) if c[0].len() == s.len() => self.value(&c[1], case).clone(),
                Some(_) => Json::String(self.fill_text(s, case)),
                None => j.clone(),
            },
            Json::Array(items) => Json::Array(items.iter().map(|i| self.fill(i, case)).collect()),
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.fill(v, case)))
                    .collect(),
            ),
            _ => j.clone(),
        }
    }

    /// Remembers `<case>.id`, `<case>.created_at` and `<case>.next` of a successful reply.
    fn capture(&mut self, case: &str, reply: &Json) {
        for key in ["id", "created_at", "next"] {
            match reply["data"].get(key) {
                None | Some(Json::Null) => {}
                Some(v) => {
                    self.captured.insert(format!("{case}.{key}"), v.clone());
                }
            }
        }
    }

    /// The masking rule of tests/wire/README.md.
    fn mask(&self, j: &Json) -> Json {
        match j {
            Json::String(s) => Json::String(self.mask_text(s)),
            Json::Array(items) => Json::Array(items.iter().map(|i| self.mask(i)).collect()),
            Json::Object(map) => {
                Json::Object(map.iter().map(|(k, v)| (k.clone(), self.mask(v))).collect())
            }
            _ => j.clone(),
        }
    }

    fn mask_text(&self, s: &str) -> String {
        let ids = self.uuid.replace_all(s, |m: &regex::Captures| {
            let id = &m[0];
            let name = self
                .captured
                .iter()
                .find(|(k, v)| k.ends_with(".id") && v.as_str() == Some(id));
            match name {
                Some((k, _)) => format!("{{{{{k}}}}}"),
                None if self.literal.contains(id) => id.to_string(),
                None => "{{uuid}}".to_string(),
            }
        });
        self.timestamp
            .replace_all(&ids, "{{timestamp}}")
            .into_owned()
    }
}

/// The files of `dir`, in name order, but the manifest.
fn case_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/wire")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "manifest.json"))
        .collect();
    files.sort();
    files
}

/// `text` with the value of its last top-level `"reply"` or `"dead_letter"` key replaced by
/// `value`: blessing keeps the request as written.
fn blessed(text: &str, key: &str, value: &Json) -> String {
    let at = text
        .rfind(&format!("\n  \"{key}\": "))
        .unwrap_or_else(|| panic!("`{key}` is the last key of a case file"));
    let pretty = serde_json::to_string_pretty(value)
        .unwrap()
        .replace('\n', "\n  ");
    format!("{}\n  \"{key}\": {pretty}\n}}\n", &text[..at])
}

const REBLESS: &str = "BEDS_TEST_BLESS=1 cargo test --test integration wire";

#[tokio::test]
async fn golden_wire_files_replay_against_a_node() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire");
    let bless = std::env::var("BEDS_TEST_BLESS").is_ok_and(|v| v == "1");
    let manifest_path = dir.join("manifest.json");
    let recorded: Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("tests/wire/manifest.json"))
            .expect("the manifest reads");
    let running = Manifest::running(&recorded);
    if !bless {
        assert_eq!(
            recorded, running,
            "the golden files were recorded for other versions than this build speaks: the \
             contract changed on purpose, so re-bless them ({REBLESS}) and review the diff"
        );
    }
    let files = case_files(&dir);
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("case file"))
        .collect();
    let mut replay = Replay::new(&texts);

    let env = TestEnv::matrix("wire").with_warehouse();
    // SPEW's maintained counts are kept by a tercero beside the node; every case is sent
    // once the writes before it are counted, so replies with counts are deterministic.
    let server = env.start_counting_with(&SPEW_ONLY).await;
    // Warehouse reads (cases 850-870) are answered by a segundo node; the spew they read
    // lies in COLD, placed as the storage contract lays it out, with fixed values.
    let segundo = crate::warehouse::segundo(&env, &SPEW_ONLY).await;
    crate::warehouse::to_cold(&env, COLD_SPEW, &cold_spew()).await;
    let mut peer = Peer::connect(&env).await;
    let mut dead: BTreeMap<&str, lapin::Consumer> = BTreeMap::new();
    for key in ["rec.read", "rec.write"] {
        let consumer = peer.dead_letters(&format!("{}.dlq", env.queue(key))).await;
        dead.insert(key, consumer);
    }
    let mut failures = Vec::new();
    for (file, text) in files.iter().zip(&texts) {
        let shown = file.file_name().unwrap().to_string_lossy().into_owned();
        env.settle().await;
        let case: Case = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{shown} is not a case file: {e}"));
        let body = match (&case.request, &case.body, &case.body_bytes) {
            (Some(r), None, None) => serde_json::to_vec(&replay.fill(r, &case.name)).unwrap(),
            (None, Some(b), None) => replay.fill_text(b, &case.name).into_bytes(),
            (None, None, Some(b)) => b.clone(),
            _ => panic!("{shown}: exactly one of request, body, body_bytes"),
        };
        let p = &case.properties;
        let mut props = BasicProperties::default().with_user_id(peer.login.as_str().into());
        if let Some(ct) = &p.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        if let Some(to) = &p.reply_to {
            let to = to.replace("{{reply_to}}", &peer.reply_queue);
            props = props.with_reply_to(to.as_str().into());
        }
        if let Some(c) = &p.correlation_id {
            props = props.with_correlation_id(c.as_str().into());
        }
        if let Some(mode) = p.delivery_mode {
            props = props.with_delivery_mode(mode);
        }
        peer.send(&env.queue(&case.routing_key), &body, props).await;

        let (key, expected, observed) = match (&case.reply, &case.dead_letter) {
            (Some(expected), None) => {
                let correlation = p
                    .correlation_id
                    .as_deref()
                    .unwrap_or_else(|| panic!("{shown}: a case with a reply sets correlation_id"));
                let reply = peer.reply(correlation).await;
                if reply["status"] == "ok" {
                    replay.capture(&case.name, &reply);
                }
                ("reply", expected, replay.mask(&reply))
            }
            (None, Some(expected)) => {
                let consumer = dead
                    .get_mut(case.routing_key.as_str())
                    .unwrap_or_else(|| panic!("{shown}: routing_key is rec.read or rec.write"));
                let letter = next(consumer, &format!("{shown}: the dead letter")).await;
                assert_eq!(
                    letter.data, body,
                    "{shown}: dead letters keep the body unchanged"
                );
                let headers: serde_json::Map<String, Json> =
                    ["x-beds-error-code", "x-beds-error-class", "x-beds-reason"]
                        .into_iter()
                        .map(|h| {
                            (
                                h.to_string(),
                                header(&letter, h).map_or(Json::Null, Json::from),
                            )
                        })
                        .collect();
                let observed = serde_json::json!({
                    "queue": format!("{}.dlq", case.routing_key),
                    "headers": headers,
                });
                ("dead_letter", expected, replay.mask(&observed))
            }
            _ => panic!("{shown}: exactly one of reply, dead_letter (null until blessed)"),
        };
        if bless {
            if *expected != observed {
                std::fs::write(file, blessed(text, key, &observed)).expect("write the case");
            }
        } else if *expected != observed {
            failures.push(format!(
                "{shown} ({}): {key} changed\nexpected: {}\nobserved: {}",
                case.about,
                serde_json::to_string_pretty(expected).unwrap(),
                serde_json::to_string_pretty(&observed).unwrap()
            ));
        }
    }
    segundo.stop().await;
    server.stop().await;
    if bless {
        let text = serde_json::to_string_pretty(&running).unwrap() + "\n";
        std::fs::write(&manifest_path, text).expect("write the manifest");
    }
    assert!(
        failures.is_empty(),
        "{}\n\n{} golden replies changed while the envelope version ({}) and the domain \
         versions ({:?}) did not: clients in other languages read these replies. Fix the \
         regression, or bump a version and re-bless ({REBLESS}).",
        failures.join("\n\n"),
        failures.len(),
        running.envelope_version,
        running.domains
    );
}
