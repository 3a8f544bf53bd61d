//! The retention mover (wiki/retention.md): every `segundo.interval`, for each template
//! declaring `retention`, moves records past `hot` from the serving database to the
//! warehouse (copy, verify, then delete with a tombstone, in that order) and records past
//! `cool` from the warehouse to cold files (`then: keep`) or away (`then: delete`), in
//! batches of `segundo.batch`. Every step is idempotent, so a pass killed anywhere is
//! finished by the next one without losing or doubling a record.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Parts;
use crate::cache::Invalidation;
use crate::envelope::Tier;
use crate::error::BedsError;
use crate::events::Lineage;
use crate::meta::{FieldMeta, RetentionEnd, RetentionMeta, TemplateMeta};
use crate::store::{ColdFile, RetireError, Stored, template_name};
use crate::value::{Timestamp, format_timestamp};

/// The environment variable naming a failpoint (a test hook, wiki/testing.md): when the
/// mover reaches the named point it logs `failpoint reached: NAME` and waits forever, so
/// a test can kill -9 the process exactly there.
pub const FAILPOINT_VAR: &str = "BEDS_TEST_FAILPOINT";

/// After the warehouse copy committed, before it is verified.
const AFTER_COPY: &str = "retention.after_copy";
/// After the copy was verified, before the serving database's delete.
const AFTER_VERIFY: &str = "retention.after_verify";
/// After a cold file was renamed into place, before it is indexed.
const AFTER_COLD_FILE: &str = "retention.after_cold_file";

/// Why a retention step failed; the pass stops and the next one starts over.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RetentionError {
    #[error("{0}")]
    Store(#[from] BedsError),
    #[error("{0}")]
    Retire(#[from] RetireError),
    #[error("updating tombstones or reading cold files failed: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(
        "the warehouse copy of `{template}` {key} differs from the serving row; nothing was deleted"
    )]
    Mismatch { template: String, key: String },
    #[error("writing the cold file {path}: {source}; check that segundo.cold_dir is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one pass moved, per tier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub warehouse: u64,
    pub cold: u64,
    pub deleted: u64,
}

/// Runs passes until `parts.stop`; a failed pass is logged and retried at the next tick.
pub(crate) async fn run(parts: Parts) {
    let retained: Vec<(&'static TemplateMeta, RetentionMeta)> =
        crate::meta::templates(parts.catalog.domains)
            .filter_map(|(_, t)| t.capabilities.retention.map(|r| (t, r)))
            .collect();
    if retained.is_empty() {
        tracing::info!("no template declares retention; the retention mover is idle");
        return;
    }
    let mover = Mover {
        failpoint: std::env::var(FAILPOINT_VAR).ok(),
        parts,
    };
    if let Err(e) = mover.write_manifest().await {
        tracing::error!(error = %e, "rewriting the cold manifest failed");
    }
    let mut tick = tokio::time::interval(mover.parts.config.segundo.interval.duration());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = mover.parts.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let mut total = Moved::default();
        for (t, r) in &retained {
            match mover.pass(t, r).await {
                Ok(m) => {
                    total.warehouse += m.warehouse;
                    total.cold += m.cold;
                    total.deleted += m.deleted;
                }
                Err(e) => {
                    tracing::error!(template = %template_name(t), error = %e, "retention pass failed; the next pass resumes it")
                }
            }
        }
        tracing::info!(
            to_warehouse = total.warehouse,
            to_cold = total.cold,
            deleted = total.deleted,
            ms = started.elapsed().as_millis() as u64,
            "retention pass"
        );
    }
}

struct Mover {
    parts: Parts,
    failpoint: Option<String>,
}

impl Mover {
    /// Moves every expired record of `t`, batch after batch, until none is left.
    async fn pass(
        &self,
        t: &'static TemplateMeta,
        r: &RetentionMeta,
    ) -> Result<Moved, RetentionError> {
        let now = crate::value::now();
        let field = t
            .field(r.field)
            .expect("the retention field is checked at build time");
        let mut moved = Moved::default();
        loop {
            if self.parts.stop.is_cancelled() {
                return Ok(moved);
            }
            let n = self.to_warehouse(t, field, before(now, r.hot_ms)).await?;
            moved.warehouse += n;
            if n == 0 {
                break;
            }
        }
        loop {
            if self.parts.stop.is_cancelled() {
                return Ok(moved);
            }
            let n = self
                .out_of_warehouse(t, r, field, before(now, r.cool_ms))
                .await?;
            match r.then {
                RetentionEnd::Keep => moved.cold += n,
                RetentionEnd::Delete => moved.deleted += n,
            }
            if n == 0 {
                break;
            }
        }
        Ok(moved)
    }

