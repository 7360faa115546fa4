//! The original system's venv routes, kept for its clients: `POST /venv/create`
//! `{providerName, modelId}` → `{path, success}` (an idempotent ensure of venv
//! `provider[-model]`) and `POST /venv/delete` `{venvPath}` → `{success}` (stopping whatever
//! uses it, as the original did). `path` is the venv's volume name.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::problem::{ApiJson, Problem};
use super::AppState;
use crate::error::Error;
use crate::orchestrator::venvs::{spec, VOLUME_PREFIX};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    #[serde(alias = "provider_name")]
    pub provider_name: String,
    #[serde(alias = "model_id")]
    pub model_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteBody {
    #[serde(alias = "venv_path")]
    pub venv_path: String,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Response {
    let result = async {
        let name = spec::provider_venv_name(&body.provider_name, body.model_id.as_deref())?;
        state.orchestrator.require_engine().await?;
        let o = &state.orchestrator;
        let log = |p: crate::orchestrator::venvs::VenvProgress| {
            tracing::debug!(venv = %name, phase = ?p.phase, "{}", p.message);
        };
        o.venvs.ensure(&o.runtimes, &name, &log).await
    }
    .await;
    match result {
        Ok(venv) => Json(json!({
            "path": venv.volume,
            "success": true,
            "name": venv.name,
            "state": venv.state,
        }))
        .into_response(),
        Err(e) => failure(&e),
    }
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<DeleteBody>,
) -> Response {
    let name = venv_name_of_path(&body.venv_path);
    match state.orchestrator.venvs.delete(&name, true).await {
        Ok(_) => Json(json!({ "success": true })).into_response(),
        Err(e) => failure(&e),
    }
}

/// The venv a seed client's path names: a volume name, a venv name, or a path ending in one.
fn venv_name_of_path(path: &str) -> String {
    let last = path
        .trim()
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("");
    last.strip_prefix(VOLUME_PREFIX).unwrap_or(last).to_string()
}

/// A problem body that also carries the seed's `success: false`.
fn failure(e: &Error) -> Response {
    let problem = Problem::from_error(e);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::to_value(&problem).unwrap_or_default();
    body["success"] = json!(false);
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_venvs() {
        assert_eq!(
            venv_name_of_path("beephost-venv-openai-gpt-4o"),
            "openai-gpt-4o"
        );
        assert_eq!(venv_name_of_path("/venvs/openai/"), "openai");
        assert_eq!(venv_name_of_path("C:\\venvs\\local"), "local");
        assert_eq!(
            crate::orchestrator::venvs::Venvs::volume_name("x"),
            "beephost-venv-x"
        );
    }
}
