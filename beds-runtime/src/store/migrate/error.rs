//! Why a schema comparison, a migration plan or an apply failed.

use std::path::PathBuf;

/// Why a comparison, a plan or an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("reading the {dialect} schema failed: {source}")]
    Introspect {
        dialect: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "building the declared schema in a scratch space of the {dialect} database failed at `{statement}`: {source}; the database user needs the right to create a schema (PostgreSQL) or a database (MariaDB)"
    )]
    Scratch {
        dialect: &'static str,
        statement: String,
        source: sqlx::Error,
    },
    #[error(
        "the {dialect} database of `{section}` does not match the declarations:\n{}\n{hint}",
        list(.changes)
    )]
    Refused {
        dialect: &'static str,
        section: &'static str,
        changes: Vec<String>,
        hint: String,
    },
    #[error(
        "the diff has destructive changes:\n{}\nreview them, then re-run `beds schema diff --allow-destructive` to write them (each marked `-- WARNING: destroys data`)",
        list(.0)
    )]
    Destructive(Vec<String>),
    #[error(
        "these differences have no generated SQL:\n{}\nwrite that migration by hand, apply it with the database's own tools, then run `beds schema diff` again",
        list(.0)
    )]
    Manual(Vec<String>),
    #[error(
        "the new column {table}.{column} is NOT NULL and has no default, so existing rows cannot take it: declare a `default:` for the field (the migration adds the column with it), or declare it `optional: true`, backfill, and make it required in a later release"
    )]
    RequiredColumn { table: String, column: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a BEDS migration file: it has no `-- {header}:` header line")]
    NotAMigration { path: PathBuf, header: &'static str },
    #[error("{path} is written for {file}, but the configured database is {configured}")]
    WrongDialect {
        path: PathBuf,
        file: String,
        configured: &'static str,
    },
    #[error(
        "{path} brings the database to declaration fingerprint {file}, but the running declarations are {current}: it was generated from other declarations; generate a new one with `beds schema diff`, or pass --force to apply it anyway"
    )]
    Fingerprint {
        path: PathBuf,
        file: String,
        current: String,
    },
    #[error("{path} was already applied at {applied_at} (beds_schema_history: {reason})")]
    AlreadyApplied {
        path: PathBuf,
        applied_at: String,
        reason: &'static str,
    },
    #[error(
        "statement {n} of {total} of {path} failed: {source}\n  {statement}\nnothing of the file was applied: the transaction was rolled back"
    )]
    RolledBack {
        path: PathBuf,
        n: usize,
        total: usize,
        statement: String,
        source: sqlx::Error,
    },
    #[error(
        "statement {n} of {total} of {path} failed: {source}\n  {statement}\nMariaDB commits each DDL statement: statements 1 to {done} are applied and beds_schema_history records the file as `partial` with {done} statements; fix the cause (or the statement in the file) and run `beds schema apply` on the file again: it resumes at statement {n}"
    )]
    Partial {
        path: PathBuf,
        n: usize,
        done: usize,
        total: usize,
        statement: String,
        source: sqlx::Error,
    },
    #[error("recording {path} in beds_schema_history failed: {source}")]
    History { path: PathBuf, source: sqlx::Error },
    #[error("creating the missing tables failed at `{statement}`: {source}")]
    Create {
        statement: String,
        source: sqlx::Error,
    },
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}
