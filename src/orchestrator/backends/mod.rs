//! Backends: sandbox containers running `beephost agent`, reached through their attach stream.
//!
//! The registry of live backends is in memory, but Docker is the source of truth: every
//! container carries labels (owner host, id, name, transport, endpoint, token hash, limits,
//! lifetimes) from which [`reconcile`] re-derives everything after a restart. Client endpoints
//! are opened through the [`Endpoints`] trait, so this module never sees a socket or HTTP type.

pub mod reconcile;
pub mod spec;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::agent::{AgentClient, CallOpts, ClientError};
use crate::error::Error;
use crate::labels;
use crate::metrics::{self, BackendState, ExecOutcome, StartPhase};
use crate::protocol::Op;
use crate::runtime::{ContainerRuntime, Labels, SandboxSpec};
pub use spec::{BackendRequest, BackendSpec, Bounds, Limits, Transport};

/// How long a new backend's agent has to answer its first ping.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of each sandbox's /workspace and /tmp.
const WORKSPACE_BYTES: i64 = 256 << 20;
const TMP_BYTES: i64 = 64 << 20;

/// Label keys of backends.
pub mod keys {
    pub const OWNER: &str = "io.beephost.owner";
    pub const ID: &str = "io.beephost.backend-id";
    pub const NAME: &str = "io.beephost.backend-name";
    pub const TRANSPORT: &str = "io.beephost.transport";
    pub const ENDPOINT: &str = "io.beephost.endpoint";
    pub const VENV: &str = "io.beephost.venv";
    pub const TOKEN_SHA256: &str = "io.beephost.token-sha256";
    pub const CREATED: &str = "io.beephost.created";
    pub const IDLE_TTL: &str = "io.beephost.idle-ttl";
    pub const HARD_TTL: &str = "io.beephost.hard-ttl";
    pub const LIMITS: &str = "io.beephost.limits";
}

/// Opens the client-facing endpoint of a backend (a TCP port, a Unix socket, a gRPC port).
#[async_trait]
pub trait Endpoints: Send + Sync + 'static {
    /// Binds an endpoint; `previous` is the address an adopted backend had (re-opened as is).
    async fn open(
        &self,
        transport: Transport,
        name: &str,
        previous: Option<&str>,
        target: EndpointTarget,
    ) -> Result<OpenEndpoint, Error>;
}

/// What an endpoint serves: one backend of one registry, guarded by the backend's token.
#[derive(Clone)]
pub struct EndpointTarget {
    pub backends: Weak<Backends>,
    pub id: String,
    pub token_sha256: String,
    /// The transport this endpoint speaks (a metric label).
    pub transport: Transport,
}

impl EndpointTarget {
    /// Whether `presented` is this backend's token (compared in constant time).
    pub fn authorised(&self, presented: &str) -> bool {
        crate::api::constant_time_eq(
            sha256_hex(presented).as_bytes(),
            self.token_sha256.as_bytes(),
        )
    }

    /// Runs one operation on the backend.
    pub async fn call(&self, opts: CallOpts, op: Op) -> Result<Value, CallError> {
        let backends = self.backends.upgrade().ok_or(CallError::Gone)?;
        let via = match self.transport {
            Transport::Http => metrics::Transport::Http,
            Transport::Pipe => metrics::Transport::Pipe,
            Transport::Rpc => metrics::Transport::Rpc,
        };
        backends.call(&self.id, opts, op, via).await
    }
}

/// A bound endpoint; dropping it closes the listener.
pub struct OpenEndpoint {
    /// What clients use: `http://127.0.0.1:PORT`, a socket path, `grpc://127.0.0.1:PORT`.
    pub address: String,
    /// Keeps the server running; dropped to stop it.
    pub guard: Box<dyn Send + Sync>,
}

/// How a call through a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("backend `{0}` not found")]
    NotFound(String),
    #[error("the backend is gone")]
    Gone,
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A backend as users see it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: String,
    pub name: String,
    pub transport: Transport,
    pub endpoint: String,
    pub venv: Option<String>,
    pub limits: Limits,
    pub state: &'static str,
    pub created: String,
    pub idle_expires_at: String,
    pub expires_at: String,
    pub container: String,
    /// Only in the reply to the create call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A backend with its live figures.
