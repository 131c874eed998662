//! The dependency rule between the workspace's crates (ARCHITECTURE.md, "Architecture
//! invariants"), read from the manifests through `cargo metadata`: every normal or build
//! dependency of one workspace crate on another is in `ALLOWED`, and every allowed one exists, so
//! the table cannot drift from the manifests either way. Dev-dependencies are left out (a crate's
//! own tests may link what they drive).

use std::collections::BTreeSet;

use serde_json::Value;

/// Who may depend on whom. `coordinator` and `worker` sit side by side; only `embedded` wires
/// them together; `glctl` reaches the engine through `embedded`, behind a feature.
const ALLOWED: &[(&str, &[&str])] = &[
    ("engine", &[]),
    ("runtime", &["engine"]),
    ("coordinator", &["engine", "runtime"]),
    ("worker", &["engine", "runtime"]),
    ("embedded", &["engine", "runtime", "coordinator", "worker"]),
    ("glctl", &["engine", "embedded"]),
    ("loadtest", &["engine"]),
    ("tests", &["engine", "runtime", "coordinator", "worker", "embedded", "glctl", "loadtest"]),
];

fn declared() -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut edges = BTreeSet::new();
    for package in packages {
        let from = package["name"].as_str().expect("name");
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let to = dep["name"].as_str().expect("dependency name");
            if members.contains(to) && dep["kind"].as_str() != Some("dev") {
                edges.insert((from.to_owned(), to.to_owned()));
            }
        }
    }
    edges
}

#[test]
fn workspace_crates_depend_only_as_the_rule_allows() {
    let allowed: BTreeSet<(String, String)> = ALLOWED
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| ((*from).to_owned(), (*to).to_owned())))
        .collect();
    let declared = declared();
    assert!(declared.contains(&("coordinator".into(), "engine".into())), "the walk found the workspace: {declared:?}");
    let forbidden: Vec<_> = declared.difference(&allowed).collect();
    assert!(
        forbidden.is_empty(),
        "dependencies the rule forbids (move the code, or change the rule and ARCHITECTURE.md): {forbidden:?}"
    );
    let stale: Vec<_> = allowed.difference(&declared).collect();
    assert!(stale.is_empty(), "allowed dependencies no manifest declares (update ALLOWED): {stale:?}");
}
