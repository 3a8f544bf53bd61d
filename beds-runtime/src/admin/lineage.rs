//! The lineage store (wiki/operations.md, "Lineage"): the admin consumes the record batches
//! every node publishes to `{queue_tag}log.lineage` from its durable queue
//! `{queue_tag}lineage`, keeps them in `beds_lineage` for `admin.lineage_keep`, and answers
//! the `lineage` op with one conversation's records.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde_json::{Value as Json, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::request::AdminRequest;
use super::store::AdminStore;
use crate::config::AmqpConfig;
use crate::error::{BedsError, ErrorCode};
use crate::ingress::settle::{ack, dead_letter_or_reject};
use crate::lineage::{ROUTING_KEY, Record};
use crate::node::consumer::Handler;
use crate::store::{Dialect, until_written};
use crate::transport::names::{DEAD_LETTER_EXCHANGE, dead_letter_queue};
use crate::transport::signing::ServiceKey;
use crate::transport::topology;

/// The admin's lineage queue, before the queue tag.
pub const LINEAGE_KEY: &str = "lineage";
/// The most records one `lineage` op returns; a larger conversation says `truncated`.
pub const MAX_RECORDS: usize = 10_000;
/// Expired records are deleted at most this often (as batches arrive), not per batch.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

const TABLE: &str = "beds_lineage";

/// The lineage table: one row per record, keyed by its id, so a batch delivered twice
/// inserts nothing new; the record itself is kept as its JSON, the columns beside it are
/// what lookups and expiry need.
pub(crate) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL,\n  {} {text} NOT NULL\n){}",
            q(TABLE),
            q("id"),
            q("correlation_id"),
            q("at"),
            q("record"),
            d.table_options()
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})",
            q("beds_lineage_correlation_idx"),
            q(TABLE),
            q("correlation_id"),
            q("at"),
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            q("beds_lineage_at_idx"),
            q(TABLE),
            q("at"),
        ),
    ]
}

