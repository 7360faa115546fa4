//! The host's side of the agent protocol, over any byte stream (a child's pipes in tests, a
//! Docker attach stream in production).
//!
//! [`AgentClient`] gives every request a fresh id (starting at a random offset, so replies meant
//! for a previous host on the same stream never match), keeps many requests in flight, and
//! fails every one of them with [`ClientError::BackendGone`] when the stream ends. Each failure
//! the agent reports has its own [`ClientError`] variant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use crate::protocol::{
    encode_json, Base64, Body, Call, Create, DisposeReply, ErrorInfo, ErrorKind, Eval, Exec,
    ExecReply, FilesGetReply, FilesListReply, FilesPath, FilesPut, FilesPutReply,
    FloatArray2dReply, FloatArrayReply, Frame, FrameCodec, GetAttr, HandleArg, Hello, HelloReply,
    Import, InfoReply, InterruptReply, ModuleAvailableReply, ObjectReply, Op, PingReply,
    ProtocolError, Request, Response, SessionCloseReply, SessionListReply, SessionOpenReply,
    SetAttr, SetAttrReply, Wrap, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

/// Every way a call through the agent can fail.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The stream to the agent ended (or broke) before the reply came.
    #[error("agent connection is gone: {reason}")]
    BackendGone { reason: String },
    #[error("handshake with the agent failed: {0}")]
    Handshake(String),
    /// User code raised an exception.
    #[error("{kind}: {message}")]
    Python {
        kind: String,
        message: String,
        traceback: String,
    },
    #[error("{message}")]
    Timeout { message: String, session_lost: bool },
    #[error("{message}")]
    WorkerDied {
        message: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    #[error("{message}")]
    WorkerStartFailed { message: String },
    #[error("{message}")]
    TooManySessions { message: String, limit: Option<u64> },
    #[error("{message}")]
    NoSuchSession { message: String },
    #[error("{message}")]
    SessionClosed { message: String },
    #[error("{message}")]
    SessionBusy { message: String },
    #[error("{message}")]
    NoSuchHandle { message: String },
    /// The agent refused the request as malformed (bad field, unknown op, bad frame).
    #[error("request refused: {message}")]
    BadRequest { kind: ErrorKind, message: String },
    #[error("{message}")]
    FrameTooLarge { message: String },
    #[error("{message}")]
    PathRefused { message: String },
    #[error("{message}")]
    FileTooLarge { message: String, limit: Option<u64> },
    #[error("{message}")]
    NotFound { message: String },
    /// Any other error the agent reported (file I/O, a worker breaking the protocol).
    #[error("{kind}: {message}")]
    Agent { kind: String, message: String },
    #[error("reply to `{op}` could not be decoded: {source}")]
    Decode {
        op: &'static str,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Encode(#[from] ProtocolError),
}

impl ClientError {
    /// Whether the session's Python state is gone after this error.
    pub fn session_lost(&self) -> bool {
        match self {
            ClientError::Timeout { session_lost, .. } => *session_lost,
            ClientError::WorkerDied { .. } | ClientError::BackendGone { .. } => true,
            _ => false,
        }
    }
}

impl From<ErrorInfo> for ClientError {
    fn from(e: ErrorInfo) -> Self {
        let message = e.message.clone();
        let Some(kind) = e.agent_kind() else {
            return ClientError::Python {
                kind: e.kind,
                message,
                traceback: e.traceback.unwrap_or_default(),
            };
        };
        match kind {
            ErrorKind::Timeout => ClientError::Timeout {
                message,
                session_lost: e.session_lost.unwrap_or(false),
            },
            ErrorKind::WorkerDied => ClientError::WorkerDied {
                message,
                exit_code: e.exit_code,
                signal: e.signal,
            },
            ErrorKind::WorkerStartFailed => ClientError::WorkerStartFailed { message },
            ErrorKind::TooManySessions => ClientError::TooManySessions {
                message,
                limit: e.limit,
            },
            ErrorKind::NoSuchSession => ClientError::NoSuchSession { message },
            ErrorKind::SessionClosed => ClientError::SessionClosed { message },
            ErrorKind::SessionBusy => ClientError::SessionBusy { message },
            ErrorKind::NoSuchHandle => ClientError::NoSuchHandle { message },
            ErrorKind::BadRequest | ErrorKind::UnknownOp | ErrorKind::BadFrame => {
                ClientError::BadRequest { kind, message }
            }
            ErrorKind::FrameTooLarge => ClientError::FrameTooLarge { message },
            ErrorKind::PathRefused => ClientError::PathRefused { message },
            ErrorKind::FileTooLarge => ClientError::FileTooLarge {
                message,
                limit: e.limit,
            },
            ErrorKind::NotFound => ClientError::NotFound { message },
            ErrorKind::FileError | ErrorKind::WorkerProtocol => ClientError::Agent {
                kind: e.kind,
                message,
            },
        }
    }
}

impl ExecReply {
    /// The error of this exec as a typed [`ClientError`], if it failed.
    pub fn failure(&self) -> Option<ClientError> {
        self.error.clone().map(ClientError::from)
    }
}

/// Where and how long a worker op runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallOpts {
    /// `None` runs the call on a fresh worker that is discarded afterwards.
    pub session: Option<String>,
    pub timeout: Option<Duration>,
}

