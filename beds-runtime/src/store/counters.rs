//! Maintained counters and the record of applied write events, written together in one
//! transaction so that an event's effect lands exactly once.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyConnection, AssertSqlSafe};

use super::Store;
use super::dialect::{Failure, Ty};
use crate::meta::{CountMeta, DomainMeta, LiteralValue, Operand};
use crate::value::format_timestamp;

/// Per maintained counter, the outbox `seq` its backfill counted up to: an event at or
/// below it is already in the counter.
pub type CounterMarks = HashMap<String, i64>;

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

    /// Starts every maintained count of `domains` not started before from its rows, and
    /// returns every maintained count's mark. Per count, in one transaction that excludes
    /// writers ([`Dialect::exclude_writers`](super::dialect::Dialect::exclude_writers)):
    /// its counters are replaced by `COUNT(*) … GROUP BY` of the rows (with its filter)
    /// and the outbox high-water mark recorded in `beds_counter_init`; a count already
    /// there keeps its counters and mark. Concurrent nodes serialise on the exclusion.
    pub async fn initialise_counters(
        &self,
        domains: &[&'static DomainMeta],
    ) -> Result<CounterMarks, sqlx::Error> {
        let mut marks = HashMap::new();
        for domain in domains {
            let counts = domain
                .templates
                .iter()
                .flat_map(|t| t.counts)
                .filter(|c| c.maintained);
            for count in counts {
                let name = counter_name(domain, count);
                let mark = self.initialise_counter(domain, count, &name).await?;
                marks.insert(name, mark);
            }
        }
        Ok(marks)
    }

    async fn initialise_counter(
        &self,
        domain: &DomainMeta,
        count: &CountMeta,
        name: &str,
    ) -> Result<i64, sqlx::Error> {
        let d = self.dialect;
        let q = |s: &str| d.quote(s);
        let sql = |text: String| d.prepare(text);
        let known = sql(format!(
            "SELECT {} FROM {} WHERE {} = ?",
            q("seq"),
            q("beds_counter_init"),
            q("counter")
        ));
        // Started before: no need to hold writers up.
        if let Some(mark) = sqlx::query_scalar(known.clone())
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(mark);
        }
        let mut tx = self.pool.begin_with(d.begin()).await?;
        if let Some(exclude) = d.exclude_writers() {
            sqlx::query(AssertSqlSafe(exclude))
                .execute(&mut *tx)
                .await?;
        }
        // Again under the exclusion (another node may have started it meanwhile); on
        // MariaDB this is also the first consistent read, so the snapshot the counts are
        // read from is taken after the exclusion.
        let known: Option<i64> = sqlx::query_scalar(known)
            .bind(name.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(mark) = known {
            tx.commit().await?;
            return Ok(mark);
        }
        let mark: i64 = sqlx::query_scalar(AssertSqlSafe(d.outbox_high_water()))
            .fetch_one(&mut *tx)
            .await?;
        let counted = domain
            .template(count.template)
            .expect("checked at build time");
        let by = q(counted
            .field(count.by)
            .expect("checked at build time")
            .column);
        let mut tests = vec![format!("{by} IS NOT NULL")];
        let mut literals = Vec::new();
        for c in count.filter {
            let f = counted.field(c.path[0]).expect("checked at build time");
            tests.push(format!("{} = {}", q(f.column), d.arg(Ty::of_field(f))));
            match &c.operand {
                Operand::Literal(v) => literals.push(*v),
                _ => unreachable!("count filters compare a field with a literal"),
            }
        }
        let mut select = sqlx::query_as::<_, (String, i64)>(sql(format!(
            "SELECT {}, COUNT(*) FROM {} WHERE {} GROUP BY {by}",
            d.as_text(&by),
            q(counted.table),
            tests.join(" AND ")
        )));
        for v in literals {
            select = match v {
                LiteralValue::Bool(b) => select.bind(b),
                LiteralValue::Enum(e) => select.bind(e),
            };
        }
        let rows = select.fetch_all(&mut *tx).await?;
        sqlx::query(sql(format!(
            "DELETE FROM {} WHERE {} = ?",
            q("beds_counter"),
            q("counter")
        )))
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?;
        for (owner, n) in rows {
            sqlx::query(sql(format!(
                "INSERT INTO {} ({}, {}, {}) VALUES (?, ?, ?)",
                q("beds_counter"),
                q("counter"),
                q("owner"),
                q("value")
            )))
            .bind(name.to_string())
            .bind(owner)
            .bind(n)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(sql(format!(
            "INSERT INTO {} ({}, {}, {}) VALUES (?, ?, ?)",
            q("beds_counter_init"),
            q("counter"),
            q("seq"),
            q("initialised_at")
        )))
        .bind(name.to_string())
        .bind(mark)
        .bind(format_timestamp(&crate::value::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(mark)
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
