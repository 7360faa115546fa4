//! Settings of `beephost serve`, resolved once before any port is bound.
//!
//! Precedence is flags > environment (BEEPHOST_*) > TOML file > defaults. Flags and env are
//! read together by clap ([`crate::cli::ServeArgs`]); the file is [`FileConfig`]; the result is
//! [`ServeSettings`], the only type the server sees. A bad setting is a [`ConfigError`], which
//! exits with its own code before anything starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::ServeArgs;
use crate::orchestrator::RuntimeSource;

/// The registry image a runtime comes from when nothing else is said.
pub const DEFAULT_IMAGE: &str = "python:3.12-slim";
/// Where the host listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5678";

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The TOML config file (`--config`); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub log_format: Option<LogFormat>,
    pub rootfs: Option<PathBuf>,
    pub image: Option<String>,
    pub labels: Option<HashMap<String, String>>,
    pub agent_binary: Option<PathBuf>,
    pub prepare_runtime: Option<bool>,
    pub host_id: Option<String>,
    pub run_dir: Option<PathBuf>,
    pub backend_bind: Option<String>,
    pub backend_ports: Option<String>,
    pub oci_runtime: Option<String>,
    pub metrics_listen: Option<String>,
    pub index_url: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub wheelhouse: Option<PathBuf>,
    pub find_links_roots: Option<Vec<PathBuf>>,
    pub no_index: Option<bool>,
    pub allow_url_requirements: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }
}

/// Everything `serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    /// Bearer token required on the API; `None` only on loopback addresses.
    pub token: Option<String>,
    pub log_format: LogFormat,
    /// Where the default runtime comes from when none exists.
    pub default_source: RuntimeSource,
    /// Build the default runtime at start when none exists.
    pub prepare_runtime: bool,
    /// Stamped on everything the host creates.
    pub labels: HashMap<String, String>,
    /// Copied into runtime images as the agent.
    pub agent_binary: PathBuf,
    /// The owner label of this host's backends.
    pub host_id: String,
    /// Where backend endpoints are bound.
    pub endpoints: crate::endpoints::EndpointSettings,
    /// OCI runtime of sandbox containers (`runsc` for gVisor); the engine's default when `None`.
    pub oci_runtime: Option<String>,
    /// A second listener that serves only `/metrics` (unauthenticated, like the probes), so
    /// Prometheus can scrape from a network the API is not exposed on.
    pub metrics_listen: Option<SocketAddr>,
    /// Package sources and policies of venv builds.
    pub venvs: crate::orchestrator::venvs::VenvSettings,
}

impl ServeSettings {
    /// Resolves flags/env over the file over defaults, and validates the result.
    pub fn resolve(args: &ServeArgs, token: Option<String>) -> Result<ServeSettings, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let venvs = venv_settings(args, &file)?;
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError(format!(
                "listen address `{listen_text}` is not HOST:PORT (like 127.0.0.1:5678)"
            ))
        })?;
        let token = token.or(file.token).filter(|t| !t.is_empty());
        if token.is_none() && !listen.ip().is_loopback() && !args.insecure_no_auth {
            return Err(ConfigError(format!(
                "listening on {listen} without a token would let anyone on the network run code\n\
                 hint: set BEEPHOST_TOKEN (or --token), or pass --insecure-no-auth to accept the risk"
            )));
        }
        let default_source = match (&args.rootfs, &args.image) {
            (Some(_), Some(_)) => {
                return Err(ConfigError("give --rootfs or --image, not both".into()))
            }
            (Some(rootfs), None) => RuntimeSource::Rootfs(absolute(rootfs)?),
            (None, Some(image)) => RuntimeSource::Image(image.clone()),
            (None, None) => match (file.rootfs, file.image) {
                (Some(rootfs), _) => RuntimeSource::Rootfs(absolute(&rootfs)?),
                (None, Some(image)) => RuntimeSource::Image(image),
                (None, None) => RuntimeSource::Image(DEFAULT_IMAGE.to_string()),
            },
        };
        let mut labels = file.labels.unwrap_or_default();
        if let Some(spec) = &args.labels {
            labels.extend(crate::labels::parse_extra(spec).map_err(ConfigError)?);
        }
        if let Some(bad) = labels.keys().find(|k| !k.starts_with("io.beephost.")) {
            return Err(ConfigError(format!(
                "label `{bad}` must start with io.beephost."
            )));
        }
        let agent_binary = match args.agent_binary.clone().or(file.agent_binary) {
            Some(path) => path,
            None => std::env::current_exe()
                .map_err(|e| ConfigError(format!("cannot find the running executable: {e}")))?,
        };
        if !agent_binary.is_file() {
            return Err(ConfigError(format!(
                "agent binary {} is not a file",
                agent_binary.display()
            )));
        }
        let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "metrics listen address `{text}` is not HOST:PORT (like 127.0.0.1:9464)"
                ))
            })?),
            None => None,
        };
        let host_id = match args.host_id.clone().or(file.host_id) {
            Some(id) if crate::orchestrator::backends::spec::valid_name(&id) => id,
            Some(id) => {
                return Err(ConfigError(format!(
                    "host id `{id}` is not 1 to 63 of a-z 0-9 _ . - starting with a letter or digit"
                )))
            }
            None => default_host_id(listen.port()),
        };
        let bind_text = args
            .backend_bind
            .clone()
            .or(file.backend_bind)
            .unwrap_or_else(|| "127.0.0.1".into());
        let bind = bind_text.parse().map_err(|_| {
            ConfigError(format!(
                "backend bind address `{bind_text}` is not an IP address"
            ))
        })?;
        let ports = match args.backend_ports.clone().or(file.backend_ports) {
            None => None,
            Some(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(lo, hi)| {
                        Some((
                            lo.trim().parse::<u16>().ok()?,
                            hi.trim().parse::<u16>().ok()?,
                        ))
                    })
                    .filter(|(lo, hi)| lo <= hi && *lo > 0);
                Some(parsed.ok_or_else(|| {
                    ConfigError(format!(
                        "backend port range `{text}` is not LO-HI (like 20000-20999)"
                    ))
                })?)
            }
        };
        let endpoints = crate::endpoints::EndpointSettings {
            bind,
            ports,
            run_dir: args
                .run_dir
                .clone()
                .or(file.run_dir)
                .unwrap_or_else(crate::endpoints::default_run_dir),
        };
        let oci_runtime = args
            .oci_runtime
            .clone()
            .or(file.oci_runtime)
            .filter(|r| !r.is_empty());
        if let Some(bad) = oci_runtime.as_deref().filter(|r| {
            !r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        }) {
            return Err(ConfigError(format!(
                "OCI runtime `{bad}` is not a runtime name like runsc"
            )));
        }
        Ok(ServeSettings {
            oci_runtime,
            venvs,
            host_id,
            endpoints,
            listen,
            metrics_listen,
            token,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Pretty),
            default_source,
            prepare_runtime: !args.no_prepare && file.prepare_runtime.unwrap_or(true),
            labels,
            agent_binary,
        })
    }
}

