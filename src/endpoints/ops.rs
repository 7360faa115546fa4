//! One parser for an operation request, one mapper for its outcome: shared by the control
//! plane's `/v1/backends/{id}/{op}` routes and every backend endpoint (http, pipe), so the
//! transports cannot disagree on names, aliases or error shapes.

use serde_json::{json, Map, Value};

use crate::agent::{CallOpts, ClientError};
use crate::api::problem::Problem;
use crate::orchestrator::backends::CallError;
use crate::protocol::{Op, Request};

/// The original system's field names, accepted beside ours.
const ALIASES: &[(&str, &str)] = &[
    ("moduleName", "module"),
    ("handleId", "handle"),
    ("methodName", "method"),
    ("attributeName", "name"),
    ("className", "class"),
    ("moduleHandleId", "module_handle"),
    ("sessionId", "session"),
];

/// Maps a route or command name (`execute`, `tofloatarray`, `module_available`, …) to the
/// protocol's op name.
pub fn op_name(route: &str) -> Option<&'static str> {
    Some(match route {
        "execute" | "exec" => "exec",
        "eval" | "evaluate" => "eval",
        "import" => "import",
        "create" => "create",
        "call" => "call",
        "getattr" => "getattr",
        "setattr" => "setattr",
        "dispose" => "dispose",
        "wrap" => "wrap",
        "module_available" | "moduleavailable" => "module_available",
        "tofloatarray" | "to_float_array" => "to_float_array",
        "tofloatarray2d" | "to_float_array_2d" => "to_float_array_2d",
        "ping" | "health" => "ping",
        "info" => "info",
        "files.put" | "files_put" => "files.put",
        "files.get" | "files_get" => "files.get",
        "files.list" | "files_list" => "files.list",
        "session.open" => "session.open",
        "session.close" => "session.close",
        "session.list" | "sessions" => "session.list",
        "session.interrupt" | "interrupt" => "session.interrupt",
        _ => return None,
    })
}

/// Parses body bytes (empty means `{}`) as the arguments of `route`.
pub fn parse_body(route: &str, body: &[u8]) -> Result<(CallOpts, Op), Problem> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| Problem::new(400, format!("the body is not JSON: {e}")))?
    };
    parse(route, value)
}

/// Parses `body` as the arguments of `route`; errors name the field that is wrong.
pub fn parse(route: &str, body: Value) -> Result<(CallOpts, Op), Problem> {
    let op =
        op_name(route).ok_or_else(|| Problem::new(404, format!("unknown operation `{route}`")))?;
    let mut map = match body {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(Problem::new(
                400,
                format!(
                    "the request body must be a JSON object, not {}",
                    kind(&other)
                ),
            ))
        }
    };
    for (from, to) in ALIASES {
        if let Some(v) = map.remove(*from) {
            map.entry(to.to_string()).or_insert(v);
        }
    }
    // The original's create took the class from a module handle under `moduleHandleId`.
    for reserved in ["id", "op"] {
        if map.contains_key(reserved) {
            return Err(Problem::new(
                400,
                format!("field `{reserved}` is set by the host"),
            ));
        }
    }
    map.insert("id".into(), json!(0));
    map.insert("op".into(), json!(op));
    let request =
        Request::from_value(Value::Object(map)).map_err(|e| Problem::new(400, e.message))?;
    let opts = CallOpts {
        session: request.session,
        timeout: request.timeout.map(std::time::Duration::from_secs_f64),
    };
    Ok((opts, request.op))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        _ => "null",
    }
}

/// Adds the original system's reply field names beside ours, so its clients keep working:
/// `success` for setattr and dispose, `data` for the float arrays, and `isHandle`, `handleId`,
/// `typeName` for objects.
fn seed_fields(op: &str, v: &mut Value) {
    let Value::Object(m) = v else { return };
    match op {
        "setattr" => {
            let ok = m.get("ok").cloned().unwrap_or(Value::Bool(false));
            m.insert("success".into(), ok);
        }
        "dispose" => {
            let ok = m.get("disposed").cloned().unwrap_or(Value::Bool(false));
            m.insert("success".into(), ok);
        }
        "to_float_array" | "to_float_array_2d" => {
            if let Some(values) = m.get("values").cloned() {
                m.insert("data".into(), values);
            }
        }
        _ => {
            if let Some(handle) = m.get("handle").cloned() {
                m.insert("isHandle".into(), Value::Bool(true));
                m.insert("handleId".into(), handle);
                if let Some(t) = m.get("type").cloned() {
                    m.insert("typeName".into(), t);
                }
            }
        }
    }
}

