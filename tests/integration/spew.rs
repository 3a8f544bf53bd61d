//! SPEW's own behaviour, through the typed client, on the database `BEDS_TEST_DATABASE`
//! names: the social graph's rules, timelines and their pages, counts against the rows,
//! threads, token extraction edge cases and what deletes leave behind.

use std::collections::HashSet;

use beds::spew::{
    self, FollowCreate, FollowersParams, FollowingParams, HomeTimelineParams, LikeByUserAndSpew,
    LikeCreate, LikesOfSpewParams, Spew, SpewCreate, SpewId, SpewPatch, SpewsByHandleParams,
    SpewsByTagParams, SpewsMentioningParams, ThreadParams, User, UserCreate, UserTimelineParams,
    UsersByHandlePrefixParams,
};
use beds_runtime::{Client, ErrorCode};
use serde_json::json;

use crate::support::TestEnv;

async fn user(client: &Client, handle: &str) -> User {
    spew::client(client)
        .user()
        .create(&UserCreate {
            handle: handle.into(),
            display_name: handle.to_uppercase(),
            bio: None,
        })
        .await
        .unwrap()
}

async fn post(client: &Client, author: &User, body: &str) -> Spew {
    post_with(client, author, body, None, None).await
}

async fn post_with(
    client: &Client,
    author: &User,
    body: &str,
    reply_to: Option<SpewId>,
    respew_of: Option<SpewId>,
) -> Spew {
    spew::client(client)
        .spew()
        .create(&SpewCreate {
            author: author.id,
            body: body.into(),
            reply_to,
            respew_of,
        })
        .await
        .unwrap()
}

async fn follow(client: &Client, follower: &User, followee: &User) {
    spew::client(client)
        .follow()
        .create(&FollowCreate {
            follower: follower.id,
            followee: followee.id,
        })
        .await
        .unwrap();
}

async fn like(client: &Client, who: &User, what: &Spew) {
    spew::client(client)
        .like()
        .create(&LikeCreate {
            user: who.id,
            spew: what.id,
        })
        .await
        .unwrap();
}

async fn tagged(client: &Client, tag: &str) -> Vec<SpewId> {
    let page = spew::client(client)
        .spews_by_tag()
        .page(&SpewsByTagParams { tag: tag.into() }, Some(100), None)
        .await
        .unwrap();
    page.items.iter().map(|i| i.record.id).collect()
}

async fn mentioning(client: &Client, handle: &str) -> Vec<SpewId> {
    let page = spew::client(client)
        .spews_mentioning()
        .page(
            &SpewsMentioningParams {
                handle: handle.into(),
            },
            Some(100),
            None,
        )
        .await
        .unwrap();
    page.items.iter().map(|i| i.record.id).collect()
}

