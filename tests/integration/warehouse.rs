//! Moved records stay reachable (wiki/retention.md, "Reading moved records"), on the
//! database `BEDS_TEST_DATABASE` names: a fetch of a moved key answers `moved` with its tier;
//! the same request with `"tier": "warehouse"`, sent to `rec.read` like any client's, is
//! answered by a segundo node from COOL (the warehouse database) or COLD (gzip JSON Lines
//! through the warehouse's index); access rules apply there too; a query declaring
//! `tiers: [hot, warehouse]` pages through both tiers merged, and one that does not is
//! refused. The records are placed in the tiers by hand, as the storage contract lays them
//! out (the mover is tested on its own).

use std::io::Write as _;

use beds::spew::{self, Spew, SpewCreate, User, UserCreate, UserTimelineParams};
use beds_runtime::config::Driver;
use beds_runtime::{Client, ReadOptions, Record, Role, Server};
use serde_json::{Value as Json, json};

use crate::support::{Rows, TestEnv, envelope};

/// A test environment with a warehouse; only the harness's own service (`guest`, an admin
/// and trusted to assert end users here) may read, so an asserted end user is refused.
fn env(name: &str) -> TestEnv {
    let mut env = TestEnv::matrix(name).with_warehouse();
    env.config.security.trusted_services = vec!["guest".into()];
    env.config.security.default_access = vec!["admin".into()];
    env
}

pub(crate) async fn segundo(env: &TestEnv, catalog: &'static beds_runtime::Catalog) -> Server {
    let mut config = env.config.clone();
    config.role = Role::Segundo;
    config.node = format!("{}-segundo", config.node);
    Server::start(&config, catalog)
        .await
        .unwrap_or_else(|e| panic!("the test's segundo node starts: {e}"))
}

async fn user(client: &Client, handle: &str) -> User {
    spew::client(client)
        .user()
        .create(&UserCreate {
            handle: handle.into(),
            display_name: handle.into(),
            bio: None,
        })
        .await
        .unwrap()
}

