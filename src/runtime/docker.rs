//! [`ContainerRuntime`] over a Docker engine, through bollard. The only module that imports it.
//!
//! The engine is found the way the docker CLI finds it (DOCKER_HOST or the local socket) and the
//! API version is negotiated on first use, since the engines here answer API 1.41, older than
//! bollard's default. A host started without an engine keeps serving: every call answers
//! [`Error::Unavailable`] until the engine is back, and negotiation is retried.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder,
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use super::{
    Attached, ContainerInfo, ContainerRuntime, ContainerState, EngineInfo, EngineProgress, Error,
    ImageInfo, Labels, ProgressFn, Result, RunOnce, RunOutput, SandboxSpec, VENV_PATH,
};

/// How long negotiating with (or pinging) the engine may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a sandbox's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;
/// Open files per sandbox process.
const SANDBOX_NOFILE: i64 = 4096;

/// Cap on what a [`RunOnce`] container's output we keep.
const RUN_OUTPUT_CAP: usize = 64 * 1024;

/// A Docker engine, connected lazily.
pub struct DockerRuntime {
    /// The negotiated client; `None` until the engine first answers.
    client: Mutex<Option<Docker>>,
}

impl DockerRuntime {
    /// A runtime for the engine DOCKER_HOST (or the local socket) names. Does not connect.
    pub fn from_env() -> Self {
        DockerRuntime {
            client: Mutex::new(None),
        }
    }

    /// The negotiated client, connecting first if needed.
    async fn client(&self) -> Result<Docker> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref() {
            return Ok(client.clone());
        }
        let docker = Docker::connect_with_defaults()
            .map_err(|e| Error::Unavailable(format!("cannot use the docker engine: {e}")))?
            .with_timeout(Duration::from_secs(3600));
        let negotiated = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| Error::Unavailable("the docker engine did not answer within 5s".into()))?
            .map_err(|e| map_err("negotiate_version", e))?;
        *guard = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// Forgets the client after a connection failure, so the next call negotiates again.
    async fn reset_on_unavailable<T>(&self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(Error::Unavailable(_))) {
            *self.client.lock().await = None;
        }
        result
    }

    async fn image_info(&self, docker: &Docker, reference: &str) -> Result<Option<ImageInfo>> {
        match docker.inspect_image(reference).await {
            Ok(i) => {
                let config = i.config.unwrap_or_default();
                Ok(Some(ImageInfo {
                    id: i.id.unwrap_or_default(),
                    tags: i.repo_tags.unwrap_or_default(),
                    labels: config.labels.unwrap_or_default(),
                    size: i.size.unwrap_or(0).max(0) as u64,
                    created: i.created.unwrap_or_default(),
                }))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(map_err("inspect_image", e)),
        }
    }

    async fn must_inspect(&self, docker: &Docker, reference: &str) -> Result<ImageInfo> {
        self.image_info(docker, reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "image",
                name: reference.to_string(),
            })
    }

    async fn run_in(&self, docker: &Docker, name: &str, spec: &RunOnce) -> Result<RunOutput> {
        docker
            .start_container(name, None)
            .await
            .map_err(|e| map_err("start_container", e))?;
        let wait = wait_exit(docker, name);
        let exit_code = tokio::time::timeout(Duration::from_secs(spec.timeout_secs.max(1)), wait)
            .await
            .map_err(|_| Error::Engine {
                op: "run_once",
                message: format!(
                    "`{}` did not finish in {}s",
                    spec.cmd.join(" "),
                    spec.timeout_secs
                ),
            })??;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut logs = docker.logs(name, Some(opts));
        while let Some(item) = logs.next().await {
            match item.map_err(|e| map_err("logs", e))? {
                bollard::container::LogOutput::StdOut { message } => {
                    push_capped(&mut stdout, &message)
                }
                bollard::container::LogOutput::StdErr { message } => {
                    push_capped(&mut stderr, &message)
                }
                _ => {}
            }
        }
        Ok(RunOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

/// Waits for a container to exit and returns its exit code (non-zero codes are not errors).
async fn wait_exit(docker: &Docker, name: &str) -> Result<i64> {
    let mut stream = docker.wait_container(name, None);
    match stream.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(map_err("wait_container", e)),
        None => Err(Error::Engine {
            op: "wait_container",
            message: "wait stream ended without a status".into(),
        }),
    }
}

fn push_capped(buf: &mut Vec<u8>, bytes: &[u8]) {
    let room = RUN_OUTPUT_CAP.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Classifies a bollard error: transport failures mean the engine is unavailable. Every failed
/// call passes here, so it is also where Docker API errors are counted (by operation).
fn map_err(op: &'static str, e: BollardError) -> Error {
    crate::metrics::docker_error(op);
    unavailable_or(op, e)
}

fn unavailable_or(op: &'static str, e: BollardError) -> Error {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::NotFound {
            what: "object",
            name: message,
        },
        BollardError::DockerResponseServerError { message, .. } => Error::Engine {
            op,
            message: message.trim().to_string(),
        },
        BollardError::DockerStreamError { error } => Error::Engine {
            op,
            message: error.trim().to_string(),
        },
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError
        | BollardError::HyperLegacyError { .. } => {
            Error::Unavailable(format!("the docker engine is unreachable ({op}): {e}"))
        }
        other => Error::Engine {
            op,
            message: other.to_string(),
        },
    }
}

