//! One session: a task that owns one worker and runs its queued calls one at a time.
//!
//! The task is the only owner of the worker's pipes. While idle it keeps draining the worker's
//! output and watches for its death and the idle TTL; while a call runs it also enforces the
//! timeout (SIGINT, then SIGKILL of the process group after the grace period) and answers
//! interrupts. It writes its replies straight to the agent's output channel.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::capture::Capture;
use super::worker::{describe_exit, WorkerProcess};
use super::{AgentConfig, Outbox};
use crate::protocol::{
    encode_json, Body, ErrorInfo, ErrorKind, ExecReply, Frame, Op, Request, Response,
    SessionOpenReply, WorkerRequest,
};

/// What the dispatcher queues for a session.
pub enum Job {
    Call(Request),
    /// `session.open`: answered once the worker is ready.
    Open {
        id: u64,
    },
}

/// What the dispatcher can tell a session at any time, even mid-call.
pub enum Control {
    /// Interrupt call `seq` if it is still the one running.
    Interrupt {
        seq: u64,
    },
    Close,
}

/// Counters the dispatcher reads without asking the task.
pub struct SessionShared {
    pub pid: u32,
    pub created: SystemTime,
    last_used_ms: AtomicU64,
    /// Sequence number of the running call; 0 when idle.
    pub running: AtomicU64,
    pub queued: AtomicUsize,
}

