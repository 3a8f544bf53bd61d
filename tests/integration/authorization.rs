//! Who is calling and what they may do, over real RabbitMQ: broker users of the test's
//! own (in its own vhost, removed at the end), the AMQP `user_id` RabbitMQ checks, signed
//! tokens (HS256 and EdDSA, keys generated at test time), trusted-service assertions, and
//! SPEW's `access` rules; and idempotency keys scoped to the caller.

use std::path::Path;
use std::process::Command;

use beds_runtime::config::{TokenAlg, TokenKeyConfig};
use beds_runtime::{Client, ClientError, ClientOptions, ErrorCode, Op, Request};
use jsonwebtoken::{EncodingKey, Header};
use lapin::BasicProperties;
use serde_json::{Map, Value as Json, json};

use crate::support::{TestEnv, envelope};
use crate::vhost::Vhost;

/// Token keys written to `dir`: an HS256 secret (kid `hs1`) and an Ed25519 pair (kid
/// `ed1`, made by openssl); returns the encoding keys.
fn keys(dir: &Path) -> (Vec<TokenKeyConfig>, EncodingKey, EncodingKey) {
    let secret = dir.join("hs1.secret");
    std::fs::write(&secret, b"a shared secret of the tests, 32+ bytes long").unwrap();
    let private = dir.join("ed1.pem");
    let public = dir.join("ed1.pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("the EdDSA test needs openssl on PATH")
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl made the Ed25519 key pair");
    let config = vec![
        TokenKeyConfig {
            kid: "hs1".into(),
            alg: TokenAlg::Hs256,
            file: secret.clone(),
        },
        TokenKeyConfig {
            kid: "ed1".into(),
            alg: TokenAlg::EdDsa,
            file: public,
        },
    ];
    let hs = EncodingKey::from_secret(&std::fs::read(&secret).unwrap());
    let ed = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    (config, hs, ed)
}

fn token(key: &EncodingKey, alg: jsonwebtoken::Algorithm, kid: &str, claims: Json) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn claims(sub: &Json, roles: &[&str], exp_in: i64) -> Json {
    json!({
        "sub": sub,
        "roles": roles,
        "exp": chrono::Utc::now().timestamp() + exp_in,
        "iss": "beds-tests",
    })
}

fn req(template: &str, op: Op, key: Option<&Json>, data: Json) -> Request {
    let mut r = Request::new("spew", template, op);
    if let Some(id) = key {
        r.key = Some(Map::from_iter([("id".to_string(), id.clone())]));
    }
    if let Json::Object(d) = data {
        r.data = Some(d);
    }
    r
}

fn code(result: &Result<Json, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(ClientError::Remote(e)) => Some(e.code),
        Ok(_) => None,
        Err(e) => panic!("not an answer: {e}"),
    }
}

