//! What the node should answer, worked out from the records the suite made: which records
//! a query's conditions match, in which order, with which `with` values, and what a delete
//! removes, nulls or is refused by.

use std::cmp::Ordering;
use std::collections::HashSet;

use beds_runtime::support::{
    CondOp, ConditionMeta, DomainMeta, FieldKind, IdKind, LiteralValue, OnDelete, Operand,
    QueryMeta, TemplateMeta, WithKind,
};
use serde_json::{Map, Value as Json};

use super::Made;
use super::sample::folded;

/// How values of one field compare in every supported database (samples are ASCII, so
/// binary text order is the order of SQLite, PostgreSQL's C collation and MariaDB's
/// `utf8mb4_bin`; MariaDB compares case-insensitive columns case-insensitively, as their
/// capitals).
#[derive(Debug, Clone, Copy)]
pub enum Cmp {
    Int,
    Float,
    Bool,
    Instant,
    Text { fold: bool },
}

impl Cmp {
    /// `name` of `t` (`id` included); `fold` says whether the database folds the case of
    /// case-insensitive fields.
    pub fn of(t: &TemplateMeta, name: &str, fold: bool) -> Cmp {
        if name == "id" {
            return match t.id {
                IdKind::Uuid7 => Cmp::Text { fold: false },
                IdKind::Sequence => Cmp::Int,
            };
        }
        match t.field(name).unwrap().kind {
            FieldKind::Integer { .. } | FieldKind::BigInt { .. } => Cmp::Int,
            FieldKind::Ref {
                id: IdKind::Sequence,
                ..
            } => Cmp::Int,
            FieldKind::Float { .. } => Cmp::Float,
            FieldKind::Bool => Cmp::Bool,
            FieldKind::Timestamp => Cmp::Instant,
            FieldKind::String { .. } | FieldKind::Text { .. } => Cmp::Text {
                fold: fold && folded(t, name),
            },
            _ => Cmp::Text { fold: false },
        }
    }

    /// `None` when either side is NULL (SQL: unknown).
    pub fn cmp(self, a: &Json, b: &Json) -> Option<Ordering> {
        if a.is_null() || b.is_null() {
            return None;
        }
        Some(match self {
            Cmp::Int => a.as_i64()?.cmp(&b.as_i64()?),
            Cmp::Float => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
            Cmp::Bool => a.as_bool()?.cmp(&b.as_bool()?),
            Cmp::Instant => {
                let t = |j: &Json| chrono::DateTime::parse_from_rfc3339(j.as_str()?).ok();
                t(a)?.cmp(&t(b)?)
            }
            Cmp::Text { fold: false } => a.as_str()?.cmp(b.as_str()?),
            // `utf8mb4_general_ci` weighs letters as their capitals: `_` sorts after `Z`.
            Cmp::Text { fold: true } => a.as_str()?.to_uppercase().cmp(&b.as_str()?.to_uppercase()),
        })
    }

    fn starts_with(self, a: &Json, prefix: &Json) -> bool {
        match (a.as_str(), prefix.as_str()) {
            (Some(a), Some(p)) if matches!(self, Cmp::Text { fold: true }) => {
                a.to_lowercase().starts_with(&p.to_lowercase())
            }
            (Some(a), Some(p)) => a.starts_with(p),
            _ => false,
        }
    }
}

/// The records of one domain the suite made, and how its database compares text.
pub struct Model<'a> {
    pub d: &'static DomainMeta,
    pub made: &'a Made,
    /// Case-insensitive fields compare case-insensitively.
    pub fold: bool,
}

/// What a condition's path reaches on one record.
enum Reached {
    Value(Json, Cmp),
    Tokens(Vec<String>),
    Nothing,
}