fn label_filters(labels: &Labels) -> std::collections::HashMap<String, Vec<String>> {
    let mut values: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    values.sort();
    std::collections::HashMap::from([("label".to_string(), values)])
}

fn epoch_to_rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn progress_of(
    id: Option<String>,
    status: Option<String>,
    detail: Option<bollard::models::ProgressDetail>,
) -> Option<EngineProgress> {
    let status = status?;
    let detail = detail.unwrap_or_default();
    Some(EngineProgress {
        id: id.filter(|s| !s.is_empty()),
        status: status.trim_end().to_string(),
        current: detail.current.map(|c| c.max(0) as u64),
        total: detail.total.filter(|t| *t > 0).map(|t| t as u64),
    })
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    #[tracing::instrument(name = "docker.ping", skip_all, fields(otel.kind = "client", docker.operation = "ping"))]
    async fn ping(&self) -> Result<EngineInfo> {
        let result = async {
            let docker = self.client().await?;
            let v = tokio::time::timeout(CONNECT_TIMEOUT, docker.version())
                .await
                .map_err(|_| {
                    Error::Unavailable("the docker engine did not answer within 5s".into())
                })?
                .map_err(|e| map_err("version", e))?;
            Ok(EngineInfo {
                version: v.version.unwrap_or_default(),
                api_version: v.api_version.unwrap_or_default(),
            })
        }
        .await;
        self.reset_on_unavailable(result).await
    }

    #[tracing::instrument(name = "docker.list_images", skip_all, fields(otel.kind = "client", docker.operation = "list_images"))]
    async fn list_images(&self, labels: &Labels) -> Result<Vec<ImageInfo>> {
        let docker = self.client().await?;
        let opts = ListImagesOptionsBuilder::new()
            .filters(&label_filters(labels))
            .build();
        let result = docker
            .list_images(Some(opts))
            .await
            .map_err(|e| map_err("list_images", e));
        let images = self.reset_on_unavailable(result).await?;
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                labels: i.labels,
                size: i.size.max(0) as u64,
                created: epoch_to_rfc3339(i.created),
            })
            .collect())
    }

    #[tracing::instrument(name = "docker.inspect_image", skip_all, fields(otel.kind = "client", docker.operation = "inspect_image"))]
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let docker = self.client().await?;
        let result = self.image_info(&docker, reference).await;
        self.reset_on_unavailable(result).await
    }

    #[tracing::instrument(name = "docker.pull_image", skip_all, fields(otel.kind = "client", docker.operation = "pull_image"))]
    async fn pull_image(&self, reference: &str, progress: ProgressFn<'_>) -> Result<ImageInfo> {
        let docker = self.client().await?;
        let opts = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let mut stream = docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("pull_image", e))?;
            if let Some(detail) = info.error_detail {
                return Err(Error::Engine {
                    op: "pull_image",
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let Some(p) = progress_of(info.id, info.status, info.progress_detail) {
                progress(p);
            }
        }
        self.must_inspect(&docker, reference).await
    }

    #[tracing::instrument(name = "docker.import_rootfs", skip_all, fields(otel.kind = "client", docker.operation = "import_rootfs"))]
    async fn import_rootfs(
        &self,
        path: &Path,
        tag: &str,
        labels: &Labels,
        progress: ProgressFn<'_>,
    ) -> Result<ImageInfo> {
        let docker = self.client().await?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Engine {
                op: "import_rootfs",
                message: format!("cannot open {}: {e}", path.display()),
            })?;
        let total = file.metadata().await.map(|m| m.len()).ok();
        let mut sent = 0u64;
        let mut last_report = SystemTime::UNIX_EPOCH;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        // Progress is reported as the engine consumes the upload.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let body = body.inspect_ok(move |chunk| {
            let _ = tx.send(chunk.len() as u64);
        });
        let (repo, tag_part) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        let mut changes: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("LABEL {k}={}", serde_json::Value::String(v.clone())))
            .collect();
        changes.sort();
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag_part)
            .changes(changes)
            .build();
        let mut stream =
            docker.create_image(Some(opts), Some(bollard::body_try_stream(body)), None);
        let mut image_id = None;
        loop {
            tokio::select! {
                Some(n) = rx.recv() => {
                    sent += n;
                    let now = SystemTime::now();
                    if now.duration_since(last_report).unwrap_or_default() > Duration::from_millis(200) {
                        last_report = now;
                        progress(EngineProgress { id: None, status: "uploading".into(), current: Some(sent), total });
                    }
                }
                item = stream.next() => {
                    let Some(item) = item else { break };
                    let info = item.map_err(|e| map_err("import_rootfs", e))?;
                    if let Some(detail) = info.error_detail {
                        return Err(Error::Engine { op: "import_rootfs", message: detail.message.unwrap_or_default() });
                    }
                    // The engine's last status line is the new image's id.
                    if let Some(status) = info.status {
                        if status.starts_with("sha256:") {
                            image_id = Some(status.trim().to_string());
                        }
                    }
                }
            }
        }
        progress(EngineProgress {
            id: None,
            status: "imported".into(),
            current: total,
            total,
        });
        let reference = image_id.unwrap_or_else(|| tag.to_string());
        self.must_inspect(&docker, &reference).await
    }

    #[tracing::instrument(name = "docker.build_image", skip_all, fields(otel.kind = "client", docker.operation = "build_image"))]
    async fn build_image(
        &self,
        context: Bytes,
        tag: &str,
        labels: &Labels,
        progress: ProgressFn<'_>,
    ) -> Result<ImageInfo> {
        let docker = self.client().await?;
        let opts = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(labels)
            .build();
        let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context)));
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("build_image", e))?;
            if let Some(detail) = info.error_detail {
                return Err(Error::Engine {
                    op: "build_image",
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let Some(aux) = info.aux.and_then(|a| a.id) {
                image_id = Some(aux);
            }
            if let Some(line) = info.stream {
                let line = line.trim();
                if !line.is_empty() {
                    progress(EngineProgress {
                        id: None,
                        status: line.to_string(),
                        current: None,
                        total: None,
                    });
                }
            }
        }
        let reference = image_id.unwrap_or_else(|| tag.to_string());
        self.must_inspect(&docker, &reference).await
    }

    #[tracing::instrument(name = "docker.run_once", skip_all, fields(otel.kind = "client", docker.operation = "run_once"))]
    async fn run_once(&self, spec: &RunOnce) -> Result<RunOutput> {
        let docker = self.client().await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            entrypoint: Some(vec![]),
            user: spec.user.clone(),
            labels: Some(spec.labels.clone()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(512 * 1024 * 1024),
                pids_limit: Some(256),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("beephost-run-{}", hex::encode(rand::random::<[u8; 6]>()));
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err("create_container", e))?;
        let result = self.run_in(&docker, &name, spec).await;
        let rm = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = docker.remove_container(&name, Some(rm)).await {
            tracing::warn!(container = %name, error = %e, "could not remove a probe container");
        }
        result
    }

    #[tracing::instrument(name = "docker.remove_image", skip_all, fields(otel.kind = "client", docker.operation = "remove_image"))]
    async fn remove_image(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        let opts = RemoveImageOptionsBuilder::new().force(true).build();
        match docker.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err("remove_image", e)),
        }
    }

    #[tracing::instrument(name = "docker.list_containers", skip_all, fields(otel.kind = "client", docker.operation = "list_containers"))]
    async fn list_containers(&self, labels: &Labels) -> Result<Vec<ContainerInfo>> {
        let docker = self.client().await?;
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filters(labels))
            .build();
        let result = docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_err("list_containers", e));
        let containers = self.reset_on_unavailable(result).await?;
        Ok(containers
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                created: c.created.unwrap_or(0),
            })
            .collect())
    }

    #[tracing::instrument(name = "docker.remove_container", skip_all, fields(otel.kind = "client", docker.operation = "remove_container"))]
    async fn remove_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err("remove_container", e)),
        }
    }

    #[tracing::instrument(name = "docker.create_sandbox", skip_all, fields(otel.kind = "client", docker.operation = "create_sandbox"))]
    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        let docker = self.client().await?;
        let uid = crate::orchestrator::runtimes::SANDBOX_UID;
        let tmpfs = std::collections::HashMap::from([
            (
                "/tmp".to_string(),
                format!("rw,nosuid,nodev,size={},mode=1777", spec.tmp_bytes),
            ),
            (
                "/workspace".to_string(),
                format!(
                    "rw,nosuid,nodev,size={},uid={uid},gid={uid},mode=0700",
                    spec.workspace_bytes
                ),
            ),
        ]);
        let mounts = spec.venv_volume.as_ref().map(|volume| {
            vec![Mount {
                target: Some(VENV_PATH.to_string()),
                source: Some(volume.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(true),
                ..Default::default()
            }]
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.args.clone()),
            user: Some(format!("{uid}:{uid}")),
            working_dir: Some("/workspace".into()),
            labels: Some(spec.labels.clone()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(false),
            tty: Some(false),
            network_disabled: Some(!spec.egress),
            host_config: Some(HostConfig {
                network_mode: Some(if spec.egress { "bridge" } else { "none" }.into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(tmpfs),
                mounts,
                memory: Some(spec.memory_bytes),
                memory_swap: Some(spec.memory_bytes),
                nano_cpus: Some(spec.nano_cpus),
                pids_limit: Some(spec.pids),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(SANDBOX_NOFILE),
                    hard: Some(SANDBOX_NOFILE),
                }]),
                init: Some(true),
                privileged: Some(false),
                publish_all_ports: Some(false),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                runtime: spec.oci_runtime.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err("create_container", e))?;
        Ok(created.id)
    }

    #[tracing::instrument(name = "docker.start_container", skip_all, fields(otel.kind = "client", docker.operation = "start_container"))]
    async fn start_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        docker
            .start_container(id, None)
            .await
            .map_err(|e| map_err("start_container", e))
    }

    #[tracing::instrument(name = "docker.attach", skip_all, fields(otel.kind = "client", docker.operation = "attach"))]
    async fn attach(&self, id: &str) -> Result<Attached> {
        let docker = self.client().await?;
        let opts = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| map_err("attach_container", e))?;
        let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let sink = tail.clone();
        let container = id.chars().take(12).collect::<String>();
        // Frames come on stdout; stderr is the agent's (and Python's) last resort, kept as a tail.
        let stdout = attached.output.filter_map(move |item| {
            let out = match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => Some(Ok(message)),
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    let text = String::from_utf8_lossy(&message);
                    let mut tail = sink.lock().unwrap_or_else(|p| p.into_inner());
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        tracing::debug!(container = %container, "sandbox stderr: {line}");
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.to_string());
                    }
                    None
                }
                Ok(_) => None,
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            };
            std::future::ready(out)
        });
        Ok(Attached {
            stdout: Box::new(tokio_util::io::StreamReader::new(Box::pin(stdout))),
            stdin: Box::new(attached.input),
            stderr_tail: tail,
        })
    }

    #[tracing::instrument(name = "docker.container_state", skip_all, fields(otel.kind = "client", docker.operation = "container_state"))]
    async fn container_state(&self, id: &str) -> Result<Option<ContainerState>> {
        let docker = self.client().await?;
        match docker.inspect_container(id, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some(ContainerState {
                    running: state.running.unwrap_or(false),
                    exit_code: state.exit_code,
                    oom_killed: state.oom_killed.unwrap_or(false),
                    labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
                }))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(map_err("inspect_container", e)),
        }
    }

    #[tracing::instrument(name = "docker.create_volume", skip_all, fields(otel.kind = "client", docker.operation = "create_volume"))]
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<super::VolumeInfo> {
        let docker = self.client().await?;
        let req = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let v = docker
            .create_volume(req)
            .await
            .map_err(|e| map_err("create_volume", e))?;
        Ok(volume_info(v))
    }

    #[tracing::instrument(name = "docker.inspect_volume", skip_all, fields(otel.kind = "client", docker.operation = "inspect_volume"))]
    async fn inspect_volume(&self, name: &str) -> Result<Option<super::VolumeInfo>> {
        let docker = self.client().await?;
        match docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(volume_info(v))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(map_err("inspect_volume", e)),
        }
    }

    #[tracing::instrument(name = "docker.list_volumes", skip_all, fields(otel.kind = "client", docker.operation = "list_volumes"))]
    async fn list_volumes(&self, labels: &Labels) -> Result<Vec<super::VolumeInfo>> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::ListVolumesOptionsBuilder::new()
            .filters(&label_filters(labels))
            .build();
        let result = docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| map_err("list_volumes", e));
        let listed = self.reset_on_unavailable(result).await?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_info)
            .collect())
    }

    #[tracing::instrument(name = "docker.remove_volume", skip_all, fields(otel.kind = "client", docker.operation = "remove_volume"))]
    async fn remove_volume(&self, name: &str) -> Result<()> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::RemoveVolumeOptionsBuilder::new().build();
        match docker.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err("remove_volume", e)),
        }
    }

    #[tracing::instrument(name = "docker.run_job", skip_all, fields(otel.kind = "client", docker.operation = "run_job"))]
    async fn run_job(&self, job: &super::Job, output: super::LineFn<'_>) -> Result<RunOutput> {
        let docker = self.client().await?;
        let mut mounts: Vec<Mount> = job
            .volumes
            .iter()
            .map(|v| Mount {
                target: Some(v.target.clone()),
                source: Some(v.volume.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(v.read_only),
                ..Default::default()
            })
            .collect();
        mounts.extend(job.read_only_binds.iter().map(|(host, target)| Mount {
            target: Some(target.clone()),
            source: Some(host.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }));
        let network = if job.network { "bridge" } else { "none" };
        let body = ContainerCreateBody {
            image: Some(job.image.clone()),
            cmd: Some(job.cmd.clone()),
            entrypoint: Some(vec![]),
            user: job.user.clone(),
            env: Some(job.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(job.labels.clone()),
            network_disabled: Some(!job.network),
            host_config: Some(HostConfig {
                network_mode: Some(network.into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(std::collections::HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,size=512m".to_string(),
                )])),
                memory: Some(job.memory_bytes),
                memory_swap: Some(job.memory_bytes),
                pids_limit: Some(job.pids),
                init: Some(true),
                mounts: Some(mounts),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&job.name).build();
        docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err("create_container", e))?;
        let result = self.follow_job(&docker, job, output).await;
        let rm = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = docker.remove_container(&job.name, Some(rm)).await {
            tracing::warn!(container = %job.name, error = %e, "could not remove a job container");
        }
        result
    }

    #[tracing::instrument(name = "docker.restart_container", skip_all, fields(otel.kind = "client", docker.operation = "restart_container"))]
    async fn restart_container(&self, id: &str, grace: Duration) -> Result<()> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(grace.as_secs() as i32)
            .build();
        docker
            .restart_container(id, Some(opts))
            .await
            .map_err(|e| map_err("restart_container", e))
    }

    #[tracing::instrument(name = "docker.container_memory", skip_all, fields(otel.kind = "client", docker.operation = "container_memory"))]
    async fn container_memory(&self, id: &str) -> Result<Option<u64>> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = docker.stats(id, Some(opts));
        match stats.next().await {
            Some(Ok(s)) => Ok(s.memory_stats.and_then(|m| m.usage)),
            Some(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }))
            | None => Ok(None),
            Some(Err(e)) => Err(map_err("stats", e)),
        }
    }
}