    /// One batch HOT → COOL: the oldest expired records not restricted by a serving
    /// record, with what cascades from them; copied, verified, then retired. The number
    /// of records moved (0: nothing left to move).
    async fn to_warehouse(
        &self,
        t: &'static TemplateMeta,
        field: &FieldMeta,
        cutoff: Timestamp,
    ) -> Result<u64, RetentionError> {
        let (store, warehouse) = (&self.parts.store, &self.parts.warehouse);
        let batch = self.parts.config.segundo.batch.max(1);
        let (mut roots, mut moved) = (Vec::new(), Vec::<Stored>::new());
        // Restricted records are skipped; a longer page is read while they keep the batch
        // from filling, so they never block the records behind them.
        let mut limit = batch;
        loop {
            let page = store.expired(t, field, cutoff, limit).await?;
            let full = page.len() as u32 == limit;
            roots.clear();
            moved.clear();
            for rec in page {
                if roots.len() as u32 >= batch {
                    break;
                }
                let root = Stored {
                    template: t,
                    record: rec,
                };
                // Already in the batch as another root's cascade.
                if moved.iter().any(|m| same(m, &root)) || store.restricted(t, &root.record).await?
                {
                    continue;
                }
                let children = store.cascaded(t, &root.record).await?;
                moved.push(root.clone());
                for c in children {
                    if !moved.iter().any(|m| same(m, &c)) {
                        moved.push(c);
                    }
                }
                roots.push(root);
            }
            if roots.len() as u32 >= batch || !full {
                break;
            }
            limit += batch;
        }
        if moved.is_empty() {
            return Ok(0);
        }
        warehouse.put_verbatim(&moved).await?;
        self.failpoint(AFTER_COPY).await;
        for s in &moved {
            let id = s.record.get("id").cloned().unwrap_or_default();
            if warehouse.stored(s.template, &id).await?.as_ref() != Some(&s.record) {
                return Err(RetentionError::Mismatch {
                    template: s.template_name(),
                    key: s.key(),
                });
            }
        }
        self.failpoint(AFTER_VERIFY).await;
        let lineage = self.lineage();
        store
            .retire(&roots, &moved, Tier::Warehouse, lineage.as_ref())
            .await?;
        self.invalidate(&moved, lineage.as_ref());
        for s in &moved {
            self.parts.ingress.metrics.retention(
                s.template.domain,
                s.template.name,
                "warehouse",
                1,
            );
        }
        Ok(moved.len() as u64)
    }

    /// One batch COOL → COLD (or away): the oldest warehouse records past `cool`. With
    /// `then: keep` they are written to a cold file named by the batch's first key (so a
    /// retried batch rewrites the same file), the tombstones say `cold`, and the file is
    /// indexed and the rows deleted in one warehouse transaction; with `then: delete` the
    /// tombstones go, then the rows.
    async fn out_of_warehouse(
        &self,
        t: &'static TemplateMeta,
        r: &RetentionMeta,
        field: &FieldMeta,
        cutoff: Timestamp,
    ) -> Result<u64, RetentionError> {
        let (store, warehouse) = (&self.parts.store, &self.parts.warehouse);
        let rows = warehouse
            .expired(t, field, cutoff, self.parts.config.segundo.batch.max(1))
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let records: Vec<Stored> = rows
            .into_iter()
            .map(|record| Stored {
                template: t,
                record,
            })
            .collect();
        match r.then {
            RetentionEnd::Keep => {
                let file = self.write_cold_file(t, &records)?;
                self.failpoint(AFTER_COLD_FILE).await;
                store.set_moved(&records, Some(Tier::Cold)).await?;
                warehouse.settle_cold(Some(&file), &records).await?;
                self.write_manifest().await?;
            }
            RetentionEnd::Delete => {
                store.set_moved(&records, None).await?;
                warehouse.settle_cold(None, &records).await?;
            }
        }
        let tier = match r.then {
            RetentionEnd::Keep => "cold",
            RetentionEnd::Delete => "deleted",
        };
        self.parts
            .ingress
            .metrics
            .retention(t.domain, t.name, tier, records.len() as u64);
        Ok(records.len() as u64)
    }

