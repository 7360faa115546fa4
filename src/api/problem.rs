//! Errors as `application/problem+json`, mapped in this one place.
//!
//! 4xx bodies carry the detail (it names what was wrong); 5xx bodies are generic and the cause
//! is logged in the request's span, so internals never leak.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorClass};

/// An RFC 9457 problem object.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: u16, detail: impl Into<String>) -> Problem {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let title = code.canonical_reason().unwrap_or("Error").to_string();
        Problem {
            kind: format!(
                "https://beephost.dev/problems/{}",
                title.to_lowercase().replace(' ', "-")
            ),
            title,
            status,
            detail: detail.into(),
        }
    }

    /// The problem a domain error shows to clients.
    pub fn from_error(e: &Error) -> Problem {
        let class = e.class();
        let detail = match class {
            ErrorClass::Internal => {
                tracing::error!(error = %e, "internal error");
                "the host failed to complete the request; the cause is in its log".to_string()
            }
            ErrorClass::Unavailable => {
                tracing::warn!(error = %e, "engine unavailable");
                "the container engine is unavailable; retry when it is back".to_string()
            }
            _ => e.to_string(),
        };
        Problem::new(class.status(), detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// A handler's error: a domain error or a ready problem.
pub struct ApiError(pub Problem);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(Problem::from_error(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// `Json<T>` whose rejections are problems naming the field that is wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let detail = match &rejection {
                    JsonRejection::JsonDataError(e) => {
                        // serde's message names the field: "unknown field `x`", "missing field `y`".
                        let source = std::error::Error::source(e)
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| e.body_text());
                        format!("invalid request body: {source}")
                    }
                    other => format!("invalid request body: {}", other.body_text()),
                };
                let status = match rejection {
                    JsonRejection::MissingJsonContentType(_) => 415,
                    _ => 400,
                };
                Err(ApiError(Problem::new(status, detail)))
            }
        }
    }
}
