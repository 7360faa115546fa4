//! What a caller may ask of a backend, and the bounds the host enforces on it.
//!
//! [`BackendRequest`] is the whole surface: unknown fields are refused by the API, and there
//! is no way to name binds, devices, privileges, another image or a working directory.
//! [`BackendRequest::resolve`] checks it against [`Bounds`] and yields a [`BackendSpec`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How clients reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Pipe,
    Rpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Pipe => "pipe",
            Transport::Rpc => "rpc",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "http" => Some(Transport::Http),
            "pipe" => Some(Transport::Pipe),
            "rpc" => Some(Transport::Rpc),
            _ => None,
        }
    }
}

/// Resource limits as a caller writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// `512m`, `1g`, or bytes.
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// Default per-call timeout in seconds.
    pub timeout: Option<f64>,
}

/// Lifetimes as a caller writes them: `30m`, `8h`, `90s`, or seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlRequest {
    pub idle: Option<String>,
    pub hard: Option<String>,
}

/// `POST /v1/backends`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    pub transport: Transport,
    pub venv: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub ttl: TtlRequest,
    /// `none` (default) or `egress`.
    pub network: Option<String>,
}

/// Resolved limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub memory_bytes: i64,
    pub cpus: f64,
    pub pids: i64,
    /// Default per-call timeout in seconds (0: none).
    pub timeout_secs: f64,
}

/// The host's defaults and ceilings for backends.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub default: Limits,
    pub max: Limits,
    pub default_idle_ttl: Duration,
    pub default_hard_ttl: Duration,
    pub max_hard_ttl: Duration,
    pub allow_egress: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        Bounds {
            default: Limits {
                memory_bytes: 512 << 20,
                cpus: 1.0_f64.min(cores),
                pids: 256,
                timeout_secs: 0.0,
            },
            max: Limits {
                memory_bytes: 8 << 30,
                cpus: cores,
                pids: 4096,
                timeout_secs: 3600.0,
            },
            default_idle_ttl: Duration::from_secs(30 * 60),
            default_hard_ttl: Duration::from_secs(8 * 3600),
            max_hard_ttl: Duration::from_secs(7 * 24 * 3600),
            allow_egress: true,
        }
    }
}

/// A validated backend request.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub transport: Transport,
    pub venv: Option<String>,
    pub name: Option<String>,
    pub limits: Limits,
    pub idle_ttl: Duration,
    pub hard_ttl: Duration,
    pub egress: bool,
}

/// Names of backends (and venvs): what Docker names and our labels can carry safely.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

