//! Prometheus metrics: the one registry, every family beephost exports, and the typed helpers
//! the rest of the crate records through.
//!
//! Invariant: labels are bounded. Every label value is a `&'static str` taken from an enum here,
//! an axum route template, or an operation name written in the code; no backend id, name,
//! venv name or other user input can reach a label, because no helper accepts a `String`.
//!
//! Every family is registered when the registry is first touched, and labelled families whose
//! label values are known up front are pre-initialised at zero, so `GET /metrics` exposes the
//! whole catalogue (and dashboards and alert rules resolve) before any traffic.
//!
//! Recording is one line at the call site:
//! `metrics::execution(ExecOutcome::Ok, Transport::Http, started.elapsed().as_secs_f64())`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route label of requests no route matched (so a 404 path never becomes a label).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Ran to completion (a Python exception is still `Ok`: the sandbox did its job).
    Ok,
    /// The host or agent failed to run it (protocol, engine or internal error).
    Error,
    /// The execution's timeout fired.
    Timeout,
    /// The worker process died (exit, signal, OOM) during the call.
    WorkerDied,
    /// The backend container went away during the call.
    BackendGone,
}

impl ExecOutcome {
    pub const ALL: [ExecOutcome; 5] = [
        ExecOutcome::Ok,
        ExecOutcome::Error,
        ExecOutcome::Timeout,
        ExecOutcome::WorkerDied,
        ExecOutcome::BackendGone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ExecOutcome::Ok => "ok",
            ExecOutcome::Error => "error",
            ExecOutcome::Timeout => "timeout",
            ExecOutcome::WorkerDied => "worker_died",
            ExecOutcome::BackendGone => "backend_gone",
        }
    }
}

/// Which front door an execution came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The control-plane API (`/v1/backends/{id}/execute`, `/v1/execute`, `/execute`).
    Api,
    /// A backend's own HTTP endpoint.
    Http,
    /// A backend's Unix socket.
    Pipe,
    /// A backend's gRPC endpoint.
    Rpc,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Api,
        Transport::Http,
        Transport::Pipe,
        Transport::Rpc,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Api => "api",
            Transport::Http => "http",
            Transport::Pipe => "pipe",
            Transport::Rpc => "rpc",
        }
    }
}

/// A backend's lifecycle state, as counted by `beephost_backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Starting,
    Running,
    Stopping,
    Failed,
}

impl BackendState {
    pub const ALL: [BackendState; 4] = [
        BackendState::Starting,
        BackendState::Running,
        BackendState::Stopping,
        BackendState::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BackendState::Starting => "starting",
            BackendState::Running => "running",
            BackendState::Stopping => "stopping",
            BackendState::Failed => "failed",
        }
    }
}

/// A phase of starting a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// Creating the container.
    Create,
    /// Starting it and attaching.
    Start,
    /// Until the agent answers its handshake.
    Ready,
}

impl StartPhase {
    pub const ALL: [StartPhase; 3] = [StartPhase::Create, StartPhase::Start, StartPhase::Ready];

    pub fn label(self) -> &'static str {
        match self {
            StartPhase::Create => "create",
            StartPhase::Start => "start",
            StartPhase::Ready => "ready",
        }
    }
}

/// How a venv build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenvOutcome {
    Ok,
    Failed,
}

impl VenvOutcome {
    pub const ALL: [VenvOutcome; 2] = [VenvOutcome::Ok, VenvOutcome::Failed];

    pub fn label(self) -> &'static str {
        match self {
            VenvOutcome::Ok => "ok",
            VenvOutcome::Failed => "failed",
        }
    }
}

/// Docker operations named by `runtime::docker`, pre-initialised so the error family is
/// always exposed. An operation missing here still counts; it just appears on first error.
pub const DOCKER_OPERATIONS: &[&str] = &[
    "negotiate_version",
    "version",
    "list_images",
    "inspect_image",
    "pull_image",
    "import_rootfs",
    "build_image",
    "create_container",
    "start_container",
    "attach_container",
    "inspect_container",
    "restart_container",
    "wait_container",
    "logs",
    "stats",
    "remove_image",
    "list_containers",
    "remove_container",
    "create_volume",
    "inspect_volume",
    "list_volumes",
    "remove_volume",
];

/// HTTP methods kept as label values; anything else is `other` (extension methods are
/// arbitrary client input).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`…, the only form an HTTP status takes in a label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Every family beephost exports.
struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    executions: IntCounterVec,
    execution_duration: HistogramVec,
    backends: IntGaugeVec,
    backend_start: HistogramVec,
    venv_builds: IntCounterVec,
    venv_build_duration: HistogramVec,
    pool_size: IntGauge,
    pool_hits: IntCounter,
    pool_misses: IntCounter,
    reconcile_adopted: IntCounter,
    reconcile_removed: IntCounter,
    docker_errors: IntCounterVec,
}