/// What a client gets back: a status and a JSON body (a reply, a Python-side failure in an
/// `error` field, or a problem).
pub fn reply(op: &str, result: Result<Value, CallError>) -> (u16, Value, bool) {
    match result {
        Ok(mut v) => {
            seed_fields(op, &mut v);
            (200, v, false)
        }
        Err(CallError::NotFound(name)) => problem(404, format!("backend `{name}` not found")),
        Err(CallError::Gone) => problem(503, "the backend is gone".to_string()),
        Err(CallError::Client(e)) => client_error(e),
    }
}

fn problem(status: u16, detail: String) -> (u16, Value, bool) {
    (status, json!(Problem::new(status, detail)), true)
}

/// Python-side outcomes (an exception, a timeout, a dead worker) are answers, with status 200;
/// everything else is a problem.
fn client_error(e: ClientError) -> (u16, Value, bool) {
    let session_lost = e.session_lost();
    let error = match &e {
        ClientError::Python {
            kind,
            message,
            traceback,
        } => json!({ "type": kind, "message": message, "traceback": traceback }),
        ClientError::Timeout { message, .. } => json!({ "type": "Timeout", "message": message }),
        ClientError::WorkerDied {
            message,
            exit_code,
            signal,
        } => {
            json!({ "type": "WorkerDied", "message": message, "exit_code": exit_code, "signal": signal })
        }
        ClientError::BackendGone { reason } => {
            json!({ "type": "BackendGone", "message": format!("the backend is gone: {reason}") })
        }
        _ => {
            let status = match &e {
                ClientError::NoSuchSession { .. }
                | ClientError::NoSuchHandle { .. }
                | ClientError::NotFound { .. } => 404,
                ClientError::TooManySessions { .. } => 429,
                ClientError::SessionBusy { .. } | ClientError::SessionClosed { .. } => 409,
                ClientError::FileTooLarge { .. } | ClientError::FrameTooLarge { .. } => 413,
                ClientError::PathRefused { .. } | ClientError::BadRequest { .. } => 400,
                ClientError::WorkerStartFailed { .. } => 503,
                _ => {
                    tracing::error!(error = %e, "backend call failed");
                    return problem(
                        502,
                        "the backend failed to answer; the cause is in the host's log".into(),
                    );
                }
            };
            return problem(status, e.to_string());
        }
    };
    let status = if matches!(e, ClientError::BackendGone { .. }) {
        502
    } else {
        200
    };
    (
        status,
        json!({ "error": error, "session_lost": session_lost }),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_route_names() {
        let (opts, op) = parse("import", json!({"moduleName": "math", "session": "s1"})).unwrap();
        assert_eq!(opts.session.as_deref(), Some("s1"));
        assert_eq!(op.name(), "import");
        let (_, op) = parse("tofloatarray2d", json!({"handleId": "h1"})).unwrap();
        assert_eq!(op.name(), "to_float_array_2d");
        let (_, op) = parse("create", json!({"moduleHandleId": "h1", "className": "C"})).unwrap();
        assert_eq!(op.name(), "create");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let e = parse("execute", json!({"code": 5})).unwrap_err();
        assert!(e.detail.contains("code"), "{}", e.detail);
        let e = parse("execute", json!({})).unwrap_err();
        assert!(e.detail.contains("code"), "{}", e.detail);
        let e = parse("frobnicate", json!({})).unwrap_err();
        assert_eq!(e.status, 404);
        let e = parse("execute", json!([1])).unwrap_err();
        assert!(e.detail.contains("an array"), "{}", e.detail);
    }

    #[test]
    fn python_errors_are_answers_and_agent_errors_problems() {
        let (status, body, is_problem) = reply(
            "exec",
            Err(CallError::Client(ClientError::Python {
                kind: "ZeroDivisionError".into(),
                message: "division by zero".into(),
                traceback: "tb".into(),
            })),
        );
        assert_eq!((status, is_problem), (200, false));
        assert_eq!(body["error"]["type"], "ZeroDivisionError");
        let (status, _, is_problem) = reply(
            "exec",
            Err(CallError::Client(ClientError::NoSuchSession {
                message: "no session `x`".into(),
            })),
        );
        assert_eq!((status, is_problem), (404, true));
    }
}