impl SessionShared {
    pub fn new(pid: u32) -> Self {
        SessionShared {
            pid,
            created: SystemTime::now(),
            last_used_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            running: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    pub fn last_used(&self) -> f64 {
        self.last_used_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn touch(&self) {
        self.last_used_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }
}

pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Sent to the dispatcher when a session task ends, and when a worker reports its Python.
pub enum SessionEvent {
    Ended {
        id: String,
        shared: Arc<SessionShared>,
    },
    Python {
        version: String,
    },
}

pub struct Session {
    /// The client's session id; `None` for a one-call session.
    pub name: Option<String>,
    pub key: String,
    pub worker: WorkerProcess,
    pub shared: Arc<SessionShared>,
    pub cfg: Arc<AgentConfig>,
    pub out: Outbox,
    pub events: mpsc::UnboundedSender<SessionEvent>,
}

/// How waiting for a worker's reply ended.
enum Waited {
    Reply(Body),
    Died,
    /// Killed after the timeout's grace period.
    Killed,
    Closed,
    Protocol(String),
}

struct Io {
    out: Capture,
    err: Capture,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
}

async fn read_opt(r: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

impl Session {
    pub async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut ctl: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut io = Io {
            out: Capture::new(self.cfg.output_cap),
            err: Capture::new(self.cfg.output_cap),
            out_buf: vec![0; 16 << 10],
            err_buf: vec![0; 16 << 10],
        };
        let mut seq = 0u64;
        let mut alive = match self.wait_ready(&mut io).await {
            Ok(()) => true,
            Err(e) => {
                self.fail_all(&mut jobs, &e);
                false
            }
        };
        let ttl = self.cfg.idle_ttl;
        // One timer for the whole session, moved later after each job: a new timer per job
        // would be registered ahead of the driver's next wake-up, and registering one makes
        // the driver wake itself (an eventfd write and an extra turn of the loop per call).
        let idle = tokio::time::sleep(ttl.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle);
        let mut closing_error = ErrorInfo::new(ErrorKind::SessionClosed, "session was closed");
        while alive {
            let job = tokio::select! {
                biased;
                c = ctl.recv() => match c {
                    Some(Control::Interrupt { .. }) => continue,
                    Some(Control::Close) | None => break,
                },
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                n = read_opt(&mut self.worker.stdout, &mut io.out_buf) => {
                    match n { Ok(n) if n > 0 => io.out.feed(&io.out_buf[..n]), _ => self.worker.stdout = None }
                    continue;
                }
                n = read_opt(&mut self.worker.stderr, &mut io.err_buf) => {
                    match n { Ok(n) if n > 0 => io.err.feed(&io.err_buf[..n]), _ => self.worker.stderr = None }
                    continue;
                }
                status = self.worker.child.wait() => {
                    let (message, _, _) = match status {
                        Ok(s) => describe_exit(s),
                        Err(e) => (format!("worker was lost: {e}"), None, None),
                    };
                    closing_error = ErrorInfo::new(ErrorKind::SessionClosed, format!("session ended: {message}"));
                    break;
                }
                _ = &mut idle, if ttl.is_some() => {
                    // Idle TTL: stop taking jobs, but run what was queued before the close.
                    jobs.close();
                    closing_error = ErrorInfo::new(ErrorKind::SessionClosed, "session expired after its idle ttl");
                    while let Ok(job) = jobs.try_recv() {
                        if !self.run_job(job, &mut seq, &mut io, &mut ctl).await {
                            break;
                        }
                    }
                    break;
                }
            };
            alive = self.run_job(job, &mut seq, &mut io, &mut ctl).await;
            if self.name.is_none() {
                break;
            }
            if let Some(t) = ttl {
                idle.as_mut().reset(tokio::time::Instant::now() + t);
            }
        }
        self.worker.kill_group();
        jobs.close();
        self.fail_all(&mut jobs, &closing_error);
        let _ = self.worker.child.wait().await;
        let _ = self.events.send(SessionEvent::Ended {
            id: self.key.clone(),
            shared: self.shared.clone(),
        });
    }

    fn fail_all(&self, jobs: &mut mpsc::Receiver<Job>, error: &ErrorInfo) {
        while let Ok(job) = jobs.try_recv() {
            let id = match job {
                Job::Call(r) => r.id,
                Job::Open { id } => id,
            };
            self.send(Response::error(Some(id), error.clone()));
        }
    }

    fn send(&self, response: Response) {
        let frame = match encode_json(&response, self.cfg.max_frame) {
            Ok(f) => f,
            Err(e) => {
                let err = ErrorInfo::new(ErrorKind::FrameTooLarge, format!("reply not sent: {e}"));
                match encode_json(&Response::error(response.id, err), self.cfg.max_frame) {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
        };
        let _ = self.out.send(frame);
    }

    /// Encodes `{"id", "ok"}` straight from the payload (no intermediate JSON value).
    fn send_ok<T: serde::Serialize>(&self, id: u64, payload: &T) {
        #[derive(serde::Serialize)]
        struct OkFrame<'a, T> {
            id: u64,
            ok: &'a T,
        }
        match encode_json(&OkFrame { id, ok: payload }, self.cfg.max_frame) {
            Ok(frame) => {
                let _ = self.out.send(frame);
            }
            Err(e) => self.send(Response::error(
                Some(id),
                ErrorInfo::new(ErrorKind::FrameTooLarge, format!("reply not sent: {e}")),
            )),
        }
    }

    /// Waits for the worker's first frame (id 0, with its Python version).
    async fn wait_ready(&mut self, io: &mut Io) -> Result<(), ErrorInfo> {
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        let failure = loop {
            tokio::select! {
                f = self.worker.replies.next() => match f {
                    Some(Ok(Frame::Data(b))) => match Response::from_slice(&b) {
                        Ok(Response { id: Some(0), body: Body::Ok(v) }) => {
                            if let Some(version) = v.get("python_version").and_then(Value::as_str) {
                                let _ = self.events.send(SessionEvent::Python { version: version.to_owned() });
                            }
                            return Ok(());
                        }
                        _ => break "worker sent an unexpected first frame".to_owned(),
                    },
                    _ => break String::new(),
                },
                n = read_opt(&mut self.worker.stdout, &mut io.out_buf) => {
                    match n { Ok(n) if n > 0 => io.out.feed(&io.out_buf[..n]), _ => self.worker.stdout = None }
                }
                n = read_opt(&mut self.worker.stderr, &mut io.err_buf) => {
                    match n { Ok(n) if n > 0 => io.err.feed(&io.err_buf[..n]), _ => self.worker.stderr = None }
                }
                _ = self.worker.child.wait() => break String::new(),
                _ = sleep_until(deadline) => {
                    break format!("worker did not start within {:?}", self.cfg.start_timeout)
                }
            }
        };
        self.worker.kill_group();
        let status = self.worker.child.wait().await.ok();
        self.drain(io).await;
        let mut message = if failure.is_empty() {
            match status {
                Some(s) => format!("worker failed to start: {}", describe_exit(s).0),
                None => "worker failed to start".to_owned(),
            }
        } else {
            failure
        };
        let stderr = io.err.take().text();
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            let tail: String = stderr
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            message = format!("{message}: {tail}");
        }
        Err(ErrorInfo::new(ErrorKind::WorkerStartFailed, message))
    }

    /// After the worker is gone: reads what its pipes still hold, until end-of-file or briefly
    /// (a subprocess that escaped the process group may hold them open forever).
    async fn drain(&mut self, io: &mut Io) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while self.worker.stdout.is_some() || self.worker.stderr.is_some() {
            tokio::select! {
                n = read_opt(&mut self.worker.stdout, &mut io.out_buf) => {
                    match n { Ok(n) if n > 0 => io.out.feed(&io.out_buf[..n]), _ => self.worker.stdout = None }
                }
                n = read_opt(&mut self.worker.stderr, &mut io.err_buf) => {
                    match n { Ok(n) if n > 0 => io.err.feed(&io.err_buf[..n]), _ => self.worker.stderr = None }
                }
                _ = sleep_until(deadline) => break,
            }
        }
    }

    /// Runs one job; returns whether the worker is still usable.
    async fn run_job(
        &mut self,
        job: Job,
        seq: &mut u64,
        io: &mut Io,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> bool {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        let request = match job {
            Job::Open { id } => {
                let reply = SessionOpenReply {
                    session: self.name.clone().unwrap_or_default(),
                    pid: self.shared.pid,
                };
                self.send(Response::ok(id, reply));
                return true;
            }
            Job::Call(r) => r,
        };
        *seq += 1;
        let seq = *seq;
        self.shared.running.store(seq, Ordering::Relaxed);
        self.shared.touch();
        let started = Instant::now();
        let (waited, timed_out) = self.call(&request, seq, io, ctl).await;
        self.shared.running.store(0, Ordering::Relaxed);
        self.shared.touch();

        let alive = matches!(waited, Waited::Reply(_));
        let failure = if alive {
            None
        } else {
            self.worker.kill_group();
            let status =
                tokio::time::timeout(Duration::from_secs(5), self.worker.child.wait()).await;
            self.drain(io).await;
            let timeout = request.timeout.unwrap_or_default();
            Some(match (&waited, status) {
                (Waited::Killed, _) => {
                    let mut e = ErrorInfo::new(
                        ErrorKind::Timeout,
                        format!(
                            "call exceeded its timeout of {timeout}s and did not stop within the {:?} grace period; the worker was killed",
                            self.cfg.grace
                        ),
                    );
                    e.session_lost = Some(true);
                    e
                }
                (Waited::Closed, _) => {
                    let mut e = ErrorInfo::new(
                        ErrorKind::SessionClosed,
                        "session was closed during the call",
                    );
                    e.session_lost = Some(true);
                    e
                }
                (Waited::Protocol(m), _) => {
                    let mut e = ErrorInfo::new(ErrorKind::WorkerProtocol, m.clone());
                    e.session_lost = Some(true);
                    e
                }
                (_, Ok(Ok(status))) => {
                    let (message, code, signal) = describe_exit(status);
                    let mut e = ErrorInfo::new(ErrorKind::WorkerDied, message);
                    e.exit_code = code;
                    e.signal = signal;
                    e.session_lost = Some(true);
                    e
                }
                _ => {
                    let mut e =
                        ErrorInfo::new(ErrorKind::WorkerDied, "worker closed its reply pipe");
                    e.session_lost = Some(true);
                    e
                }
            })
        };
        let stdout = io.out.take();
        let stderr = io.err.take();
        let as_timeout = |mut e: ErrorInfo| {
            if timed_out && e.kind == "KeyboardInterrupt" {
                e.kind = ErrorKind::Timeout.as_str().to_owned();
                e.message = format!(
                    "call exceeded its timeout of {}s and was interrupted",
                    request.timeout.unwrap_or_default()
                );
                e.session_lost = Some(false);
            }
            e
        };
        let response = if let Op::Exec(_) = request.op {
            let mut reply = match waited {
                Waited::Reply(Body::Ok(v)) => serde_json::from_value::<ExecReply>(v)
                    .unwrap_or_else(|e| {
                        exec_error(ErrorInfo::new(
                            ErrorKind::WorkerProtocol,
                            format!("bad exec reply: {e}"),
                        ))
                    }),
                Waited::Reply(Body::Error(e)) => exec_error(e),
                Waited::Reply(Body::Event(_)) => exec_error(ErrorInfo::new(
                    ErrorKind::WorkerProtocol,
                    "worker answered with an event",
                )),
                _ => exec_error(
                    failure
                        .clone()
                        .unwrap_or_else(|| ErrorInfo::new(ErrorKind::WorkerDied, "worker died")),
                ),
            };
            reply.error = reply.error.map(as_timeout);
            reply.session_lost = reply
                .error
                .as_ref()
                .and_then(|e| e.session_lost)
                .unwrap_or(false);
            if reply.duration_ms == 0.0 {
                reply.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            }
            reply.stdout = stdout.text();
            reply.stderr = stderr.text();
            reply.truncated = stdout.truncated || stderr.truncated;
            reply.session = self.name.clone();
            self.send_ok(request.id, &reply);
            return alive;
        } else {
            match waited {
                Waited::Reply(Body::Ok(mut v)) => {
                    if let Value::Object(m) = &mut v {
                        if !stdout.bytes.is_empty() {
                            m.insert("stdout".into(), stdout.text().into());
                        }
                        if !stderr.bytes.is_empty() {
                            m.insert("stderr".into(), stderr.text().into());
                        }
                    }
                    Response {
                        id: Some(request.id),
                        body: Body::Ok(v),
                    }
                }
                Waited::Reply(Body::Error(e)) => Response::error(Some(request.id), as_timeout(e)),
                Waited::Reply(Body::Event(_)) => Response::error(
                    Some(request.id),
                    ErrorInfo::new(ErrorKind::WorkerProtocol, "worker answered with an event"),
                ),
                _ => Response::error(
                    Some(request.id),
                    failure.unwrap_or_else(|| ErrorInfo::new(ErrorKind::WorkerDied, "worker died")),
                ),
            }
        };
        self.send(response);
        alive
    }

    /// Sends one request to the worker, waits for its reply and collects the call's output.
    /// Returns how it ended and whether the timeout fired.
    async fn call(
        &mut self,
        request: &Request,
        seq: u64,
        io: &mut Io,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> (Waited, bool) {
        let frame = match encode_json(
            &WorkerRequest {
                id: seq,
                op: &request.op,
            },
            self.cfg.max_frame,
        ) {
            Ok(f) => f,
            Err(e) => {
                return (
                    Waited::Reply(Body::Error(ErrorInfo::new(
                        ErrorKind::FrameTooLarge,
                        e.to_string(),
                    ))),
                    false,
                )
            }
        };
        let timeout = request.timeout_duration().or(self.cfg.default_timeout);
        let mut deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        let mut pending: &[u8] = &frame;
        let waited = loop {
            tokio::select! {
                biased;
                f = self.worker.replies.next() => match f {
                    Some(Ok(Frame::Data(b))) => match Response::from_slice(&b) {
                        Ok(r) if r.id == Some(seq) => break Waited::Reply(r.body),
                        Ok(r) => break Waited::Protocol(format!("worker replied to call {:?} while call {seq} was running", r.id)),
                        Err(e) => break Waited::Protocol(format!("worker sent an invalid reply: {e}")),
                    },
                    Some(Ok(other)) => break Waited::Protocol(format!("worker sent a bad frame: {other:?}")),
                    Some(Err(_)) | None => break Waited::Died,
                },
                n = self.worker.requests.write(pending), if !pending.is_empty() => match n {
                    Ok(n) => pending = &pending[n..],
                    Err(_) => break Waited::Died,
                },
                n = read_opt(&mut self.worker.stdout, &mut io.out_buf) => {
                    match n { Ok(n) if n > 0 => io.out.feed(&io.out_buf[..n]), _ => self.worker.stdout = None }
                }
                n = read_opt(&mut self.worker.stderr, &mut io.err_buf) => {
                    match n { Ok(n) if n > 0 => io.err.feed(&io.err_buf[..n]), _ => self.worker.stderr = None }
                }
                c = ctl.recv() => match c {
                    Some(Control::Interrupt { seq: s }) if s == seq => self.worker.interrupt(),
                    Some(Control::Interrupt { .. }) => {}
                    Some(Control::Close) | None => break Waited::Closed,
                },
                _ = self.worker.child.wait() => break Waited::Died,
                _ = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    if timed_out {
                        break Waited::Killed;
                    }
                    timed_out = true;
                    self.worker.interrupt();
                    deadline = Some(tokio::time::Instant::now() + self.cfg.grace);
                }
            }
        };
        if let Waited::Reply(_) = waited {
            // The worker flushed user output before replying: what is in the pipes now is
            // this call's.
            read_dry(&mut self.worker.stdout, &mut io.out, &mut io.out_buf);
            read_dry(&mut self.worker.stderr, &mut io.err, &mut io.err_buf);
        }
        (waited, timed_out)
    }
}

/// Reads a pipe until it is empty, without waiting: a plain non-blocking read(2), because
/// tokio's readiness flag may not have caught up with data that is already there.
fn read_dry(pipe: &mut Option<pipe::Receiver>, capture: &mut Capture, buf: &mut [u8]) {
    while let Some(p) = pipe {
        // SAFETY: reads into a buffer we own, from a descriptor the receiver keeps open.
        let n = unsafe { libc::read(p.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => capture.feed(&buf[..n as usize]),
            0 => *pipe = None,
            _ => match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => return,
                _ => *pipe = None,
            },
        }
    }
}

fn exec_error(error: ErrorInfo) -> ExecReply {
    ExecReply {
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        result: None,
        error: Some(error),
        duration_ms: 0.0,
        session: None,
        session_lost: false,
    }
}