#[derive(Debug, Clone, Serialize)]
pub struct BackendDetails {
    #[serde(flatten)]
    pub backend: BackendView,
    pub uptime_secs: u64,
    /// Calls running now.
    pub inflight: usize,
    /// The agent's sessions (id, created, last used), when it answered.
    pub sessions: Option<Value>,
    /// Memory the container uses, as the engine reports it.
    pub memory_bytes: Option<u64>,
}

/// Host-wide settings of backends.
#[derive(Debug, Clone)]
pub struct BackendsConfig {
    /// The owner label's value: this host and no other manages these containers.
    pub host_id: String,
    pub extra_labels: Labels,
    pub bounds: Bounds,
    pub oci_runtime: Option<String>,
}

/// One live backend.
pub(crate) struct Live {
    id: String,
    name: String,
    transport: Transport,
    venv: Option<String>,
    limits: Limits,
    created: SystemTime,
    idle_ttl: Duration,
    hard_ttl: Duration,
    container_id: String,
    address: String,
    client: AgentClient,
    last_active: Mutex<Instant>,
    inflight: AtomicUsize,
    endpoint: Mutex<Option<OpenEndpoint>>,
    stderr_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Live {
    fn touch(&self) {
        *self.last_active.lock().unwrap() = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_active.lock().unwrap().elapsed()
    }

    fn view(&self, token: Option<String>) -> BackendView {
        let idle_left = self.idle_ttl.saturating_sub(self.idle_for());
        BackendView {
            id: self.id.clone(),
            name: self.name.clone(),
            transport: self.transport,
            endpoint: self.address.clone(),
            venv: self.venv.clone(),
            limits: self.limits,
            state: if self.client.is_closed() {
                "gone"
            } else {
                "running"
            },
            created: rfc3339(self.created),
            idle_expires_at: rfc3339(SystemTime::now() + idle_left),
            expires_at: rfc3339(self.created + self.hard_ttl),
            container: self.container_id.chars().take(12).collect(),
            token,
        }
    }
}

/// The backend registry and lifecycle.
pub struct Backends {
    me: Weak<Backends>,
    engine: Arc<dyn ContainerRuntime>,
    endpoints: Arc<dyn Endpoints>,
    config: BackendsConfig,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Names being created, so two creates of one name cannot race.
    reserved: Mutex<std::collections::HashSet<String>>,
}

impl Backends {
    pub fn new(
        engine: Arc<dyn ContainerRuntime>,
        endpoints: Arc<dyn Endpoints>,
        config: BackendsConfig,
    ) -> Arc<Backends> {
        Arc::new_cyclic(|me| Backends {
            me: me.clone(),
            engine,
            endpoints,
            config,
            live: Mutex::new(HashMap::new()),
            reserved: Mutex::new(Default::default()),
        })
    }

    pub fn bounds(&self) -> &Bounds {
        &self.config.bounds
    }

    /// Labels that select this host's backends.
    fn owned_filter(&self) -> Labels {
        let mut filter = labels::base("backend", &self.config.extra_labels);
        filter.remove(labels::VERSION);
        filter.insert(keys::OWNER.into(), self.config.host_id.clone());
        filter
    }

    fn find(&self, id_or_name: &str) -> Option<Arc<Live>> {
        let live = self.live.lock().unwrap();
        live.get(id_or_name)
            .or_else(|| live.values().find(|b| b.name == id_or_name))
            .cloned()
    }

    pub fn list(&self) -> Vec<BackendView> {
        let mut views: Vec<BackendView> = self
            .live
            .lock()
            .unwrap()
            .values()
            .map(|b| b.view(None))
            .collect();
        views.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        views
    }

    pub fn get(&self, id_or_name: &str) -> Result<BackendView, Error> {
        self.find(id_or_name)
            .map(|b| b.view(None))
            .ok_or_else(|| not_found(id_or_name))
    }

