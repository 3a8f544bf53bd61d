//! Migration files: the SQL that resolves a list of differences (`plan`), written for
//! review (`write`), applied and recorded in the history table (`apply`), and found again
//! when a node refuses to start (`pending`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Change, HISTORY_TABLE, MigrateError, file_tag, fingerprint, hex};
use crate::config::Driver;
use crate::meta::{DefaultValue, DomainMeta};
use crate::store::Store;
use crate::store::dialect::Dialect;
use crate::store::schema::{declared_column, history_table};

/// One statement of a migration and why it is there.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    pub sql: String,
    pub destructive: bool,
}

/// The statements that bring a database to the declarations' fingerprint.
#[derive(Debug)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub steps: Vec<Step>,
    /// The declaration fingerprint the plan brings the database to.
    pub fingerprint: String,
    driver: Driver,
    dialect: &'static str,
}

/// Where in a file a change's statements go: drops first (SQLite cannot drop an indexed
/// column), new tables in the DDL's reference order, columns before the indexes on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    DropIndex,
    DropColumn,
    DropTable,
    CreateTable,
    AddColumn,
    Retype,
    CreateIndex,
}

/// The SQL for `changes` in the dialect of `store`. Destructive changes need
/// `allow_destructive`; differences without generated SQL (a changed constraint, a retype
/// on SQLite) are refused with the list.
pub fn plan(
    store: &Store,
    domains: &[&'static DomainMeta],
    ddl: &[String],
    changes: Vec<Change>,
    allow_destructive: bool,
) -> Result<Plan, MigrateError> {
    let d = store.dialect;
    let destructive: Vec<String> = changes
        .iter()
        .filter(|c| c.destructive())
        .map(|c| c.to_string())
        .collect();
    if !destructive.is_empty() && !allow_destructive {
        return Err(MigrateError::Destructive(destructive));
    }
    let q = |s: &str| d.quote(s);
    let mut steps: Vec<(Phase, Step)> = Vec::new();
    let mut manual = Vec::new();
    let step = |what: &Change, sql: String| Step {
        what: what.to_string(),
        sql,
        destructive: what.destructive(),
    };
    let new_tables: BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::NewTable(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    for statement in ddl {
        if let Some(table) = new_tables.iter().find(|t| belongs(d, statement, t)) {
            let what = if statement.starts_with("CREATE TABLE") {
                format!("missing table {table}")
            } else {
                format!("part of the missing table {table}")
            };
            steps.push((
                Phase::CreateTable,
                Step {
                    what,
                    sql: statement.clone(),
                    destructive: false,
                },
            ));
        }
    }
    for change in &changes {
        match change {
            Change::NewTable(_) => {}
            Change::NewColumn { table, column } => {
                let (def, default) = match declared_column(d, domains, table, &column.name) {
                    Some((field, def)) => (def, field.default.map(|v| literal(d.driver(), v))),
                    None => (
                        format!("{} {column}", q(&column.name)),
                        column.default.clone(),
                    ),
                };
                let def = match default {
                    Some(value) => format!("{def} DEFAULT {value}"),
                    None if column.not_null => {
                        return Err(MigrateError::RequiredColumn {
                            table: table.clone(),
                            column: column.name.clone(),
                        });
                    }
                    None => def,
                };
                steps.push((
                    Phase::AddColumn,
                    step(change, format!("ALTER TABLE {} ADD COLUMN {def}", q(table))),
                ));
            }
            Change::NewIndex { name, .. } => match creating_index(d, ddl, name) {
                Some(sql) => steps.push((Phase::CreateIndex, step(change, sql))),
                None => manual.push(format!("{change}: no declared statement creates it")),
            },
            Change::ChangedIndex { table, name, .. } => match creating_index(d, ddl, name) {
                Some(sql) => {
                    steps.push((Phase::DropIndex, step(change, drop_index(d, table, name))));
                    steps.push((Phase::CreateIndex, step(change, sql)));
                }
                None => manual.push(format!("{change}: no declared statement creates it")),
            },
            Change::DroppedIndex { table, name } => {
                steps.push((Phase::DropIndex, step(change, drop_index(d, table, name))))
            }
            Change::DroppedColumn { table, column } => steps.push((
                Phase::DropColumn,
                step(
                    change,
                    format!("ALTER TABLE {} DROP COLUMN {}", q(table), q(column)),
                ),
            )),
            Change::DroppedTable(table) => steps.push((
                Phase::DropTable,
                step(change, format!("DROP TABLE {}", q(table))),
            )),
            Change::Retyped {
                table,
                live,
                declared,
            } => match retype(d, table, live, declared) {
                Ok(sqls) => {
                    steps.extend(sqls.into_iter().map(|s| (Phase::Retype, step(change, s))))
                }
                Err(why) => manual.push(format!("{change}: {why}")),
            },
            Change::NewConstraint { .. } | Change::DroppedConstraint { .. } => {
                manual.push(format!("{change}: constraints are not altered in place"))
            }
        }
    }
    if !manual.is_empty() {
        return Err(MigrateError::Manual(manual));
    }
    steps.sort_by_key(|(phase, _)| *phase);
    Ok(Plan {
        changes,
        steps: steps.into_iter().map(|(_, s)| s).collect(),
        fingerprint: fingerprint(ddl),
        driver: d.driver(),
        dialect: d.name(),
    })
}

/// Whether a DDL statement creates `table` or something of it (an index, the row of a
/// one-row table).
fn belongs(d: &dyn Dialect, statement: &str, table: &str) -> bool {
    let quoted = d.quote(table);
    if statement.starts_with("CREATE TABLE") {
        statement.starts_with(&format!("CREATE TABLE IF NOT EXISTS {quoted} "))
    } else {
        statement.contains(&quoted)
    }
}

fn creating_index(d: &dyn Dialect, ddl: &[String], name: &str) -> Option<String> {
    let marker = format!("INDEX IF NOT EXISTS {} ON ", d.quote(name));
    ddl.iter().find(|s| s.contains(&marker)).cloned()
}

fn drop_index(d: &dyn Dialect, table: &str, name: &str) -> String {
    match d.driver() {
        Driver::Mariadb => format!("DROP INDEX {} ON {}", d.quote(name), d.quote(table)),
        _ => format!("DROP INDEX {}", d.quote(name)),
    }
}

/// The statements changing a column's type and nullability in place.
fn retype(
    d: &dyn Dialect,
    table: &str,
    live: &super::Column,
    declared: &super::Column,
) -> Result<Vec<String>, &'static str> {
    let (t, c) = (d.quote(table), d.quote(&declared.name));
    match d.driver() {
        Driver::Sqlite => Err(
            "SQLite cannot change a column's type or nullability in place; rebuild the table (export it with `beds mig export`, drop it, let the node create it, import)",
        ),
        Driver::Postgres
            if declared.ty.ends_with(" identity") || live.ty.ends_with(" identity") =>
        {
            Err("identity columns are not retyped in place")
        }
        Driver::Postgres => {
            let mut out = Vec::new();
            if live.ty != declared.ty {
                out.push(format!(
                    "ALTER TABLE {t} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}",
                    ty = declared.ty
                ));
            }
            if live.not_null != declared.not_null {
                let set = if declared.not_null { "SET" } else { "DROP" };
                out.push(format!("ALTER TABLE {t} ALTER COLUMN {c} {set} NOT NULL"));
            }
            Ok(out)
        }
        Driver::Mariadb => Ok(vec![format!(
            "ALTER TABLE {t} MODIFY COLUMN {c} {declared}"
        )]),
    }
}

/// A declared default as an SQL literal.
fn literal(driver: Driver, v: DefaultValue) -> String {
    match v {
        DefaultValue::Bool(b) if driver == Driver::Postgres => b.to_string().to_uppercase(),
        DefaultValue::Bool(b) => u8::from(b).to_string(),
        DefaultValue::Int(i) => i.to_string(),
        DefaultValue::Float(f) => f.to_string(),
        DefaultValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

/// A migration file written by [`write`].
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub destructive: usize,
}

const HEADER_DIALECT: &str = "Dialect";
const HEADER_FINGERPRINT: &str = "Fingerprint";

/// Writes `plan` to `dir` as `NNNN_<summary>.<dialect>.sql`, numbered after the
/// dialect's files already there.
pub fn write(plan: &Plan, dir: &Path) -> Result<Written, MigrateError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create the directory", dir))?;
    let tag = file_tag(plan.driver);
    let suffix = format!(".{tag}.sql");
    let mut last = 0u32;
    for entry in std::fs::read_dir(dir).map_err(io("read the directory", dir))? {
        let name = entry
            .map_err(io("read the directory", dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(&suffix)
            && let Some(n) = name.split('_').next().and_then(|n| n.parse::<u32>().ok())
        {
            last = last.max(n);
        }
    }
    let name = format!("{:04}_{}", last + 1, summary(&plan.changes));
    let path = dir.join(format!("{name}{suffix}"));
    let transactional = match plan.driver {
        Driver::Mariadb => {
            "no: MariaDB commits each DDL statement; a failure leaves the statements before it applied, recorded as `partial`, and a new apply resumes after them"
        }
        _ => "yes: `beds schema apply` runs every statement and the history row in one transaction",
    };
    let mut text = format!(
        "-- BEDS schema migration {name}\n\
         -- {HEADER_DIALECT}: {}\n\
         -- {HEADER_FINGERPRINT}: {}\n\
         -- (the declaration fingerprint this file brings the database to)\n\
         -- Generated by: beds {} at {}\n\
         -- Transactional: {transactional}\n\
         -- What it does:\n",
        plan.dialect,
        plan.fingerprint,
        env!("CARGO_PKG_VERSION"),
        crate::value::format_timestamp(&chrono::Utc::now()),
    );
    for change in &plan.changes {
        text.push_str(&format!("--   - {change}\n"));
    }
    text.push_str(&format!(
        "-- Review it, then run: beds schema apply {}\n",
        path.display()
    ));
    for step in &plan.steps {
        text.push('\n');
        if step.destructive {
            text.push_str(&format!("-- WARNING: destroys data: {}\n", step.what));
        } else {
            text.push_str(&format!("-- {}\n", step.what));
        }
        text.push_str(&step.sql);
        text.push_str(";\n");
    }
    std::fs::write(&path, text).map_err(io("write", &path))?;
    Ok(Written {
        destructive: plan.steps.iter().filter(|s| s.destructive).count(),
        path,
    })
}

/// A short file name from the first change: `add_spw_users_bio_usr_and_2_more`.
fn summary(changes: &[Change]) -> String {
    let first = match &changes[0] {
        Change::NewTable(t) => format!("create_{t}"),
        Change::NewColumn { table, column } => format!("add_{table}_{}", column.name),
        Change::NewIndex { name, .. } => format!("index_{name}"),
        Change::NewConstraint { table, .. } => format!("constrain_{table}"),
        Change::DroppedTable(t) => format!("drop_{t}"),
        Change::DroppedColumn { table, column } => format!("drop_{table}_{column}"),
        Change::DroppedIndex { name, .. } => format!("drop_{name}"),
        Change::DroppedConstraint { table, .. } => format!("unconstrain_{table}"),
        Change::Retyped { table, live, .. } => format!("retype_{table}_{}", live.name),
        Change::ChangedIndex { name, .. } => format!("rebuild_{name}"),
    };
    let mut s: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if changes.len() > 1 {
        s.push_str(&format!("_and_{}_more", changes.len() - 1));
    }
    s
}

/// A migration file as read back: its header fields and statements.
struct Parsed {
    dialect: String,
    fingerprint: String,
    statements: Vec<String>,
    sha256: String,
}

fn parse(path: &Path) -> Result<Parsed, MigrateError> {
    let text = std::fs::read_to_string(path).map_err(|source| MigrateError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let header = |name: &'static str| {
        let prefix = format!("-- {name}: ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
            .ok_or(MigrateError::NotAMigration {
                path: path.to_path_buf(),
                header: name,
            })
    };
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        if !current.is_empty() || !line.trim().is_empty() {
            current.push_str(line);
            current.push('\n');
        }
        if line.trim_end().ends_with(';') {
            let s = current.trim().trim_end_matches(';').trim().to_string();
            if !s.is_empty() {
                statements.push(s);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_string());
    }
    Ok(Parsed {
        dialect: header(HEADER_DIALECT)?,
        fingerprint: header(HEADER_FINGERPRINT)?,
        statements,
        sha256: hex(&Sha256::digest(text.as_bytes())),
    })
}

/// A file applied by [`apply`].
#[derive(Debug)]
pub struct Applied {
    pub path: PathBuf,
    pub statements: usize,
    /// Statements skipped because an earlier, partial apply ran them (MariaDB).
    pub resumed_after: usize,
    pub fingerprint: String,
}

/// What the history holds about a file.
struct Recorded {
    applied_at: String,
    outcome: String,
    statements: i64,
    same_content: bool,
}

/// Applies a reviewed migration file to the database of `store` and records it in
/// `beds_schema_history`. `current` is the running declarations' fingerprint: a file
/// bringing the database elsewhere is refused unless `force`.
pub async fn apply(
    store: &Store,
    path: &Path,
    current: &str,
    force: bool,
) -> Result<Applied, MigrateError> {
    let d = store.dialect;
    let file = parse(path)?;
    if file.dialect != d.name() {
        return Err(MigrateError::WrongDialect {
            path: path.to_path_buf(),
            file: file.dialect,
            configured: d.name(),
        });
    }
    if file.fingerprint != current && !force {
        return Err(MigrateError::Fingerprint {
            path: path.to_path_buf(),
            file: file.fingerprint,
            current: current.to_string(),
        });
    }
    let history_error = |source| MigrateError::History {
        path: path.to_path_buf(),
        source,
    };
    sqlx::raw_sql(AssertSqlSafe(history_table(d)))
        .execute(&store.pool)
        .await
        .map_err(history_error)?;
    let name = file_name(path);
    let mut conn = store.pool.acquire().await.map_err(history_error)?;
    let recorded = recorded(d, &mut conn, &name, &file.sha256)
        .await
        .map_err(history_error)?;
    drop(conn);
    let mut resumed_after = 0;
    for r in &recorded {
        if r.outcome == "applied" {
            return Err(MigrateError::AlreadyApplied {
                path: path.to_path_buf(),
                applied_at: r.applied_at.clone(),
                reason: if r.same_content {
                    "same content"
                } else {
                    "same file name, other content"
                },
            });
        }
        resumed_after = usize::try_from(r.statements).unwrap_or(0);
    }
    let total = file.statements.len();
    let record = |applied: usize, outcome: &'static str| History {
        name: name.clone(),
        sha256: file.sha256.clone(),
        fingerprint: file.fingerprint.clone(),
        applied,
        outcome,
        update: !recorded.is_empty(),
    };
    if d.driver() == Driver::Mariadb {
        let mut conn = store.pool.acquire().await.map_err(history_error)?;
        if let Err((i, source)) = run_from(&mut conn, &file.statements, resumed_after).await {
            record(i, "partial")
                .save(d, &mut conn)
                .await
                .map_err(history_error)?;
            return Err(MigrateError::Partial {
                path: path.to_path_buf(),
                n: i + 1,
                done: i,
                total,
                statement: file.statements[i].clone(),
                source,
            });
        }
        record(total, "applied")
            .save(d, &mut conn)
            .await
            .map_err(history_error)?;
    } else {
        let mut tx = store
            .pool
            .begin_with(d.begin())
            .await
            .map_err(history_error)?;
        if let Err((i, source)) = run_from(&mut tx, &file.statements, 0).await {
            let _ = tx.rollback().await;
            return Err(MigrateError::RolledBack {
                path: path.to_path_buf(),
                n: i + 1,
                total,
                statement: file.statements[i].clone(),
                source,
            });
        }
        record(total, "applied")
            .save(d, &mut tx)
            .await
            .map_err(history_error)?;
        tx.commit().await.map_err(history_error)?;
    }
    Ok(Applied {
        path: path.to_path_buf(),
        statements: total,
        resumed_after,
        fingerprint: file.fingerprint,
    })
}

/// Runs `statements` in order from the one at `from`, stopping at the first that fails:
/// its index and error.
async fn run_from(
    conn: &mut AnyConnection,
    statements: &[String],
    from: usize,
) -> Result<(), (usize, sqlx::Error)> {
    for (i, statement) in statements.iter().enumerate().skip(from) {
        sqlx::raw_sql(AssertSqlSafe(statement.clone()))
            .execute(&mut *conn)
            .await
            .map_err(|e| (i, e))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

async fn recorded(
    d: &dyn Dialect,
    conn: &mut AnyConnection,
    name: &str,
    sha256: &str,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let q = |s: &str| d.quote(s);
    let sql = format!(
        "SELECT {}, {}, {}, {} FROM {} WHERE {} = ? OR {} = ?",
        q("applied_at"),
        q("outcome"),
        q("statements_applied"),
        q("sha256"),
        q(HISTORY_TABLE),
        q("sha256"),
        q("file_name"),
    );
    let rows = sqlx::query(d.prepare(sql))
        .bind(sha256)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Recorded {
                applied_at: r.try_get(0)?,
                outcome: r.try_get(1)?,
                statements: r.try_get(2)?,
                same_content: r.try_get::<String, _>(3)? == sha256,
            })
        })
        .collect()
}

/// A history row to write.
struct History {
    name: String,
    sha256: String,
    fingerprint: String,
    applied: usize,
    outcome: &'static str,
    /// A partial row of the same file exists: it is completed, not duplicated.
    update: bool,
}

impl History {
    async fn save(&self, d: &dyn Dialect, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        // Bound in this order, the file's name last (the update's key).
        let columns = [
            "sha256",
            "fingerprint",
            "applied_at",
            "beds_version",
            "statements_applied",
            "outcome",
        ]
        .map(|c| d.quote(c));
        let (table, name) = (d.quote(HISTORY_TABLE), d.quote("file_name"));
        let sql = if self.update {
            let set: Vec<String> = columns.iter().map(|c| format!("{c} = ?")).collect();
            format!("UPDATE {table} SET {} WHERE {name} = ?", set.join(", "))
        } else {
            format!(
                "INSERT INTO {table} ({}, {name}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                columns.join(", ")
            )
        };
        sqlx::query(d.prepare(sql))
            .bind(&self.sha256)
            .bind(&self.fingerprint)
            .bind(crate::value::format_timestamp(&chrono::Utc::now()))
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(i64::try_from(self.applied).unwrap_or(i64::MAX))
            .bind(self.outcome)
            .bind(&self.name)
            .execute(&mut *conn)
            .await
            .map(drop)
    }
}

/// The first migration file in `dir` for the dialect of `store` that brings the database
/// to the fingerprint of `ddl` and is not recorded as applied.
pub async fn pending(store: &Store, ddl: &[String], dir: &Path) -> Option<PathBuf> {
    let suffix = format!(".{}.sql", file_tag(store.dialect.driver()));
    let target = fingerprint(ddl);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(&suffix))
        .collect();
    files.sort();
    let mut conn = store.pool.acquire().await.ok()?;
    for path in files {
        let Ok(file) = parse(&path) else { continue };
        if file.fingerprint != target {
            continue;
        }
        // No history table yet: nothing was applied.
        let applied = recorded(store.dialect, &mut conn, &file_name(&path), &file.sha256)
            .await
            .unwrap_or_default();
        if !applied.iter().any(|r| r.outcome == "applied") {
            return Some(path);
        }
    }
    None
}
