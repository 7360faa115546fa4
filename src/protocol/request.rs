//! Requests: the envelope (`id`, `op`, `session`, `timeout`) and one argument type per op.
//!
//! On the wire a request is one flat JSON object:
//! `{"id": 7, "op": "exec", "session": "s1", "timeout": 5, "code": "1 + 1"}`.
//! [`Request::from_slice`] parses it in two steps (envelope, then the op's own fields) so that
//! an error names the field that is wrong and still carries the request id when there is one.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::reply::ErrorKind;

/// One request as sent by the host (or, with a sequence number as id, by the agent to a worker).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    /// The session to run in; `None` runs a worker op on a fresh worker.
    pub session: Option<String>,
    /// Seconds before the call is interrupted (worker ops only).
    pub timeout: Option<f64>,
    pub op: Op,
}

/// Every operation of the protocol, with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op")]
pub enum Op {
    /// First frame of an attach: answered once the agent has resynchronised.
    #[serde(rename = "hello")]
    Hello(Hello),
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "info")]
    Info,
    #[serde(rename = "exec")]
    Exec(Exec),
    #[serde(rename = "eval")]
    Eval(Eval),
    #[serde(rename = "import")]
    Import(Import),
    #[serde(rename = "create")]
    Create(Create),
    #[serde(rename = "call")]
    Call(Call),
    #[serde(rename = "getattr")]
    GetAttr(GetAttr),
    #[serde(rename = "setattr")]
    SetAttr(SetAttr),
    #[serde(rename = "dispose")]
    Dispose(HandleArg),
    #[serde(rename = "wrap")]
    Wrap(Wrap),
    #[serde(rename = "module_available")]
    ModuleAvailable(Import),
    #[serde(rename = "to_float_array")]
    ToFloatArray(HandleArg),
    #[serde(rename = "to_float_array_2d")]
    ToFloatArray2d(HandleArg),
    #[serde(rename = "session.open")]
    SessionOpen,
    #[serde(rename = "session.close")]
    SessionClose,
    #[serde(rename = "session.list")]
    SessionList,
    #[serde(rename = "session.interrupt")]
    SessionInterrupt,
    #[serde(rename = "files.put")]
    FilesPut(FilesPut),
    #[serde(rename = "files.get")]
    FilesGet(FilesPath),
    #[serde(rename = "files.list")]
    FilesList(FilesPath),
}

impl Op {
    /// The op's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello(_) => "hello",
            Op::Ping => "ping",
            Op::Info => "info",
            Op::Exec(_) => "exec",
            Op::Eval(_) => "eval",
            Op::Import(_) => "import",
            Op::Create(_) => "create",
            Op::Call(_) => "call",
            Op::GetAttr(_) => "getattr",
            Op::SetAttr(_) => "setattr",
            Op::Dispose(_) => "dispose",
            Op::Wrap(_) => "wrap",
            Op::ModuleAvailable(_) => "module_available",
            Op::ToFloatArray(_) => "to_float_array",
            Op::ToFloatArray2d(_) => "to_float_array_2d",
            Op::SessionOpen => "session.open",
            Op::SessionClose => "session.close",
            Op::SessionList => "session.list",
            Op::SessionInterrupt => "session.interrupt",
            Op::FilesPut(_) => "files.put",
            Op::FilesGet(_) => "files.get",
            Op::FilesList(_) => "files.list",
        }
    }

    /// Whether the op runs Python code in a worker (and so goes through a session).
    pub fn is_worker_op(&self) -> bool {
        matches!(
            self,
            Op::Exec(_)
                | Op::Eval(_)
                | Op::Import(_)
                | Op::Create(_)
                | Op::Call(_)
                | Op::GetAttr(_)
                | Op::SetAttr(_)
                | Op::Dispose(_)
                | Op::Wrap(_)
                | Op::ModuleAvailable(_)
                | Op::ToFloatArray(_)
                | Op::ToFloatArray2d(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Echoed in the reply, so a host can tell its handshake from an older one's.
    pub nonce: String,
    #[serde(default)]
    pub protocol: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locals: Option<Map<String, Value>>,
}

/// A module name (import, module_available).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub module: String,
}

/// Instantiate `class` from a module given by name or by handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Create {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_handle: Option<String>,
    pub class: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
}

