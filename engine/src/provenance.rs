//! Provenance: content hashes that prove what an execution computed, and a timing chain that
//! proves when. Defined exactly in `docs/provenance.md`; every hash is SHA-256 (lower-case hex)
//! over RFC 8785 canonical JSON ([`crate::canonical`]).
//!
//! - `input_hash`  = H(node input object as delivered to the agent)
//! - `output_hash` = H(outputs object)
//! - node `chain_hash` = H({"node_id", "agent_id", "input_hash", "output_hash", "parent_hashes"}),
//!   `parent_hashes` = the `chain_hash` of each *completed* dependency, ordered by dependency id
//!   (a skipped dependency has no chain hash and contributes nothing; its input is `null`);
//! - execution `provenance_chain_hash` = H({"dag_hash", "input_hash": H(execution input),
//!   "nodes": [chain_hash of each completed node, in canonical order]});
//! - `record_hash` = H({"prev_record_hash", "execution_id", "node_id", "chain_hash",
//!   "attempt_count", "started_at", "completed_at", "duration_ms", "worker_id"}), chaining the
//!   records of one execution in commit order; the first uses `prev_record_hash` = H({"execution_id"}).
//!
//! Content hashes exclude time, worker and attempt, so the same DAG on the same input gives the
//! same `provenance_chain_hash` on every run, and a resumed execution gives the same hash as an
//! uninterrupted one. Timing is protected separately by the record chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::canonical::{ContentHash, value_hash};
use crate::dag::{Dag, NodeIndex};

/// H(value).
pub fn hash_value(value: &Value) -> ContentHash {
    value_hash(value)
}

/// A node's `chain_hash`. `parent_hashes` must be ordered by dependency id.
pub fn node_chain_hash(
    node_id: &str,
    agent_id: &str,
    input_hash: &ContentHash,
    output_hash: &ContentHash,
    parent_hashes: &[ContentHash],
) -> ContentHash {
    value_hash(&json!({
        "node_id": node_id,
        "agent_id": agent_id,
        "input_hash": input_hash,
        "output_hash": output_hash,
        "parent_hashes": parent_hashes,
    }))
}

/// The execution's `provenance_chain_hash`; `chain_hashes` in canonical order.
pub fn execution_chain_hash(
    dag_hash: &ContentHash,
    input_hash: &ContentHash,
    chain_hashes: &[ContentHash],
) -> ContentHash {
    value_hash(&json!({"dag_hash": dag_hash, "input_hash": input_hash, "nodes": chain_hashes}))
}

/// The `prev_record_hash` of an execution's first record.
pub fn genesis_record_hash(execution_id: &str) -> ContentHash {
    value_hash(&json!({ "execution_id": execution_id }))
}

/// When and where a node ran: protected by the record chain, never part of content hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub attempt_count: u32,
    /// RFC 3339 UTC with microseconds, exactly as stored.
    pub started_at: String,
    pub completed_at: String,
    pub duration_ms: u64,
    pub worker_id: String,
}

/// A record's `record_hash`.
pub fn record_hash(
    prev_record_hash: &ContentHash,
    execution_id: &str,
    node_id: &str,
    chain_hash: &ContentHash,
    timing: &Timing,
) -> ContentHash {
    value_hash(&json!({
        "prev_record_hash": prev_record_hash,
        "execution_id": execution_id,
        "node_id": node_id,
        "chain_hash": chain_hash,
        "attempt_count": timing.attempt_count,
        "started_at": timing.started_at,
        "completed_at": timing.completed_at,
        "duration_ms": timing.duration_ms,
        "worker_id": timing.worker_id,
    }))
}

/// One stored provenance record of a completed node, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub node_id: String,
    pub agent_id: String,
    pub input: Value,
    pub outputs: Value,
    pub input_hash: ContentHash,
    pub output_hash: ContentHash,
    pub parent_hashes: Vec<ContentHash>,
    pub chain_hash: ContentHash,
    #[serde(flatten)]
    pub timing: Timing,
    pub prev_record_hash: ContentHash,
    pub record_hash: ContentHash,
}

/// Builds the record of a node that just completed. `parents` maps each completed dependency's id
/// to its chain hash; `prev` is the previous record's hash (or the genesis hash).
#[allow(clippy::too_many_arguments)]
pub fn make_record(
    execution_id: &str,
    node_id: &str,
    agent_id: &str,
    input: Value,
    outputs: Value,
    parent_hashes: Vec<ContentHash>,
    timing: Timing,
    prev: ContentHash,
) -> Record {
    let input_hash = value_hash(&input);
    let output_hash = value_hash(&outputs);
    let chain_hash = node_chain_hash(node_id, agent_id, &input_hash, &output_hash, &parent_hashes);
    let record_hash = record_hash(&prev, execution_id, node_id, &chain_hash, &timing);
    Record {
        node_id: node_id.to_owned(),
        agent_id: agent_id.to_owned(),
        input,
        outputs,
        input_hash,
        output_hash,
        parent_hashes,
        chain_hash,
        timing,
        prev_record_hash: prev,
        record_hash,
    }
}

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub node_id: String,
    pub valid: bool,
    /// Why it is not valid, one sentence per problem.
    pub problems: Vec<String>,
    pub expected_parent_hashes: Vec<ContentHash>,
    pub actual_parent_hashes: Vec<ContentHash>,
}

