//! DBA-owned schema migrations (wiki/migrations.md): a node refuses a database that does
//! not match its declarations and names the way out; `beds schema diff` writes the
//! migration, `beds schema apply` applies and records it; destructive changes need a flag;
//! an applied file is never applied twice. On the database `BEDS_TEST_DATABASE` names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use beds::spew::{self, UserCreate};
use beds_runtime::{Config, Server};

use crate::support::{Rows, TestEnv, repo_config_path};

/// Runs the `beds` binary on the test's database, with the test overlay.
fn beds(env: &TestEnv, args: &[&str]) -> Output {
    let db = &env.config.database;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_DATABASE__DATA_DIR", &db.data_dir)
        .env(
            "BEDS_DATABASE__DRIVER",
            format!("{:?}", db.driver).to_lowercase(),
        );
    if let Some(url) = &db.url {
        cmd.env("BEDS_DATABASE__URL", url);
    }
    cmd.output().expect("run beds")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn exec(rows: &Rows, statements: &[String]) {
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s.clone()))
            .execute(rows.pool())
            .await
            .unwrap_or_else(|e| panic!("`{s}`: {e}"));
    }
}

/// The reason a node refuses to start.
async fn refusal(config: &Config) -> String {
    match Server::start(config, &beds::CATALOG).await {
        Ok(server) => {
            server.stop().await;
            panic!("the node started on a database that does not match its declarations")
        }
        Err(e) => e.to_string(),
    }
}

/// The one migration file in `dir`.
fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the migrations directory exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one file written: {files:?}");
    files.into_iter().next().unwrap()
}

