//! Every operation on both SPEW templates over AMQP, asserting replies and rows.

use beds::spew::{self, SpewCreate, SpewPatch, UserCreate, UserPatch};
use beds_runtime::ErrorCode;
use sqlx::Row;

use crate::support::TestEnv;

#[tokio::test]
async fn user_operations_round_trip() {
    let env = TestEnv::new("user_ops");
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();
    let db = env.db().await;

    let created = users
        .create(&UserCreate {
            handle: "ada".into(),
            display_name: "Ada Lovelace".into(),
            bio: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (
            created.handle.as_str(),
            created.version,
            created.bio.as_deref()
        ),
        ("ada", 1, None)
    );
    let row = sqlx::query("SELECT handle_usr, display_name_usr, bio_usr, version_usr, created_at_usr FROM spw_users WHERE id_usr = ?")
        .bind(created.id.to_string())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "ada");
    assert_eq!(row.get::<String, _>(1), "Ada Lovelace");
    assert_eq!(row.get::<Option<String>, _>(2), None);
    assert_eq!(row.get::<i64, _>(3), 1);
    assert_eq!(
        row.get::<String, _>(4),
        beds_runtime::format_timestamp(&created.created_at)
    );

    let fetched = users.fetch(created.id).await.unwrap();
    assert_eq!(fetched, created);

    let patched = users
        .update(
            created.id,
            &UserPatch {
                bio: Some(Some("Analyst".into())),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.bio.as_deref(),
            patched.version,
            patched.handle.as_str()
        ),
        (Some("Analyst"), 2, "ada")
    );
    let (bio, version): (Option<String>, i64) =
        sqlx::query_as("SELECT bio_usr, version_usr FROM spw_users WHERE id_usr = ?")
            .bind(created.id.to_string())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((bio.as_deref(), version), (Some("Analyst"), 2));

    // Clearing an optional field with an explicit null.
    let cleared = users
        .update(
            created.id,
            &UserPatch {
                bio: Some(None),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((cleared.bio.as_deref(), cleared.version), (None, 3));

    let second = users
        .create(&UserCreate {
            handle: "grace".into(),
            display_name: "Grace".into(),
            bio: Some("Admiral".into()),
        })
        .await
        .unwrap();
    let page = users.list(Some(1), None).await.unwrap();
    assert_eq!(page.items, vec![cleared.clone()]);
    assert_eq!(page.next, Some(created.id));
    let page = users.list(Some(1), page.next).await.unwrap();
    assert_eq!(page.items, vec![second.clone()]);
    let page = users.list(Some(1), page.next).await.unwrap();
    assert!(page.items.is_empty() && page.next.is_none());

    users.delete(created.id).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar("SELECT handle_usr FROM spw_users")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(left, vec!["grace".to_string()]);
    let again = users.delete(created.id).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::NotFound));

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn spew_operations_round_trip() {
    let env = TestEnv::new("spew_ops");
    let server = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let db = env.db().await;

    let author = api
        .user()
        .create(&UserCreate {
            handle: "linus".into(),
            display_name: "Linus".into(),
            bio: None,
        })
        .await
        .unwrap();
    let body = "é".repeat(280);
    let s = api
        .spew()
        .create(&SpewCreate {
            author: author.id,
            body: body.clone(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (s.author, s.body.as_str(), s.version),
        (author.id, body.as_str(), 1)
    );
    let (stored_author, stored_body): (String, String) =
        sqlx::query_as("SELECT author_spw, body_spw FROM spw_spews WHERE id_spw = ?")
            .bind(s.id.to_string())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((stored_author, stored_body), (author.id.to_string(), body));

    assert_eq!(api.spew().fetch(s.id).await.unwrap(), s);
    let edited = api
        .spew()
        .update(
            s.id,
            &SpewPatch {
                body: Some("edited".into()),
                ..SpewPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (edited.body.as_str(), edited.version, edited.created_at),
        ("edited", 2, s.created_at)
    );

    let listed = api.spew().list(None, None).await.unwrap();
    assert_eq!(listed.items, vec![edited.clone()]);
    assert_eq!(listed.next, None, "a short page has no next cursor");

    api.spew().delete(s.id).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_spews")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // Declared `on_delete: cascade`: deleting the author removes their spews.
    let again = api
        .spew()
        .create(&SpewCreate {
            author: author.id,
            body: "still here?".into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap();
    api.user().delete(author.id).await.unwrap();
    assert_eq!(
        api.spew().fetch(again.id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_spews")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // A reference to a missing record is a conflict, not a crash.
    let orphan = api
        .spew()
        .create(&SpewCreate {
            author: author.id,
            body: "orphan".into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap_err();
    assert_eq!(orphan.code(), Some(ErrorCode::ReferenceNotFound));

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unique_handle_is_case_insensitive() {
    let env = TestEnv::new("unique");
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();
    let make = |h: &str| UserCreate {
        handle: h.into(),
        display_name: "x".into(),
        bio: None,
    };
    users.create(&make("Bob")).await.unwrap();
    let e = users.create(&make("bOB")).await.unwrap_err();
    let beds_runtime::ClientError::Remote(e) = e else {
        panic!("expected a remote error, got {e:?}");
    };
    assert_eq!(
        (e.code, e.class),
        (
            ErrorCode::UniqueViolation,
            beds_runtime::ErrorClass::Conflict
        )
    );
    assert_eq!(e.details[0].field, "data.handle");

    // The unique handle is also a key: fetch, update and delete by it, in any case.
    let bob = users
        .fetch_by(&spew::UserByHandle {
            handle: "BOB".into(),
        })
        .await
        .unwrap();
    assert_eq!(bob.handle, "Bob");
    let patch = UserPatch {
        display_name: Some("Robert".into()),
        ..Default::default()
    };
    let robert = users
        .update_by(
            &spew::UserByHandle {
                handle: "bob".into(),
            },
            &patch,
        )
        .await
        .unwrap();
    assert_eq!(
        (robert.id, robert.display_name.as_str(), robert.version),
        (bob.id, "Robert", 2)
    );
    users
        .delete_by(&spew::UserByHandle {
            handle: "bOb".into(),
        })
        .await
        .unwrap();
    let gone = users
        .fetch_by(&spew::UserByHandle {
            handle: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));
    let beds_runtime::ClientError::Remote(gone) = gone else {
        unreachable!()
    };
    assert_eq!(gone.message, "no `user` with handle \"bob\"");
    // A key that is neither the id nor a unique index is refused, naming the ways that work.
    let bad = users
        .fetch_by(&serde_json::json!({ "display_name": "Robert" }))
        .await
        .unwrap_err();
    let beds_runtime::ClientError::Remote(bad) = bad else {
        panic!("{bad:?}")
    };
    assert_eq!(
        (bad.code, bad.details[0].field.as_str()),
        (ErrorCode::InvalidInput, "key")
    );
    assert!(bad.message.contains("{handle}"), "{}", bad.message);
    client.close().await.unwrap();
    server.stop().await;
}
