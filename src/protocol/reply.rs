//! Replies: the envelope and one payload type per operation.
//!
//! On the wire: `{"id": 7, "ok": {...}}`, `{"id": 7, "error": {"type", "message", ...}}`, or an
//! unsolicited `{"id": null, "event": {"level", "message"}}` (the agent's diagnostics travel as
//! frames because sandbox containers keep no logs). Python values come back as an [`Object`]:
//! a JSON value, or a handle with its type and repr.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::request::Base64;

/// One frame from the agent (or from a worker, where `id` is the agent's sequence number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Option<u64>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    Ok(Value),
    Error(ErrorInfo),
    Event(Event),
}

impl Response {
    /// Parses one frame's payload. Faster than the derived `Deserialize` (which buffers the
    /// flattened body), and checks that exactly one of `ok`, `error` and `event` is present.
    pub fn from_slice(payload: &[u8]) -> Result<Response, serde_json::Error> {
        #[derive(Deserialize)]
        struct Raw {
            id: Option<u64>,
            ok: Option<Value>,
            error: Option<ErrorInfo>,
            event: Option<Event>,
        }
        let raw: Raw = serde_json::from_slice(payload)?;
        let body = match (raw.ok, raw.error, raw.event) {
            (Some(v), None, None) => Body::Ok(v),
            (None, Some(e), None) => Body::Error(e),
            (None, None, Some(e)) => Body::Event(e),
            _ => {
                return Err(serde::de::Error::custom(
                    "a reply has exactly one of `ok`, `error` and `event`",
                ))
            }
        };
        Ok(Response { id: raw.id, body })
    }

    pub fn ok(id: u64, payload: impl Serialize) -> Self {
        Response {
            id: Some(id),
            body: Body::Ok(serde_json::to_value(payload).unwrap_or(Value::Null)),
        }
    }

    pub fn error(id: Option<u64>, error: ErrorInfo) -> Self {
        Response {
            id,
            body: Body::Error(error),
        }
    }
}

/// Something the agent wants a host to log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub level: String,
    pub message: String,
}

/// An error: a Python exception (`type` is its class name, with a traceback) or one of the
/// agent's own [`ErrorKind`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// For Timeout and WorkerDied: whether the session's Python state is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_lost: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The limit that was hit (TooManySessions, FileTooLarge, FrameTooLarge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl ErrorInfo {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind: kind.as_str().to_owned(),
            message: message.into(),
            traceback: None,
            session_lost: None,
            exit_code: None,
            signal: None,
            limit: None,
        }
    }

    /// The agent's kind, or `None` for a Python exception (which always has a traceback).
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        if self.traceback.is_some() && self.kind != ErrorKind::Timeout.as_str() {
            return None;
        }
        ErrorKind::parse(&self.kind)
    }
}

macro_rules! error_kinds {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The agent's own error types (everything that is not a Python exception).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind { $($(#[$doc])* $name),* }

        impl ErrorKind {
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorKind::$name => stringify!($name)),* }
            }

            pub fn parse(s: &str) -> Option<ErrorKind> {
                match s { $(stringify!($name) => Some(ErrorKind::$name),)* _ => None }
            }
        }
    };
}

