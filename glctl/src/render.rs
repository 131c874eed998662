//! What glctl shows: the live progress of an execution, its timeline (a text Gantt chart), a DAG
//! as a terminal tree, and the local provenance verification report.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use engine::canonical::ContentHash;
use engine::dag::{Dag, compile_stored};
use engine::provenance::{self, Record};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::{Client, Failure};

/// Width of the timeline's bars, in characters.
const GANTT_WIDTH: usize = 40;

/// Polls the execution's trace until it ends, drawing nodes done/total, running nodes, retries
/// and elapsed time on stderr (hidden when stderr is not a terminal). Returns the final
/// execution and its trace.
pub async fn follow(client: &Client, id: &str, within: Duration) -> Result<(Value, Value), Failure> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + within;
    loop {
        // The trace carries the execution's status too: one request per poll.
        let trace = client.get(&format!("/executions/{id}/trace")).await?;
        let nodes = trace["nodes"].as_array().cloned().unwrap_or_default();
        let settled = nodes.iter().filter(|n| is_settled(n)).count();
        let running: Vec<&str> =
            nodes.iter().filter(|n| n["status"] == "running").filter_map(|n| n["node_id"].as_str()).collect();
        let retries: u64 = nodes.iter().map(|n| n["attempt_count"].as_u64().unwrap_or(0).saturating_sub(1)).sum();
        bar.set_length(nodes.len() as u64);
        bar.set_position(settled as u64);
        bar.set_message(format!("| running: {} | retries: {retries}", running.join(", ")));
        if matches!(trace["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            bar.finish_and_clear();
            let execution = client.get(&format!("/executions/{id}")).await?["execution"].clone();
            return Ok((execution, trace));
        }
        if Instant::now() >= deadline {
            bar.abandon();
            return Err(Failure::negative(format!("execution {id} did not end within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_settled(node: &Value) -> bool {
    matches!(node["status"].as_str(), Some("completed" | "failed" | "skipped" | "cancelled"))
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

/// The end-of-run summary: status, per-node timeline, the final outputs and the provenance hash.
pub fn summary(execution: &Value, trace: &Value) -> String {
    let nodes = trace["nodes"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "status     {}", execution["status"].as_str().unwrap_or("?"));
    out.push_str(&gantt(&nodes));
    let _ = writeln!(out, "outputs");
    for node in nodes.iter().filter(|n| n["status"] == "completed") {
        let _ = writeln!(out, "  {}: {}", node["node_id"].as_str().unwrap_or("?"), node["outputs"]);
    }
    if let Some(error) = execution["error"].as_str() {
        let _ = writeln!(out, "error      {error}");
    }
    let hash = execution["provenance_chain_hash"].as_str().unwrap_or("(none: the execution did not complete)");
    let _ = writeln!(out, "provenance_chain_hash {hash}");
    out
}

/// One bar per node that ran, placed on a common time axis.
pub fn gantt(nodes: &[Value]) -> String {
    let spans: Vec<(&str, &str, DateTime<Utc>, DateTime<Utc>)> = nodes
        .iter()
        .filter_map(|n| {
            let (start, end) = (time(&n["started_at"])?, time(&n["completed_at"])?);
            Some((n["node_id"].as_str()?, n["status"].as_str().unwrap_or("?"), start, end))
        })
        .collect();
    let (Some(t0), Some(t1)) = (spans.iter().map(|s| s.2).min(), spans.iter().map(|s| s.3).max()) else {
        return "timeline   (no node ran)\n".to_owned();
    };
    let total = (t1 - t0).num_milliseconds().max(1) as f64;
    let name_width = spans.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let column = |t: DateTime<Utc>| (((t - t0).num_milliseconds() as f64 / total) * GANTT_WIDTH as f64) as usize;
    let mut out = format!("timeline   {} ms\n", (t1 - t0).num_milliseconds());
    for (id, status, start, end) in spans {
        // Every bar is at least one character wide, also a node that took no time at the very end.
        let from = column(start).min(GANTT_WIDTH - 1);
        let to = column(end).max(from + 1).min(GANTT_WIDTH);
        let bar = format!("{}{}{}", " ".repeat(from), "#".repeat(to - from), " ".repeat(GANTT_WIDTH - to));
        let ms = (end - start).num_milliseconds();
        let _ = writeln!(out, "  {id:<name_width$} |{bar}| {ms} ms {status}");
    }
    out
}

/// The DAG level by level, each node with the nodes it waits for.
pub fn tree(dag: &Dag) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({} nodes)", dag.id(), dag.len());
    for (level, nodes) in dag.levels().iter().enumerate() {
        let _ = writeln!(out, "level {level}");
        for (i, &v) in nodes.iter().enumerate() {
            let branch = if i + 1 == nodes.len() { "└─" } else { "├─" };
            let deps: Vec<&str> = dag.node(v).deps.iter().map(|&d| dag.node_id(d)).collect();
            let after = if deps.is_empty() { String::new() } else { format!("  ← {}", deps.join(", ")) };
            let _ = writeln!(out, "  {branch} {} [{}]{after}", dag.node_id(v), dag.node_spec(v).agent_id);
        }
    }
    out
}

/// The outcome of [`verify_locally`].
#[derive(Debug)]
pub struct Verdict {
    pub valid: bool,
    pub report: String,
}

/// Verifies an execution's provenance from the API's answers alone (`GET .../provenance` and
/// `GET /executions/{id}`'s `execution`). Err: the answers lack what verification needs.
pub fn verify_locally(prov: &Value, execution: &Value) -> Result<Verdict, String> {
    let id = prov["execution_id"].as_str().ok_or("the provenance answer has no execution_id")?;
    let dag_hash = prov["dag_hash"].as_str().ok_or("the provenance answer has no dag_hash")?;
    let mut report = format!("execution {id}\ndag_hash  {dag_hash}\n");
    let dag = match compile_stored(prov["definition"].clone(), Some(dag_hash)) {
        Ok(dag) => dag,
        Err(e) => {
            let _ = writeln!(report, "BROKEN the pinned definition: {e}");
            return Ok(Verdict { valid: false, report });
        }
    };
    let records: Vec<Record> = serde_json::from_value(prov["nodes"].clone())
        .map_err(|e| format!("the provenance records are not well-formed: {e}"))?;
    let stored = execution["provenance_chain_hash"].as_str().map(ContentHash::parse).transpose();
    let stored = stored.map_err(|_| "provenance_chain_hash is not a SHA-256 hex digest")?;
    let verification = provenance::verify(&dag, id, &execution["input_data"], &records, stored.as_ref());
    for node in &verification.nodes {
        match node.valid {
            true => writeln!(report, "ok     {}", node.node_id),
            false => writeln!(report, "BROKEN {}: {}", node.node_id, node.problems.join("; ")),
        }
        .map_err(|e| e.to_string())?;
    }
    for problem in &verification.problems {
        let _ = writeln!(report, "BROKEN {problem}");
    }
    match verification.nodes.iter().find(|n| !n.valid) {
        Some(first) => {
            let _ = writeln!(report, "the chain breaks at node {}", first.node_id);
        }
        None if verification.chain_valid => {
            let _ = writeln!(report, "verified: provenance_chain_hash {}", verification.recomputed_chain_hash);
        }
        None => {
            let _ = writeln!(report, "the execution hash does not match its records");
        }
    }
    Ok(Verdict { valid: verification.chain_valid, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_timeline_places_bars_on_one_axis() {
        let nodes = vec![
            json!({"node_id": "a", "status": "completed",
                   "started_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:01Z"}),
            json!({"node_id": "bb", "status": "completed",
                   "started_at": "2026-01-01T00:00:01Z", "completed_at": "2026-01-01T00:00:02Z"}),
            json!({"node_id": "never", "status": "skipped", "started_at": null, "completed_at": null}),
            json!({"node_id": "z", "status": "completed",
                   "started_at": "2026-01-01T00:00:02Z", "completed_at": "2026-01-01T00:00:02Z"}),
        ];
        let text = gantt(&nodes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "timeline   2000 ms");
        assert_eq!(lines[1], format!("  a  |{}{}| 1000 ms completed", "#".repeat(20), " ".repeat(20)));
        assert_eq!(lines[2], format!("  bb |{}{}| 1000 ms completed", " ".repeat(20), "#".repeat(20)));
        assert_eq!(lines[3], format!("  z  |{}#| 0 ms completed", " ".repeat(39)), "an instant at the end still shows");
        assert_eq!(lines.len(), 4, "a node that never ran has no bar");
    }
}
