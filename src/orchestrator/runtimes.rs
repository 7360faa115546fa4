//! Runtimes: images that hold a Python and the beephost layer (the agent, a non-root user).
//!
//! `init` turns a source (a registry image or a root filesystem tarball) into a runtime image in
//! four steps: get the Python layer (pull or import), probe its Python, build the beephost layer
//! from an in-memory context, and verify Python runs there as the non-root user. Inputs are
//! identified by content (the source's digest and the layer's digest), so a repeat finds the
//! image it made before and does nothing; `force` rebuilds. A failure removes what the attempt
//! made: no tagged half image, no stopped container.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::Error;
use crate::labels;
use crate::runtime::{ContainerRuntime, EngineProgress, ImageInfo, Labels, RunOnce};

/// The uid the sandboxes run as; never 0.
pub const SANDBOX_UID: u32 = 10001;
/// Where the agent lives in a runtime image.
pub const AGENT_PATH: &str = "/usr/local/bin/beephost";
/// Repository of runtime image tags.
const RUNTIME_REPO: &str = "beephost-runtime";
/// Repository of imported root filesystems.
const ROOTFS_REPO: &str = "beephost-rootfs";
/// Oldest Python the worker supports.
const MIN_PYTHON: (u32, u32) = (3, 8);

/// Where a runtime's Python comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeSource {
    /// A registry image with python3 (`python:3.12-slim`).
    Image(String),
    /// A tar or tar.gz root filesystem with python3, on the host's filesystem.
    Rootfs(PathBuf),
}

impl RuntimeSource {
    fn kind(&self) -> &'static str {
        match self {
            RuntimeSource::Image(_) => "image",
            RuntimeSource::Rootfs(_) => "rootfs",
        }
    }

    fn describe(&self) -> String {
        match self {
            RuntimeSource::Image(r) => format!("image {r}"),
            RuntimeSource::Rootfs(p) => format!("rootfs {}", p.display()),
        }
    }
}

/// One `init`.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub source: RuntimeSource,
    /// Rebuild even when a runtime for these inputs exists.
    pub force: bool,
}

/// A runtime image, as users see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Runtime {
    pub id: String,
    pub tag: String,
    pub python: String,
    /// `image` or `rootfs`.
    pub source: String,
    /// The image reference or tarball file name it came from.
    pub source_ref: String,
    pub beephost_version: String,
    pub size: u64,
    pub created: String,
}

impl Runtime {
    fn from_image(image: &ImageInfo) -> Runtime {
        let label = |k: &str| image.labels.get(k).cloned().unwrap_or_default();
        Runtime {
            id: image.id.clone(),
            tag: image
                .tags
                .iter()
                .find(|t| t.starts_with(RUNTIME_REPO))
                .or(image.tags.first())
                .cloned()
                .unwrap_or_default(),
            python: label(labels::PYTHON),
            source: label(labels::SOURCE),
            source_ref: label(labels::SOURCE_REF),
            beephost_version: label(labels::VERSION),
            size: image.size,
            created: image.created.clone(),
        }
    }
}

/// The steps of an `init`, in order.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Resolve,
    Pull,
    Import,
    Probe,
    Build,
    Verify,
    Done,
}

/// One progress line of an `init`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl Progress {
    fn step(phase: Phase, message: impl Into<String>) -> Progress {
        Progress {
            phase,
            id: None,
            message: message.into(),
            current: None,
            total: None,
        }
    }

    fn engine(phase: Phase, p: EngineProgress) -> Progress {
        Progress {
            phase,
            id: p.id,
            message: p.status,
            current: p.current,
            total: p.total,
        }
    }
}

/// Where the default runtime stands, for readiness.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RuntimeState {
    /// Nothing checked yet.
    Unknown,
    Preparing {
        message: String,
    },
    Ready {
        tag: String,
    },
    Failed {
        error: String,
    },
}

/// The beephost layer's inputs: the agent binary (which embeds the worker).
#[derive(Debug, Clone)]
pub struct AgentPayload {
    pub binary: PathBuf,
}

/// The runtime service.
pub struct Runtimes {
    engine: Arc<dyn ContainerRuntime>,
    extra_labels: Labels,
    payload: AgentPayload,
    /// sha256 of the agent binary and the Dockerfile, computed once.
    layer_digest: OnceCell<String>,
    /// Tarball digests by (path, size, mtime), so a repeated init does not hash again.
    rootfs_digests: Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), String>>,
    /// One init at a time: they share tags and are rare.
    init_lock: tokio::sync::Mutex<()>,
    state: Mutex<RuntimeState>,
}