fn message(result: &Result<Json, ClientError>) -> String {
    match result {
        Err(ClientError::Remote(e)) => e.message.clone(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

async fn client(
    env: &TestEnv,
    url: &str,
    f: impl FnOnce(ClientOptions) -> ClientOptions,
) -> Client {
    let options = f(ClientOptions::from_config(&env.config, "security-tests").with_url(url));
    Client::connect(options).await.expect("connect")
}

async fn body_now(admin: &Client, id: &Json) -> Result<Json, ClientError> {
    admin
        .request(req("spew", Op::Fetch, Some(id), json!(null)))
        .await
        .map(|r| r["body"].clone())
}

#[tokio::test]
async fn callers_are_identified_and_access_rules_are_enforced() {
    let mut broker = Vhost::new("authz");
    let (app, gateway) = (broker.open_user("app"), broker.open_user("gateway"));
    let mut env = TestEnv::new("security");
    env.config.amqp.url = broker.url("guest", "guest");
    let keydir = tempfile::tempdir().unwrap();
    let (key_config, hs, ed) = keys(keydir.path());
    let s = &mut env.config.security;
    s.require_user_id = Some(true);
    s.trusted_services = vec![gateway.clone()];
    s.tokens.keys = key_config;
    s.tokens.issuer = Some("beds-tests".into());
    let server = env.start().await;
    let hs256 = jsonwebtoken::Algorithm::HS256;

    // The harness's own client (broker user guest, role admin by service_roles) seeds.
    let admin = env.client().await;
    let user = |handle: &str| {
        req(
            "user",
            Op::Create,
            None,
            json!({ "handle": handle, "display_name": handle }),
        )
    };
    let ada = admin.request(user("ada")).await.unwrap();
    let bob = admin.request(user("bob")).await.unwrap();
    let (ada_id, bob_id) = (ada["id"].clone(), bob["id"].clone());
    let spew = admin
        .request(req(
            "spew",
            Op::Create,
            None,
            json!({ "author": ada_id, "body": "ada's first" }),
        ))
        .await
        .unwrap();
    let spew_id = spew["id"].clone();

    // No user_id where one is required: unauthenticated, answered.
    let raw = env.raw().await;
    let reply = raw
        .request_with(
            &env.queue("rec.read"),
            &envelope("user", "fetch", json!({ "key": { "id": ada_id } })),
            BasicProperties::default(),
        )
        .await;
    assert_eq!(reply["error"]["code"], "unauthenticated", "{reply}");
    assert_eq!(reply["error"]["class"], "forbidden", "{reply}");

    // Bob, through the app's own broker user with his token and no admin role.
    let bob_token = token(&hs, hs256, "hs1", claims(&bob_id, &[], 600));
    let as_bob = client(&env, &broker.url(&app, "secret"), |o| {
        o.with_auth(&bob_token)
    })
    .await;
    let edit = |id: &Json, body: &str| req("spew", Op::Update, Some(id), json!({ "body": body }));
    let r = as_bob.request(edit(&spew_id, "bob was here")).await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    let r = as_bob
        .request(req("spew", Op::Delete, Some(&spew_id), json!(null)))
        .await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    assert_eq!(
        body_now(&admin, &spew_id).await.unwrap(),
        "ada's first",
        "the row is unchanged"
    );
    let like = |user: &Json| {
        req(
            "like",
            Op::Create,
            None,
            json!({ "user": user, "spew": spew_id }),
        )
    };
    let r = as_bob.request(like(&ada_id)).await;
    assert_eq!(
        code(&r),
        Some(ErrorCode::Forbidden),
        "a like for someone else: {r:?}"
    );
    as_bob
        .request(like(&bob_id))
        .await
        .expect("a like for oneself");
    // A missing record is refused like another's: its existence is not revealed.
    let missing = json!(uuid::Uuid::now_v7());
    let r = as_bob.request(edit(&missing, "x")).await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    // A profile is its own subject (`owner: id`): bob edits his.
    let r = as_bob
        .request(req(
            "user",
            Op::Update,
            Some(&bob_id),
            json!({ "display_name": "Bob B." }),
        ))
        .await;
    r.expect("bob edits his own profile");

    // `beds call --auth-file`: the token from a file, the user id from the URL.
    let token_file = keydir.path().join("bob.token");
    std::fs::write(&token_file, format!("{bob_token}\n")).unwrap();
    let id = spew_id.as_str().unwrap().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args([
        "call",
        "spew.spew.update",
        &id,
        "--data",
        r#"{"body":"from the CLI"}"#,
    ])
    .arg("--auth-file")
    .arg(&token_file)
    .arg("--config")
    .arg(crate::support::repo_config_path())
    .env("BEDS_ENV", "test")
    .env("BEDS_AMQP__URL", broker.url(&app, "secret"))
    .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run beds call"))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("forbidden"), "{err}");
    assert_eq!(body_now(&admin, &spew_id).await.unwrap(), "ada's first");

    // The owner can (EdDSA token, same app user); so can an admin (role in the token).
    let ada_token = token(
        &ed,
        jsonwebtoken::Algorithm::EdDSA,
        "ed1",
        claims(&ada_id, &[], 600),
    );
    let as_ada = client(&env, &broker.url(&app, "secret"), |o| {
        o.with_auth(&ada_token)
    })
    .await;
    as_ada
        .request(edit(&spew_id, "ada edited"))
        .await
        .expect("the author edits her spew");
    assert_eq!(body_now(&admin, &spew_id).await.unwrap(), "ada edited");

    // Tokens that do not verify: unauthenticated, saying why, never echoing the token.
    let bad = [
        (
            token(&hs, hs256, "hs1", claims(&bob_id, &[], -3600)),
            "expired",
        ),
        (
            token(
                &EncodingKey::from_secret(b"another secret"),
                hs256,
                "hs1",
                claims(&bob_id, &[], 600),
            ),
            "signature",
        ),
        (
            token(&hs, hs256, "hs9", claims(&bob_id, &[], 600)),
            "unknown key id `hs9`",
        ),
        (
            token(
                &hs,
                hs256,
                "hs1",
                json!({ "sub": bob_id, "exp": 4_000_000_000u64, "iss": "elsewhere" }),
            ),
            "issuer",
        ),
    ];
    for (t, why) in &bad {
        let mut r = req("user", Op::Fetch, Some(&bob_id), json!(null));
        r.auth = Some(t.clone());
        let r = as_bob.request(r).await;
        assert_eq!(code(&r), Some(ErrorCode::Unauthenticated), "{why}: {r:?}");
        let m = message(&r);
        assert!(m.contains(why), "{why}: {m}");
        assert!(!m.contains(t.as_str()), "the token is not echoed: {m}");
    }

    // Asserting a subject: refused from the app, honoured from the trusted gateway.
    let as_app_claiming = client(&env, &broker.url(&app, "secret"), |o| {
        o.as_subject(Some(ada_id.as_str().unwrap()), &[])
    })
    .await;
    let r = as_app_claiming.request(edit(&spew_id, "forged")).await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    assert!(message(&r).contains("trusted_services"), "{r:?}");
    let via_gateway = client(&env, &broker.url(&gateway, "secret"), |o| {
        o.as_subject(Some(ada_id.as_str().unwrap()), &[])
    })
    .await;
    via_gateway
        .request(edit(&spew_id, "via the gateway"))
        .await
        .expect("the gateway acts for ada");
    assert_eq!(body_now(&admin, &spew_id).await.unwrap(), "via the gateway");

    // A named query's access: home_timeline needs a signed-in reader.
    let mut timeline = Request::new("spew", "", Op::Query);
    timeline.query = Some("home_timeline".into());
    timeline.params = Some(Map::from_iter([("user".to_string(), bob_id.clone())]));
    let anonymous = client(&env, &broker.url(&app, "secret"), |o| o).await;
    let r = anonymous.request(timeline.clone()).await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    as_bob
        .request(timeline)
        .await
        .expect("a signed-in reader runs it");

    // An admin's token may delete anyone's spew.
    let admin_token = token(&hs, hs256, "hs1", claims(&bob_id, &["admin"], 600));
    let as_admin = client(&env, &broker.url(&app, "secret"), |o| {
        o.with_auth(&admin_token)
    })
    .await;
    as_admin
        .request(req("spew", Op::Delete, Some(&spew_id), json!(null)))
        .await
        .expect("an admin deletes");
    let r = body_now(&admin, &spew_id).await;
    assert_eq!(code(&r), Some(ErrorCode::NotFound), "{r:?}");

    for c in [
        as_bob,
        as_ada,
        as_app_claiming,
        via_gateway,
        anonymous,
        as_admin,
        admin,
    ] {
        c.close().await.ok();
    }
    server.stop().await;
    drop(env);
    drop(broker);
}

/// Client B reusing client A's idempotency key on another record gets its own write
/// applied, not A's stored reply; and `security.default_access` rules templates that
/// declare none.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_caller() {
    let mut env = TestEnv::new("idem_scope");
    env.config.security.trusted_services = vec![env.login()];
    env.config.security.default_access = vec!["authenticated".into()];
    let server = env.start().await;
    let admin = env.client().await;
    let seeder = Client::connect(
        ClientOptions::from_config(&env.config, "tests").as_subject(Some("seeder"), &["admin"]),
    )
    .await
    .unwrap();
    let user = |handle: &str| {
        req(
            "user",
            Op::Create,
            None,
            json!({ "handle": handle, "display_name": handle }),
        )
    };
    let a = seeder.request(user("alice")).await.unwrap();
    let b = seeder.request(user("brian")).await.unwrap();
    let as_a = Client::connect(
        ClientOptions::from_config(&env.config, "tests").as_subject(a["id"].as_str(), &[]),
    )
    .await
    .unwrap();
    let as_b = Client::connect(
        ClientOptions::from_config(&env.config, "tests").as_subject(b["id"].as_str(), &[]),
    )
    .await
    .unwrap();
    let spew = |author: &Json, body: &str| {
        let mut r = req(
            "spew",
            Op::Create,
            None,
            json!({ "author": author, "body": body }),
        );
        r.idempotency_key = Some("same-key".into());
        r
    };
    let first = as_a.request(spew(&a["id"], "from alice")).await.unwrap();
    let again = as_a.request(spew(&a["id"], "from alice")).await.unwrap();
    assert_eq!(first["id"], again["id"], "A's replay is A's reply");
    let theirs = as_b.request(spew(&b["id"], "from brian")).await.unwrap();
    assert_ne!(theirs["id"], first["id"], "B's write is its own");
    assert_eq!(theirs["author"], b["id"]);
    assert_eq!(theirs["body"], "from brian");
    let fetched = as_b
        .request(req("spew", Op::Fetch, Some(&theirs["id"]), json!(null)))
        .await
        .expect("B's spew was applied");
    assert_eq!(fetched["body"], "from brian");

    // `default_access: [authenticated]`: `user` declares no fetch rule, so a caller
    // without a subject (the harness's guest, role admin only) is refused.
    let r = admin
        .request(req("user", Op::Fetch, Some(&a["id"]), json!(null)))
        .await;
    assert_eq!(code(&r), Some(ErrorCode::Forbidden), "{r:?}");
    for c in [admin, seeder, as_a, as_b] {
        c.close().await.ok();
    }
    server.stop().await;
}

/// `beds check` prints the effective rule of every operation and query.
#[test]
fn check_prints_the_effective_rules() {
    let out = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["--config"])
        .arg(crate::support::repo_config_path())
        .arg("check")
        .output()
        .expect("run beds check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "security: user_id required: no; trusted services: none; default access: public"
        ),
        "{text}"
    );
    let spew = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("spew "))
        .nth(1)
        .unwrap_or_default();
    assert_eq!(
        spew.trim(),
        "access create: owner, admin | fetch: public (default) | update: owner, admin | \
         delete: owner, admin | list: public (default) | history: public (default)  (owner \
         field `author`)",
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.contains("query home_timeline") && l.ends_with("access authenticated, admin")
        ),
        "{text}"
    );
}

