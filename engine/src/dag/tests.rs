//! Behaviour of validation and planning, following the earlier implementation's test checklist
//! (reference section 12) with its defects fixed, plus property tests for graph invariants.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn spec(nodes: Value) -> DagSpec {
    DagSpec::from_value(json!({"name": "t", "nodes": nodes})).expect("well-formed DAG document")
}

fn compiled(nodes: Value) -> Dag {
    compile(spec(nodes), &Limits::default()).unwrap_or_else(|r| panic!("expected a valid DAG: {r:#?}"))
}

fn errors(nodes: Value) -> ValidationReport {
    match compile(spec(nodes), &Limits::default()) {
        Ok(_) => panic!("expected validation errors"),
        Err(report) => report,
    }
}

fn kinds(report: &ValidationReport) -> Vec<ErrorType> {
    report.errors.iter().map(|e| e.error_type).collect()
}

fn a(deps: &[&str]) -> Value {
    json!({"agent_id": "noop", "depends_on": deps})
}

#[test]
fn valid_shapes_compile() {
    let shapes = [
        json!({"a": a(&[]), "b": a(&["a"]), "c": a(&["b"])}),
        json!({"only": a(&[])}),
        json!({"a": a(&[]), "b": a(&["a"]), "c": a(&["a"]), "d": a(&["b", "c"])}),
        json!({"s": a(&[]), "w1": a(&["s"]), "w2": a(&["s"]), "w3": a(&["s"]), "w4": a(&["s"]), "w5": a(&["s"]),
               "t": a(&["w1", "w2", "w3", "w4", "w5"])}),
        json!({"r1": a(&[]), "r2": a(&[]), "isolated": a(&[]), "x": a(&["r1", "r2"]), "y": a(&["r1"])}),
    ];
    for nodes in shapes {
        let dag = compiled(nodes.clone());
        assert!(dag.report().valid, "{nodes}");
    }
}

