//! `glctl` against a real stack: every command, its exit codes, and `provenance verify`
//! recomputing the chain locally and naming the node a tampered record breaks.

use std::ffi::OsString;

use serde_json::{Value, json};
use tests::{Stack, StackOptions, repo_root};

struct Run {
    code: u8,
    stdout: String,
    stderr: String,
}

async fn glctl(stack: &Stack, args: &[&str]) -> Run {
    let server = format!("http://{}", stack.coordinators[0].addr);
    glctl_at(&server, args).await
}

async fn glctl_at(server: &str, args: &[&str]) -> Run {
    let argv: Vec<OsString> =
        ["glctl", "--server", server].iter().chain(args.iter()).map(|a| OsString::from(*a)).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = glctl::run(argv, &mut out, &mut err).await;
    Run { code, stdout: String::from_utf8_lossy(&out).into(), stderr: String::from_utf8_lossy(&err).into() }
}

fn example(name: &str) -> String {
    repo_root().join("examples").join(name).to_string_lossy().into_owned()
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", run.stdout, run.stderr))
}

#[tokio::test]
async fn every_command_answers_with_the_documented_exit_code() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("glctl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cyclic = dir.join("cyclic.yaml");
    std::fs::write(
        &cyclic,
        "name: c\nnodes:\n  a: {agent_id: noop, depends_on: [b]}\n  b: {agent_id: noop, depends_on: [a]}\n",
    )
    .expect("write");
    let failing = dir.join("failing.yaml");
    std::fs::write(
        &failing,
        "dag_id: failing\nname: f\nnodes:\n  boom: {agent_id: fail, retry_policy: {max_retries: 0}}\n",
    )
    .expect("write");
    let linear = example("linear-3.yaml");
    validate(&stack, &linear, &cyclic).await;
    apply_get_and_render(&stack, &linear).await;
    run_and_inspect(&stack, &failing).await;
    let closed = format!("http://127.0.0.1:{}", tests::free_port());
    assert_eq!(glctl_at(&closed, &["dag", "list"]).await.code, 2, "an unreachable server exits 2");
    let _ = std::fs::remove_dir_all(&dir);
    stack.shutdown().await;
}

/// Valid exits 0, invalid 1, a missing file or a usage error 2.
async fn validate(stack: &Stack, linear: &str, cyclic: &std::path::Path) {
    let valid = glctl(stack, &["dag", "validate", "-f", linear]).await;
    assert_eq!((valid.code, json_of(&valid)["valid"].clone()), (0, json!(true)), "{}", valid.stderr);
    let invalid = glctl(stack, &["dag", "validate", "-f", cyclic.to_str().expect("utf-8")]).await;
    assert_eq!(invalid.code, 1);
    assert!(invalid.stderr.contains("cycle"), "{}", invalid.stderr);
    assert_eq!(glctl(stack, &["dag", "validate", "-f", "/no/such/file.yaml"]).await.code, 2);
    assert_eq!(glctl(stack, &["dag", "frobnicate"]).await.code, 2, "usage errors exit 2");
}

async fn apply_get_and_render(stack: &Stack, linear: &str) {
    let created = glctl(stack, &["dag", "apply", "-f", linear]).await;
    assert_eq!((created.code, json_of(&created)["dag"]["revision"].clone()), (0, json!(1)), "{}", created.stderr);
    let replaced = glctl(stack, &["dag", "apply", "-f", linear]).await;
    assert_eq!((replaced.code, json_of(&replaced)["dag"]["revision"].clone()), (0, json!(2)), "apply again updates");
    let listed = glctl(stack, &["dag", "list"]).await;
    assert_eq!(json_of(&listed)["items"][0]["dag_id"], "dag-linear-3-node", "{}", listed.stdout);
    assert_eq!(
        json_of(&glctl(stack, &["dag", "get", "dag-linear-3-node"]).await)["dag"]["name"],
        "Linear 3-node pipeline"
    );
    let exported = glctl(stack, &["dag", "export", "dag-linear-3-node"]).await;
    assert!(exported.stdout.contains("dag_id: dag-linear-3-node"), "{}", exported.stdout);
    let mermaid = glctl(stack, &["dag", "graph", "dag-linear-3-node"]).await;
    assert!(mermaid.stdout.starts_with("graph TD"), "{}", mermaid.stdout);
    let tree = glctl(stack, &["dag", "graph", "--tree", linear]).await;
    assert!(tree.stdout.contains("level 2") && tree.stdout.contains("report [echo]  ← validate"), "{}", tree.stdout);
    let missing = glctl(stack, &["dag", "get", "nope"]).await;
    assert_eq!(missing.code, 1, "a refusal by the API exits 1");
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
}

