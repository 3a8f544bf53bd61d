//! What differs between the supported databases, as SQL text: quoting, placeholders,
//! column types, value conversions in and out, and the few statements that have no
//! common form. Everything else in the store is written once.

use crate::meta::{FieldKind, FieldMeta, IdKind, TemplateMeta};

/// A supported database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MariaDb,
}

/// How a value is stored and bound: the storage type family of a column or parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Int,
    Float,
    Bool,
    Uuid,
    Timestamp,
    Date,
    Json,
}

impl Ty {
    pub fn of_field(f: &FieldMeta) -> Ty {
        Ty::of_kind(&f.kind)
    }

    pub fn of_kind(kind: &FieldKind) -> Ty {
        match kind {
            FieldKind::String { .. } | FieldKind::Text { .. } | FieldKind::Enum { .. } => Ty::Text,
            FieldKind::Integer { .. } | FieldKind::BigInt { .. } => Ty::Int,
            FieldKind::Float { .. } => Ty::Float,
            FieldKind::Bool => Ty::Bool,
            FieldKind::Timestamp => Ty::Timestamp,
            FieldKind::Date => Ty::Date,
            FieldKind::Uuid => Ty::Uuid,
            FieldKind::Json => Ty::Json,
            FieldKind::Ref { id, .. } => Ty::of_id(*id),
        }
    }

    pub fn of_id(id: IdKind) -> Ty {
        match id {
            IdKind::Uuid7 => Ty::Uuid,
            IdKind::Sequence => Ty::Int,
        }
    }

