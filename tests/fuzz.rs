//! Property tests of what reads untrusted or hand-written text: the envelope decoder, the
//! page cursor decoder and the declaration compiler. Inputs are arbitrary bytes and
//! structure-aware mutations of valid ones; the properties are that nothing panics and that
//! every refusal is a typed error with a non-empty, bounded message. `PROPTEST_CASES` sets
//! the cases per property (256 by default; wiki/testing.md has the long run). Crashers found
//! are kept below as named regression tests.

use beds_runtime::config::LimitsConfig;
use beds_runtime::envelope::Origin;
use beds_runtime::support::{Patterns, cursor_values};
use beds_runtime::{BedsError, Consistency, ErrorCode, Op, Request};
use proptest::prelude::*;
use serde_json::{Map, Value as Json, json};

/// The longest message any refusal may carry, whatever the input.
const MAX_MESSAGE: usize = 1024;

/// Words of serde and its parser that must never reach a reply.
const INTERNALS: [&str; 4] = ["expected ", "struct ", "invalid type", "invalid value"];

fn assert_bounded(e: &BedsError, input: &[u8]) {
    assert!(!e.message.is_empty(), "an empty message for {input:?}");
    assert!(
        e.message.len() <= MAX_MESSAGE,
        "a {}-byte message: {}",
        e.message.len(),
        e.message
    );
    assert!(e.details.len() <= beds_runtime::error::MAX_DETAILS);
    for d in &e.details {
        assert!(
            !d.message.is_empty() && d.message.len() <= MAX_MESSAGE,
            "{d:?}"
        );
        assert!(d.field.len() <= MAX_MESSAGE, "{d:?}");
    }
    if e.code != ErrorCode::InvalidInput {
        for word in INTERNALS {
            assert!(!e.message.contains(word), "parser words: {}", e.message);
        }
    }
}

/// Decodes within the default limits: Ok, or a bounded refusal.
fn decode(body: &[u8]) {
    if let Err(e) = Request::decode_within(body, &LimitsConfig::default()) {
        assert_bounded(&e, body);
    }
}

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        "[a-z0-9_é\"\\\\ ]{0,12}".prop_map(Json::from),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Json>> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid::Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.é \"\\\\]{0,16}"
}

/// Any request the envelope can carry (no floats: JSON text does not keep every f64).
fn request() -> impl Strategy<Value = Request> {
    let ids = (
        uuid(),
        prop::option::of(uuid()),
        prop::option::of(uuid()),
        any::<u32>(),
        prop::option::of((text(), text(), text())),
        text(),
        text(),
        prop::sample::select(Op::ALL.to_vec()),
    );
    let payload = (
        prop::option::of(object()),
        prop::option::of(0i64..4_102_444_800_000_000),
        prop::option::of(text()),
        prop::option::of(any::<i64>()),
        prop::option::of(text()),
        prop::option::of(prop::bool::ANY),
        prop::option::of(any::<i64>()),
        prop::option::of(object()),
    );
    let page = (
        prop::option::of(any::<u32>()),
        prop::option::of(scalar().prop_filter("null reads as absent", |j| !j.is_null())),
        prop::option::of(text()),
        prop::option::of(object()),
        prop::option::of(prop::collection::vec(scalar(), 0..4)),
    );
    (ids, payload, page).prop_map(
        |(
            (id, correlation_id, causation_id, depth, origin, domain, template, op),
            (key, deadline, idempotency_key, expect_version, lock_token, cached, min_version, data),
            (limit, after, query, params, cursor),
        )| {
            let mut r = Request::new(&domain, &template, op);
            r.id = id;
            r.correlation_id = correlation_id;
            r.causation_id = causation_id;
            r.depth = depth;
            r.origin = origin.map(|(service, node, env)| Origin { service, node, env });
            r.key = key;
            r.deadline = deadline.map(|us| chrono::DateTime::from_timestamp_micros(us).unwrap());
            r.idempotency_key = idempotency_key;
            r.expect_version = expect_version;
            r.lock_token = lock_token;
            r.consistency = cached.map(|c| {
                if c {
                    Consistency::Cached
                } else {
                    Consistency::Strong
                }
            });
            r.min_version = min_version;
            r.data = data;
            r.limit = limit;
            r.after = after;
            r.query = query;
            r.params = params;
            r.cursor = cursor;
            r
        },
    )
}

