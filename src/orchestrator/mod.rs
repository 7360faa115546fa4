//! The orchestrator: what beephost does, in its own words, over the [`ContainerRuntime`] seam.
//!
//! It never sees HTTP types (the api module parses requests into its calls) and never names an
//! engine (it holds an `Arc<dyn ContainerRuntime>`). Each resource has its own file.

pub mod runtimes;

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
    /// Whether readiness waits for a default runtime.
    expects_runtime: bool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
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
        expects_runtime: bool,
    ) -> Self {
        Orchestrator {
            engine,
            runtimes,
            expects_runtime,
        }
    }

    /// Ready when the engine answers and, if the host prepares one, the default runtime is.
    pub async fn readiness(&self) -> Readiness {
        let engine = self.engine.ping().await;
        let runtime = self.runtimes.state();
        let runtime_ok = !self.expects_runtime || matches!(runtime, RuntimeState::Ready { .. });
        let (engine, engine_error) = match engine {
            Ok(info) => (Some(info.into()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Readiness {
            ready: engine.is_some() && runtime_ok,
            engine,
            engine_error,
            runtime,
        }
    }

    /// Fails fast with [`crate::error::Error::EngineUnavailable`] when the engine is down.
    pub async fn require_engine(&self) -> Result<(), crate::error::Error> {
        self.engine.ping().await.map(|_| ()).map_err(Into::into)
    }
}
