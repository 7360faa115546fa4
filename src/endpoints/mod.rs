//! Backend endpoints: the client-facing side of each backend, served by the host.
//!
//! `http` gives a TCP port on the configured bind address, `pipe` a Unix socket under the
//! host's run directory, `rpc` a gRPC port; all speak the operations through [`ops`], and all
//! require the backend's own token. The orchestrator opens them through the [`Endpoints`] trait and never
//! sees a socket.

pub mod http;
pub mod ops;
pub mod pipe;
pub mod rpc;

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::orchestrator::backends::{EndpointTarget, Endpoints, OpenEndpoint, Transport};

/// Where backend endpoints are bound.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub bind: IpAddr,
    /// Inclusive port range for http endpoints; `None` means any free port.
    pub ports: Option<(u16, u16)>,
    /// Unix sockets of pipe backends live in `<run_dir>/backends/`.
    pub run_dir: PathBuf,
}

/// The host's [`Endpoints`].
pub struct HostEndpoints {
    settings: EndpointSettings,
}

impl HostEndpoints {
    pub fn new(settings: EndpointSettings) -> Self {
        HostEndpoints { settings }
    }
}

/// Stops a server when dropped (and removes its socket file, if any).
struct ServerGuard {
    cancel: CancellationToken,
    socket: Option<PathBuf>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[async_trait]
impl Endpoints for HostEndpoints {
    async fn open(
        &self,
        transport: Transport,
        name: &str,
        previous: Option<&str>,
        target: EndpointTarget,
    ) -> Result<OpenEndpoint, Error> {
        let cancel = CancellationToken::new();
        match transport {
            Transport::Http => {
                let listener = http::bind(&self.settings, previous).await?;
                let address = format!("http://{}", listener.local_addr().map_err(io_err)?);
                tokio::spawn(http::serve(listener, target, cancel.clone()));
                Ok(OpenEndpoint {
                    address,
                    guard: Box::new(ServerGuard {
                        cancel,
                        socket: None,
                    }),
                })
            }
            Transport::Pipe => {
                let path = match previous {
                    Some(p) => PathBuf::from(p),
                    None => self
                        .settings
                        .run_dir
                        .join("backends")
                        .join(format!("{name}.sock")),
                };
                let listener = pipe::bind(&path)?;
                tokio::spawn(pipe::serve(listener, target, cancel.clone()));
                Ok(OpenEndpoint {
                    address: path.display().to_string(),
                    guard: Box::new(ServerGuard {
                        cancel,
                        socket: Some(path),
                    }),
                })
            }
            Transport::Rpc => {
                let listener = http::bind(&self.settings, previous).await?;
                let address = format!("grpc://{}", listener.local_addr().map_err(io_err)?);
                tokio::spawn(rpc::serve(listener, target, cancel.clone()));
                Ok(OpenEndpoint {
                    address,
                    guard: Box::new(ServerGuard {
                        cancel,
                        socket: None,
                    }),
                })
            }
        }
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Internal(format!("endpoint: {e}"))
}

/// The run directory when none is configured: /run/beephost for root, else the user's
/// runtime directory, else /tmp.
pub fn default_run_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return PathBuf::from("/run/beephost");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("beephost"),
        None => std::env::temp_dir().join(format!("beephost-{uid}")),
    }
}