/// Declares the durable queue `{tag}lineage` bound by `{tag}log.lineage`, with its DLQ.
/// Only the admin declares it: with no admin ever started, records go nowhere rather than
/// piling up in a queue no one reads.
pub(crate) async fn declare(channel: &Channel, amqp: &AmqpConfig) -> lapin::Result<()> {
    topology::declare_events(channel, amqp, LINEAGE_KEY, ROUTING_KEY).await?;
    // A batch dead-lettered (by this consumer or by RabbitMQ) keeps its routing key,
    // `{tag}log.lineage`, which must reach the DLQ too.
    channel
        .queue_bind(
            dead_letter_queue(&amqp.queue(LINEAGE_KEY)).as_str().into(),
            DEAD_LETTER_EXCHANGE.into(),
            amqp.queue(ROUTING_KEY).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The consumer of `{queue_tag}lineage`.
#[derive(Debug)]
pub(crate) struct Keeper {
    pub amqp: AmqpConfig,
    pub store: AdminStore,
    pub key: ServiceKey,
    /// How long records are kept (`admin.lineage_keep`).
    pub keep: Duration,
    /// The node's stop: a batch the database refuses is retried until it fires.
    pub stop: CancellationToken,
    /// When expired records were last deleted (Unix ms); 0 before the first sweep.
    pub swept: AtomicI64,
}

impl Handler for Keeper {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        declare(channel, &self.amqp).await
    }

    async fn handle(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        let mut batch = match serde_json::from_slice::<Vec<Record>>(&delivery.data) {
            Ok(batch) => batch,
            Err(e) => {
                let error = BedsError::new(
                    ErrorCode::Undecodable,
                    format!(
                        "not a batch of lineage records ({e}); publish a JSON array of records (wiki/envelope.md, \"Lineage\")"
                    ),
                );
                return self.poison(&channel, &delivery, error).await;
            }
        };
        // A record already past its keep (a late or redelivered batch) is not stored again.
        if let Some(cutoff) = self.cutoff() {
            batch.retain(|r| r.at >= cutoff);
        }
        let store = || insert(&self.store, &batch);
        if until_written(&self.stop, "storing lineage records", store)
            .await
            .is_none()
        {
            return;
        }
        ack(&delivery).await;
        self.sweep().await;
    }
}

impl Keeper {
    /// Deletes the records older than `keep`, unless another delivery did within
    /// [`SWEEP_EVERY`]. A failure waits for the next sweep: expiry is housekeeping.
    async fn sweep(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        let last = self.swept.load(Ordering::Relaxed);
        let every = SWEEP_EVERY.as_millis() as i64;
        if now - last < every
            || self
                .swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(before) = self.cutoff() else {
            return;
        };
        match expire(&self.store, &before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired lineage records deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired lineage records failed"),
        }
    }

    /// The oldest `at` kept; none when `keep` reaches before any time there is.
    fn cutoff(&self) -> Option<crate::value::Timestamp> {
        let keep = chrono::Duration::from_std(self.keep).ok()?;
        crate::value::now().checked_sub_signed(keep)
    }

    /// Dead-letters a delivery that is no batch of records to the queue's DLQ (reason in
    /// headers), then acks it; if that publish fails, rejects it so the queue's own
    /// dead-lettering keeps it.
    async fn poison(&self, channel: &Channel, delivery: &Delivery, error: BedsError) {
        tracing::warn!(code = ?error.code, reason = %error.message, "dead-lettering a delivery on the lineage queue");
        if !dead_letter_or_reject(channel, &self.key, delivery, &error).await {
            tracing::error!("rejecting a poison lineage delivery failed; it will be redelivered");
        }
    }
}

/// Inserts a batch in one transaction; records already stored are left as they are.
async fn insert(store: &AdminStore, batch: &[Record]) -> Result<(), sqlx::Error> {
    let d = store.dialect();
    let q = |s: &str| d.quote(s);
    let insert = format!(
        "INSERT INTO {} ({}, {}, {}, {}) VALUES (?, ?, ?, ?)",
        q(TABLE),
        q("id"),
        q("correlation_id"),
        q("at"),
        q("record"),
    );
    let sql = store.sql(d.keep_existing(&insert, &q("id")));
    let mut tx = store.pool().begin().await?;
    for r in batch {
        let record = serde_json::to_string(r).expect("lineage records serialise");
        sqlx::query(sql.clone())
            .bind(r.id.to_string())
            .bind(r.correlation_id.to_string())
            .bind(crate::value::format_timestamp(&r.at))
            .bind(record)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Deletes the records that started before `before`; returns how many.
async fn expire(store: &AdminStore, before: &crate::value::Timestamp) -> Result<u64, sqlx::Error> {
    let d = store.dialect();
    let sql = format!("DELETE FROM {} WHERE {} < ?", d.quote(TABLE), d.quote("at"));
    // Fixed-width RFC 3339 text in UTC compares in time order.
    sqlx::query(store.sql(sql))
        .bind(crate::value::format_timestamp(before))
        .execute(store.pool())
        .await
        .map(|done| done.rows_affected())
}

/// The `lineage` op: `{message_id}` (the id of any message or effect recorded in a
/// conversation; its correlation id is its first message's id) -> `{correlation_id,
/// records, truncated}`, records by time; `correlation_id` is null when nothing of it is
/// stored. Not `id`: an adm request's `id` is its own message id.
pub(crate) async fn query(store: &AdminStore, req: &AdminRequest) -> Result<Json, BedsError> {
    let id: Uuid = req.required("message_id")?;
    let d = store.dialect();
    let q = |s: &str| d.quote(s);
    let unavailable = |e: sqlx::Error| {
        BedsError::new(
            ErrorCode::DatabaseUnavailable,
            format!("reading the lineage store failed: {e}; check admin.database and retry"),
        )
    };
    let owner = format!(
        "SELECT {} FROM {} WHERE {} = ?",
        q("correlation_id"),
        q(TABLE),
        q("id")
    );
    let of_record: Option<String> = sqlx::query(store.sql(owner))
        .bind(id.to_string())
        .fetch_optional(store.pool())
        .await
        .map_err(unavailable)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(unavailable)?;
    // A root request's id is its conversation's: not found as a record id (not stored
    // yet, or expired), the id is tried as a correlation id.
    let correlation = of_record.unwrap_or_else(|| id.to_string());
    let select = format!(
        "SELECT {} FROM {} WHERE {} = ? ORDER BY {}, {} LIMIT {}",
        q("record"),
        q(TABLE),
        q("correlation_id"),
        q("at"),
        q("id"),
        MAX_RECORDS + 1
    );
    let rows = sqlx::query(store.sql(select))
        .bind(&correlation)
        .fetch_all(store.pool())
        .await
        .map_err(unavailable)?;
    let truncated = rows.len() > MAX_RECORDS;
    let mut records = Vec::with_capacity(rows.len().min(MAX_RECORDS));
    for row in rows.iter().take(MAX_RECORDS) {
        let text: String = row.try_get(0).map_err(unavailable)?;
        records.push(serde_json::from_str::<Json>(&text).map_err(|e| {
            BedsError::new(
                ErrorCode::Internal,
                format!("a stored lineage record is not JSON: {e}"),
            )
        })?);
    }
    Ok(json!({
        "correlation_id": (!records.is_empty()).then_some(correlation),
        "records": records,
        "truncated": truncated,
    }))
}