const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const EXEC_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const START_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const VENV_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "beephost_build_info",
                "Always 1; the version label says which beephost is running",
            ),
            &["version"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique name");
        build_info.with_label_values(&[crate::VERSION]).set(1);

        let backends = IntGaugeVec::new(
            Opts::new("beephost_backends", "Backends this host owns, by state"),
            &["state"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(backends.clone()))
            .expect("unique name");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let pool_size = gauge(
            "beephost_pool_size",
            "Warm backends ready in the pool for POST /v1/execute",
        );

        let m = Metrics {
            http_requests: counter_vec(
                &registry,
                "beephost_http_requests_total",
                "HTTP requests served, by route template, method and status class",
                &["route", "method", "status_class"],
            ),
            http_duration: histogram_vec(
                &registry,
                "beephost_http_request_duration_seconds",
                "Time to produce an HTTP response (streamed bodies: until the head is sent)",
                &["route", "method", "status_class"],
                HTTP_BUCKETS,
            ),
            executions: counter_vec(
                &registry,
                "beephost_executions_total",
                "Code executions, by outcome and transport",
                &["outcome", "transport"],
            ),
            execution_duration: histogram_vec(
                &registry,
                "beephost_execution_duration_seconds",
                "Wall time of code executions as the host saw them",
                &["outcome", "transport"],
                EXEC_BUCKETS,
            ),
            backends,
            backend_start: histogram_vec(
                &registry,
                "beephost_backend_start_duration_seconds",
                "Time spent starting a backend, by phase (create, start, ready)",
                &["phase"],
                START_BUCKETS,
            ),
            venv_builds: counter_vec(
                &registry,
                "beephost_venv_builds_total",
                "Venv builds, by outcome",
                &["outcome"],
            ),
            venv_build_duration: histogram_vec(
                &registry,
                "beephost_venv_build_duration_seconds",
                "Wall time of venv builds, by outcome",
                &["outcome"],
                VENV_BUCKETS,
            ),
            pool_size,
            pool_hits: counter(
                &registry,
                "beephost_pool_hits_total",
                "Stateless executions served by a warm backend from the pool",
            ),
            pool_misses: counter(
                &registry,
                "beephost_pool_misses_total",
                "Stateless executions that found the pool empty and started a backend",
            ),
            reconcile_adopted: counter(
                &registry,
                "beephost_reconcile_adopted_total",
                "Labelled containers reconciliation found and adopted",
            ),
            reconcile_removed: counter(
                &registry,
                "beephost_reconcile_removed_total",
                "Labelled leftovers reconciliation removed because nothing owned them",
            ),
            docker_errors: counter_vec(
                &registry,
                "beephost_docker_errors_total",
                "Docker API calls that failed, by operation",
                &["operation"],
            ),
            registry,
        };
        for outcome in ExecOutcome::ALL {
            for transport in Transport::ALL {
                let labels = [outcome.label(), transport.label()];
                m.executions.with_label_values(&labels);
                m.execution_duration.with_label_values(&labels);
            }
        }
        for state in BackendState::ALL {
            m.backends.with_label_values(&[state.label()]);
        }
        for phase in StartPhase::ALL {
            m.backend_start.with_label_values(&[phase.label()]);
        }
        for outcome in VenvOutcome::ALL {
            m.venv_builds.with_label_values(&[outcome.label()]);
            m.venv_build_duration.with_label_values(&[outcome.label()]);
        }
        for op in DOCKER_OPERATIONS {
            m.docker_errors.with_label_values(&[op]);
        }
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Registers every family now (the server calls this at start, so the first scrape is whole).
pub fn init() {
    LazyLock::force(&METRICS);
}

/// The registry, in the Prometheus text exposition format.
pub fn render() -> String {
    let families = METRICS.registry.gather();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding into memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// One HTTP request: `route` is the matched route template (or [`UNMATCHED_ROUTE`]).
pub fn http_request(route: &str, method: &axum::http::Method, status: u16, seconds: f64) {
    let labels = [route, method_label(method), status_class(status)];
    METRICS.http_requests.with_label_values(&labels).inc();
    METRICS
        .http_duration
        .with_label_values(&labels)
        .observe(seconds);
}

/// One execution (`exec` and the other operations that run user code).
pub fn execution(outcome: ExecOutcome, transport: Transport, seconds: f64) {
    let labels = [outcome.label(), transport.label()];
    METRICS.executions.with_label_values(&labels).inc();
    METRICS
        .execution_duration
        .with_label_values(&labels)
        .observe(seconds);
}

/// How many backends are in `state` now (set after each change or reconciliation).
pub fn set_backends(state: BackendState, n: usize) {
    METRICS
        .backends
        .with_label_values(&[state.label()])
        .set(n as i64);
}

/// Time one phase of a backend start took.
pub fn backend_start_phase(phase: StartPhase, seconds: f64) {
    METRICS
        .backend_start
        .with_label_values(&[phase.label()])
        .observe(seconds);
}

/// One finished venv build.
pub fn venv_build(outcome: VenvOutcome, seconds: f64) {
    METRICS
        .venv_builds
        .with_label_values(&[outcome.label()])
        .inc();
    METRICS
        .venv_build_duration
        .with_label_values(&[outcome.label()])
        .observe(seconds);
}

/// Warm backends in the pool now.
pub fn set_pool_size(n: usize) {
    METRICS.pool_size.set(n as i64);
}

/// A stateless execution took a warm backend from the pool.
pub fn pool_hit() {
    METRICS.pool_hits.inc();
}

/// A stateless execution found the pool empty.
pub fn pool_miss() {
    METRICS.pool_misses.inc();
}

/// One reconciliation pass: containers adopted and leftovers removed.
pub fn reconcile(adopted: u64, removed: u64) {
    METRICS.reconcile_adopted.inc_by(adopted);
    METRICS.reconcile_removed.inc_by(removed);
}

/// A Docker API call failed; `op` is the operation's name as written in `runtime::docker`.
pub fn docker_error(op: &'static str) {
    METRICS.docker_errors.with_label_values(&[op]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`, where `labels` is the exact label
    /// set as rendered (sorted by name).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_whole_catalogue_is_exposed_before_any_traffic() {
        init();
        let text = render();
        for name in [
            "beephost_build_info",
            "beephost_http_requests_total",
            "beephost_http_request_duration_seconds",
            "beephost_executions_total",
            "beephost_execution_duration_seconds",
            "beephost_backends",
            "beephost_backend_start_duration_seconds",
            "beephost_venv_builds_total",
            "beephost_venv_build_duration_seconds",
            "beephost_pool_size",
            "beephost_pool_hits_total",
            "beephost_pool_misses_total",
            "beephost_reconcile_adopted_total",
            "beephost_reconcile_removed_total",
            "beephost_docker_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is not declared:\n{text}"
            );
        }
        // Pre-initialised series of families other tests here do not touch.
        assert!(
            text.contains(r#"beephost_backends{state="failed"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"beephost_backend_start_duration_seconds_count{phase="ready"}"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"beephost_venv_build_duration_seconds_bucket{outcome="failed",le="+Inf"}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn helpers_record_into_the_series_they_name() {
        // Tests share the process-wide registry, so compare before and after.
        let series = r#"beephost_executions_total{outcome="worker_died",transport="pipe"}"#;
        let before = sample(&render(), series).unwrap();
        execution(ExecOutcome::WorkerDied, Transport::Pipe, 0.25);
        execution(ExecOutcome::WorkerDied, Transport::Pipe, 0.5);
        let text = render();
        assert_eq!(sample(&text, series).unwrap(), before + 2.0, "{text}");
        let sum =
            r#"beephost_execution_duration_seconds_sum{outcome="worker_died",transport="pipe"}"#;
        assert!(sample(&text, sum).unwrap() >= 0.75, "{text}");

        set_backends(BackendState::Stopping, 3);
        let before = sample(&render(), "beephost_reconcile_removed_total").unwrap();
        reconcile(1, 4);
        docker_error("start_container");
        let text = render();
        assert_eq!(
            sample(&text, r#"beephost_backends{state="stopping"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "beephost_reconcile_removed_total"),
            Some(before + 4.0)
        );
        assert!(
            sample(
                &text,
                r#"beephost_docker_errors_total{operation="start_container"}"#
            )
            .unwrap()
                >= 1.0
        );
    }

    #[test]
    fn http_labels_are_bounded_forms() {
        let ext = axum::http::Method::from_bytes(b"SOMETHINGUNIQUE").unwrap();
        http_request(UNMATCHED_ROUTE, &ext, 599, 0.01);
        let text = render();
        assert!(!text.contains("SOMETHINGUNIQUE"), "{text}");
        assert!(
            text.contains(
                r#"beephost_http_requests_total{method="other",route="unmatched",status_class="5xx"}"#
            ),
            "{text}"
        );
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
    }
}
