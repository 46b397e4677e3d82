//! What the fuzzer sends: near-valid JSON (a valid body or frame with a few mutations),
//! hostile strings, and the placeholders that stand for fixtures (tokens, task and message
//! ids) until a case runs against a hub that has them.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

/// Fixture values by placeholder (`$ALICE`, `$TASK0`, …): a generated string equal to a
/// placeholder is replaced when the case runs. Ids known only at run time (tokens, task
/// ids) reach requests this way, and a failing case prints which fixture it used.
#[derive(Debug, Default, Clone)]
pub struct Fixtures(pub HashMap<&'static str, Value>);

impl Fixtures {
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.0.insert(key, value.into());
    }

    /// The fixture a string stands for, or the string itself.
    pub fn text(&self, s: &str) -> String {
        match self.0.get(s) {
            Some(Value::String(v)) => v.clone(),
            Some(v) => v.to_string(),
            None => s.to_string(),
        }
    }

    /// `v` with every placeholder string replaced by its fixture (numbers stay numbers).
    pub fn resolve(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => self.0.get(s.as_str()).cloned().unwrap_or_else(|| v.clone()),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.resolve(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, i)| (self.text(k), self.resolve(i)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Placeholders the string strategy may pick, next to ordinary hostile strings.
pub const PLACEHOLDERS: &[&str] = &[
    "$ADMIN", "$ALICE", "$BOB", "$VIEWER", "$WSAGENT", "$TASK0", "$TASK1", "$DEAD", "$MSG0",
    "$GEN0", "$SEQ",
];

/// Strings that tend to break parsers, key schemes and path handling.
const NASTY: &[&str] = &[
    "",
    " ",
    "..",
    "../..",
    "../../../../etc/passwd",
    "broadcast",
    "admin",
    "alice",
    "bob",
    "dev",
    "DEV",
    "#dev",
    " dev ",
    "null",
    "0",
    "-1",
    "%00",
    "\u{0}",
    "bob\u{0}x",
    "bob\u{0}1",
    "a/b",
    "a\\b",
    "\r\n",
    "é",
    "🦀",
    "\u{202e}evil",
    "\u{feff}bom",
    "\u{fffd}",
    "\u{10ffff}",
    "{\"type\":\"identify\"}",
    "Bearer x",
];

/// A hostile string: plain ids, placeholders, nasty fixed strings, random unicode
/// (control characters and NUL included), and long runs at and around the 128-byte id
/// limit up to a megabyte.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        16 => "[a-z][a-z0-9_-]{0,12}",
        12 => select(PLACEHOLDERS).prop_map(str::to_string),
        12 => select(NASTY).prop_map(str::to_string),
        8 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
        4 => ("[a-z]{1,6}", prop::char::range('\u{0}', '\u{1f}'), "[a-z]{0,6}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        4 => (select(&[64usize, 127, 128, 129, 256, 4096, 70_000][..]), select(&['x', 'é', '🦀'][..]))
            .prop_map(|(n, c)| c.to_string().repeat(n)),
        1 => Just("x".repeat(1_000_000)),
    ]
    .boxed()
}

/// A JSON number at an edge: signs, 2^53, u64 and i64 bounds, fractions, huge floats.
pub fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(2),
            json!(200),
            json!(201),
            json!(1u64 << 53),
            json!((1u64 << 53) + 1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(u64::MAX - 1),
            json!(0.5),
            json!(-0.0),
            json!(1e308),
            json!(-1e308),
            json!(2_592_000_000u64),
            json!(2_592_000_001u64),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep, built from hostile leaves.
pub fn value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Number literals a `serde_json::Value` cannot hold: they go into the text as is.
const RAW_LITERALS: &[&str] = &[
    "18446744073709551616",
    "-18446744073709551617",
    "1e400",
    "-1e400",
    "1E2",
    "0.0000000000000000000000000001",
    "123456789012345678901234567890",
    "NaN",
    "Infinity",
    "0x10",
    "00012",
    "1_000",
];

/// How one valid body or frame is made near-valid.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Drop a field.
    Remove(Index),
    /// Give a field another value (often another type).
    Replace(Index, Value),
    /// Give a field a number literal out of every integer range.
    Literal(Index, &'static str),
    /// Wrap a field's value in this many arrays (the hub allows 64 levels).
    Nest(Index, usize),
    /// Add a field.
    Add(String, Value),
    /// Replace the whole thing (an array, a string, null, …).
    Whole(Value),
}

pub fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Remove),
        4 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (any::<Index>(), select(RAW_LITERALS)).prop_map(|(i, l)| Mutation::Literal(i, l)),
        1 => (any::<Index>(), select(&[2usize, 63, 64, 65, 300][..]))
            .prop_map(|(i, n)| Mutation::Nest(i, n)),
        3 => (text(), value()).prop_map(|(k, v)| Mutation::Add(k, v)),
        1 => value().prop_map(Mutation::Whole),
    ]
    .boxed()
}

