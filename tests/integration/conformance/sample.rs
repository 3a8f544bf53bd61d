//! Sample records generated from the declaration, from one seed: every value satisfies
//! every declared constraint (patterns, lengths, ranges, enums, dates, checks), and every
//! unique index (single or compound, case-insensitive or not) stays free.

use std::collections::HashMap;

use beds_runtime::support::{
    DefaultValue, FieldKind, FieldMeta, TemplateMeta, TokenSetMeta, UniqueMeta,
};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange};
use regex_syntax::hir::{Hir, HirKind};
use serde_json::{Map, Value as Json, json};

use super::Made;

/// Tries per value and per record before the declaration is judged unsatisfiable.
const ATTEMPTS: usize = 2_000;

/// The seed of this run: `BEDS_TEST_SEED` if set (to replay a run), else random.
pub fn seed() -> u64 {
    match std::env::var("BEDS_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("BEDS_TEST_SEED is a u64, not `{s}`")),
        Err(_) => rand::random(),
    }
}

pub struct Gen {
    rng: StdRng,
    /// Generators and matchers per pattern (field patterns and token patterns).
    patterns: HashMap<(&'static str, u32), (rand_regex::Regex, regex::Regex)>,
    /// A few token-bearing snippets per token set, shared between records so that a
    /// token query matches several of them.
    snippets: HashMap<(&'static str, &'static str), Vec<String>>,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            patterns: HashMap::new(),
            snippets: HashMap::new(),
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn one_in(&mut self, n: u32) -> bool {
        self.rng.random_ratio(1, n)
    }

    /// Data for a create of `t`: `pinned` values as given, the other input fields
    /// generated (optional ones sometimes left out, defaulted ones sometimes left to their
    /// default), such that the checks hold and no unique index of `t` collides with a
    /// record in `made`.
    pub fn record(
        &mut self,
        t: &TemplateMeta,
        made: &Made,
        pinned: &Map<String, Json>,
    ) -> Map<String, Json> {
        for _ in 0..ATTEMPTS {
            let mut data = Map::new();
            for f in t.fields.iter().filter(|f| f.is_input()) {
                if let Some(v) = pinned.get(f.name) {
                    data.insert(f.name.into(), v.clone());
                    continue;
                }
                if (f.optional || f.default.is_some()) && self.one_in(4) {
                    continue;
                }
                match self.value(t, f, made) {
                    Some(v) => {
                        data.insert(f.name.into(), v);
                    }
                    None if f.optional => {}
                    None => panic!(
                        "{}.{}: no record of the referenced template to point at",
                        t.name, f.name
                    ),
                }
            }
            let checks_hold = t.checks.iter().all(|c| {
                let [a, b] = c.differ;
                data.get(a)
                    .is_none_or(|v| v.is_null() || data.get(b) != Some(v))
            });
            if checks_hold && collisions(t, &data, made, None).is_empty() {
                return data;
            }
        }
        panic!(
            "{}: no record satisfying its checks and unique indexes after {ATTEMPTS} tries",
            t.name
        )
    }

    /// A valid value of `f` (`None` for a reference with no target yet).
    pub fn value(&mut self, t: &TemplateMeta, f: &FieldMeta, made: &Made) -> Option<Json> {
        Some(match f.kind {
            FieldKind::String { min, max, pattern } => {
                json!(self.string(t, f, min as usize, max as usize, pattern))
            }
            FieldKind::Text { max } => {
                let max = max.unwrap_or(200) as usize;
                json!(self.string(t, f, 1, max, None))
            }
            FieldKind::Integer { min, max } | FieldKind::BigInt { min, max } => {
                let c = 0_i64.clamp(min, max);
                let lo = min.max(c.saturating_sub(1_000));
                let hi = max.min(c.saturating_add(1_000));
                json!(self.rng.random_range(lo..=hi))
            }
            FieldKind::Float { min, max } => {
                // Quarters are exact in binary, so the value survives every database.
                let (min, max) = (min.unwrap_or(-1e6), max.unwrap_or(1e6));
                let c = 0_f64.clamp(min, max);
                let lo = (min.max(c - 1_000.0) * 4.0).ceil() as i64;
                let hi = (max.min(c + 1_000.0) * 4.0).floor() as i64;
                if lo > hi {
                    json!(min)
                } else {
                    json!(self.rng.random_range(lo..=hi) as f64 / 4.0)
                }
            }
            FieldKind::Bool => json!(self.rng.random::<bool>()),
            FieldKind::Timestamp => {
                let at = chrono::DateTime::from_timestamp(
                    1_767_225_600 + self.rng.random_range(0..365 * 86_400),
                    0,
                )
                .unwrap();
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
            FieldKind::Date => {
                let day = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap()
                    + chrono::Days::new(self.rng.random_range(0..3_650));
                json!(day.format("%Y-%m-%d").to_string())
            }
            FieldKind::Uuid => {
                json!(uuid::Builder::from_random_bytes(self.rng.random()).into_uuid())
            }
            FieldKind::Enum { values } => json!(values[self.below(values.len())]),
            FieldKind::Json => json!({ "n": self.rng.random_range(0..1_000), "tags": ["a", "b"] }),
            FieldKind::Ref { template, .. } => {
                let targets = made.get(template).filter(|v| !v.is_empty())?;
                // Mostly the first few targets, so that records share their references
                // and queries by reference match several.
                let n = if self.one_in(4) {
                    targets.len()
                } else {
                    targets.len().min(3)
                };
                targets[self.below(n)]["id"].clone()
            }
        })
    }

    /// A string of `min..=max` characters matching `pattern`; for the source of a token
    /// set, with one of the set's shared snippets appended when it still fits.
    fn string(
        &mut self,
        t: &TemplateMeta,
        f: &FieldMeta,
        min: usize,
        max: usize,
        pattern: Option<&'static str>,
    ) -> String {
        let fits = |s: &str, re: Option<&regex::Regex>| {
            let n = s.chars().count();
            n >= min && n <= max && re.is_none_or(|re| re.is_match(s))
        };
        let re = pattern.map(|p| regex::Regex::new(p).unwrap());
        for attempt in 0..ATTEMPTS {
            let base = match pattern {
                // Short repeats, then repeats up to the length limit (an exact length of
                // ten from `[0-9]+` needs them), in turn.
                Some(p) if attempt % 2 == 0 => self.matching(p, 6),
                Some(p) => self.matching(p, max as u32),
                None => {
                    let len = self.rng.random_range(min.max(1)..=max.min(min.max(1) + 11));
                    (0..len)
                        .map(|_| ALNUM[self.below(ALNUM.len())] as char)
                        .collect()
                }
            };
            if !fits(&base, re.as_ref()) {
                continue;
            }
            let mut value = base;
            for set in t.tokens.iter().filter(|s| s.source == f.name) {
                let snippet = self.snippet(t, set);
                let room = max.saturating_sub(snippet.chars().count() + 1);
                let with: String = value.chars().take(room).collect::<String>() + " " + &snippet;
                if fits(&with, re.as_ref()) {
                    value = with;
                }
            }
            return value;
        }
        panic!(
            "{}.{}: no string of {min} to {max} characters matching {pattern:?} after {ATTEMPTS} tries",
            t.name, f.name
        )
    }

    /// One of a few shared strings the token set's pattern finds a token in.
    fn snippet(&mut self, t: &TemplateMeta, set: &TokenSetMeta) -> String {
        let key = (t.name, set.name);
        if !self.snippets.contains_key(&key) {
            let pool = (0..2).map(|_| self.matching(set.pattern, 6)).collect();
            self.snippets.insert(key, pool);
        }
        let n = self.snippets[&key].len();
        let i = self.below(n);
        self.snippets[&key][i].clone()
    }

    /// A string the pattern matches (as the runtime applies it: `Regex::is_match`,
    /// unanchored, case-sensitive unless the pattern says otherwise), drawn from the
    /// pattern itself with its character classes narrowed to printable ASCII where they
    /// allow it (every database then compares and folds it alike).
    fn matching(&mut self, pattern: &'static str, repeat: u32) -> String {
        let (generator, matcher) = self.patterns.entry((pattern, repeat)).or_insert_with(|| {
            let hir = regex_syntax::Parser::new()
                .parse(pattern)
                .unwrap_or_else(|e| panic!("pattern {pattern}: {e}"));
            let generator = rand_regex::Regex::with_hir(printable(&hir), repeat)
                .unwrap_or_else(|e| panic!("pattern {pattern}: {e}"));
            (generator, regex::Regex::new(pattern).unwrap())
        });
        for _ in 0..ATTEMPTS {
            let s: String = self.rng.sample(&*generator);
            // Word boundaries were dropped to generate; the real pattern decides.
            if matcher.is_match(&s) {
                return s;
            }
        }
        panic!("no string matching {pattern} after {ATTEMPTS} tries")
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `hir` without anchors and word boundaries (the generator cannot place them; a whole
/// generated string satisfies `^…$` anyway), its classes narrowed to printable ASCII
/// without space, else with space, else left as declared.
fn printable(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Look(_) => Hir::empty(),
        HirKind::Class(Class::Unicode(c)) => [('!', '~'), (' ', '~')]
            .into_iter()
            .map(|(a, b)| {
                let mut narrowed = c.clone();
                narrowed.intersect(&ClassUnicode::new([ClassUnicodeRange::new(a, b)]));
                narrowed
            })
            .find(|n| n.iter().next().is_some())
            .map_or_else(|| hir.clone(), |n| Hir::class(Class::Unicode(n))),
        HirKind::Class(Class::Bytes(c)) => [(b'!', b'~'), (b' ', b'~')]
            .into_iter()
            .map(|(a, b)| {
                let mut narrowed = c.clone();
                narrowed.intersect(&ClassBytes::new([ClassBytesRange::new(a, b)]));
                narrowed
            })
            .find(|n| n.iter().next().is_some())
            .map_or_else(|| hir.clone(), |n| Hir::class(Class::Bytes(n))),
        HirKind::Repetition(r) => Hir::repetition(regex_syntax::hir::Repetition {
            sub: Box::new(printable(&r.sub)),
            ..r.clone()
        }),
        HirKind::Capture(c) => Hir::capture(regex_syntax::hir::Capture {
            sub: Box::new(printable(&c.sub)),
            ..c.clone()
        }),
        HirKind::Concat(hs) => Hir::concat(hs.iter().map(printable).collect()),
        HirKind::Alternation(hs) => Hir::alternation(hs.iter().map(printable).collect()),
        HirKind::Empty | HirKind::Literal(_) => hir.clone(),
    }
}

/// Whether `f` is part of a case-insensitive unique index of `t`.
pub fn folded(t: &TemplateMeta, f: &str) -> bool {
    t.unique
        .iter()
        .any(|u| u.case_insensitive && u.fields.contains(&f))
}

/// A field's value as its unique index compares it: timestamps by instant, strings
/// without trailing spaces (MariaDB pads) and folded when the index is case-insensitive;
/// `None` for NULL, which collides with nothing.
pub fn canonical(f: &FieldMeta, v: &Json, fold: bool) -> Option<String> {
    match (f.kind, v) {
        (_, Json::Null) => None,
        (FieldKind::Timestamp, Json::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_micros().to_string())
                .unwrap_or_else(|_| s.clone()),
        ),
        (_, Json::String(s)) if fold => Some(s.trim_end_matches(' ').to_lowercase()),
        (_, Json::String(s)) => Some(s.trim_end_matches(' ').to_string()),
        (_, other) => Some(other.to_string()),
    }
}

/// What a create stores for `f` when `data` leaves it out.
pub fn stored(f: &FieldMeta, data: &Map<String, Json>) -> Json {
    match (data.get(f.name), f.default) {
        (Some(v), _) => v.clone(),
        (None, Some(DefaultValue::Text(s))) => json!(s),
        (None, Some(DefaultValue::Int(i))) => json!(i),
        (None, Some(DefaultValue::Float(x))) => json!(x),
        (None, Some(DefaultValue::Bool(b))) => json!(b),
        (None, None) => Json::Null,
    }
}

/// The unique indexes of `t` (positions) whose key `data` would share with a record of
/// `made` other than `except` (an id).
pub fn collisions(
    t: &TemplateMeta,
    data: &Map<String, Json>,
    made: &Made,
    except: Option<&Json>,
) -> Vec<usize> {
    let key = |u: &UniqueMeta, rec: &dyn Fn(&FieldMeta) -> Json| {
        u.fields
            .iter()
            .map(|name| {
                let f = t.field(name).unwrap();
                canonical(f, &rec(f), u.case_insensitive)
            })
            .collect::<Option<Vec<String>>>()
    };
    let others = made.get(t.name).map(Vec::as_slice).unwrap_or_default();
    (0..t.unique.len())
        .filter(|&i| {
            let u = &t.unique[i];
            let Some(mine) = key(u, &|f| stored(f, data)) else {
                return false;
            };
            others
                .iter()
                .filter(|r| except.is_none_or(|id| &r["id"] != id))
                .any(|r| key(u, &|f| r[f.name].clone()).as_ref() == Some(&mine))
        })
        .collect()
}
