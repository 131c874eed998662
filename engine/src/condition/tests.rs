use super::*;
use serde_json::json;

fn nodes(id: &str) -> bool {
    matches!(id, "load" | "s1" | "a.b")
}

fn run(src: &str, input: Value, results: Value) -> Result<bool, EvalError> {
    let results: BTreeMap<String, Value> = serde_json::from_value(results).expect("results map");
    let cond = Condition::parse(src, nodes).expect("parses");
    cond.evaluate(&Scope { input: &input, results: &results })
}

#[test]
fn evaluates_typed_comparisons() {
    let results = json!({"s1": {"tco2e": 12.5, "ok": true, "tag": "x"}});
    let cases = [
        ("results.s1.tco2e > 10", true),
        ("results.s1.tco2e <= 12.5 && results.s1.ok", true),
        ("results.s1.tag == 'x' || false", true),
        ("results.s1.tag != \"x\"", false),
        ("!(results.s1.tco2e < 1)", true),
        ("results.s1.missing == null", true),
        ("input.year >= 2024", true),
        ("results.s1.tco2e == 12.5 && input.year == 2025", true),
        ("1 == 1.0", true),
        ("'a' < 'b'", true),
    ];
    for (src, want) in cases {
        assert_eq!(run(src, json!({"year": 2025}), results.clone()), Ok(want), "{src}");
    }
}

#[test]
fn fails_closed_on_type_errors() {
    let results = json!({"s1": {"tag": "x"}});
    for src in [
        "results.s1.tag",
        "results.s1.missing",
        "results.s1.tag > 3",
        "!results.s1.tag",
        "results.s1.tag && true",
        "input.year < 'a'",
    ] {
        assert!(run(src, json!({"year": 1}), results.clone()).is_err(), "{src} must fail closed");
    }
}

#[test]
fn short_circuit_skips_the_unevaluable_side() {
    assert_eq!(run("false && input.x > 'a'", json!({"x": 1}), json!({})), Ok(false));
    assert_eq!(run("true || input.x > 'a'", json!({"x": 1}), json!({})), Ok(true));
}

#[test]
fn legacy_syntax_still_parses() {
    let src = "results.s1._success == true";
    let cond = Condition::parse(src, nodes).expect("legacy condition");
    assert_eq!(cond.referenced_nodes(), vec!["s1"]);
    assert!(Condition::parse("results.s1.value == None", nodes).is_ok());
}

#[test]
fn dotted_node_ids_resolve_longest_first() {
    let path = ValuePath::parse("results.a.b.rows.0", nodes).expect("path");
    assert_eq!(path.root, Root::Results("a.b".into()));
    assert_eq!(path.keys, vec!["rows", "0"]);
    let results: BTreeMap<String, Value> = BTreeMap::from([("a.b".to_owned(), json!({"rows": [7]}))]);
    assert_eq!(path.lookup(&Scope { input: &json!({}), results: &results }), json!(7));
}

#[test]
fn rejects_malformed_expressions() {
    for src in [
        "",
        "results.ghost.x == 1",
        "output.x == 1",
        "(input.x == 1",
        "input.x ==",
        "input.x == 1 == 2",
        "input.x = 1",
        "'unterminated",
        "input..x",
        "results.s1 ; drop table",
        "1e999 > 0",
    ] {
        assert!(Condition::parse(src, nodes).is_err(), "{src:?} must be rejected");
    }
}

#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!("{}true{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert!(Condition::parse(&deep, nodes).is_err());
    let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(Condition::parse(&ok, nodes).is_ok());
    assert!(Condition::parse(&"!".repeat(MAX_DEPTH + 1), nodes).is_err());
    let long_chain = vec!["true"; 500].join(" && ");
    assert!(long_chain.len() < MAX_LEN);
    assert!(Condition::parse(&long_chain, nodes).is_ok());
    assert!(Condition::parse(&"x".repeat(MAX_LEN + 1), nodes).is_err());
}

#[test]
fn mapping_paths_must_be_bare_paths() {
    assert!(ValuePath::parse("input", nodes).is_ok());
    assert!(ValuePath::parse("results.load", nodes).is_ok());
    assert!(ValuePath::parse("results.load.rows == 1", nodes).is_err());
    assert!(ValuePath::parse("/etc/passwd", nodes).is_err());
    assert!(ValuePath::parse("results", nodes).is_err());
}
