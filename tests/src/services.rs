//! The machine's services as a test meets them: a Redis server of a test's own ([`OwnRedis`]),
//! pausing the shared broker or database ([`Paused`], `kill -STOP`), their processes, and the
//! removal of what a test left on them (its database, exchanges and queues).

use engine::topology::Topology;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use std::time::{Duration, Instant};

use crate::processes::{KillOnDrop, free_port, pgrep};
use crate::{AMQP, BROKER_CALL, POSTGRES};

/// A `redis-server` of a test's own on a free port, so that the test can stop and restart it
/// without touching the machine's shared Redis. Killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<KillOnDrop>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the server (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli shutdown nosave`, as the runbook's outage drill does.
    pub fn shutdown(&mut self) {
        let status = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli is installed");
        let _ = status;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Processes stopped with `SIGSTOP` (a paused broker, database or cache: alive, holding its
/// sockets, answering nothing), continued with `SIGCONT` by [`Paused::resume`] or, should the test
/// fail first, when dropped, so that no failure leaves the machine's services frozen.
#[derive(Debug)]
pub struct Paused {
    what: String,
    pids: Vec<u32>,
}

impl Paused {
    /// Stops every process `find` lists, read now (a database's backends include the
    /// connections the test opened since it started), and again until no new one appears: a
    /// process forked between the listing and the signal is stopped too.
    pub fn pause(what: &str, find: &dyn Fn() -> Vec<u32>) -> Self {
        let mut paused = Self { what: what.to_owned(), pids: Vec::new() };
        for _ in 0..10 {
            let new: Vec<u32> = find().into_iter().filter(|p| !paused.pids.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            // Whatever has exited meanwhile need not be stopped; the rest must be.
            let _ = std::process::Command::new("kill").arg("-STOP").args(new.iter().map(u32::to_string)).status();
            paused.pids.extend(new);
        }
        assert!(!paused.pids.is_empty(), "no process of {what} to pause");
        paused
    }

    pub fn resume(mut self) {
        let pids = std::mem::take(&mut self.pids);
        let _ = std::process::Command::new("kill").arg("-CONT").args(pids.iter().map(u32::to_string)).status();
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.pids.is_empty() {
            eprintln!("continuing {} (the test ended while it was paused)", self.what);
            let _ = std::process::Command::new("kill").arg("-CONT").args(self.pids.iter().map(u32::to_string)).status();
        }
    }
}

/// The RabbitMQ node's Erlang VM.
pub fn broker_pids() -> Vec<u32> {
    pgrep(&["-f", "beam.smp.*rabbit"])
}

/// Every process of the PostgreSQL cluster: the postmaster and all its backends and workers.
pub fn postgres_pids() -> Vec<u32> {
    pgrep(&["-u", "postgres", "-x", "postgres"])
}

/// Deletes a stack's database (if it has one) and its exchanges and queues.
pub(crate) async fn remove_leftovers(database: &str, prefix: &str) {
    if !database.is_empty()
        && let Ok(admin) = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres")).await
    {
        let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
    delete_topology(prefix).await;
}

/// Best-effort removal of a test's exchanges and queues, bounded by [`BROKER_CALL`] in all
/// (a broker that does not answer leaves them to `scripts/sweep-test-leftovers.sh`).
pub async fn delete_topology(prefix: &str) {
    delete_topology_with_pools(prefix, &["default"]).await;
}

/// [`delete_topology`] for a test whose tasks went to other pools (their queues) too.
pub async fn delete_topology_with_pools(prefix: &str, pools: &[&str]) {
    let _ = tokio::time::timeout(BROKER_CALL, async {
        let Ok(conn) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await else {
            return;
        };
        let Ok(channel) = conn.create_channel().await else {
            return;
        };
        let t = Topology::new(prefix, 1);
        let queues = pools.iter().map(|p| t.task_queue(p)).chain([t.dead_queue(), t.results_queue()]);
        for queue in queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in [t.tasks_exchange(), t.dead_exchange(), t.results_exchange(), t.cancel_exchange()] {
            let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    })
    .await;
}
