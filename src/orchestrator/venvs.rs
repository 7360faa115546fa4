//! Venvs: named volumes (`beephost-venv-<name>`) holding a virtual environment built once by a
//! short-lived job container from a runtime image, then mounted read-only at `/venv` into
//! every backend that uses it.
//!
//! Docker is the source of truth. A volume's labels say which venv and runtime it is; its state
//! is derived from inside it: the job writes a record (`beephost-venv.json`: requested packages,
//! the frozen set, Python, size, times) last, so a volume with a record is `ready`, one with a
//! failure note or nothing at all is `failed` (a host that died mid-build leaves the latter),
//! and a build this host is running is `building`. Records are cached in memory and read back
//! by one small job for every uncached volume (after a restart).
//!
//! Builds run the embedded `venvs/job.py` as an argv list (never a shell) with a spec in JSON.
//! They are the only containers with a network, and only when a package index is used; the
//! shared package-cache volume makes a second build of the same packages download nothing.
//! One build per name at a time: an in-process lock, and the job container's fixed name
//! (`beephost-job-venv-<name>`) which the engine keeps unique across hosts.

pub mod spec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::labels;
use crate::metrics::{self, VenvOutcome};
use crate::runtime::{ContainerRuntime, Job, Labels, VolumeInfo, VolumeMount};

use super::runtimes::Runtimes;

pub use spec::{Template, TEMPLATES};

/// Where a venv is mounted in jobs and backends (its scripts bake this path in).
pub const VENV_MOUNT: &str = "/venv";
/// Prefix of venv volume names.
pub const VOLUME_PREFIX: &str = "beephost-venv-";
/// What `kind` label venv volumes and venv jobs carry.
const KIND_VENV: &str = "venv";
const KIND_JOB: &str = "venv-job";
const KIND_CACHE: &str = "package-cache";
/// Where the package cache, wheelhouse and CA bundle appear in a job.
const CACHE_MOUNT: &str = "/cache";
const WHEELHOUSE_MOUNT: &str = "/wheelhouse";
const CA_MOUNT: &str = "/etc/beephost/ca.pem";
/// The embedded job driver.
const JOB_PY: &str = include_str!("venvs/job.py");
/// Marks the driver's event lines.
const MARK: &str = "::beephost::";
/// Limits of a build job.
const JOB_MEMORY: i64 = 2 << 30;
const JOB_PIDS: i64 = 512;
const JOB_TIMEOUT_SECS: u64 = 1800;
const READ_TIMEOUT_SECS: u64 = 120;
/// Lines of installer output kept for a failed venv.
const TAIL_LINES: usize = 20;

/// Package sources and policies, from `serve`'s settings.
#[derive(Debug, Clone, Default)]
pub struct VenvSettings {
    /// The package index (pip's `--index-url`); the installer's default when `None`.
    pub index_url: Option<String>,
    /// A host CA bundle file mounted read-only into build jobs (for intercepted TLS).
    pub ca_bundle: Option<PathBuf>,
    /// A host directory of wheels (`--find-links`) used by every build.
    pub wheelhouse: Option<PathBuf>,
    /// Directories a request's own `find_links` may lie in (the wheelhouse always may).
    pub find_links_roots: Vec<PathBuf>,
    /// Never use an index unless a request asks (machines without one).
    pub no_index: bool,
    /// Accept `name @ https://…` requirements.
    pub allow_url_requirements: bool,
}

/// Where a request's packages come from; `None` fields fall back to the settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sources {
    pub index_url: Option<String>,
    pub find_links: Option<PathBuf>,
    pub no_index: Option<bool>,
}

/// `POST /v1/venvs`.
#[derive(Debug, Clone, Default)]
pub struct CreateVenv {
    pub name: String,
    pub packages: Vec<String>,
    /// The text of a requirements file.
    pub requirements: Option<String>,
    pub template: Option<String>,
    /// A runtime tag or image id; the newest runtime when `None`.
    pub runtime: Option<String>,
    pub sources: Sources,
}

/// `POST /v1/venvs/{name}/packages`.
#[derive(Debug, Clone, Default)]
pub struct ChangePackages {
    pub packages: Vec<String>,
    pub requirements: Option<String>,
    /// Uninstall these instead.
    pub remove: Vec<String>,
    pub sources: Sources,
}

/// A venv's state.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VenvState {
    Building,
    Ready,
    Failed,
}

/// One installed distribution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// What the job writes into the volume, last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub python: String,
    #[serde(default)]
    pub installer: String,
    pub requested: Vec<String>,
    pub packages: Vec<Package>,
    pub size: u64,
    pub created: String,
    pub updated: String,
}