fn volume_info(v: bollard::models::Volume) -> super::VolumeInfo {
    super::VolumeInfo {
        name: v.name,
        labels: v.labels,
        created: v.created_at.map(|d| d.to_string()).unwrap_or_default(),
    }
}

impl DockerRuntime {
    /// Starts a created job container, streams its output by line until it exits, and
    /// returns its exit code and the (capped) output; kills it after the job's timeout.
    async fn follow_job(
        &self,
        docker: &Docker,
        job: &super::Job,
        output: super::LineFn<'_>,
    ) -> Result<RunOutput> {
        docker
            .start_container(&job.name, None)
            .await
            .map_err(|e| map_err("start_container", e))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let follow = async {
            let opts = LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .follow(true)
                .build();
            let mut logs = docker.logs(&job.name, Some(opts));
            let (mut out_line, mut err_line) = (Vec::new(), Vec::new());
            while let Some(item) = logs.next().await {
                let (buf, line, message) = match item.map_err(|e| map_err("logs", e))? {
                    bollard::container::LogOutput::StdOut { message } => {
                        (&mut stdout, &mut out_line, message)
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        (&mut stderr, &mut err_line, message)
                    }
                    _ => continue,
                };
                push_capped(buf, &message);
                for b in message.iter() {
                    if *b == b'\n' {
                        output(String::from_utf8_lossy(line).trim_end());
                        line.clear();
                    } else {
                        line.push(*b);
                    }
                }
            }
            for line in [out_line, err_line] {
                if !line.is_empty() {
                    output(String::from_utf8_lossy(&line).trim_end());
                }
            }
            wait_exit(docker, &job.name).await
        };
        let exit_code = tokio::time::timeout(Duration::from_secs(job.timeout_secs.max(1)), follow)
            .await
            .map_err(|_| Error::Engine {
                op: "run_job",
                message: format!("job {} did not finish in {}s", job.name, job.timeout_secs),
            })??;
        Ok(RunOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}