/// A hand-written record: the derive's `owner` and `access(...)` have the same effect as
/// the YAML keys.
mod derived {
    use beds_runtime::support as rt;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct MemoId(pub uuid::Uuid);

    impl rt::Key for MemoId {}

    #[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
    #[beds(domain = "sectest", template = "memo", create = MemoInput, patch = MemoPatch,
           owner = "writer", access(fetch = "owner", update = "owner", delete = "owner, admin"),
           journal)]
    pub struct Memo {
        pub id: MemoId,
        pub version: i64,
        #[beds(string, max = 40)]
        pub writer: String,
        #[beds(string, max = 40)]
        pub text: String,
    }

    #[derive(Debug, Serialize)]
    pub struct MemoInput {
        pub writer: String,
        pub text: String,
    }

    #[derive(Debug, Default, Serialize)]
    pub struct MemoPatch {
        pub text: String,
    }

    static MEMO: rt::Routes = rt::Routes::of::<Memo>();
    static DOMAIN: rt::DomainMeta = rt::DomainMeta {
        name: "sectest",
        version: 1,
        templates: &[<Memo as rt::Record>::META],
        queries: &[],
    };
    pub static CATALOG: rt::Catalog = rt::Catalog {
        domains: &[&DOMAIN],
        route: |domain, template| match (domain, template) {
            ("sectest", "memo") => Ok(&MEMO),
            ("sectest", _) => Err(rt::RouteError::UnknownTemplate),
            _ => Err(rt::RouteError::UnknownDomain),
        },
    };
}

