//! The pause drill: a dependency paused under load, longer than every deadline, with SIGTERM
//! sent during the pause ([`pause_drill`]).

use serde_json::{Value, json};
use std::time::{Duration, Instant};

use crate::eventually;
use crate::fixtures::mixed_workload;
use crate::processes::{KillOnDrop, terminate_within};
use crate::services::Paused;
use crate::stack::{Stack, StackOptions};

/// A dependency paused under load (`SIGSTOP`: alive, holding its sockets, answering nothing),
/// longer than every deadline, with a coordinator process and a worker process sent SIGTERM
/// during the pause. See [`pause_drill`].
pub struct PauseDrill {
    /// What is paused, for messages ("RabbitMQ").
    pub what: &'static str,
    /// Lists its processes; called when the pause begins.
    pub pids: Box<dyn Fn() -> Vec<u32>>,
    /// Settings of every process beyond the drill's own short deadlines (e.g. `REDIS_URL`).
    pub settings: Vec<(&'static str, String)>,
    /// Whether `/ready` must fail while paused (and name a stalled component), or stay ready.
    pub unready_while_paused: bool,
    /// `env!("CARGO_BIN_EXE_gl-coordinator")` and `env!("CARGO_BIN_EXE_gl-worker")`.
    pub coordinator_exe: &'static str,
    pub worker_exe: &'static str,
}

impl std::fmt::Debug for PauseDrill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseDrill").field("what", &self.what).field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// What a drill measured.
#[derive(Debug)]
pub struct DrillFigures {
    pub coordinator_exit: Duration,
    pub worker_exit: Duration,
    pub unready_after: Option<Duration>,
    pub ready_again_after: Duration,
    pub executions: usize,
}

/// The drill's deadlines: short, so that a pause of [`DRILL_PAUSE`] outlasts all of them.
pub const DRILL_GRACE_SECONDS: u64 = 5;

pub const DRILL_PAUSE: Duration = Duration::from_secs(20);

/// Runs a [`PauseDrill`]: a mixed workload, the pause, `/ready` (and the stalled-component gauge)
/// checked while paused, SIGTERM to a coordinator process and a worker process (each must exit
/// within its grace period), an execution submitted during the pause
/// (accepted, or refused with a problem+json 503, never a hang or a 500), then the resume: ready
/// again, every execution completed, and the auditor satisfied.
pub async fn pause_drill(drill: PauseDrill) -> DrillFigures {
    let grace = Duration::from_secs(DRILL_GRACE_SECONDS);
    let stack =
        Stack::start(StackOptions { settings: drill_settings(drill.settings), ..StackOptions::default() }).await;
    let (coordinator, process_api) = stack.spawn_coordinator(drill.coordinator_exe);
    let mut coordinator = KillOnDrop(coordinator);
    let mut worker = KillOnDrop(stack.spawn_worker(drill.worker_exe, "drill-worker"));
    eventually(Duration::from_secs(60), "the coordinator process answers", || async {
        stack.http.get(format!("{process_api}/health")).send().await.is_ok()
    })
    .await;
    let mut ids = mixed_workload(&stack, 10).await;
    stack.wait_for(&ids[0], WITHIN, |e| e["completed_nodes"].as_i64() >= Some(1)).await;

    let paused = Paused::pause(drill.what, drill.pids.as_ref());
    let paused_at = Instant::now();
    ids.extend(submit_during_pause(&stack, drill.what).await);
    let unready_after = if drill.unready_while_paused {
        Some(unready_while_paused(&stack, drill.what, paused_at).await)
    } else {
        still_serving_while_paused(&stack, drill.what, paused_at).await;
        None
    };

    // The promise is exact: the process is gone within its grace period (Kubernetes kills it
    // at the end of `terminationGracePeriodSeconds`, losing whatever it had not handed back).
    let limit = grace;
    let coordinator_exit = terminate_within(&mut coordinator, limit)
        .unwrap_or_else(|| panic!("the coordinator ignored SIGTERM for {limit:?} while {} was paused", drill.what));
    let worker_exit = terminate_within(&mut worker, limit)
        .unwrap_or_else(|| panic!("the worker ignored SIGTERM for {limit:?} while {} was paused", drill.what));
    // The fault itself lasts a fixed time: long enough that every deadline has fired.
    tokio::time::sleep_until((paused_at + DRILL_PAUSE).into()).await;
    paused.resume();
    let resumed = Instant::now();
    eventually(WITHIN, "/ready succeeds again after the resume", || async {
        matches!(stack.try_call(reqwest::Method::GET, "/ready").await, Ok((200, _)))
    })
    .await;
    let ready_again_after = resumed.elapsed();
    for id in &ids {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;
    stack.shutdown().await;
    let figures =
        DrillFigures { coordinator_exit, worker_exit, unready_after, ready_again_after, executions: ids.len() };
    eprintln!("{} paused for {DRILL_PAUSE:?}: {figures:?}", drill.what);
    figures
}

/// How long the drill waits for anything it expects.
const WITHIN: Duration = Duration::from_secs(180);

/// The drill's short deadlines, then the drill's own settings.
fn drill_settings(extra: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    let mut settings: Vec<(&'static str, String)> = vec![
        ("SHUTDOWN_GRACE_SECONDS", DRILL_GRACE_SECONDS.to_string()),
        ("STALL_SECONDS", "8".into()),
        ("AMQP_TIMEOUT_SECONDS", "2".into()),
        ("DB_STATEMENT_TIMEOUT_SECONDS", "2".into()),
        ("DB_CALL_TIMEOUT_SECONDS", "3".into()),
        ("REDIS_TIMEOUT_MS", "300".into()),
        ("HTTP_REQUEST_TIMEOUT_SECONDS", "10".into()),
    ];
    settings.extend(extra);
    settings
}

/// An execution submitted during the pause is accepted (its id returned) or refused with a
/// problem+json 503; never a hang or a 500.
async fn submit_during_pause(stack: &Stack, what: &str) -> Option<String> {
    let submitted = stack
        .http
        .post(format!("{}/dags/mixed/execute", stack.base()))
        .json(&json!({"input_data": {"during": "pause"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("a submission while {what} is paused got no answer: {e}"));
    match submitted.status().as_u16() {
        202 => Some(submitted.json::<Value>().await.expect("JSON")["execution_id"].as_str().expect("id").into()),
        503 => {
            let kind = submitted.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
            assert_eq!(kind.as_deref(), Some("application/problem+json"), "a refusal is a problem document");
            None
        }
        other => panic!("a submission while {what} is paused answered {other}"),
    }
}

/// `/ready` fails and names the stalled component, and so does a metric; returns how long after
/// the pause began `/ready` failed.
async fn unready_while_paused(stack: &Stack, what: &str, paused_at: Instant) -> Duration {
    let expected = format!("/ready fails and names a stalled component while {what} is paused");
    eventually(WITHIN, &expected, || async {
        match stack.try_call(reqwest::Method::GET, "/ready").await {
            Ok((503, body)) => body["detail"].as_str().is_some_and(|d| !d.contains("stalled: none")),
            _ => false,
        }
    })
    .await;
    let unready = paused_at.elapsed();
    let text = stack.prometheus().await.expect("/metrics answers while paused");
    let stalled: Vec<&str> =
        text.lines().filter(|l| l.starts_with("gl_orchestrator_component_stalled{") && l.ends_with(" 1")).collect();
    assert!(!stalled.is_empty(), "a metric names the stalled component:\n{text}");
    eprintln!("while {what} is paused: {stalled:?}");
    unready
}

/// The paused dependency is one the service can do without: executions go on completing and
/// `/ready` stays 200.
async fn still_serving_while_paused(stack: &Stack, what: &str, paused_at: Instant) {
    let completed = || async {
        let db = stack.database().await;
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = 'completed'")
            .fetch_one(&db)
            .await
            .unwrap_or(0);
        db.close().await;
        done
    };
    let at_pause = completed().await;
    eventually(WITHIN, "executions go on completing while paused", || async { completed().await > at_pause }).await;
    let (status, body) = stack.try_call(reqwest::Method::GET, "/ready").await.expect("/ready answers");
    assert_eq!(status, 200, "still ready while {what} is paused: {body}");
    assert!(paused_at.elapsed() < DRILL_PAUSE, "checked while still paused");
}