/// Venv package sources: flags/env over the file; paths must exist, the index must be http(s).
fn venv_settings(
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<crate::orchestrator::venvs::VenvSettings, ConfigError> {
    let index_url = args.index_url.clone().or(file.index_url.clone());
    if let Some(url) = &index_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError(format!(
                "index URL `{url}` is not an http(s) URL"
            )));
        }
    }
    let ca_bundle = args.ca_bundle.clone().or(file.ca_bundle.clone());
    if let Some(ca) = &ca_bundle {
        if !ca.is_absolute() || !ca.is_file() {
            return Err(ConfigError(format!(
                "CA bundle {} is not an absolute path to a file",
                ca.display()
            )));
        }
    }
    let wheelhouse = args.wheelhouse.clone().or(file.wheelhouse.clone());
    let roots: Vec<PathBuf> = match &args.find_links_roots {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => file.find_links_roots.clone().unwrap_or_default(),
    };
    for dir in wheelhouse.iter().chain(roots.iter()) {
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(ConfigError(format!(
                "wheelhouse {} is not an absolute path to a directory",
                dir.display()
            )));
        }
    }
    Ok(crate::orchestrator::venvs::VenvSettings {
        index_url,
        ca_bundle,
        wheelhouse,
        find_links_roots: roots,
        no_index: args.no_index || file.no_index.unwrap_or(false),
        allow_url_requirements: args.allow_url_requirements
            || file.allow_url_requirements.unwrap_or(false),
    })
}

/// `hostname-port`: stable across restarts of the same host on the same port.
fn default_host_id(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let host = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_lowercase()
    } else {
        "host".to_string()
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    format!("{}-{port}", host.trim_start_matches(['-', '.']))
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path)
        .map_err(|e| ConfigError(format!("rootfs path {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> ServeArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrap::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .unwrap()
            .serve
    }

    fn resolve(args: &ServeArgs) -> Result<ServeSettings, ConfigError> {
        ServeSettings::resolve(args, None)
    }

    #[test]
    fn defaults_are_loopback_and_the_registry_image() {
        let s = resolve(&args(&[])).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.default_source, RuntimeSource::Image(DEFAULT_IMAGE.into()));
        assert!(s.token.is_none());
        assert!(s.prepare_runtime);
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nimage = \"python:3.11-slim\"\n[labels]\n\"io.beephost.team\" = \"a\"\n",
        )
        .unwrap();
        let cfg = file.to_str().unwrap();
        let s = resolve(&args(&["--config", cfg])).unwrap();
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(
            s.default_source,
            RuntimeSource::Image("python:3.11-slim".into())
        );
        assert_eq!(s.labels["io.beephost.team"], "a");
        let s = resolve(&args(&["--config", cfg, "--listen", "127.0.0.1:7001"])).unwrap();
        assert_eq!(s.listen.port(), 7001);
    }

    #[test]
    fn bad_settings_name_themselves() {
        let e = resolve(&args(&["--listen", "nowhere"])).unwrap_err();
        assert!(e.0.contains("`nowhere`"), "{e}");
        let e = resolve(&args(&["--metrics-listen", "metrics"])).unwrap_err();
        assert!(e.0.contains("`metrics`"), "{e}");
        let s = resolve(&args(&["--metrics-listen", "127.0.0.1:9464"])).unwrap();
        assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9464));
        assert!(resolve(&args(&[])).unwrap().metrics_listen.is_none());
        let e = resolve(&args(&["--listen", "0.0.0.0:5678"])).unwrap_err();
        assert!(e.0.contains("without a token"), "{e}");
        assert!(
            ServeSettings::resolve(&args(&["--listen", "0.0.0.0:5678"]), Some("t".into())).is_ok()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let e = resolve(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(e.0.contains("listne"), "{e}");
    }
}