impl CallOpts {
    pub fn session(name: impl Into<String>) -> Self {
        CallOpts {
            session: Some(name.into()),
            timeout: None,
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

type Reply = Result<Body, ClientError>;

#[derive(Default)]
struct State {
    /// Set once the stream is gone; later calls fail at once with this reason.
    closed: Option<String>,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// The agent's latest diagnostics (sandboxes keep no logs; these are them).
    events: std::collections::VecDeque<crate::protocol::Event>,
}

/// How many of the agent's diagnostics a client keeps.
const EVENTS_KEPT: usize = 200;

impl State {
    fn close(&mut self, reason: &str) {
        if self.closed.is_none() {
            self.closed = Some(reason.to_owned());
        }
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(ClientError::BackendGone {
                reason: reason.to_owned(),
            }));
        }
    }
}

type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

struct Inner {
    state: Arc<Mutex<State>>,
    /// The agent's input. Callers write their own frames under this lock (no hand-off to a
    /// writer task, which on a multi-threaded runtime often meant a wake of another thread on
    /// every call); see [`AgentClient::send_frame`].
    writer: Arc<tokio::sync::Mutex<BoxWrite>>,
    next_id: AtomicU64,
    max_frame: usize,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        // Close the agent's input once pending writes are done (an agent on pipes then sees
        // end of input and exits).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            rt.spawn(async move {
                let _ = writer.lock().await.shutdown().await;
            });
        }
    }
}