    /// One backend with what it costs to ask: uptime, its sessions (from the agent) and its
    /// memory (from the engine).
    pub async fn details(&self, id_or_name: &str) -> Result<BackendDetails, Error> {
        let live = self.find(id_or_name).ok_or_else(|| not_found(id_or_name))?;
        let sessions = live
            .client
            .request(&CallOpts::default(), Op::SessionList)
            .await
            .ok()
            .and_then(|v| v.get("sessions").cloned());
        let memory_bytes = self
            .engine
            .container_memory(&live.container_id)
            .await
            .ok()
            .flatten();
        Ok(BackendDetails {
            uptime_secs: SystemTime::now()
                .duration_since(live.created)
                .unwrap_or_default()
                .as_secs(),
            inflight: live.inflight.load(Ordering::SeqCst),
            sessions,
            memory_bytes,
            backend: live.view(None),
        })
    }

    /// What a backend has said: the agent's diagnostics and the container's stderr.
    pub fn logs(&self, id_or_name: &str) -> Result<Value, Error> {
        let live = self.find(id_or_name).ok_or_else(|| not_found(id_or_name))?;
        let stderr: Vec<String> = live.stderr_tail.lock().unwrap().iter().cloned().collect();
        Ok(serde_json::json!({
            "events": live.client.events(),
            "stderr": stderr,
        }))
    }

    /// Restarts a backend's container: its sessions are gone, its endpoint and token stay.
    pub async fn restart(&self, id_or_name: &str) -> Result<BackendView, Error> {
        let live = self.find(id_or_name).ok_or_else(|| not_found(id_or_name))?;
        // Reserved, so reconciliation leaves it alone; out of the registry, so the stream
        // watcher does not take the restart for a death.
        if !self.reserved.lock().unwrap().insert(live.name.clone()) {
            return Err(Error::Conflict(format!(
                "backend `{}` is busy starting or restarting",
                live.name
            )));
        }
        self.live.lock().unwrap().remove(&live.id);
        let endpoint = live.endpoint.lock().unwrap().take();
        let restarted = async {
            self.engine
                .restart_container(&live.container_id, Duration::from_secs(5))
                .await?;
            let state = self
                .engine
                .container_state(&live.container_id)
                .await?
                .ok_or_else(|| not_found(id_or_name))?;
            self.adopt_running(&live.container_id, &state.labels, endpoint)
                .await
        }
        .await;
        self.reserved.lock().unwrap().remove(&live.name);
        if let Err(e) = restarted {
            tracing::error!(backend = %live.name, error = %e, "restart failed; removing the backend");
            let _ = self.engine.remove_container(&live.container_id).await;
            return Err(e);
        }
        tracing::info!(backend = %live.name, id = %live.id, "backend restarted");
        self.get(&live.id)
    }

    /// Names of venvs that live backends use (for the venvs service's in-use checks).
    pub fn venvs_in_use(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap()
            .values()
            .filter_map(|b| b.venv.clone())
            .collect()
    }

    /// Starts a backend from `image` and waits until its agent answers.
    pub async fn create(&self, spec: BackendSpec, image: &str) -> Result<BackendView, Error> {
        let id = format!("b{}", hex::encode(rand::random::<[u8; 5]>()));
        let name = spec.name.clone().unwrap_or_else(|| id.clone());
        {
            let taken = self.find(&name).is_some();
            let mut reserved = self.reserved.lock().unwrap();
            let fresh = !taken && reserved.insert(name.clone());
            metrics::set_backends(BackendState::Starting, reserved.len());
            if !fresh {
                return Err(Error::Conflict(format!(
                    "a backend named `{name}` already exists"
                )));
            }
        }
        let result = self.create_reserved(&id, &name, spec, image).await;
        {
            let mut reserved = self.reserved.lock().unwrap();
            reserved.remove(&name);
            metrics::set_backends(BackendState::Starting, reserved.len());
        }
        result
    }

