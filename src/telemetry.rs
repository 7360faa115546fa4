//! Logs and traces: structured logs on stderr (pretty or JSON, filtered by BEEPHOST_LOG) and,
//! when an OTLP endpoint is configured, OpenTelemetry traces exported over gRPC or
//! http/protobuf.
//!
//! Traces follow the standard OpenTelemetry environment (OTEL_EXPORTER_OTLP_ENDPOINT or
//! OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME,
//! OTEL_TRACES_SAMPLER[_ARG]); with no endpoint there is no OpenTelemetry layer, propagator or
//! exporter at all, so tracing costs what plain `tracing` costs. Only beephost's own spans are
//! exported (the exporter's HTTP and gRPC stack never traces itself). With traces on, every JSON
//! log line inside a span carries `trace_id` and `span_id`.

use std::sync::OnceLock;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;
use crate::env_vars;

/// Spans made on every call through a backend: exported as traces, kept out of the logs.
const PER_CALL_SPANS: &[&str] = &["backends.call", "agent.request"];

/// The subscriber, once traces are on; JSON log lines look span contexts up through it.
static OTEL_DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// Owns the trace pipeline; [`Telemetry::shutdown`] flushes spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (blocking, so off the async workers).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown() {
                    tracing::warn!(error = %e, "could not flush traces");
                }
            })
            .await;
        }
    }
}

/// The trace endpoint the environment names, if any (traces are off without one).
pub fn otlp_endpoint() -> Option<String> {
    let disabled = env_flag(env_vars::OTEL_SDK_DISABLED)
        || std::env::var(env_vars::OTEL_TRACES_EXPORTER).is_ok_and(|v| v.trim() == "none");
    if disabled {
        return None;
    }
    [
        env_vars::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        env_vars::OTEL_EXPORTER_OTLP_ENDPOINT,
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Installs the global subscriber (and the trace pipeline when an endpoint is set). Call once,
/// inside the tokio runtime (the gRPC exporter's channel lives on it). An exporter the
/// environment describes but that cannot be built is an error naming the setting.
pub fn init(format: LogFormat) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_from_env(env_vars::BEEPHOST_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    // The spans of every backend call are for traces only: logs would format their fields on
    // each call, and with traces off no layer wants them, so they are never built.
    let filter = filter.and(tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && PER_CALL_SPANS.contains(&meta.name()))
    }));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    };
    let provider = match otlp_endpoint() {
        Some(_) => Some(provider()?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("beephost"))
            .with_filter(Targets::new().with_target("beephost", tracing::Level::INFO))
    });
    let subscriber = tracing_subscriber::registry().with(fmt).with(otel);
    if subscriber.try_init().is_ok() && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::dispatcher::get_default(|d| {
            let _ = OTEL_DISPATCH.set(d.downgrade());
        });
    }
    Ok(Telemetry { provider })
}

fn provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .map_err(|e| {
            format!(
                "cannot export traces: {e}\nhint: check {} and {}",
                env_vars::OTEL_EXPORTER_OTLP_ENDPOINT,
                env_vars::OTEL_EXPORTER_OTLP_PROTOCOL
            )
        })?;
    let mut resource = opentelemetry_sdk::Resource::builder().build();
    let unnamed = resource
        .get(&opentelemetry::Key::new("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    if unnamed {
        resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("beephost")
            .build();
    }
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK's default).
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the W3C `traceparent` in `headers`, when traces are on and there is
/// one; otherwise does nothing.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if OTEL_DISPATCH.get().is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    if parent.span().span_context().is_remote() {
        let _ = span.set_parent(parent);
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A JSON event format that appends `trace_id` and `span_id` of the current span.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = OTEL_DISPATCH
            .get()
            .and_then(WeakDispatch::upgrade)
            .zip(ctx.lookup_current().map(|s| s.id()))
            .and_then(|(dispatch, id)| tracing_opentelemetry::get_otel_context(&id, &dispatch))
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        let Some(sc) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(head) if head.len() > 1 => writeln!(
                writer,
                "{head},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                sc.trace_id(),
                sc.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}
