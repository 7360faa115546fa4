//! The `rpc` transport: the gRPC service of proto/beephost.proto, one tonic server per backend.
//!
//! Each method turns its typed request into the operation's JSON arguments and goes through
//! [`ops`] like every other transport; the JSON reply is turned back into the typed reply.
//! Python-side failures are answers (`error` set); problems become gRPC statuses.

use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ops;
use crate::orchestrator::backends::EndpointTarget;

/// The generated messages, server and client.
pub mod pb {
    tonic::include_proto!("beephost.v1");
}

use pb::backend_server::{Backend, BackendServer};

/// Serves the Backend service until `cancel` fires.
pub async fn serve(listener: TcpListener, target: EndpointTarget, cancel: CancellationToken) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(BackendServer::new(Service { target }))
        .serve_with_incoming_shutdown(incoming, async move { cancel.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "a gRPC endpoint stopped");
    }
}

struct Service {
    target: EndpointTarget,
}

type Reply<T> = Result<Response<T>, Status>;

impl Service {
    /// Checks the token and runs `op` with JSON arguments; the JSON reply on success.
    async fn run<T>(&self, req: &Request<T>, op: &str, args: Value) -> Result<Value, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !self.target.authorised(presented) {
            return Err(Status::unauthenticated(
                "this backend needs its token: authorization: Bearer <token>",
            ));
        }
        let (opts, parsed) = ops::parse(op, args).map_err(|p| status(p.status, &p.detail))?;
        let name = parsed.name();
        let (code, body, is_problem) = ops::reply(name, self.target.call(opts, parsed).await);
        if is_problem || code >= 400 {
            let detail = body
                .get("detail")
                .or_else(|| body.pointer("/error/message"))
                .and_then(Value::as_str)
                .unwrap_or("the backend failed")
                .to_string();
            return Err(status(code, &detail));
        }
        Ok(body)
    }
}

fn status(code: u16, detail: &str) -> Status {
    match code {
        400 | 422 => Status::invalid_argument(detail),
        401 => Status::unauthenticated(detail),
        404 => Status::not_found(detail),
        409 => Status::failed_precondition(detail),
        413 | 429 => Status::resource_exhausted(detail),
        501 => Status::unimplemented(detail),
        502 | 503 => Status::unavailable(detail),
        _ => Status::internal(detail),
    }
}

/// `session` and `timeout` of a call, merged into its JSON arguments.
fn with_context(ctx: Option<pb::CallContext>, mut args: Map<String, Value>) -> Value {
    if let Some(ctx) = ctx {
        if !ctx.session.is_empty() {
            args.insert("session".into(), json!(ctx.session));
        }
        if ctx.timeout > 0.0 {
            args.insert("timeout".into(), json!(ctx.timeout));
        }
    }
    Value::Object(args)
}

fn args(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// google.protobuf.Value → JSON.
pub fn to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(to_json).collect()),
    }
}

fn struct_to_json(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect()
}