/// A database at the declarations' older shape: the users' `bio` field and the spews'
/// `(author, created_at)` index not yet declared. The node refuses it, naming both and the
/// commands; the diff adds exactly those; once applied the node serves the new field.
#[tokio::test]
async fn adding_a_field_and_an_index_diff_apply_serve() {
    let env = TestEnv::matrix("mig_add");
    env.start().await.stop().await;
    let rows = env.rows().await;
    let q = |s: &str| rows.quote(s);
    let drop_index = match env.config.database.driver {
        beds_runtime::config::Driver::Mariadb => format!(
            "DROP INDEX {} ON {}",
            q("spw_spews_author_spw_created_at_spw_idx"),
            q("spw_spews")
        ),
        _ => format!(
            "DROP INDEX {}",
            q("spw_spews_author_spw_created_at_spw_idx")
        ),
    };
    exec(
        &rows,
        &[
            drop_index,
            format!(
                "ALTER TABLE {} DROP COLUMN {}",
                q("spw_users"),
                q("bio_usr")
            ),
        ],
    )
    .await;

    let refused = refusal(&env.config).await;
    assert!(
        refused.contains("missing column spw_users.bio_usr")
            && refused.contains("missing index spw_spews_author_spw_created_at_spw_idx")
            && refused.contains("run `beds schema diff`"),
        "{refused}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let diff = beds(&env, &["schema", "diff", "--out", out]);
    assert!(diff.status.success(), "{}", text(&diff.stderr));
    let file = only_file(dir.path());
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let tag = format!("{:?}", env.config.database.driver).to_lowercase();
    assert_eq!(
        name,
        format!("0001_index_spw_spews_author_spw_created_at_spw_idx_and_1_more.{tag}.sql")
    );
    let sql = std::fs::read_to_string(&file).unwrap();
    assert!(
        sql.contains(&format!(
            "ALTER TABLE {} ADD COLUMN {}",
            q("spw_users"),
            q("bio_usr")
        )) && sql.contains(&format!(
            "INDEX IF NOT EXISTS {} ON",
            q("spw_spews_author_spw_created_at_spw_idx")
        )) && sql.contains("-- Fingerprint: ")
            && !sql.contains("WARNING"),
        "{sql}"
    );
    assert!(
        text(&diff.stdout).contains("2 differences"),
        "{}",
        text(&diff.stdout)
    );

    // With the reviewed file in the node's migrations directory, the refusal names it.
    let mut pending = env.config.clone();
    pending.database.migrations_dir = dir.path().to_path_buf();
    let refused = refusal(&pending).await;
    assert!(
        refused.contains(&format!("`beds schema apply {}`", file.display())),
        "{refused}"
    );

    let apply = beds(&env, &["schema", "apply", file.to_str().unwrap()]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    assert_eq!(
        rows.total("beds_schema_history").await,
        1,
        "the apply is recorded"
    );
    let recorded: (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {}, {} FROM {}",
        q("file_name"),
        q("outcome"),
        q("beds_schema_history")
    )))
    .fetch_one(rows.pool())
    .await
    .unwrap();
    assert_eq!(recorded, (name.clone(), "applied".to_string()));

    let nothing = beds(&env, &["schema", "diff", "--out", out]);
    assert!(
        text(&nothing.stdout).contains("nothing to migrate, no file written"),
        "{}",
        text(&nothing.stdout)
    );
    only_file(dir.path());

    let server = env.start().await;
    let client = env.client().await;
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "migrated".into(),
            display_name: "M".into(),
            bio: Some("added by a migration".into()),
        })
        .await
        .expect("the node serves the new field");
    let fetched = spew::client(&client).user().fetch(user.id).await.unwrap();
    assert_eq!(fetched.bio.as_deref(), Some("added by a migration"));
    client.close().await.unwrap();
    server.stop().await;

    // The same file again: refused, nothing run.
    let again = beds(&env, &["schema", "apply", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("was already applied at"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(rows.total("beds_schema_history").await, 1);
}

/// A column the declarations do not have: the node refuses to start, `beds schema diff`
/// refuses to write its drop without `--allow-destructive` and writes it, marked, with it;
/// applied, the node starts. A file generated from other declarations is refused without
/// `--force`.
#[tokio::test]
async fn a_destructive_change_needs_the_flag() {
    let env = TestEnv::matrix("mig_drop");
    env.start().await.stop().await;
    let rows = env.rows().await;
    let q = |s: &str| rows.quote(s);
    exec(
        &rows,
        &[format!(
            "ALTER TABLE {} ADD COLUMN {} TEXT",
            q("spw_users"),
            q("legacy_usr")
        )],
    )
    .await;
    let refused = refusal(&env.config).await;
    assert!(
        refused.contains("column spw_users.legacy_usr is not declared (drop)"),
        "{refused}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let refused = beds(&env, &["schema", "diff", "--out", out]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("destructive changes")
            && stderr.contains("column spw_users.legacy_usr is not declared (drop)")
            && stderr.contains("--allow-destructive"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).map_or(0, |d| d.count()),
        0,
        "nothing written"
    );

    let written = beds(
        &env,
        &["schema", "diff", "--out", out, "--allow-destructive"],
    );
    assert!(written.status.success(), "{}", text(&written.stderr));
    assert!(
        text(&written.stderr).contains("warning: the migration destroys data in 1 statements"),
        "{}",
        text(&written.stderr)
    );
    let file = only_file(dir.path());
    let sql = std::fs::read_to_string(&file).unwrap();
    assert!(
        sql.contains(&format!(
            "-- WARNING: destroys data: column spw_users.legacy_usr is not declared (drop)\nALTER TABLE {} DROP COLUMN {};",
            q("spw_users"),
            q("legacy_usr")
        )),
        "{sql}"
    );

    // Generated from other declarations: refused unless forced.
    let other = dir.path().join("0002_other.sql");
    let fingerprint = sql
        .lines()
        .find_map(|l| l.strip_prefix("-- Fingerprint: "))
        .unwrap();
    std::fs::write(&other, sql.replace(fingerprint, "0000000000000000")).unwrap();
    let mismatch = beds(&env, &["schema", "apply", other.to_str().unwrap()]);
    assert!(
        !mismatch.status.success()
            && text(&mismatch.stderr)
                .contains("brings the database to declaration fingerprint 0000000000000000")
            && text(&mismatch.stderr).contains("--force"),
        "{}",
        text(&mismatch.stderr)
    );

    let apply = beds(&env, &["schema", "apply", file.to_str().unwrap()]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    env.start().await.stop().await;
}

/// `beds check` against a recorded contract: as recorded; a widened field is a change
/// without a new version (a warning); a field the recorded version had, removed, breaks
/// its clients and fails the check.
#[test]
fn beds_check_reports_breaking_changes_against_the_recorded_contract() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_beds"))
            .args(["check", "--domains"])
            .arg(dir.path())
            .args(extra)
            .arg("--config")
            .arg(repo_config_path())
            .env("BEDS_ENV", "test")
            .output()
            .expect("run beds check")
    };
    let first = check(&[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("first version (no "));
    assert!(check(&["--record"]).status.success());
    let file = dir.path().join("spew.fingerprint.json");
    let recorded = check(&[]);
    assert!(
        text(&recorded.stdout).contains(" as recorded"),
        "{}",
        text(&recorded.stdout)
    );

    let mut contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let handle = &mut contract["templates"]["user"]["fields"]["handle"];
    let max = handle["max"].as_f64().unwrap();
    handle["max"] = serde_json::json!(max - 1.0);
    std::fs::write(&file, contract.to_string()).unwrap();
    let widened = check(&[]);
    assert!(widened.status.success(), "{}", text(&widened.stderr));
    assert!(
        text(&widened.stderr).contains("changed but its version is still"),
        "{}",
        text(&widened.stderr)
    );

    contract["templates"]["user"]["fields"]["nickname"] =
        serde_json::json!({ "type": "string", "required": false, "max": 20 });
    std::fs::write(&file, contract.to_string()).unwrap();
    let broken = check(&[]);
    assert!(!broken.status.success());
    assert!(
        text(&broken.stdout).contains("breaking: field user.nickname was removed"),
        "{}",
        text(&broken.stdout)
    );
    assert!(
        text(&broken.stderr).contains("breaks clients of its recorded version"),
        "{}",
        text(&broken.stderr)
    );
}

/// Three nodes starting at once on a fresh database in `create` mode: each compares while
/// another may be creating, and all of them start.
#[tokio::test]
async fn nodes_starting_together_on_a_fresh_database_all_start() {
    let env = TestEnv::matrix("mig_together");
    let configs: Vec<Config> = (0..3)
        .map(|i| {
            let mut c = env.config.clone();
            c.node = format!("{}-{i}", c.node);
            c
        })
        .collect();
    let started =
        futures_util::future::join_all(configs.iter().map(|c| Server::start(c, &beds::CATALOG)))
            .await;
    for server in started {
        match server {
            Ok(s) => s.stop().await,
            Err(e) => panic!("a node refused the database others were creating: {e}"),
        }
    }
}