#[tokio::test]
async fn derived_access_rules_are_enforced() {
    use derived::{CATALOG, Memo, MemoInput, MemoPatch};
    let mut env = TestEnv::new("security_derive");
    env.config.security.trusted_services = vec![env.login()];
    let server = beds_runtime::Server::start(&env.config, &CATALOG)
        .await
        .expect("start");
    let options = || ClientOptions::from_config(&env.config, "tests");
    let (ann, ben) = (
        Client::connect(options().as_subject(Some("ann"), &[]))
            .await
            .unwrap(),
        Client::connect(options().as_subject(Some("ben"), &[]))
            .await
            .unwrap(),
    );
    let memo = ann
        .template::<Memo>()
        .create(&MemoInput {
            writer: "ann".into(),
            text: "ann's".into(),
        })
        .await
        .expect("create is public (no rule)");
    let patch = MemoPatch {
        text: "changed".into(),
    };
    let e = ben
        .template::<Memo>()
        .update(memo.id, &patch)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let mine = ann
        .template::<Memo>()
        .update(memo.id, &patch)
        .await
        .unwrap();
    assert_eq!(mine.text, "changed");
    // Fetch under `owner`: another's record and a missing one are refused alike.
    let e = ben.template::<Memo>().fetch(memo.id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let missing = derived::MemoId(uuid::Uuid::now_v7());
    let e = ben.template::<Memo>().fetch(missing).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let e = ben.template::<Memo>().delete(memo.id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let own = ann.template::<Memo>().fetch(memo.id).await.unwrap();
    assert_eq!(
        own.text, "changed",
        "still there, unchanged by the refused delete"
    );
    // History is read like the record: its owner sees every version, another is refused.
    let versions = ann
        .template::<Memo>()
        .history(memo.id, None, None)
        .await
        .expect("the owner reads the history");
    assert_eq!(versions.items.len(), 2, "create and update");
    let e = ben
        .template::<Memo>()
        .history(memo.id, None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    // No `list` rule: a page is under `fetch`'s rule without `owner`, here nobody; the
    // default (public) would have shown ann's memo to ben.
    for c in [&ben, &ann] {
        let e = c.template::<Memo>().list(None, None).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
        assert!(e.to_string().contains("declare a `list` rule"), "{e}");
    }
    for c in [ann, ben] {
        c.close().await.ok();
    }
    server.stop().await;
}