/// Call `method` of the object behind `handle` (or the object itself when `method` is absent).
/// Arguments may reference handles as `{"$handle": "h1"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetAttr {
    pub handle: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetAttr {
    pub handle: String,
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandleArg {
    pub handle: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wrap {
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesPut {
    pub path: String,
    pub data: Base64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesPath {
    #[serde(default = "dot")]
    pub path: String,
}

fn dot() -> String {
    ".".to_owned()
}

/// Bytes carried as a base64 string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64(pub Vec<u8>);

impl std::fmt::Debug for Base64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64({} bytes)", self.0.len())
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Base64)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// A request that could not be parsed; `id` is set when the envelope got that far.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub id: Option<u64>,
    pub kind: ErrorKind,
    pub message: String,
}

impl Request {
    pub fn new(id: u64, op: Op) -> Self {
        Self {
            id,
            session: None,
            timeout: None,
            op,
        }
    }

    /// The timeout as a duration, when one was given.
    pub fn timeout_duration(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs_f64)
    }

    /// Parses one frame's payload; errors name the field that is wrong.
    pub fn from_slice(payload: &[u8]) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| RequestError {
            id: None,
            kind: ErrorKind::BadFrame,
            message: format!("frame is not valid json: {e}"),
        })?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Request, RequestError> {
        let Value::Object(mut map) = value else {
            return Err(bad(None, "request is not a json object".into()));
        };
        let id = match map.get("id") {
            Some(v) => v.as_u64().ok_or_else(|| {
                bad(
                    None,
                    format!("field `id`: expected an unsigned integer, got {v}"),
                )
            })?,
            None => return Err(bad(None, "missing field `id`".into())),
        };
        let op = match map.remove("op") {
            Some(Value::String(s)) => s,
            Some(v) => {
                return Err(bad(
                    Some(id),
                    format!("field `op`: expected a string, got {v}"),
                ))
            }
            None => return Err(bad(Some(id), "missing field `op`".into())),
        };
        let session = match map.remove("session") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid_session_id(&s) => Some(s),
            Some(Value::String(s)) => {
                return Err(bad(
                    Some(id),
                    format!(
                        "field `session`: `{s}` is not 1 to 128 letters, digits, `-`, `_` or `.`"
                    ),
                ))
            }
            Some(v) => {
                return Err(bad(
                    Some(id),
                    format!("field `session`: expected a string, got {v}"),
                ))
            }
        };
        let timeout = match map.remove("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() && t > 0.0 && t <= 1e9 => Some(t),
                _ => {
                    return Err(bad(
                        Some(id),
                        format!("field `timeout`: expected a positive number of seconds, got {v}"),
                    ))
                }
            },
        };
        let args = Value::Object(map);
        let op = match op.as_str() {
            "hello" => Op::Hello(fields(id, args)?),
            "ping" => Op::Ping,
            "info" => Op::Info,
            "exec" => Op::Exec(fields(id, args)?),
            "eval" => Op::Eval(fields(id, args)?),
            "import" => Op::Import(fields(id, args)?),
            "create" => {
                let c: Create = fields(id, args)?;
                if c.module.is_none() && c.module_handle.is_none() {
                    return Err(bad(
                        Some(id),
                        "missing field `module` (or `module_handle`)".into(),
                    ));
                }
                Op::Create(c)
            }
            "call" => Op::Call(fields(id, args)?),
            "getattr" => Op::GetAttr(fields(id, args)?),
            "setattr" => Op::SetAttr(fields(id, args)?),
            "dispose" => Op::Dispose(fields(id, args)?),
            "wrap" => Op::Wrap(fields(id, args)?),
            "module_available" => Op::ModuleAvailable(fields(id, args)?),
            "to_float_array" => Op::ToFloatArray(fields(id, args)?),
            "to_float_array_2d" => Op::ToFloatArray2d(fields(id, args)?),
            "session.open" => Op::SessionOpen,
            "session.close" => Op::SessionClose,
            "session.list" => Op::SessionList,
            "session.interrupt" => Op::SessionInterrupt,
            "files.put" => Op::FilesPut(fields(id, args)?),
            "files.get" => Op::FilesGet(fields(id, args)?),
            "files.list" => Op::FilesList(fields(id, args)?),
            other => {
                return Err(RequestError {
                    id: Some(id),
                    kind: ErrorKind::UnknownOp,
                    message: format!("unknown op `{other}`"),
                })
            }
        };
        if matches!(op, Op::SessionClose | Op::SessionInterrupt) && session.is_none() {
            return Err(bad(Some(id), "missing field `session`".into()));
        }
        Ok(Request {
            id,
            session,
            timeout,
            op,
        })
    }

    /// The request as a JSON value (the inverse of [`Request::from_value`]).
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(&self.op).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("id".into(), self.id.into());
            if let Some(s) = &self.session {
                m.insert("session".into(), s.clone().into());
            }
            if let Some(t) = self.timeout {
                m.insert("timeout".into(), t.into());
            }
        }
        v
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            session: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            timeout: Option<f64>,
            #[serde(flatten)]
            op: &'a Op,
        }
        Wire {
            id: self.id,
            session: &self.session,
            timeout: self.timeout,
            op: &self.op,
        }
        .serialize(s)
    }
}

