//! The statements of every template and named query, built once at start-up from the
//! compiled metadata in the configured dialect. Placeholders are bound in the order they
//! appear; each statement records what goes where.

use std::collections::HashMap;

use sqlx::SqlStr;

use super::dialect::{Dialect, Ty};
use crate::meta::{
    CondOp, ConditionMeta, CountMeta, DomainMeta, FieldKind, FieldMeta, IdKind, LiteralValue,
    Operand, QueryMeta, TemplateMeta, TokenSetMeta, WithKind,
};

/// Statements prepared once per template at start-up.
#[derive(Debug)]
pub(super) struct Statements {
    pub insert: SqlStr,
    /// By key slot: 0 is the id, then one per unique index.
    pub fetch: Vec<SqlStr>,
    /// `fetch` locking the row until the transaction ends (the `before` of an event).
    pub fetch_locked: Vec<SqlStr>,
    /// Returns the deleted record's columns.
    pub delete: Vec<SqlStr>,
    pub list_first: SqlStr,
    pub list_after: SqlStr,
    /// Updates by key slot and set of changed fields.
    pub update: UpdateStatements,
    /// The current version and id of a record, by key slot.
    pub version: Vec<SqlStr>,
    /// Per token set, in declaration order.
    pub tokens: Vec<TokenStatements>,
    /// The idempotency target of a create, an update and a delete (`domain.template.op`).
    pub targets: [String; 5],
    /// Per unique index, in declaration order: how a violation names it.
    pub unique: Vec<UniqueKey>,
}

/// The updates of one template: one statement per key slot and set of changed fields, each
/// built the first time that combination is written and kept. Setting only the changed
/// columns matters on SQLite, which maintains every index and checks every reference of
/// each column in the `SET` list even when its value does not change (one statement with
/// a flag per field measured ~3x slower for a one-field update). The combinations a
/// product writes are few (its patch shapes), so the map stays small.
#[derive(Debug)]
pub(super) struct UpdateStatements {
    /// `UPDATE t SET version = version + 1`
    head: String,
    /// Per field, in declaration order: `, col = ?`.
    sets: Vec<String>,
    /// Per key slot: ` WHERE key AND (? IS NULL OR version = ?)` and any `RETURNING`.
    tails: Vec<String>,
    built: std::sync::RwLock<HashMap<(usize, Vec<usize>), SqlStr>>,
}

impl UpdateStatements {
    /// The statement for key `slot` setting the fields at `changed` (declaration order).
    /// Binds the changed values in that order, then the key, then the expected version
    /// twice.
    pub fn get(&self, d: &dyn Dialect, slot: usize, changed: &[usize]) -> SqlStr {
        let key = (slot, changed.to_vec());
        if let Some(sql) = self.built.read().expect("update statements").get(&key) {
            return sql.clone();
        }
        let mut sql = self.head.clone();
        for &i in changed {
            sql.push_str(&self.sets[i]);
        }
        sql.push_str(&self.tails[slot]);
        let sql = d.prepare(sql);
        self.built
            .write()
            .expect("update statements")
            .insert(key, sql.clone());
        sql
    }
}

/// Longest identifier PostgreSQL keeps (it cuts longer ones silently; MariaDB refuses
/// names over 64).
const MAX_IDENT: usize = 63;

/// `name` if it fits [`MAX_IDENT`], else a prefix ending in a hash of the whole name: cut
/// alone, two long names could become one, and `IF NOT EXISTS` would then skip the second
/// index without a word.
pub(super) fn index_name(name: &str) -> String {
    if name.len() <= MAX_IDENT {
        return name.to_string();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_IDENT - 9;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &name[..cut], hash as u32)
}

/// A unique index as its violations name it.
#[derive(Debug)]
pub(super) struct UniqueKey {
    /// As the DDL names it (see [`index_name`]).
    pub index: String,
    pub columns: Vec<&'static str>,
}

#[derive(Debug)]
pub(super) struct TokenStatements {
    pub clear: SqlStr,
    /// Inserts the tokens of one owner, bound as one JSON array after the owner.
    pub insert: SqlStr,
}

/// The statements of the runtime's own idempotency table, prepared once.
#[derive(Debug)]
pub(super) struct IdempotencySql {
    pub lookup: SqlStr,
    /// The dialect's claim (see [`Dialect::claim_statement`]).
    pub claim: SqlStr,
    pub store_reply: SqlStr,
    pub expire: SqlStr,
}

pub(super) fn idempotency_sql(d: &dyn Dialect) -> IdempotencySql {
    let text = |text: &str| {
        named(
            d,
            text,
            &[
                ("t", "beds_idempotency"),
                ("key", "key"),
                ("target", "target"),
                ("reply", "reply"),
                ("created_at", "created_at"),
            ],
        )
    };
    let sql = |s: &str| d.prepare(text(s));
    let insert =
        text("INSERT INTO {t} ({key}, {target}, {reply}, {created_at}) VALUES (?, ?, '', ?)");
    IdempotencySql {
        lookup: sql("SELECT {target}, {reply} FROM {t} WHERE {key} = ?"),
        claim: d.prepare(d.claim_statement(&insert)),
        store_reply: sql("UPDATE {t} SET {reply} = ? WHERE {key} = ?"),
        expire: sql("DELETE FROM {t} WHERE {created_at} < ?"),
    }
}

/// The statements of the tercero's tables.
#[derive(Debug)]
pub(super) struct CounterSql {
    /// Claims an event id: inserts nothing (or fails as a duplicate) if applied before.
    pub claim: SqlStr,
    pub add: SqlStr,
    pub expire: SqlStr,
}

