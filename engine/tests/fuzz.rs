//! Fuzzing on the stable toolchain: coverage-free, but seeded with real documents and run in CI.
//! Arbitrary bytes, and mutations of the seed corpus (`examples/`, `tests/fixtures/`, a set of
//! conditions), go through the DAG parser and validator and the condition language. Any answer is
//! fine except a panic; a valid DAG must also plan and hash, and a parsed condition must evaluate
//! to a boolean or a typed error. `PROPTEST_CASES` scales a longer run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use engine::condition::{Condition, Scope};
use engine::dag::{DagSpec, Limits, compile};
use proptest::prelude::*;
use serde_json::{Value, json};

fn corpus() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seeds = Vec::new();
    for dir in ["examples", "tests/fixtures"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("seed corpus").flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                seeds.push(text);
            }
        }
    }
    seeds
}

const CONDITIONS: &[&str] = &[
    "results.aggregate.total >= 0",
    "input.region == \"EU\" && !(results.a.x < 3.5)",
    "results.a.flag || input.override != null",
    "((input.a))",
    "input.a >= 2 && input.region != \"US\" || false",
];

/// Tokens that steer mutations towards the grammar's edges.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "depends_on",
    "nodes",
    "&a",
    "*a",
    "!!",
    "- ",
    "\n  ",
    "\0",
    "1e309",
    "-0",
    "&&",
    "||",
    "!",
    "==",
    ">=",
    "results.",
    "input.",
    "(",
    ")",
    "\u{202e}",
    "\u{feff}",
    "null",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0usize..256).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(seed: &str, mutations: &[Mutation]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for m in mutations {
        let at = |i: usize| if bytes.is_empty() { 0 } else { i % (bytes.len() + 1) };
        match *m {
            Mutation::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= b;
            }
            Mutation::Flip(..) => {}
            Mutation::Delete(i, n) => {
                let i = at(i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Duplicate(i, n) => {
                let i = at(i);
                let end = (i + n).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
            Mutation::Insert(i, t) => {
                let i = at(i);
                bytes.splice(i..i, TOKENS[t].bytes());
            }
            Mutation::Truncate(i) => bytes.truncate(at(i)),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The whole DAG pipeline on one document: no panic, and a valid DAG plans and hashes.
fn check_document(text: &str) {
    let Ok(spec) = DagSpec::parse(text) else { return };
    if let Ok(dag) = compile(spec, &Limits { max_nodes: 10_000 }) {
        assert_eq!(dag.order().len(), dag.len(), "a valid DAG plans every node");
        let _ = dag.hash();
        let _ = dag.to_mermaid();
        let yaml = dag.to_yaml().expect("a valid DAG exports");
        let again = compile(DagSpec::parse(&yaml).expect("its export parses"), &Limits { max_nodes: 10_000 });
        assert_eq!(again.expect("its export is valid").hash(), dag.hash(), "export and import keep the hash");
    }
}

fn is_node(id: &str) -> bool {
    matches!(id, "a" | "aggregate")
}

fn check_condition(text: &str) {
    let Ok(condition) = Condition::parse(text, is_node) else { return };
    let results: BTreeMap<String, Value> = BTreeMap::from([("a".into(), json!({"x": 1, "flag": true}))]);
    let input = json!({"region": "EU", "a": 2, "list": [1, 2, {"k": true}]});
    let _ = condition.evaluate(&Scope { input: &input, results: &results });
}

/// 2,000 cases per target in CI; `PROPTEST_CASES` sets a longer run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2_000);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_dag_pipeline(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_document(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_seed_documents_never_panic_the_dag_pipeline(
        seed in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let seeds = corpus();
        check_document(&mutate(seeds[seed.index(seeds.len())].as_str(), &mutations));
    }

    #[test]
    fn mutated_conditions_never_panic(
        seed in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 0..6),
    ) {
        check_condition(&mutate(CONDITIONS[seed.index(CONDITIONS.len())], &mutations));
    }

    #[test]
    fn arbitrary_strings_never_panic_the_condition_language(text in "\\PC{0,200}") {
        check_condition(&text);
    }
}

#[test]
fn the_seed_corpus_is_not_empty_and_mostly_valid() {
    let seeds = corpus();
    assert!(seeds.len() >= 5, "examples and fixtures are the seeds");
    let valid = seeds.iter().filter(|s| DagSpec::parse(s).ok().is_some_and(|d| compile(d, &Limits::default()).is_ok()));
    assert!(valid.count() >= 4, "the seeds reach the planner, not only the parser");
    for c in CONDITIONS {
        assert!(Condition::parse(c, is_node).is_ok(), "seed condition {c} parses");
    }
}