/// `run --wait` shows the chain hash, timeline and outputs and exits 0 only when it completes.
async fn run_and_inspect(stack: &Stack, failing: &std::path::Path) {
    let done = glctl(stack, &["run", "dag-linear-3-node", "--input", r#"{"x": 1}"#, "--wait"]).await;
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
    let (_, body) = stack.call(reqwest::Method::GET, "/executions?status=completed&limit=1", None).await;
    let hash = body["items"][0]["provenance_chain_hash"].as_str().expect("hash");
    assert!(done.stdout.contains(&format!("provenance_chain_hash {hash}")), "{}", done.stdout);
    assert!(done.stdout.contains("timeline") && done.stdout.contains("  report   |"), "{}", done.stdout);
    assert!(done.stdout.contains(r#"report: {"_input":{"x":1},"validate":"#), "the outputs are shown: {}", done.stdout);

    let failed = glctl(stack, &["run", failing.to_str().expect("utf-8"), "--wait"]).await;
    assert_eq!(failed.code, 1, "a run that does not complete exits 1: {}", failed.stdout);
    assert!(failed.stdout.contains("status     failed"), "{}", failed.stdout);
    let started = glctl(stack, &["run", "dag-linear-3-node"]).await;
    let id = json_of(&started)["execution_id"].as_str().expect("id").to_owned();
    assert_eq!(glctl(stack, &["executions", "get", &id]).await.code, 0);
    let listed = glctl(stack, &["executions", "list", "--dag-id", "failing"]).await;
    assert_eq!(json_of(&listed)["items"][0]["status"], "failed");
    assert_eq!(glctl(stack, &["executions", "get", "not-a-uuid"]).await.code, 1);
}

#[tokio::test]
async fn provenance_verify_recomputes_the_chain_and_names_the_tampered_node() {
    let stack = Stack::start(StackOptions::default()).await;
    assert_eq!(glctl(&stack, &["dag", "apply", "-f", &example("diamond-4.yaml")]).await.code, 0);
    let (_, listed) = stack.call(reqwest::Method::GET, "/dags", None).await;
    let dag_id = listed["items"][0]["dag_id"].as_str().expect("dag id").to_owned();
    let id = stack.execute(&dag_id, json!({"v": 2})).await;
    assert_eq!(stack.wait_finished(&id, std::time::Duration::from_secs(60)).await["status"], "completed");

    let good = glctl(&stack, &["provenance", "verify", &id]).await;
    assert_eq!(good.code, 0, "{}{}", good.stdout, good.stderr);
    assert!(good.stdout.contains("verified: provenance_chain_hash"), "{}", good.stdout);

    let db = stack.database().await;
    let node: String =
        sqlx::query_scalar("SELECT node_id FROM execution_provenance WHERE execution_id = $1 ORDER BY node_id LIMIT 1")
            .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
            .fetch_one(&db)
            .await
            .expect("a record");
    sqlx::query(
        "UPDATE execution_provenance SET outputs = '{\"forged\": true}' WHERE execution_id = $1 AND node_id = $2",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
    .bind(&node)
    .execute(&db)
    .await
    .expect("tamper");
    let bad = glctl(&stack, &["provenance", "verify", &id]).await;
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(bad.stdout.contains(&format!("BROKEN {node}: output_hash does not match")), "{}", bad.stdout);
    assert!(bad.stdout.contains(&format!("the chain breaks at node {node}")), "{}", bad.stdout);
    stack.shutdown().await;
}
