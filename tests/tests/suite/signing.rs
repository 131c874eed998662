//! Authenticated results (`GL_ORCHESTRATOR_RESULT_KEYS`): results published straight onto the
//! broker during a running node without a MAC, under an unknown key id, with the right id and the
//! wrong secret, or with a MAC of another body change nothing; the worker's real, signed result is
//! recorded, the chain verifies, and each forgery is counted by reason.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::messages::{Message, ResultMessage, WIRE_VERSION};
use engine::signing::{Keyring, MAC_HEADER};
use engine::state::{Outcome, TaskKind};
use engine::topology::Topology;
use runtime::amqp::Broker;
use runtime::queue::{Outgoing, Queue};
use serde_json::json;
use tests::{AMQP, Stack, StackOptions, eventually, onto_results};

const WITHIN: Duration = Duration::from_secs(90);
const KEYS: &str = "w-2026:the-workers-result-key-of-32-bytes-or-more";

fn forged(execution_id: &str) -> ResultMessage {
    ResultMessage {
        v: WIRE_VERSION,
        execution_id: execution_id.to_owned(),
        node_id: "wait".into(),
        attempt: 1,
        kind: TaskKind::Run,
        worker_id: "forger".into(),
        started_at: "2026-12-04T00:00:00.000000Z".into(),
        completed_at: "2026-12-04T00:00:01.000000Z".into(),
        duration_ms: 1000,
        deliveries: 1,
        outcome: Outcome::Succeeded { outputs: json!({"forged": true}) },
    }
}

fn publishable(topology: &Topology, body: Vec<u8>, mac: Option<String>) -> Outgoing {
    onto_results(topology, body, mac.map(|m| BTreeMap::from([(MAC_HEADER.to_owned(), m)])).unwrap_or_default())
}

#[tokio::test]
async fn forged_results_change_nothing_when_results_must_be_signed() {
    let settings = vec![("RESULT_KEYS", KEYS.to_owned())];
    let stack = Stack::start(StackOptions { settings, ..StackOptions::default() }).await;
    stack
        .create_dag(json!({"dag_id": "signed", "name": "signed", "nodes": {
            "wait": {"agent_id": "sleep", "params": {"ms": 2000}},
            "after": {"agent_id": "echo", "depends_on": ["wait"]}}}))
        .await;
    let id = stack.execute("signed", json!({})).await;
    eventually(WITHIN, "node wait is running", || async { stack.nodes(&id).await["wait"]["status"] == "running" })
        .await;
    let topology = Topology::new(&stack.prefix, 5);
    let broker = Broker::connect(AMQP, "forger", topology.clone(), tests::BROKER_CALL).await.expect("broker");
    let body = Message::Result(forged(&id)).to_bytes();
    let stranger = Keyring::parse("w-old:a-key-this-coordinator-never-held-32b").expect("keys");
    let same_id = Keyring::parse("w-2026:the-right-id-but-not-the-right-secret!").expect("keys");
    let real = Keyring::parse(KEYS).expect("keys");
    let other_body = real.sign(b"{\"type\":\"result\"}");
    let forgeries = [
        publishable(&topology, body.clone(), None),
        publishable(&topology, body.clone(), Some(stranger.sign(&body))),
        publishable(&topology, body.clone(), Some(same_id.sign(&body))),
        publishable(&topology, body.clone(), Some(other_body)),
    ];
    broker.publish(&forgeries).await.expect("publish");
    broker.close().await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    let nodes = stack.nodes(&id).await;
    assert_eq!(nodes["wait"]["outputs"], json!({"slept_ms": 2000}), "the real output is recorded");
    assert_ne!(nodes["wait"]["worker_id"], "forger");
    let provenance = stack.provenance(&id).await;
    assert_eq!(provenance["chain_valid"], true, "{provenance}");
    eventually(WITHIN, "each forgery is counted", || async {
        stack.invalid_messages("unsigned").await == 1.0
            && stack.invalid_messages("unknown_key").await == 1.0
            && stack.invalid_messages("bad_mac").await == 2.0
    })
    .await;
    stack.shutdown().await;
}