impl Runtimes {
    pub fn new(
        engine: Arc<dyn ContainerRuntime>,
        extra_labels: Labels,
        payload: AgentPayload,
    ) -> Self {
        Runtimes {
            engine,
            extra_labels,
            payload,
            layer_digest: OnceCell::new(),
            rootfs_digests: Mutex::new(HashMap::new()),
            init_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(RuntimeState::Unknown),
        }
    }

    /// The default runtime's state.
    pub fn state(&self) -> RuntimeState {
        self.state.lock().unwrap().clone()
    }

    fn set_state(&self, state: RuntimeState) {
        *self.state.lock().unwrap() = state;
    }

    /// Runtime images this host can see (its extra labels included), newest first.
    #[tracing::instrument(name = "runtimes.list", skip_all, fields(operation = "runtimes.list"))]
    pub async fn list(&self) -> Result<Vec<Runtime>, Error> {
        let filter = labels::base("runtime", &self.extra_labels);
        let mut filter = filter;
        filter.remove(labels::VERSION);
        let mut images = self.engine.list_images(&filter).await?;
        images.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(images.iter().map(Runtime::from_image).collect())
    }

    /// Makes sure some runtime exists, building one from `source` when none does. Tracks the
    /// outcome in [`Runtimes::state`] for readiness; progress goes to the log.
    #[tracing::instrument(
        name = "runtimes.ensure_default",
        skip_all,
        fields(operation = "runtimes.ensure_default")
    )]
    pub async fn ensure_default(&self, source: RuntimeSource) -> Result<Runtime, Error> {
        self.set_state(RuntimeState::Preparing {
            message: format!("looking for a runtime ({})", source.describe()),
        });
        let result = async {
            if let Some(existing) = self.list().await?.into_iter().next() {
                return Ok(existing);
            }
            let report = |p: Progress| {
                if p.current.is_none() || p.phase != Phase::Pull {
                    tracing::info!(phase = ?p.phase, id = p.id.as_deref(), "{}", p.message);
                }
                self.set_state(RuntimeState::Preparing {
                    message: format!("{:?}: {}", p.phase, p.message).to_lowercase(),
                });
            };
            self.init(
                InitRequest {
                    source,
                    force: false,
                },
                &report,
            )
            .await
        }
        .await;
        match &result {
            Ok(r) => self.set_state(RuntimeState::Ready { tag: r.tag.clone() }),
            Err(e) => self.set_state(RuntimeState::Failed {
                error: e.to_string(),
            }),
        }
        result
    }

    /// Builds (or finds) the runtime for `req`, reporting progress as it goes.
    #[tracing::instrument(name = "runtimes.init", skip_all, fields(operation = "runtimes.init", force = req.force))]
    pub async fn init(
        &self,
        req: InitRequest,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Runtime, Error> {
        validate(&req)?;
        let _guard = self.init_lock.lock().await;
        let layer_digest = self.layer_digest().await?;
        progress(Progress::step(
            Phase::Resolve,
            format!("resolving {}", req.source.describe()),
        ));

        // The Python layer: find or fetch it, and name it by content.
        let (base, source_digest, source_ref, created_base) = match &req.source {
            RuntimeSource::Image(reference) => {
                let image = match self.engine.inspect_image(reference).await? {
                    Some(image) => image,
                    None => {
                        progress(Progress::step(Phase::Pull, format!("pulling {reference}")));
                        let forward =
                            |p: EngineProgress| progress(Progress::engine(Phase::Pull, p));
                        self.engine
                            .pull_image(reference, &forward)
                            .await
                            .map_err(|e| match e {
                                crate::runtime::Error::Unavailable(m) => {
                                    Error::EngineUnavailable(m)
                                }
                                other => Error::Unprocessable(format!(
                                    "cannot pull image `{reference}`: {other}"
                                )),
                            })?
                    }
                };
                (image.clone(), image.id, reference.clone(), false)
            }
            RuntimeSource::Rootfs(path) => {
                let digest = self.rootfs_digest(path).await?;
                if !req.force {
                    if let Some(found) = self.find(&digest, &layer_digest).await? {
                        progress(Progress::step(
                            Phase::Done,
                            format!("{} is up to date", found.tag),
                        ));
                        return Ok(found);
                    }
                }
                let tag = format!(
                    "{ROOTFS_REPO}:{}",
                    short(&hex_sha256(
                        format!("{digest}{:?}", sorted(&self.extra_labels)).as_bytes()
                    ))
                );
                let mut base_labels = labels::base("rootfs", &self.extra_labels);
                base_labels.insert(labels::SOURCE_DIGEST.into(), digest.clone());
                progress(Progress::step(
                    Phase::Import,
                    format!("importing {}", path.display()),
                ));
                let forward = |p: EngineProgress| progress(Progress::engine(Phase::Import, p));
                let image = self
                    .engine
                    .import_rootfs(path, &tag, &base_labels, &forward)
                    .await
                    .map_err(|e| match e {
                        crate::runtime::Error::Unavailable(m) => Error::EngineUnavailable(m),
                        other => Error::Unprocessable(format!(
                            "cannot import rootfs {}: {other}",
                            path.display()
                        )),
                    })?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (image, digest, name, true)
            }
        };
        if !req.force {
            if let Some(found) = self.find(&source_digest, &layer_digest).await? {
                progress(Progress::step(
                    Phase::Done,
                    format!("{} is up to date", found.tag),
                ));
                return Ok(found);
            }
        }

        let built = self
            .build_on(
                &req.source,
                &base,
                &source_digest,
                &source_ref,
                &layer_digest,
                progress,
            )
            .await;
        match built {
            Ok(runtime) => {
                progress(Progress::step(
                    Phase::Done,
                    format!("runtime {} ready", runtime.tag),
                ));
                Ok(runtime)
            }
            Err(e) => {
                if created_base {
                    self.remove_quietly(&base.id).await;
                }
                Err(e)
            }
        }
    }

    async fn build_on(
        &self,
        source: &RuntimeSource,
        base: &ImageInfo,
        source_digest: &str,
        source_ref: &str,
        layer_digest: &str,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Runtime, Error> {
        progress(Progress::step(Phase::Probe, "probing python3"));
        let python = self.probe_python(source, &base.id).await?;
        progress(Progress::step(Phase::Probe, format!("python {python}")));

        // The operator's labels are part of the identity: hosts with different label sets on
        // one engine (tests, tenants) must not take each other's tags.
        let mut extra: Vec<String> = self
            .extra_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        extra.sort();
        let identity = format!("{source_digest}{layer_digest}{}", extra.join(","));
        let tag = format!(
            "{RUNTIME_REPO}:{python}-bh{}-{}",
            crate::VERSION,
            short(&hex_sha256(identity.as_bytes()))
        );
        let mut runtime_labels = labels::base("runtime", &self.extra_labels);
        runtime_labels.insert(labels::PYTHON.into(), python.clone());
        runtime_labels.insert(labels::SOURCE.into(), source.kind().into());
        runtime_labels.insert(labels::SOURCE_REF.into(), source_ref.into());
        runtime_labels.insert(labels::SOURCE_DIGEST.into(), source_digest.into());
        runtime_labels.insert(labels::LAYER_DIGEST.into(), layer_digest.into());

        progress(Progress::step(Phase::Build, format!("building {tag}")));
        let previous = self.find(source_digest, layer_digest).await?;
        let context = self.build_context(&base.id, &runtime_labels).await?;
        let forward = |p: EngineProgress| progress(Progress::engine(Phase::Build, p));
        let image = self
            .engine
            .build_image(context, &tag, &Labels::new(), &forward)
            .await
            .map_err(|e| match e {
                crate::runtime::Error::Unavailable(m) => Error::EngineUnavailable(m),
                other => Error::Unprocessable(format!(
                    "cannot build the beephost layer on {}: {other}\nhint: the agent is a binary \
                     built for this host's glibc; for images with an older or no glibc, build \
                     beephost statically (see ARCHITECTURE.md)",
                    source.describe()
                )),
            })?;

        progress(Progress::step(
            Phase::Verify,
            "checking python3 runs as the sandbox user",
        ));
        if let Err(e) = self.verify(&image).await {
            self.remove_quietly(&image.id).await;
            return Err(e);
        }
        if let Some(old) = previous.filter(|old| old.id != image.id) {
            self.remove_quietly(&old.id).await;
        }
        Ok(Runtime::from_image(&image))
    }

    /// The runtime built from these inputs, if any.
    async fn find(
        &self,
        source_digest: &str,
        layer_digest: &str,
    ) -> Result<Option<Runtime>, Error> {
        let mut filter = labels::base("runtime", &self.extra_labels);
        filter.insert(labels::SOURCE_DIGEST.into(), source_digest.into());
        filter.insert(labels::LAYER_DIGEST.into(), layer_digest.into());
        let images = self.engine.list_images(&filter).await?;
        Ok(images.first().map(Runtime::from_image))
    }

    async fn probe_python(&self, source: &RuntimeSource, image: &str) -> Result<String, Error> {
        let spec = RunOnce {
            image: image.to_string(),
            cmd: vec![
                "python3".into(),
                "-c".into(),
                "import sys; print('%d.%d.%d' % sys.version_info[:3])".into(),
            ],
            user: None,
            labels: labels::base("probe", &self.extra_labels),
            timeout_secs: 60,
        };
        let no_python = |detail: String| {
            Error::Unprocessable(format!(
                "{} has no usable python3: {}",
                source.describe(),
                detail.trim()
            ))
        };
        let out = self.engine.run_once(&spec).await.map_err(|e| match e {
            crate::runtime::Error::Unavailable(m) => Error::EngineUnavailable(m),
            other => no_python(other.to_string()),
        })?;
        if out.exit_code != 0 {
            return Err(no_python(format!(
                "exit code {}: {}",
                out.exit_code,
                last_line(&out.stderr)
            )));
        }
        let version = out.stdout.trim().to_string();
        let (major, minor) = parse_major_minor(&version)
            .ok_or_else(|| no_python(format!("unexpected version `{version}`")))?;
        if (major, minor) < MIN_PYTHON {
            return Err(Error::Unprocessable(format!(
                "{} has python {version}; beephost needs {}.{} or newer",
                source.describe(),
                MIN_PYTHON.0,
                MIN_PYTHON.1
            )));
        }
        Ok(version)
    }

    /// Python runs in the finished image as the sandbox user, and the agent starts there.
    async fn verify(&self, image: &ImageInfo) -> Result<(), Error> {
        let spec = RunOnce {
            image: image.id.clone(),
            cmd: vec![
                "python3".into(),
                "-c".into(),
                "import os; print(os.getuid())".into(),
            ],
            user: None,
            labels: labels::base("probe", &self.extra_labels),
            timeout_secs: 60,
        };
        let out = self.engine.run_once(&spec).await?;
        let uid = out.stdout.trim();
        if out.exit_code != 0 || uid != SANDBOX_UID.to_string() {
            return Err(Error::Unprocessable(format!(
                "the built runtime does not run python3 as uid {SANDBOX_UID} (exit code {}, uid `{uid}`): {}",
                out.exit_code,
                last_line(&out.stderr)
            )));
        }
        Ok(())
    }

    async fn remove_quietly(&self, id: &str) {
        if let Err(e) = self.engine.remove_image(id).await {
            tracing::warn!(image = id, error = %e, "could not remove an image after a failed init");
        }
    }

    async fn rootfs_digest(&self, path: &Path) -> Result<String, Error> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::invalid("rootfs", format!("cannot read {}: {e}", path.display()))
        })?;
        let key = (
            path.to_path_buf(),
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        );
        if let Some(d) = self.rootfs_digests.lock().unwrap().get(&key) {
            return Ok(d.clone());
        }
        let digest = sha256_file(path.to_path_buf()).await?;
        self.rootfs_digests
            .lock()
            .unwrap()
            .insert(key, digest.clone());
        Ok(digest)
    }

    async fn layer_digest(&self) -> Result<String, Error> {
        let binary = self.payload.binary.clone();
        self.layer_digest
            .get_or_try_init(|| async move {
                let mut digest = sha256_file(binary).await?;
                digest.push_str(&hex_sha256(dockerfile("BASE", &Labels::new()).as_bytes()));
                Ok::<_, Error>(format!("sha256:{}", hex_sha256(digest.as_bytes())))
            })
            .await
            .cloned()
    }

    /// The build context: a Dockerfile and the agent binary, as a tar in memory.
    async fn build_context(&self, base: &str, labels: &Labels) -> Result<Bytes, Error> {
        let binary = self.payload.binary.clone();
        let dockerfile = dockerfile(base, labels);
        tokio::task::spawn_blocking(move || -> Result<Bytes, Error> {
            let agent = std::fs::read(&binary).map_err(|e| {
                Error::Internal(format!(
                    "cannot read the agent binary {}: {e}",
                    binary.display()
                ))
            })?;
            let mut tar = tar::Builder::new(Vec::with_capacity(agent.len() + 4096));
            append(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
            append(&mut tar, "beephost", &agent, 0o755)?;
            let bytes = tar
                .into_inner()
                .map_err(|e| Error::Internal(format!("cannot build the context: {e}")))?;
            Ok(Bytes::from(bytes))
        })
        .await
        .map_err(|e| Error::Internal(format!("context task failed: {e}")))?
    }
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), Error> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
        .map_err(|e| Error::Internal(format!("cannot build the context: {e}")))
}

