//! `beephost serve`: resolve settings, bind, prepare the default runtime in the background,
//! serve until SIGINT/SIGTERM, then drain.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::cli::{output, ExitCode, ServeArgs};
use crate::config::ServeSettings;
use crate::orchestrator::{AgentPayload, Orchestrator, Runtimes};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::ContainerRuntime;

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Builds the host's state over an engine.
pub fn state(settings: &ServeSettings, engine: Arc<dyn ContainerRuntime>) -> Arc<AppState> {
    let runtimes = Runtimes::new(
        engine.clone(),
        settings.labels.clone(),
        AgentPayload {
            binary: settings.agent_binary.clone(),
        },
    );
    let endpoints = Arc::new(crate::endpoints::HostEndpoints::new(
        settings.endpoints.clone(),
    ));
    let backends = crate::orchestrator::backends::Backends::new(
        engine.clone(),
        endpoints,
        crate::orchestrator::backends::BackendsConfig {
            host_id: settings.host_id.clone(),
            extra_labels: settings.labels.clone(),
            bounds: Default::default(),
            oci_runtime: settings.oci_runtime.clone(),
        },
    );
    Arc::new(AppState {
        orchestrator: Orchestrator::new(
            engine.clone(),
            runtimes,
            backends,
            settings.prepare_runtime,
        )
        .with_venvs(crate::orchestrator::venvs::Venvs::new(
            engine,
            settings.labels.clone(),
            settings.venvs.clone(),
        )),
        default_source: settings.default_source.clone(),
        token: settings.token.clone(),
    })
}

/// The `serve` subcommand.
pub async fn serve_main(args: ServeArgs, token: Option<String>) -> ExitCode {
    let settings = match ServeSettings::resolve(&args, token) {
        Ok(s) => s,
        Err(e) => {
            output::error(&e.to_string(), None);
            return ExitCode::Config;
        }
    };
    let telemetry = match crate::telemetry::init(settings.log_format) {
        Ok(t) => t,
        Err(e) => {
            output::error(&e, None);
            return ExitCode::Config;
        }
    };
    crate::metrics::init();
    let listener = match TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            output::error(
                &format!("cannot listen on {}: {e}", settings.listen),
                Some("pick another address with --listen or BEEPHOST_LISTEN"),
            );
            return ExitCode::Config;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let metrics_listener = match settings.metrics_listen {
        Some(metrics_addr) => match TcpListener::bind(metrics_addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                output::error(
                    &format!("cannot listen on {metrics_addr} for metrics: {e}"),
                    Some("pick another address with --metrics-listen or BEEPHOST_METRICS_LISTEN"),
                );
                return ExitCode::Config;
            }
        },
        None => None,
    };
    tracing::info!(addr = %addr, version = crate::VERSION, traces = telemetry.tracing_enabled(), "listening");
    if let Some(metrics_listener) = metrics_listener {
        let metrics_addr = metrics_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(addr = %metrics_addr, "metrics listening");
        tokio::spawn(async move {
            if let Err(e) = run(
                metrics_listener,
                api::metrics::admin_router(),
                shutdown_signal(),
            )
            .await
            {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }

    let engine: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::from_env());
    let state = state(&settings, engine);
    tokio::spawn(keep_reconciled(Arc::downgrade(&state)));
    if settings.prepare_runtime {
        let state = state.clone();
        let source = settings.default_source.clone();
        tokio::spawn(async move {
            prepare_default_runtime(state, source).await;
        });
    }
    let code = match run(listener, api::router(state), shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::Ok
        }
        Err(e) => {
            output::error(&format!("the server failed: {e}"), None);
            ExitCode::Failure
        }
    };
    telemetry.shutdown().await;
    code
}

/// Reconciles backends at start and every 30 s, and reaps expired ones every second.
async fn keep_reconciled(state: std::sync::Weak<AppState>) {
    let mut last_reconcile: Option<std::time::Instant> = None;
    loop {
        let Some(state) = state.upgrade() else { return };
        let due = last_reconcile.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(30));
        if due {
            match state.orchestrator.reconcile().await {
                Ok(_) => last_reconcile = Some(std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "cannot reconcile backends yet"),
            }
        }
        state.orchestrator.backends.reap().await;
        drop(state);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Prepares the default runtime, retrying while the engine is unreachable.
async fn prepare_default_runtime(state: Arc<AppState>, source: crate::orchestrator::RuntimeSource) {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match state
            .orchestrator
            .runtimes
            .ensure_default(source.clone())
            .await
        {
            Ok(runtime) => {
                tracing::info!(tag = %runtime.tag, python = %runtime.python, "default runtime ready");
                return;
            }
            Err(crate::error::Error::EngineUnavailable(e)) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot prepare the default runtime yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the default runtime; `beephost init` can make one");
                return;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
