//! The core's purity, proven from its manifest: nothing `engine` links (directly or through
//! another crate) may be an async runtime, a database or broker driver, an HTTP stack or
//! telemetry. Read from `cargo metadata`'s resolved graph, following normal and build
//! dependencies (not dev-dependencies, which only its tests link).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

const FORBIDDEN: &[&str] = &["tokio", "sqlx", "lapin", "fred", "axum", "hyper", "reqwest", "opentelemetry", "tracing"];

fn forbidden(name: &str) -> bool {
    FORBIDDEN.iter().any(|f| name == *f || name.starts_with(&format!("{f}-")) || name.starts_with(&format!("{f}_")))
}

#[test]
fn the_core_links_no_runtime_driver_http_or_telemetry() {
    // This machine's platform only: the others' packages (Windows, Android) are not downloaded.
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let root = names.iter().find(|(_, name)| **name == "engine").map(|(id, _)| *id).expect("the engine package");
    let (mut linked, mut todo) = (BTreeSet::new(), vec![root]);
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let not_dev = dep["dep_kinds"].as_array().expect("kinds").iter().any(|k| k["kind"].as_str() != Some("dev"));
            let pkg = dep["pkg"].as_str().expect("pkg");
            if not_dev && linked.insert(names[pkg]) {
                todo.push(pkg);
            }
        }
    }
    assert!(linked.contains("serde_json"), "the walk found the core's own dependencies: {linked:?}");
    let bad: Vec<&&str> = linked.iter().filter(|name| forbidden(name)).collect();
    assert!(bad.is_empty(), "the pure core links {bad:?}; move that code to the runtime crate");
}