/// The beephost layer, labels last. The agent runs `--version` during the build, so an image
/// whose libc cannot run it fails here, at init, and not when the first backend starts.
fn dockerfile(base: &str, labels: &Labels) -> String {
    let mut label_line: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect();
    label_line.sort();
    let label_line = if label_line.is_empty() {
        String::new()
    } else {
        format!("LABEL {}\n", label_line.join(" "))
    };
    // Few instructions: the classic builder commits a layer for each.
    format!(
        r#"FROM {base}
COPY beephost {AGENT_PATH}
RUN {AGENT_PATH} --version && set -e; \
    if command -v useradd >/dev/null 2>&1; then \
      useradd --uid {SANDBOX_UID} --user-group --no-create-home --home-dir /workspace --shell /usr/sbin/nologin beephost; \
    elif command -v adduser >/dev/null 2>&1; then \
      adduser -D -H -u {SANDBOX_UID} -h /workspace beephost; \
    else \
      echo 'beephost:x:{SANDBOX_UID}:{SANDBOX_UID}::/workspace:/sbin/nologin' >> /etc/passwd; \
      echo 'beephost:x:{SANDBOX_UID}:' >> /etc/group; \
    fi; \
    mkdir -p /workspace; chown {SANDBOX_UID}:{SANDBOX_UID} /workspace
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/workspace
USER {SANDBOX_UID}:{SANDBOX_UID}
WORKDIR /workspace
ENTRYPOINT ["{AGENT_PATH}", "agent"]
{label_line}"#
    )
}

