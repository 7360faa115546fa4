//! The `http` transport: one axum server per backend, on its own port.
//!
//! `GET /health` (open), and with the backend's bearer token: `POST /execute`, `POST /<op>`
//! (`/import`, `/create`, `/call`, `/getattr`, `/setattr`, `/eval`, `/dispose`, `/wrap`,
//! `/module_available`, `/tofloatarray`, `/tofloatarray2d`, `/info`, `/files.*`),
//! `GET|POST /sessions`, `DELETE /sessions/{sid}`.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{io_err, ops, EndpointSettings};
use crate::agent::CallOpts;
use crate::api::problem::Problem;
use crate::error::Error;
use crate::orchestrator::backends::EndpointTarget;
use crate::protocol::Op;

/// Binds the previous address's port, a port of the configured range, or any free port.
pub async fn bind(
    settings: &EndpointSettings,
    previous: Option<&str>,
) -> Result<TcpListener, Error> {
    if let Some(prev) = previous {
        let port: u16 = prev
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Internal(format!("endpoint `{prev}` has no port")))?;
        return TcpListener::bind((settings.bind, port))
            .await
            .map_err(io_err);
    }
    match settings.ports {
        None => TcpListener::bind((settings.bind, 0)).await.map_err(io_err),
        Some((lo, hi)) => {
            for port in lo..=hi {
                if let Ok(l) = TcpListener::bind((settings.bind, port)).await {
                    return Ok(l);
                }
            }
            Err(Error::Conflict(format!(
                "no free port in {lo}-{hi} for a backend endpoint"
            )))
        }
    }
}

/// Serves until `cancel` fires.
pub async fn serve(listener: TcpListener, target: EndpointTarget, cancel: CancellationToken) {
    let guarded = Router::new()
        .route("/execute", post(operation_execute))
        .route("/sessions", get(sessions_list).post(sessions_open))
        .route("/sessions/{sid}", delete(sessions_close))
        .route("/{op}", post(operation))
        .route_layer(middleware::from_fn_with_state(
            target.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/health", get(health).post(health))
        .merge(guarded)
        .with_state(target);
    // Small request/response pairs: no Nagle delay on the client's connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
}

async fn require_token(State(target): State<EndpointTarget>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if target.authorised(presented) {
        next.run(req).await
    } else {
        Problem::new(
            401,
            "this backend needs its token: Authorization: Bearer <token>",
        )
        .into_response()
    }
}

async fn health(State(target): State<EndpointTarget>) -> Response {
    let (status, body, _) = ops::reply("ping", target.call(CallOpts::default(), Op::Ping).await);
    if status == 200 {
        Json(json!({ "status": "ok", "agent": body })).into_response()
    } else {
        respond(status, body, true)
    }
}

async fn operation_execute(State(target): State<EndpointTarget>, body: Bytes) -> Response {
    run(&target, "execute", body).await
}

async fn operation(
    State(target): State<EndpointTarget>,
    Path(op): Path<String>,
    body: Bytes,
) -> Response {
    run(&target, &op, body).await
}

async fn sessions_list(State(target): State<EndpointTarget>) -> Response {
    run(&target, "session.list", Bytes::new()).await
}

async fn sessions_open(State(target): State<EndpointTarget>, body: Bytes) -> Response {
    run(&target, "session.open", body).await
}

async fn sessions_close(State(target): State<EndpointTarget>, Path(sid): Path<String>) -> Response {
    let body = serde_json::to_vec(&json!({ "session": sid })).unwrap_or_default();
    run(&target, "session.close", Bytes::from(body)).await
}

/// Parses a JSON body (empty means `{}`) and runs `op` on the target.
pub async fn run(target: &EndpointTarget, op: &str, body: Bytes) -> Response {
    let (status, body, is_problem) = call(target, op, &body).await;
    respond(status, body, is_problem)
}

/// The transport-neutral core: body bytes in, status and JSON out.
pub async fn call(target: &EndpointTarget, op: &str, body: &[u8]) -> (u16, Value, bool) {
    match ops::parse_body(op, body) {
        Ok((opts, op)) => {
            let name = op.name();
            ops::reply(name, target.call(opts, op).await)
        }
        Err(p) => (p.status, json!(p), true),
    }
}

pub fn respond(status: u16, body: Value, is_problem: bool) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ctype = if is_problem {
        "application/problem+json"
    } else {
        "application/json"
    };
    (
        code,
        [(header::CONTENT_TYPE, ctype)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}