/// JSON → google.protobuf.Value.
pub fn from_json(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        Value::Object(m) => Kind::StructValue(prost_types::Struct {
            fields: m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn py_error(reply: &Value) -> Option<pb::PyError> {
    let e = reply.get("error").filter(|e| !e.is_null())?;
    Some(pb::PyError {
        r#type: text(e, "type"),
        message: text(e, "message"),
        traceback: text(e, "traceback"),
    })
}

fn py_object(v: &Value) -> Option<pb::PyObject> {
    if !v.is_object() {
        return None;
    }
    Some(pb::PyObject {
        value: v.get("value").map(from_json),
        handle: text(v, "handle"),
        r#type: text(v, "type"),
        repr: text(v, "repr"),
    })
}

fn object_reply(reply: Value) -> pb::ObjectReply {
    pb::ObjectReply {
        object: if reply.get("error").is_some_and(|e| !e.is_null()) {
            None
        } else {
            py_object(&reply)
        },
        stdout: text(&reply, "stdout"),
        stderr: text(&reply, "stderr"),
        error: py_error(&reply),
        session_lost: reply
            .get("session_lost")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

fn values(list: &[prost_types::Value]) -> Value {
    Value::Array(list.iter().map(to_json).collect())
}

fn kwargs(s: &Option<prost_types::Struct>) -> Value {
    Value::Object(s.as_ref().map(struct_to_json).unwrap_or_default())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Backend for Service {
    async fn health(&self, req: Request<pb::HealthRequest>) -> Reply<pb::HealthReply> {
        self.run(&req, "ping", json!({})).await?;
        Ok(Response::new(pb::HealthReply {
            status: "ok".into(),
        }))
    }

    async fn execute(&self, req: Request<pb::ExecuteRequest>) -> Reply<pb::ExecuteReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("code", json!(m.code))]));
        let r = self.run(&req, "exec", a).await?;
        Ok(Response::new(pb::ExecuteReply {
            stdout: text(&r, "stdout"),
            stderr: text(&r, "stderr"),
            truncated: r.get("truncated").and_then(Value::as_bool).unwrap_or(false),
            result: r.get("result").and_then(py_object),
            error: py_error(&r),
            duration_ms: r.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0),
            session: text(&r, "session"),
            session_lost: r
                .get("session_lost")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }))
    }

    async fn eval(&self, req: Request<pb::EvalRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let mut pairs = vec![("expression", json!(m.expression))];
        if let Some(locals) = &m.locals {
            pairs.push(("locals", Value::Object(struct_to_json(locals))));
        }
        let a = with_context(m.context.clone(), args(pairs));
        Ok(Response::new(object_reply(
            self.run(&req, "eval", a).await?,
        )))
    }

    async fn import(&self, req: Request<pb::ModuleRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("module", json!(m.module))]));
        Ok(Response::new(object_reply(
            self.run(&req, "import", a).await?,
        )))
    }

    async fn create(&self, req: Request<pb::CreateRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let mut pairs = vec![
            ("class", json!(m.class)),
            ("args", values(&m.args)),
            ("kwargs", kwargs(&m.kwargs)),
        ];
        if !m.module.is_empty() {
            pairs.push(("module", json!(m.module)));
        }
        if !m.module_handle.is_empty() {
            pairs.push(("module_handle", json!(m.module_handle)));
        }
        let a = with_context(m.context.clone(), args(pairs));
        Ok(Response::new(object_reply(
            self.run(&req, "create", a).await?,
        )))
    }

    async fn call(&self, req: Request<pb::CallRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let mut pairs = vec![
            ("handle", json!(m.handle)),
            ("args", values(&m.args)),
            ("kwargs", kwargs(&m.kwargs)),
        ];
        if !m.method.is_empty() {
            pairs.push(("method", json!(m.method)));
        }
        let a = with_context(m.context.clone(), args(pairs));
        Ok(Response::new(object_reply(
            self.run(&req, "call", a).await?,
        )))
    }

    async fn get_attr(&self, req: Request<pb::GetAttrRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let a = with_context(
            m.context.clone(),
            args(vec![("handle", json!(m.handle)), ("name", json!(m.name))]),
        );
        Ok(Response::new(object_reply(
            self.run(&req, "getattr", a).await?,
        )))
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Reply<pb::SuccessReply> {
        let m = req.get_ref();
        let value = m.value.as_ref().map(to_json).unwrap_or(Value::Null);
        let a = with_context(
            m.context.clone(),
            args(vec![
                ("handle", json!(m.handle)),
                ("name", json!(m.name)),
                ("value", value),
            ]),
        );
        let r = self.run(&req, "setattr", a).await?;
        Ok(Response::new(pb::SuccessReply {
            success: r.get("success").and_then(Value::as_bool).unwrap_or(false),
            error: py_error(&r),
        }))
    }

    async fn dispose(&self, req: Request<pb::HandleRequest>) -> Reply<pb::SuccessReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("handle", json!(m.handle))]));
        let r = self.run(&req, "dispose", a).await?;
        Ok(Response::new(pb::SuccessReply {
            success: r.get("success").and_then(Value::as_bool).unwrap_or(false),
            error: py_error(&r),
        }))
    }

    async fn wrap(&self, req: Request<pb::WrapRequest>) -> Reply<pb::ObjectReply> {
        let m = req.get_ref();
        let value = m.value.as_ref().map(to_json).unwrap_or(Value::Null);
        let a = with_context(m.context.clone(), args(vec![("value", value)]));
        Ok(Response::new(object_reply(
            self.run(&req, "wrap", a).await?,
        )))
    }

    async fn module_available(
        &self,
        req: Request<pb::ModuleRequest>,
    ) -> Reply<pb::ModuleAvailableReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("module", json!(m.module))]));
        let r = self.run(&req, "module_available", a).await?;
        Ok(Response::new(pb::ModuleAvailableReply {
            available: r.get("available").and_then(Value::as_bool).unwrap_or(false),
        }))
    }

    async fn to_float_array(&self, req: Request<pb::HandleRequest>) -> Reply<pb::FloatArrayReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("handle", json!(m.handle))]));
        let r = self.run(&req, "to_float_array", a).await?;
        Ok(Response::new(pb::FloatArrayReply {
            values: floats(&r["values"]),
            error: py_error(&r),
        }))
    }

    async fn to_float_array2d(
        &self,
        req: Request<pb::HandleRequest>,
    ) -> Reply<pb::FloatArray2dReply> {
        let m = req.get_ref();
        let a = with_context(m.context.clone(), args(vec![("handle", json!(m.handle))]));
        let r = self.run(&req, "to_float_array_2d", a).await?;
        let rows = r["values"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| pb::FloatRow {
                        values: floats(row),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::FloatArray2dReply {
            rows,
            error: py_error(&r),
        }))
    }

    async fn open_session(&self, req: Request<pb::SessionRequest>) -> Reply<pb::SessionReply> {
        let session = req.get_ref().session.clone();
        let a = if session.is_empty() {
            json!({})
        } else {
            json!({ "session": session })
        };
        let r = self.run(&req, "session.open", a).await?;
        Ok(Response::new(pb::SessionReply {
            session: text(&r, "session"),
            ok: true,
        }))
    }

    async fn close_session(&self, req: Request<pb::SessionRequest>) -> Reply<pb::SessionReply> {
        let session = req.get_ref().session.clone();
        let r = self
            .run(&req, "session.close", json!({ "session": session }))
            .await?;
        Ok(Response::new(pb::SessionReply {
            session,
            ok: r.get("closed").and_then(Value::as_bool).unwrap_or(true),
        }))
    }

    async fn list_sessions(&self, req: Request<pb::HealthRequest>) -> Reply<pb::SessionListReply> {
        let r = self.run(&req, "session.list", json!({})).await?;
        Ok(Response::new(pb::SessionListReply {
            sessions: r.get("sessions").map(from_json),
        }))
    }

    async fn interrupt(&self, req: Request<pb::SessionRequest>) -> Reply<pb::SessionReply> {
        let session = req.get_ref().session.clone();
        let r = self
            .run(&req, "session.interrupt", json!({ "session": session }))
            .await?;
        Ok(Response::new(pb::SessionReply {
            session,
            ok: r
                .get("interrupted")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_protobuf_values() {
        let v = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(to_json(&from_json(&v)), v);
    }
}
