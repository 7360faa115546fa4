//! The agent's main loop: decode frames, answer what needs no worker, route the rest.
//!
//! One task owns the session table, so it needs no lock: sessions report their end through a
//! channel, and the dispatcher never awaits anything but its input and that channel. Replies are
//! written by [`write_frames`], which batches whatever is queued into one write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::session::{unix_secs, Control, Job, Session, SessionEvent, SessionShared};
use super::worker::WorkerProcess;
use super::{files, AgentConfig, Outbox};
use crate::protocol::{
    encode_json, ErrorInfo, ErrorKind, Event, Frame, FrameCodec, HelloReply, InfoReply,
    InterruptReply, Op, PingReply, Request, Response, SessionCloseReply, SessionInfo,
    SessionListReply, PROTOCOL_VERSION,
};

struct SessionHandle {
    jobs: mpsc::Sender<Job>,
    ctl: mpsc::UnboundedSender<Control>,
    shared: Arc<SessionShared>,
    named: bool,
}

pub struct Dispatcher {
    cfg: Arc<AgentConfig>,
    out: Outbox,
    sessions: HashMap<String, SessionHandle>,
    spares: Vec<WorkerProcess>,
    tasks: JoinSet<()>,
    events_tx: mpsc::UnboundedSender<SessionEvent>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    python_version: Option<String>,
    started: Instant,
    one_call_seq: u64,
}

