//! The HTTP client of the host's API that every client subcommand uses.

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::output;
use super::{ExitCode, GlobalArgs};
use crate::error::ErrorClass;

/// A failed call, already shaped for printing.
#[derive(Debug)]
pub struct ClientError {
    pub message: String,
    pub hint: Option<String>,
    pub exit: ExitCode,
}

impl ClientError {
    /// Prints the error and returns its exit code.
    pub fn report(self) -> ExitCode {
        output::error(&self.message, self.hint.as_deref());
        self.exit
    }
}

/// Talks to one host.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(global: &GlobalArgs) -> ApiClient {
        ApiClient {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("reqwest client without TLS always builds"),
            base: global.url.trim_end_matches('/').to_string(),
            token: global.token.clone(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(problem(resp).await)
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        ClientError {
            message: format!("cannot reach the beephost host at {}: {cause}", self.base),
            hint: Some(
                "start it with `beephost serve`, or point --url (BEEPHOST_URL) at a running host"
                    .into(),
            ),
            exit: ExitCode::Unavailable,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        resp.json().await.map_err(|e| self.unreachable(e))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        resp.json().await.map_err(|e| self.unreachable(e))
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        resp.json().await.map_err(|e| self.unreachable(e))
    }

    /// POSTs `body` and calls `on_line` with each JSON line of the NDJSON reply.
    pub async fn post_ndjson<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut on_line: impl FnMut(serde_json::Value) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError {
                message: format!("the host at {} closed the stream: {e}", self.base),
                hint: None,
                exit: ExitCode::Unavailable,
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value = serde_json::from_slice(&line).map_err(|e| ClientError {
                    message: format!("the host sent a line that is not JSON: {e}"),
                    hint: None,
                    exit: ExitCode::Failure,
                })?;
                on_line(value)?;
            }
        }
        Ok(())
    }
}

/// Turns a problem+json reply (or anything else) into a [`ClientError`].
async fn problem(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    problem_error(status, &body, &text)
}

/// A problem object (from a reply or an NDJSON `error` line) as a [`ClientError`].
pub fn problem_error(status: u16, body: &serde_json::Value, fallback: &str) -> ClientError {
    let detail = body
        .get("detail")
        .or_else(|| body.get("title"))
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("the host answered {status}: {}", fallback.trim()));
    let class = ErrorClass::from_status(status);
    let (exit, hint) = match class {
        ErrorClass::Unavailable => (ExitCode::Unavailable, None),
        ErrorClass::NotImplemented => (ExitCode::NotBuilt, None),
        _ if status == 401 => (
            ExitCode::Failure,
            Some("pass the host's token with --token or BEEPHOST_TOKEN".to_string()),
        ),
        _ => (ExitCode::Failure, None),
    };
    ClientError {
        message: detail,
        hint,
        exit,
    }
}
