//! Reading a schema from each database's catalog (SQLite's pragmas, PostgreSQL's
//! `pg_catalog`, MariaDB's `information_schema`), and building the declared schema in a
//! scratch space to read it back the same way.

use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor, Row};

use super::{Column, HISTORY_TABLE, Index, MigrateError, Schema};
use crate::config::Driver;
use crate::store::Store;
use crate::store::dialect::Dialect;

/// Every query returns text columns (`NULL` allowed): the one form all drivers decode.
struct Queries {
    /// table, column, type, not null ('1'/'0'), default.
    columns: &'static str,
    /// table, index, unique ('1'/'0'), one key column; rows in key order.
    indexes: &'static str,
    /// table, constraint text.
    constraints: &'static str,
}

const SQLITE: Queries = Queries {
    columns: "SELECT m.name, p.name, p.type, CAST(p.\"notnull\" AS TEXT), p.dflt_value \
        FROM sqlite_master m JOIN pragma_table_info(m.name) p \
        WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
        ORDER BY m.name, p.cid",
    // Only indexes made by CREATE INDEX: key and UNIQUE-constraint indexes belong to the
    // table's definition.
    indexes: "SELECT m.name, il.name, CAST(il.\"unique\" AS TEXT), \
        COALESCE(x.name, '<expression>') \
        || CASE WHEN x.\"desc\" THEN ' DESC' ELSE '' END \
        || CASE WHEN x.coll <> 'BINARY' THEN ' COLLATE ' || x.coll ELSE '' END \
        FROM sqlite_master m JOIN pragma_index_list(m.name) il \
        JOIN pragma_index_xinfo(il.name) x \
        WHERE m.type = 'table' AND il.origin = 'c' AND x.key = 1 \
        ORDER BY m.name, il.name, x.seqno",
    constraints: "SELECT m.name, 'FOREIGN KEY (' || f.\"from\" || ') REFERENCES ' || f.\"table\" \
        || '(' || COALESCE(f.\"to\", '') || ') ON DELETE ' || f.on_delete \
        FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f \
        WHERE m.type = 'table' ORDER BY m.name, f.id, f.seq",
};

const POSTGRES: Queries = Queries {
    columns: "SELECT c.relname::text, a.attname::text, \
        (format_type(a.atttypid, a.atttypmod) \
          || CASE WHEN a.attidentity <> '' THEN ' identity' ELSE '' END)::text, \
        CASE WHEN a.attnotnull THEN '1' ELSE '0' END, pg_get_expr(d.adbin, d.adrelid)::text \
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        JOIN pg_attribute a ON a.attrelid = c.oid \
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') \
          AND a.attnum > 0 AND NOT a.attisdropped \
        ORDER BY c.relname, a.attnum",
    // Indexes backing a constraint (primary keys, composite keys) belong to the table.
    indexes: "SELECT t.relname::text, i.relname::text, \
        CASE WHEN x.indisunique THEN '1' ELSE '0' END, \
        (pg_get_indexdef(x.indexrelid, k, true) \
          || CASE WHEN (x.indoption[k - 1]::int & 1) = 1 THEN ' DESC' ELSE '' END)::text \
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
        JOIN pg_class t ON t.oid = x.indrelid \
        JOIN pg_namespace n ON n.oid = t.relnamespace \
        CROSS JOIN LATERAL generate_series(1, x.indnkeyatts) k \
        WHERE n.nspname = current_schema() AND NOT x.indisprimary \
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) \
        ORDER BY t.relname, i.relname, k",
    constraints: "SELECT t.relname::text, pg_get_constraintdef(c.oid, true)::text \
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
        JOIN pg_namespace n ON n.oid = t.relnamespace \
        WHERE n.nspname = current_schema() AND c.contype IN ('f', 'c')",
};

