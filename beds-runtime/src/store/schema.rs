//! The DDL for a catalog in one dialect: tables, references, unique and query indexes,
//! cross-field checks and token tables. Idempotent: only what is missing is created.

use super::dialect::Dialect;
use super::sql::index_name;
use crate::meta::{
    CondOp, DomainMeta, FieldKind, FieldMeta, IdKind, OnDelete, QueryMeta, TemplateMeta,
};

/// The DDL for every template, referenced tables first.
pub(super) fn ddl(d: &dyn Dialect, domains: &[&'static DomainMeta]) -> Vec<String> {
    let mut out = idempotency_table(d);
    if domains
        .iter()
        .any(|dm| dm.templates.iter().any(|t| t.capabilities.locking))
    {
        out.extend(super::lock::ddl(d));
    }
    out.extend(tercero_tables(d));
    out.extend(outbox_tables(d));
    out.extend(super::bulk::ddl(d));
    if super::journal::wanted(domains) {
        out.extend(super::journal::ddl(d));
    }
    // Always: every fetch that misses reads it, whether or not this catalog retains
    // anything (a record may have moved under an earlier declaration).
    out.extend(moved_table(d));
    for domain in domains {
        for t in domain.in_reference_order() {
            out.extend(table_ddl(d, domain.templates, t, false));
        }
        out.extend(domain.queries.iter().filter_map(|q| query_index(d, q)));
    }
    out
}

/// The warehouse's DDL (wiki/retention.md): the cold index and files, and every domain
/// table with the serving columns but no references and no unique keys, since a moved
/// record may refer to one that stays in the serving database, and a key freed and reused
/// there may reach the warehouse again. Empty when no template declares retention.
pub(super) fn warehouse_ddl(d: &dyn Dialect, domains: &[&'static DomainMeta]) -> Vec<String> {
    if !retained(domains) {
        return Vec::new();
    }
    let mut out = cold_tables(d);
    for domain in domains {
        for t in domain.templates {
            out.extend(table_ddl(d, domain.templates, t, true));
        }
    }
    out
}

fn retained(domains: &[&'static DomainMeta]) -> bool {
    crate::meta::templates(domains).any(|(_, t)| t.capabilities.retention.is_some())
}

/// Tombstones in the serving database: where each moved record went.
fn moved_table(d: &dyn Dialect) -> Vec<String> {
    let [key, _, time] = d.idempotency_types();
    let q = |s: &str| d.quote(s);
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
        q("beds_moved"),
        q("template"),
        q("record_key"),
        q("tier"),
        q("moved_at"),
        q("template"),
        q("record_key"),
        d.table_options()
    )]
}

/// The warehouse's cold index (which file and line holds a record) and its cold files,
/// from which the manifest is rewritten.
fn cold_tables(d: &dyn Dialect) -> Vec<String> {
    let [key, _, time] = d.idempotency_types();
    let int = d.key_type(IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
            q("beds_cold_index"),
            q("template"),
            q("record_key"),
            q("file"),
            q("line"),
            q("template"),
            q("record_key"),
            d.table_options()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_cold_file"),
            q("file"),
            q("template"),
            q("records"),
            q("min_key"),
            q("max_key"),
            q("sha256"),
            q("created_at"),
            d.table_options()
        ),
    ]
}

/// The runtime's own table: replies of applied writes, by idempotency key.
fn idempotency_table(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {text} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_idempotency"),
            q("key"),
            q("target"),
            q("reply"),
            q("created_at"),
            d.table_options()
        ),
        index(
            d,
            false,
            "beds_idempotency_created_at_idx",
            "beds_idempotency",
            &[q("created_at")],
        ),
    ]
}

/// The tercero's tables: maintained counters, one row per counter and owner (a missing
/// row is zero), their backfill marks, and the ids of the write events already applied.
fn tercero_tables(d: &dyn Dialect) -> Vec<String> {
    let [key, _, time] = d.idempotency_types();
    // A 64-bit integer in every dialect.
    let int = d.key_type(IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
            q("beds_counter"),
            q("counter"),
            q("owner"),
            q("value"),
            q("counter"),
            q("owner"),
            d.table_options()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {time} NOT NULL\n){}",
            q("beds_event_applied"),
            q("id"),
            q("applied_at"),
            d.table_options()
        ),
        // Per maintained count: the outbox mark of its backfill; events at or below it
        // were counted by the backfill's COUNT(*).
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {int} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_counter_init"),
            q("counter"),
            q("seq"),
            q("initialised_at"),
            d.table_options()
        ),
        index(
            d,
            false,
            "beds_event_applied_at_idx",
            "beds_event_applied",
            &[q("applied_at")],
        ),
    ]
}