    /// The type of `name` on `t` (`id` included).
    pub fn of_name(t: &TemplateMeta, name: &str) -> Ty {
        if name == "id" {
            Ty::of_id(t.id)
        } else {
            Ty::of_field(t.field(name).expect("names are checked at build time"))
        }
    }
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::MariaDb => "MariaDB",
        }
    }

    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MariaDb => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// A placeholder for a value of type `ty`. Statements are written with `?` and
    /// numbered for PostgreSQL by [`Dialect::finish`]; PostgreSQL gets a cast where text
    /// stands in for a richer column type.
    pub fn arg(self, ty: Ty) -> &'static str {
        match (self, ty) {
            (Dialect::Postgres, Ty::Uuid) => "CAST(? AS uuid)",
            (Dialect::Postgres, Ty::Timestamp) => "CAST(? AS timestamptz)",
            (Dialect::Postgres, Ty::Date) => "CAST(? AS date)",
            (Dialect::Postgres, Ty::Json) => "CAST(? AS jsonb)",
            _ => "?",
        }
    }

    /// `expr` as a column of a result, in the one form rows are decoded from: text for
    /// uuids, times, dates and JSON (in their API form), integers for booleans.
    pub fn select(self, expr: &str, ty: Ty) -> String {
        match (self, ty) {
            (Dialect::Postgres, Ty::Uuid | Ty::Json) => format!("CAST({expr} AS text)"),
            (Dialect::Postgres, Ty::Timestamp) => {
                format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            }
            (Dialect::Postgres, Ty::Date) => format!("to_char({expr}, 'YYYY-MM-DD')"),
            (Dialect::Postgres, Ty::Bool) => format!("CAST({expr} AS integer)"),
            (Dialect::MariaDb, Ty::Timestamp) => {
                format!("DATE_FORMAT({expr}, '%Y-%m-%dT%H:%i:%s.%fZ')")
            }
            (Dialect::MariaDb, Ty::Date) => format!("DATE_FORMAT({expr}, '%Y-%m-%d')"),
            (Dialect::MariaDb, Ty::Bool) => format!("CAST({expr} AS SIGNED)"),
            _ => expr.to_string(),
        }
    }

    /// Numbers the `?` placeholders for PostgreSQL (`$1`, `$2`, …). Statements never
    /// contain a literal `?`: values are always bound.
    pub fn finish(self, sql: String) -> String {
        if self != Dialect::Postgres {
            return sql;
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Opens a write transaction. SQLite takes the write lock up front so two deliveries
    /// of one idempotency key serialise; the others serialise on the key's row.
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres | Dialect::MariaDb => "BEGIN",
        }
    }

    /// Whether `INSERT … ON CONFLICT DO NOTHING` exists (MariaDB's `INSERT IGNORE` also
    /// hides other errors, so it takes the look-up-then-insert path).
    pub fn insert_or_ignore(self) -> bool {
        self != Dialect::MariaDb
    }

    /// Whether `UPDATE … RETURNING` exists (MariaDB has it for INSERT and DELETE only).
    pub fn update_returning(self) -> bool {
        self != Dialect::MariaDb
    }

    /// `col = ?` for a case-insensitive unique key.
    pub fn equals_ci(self, col: &str, ty: Ty) -> String {
        match self {
            Dialect::Sqlite => format!("{col} = {} COLLATE NOCASE", self.arg(ty)),
            Dialect::Postgres => format!("lower({col}) = lower({})", self.arg(ty)),
            // The column's collation is case-insensitive.
            Dialect::MariaDb => format!("{col} = {}", self.arg(ty)),
        }
    }

    /// `col` is one of the values of a JSON array bound as one parameter.
    pub fn in_list(self, col: &str, ty: Ty) -> String {
        match self {
            Dialect::Sqlite => format!("{col} IN (SELECT value FROM json_each(?))"),
            Dialect::Postgres => {
                let cast = match ty {
                    Ty::Text => "text",
                    Ty::Int => "bigint",
                    Ty::Float => "double precision",
                    Ty::Bool => "boolean",
                    Ty::Uuid => "uuid",
                    Ty::Timestamp => "timestamptz",
                    Ty::Date => "date",
                    Ty::Json => "jsonb",
                };
                format!(
                    "{col} IN (SELECT CAST(jsonb_array_elements_text(CAST(? AS jsonb)) AS {cast}))"
                )
            }
            Dialect::MariaDb => {
                let column = match ty {
                    Ty::Int | Ty::Bool => "BIGINT",
                    Ty::Float => "DOUBLE",
                    Ty::Timestamp => "DATETIME(6)",
                    Ty::Date => "DATE",
                    _ => "VARCHAR(1024)",
                };
                format!(
                    "{col} IN (SELECT jt.v FROM JSON_TABLE(?, '$[*]' COLUMNS (v {column} PATH '$')) AS jt)"
                )
            }
        }
    }

    /// `col` starts with the text bound (twice) after it.
    pub fn prefix(self, col: &str) -> String {
        match self {
            Dialect::MariaDb => format!("LEFT({col}, CHAR_LENGTH(?)) = ?"),
            _ => format!("substr({col}, 1, length(?)) = ?"),
        }
    }

    /// The column type of a declared field, without nullability.
    pub fn column_type(self, f: &FieldMeta, case_insensitive: bool) -> String {
        let ty = Ty::of_field(f);
        match self {
            Dialect::Sqlite => match ty {
                Ty::Int | Ty::Bool => "INTEGER",
                Ty::Float => "REAL",
                _ => "TEXT",
            }
            .to_string(),
            Dialect::Postgres => match f.kind {
                FieldKind::Integer { .. } => "INTEGER",
                FieldKind::BigInt { .. } => "BIGINT",
                _ => match ty {
                    Ty::Int => "BIGINT",
                    Ty::Float => "DOUBLE PRECISION",
                    Ty::Bool => "BOOLEAN",
                    Ty::Uuid => "UUID",
                    Ty::Timestamp => "TIMESTAMPTZ",
                    Ty::Date => "DATE",
                    Ty::Json => "JSONB",
                    Ty::Text => "TEXT",
                },
            }
            .to_string(),
            Dialect::MariaDb => {
                let collate = if case_insensitive {
                    " COLLATE utf8mb4_general_ci"
                } else {
                    ""
                };
                match f.kind {
                    FieldKind::Integer { .. } => "INT".to_string(),
                    FieldKind::BigInt { .. } => "BIGINT".to_string(),
                    // Index keys need a bounded VARCHAR; limits are in characters.
                    FieldKind::String { max, .. } => format!("VARCHAR({max}){collate}"),
                    FieldKind::Enum { values } => format!(
                        "VARCHAR({})",
                        values.iter().map(|v| v.chars().count()).max().unwrap_or(1)
                    ),
                    FieldKind::Text { max: Some(max) } if max <= 16_383 => "TEXT".to_string(),
                    FieldKind::Text { .. } => "LONGTEXT".to_string(),
                    _ => match ty {
                        Ty::Int => "BIGINT",
                        Ty::Float => "DOUBLE",
                        Ty::Bool => "BOOLEAN",
                        Ty::Uuid => "CHAR(36)",
                        Ty::Timestamp => "DATETIME(6)",
                        Ty::Date => "DATE",
                        Ty::Json => "JSON",
                        Ty::Text => "LONGTEXT",
                    }
                    .to_string(),
                }
            }
        }
    }

    /// The id column's definition.
    pub fn id_column(self, id: IdKind) -> &'static str {
        match (self, id) {
            (Dialect::Sqlite, IdKind::Uuid7) => "TEXT NOT NULL PRIMARY KEY",
            // INTEGER PRIMARY KEY aliases the rowid; AUTOINCREMENT never reuses a deleted id.
            (Dialect::Sqlite, IdKind::Sequence) => "INTEGER PRIMARY KEY AUTOINCREMENT",
            (Dialect::Postgres, IdKind::Uuid7) => "UUID NOT NULL PRIMARY KEY",
            (Dialect::Postgres, IdKind::Sequence) => {
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
            }
            (Dialect::MariaDb, IdKind::Uuid7) => "CHAR(36) NOT NULL PRIMARY KEY",
            (Dialect::MariaDb, IdKind::Sequence) => "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        }
    }

    /// The type of a key (and of a column holding one).
    pub fn key_type(self, id: IdKind) -> &'static str {
        match (self, id) {
            (Dialect::Sqlite, IdKind::Uuid7) => "TEXT",
            (Dialect::Sqlite, IdKind::Sequence) => "INTEGER",
            (Dialect::Postgres, IdKind::Uuid7) => "UUID",
            (Dialect::MariaDb, IdKind::Uuid7) => "CHAR(36)",
            (_, IdKind::Sequence) => "BIGINT",
        }
    }

    /// What follows a `CREATE TABLE (…)`.
    pub fn table_options(self) -> &'static str {
        match self {
            Dialect::Sqlite => " STRICT",
            Dialect::Postgres => "",
            // Binary collation: comparisons and uniqueness are exact, as in the others.
            Dialect::MariaDb => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        }
    }

    /// The runtime's own table: replies of applied writes, by idempotency key.
    pub fn idempotency_table(self) -> Vec<String> {
        let (key, text, time) = match self {
            Dialect::MariaDb => ("VARCHAR(255)", "LONGTEXT", "VARCHAR(32)"),
            _ => ("TEXT", "TEXT", "TEXT"),
        };
        let q = |s: &str| self.quote(s);
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {text} NOT NULL,\n  {} {time} NOT NULL\n){}",
                q("beds_idempotency"),
                q("key"),
                q("target"),
                q("reply"),
                q("created_at"),
                self.table_options()
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                q("beds_idempotency_created_at_idx"),
                q("beds_idempotency"),
                q("created_at")
            ),
        ]
    }

    /// Whether a database error means "busy, try again" rather than a defect.
    pub fn is_transient(self, e: &dyn sqlx::error::DatabaseError) -> bool {
        let code = e.code();
        match self {
            // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            Dialect::Sqlite => matches!(code.as_deref(), Some("5" | "6" | "517" | "262")),
            // serialization_failure, deadlock_detected, too_many_connections,
            // admin/crash shutdown, cannot_connect_now.
            Dialect::Postgres => matches!(
                code.as_deref(),
                Some("40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03")
            ),
            // Lock wait timeout and deadlock: the SQLSTATE of the first is too broad.
            Dialect::MariaDb => e
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| matches!(m.number(), 1205 | 1213)),
        }
    }
}
