//! Fault matrix: the RabbitMQ node paused (`kill -STOP`) under load for longer than every
//! deadline, then continued. Nothing may wait for ever on it: `/ready` fails and names the
//! stalled component, SIGTERM ends a coordinator and a worker within their grace period, and
//! after the resume every execution completes with nothing lost or duplicated.
//! One test in its own binary: it freezes the broker every other test uses.

use tests::{PauseDrill, pause_drill};

#[tokio::test]
async fn rabbitmq_paused_mid_run_loses_nothing_and_hangs_nothing() {
    let figures = pause_drill(PauseDrill {
        what: "RabbitMQ",
        pids: Box::new(tests::broker_pids),
        settings: Vec::new(),
        unready_while_paused: true,
        coordinator_exe: env!("CARGO_BIN_EXE_gl-coordinator"),
        worker_exe: env!("CARGO_BIN_EXE_gl-worker"),
    })
    .await;
    assert!(figures.unready_after.is_some());
}
