//! Processes outside the test: signals, `pgrep`, bounded termination, [`KillOnDrop`] and free
//! ports.

use std::time::{Duration, Instant};

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