const MARIADB: Queries = Queries {
    columns: "SELECT CAST(c.TABLE_NAME AS CHAR), CAST(c.COLUMN_NAME AS CHAR), \
        CAST(CONCAT(c.COLUMN_TYPE, \
          CASE WHEN c.COLLATION_NAME IS NULL THEN '' ELSE CONCAT(' COLLATE ', c.COLLATION_NAME) END, \
          CASE WHEN c.EXTRA LIKE '%auto_increment%' THEN ' AUTO_INCREMENT' ELSE '' END) AS CHAR), \
        CASE WHEN c.IS_NULLABLE = 'NO' THEN '1' ELSE '0' END, CAST(c.COLUMN_DEFAULT AS CHAR) \
        FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
          ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
        WHERE c.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' \
        ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
    indexes: "SELECT CAST(TABLE_NAME AS CHAR), CAST(INDEX_NAME AS CHAR), \
        CASE WHEN NON_UNIQUE = 0 THEN '1' ELSE '0' END, \
        CAST(CONCAT(COLUMN_NAME, CASE WHEN COLLATION = 'D' THEN ' DESC' ELSE '' END, \
          CASE WHEN SUB_PART IS NULL THEN '' ELSE CONCAT('(', SUB_PART, ')') END) AS CHAR) \
        FROM information_schema.STATISTICS \
        WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME <> 'PRIMARY' \
        ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    constraints: "SELECT CAST(k.TABLE_NAME AS CHAR), CAST(CONCAT('FOREIGN KEY (', k.COLUMN_NAME, \
          ') REFERENCES ', k.REFERENCED_TABLE_NAME, '(', k.REFERENCED_COLUMN_NAME, \
          ') ON DELETE ', r.DELETE_RULE) AS CHAR) \
        FROM information_schema.KEY_COLUMN_USAGE k \
        JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
          ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME \
          AND r.TABLE_NAME = k.TABLE_NAME \
        WHERE k.TABLE_SCHEMA = DATABASE() AND k.REFERENCED_TABLE_NAME IS NOT NULL \
        UNION ALL \
        SELECT CAST(TABLE_NAME AS CHAR), CAST(CONCAT('CHECK ', CHECK_CLAUSE) AS CHAR) \
        FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
};

fn queries(driver: Driver) -> &'static Queries {
    match driver {
        Driver::Sqlite => &SQLITE,
        Driver::Postgres => &POSTGRES,
        Driver::Mariadb => &MARIADB,
    }
}

/// The schema of the database `store` serves.
pub(super) async fn live(store: &Store) -> Result<Schema, MigrateError> {
    let mut conn = store
        .pool
        .acquire()
        .await
        .map_err(|source| introspect_error(store.dialect, source))?;
    read(store.dialect, &mut conn).await
}

/// The schema `ddl` creates, built in a scratch space of the database `store` serves.
pub(super) async fn expected(store: &Store, ddl: &[String]) -> Result<Schema, MigrateError> {
    let d = store.dialect;
    match d.driver() {
        Driver::Sqlite => {
            let mut conn = AnyConnection::connect("sqlite::memory:")
                .await
                .map_err(|source| introspect_error(d, source))?;
            run(d, &mut conn, ddl).await?;
            let schema = read(d, &mut conn).await;
            let _ = conn.close().await;
            schema
        }
        Driver::Postgres => {
            // PostgreSQL's DDL is transactional: the scratch schema never exists for
            // anyone else, and the rollback leaves nothing behind.
            let mut tx = store
                .pool
                .begin()
                .await
                .map_err(|source| introspect_error(d, source))?;
            let scratch = scratch_name();
            for statement in [
                format!("CREATE SCHEMA {scratch}"),
                format!("SET LOCAL search_path TO {scratch}"),
            ] {
                exec(d, &mut tx, &statement).await?;
            }
            run(d, &mut tx, ddl).await?;
            let schema = read(d, &mut tx).await;
            let _ = tx.rollback().await;
            schema
        }
        Driver::Mariadb => {
            // MariaDB commits DDL: a scratch database, dropped whatever happens, on a
            // connection taken out of the pool (its default database changes).
            let mut conn = store
                .pool
                .acquire()
                .await
                .map_err(|source| introspect_error(d, source))?
                .detach();
            let scratch = scratch_name();
            exec(d, &mut conn, &format!("CREATE DATABASE {scratch}")).await?;
            let built = async {
                exec(d, &mut conn, &format!("USE {scratch}")).await?;
                run(d, &mut conn, ddl).await?;
                read(d, &mut conn).await
            }
            .await;
            let dropped = exec(d, &mut conn, &format!("DROP DATABASE {scratch}")).await;
            let _ = conn.close().await;
            let schema = built?;
            dropped?;
            Ok(schema)
        }
    }
}