/// A connection to one agent. Cheap to clone; all clones share the stream.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentClient {
    /// Starts a client on `reader`/`writer` and performs the handshake: the agent answers
    /// only once it has found a frame boundary, so this also resynchronises a stream a
    /// previous host left mid-frame.
    pub async fn connect<R, W>(reader: R, writer: W) -> Result<Self, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let client = Self::start(reader, writer, DEFAULT_MAX_FRAME);
        client.handshake().await?;
        Ok(client)
    }

    /// Starts a client without a handshake.
    pub fn start<R, W>(reader: R, writer: W, max_frame: usize) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(Mutex::new(State::default()));
        let reader = tokio::spawn(read_loop(reader, max_frame, state.clone()));
        AgentClient {
            inner: Arc::new(Inner {
                state,
                writer: Arc::new(tokio::sync::Mutex::new(Box::new(writer))),
                // Random start: replies to a previous host's requests can never match ours.
                next_id: AtomicU64::new((rand::random::<u64>() >> 12) + 1),
                max_frame,
                reader,
            }),
        }
    }

    /// Sends the handshake and checks the echo.
    pub async fn handshake(&self) -> Result<HelloReply, ClientError> {
        let nonce = format!("{:032x}", rand::random::<u128>());
        // Padding first: it completes any header a previous host left half-written, so the
        // agent's decoder is at a frame boundary (or skipping garbage) when our hello arrives.
        self.send_frame(Bytes::from_static(&[0u8; 8])).await;
        let op = Op::Hello(Hello {
            nonce: nonce.clone(),
            protocol: PROTOCOL_VERSION,
        });
        let reply: HelloReply = self.typed(&CallOpts::default(), op).await?;
        if reply.nonce != nonce {
            return Err(ClientError::Handshake(format!(
                "agent echoed nonce `{}`",
                reply.nonce
            )));
        }
        if reply.protocol != PROTOCOL_VERSION {
            return Err(ClientError::Handshake(format!(
                "agent speaks protocol {}, this host {PROTOCOL_VERSION}",
                reply.protocol
            )));
        }
        Ok(reply)
    }

    /// Whether the stream is known to be gone.
    /// The agent's latest diagnostics, oldest first.
    pub fn events(&self) -> Vec<crate::protocol::Event> {
        lock(&self.inner.state).events.iter().cloned().collect()
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.inner.state).closed.is_some()
    }

    /// Writes one whole frame to the agent. A frame is never cut: the write runs in the
    /// caller's task while it completes at once (a small frame into a pipe or socket with room,
    /// the usual case), and otherwise goes on in a task of its own, so a caller that is
    /// cancelled mid-write cannot leave half a frame behind. A failed write closes the client.
    async fn send_frame(&self, frame: Bytes) {
        let guard = self.inner.writer.clone().lock_owned().await;
        let state = self.inner.state.clone();
        let mut write = Box::pin(async move {
            let mut writer = guard;
            let result = match writer.write_all(&frame).await {
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                lock(&state).close(&format!("writing to the agent failed: {e}"));
            }
        });
        let done = futures_util::poll!(write.as_mut()).is_ready();
        if !done {
            tokio::spawn(write);
        }
    }

    /// Sends one request and returns the `ok` payload, or the error as a [`ClientError`].
    pub async fn request(&self, opts: &CallOpts, op: Op) -> Result<Value, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id,
            session: opts.session.clone(),
            timeout: opts.timeout.map(|d| d.as_secs_f64()),
            op,
        };
        let frame = encode_json(&request, self.inner.max_frame)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.inner.state);
            if let Some(reason) = &state.closed {
                return Err(ClientError::BackendGone {
                    reason: reason.clone(),
                });
            }
            state.pending.insert(id, tx);
        }
        self.send_frame(frame).await;
        let body = rx.await.unwrap_or_else(|_| {
            Err(ClientError::BackendGone {
                reason: "client dropped".into(),
            })
        })?;
        match body {
            Body::Ok(v) => Ok(v),
            Body::Error(e) => Err(e.into()),
            Body::Event(e) => Err(ClientError::Agent {
                kind: "Event".into(),
                message: e.message,
            }),
        }
    }

    async fn typed<T: DeserializeOwned>(&self, opts: &CallOpts, op: Op) -> Result<T, ClientError> {
        let name = op.name();
        let v = self.request(opts, op).await?;
        serde_json::from_value(v).map_err(|source| ClientError::Decode { op: name, source })
    }

    pub async fn ping(&self) -> Result<PingReply, ClientError> {
        self.typed(&CallOpts::default(), Op::Ping).await
    }

    pub async fn info(&self) -> Result<InfoReply, ClientError> {
        self.typed(&CallOpts::default(), Op::Info).await
    }

    /// Runs code; a Python exception, timeout or dead worker is in the reply's `error`
    /// (see [`ExecReply::failure`]) so that the output captured until then is kept.
    pub async fn exec(&self, opts: &CallOpts, code: &str) -> Result<ExecReply, ClientError> {
        self.typed(
            opts,
            Op::Exec(Exec {
                code: code.to_owned(),
            }),
        )
        .await
    }

    pub async fn eval(
        &self,
        opts: &CallOpts,
        expression: &str,
        locals: Option<Map<String, Value>>,
    ) -> Result<ObjectReply, ClientError> {
        self.typed(
            opts,
            Op::Eval(Eval {
                expression: expression.to_owned(),
                locals,
            }),
        )
        .await
    }

    pub async fn import(&self, opts: &CallOpts, module: &str) -> Result<ObjectReply, ClientError> {
        self.typed(
            opts,
            Op::Import(Import {
                module: module.to_owned(),
            }),
        )
        .await
    }

    pub async fn create(
        &self,
        opts: &CallOpts,
        create: Create,
    ) -> Result<ObjectReply, ClientError> {
        self.typed(opts, Op::Create(create)).await
    }

    pub async fn call(&self, opts: &CallOpts, call: Call) -> Result<ObjectReply, ClientError> {
        self.typed(opts, Op::Call(call)).await
    }

    pub async fn getattr(
        &self,
        opts: &CallOpts,
        handle: &str,
        name: &str,
    ) -> Result<ObjectReply, ClientError> {
        let op = Op::GetAttr(GetAttr {
            handle: handle.to_owned(),
            name: name.to_owned(),
        });
        self.typed(opts, op).await
    }

    pub async fn setattr(
        &self,
        opts: &CallOpts,
        handle: &str,
        name: &str,
        value: Value,
    ) -> Result<SetAttrReply, ClientError> {
        let op = Op::SetAttr(SetAttr {
            handle: handle.to_owned(),
            name: name.to_owned(),
            value,
        });
        self.typed(opts, op).await
    }

    pub async fn dispose(
        &self,
        opts: &CallOpts,
        handle: &str,
    ) -> Result<DisposeReply, ClientError> {
        self.typed(
            opts,
            Op::Dispose(HandleArg {
                handle: handle.to_owned(),
            }),
        )
        .await
    }

    pub async fn wrap(&self, opts: &CallOpts, value: Value) -> Result<ObjectReply, ClientError> {
        self.typed(opts, Op::Wrap(Wrap { value })).await
    }

    pub async fn module_available(
        &self,
        opts: &CallOpts,
        module: &str,
    ) -> Result<bool, ClientError> {
        let op = Op::ModuleAvailable(Import {
            module: module.to_owned(),
        });
        Ok(self
            .typed::<ModuleAvailableReply>(opts, op)
            .await?
            .available)
    }

    pub async fn to_float_array(
        &self,
        opts: &CallOpts,
        handle: &str,
    ) -> Result<Vec<f64>, ClientError> {
        let op = Op::ToFloatArray(HandleArg {
            handle: handle.to_owned(),
        });
        Ok(self.typed::<FloatArrayReply>(opts, op).await?.values)
    }

    pub async fn to_float_array_2d(
        &self,
        opts: &CallOpts,
        handle: &str,
    ) -> Result<Vec<Vec<f64>>, ClientError> {
        let op = Op::ToFloatArray2d(HandleArg {
            handle: handle.to_owned(),
        });
        Ok(self.typed::<FloatArray2dReply>(opts, op).await?.values)
    }

    /// Opens a session (`None`: the agent picks an id); opening an existing one returns it.
    pub async fn session_open(
        &self,
        session: Option<&str>,
    ) -> Result<SessionOpenReply, ClientError> {
        let opts = CallOpts {
            session: session.map(str::to_owned),
            timeout: None,
        };
        self.typed(&opts, Op::SessionOpen).await
    }

    pub async fn session_close(&self, session: &str) -> Result<bool, ClientError> {
        Ok(self
            .typed::<SessionCloseReply>(&CallOpts::session(session), Op::SessionClose)
            .await?
            .closed)
    }

    pub async fn session_list(&self) -> Result<SessionListReply, ClientError> {
        self.typed(&CallOpts::default(), Op::SessionList).await
    }

    /// Interrupts the session's running call; false when it was idle.
    pub async fn session_interrupt(&self, session: &str) -> Result<bool, ClientError> {
        let reply: InterruptReply = self
            .typed(&CallOpts::session(session), Op::SessionInterrupt)
            .await?;
        Ok(reply.interrupted)
    }

    pub async fn files_put(&self, path: &str, data: Vec<u8>) -> Result<FilesPutReply, ClientError> {
        let op = Op::FilesPut(FilesPut {
            path: path.to_owned(),
            data: Base64(data),
        });
        self.typed(&CallOpts::default(), op).await
    }

    pub async fn files_get(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let op = Op::FilesGet(FilesPath {
            path: path.to_owned(),
        });
        Ok(self
            .typed::<FilesGetReply>(&CallOpts::default(), op)
            .await?
            .data
            .0)
    }

    pub async fn files_list(&self, path: &str) -> Result<FilesListReply, ClientError> {
        let op = Op::FilesList(FilesPath {
            path: path.to_owned(),
        });
        self.typed(&CallOpts::default(), op).await
    }
}