impl Model<'_> {
    pub fn template(&self, name: &str) -> &'static TemplateMeta {
        self.d.template(name).unwrap()
    }

    pub fn records(&self, t: &str) -> &[Json] {
        self.made.get(t).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn find(&self, t: &str, id: &Json) -> Option<&Json> {
        self.records(t).iter().find(|r| &r["id"] == id)
    }

    /// The record and template at the end of `refs` followed from `record`.
    pub fn follow<'r>(
        &'r self,
        mut t: &'static TemplateMeta,
        mut record: &'r Json,
        refs: &[&str],
    ) -> Option<(&'static TemplateMeta, &'r Json)> {
        for name in refs {
            let FieldKind::Ref { template, .. } = t.field(name).unwrap().kind else {
                unreachable!("paths follow references")
            };
            t = self.template(template);
            record = self.find(template, &record[*name])?;
        }
        Some((t, record))
    }

    fn reach(&self, t: &'static TemplateMeta, record: &Json, path: &[&str]) -> Reached {
        let (last, refs) = path.split_last().unwrap();
        let Some((t, record)) = self.follow(t, record, refs) else {
            return Reached::Nothing;
        };
        match t.token_set(last) {
            Some(set) => Reached::Tokens(tokens(set, record[set.source].as_str().unwrap_or(""))),
            None => Reached::Value(record[*last].clone(), Cmp::of(t, last, self.fold)),
        }
    }

    fn holds(
        &self,
        t: &'static TemplateMeta,
        record: &Json,
        c: &ConditionMeta,
        params: &Map<String, Json>,
    ) -> bool {
        let reached = self.reach(t, record, c.path);
        let operand = match &c.operand {
            Operand::Param(name) => match params.get(*name) {
                None | Some(Json::Null) => return true, // an optional parameter left out
                Some(v) => v.clone(),
            },
            Operand::Literal(LiteralValue::Bool(b)) => Json::Bool(*b),
            Operand::Literal(LiteralValue::Enum(e)) => Json::from(*e),
            Operand::Select(s) => Json::Array(
                self.records(s.from.name)
                    .iter()
                    .filter(|r| s.filter.iter().all(|c| self.holds(s.from, r, c, params)))
                    .map(|r| r[s.select].clone())
                    .collect(),
            ),
        };
        match reached {
            Reached::Nothing => false,
            Reached::Tokens(tokens) => {
                let has = |v: &Json| tokens.iter().any(|t| Some(t.as_str()) == v.as_str());
                match c.op {
                    CondOp::In => operand.as_array().unwrap().iter().any(has),
                    _ => has(&operand),
                }
            }
            Reached::Value(v, cmp) => match c.op {
                CondOp::Eq => cmp.cmp(&v, &operand) == Some(Ordering::Equal),
                CondOp::In => operand
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| cmp.cmp(&v, o) == Some(Ordering::Equal)),
                CondOp::Lt => cmp.cmp(&v, &operand) == Some(Ordering::Less),
                CondOp::Le => cmp.cmp(&v, &operand).is_some_and(Ordering::is_le),
                CondOp::Gt => cmp.cmp(&v, &operand) == Some(Ordering::Greater),
                CondOp::Ge => cmp.cmp(&v, &operand).is_some_and(Ordering::is_ge),
                CondOp::Prefix => cmp.starts_with(&v, &operand),
            },
        }
    }

    /// The records of `q.from` its conditions match with `params`, unordered.
    pub fn matching(&self, q: &QueryMeta, params: &Map<String, Json>) -> Vec<&Json> {
        self.records(q.from.name)
            .iter()
            .filter(|r| {
                q.filter.iter().all(|c| self.holds(q.from, r, c, params))
                    && (q.any.is_empty()
                        || q.any
                            .iter()
                            .any(|g| g.iter().all(|c| self.holds(q.from, r, c, params))))
            })
            .collect()
    }

    /// `a` sorts before `b` by the query's keys (`id` last).
    pub fn before(&self, q: &QueryMeta, a: &Json, b: &Json) -> bool {
        for (k, desc) in q.keys() {
            let o = Cmp::of(q.from, k, self.fold)
                .cmp(&a[k], &b[k])
                .unwrap_or(Ordering::Equal);
            if o != Ordering::Equal {
                return (o == Ordering::Less) != desc;
            }
        }
        false
    }

    /// The `with` values a query returns with `record`.
    pub fn with_values(&self, q: &QueryMeta, record: &Json) -> Map<String, Json> {
        q.with
            .iter()
            .map(|w| {
                let reached = self.follow(q.from, record, w.path);
                let v = match (reached, w.what) {
                    (None, _) => Json::Null,
                    (Some((_, r)), WithKind::Field(f)) => r[f].clone(),
                    (Some((t, r)), WithKind::Count(name)) => {
                        let c = t.count(name).unwrap();
                        let n = self
                            .records(c.template)
                            .iter()
                            .filter(|x| x[c.by] == r["id"])
                            .filter(|x| {
                                let counted = self.template(c.template);
                                c.filter
                                    .iter()
                                    .all(|f| self.holds(counted, x, f, &Map::new()))
                            })
                            .count();
                        Json::from(n)
                    }
                };
                (w.name.to_string(), v)
            })
            .collect()
    }

    /// What deleting `id` of `t` does: `Err` with the referencing record if a `restrict`
    /// reference refuses it, else the records deleted with it (itself first, then by
    /// cascade) and the references set to NULL.
    pub fn delete(&self, t: &'static TemplateMeta, id: &Json) -> Result<Deleted, (String, Json)> {
        let mut gone: Vec<(&'static TemplateMeta, Json)> = vec![(t, id.clone())];
        let mut seen: HashSet<(String, String)> = HashSet::from([(t.name.into(), id.to_string())]);
        let mut nulled = Vec::new();
        let mut refused = None;
        let mut i = 0;
        while i < gone.len() {
            let (target, target_id) = gone[i].clone();
            i += 1;
            for c in self.d.templates.iter().copied() {
                for f in c.fields {
                    let FieldKind::Ref {
                        template,
                        on_delete,
                        ..
                    } = f.kind
                    else {
                        continue;
                    };
                    if template != target.name {
                        continue;
                    }
                    for r in self
                        .records(c.name)
                        .iter()
                        .filter(|r| r[f.name] == target_id)
                    {
                        match on_delete {
                            OnDelete::Cascade => {
                                if seen.insert((c.name.into(), r["id"].to_string())) {
                                    gone.push((c, r["id"].clone()));
                                }
                            }
                            OnDelete::SetNull => nulled.push((c, r["id"].clone(), f.name)),
                            OnDelete::Restrict => {
                                refused.get_or_insert((c.name.to_string(), r["id"].clone()));
                            }
                        }
                    }
                }
            }
        }
        if let Some(by) = refused {
            return Err(by);
        }
        nulled.retain(|(c, id, _)| !seen.contains(&(c.name.to_string(), id.to_string())));
        Ok(Deleted { gone, nulled })
    }
}

