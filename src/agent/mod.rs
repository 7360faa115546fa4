//! `beephost agent`: runs inside a sandbox and supervises Python workers.
//!
//! Owns the agent's command-line arguments ([`AgentArgs`]) and resolved settings
//! ([`AgentConfig`]), and its entry points: [`run`] serves frames on stdin/stdout, [`serve`] on
//! any byte stream. The pieces: [`dispatch`] reads requests and routes them, [`session`] runs one
//! worker's calls, [`worker`] starts worker processes, [`capture`] cuts their output per call,
//! [`files`] does workspace file operations, and [`client`] is the host's side of the protocol.

pub mod capture;
pub mod client;
mod dispatch;
pub mod files;
pub mod session;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use client::{AgentClient, CallOpts, ClientError};

use crate::protocol::DEFAULT_MAX_FRAME;

/// Frames on their way to the agent's output.
pub type Outbox = mpsc::UnboundedSender<Bytes>;

/// Options of `beephost agent`. Every one has a default that suits a sandbox container.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Python that runs the workers (a venv's `bin/python` uses that venv's packages).
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Directory the workers start in and that `files.*` operations are confined to.
    #[arg(long, default_value = "/workspace")]
    pub workspace: PathBuf,
    /// Most sessions (and one-call workers) alive at once.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
    /// Seconds a session may stay idle before it is closed; 0 keeps sessions forever.
    #[arg(long, default_value_t = 1800.0)]
    pub idle_ttl: f64,
    /// Bytes of stdout (and, separately, of stderr) kept per call.
    #[arg(long, default_value_t = 1 << 20)]
    pub output_cap: usize,
    /// Largest frame accepted or sent, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Largest file `files.put` writes or `files.get` reads, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_file: u64,
    /// Seconds between interrupting a call that timed out and killing its worker.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Timeout in seconds for calls that do not give one; 0 means none.
    #[arg(long, default_value_t = 0.0)]
    pub default_timeout: f64,
    /// Workers kept started and idle, so a new session or a one-call exec need not wait.
    #[arg(long, default_value_t = 1)]
    pub warm_workers: usize,
    /// Calls that may wait behind the running one in a session.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Seconds a worker may take to start.
    #[arg(long, default_value_t = 60.0)]
    pub start_timeout: f64,
}

impl Default for AgentArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: AgentArgs,
        }
        Wrapper::parse_from(["agent"]).args
    }
}

/// Settings of a running agent, checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub python: PathBuf,
    pub workspace: PathBuf,
    pub max_sessions: usize,
    pub idle_ttl: Option<Duration>,
    pub output_cap: usize,
    pub max_frame: usize,
    pub max_file: u64,
    pub grace: Duration,
    pub default_timeout: Option<Duration>,
    pub warm_workers: usize,
    pub max_queue: usize,
    pub start_timeout: Duration,
}

/// Errors that stop the agent (everything else becomes an error reply).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid option --{name}: {message}")]
    Config { name: &'static str, message: String },
    #[error("workspace `{path}` is not usable: {source}")]
    Workspace {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start python `{python}`: {source}")]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    #[error("cannot set up stdin/stdout or the runtime: {0}")]
    Stdio(std::io::Error),
}

fn secs(name: &'static str, v: f64, zero_is_none: bool) -> Result<Option<Duration>, AgentError> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(AgentError::Config {
            name,
            message: format!("`{v}` is not a number of seconds between 0 and 1e9"),
        });
    }
    if v == 0.0 && zero_is_none {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(v)))
}

impl AgentArgs {
    pub fn into_config(self) -> Result<AgentConfig, AgentError> {
        if self.max_sessions == 0 {
            return Err(AgentError::Config {
                name: "max-sessions",
                message: "must be at least 1".into(),
            });
        }
        if self.max_frame < 1024 || self.max_frame > u32::MAX as usize {
            return Err(AgentError::Config {
                name: "max-frame",
                message: format!("`{}` is not between 1024 and {}", self.max_frame, u32::MAX),
            });
        }
        if self.max_queue == 0 {
            return Err(AgentError::Config {
                name: "max-queue",
                message: "must be at least 1".into(),
            });
        }
        Ok(AgentConfig {
            python: self.python,
            workspace: self.workspace,
            max_sessions: self.max_sessions,
            idle_ttl: secs("idle-ttl", self.idle_ttl, true)?,
            output_cap: self.output_cap,
            max_frame: self.max_frame,
            max_file: self.max_file,
            grace: secs("grace", self.grace, false)?.unwrap_or_default(),
            default_timeout: secs("default-timeout", self.default_timeout, true)?,
            warm_workers: self.warm_workers,
            max_queue: self.max_queue,
            start_timeout: secs("start-timeout", self.start_timeout, false)?.unwrap_or_default(),
        })
    }
}

/// Runs the agent on this process's stdin and stdout until stdin closes.
///
/// The agent gets a thread with a single-threaded runtime of its own, whatever runtime the
/// caller has: its tasks hand every frame to each other, and on one thread that is a queue
/// push rather than a cross-thread wakeup (it is most of the round-trip latency).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("beephost-agent".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(AgentError::Stdio)
                .and_then(|rt| {
                    rt.block_on(async {
                        let (input, output) = stdio().map_err(AgentError::Stdio)?;
                        serve(cfg, input, output).await
                    })
                });
            let _ = done_tx.send(result);
        })?;
    done_rx
        .await
        .map_err(|_| anyhow::anyhow!("the agent thread panicked"))??;
    Ok(())
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// stdin/stdout as non-blocking pipes when they are pipes (as under `docker attach` without a
/// TTY), which avoids a thread hop per read; tokio's blocking stdio otherwise.
fn stdio() -> std::io::Result<(BoxRead, BoxWrite)> {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input: BoxRead = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => match pipe::Receiver::from_owned_fd(fd) {
            Ok(r) => Box::new(r),
            Err(_) => Box::new(tokio::io::stdin()),
        },
        Err(e) => return Err(e),
    };
    let output: BoxWrite = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => match pipe::Sender::from_owned_fd(fd) {
            Ok(w) => Box::new(w),
            Err(_) => Box::new(tokio::io::stdout()),
        },
        Err(e) => return Err(e),
    };
    Ok((input, output))
}

/// Serves the protocol on `input`/`output` until `input` ends; then closes every session and
/// waits for its worker to be gone.
pub async fn serve<R, W>(cfg: AgentConfig, input: R, output: W) -> Result<(), AgentError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    std::fs::create_dir_all(&cfg.workspace).map_err(|source| AgentError::Workspace {
        path: cfg.workspace.display().to_string(),
        source,
    })?;
    let cfg = Arc::new(cfg);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(dispatch::write_frames(out_rx, output));
    dispatch::Dispatcher::new(cfg, out_tx).run(input).await;
    let _ = writer.await;
    Ok(())
}
