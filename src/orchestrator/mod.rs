//! The orchestrator: what beephost does, in its own words, over the [`ContainerRuntime`] seam.
//!
//! It never sees HTTP types (the api module parses requests into its calls) and never names an
//! engine (it holds an `Arc<dyn ContainerRuntime>`). Each resource has its own file.

pub mod backends;
pub mod runtimes;
pub mod venvs;

pub use runtimes::{
    AgentPayload, InitRequest, Phase, Progress, Runtime, RuntimeSource, RuntimeState, Runtimes,
};

use crate::runtime::ContainerRuntime;

use std::sync::Arc;

use serde::Serialize;

use crate::runtime::EngineInfo;

/// The host's domain services, shared by every API handler.
pub struct Orchestrator {
    engine: Arc<dyn ContainerRuntime>,
    pub runtimes: Runtimes,
    pub venvs: venvs::Venvs,
    pub backends: Arc<backends::Backends>,
    /// Set once the first reconciliation has run (part of readiness).
    reconciled: std::sync::atomic::AtomicBool,
    /// Whether readiness waits for a default runtime.
    expects_runtime: bool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Whether the host has reconciled its backends with the engine since it started.
    pub reconciled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
    pub runtime: RuntimeState,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    pub version: String,
    pub api_version: String,
}

impl From<EngineInfo> for EngineStatus {
    fn from(i: EngineInfo) -> Self {
        EngineStatus {
            version: i.version,
            api_version: i.api_version,
        }
    }
}

impl Orchestrator {
    pub fn new(
        engine: Arc<dyn ContainerRuntime>,
        runtimes: Runtimes,
        backends: Arc<backends::Backends>,
        expects_runtime: bool,
    ) -> Self {
        let venvs = venvs::Venvs::new(engine.clone(), Default::default(), Default::default());
        Orchestrator {
            engine,
            runtimes,
            venvs,
            backends,
            reconciled: std::sync::atomic::AtomicBool::new(false),
            expects_runtime,
        }
    }

    /// Replaces the venv service (the host's labels and package sources).
    pub fn with_venvs(mut self, venvs: venvs::Venvs) -> Self {
        self.venvs = venvs;
        self
    }

    /// Ready when the engine answers and, if the host prepares one, the default runtime is.
    #[tracing::instrument(
        name = "orchestrator.readiness",
        skip_all,
        fields(operation = "readiness")
    )]
    pub async fn readiness(&self) -> Readiness {
        let engine = self.engine.ping().await;
        let runtime = self.runtimes.state();
        let runtime_ok = !self.expects_runtime || matches!(runtime, RuntimeState::Ready { .. });
        let (engine, engine_error) = match engine {
            Ok(info) => (Some(info.into()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let reconciled = self.reconciled.load(std::sync::atomic::Ordering::SeqCst);
        Readiness {
            ready: engine.is_some() && runtime_ok && reconciled,
            reconciled,
            engine,
            engine_error,
            runtime,
        }
    }

    /// Fails fast with [`crate::error::Error::EngineUnavailable`] when the engine is down.
    pub async fn require_engine(&self) -> Result<(), crate::error::Error> {
        self.engine.ping().await.map(|_| ()).map_err(Into::into)
    }

    /// Reconciles backends with the engine; the first success makes the host ready.
    pub async fn reconcile(
        &self,
    ) -> Result<backends::reconcile::ReconcileReport, crate::error::Error> {
        let report = self.backends.reconcile().await?;
        self.reconciled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(report)
    }

    /// Starts a backend on the newest runtime, with the venv mounted when one is named.
    pub async fn create_backend(
        &self,
        req: backends::BackendRequest,
    ) -> Result<backends::BackendView, crate::error::Error> {
        let spec = req.resolve(self.backends.bounds())?;
        // A venv's scripts point at the Python that built it: its backends run on its runtime.
        if let Some(name) = &spec.venv {
            let venv = self.venvs.get(name).await?;
            if venv.state != venvs::VenvState::Ready {
                return Err(crate::error::Error::Conflict(format!(
                    "venv `{name}` is {} and cannot be used yet",
                    serde_json::to_value(venv.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )));
            }
            return self.backends.create(spec, &venv.runtime).await;
        }
        let runtime = self
            .runtimes
            .list()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                crate::error::Error::Conflict(
                    "no runtime yet: run `beephost init` (or start the host with --rootfs)".into(),
                )
            })?;
        self.backends.create(spec, &runtime.id).await
    }
}
