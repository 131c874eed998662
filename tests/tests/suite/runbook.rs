//! The operations runbook's own commands (`curl … | python3 -c "…"`), taken verbatim from
//! `docs/runbook-orchestrator-service-down.md`, run against a live server. Only the host and
//! port, and the `<execution_id>` placeholder, are substituted. The runbook is the team's
//! reference copy (`../shared/reference/`, beside the checkout), kept in the repository so that
//! the test runs from any clone; where the reference is present, the two must not differ.

use std::time::Duration;

use serde_json::json;
use tests::{Stack, StackOptions, example};

/// Every `curl … | python3 -c "…"` command of the runbook, in order.
fn runbook_commands() -> Vec<String> {
    let path = tests::repo_root().join("docs/runbook-orchestrator-service-down.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reference = tests::repo_root().join("../shared/reference/runbook-orchestrator-service-down.md");
    if let Ok(original) = std::fs::read_to_string(&reference) {
        assert_eq!(text, original, "docs/ holds an outdated copy of {}", reference.display());
    }
    let mut commands = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("curl -s \"http://localhost:8080") {
        let tail = &rest[start..];
        let Some(code) = tail.find("python3 -c \"") else { break };
        // The Python program ends at the first line that is a lone closing quote.
        let body = &tail[code + "python3 -c \"".len()..];
        let Some(end) = body.find("\n\"") else { break };
        let command_end = code + "python3 -c \"".len() + end + 2;
        commands.push(tail[..command_end].to_owned());
        rest = &tail[command_end..];
    }
    commands
}

async fn run(command: &str, base_host: &str, execution_id: &str) -> (i32, String, String) {
    let command = command.replace("http://localhost:8080", base_host).replace("<execution_id>", execution_id);
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&command)
        .env("ACCESS_TOKEN", "unused-auth-is-disabled")
        .output()
        .await
        .expect("bash runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_runbook_python_snippets_run_unchanged() {
    let commands = runbook_commands();
    assert_eq!(commands.len(), 3, "list running, find orphans, read provenance: {commands:#?}");
    let stack = Stack::start(StackOptions::default()).await;
    let host = format!("http://{}", stack.coordinators[0].addr);
    stack.create_dag(example("diamond-4.yaml")).await;
    stack
        .create_dag(
            json!({"dag_id": "slow", "name": "s", "nodes": {"wait": {"agent_id": "sleep", "params": {"ms": 5000}}}}),
        )
        .await;
    let done = stack.execute("dag-diamond-4-node", json!({})).await;
    assert_eq!(stack.wait_finished(&done, Duration::from_secs(30)).await["status"], "completed");
    let running = stack.execute("slow", json!({})).await;
    stack.wait_for(&running, Duration::from_secs(30), |e| e["status"] == "running").await;

    let (code, out, err) = run(&commands[0], &host, &done).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Execution: {running} | DAG: slow | Started: ")), "{out}");

    let (code, out, err) = run(&commands[1], &host, &done).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("ORPHANED"), "nothing has run for an hour: {out}");

    let (code, out, err) = run(&commands[2], &host, &done).await;
    assert_eq!(code, 0, "{err}");
    let chain = stack.execution(&done).await["provenance_chain_hash"].as_str().expect("hash").to_owned();
    assert!(out.contains(&format!("Chain hash: {chain}")), "{out}");
    assert!(out.contains("Nodes in chain: 4") && out.contains("Chain valid: True"), "{out}");
    stack.shutdown().await;
}