error_kinds! {
    /// Bytes that were not a well-formed frame or not JSON.
    BadFrame,
    /// A frame longer than the agent accepts.
    FrameTooLarge,
    /// A request with a missing or mistyped field.
    BadRequest,
    UnknownOp,
    TooManySessions,
    NoSuchSession,
    /// The session's queue is full.
    SessionBusy,
    /// The session was closed (explicitly, by its idle TTL, or by agent shutdown) before the call ran.
    SessionClosed,
    /// The call ran past its timeout.
    Timeout,
    /// The worker process exited or was killed by a signal.
    WorkerDied,
    /// The worker could not be started.
    WorkerStartFailed,
    /// A handle that the session does not hold.
    NoSuchHandle,
    /// A workspace path outside the workspace, through a symlink, or not of the right kind.
    PathRefused,
    FileTooLarge,
    NotFound,
    FileError,
    /// A worker sent something the agent could not understand.
    WorkerProtocol,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Python object as a reply carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Object {
    /// Anything JSON cannot carry stays in the session's handle table.
    Handle {
        handle: String,
        #[serde(rename = "type")]
        type_name: String,
        repr: String,
    },
    /// None, bool, int (64-bit), finite float, str, and lists/dicts (str keys) of those.
    Value {
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repr: Option<String>,
    },
}

impl Object {
    pub fn handle(&self) -> Option<&str> {
        match self {
            Object::Handle { handle, .. } => Some(handle),
            Object::Value { .. } => None,
        }
    }

    pub fn value(&self) -> Option<&Value> {
        match self {
            Object::Value { value, .. } => Some(value),
            Object::Handle { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub nonce: String,
    pub protocol: u32,
    pub agent_version: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    pub pong: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoReply {
    pub agent_version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_s: f64,
    /// Version of the workers' Python, once a worker has started.
    pub python_version: Option<String>,
    pub python: String,
    pub workspace: String,
    pub sessions: usize,
    pub max_sessions: usize,
}

/// The reply to `exec`. A Python exception, a timeout or a dead worker is `error`, so the
/// output captured until then still comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecReply {
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Some output went past the per-call cap and was dropped.
    #[serde(default)]
    pub truncated: bool,
    /// The value of a trailing expression (absent for statements and for `None`).
    pub result: Option<Object>,
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub session_lost: bool,
}

/// Reply to eval, import, create, call, getattr and wrap. Output printed during the call comes
/// along when there was some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectReply {
    #[serde(flatten)]
    pub object: Object,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetAttrReply {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisposeReply {
    /// False when the handle was not (or no longer) in the table.
    pub disposed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleAvailableReply {
    pub available: bool,
}

/// Non-finite numbers travel as null and come back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatArrayReply {
    #[serde(with = "nan_as_null")]
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatArray2dReply {
    #[serde(with = "nan_as_null_2d")]
    pub values: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOpenReply {
    pub session: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCloseReply {
    /// False when there was no such session.
    pub closed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session: String,
    pub pid: u32,
    /// Unix time, seconds.
    pub created: f64,
    pub last_used: f64,
    pub busy: bool,
    pub queued: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionListReply {
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterruptReply {
    /// False when the session was idle.
    pub interrupted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesPutReply {
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesGetReply {
    pub path: String,
    pub size: u64,
    pub data: Base64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesListReply {
    pub path: String,
    pub entries: Vec<DirEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Bytes, for regular files; 0 for everything else.
    pub size: u64,
}

fn opt(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

mod nan_as_null {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| opt(*x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v = Vec::<Option<f64>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

mod nan_as_null_2d {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            v.iter()
                .map(|row| row.iter().map(|x| opt(*x)).collect::<Vec<_>>()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        let v = Vec::<Vec<Option<f64>>>::deserialize(d)?;
        Ok(v.into_iter()
            .map(|row| row.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_shapes() {
        let r = Response::ok(3, PingReply { pong: true });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": 3, "ok": {"pong": true}})
        );
        let e = Response::error(
            None,
            ErrorInfo::new(ErrorKind::BadFrame, "frame is not valid json"),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"id": null, "error": {"type": "BadFrame", "message": "frame is not valid json"}})
        );
        assert_eq!(serde_json::from_value::<Response>(v).unwrap(), e);
    }

    #[test]
    fn from_slice_matches_the_derived_parser() {
        for v in [
            json!({"id": 1, "ok": {"a": [1]}}),
            json!({"id": null, "event": {"level": "warn", "message": "m"}}),
            json!({"id": 2, "error": {"type": "Timeout", "message": "m", "session_lost": true}}),
        ] {
            let b = serde_json::to_vec(&v).unwrap();
            assert_eq!(
                Response::from_slice(&b).unwrap(),
                serde_json::from_value::<Response>(v).unwrap()
            );
        }
        assert!(Response::from_slice(br#"{"id": 1}"#).is_err());
        assert!(Response::from_slice(
            br#"{"id": 1, "ok": 1, "error": {"type": "x", "message": "y"}}"#
        )
        .is_err());
    }

    #[test]
    fn objects_are_values_or_handles() {
        let v: Object = serde_json::from_value(json!({"value": null})).unwrap();
        assert_eq!(v.value(), Some(&Value::Null));
        let h: Object =
            serde_json::from_value(json!({"handle": "h2", "type": "Counter", "repr": "Counter()"}))
                .unwrap();
        assert_eq!(h.handle(), Some("h2"));
        let r: ObjectReply =
            serde_json::from_value(json!({"value": [1], "stdout": "hi\n"})).unwrap();
        assert_eq!(r.stdout, "hi\n");
    }

    #[test]
    fn python_exceptions_are_not_agent_kinds() {
        let mut e = ErrorInfo::new(ErrorKind::Timeout, "x");
        assert_eq!(e.agent_kind(), Some(ErrorKind::Timeout));
        e.kind = "NotFound".into();
        e.traceback = Some("Traceback".into());
        assert_eq!(e.agent_kind(), None);
    }

    #[test]
    fn float_arrays_carry_nan_as_null() {
        let r: FloatArrayReply = serde_json::from_value(json!({"values": [1.5, null]})).unwrap();
        assert!(r.values[1].is_nan());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"values": [1.5, null]})
        );
    }
}