/// A backend that mounts a venv.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendRef {
    pub id: String,
    pub name: String,
    pub state: String,
}

/// A venv, as users see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Venv {
    pub name: String,
    pub volume: String,
    pub state: VenvState,
    /// The runtime image id it was built with.
    pub runtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// What was asked for (requirement strings).
    pub requested: Vec<String>,
    /// The frozen set: every installed distribution with its version.
    pub packages: Vec<Package>,
    /// Bytes inside the volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Backends mounting it (filled by `get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendRef>>,
}

/// The steps of a build, in order.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VenvPhase {
    Resolve,
    Volume,
    Venv,
    Install,
    Freeze,
    Done,
}

/// One progress line of a build: a step, or a line of installer output (`install`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VenvProgress {
    pub phase: VenvPhase,
    pub message: String,
}

/// Where build progress goes.
pub type VenvProgressFn<'a> = &'a (dyn Fn(VenvProgress) + Send + Sync);

/// What the host knows of a venv beyond its volume's labels.
#[derive(Debug, Clone)]
enum Known {
    Building,
    Ready(Record),
    Failed {
        error: String,
        log_tail: Vec<String>,
    },
}

/// The venv service.
pub struct Venvs {
    engine: Arc<dyn ContainerRuntime>,
    extra_labels: Labels,
    settings: VenvSettings,
    known: Mutex<HashMap<String, Known>>,
    /// One build, install or delete per name at a time, in this host.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What the driver printed, gathered.
#[derive(Default)]
struct JobOutcome {
    record: Option<Record>,
    error: Option<String>,
    tail: Vec<String>,
}

impl Venvs {
    pub fn new(
        engine: Arc<dyn ContainerRuntime>,
        extra_labels: Labels,
        settings: VenvSettings,
    ) -> Self {
        Venvs {
            engine,
            extra_labels,
            settings,
            known: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &VenvSettings {
        &self.settings
    }

    /// The volume that holds venv `name`.
    pub fn volume_name(name: &str) -> String {
        format!("{VOLUME_PREFIX}{name}")
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn set_known(&self, name: &str, known: Option<Known>) {
        let mut map = self.known.lock().unwrap();
        match known {
            Some(k) => map.insert(name.to_string(), k),
            None => map.remove(name),
        };
    }

    fn filter(&self, kind: &str) -> Labels {
        let mut filter = labels::base(kind, &self.extra_labels);
        filter.remove(labels::VERSION);
        filter
    }

    /// Whether a volume is one of this host's venvs.
    fn owns(&self, volume: &VolumeInfo) -> bool {
        self.filter(KIND_VENV)
            .iter()
            .all(|(k, v)| volume.labels.get(k) == Some(v))
    }

    /// Every venv, by name.
    pub async fn list(&self) -> Result<Vec<Venv>, Error> {
        let volumes = self.engine.list_volumes(&self.filter(KIND_VENV)).await?;
        self.learn(&volumes).await?;
        let mut venvs: Vec<Venv> = volumes.iter().filter_map(|v| self.view(v)).collect();
        venvs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(venvs)
    }

    /// One venv, with the backends that mount it.
    pub async fn get(&self, name: &str) -> Result<Venv, Error> {
        spec::check_name(name)?;
        let volume = self.volume(name).await?;
        self.learn(std::slice::from_ref(&volume)).await?;
        let mut venv = self.view(&volume).ok_or_else(|| not_found(name))?;
        venv.backends = Some(self.backends(name).await?);
        Ok(venv)
    }

    async fn volume(&self, name: &str) -> Result<VolumeInfo, Error> {
        match self.engine.inspect_volume(&Self::volume_name(name)).await? {
            Some(v) if self.owns(&v) => Ok(v),
            _ => Err(not_found(name)),
        }
    }

    /// Backend containers mounting venv `name`.
    pub async fn backends(&self, name: &str) -> Result<Vec<BackendRef>, Error> {
        let mut filter = self.filter("backend");
        filter.insert(labels::VENV.into(), name.into());
        let mut found: Vec<BackendRef> = self
            .engine
            .list_containers(&filter)
            .await?
            .into_iter()
            .map(|c| BackendRef {
                id: c.id,
                name: c.name,
                state: c.state,
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn view(&self, volume: &VolumeInfo) -> Option<Venv> {
        let name = volume.labels.get(labels::VENV)?.clone();
        let known = self.known.lock().unwrap().get(&name).cloned();
        let mut venv = Venv {
            name,
            volume: volume.name.clone(),
            state: VenvState::Failed,
            runtime: volume
                .labels
                .get(labels::VENV_RUNTIME)
                .cloned()
                .unwrap_or_default(),
            python: None,
            requested: Vec::new(),
            packages: Vec::new(),
            size: None,
            created: volume.created.clone(),
            updated: None,
            error: None,
            log_tail: Vec::new(),
            backends: None,
        };
        match known {
            Some(Known::Building) => venv.state = VenvState::Building,
            Some(Known::Ready(r)) => {
                venv.state = VenvState::Ready;
                venv.python = Some(r.python);
                venv.requested = r.requested;
                venv.packages = r.packages;
                venv.size = Some(r.size);
                venv.created = r.created;
                venv.updated = Some(r.updated);
            }
            Some(Known::Failed { error, log_tail }) => {
                venv.error = Some(error);
                venv.log_tail = log_tail;
            }
            None => venv.error = Some("the venv's state could not be read".into()),
        }
        Some(venv)
    }

    /// Reads the records of volumes this host knows nothing about (after a restart), with one
    /// job per runtime image. A volume without a record is failed: its build never finished.
    async fn learn(&self, volumes: &[VolumeInfo]) -> Result<(), Error> {
        let unknown: Vec<(&String, &VolumeInfo)> = {
            let known = self.known.lock().unwrap();
            volumes
                .iter()
                .filter_map(|v| v.labels.get(labels::VENV).map(|n| (n, v)))
                .filter(|(n, _)| !known.contains_key(*n))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        // A job container of an unknown venv belongs to a host that died mid-build.
        for job in self.engine.list_containers(&self.filter(KIND_JOB)).await? {
            let Some(name) = job.labels.get(labels::VENV) else {
                continue;
            };
            if unknown.iter().any(|(n, _)| *n == name) && self.lock_for(name).try_lock().is_ok() {
                tracing::warn!(venv = %name, container = %job.name, "removing the job of an unfinished build");
                self.engine.remove_container(&job.id).await?;
            }
        }
        let mut by_runtime: HashMap<String, Vec<(&String, &VolumeInfo)>> = HashMap::new();
        for (name, volume) in unknown {
            let runtime = volume
                .labels
                .get(labels::VENV_RUNTIME)
                .cloned()
                .unwrap_or_default();
            by_runtime.entry(runtime).or_default().push((name, volume));
        }
        for (runtime, group) in by_runtime {
            if runtime.is_empty() || self.engine.inspect_image(&runtime).await?.is_none() {
                for (name, _) in group {
                    self.set_known(
                        name,
                        Some(Known::Failed {
                            error: format!("its runtime image `{runtime}` is gone"),
                            log_tail: Vec::new(),
                        }),
                    );
                }
                continue;
            }
            self.read_records(&runtime, &group).await?;
        }
        Ok(())
    }

    async fn read_records(
        &self,
        runtime: &str,
        group: &[(&String, &VolumeInfo)],
    ) -> Result<(), Error> {
        let dirs: HashMap<&str, String> = group
            .iter()
            .map(|(n, _)| (n.as_str(), format!("/venvs/{n}")))
            .collect();
        let spec = serde_json::json!({ "action": "read", "dirs": dirs });
        let job = Job {
            name: format!(
                "beephost-job-read-{}",
                hex::encode(rand::random::<[u8; 6]>())
            ),
            image: runtime.to_string(),
            cmd: driver_cmd(&spec),
            env: vec![("HOME".into(), "/tmp".into())],
            user: Some("0:0".into()),
            labels: labels::base(KIND_JOB, &self.extra_labels),
            volumes: group
                .iter()
                .map(|(n, v)| VolumeMount {
                    volume: v.name.clone(),
                    target: format!("/venvs/{n}"),
                    read_only: true,
                })
                .collect(),
            read_only_binds: Vec::new(),
            network: false,
            memory_bytes: 256 << 20,
            pids: 64,
            timeout_secs: READ_TIMEOUT_SECS,
        };
        let events = Mutex::new(Vec::<serde_json::Value>::new());
        let collect = |line: &str| {
            if let Some(event) = line.strip_prefix(MARK) {
                if let Ok(v) = serde_json::from_str(event) {
                    events.lock().unwrap().push(v);
                }
            }
        };
        let out = self.engine.run_job(&job, &collect).await?;
        if out.exit_code != 0 {
            return Err(Error::Internal(format!(
                "reading venv records failed (exit code {}): {}",
                out.exit_code,
                last_line(&out.stdout)
            )));
        }
        let events = events.into_inner().unwrap();
        for (name, _) in group {
            let event = events
                .iter()
                .find(|e| e["name"].as_str() == Some(name.as_str()));
            let known = match event {
                Some(e) if e["event"] == "record" => {
                    match serde_json::from_value::<Record>(e["record"].clone()) {
                        Ok(r) => Known::Ready(r),
                        Err(err) => Known::Failed {
                            error: format!("its record is unreadable: {err}"),
                            log_tail: Vec::new(),
                        },
                    }
                }
                Some(e) if e["event"] == "failed" => Known::Failed {
                    error: e["error"]
                        .as_str()
                        .unwrap_or("the build failed")
                        .to_string(),
                    log_tail: strings(&e["log_tail"]),
                },
                _ => Known::Failed {
                    error: "its build did not finish (the host stopped during it)".into(),
                    log_tail: Vec::new(),
                },
            };
            self.set_known(name, Some(known));
        }
        Ok(())
    }

    /// Builds venv `req.name`. A name being built answers 409 at once; an existing ready venv
    /// is a 409 too; a failed one is replaced.
    pub async fn create(
        &self,
        runtimes: &Runtimes,
        req: CreateVenv,
        progress: VenvProgressFn<'_>,
    ) -> Result<Venv, Error> {
        let plan = self.plan_create(&req)?;
        let lock = self.lock_for(&req.name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(building(&req.name));
        };
        self.create_locked(runtimes, req, plan, progress).await
    }

    /// The seed's ensure: venv `name` exists and is ready when this returns. A ready venv
    /// answers at once; a build in progress is waited for; a failed or missing one is built.
    pub async fn ensure(
        &self,
        runtimes: &Runtimes,
        name: &str,
        progress: VenvProgressFn<'_>,
    ) -> Result<Venv, Error> {
        let req = CreateVenv {
            name: name.to_string(),
            ..Default::default()
        };
        let plan = self.plan_create(&req)?;
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        if let Ok(volume) = self.volume(name).await {
            self.learn(std::slice::from_ref(&volume)).await?;
            if let Some(venv) = self.view(&volume).filter(|v| v.state == VenvState::Ready) {
                return Ok(venv);
            }
        }
        self.create_locked(runtimes, req, plan, progress).await
    }

    /// Refuses a bad create request before anything starts (the API answers 4xx with it).
    pub fn validate_create(&self, req: &CreateVenv) -> Result<(), Error> {
        self.plan_create(req).map(|_| ())
    }

    /// Refuses a bad package change before anything starts.
    pub fn validate_change(&self, name: &str, req: &ChangePackages) -> Result<(), Error> {
        self.check_change(name, req).map(|_| ())
    }

    /// Checks a create request; returns what to install.
    fn plan_create(&self, req: &CreateVenv) -> Result<Plan, Error> {
        spec::check_name(&req.name)?;
        let mut packages = Vec::new();
        let mut with_pip = false;
        if let Some(name) = &req.template {
            let template = spec::template(name)?;
            packages.extend(template.packages.iter().map(|p| p.to_string()));
            with_pip = template.with_pip;
        }
        for (i, p) in req.packages.iter().enumerate() {
            spec::check_requirement(
                &format!("packages[{i}]"),
                p,
                self.settings.allow_url_requirements,
            )?;
            packages.push(p.trim().to_string());
        }
        if let Some(text) = &req.requirements {
            spec::check_requirements(text, self.settings.allow_url_requirements)?;
        }
        let sources = self.source_plan(&req.sources)?;
        Ok(Plan {
            packages,
            with_pip,
            sources,
        })
    }

    async fn create_locked(
        &self,
        runtimes: &Runtimes,
        req: CreateVenv,
        plan: Plan,
        progress: VenvProgressFn<'_>,
    ) -> Result<Venv, Error> {
        let name = req.name.clone();
        progress(step(VenvPhase::Resolve, "finding the runtime"));
        let runtime = resolve_runtime(runtimes, req.runtime.as_deref()).await?;
        let volume_name = Self::volume_name(&name);
        if let Some(existing) = self.engine.inspect_volume(&volume_name).await? {
            if !self.owns(&existing) {
                return Err(Error::Conflict(format!(
                    "volume `{volume_name}` exists and is not one of this host's venvs"
                )));
            }
            self.learn(std::slice::from_ref(&existing)).await?;
            match self.view(&existing).map(|v| v.state) {
                Some(VenvState::Failed) => {
                    progress(step(VenvPhase::Volume, "replacing the failed venv"));
                    self.engine.remove_volume(&volume_name).await?;
                }
                _ => return Err(Error::Conflict(format!("venv `{name}` already exists"))),
            }
        }
        let mut volume_labels = labels::base(KIND_VENV, &self.extra_labels);
        volume_labels.insert(labels::VENV.into(), name.clone());
        volume_labels.insert(labels::VENV_RUNTIME.into(), runtime.clone());
        progress(step(
            VenvPhase::Volume,
            format!("creating volume {volume_name}"),
        ));
        self.set_known(&name, Some(Known::Building));
        if let Err(e) = self
            .engine
            .create_volume(&volume_name, &volume_labels)
            .await
        {
            self.set_known(&name, None);
            return Err(e.into());
        }
        let cache = match self.cache_volume().await {
            Ok(c) => c,
            Err(e) => {
                self.discard(&name, &volume_name).await;
                return Err(e);
            }
        };
        let mut requested = plan.packages.clone();
        if let Some(text) = &req.requirements {
            requested.extend(requirement_lines(text));
        }
        let spec = serde_json::json!({
            "action": "create",
            "name": name,
            "venv": VENV_MOUNT,
            "runtime": runtime,
            "requested": requested,
            "packages": plan.packages,
            "requirements": req.requirements,
            "with_pip": plan.with_pip,
            "source_args": plan.sources.args,
            "wheel_cache": format!("{CACHE_MOUNT}/wheels"),
        });
        let job = self.build_job(&name, &runtime, &volume_name, &cache, &plan.sources, &spec);
        let outcome = self.run_build(&job, progress).await;
        match outcome {
            Ok(JobOutcome {
                record: Some(record),
                error: None,
                ..
            }) => {
                self.set_known(&name, Some(Known::Ready(record)));
                progress(step(VenvPhase::Done, format!("venv {name} ready")));
                let volume = self.volume(&name).await?;
                self.view(&volume).ok_or_else(|| not_found(&name))
            }
            Ok(outcome) => {
                let error = outcome
                    .error
                    .unwrap_or_else(|| "the build ended without a record".into());
                self.set_known(
                    &name,
                    Some(Known::Failed {
                        error: error.clone(),
                        log_tail: outcome.tail.clone(),
                    }),
                );
                Err(build_failed(&name, &error, &outcome.tail))
            }
            Err(e) if is_name_conflict(&e) => {
                // Another host builds this venv into the same volume: leave both alone.
                self.set_known(&name, None);
                Err(building(&name))
            }
            Err(e) => {
                self.discard(&name, &volume_name).await;
                Err(e)
            }
        }
    }

    /// Installs or removes packages in a ready venv. The record is rewritten from what is
    /// installed afterwards, whether the installer succeeded or not.
    pub async fn change(
        &self,
        name: &str,
        req: ChangePackages,
        progress: VenvProgressFn<'_>,
    ) -> Result<Venv, Error> {
        let sources = self.check_change(name, &req)?;
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(building(name));
        };
        let volume = self.volume(name).await?;
        self.learn(std::slice::from_ref(&volume)).await?;
        let current = self.view(&volume).ok_or_else(|| not_found(name))?;
        if current.state != VenvState::Ready {
            return Err(Error::Conflict(format!(
                "venv `{name}` is {}; only a ready venv can change (delete and create it again)",
                state_word(current.state)
            )));
        }
        let runtime = current.runtime.clone();
        if self.engine.inspect_image(&runtime).await?.is_none() {
            return Err(Error::Unprocessable(format!(
                "venv `{name}`'s runtime image `{runtime}` is gone"
            )));
        }
        let mut requested = current.requested.clone();
        if req.remove.is_empty() {
            let mut added: Vec<String> =
                req.packages.iter().map(|p| p.trim().to_string()).collect();
            if let Some(text) = &req.requirements {
                added.extend(requirement_lines(text));
            }
            let added_names: Vec<String> =
                added.iter().map(|p| spec::requirement_name(p)).collect();
            requested.retain(|r| !added_names.contains(&spec::requirement_name(r)));
            requested.extend(added);
        } else {
            let removed: Vec<String> = req.remove.iter().map(|p| spec::normalize(p)).collect();
            requested.retain(|r| !removed.contains(&spec::requirement_name(r)));
        }
        let cache = self.cache_volume().await?;
        let spec = serde_json::json!({
            "action": "install",
            "name": name,
            "venv": VENV_MOUNT,
            "runtime": runtime,
            "requested": requested,
            "packages": req.packages,
            "requirements": req.requirements,
            "remove": req.remove,
            "source_args": sources.args,
            "wheel_cache": format!("{CACHE_MOUNT}/wheels"),
        });
        let job = self.build_job(name, &runtime, &volume.name, &cache, &sources, &spec);
        let outcome = match self.run_build(&job, progress).await {
            Ok(o) => o,
            Err(e) if is_name_conflict(&e) => return Err(building(name)),
            Err(e) => return Err(e),
        };
        if let Some(record) = outcome.record {
            self.set_known(name, Some(Known::Ready(record)));
        }
        if let Some(error) = outcome.error {
            return Err(build_failed(name, &error, &outcome.tail));
        }
        progress(step(VenvPhase::Done, format!("venv {name} updated")));
        let volume = self.volume(name).await?;
        self.view(&volume).ok_or_else(|| not_found(name))
    }

    fn check_change(&self, name: &str, req: &ChangePackages) -> Result<SourcePlan, Error> {
        spec::check_name(name)?;
        let allow = self.settings.allow_url_requirements;
        if req.remove.is_empty() && req.packages.is_empty() && req.requirements.is_none() {
            return Err(Error::invalid(
                "packages",
                "give packages (or requirements) to install, or `remove`",
            ));
        }
        if !req.remove.is_empty() && (!req.packages.is_empty() || req.requirements.is_some()) {
            return Err(Error::invalid(
                "remove",
                "install or remove in one request, not both",
            ));
        }
        for (i, p) in req.packages.iter().enumerate() {
            spec::check_requirement(&format!("packages[{i}]"), p, allow)?;
        }
        for (i, p) in req.remove.iter().enumerate() {
            spec::check_requirement(&format!("remove[{i}]"), p, false)?;
            if spec::normalize(p) != spec::requirement_name(p) {
                return Err(Error::invalid(
                    format!("remove[{i}]"),
                    format!("`{p}` is not a bare package name"),
                ));
            }
        }
        if let Some(text) = &req.requirements {
            spec::check_requirements(text, allow)?;
        }
        self.source_plan(&req.sources)
    }

    /// Deletes venv `name`. While backends mount it that is a conflict, unless `force`, which
    /// removes those backends first. Returns the backends it removed.
    pub async fn delete(&self, name: &str, force: bool) -> Result<Vec<BackendRef>, Error> {
        spec::check_name(name)?;
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock() else {
            return Err(building(name));
        };
        let volume = self.volume(name).await?;
        let users = self.backends(name).await?;
        if !users.is_empty() && !force {
            let names: Vec<&str> = users.iter().map(|b| b.name.as_str()).collect();
            return Err(Error::Conflict(format!(
                "venv `{name}` is used by backend(s) {}\nhint: stop them first, or delete with force (`?force=true`, `--force`)",
                names.join(", ")
            )));
        }
        for backend in &users {
            tracing::info!(venv = %name, backend = %backend.name, "removing a backend to delete its venv");
            self.engine.remove_container(&backend.id).await?;
        }
        // An unfinished build's job (a dead host's) holds the volume too.
        let mut jobs = self.filter(KIND_JOB);
        jobs.insert(labels::VENV.into(), name.into());
        for job in self.engine.list_containers(&jobs).await? {
            self.engine.remove_container(&job.id).await?;
        }
        self.engine
            .remove_volume(&volume.name)
            .await
            .map_err(|e| match e {
                crate::runtime::Error::Engine { message, .. } if message.contains("in use") => {
                    Error::Conflict(format!("venv `{name}` is in use by a container: {message}"))
                }
                other => other.into(),
            })?;
        self.set_known(name, None);
        Ok(users)
    }

    /// Removes a volume this attempt made and forgets the venv.
    async fn discard(&self, name: &str, volume: &str) {
        if let Err(e) = self.engine.remove_volume(volume).await {
            tracing::warn!(volume, error = %e, "could not remove a venv volume after a failed build");
        }
        self.set_known(name, None);
    }

    /// The shared package cache. Hosts with different extra labels (tests, tenants) get their
    /// own, so removing one's objects by label never pulls the cache from under another.
    async fn cache_volume(&self) -> Result<String, Error> {
        let mut extra: Vec<String> = self
            .extra_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        extra.sort();
        let name = if extra.is_empty() {
            "beephost-package-cache".to_string()
        } else {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(extra.join(",").as_bytes()));
            format!("beephost-package-cache-{}", &digest[..12])
        };
        if self.engine.inspect_volume(&name).await?.is_none() {
            self.engine
                .create_volume(&name, &labels::base(KIND_CACHE, &self.extra_labels))
                .await?;
        }
        Ok(name)
    }

    /// Resolves a request's sources against the settings: installer arguments, what to mount,
    /// and whether the job needs a network.
    fn source_plan(&self, req: &Sources) -> Result<SourcePlan, Error> {
        let s = &self.settings;
        let no_index = req.no_index.unwrap_or(s.no_index);
        let index_url = req.index_url.clone().or_else(|| s.index_url.clone());
        if let Some(url) = &index_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(char::is_whitespace);
            if !ok {
                return Err(Error::invalid(
                    "index_url",
                    format!("`{url}` is not an http(s) URL"),
                ));
            }
        }
        let find_links = match &req.find_links {
            Some(dir) => Some(self.check_find_links(dir)?),
            None => s.wheelhouse.clone(),
        };
        let mut args = Vec::new();
        let mut binds = Vec::new();
        if let Some(dir) = find_links {
            args.extend(["--find-links".to_string(), WHEELHOUSE_MOUNT.to_string()]);
            binds.push((dir, WHEELHOUSE_MOUNT.to_string()));
        }
        if no_index {
            args.push("--no-index".into());
        } else if let Some(url) = index_url {
            args.extend(["--index-url".to_string(), url]);
        }
        let mut env = Vec::new();
        if let Some(ca) = &s.ca_bundle {
            if !no_index {
                binds.push((ca.clone(), CA_MOUNT.to_string()));
                env.push(("PIP_CERT".to_string(), CA_MOUNT.to_string()));
                env.push(("SSL_CERT_FILE".to_string(), CA_MOUNT.to_string()));
            }
        }
        Ok(SourcePlan {
            args,
            binds,
            env,
            network: !no_index,
        })
    }

    /// A request's `find_links` must be an existing directory inside the wheelhouse or one of
    /// the allowed roots: a build job must not get to read arbitrary host paths.
    fn check_find_links(&self, dir: &std::path::Path) -> Result<PathBuf, Error> {
        let field = "find_links";
        if !dir.is_absolute() {
            return Err(Error::invalid(
                field,
                format!("{} is not an absolute path", dir.display()),
            ));
        }
        let real = std::fs::canonicalize(dir)
            .map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", dir.display())))?;
        if !real.is_dir() {
            return Err(Error::invalid(
                field,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let allowed = self
            .settings
            .wheelhouse
            .iter()
            .chain(self.settings.find_links_roots.iter())
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .any(|root| real.starts_with(root));
        if !allowed {
            return Err(Error::Unprocessable(format!(
                "find_links: {} is outside the wheelhouse and the allowed find-links roots\nhint: start the host with --wheelhouse or --find-links-roots naming it",
                dir.display()
            )));
        }
        Ok(real)
    }

    fn build_job(
        &self,
        name: &str,
        runtime: &str,
        volume: &str,
        cache: &str,
        sources: &SourcePlan,
        spec: &serde_json::Value,
    ) -> Job {
        let mut job_labels = labels::base(KIND_JOB, &self.extra_labels);
        job_labels.insert(labels::VENV.into(), name.into());
        let mut env = vec![
            ("HOME".to_string(), "/tmp".to_string()),
            ("PIP_CACHE_DIR".to_string(), format!("{CACHE_MOUNT}/pip")),
            ("UV_CACHE_DIR".to_string(), format!("{CACHE_MOUNT}/uv")),
            ("UV_LINK_MODE".to_string(), "copy".to_string()),
            ("PIP_ROOT_USER_ACTION".to_string(), "ignore".to_string()),
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        ];
        env.extend(sources.env.iter().cloned());
        Job {
            name: format!("beephost-job-venv-{name}"),
            image: runtime.to_string(),
            cmd: driver_cmd(spec),
            env,
            // Root without capabilities: the volume's files end up root-owned, so the sandbox
            // user can read the venv and never write it.
            user: Some("0:0".into()),
            labels: job_labels,
            volumes: vec![
                VolumeMount {
                    volume: volume.to_string(),
                    target: VENV_MOUNT.to_string(),
                    read_only: false,
                },
                VolumeMount {
                    volume: cache.to_string(),
                    target: CACHE_MOUNT.to_string(),
                    read_only: false,
                },
            ],
            read_only_binds: sources.binds.clone(),
            network: sources.network,
            memory_bytes: JOB_MEMORY,
            pids: JOB_PIDS,
            timeout_secs: JOB_TIMEOUT_SECS,
        }
    }

    /// Runs a build job, forwarding its output as progress and gathering its events.
    #[tracing::instrument(name = "venvs.build", skip_all, fields(operation = "venvs.build"))]
    async fn run_build(
        &self,
        job: &Job,
        progress: VenvProgressFn<'_>,
    ) -> Result<JobOutcome, Error> {
        let started = std::time::Instant::now();
        let gathered = Mutex::new(JobOutcome::default());
        let on_line = |line: &str| {
            if let Some(event) = line.strip_prefix(MARK) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(event) else {
                    return;
                };
                match v["event"].as_str() {
                    Some("phase") => {
                        let phase = match v["phase"].as_str() {
                            Some("venv") => VenvPhase::Venv,
                            Some("freeze") => VenvPhase::Freeze,
                            _ => VenvPhase::Install,
                        };
                        progress(step(phase, v["message"].as_str().unwrap_or("")));
                    }
                    Some("record") => {
                        gathered.lock().unwrap().record =
                            serde_json::from_value(v["record"].clone()).ok();
                    }
                    Some("failed") => {
                        let mut g = gathered.lock().unwrap();
                        g.error = Some(v["error"].as_str().unwrap_or("the build failed").into());
                        g.tail = strings(&v["log_tail"]);
                    }
                    _ => {}
                }
                return;
            }
            {
                let mut g = gathered.lock().unwrap();
                g.tail.push(line.to_string());
                if g.tail.len() > TAIL_LINES {
                    g.tail.remove(0);
                }
            }
            progress(step(VenvPhase::Install, line));
        };
        let out = match self.engine.run_job(job, &on_line).await {
            Ok(out) => out,
            Err(e) => {
                metrics::venv_build(VenvOutcome::Failed, started.elapsed().as_secs_f64());
                return Err(e.into());
            }
        };
        let mut outcome = gathered.into_inner().unwrap();
        if out.exit_code != 0 && outcome.error.is_none() {
            outcome.error = Some(match out.exit_code {
                137 => "the build job was killed (out of memory?)".to_string(),
                code => format!("the build job exited with code {code}"),
            });
        }
        if outcome.error.is_some() && outcome.tail.is_empty() {
            outcome.tail = out
                .stderr
                .lines()
                .chain(out.stdout.lines())
                .filter(|l| !l.starts_with(MARK))
                .map(str::to_string)
                .collect();
            let skip = outcome.tail.len().saturating_sub(TAIL_LINES);
            outcome.tail.drain(..skip);
        }
        let result = match outcome.error {
            None => VenvOutcome::Ok,
            Some(_) => VenvOutcome::Failed,
        };
        metrics::venv_build(result, started.elapsed().as_secs_f64());
        Ok(outcome)
    }
}

/// What a checked create will install.
struct Plan {
    packages: Vec<String>,
    with_pip: bool,
    sources: SourcePlan,
}

/// Resolved package sources.
struct SourcePlan {
    args: Vec<String>,
    binds: Vec<(PathBuf, String)>,
    env: Vec<(String, String)>,
    network: bool,
}

/// The runtime image a venv is built from: `wanted` (a tag or id), or the newest runtime.
async fn resolve_runtime(runtimes: &Runtimes, wanted: Option<&str>) -> Result<String, Error> {
    let all = runtimes.list().await?;
    let found = match wanted {
        Some(w) => all
            .iter()
            .find(|r| r.tag == w || r.id == w || r.id.trim_start_matches("sha256:").starts_with(w)),
        None => all.first(),
    };
    match (found, wanted) {
        (Some(r), _) => Ok(r.id.clone()),
        (None, Some(w)) => Err(Error::invalid(
            "runtime",
            format!("no runtime `{w}`; `beephost status` lists them"),
        )),
        (None, None) => Err(Error::Unprocessable(
            "there is no runtime to build the venv with\nhint: run `beephost init` first".into(),
        )),
    }
}

fn driver_cmd(spec: &serde_json::Value) -> Vec<String> {
    vec![
        "python3".into(),
        "-I".into(),
        "-c".into(),
        JOB_PY.into(),
        spec.to_string(),
    ]
}

fn requirement_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn step(phase: VenvPhase, message: impl Into<String>) -> VenvProgress {
    VenvProgress {
        phase,
        message: message.into(),
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn last_line(s: &str) -> &str {
    s.trim().lines().last().unwrap_or("")
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: "venv",
        name: name.to_string(),
    }
}

fn building(name: &str) -> Error {
    Error::Conflict(format!(
        "venv `{name}` is being built or changed; retry when it is done"
    ))
}

fn state_word(state: VenvState) -> &'static str {
    match state {
        VenvState::Building => "building",
        VenvState::Ready => "ready",
        VenvState::Failed => "failed",
    }
}

fn build_failed(name: &str, error: &str, tail: &[String]) -> Error {
    let mut message = format!("venv `{name}`: {error}");
    for line in tail.iter().rev().take(8).rev() {
        message.push('\n');
        message.push_str(line);
    }
    Error::Unprocessable(message)
}

/// The engine refused the job's name: another build of this venv is running.
fn is_name_conflict(e: &Error) -> bool {
    matches!(e, Error::Engine(crate::runtime::Error::Engine { op: "create_container", message })
        if message.contains("already in use") || message.contains("Conflict"))
}

#[cfg(test)]
mod tests;
