//! Maintained counters and the record of applied write events, written together in one
//! transaction so that an event's effect lands exactly once.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use super::Store;
use super::dialect::Failure;
use crate::meta::{CountMeta, DomainMeta};
use crate::value::format_timestamp;

/// One event's effect on the counters: its id, then `(counter, owner, delta)` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEffect {
    pub id: String,
    pub deltas: Vec<(String, String, i64)>,
}

/// The counter table's name of a maintained count of `domain`.
pub fn counter_name(domain: &DomainMeta, count: &CountMeta) -> String {
    super::sql::counter_name(domain.name, count)
}

impl Store {
    /// Records the ids of `events` as applied and adds the deltas of those not applied
    /// before, one statement per counter key (summed over the batch), in one transaction.
    /// Returns how many events were new. Ids are claimed in sorted order and counters
    /// updated in sorted order, so concurrent batches on several nodes cannot deadlock on
    /// each other's locks.
    pub async fn apply_events(&self, events: &[EventEffect]) -> Result<usize, sqlx::Error> {
        let mut by_id: BTreeMap<&str, &EventEffect> = BTreeMap::new();
        for e in events {
            by_id.entry(e.id.as_str()).or_insert(e);
        }
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        let now = format_timestamp(&crate::value::now());
        let mut sums: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut new = 0;
        for (id, e) in by_id {
            if !self.claim_event(&mut tx, id, &now).await? {
                continue;
            }
            new += 1;
            for (counter, owner, delta) in &e.deltas {
                *sums.entry((counter, owner)).or_default() += delta;
            }
        }
        for ((counter, owner), delta) in sums.into_iter().filter(|(_, d)| *d != 0) {
            sqlx::query(self.counters.add.clone())
                .bind(counter.to_string())
                .bind(owner.to_string())
                .bind(delta)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Inserts the event's id; false if it was applied before (by this node or another:
    /// on PostgreSQL and MariaDB the insert waits for a concurrent claim to settle).
    async fn claim_event(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        now: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(self.counters.claim.clone())
            .bind(id.to_string())
            .bind(now.to_string())
            .execute(conn)
            .await;
        match done {
            Ok(done) => Ok(done.rows_affected() == 1),
            // MariaDB's claim is a plain insert; its statement error leaves the
            // transaction usable.
            Err(sqlx::Error::Database(db))
                if matches!(self.dialect.classify(db.as_ref()), Failure::Unique(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets applied event ids older than `ttl` (past any redelivery); returns how many.
    pub async fn expire_applied_events(
        &self,
        ttl: std::time::Duration,
    ) -> Result<u64, sqlx::Error> {
        let cutoff =
            crate::value::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query(self.counters.expire.clone())
            .bind(format_timestamp(&cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