/// A session of its own holding the database's schema lock, on the servers: PostgreSQL's
/// advisory lock, MariaDB's named lock. SQLite needs none: one process creates its file's
/// tables, and its writes are serialised anyway.
pub(super) async fn exclusive(store: &Store) -> Result<Option<AnyConnection>, MigrateError> {
    let d = store.dialect;
    let lock = match d.driver() {
        Driver::Sqlite => return Ok(None),
        // An arbitrary constant key: "beds" schema.
        Driver::Postgres => "SELECT pg_advisory_lock(6451906561617)",
        Driver::Mariadb => "SELECT GET_LOCK('beds_schema', 600)",
    };
    let options = store.pool.connect_options();
    let mut conn = AnyConnection::connect_with(&options)
        .await
        .map_err(|source| introspect_error(d, source))?;
    sqlx::raw_sql(AssertSqlSafe(lock))
        .execute(&mut conn)
        .await
        .map_err(|source| introspect_error(d, source))?;
    Ok(Some(conn))
}

fn scratch_name() -> String {
    format!("beds_expected_{}", uuid::Uuid::now_v7().simple())
}

async fn run(
    d: &dyn Dialect,
    conn: &mut AnyConnection,
    ddl: &[String],
) -> Result<(), MigrateError> {
    for statement in ddl {
        exec(d, conn, statement).await?;
    }
    Ok(())
}

async fn exec(
    d: &dyn Dialect,
    conn: &mut AnyConnection,
    statement: &str,
) -> Result<(), MigrateError> {
    conn.execute(d.prepare(statement.to_string()))
        .await
        .map(drop)
        .map_err(|source| MigrateError::Scratch {
            dialect: d.name(),
            statement: statement.to_string(),
            source,
        })
}

fn introspect_error(d: &dyn Dialect, source: sqlx::Error) -> MigrateError {
    MigrateError::Introspect {
        dialect: d.name(),
        source,
    }
}

async fn rows(
    d: &dyn Dialect,
    conn: &mut AnyConnection,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, MigrateError> {
    let found = sqlx::query(d.prepare(sql.to_string()))
        .fetch_all(&mut *conn)
        .await
        .map_err(|source| introspect_error(d, source))?;
    found
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()
        .map_err(|source| introspect_error(d, source))
}

/// The tables, columns, indexes and constraints of the connection's current database (or
/// schema).
async fn read(d: &dyn Dialect, conn: &mut AnyConnection) -> Result<Schema, MigrateError> {
    let q = queries(d.driver());
    let text = |row: &[Option<String>], i: usize| row[i].clone().unwrap_or_default();
    let mut schema = Schema::default();
    for row in rows(d, conn, q.columns).await? {
        let table = text(&row, 0);
        if table == HISTORY_TABLE {
            continue;
        }
        schema
            .tables
            .entry(table)
            .or_default()
            .columns
            .push(Column {
                name: text(&row, 1),
                ty: text(&row, 2),
                not_null: text(&row, 3) == "1",
                default: row[4].clone(),
            });
    }
    for row in rows(d, conn, q.indexes).await? {
        let Some(table) = schema.tables.get_mut(&text(&row, 0)) else {
            continue;
        };
        let index = table.indexes.entry(text(&row, 1)).or_insert(Index {
            unique: text(&row, 2) == "1",
            columns: Vec::new(),
        });
        index.columns.push(text(&row, 3));
    }
    for row in rows(d, conn, q.constraints).await? {
        if let Some(table) = schema.tables.get_mut(&text(&row, 0)) {
            table.constraints.insert(text(&row, 1));
        }
    }
    Ok(schema)
}