/// The runtime's event tables: the outbox (events of committed writes not yet confirmed
/// by the broker, in `seq` order) and the lease of the one relay publishing them.
fn outbox_tables(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let q = |s: &str| d.quote(s);
    let gate = d.writer_gate().map(|g| g.ddl).into_iter().flatten();
    let mut tables = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {},\n  {} {text} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_outbox"),
            q("seq"),
            d.id_column(IdKind::Sequence),
            q("body"),
            q("created_at"),
            d.table_options()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_outbox_lease"),
            q("name"),
            q("holder"),
            q("expires_at"),
            d.table_options()
        ),
    ];
    tables.extend(gate);
    tables
}

fn index(d: &dyn Dialect, unique: bool, name: &str, table: &str, columns: &[String]) -> String {
    format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
        if unique { "UNIQUE " } else { "" },
        d.quote(&index_name(name)),
        d.quote(table),
        columns.join(", ")
    )
}

/// An index serving a query: its equality and membership columns on `from`, then its
/// sort keys; none when a declared index already starts with those columns.
fn query_index(d: &dyn Dialect, q: &QueryMeta) -> Option<String> {
    let t = q.from;
    let column = |name: &'static str| {
        if name == "id" {
            t.id_column
        } else {
            t.field(name).map_or(name, |f| f.column)
        }
    };
    let mut cols: Vec<&str> = Vec::new();
    for c in q
        .filter
        .iter()
        .filter(|c| c.path.len() == 1 && matches!(c.op, CondOp::Eq | CondOp::In))
        .filter(|c| {
            // Unbounded values cannot be index keys everywhere (MariaDB).
            c.path[0] == "id"
                || t.field(c.path[0])
                    .is_some_and(|f| !matches!(f.kind, FieldKind::Text { .. } | FieldKind::Json))
        })
    {
        let col = column(c.path[0]);
        if !cols.contains(&col) {
            cols.push(col);
        }
    }
    if !q.count {
        // The key tie-breaker needs no column: an index entry already leads to its row.
        // A grouped query's keys are its group fields, which the index can deliver sorted.
        let keys = if q.grouped() {
            q.keys()
        } else {
            q.order.to_vec()
        };
        for (k, _) in keys {
            let col = column(k);
            if !cols.contains(&col) {
                cols.push(col);
            }
        }
    }
    if cols.is_empty() || cols == [t.id_column] {
        return None;
    }
    let declared = t
        .indexes
        .iter()
        .map(|fields| fields.iter().map(|f| column(f)).collect::<Vec<_>>())
        .chain(
            t.unique
                .iter()
                .map(|u| u.fields.iter().map(|f| column(f)).collect()),
        );
    if declared.into_iter().any(|idx| idx.starts_with(&cols)) {
        return None;
    }
    let quoted: Vec<String> = cols.iter().map(|c| d.quote(c)).collect();
    Some(index(
        d,
        false,
        &format!("{}_q_{}", t.table, q.name),
        t.table,
        &quoted,
    ))
}

/// A template's table; `warehouse`: without references, unique keys and token tables.
fn table_ddl(
    d: &dyn Dialect,
    all: &[&TemplateMeta],
    t: &TemplateMeta,
    warehouse: bool,
) -> Vec<String> {
    let q = |s: &str| d.quote(s);
    let mut cols = vec![
        format!("{} {}", q(t.id_column), d.id_column(t.id)),
        format!(
            "{} {} NOT NULL",
            q(t.version_column),
            d.key_type(IdKind::Sequence)
        ),
    ];
    let mut indexes = Vec::new();
    for f in t.fields {
        if matches!(f.kind, FieldKind::Ref { .. }) {
            // Deletes of the target and joins look rows up by this column.
            indexes.push(index(
                d,
                false,
                &format!("{}_{}_idx", t.table, f.column),
                t.table,
                &[q(f.column)],
            ));
        }
        // A warehouse row may refer to a record that stays in the serving database.
        cols.push(column_def(d, all, t, f, !warehouse));
    }
    for c in t.checks {
        let [a, b] = c.differ.map(|n| q(t.field(n).expect("checked").column));
        cols.push(format!("CONSTRAINT {} CHECK ({a} <> {b})", q(c.name)));
    }
    for u in t.unique {
        let fields: Vec<_> = u.fields.iter().filter_map(|name| t.field(name)).collect();
        let name = format!(
            "{}_{}_key",
            t.table,
            fields
                .iter()
                .map(|f| f.column)
                .collect::<Vec<_>>()
                .join("_")
        );
        let list: Vec<String> = fields
            .iter()
            .map(|f| d.unique_key_column(&q(f.column), u.case_insensitive))
            .collect();
        indexes.push(index(d, !warehouse, &name, t.table, &list));
    }
    for fields in t.indexes {
        let columns: Vec<&str> = fields
            .iter()
            .filter_map(|name| {
                if *name == "id" {
                    Some(t.id_column)
                } else {
                    t.field(name).map(|f| f.column)
                }
            })
            .collect();
        indexes.push(index(
            d,
            false,
            &format!("{}_{}_idx", t.table, columns.join("_")),
            t.table,
            &columns.iter().map(|c| q(c)).collect::<Vec<_>>(),
        ));
    }
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n){}",
        q(t.table),
        cols.join(",\n  "),
        d.table_options()
    )];
    out.extend(indexes);
    for set in t.tokens.iter().filter(|_| !warehouse) {
        out.extend(token_ddl(d, t, set));
    }
    out
}