async fn post(client: &Client, author: &User, body: &str) -> Spew {
    spew::client(client)
        .spew()
        .create(&SpewCreate {
            author: author.id,
            body: body.into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap()
}

/// A row's id as the wire shows it.
fn id_of(record: &impl serde::Serialize) -> String {
    serde_json::to_value(record).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `?` or `$n`, as the dialect numbers placeholders.
fn mark(rows: &Rows, n: usize) -> String {
    match rows.driver() {
        Driver::Postgres => format!("${n}"),
        _ => "?".into(),
    }
}

/// The columns of `table`, in order.
async fn columns(rows: &Rows, table: &str) -> Vec<String> {
    let sql = match rows.driver() {
        Driver::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
        Driver::Postgres => format!(
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
        ),
        Driver::Mariadb => format!(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ordinal_position"
        ),
    };
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(rows.pool())
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
}

/// Copies the row of `T` with id `id` from `from` to `to` verbatim (every column as text,
/// written back as literals, which every dialect converts to the column's type), as the
/// mover copies a record to COOL.
async fn copy_row<T: Record>(from: &Rows, to: &Rows, id: &str) {
    let meta = T::META;
    let cols = columns(from, meta.table).await;
    let select: Vec<String> = cols.iter().map(|c| from.as_text(&from.quote(c))).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = {}",
        select.join(", "),
        from.quote(meta.table),
        from.as_text(&from.quote(meta.id_column)),
        mark(from, 1)
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id.to_string())
        .fetch_one(from.pool())
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    let values: Vec<String> = (0..cols.len())
        .map(
            |i| match sqlx::Row::try_get::<Option<String>, _>(&row, i).unwrap() {
                Some(v) => format!("'{}'", v.replace('\'', "''")),
                None => "NULL".into(),
            },
        )
        .collect();
    let quoted: Vec<String> = cols.iter().map(|c| to.quote(c)).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        to.quote(meta.table),
        quoted.join(", "),
        values.join(", ")
    );
    execute(to, &sql, &[]).await;
}

/// Runs `sql` with text `binds`, panicking with the statement if it fails.
async fn execute(rows: &Rows, sql: &str, binds: &[&str]) {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for b in binds {
        q = q.bind(b.to_string());
    }
    q.execute(rows.pool())
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
}

/// Records the tombstone of `template` (`domain.template`) `key`, moved to `tier`.
async fn tombstone(hot: &Rows, template: &str, key: &str, tier: &str) {
    let sql = format!(
        "INSERT INTO {} ({}, {}, {}, {}) VALUES ({}, {}, {}, '2026-11-28T00:00:00.000000Z')",
        hot.quote("beds_moved"),
        hot.quote("template"),
        hot.quote("record_key"),
        hot.quote("tier"),
        hot.quote("moved_at"),
        mark(hot, 1),
        mark(hot, 2),
        mark(hot, 3)
    );
    execute(hot, &sql, &[template, key, tier]).await;
}

/// Removes a spew from the serving database, leaving its tombstone for `tier`.
async fn leave_hot(hot: &Rows, id: &str, tier: &str) {
    let meta = Spew::META;
    let delete = format!(
        "DELETE FROM {} WHERE {} = {}",
        hot.quote(meta.table),
        hot.as_text(&hot.quote(meta.id_column)),
        mark(hot, 1)
    );
    execute(hot, &delete, &[id]).await;
    tombstone(hot, "spew.spew", id, tier).await;
}

/// Moves a spew to COOL: its author (once) and itself copied to the warehouse, its row
/// in the serving database replaced by a tombstone.
async fn to_cool(env: &TestEnv, author: Option<&str>, id: &str) {
    let (hot, cool) = (env.rows().await, env.warehouse_rows().await);
    if let Some(author) = author {
        copy_row::<User>(&hot, &cool, author).await;
    }
    copy_row::<Spew>(&hot, &cool, id).await;
    leave_hot(&hot, id, "warehouse").await;
}

/// Moves a spew to COLD: `record` (its wire JSON) written as line 2 of a gzip JSON Lines
/// file under the COLD directory, indexed in the warehouse, and tombstoned.
pub(crate) async fn to_cold(env: &TestEnv, id: &str, record: &Json) {
    let relative = "spew/spew/0001.jsonl.gz";
    let path = env.config.segundo.cold_dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    writeln!(gz, "{}", json!({"id": "another record", "body": "line 1"})).unwrap();
    writeln!(gz, "{record}").unwrap();
    gz.finish().unwrap().sync_all().unwrap();
    let cool = env.warehouse_rows().await;
    let sql = format!(
        "INSERT INTO {} ({}, {}, {}, {}) VALUES ('spew.spew', {}, {}, 2)",
        cool.quote("beds_cold_index"),
        cool.quote("template"),
        cool.quote("record_key"),
        cool.quote("file"),
        cool.quote("line"),
        mark(&cool, 1),
        mark(&cool, 2)
    );
    execute(&cool, &sql, &[id, relative]).await;
    leave_hot(&env.rows().await, id, "cold").await;
}

/// `fields` with the members of `extra` added (replacing any of the same name).
fn merged(mut fields: Json, extra: Json) -> Json {
    if let (Json::Object(f), Json::Object(extra)) = (&mut fields, extra) {
        f.extend(extra);
    }
    fields
}

fn fetch(id: &str, extra: Json) -> Vec<u8> {
    envelope("spew", "fetch", merged(json!({"key": {"id": id}}), extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_records_answer_moved_and_are_read_from_cool_and_cold() {
    let env = env("wh_fetch");
    let app = env.start().await;
    let segundo = segundo(&env, &beds::CATALOG).await;
    let client = env.client().await;
    let ada = user(&client, "ada").await;
    let (cool, cold, hot) = (
        post(&client, &ada, "to the warehouse").await,
        post(&client, &ada, "to the cold files").await,
        post(&client, &ada, "still hot").await,
    );
    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let (cool_id, cold_id) = (id_of(&cool), id_of(&cold));
    let as_was = |reply: &Json| reply["data"].clone();
    let cool_json = as_was(&raw.request(&read, &fetch(&cool_id, json!({}))).await);
    let cold_json = as_was(&raw.request(&read, &fetch(&cold_id, json!({}))).await);
    to_cool(&env, Some(&id_of(&ada)), &cool_id).await;
    to_cold(&env, &cold_id, &cold_json).await;

    // A fetch of a moved key says where it went and how to read it.
    for (id, tier) in [(&cool_id, "warehouse"), (&cold_id, "cold")] {
        let reply = raw.request(&read, &fetch(id, json!({}))).await;
        assert_eq!(reply["status"], "error", "{reply}");
        let error = &reply["error"];
        assert_eq!(error["code"], "moved", "{reply}");
        assert_eq!(error["class"], "not_found", "{reply}");
        assert_eq!(error["tier"], tier, "{reply}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("moved to the {tier} tier"))
                && message.contains(r#""tier": "warehouse""#),
            "{message}"
        );
    }

    // The same request with `tier: warehouse`, to the same routing key, is answered by
    // segundo: from COOL, then from COLD, each saying which.
    let segundo_node = format!("{}-segundo", env.config.node);
    for (id, tier, record) in [
        (&cool_id, "warehouse", &cool_json),
        (&cold_id, "cold", &cold_json),
    ] {
        let reply = raw
            .request(&read, &fetch(id, json!({"tier": "warehouse"})))
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(&reply["data"], record, "the record as it was served hot");
        assert_eq!(reply["tier"], tier, "{reply}");
        assert_eq!(reply["origin"]["node"], segundo_node.as_str(), "{reply}");
        assert_eq!(reply["depth"], 1, "{reply}");
    }

    // A record still hot is not in the warehouse; a key that never existed is nowhere.
    let never = uuid::Uuid::now_v7().to_string();
    for id in [&id_of(&hot), &never] {
        let reply = raw
            .request(&read, &fetch(id, json!({"tier": "warehouse"})))
            .await;
        assert_eq!(reply["error"]["code"], "not_found", "{reply}");
    }
    let reply = raw.request(&read, &fetch(&never, json!({}))).await;
    assert_eq!(reply["error"]["code"], "not_found", "{reply}");
    assert!(reply["error"].get("tier").is_none(), "{reply}");

    // The access rules apply in the warehouse: an end user who may not read is refused
    // (identified through the forwarded caller, a trusted service asserting them).
    let reply = raw
        .request(
            &read,
            &fetch(
                &cool_id,
                json!({"tier": "warehouse", "subject": "someone", "roles": []}),
            ),
        )
        .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");

    // What the warehouse does not serve is refused, saying what it does; an operation that
    // takes no `tier` refuses the field, wherever it is sent.
    let reply = raw
        .request(
            &read,
            &fetch(&cool_id, json!({"tier": "warehouse", "as_of": 1})),
        )
        .await;
    assert_eq!(reply["error"]["code"], "operation_not_allowed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not `fetch` with `as_of`"),
        "{reply}"
    );
    for (key, op) in [("rec.read", "list"), ("rec.write", "create")] {
        let reply = raw
            .request(
                &env.queue(key),
                &envelope("spew", op, json!({"tier": "warehouse"})),
            )
            .await;
        assert_eq!(reply["error"]["code"], "invalid_envelope", "{op}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{op}` does not take `tier`")),
            "{reply}"
        );
    }

    // The typed client reads the warehouse straight from segundo's queue.
    let typed = spew::client(&client)
        .spew()
        .fetch_with(cool.id, ReadOptions::warehouse())
        .await
        .unwrap();
    assert_eq!(typed.body, "to the warehouse");

    segundo.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_declaring_the_warehouse_pages_through_both_tiers_merged() {
    let env = env("wh_query");
    let app = env.start().await;
    let segundo = segundo(&env, &beds::CATALOG).await;
    let client = env.client().await;
    let ada = user(&client, "ada").await;
    let mut posted = Vec::new();
    for i in 1..=5 {
        posted.push(id_of(&post(&client, &ada, &format!("spew {i}")).await));
    }
    // 2 and 4 moved to COOL; 3 is mid-move, in both tiers.
    to_cool(&env, Some(&id_of(&ada)), &posted[1]).await;
    to_cool(&env, None, &posted[3]).await;
    copy_row::<Spew>(&env.rows().await, &env.warehouse_rows().await, &posted[2]).await;

    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let timeline = |extra: Json| {
        let fields = json!({"query": "user_timeline", "params": {"author": id_of(&ada)}});
        envelope("", "query", merged(fields, extra))
    };
    let ids = |reply: &Json| -> Vec<String> {
        reply["data"]["items"]
            .as_array()
            .unwrap_or_else(|| panic!("a page: {reply}"))
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let newest_first =
        |which: &[usize]| -> Vec<String> { which.iter().map(|i| posted[*i - 1].clone()).collect() };

    // Hot only, as before.
    let reply = raw.request(&read, &timeline(json!({}))).await;
    assert_eq!(ids(&reply), newest_first(&[5, 3, 1]), "{reply}");

    // Both tiers, merged newest first across two pages, the record in both once.
    let first = raw
        .request(&read, &timeline(json!({"tier": "warehouse", "limit": 3})))
        .await;
    assert_eq!(ids(&first), newest_first(&[5, 4, 3]), "{first}");
    let cursor = first["data"]["next"].clone();
    assert!(cursor.is_array(), "{first}");
    let second = raw
        .request(
            &read,
            &timeline(json!({"tier": "warehouse", "limit": 3, "cursor": cursor})),
        )
        .await;
    assert_eq!(ids(&second), newest_first(&[2, 1]), "{second}");
    assert_eq!(second["data"]["next"], Json::Null, "{second}");

    // The typed client asks for the same merge.
    let page = spew::client(&client)
        .user_timeline()
        .page_with_warehouse(
            &UserTimelineParams {
                author: ada.id,
                before: None,
            },
            Some(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(id_of).collect::<Vec<_>>(),
        newest_first(&[5, 4, 3, 2, 1])
    );

    // A query that does not declare the warehouse is refused with the tier named.
    let reply = raw
        .request(
            &read,
            &envelope(
                "",
                "query",
                json!({"query": "thread", "params": {"spew": posted[0]}, "tier": "warehouse"}),
            ),
        )
        .await;
    assert_eq!(reply["error"]["code"], "operation_not_allowed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query `thread` does not include the warehouse"),
        "{reply}"
    );

    segundo.stop().await;
    app.stop().await;
}

/// Generic over every compiled domain (the fixture domains too, in the gate): a tombstoned
/// key of every template answers `moved` naming its tier, and the warehouse, which holds
/// no such record, answers `not_found` through a segundo node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_answers_moved_for_a_tombstoned_key() {
    let env = TestEnv::matrix("wh_every").with_warehouse();
    let app = env.start().await;
    let segundo = segundo(&env, &beds::CATALOG).await;
    let hot = env.rows().await;
    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let templates = beds::CATALOG
        .domains
        .iter()
        .flat_map(|d| d.templates)
        .filter(|t| !t.internal);
    for (i, t) in templates.enumerate() {
        let (key, wire): (String, Json) = match t.id {
            beds_runtime::support::IdKind::Uuid7 => {
                let id = uuid::Uuid::now_v7().to_string();
                (id.clone(), json!(id))
            }
            beds_runtime::support::IdKind::Sequence => {
                let id = 900_000_000_000_i64 + i as i64;
                (id.to_string(), json!(id))
            }
        };
        let tier = if i % 2 == 0 { "warehouse" } else { "cold" };
        let name = format!("{}.{}", t.domain, t.name);
        tombstone(&hot, &name, &key, tier).await;
        let request = |extra: Json| {
            let req = json!({
                "v": 1, "id": uuid::Uuid::now_v7(), "domain": t.domain,
                "template": t.name, "op": "fetch", "key": {"id": wire},
                "consistency": "strong",
            });
            serde_json::to_vec(&merged(req, extra)).unwrap()
        };
        let reply = raw.request(&read, &request(json!({}))).await;
        assert_eq!(reply["error"]["code"], "moved", "{name}: {reply}");
        assert_eq!(reply["error"]["tier"], tier, "{name}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{}`", t.name)),
            "{name}: {reply}"
        );
        let reply = raw
            .request(&read, &request(json!({"tier": "warehouse"})))
            .await;
        assert_eq!(reply["error"]["code"], "not_found", "{name}: {reply}");
    }
    segundo.stop().await;
    app.stop().await;
}