/// One change to a valid envelope's top-level object.
#[derive(Debug, Clone)]
enum Mutation {
    Drop(usize),
    Retype(usize, Json),
    /// The field's value wrapped in this many arrays or objects.
    Nest(usize, usize, bool),
    Unknown(String, Json),
    /// The field written a second time, as raw text.
    Repeat(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        (any::<usize>(), json_value()).prop_map(|(i, j)| Mutation::Retype(i, j)),
        (any::<usize>(), 1usize..200, any::<bool>()).prop_map(|(i, n, o)| Mutation::Nest(i, n, o)),
        ("[a-z_]{1,300}", json_value()).prop_map(|(k, j)| Mutation::Unknown(k, j)),
        any::<usize>().prop_map(Mutation::Repeat),
    ]
}

fn mutate(req: &Request, mutations: &[Mutation]) -> Vec<u8> {
    let Json::Object(mut fields) = serde_json::to_value(req).unwrap() else {
        unreachable!("a request serializes to an object")
    };
    let mut repeat = None;
    for m in mutations {
        let keys: Vec<String> = fields.keys().cloned().collect();
        let pick = |i: &usize| keys[i % keys.len()].clone();
        match m {
            Mutation::Drop(i) => {
                fields.remove(&pick(i));
            }
            Mutation::Retype(i, j) => {
                fields.insert(pick(i), j.clone());
            }
            Mutation::Nest(i, n, as_object) => {
                let k = pick(i);
                let mut v = fields.remove(&k).unwrap_or(Json::Null);
                for _ in 0..*n {
                    v = if *as_object {
                        json!({ "x": v })
                    } else {
                        json!([v])
                    };
                }
                fields.insert(k, v);
            }
            Mutation::Unknown(k, j) => {
                fields.insert(k.clone(), j.clone());
            }
            Mutation::Repeat(i) => repeat = Some(pick(i)),
        }
        if fields.is_empty() {
            break;
        }
    }
    let mut body = serde_json::to_vec(&Json::Object(fields)).unwrap();
    if let Some(k) = repeat {
        let extra = format!("{}:\"again\",", Json::from(k));
        body.splice(1..1, extra.into_bytes());
    }
    body
}

proptest! {
    #[test]
    fn envelopes_round_trip(req in request()) {
        let body = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(Request::decode(&body).unwrap(), req);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoder(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        decode(&body);
    }

    #[test]
    fn arbitrary_json_never_panics_the_envelope_decoder(j in json_value()) {
        decode(&serde_json::to_vec(&j).unwrap());
    }

    #[test]
    fn mutated_envelopes_are_decoded_or_refused_in_bounded_words(
        req in request(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        decode(&mutate(&req, &mutations));
    }

    #[test]
    fn truncated_envelopes_are_refused_in_bounded_words(req in request(), cut in any::<usize>()) {
        let body = serde_json::to_vec(&req).unwrap();
        decode(&body[..cut % body.len()]);
    }

    #[test]
    fn arbitrary_cursors_never_panic_the_cursor_decoder(
        cursor in prop::collection::vec(json_value(), 0..5),
        which in any::<usize>(),
    ) {
        let queries: Vec<_> = beds::CATALOG
            .domains
            .iter()
            .flat_map(|d| d.queries.iter())
            .filter(|q| !q.count)
            .collect();
        let q = queries[which % queries.len()];
        if let Err(e) = cursor_values(q, &cursor, patterns()) {
            assert_eq!(e.code, ErrorCode::InvalidInput);
            assert_bounded(&e, b"");
        }
    }
}

fn patterns() -> &'static Patterns {
    static PATTERNS: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
    PATTERNS.get_or_init(|| Patterns::compile(beds::CATALOG.domains).unwrap())
}

/// The valid declarations the compiler's mutations start from.
fn declarations() -> &'static [(String, String)] {
    static FILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            "domains/spew.yaml",
            "tests/fixtures/clinic.yaml",
            "tests/fixtures/library.yaml",
        ]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read_to_string(root.join(f)).unwrap(),
            )
        })
        .collect()
    })
}

