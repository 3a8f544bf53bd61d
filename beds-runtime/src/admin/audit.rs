//! The `audit` capability's admin side: the append-only table of audit records.

use crate::store::Dialect;

/// The audit table: one row per committed write of an audited template, keyed by its
/// write event's id, so a redelivered event inserts nothing. Rows are only ever inserted.
pub(crate) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let int = d.key_type(crate::meta::IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {time} NOT NULL,\n  {} {key},\n  {} {key},\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {text} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_audit"),
            q("id"),
            q("domain"),
            q("template"),
            q("record_key"),
            q("op"),
            q("version"),
            q("seq"),
            q("committed_at"),
            q("service"),
            q("subject"),
            q("request_id"),
            q("correlation_id"),
            q("changes"),
            q("recorded_at"),
            d.table_options()
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}, {}, {}, {})",
            q("beds_audit_record_idx"),
            q("beds_audit"),
            q("domain"),
            q("template"),
            q("record_key"),
            q("seq"),
        ),
    ]
}
