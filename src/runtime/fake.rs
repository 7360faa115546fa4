//! A recording, in-memory [`ContainerRuntime`] for unit tests of orchestration logic.
//!
//! It keeps images in a map, records every call by name, and can be told to be unreachable or
//! to have no Python. Tests against the real engine live in tests/it; this is never a
//! substitute for them.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Attached, ContainerInfo, ContainerRuntime, ContainerState, EngineInfo, Error, ImageInfo,
    Labels, ProgressFn, Result, RunOnce, RunOutput, SandboxSpec,
};

/// Scripted engine state.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// Volumes and jobs (venv builds).
    volumes: Mutex<VolumeState>,
}

/// What a scripted job does: prints lines through the callback and returns how it ended.
pub type JobHandler =
    std::sync::Arc<dyn Fn(&super::Job, super::LineFn<'_>) -> RunOutput + Send + Sync>;

#[derive(Default)]
struct VolumeState {
    volumes: Vec<super::VolumeInfo>,
    jobs: Vec<super::Job>,
    handler: Option<JobHandler>,
}

#[derive(Default)]
struct State {
    images: Vec<ImageInfo>,
    containers: Vec<ContainerInfo>,
    calls: Vec<String>,
    unavailable: bool,
    /// What `python3 --version`-style probes print; `None` means the image has no python3.
    python: Option<String>,
    next_id: u64,
}

impl FakeRuntime {
    /// An engine whose images run Python `python`.
    pub fn with_python(python: &str) -> Self {
        let fake = FakeRuntime::default();
        fake.state.lock().unwrap().python = Some(python.to_string());
        fake
    }

    /// Makes every later call fail as if the engine were down (or back up).
    pub fn set_unavailable(&self, down: bool) {
        self.state.lock().unwrap().unavailable = down;
    }

    /// Adds an image as if it had been pulled.
    pub fn add_image(&self, reference: &str) {
        let mut s = self.state.lock().unwrap();
        let id = s.new_id();
        s.images.push(ImageInfo {
            id,
            tags: vec![reference.to_string()],
            labels: Labels::new(),
            size: 1,
            created: "2026-01-01T00:00:00Z".into(),
        });
    }

    /// The operations called so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn images(&self) -> Vec<ImageInfo> {
        self.state.lock().unwrap().images.clone()
    }

    /// Scripts what every later job does (by default: exits 0 and prints nothing).
    pub fn set_job_handler(&self, handler: JobHandler) {
        self.volumes.lock().unwrap().handler = Some(handler);
    }

    /// The jobs run so far, in order.
    pub fn jobs(&self) -> Vec<super::Job> {
        self.volumes.lock().unwrap().jobs.clone()
    }

    pub fn volumes(&self) -> Vec<super::VolumeInfo> {
        self.volumes.lock().unwrap().volumes.clone()
    }

    /// Adds a container as if something had created it.
    pub fn add_container_info(&self, info: ContainerInfo) {
        self.state.lock().unwrap().containers.push(info);
    }

    fn enter(&self, call: &str) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(call.to_string());
        if s.unavailable {
            return Err(Error::Unavailable("fake engine is down".into()));
        }
        Ok(s)
    }
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("sha256:{:064x}", self.next_id)
    }

    fn create(&mut self, tag: &str, labels: &Labels) -> ImageInfo {
        for image in &mut self.images {
            image.tags.retain(|t| t != tag);
        }
        let image = ImageInfo {
            id: self.new_id(),
            tags: vec![tag.to_string()],
            labels: labels.clone(),
            size: 1,
            created: "2026-01-01T00:00:00Z".into(),
        };
        self.images.push(image.clone());
        image
    }

    fn find(&self, reference: &str) -> Option<ImageInfo> {
        self.images
            .iter()
            .find(|i| i.id == reference || i.tags.iter().any(|t| t == reference))
            .cloned()
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<EngineInfo> {
        drop(self.enter("ping")?);
        Ok(EngineInfo {
            version: "fake".into(),
            api_version: "1.41".into(),
        })
    }

    async fn list_images(&self, labels: &Labels) -> Result<Vec<ImageInfo>> {
        let s = self.enter("list_images")?;
        Ok(s.images
            .iter()
            .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let s = self.enter("inspect_image")?;
        Ok(s.find(reference))
    }

    async fn pull_image(&self, reference: &str, _progress: ProgressFn<'_>) -> Result<ImageInfo> {
        let s = self.enter("pull_image")?;
        s.find(reference).ok_or_else(|| Error::Engine {
            op: "pull_image",
            message: format!("pull access denied for {reference}"),
        })
    }

    async fn import_rootfs(
        &self,
        _path: &Path,
        tag: &str,
        labels: &Labels,
        _progress: ProgressFn<'_>,
    ) -> Result<ImageInfo> {
        let mut s = self.enter("import_rootfs")?;
        Ok(s.create(tag, labels))
    }

    async fn build_image(
        &self,
        context: Bytes,
        tag: &str,
        labels: &Labels,
        _progress: ProgressFn<'_>,
    ) -> Result<ImageInfo> {
        let mut s = self.enter("build_image")?;
        let mut all = labels.clone();
        all.extend(dockerfile_labels(&context));
        Ok(s.create(tag, &all))
    }

    async fn run_once(&self, spec: &RunOnce) -> Result<RunOutput> {
        let s = self.enter("run_once")?;
        // Built runtime images run as the sandbox user; probes ask for the version.
        let asks_uid = spec.cmd.iter().any(|a| a.contains("getuid"));
        match &s.python {
            Some(version) => Ok(RunOutput {
                exit_code: 0,
                stdout: if asks_uid {
                    "10001\n".into()
                } else {
                    format!("{version}\n")
                },
                stderr: String::new(),
            }),
            None => Err(Error::Engine {
                op: "start_container",
                message: "exec: \"python3\": executable file not found in $PATH".into(),
            }),
        }
    }

    async fn remove_image(&self, id: &str) -> Result<()> {
        let mut s = self.enter("remove_image")?;
        s.images
            .retain(|i| i.id != id && !i.tags.iter().any(|t| t == id));
        Ok(())
    }

    async fn list_containers(&self, labels: &Labels) -> Result<Vec<ContainerInfo>> {
        let s = self.enter("list_containers")?;
        Ok(s.containers
            .iter()
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut s = self.enter("remove_container")?;
        s.containers.retain(|c| c.id != id && c.name != id);
        Ok(())
    }

    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        let mut s = self.enter("create_sandbox")?;
        let id = s.new_id().trim_start_matches("sha256:").to_string();
        s.containers.push(ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            state: "created".into(),
            created: 0,
        });
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let mut s = self.enter("start_container")?;
        match s.containers.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.state = "running".into();
                Ok(())
            }
            None => Err(Error::NotFound {
                what: "container",
                name: id.into(),
            }),
        }
    }

    /// Attaches an in-process agent (the real one, running the machine's python3) through an
    /// in-memory pipe, so orchestration tests exercise the real protocol.
    async fn attach(&self, id: &str) -> Result<Attached> {
        drop(self.enter("attach")?);
        let (host_side, agent_side) = tokio::io::duplex(1 << 16);
        let (agent_read, agent_write) = tokio::io::split(agent_side);
        let workspace = std::env::temp_dir().join(format!("beephost-fake-{id}"));
        let _ = std::fs::create_dir_all(&workspace);
        #[derive(clap::Parser)]
        struct Agent {
            #[command(flatten)]
            args: crate::agent::AgentArgs,
        }
        let args = <Agent as clap::Parser>::try_parse_from([
            "agent".as_ref(),
            "--workspace".as_ref(),
            workspace.as_os_str(),
        ])
        .map_err(|e| Error::Engine {
            op: "attach",
            message: e.to_string(),
        })?;
        let config = args.args.into_config().map_err(|e| Error::Engine {
            op: "attach",
            message: e.to_string(),
        })?;
        tokio::spawn(crate::agent::serve(config, agent_read, agent_write));
        let (read, write) = tokio::io::split(host_side);
        Ok(Attached {
            stdout: Box::new(read),
            stdin: Box::new(write),
            stderr_tail: Default::default(),
        })
    }

    async fn restart_container(&self, id: &str, _grace: std::time::Duration) -> Result<()> {
        let s = self.enter("restart_container")?;
        if s.containers.iter().any(|c| c.id == id) {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "container",
                name: id.into(),
            })
        }
    }

    async fn container_memory(&self, id: &str) -> Result<Option<u64>> {
        let s = self.enter("container_memory")?;
        Ok(s.containers.iter().find(|c| c.id == id).map(|_| 1 << 20))
    }

    async fn container_state(&self, id: &str) -> Result<Option<ContainerState>> {
        let s = self.enter("container_state")?;
        Ok(s.containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| ContainerState {
                running: c.state == "running",
                exit_code: None,
                oom_killed: false,
                labels: c.labels.clone(),
            }))
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<super::VolumeInfo> {
        drop(self.enter("create_volume")?);
        let mut v = self.volumes.lock().unwrap();
        if let Some(existing) = v.volumes.iter().find(|x| x.name == name) {
            return Ok(existing.clone());
        }
        let info = super::VolumeInfo {
            name: name.to_string(),
            labels: labels.clone(),
            created: "2026-01-01T00:00:00Z".into(),
        };
        v.volumes.push(info.clone());
        Ok(info)
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<super::VolumeInfo>> {
        drop(self.enter("inspect_volume")?);
        let v = self.volumes.lock().unwrap();
        Ok(v.volumes.iter().find(|x| x.name == name).cloned())
    }

    async fn list_volumes(&self, labels: &Labels) -> Result<Vec<super::VolumeInfo>> {
        drop(self.enter("list_volumes")?);
        let v = self.volumes.lock().unwrap();
        Ok(v.volumes
            .iter()
            .filter(|x| labels.iter().all(|(k, val)| x.labels.get(k) == Some(val)))
            .cloned()
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        drop(self.enter("remove_volume")?);
        self.volumes
            .lock()
            .unwrap()
            .volumes
            .retain(|x| x.name != name);
        Ok(())
    }

    async fn run_job(&self, job: &super::Job, output: super::LineFn<'_>) -> Result<RunOutput> {
        drop(self.enter("run_job")?);
        let handler = {
            let mut v = self.volumes.lock().unwrap();
            v.jobs.push(job.clone());
            v.handler.clone()
        };
        Ok(match handler {
            Some(h) => h(job, output),
            None => RunOutput {
                exit_code: 0,
                stdout: String::new(),
                stderr: String::new(),
            },
        })
    }
}

/// The labels a context's Dockerfile sets with `LABEL k="v" …`, as the engine would apply them.
fn dockerfile_labels(context: &[u8]) -> Labels {
    let mut labels = Labels::new();
    let mut archive = tar::Archive::new(context);
    let Ok(entries) = archive.entries() else {
        return labels;
    };
    for mut entry in entries.flatten() {
        if entry
            .path()
            .map(|p| p.as_os_str() == "Dockerfile")
            .unwrap_or(false)
        {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut entry, &mut text);
            for line in text.lines().filter_map(|l| l.strip_prefix("LABEL ")) {
                let mut rest = line.trim();
                while let Some((key, value)) = rest.split_once("=\"") {
                    let end = value.find('"').unwrap_or(value.len());
                    labels.insert(key.trim().to_string(), value[..end].to_string());
                    rest = value.get(end + 1..).unwrap_or("");
                }
            }
        }
    }
    labels
}
