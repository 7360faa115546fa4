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
}
