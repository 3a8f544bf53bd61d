//! SQLite, the embedded default: a file opened in WAL mode, `STRICT` tables, text for
//! every rich type.

use sqlx::SqlStr;
use sqlx::error::DatabaseError;

use super::{Dialect, Failure, Location, Ty, UniqueIndex, by_kind};
use crate::meta::{FieldMeta, IdKind};
use crate::store::options::{StoreError, StoreOptions};

#[derive(Debug)]
pub struct Sqlite;

impl Dialect for Sqlite {
    fn driver(&self) -> crate::config::Driver {
        crate::config::Driver::Sqlite
    }

    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn location(&self, options: &StoreOptions) -> Result<Location, StoreError> {
        // The URL's path is percent-decoded by the driver.
        let file = options
            .sqlite_file
            .to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('#', "%23");
        Ok(Location {
            url: format!("sqlite://{file}?mode=rwc"),
            shown: options.sqlite_file.display().to_string(),
        })
    }

    fn before_open(&self, options: &StoreOptions) -> Result<(), StoreError> {
        if let Some(dir) = options
            .sqlite_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    fn session(&self, options: &StoreOptions) -> Vec<SqlStr> {
        let sync = if options.sqlite_sync_full {
            "FULL"
        } else {
            "NORMAL"
        };
        [
            "PRAGMA journal_mode = WAL".to_string(),
            "PRAGMA foreign_keys = ON".to_string(),
            format!("PRAGMA synchronous = {sync}"),
            format!("PRAGMA busy_timeout = {}", options.busy_timeout.as_millis()),
        ]
        .into_iter()
        .map(|s| self.prepare(s))
        .collect()
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }

    /// Takes the write lock up front, so two deliveries of one idempotency key serialise.
    fn begin(&self) -> &'static str {
        "BEGIN IMMEDIATE"
    }

    /// `AUTOINCREMENT` keeps the highest rowid ever used in `sqlite_sequence`.
    fn outbox_high_water(&self) -> String {
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'beds_outbox'), 0)".into()
    }

    /// No `FOR UPDATE`: a write transaction (`BEGIN IMMEDIATE`) already excludes others.
    fn lock_rows(&self) -> &'static str {
        ""
    }

    fn equals_ci(&self, col: &str, ty: Ty) -> String {
        format!("{col} = {} COLLATE NOCASE", self.arg(ty))
    }

    fn fold_case(&self, expr: &str) -> String {
        format!("{expr} COLLATE NOCASE")
    }

    fn elements(&self, _ty: Ty) -> String {
        "SELECT value AS v FROM json_each(?)".to_string()
    }

    fn column_type(&self, f: &FieldMeta, _case_insensitive: bool) -> String {
        match Ty::of_field(f) {
            Ty::Int | Ty::Bool => "INTEGER",
            Ty::Float => "REAL",
            _ => "TEXT",
        }
        .to_string()
    }

    fn id_column(&self, id: IdKind) -> &'static str {
        match id {
            IdKind::Uuid7 => "TEXT NOT NULL PRIMARY KEY",
            // INTEGER PRIMARY KEY aliases the rowid; AUTOINCREMENT never reuses a deleted id.
            IdKind::Sequence => "INTEGER PRIMARY KEY AUTOINCREMENT",
        }
    }

    fn key_type(&self, id: IdKind) -> &'static str {
        match id {
            IdKind::Uuid7 => "TEXT",
            IdKind::Sequence => "INTEGER",
        }
    }

    fn table_options(&self) -> &'static str {
        " STRICT"
    }

    fn unique_key_column(&self, col: &str, case_insensitive: bool) -> String {
        if case_insensitive {
            format!("{col} COLLATE NOCASE")
        } else {
            col.to_string()
        }
    }

    fn classify<'e>(&self, e: &'e dyn DatabaseError) -> Failure<'e> {
        by_kind(
            e,
            |e| unique_index(e.message()),
            |e| {
                let m = e.message();
                m.strip_prefix("CHECK constraint failed: ").unwrap_or(m)
            },
        )
        .unwrap_or_else(|| {
            // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            if matches!(e.code().as_deref(), Some("5" | "6" | "517" | "262")) {
                Failure::Transient
            } else if is_restrict(e.code().as_deref(), e.message()) {
                Failure::ForeignKey
            } else {
                Failure::Other
            }
        })
    }
}

/// An `ON DELETE RESTRICT` action refusing a delete: SQLite raises it as
/// SQLITE_CONSTRAINT_TRIGGER (1811), not SQLITE_CONSTRAINT_FOREIGNKEY (787), with the
/// foreign key's message; the schema declares no triggers of its own.
fn is_restrict(code: Option<&str>, message: &str) -> bool {
    code == Some("1811") && message == "FOREIGN KEY constraint failed"
}

/// `UNIQUE constraint failed: spw_users.handle_usr, …` names columns; an index on
/// expressions is named instead (`… failed: index 'name'`).
fn unique_index(message: &str) -> UniqueIndex<'_> {
    let failed = message
        .strip_prefix("UNIQUE constraint failed: ")
        .unwrap_or(message);
    if failed.starts_with("index ") {
        return UniqueIndex::Named(failed);
    }
    UniqueIndex::Columns(
        failed
            .split(", ")
            .map(|c| c.rsplit('.').next().unwrap_or(c))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restrict_action_is_a_foreign_key_failure() {
        assert!(is_restrict(Some("1811"), "FOREIGN KEY constraint failed"));
        assert!(!is_restrict(Some("1811"), "raised by a trigger"));
        assert!(!is_restrict(Some("19"), "FOREIGN KEY constraint failed"));
    }

    #[test]
    fn unique_violations_name_columns_or_an_index() {
        let columns = unique_index(
            "UNIQUE constraint failed: spw_follows.follower_fol, spw_follows.followee_fol",
        );
        assert!(
            matches!(columns, UniqueIndex::Columns(c) if c == ["follower_fol", "followee_fol"])
        );
        let named = unique_index("UNIQUE constraint failed: index 'spw_users_handle_usr_key'");
        assert!(matches!(named, UniqueIndex::Named(n) if n.contains("spw_users_handle_usr_key")));
    }
}