/// Up to three mutations: none a third of the time (valid input gets as far as the
/// handlers' effects), one a third of the time (input that is valid but for one thing).
pub fn mutations() -> BoxedStrategy<Vec<Mutation>> {
    prop_oneof![
        1 => Just(Vec::new()),
        1 => prop::collection::vec(mutation(), 1..=1),
        1 => prop::collection::vec(mutation(), 2..=3),
    ]
    .boxed()
}

/// A placeholder a number literal goes through serialization as (a string no generated
/// text contains), swapped for the literal in the final text.
fn literal_marker(n: usize) -> String {
    format!("\u{1}literal{n}\u{1}")
}

/// `template` (fixtures resolved) with the mutations applied, as JSON text.
pub fn render(template: &Value, mutations: &[Mutation], fixtures: &Fixtures) -> String {
    let mut v = fixtures.resolve(template);
    let mut literals = Vec::new();
    for m in mutations {
        if let Mutation::Whole(w) = m {
            v = fixtures.resolve(w);
            continue;
        }
        let Value::Object(map) = &mut v else {
            continue;
        };
        let key = |i: &Index, map: &Map<String, Value>| {
            (!map.is_empty()).then(|| map.keys().nth(i.index(map.len())).cloned())?
        };
        match m {
            Mutation::Remove(i) => {
                if let Some(k) = key(i, map) {
                    map.remove(&k);
                }
            }
            Mutation::Replace(i, new) => {
                if let Some(k) = key(i, map) {
                    map.insert(k, fixtures.resolve(new));
                }
            }
            Mutation::Literal(i, lit) => {
                if let Some(k) = key(i, map) {
                    map.insert(k, Value::String(literal_marker(literals.len())));
                    literals.push(*lit);
                }
            }
            Mutation::Nest(i, depth) => {
                if let Some(k) = key(i, map) {
                    let mut inner = map.remove(&k).unwrap_or(Value::Null);
                    for _ in 0..*depth {
                        inner = Value::Array(vec![inner]);
                    }
                    map.insert(k, inner);
                }
            }
            Mutation::Add(k, new) => {
                map.insert(fixtures.text(k), fixtures.resolve(new));
            }
            Mutation::Whole(_) => unreachable!("handled above"),
        }
    }
    let mut text = v.to_string();
    for (n, lit) in literals.iter().enumerate() {
        let quoted = Value::String(literal_marker(n)).to_string();
        text = text.replacen(&quoted, lit, 1);
    }
    text
}

/// Text that is not JSON, or JSON no parser should accept: truncations, nesting far past
/// any limit, lone surrogates, trailing garbage.
pub fn broken_json() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "{",
            "}",
            "[",
            "{\"type\":",
            "{\"type\":\"ping\"",
            "{\"a\":1,}",
            "[1,2,]",
            "nul",
            "tru",
            "'single'",
            "{\"\\ud800\":1}",
            "\"\\ud800\"",
            "{\"a\":1}}",
            "{} {}",
            "\u{0}",
            "{\"type\":\"ping\"}\u{0}",
            "\u{feff}{}",
        ])
        .prop_map(str::to_string),
        select(&[65usize, 129, 10_000, 100_000][..]).prop_map(|n| "[".repeat(n)),
        select(&[65usize, 129, 10_000][..]).prop_map(|n| format!(
            "{}1{}",
            "[".repeat(n),
            "]".repeat(n)
        )),
        select(&[65usize, 200][..]).prop_map(|n| format!(
            "{}null{}",
            "{\"a\":".repeat(n),
            "}".repeat(n)
        )),
        "\\PC{0,40}",
    ]
    .boxed()
}
