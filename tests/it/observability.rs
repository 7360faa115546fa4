//! Observability against real parts: a real Prometheus scrapes a real host and is queried over
//! its HTTP API; an OTLP receiver (gRPC and HTTP) receives the host's spans; the dashboard and
//! alert rules only name metrics the host exports, and promtool accepts the rules.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::otlp::{self, Receiver};
use crate::support::{wait_for, Host, TestLabel};

/// A tool the tests need; missing is a failure with a hint, never a skip.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or(None);
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed\nhint: run the tests with scripts/test, which installs it \
             (apt-get install -y prometheus)"
        )
    })
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET with extra headers; returns status and body.
fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    crate::support::http_with("GET", url, None, headers)
}

/// A Prometheus server on a free loopback port, scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: beephost\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prom = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            (get_with(&format!("{}/-/ready", prom.url), &[]).0 == 200).then_some(())
        });
        prom
    }

    /// The instant-vector result of `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let (status, body) = get_with(
            &format!("{}/api/v1/query?query={}", self.url, percent_encode(query)),
            &[],
        );
        assert_eq!(status, 200, "query {query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits until `query` yields exactly one series with value `want`.
    fn wait_value(&self, query: &str, want: f64) {
        let mut last = Vec::new();
        let found = wait_for_soft(Duration::from_secs(30), || {
            last = self.query(query);
            (last.len() == 1 && last[0].1 == want).then_some(())
        });
        assert!(
            found.is_some(),
            "{query}: wanted {want}, last result {last:?}"
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

/// Like `wait_for`, but returns `None` at the deadline so the caller can say what it saw.
fn wait_for_soft<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks what the host's `listening` line says about traces.
fn assert_traces(host: &Host, on: bool) {
    let said = wait_for("the listening line", Duration::from_secs(10), || {
        host.log().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "listening").then(|| v["traces"].clone())
        })
    });
    assert_eq!(said, serde_json::json!(on), "{}", host.log());
}

fn host_addr(host: &Host) -> String {
    host.url.strip_prefix("http://").unwrap().to_string()
}

