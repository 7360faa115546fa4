//! An OTLP trace receiver for tests, over gRPC (tonic with opentelemetry-proto's
//! `TraceService`) or over HTTP (protobuf `POST /v1/traces`). It keeps every span it receives,
//! flattened, so tests can assert parent/child chains and attributes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One received span, with ids as lowercase hex and attributes as strings.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    /// OTLP `SpanKind` (2 = server, 3 = client).
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// OTLP `SpanKind` values.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

type Store = Arc<Mutex<Vec<Span>>>;

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Base URL for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub endpoint: String,
    spans: Store,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// A gRPC receiver (OTEL_EXPORTER_OTLP_PROTOCOL=grpc).
    pub fn grpc() -> Receiver {
        let runtime = runtime();
        let spans = Store::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        runtime.spawn(async move {
            let incoming = tokio_stream_from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Receiver {
            endpoint: format!("http://{addr}"),
            spans,
            runtime: Some(runtime),
        }
    }

    /// An HTTP receiver (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf).
    pub fn http() -> Receiver {
        let runtime = runtime();
        let spans = Store::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let store = store.clone();
                async move {
                    let ctype = headers
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if ctype != "application/x-protobuf" {
                        return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                    }
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            record(&store, req);
                            (
                                axum::http::StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            }),
        );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            endpoint: format!("http://{addr}"),
            spans,
            runtime: Some(runtime),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until some received span satisfies `check`, and returns all spans then.
    pub fn wait_for_span(&self, what: &str, check: impl Fn(&Span) -> bool) -> Vec<Span> {
        super::wait_for(what, Duration::from_secs(30), || {
            let spans = self.spans();
            spans.iter().any(&check).then_some(spans)
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Accepted connections as the stream tonic's `serve_with_incoming` takes.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(s, _)| s);
        Some((conn, listener))
    })
}

struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn record(store: &Store, req: ExportTraceServiceRequest) {
    let mut out = store.lock().unwrap();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: attributes(&s.attributes),
                });
            }
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
