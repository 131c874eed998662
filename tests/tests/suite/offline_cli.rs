//! `coordinator validate` and `coordinator plan` on real files: reports, plans and exit codes.

use std::path::Path;

use serde_json::json;
use tests::{coordinator, repo_root};

fn path(relative: &str) -> String {
    repo_root().join(relative).to_string_lossy().into_owned()
}

fn temp_file(name: &str, contents: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("gl-offline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(name);
    std::fs::write(&file, contents).expect("write temp file");
    file.to_string_lossy().into_owned()
}

#[test]
fn every_example_validates() {
    let examples = std::fs::read_dir(repo_root().join("examples")).expect("examples/");
    let mut seen = 0;
    for entry in examples {
        let file = entry.expect("entry").path();
        if !matches!(file.extension().and_then(|e| e.to_str()), Some("yaml" | "json")) {
            continue;
        }
        let run = coordinator(&["validate", &file.to_string_lossy()]);
        assert_eq!(run.code, 0, "{}: {}{}", file.display(), run.stdout, run.stderr);
        assert_eq!(run.json()["valid"], json!(true));
        seen += 1;
    }
    assert!(seen >= 4, "expected the seed DAGs and the emissions pipeline, found {seen}");
}

#[test]
fn invalid_dag_prints_every_error_and_exits_1() {
    let run = coordinator(&["validate", &path("tests/fixtures/invalid.json")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["valid"], json!(false));
    let mut kinds: Vec<&str> =
        report["errors"].as_array().expect("errors").iter().filter_map(|e| e["error_type"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["cycle", "duplicate_node_id", "invalid_policy", "missing_dependency", "self_dependency"]);
    assert_eq!(report["error_count"], json!(5));
    assert!(report["warnings"].is_array());
}

#[test]
fn unreadable_or_unparsable_input_exits_2() {
    let missing = coordinator(&["validate", "/nonexistent/dag.yaml"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);

    let truncated = temp_file("truncated.json", br#"{"name": "t", "nodes": {"a": {"agent_id""#);
    assert_eq!(coordinator(&["validate", &truncated]).code, 2);
    let not_utf8 = temp_file("bytes.yaml", &[0xff, 0xfe, 0x00, 0x41]);
    assert_eq!(coordinator(&["validate", &not_utf8]).code, 2);
    let unknown_field = temp_file("unknown.yaml", b"name: t\nnodes:\n  a: {agent_id: x, bogus: 1}\n");
    let run = coordinator(&["plan", &unknown_field]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("bogus"), "{}", run.stderr);
    assert_eq!(coordinator(&["validate"]).code, 2, "missing argument");
}

#[test]
fn plan_prints_hash_levels_and_order() {
    let file = path("examples/diamond-4.yaml");
    let run = coordinator(&["plan", &file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = run.json();
    assert_eq!(plan["topology_levels"], json!([["extract"], ["scope1", "scope2"], ["report"]]));
    assert_eq!(plan["order"], json!(["extract", "scope1", "scope2", "report"]));
    let hash = plan["dag_hash"].as_str().expect("hash");
    assert_eq!(hash.len(), 64);
    assert_eq!(coordinator(&["plan", &file]).json()["dag_hash"], json!(hash), "same file, same hash");

    let yaml = std::fs::read_to_string(Path::new(&file)).expect("read");
    let dag: serde_json::Value =
        serde_json::to_value(engine::dag::DagSpec::from_yaml(&yaml).expect("yaml")).expect("json");
    let as_json = temp_file("diamond.json", serde_json::to_string(&dag).expect("json").as_bytes());
    assert_eq!(coordinator(&["plan", &as_json]).json()["dag_hash"], json!(hash), "JSON of the same DAG, same hash");
}

#[test]
fn node_limit_comes_from_the_flag() {
    let file = path("examples/diamond-4.yaml");
    let run = coordinator(&["validate", "--max-dag-nodes", "3", &file]);
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["errors"][0]["error_type"], json!("too_many_nodes"));
}
