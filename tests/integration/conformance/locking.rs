//! Every template declaring `locking`: a lease is answered with a token, an update or
//! delete without it is refused `locked`, with it applies, and unlock frees the record.
//! Templates without `locking` refuse `lock`.

use beds_runtime::support::{FieldKind, TemplateMeta};
use beds_runtime::{Client, ErrorClass, ErrorCode, Op};
use serde_json::{Map, Value as Json, json};

use super::{Made, code, id_of, key, send};

pub(super) async fn leases(client: &Client, domain: &str, t: &TemplateMeta, made: &mut Made) {
    let Some(record) = made.get(t.name).and_then(|r| r.first()).cloned() else {
        return;
    };
    let id = id_of(&record);
    let lock = |token: Option<String>| {
        let id = id.clone();
        send(client, domain, t.name, Op::Lock, move |r| {
            r.key = Some(key(&id));
            r.data = Some(Map::from_iter([("ttl".to_string(), json!("1m"))]));
            r.lock_token = token;
        })
    };
    if !t.capabilities.locking {
        assert_eq!(
            code(&lock(None).await.unwrap_err()),
            Some(ErrorCode::OperationNotAllowed),
            "{}: no `locking`, no lock",
            t.name
        );
        return;
    }
    let lease = lock(None)
        .await
        .unwrap_or_else(|e| panic!("{}: lock failed: {e}", t.name));
    assert_eq!(lease["id"], id, "{}: the lease names the record", t.name);
    let token = lease["token"].as_str().expect("a token").to_string();
    let until = lease["expires_at"].as_str().expect("expires_at");
    chrono::DateTime::parse_from_rfc3339(until).expect("expires_at is RFC 3339");

    // The same value again: a valid change whatever the declaration's rules.
    let Some(f) = t
        .fields
        .iter()
        .find(|f| f.is_input() && !matches!(f.kind, FieldKind::Ref { .. }))
    else {
        return;
    };
    let update = |token: Option<String>| {
        let id = id.clone();
        let data = Map::from_iter([(f.name.to_string(), record[f.name].clone())]);
        send(client, domain, t.name, Op::Update, move |r| {
            r.key = Some(key(&id));
            r.data = Some(data);
            r.lock_token = token;
        })
    };
    let refused = update(None).await.unwrap_err();
    let beds_runtime::ClientError::Remote(e) = &refused else {
        panic!("{}: {refused}", t.name)
    };
    assert_eq!(
        (e.code, e.class, e.locked_until.as_deref()),
        (ErrorCode::Locked, ErrorClass::Conflict, Some(until)),
        "{}: an update without the token is refused until the lease ends",
        t.name
    );
    let deleted = send(client, domain, t.name, Op::Delete, |r| {
        r.key = Some(key(&id))
    })
    .await;
    assert_eq!(code(&deleted.unwrap_err()), Some(ErrorCode::Locked));
    assert_eq!(
        code(&lock(None).await.unwrap_err()),
        Some(ErrorCode::Locked),
        "{}: one lease at a time",
        t.name
    );
    let held: Json = update(Some(token.clone()))
        .await
        .unwrap_or_else(|e| panic!("{}: the holder's update failed: {e}", t.name));
    send(client, domain, t.name, Op::Unlock, |r| {
        r.key = Some(key(&id));
        r.lock_token = Some(token);
    })
    .await
    .unwrap_or_else(|e| panic!("{}: unlock failed: {e}", t.name));
    let free = update(None)
        .await
        .unwrap_or_else(|e| panic!("{}: update after unlock failed: {e}", t.name));
    assert_eq!(
        free["version"].as_i64(),
        held["version"].as_i64().map(|v| v + 1)
    );
    // Later steps compare query results with the records made.
    made.get_mut(t.name).unwrap()[0] = free;
}
