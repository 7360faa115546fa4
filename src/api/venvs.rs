//! `/v1/venvs…` and `/v1/venv-templates`: parse, call the venv service, map the result.
//!
//! Builds and package changes take a while, so they stream progress as NDJSON when asked
//! (`Accept: application/x-ndjson` or `?stream=true`: step lines, installer output lines, then
//! `{"venv": …}` or `{"error": problem}`); otherwise they answer once, with the venv. Either way
//! the work runs in its own task to its end, so a client that goes away leaves nothing
//! half-built, and bad input is refused with a 4xx before anything starts.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use super::problem::{ApiError, ApiJson, Problem};
use super::AppState;
use crate::error::Error;
use crate::orchestrator::venvs::{
    ChangePackages, CreateVenv, Sources, Venv, VenvProgress, VenvProgressFn, TEMPLATES,
};

/// `POST /v1/venvs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    #[serde(default)]
    pub packages: Vec<String>,
    /// The text of a requirements file.
    pub requirements: Option<String>,
    pub template: Option<String>,
    pub runtime: Option<String>,
    pub find_links: Option<PathBuf>,
    pub no_index: Option<bool>,
    pub index_url: Option<String>,
}

/// `POST /v1/venvs/{name}/packages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesBody {
    #[serde(default)]
    pub packages: Vec<String>,
    pub requirements: Option<String>,
    #[serde(default)]
    pub remove: Vec<String>,
    pub find_links: Option<PathBuf>,
    pub no_index: Option<bool>,
    pub index_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    pub force: bool,
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let venvs = state.orchestrator.venvs.list().await?;
    Ok(Json(json!({ "venvs": venvs })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Venv>, ApiError> {
    Ok(Json(state.orchestrator.venvs.get(&name).await?))
}

pub async fn templates() -> Json<Value> {
    Json(json!({ "templates": TEMPLATES }))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let req = CreateVenv {
        name: body.name,
        packages: body.packages,
        requirements: body.requirements,
        template: body.template,
        runtime: body.runtime,
        sources: Sources {
            index_url: body.index_url,
            find_links: body.find_links,
            no_index: body.no_index,
        },
    };
    state.orchestrator.venvs.validate_create(&req)?;
    state.orchestrator.require_engine().await?;
    let op: Op = Box::new(move |state, progress| {
        Box::pin(async move {
            let o = &state.orchestrator;
            o.venvs.create(&o.runtimes, req, progress).await
        })
    });
    Ok(respond(
        state,
        wants_stream(&query, &headers),
        StatusCode::CREATED,
        op,
    )
    .await)
}

pub async fn packages(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PackagesBody>,
) -> Result<Response, ApiError> {
    let req = ChangePackages {
        packages: body.packages,
        requirements: body.requirements,
        remove: body.remove,
        sources: Sources {
            index_url: body.index_url,
            find_links: body.find_links,
            no_index: body.no_index,
        },
    };
    state.orchestrator.venvs.validate_change(&name, &req)?;
    state.orchestrator.require_engine().await?;
    let op: Op = Box::new(move |state, progress| {
        Box::pin(async move { state.orchestrator.venvs.change(&name, req, progress).await })
    });
    Ok(respond(state, wants_stream(&query, &headers), StatusCode::OK, op).await)
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let removed = state.orchestrator.venvs.delete(&name, query.force).await?;
    Ok(Json(
        json!({ "deleted": name, "removed_backends": removed }),
    ))
}

/// A long venv operation, run in its own task.
pub type Op = Box<
    dyn for<'a> FnOnce(&'a AppState, VenvProgressFn<'a>) -> BoxFuture<'a, Result<Venv, Error>>
        + Send,
>;

fn wants_stream(query: &StreamQuery, headers: &HeaderMap) -> bool {
    query.stream
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/x-ndjson"))
}

/// Runs `op` to its end in a task; streams NDJSON or answers once with `status` and the venv.
pub async fn respond(state: Arc<AppState>, stream: bool, status: StatusCode, op: Op) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<Venv, Error>>();
    tokio::spawn(async move {
        let send = |value: Value| {
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(Bytes::from(line));
        };
        let progress = |p: VenvProgress| {
            if stream {
                send(json!(p));
            }
        };
        let result = op(&state, &progress).await;
        if stream {
            match &result {
                Ok(venv) => send(json!({ "venv": venv })),
                Err(e) => send(json!({ "error": Problem::from_error(e) })),
            }
        }
        let _ = done_tx.send(result);
    });
    if stream {
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
        });
        return (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(body),
        )
            .into_response();
    }
    match done_rx.await {
        Ok(Ok(venv)) => (status, Json(venv)).into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(_) => ApiError::from(Error::Internal(
            "the venv task ended without a result".into(),
        ))
        .into_response(),
    }
}