impl Dispatcher {
    pub fn new(cfg: Arc<AgentConfig>, out: Outbox) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Dispatcher {
            cfg,
            out,
            sessions: HashMap::new(),
            spares: Vec::new(),
            tasks: JoinSet::new(),
            events_tx,
            events,
            python_version: None,
            started: Instant::now(),
            one_call_seq: 0,
        }
    }

    pub async fn run<R: AsyncRead + Unpin>(mut self, input: R) {
        self.top_up_spares();
        let mut frames =
            FramedRead::with_capacity(input, FrameCodec::new(self.cfg.max_frame), 64 << 10);
        loop {
            tokio::select! {
                f = frames.next() => match f {
                    Some(Ok(frame)) => self.on_frame(frame),
                    Some(Err(e)) => {
                        self.event("error", format!("reading input failed: {e}"));
                        break;
                    }
                    None => break,
                },
                Some(ev) = self.events.recv() => self.on_event(ev),
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        for (_, h) in self.sessions.drain() {
            let _ = h.ctl.send(Control::Close);
        }
        for mut w in self.spares.drain(..) {
            w.kill_group();
            let _ = w.child.wait().await;
        }
        while self.tasks.join_next().await.is_some() {}
    }

    fn send(&self, response: &Response) {
        match encode_json(response, self.cfg.max_frame) {
            Ok(b) => {
                let _ = self.out.send(b);
            }
            Err(e) => {
                let err = ErrorInfo::new(ErrorKind::FrameTooLarge, format!("reply not sent: {e}"));
                if let Ok(b) = encode_json(&Response::error(response.id, err), self.cfg.max_frame) {
                    let _ = self.out.send(b);
                }
            }
        }
    }

    fn reply_error(&self, id: Option<u64>, error: ErrorInfo) {
        self.send(&Response::error(id, error));
    }

    fn event(&self, level: &str, message: String) {
        self.send(&Response {
            id: None,
            body: crate::protocol::Body::Event(Event {
                level: level.to_owned(),
                message,
            }),
        });
    }

    fn on_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Ended { id, shared } => {
                if self
                    .sessions
                    .get(&id)
                    .is_some_and(|h| Arc::ptr_eq(&h.shared, &shared))
                {
                    self.sessions.remove(&id);
                }
            }
            SessionEvent::Python { version } => self.python_version = Some(version),
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let payload = match frame {
            Frame::Data(b) => b,
            Frame::Garbage { bytes } => {
                return self.reply_error(
                    None,
                    ErrorInfo::new(
                        ErrorKind::BadFrame,
                        format!("discarded {bytes} bytes that were not a frame"),
                    ),
                )
            }
            Frame::Truncated { expected, got } => {
                return self.reply_error(
                    None,
                    ErrorInfo::new(
                        ErrorKind::BadFrame,
                        format!("frame cut short after {got} of {expected} bytes by a new frame"),
                    ),
                )
            }
            Frame::TooLarge { len, max } => {
                let mut e = ErrorInfo::new(
                    ErrorKind::FrameTooLarge,
                    format!("frame of {len} bytes exceeds the limit of {max} bytes"),
                );
                e.limit = Some(max as u64);
                return self.reply_error(None, e);
            }
        };
        match Request::from_slice(&payload) {
            Ok(req) => self.on_request(req),
            Err(e) => self.reply_error(e.id, ErrorInfo::new(e.kind, e.message)),
        }
    }

    fn on_request(&mut self, req: Request) {
        let id = req.id;
        match &req.op {
            Op::Hello(h) => self.send(&Response::ok(
                id,
                HelloReply {
                    nonce: h.nonce.clone(),
                    protocol: PROTOCOL_VERSION,
                    agent_version: crate::VERSION.to_owned(),
                    pid: std::process::id(),
                },
            )),
            Op::Ping => self.send(&Response::ok(id, PingReply { pong: true })),
            Op::Info => self.send(&Response::ok(
                id,
                InfoReply {
                    agent_version: crate::VERSION.to_owned(),
                    protocol: PROTOCOL_VERSION,
                    pid: std::process::id(),
                    uptime_s: self.started.elapsed().as_secs_f64(),
                    python_version: self.python_version.clone(),
                    python: self.cfg.python.display().to_string(),
                    workspace: self.cfg.workspace.display().to_string(),
                    sessions: self.sessions.len(),
                    max_sessions: self.cfg.max_sessions,
                },
            )),
            Op::SessionOpen => {
                let name = req
                    .session
                    .clone()
                    .unwrap_or_else(|| format!("s-{:012x}", rand::random::<u64>() >> 16));
                self.enqueue(&name, Job::Open { id });
            }
            Op::SessionClose => {
                let name = req.session.as_deref().unwrap_or_default();
                let closed = match self.sessions.remove(name) {
                    Some(h) => {
                        let _ = h.ctl.send(Control::Close);
                        true
                    }
                    None => false,
                };
                self.send(&Response::ok(id, SessionCloseReply { closed }));
            }
            Op::SessionInterrupt => {
                let name = req.session.as_deref().unwrap_or_default();
                match self.sessions.get(name) {
                    Some(h) => {
                        let seq = h.shared.running.load(Ordering::Relaxed);
                        if seq != 0 {
                            let _ = h.ctl.send(Control::Interrupt { seq });
                        }
                        self.send(&Response::ok(
                            id,
                            InterruptReply {
                                interrupted: seq != 0,
                            },
                        ));
                    }
                    None => self.reply_error(Some(id), no_such_session(name)),
                }
            }
            Op::SessionList => {
                let mut sessions: Vec<SessionInfo> = self
                    .sessions
                    .iter()
                    .filter(|(_, h)| h.named)
                    .map(|(name, h)| SessionInfo {
                        session: name.clone(),
                        pid: h.shared.pid,
                        created: unix_secs(h.shared.created),
                        last_used: h.shared.last_used(),
                        busy: h.shared.running.load(Ordering::Relaxed) != 0,
                        queued: h.shared.queued.load(Ordering::Relaxed),
                    })
                    .collect();
                sessions.sort_by(|a, b| a.session.cmp(&b.session));
                self.send(&Response::ok(id, SessionListReply { sessions }));
            }
            Op::FilesPut(_) | Op::FilesGet(_) | Op::FilesList(_) => self.files(req),
            _ if req.op.is_worker_op() => match req.session.clone() {
                Some(name) => self.enqueue(&name, Job::Call(req)),
                None => {
                    self.one_call_seq += 1;
                    // `~` cannot appear in a client's session id, so these never collide.
                    let key = format!("~{}", self.one_call_seq);
                    self.enqueue(&key, Job::Call(req));
                }
            },
            _ => self.reply_error(
                Some(id),
                ErrorInfo::new(
                    ErrorKind::UnknownOp,
                    format!("op `{}` is not served here", req.op.name()),
                ),
            ),
        }
    }

    /// Queues a job on a session, starting the session when it does not exist (or just ended).
    fn enqueue(&mut self, key: &str, job: Job) {
        let id = match &job {
            Job::Call(r) => r.id,
            Job::Open { id } => *id,
        };
        let mut job = job;
        if let Some(h) = self.sessions.get(key) {
            h.shared.queued.fetch_add(1, Ordering::Relaxed);
            match h.jobs.try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    h.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    let mut e = ErrorInfo::new(
                        ErrorKind::SessionBusy,
                        format!(
                            "session `{key}` already has {} calls queued",
                            self.cfg.max_queue
                        ),
                    );
                    e.limit = Some(self.cfg.max_queue as u64);
                    return self.reply_error(Some(id), e);
                }
                Err(mpsc::error::TrySendError::Closed(j)) => {
                    // The session ended (idle TTL, dead worker) but its end is not processed yet.
                    job = j;
                    self.sessions.remove(key);
                }
            }
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            let mut e = ErrorInfo::new(
                ErrorKind::TooManySessions,
                format!(
                    "{} sessions are running, the limit of --max-sessions",
                    self.sessions.len()
                ),
            );
            e.limit = Some(self.cfg.max_sessions as u64);
            return self.reply_error(Some(id), e);
        }
        let worker = match self.take_worker() {
            Ok(w) => w,
            Err(e) => {
                return self.reply_error(
                    Some(id),
                    ErrorInfo::new(ErrorKind::WorkerStartFailed, e.to_string()),
                )
            }
        };
        let shared = Arc::new(SessionShared::new(worker.pid));
        let (jobs_tx, jobs_rx) = mpsc::channel(self.cfg.max_queue);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        shared.queued.fetch_add(1, Ordering::Relaxed);
        let _ = jobs_tx.try_send(job);
        let named = !key.starts_with('~');
        let session = Session {
            name: named.then(|| key.to_owned()),
            key: key.to_owned(),
            worker,
            shared: shared.clone(),
            cfg: self.cfg.clone(),
            out: self.out.clone(),
            events: self.events_tx.clone(),
        };
        self.tasks.spawn(session.run(jobs_rx, ctl_rx));
        self.sessions.insert(
            key.to_owned(),
            SessionHandle {
                jobs: jobs_tx,
                ctl: ctl_tx,
                shared,
                named,
            },
        );
        // Reap finished session tasks so the set does not grow.
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(self.tasks.join_next()) {}
        self.top_up_spares();
    }

    fn take_worker(&mut self) -> Result<WorkerProcess, super::AgentError> {
        while let Some(mut w) = self.spares.pop() {
            if matches!(w.child.try_wait(), Ok(None)) {
                return Ok(w);
            }
        }
        WorkerProcess::spawn(&self.cfg.python, &self.cfg.workspace, self.cfg.max_frame)
    }

    fn top_up_spares(&mut self) {
        while self.spares.len() < self.cfg.warm_workers {
            match WorkerProcess::spawn(&self.cfg.python, &self.cfg.workspace, self.cfg.max_frame) {
                Ok(w) => self.spares.push(w),
                Err(e) => {
                    self.event("warn", format!("cannot keep a warm worker: {e}"));
                    break;
                }
            }
        }
    }

    fn files(&self, req: Request) {
        let root = self.cfg.workspace.clone();
        let max = self.cfg.max_file;
        let out = self.out.clone();
        let max_frame = self.cfg.max_frame;
        let id = req.id;
        tokio::spawn(async move {
            let result =
                tokio::task::spawn_blocking(move || -> Result<Response, files::FileError> {
                    Ok(match req.op {
                        Op::FilesPut(p) => {
                            Response::ok(id, files::put(&root, &p.path, &p.data.0, max)?)
                        }
                        Op::FilesGet(p) => Response::ok(id, files::get(&root, &p.path, max)?),
                        Op::FilesList(p) => Response::ok(id, files::list(&root, &p.path)?),
                        _ => unreachable!("only files ops are routed here"),
                    })
                })
                .await;
            let response = match result {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Response::error(Some(id), e.into()),
                Err(e) => Response::error(
                    Some(id),
                    ErrorInfo::new(ErrorKind::FileError, format!("file operation failed: {e}")),
                ),
            };
            let frame = encode_json(&response, max_frame).or_else(|e| {
                encode_json(
                    &Response::error(
                        Some(id),
                        ErrorInfo::new(ErrorKind::FrameTooLarge, format!("reply not sent: {e}")),
                    ),
                    max_frame,
                )
            });
            if let Ok(f) = frame {
                let _ = out.send(f);
            }
        });
    }
}

fn no_such_session(name: &str) -> ErrorInfo {
    ErrorInfo::new(ErrorKind::NoSuchSession, format!("no session `{name}`"))
}

/// Writes queued frames, coalescing whatever is already waiting into one write.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    mut output: W,
) {
    let mut batch = BytesMut::new();
    let mut broken = false;
    while let Some(first) = rx.recv().await {
        if broken {
            continue;
        }
        let mut buf = first;
        if let Ok(next) = rx.try_recv() {
            batch.clear();
            batch.extend_from_slice(&buf);
            batch.extend_from_slice(&next);
            while batch.len() < (256 << 10) {
                match rx.try_recv() {
                    Ok(b) => batch.extend_from_slice(&b),
                    Err(_) => break,
                }
            }
            buf = batch.split().freeze();
        }
        // A host that went away must not stop the agent: frames are dropped until stdin ends.
        if output.write_all(&buf).await.is_err() || output.flush().await.is_err() {
            broken = true;
        }
    }
}
