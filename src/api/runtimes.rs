//! `GET /v1/runtimes` and `POST /v1/runtimes` (init, streamed as NDJSON).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::problem::{ApiError, ApiJson, Problem};
use super::AppState;
use crate::error::Error;
use crate::orchestrator::{InitRequest, RuntimeSource};

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let runtimes = state.orchestrator.runtimes.list().await?;
    Ok(Json(json!({ "runtimes": runtimes })))
}

/// `POST /v1/runtimes`: exactly one source, or none for the host's default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    pub rootfs: Option<PathBuf>,
    pub image: Option<String>,
    pub python: Option<String>,
    #[serde(default)]
    pub force: bool,
}

impl InitBody {
    fn into_request(self, default: &RuntimeSource) -> Result<InitRequest, Error> {
        let given = [
            self.rootfs.is_some(),
            self.image.is_some(),
            self.python.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::invalid(
                "rootfs",
                "give one of `rootfs`, `image` and `python`, not several",
            ));
        }
        let source = if let Some(rootfs) = self.rootfs {
            RuntimeSource::Rootfs(rootfs)
        } else if let Some(image) = self.image {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return Err(Error::invalid(
                    "image",
                    format!("`{image}` is not an image reference"),
                ));
            }
            RuntimeSource::Image(image)
        } else if let Some(python) = self.python {
            let ok = !python.is_empty()
                && python.split('.').count() <= 3
                && python
                    .split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(Error::invalid(
                    "python",
                    format!("`{python}` is not a Python version like 3.12"),
                ));
            }
            RuntimeSource::Image(format!("python:{python}-slim"))
        } else {
            default.clone()
        };
        Ok(InitRequest {
            source,
            force: self.force,
        })
    }
}

pub async fn init(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<InitBody>,
) -> Result<Response, ApiError> {
    let req = body.into_request(&state.default_source)?;
    // Refuse what can be refused before the stream starts, so it gets a proper status.
    crate::orchestrator::runtimes::validate(&req)?;
    state.orchestrator.require_engine().await?;

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let task_state = state.clone();
    // The init runs to its end even if the client goes away: nothing is left half-built.
    tokio::spawn(async move {
        let send = |value: Value| {
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(Bytes::from(line));
        };
        let progress = |p: crate::orchestrator::Progress| send(json!(p));
        let result = task_state.orchestrator.runtimes.init(req, &progress).await;
        match result {
            Ok(runtime) => send(json!({ "runtime": runtime })),
            Err(e) => send(json!({ "error": Problem::from_error(&e) })),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
