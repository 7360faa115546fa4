//! `GET /metrics` and the middleware every request passes through: one server span per request
//! (continuing an incoming W3C `traceparent` when traces are on) and the HTTP request metrics,
//! labelled by route template, never by path.
//!
//! `/metrics` is unauthenticated, like `/healthz` and `/readyz`: it carries counts and
//! durations under bounded labels (no ids, names or user input), and scrapers rarely hold
//! bearer tokens. Operators who do not want it on the API address can put the API on a private
//! address and serve metrics elsewhere with `--metrics-listen`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::field::Empty;
use tracing::Instrument;

use crate::metrics;

/// `GET /metrics`: the registry in the Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

/// The admin listener's router: `/metrics` only (requests to it are counted too).
pub fn admin_router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(observe))
}

/// Wraps a request in its server span and counts it. Added with `Router::layer`, so it runs
/// inside routing and sees the [`MatchedPath`]; the fallback has none and counts as
/// [`metrics::UNMATCHED_ROUTE`].
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let route = route.as_deref().unwrap_or(metrics::UNMATCHED_ROUTE);
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
    );
    crate::telemetry::continue_trace(&span, req.headers());
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| tracing::debug!(status, "answered"));
    metrics::http_request(route, &method, status, started.elapsed().as_secs_f64());
    resp
}
