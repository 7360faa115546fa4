//! The control-plane HTTP API (axum): routes parse requests, call the orchestrator, and map the
//! result. Handlers never touch the container engine; errors become problems in one place
//! ([`problem`]).

pub mod backends;
pub mod health;
pub mod legacy;
pub mod metrics;
pub mod problem;
pub mod runtimes;
pub mod venvs;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::orchestrator::{Orchestrator, RuntimeSource};
use problem::Problem;

/// What every handler shares.
pub struct AppState {
    pub orchestrator: Orchestrator,
    /// The source `POST /v1/runtimes` uses when the body names none.
    pub default_source: RuntimeSource,
    /// Bearer token the API requires, if any.
    pub token: Option<String>,
}

/// The whole API. Probes stay open; everything else needs the token when one is set.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/runtimes", get(runtimes::list).post(runtimes::init))
        .route("/v1/venvs", get(venvs::list).post(venvs::create))
        .route("/v1/venvs/{name}", get(venvs::get).delete(venvs::delete))
        .route("/v1/venvs/{name}/packages", post(venvs::packages))
        .route("/v1/venv-templates", get(venvs::templates))
        .route("/venv/create", post(legacy::create))
        .route("/venv/delete", post(legacy::delete))
        .route("/v1/backends", get(backends::list).post(backends::create))
        .route(
            "/v1/backends/{id}",
            get(backends::get).delete(backends::delete),
        )
        .route("/v1/backends/{id}/restart", post(backends::restart))
        .route("/v1/backends/{id}/logs", get(backends::logs))
        .route(
            "/v1/backends/{id}/sessions",
            get(backends::sessions_list).post(backends::sessions_open),
        )
        .route(
            "/v1/backends/{id}/sessions/{sid}",
            delete(backends::sessions_close),
        )
        .route("/v1/backends/{id}/{op}", post(backends::operation))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn(metrics::observe))
        .with_state(state)
}

async fn not_found(req: Request) -> Problem {
    Problem::new(
        404,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = state.token.as_deref() else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        next.run(req).await
    } else {
        let mut resp = Problem::new(401, "a valid bearer token is required").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        resp
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::{AgentPayload, Runtimes};
    use crate::runtime::fake::FakeRuntime;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(fake: Arc<FakeRuntime>, token: Option<&str>) -> Router {
        router(state(fake, token))
    }

    fn state(fake: Arc<FakeRuntime>, token: Option<&str>) -> Arc<AppState> {
        let runtimes = Runtimes::new(
            fake.clone(),
            Default::default(),
            AgentPayload {
                binary: std::env::current_exe().unwrap(),
            },
        );
        Arc::new(AppState {
            orchestrator: Orchestrator::new(
                fake.clone(),
                runtimes,
                crate::orchestrator::backends::Backends::new(
                    fake,
                    Arc::new(crate::endpoints::HostEndpoints::new(
                        crate::endpoints::EndpointSettings {
                            bind: [127, 0, 0, 1].into(),
                            ports: None,
                            run_dir: std::env::temp_dir(),
                        },
                    )),
                    crate::orchestrator::backends::BackendsConfig {
                        host_id: "test".into(),
                        extra_labels: Default::default(),
                        bounds: Default::default(),
                        oci_runtime: None,
                    },
                ),
                false,
            ),
            default_source: RuntimeSource::Image("python:3.12-slim".into()),
            token: token.map(str::to_string),
        })
    }

    async fn call(app: Router, req: axum::http::Request<Body>) -> (u16, String, String) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    fn post(uri: &str, body: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn healthz_needs_no_engine_and_readyz_reports_it() {
        let fake = Arc::new(FakeRuntime::default());
        fake.set_unavailable(true);
        let (status, _, _) = call(app(fake.clone(), None), get("/healthz")).await;
        assert_eq!(status, 200);
        let host = state(fake.clone(), None);
        let (status, _, body) = call(router(host.clone()), get("/readyz")).await;
        assert_eq!(status, 503);
        assert!(body.contains("\"ready\":false"), "{body}");
        fake.set_unavailable(false);
        // The engine answers, but the host has not reconciled its backends yet.
        let (status, _, body) = call(router(host.clone()), get("/readyz")).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"reconciled\":false"), "{body}");
        host.orchestrator.reconcile().await.unwrap();
        let (status, _, body) = call(router(host), get("/readyz")).await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn engine_down_is_a_503_problem_without_internals() {
        let fake = Arc::new(FakeRuntime::default());
        fake.set_unavailable(true);
        let (status, ctype, body) = call(app(fake, None), get("/v1/runtimes")).await;
        assert_eq!(status, 503);
        assert_eq!(ctype, "application/problem+json");
        assert!(!body.contains("fake engine"), "leaks the cause: {body}");
    }

    #[tokio::test]
    async fn bad_init_bodies_name_the_field() {
        let fake = Arc::new(FakeRuntime::default());
        let (status, _, body) = call(
            app(fake.clone(), None),
            post("/v1/runtimes", r#"{"rootfs":"/x.tar","image":"a"}"#),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("rootfs"), "{body}");
        let (status, _, body) = call(
            app(fake.clone(), None),
            post("/v1/runtimes", r#"{"binds":["/:/host"]}"#),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("binds"), "{body}");
        let (status, _, body) = call(
            app(fake.clone(), None),
            post("/v1/runtimes", r#"{"python":"3.x"}"#),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("python"), "{body}");
        let (status, _, body) = call(
            app(fake, None),
            post("/v1/runtimes", r#"{"rootfs":"/does/not/exist.tar"}"#),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("/does/not/exist.tar"), "{body}");
    }

    #[tokio::test]
    async fn token_is_required_when_set_but_probes_stay_open() {
        let fake = Arc::new(FakeRuntime::default());
        let (status, _, _) = call(app(fake.clone(), Some("s3cret")), get("/v1/runtimes")).await;
        assert_eq!(status, 401);
        let req = axum::http::Request::get("/v1/runtimes")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        let (status, _, _) = call(app(fake.clone(), Some("s3cret")), req).await;
        assert_eq!(status, 200);
        let (status, _, _) = call(app(fake, Some("s3cret")), get("/healthz")).await;
        assert_eq!(status, 200);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn init_streams_ndjson_ending_in_the_runtime() {
        let fake = Arc::new(FakeRuntime::with_python("3.12.1"));
        fake.add_image("python:3.12-slim");
        let (status, ctype, body) = call(app(fake, None), post("/v1/runtimes", "{}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ctype, "application/x-ndjson");
        let last: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
        assert_eq!(last["runtime"]["python"], "3.12.1", "{body}");
        assert!(body.lines().count() > 2, "{body}");
    }
}