#[tokio::test]
async fn graph_rules_conflicts_and_case_insensitive_handles() {
    let env = TestEnv::matrix("spew_graph");
    let server = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let (ann, bob) = (user(&client, "Ann").await, user(&client, "bob").await);

    let clash = api
        .user()
        .create(&UserCreate {
            handle: "ANN".into(),
            display_name: "Other".into(),
            bio: None,
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Some(ErrorCode::UniqueViolation));
    let by_handle = api
        .user()
        .fetch_by(&spew::UserByHandle {
            handle: "aNN".into(),
        })
        .await
        .unwrap();
    assert_eq!(by_handle.id, ann.id, "handles are found in any case");

    let own = api
        .follow()
        .create(&FollowCreate {
            follower: ann.id,
            followee: ann.id,
        })
        .await
        .unwrap_err();
    assert_eq!(own.code(), Some(ErrorCode::InvalidInput));
    assert!(
        own.to_string().contains("cannot follow themselves"),
        "{own}"
    );

    follow(&client, &ann, &bob).await;
    let twice = api
        .follow()
        .create(&FollowCreate {
            follower: ann.id,
            followee: bob.id,
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Some(ErrorCode::UniqueViolation));

    // The database enforces the rule for updates too.
    let f = api
        .follow()
        .fetch_by(&spew::FollowByFollowerAndFollowee {
            follower: ann.id,
            followee: bob.id,
        })
        .await
        .unwrap();
    let to_self = api
        .follow()
        .update(
            f.id,
            &spew::FollowPatch {
                followee: Some(ann.id),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(to_self.code(), Some(ErrorCode::InvalidInput), "{to_self}");

    let s = post(&client, &bob, "hello").await;
    like(&client, &ann, &s).await;
    let again = api
        .like()
        .create(&LikeCreate {
            user: ann.id,
            spew: s.id,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::UniqueViolation));
    let key = LikeByUserAndSpew {
        user: ann.id,
        spew: s.id,
    };
    api.like().delete_by(&key).await.unwrap();
    let db = env.rows().await;
    assert_eq!(
        db.count("spw_likes", "spew_lik", &json!(s.id)).await,
        0,
        "unliked"
    );
    let gone = api.like().delete_by(&key).await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn home_timeline_pages_have_no_gaps_or_duplicates_while_spews_arrive() {
    let env = TestEnv::matrix("spew_home");
    let server = env.start_counting().await;
    let client = env.client().await;
    let (me, f1, f2, stranger) = (
        user(&client, "myself").await,
        user(&client, "friend1").await,
        user(&client, "friend2").await,
        user(&client, "stranger").await,
    );
    follow(&client, &me, &f1).await;
    follow(&client, &me, &f2).await;
    follow(&client, &stranger, &me).await; // followed by, not following: not in my timeline
    let mut expected = Vec::new();
    for i in 0..24 {
        let author = [&me, &f1, &f2][i % 3];
        expected.push(post(&client, author, &format!("post {i}")).await);
        post(&client, &stranger, &format!("noise {i}")).await;
    }
    expected.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));

    let home = spew::client(&client).home_timeline();
    let params = HomeTimelineParams { user: me.id };
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = home.page(&params, Some(7), cursor).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|i| i.record.id));
        // Newer spews arrive between pages; a descending cursor never shows them.
        post(&client, &f1, &format!("late {pages}")).await;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let want: Vec<SpewId> = expected.iter().map(|s| s.id).collect();
    assert_eq!(
        seen, want,
        "every spew of me and those I follow, once, newest first"
    );
    assert_eq!(pages, 4, "24 spews in pages of 7");
    let first = home.page(&params, Some(5), None).await.unwrap();
    assert!(
        first.items[..4]
            .iter()
            .all(|i| i.record.body.starts_with("late")),
        "a fresh first page shows the spews that arrived"
    );

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn counts_equal_the_rows_and_threads_have_their_shape() {
    let env = TestEnv::matrix("spew_counts");
    let server = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let users = [
        user(&client, "ann").await,
        user(&client, "bob").await,
        user(&client, "cyd").await,
        user(&client, "dee").await,
    ];
    let [ann, bob, cy, dee] = &users;
    for (a, b) in [(bob, ann), (cy, ann), (dee, ann), (ann, bob), (cy, bob)] {
        follow(&client, a, b).await;
    }
    let root = post(&client, ann, "root").await;
    let r1 = post_with(&client, bob, "reply one", Some(root.id), None).await;
    let r2 = post_with(&client, cy, "reply two", Some(root.id), None).await;
    let r3 = post_with(&client, dee, "reply to reply", Some(r1.id), None).await;
    let rs = post_with(&client, bob, "respew", None, Some(root.id)).await;
    for u in [bob, cy, dee] {
        like(&client, u, &root).await;
    }
    like(&client, ann, &r1).await;
    // The counts are maintained: read them once the tercero counted every write.
    env.settle().await;

    let thread = api
        .thread()
        .page(&ThreadParams { spew: root.id }, None, None)
        .await
        .unwrap();
    let ids: Vec<SpewId> = thread.items.iter().map(|i| i.record.id).collect();
    assert_eq!(
        ids,
        vec![root.id, r1.id, r2.id],
        "root, then direct replies in order"
    );
    assert_eq!(thread.items[1].with.author_handle, "bob");

    let db = env.rows().await;
    let page = api
        .user_timeline()
        .page(
            &UserTimelineParams {
                author: ann.id,
                before: None,
            },
            None,
            None,
        )
        .await
        .unwrap();
    let mine = &page.items[0];
    assert_eq!(mine.record.id, root.id);
    for (counted, table, column) in [
        (mine.with.likes, "spw_likes", "spew_lik"),
        (mine.with.replies, "spw_spews", "reply_to_spw"),
        (mine.with.respews, "spw_spews", "respew_of_spw"),
    ] {
        assert_eq!(
            counted,
            db.count(table, column, &json!(root.id)).await,
            "{table}.{column}"
        );
    }
    assert_eq!(
        (mine.with.likes, mine.with.replies, mine.with.respews),
        (3, 2, 1)
    );

    // Per-user counts come with every timeline item, computed in the same statement.
    let home = api
        .home_timeline()
        .page(&HomeTimelineParams { user: bob.id }, Some(100), None)
        .await
        .unwrap();
    assert_eq!(
        home.items.len(),
        3,
        "bob's reply and respew, and ann's root"
    );
    for item in &home.items {
        let author = json!(item.record.author);
        assert_eq!(
            item.with.author_followers,
            db.count("spw_follows", "followee_flw", &author).await
        );
        assert_eq!(
            item.with.author_following,
            db.count("spw_follows", "follower_flw", &author).await
        );
        assert_eq!(
            item.with.author_spews,
            db.count("spw_spews", "author_spw", &author).await
        );
        assert_eq!(
            item.with.likes,
            db.count("spw_likes", "spew_lik", &json!(item.record.id))
                .await
        );
    }

    let followers = api
        .followers()
        .page(&FollowersParams { user: ann.id }, None, None)
        .await
        .unwrap();
    let handles: Vec<&str> = followers
        .items
        .iter()
        .map(|i| i.record.handle.as_str())
        .collect();
    assert_eq!(handles, ["bob", "cyd", "dee"]);
    assert_eq!(
        followers.items[0].with.followers, 2,
        "bob is followed by ann and cy"
    );
    let following = api
        .following()
        .page(&FollowingParams { user: cy.id }, None, None)
        .await
        .unwrap();
    let handles: Vec<&str> = following
        .items
        .iter()
        .map(|i| i.record.handle.as_str())
        .collect();
    assert_eq!(handles, ["ann", "bob"]);
    let likers = api
        .likes_of_spew()
        .page(&LikesOfSpewParams { spew: root.id }, None, None)
        .await
        .unwrap();
    let handles: HashSet<&str> = likers
        .items
        .iter()
        .map(|i| i.with.user_handle.as_str())
        .collect();
    assert_eq!(handles, HashSet::from(["bob", "cyd", "dee"]));

    // Deleting bob removes his spews, follows and likes; replies to his spews stay,
    // detached; nothing points at a missing record.
    api.user().delete(bob.id).await.unwrap();
    let bob_id = json!(bob.id);
    assert_eq!(db.count("spw_spews", "author_spw", &bob_id).await, 0);
    assert_eq!(db.count("spw_follows", "follower_flw", &bob_id).await, 0);
    assert_eq!(db.count("spw_follows", "followee_flw", &bob_id).await, 0);
    assert_eq!(db.count("spw_likes", "user_lik", &bob_id).await, 0);
    assert_eq!(db.count("spw_spews_tags", "owner", &json!(r1.id)).await, 0);
    let orphan = api.spew().fetch(r3.id).await.unwrap();
    assert_eq!(
        orphan.reply_to, None,
        "a reply outlives its parent, detached"
    );
    assert_eq!(
        api.spew().fetch(rs.id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound),
        "bob's respew went with him"
    );
    // The cascaded deletes' events moved the root's counters too.
    env.settle().await;
    let page = api
        .user_timeline()
        .page(
            &UserTimelineParams {
                author: ann.id,
                before: None,
            },
            None,
            None,
        )
        .await
        .unwrap();
    let root_item = &page.items[0];
    assert_eq!(root_item.record.id, root.id);
    assert_eq!(
        (
            root_item.with.likes,
            root_item.with.replies,
            root_item.with.respews
        ),
        (2, 1, 0),
        "bob's like, reply and respew are no longer counted"
    );
    // Deleting the root takes its respews and likes; replies stay.
    api.spew().delete(root.id).await.unwrap();
    assert_eq!(db.count("spw_likes", "spew_lik", &json!(root.id)).await, 0);
    assert_eq!(api.spew().fetch(r2.id).await.unwrap().reply_to, None);
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn tags_and_mentions_are_extracted_on_edge_cases() {
    let env = TestEnv::matrix("spew_tokens");
    let server = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let ann = user(&client, "Ann_1").await;
    let body = "Loving #Rust and #rust, #café! #日本語 #tag.end a#b #x-y \
                mail bob@example.org @ANN_1 @ann_1 @this_handle_is_far_too_long #Rust";
    let s = post(&client, &ann, body).await;
    let db = env.rows().await;
    assert_eq!(
        db.count("spw_spews_tags", "owner", &json!(s.id)).await,
        5,
        "rust, café, 日本語, tag, x: repeats and case variants once"
    );
    assert_eq!(
        db.count("spw_spews_mentions", "owner", &json!(s.id)).await,
        1,
        "ann_1 once; an e-mail address and a too-long handle are no mentions"
    );
    for tag in ["rust", "RUST", "café", "CAFÉ", "日本語", "tag", "x"] {
        assert_eq!(tagged(&client, tag).await, vec![s.id], "#{tag}");
    }
    for not in ["b", "end", "y", "rust,", "example"] {
        assert!(tagged(&client, not).await.is_empty(), "#{not} is not a tag");
    }
    assert_eq!(mentioning(&client, "Ann_1").await, vec![s.id]);
    assert!(mentioning(&client, "example").await.is_empty());

    // A 280-character body: the longest allowed tag at its very end is a tag; one
    // character more is not.
    let tail = format!(" #{}", "t".repeat(64));
    let full = format!("{}{tail}", "x".repeat(280 - tail.chars().count()));
    assert_eq!(full.chars().count(), 280);
    let long = post(&client, &ann, &full).await;
    assert_eq!(tagged(&client, &"t".repeat(64)).await, vec![long.id]);
    let over = post(&client, &ann, &format!("#{}", "u".repeat(65))).await;
    assert_eq!(
        db.count("spw_spews_tags", "owner", &json!(over.id)).await,
        0
    );

    // Changing the body replaces the tokens; other updates leave them.
    api.spew()
        .update(
            s.id,
            &SpewPatch {
                body: Some("now only #other".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(tagged(&client, "rust").await.is_empty());
    assert!(mentioning(&client, "ann_1").await.is_empty());
    assert_eq!(tagged(&client, "other").await, vec![s.id]);
    api.spew()
        .update(
            s.id,
            &SpewPatch {
                reply_to: Some(Some(long.id)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tagged(&client, "other").await, vec![s.id]);

    client.close().await.unwrap();
    server.stop().await;
}

/// Handles are one value whatever their case (their unique index is case-insensitive), so
/// a query condition on a handle, through a reference or not, matches in any case.
#[tokio::test]
async fn query_conditions_on_handles_ignore_case_like_the_handle_index() {
    let env = TestEnv::matrix("spew_handle_case");
    let server = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let grace = user(&client, "Grace_x").await;
    let spew = post(&client, &grace, "hello").await;
    user(&client, "gracie").await;
    for handle in ["Grace_x", "grace_x", "GRACE_X"] {
        let found = api
            .spews_by_handle()
            .page(
                &SpewsByHandleParams {
                    handle: handle.into(),
                },
                None,
                None,
            )
            .await
            .unwrap();
        let ids: Vec<SpewId> = found.items.iter().map(|s| s.id).collect();
        assert_eq!(ids, [spew.id], "spews_by_handle({handle})");
    }
    for prefix in ["Grac", "grac", "GRAC"] {
        let found = api
            .users_by_handle_prefix()
            .page(
                &UsersByHandlePrefixParams {
                    prefix: prefix.into(),
                },
                None,
                None,
            )
            .await
            .unwrap();
        let mut handles: Vec<String> = found.items.into_iter().map(|u| u.handle).collect();
        handles.sort();
        assert_eq!(
            handles,
            ["Grace_x", "gracie"],
            "users_by_handle_prefix({prefix})"
        );
    }
    client.close().await.unwrap();
    server.stop().await;
}