/// Checks what can be checked without the engine, so bad input is refused before anything
/// starts.
pub fn validate(req: &InitRequest) -> Result<(), Error> {
    match &req.source {
        RuntimeSource::Rootfs(path) => check_rootfs_file(path),
        RuntimeSource::Image(_) => Ok(()),
    }
}

/// Refuses, before anything is made, a path that is not a readable tar or tar.gz file.
fn check_rootfs_file(path: &Path) -> Result<(), Error> {
    let field = "rootfs";
    let shown = path.display();
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{shown} is not an absolute path"),
        ));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::invalid(field, format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(Error::invalid(field, format!("{shown} is not a file")));
    }
    let mut head = [0u8; 512];
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::invalid(field, format!("cannot read {shown}: {e}")))?;
    let n = read_up_to(&mut file, &mut head)
        .map_err(|e| Error::invalid(field, format!("cannot read {shown}: {e}")))?;
    if looks_like_archive(&head[..n]) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{shown} is not a tar or tar.gz archive"),
        ))
    }
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// gzip, or a tar header (ustar magic at 257, or a valid header checksum for old tars).
fn looks_like_archive(head: &[u8]) -> bool {
    if head.starts_with(&[0x1f, 0x8b]) {
        return true;
    }
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&head[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let computed: u32 = head
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    stored == Some(computed) && head[0] != 0
}

async fn sha256_file(path: PathBuf) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || -> Result<String, Error> {
        let mut file = std::fs::File::open(&path).map_err(|e| {
            Error::invalid("rootfs", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| Error::Internal(format!("hash task failed: {e}")))?
}

fn sorted(labels: &Labels) -> Vec<(&String, &String)> {
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    pairs
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The first 12 hex digits of a digest, with or without its `sha256:` prefix.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn last_line(s: &str) -> &str {
    s.trim().lines().last().unwrap_or("")
}

fn parse_major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    fn tarball(dir: &Path) -> PathBuf {
        let path = dir.join("rootfs.tar");
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, "etc/hostname", b"x\n", 0o644).unwrap();
        std::fs::write(&path, tar.into_inner().unwrap()).unwrap();
        path
    }

    fn service(fake: Arc<FakeRuntime>, dir: &Path) -> Runtimes {
        let binary = dir.join("agent");
        std::fs::write(&binary, b"\x7fELF fake agent").unwrap();
        Runtimes::new(fake, Labels::new(), AgentPayload { binary })
    }

    fn no_progress(_: Progress) {}

    #[tokio::test]
    async fn rootfs_init_builds_once_then_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_python("3.11.2"));
        let runtimes = service(fake.clone(), dir.path());
        let req = InitRequest {
            source: RuntimeSource::Rootfs(tarball(dir.path())),
            force: false,
        };
        let first = runtimes.init(req.clone(), &no_progress).await.unwrap();
        assert_eq!(first.python, "3.11.2");
        assert_eq!(first.source, "rootfs");
        assert!(
            first.tag.starts_with("beephost-runtime:3.11.2-bh"),
            "{}",
            first.tag
        );
        let builds = |f: &FakeRuntime| f.calls().iter().filter(|c| *c == "build_image").count();
        assert_eq!(builds(&fake), 1);

        let again = runtimes.init(req.clone(), &no_progress).await.unwrap();
        assert_eq!(again.id, first.id);
        assert_eq!(builds(&fake), 1, "a repeat must not build");

        let forced = runtimes
            .init(InitRequest { force: true, ..req }, &no_progress)
            .await
            .unwrap();
        assert_ne!(forced.id, first.id);
        assert_eq!(builds(&fake), 2);
        let listed = runtimes.list().await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "the replaced runtime is removed: {listed:?}"
        );
    }

    #[tokio::test]
    async fn rootfs_without_python_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::default());
        let runtimes = service(fake.clone(), dir.path());
        let req = InitRequest {
            source: RuntimeSource::Rootfs(tarball(dir.path())),
            force: false,
        };
        let err = runtimes.init(req, &no_progress).await.unwrap_err();
        assert!(err.to_string().contains("has no usable python3"), "{err}");
        assert!(fake.images().is_empty(), "left {:?}", fake.images());
    }

    #[tokio::test]
    async fn not_a_tarball_is_refused_before_the_engine_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_python("3.11.2"));
        let runtimes = service(fake.clone(), dir.path());
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello".repeat(200)).unwrap();
        let err = runtimes
            .init(
                InitRequest {
                    source: RuntimeSource::Rootfs(path),
                    force: false,
                },
                &no_progress,
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not a tar or tar.gz archive"),
            "{err}"
        );
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }

    #[tokio::test]
    async fn old_python_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_python("3.6.9"));
        let runtimes = service(fake.clone(), dir.path());
        let err = runtimes
            .init(
                InitRequest {
                    source: RuntimeSource::Rootfs(tarball(dir.path())),
                    force: false,
                },
                &no_progress,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("needs 3.8"), "{err}");
        assert!(fake.images().is_empty());
    }

    #[tokio::test]
    async fn missing_image_names_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_python("3.12.1"));
        let runtimes = service(fake.clone(), dir.path());
        let err = runtimes
            .init(
                InitRequest {
                    source: RuntimeSource::Image("nope:1".into()),
                    force: false,
                },
                &no_progress,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`nope:1`"), "{err}");
        fake.add_image("python:3.12-slim");
        let ok = runtimes
            .init(
                InitRequest {
                    source: RuntimeSource::Image("python:3.12-slim".into()),
                    force: false,
                },
                &no_progress,
            )
            .await
            .unwrap();
        assert_eq!(ok.source_ref, "python:3.12-slim");
        assert!(!fake.calls().contains(&"pull_image".to_string()) || ok.python == "3.12.1");
    }

    #[tokio::test]
    async fn ensure_default_tracks_state() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_python("3.11.2"));
        let runtimes = service(fake.clone(), dir.path());
        assert_eq!(runtimes.state(), RuntimeState::Unknown);
        fake.set_unavailable(true);
        let src = RuntimeSource::Rootfs(tarball(dir.path()));
        assert!(runtimes.ensure_default(src.clone()).await.is_err());
        assert!(matches!(runtimes.state(), RuntimeState::Failed { .. }));
        fake.set_unavailable(false);
        let r = runtimes.ensure_default(src).await.unwrap();
        assert_eq!(runtimes.state(), RuntimeState::Ready { tag: r.tag });
    }

    #[test]
    fn archive_sniffing() {
        assert!(looks_like_archive(&[0x1f, 0x8b, 8, 0]));
        assert!(!looks_like_archive(b"hello"));
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, "a", b"b", 0o644).unwrap();
        assert!(looks_like_archive(&tar.into_inner().unwrap()[..512]));
        assert_eq!(parse_major_minor("3.11.2"), Some((3, 11)));
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