/// The verdict on a whole execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub chain_valid: bool,
    /// The hash recomputed from the records (what the stored one must equal).
    pub recomputed_chain_hash: ContentHash,
    pub nodes: Vec<NodeVerdict>,
    /// Problems not tied to one node (record order, the execution hash).
    pub problems: Vec<String>,
}

/// Recomputes every hash from the stored inputs and outputs, checks that each node's parents are
/// exactly the chain hashes of its completed dependencies, that the record chain is unbroken, and
/// that the execution hash matches. `records` are in commit order; when a node has several
/// (re-run after a resume), the latest counts for its dependents and the execution hash.
pub fn verify(
    dag: &Dag,
    execution_id: &str,
    execution_input: &Value,
    records: &[Record],
    stored_chain_hash: Option<&ContentHash>,
) -> Verification {
    let mut problems = Vec::new();
    // Parents link to the *stored* chain hashes, so a forged node is named alone; the execution
    // hash is rebuilt from *recomputed* ones, so any forgery also breaks it.
    let mut stored_chain: BTreeMap<&str, ContentHash> = BTreeMap::new();
    let mut recomputed_chain: BTreeMap<&str, ContentHash> = BTreeMap::new();
    let mut verdicts = Vec::with_capacity(records.len());
    let mut prev = genesis_record_hash(execution_id);
    for record in records {
        let (verdict, chain) = check_record(dag, execution_id, record, &prev, &stored_chain);
        // A node re-run by a resume (its checkpoint failed verification) has a later record,
        // which supersedes the earlier one for its dependents and the execution hash.
        stored_chain.insert(&record.node_id, record.chain_hash.clone());
        recomputed_chain.insert(&record.node_id, chain);
        prev = record.record_hash.clone();
        verdicts.push(verdict);
    }
    let in_order: Vec<ContentHash> =
        dag.order().iter().filter_map(|&v: &NodeIndex| recomputed_chain.get(dag.node_id(v)).cloned()).collect();
    let recomputed = execution_chain_hash(dag.hash(), &value_hash(execution_input), &in_order);
    if let Some(stored) = stored_chain_hash
        && *stored != recomputed
    {
        problems.push("provenance_chain_hash does not match the hash recomputed from the records".to_owned());
    }
    let chain_valid = problems.is_empty() && verdicts.iter().all(|v| v.valid);
    Verification { chain_valid, recomputed_chain_hash: recomputed, nodes: verdicts, problems }
}

