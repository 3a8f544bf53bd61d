//! Where retention put the records it moved out of a database (wiki/retention.md), read
//! back: the tombstones of the serving database (`beds_moved`, one per moved record) and
//! the COLD files' lookup index of the warehouse (`beds_cold_index`). Their DDL is in
//! `schema` (the serving and the warehouse DDL); the mover writes them (`retention`).

use sqlx::Row;

use super::{Store, StoreError};
use crate::envelope::Tier;
use crate::error::BedsError;
use crate::meta::TemplateMeta;

/// Where a record sits in COLD storage: its file (relative to `segundo.cold_dir`) and its
/// line in it (counted from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdLocation {
    pub file: String,
    pub line: i64,
}

/// `domain.template`, as both tables name a template.
pub fn template_name(t: &TemplateMeta) -> String {
    format!("{}.{}", t.domain, t.name)
}

impl Store {
    /// The tier a record moved to, from its tombstone; `None` if it never moved (or was
    /// deleted for good). `template` is `domain.template`, `key` the record's id as the
    /// wire shows it.
    pub async fn moved_tier(&self, template: &str, key: &str) -> Result<Option<Tier>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ? AND {} = ?",
            self.dialect.quote("tier"),
            self.dialect.quote("beds_moved"),
            self.dialect.quote("template"),
            self.dialect.quote("record_key"),
        );
        let row = sqlx::query(self.dialect.prepare(sql))
            .bind(template.to_string())
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Moved)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tier: String = row.try_get(0).map_err(StoreError::Moved)?;
        Ok(Tier::parse(&tier))
    }

    /// [`Store::moved_tier`] on the read path: a failure in the error contract.
    pub(crate) async fn moved(
        &self,
        t: &TemplateMeta,
        key: &str,
    ) -> Result<Option<Tier>, BedsError> {
        self.moved_tier(&template_name(t), key)
            .await
            .map_err(|e| match e {
                StoreError::Moved(e) => self.db_error(t, e, super::Write::None),
                other => BedsError::new(crate::error::ErrorCode::Internal, other.to_string()),
            })
    }

    /// Where the COLD index of this (warehouse) database puts a record, if anywhere.
    pub async fn cold_location(
        &self,
        t: &TemplateMeta,
        key: &str,
    ) -> Result<Option<ColdLocation>, BedsError> {
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} = ? AND {} = ?",
            self.dialect.quote("file"),
            self.dialect.quote("line"),
            self.dialect.quote("beds_cold_index"),
            self.dialect.quote("template"),
            self.dialect.quote("record_key"),
        );
        let row = sqlx::query(self.dialect.prepare(sql))
            .bind(template_name(t))
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, super::Write::None))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let location = (|| {
            Ok::<_, sqlx::Error>(ColdLocation {
                file: row.try_get(0)?,
                line: row.try_get(1)?,
            })
        })();
        location
            .map(Some)
            .map_err(|e| self.db_error(t, e, super::Write::None))
    }
}
