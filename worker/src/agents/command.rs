//! The `command` agent: a program run with the call as JSON on stdin, its stdout the outputs.
//! The child's environment is cleared, it runs in a process group of its own that dies with the
//! call, and what it prints is read with a cap (see the parent module's doc).

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{AgentError, COMMAND_ENV, Call, STDERR_CAP, clip};

pub(super) async fn run(
    program: &str,
    args: &[String],
    pass_env: &[String],
    call: &Call,
    output_cap: usize,
) -> Result<Value, AgentError> {
    let env = COMMAND_ENV.iter().copied().chain(pass_env.iter().map(String::as_str));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.filter_map(|name| std::env::var_os(name).map(|value| (name, value))))
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::new("CommandError", format!("cannot start {program}: {e}"), false))?;
    // Whatever way this call ends (done, failed, or dropped at a timeout or cancel), the
    // child's whole group goes with it, grandchildren included.
    let _group = child.id().map(ProcessGroup);
    let payload = serde_json::to_vec(call).unwrap_or_default();
    // Written while stdout and stderr are read: a child that answers before it has read all its
    // input (`cat` of a large input) would otherwise fill its stdout pipe and wait on us for ever.
    let write = write_stdin(child.stdin.take(), payload);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let io = tokio::try_join!(write, read_capped(stdout, output_cap), read_capped(stderr, STDERR_CAP));
    let ((), (stdout, stdout_len), (stderr, _)) =
        io.map_err(|e| AgentError::new("CommandError", e.to_string(), true))?;
    let status = child.wait().await.map_err(|e| AgentError::new("CommandError", e.to_string(), true))?;
    if stdout_len > output_cap {
        let message = format!(
            "{program} printed {stdout_len} bytes; the limit is {output_cap} (GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES)"
        );
        return Err(AgentError::new("output_too_large", message, false));
    }
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(AgentError::new(
            "CommandError",
            format!("{program} exited with {status}: {}", clip(&stderr)),
            true,
        ));
    }
    serde_json::from_slice(&stdout)
        .map_err(|e| AgentError::new("invalid_output", format!("{program} did not print a JSON object: {e}"), false))
}

/// Writes the call to the child's stdin and closes it. A child that exits without reading it
/// all (it needs no input) is not a failure: its exit status and output decide.
async fn write_stdin(stdin: Option<tokio::process::ChildStdin>, payload: Vec<u8>) -> std::io::Result<()> {
    let Some(mut stdin) = stdin else { return Ok(()) };
    match stdin.write_all(&payload).await {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Up to `cap` bytes of a child's stream, and how many it wrote in all: the rest is read and
/// dropped, so a child that writes more is never blocked on a full pipe.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> std::io::Result<(Vec<u8>, usize)> {
    let Some(mut stream) = stream else { return Ok((Vec::new(), 0)) };
    let mut kept = Vec::new();
    (&mut stream).take(cap as u64).read_to_end(&mut kept).await?;
    let dropped = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
    let written = kept.len().saturating_add(usize::try_from(dropped).unwrap_or(usize::MAX));
    Ok((kept, written))
}

/// A `command` child's process group (its id is the child's pid), killed when dropped. Through
/// `kill(1)`: the workspace forbids `unsafe`, and one short-lived process per attempt is cheap.
#[derive(Debug)]
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