    /// Writes `records` (one JSON line each, in order) to
    /// `{cold_dir}/{domain}/{template}/{batch}.jsonl.gz` through a temporary file,
    /// fsynced and renamed; `batch` is derived from the first record's key.
    fn write_cold_file(
        &self,
        t: &TemplateMeta,
        records: &[Stored],
    ) -> Result<ColdFile, RetentionError> {
        let root = &self.parts.config.segundo.cold_dir;
        let first = records[0].key();
        let last = records[records.len() - 1].key();
        let batch =
            hex(&Sha256::digest(format!("{}\n{first}", template_name(t))))[..32].to_string();
        let relative = format!("{}/{}/{batch}.jsonl.gz", t.domain, t.name);
        let path = root.join(&relative);
        let dir = path.parent().expect("a file under cold_dir").to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RetentionError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut text = Vec::new();
        for s in records {
            text.extend_from_slice(s.record.to_string().as_bytes());
            text.push(b'\n');
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).map_err(io(&path))?;
        let bytes = gz.finish().map_err(io(&path))?;
        write_atomically(&path, &bytes).map_err(io(&path))?;
        let (min_key, max_key) = records
            .iter()
            .map(Stored::key)
            .fold((first.clone(), last.clone()), |(lo, hi), k| {
                (lo.min(k.clone()), hi.max(k))
            });
        Ok(ColdFile {
            file: relative,
            template: template_name(t),
            records: records.len() as i64,
            min_key,
            max_key,
            sha256: hex(&Sha256::digest(&bytes)),
            created_at: format_timestamp(&crate::value::now()),
        })
    }

    /// Rewrites `{cold_dir}/manifest.json` from the warehouse's cold files (temporary
    /// file, fsync, rename): it lists exactly the indexed files, so a file written by a
    /// killed pass but never indexed is not in it.
    async fn write_manifest(&self) -> Result<(), RetentionError> {
        let files = self.parts.warehouse.cold_files().await?;
        let root = &self.parts.config.segundo.cold_dir;
        let path = root.join("manifest.json");
        let body = json!({
            "files": files.iter().map(|f| json!({
                "template": f.template,
                "file": f.file,
                "records": f.records,
                "min_key": f.min_key,
                "max_key": f.max_key,
                "sha256": f.sha256,
                "created_at": f.created_at,
            })).collect::<Vec<_>>(),
        });
        let io = |source| RetentionError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let text = serde_json::to_vec_pretty(&body).expect("a manifest serializes");
        write_atomically(&path, &text).map_err(io)
    }

    /// The lineage of a pass's write events, when events are on: a conversation of its
    /// own, from this node.
    fn lineage(&self) -> Option<Lineage> {
        self.parts.config.events.enabled.then(|| {
            let id = Uuid::now_v7();
            Lineage {
                correlation_id: id,
                causation_id: id,
                depth: 0,
                origin: self.parts.lineage.origin().clone(),
                caller: None,
            }
        })
    }

    /// Tells every node at once to drop its cached copies of `moved` (best effort; the
    /// tercero's invalidations from the delete events are the guaranteed path).
    fn invalidate(&self, moved: &[Stored], lineage: Option<&Lineage>) {
        let id = Uuid::now_v7();
        for s in moved {
            let key = serde_json::Map::from_iter([(
                "id".to_string(),
                s.record.get("id").cloned().unwrap_or_default(),
            )]);
            self.parts.ingress.cache.broadcast(Invalidation {
                v: 1,
                kind: crate::cache::KIND.into(),
                id: Uuid::now_v7(),
                correlation_id: lineage.map_or(id, |l| l.correlation_id),
                causation_id: lineage.map_or(id, |l| l.causation_id),
                depth: 1,
                origin: self.parts.lineage.origin().clone(),
                domain: s.template.domain.into(),
                template: s.template.name.into(),
                key,
                version: None,
            });
        }
    }

    /// The test hook of [`FAILPOINT_VAR`]: one comparison when it is set, nothing else.
    async fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::warn!(failpoint = name, "failpoint reached: {name}");
            std::future::pending::<()>().await;
        }
    }
}

fn same(a: &Stored, b: &Stored) -> bool {
    std::ptr::eq(a.template, b.template) && a.key() == b.key()
}

fn before(now: Timestamp, ms: u64) -> Timestamp {
    now - chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` at `path`, all or nothing: written to a temporary name beside it, fsynced,
/// renamed over it, and the directory fsynced so the rename survives a crash.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