/// Values a mutation puts where a line had one.
const VALUES: &[&str] = &[
    "",
    "-1",
    "0",
    "99999999999999999999999",
    "1.5e400",
    "null",
    "~",
    "true",
    "[]",
    "{}",
    "[",
    "{",
    "'",
    "\"",
    "x",
    "*undefined",
    "&a x",
    "!!binary AAAA",
    "uuid",
    "string",
    "$nope",
    "{ type: string, max: -5 }",
    "[a, b, a]",
    "\t",
    "é",
    "|",
    ">",
];

/// One change to a valid YAML declaration, by line.
#[derive(Debug, Clone)]
enum Edit {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Replace(usize, usize),
    Indent(usize, bool),
    /// Lines of ever deeper keys put before a line.
    Deepen(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Replace(a, b)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, b)| Edit::Indent(a, b)),
        (any::<usize>(), 1usize..200).prop_map(|(a, n)| Edit::Deepen(a, n)),
    ]
}

fn apply(source: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = source.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            Edit::Drop(i) => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Edit::Swap(a, b) => lines.swap(a % n, b % n),
            Edit::Replace(i, v) => {
                let line = &mut lines[i % n];
                let value = VALUES[v % VALUES.len()];
                *line = match line.split_once(": ") {
                    Some((key, _)) => format!("{key}: {value}"),
                    None => format!("{line} {value}"),
                };
            }
            Edit::Deepen(i, levels) => {
                let deep = (0..*levels).map(|l| format!("{}k{l}:", " ".repeat(l)));
                let at = i % n;
                lines.splice(at..at, deep);
            }
            Edit::Indent(i, deeper) => {
                let line = &mut lines[i % n];
                if *deeper {
                    line.insert_str(0, "  ");
                } else if let Some(rest) = line.strip_prefix("  ") {
                    *line = rest.to_string();
                }
            }
        }
    }
    lines.join("\n")
}

/// Compiles a declaration: Ok (and then the emitter runs), or diagnostics, each with a
/// message; never a panic.
fn compile(file: &str, source: &str) {
    match beds_codegen::compile_source(file, source) {
        Ok(domain) => {
            beds_codegen::generate(&[domain]);
        }
        Err(diagnostics) => {
            assert!(!diagnostics.0.is_empty(), "an error without a diagnostic");
            for d in &diagnostics.0 {
                assert!(!d.message.is_empty(), "an empty diagnostic: {d}");
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_declaration_compiler(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        compile("fuzz.yaml", &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_declarations_compile_or_are_diagnosed(
        which in any::<usize>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let files = declarations();
        let (file, source) = &files[which % files.len()];
        compile(file, &apply(source, &edits));
    }
}

#[test]
fn the_declarations_mutated_are_valid_as_they_stand() {
    for (file, source) in declarations() {
        if let Err(d) = beds_codegen::compile_source(file, source) {
            panic!("{file} must compile: {d}");
        }
    }
}

/// Inputs of the kinds that crash parsers: deep nesting, alias expansion, huge scalars.
/// Crashers found: 50,000 `- ` on one line and 5,000 ever deeper keys overflowed the stack
/// (yaml-rust2's `Parser::load` recurses per level); the compiler now pulls events itself
/// and refuses nesting deeper than 64 levels.
#[test]
fn hostile_declarations_are_diagnosed_not_crashed() {
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    for source in [
        "[".repeat(100_000),
        "{".repeat(100_000),
        "- ".repeat(50_000),
        (0..5_000)
            .map(|i| format!("{}k: \n", " ".repeat(i)))
            .collect(),
        laughs.to_string(),
        format!("domain: {}\nversion: 1\n", "x".repeat(1_000_000)),
        "domain: d\nversion: 1\ntemplates: &t { a: { fields: *t } }\n".to_string(),
    ] {
        compile("hostile.yaml", &source);
    }
}
