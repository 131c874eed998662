//! `soak`: many executions through a running deployment with a bounded number in flight, while
//! sampling the resident memory of the given processes (`/proc/PID/status`) and the coordinator's
//! queue depth and outbox backlog (its `/metrics`). Memory should plateau and queues stay bounded.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{Client, LoadError};

/// One sample of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub elapsed_s: f64,
    pub completed: usize,
    /// Resident memory of each watched process, KiB (0 when it cannot be read).
    pub rss_kib: Vec<u64>,
    pub queue_depth: f64,
    pub outbox_backlog: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SoakResult {
    pub executions: usize,
    pub failures: usize,
    pub seconds: f64,
    pub samples: Vec<Sample>,
}

impl SoakResult {
    pub fn to_json(&self) -> Value {
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                json!({"elapsed_s": s.elapsed_s, "completed": s.completed, "rss_kib": s.rss_kib,
                       "queue_depth": s.queue_depth, "outbox_backlog": s.outbox_backlog})
            })
            .collect();
        json!({"scenario": "soak", "executions": self.executions, "failures": self.failures,
               "seconds": self.seconds, "samples": samples})
    }
}

/// A small DAG: a fan-out of three no-op nodes and a join.
pub fn dag(dag_id: &str) -> Value {
    json!({"dag_id": dag_id, "name": "loadtest soak", "nodes": {
        "a": {"agent_id": "noop"},
        "b": {"agent_id": "noop", "depends_on": ["a"]}, "c": {"agent_id": "noop", "depends_on": ["a"]},
        "d": {"agent_id": "noop", "depends_on": ["a"]}, "join": {"agent_id": "noop", "depends_on": ["b", "c", "d"]}}})
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The sum of a metric's samples in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn run(
    client: &Client,
    metrics_url: &str,
    executions: usize,
    in_flight: usize,
    pids: &[u32],
    every: Duration,
) -> Result<SoakResult, LoadError> {
    let dag_id = "loadtest-soak";
    client.ensure_dag(&dag(dag_id)).await?;
    let started = Instant::now();
    let (mut running, mut submitted, mut completed, mut failures) = (JoinSet::new(), 0, 0, 0);
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let http = reqwest::Client::new();
    while completed < executions {
        while submitted < executions && running.len() < in_flight {
            let client = client.clone();
            running.spawn(async move {
                let id = client.execute(dag_id, &json!({})).await?;
                client.wait_finished_polling(&id, Duration::from_secs(600), Duration::from_millis(500)).await
            });
            submitted += 1;
        }
        if let Some(done) = running.join_next().await {
            let execution = done.map_err(|e| LoadError::Api(e.to_string()))??;
            completed += 1;
            failures += usize::from(execution["status"] != "completed");
        }
        if Instant::now() >= next_sample || completed == executions {
            let text = http.get(metrics_url).send().await?.text().await?;
            samples.push(Sample {
                elapsed_s: started.elapsed().as_secs_f64(),
                completed,
                rss_kib: pids.iter().map(|&p| rss_kib(p)).collect(),
                queue_depth: metric_sum(&text, "gl_orchestrator_queue_depth"),
                outbox_backlog: metric_sum(&text, "gl_orchestrator_outbox_backlog"),
            });
            next_sample = Instant::now() + every;
        }
    }
    Ok(SoakResult { executions, failures, seconds: started.elapsed().as_secs_f64(), samples })
}

/// An SVG line chart of each process's resident memory against executions completed.
pub fn memory_svg(result: &SoakResult, names: &[&str]) -> String {
    let (w, h, pad) = (640.0, 320.0, 40.0);
    let max_x = result.executions.max(1) as f64;
    let max_y = result.samples.iter().flat_map(|s| s.rss_kib.iter()).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{pad}\" y=\"16\">Resident memory (MiB, max {:.0}) vs executions completed ({max_x:.0})</text>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        max_y / 1024.0,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for (i, name) in names.iter().enumerate() {
        let points: Vec<String> = result
            .samples
            .iter()
            .map(|s| {
                let x = pad + (s.completed as f64 / max_x) * (w - 2.0 * pad);
                let y = h - pad - (s.rss_kib.get(i).copied().unwrap_or(0) as f64 / max_y) * (h - 2.0 * pad);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let colour = colours[i % colours.len()];
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
            points.join(" "),
            w - pad - 120.0,
            pad + 14.0 * (i as f64 + 1.0)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels_and_only_for_the_name_given() {
        let text = "# HELP x\ngl_orchestrator_queue_depth{queue=\"a\"} 3\ngl_orchestrator_queue_depth{queue=\"b\"} 4\n\
                    gl_orchestrator_queue_depth_other 100\ngl_orchestrator_outbox_backlog 2\n";
        assert_eq!(metric_sum(text, "gl_orchestrator_queue_depth"), 7.0);
        assert_eq!(metric_sum(text, "gl_orchestrator_outbox_backlog"), 2.0);
    }

    #[test]
    fn our_own_memory_is_readable() {
        assert!(rss_kib(std::process::id()) > 0);
    }
}