/// A declared field's column definition: name, type, nullability and, with `references`,
/// its reference.
fn column_def(
    d: &dyn Dialect,
    all: &[&TemplateMeta],
    t: &TemplateMeta,
    f: &FieldMeta,
    references: bool,
) -> String {
    let q = |s: &str| d.quote(s);
    let ci = t
        .unique
        .iter()
        .any(|u| u.case_insensitive && u.fields.contains(&f.name));
    let null = if f.optional { "" } else { " NOT NULL" };
    let mut col = format!("{} {}{null}", q(f.column), d.column_type(f, ci));
    if let FieldKind::Ref {
        template,
        on_delete,
        ..
    } = f.kind
        && references
    {
        let target = all
            .iter()
            .find(|x| x.name == template)
            .expect("references are checked at build time");
        let action = match on_delete {
            OnDelete::Restrict => "RESTRICT",
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
        };
        col.push_str(&format!(
            " REFERENCES {} ({}) ON DELETE {action}",
            q(target.table),
            q(target.id_column)
        ));
    }
    col
}

/// The declared field stored in `table`.`column`, with its column definition, for a
/// migration adding it to an existing table.
pub(super) fn declared_column(
    d: &dyn Dialect,
    domains: &[&'static DomainMeta],
    table: &str,
    column: &str,
) -> Option<(&'static FieldMeta, String)> {
    domains.iter().find_map(|dm| {
        let t = dm.templates.iter().find(|t| t.table == table)?;
        let f = t.fields.iter().find(|f| f.column == column)?;
        Some((f, column_def(d, dm.templates, t, f, true)))
    })
}

/// The history of applied migration files (`beds schema apply`): which file, its hash,
/// the declaration fingerprint it brought the database to, and how far it got. Created by
/// the first apply, in any database migrations are applied to (serving, admin, warehouse).
pub(super) fn history_table(d: &dyn Dialect) -> String {
    let [key, _, time] = d.idempotency_types();
    let int = d.key_type(IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {} {},\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {key} NOT NULL\n){}",
        q(super::migrate::HISTORY_TABLE),
        q("id"),
        d.id_column(IdKind::Sequence),
        q("file_name"),
        q("sha256"),
        q("fingerprint"),
        q("applied_at"),
        q("beds_version"),
        q("statements_applied"),
        q("outcome"),
        d.table_options()
    )
}

/// A token set's table: one row per distinct token of a record, removed with it.
fn token_ddl(d: &dyn Dialect, t: &TemplateMeta, set: &crate::meta::TokenSetMeta) -> Vec<String> {
    let q = |s: &str| d.quote(s);
    let owner_ty = d.key_type(t.id);
    let token_ty = d.token_type(set.max_len);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {owner_ty} NOT NULL REFERENCES {} ({}) ON DELETE CASCADE,\n  {} {token_ty} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
            q(set.table),
            q("owner"),
            q(t.table),
            q(t.id_column),
            q("token"),
            q("owner"),
            q("token"),
            d.table_options()
        ),
        // Queries look owners up by token.
        index(
            d,
            false,
            &format!("{}_token_idx", set.table),
            set.table,
            &[q("token"), q("owner")],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_index_names_stay_distinct_within_the_limit() {
        assert_eq!(index_name("usr_handle_key"), "usr_handle_key");
        let base = "a_table_name_that_is_long_enough_to_matter_a_lot";
        let one = index_name(&format!("{base}_first_column_idx"));
        let two = index_name(&format!("{base}_first_column_too_idx"));
        assert!(one.len() <= 63 && two.len() <= 63);
        assert_ne!(one, two, "cut alone they would be the same name");
        assert_eq!(one, index_name(&format!("{base}_first_column_idx")));
    }
}
