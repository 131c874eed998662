//! Without its `embedded` feature glctl is an API client only: what it links (normal and build
//! dependencies, as `cargo tree` resolves them for glctl alone) holds no database, broker, cache or
//! HTTP-server crate. With the feature (the default), the embedded engine brings them, which the
//! second half checks so the first cannot pass by a broken query.

use std::collections::BTreeSet;

const SERVER_SIDE: &[&str] = &["sqlx", "axum", "fred", "lapin", "jsonwebtoken"];

fn linked(features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["tree", "-p", "glctl", "--edges", "normal,build", "--prefix", "none", "--format", "{p}"])
        .args(["--locked", "--offline"])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn server_side(names: &BTreeSet<String>) -> Vec<&str> {
    SERVER_SIDE.iter().copied().filter(|f| names.contains(*f)).collect()
}

#[test]
fn the_client_alone_links_no_server_side_crate() {
    let client = linked(&["--no-default-features"]);
    assert!(
        client.contains("reqwest") && client.contains("clap"),
        "the walk found glctl's own dependencies: {client:?}"
    );
    assert_eq!(server_side(&client), Vec::<&str>::new(), "glctl --no-default-features links server-side crates");
    assert!(!["coordinator", "worker", "embedded"].iter().any(|c| client.contains(*c)), "nor the services themselves");

    let embedded = linked(&[]);
    assert!(embedded.contains("coordinator"), "the default build carries the embedded engine");
    assert!(server_side(&embedded).contains(&"sqlx"), "and with it SQLite through sqlx");
}