pub(super) fn counter_sql(d: &dyn Dialect) -> CounterSql {
    let text = |text: &str| {
        named(
            d,
            text,
            &[
                ("c", "beds_counter"),
                ("e", "beds_event_applied"),
                ("counter", "counter"),
                ("owner", "owner"),
                ("value", "value"),
                ("id", "id"),
                ("at", "applied_at"),
            ],
        )
    };
    let sql = |s: &str| d.prepare(text(s));
    CounterSql {
        claim: d.prepare(d.claim_statement(&text("INSERT INTO {e} ({id}, {at}) VALUES (?, ?)"))),
        add: d.prepare(d.add_to_counter(&text(
            "INSERT INTO {c} ({counter}, {owner}, {value}) VALUES (?, ?, ?)",
        ))),
        expire: sql("DELETE FROM {e} WHERE {at} < ?"),
    }
}

/// `text` with each `{name}` replaced by the quoted identifier it stands for: the runtime's
/// own tables are written once as readable SQL for every dialect.
pub(super) fn named(d: &dyn Dialect, text: &str, names: &[(&str, &str)]) -> String {
    names.iter().fold(text.to_string(), |text, (name, ident)| {
        text.replace(&format!("{{{name}}}"), &d.quote(ident))
    })
}

/// The records of `t` whose reference `f` points at one id, locked until the transaction
/// ends: what a delete of that id cascades to or nulls.
pub(super) fn referrers_sql(d: &dyn Dialect, t: &TemplateMeta, f: &FieldMeta) -> SqlStr {
    d.prepare(format!(
        "SELECT {} FROM {} WHERE {} = {}{}",
        record_columns(d, t, None).join(", "),
        d.quote(t.table),
        d.quote(f.column),
        d.arg(Ty::of_field(f)),
        d.lock_rows()
    ))
}

/// The statements of the outbox and its relay lease, prepared once.
#[derive(Debug)]
pub(super) struct OutboxSql {
    pub insert: SqlStr,
    /// The dialect's writer gate, passed before a write's first outbox row.
    pub gate: Option<SqlStr>,
    /// The oldest rows created before a time, in `seq` order, up to a limit.
    pub batch: SqlStr,
    /// Removes the rows whose `seq` is in a JSON array.
    pub remove: SqlStr,
    /// Extends the lease for its holder, or takes it over once it expired.
    pub renew: SqlStr,
    /// Creates the lease row (the dialect's insert-or-ignore).
    pub take: SqlStr,
    /// Ends the lease of a holder at once, so another relay need not wait for its expiry.
    pub release: SqlStr,
}

pub(super) fn outbox_sql(d: &dyn Dialect) -> OutboxSql {
    let text = |text: &str| {
        named(
            d,
            text,
            &[
                ("t", "beds_outbox"),
                ("lease", "beds_outbox_lease"),
                ("seq", "seq"),
                ("body", "body"),
                ("created_at", "created_at"),
                ("name", "name"),
                ("holder", "holder"),
                ("expires_at", "expires_at"),
            ],
        )
    };
    let sql = |s: &str| d.prepare(text(s));
    let take = text("INSERT INTO {lease} ({name}, {holder}, {expires_at}) VALUES ('relay', ?, ?)");
    OutboxSql {
        insert: sql("INSERT INTO {t} ({body}, {created_at}) VALUES (?, ?)"),
        gate: d.writer_gate().map(|g| d.prepare(g.pass)),
        batch: sql("SELECT {seq}, {body} FROM {t} WHERE {created_at} <= ? ORDER BY {seq} LIMIT ?"),
        remove: d.prepare(format!(
            "DELETE FROM {} WHERE {}",
            d.quote("beds_outbox"),
            d.in_list(&d.quote("seq"), Ty::Int)
        )),
        renew: sql(
            "UPDATE {lease} SET {holder} = ?, {expires_at} = ? WHERE {name} = 'relay' AND ({holder} = ? OR {expires_at} < ?)",
        ),
        take: d.prepare(d.claim_statement(&take)),
        release: sql(
            "UPDATE {lease} SET {expires_at} = '' WHERE {name} = 'relay' AND {holder} = ?",
        ),
    }
}

/// What a query placeholder is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arg {
    /// A parameter, and the type its NULL binds as.
    Param(usize, Ty),
    Cursor(usize, Ty),
    /// A value written in the declaration, bound like a parameter (never spliced).
    Literal(LiteralValue),
    Limit,
}

/// The counter table's name of a maintained count: `domain.from.by.count` (the counted
/// template and its reference name the counting template, which owns the count).
pub(crate) fn counter_name(domain: &str, count: &CountMeta) -> String {
    format!("{domain}.{}.{}.{}", count.template, count.by, count.name)
}