/// One record checked against the pinned DAG, the previous record and the stored chain hashes
/// of the nodes recorded before it; returns the verdict and the record's recomputed chain hash.
fn check_record(
    dag: &Dag,
    execution_id: &str,
    record: &Record,
    prev: &ContentHash,
    stored_chain: &BTreeMap<&str, ContentHash>,
) -> (NodeVerdict, ContentHash) {
    let mut issues = Vec::new();
    let input_hash = value_hash(&record.input);
    let output_hash = value_hash(&record.outputs);
    if input_hash != record.input_hash {
        issues.push("input_hash does not match the stored input".to_owned());
    }
    if output_hash != record.output_hash {
        issues.push("output_hash does not match the stored outputs".to_owned());
    }
    let expected_parents = match dag.index_of(&record.node_id) {
        Some(v) => dag.node(v).deps.iter().filter_map(|&d| stored_chain.get(dag.node_id(d)).cloned()).collect(),
        None => {
            issues.push("the node is not in the pinned DAG definition".to_owned());
            Vec::new()
        }
    };
    if expected_parents != record.parent_hashes {
        issues.push("parent_hashes differ from the chain hashes of its completed dependencies".to_owned());
    }
    if let Some(v) = dag.index_of(&record.node_id)
        && dag.node_spec(v).agent_id != record.agent_id
    {
        issues.push("agent_id differs from the pinned definition".to_owned());
    }
    let chain = node_chain_hash(&record.node_id, &record.agent_id, &input_hash, &output_hash, &record.parent_hashes);
    if chain != record.chain_hash {
        issues.push("chain_hash does not match its recomputed value".to_owned());
    }
    if record.prev_record_hash != *prev {
        issues.push("prev_record_hash does not link to the previous record".to_owned());
    }
    let recomputed_record = record_hash(prev, execution_id, &record.node_id, &record.chain_hash, &record.timing);
    if recomputed_record != record.record_hash {
        issues.push("record_hash does not match its recomputed value (timing or order altered)".to_owned());
    }
    let verdict = NodeVerdict {
        node_id: record.node_id.clone(),
        valid: issues.is_empty(),
        problems: issues,
        expected_parent_hashes: expected_parents,
        actual_parent_hashes: record.parent_hashes.clone(),
    };
    (verdict, chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{DagSpec, Limits, compile};

    fn diamond() -> Dag {
        let doc = json!({"name": "d", "nodes": {
            "a": {"agent_id": "x"}, "b": {"agent_id": "y", "depends_on": ["a"]},
            "c": {"agent_id": "y", "depends_on": ["a"]}, "d": {"agent_id": "z", "depends_on": ["b", "c"]}}});
        compile(DagSpec::from_value(doc).expect("doc"), &Limits::default()).expect("valid")
    }

    fn timing(n: u32) -> Timing {
        Timing {
            attempt_count: 1,
            started_at: format!("2026-11-28T00:00:0{n}.000000Z"),
            completed_at: format!("2026-11-28T00:00:0{n}.500000Z"),
            duration_ms: 500,
            worker_id: format!("w{n}"),
        }
    }

    /// Records for the diamond, committed in `commit_order`.
    fn run(dag: &Dag, commit_order: &[&str], exec: &str) -> Vec<Record> {
        let mut chain: BTreeMap<String, ContentHash> = BTreeMap::new();
        let mut prev = genesis_record_hash(exec);
        let mut out = Vec::new();
        for (n, id) in (0u32..).zip(commit_order) {
            let v = dag.index_of(id).expect("node");
            let parents: Vec<ContentHash> =
                dag.node(v).deps.iter().filter_map(|&d| chain.get(dag.node_id(d)).cloned()).collect();
            let r = make_record(
                exec,
                id,
                &dag.node_spec(v).agent_id,
                json!({"in": id}),
                json!({"out": id}),
                parents,
                timing(n),
                prev.clone(),
            );
            chain.insert((*id).to_owned(), r.chain_hash.clone());
            prev = r.record_hash.clone();
            out.push(r);
        }
        out
    }

    #[test]
    fn content_hash_ignores_time_worker_and_completion_order() {
        let dag = diamond();
        let input = json!({"year": 2025});
        let first = run(&dag, &["a", "b", "c", "d"], "e1");
        let second = run(&dag, &["a", "c", "b", "d"], "e2");
        let v1 = verify(&dag, "e1", &input, &first, None);
        let v2 = verify(&dag, "e2", &input, &second, None);
        assert!(v1.chain_valid && v2.chain_valid, "{v1:?}");
        assert_eq!(v1.recomputed_chain_hash, v2.recomputed_chain_hash);
        assert_ne!(first[1].record_hash, second[1].record_hash, "timing chain differs");
    }

    #[test]
    fn tampering_is_detected_and_located() {
        let dag = diamond();
        let input = json!({});
        let good = run(&dag, &["a", "b", "c", "d"], "e");
        let stored = verify(&dag, "e", &input, &good, None).recomputed_chain_hash;
        assert!(verify(&dag, "e", &input, &good, Some(&stored)).chain_valid);

        let mut outputs = good.clone();
        outputs[1].outputs = json!({"out": "forged"});
        let v = verify(&dag, "e", &input, &outputs, Some(&stored));
        assert!(!v.chain_valid);
        assert_eq!(v.nodes.iter().filter(|n| !n.valid).map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(!v.problems.is_empty(), "the execution hash no longer matches either");

        let mut timing_altered = good.clone();
        timing_altered[2].timing.duration_ms = 1;
        let v = verify(&dag, "e", &input, &timing_altered, Some(&stored));
        assert!(!v.chain_valid && !v.nodes[2].valid && v.problems.is_empty(), "content intact, timing chain broken");

        let mut parent = good.clone();
        parent[3].parent_hashes.pop();
        assert!(!verify(&dag, "e", &input, &parent, Some(&stored)).nodes[3].valid);

        let mut reordered = good;
        reordered.swap(1, 2);
        assert!(!verify(&dag, "e", &input, &reordered, Some(&stored)).chain_valid);
    }

    #[test]
    fn a_different_input_gives_a_different_execution_hash() {
        let dag = diamond();
        let records = run(&dag, &["a", "b", "c", "d"], "e");
        let h1 = verify(&dag, "e", &json!({"x": 1}), &records, None).recomputed_chain_hash;
        let h2 = verify(&dag, "e", &json!({"x": 2}), &records, None).recomputed_chain_hash;
        assert_ne!(h1, h2);
    }
}