    async fn create_reserved(
        &self,
        id: &str,
        name: &str,
        spec: BackendSpec,
        image: &str,
    ) -> Result<BackendView, Error> {
        let token = hex::encode(rand::random::<[u8; 24]>());
        let token_sha256 = sha256_hex(&token);
        let target = EndpointTarget {
            backends: self.me.clone(),
            id: id.to_string(),
            token_sha256: token_sha256.clone(),
            transport: spec.transport,
        };
        let endpoint = self
            .endpoints
            .open(spec.transport, name, None, target)
            .await?;
        let created = SystemTime::now();
        let mut labels = labels::base("backend", &self.config.extra_labels);
        labels.insert(keys::OWNER.into(), self.config.host_id.clone());
        labels.insert(keys::ID.into(), id.into());
        labels.insert(keys::NAME.into(), name.into());
        labels.insert(keys::TRANSPORT.into(), spec.transport.as_str().into());
        labels.insert(keys::ENDPOINT.into(), endpoint.address.clone());
        labels.insert(keys::TOKEN_SHA256.into(), token_sha256);
        labels.insert(keys::CREATED.into(), epoch(created).to_string());
        labels.insert(keys::IDLE_TTL.into(), spec.idle_ttl.as_secs().to_string());
        labels.insert(keys::HARD_TTL.into(), spec.hard_ttl.as_secs().to_string());
        labels.insert(
            keys::LIMITS.into(),
            serde_json::to_string(&spec.limits).unwrap_or_default(),
        );
        if let Some(venv) = &spec.venv {
            labels.insert(keys::VENV.into(), venv.clone());
        }
        let python = if spec.venv.is_some() {
            format!("{}/bin/python", crate::runtime::VENV_PATH)
        } else {
            "python3".to_string()
        };
        let sandbox = SandboxSpec {
            name: format!("beephost-{name}-{id}"),
            image: image.to_string(),
            args: vec![
                "--python".into(),
                python,
                "--workspace".into(),
                "/workspace".into(),
            ],
            labels,
            venv_volume: spec.venv.as_ref().map(|v| format!("beephost-venv-{v}")),
            memory_bytes: spec.limits.memory_bytes,
            nano_cpus: (spec.limits.cpus * 1e9) as i64,
            pids: spec.limits.pids,
            workspace_bytes: WORKSPACE_BYTES,
            tmp_bytes: TMP_BYTES,
            egress: spec.egress,
            oci_runtime: self.config.oci_runtime.clone(),
        };
        let created_at = Instant::now();
        let container_id = self.engine.create_sandbox(&sandbox).await?;
        metrics::backend_start_phase(StartPhase::Create, created_at.elapsed().as_secs_f64());
        let live = match self.connect(&container_id, true).await {
            Ok((client, tail)) => Live {
                id: id.to_string(),
                name: name.to_string(),
                transport: spec.transport,
                venv: spec.venv.clone(),
                limits: spec.limits,
                created,
                idle_ttl: spec.idle_ttl,
                hard_ttl: spec.hard_ttl,
                container_id: container_id.clone(),
                address: endpoint.address.clone(),
                client,
                last_active: Mutex::new(Instant::now()),
                inflight: AtomicUsize::new(0),
                endpoint: Mutex::new(Some(endpoint)),
                stderr_tail: tail,
            },
            Err(e) => {
                if let Err(rm) = self.engine.remove_container(&container_id).await {
                    tracing::warn!(container = %container_id, error = %rm, "could not remove a failed backend");
                }
                return Err(e);
            }
        };
        let live = Arc::new(live);
        self.register(live.clone());
        tracing::info!(backend = %live.name, id = %live.id, transport = live.transport.as_str(), endpoint = %live.address, "backend started");
        Ok(live.view(Some(token)))
    }