async fn read_loop<R: AsyncRead + Unpin>(reader: R, max_frame: usize, state: Arc<Mutex<State>>) {
    let mut frames = FramedRead::with_capacity(reader, FrameCodec::new(max_frame), 64 << 10);
    let reason = loop {
        match frames.next().await {
            Some(Ok(Frame::Data(payload))) => match Response::from_slice(&payload) {
                Ok(Response { id: Some(id), body }) => {
                    let tx = lock(&state).pending.remove(&id);
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(Ok(body));
                        }
                        None => tracing::debug!(id, "reply to a request this client did not send"),
                    }
                }
                Ok(Response { id: None, body }) => match body {
                    Body::Event(e) => {
                        tracing::info!(level = %e.level, "agent: {}", e.message);
                        let mut st = lock(&state);
                        if st.events.len() == EVENTS_KEPT {
                            st.events.pop_front();
                        }
                        st.events.push_back(e);
                    }
                    Body::Error(e) => tracing::debug!(kind = %e.kind, "agent: {}", e.message),
                    Body::Ok(_) => tracing::debug!("agent sent a reply without an id"),
                },
                Err(e) => tracing::warn!("agent sent a frame that is not a reply: {e}"),
            },
            Some(Ok(other)) => tracing::debug!("skipped while reading from the agent: {other:?}"),
            Some(Err(e)) => break format!("reading from the agent failed: {e}"),
            None => break "the agent's stream ended".to_owned(),
        }
    };
    lock(&state).close(&reason);
}