#[test]
fn levels_and_order_are_canonical() {
    let diamond = compiled(json!({"d": a(&["b", "c"]), "c": a(&["a"]), "b": a(&["a"]), "a": a(&[])}));
    assert_eq!(diamond.level_ids(), vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
    assert_eq!(diamond.order_ids(), vec!["a", "b", "c", "d"]);

    let wide = compiled(json!({"e": a(&[]), "c": a(&[]), "a": a(&[]), "d": a(&[]), "b": a(&[])}));
    assert_eq!(wide.level_ids(), vec![vec!["a", "b", "c", "d", "e"]]);

    let reverse = compiled(json!({"z": a(&[]), "y": a(&["z"]), "x": a(&["y"])}));
    assert_eq!(reverse.order_ids(), vec!["z", "y", "x"]);
    assert_eq!(reverse.level_ids(), vec![vec!["z"], vec!["y"], vec!["x"]]);

    // {a, z, b<-a}: the earlier FIFO sort gave a, z, b; the smallest order is a, b, z.
    let smallest = compiled(json!({"a": a(&[]), "z": a(&[]), "b": a(&["a"])}));
    assert_eq!(smallest.order_ids(), vec!["a", "b", "z"]);
}

#[test]
fn priority_breaks_ties_before_ids() {
    let dag = compiled(json!({
        "a": {"agent_id": "noop"},
        "b": {"agent_id": "noop", "priority": 5},
        "c": {"agent_id": "noop", "priority": 5},
        "d": {"agent_id": "noop", "depends_on": ["a"], "priority": 9},
    }));
    assert_eq!(dag.order_ids(), vec!["b", "c", "a", "d"]);
    assert_eq!(dag.level_ids(), vec![vec!["b", "c", "a"], vec!["d"]]);
}

#[test]
fn planning_is_repeatable() {
    let nodes = json!({"a": a(&[]), "b": a(&["a"]), "c": a(&["a"]), "d": a(&["b", "c"]), "e": a(&[])});
    let first = compiled(nodes.clone());
    for _ in 0..5 {
        let again = compiled(nodes.clone());
        assert_eq!(again.order_ids(), first.order_ids());
        assert_eq!(again.hash(), first.hash());
    }
}

#[test]
fn cycles_are_reported_with_their_path() {
    let two = errors(json!({"a": a(&["b"]), "b": a(&["a"])}));
    assert_eq!(kinds(&two), vec![ErrorType::Cycle]);
    assert_eq!(two.errors[0].nodes, vec!["a", "b"]);
    assert!(two.errors[0].message.contains("a -> b -> a"), "{}", two.errors[0].message);

    let three = errors(json!({"a": a(&["c"]), "b": a(&["a"]), "c": a(&["b"])}));
    assert_eq!(three.errors[0].nodes, vec!["a", "b", "c"]);

    let branch = errors(json!({"a": a(&[]), "b": a(&["a", "d"]), "c": a(&["b"]), "d": a(&["c"])}));
    assert_eq!(kinds(&branch), vec![ErrorType::Cycle]);
    assert_eq!(branch.errors[0].nodes, vec!["b", "c", "d"]);

    let disconnected = errors(json!({"a": a(&[]), "b": a(&["a"]), "x": a(&["y"]), "y": a(&["x"])}));
    assert_eq!(disconnected.errors[0].nodes, vec!["x", "y"]);
}

#[test]
fn self_dependency_is_reported_once() {
    let report = errors(json!({"a": a(&["a", "a"])}));
    assert_eq!(kinds(&report), vec![ErrorType::SelfDependency]);
    assert!(report.errors[0].message.contains("depends on itself"));
}

#[test]
fn every_error_is_collected() {
    // The reference's verified example: A depends on {A, ghost}; B and C depend on each other;
    // D depends on C. Each problem once; nothing "unreachable".
    let report = errors(json!({
        "A": a(&["A", "ghost"]), "B": a(&["C"]), "C": a(&["B"]), "D": a(&["C"]),
    }));
    let mut found = kinds(&report);
    found.sort();
    assert_eq!(found, vec![ErrorType::SelfDependency, ErrorType::MissingDependency, ErrorType::Cycle]);
    assert_eq!(report.error_count, 3);
    assert!(!report.valid);
}

#[test]
fn each_missing_dependency_is_an_error() {
    let report = errors(json!({"a": a(&["ghost1", "ghost2"])}));
    assert_eq!(kinds(&report), vec![ErrorType::MissingDependency; 2]);
    assert_eq!(report.errors[1].nodes, vec!["a", "ghost2"]);
}

#[test]
fn empty_dag_is_an_error() {
    assert_eq!(kinds(&errors(json!({}))), vec![ErrorType::EmptyDag]);
}

#[test]
fn duplicate_json_keys_are_detected() {
    let text = r#"{"name": "t", "nodes": {"a": {"agent_id": "x"}, "b": {"agent_id": "y"}, "a": {"agent_id": "z"}}}"#;
    let report = compile(DagSpec::from_json(text).expect("parses"), &Limits::default()).expect_err("invalid");
    assert_eq!(kinds(&report), vec![ErrorType::DuplicateNodeId]);
    assert_eq!(report.errors[0].nodes, vec!["a"]);
}

#[test]
fn node_ids_are_checked() {
    for bad in ["../etc", "a/b", "a b", " a", "a\u{200b}", "a\u{202e}", "a\u{0}", ""] {
        let report = errors(json!({ bad: a(&[]) }));
        assert_eq!(kinds(&report), vec![ErrorType::InvalidNodeId], "{bad:?}");
    }
    let long = "x".repeat(129);
    assert_eq!(kinds(&errors(json!({ long: a(&[]) }))), vec![ErrorType::InvalidNodeId]);
    let mismatch = errors(json!({"a": {"agent_id": "x", "node_id": "b"}}));
    assert_eq!(kinds(&mismatch), vec![ErrorType::InvalidNodeId]);
}

#[test]
fn policies_are_range_checked() {
    let report = errors(json!({
        "a": {"agent_id": "x", "retry_policy": {"max_retries": 21}},
        "b": {"agent_id": "x", "timeout_policy": {"timeout_seconds": 0}},
        "c": {"agent_id": "x", "timeout_policy": {"timeout_seconds": 86401}},
        "d": {"agent_id": "x", "retry_policy": {"base_delay": -1, "max_retries": -3}},
    }));
    assert_eq!(kinds(&report), vec![ErrorType::InvalidPolicy; 5]);
    for (parallel, ok) in [(0, false), (1, true), (500, true), (501, false)] {
        let doc = json!({"name": "t", "max_parallel_nodes": parallel, "nodes": {"a": a(&[])}});
        let result = compile(DagSpec::from_value(doc).expect("parses"), &Limits::default());
        assert_eq!(result.is_ok(), ok, "max_parallel_nodes {parallel}");
    }
}

#[test]
fn node_policy_overrides_the_dag_default_field_by_field() {
    let doc = json!({
        "name": "t",
        "default_retry_policy": {"max_retries": 2, "base_delay": 3},
        "default_timeout_policy": {"timeout_seconds": 30, "on_timeout": "skip"},
        "nodes": {"a": {"agent_id": "x", "retry_policy": {"max_retries": 5}, "timeout_policy": {"timeout_seconds": 120}}},
    });
    let dag = compile(DagSpec::from_value(doc).expect("parses"), &Limits::default()).expect("valid");
    let node = dag.node(0);
    assert_eq!((node.retry.max_retries, node.retry.base_delay), (5, 3.0));
    assert_eq!((node.timeout.timeout_seconds, node.timeout.on_timeout), (120.0, TimeoutAction::Skip));
}

#[test]
fn conditions_and_mappings_must_read_ancestors() {
    let ok = compiled(json!({
        "load": a(&[]),
        "calc": {"agent_id": "x", "depends_on": ["load"], "input_mapping": {"rows": "results.load.rows", "year": "input.year"}},
        "total": {"agent_id": "x", "depends_on": ["calc"], "condition": "results.load.n > 0 && results.calc.ok == true"},
    }));
    assert_eq!(ok.node(ok.index_of("calc").expect("calc")).input_mapping.len(), 2);

    let report = errors(json!({
        "load": a(&[]),
        "side": a(&[]),
        "calc": {"agent_id": "x", "depends_on": ["load"], "input_mapping": {"rows": "results.side.rows"}},
        "gate": {"agent_id": "x", "depends_on": ["load"], "condition": "results.calc.ok"},
        "bad": {"agent_id": "x", "condition": "results.load.n >"},
        "path": {"agent_id": "x", "input_mapping": {"f": "/etc/passwd"}},
    }));
    let mut found = kinds(&report);
    found.sort();
    assert_eq!(
        found,
        vec![
            ErrorType::InvalidCondition,
            ErrorType::InvalidCondition,
            ErrorType::InvalidInputMapping,
            ErrorType::InvalidInputMapping,
        ]
    );
}

#[test]
fn too_many_nodes_respects_the_limit() {
    let spec = synth::chain(11, "noop");
    let report = compile(spec.clone(), &Limits { max_nodes: 10 }).expect_err("over the limit");
    assert_eq!(kinds(&report), vec![ErrorType::TooManyNodes]);
    assert!(compile(spec, &Limits { max_nodes: 11 }).is_ok());
}

#[test]
fn deep_and_wide_graphs_do_not_overflow() {
    let limits = Limits { max_nodes: 1_000_000 };
    let chain = compile(synth::chain(100_000, "noop"), &limits).expect("chain");
    assert_eq!(chain.levels().len(), 100_000);
    let fan = compile(synth::fan_out_in(100_000, "noop"), &limits).expect("fan");
    assert_eq!(fan.levels().len(), 2);
    let mut cyclic = synth::chain(100_000, "noop");
    cyclic.nodes.0[0].1.depends_on.push("n099999".into());
    let report = compile(cyclic, &limits).expect_err("cycle");
    assert_eq!(kinds(&report), vec![ErrorType::Cycle]);
    assert_eq!(report.errors[0].nodes.len(), 100_000);
}

#[test]
fn unknown_fields_are_rejected_and_legacy_fields_accepted() {
    let unknown = DagSpec::from_value(json!({"name": "t", "nodes": {"a": {"agent_id": "x", "bogus": 1}}}));
    assert!(unknown.expect_err("unknown field").message.contains("bogus"));
    let top = DagSpec::from_value(json!({"name": "t", "nodes": {}, "extra": true}));
    assert!(top.is_err());

    let legacy = json!({
        "dag_id": "dag-linear-3-node", "name": "Linear", "hash": "abc", "created_at": null,
        "topology_levels": [["a"]], "description": null,
        "nodes": {"a": {"node_id": "a", "agent_id": "x", "depends_on": [], "input_mapping": {}, "output_key": "a",
                         "condition": null, "retry_policy": null, "timeout_policy": null, "on_failure": "stop",
                         "compensation_handler": null, "priority": 0, "metadata": {}}},
    });
    let dag = compile(DagSpec::from_value(legacy).expect("legacy loads"), &Limits::default()).expect("valid");
    let warned: Vec<WarningType> = dag.warnings().iter().map(|w| w.error_type).collect();
    assert_eq!(warned, vec![WarningType::LegacyFieldIgnored; 2]);
}

const REFERENCE_YAML: &str = r#"
name: emissions
on_failure: fail_fast          # fail_fast | continue | compensate
max_parallel_nodes: 4
default_retry_policy: {max_retries: 2, strategy: exponential, base_delay: 1.0, max_delay: 30.0, jitter: true}
default_timeout_policy: {timeout_seconds: 60, on_timeout: fail}
nodes:
  load:  {agent_id: intake_agent}
  s1:    {agent_id: scope1_agent, depends_on: [load], input_mapping: {rows: results.load.rows}}
  s2:    {agent_id: scope2_agent, depends_on: [load], on_failure: skip, timeout_policy: {timeout_seconds: 120}}
  total: {agent_id: agg_agent, depends_on: [s1, s2], condition: "results.s1._success == true"}
"#;

#[test]
fn the_reference_example_loads_unchanged() {
    let dag = compile(DagSpec::from_yaml(REFERENCE_YAML).expect("yaml"), &Limits::default()).expect("valid");
    assert_eq!(dag.level_ids(), vec![vec!["load"], vec!["s1", "s2"], vec!["total"]]);
    assert_eq!(dag.max_parallel_nodes(), 4);
    let s2 = dag.node(dag.index_of("s2").expect("s2"));
    assert_eq!((s2.timeout.timeout_seconds, s2.retry.max_retries, s2.retry.max_delay), (120.0, 2, 30.0));
    assert!(dag.id().as_str().starts_with("dag_"));
}

#[test]
fn hash_covers_the_whole_definition_and_nothing_else() {
    let base = json!({"name": "t", "nodes": {"b": a(&["a"]), "a": a(&[])}});
    let hash = |doc: &Value| {
        compile(DagSpec::from_value(doc.clone()).expect("parses"), &Limits::default()).expect("valid").hash().clone()
    };
    let h = hash(&base);
    let reordered = json!({"nodes": {"a": a(&[]), "b": {"depends_on": ["a", "a"], "agent_id": "noop"}}, "name": "t"});
    assert_eq!(hash(&reordered), h, "key order and repeated deps do not matter");
    let explicit = json!({"name": "t", "max_parallel_nodes": 10, "default_retry_policy": {"max_retries": 3},
                          "nodes": {"b": a(&["a"]), "a": {"agent_id": "noop", "queue": "default", "priority": 0}}});
    assert_eq!(hash(&explicit), h, "defaults written out hash like defaults left out");
    for (field, value) in [
        ("description", json!("changed")),
        ("metadata", json!({"owner": "x"})),
        ("default_retry_policy", json!({"max_retries": 1})),
        ("default_timeout_policy", json!({"timeout_seconds": 5})),
        ("version", json!("2.0.0")),
    ] {
        let mut changed = base.clone();
        changed[field] = value;
        assert_ne!(hash(&changed), h, "{field} must be covered by the hash");
    }
    let yaml = DagSpec::from_yaml("name: t\nnodes:\n  a: {agent_id: noop}\n  b: {agent_id: noop, depends_on: [a]}\n");
    let from_yaml = compile(yaml.expect("yaml"), &Limits::default()).expect("valid");
    assert_eq!(from_yaml.hash(), &h, "JSON and YAML of one document hash alike");
}

#[test]
fn yaml_export_round_trips() {
    let dag = compile(DagSpec::from_yaml(REFERENCE_YAML).expect("yaml"), &Limits::default()).expect("valid");
    let exported = dag.to_yaml().expect("export");
    let again = compile(DagSpec::from_yaml(&exported).expect("re-import"), &Limits::default()).expect("valid");
    assert_eq!(again.hash(), dag.hash());
    assert_eq!(again.definition(), dag.definition());
    let json = serde_json::to_string(dag.definition()).expect("json");
    let via_json = compile(DagSpec::from_json(&json).expect("json import"), &Limits::default()).expect("valid");
    assert_eq!(via_json.hash(), dag.hash());
}

#[test]
fn mermaid_escapes_labels() {
    let dag = compiled(json!({"a": {"agent_id": "x"}, "b": {"agent_id": "y", "depends_on": ["a"]}}));
    let text = dag.to_mermaid();
    assert!(text.starts_with("graph TD\n"));
    assert!(text.contains("n0[\"a<br/>x\"]") && text.contains("n0 --> n1"), "{text}");
    assert_eq!(super::render::escape("\"<b>#&\nx"), "#quot;#lt;b#gt;#35;#amp; x");
}

/// A random DAG as (node count, edges from an earlier to a later node in generation order).
fn arb_dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (2usize..40).prop_flat_map(|n| {
        let edge = (1..n).prop_flat_map(|to| (0..to, Just(to)));
        (Just(n), proptest::collection::vec(edge, 0..n * 2))
    })
}

