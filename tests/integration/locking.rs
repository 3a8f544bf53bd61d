//! The `locking` capability end to end on the database of `BEDS_TEST_DATABASE`: leases,
//! tokens, expiry, refusal, racing writers and a holder that disappears. The templates are
//! written by hand (no YAML): `door` declares locking, `note` does not.

use std::time::Duration;

use beds_runtime::support as rt;
use beds_runtime::{
    Client, ClientError, DetailCode, ErrorClass, ErrorCode, Lease, Op, Request, Server,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::support::TestEnv;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DoorId(pub uuid::Uuid);

impl rt::Key for DoorId {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rt::Record)]
#[beds(domain = "keep", template = "door", create = DoorCreate, patch = DoorPatch)]
#[beds(locking)]
pub struct Door {
    pub id: DoorId,
    pub version: i64,
    #[beds(string, max = 40)]
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoorCreate {
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoorPatch {
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NoteId(pub uuid::Uuid);

impl rt::Key for NoteId {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rt::Record)]
#[beds(domain = "keep", template = "note", create = NoteCreate, patch = NoteCreate)]
pub struct Note {
    pub id: NoteId,
    pub version: i64,
    #[beds(string, max = 40)]
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoteCreate {
    pub label: String,
}

static DOORS: rt::Routes = rt::Routes::of::<Door>();
static NOTES: rt::Routes = rt::Routes::of::<Note>();
static DOMAIN: rt::DomainMeta = rt::DomainMeta {
    name: "keep",
    version: 1,
    templates: &[<Door as rt::Record>::META, <Note as rt::Record>::META],
    queries: &[],
};
static CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&DOMAIN],
    route: |domain, template| match (domain, template) {
        ("keep", "door") => Ok(&DOORS),
        ("keep", "note") => Ok(&NOTES),
        ("keep", _) => Err(rt::RouteError::UnknownTemplate),
        _ => Err(rt::RouteError::UnknownDomain),
    },
};

async fn start(name: &str) -> (TestEnv, Server, Client) {
    let env = TestEnv::matrix(name);
    let server = Server::start(&env.config, &CATALOG).await.expect("start");
    let client = env.client().await;
    (env, server, client)
}

async fn door(client: &Client, label: &str) -> Door {
    client
        .template::<Door>()
        .create(&DoorCreate {
            label: label.into(),
        })
        .await
        .unwrap()
}

fn patch(label: &str) -> DoorPatch {
    DoorPatch {
        label: label.into(),
    }
}

/// The `locked` refusal, checked for its class and the lease's end.
fn assert_locked(e: ClientError, until: Option<&Lease<DoorId>>) {
    let ClientError::Remote(e) = e else {
        panic!("expected `locked`, got {e:?}")
    };
    assert_eq!(
        (e.code, e.class),
        (ErrorCode::Locked, ErrorClass::Conflict),
        "{e:?}"
    );
    let locked_until = e.locked_until.as_deref().expect("locked_until");
    assert!(e.message.contains(locked_until), "{}", e.message);
    if let Some(lease) = until {
        assert_eq!(
            locked_until,
            beds_runtime::format_timestamp(&lease.expires_at),
            "the refusal says until when the lease runs"
        );
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn lock_update_unlock_cycle() {
    let (_env, server, client) = start("lock_cycle").await;
    let doors = client.template::<Door>();
    let d = door(&client, "front").await;

    let lease = doors.lock(d.id, LONG).await.unwrap();
    assert_eq!(lease.id, d.id);
    assert!(!lease.token.is_empty());
    let ahead = lease.expires_at - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::seconds(50) && ahead <= chrono::Duration::seconds(60),
        "{ahead}"
    );

    assert_locked(
        doors.update(d.id, &patch("x")).await.unwrap_err(),
        Some(&lease),
    );
    assert_locked(
        doors
            .update_locked(d.id, &patch("x"), "not-the-token")
            .await
            .unwrap_err(),
        Some(&lease),
    );
    assert_locked(doors.lock(d.id, LONG).await.unwrap_err(), Some(&lease));
    assert_locked(
        doors.unlock(d.id, "not-the-token").await.unwrap_err(),
        Some(&lease),
    );

    let held = doors
        .update_locked(d.id, &patch("held"), &lease.token)
        .await
        .unwrap();
    assert_eq!((held.label.as_str(), held.version), ("held", 2));

    // Re-locking with the token extends the same lease.
    let extended = doors.relock(&lease, LONG * 2).await.unwrap();
    assert_eq!(extended.token, lease.token);
    assert!(extended.expires_at > lease.expires_at);

    doors.unlock(d.id, &lease.token).await.unwrap();
    let free = doors.update(d.id, &patch("free")).await.unwrap();
    assert_eq!((free.label.as_str(), free.version), ("free", 3));
    // Unlocking what nobody holds is no error, and the record can be leased again.
    doors.unlock(d.id, &lease.token).await.unwrap();
    let again = doors.lock(d.id, LONG).await.unwrap();
    assert_ne!(again.token, lease.token);

    let missing = doors.lock(DoorId(uuid::Uuid::now_v7()), LONG).await;
    assert_eq!(missing.unwrap_err().code(), Some(ErrorCode::NotFound));

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_lease_expires_on_its_own() {
    let (_env, server, client) = start("lock_expiry").await;
    let doors = client.template::<Door>();
    let d = door(&client, "side").await;

    let lease = doors.lock(d.id, Duration::from_millis(400)).await.unwrap();
    assert_locked(
        doors.update(d.id, &patch("early")).await.unwrap_err(),
        Some(&lease),
    );
    // Wait for the deadline the reply named, not for a guessed time.
    let left = (lease.expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left).await;
    let late = doors.update(d.id, &patch("late")).await.unwrap();
    assert_eq!(late.label, "late");
    // The expired token is worth nothing against a new holder.
    let next = doors.lock(d.id, LONG).await.unwrap();
    assert_locked(
        doors
            .update_locked(d.id, &patch("stale"), &lease.token)
            .await
            .unwrap_err(),
        Some(&next),
    );

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn two_writers_race_for_one_lease() {
    let (env, server, one) = start("lock_race").await;
    let two = env.client().await;
    let (first, second) = (one.template::<Door>(), two.template::<Door>());
    let (holder, intruder) = (patch("holder"), patch("intruder"));
    for round in 0..20 {
        let d = door(&one, &format!("r{round}")).await;
        let (a, b) = tokio::join!(first.lock(d.id, LONG), second.lock(d.id, LONG));
        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            other => panic!("round {round}: exactly one lease, got {other:?}"),
        };
        assert_locked(lost, Some(&won));
        // A writer without the token racing the holder's update never gets through.
        let (held, other) = tokio::join!(
            first.update_locked(d.id, &holder, &won.token),
            second.update(d.id, &intruder)
        );
        assert_eq!(held.unwrap().label, "holder");
        assert_locked(other.unwrap_err(), Some(&won));
    }
    two.close().await.unwrap();
    one.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_holder_that_dies_loses_its_lease() {
    let (env, server, client) = start("lock_holder").await;
    let doors = client.template::<Door>();
    let d = door(&client, "back").await;

    let lease = {
        let holder = env.client().await;
        let lease = holder
            .template::<Door>()
            .lock(d.id, Duration::from_millis(500))
            .await
            .unwrap();
        // The holder disappears without unlocking: its connection is gone.
        drop(holder);
        lease
    };
    assert_locked(
        doors.update(d.id, &patch("waiting")).await.unwrap_err(),
        Some(&lease),
    );
    let left = (lease.expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left).await;
    let mine = doors.lock(d.id, LONG).await.unwrap();
    let done = doors
        .update_locked(d.id, &patch("taken over"), &mine.token)
        .await
        .unwrap();
    assert_eq!(done.label, "taken over");

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn delete_under_lock_needs_the_token() {
    let (env, server, client) = start("lock_delete").await;
    let doors = client.template::<Door>();
    let d = door(&client, "trap").await;
    let lease = doors.lock(d.id, LONG).await.unwrap();

    assert_locked(doors.delete(d.id).await.unwrap_err(), Some(&lease));
    doors.delete_locked(d.id, &lease.token).await.unwrap();
    assert_eq!(
        doors.fetch(d.id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // The lease goes with the record.
    let rows = env.rows().await;
    let id = json!(d.id.0.to_string());
    assert_eq!(rows.count("beds_locks", "record", &id).await, 0);

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_lock_returns_the_same_lease() {
    let (_env, server, client) = start("lock_replay").await;
    let d = door(&client, "twice").await;
    let mut req = Request::new("keep", "door", Op::Lock);
    req.key = Some(json!({"id": d.id}).as_object().unwrap().clone());
    req.data = Some(json!({"ttl": "30s"}).as_object().unwrap().clone());
    req.idempotency_key = Some(format!("lock-{}", d.id.0));
    let first = client.request(req.clone()).await.unwrap();
    req.id = uuid::Uuid::now_v7();
    let second = client.request(req).await.unwrap();
    assert_eq!(first, second, "a replay answers the first lease");
    assert_eq!(first["id"], json!(d.id));

    client.close().await.unwrap();
    server.stop().await;
}

/// What the validate step refuses before anything runs.
#[tokio::test]
async fn lock_input_is_checked_and_other_templates_refuse_it() {
    let (_env, server, client) = start("lock_refusals").await;
    let d = door(&client, "checked").await;
    let send = |op: Op, template: &str, extra: Json| {
        let mut req = Request::new("keep", template, op);
        let extra = extra.as_object().unwrap().clone();
        req.key = extra.get("key").and_then(Json::as_object).cloned();
        req.data = extra.get("data").and_then(Json::as_object).cloned();
        req.lock_token = extra
            .get("lock_token")
            .and_then(Json::as_str)
            .map(str::to_string);
        let client = &client;
        async move { client.request(req).await.unwrap_err() }
    };
    let key = json!({"id": d.id});

    let too_long = send(Op::Lock, "door", json!({"key": key, "data": {"ttl": "2h"}})).await;
    let ClientError::Remote(e) = too_long else {
        panic!("{too_long:?}")
    };
    assert_eq!(
        (e.details[0].field.as_str(), e.details[0].code),
        ("data.ttl", DetailCode::AboveMax)
    );
    for ttl in [
        json!("soon"),
        json!("18446744073709551d"),
        json!(0),
        json!(-1),
    ] {
        let bad = send(Op::Lock, "door", json!({"key": key, "data": {"ttl": ttl}})).await;
        assert_eq!(bad.code(), Some(ErrorCode::InvalidInput), "{ttl}: {bad:?}");
    }
    let no_token = send(Op::Unlock, "door", json!({"key": key})).await;
    assert_eq!(no_token.code(), Some(ErrorCode::InvalidEnvelope));

    let note = client
        .template::<Note>()
        .create(&NoteCreate {
            label: "plain".into(),
        })
        .await
        .unwrap();
    let nkey = json!({"id": note.id});
    for op in [Op::Lock, Op::Unlock] {
        let refused = send(op, "note", json!({"key": nkey, "lock_token": "t"})).await;
        assert_eq!(
            refused.code(),
            Some(ErrorCode::OperationNotAllowed),
            "{refused:?}"
        );
    }
    let token_without_leases = send(
        Op::Update,
        "note",
        json!({"key": nkey, "data": {"label": "x"}, "lock_token": "t"}),
    )
    .await;
    assert_eq!(
        token_without_leases.code(),
        Some(ErrorCode::InvalidEnvelope)
    );
    let token_on_list = send(Op::List, "door", json!({"lock_token": "t"})).await;
    assert_eq!(token_on_list.code(), Some(ErrorCode::InvalidEnvelope));

    // An unknown operation lists lock and unlock only where they exist.
    let mut req = Request::new("keep", "door", Op::Fetch);
    req.op = "explode".into();
    let door_ops = client.request(req.clone()).await.unwrap_err();
    assert!(
        door_ops
            .to_string()
            .ends_with("takes: create, fetch, update, delete, list, lock, unlock"),
        "{door_ops}"
    );
    req.template = "note".into();
    let note_ops = client.request(req).await.unwrap_err();
    assert!(
        note_ops
            .to_string()
            .ends_with("takes: create, fetch, update, delete, list"),
        "{note_ops}"
    );

    client.close().await.unwrap();
    server.stop().await;
}
