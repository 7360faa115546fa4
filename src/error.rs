//! The domain's error type and its one classification.
//!
//! Every failure the orchestrator reports is an [`Error`]. Its [`ErrorClass`] picks the HTTP
//! status (api::problem), the CLI exit code (cli) and the metric label, so the three never
//! disagree. Messages are lowercase and name the value that failed.

use crate::runtime;

/// What went wrong, as the caller needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: `field` names the offender.
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
    /// The input is well-formed but cannot be used (a rootfs without python3, say).
    #[error("{0}")]
    Unprocessable(String),
    /// A named thing does not exist.
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The container engine cannot be reached.
    #[error("container engine unavailable: {0}")]
    EngineUnavailable(String),
    /// The capability exists in the API but is not built yet.
    #[error("{0} is not built yet")]
    NotImplemented(&'static str),
    /// The engine failed in a way the caller cannot fix.
    #[error(transparent)]
    Engine(runtime::Error),
    /// Anything else: a bug or an I/O failure on the host.
    #[error("{0}")]
    Internal(String),
}

/// The error classes shared by HTTP, CLI exit codes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    BadRequest,
    Unprocessable,
    NotFound,
    Conflict,
    Unavailable,
    NotImplemented,
    Internal,
}

impl ErrorClass {
    /// The HTTP status for this class.
    pub fn status(self) -> u16 {
        match self {
            ErrorClass::BadRequest => 400,
            ErrorClass::NotFound => 404,
            ErrorClass::Conflict => 409,
            ErrorClass::Unprocessable => 422,
            ErrorClass::Internal => 500,
            ErrorClass::NotImplemented => 501,
            ErrorClass::Unavailable => 503,
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Unprocessable => "unprocessable",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::NotImplemented => "not_implemented",
            ErrorClass::Internal => "internal",
        }
    }

    /// Classifies an HTTP status (used by the CLI for problem bodies).
    pub fn from_status(status: u16) -> ErrorClass {
        match status {
            404 => ErrorClass::NotFound,
            409 => ErrorClass::Conflict,
            422 => ErrorClass::Unprocessable,
            501 => ErrorClass::NotImplemented,
            503 => ErrorClass::Unavailable,
            400..=499 => ErrorClass::BadRequest,
            _ => ErrorClass::Internal,
        }
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidInput { .. } => ErrorClass::BadRequest,
            Error::Unprocessable(_) => ErrorClass::Unprocessable,
            Error::NotFound { .. } => ErrorClass::NotFound,
            Error::Conflict(_) => ErrorClass::Conflict,
            Error::EngineUnavailable(_) => ErrorClass::Unavailable,
            Error::NotImplemented(_) => ErrorClass::NotImplemented,
            Error::Engine(e) if e.is_unavailable() => ErrorClass::Unavailable,
            Error::Engine(_) | Error::Internal(_) => ErrorClass::Internal,
        }
    }
}

impl From<runtime::Error> for Error {
    fn from(e: runtime::Error) -> Self {
        if e.is_unavailable() {
            Error::EngineUnavailable(e.to_string())
        } else {
            Error::Engine(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_through_status() {
        for class in [
            ErrorClass::BadRequest,
            ErrorClass::Unprocessable,
            ErrorClass::NotFound,
            ErrorClass::Conflict,
            ErrorClass::Unavailable,
            ErrorClass::NotImplemented,
            ErrorClass::Internal,
        ] {
            assert_eq!(ErrorClass::from_status(class.status()), class);
        }
    }
}