fn build(n: usize, edges: &[(usize, usize)], names: &[String]) -> DagSpec {
    let nodes = (0..n)
        .map(|i| {
            let deps: Vec<String> =
                edges.iter().filter(|(_, to)| *to == i).map(|(from, _)| names[*from].clone()).collect();
            (names[i].clone(), synth::node("noop", &deps))
        })
        .collect();
    synth::dag("prop", nodes)
}

fn names(n: usize, salt: usize) -> Vec<String> {
    // Names unrelated to generation order, so the plan cannot simply follow it.
    (0..n).map(|i| format!("n{:03}", (i * 7 + salt) % (n * 7 + 1))).collect()
}

proptest! {
    #[test]
    fn plans_respect_every_edge_and_repeat((n, edges) in arb_dag(), salt in 0usize..50) {
        let names = names(n, salt);
        let dag = compile(build(n, &edges, &names), &Limits::default()).expect("acyclic by construction");
        let position: std::collections::HashMap<&str, usize> =
            dag.order_ids().into_iter().enumerate().map(|(i, id)| (id, i)).collect();
        for (from, to) in &edges {
            prop_assert!(position[names[*from].as_str()] < position[names[*to].as_str()]);
            let (f, t) = (dag.index_of(&names[*from]).expect("from"), dag.index_of(&names[*to]).expect("to"));
            prop_assert!(dag.node(f).level < dag.node(t).level);
        }
        let again = compile(build(n, &edges, &names), &Limits::default()).expect("acyclic");
        prop_assert_eq!(again.order_ids(), dag.order_ids());
        prop_assert_eq!(again.level_ids(), dag.level_ids());
        prop_assert_eq!(again.hash(), dag.hash());
    }

    #[test]
    fn a_back_edge_is_always_a_cycle((n, mut edges) in arb_dag(), pick in any::<proptest::sample::Index>()) {
        prop_assume!(!edges.is_empty());
        // Follow edges forward from a random edge's source to find a descendant, then point back.
        let (start, mut end) = edges[pick.index(edges.len())];
        while let Some(&(_, next)) = edges.iter().find(|(from, _)| *from == end) {
            end = next;
        }
        edges.push((end, start));
        let names = names(n, 0);
        let report = compile(build(n, &edges, &names), &Limits::default()).expect_err("has a cycle");
        let cycle = report.errors.iter().find(|e| e.error_type == ErrorType::Cycle).expect("cycle reported");
        prop_assert!(cycle.nodes.contains(&names[start]) && cycle.nodes.contains(&names[end]));
        prop_assert!(report.errors.iter().all(|e| e.error_type == ErrorType::Cycle));
    }
}