impl BackendRequest {
    pub fn resolve(self, bounds: &Bounds) -> Result<BackendSpec, Error> {
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(Error::invalid(
                    "name",
                    format!(
                        "`{name}` is not 1 to 63 of a-z 0-9 _ . - starting with a letter or digit"
                    ),
                ));
            }
        }
        if let Some(venv) = &self.venv {
            if !valid_name(venv) {
                return Err(Error::invalid(
                    "venv",
                    format!("`{venv}` is not a venv name"),
                ));
            }
        }
        let memory_bytes = match &self.limits.memory {
            Some(m) => parse_bytes(m).ok_or_else(|| {
                Error::invalid(
                    "limits.memory",
                    format!("`{m}` is not a size like 512m or 2g"),
                )
            })?,
            None => bounds.default.memory_bytes,
        };
        let limits = Limits {
            memory_bytes,
            cpus: self.limits.cpus.unwrap_or(bounds.default.cpus),
            pids: self.limits.pids.unwrap_or(bounds.default.pids),
            timeout_secs: self.limits.timeout.unwrap_or(bounds.default.timeout_secs),
        };
        within(
            "limits.memory",
            limits.memory_bytes as f64,
            16.0 * 1024.0 * 1024.0,
            bounds.max.memory_bytes as f64,
        )?;
        within("limits.cpus", limits.cpus, 0.01, bounds.max.cpus)?;
        within(
            "limits.pids",
            limits.pids as f64,
            16.0,
            bounds.max.pids as f64,
        )?;
        within(
            "limits.timeout",
            limits.timeout_secs,
            0.0,
            bounds.max.timeout_secs,
        )?;
        let idle_ttl = match &self.ttl.idle {
            Some(t) => parse_duration(t).ok_or_else(|| {
                Error::invalid("ttl.idle", format!("`{t}` is not a duration like 30m"))
            })?,
            None => bounds.default_idle_ttl,
        };
        let hard_ttl = match &self.ttl.hard {
            Some(t) => parse_duration(t).ok_or_else(|| {
                Error::invalid("ttl.hard", format!("`{t}` is not a duration like 8h"))
            })?,
            None => bounds.default_hard_ttl,
        };
        if hard_ttl > bounds.max_hard_ttl || hard_ttl.is_zero() {
            return Err(Error::Unprocessable(format!(
                "ttl.hard: must be more than 0 and at most {}",
                humantime::format_duration(bounds.max_hard_ttl)
            )));
        }
        let egress = match self.network.as_deref() {
            None | Some("none") => false,
            Some("egress") if bounds.allow_egress => true,
            Some("egress") => {
                return Err(Error::Unprocessable(
                    "network: egress is disabled on this host".into(),
                ))
            }
            Some(other) => {
                return Err(Error::invalid(
                    "network",
                    format!("`{other}` is not one of none, egress"),
                ))
            }
        };
        Ok(BackendSpec {
            transport: self.transport,
            venv: self.venv,
            name: self.name,
            limits,
            idle_ttl,
            hard_ttl,
            egress,
        })
    }
}

fn within(field: &str, value: f64, min: f64, max: f64) -> Result<(), Error> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        Err(Error::Unprocessable(format!(
            "{field}: {value} is outside this host's bounds [{min}, {max}]"
        )))
    }
}

/// `512m`, `2g`, `1024k`, `1048576` → bytes.
pub fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    let n: f64 = digits.parse().ok()?;
    (n.is_finite() && n > 0.0).then_some((n * mult as f64) as i64)
}

/// `30m`, `8h`, `90s`, `1h30m` or plain seconds → a duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<BackendSpec, Error> {
        let r: BackendRequest =
            serde_json::from_str(json).map_err(|e| Error::invalid("body", e.to_string()))?;
        r.resolve(&Bounds::default())
    }

    #[test]
    fn defaults_apply() {
        let s = req(r#"{"transport":"http"}"#).unwrap();
        assert_eq!(s.limits.memory_bytes, 512 << 20);
        assert_eq!(s.limits.pids, 256);
        assert!(!s.egress);
        assert_eq!(s.idle_ttl, Duration::from_secs(1800));
    }

    #[test]
    fn out_of_bounds_names_the_field() {
        let e = req(r#"{"transport":"http","limits":{"memory":"64g"}}"#).unwrap_err();
        assert!(e.to_string().starts_with("limits.memory"), "{e}");
        assert_eq!(e.class(), crate::error::ErrorClass::Unprocessable);
        let e = req(r#"{"transport":"http","limits":{"pids":1}}"#).unwrap_err();
        assert!(e.to_string().starts_with("limits.pids"), "{e}");
        let e = req(r#"{"transport":"http","limits":{"memory":"lots"}}"#).unwrap_err();
        assert!(e.to_string().starts_with("limits.memory"), "{e}");
        let e = req(r#"{"transport":"http","name":"Bad Name"}"#).unwrap_err();
        assert!(e.to_string().starts_with("name"), "{e}");
        let e = req(r#"{"transport":"http","network":"host"}"#).unwrap_err();
        assert!(e.to_string().starts_with("network"), "{e}");
    }

    #[test]
    fn unknown_fields_and_transports_are_refused() {
        assert!(
            serde_json::from_str::<BackendRequest>(r#"{"transport":"http","binds":["/:/h"]}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<BackendRequest>(
            r#"{"transport":"http","limits":{"privileged":true}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<BackendRequest>(r#"{"transport":"smoke"}"#).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("soon"), None);
    }
}
