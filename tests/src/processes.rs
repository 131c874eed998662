//! Processes outside the test: a Redis server of its own ([`OwnRedis`]), pausing services
//! ([`Paused`], `kill -STOP`), signals, `pgrep`, bounded termination and [`KillOnDrop`].

use std::time::{Duration, Instant};

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

/// Sends `SIGNAL` (a name: `STOP`, `CONT`, `TERM`) to each process.
pub fn signal(pids: &[u32], name: &str) {
    let mut kill = std::process::Command::new("kill");
    kill.arg(format!("-{name}")).args(pids.iter().map(u32::to_string));
    let status = kill.status().expect("kill runs");
    assert!(status.success(), "kill -{name} {pids:?} failed");
}

/// Processes matching `pgrep ARGS`.
pub fn pgrep(args: &[&str]) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(args).output().expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The RabbitMQ node's Erlang VM.
pub fn broker_pids() -> Vec<u32> {
    pgrep(&["-f", "beam.smp.*rabbit"])
}

/// Every process of the PostgreSQL cluster: the postmaster and all its backends and workers.
pub fn postgres_pids() -> Vec<u32> {
    pgrep(&["-u", "postgres", "-x", "postgres"])
}

/// Sends SIGTERM and waits for the exit: how long the process took, or `None` if it was still
/// running after `within` (then it is killed, so nothing outlives the test).
pub fn terminate_within(child: &mut std::process::Child, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    signal(&[child.id()], "TERM");
    while started.elapsed() < within {
        if child.try_wait().expect("try_wait").is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process that is killed when dropped, so that a failing assertion (a panic) never leaves
/// a coordinator or worker running after its test; `std::process::Child` does not do this itself.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
