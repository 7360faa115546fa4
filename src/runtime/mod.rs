//! The container engine seam: the narrow [`ContainerRuntime`] trait the orchestrator drives.
//!
//! Only this module knows which engine runs the sandboxes. [`docker`] talks to a Docker engine
//! through bollard (the one place that imports it); [`fake`] records calls for unit tests of
//! the orchestration logic. A Kubernetes implementation would sit beside them.

pub mod docker;
pub mod fake;

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

/// Labels as the engine stores them.
pub type Labels = HashMap<String, String>;

/// One update from a long engine operation (a pull's layer, a build step).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineProgress {
    /// The layer or step this line is about, if any.
    pub id: Option<String>,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// Where engine progress goes; the orchestrator forwards it to the client.
pub type ProgressFn<'a> = &'a (dyn Fn(EngineProgress) + Send + Sync);

/// An image as the orchestrator needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: Labels,
    pub size: u64,
    /// RFC 3339 creation time.
    pub created: String,
}

/// A short-lived container that runs one command to completion (probes, checks).
#[derive(Debug, Clone, Default)]
pub struct RunOnce {
    pub image: String,
    pub cmd: Vec<String>,
    /// `uid[:gid]` or a user name; the image's default when `None`.
    pub user: Option<String>,
    pub labels: Labels,
    /// Seconds before the container is killed.
    pub timeout_secs: u64,
}

/// What a [`RunOnce`] printed and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// A container as the orchestrator needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the engine's leading `/`.
    pub name: String,
    pub labels: Labels,
    /// `running`, `exited`, `created`, …
    pub state: String,
    /// Seconds since the epoch.
    pub created: i64,
}

/// A sandbox container: the agent, hardened as DESIGN.md's "A sandbox container, by default".
/// There is deliberately no field for binds, devices, privileges, ports or another working
/// directory: nothing can ask for them.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub name: String,
    pub image: String,
    /// Arguments after the image's entrypoint (`beephost agent`).
    pub args: Vec<String>,
    pub labels: Labels,
    /// A volume mounted read-only at [`VENV_PATH`].
    pub venv_volume: Option<String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    /// Size of the /workspace tmpfs.
    pub workspace_bytes: i64,
    /// Size of the /tmp tmpfs.
    pub tmp_bytes: i64,
    /// Bridge networking instead of none (egress explicitly enabled).
    pub egress: bool,
    /// An OCI runtime such as `runsc` (gVisor); the engine's default when `None`.
    pub oci_runtime: Option<String>,
}

/// Where a venv volume is mounted in sandboxes and build jobs (venv scripts bake their path).
pub const VENV_PATH: &str = "/venv";

/// A live attach stream: the agent's stdout to read frames from, its stdin to write them to.
pub struct Attached {
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub stdin: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    /// The last lines the container wrote to stderr, for "the agent's last words".
    pub stderr_tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// A container's runtime state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub labels: Labels,
}

/// A named volume as the orchestrator needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: Labels,
    /// RFC 3339 creation time, as the engine reports it.
    pub created: String,
}

/// A named volume mounted into a [`Job`].
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMount {
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// A short-lived container that runs one command to completion with its output streamed:
/// venv builds. Unlike [`RunOnce`] it may mount volumes, read-only host paths, and get a
/// network. Hardened like every container the host makes: no capabilities, no new privileges,
/// read-only root filesystem with a tmpfs /tmp, memory and pids limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    /// The container's name; the engine refuses a second container of the same name, which
    /// makes it a lock across hosts.
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `uid[:gid]`; the image's default when `None`.
    pub user: Option<String>,
    pub labels: Labels,
    pub volumes: Vec<VolumeMount>,
    /// Host paths mounted read-only: `(host path, target)`.
    pub read_only_binds: Vec<(std::path::PathBuf, String)>,
    /// The default bridge network when true, none otherwise.
    pub network: bool,
    pub memory_bytes: i64,
    pub pids: i64,
    /// Seconds before the container is killed.
    pub timeout_secs: u64,
}

/// Where a [`Job`]'s output goes, one line (stdout or stderr) at a time.
pub type LineFn<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What the engine says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

/// Failures of the engine seam.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The engine cannot be reached at all (no socket, refused, timed out).
    #[error("{0}")]
    Unavailable(String),
    /// The engine says the object does not exist.
    #[error("{what} `{name}` not found in the container engine")]
    NotFound { what: &'static str, name: String },
    /// The engine refused or failed an operation.
    #[error("{op}: {message}")]
    Engine { op: &'static str, message: String },
}

impl Error {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operations beephost needs from a container engine. Kept narrow on purpose: each method
/// is one thing the orchestrator asks for, in the orchestrator's words.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Checks the engine answers; used by readiness.
    async fn ping(&self) -> Result<EngineInfo>;
    /// Images carrying every one of `labels`.
    async fn list_images(&self, labels: &Labels) -> Result<Vec<ImageInfo>>;
    /// An image by id or reference, `None` when absent.
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>>;
    /// Pulls `reference` from its registry.
    async fn pull_image(&self, reference: &str, progress: ProgressFn<'_>) -> Result<ImageInfo>;
    /// Imports a root filesystem tarball (tar or tar.gz) as an image tagged `tag`.
    async fn import_rootfs(
        &self,
        path: &Path,
        tag: &str,
        labels: &Labels,
        progress: ProgressFn<'_>,
    ) -> Result<ImageInfo>;
    /// Builds an image from an in-memory tar context holding a `Dockerfile`.
    async fn build_image(
        &self,
        context: Bytes,
        tag: &str,
        labels: &Labels,
        progress: ProgressFn<'_>,
    ) -> Result<ImageInfo>;
    /// Runs a command in a fresh, network-less container and removes it, whatever happens.
    async fn run_once(&self, spec: &RunOnce) -> Result<RunOutput>;
    /// Removes an image (and its tags); absent images are not an error.
    async fn remove_image(&self, id: &str) -> Result<()>;
    /// Containers (running or not) carrying every one of `labels`.
    async fn list_containers(&self, labels: &Labels) -> Result<Vec<ContainerInfo>>;
    /// Force-removes a container and its anonymous volumes; absent ones are not an error.
    async fn remove_container(&self, id: &str) -> Result<()>;
    /// Creates (does not start) a sandbox container; returns its id.
    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<String>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<()>;
    /// Attaches to a container's stdin/stdout/stderr (no TTY, stdin kept open).
    async fn attach(&self, id: &str) -> Result<Attached>;
    /// A container's state, `None` when it does not exist.
    async fn container_state(&self, id: &str) -> Result<Option<ContainerState>>;
    /// Stops (SIGTERM, then SIGKILL after `grace`) and starts a container again.
    async fn restart_container(&self, id: &str, grace: std::time::Duration) -> Result<()>;
    /// Memory a running container uses now, in bytes (`None` when it is not running).
    async fn container_memory(&self, id: &str) -> Result<Option<u64>>;
    /// Creates a named volume carrying `labels`.
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<VolumeInfo>;
    /// A volume by name, `None` when absent.
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>>;
    /// Volumes carrying every one of `labels`.
    async fn list_volumes(&self, labels: &Labels) -> Result<Vec<VolumeInfo>>;
    /// Removes a volume; absent ones are not an error, one in use by a container is.
    async fn remove_volume(&self, name: &str) -> Result<()>;
    /// Runs a [`Job`] to completion, passing each output line to `output`, and removes its
    /// container whatever happens (timeout included).
    async fn run_job(&self, job: &Job, output: LineFn<'_>) -> Result<RunOutput>;
}
