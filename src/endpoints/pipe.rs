//! The `pipe` transport: a Unix socket speaking one JSON object per line, as the original did.
//!
//! Each request line is `{"command": "<op>", "payload": {...}, "token": "<backend token>"}` and
//! is answered by exactly one line: the reply, a reply with an `error` field, or a problem.
//! Lines on one connection are answered in order; clients open more connections for
//! parallelism.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::api::problem::Problem;
use crate::error::Error;
use crate::orchestrator::backends::EndpointTarget;

/// Longest request line accepted.
const MAX_LINE: usize = 64 << 20;

/// Binds the socket, replacing a stale one (the run directory is the host's alone).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if path.as_os_str().len() > 100 {
        return Err(Error::Internal(format!(
            "socket path {} is too long for a Unix socket; use a shorter --run-dir",
            path.display()
        )));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", path.display())))
}

pub async fn serve(listener: UnixListener, target: EndpointTarget, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let target = target.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = connection(stream, target) => {}
                    }
                });
            }
        }
    }
}

async fn connection(stream: tokio::net::UnixStream, target: EndpointTarget) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = AsyncReadExt::take(&mut lines, MAX_LINE as u64 + 1);
        let n = match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n > MAX_LINE {
            json!(Problem::new(
                413,
                format!("request line longer than {MAX_LINE} bytes")
            ))
        } else {
            answer(&target, &line).await
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
        if n > MAX_LINE {
            return;
        }
    }
}

async fn answer(target: &EndpointTarget, line: &[u8]) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return json!(Problem::new(400, format!("the line is not JSON: {e}"))),
    };
    let token = request.get("token").and_then(Value::as_str).unwrap_or("");
    if !target.authorised(token) {
        return json!(Problem::new(
            401,
            "this backend needs its token in the `token` field"
        ));
    }
    let Some(command) = request.get("command").and_then(Value::as_str) else {
        return json!(Problem::new(400, "missing field `command`"));
    };
    let payload = request.get("payload").cloned().unwrap_or(Value::Null);
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let (_, reply, _) = super::http::call(target, command, &body).await;
    reply
}
