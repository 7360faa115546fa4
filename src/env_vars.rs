//! Every environment variable beephost reads, declared once.
//!
//! Flags name these through clap's `env =`; nothing else in the crate spells a variable's name.

/// Where the host listens (`serve --listen`).
pub const BEEPHOST_LISTEN: &str = "BEEPHOST_LISTEN";
/// The host's URL, for every client subcommand (`--url`).
pub const BEEPHOST_URL: &str = "BEEPHOST_URL";
/// Bearer token: required by `serve` when set, sent by clients (`--token`).
pub const BEEPHOST_TOKEN: &str = "BEEPHOST_TOKEN";
/// A TOML file of `serve` settings (`--config`).
pub const BEEPHOST_CONFIG: &str = "BEEPHOST_CONFIG";
/// Log format of `serve`: `pretty` or `json` (`--log-format`).
pub const BEEPHOST_LOG_FORMAT: &str = "BEEPHOST_LOG_FORMAT";
/// Log filter in `tracing_subscriber::EnvFilter` syntax (default `info`).
pub const BEEPHOST_LOG: &str = "BEEPHOST_LOG";
/// Root filesystem tarball the host prepares its default runtime from (`serve --rootfs`).
pub const BEEPHOST_ROOTFS: &str = "BEEPHOST_ROOTFS";
/// Registry image the host prepares its default runtime from (`serve --image`).
pub const BEEPHOST_IMAGE: &str = "BEEPHOST_IMAGE";
/// Extra `key=value` labels (comma separated) stamped on everything the host creates.
pub const BEEPHOST_LABELS: &str = "BEEPHOST_LABELS";
/// The binary copied into runtime images as the agent (default: the running executable).
pub const BEEPHOST_AGENT_BINARY: &str = "BEEPHOST_AGENT_BINARY";
/// Output format of client subcommands: `table` or `json` (`--output`).
pub const BEEPHOST_OUTPUT: &str = "BEEPHOST_OUTPUT";
/// The Docker engine to use (read by the Docker client, named here for the docs).
pub const DOCKER_HOST: &str = "DOCKER_HOST";