/// The effect of a delete.
pub struct Deleted {
    pub gone: Vec<(&'static TemplateMeta, Json)>,
    pub nulled: Vec<(&'static TemplateMeta, Json, &'static str)>,
}

impl Deleted {
    /// Applies the effect to the records made.
    pub fn apply(&self, made: &mut Made) {
        for (t, id) in &self.gone {
            if let Some(v) = made.get_mut(t.name) {
                v.retain(|r| &r["id"] != id);
            }
        }
        for (t, id, f) in &self.nulled {
            if let Some(r) = made
                .get_mut(t.name)
                .and_then(|v| v.iter_mut().find(|r| &r["id"] == id))
            {
                r[*f] = Json::Null;
            }
        }
    }
}

/// The tokens of a token set in `text`, as the runtime derives them.
pub fn tokens(set: &beds_runtime::support::TokenSetMeta, text: &str) -> Vec<String> {
    let re = regex::Regex::new(set.pattern).unwrap();
    let mut out: Vec<String> = Vec::new();
    for caps in re.captures_iter(text) {
        let m = caps.get(1).or_else(|| caps.get(0)).unwrap();
        let token = if set.lowercase {
            m.as_str().to_lowercase()
        } else {
            m.as_str().to_string()
        };
        let len = token.chars().count();
        if len > 0 && len <= set.max_len as usize && !out.contains(&token) {
            out.push(token);
        }
    }
    out
}
