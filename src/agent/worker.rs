//! Starting and signalling one Python worker process.
//!
//! A worker is `python -c <embedded source> 3 4` in its own process group, with the
//! request pipe on fd 3, the reply pipe on fd 4, stdin from /dev/null and stdout/stderr on
//! pipes the agent reads. Every pipe end the agent keeps is close-on-exec, so no other child
//! inherits it and end-of-file means what it says. Nothing is written to disk, so the agent
//! works on a read-only root filesystem.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio_util::codec::FramedRead;

use super::AgentError;
use crate::protocol::FrameCodec;

/// The worker's source, embedded so the binary needs no files beside it.
pub const WORKER_SOURCE: &str = include_str!("../../python/beephost_worker.py");

/// fds the worker finds its protocol pipes on.
const REQUEST_FD: RawFd = 3;
const REPLY_FD: RawFd = 4;

/// A started worker and the agent's ends of its pipes.
pub struct WorkerProcess {
    pub child: Child,
    pub pid: u32,
    pub requests: pipe::Sender,
    pub replies: FramedRead<pipe::Receiver, FrameCodec>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl WorkerProcess {
    /// Starts a worker; it signals readiness with a frame of id 0 on its reply pipe.
    pub fn spawn(python: &Path, workspace: &Path, max_frame: usize) -> Result<Self, AgentError> {
        let io = |e: std::io::Error| AgentError::Spawn {
            python: python.display().to_string(),
            source: e,
        };
        let (req_read, req_write) = cloexec_pipe().map_err(io)?;
        let (rep_read, rep_write) = cloexec_pipe().map_err(io)?;
        let (out_read, out_write) = cloexec_pipe().map_err(io)?;
        let (err_read, err_write) = cloexec_pipe().map_err(io)?;

        let mut cmd = Command::new(python);
        cmd.arg("-c")
            .arg(WORKER_SOURCE)
            .arg(REQUEST_FD.to_string())
            .arg(REPLY_FD.to_string())
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write))
            .process_group(0)
            .kill_on_drop(true);
        let (child_req, child_rep) = (req_read.as_raw_fd(), rep_write.as_raw_fd());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above the targets first, so neither dup2 clobbers the other.
                let a = libc::fcntl(child_req, libc::F_DUPFD, 10);
                let b = libc::fcntl(child_rep, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, REQUEST_FD) < 0 || libc::dup2(b, REPLY_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io)?;
        drop((req_read, rep_write));
        let pid = child.id().unwrap_or(0);
        let wrap = |r: std::io::Result<pipe::Receiver>| r.map_err(io);
        let requests = pipe::Sender::from_owned_fd(req_write).map_err(io)?;
        let replies = wrap(pipe::Receiver::from_owned_fd(rep_read))?;
        let stdout = wrap(pipe::Receiver::from_owned_fd(out_read))?;
        let stderr = wrap(pipe::Receiver::from_owned_fd(err_read))?;
        let _ = child.stdin.take();
        Ok(WorkerProcess {
            child,
            pid,
            requests,
            replies: FramedRead::new(replies, FrameCodec::new(max_frame)),
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Raises KeyboardInterrupt in running user code (the worker ignores it otherwise).
    pub fn interrupt(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGINT) };
        }
    }

    /// Kills the worker and everything it started in its process group.
    pub fn kill_group(&mut self) {
        if self.pid != 0 {
            // The group outlives the worker while its subprocesses run, so this is sent even
            // after the worker itself has exited; the group id cannot be reused before then.
            // SAFETY: plain killpg(2).
            unsafe { libc::killpg(self.pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.start_kill();
    }
}

/// How a worker ended, for error messages and the `exit_code` / `signal` fields.
pub fn describe_exit(status: ExitStatus) -> (String, Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        (
            format!("worker was killed by signal {sig} ({})", signal_name(sig)),
            None,
            Some(sig),
        )
    } else {
        let code = status.code().unwrap_or(-1);
        (format!("worker exited with code {code}"), Some(code), None)
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}