#[test]
fn prometheus_scrapes_the_host_and_sees_the_traffic_it_got() {
    let label = TestLabel::new("obs-prom");
    let host = Host::start(&label, &["--no-prepare"], &[]);
    assert_traces(&host, false);
    const RUNTIMES: usize = 7;
    const MISSES: usize = 5;
    for _ in 0..RUNTIMES {
        let (status, body) = host.get("/v1/runtimes");
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..MISSES {
        assert_eq!(host.get(&format!("/no/such/route/{i}")).0, 404);
    }
    let prom = Prometheus::start(&host_addr(&host));
    prom.wait_value(r#"up{job="beephost"}"#, 1.0);
    prom.wait_value(
        r#"beephost_http_requests_total{route="/v1/runtimes",method="GET",status_class="2xx"}"#,
        RUNTIMES as f64,
    );
    prom.wait_value(
        r#"sum(beephost_http_requests_total{route="unmatched",status_class="4xx"})"#,
        MISSES as f64,
    );
    prom.wait_value(
        r#"beephost_http_request_duration_seconds_count{route="/v1/runtimes",status_class="2xx"}"#,
        RUNTIMES as f64,
    );
    // Families with pre-initialised label sets are scraped before any execution happens.
    prom.wait_value(r#"count(beephost_executions_total)"#, 20.0);
    prom.wait_value(r#"sum(beephost_executions_total)"#, 0.0);
    prom.wait_value(r#"count(beephost_backends)"#, 4.0);
    let info = prom.query("beephost_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0["version"], env!("CARGO_PKG_VERSION"), "{info:?}");
}

#[test]
fn metrics_are_also_served_on_the_admin_listener() {
    let label = TestLabel::new("obs-admin");
    let host = Host::start(
        &label,
        &["--no-prepare", "--metrics-listen", "127.0.0.1:0"],
        &[],
    );
    let admin = wait_for("the metrics listener", Duration::from_secs(10), || {
        host.log().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "metrics listening").then(|| v["addr"].as_str().unwrap().to_string())
        })
    });
    assert_ne!(format!("http://{admin}"), host.url);
    let (status, body) = get_with(&format!("http://{admin}/metrics"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE beephost_executions_total counter"),
        "{body}"
    );
    // The admin listener serves metrics only.
    assert_eq!(get_with(&format!("http://{admin}/v1/runtimes"), &[]).0, 404);
    assert_eq!(get_with(&format!("http://{admin}/healthz"), &[]).0, 404);
    // The API listener serves them too.
    let (status, body) = host.get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("beephost_build_info"), "{body}");
}

#[test]
fn labels_never_carry_names_from_requests() {
    let label = TestLabel::new("obs-bounded");
    let host = Host::start(&label, &["--no-prepare"], &[]);
    let tag = format!("bnd{:x}", std::process::id());
    let mut sent = 0;
    for i in 0..100 {
        let venv = format!("{tag}venv{i}");
        let backend = format!("{tag}backend{i}");
        for (method, path, body) in [
            ("GET", format!("/v1/venvs/{venv}"), None),
            ("DELETE", format!("/v1/venvs/{venv}"), None),
            ("GET", format!("/v1/backends/{backend}"), None),
            (
                "POST",
                format!("/v1/backends/{backend}/execute"),
                Some(format!(r#"{{"code":"1","session":"{tag}session{i}"}}"#)),
            ),
            (
                "POST",
                "/v1/venvs".to_string(),
                Some(format!(r#"{{"name":"{venv}","packages":["{tag}pkg{i}"]}}"#)),
            ),
        ] {
            let (status, _) =
                crate::support::http(method, &format!("{}{path}", host.url), body.as_deref());
            assert_ne!(status, 0, "{method} {path} got no answer");
            sent += 1;
        }
    }
    let (status, text) = host.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        !text.contains(&tag),
        "a label holds a name from a request:\n{}",
        text.lines()
            .filter(|l| l.contains(&tag))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The requests were counted, under route templates.
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("beephost_http_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(counted >= sent as f64, "{counted} < {sent}:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("beephost_")) {
        let labels = line.split_once('{').map(|(_, l)| l).unwrap_or("");
        assert!(labels.len() < 200, "a suspiciously long label set: {line}");
    }
}

/// Every `beephost_*` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("beephost_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn dashboard_and_alert_rules_use_only_exported_metrics() {
    let dashboard_path = repo("docker/grafana/beephost-dashboard.json");
    let rules_path = repo("docker/prometheus/alerts.yml");
    let dashboard = std::fs::read_to_string(&dashboard_path).unwrap();
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"].as_array().is_some_and(|p| p.len() >= 6),
        "the dashboard has panels"
    );

    let label = TestLabel::new("obs-catalogue");
    let host = Host::start(&label, &["--no-prepare"], &[]);
    host.get("/v1/runtimes");
    host.get("/healthz");
    let (status, text) = host.get("/metrics");
    assert_eq!(status, 200);
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for (what, source) in [("dashboard", &dashboard), ("alert rules", &rules)] {
        let names = metric_names(source);
        assert!(names.len() >= 3, "the {what} names few metrics: {names:?}");
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !exported.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "the {what} uses metrics /metrics does not have: {missing:?}"
        );
    }

    let promtool = tool("promtool");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a host exporting traces to `receiver` with `protocol`.
fn traced_host(label: &TestLabel, receiver: &Receiver, protocol: &str, service: &str) -> Host {
    Host::start(
        label,
        &["--no-prepare"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            ("BEEPHOST_LOG", "info,beephost=debug"),
        ],
    )
}

/// `GET /v1/runtimes` makes an HTTP server span, an orchestrator span under it and a Docker
/// client span under that, all in one trace; returns the three.
fn assert_runtimes_chain(spans: &[otlp::Span], trace_id: &str) -> [otlp::Span; 3] {
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |name: &str| {
        in_trace
            .iter()
            .find(|s| s.name == name)
            .map(|s| (*s).clone())
            .unwrap_or_else(|| panic!("no `{name}` span in trace {trace_id}: {in_trace:#?}"))
    };
    let http = find("GET /v1/runtimes");
    assert_eq!(http.kind, otlp::KIND_SERVER, "{http:?}");
    assert_eq!(http.attr("http.route"), Some("/v1/runtimes"), "{http:?}");
    assert_eq!(http.attr("http.request.method"), Some("GET"), "{http:?}");
    assert_eq!(
        http.attr("http.response.status_code"),
        Some("200"),
        "{http:?}"
    );
    let op = find("runtimes.list");
    assert_eq!(op.parent_span_id, http.span_id, "{op:?} under {http:?}");
    assert_eq!(op.attr("operation"), Some("runtimes.list"), "{op:?}");
    let docker = find("docker.list_images");
    assert_eq!(docker.parent_span_id, op.span_id, "{docker:?} under {op:?}");
    assert_eq!(docker.kind, otlp::KIND_CLIENT, "{docker:?}");
    assert_eq!(
        docker.attr("docker.operation"),
        Some("list_images"),
        "{docker:?}"
    );
    [http, op, docker]
}

#[test]
fn spans_reach_an_otlp_grpc_receiver_continuing_the_callers_trace() {
    let receiver = Receiver::grpc();
    let label = TestLabel::new("obs-grpc");
    let service = format!("beephost-it-{}", std::process::id());
    let host = traced_host(&label, &receiver, "grpc", &service);
    assert_traces(&host, true);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, body) = get_with(
        &format!("{}/v1/runtimes", host.url),
        &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
    );
    assert_eq!(status, 200, "{body}");
    let spans = receiver.wait_for_span("the docker span of GET /v1/runtimes", |s| {
        s.trace_id == trace_id && s.name == "docker.list_images"
    });
    let [http, _, _] = assert_runtimes_chain(&spans, trace_id);
    assert_eq!(
        http.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(http.service, service, "{http:?}");
    // JSON log lines inside the request carry the trace and span ids.
    let log = wait_for(
        "a log line with the trace id",
        Duration::from_secs(10),
        || {
            host.log().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["trace_id"] == trace_id).then_some(v)
            })
        },
    );
    assert_eq!(log["span_id"].as_str().map(str::len), Some(16), "{log}");
}

#[test]
fn spans_reach_an_otlp_http_receiver_as_a_new_trace() {
    let receiver = Receiver::http();
    let label = TestLabel::new("obs-http");
    let service = format!("beephost-it-http-{}", std::process::id());
    let host = traced_host(&label, &receiver, "http/protobuf", &service);
    let (status, body) = host.get("/v1/runtimes");
    assert_eq!(status, 200, "{body}");
    let spans = receiver.wait_for_span("the server span of GET /v1/runtimes", |s| {
        s.name == "GET /v1/runtimes" && s.service == service
    });
    let http = spans
        .iter()
        .find(|s| s.name == "GET /v1/runtimes")
        .unwrap()
        .clone();
    assert_eq!(http.parent_span_id, "", "no traceparent sent: a root span");
    let spans = receiver.wait_for_span("the docker span", |s| {
        s.trace_id == http.trace_id && s.name == "docker.list_images"
    });
    assert_runtimes_chain(&spans, &http.trace_id);
}

/// One execute call through the control plane is one trace: the HTTP span, the orchestrator's
/// `backends.call` and the `agent.request` that carries the agent's own execution time; and the
/// call is counted in `beephost_executions_total`.
#[test]
fn an_execute_call_is_one_trace_down_to_the_agent_over_otlp_grpc() {
    execute_chain(Receiver::grpc(), "grpc");
}

#[test]
fn an_execute_call_is_one_trace_down_to_the_agent_over_otlp_http() {
    execute_chain(Receiver::http(), "http/protobuf");
}

fn execute_chain(receiver: Receiver, protocol: &str) {
    let label = TestLabel::new("obs-exec");
    label.runtime();
    let service = format!("beephost-it-exec-{}", std::process::id());
    let host = traced_host(&label, &receiver, protocol, &service);
    host.wait_ready(Duration::from_secs(60));
    let out = host.cli(&["--output", "json", "start", "http", "--name", "traced"]);
    assert_eq!(out.code, 0, "{out:?}");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let (status, body) = crate::support::http_with(
        "POST",
        &format!("{}/v1/backends/traced/execute", host.url),
        Some(r#"{"code": "sum(range(10))"}"#),
        &[("traceparent", &format!("00-{trace_id}-{caller}-01"))],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"value\":45"), "{body}");
    let spans = receiver.wait_for_span("the agent span of the execute call", |s| {
        s.trace_id == trace_id && s.name == "agent.request"
    });
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |pred: &dyn Fn(&otlp::Span) -> bool, what: &str| {
        in_trace
            .iter()
            .find(|s| pred(s))
            .map(|s| (*s).clone())
            .unwrap_or_else(|| panic!("no {what} span in {in_trace:#?}"))
    };
    let http = find(
        &|s| s.attr("http.route") == Some("/v1/backends/{id}/{op}"),
        "HTTP",
    );
    assert_eq!(http.parent_span_id, caller, "{http:?}");
    let call = find(&|s| s.name == "backends.call", "backends.call");
    assert_eq!(call.parent_span_id, http.span_id, "{call:?} under {http:?}");
    assert_eq!(call.attr("backend"), Some("traced"), "{call:?}");
    assert_eq!(call.attr("op"), Some("exec"), "{call:?}");
    assert_eq!(call.attr("transport"), Some("api"), "{call:?}");
    assert_eq!(call.attr("outcome"), Some("ok"), "{call:?}");
    let agent = find(&|s| s.name == "agent.request", "agent.request");
    assert_eq!(
        agent.parent_span_id, call.span_id,
        "{agent:?} under {call:?}"
    );
    assert_eq!(agent.kind, otlp::KIND_CLIENT, "{agent:?}");
    let agent_ms: f64 = agent
        .attr("agent.duration_ms")
        .expect("the agent's time")
        .parse()
        .unwrap();
    assert!(agent_ms > 0.0 && agent_ms < 10_000.0, "{agent:?}");
    let (_, metrics) = host.get("/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("beephost_executions_total")
                && l.contains("outcome=\"ok\"")
                && l.contains("transport=\"api\"")
        })
        .unwrap_or_else(|| panic!("no executions series:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
}
