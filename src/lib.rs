//! beephost: a host that keeps isolated Python sandboxes in Docker containers.
//!
//! The crate is one binary with three roles (see ARCHITECTURE.md): `serve` (the host),
//! every other subcommand (a client of the host's HTTP API), and `agent` (runs inside each
//! sandbox and supervises Python workers).

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod endpoints;
pub mod env_vars;
pub mod error;
pub mod labels;
pub mod metrics;
pub mod orchestrator;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod telemetry;

/// The beephost version, as written into image tags and labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