/// A named query's statement and its binding plan.
#[derive(Debug)]
pub(super) struct QuerySql {
    pub sql: SqlStr,
    pub args: Vec<Arg>,
    /// The `with` values after the record's columns: key and type.
    pub with: Vec<(&'static str, Ty)>,
    /// A grouped query's row: its group keys and their types, then the count.
    pub group: Vec<(&'static str, Ty)>,
}

/// The columns every record row starts with: id, version, then the declared fields.
pub(super) fn record_columns(
    d: &dyn Dialect,
    t: &TemplateMeta,
    alias: Option<&str>,
) -> Vec<String> {
    let col = |c: &str| match alias {
        Some(a) => format!("{a}.{}", d.quote(c)),
        None => d.quote(c),
    };
    [
        d.select(&col(t.id_column), Ty::of_id(t.id)),
        col(t.version_column),
    ]
    .into_iter()
    .chain(
        t.fields
            .iter()
            .map(|f| d.select(&col(f.column), Ty::of_field(f))),
    )
    .collect()
}

pub(super) fn statements(d: &dyn Dialect, t: &TemplateMeta) -> Statements {
    let q = |s: &str| d.quote(s);
    let table = q(t.table);
    let id = q(t.id_column);
    let cols = record_columns(d, t, None).join(", ");
    let id_ty = Ty::of_id(t.id);
    // A sequence id is assigned by the database, so it is not inserted.
    let mut inserted: Vec<(String, Ty)> = Vec::new();
    if t.id == IdKind::Uuid7 {
        inserted.push((id.clone(), id_ty));
    }
    inserted.push((q(t.version_column), Ty::Int));
    inserted.extend(t.fields.iter().map(|f| (q(f.column), Ty::of_field(f))));
    let insert_cols: Vec<&str> = inserted.iter().map(|(c, _)| c.as_str()).collect();
    let marks: Vec<&str> = inserted.iter().map(|(_, ty)| d.arg(*ty)).collect();
    // One WHERE per key slot: the id, then each unique index (with its collation).
    let wheres: Vec<String> = std::iter::once(format!("{id} = {}", d.arg(id_ty)))
        .chain(t.unique.iter().map(|u| {
            u.fields
                .iter()
                .map(|name| {
                    let f = t.field(name).expect("declared");
                    let col = q(f.column);
                    if u.case_insensitive {
                        d.equals_ci(&col, Ty::of_field(f))
                    } else {
                        format!("{col} = {}", d.arg(Ty::of_field(f)))
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        }))
        .collect();
    // `expect_version` binds last; NULL means "any version".
    let v = q(t.version_column);
    let expect = format!("(? IS NULL OR {v} = ?)");
    let returning = if d.update_returning() {
        format!(" RETURNING {cols}")
    } else {
        String::new()
    };
    let tr = |s: String| d.prepare(s);
    let update = UpdateStatements {
        head: format!("UPDATE {table} SET {v} = {v} + 1"),
        sets: t
            .fields
            .iter()
            .map(|f| format!(", {} = {}", q(f.column), d.arg(Ty::of_field(f))))
            .collect(),
        tails: wheres
            .iter()
            .map(|w| format!(" WHERE {w} AND {expect}{returning}"))
            .collect(),
        built: Default::default(),
    };
    Statements {
        insert: tr(format!(
            "INSERT INTO {table} ({}) VALUES ({}) RETURNING {cols}",
            insert_cols.join(", "),
            marks.join(", ")
        )),
        fetch: wheres
            .iter()
            .map(|w| tr(format!("SELECT {cols} FROM {table} WHERE {w}")))
            .collect(),
        fetch_locked: wheres
            .iter()
            .map(|w| {
                tr(format!(
                    "SELECT {cols} FROM {table} WHERE {w}{}",
                    d.lock_rows()
                ))
            })
            .collect(),
        delete: wheres
            .iter()
            .map(|w| {
                tr(format!(
                    "DELETE FROM {table} WHERE {w} AND {expect} RETURNING {cols}"
                ))
            })
            .collect(),
        version: wheres
            .iter()
            .map(|w| {
                tr(format!(
                    "SELECT {v}, {} FROM {table} WHERE {w}",
                    d.select(&id, id_ty)
                ))
            })
            .collect(),
        list_first: tr(format!("SELECT {cols} FROM {table} ORDER BY {id} LIMIT ?")),
        list_after: tr(format!(
            "SELECT {cols} FROM {table} WHERE {id} > {} ORDER BY {id} LIMIT ?",
            d.arg(id_ty)
        )),
        update,
        tokens: t.tokens.iter().map(|s| token_statements(d, t, s)).collect(),
        targets: ["create", "update", "delete", "lock", "unlock"]
            .map(|op| format!("{}.{}.{op}", t.domain, t.name)),
        unique: t
            .unique
            .iter()
            .map(|u| {
                let columns: Vec<&'static str> = u
                    .fields
                    .iter()
                    .filter_map(|f| t.field(f).map(|f| f.column))
                    .collect();
                let index = index_name(&format!("{}_{}_key", t.table, columns.join("_")));
                UniqueKey { index, columns }
            })
            .collect(),
    }
}

fn token_statements(d: &dyn Dialect, t: &TemplateMeta, s: &TokenSetMeta) -> TokenStatements {
    let table = d.quote(s.table);
    let owner = d.arg(Ty::of_id(t.id));
    TokenStatements {
        clear: d.prepare(format!(
            "DELETE FROM {table} WHERE {} = {owner}",
            d.quote("owner")
        )),
        insert: d.prepare(format!(
            "INSERT INTO {table} ({}, {}) SELECT {owner}, e.v FROM ({}) e",
            d.quote("owner"),
            d.quote("token"),
            d.elements(Ty::Text)
        )),
    }
}

/// Builds one query's SQL: joins for reference paths, conditions with their arguments
/// in placeholder order.
struct Builder<'a> {
    d: &'a dyn Dialect,
    domain: &'a DomainMeta,
    q: &'a QueryMeta,
    /// `FROM t0` and its joins, one alias per distinct reference path.
    from_sql: String,
    joins: Vec<(Vec<&'static str>, String)>,
    args: Vec<Arg>,
    /// Aliases of sub-selects.
    subs: usize,
    /// Whether maintained counts read their counters (see [`query_sql`]).
    maintained: bool,
}

/// Where a path ends: a column expression and its type, or a token set of the record
/// whose id expression is given.
enum Target {
    Column(String, Ty),
    Tokens(String, &'static TokenSetMeta),
}

impl<'a> Builder<'a> {
    fn template(&self, name: &str) -> &'static TemplateMeta {
        self.domain.template(name).expect("checked at build time")
    }

    /// The alias of the record at the end of a reference path, joining as needed.
    fn alias(&mut self, path: &[&'static str]) -> (String, &'static TemplateMeta) {
        let mut t = self.q.from;
        let mut alias = "t0".to_string();
        for i in 0..path.len() {
            let f = t.field(path[i]).expect("checked at build time");
            let FieldKind::Ref { template: next, .. } = f.kind else {
                unreachable!("paths follow references")
            };
            let target = self.template(next);
            let prefix = path[..=i].to_vec();
            alias = match self.joins.iter().find(|(p, _)| *p == prefix) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = format!("t{}", self.joins.len() + 1);
                    self.from_sql.push_str(&format!(
                        " {}JOIN {} {a} ON {a}.{} = {alias}.{}",
                        if f.optional { "LEFT " } else { "" },
                        self.d.quote(target.table),
                        self.d.quote(target.id_column),
                        self.d.quote(f.column)
                    ));
                    self.joins.push((prefix, a.clone()));
                    a
                }
            };
            t = target;
        }
        (alias, t)
    }

    /// What `path` names. `…ref.id` is the reference column itself, without a join.
    fn target(&mut self, path: &[&'static str]) -> Target {
        let (last, refs) = path.split_last().expect("non-empty path");
        if *last == "id" && !refs.is_empty() {
            let (hop, head) = refs.split_last().expect("non-empty");
            let (alias, t) = self.alias(head);
            let f = t.field(hop).expect("checked");
            return Target::Column(
                format!("{alias}.{}", self.d.quote(f.column)),
                Ty::of_field(f),
            );
        }
        let (alias, t) = self.alias(refs);
        let column = |c: &str| format!("{alias}.{}", self.d.quote(c));
        if *last == "id" {
            return Target::Column(column(t.id_column), Ty::of_id(t.id));
        }
        if let Some(f) = t.field(last) {
            return Target::Column(column(f.column), Ty::of_field(f));
        }
        let set = t.token_set(last).expect("checked at build time");
        Target::Tokens(column(t.id_column), set)
    }

    fn param(&self, name: &str) -> usize {
        self.q
            .params
            .iter()
            .position(|p| p.name == name)
            .expect("declared")
    }

    fn optional(&self, name: &str) -> bool {
        self.q.params.iter().any(|p| p.name == name && p.optional)
    }

    /// One condition on `path` of the main query.
    fn condition(&mut self, c: &ConditionMeta) -> String {
        match self.target(c.path) {
            Target::Column(col, ty) => {
                let folds = self.folds(c.path);
                self.compare(&col, ty, folds, c)
            }
            Target::Tokens(owner, set) => {
                let table = self.d.quote(set.table);
                let alias = self.sub_alias();
                let token = format!("{alias}.{}", self.d.quote("token"));
                let test = self.compare(&token, Ty::Text, false, c);
                format!(
                    "{owner} IN (SELECT {alias}.{} FROM {table} {alias} WHERE {test})",
                    self.d.quote("owner")
                )
            }
        }
    }

    /// `(SELECT COUNT(*) ...)` of the records `count` counts for the record `owner`, its
    /// filter's literals bound in place.
    fn count(&mut self, count: &CountMeta, owner: &str) -> String {
        if count.maintained && self.maintained {
            let q = |s: &str| self.d.quote(s);
            // The counter's name is built from declared snake_case names, never from a
            // request, so it is written in place.
            return format!(
                "COALESCE((SELECT {} FROM {} WHERE {} = '{}' AND {} = {}), 0)",
                q("value"),
                q("beds_counter"),
                q("counter"),
                counter_name(self.domain.name, count),
                q("owner"),
                self.d.as_text(owner)
            );
        }
        let counted = self.template(count.template);
        let by = counted.field(count.by).expect("checked").column;
        let alias = self.sub_alias();
        let mut tests = vec![format!("{alias}.{} = {owner}", self.d.quote(by))];
        for c in count.filter {
            let f = counted.field(c.path[0]).expect("checked at build time");
            let col = format!("{alias}.{}", self.d.quote(f.column));
            tests.push(self.compare(&col, Ty::of_field(f), false, c));
        }
        format!(
            "(SELECT COUNT(*) FROM {} {alias} WHERE {})",
            self.d.quote(counted.table),
            tests.join(" AND ")
        )
    }

    /// Whether `path` ends at a field compared case-insensitively.
    fn folds(&mut self, path: &[&'static str]) -> bool {
        let (last, refs) = path.split_last().expect("non-empty path");
        if *last == "id" {
            return false;
        }
        let (_, t) = self.alias(refs);
        case_insensitive(t, last)
    }

    fn sub_alias(&mut self) -> String {
        self.subs += 1;
        format!("s{}", self.subs)
    }

    /// `col <op> operand`, guarded when the parameter is optional (an absent one
    /// disables the condition), case-insensitive when `folds`. Arguments are pushed in
    /// placeholder order.
    fn compare(&mut self, col: &str, ty: Ty, folds: bool, c: &ConditionMeta) -> String {
        let d = self.d;
        match &c.operand {
            Operand::Param(name) => {
                let i = self.param(name);
                let guard = self.optional(name);
                // A list binds as one JSON array in text.
                let bound = if c.op == CondOp::In { Ty::Text } else { ty };
                let mut sql = String::new();
                if guard {
                    self.args.push(Arg::Param(i, bound));
                    sql.push_str("(? IS NULL OR ");
                }
                let (test, uses) = match c.op {
                    CondOp::Eq | CondOp::In | CondOp::Prefix if folds => {
                        folded_test(d, col, ty, c.op)
                    }
                    CondOp::Eq => (format!("{col} = {}", d.arg(ty)), 1),
                    CondOp::Lt => (format!("{col} < {}", d.arg(ty)), 1),
                    CondOp::Le => (format!("{col} <= {}", d.arg(ty)), 1),
                    CondOp::Gt => (format!("{col} > {}", d.arg(ty)), 1),
                    CondOp::Ge => (format!("{col} >= {}", d.arg(ty)), 1),
                    CondOp::In => (d.in_list(col, ty), 1),
                    CondOp::Prefix => (d.prefix(col, "?"), 2),
                };
                self.args
                    .extend(std::iter::repeat_n(Arg::Param(i, bound), uses));
                sql.push_str(&test);
                if guard {
                    sql.push(')');
                }
                sql
            }
            Operand::Literal(v) => {
                debug_assert_eq!(c.op, CondOp::Eq, "literals are compared for equality");
                self.args.push(Arg::Literal(*v));
                format!("{col} = {}", d.arg(ty))
            }
            Operand::Select(s) => {
                let alias = self.sub_alias();
                let column = |name: &str| {
                    let c = if name == "id" {
                        s.from.id_column
                    } else {
                        s.from.field(name).expect("checked").column
                    };
                    format!("{alias}.{}", d.quote(c))
                };
                let selected = column(s.select);
                let mut tests = Vec::new();
                for inner in s.filter {
                    let name = inner.path[0];
                    let col = column(name);
                    let folds = name != "id" && case_insensitive(s.from, name);
                    tests.push(self.compare(&col, Ty::of_name(s.from, name), folds, inner));
                }
                let mut sql = format!(
                    "{col} IN (SELECT {selected} FROM {} {alias}",
                    d.quote(s.from.table)
                );
                if !tests.is_empty() {
                    sql.push_str(&format!(" WHERE {}", tests.join(" AND ")));
                }
                sql.push(')');
                sql
            }
        }
    }
}

/// Whether `field` of `t` compares case-insensitively: it is in a `case_insensitive`
/// unique index, so its values are one value whatever their case.
fn case_insensitive(t: &TemplateMeta, field: &str) -> bool {
    t.unique
        .iter()
        .any(|u| u.case_insensitive && u.fields.contains(&field))
}

/// `eq`, `in` or `prefix` on a case-insensitive field, comparing as its unique index does
/// (so the index can serve equality): the placeholder's text and how many times the
/// parameter binds.
fn folded_test(d: &dyn Dialect, col: &str, ty: Ty, op: CondOp) -> (String, usize) {
    match op {
        CondOp::In => (
            format!(
                "{} IN (SELECT {} FROM ({}) e)",
                d.fold_case(col),
                d.fold_case("e.v"),
                d.elements(ty)
            ),
            1,
        ),
        CondOp::Prefix => (d.prefix(&d.fold_case(col), &d.fold_case("?")), 2),
        _ => (d.equals_ci(col, ty), 1),
    }
}

/// The one statement of a named query: parameters as they appear in the conditions (an
/// absent optional one disables its condition), then the cursor's sort keys (all NULL
/// on the first page), then the limit.
///
/// `maintained`: whether maintained counts read their counters (the serving database) or
/// count rows like any other count (the warehouse, where no tercero keeps counters and a
/// moved record's cascaded children moved with it).
pub(super) fn query_sql(
    d: &dyn Dialect,
    domain: &DomainMeta,
    q: &QueryMeta,
    maintained: bool,
) -> QuerySql {
    let mut b = Builder {
        d,
        domain,
        q,
        maintained,
        from_sql: format!("{} t0", d.quote(q.from.table)),
        joins: Vec::new(),
        args: Vec::new(),
        subs: 0,
    };
    // Extra columns come first in the text but bind nothing, so building them first
    // keeps placeholders in order.
    let mut extra = Vec::new();
    let mut with = Vec::new();
    for w in q.with {
        let (expr, ty) = match w.what {
            WithKind::Field(name) => {
                let mut path = w.path.to_vec();
                path.push(name);
                match b.target(&path) {
                    Target::Column(col, ty) => (d.select(&col, ty), ty),
                    Target::Tokens(..) => unreachable!("`with` names fields and counts"),
                }
            }
            WithKind::Count(name) => {
                let mut path = w.path.to_vec();
                path.push("id");
                let Target::Column(owner, _) = b.target(&path) else {
                    unreachable!("ids are columns")
                };
                let (_, t) = b.alias(w.path);
                let count = t.count(name).expect("checked at build time");
                (b.count(count, &owner), Ty::Int)
            }
        };
        extra.push(expr);
        with.push((w.name, ty));
    }
    let mut conditions: Vec<String> = q.filter.iter().map(|c| b.condition(c)).collect();
    if !q.any.is_empty() {
        let groups: Vec<String> = q
            .any
            .iter()
            .map(|g| {
                let all: Vec<String> = g.iter().map(|c| b.condition(c)).collect();
                format!("({})", all.join(" AND "))
            })
            .collect();
        conditions.push(format!("({})", groups.join(" OR ")));
    }
    if q.count {
        let mut sql = format!("SELECT COUNT(*) FROM {}", b.from_sql);
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        return QuerySql {
            sql: d.prepare(sql),
            args: b.args,
            with,
            group: Vec::new(),
        };
    }
    let keys = q.keys();
    let key_cols: Vec<(String, Ty)> = keys
        .iter()
        .map(|(k, _)| {
            let col = if *k == "id" {
                q.from.id_column
            } else {
                q.from.field(k).expect("checked").column
            };
            (format!("t0.{}", d.quote(col)), Ty::of_name(q.from, k))
        })
        .collect();
    // Keyset: (k1 > c1) OR (k1 = c1 AND k2 > c2) OR ..., `<` for descending keys.
    b.args.push(Arg::Cursor(0, key_cols[0].1));
    let mut alternatives = Vec::new();
    for (i, (_, desc)) in keys.iter().enumerate() {
        let mut terms = Vec::new();
        for (j, (col, ty)) in key_cols.iter().enumerate().take(i) {
            terms.push(format!("{col} = {}", d.arg(*ty)));
            b.args.push(Arg::Cursor(j, *ty));
        }
        let (col, ty) = &key_cols[i];
        terms.push(format!(
            "{col} {} {}",
            if *desc { "<" } else { ">" },
            d.arg(*ty)
        ));
        b.args.push(Arg::Cursor(i, *ty));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    conditions.push(format!("(? IS NULL OR {})", alternatives.join(" OR ")));
    if q.grouped() {
        return group_sql(d, q, b, &conditions, &key_cols);
    }
    let order: Vec<String> = keys
        .iter()
        .zip(&key_cols)
        .map(|((_, desc), (col, _))| format!("{col} {}", if *desc { "DESC" } else { "ASC" }))
        .collect();
    let mut cols = record_columns(d, q.from, Some("t0"));
    cols.extend(extra);
    b.args.push(Arg::Limit);
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ?",
        cols.join(", "),
        b.from_sql,
        conditions.join(" AND "),
        order.join(", "),
    );
    QuerySql {
        sql: d.prepare(sql),
        args: b.args,
        with,
        group: Vec::new(),
    }
}

/// A grouped query: one row per distinct combination of the group keys with its count,
/// ascending by the keys. The keyset condition is on the grouped columns, so it filters
/// rows before grouping and pages exactly like a plain query.
fn group_sql(
    d: &dyn Dialect,
    q: &QueryMeta,
    mut b: Builder<'_>,
    conditions: &[String],
    key_cols: &[(String, Ty)],
) -> QuerySql {
    let mut cols: Vec<String> = key_cols.iter().map(|(c, ty)| d.select(c, *ty)).collect();
    cols.push("COUNT(*)".into());
    let grouped: Vec<&str> = key_cols.iter().map(|(c, _)| c.as_str()).collect();
    let order: Vec<String> = grouped.iter().map(|c| format!("{c} ASC")).collect();
    b.args.push(Arg::Limit);
    let sql = format!(
        "SELECT {} FROM {} WHERE {} GROUP BY {} ORDER BY {} LIMIT ?",
        cols.join(", "),
        b.from_sql,
        conditions.join(" AND "),
        grouped.join(", "),
        order.join(", "),
    );
    QuerySql {
        sql: d.prepare(sql),
        args: b.args,
        with: Vec::new(),
        group: q
            .group
            .iter()
            .zip(key_cols)
            .map(|(g, (_, ty))| (*g, *ty))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    //! Literal conditions, filtered counts and grouped queries run against SQLite from
    //! hand-written metadata (neutral names: core code names no declared domain).

    use std::time::Duration;

    use serde_json::{Value as Json, json};

    use crate::config::Driver;
    use crate::events::WriteEvent;
    use crate::meta::{
        Capabilities, CondOp, ConditionMeta, CountMeta, DomainMeta, FieldKind, FieldMeta, IdKind,
        LiteralValue, OnDelete, Operand, PageMeta, ParamKind, ParamMeta, QueryMeta, TemplateMeta,
        WithKind, WithMeta,
    };
    use crate::store::Store;
    use crate::store::options::StoreOptions;
    use crate::tercero::effect;
    use crate::value::Value;

    const PAGE: PageMeta = PageMeta {
        default: 10,
        max: 10,
    };

    const fn field(name: &'static str, kind: FieldKind) -> FieldMeta {
        FieldMeta {
            name,
            column: name,
            kind,
            optional: false,
            set: None,
            default: None,
        }
    }

    const fn eq(path: &'static [&'static str], operand: Operand) -> ConditionMeta {
        ConditionMeta {
            path,
            op: CondOp::Eq,
            operand,
        }
    }

    const fn template(
        name: &'static str,
        fields: &'static [FieldMeta],
        counts: &'static [CountMeta],
    ) -> TemplateMeta {
        TemplateMeta {
            domain: "d",
            name,
            version: 1,
            fingerprint: "0000000000000000",
            table: name,
            id: IdKind::Sequence,
            id_column: "id",
            version_column: "version",
            fields,
            unique: &[],
            indexes: &[],
            page: PAGE,
            append_only: false,
            internal: false,
            capabilities: Capabilities {
                audit: false,
                journal: false,
                locking: false,
                cache_ttl_ms: None,
                consistency: crate::envelope::Consistency::Strong,
                retention: None,
            },
            access: &[],
            owner: None,
            tokens: &[],
            counts,
            checks: &[],
        }
    }

    const TEAM: &TemplateMeta = &template(
        "team",
        &[field(
            "name",
            FieldKind::String {
                min: 0,
                max: 20,
                pattern: None,
            },
        )],
        &[
            CountMeta {
                name: "todo",
                template: "task",
                by: "team",
                filter: &[eq(&["state"], Operand::Literal(LiteralValue::Enum("todo")))],
                maintained: false,
            },
            CountMeta {
                name: "tasks",
                template: "task",
                by: "team",
                filter: &[],
                maintained: false,
            },
            CountMeta {
                name: "todo_kept",
                template: "task",
                by: "team",
                filter: &[eq(&["state"], Operand::Literal(LiteralValue::Enum("todo")))],
                maintained: true,
            },
        ],
    );

    const TASK: &TemplateMeta = &template(
        "task",
        &[
            field(
                "team",
                FieldKind::Ref {
                    template: "team",
                    on_delete: OnDelete::Cascade,
                    id: IdKind::Sequence,
                },
            ),
            field(
                "state",
                FieldKind::Enum {
                    values: &["todo", "doing", "done"],
                },
            ),
            field("urgent", FieldKind::Bool),
        ],
        &[],
    );

    const fn query(
        name: &'static str,
        from: &'static TemplateMeta,
        params: &'static [ParamMeta],
        filter: &'static [ConditionMeta],
        with: &'static [WithMeta],
        group: &'static [&'static str],
    ) -> QueryMeta {
        QueryMeta {
            domain: "d",
            name,
            from,
            params,
            filter,
            any: &[],
            order: &[],
            page: PAGE,
            count: false,
            with,
            group,
            cache_ttl_ms: None,
            reads: &[],
            access: &[],
            warehouse: false,
        }
    }

    const TEAM_PARAM: &[ParamMeta] = &[ParamMeta {
        name: "team",
        kind: ParamKind::Field(&TASK.fields[0]),
        optional: true,
        list: false,
    }];
    const PER_STATE: &QueryMeta = &query(
        "per_state",
        TASK,
        TEAM_PARAM,
        &[eq(&["team"], Operand::Param("team"))],
        &[],
        &["state"],
    );
    const TODO_PER_TEAM_AND_URGENCY: &QueryMeta = &query(
        "todo_per_team_and_urgency",
        TASK,
        &[],
        &[eq(&["state"], Operand::Literal(LiteralValue::Enum("todo")))],
        &[],
        &["team", "urgent"],
    );
    const URGENT: &QueryMeta = &query(
        "urgent",
        TASK,
        &[],
        &[eq(&["urgent"], Operand::Literal(LiteralValue::Bool(true)))],
        &[],
        &[],
    );
    const TEAMS: &QueryMeta = &query(
        "teams",
        TEAM,
        &[],
        &[],
        &[
            WithMeta {
                name: "todo",
                path: &[],
                what: WithKind::Count("todo"),
            },
            WithMeta {
                name: "tasks",
                path: &[],
                what: WithKind::Count("tasks"),
            },
        ],
        &[],
    );

    const TEAMS_KEPT: &QueryMeta = &query(
        "teams_kept",
        TEAM,
        &[],
        &[],
        &[
            WithMeta {
                name: "todo",
                path: &[],
                what: WithKind::Count("todo"),
            },
            WithMeta {
                name: "todo_kept",
                path: &[],
                what: WithKind::Count("todo_kept"),
            },
        ],
        &[],
    );

    static DOMAIN: DomainMeta = DomainMeta {
        name: "d",
        version: 1,
        templates: &[TEAM, TASK],
        queries: &[
            PER_STATE,
            TODO_PER_TEAM_AND_URGENCY,
            URGENT,
            TEAMS,
            TEAMS_KEPT,
        ],
    };

    async fn store(dir: &std::path::Path) -> Store {
        let options = StoreOptions {
            driver: Driver::Sqlite,
            sqlite_file: dir.join("t.db"),
            url: None,
            max_connections: 2,
            busy_timeout: Duration::from_secs(5),
            sqlite_sync_full: false,
        };
        let store = Store::open(&options, &[&DOMAIN]).await.unwrap();
        let ddl = crate::store::schema::ddl(store.dialect, &[&DOMAIN]);
        crate::store::migrate::prepare(
            &store,
            &ddl,
            crate::config::SchemaMode::Create,
            dir,
            "database",
        )
        .await
        .unwrap();
        for statement in [
            "INSERT INTO team (id, version, name) VALUES (1, 1, 'a'), (2, 1, 'b')",
            "INSERT INTO task (id, version, team, state, urgent) VALUES \
             (1, 1, 1, 'todo', 1), (2, 1, 1, 'todo', 0), (3, 1, 1, 'done', 1), \
             (4, 1, 2, 'todo', 1), (5, 1, 2, 'doing', 0)",
        ] {
            sqlx::query(statement).execute(&store.pool).await.unwrap();
        }
        store
    }

    #[tokio::test]
    async fn literals_bind_as_parameters_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        for q in DOMAIN.queries {
            let sql = store.queries[&(q.domain, q.name)].sql.as_str().to_string();
            assert!(!sql.contains("todo'") && !sql.contains("= 1"), "{sql}");
        }
        let urgent = store.query(URGENT, vec![], None, 10).await.unwrap();
        let ids: Vec<&Json> = urgent.iter().map(|r| &r["id"]).collect();
        assert_eq!(ids, [&json!(1), &json!(3), &json!(4)]);
        let teams = store.query(TEAMS, vec![], None, 10).await.unwrap();
        let counts: Vec<&Json> = teams.iter().map(|t| &t["with"]).collect();
        assert_eq!(
            counts,
            [
                &json!({ "todo": 2, "tasks": 3 }),
                &json!({ "todo": 1, "tasks": 2 })
            ]
        );
    }

    /// The write event of a task (`None` for no record on that side).
    fn task_event(
        id: &str,
        task: i64,
        before: Option<(i64, &str)>,
        after: Option<(i64, &str)>,
    ) -> WriteEvent {
        let rec = |(team, state): (i64, &str)| json!({"id": task, "version": 1, "team": team, "state": state, "urgent": false});
        let op = match (before, after) {
            (None, _) => "create",
            (_, None) => "delete",
            _ => "update",
        };
        // `e7` -> the UUID ending in 7: the label stays readable, the id stays a UUID.
        let uuid = |n: &str| format!("00000000-0000-7000-8000-{:0>12}", n);
        let body = json!({
            "v": 1, "kind": "write_event", "id": uuid(&id[1..]), "correlation_id": uuid("c"),
            "causation_id": uuid("a"), "depth": 1,
            "origin": {"service": "beds", "node": "n", "env": "test"},
            "seq": 1, "domain": "d", "template": "task", "op": op,
            "key": {"id": task}, "version": 1, "committed_at": "2026-01-01T00:00:00Z",
            "before": before.map(rec), "after": after.map(rec),
        });
        crate::tercero::parse(body.to_string().as_bytes()).unwrap()
    }

    /// A maintained count reads its counter, kept from events: creates inside the filter
    /// add, a duplicate changes nothing, updates move between owners and in and out of the
    /// filter, deletes subtract; it then equals the count of the rows.
    #[tokio::test]
    async fn maintained_counts_read_the_counters_events_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let sql = store.queries[&("d", "teams_kept")].sql.as_str().to_string();
        assert!(sql.contains("\"beds_counter\""), "{sql}");
        let kept = |teams: Vec<Json>| -> Vec<(Json, Json)> {
            teams
                .iter()
                .map(|t| (t["with"]["todo"].clone(), t["with"]["todo_kept"].clone()))
                .collect()
        };
        assert_eq!(
            kept(store.query(TEAMS_KEPT, vec![], None, 10).await.unwrap()),
            [(json!(2), json!(0)), (json!(1), json!(0))],
            "a missing counter row is zero"
        );
        let created = [
            task_event("e1", 1, None, Some((1, "todo"))),
            task_event("e2", 2, None, Some((1, "todo"))),
            task_event("e3", 3, None, Some((1, "done"))),
            task_event("e1", 1, None, Some((1, "todo"))),
            task_event("e4", 4, None, Some((2, "todo"))),
            task_event("e5", 5, None, Some((2, "doing"))),
        ];
        let effects: Vec<_> = created
            .iter()
            .map(|e| effect(&[&DOMAIN], &Default::default(), e))
            .collect();
        assert_eq!(store.apply_events(&effects).await.unwrap(), 5);
        assert_eq!(
            store.apply_events(&effects[..2]).await.unwrap(),
            0,
            "applied before"
        );
        assert_eq!(
            kept(store.query(TEAMS_KEPT, vec![], None, 10).await.unwrap()),
            [(json!(2), json!(2)), (json!(1), json!(1))]
        );
        for statement in [
            "UPDATE task SET team = 2 WHERE id = 2",
            "UPDATE task SET state = 'todo' WHERE id = 3",
            "UPDATE task SET state = 'done' WHERE id = 4",
            "DELETE FROM task WHERE id = 1",
        ] {
            sqlx::query(statement).execute(&store.pool).await.unwrap();
        }
        let changed = [
            task_event("e6", 2, Some((1, "todo")), Some((2, "todo"))),
            task_event("e7", 3, Some((1, "done")), Some((1, "todo"))),
            task_event("e8", 4, Some((2, "todo")), Some((2, "done"))),
            task_event("e9", 1, Some((1, "todo")), None),
        ];
        let effects: Vec<_> = changed
            .iter()
            .map(|e| effect(&[&DOMAIN], &Default::default(), e))
            .collect();
        assert_eq!(store.apply_events(&effects).await.unwrap(), 4);
        assert_eq!(
            kept(store.query(TEAMS_KEPT, vec![], None, 10).await.unwrap()),
            [(json!(1), json!(1)), (json!(1), json!(1))]
        );
    }

    #[tokio::test]
    async fn groups_count_and_page_by_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let one_team = store
            .query(PER_STATE, vec![Value::Int(1)], None, 10)
            .await
            .unwrap();
        assert_eq!(
            one_team,
            [
                json!({ "state": "done", "count": 1 }),
                json!({ "state": "todo", "count": 2 })
            ]
        );
        // Pages of one row, each after the previous row's keys.
        let mut rows = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query(PER_STATE, vec![Value::Null], cursor.take(), 1)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            cursor = Some(vec![Value::Text(last["state"].as_str().unwrap().into())]);
            rows.extend(page);
        }
        assert_eq!(
            rows,
            [
                json!({ "state": "doing", "count": 1 }),
                json!({ "state": "done", "count": 1 }),
                json!({ "state": "todo", "count": 3 })
            ]
        );
        let two_keys = store
            .query(TODO_PER_TEAM_AND_URGENCY, vec![], None, 10)
            .await
            .unwrap();
        assert_eq!(
            two_keys,
            [
                json!({ "team": 1, "urgent": false, "count": 1 }),
                json!({ "team": 1, "urgent": true, "count": 1 }),
                json!({ "team": 2, "urgent": true, "count": 1 })
            ]
        );
        let after = store
            .query(
                TODO_PER_TEAM_AND_URGENCY,
                vec![],
                Some(vec![Value::Int(1), Value::Bool(true)]),
                10,
            )
            .await
            .unwrap();
        assert_eq!(after, [json!({ "team": 2, "urgent": true, "count": 1 })]);
    }
}
