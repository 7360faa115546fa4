//! `/v1/backends`: start, list, inspect and stop backends, and run operations on them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::problem::{ApiError, ApiJson};
use super::AppState;
use crate::endpoints::{http, ops};
use crate::orchestrator::backends::{BackendDetails, BackendRequest, BackendView};

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "backends": state.orchestrator.backends.list() }))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<BackendRequest>,
) -> Result<(StatusCode, Json<BackendView>), ApiError> {
    let view = state.orchestrator.create_backend(req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<BackendDetails>, ApiError> {
    Ok(Json(state.orchestrator.backends.details(&id).await?))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<BackendView>, ApiError> {
    Ok(Json(state.orchestrator.backends.delete(&id).await?))
}

pub async fn restart(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<BackendView>, ApiError> {
    Ok(Json(state.orchestrator.backends.restart(&id).await?))
}

pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.orchestrator.backends.logs(&id)?))
}

pub async fn operation(
    State(state): State<Arc<AppState>>,
    Path((id, op)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    run(&state, &id, &op, &body).await
}

pub async fn sessions_list(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    run(&state, &id, "session.list", b"").await
}

pub async fn sessions_open(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    run(&state, &id, "session.open", &body).await
}

pub async fn sessions_close(
    State(state): State<Arc<AppState>>,
    Path((id, sid)): Path<(String, String)>,
) -> Response {
    let body = serde_json::to_vec(&json!({ "session": sid })).unwrap_or_default();
    run(&state, &id, "session.close", &body).await
}

async fn run(state: &AppState, id: &str, op: &str, body: &[u8]) -> Response {
    let (status, body, is_problem) = match ops::parse_body(op, body) {
        Ok((opts, op)) => {
            let name = op.name();
            ops::reply(
                name,
                state
                    .orchestrator
                    .backends
                    .call(id, opts, op, crate::metrics::Transport::Api)
                    .await,
            )
        }
        Err(p) => (p.status, json!(p), true),
    };
    http::respond(status, body, is_problem)
}