    /// Attaches (and starts, for a new container) and waits for the agent's handshake.
    async fn connect(
        &self,
        container_id: &str,
        start: bool,
    ) -> Result<(AgentClient, Arc<Mutex<std::collections::VecDeque<String>>>), Error> {
        let started_at = Instant::now();
        let attached = self.engine.attach(container_id).await?;
        if start {
            self.engine.start_container(container_id).await?;
            metrics::backend_start_phase(StartPhase::Start, started_at.elapsed().as_secs_f64());
        }
        let ready_at = Instant::now();
        let tail = attached.stderr_tail.clone();
        let client = AgentClient::start(
            attached.stdout,
            attached.stdin,
            crate::protocol::DEFAULT_MAX_FRAME,
        );
        let ready = async {
            client.handshake().await?;
            client.ping().await
        };
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(_)) => {
                if start {
                    metrics::backend_start_phase(
                        StartPhase::Ready,
                        ready_at.elapsed().as_secs_f64(),
                    );
                }
                Ok((client, tail))
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {}s", READY_TIMEOUT.as_secs()),
                };
                let state = self
                    .engine
                    .container_state(container_id)
                    .await
                    .ok()
                    .flatten();
                let exit = match state {
                    Some(s) if s.oom_killed => " (killed: out of memory)".to_string(),
                    Some(s) if !s.running => {
                        format!(" (exited with code {})", s.exit_code.unwrap_or(-1))
                    }
                    _ => String::new(),
                };
                let last_words: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                Err(Error::Unprocessable(format!(
                    "the backend's agent did not become ready: {why}{exit}{}",
                    if last_words.is_empty() {
                        String::new()
                    } else {
                        format!("; its last words: {}", last_words.join(" | "))
                    }
                )))
            }
        }
    }

    fn register(&self, live: Arc<Live>) {
        {
            let mut registry = self.live.lock().unwrap();
            registry.insert(live.id.clone(), live.clone());
            metrics::set_backends(BackendState::Running, registry.len());
        }
        let me = self.me.clone();
        // Watch the attach stream: when it ends, find out why and clean up.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(backends) = me.upgrade() else { return };
                if !backends.live.lock().unwrap().contains_key(&live.id) {
                    return;
                }
                if live.client.is_closed() {
                    backends.lost(&live).await;
                    return;
                }
            }
        });
    }

    /// The attach stream of `live` ended: the container died or the stream broke.
    async fn lost(&self, live: &Arc<Live>) {
        let state = self.engine.container_state(&live.container_id).await;
        let tail: Vec<String> = live.stderr_tail.lock().unwrap().iter().cloned().collect();
        match state {
            Ok(Some(s)) if s.running => {
                tracing::warn!(backend = %live.name, "attach stream broke while the container runs; re-attaching");
                self.live.lock().unwrap().remove(&live.id);
                let endpoint = live.endpoint.lock().unwrap().take();
                if let Err(e) = self
                    .adopt_running(&live.container_id, &s.labels, endpoint)
                    .await
                {
                    tracing::error!(backend = %live.name, error = %e, "could not re-attach; removing the backend");
                    let _ = self.engine.remove_container(&live.container_id).await;
                }
            }
            other => {
                let how = match other {
                    Ok(Some(s)) if s.oom_killed => {
                        "was killed for using too much memory".to_string()
                    }
                    Ok(Some(s)) => format!("exited with code {}", s.exit_code.unwrap_or(-1)),
                    Ok(None) => "was removed".to_string(),
                    Err(e) => format!("cannot be inspected: {e}"),
                };
                tracing::warn!(backend = %live.name, id = %live.id, last_words = %tail.join(" | "), "backend {how}");
                self.forget(&live.id).await;
            }
        }
    }

    /// Drops a backend from the registry, closes its endpoint and removes its container.
    async fn forget(&self, id: &str) -> Option<Arc<Live>> {
        let live = {
            let mut registry = self.live.lock().unwrap();
            let live = registry.remove(id);
            metrics::set_backends(BackendState::Running, registry.len());
            live?
        };
        let endpoint = live.endpoint.lock().unwrap().take();
        drop(endpoint);
        if let Err(e) = self.engine.remove_container(&live.container_id).await {
            tracing::warn!(backend = %live.name, error = %e, "could not remove the container");
        }
        Some(live)
    }

    /// Stops and removes a backend.
    pub async fn delete(&self, id_or_name: &str) -> Result<BackendView, Error> {
        let live = self.find(id_or_name).ok_or_else(|| not_found(id_or_name))?;
        let view = live.view(None);
        self.forget(&live.id).await;
        tracing::info!(backend = %live.name, id = %live.id, "backend stopped");
        Ok(BackendView {
            state: "stopped",
            ..view
        })
    }

    /// Stops every backend (used by `stop --all` and by venv deletion with force).
    pub async fn delete_where(&self, pred: impl Fn(&BackendView) -> bool) -> Vec<BackendView> {
        let ids: Vec<String> = self
            .list()
            .into_iter()
            .filter(|v| pred(v))
            .map(|v| v.id)
            .collect();
        let mut stopped = Vec::new();
        for id in ids {
            if let Ok(v) = self.delete(&id).await {
                stopped.push(v);
            }
        }
        stopped
    }

    /// Runs one operation on a backend; a running call counts as activity. `via` is the
    /// transport the call came through (a metric label).
    #[tracing::instrument(
        name = "backends.call",
        skip_all,
        fields(operation = "backends.call", backend = %id_or_name, op = op.name(), venv, transport = via.label(), outcome)
    )]
    pub async fn call(
        &self,
        id_or_name: &str,
        mut opts: CallOpts,
        op: Op,
        via: metrics::Transport,
    ) -> Result<Value, CallError> {
        let live = self
            .find(id_or_name)
            .ok_or_else(|| CallError::NotFound(id_or_name.to_string()))?;
        let span = tracing::Span::current();
        span.record("venv", live.venv.as_deref().unwrap_or(""));
        if opts.timeout.is_none() && live.limits.timeout_secs > 0.0 {
            opts.timeout = Some(Duration::from_secs_f64(live.limits.timeout_secs));
        }
        let counted = op.is_worker_op();
        let name = op.name();
        live.touch();
        live.inflight.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let agent_span = tracing::info_span!(
            "agent.request",
            otel.kind = "client",
            op = name,
            session = opts.session.as_deref().unwrap_or(""),
            agent.duration_ms = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(live.client.request(&opts, op), agent_span.clone())
                .await;
        let elapsed = started.elapsed().as_secs_f64();
        live.inflight.fetch_sub(1, Ordering::SeqCst);
        live.touch();
        if let Some(ms) = result
            .as_ref()
            .ok()
            .and_then(|v| v.get("duration_ms"))
            .and_then(Value::as_f64)
        {
            agent_span.record("agent.duration_ms", ms);
        }
        let outcome = outcome_of(&result);
        span.record("outcome", outcome.label());
        if counted {
            metrics::execution(outcome, via, elapsed);
        }
        Ok(result?)
    }

    /// Stops backends past their idle or hard deadline. Returns how many it stopped.
    pub async fn reap(&self) -> usize {
        let now = SystemTime::now();
        let expired: Vec<(String, &'static str)> = self
            .live
            .lock()
            .unwrap()
            .values()
            .filter_map(|b| {
                if now.duration_since(b.created).unwrap_or_default() >= b.hard_ttl {
                    Some((b.id.clone(), "hard ttl"))
                } else if b.inflight.load(Ordering::SeqCst) == 0 && b.idle_for() >= b.idle_ttl {
                    Some((b.id.clone(), "idle ttl"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in &expired {
            if let Some(live) = self.forget(id).await {
                tracing::info!(backend = %live.name, id = %live.id, "backend stopped: {why} expired");
            }
        }
        expired.len()
    }
}

/// How a call ended, for metrics and spans.
fn outcome_of(result: &Result<Value, ClientError>) -> ExecOutcome {
    match result {
        Ok(v) => match v
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
        {
            None => ExecOutcome::Ok,
            Some("Timeout") => ExecOutcome::Timeout,
            Some("WorkerDied") => ExecOutcome::WorkerDied,
            Some(_) => ExecOutcome::Error,
        },
        Err(ClientError::Timeout { .. }) => ExecOutcome::Timeout,
        Err(ClientError::WorkerDied { .. }) => ExecOutcome::WorkerDied,
        Err(ClientError::BackendGone { .. }) => ExecOutcome::BackendGone,
        Err(_) => ExecOutcome::Error,
    }
}

fn not_found(id_or_name: &str) -> Error {
    Error::NotFound {
        what: "backend",
        name: id_or_name.to_string(),
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
