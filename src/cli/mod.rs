//! The command line: clap types (`*Args`) and dispatch.
//!
//! `serve` runs the host and `agent` runs inside a sandbox; every other subcommand is a client
//! of the host's HTTP API ([`client::ApiClient`]), so whatever the CLI does a remote client can
//! do. Errors print as one `error: …` line, maybe a `hint: …` line, and exit by class
//! ([`ExitCode`]).

pub mod backends;
pub mod client;
pub mod init;
pub mod output;
pub mod status;
pub mod venv;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::LogFormat;
use crate::env_vars;

/// Process exit codes, one per error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// The operation failed (the host said no, Python raised, a build failed).
    Failure = 1,
    /// The command line is wrong (clap uses 2 as well).
    Usage = 2,
    /// The command exists but its capability is not built yet.
    NotBuilt = 3,
    /// The host (or the engine behind it) cannot be reached.
    Unavailable = 69,
    /// `serve`'s settings are invalid.
    Config = 78,
}

#[derive(Debug, Parser)]
#[command(
    name = "beephost",
    version,
    about = "Run Python for other programs, in isolated Docker sandboxes",
    long_about = "beephost keeps isolated Python sandboxes in Docker containers. `beephost serve` \
                  runs the host; every other command is a client of its HTTP API."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// URL of the beephost host
    #[arg(long, global = true, env = env_vars::BEEPHOST_URL, default_value = "http://127.0.0.1:5678")]
    pub url: String,
    /// Bearer token for the host's API (`serve` requires it of clients when set)
    #[arg(long, global = true, env = env_vars::BEEPHOST_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format
    #[arg(long, global = true, env = env_vars::BEEPHOST_OUTPUT, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: the control-plane API, metrics, and every backend's endpoint
    Serve(ServeArgs),
    /// Prepare a Python runtime image (from a registry image or a root filesystem tarball)
    Init(InitArgs),
    /// Manage virtual environments (Docker volumes)
    #[command(subcommand)]
    Venv(VenvCommand),
    /// Start a backend: a sandbox reached over http, a Unix socket (pipe) or gRPC (rpc)
    Start(StartArgs),
    /// Show runtimes, venvs and backends
    Status(StatusArgs),
    /// Stop a backend (or all of them)
    Stop(StopArgs),
    /// Show a backend's logs
    Logs(NameArg),
    /// Run Python code in a backend
    Exec(ExecArgs),
    /// Run inside a sandbox container: supervise Python workers over stdin/stdout
    Agent(crate::agent::AgentArgs),
}

/// `beephost serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5678]
    #[arg(long, env = env_vars::BEEPHOST_LISTEN)]
    pub listen: Option<String>,
    /// Accept a non-loopback listen address without a token
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// TOML file of settings (flags and environment override it)
    #[arg(long, env = env_vars::BEEPHOST_CONFIG)]
    pub config: Option<PathBuf>,
    /// Log format [default: pretty]
    #[arg(long, env = env_vars::BEEPHOST_LOG_FORMAT, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Prepare the default runtime from this root filesystem tarball when none exists
    #[arg(long, env = env_vars::BEEPHOST_ROOTFS)]
    pub rootfs: Option<PathBuf>,
    /// Prepare the default runtime from this registry image when none exists [default: python:3.12-slim]
    #[arg(long, env = env_vars::BEEPHOST_IMAGE)]
    pub image: Option<String>,
    /// Do not prepare a default runtime at start
    #[arg(long)]
    pub no_prepare: bool,
    /// Extra io.beephost.* labels (k=v,k=v) stamped on everything the host creates
    #[arg(long, env = env_vars::BEEPHOST_LABELS)]
    pub labels: Option<String>,
    /// Stable id of this host, the owner label of its backends [default: hostname-port]
    #[arg(long, env = env_vars::BEEPHOST_HOST_ID)]
    pub host_id: Option<String>,
    /// Directory for the host's Unix sockets (pipe backends) [default: /run/beephost as root]
    #[arg(long, env = env_vars::BEEPHOST_RUN_DIR)]
    pub run_dir: Option<PathBuf>,
    /// Address backend http endpoints bind to [default: 127.0.0.1]
    #[arg(long, env = env_vars::BEEPHOST_BACKEND_BIND)]
    pub backend_bind: Option<String>,
    /// OCI runtime for sandbox containers, such as runsc (gVisor) [default: the engine's]
    #[arg(long, env = env_vars::BEEPHOST_OCI_RUNTIME)]
    pub oci_runtime: Option<String>,
    /// Port range of backend http endpoints, LO-HI [default: any free port]
    #[arg(long, env = env_vars::BEEPHOST_BACKEND_PORTS)]
    pub backend_ports: Option<String>,
    /// Binary copied into runtime images as the agent [default: this executable]
    #[arg(long, env = env_vars::BEEPHOST_AGENT_BINARY)]
    pub agent_binary: Option<PathBuf>,
    /// Also serve /metrics (only) on this address, e.g. an admin network [default: off]
    #[arg(long, env = env_vars::BEEPHOST_METRICS_LISTEN)]
    pub metrics_listen: Option<String>,
    /// Package index venv builds use [default: the installer's, PyPI]
    #[arg(long, env = env_vars::BEEPHOST_INDEX_URL)]
    pub index_url: Option<String>,
    /// CA bundle file mounted into venv build jobs (for TLS interception) [default: none]
    #[arg(long, env = env_vars::BEEPHOST_CA_BUNDLE)]
    pub ca_bundle: Option<PathBuf>,
    /// Directory of wheels every venv build may install from (--find-links) [default: none]
    #[arg(long, env = env_vars::BEEPHOST_WHEELHOUSE)]
    pub wheelhouse: Option<PathBuf>,
    /// Directories (comma separated) a venv request's own find_links may lie in
    #[arg(long, env = env_vars::BEEPHOST_FIND_LINKS_ROOTS)]
    pub find_links_roots: Option<String>,
    /// Venv builds use no package index (and no network) unless a request asks
    #[arg(long, env = env_vars::BEEPHOST_NO_INDEX)]
    pub no_index: bool,
    /// Accept `name @ https://…` requirements in venvs
    #[arg(long, env = env_vars::BEEPHOST_ALLOW_URL_REQUIREMENTS)]
    pub allow_url_requirements: bool,
}

