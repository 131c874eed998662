//! Samplers: what a test measures while the system runs, the peak of running executions
//! ([`RunningPeak`]) and the figures of a dependency paused under load ([`pause_drill`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

mod pause_drill;

pub use pause_drill::{DRILL_GRACE_SECONDS, DRILL_PAUSE, DrillFigures, PauseDrill, pause_drill};

/// Samples how many executions are running, every 5 ms, until stopped.
#[derive(Debug)]
pub struct RunningPeak {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl RunningPeak {
    pub fn start(db: sqlx::PgPool) -> Self {
        let (done, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
        let (stop, most) = (done.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let running: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = 'running'")
                    .fetch_one(&db)
                    .await
                    .unwrap_or(0);
                most.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { done, peak, task }
    }

    /// Stops sampling; the most executions seen running at once.
    pub async fn stop(self) -> i64 {
        self.done.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler");
        self.peak.load(Ordering::Relaxed)
    }
}