/// What a worker receives: the op and a sequence number, nothing about sessions or timeouts.
#[derive(Serialize)]
pub struct WorkerRequest<'a> {
    pub id: u64,
    #[serde(flatten)]
    pub op: &'a Op,
}

/// Session ids are short and printable, so they can appear in logs and paths safely.
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn bad(id: Option<u64>, message: String) -> RequestError {
    RequestError {
        id,
        kind: ErrorKind::BadRequest,
        message,
    }
}

fn fields<T: serde::de::DeserializeOwned>(id: u64, args: Value) -> Result<T, RequestError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("field `{path}`: {inner}")
        };
        bad(Some(id), message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_serializes_back() {
        let v = json!({"id": 7, "op": "exec", "session": "s1", "timeout": 2.5, "code": "1 + 1"});
        let r = Request::from_value(v.clone()).unwrap();
        assert_eq!(
            r.op,
            Op::Exec(Exec {
                code: "1 + 1".into()
            })
        );
        assert_eq!(r.session.as_deref(), Some("s1"));
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        assert_eq!(r.to_value(), v);
    }

    #[test]
    fn wrong_field_type_names_the_field_and_keeps_the_id() {
        let e = Request::from_value(json!({"id": 3, "op": "exec", "code": 5})).unwrap_err();
        assert_eq!(e.id, Some(3));
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message
                .starts_with("field `code`: invalid type: integer `5`"),
            "{}",
            e.message
        );
        let e = Request::from_value(
            json!({"id": 3, "op": "call", "handle": "h1", "args": [1], "kwargs": []}),
        )
        .unwrap_err();
        assert!(e.message.starts_with("field `kwargs`"), "{}", e.message);
    }

    #[test]
    fn missing_and_unknown() {
        let e = Request::from_value(json!({"id": 1, "op": "import"})).unwrap_err();
        assert_eq!(e.message, "missing field `module`");
        let e = Request::from_value(json!({"id": 1, "op": "frobnicate"})).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::UnknownOp, "unknown op `frobnicate`")
        );
        let e = Request::from_value(json!({"op": "ping"})).unwrap_err();
        assert_eq!((e.id, e.message.as_str()), (None, "missing field `id`"));
        let e = Request::from_value(json!({"id": -1, "op": "ping"})).unwrap_err();
        assert!(e.message.starts_with("field `id`"));
        let e = Request::from_value(json!({"id": 1, "op": "ping", "session": "../x"})).unwrap_err();
        assert!(e.message.starts_with("field `session`"));
        let e = Request::from_value(json!({"id": 1, "op": "exec", "code": "", "timeout": -1}))
            .unwrap_err();
        assert!(e.message.starts_with("field `timeout`"));
        let e = Request::from_slice(b"{not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadFrame);
    }

    #[test]
    fn base64_data_round_trips() {
        let r = Request::from_value(
            json!({"id": 1, "op": "files.put", "path": "a.bin", "data": "AAEC/w=="}),
        )
        .unwrap();
        assert_eq!(
            r.op,
            Op::FilesPut(FilesPut {
                path: "a.bin".into(),
                data: Base64(vec![0, 1, 2, 255])
            })
        );
        let e =
            Request::from_value(json!({"id": 1, "op": "files.put", "path": "a", "data": "***"}))
                .unwrap_err();
        assert!(
            e.message.starts_with("field `data`: invalid base64"),
            "{}",
            e.message
        );
    }
}