/// `beephost init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Root filesystem tarball (tar or tar.gz) with python3, for machines without a registry
    #[arg(long, conflicts_with_all = ["from_image", "python"])]
    pub rootfs: Option<PathBuf>,
    /// Any registry image with python3
    #[arg(long, conflicts_with = "python")]
    pub from_image: Option<String>,
    /// Python version of the official image (python:<VERSION>-slim)
    #[arg(long)]
    pub python: Option<String>,
    /// Rebuild even if a runtime for these inputs exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum VenvCommand {
    /// Create a venv from packages, a requirements file or a template
    Create(VenvCreateArgs),
    /// List venvs
    List,
    /// Show one venv: packages with versions, size, state
    Show(NameArg),
    /// Delete a venv (refused while backends use it, unless --force)
    Delete(VenvDeleteArgs),
    /// Install (or remove) packages in a venv
    Install(VenvInstallArgs),
    /// Create the admin venv (pip, uv, the beephost client)
    Admin(VenvSourceArgs),
    /// List the venv templates
    Templates,
}

/// Where a venv's packages come from (the host's settings when not given).
#[derive(Debug, Clone, Default, Args)]
pub struct VenvSourceArgs {
    /// A directory of wheels on the host (inside its wheelhouse or find-links roots)
    #[arg(long)]
    pub find_links: Option<PathBuf>,
    /// Use no package index: only the wheelhouse (the build gets no network)
    #[arg(long)]
    pub no_index: bool,
    /// The package index to use
    #[arg(long)]
    pub index_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct VenvDeleteArgs {
    pub name: String,
    /// Remove the backends that use it first
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct VenvCreateArgs {
    pub name: String,
    /// Packages to install
    pub packages: Vec<String>,
    /// A requirements file
    #[arg(short = 'r', long)]
    pub requirements: Option<PathBuf>,
    /// A template: minimal, data-science, machine-learning, web
    #[arg(long)]
    pub template: Option<String>,
    /// The runtime (tag or id) to build with [default: the newest]
    #[arg(long)]
    pub runtime: Option<String>,
    #[command(flatten)]
    pub sources: VenvSourceArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VenvInstallArgs {
    pub name: String,
    pub packages: Vec<String>,
    /// Uninstall the packages instead
    #[arg(long)]
    pub remove: bool,
    /// A requirements file
    #[arg(short = 'r', long)]
    pub requirements: Option<PathBuf>,
    #[command(flatten)]
    pub sources: VenvSourceArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Http,
    Pipe,
    Rpc,
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    #[arg(value_enum)]
    pub transport: Transport,
    /// Venv to mount (read-only); the runtime's own Python when absent
    #[arg(long)]
    pub venv: Option<String>,
    /// Name of the backend [default: its id]
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit (swap equal to it), like 512m or 2g
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU quota in cores
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes and threads
    #[arg(long)]
    pub pids: Option<i64>,
    /// Default per-call timeout in seconds
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Stop after this long without a call, like 30m
    #[arg(long)]
    pub idle_ttl: Option<String>,
    /// Stop after this long in any case, like 8h
    #[arg(long)]
    pub ttl: Option<String>,
    /// `none` (default) or `egress`
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One backend's name
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    pub name: Option<String>,
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Backend name or id
    #[arg(long)]
    pub backend: Option<String>,
    /// Session to run in (state persists between calls); a fresh worker when absent
    #[arg(long)]
    pub session: Option<String>,
    /// Seconds before the call is interrupted
    #[arg(long)]
    pub timeout: Option<f64>,
    /// A file of Python code
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Python code
    pub code: Option<String>,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let global = cli.global;
    match cli.command {
        Command::Serve(args) => crate::server::serve_main(args, global.token).await,
        Command::Init(args) => init::run(&global, args).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Venv(command) => venv::run(&global, command).await,
        Command::Start(args) => backends::start(&global, args).await,
        Command::Stop(args) => backends::stop(&global, args).await,
        Command::Logs(args) => backends::logs(&global, args).await,
        Command::Exec(args) => backends::exec(&global, args).await,
        Command::Agent(args) => match crate::agent::run(args).await {
            Ok(()) => ExitCode::Ok,
            Err(e) => {
                output::error(&format!("agent: {e:#}"), None);
                ExitCode::Failure
            }
        },
    }
}
