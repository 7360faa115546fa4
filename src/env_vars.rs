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
/// Stable id of this host, written as the owner label of its backends (`serve --host-id`).
pub const BEEPHOST_HOST_ID: &str = "BEEPHOST_HOST_ID";
/// Directory of the host's Unix sockets (`serve --run-dir`).
pub const BEEPHOST_RUN_DIR: &str = "BEEPHOST_RUN_DIR";
/// Address backend http endpoints bind to (`serve --backend-bind`).
pub const BEEPHOST_BACKEND_BIND: &str = "BEEPHOST_BACKEND_BIND";
/// Port range of backend http endpoints, `LO-HI` (`serve --backend-ports`).
pub const BEEPHOST_BACKEND_PORTS: &str = "BEEPHOST_BACKEND_PORTS";
/// Package index venv builds use (`serve --index-url`).
pub const BEEPHOST_INDEX_URL: &str = "BEEPHOST_INDEX_URL";
/// A CA bundle file mounted into venv build jobs, for intercepted TLS (`serve --ca-bundle`).
pub const BEEPHOST_CA_BUNDLE: &str = "BEEPHOST_CA_BUNDLE";
/// A directory of wheels every venv build may install from (`serve --wheelhouse`).
pub const BEEPHOST_WHEELHOUSE: &str = "BEEPHOST_WHEELHOUSE";
/// Directories (comma separated) a request's own `find_links` may lie in (`serve --find-links-roots`).
pub const BEEPHOST_FIND_LINKS_ROOTS: &str = "BEEPHOST_FIND_LINKS_ROOTS";
/// Venv builds use no package index unless a request asks (`serve --no-index`).
pub const BEEPHOST_NO_INDEX: &str = "BEEPHOST_NO_INDEX";
/// Accept `name @ https://…` requirements in venvs (`serve --allow-url-requirements`).
pub const BEEPHOST_ALLOW_URL_REQUIREMENTS: &str = "BEEPHOST_ALLOW_URL_REQUIREMENTS";
/// OCI runtime of sandbox containers, such as `runsc` for gVisor (`serve --oci-runtime`).
pub const BEEPHOST_OCI_RUNTIME: &str = "BEEPHOST_OCI_RUNTIME";
/// Output format of client subcommands: `table` or `json` (`--output`).
pub const BEEPHOST_OUTPUT: &str = "BEEPHOST_OUTPUT";
/// A second listener serving only `/metrics` (`serve --metrics-listen`), e.g. for an admin network.
pub const BEEPHOST_METRICS_LISTEN: &str = "BEEPHOST_METRICS_LISTEN";
/// OTLP base endpoint; traces are exported only when it (or the traces endpoint) is set.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// OTLP endpoint for traces only (used verbatim; beats OTEL_EXPORTER_OTLP_ENDPOINT).
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `grpc` or `http/protobuf` (read by opentelemetry-otlp).
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The `service.name` of exported spans (default `beephost`; read by the OpenTelemetry SDK).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Trace sampler, e.g. `parentbased_traceidratio` (read by the OpenTelemetry SDK).
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The sampler's argument, e.g. a ratio (read by the OpenTelemetry SDK).
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `true` turns traces off whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `none` turns traces off whatever else is set.
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// The Docker engine to use (read by the Docker client, named here for the docs).
pub const DOCKER_HOST: &str = "DOCKER_HOST";
