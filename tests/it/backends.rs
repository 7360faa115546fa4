//! Backends against the real engine: each transport end to end with a real client, the
//! sandbox's hardening as the engine reports it, faults, lifetimes and a host killed with -9.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{docker, http, http_with, Host, TestLabel};

/// A host with a runtime of its own, ready to start backends.
fn host(name: &str, extra: &[&str]) -> (TestLabel, Host) {
    let label = TestLabel::new(name);
    label.runtime();
    let run_dir = std::env::temp_dir().join(format!("bh-{}", label.prefix));
    let mut args = vec!["--no-prepare", "--run-dir", run_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let host = Host::start(&label, &args, &[]);
    host.wait_ready(Duration::from_secs(60));
    (label, host)
}

fn start(host: &Host, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json", "start"];
    all.extend_from_slice(args);
    let out = host.cli(&all);
    assert_eq!(out.code, 0, "start {args:?}: {out:?}\n{}", host.log());
    serde_json::from_str(&out.stdout).unwrap()
}

fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, text) = http_with(
        "POST",
        url,
        Some(&body.to_string()),
        &[("Authorization", &auth)],
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

fn v1(host: &Host, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(
        method,
        &format!("{}{path}", host.url),
        Some(&body.to_string()),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

#[test]
fn http_backend_serves_every_operation_with_its_token() {
    let (_label, host) = host("bk-http", &[]);
    let b = start(&host, &["http", "--name", "calc"]);
    let ep = b["endpoint"].as_str().unwrap().to_string();
    let token = b["token"].as_str().unwrap().to_string();
    assert!(ep.starts_with("http://127.0.0.1:"), "{ep}");

    let (status, _) = post(&format!("{ep}/execute"), "wrong", json!({"code": "1"}));
    assert_eq!(status, 401);
    let (status, body) = http("GET", &format!("{ep}/health"), None);
    assert_eq!(status, 200, "{body}");

    let call = |op: &str, body: Value| post(&format!("{ep}/{op}"), &token, body);
    let (s, r) = call(
        "execute",
        json!({"code": "x = 20\nx + 22", "session": "s1"}),
    );
    assert_eq!((s, &r["result"]["value"]), (200, &json!(42)), "{r}");
    let (_, r) = call("execute", json!({"code": "1/0", "session": "s1"}));
    assert_eq!(r["error"]["type"], "ZeroDivisionError", "{r}");
    assert!(r["error"]["traceback"]
        .as_str()
        .unwrap()
        .contains("ZeroDivisionError"));
    let (_, r) = call(
        "execute",
        json!({"code": "import os\nprint('hi'); os.write(2, b'err')", "session": "s1"}),
    );
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("hi\n"), Some("err")),
        "{r}"
    );

    // The original's field names work as aliases.
    let (_, m) = call(
        "import",
        json!({"moduleName": "collections", "session": "s1"}),
    );
    assert_eq!(m["type"], "module", "{m}");
    assert_eq!(
        (&m["handleId"], &m["typeName"]),
        (&m["handle"], &m["type"]),
        "seed names: {m}"
    );
    let (_, c) = call(
        "create",
        json!({"moduleHandleId": m["handle"], "className": "Counter", "args": ["abca"], "session": "s1"}),
    );
    assert_eq!(c["type"], "Counter", "{c}");
    let counter = c["handle"].as_str().unwrap().to_string();
    let (_, r) = call(
        "call",
        json!({"handleId": counter, "methodName": "most_common", "args": [1], "session": "s1"}),
    );
    assert_eq!(r["value"], json!([["a", 2]]), "{r}");
    let (_, r) = call(
        "create",
        json!({"module": "types", "class": "SimpleNamespace", "kwargs": {"a": 1}, "session": "s1"}),
    );
    let ns = r["handle"].as_str().unwrap().to_string();
    let (_, r) = call(
        "setattr",
        json!({"handle": ns, "attributeName": "b", "value": [1, 2], "session": "s1"}),
    );
    assert_eq!(
        (&r["ok"], &r["success"]),
        (&json!(true), &json!(true)),
        "{r}"
    );
    let (_, r) = call(
        "getattr",
        json!({"handle": ns, "name": "b", "session": "s1"}),
    );
    assert_eq!(r["value"], json!([1, 2]), "{r}");
    let (_, r) = call(
        "eval",
        json!({"expression": "a * x", "locals": {"a": 2}, "session": "s1"}),
    );
    assert_eq!(r["value"], 40, "{r}");
    let (_, r) = call("wrap", json!({"value": {"k": [1]}, "session": "s1"}));
    assert!(r["handle"].is_string(), "{r}");
    let (_, r) = call("dispose", json!({"handleId": counter, "session": "s1"}));
    assert_eq!(r["success"], true, "{r}");
    let (s, r) = call(
        "call",
        json!({"handle": counter, "method": "total", "session": "s1"}),
    );
    assert_eq!(s, 404, "a disposed handle: {r}");
    let (_, r) = call("module_available", json!({"moduleName": "json"}));
    assert_eq!(r["available"], true, "{r}");
    let (_, r) = call("module_available", json!({"module": "surely_not_a_module"}));
    assert_eq!(r["available"], false, "{r}");
    let (_, r) = call(
        "execute",
        json!({"code": "import array\nar = array.array('d', [1.5, 2.5])", "session": "s1"}),
    );
    assert!(r["error"].is_null(), "{r}");
    let (_, h) = call("eval", json!({"expression": "ar", "session": "s1"}));
    let (_, r) = call(
        "tofloatarray",
        json!({"handleId": h["handle"], "session": "s1"}),
    );
    assert!(
        r.get("data").is_some() || r["error"]["type"] == "ModuleNotFoundError",
        "{r}"
    );

    // Sessions: list, open, close; a closed session's state is gone.
    let auth = format!("Bearer {token}");
    let (s, r) = http_with(
        "GET",
        &format!("{ep}/sessions"),
        None,
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 200);
    assert!(r.contains("s1"), "{r}");
    let (s, _) = http_with(
        "DELETE",
        &format!("{ep}/sessions/s1"),
        None,
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 200);
    let (_, r) = call("execute", json!({"code": "x", "session": "s1"}));
    assert_eq!(r["error"]["type"], "NameError", "{r}");

    // The same operations through the control plane, by name.
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/calc/execute",
        json!({"code": "6 * 7"}),
    );
    assert_eq!((s, &r["result"]["value"]), (200, &json!(42)), "{r}");
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/calc/import",
        json!({"module": "math"}),
    );
    assert_eq!((s, &r["type"]), (200, &json!("module")), "{r}");

    // And through the CLI.
    let out = host.cli(&["exec", "--backend", "calc", "print('from cli'); 2 ** 10"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "from cli\n1024\n");
    let out = host.cli(&["exec", "--backend", "calc", "raise ValueError('nope')"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ValueError: nope"), "{}", out.stderr);

    let out = host.cli(&["stop", "calc"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (status, _) = post(&format!("{ep}/execute"), &token, json!({"code": "1"}));
    assert_ne!(status, 200, "the endpoint still answers after stop");
}

#[test]
fn pipe_backend_speaks_newline_json() {
    let (_label, host) = host("bk-pipe", &[]);
    let b = start(&host, &["pipe", "--name", "p"]);
    let path = b["endpoint"].as_str().unwrap().to_string();
    let token = b["token"].as_str().unwrap().to_string();
    let stream = UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect {path}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: Value| -> Value {
        writeln!(writer, "{line}").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    assert_eq!(
        ask(json!({"command": "health", "token": token}))["pong"],
        true
    );
    let r = ask(
        json!({"command": "execute", "payload": {"code": "y = 5\ny * 2", "session": "a"}, "token": token}),
    );
    assert_eq!(r["result"]["value"], 10, "{r}");
    let r = ask(
        json!({"command": "import", "payload": {"moduleName": "math", "session": "a"}, "token": token}),
    );
    let r = ask(
        json!({"command": "getattr", "payload": {"handleId": r["handle"], "attributeName": "pi", "session": "a"}, "token": token}),
    );
    assert!(
        (r["value"].as_f64().unwrap() - std::f64::consts::PI).abs() < 1e-12,
        "{r}"
    );
    let r = ask(json!({"command": "execute", "payload": {"code": "1"}, "token": "wrong"}));
    assert_eq!(r["status"], 401, "{r}");
    let r = ask(json!({"command": "frobnicate", "payload": {}, "token": token}));
    assert_eq!(r["status"], 404, "{r}");
    let r = ask(json!({"command": "execute", "payload": {"code": 3}, "token": token}));
    assert!(r["detail"].as_str().unwrap().contains("code"), "{r}");
}

fn inspect(container: &str, format: &str) -> String {
    let out = docker(&["inspect", "--format", format, container]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sandboxes_are_hardened_and_have_no_network() {
    // The OCI runtime is a setting (runsc for gVisor); runc, named explicitly, proves the plumbing.
    let (label, host) = host("bk-hard", &["--oci-runtime", "runc"]);
    let b = start(
        &host,
        &[
            "http", "--name", "hard", "--memory", "256m", "--pids", "128", "--cpus", "0.5",
        ],
    );
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label={}", label.label()),
        "--filter",
        "label=io.beephost.kind=backend",
    ]);
    let container = String::from_utf8_lossy(&ids.stdout).trim().to_string();
    assert!(
        !container.is_empty() && !container.contains('\n'),
        "one container: {container:?}"
    );
    let c = container.as_str();
    assert_eq!(inspect(c, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert_eq!(inspect(c, "{{json .HostConfig.CapAdd}}"), "null");
    assert_eq!(inspect(c, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(inspect(c, "{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(inspect(c, "{{.HostConfig.Privileged}}"), "false");
    assert_eq!(
        inspect(c, "{{json .HostConfig.SecurityOpt}}"),
        r#"["no-new-privileges"]"#
    );
    assert_eq!(inspect(c, "{{.Config.User}}"), "10001:10001");
    assert_eq!(inspect(c, "{{json .HostConfig.Binds}}"), "null");
    assert!(["null", "[]"].contains(&inspect(c, "{{json .HostConfig.Devices}}").as_str()));
    assert!(["null", "{}"].contains(&inspect(c, "{{json .HostConfig.PortBindings}}").as_str()));
    assert_eq!(inspect(c, "{{.HostConfig.PidsLimit}}"), "128");
    assert_eq!(
        inspect(c, "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        inspect(c, "{{.HostConfig.MemorySwap}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(inspect(c, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(c, "{{.HostConfig.LogConfig.Type}}"), "none");
    assert_eq!(inspect(c, "{{.HostConfig.Init}}"), "true");
    assert_eq!(inspect(c, "{{.HostConfig.Runtime}}"), "runc");
    assert_eq!(inspect(c, "{{.HostConfig.RestartPolicy.Name}}"), "no");
    assert_eq!(
        inspect(c, "{{json .Mounts}}"),
        "[]",
        "no mounts but tmpfs without a venv"
    );
    let tmpfs = inspect(c, "{{json .HostConfig.Tmpfs}}");
    assert!(
        tmpfs.contains("/workspace") && tmpfs.contains("/tmp"),
        "{tmpfs}"
    );

    // From inside: no network, read-only root, a non-root user.
    let code = "import os, socket\n\
                try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); net = 'open'\n\
                except OSError as e:\n    net = 'closed'\n\
                try:\n    open('/etc/owned', 'w'); ro = False\n\
                except OSError:\n    ro = True\n\
                open('/workspace/ok', 'w').write('x')\n\
                (net, ro, os.getuid())";
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/hard/execute",
        json!({ "code": code }),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["result"]["value"], json!(["closed", true, 10001]), "{r}");
    let _ = b;
}

#[test]
fn bad_backend_requests_name_the_offender() {
    let (label, host) = host("bk-bad", &[]);
    let cases = [
        (json!({"transport": "smtp"}), 400, "transport"),
        (
            json!({"transport": "http", "binds": ["/:/host"]}),
            400,
            "binds",
        ),
        (
            json!({"transport": "http", "image": "alpine"}),
            400,
            "image",
        ),
        (
            json!({"transport": "http", "limits": {"privileged": true}}),
            400,
            "privileged",
        ),
        (
            json!({"transport": "http", "venv": "no-such-venv"}),
            404,
            "no-such-venv",
        ),
        (
            json!({"transport": "http", "limits": {"memory": "100g"}}),
            422,
            "limits.memory",
        ),
        (
            json!({"transport": "http", "limits": {"pids": 1}}),
            422,
            "limits.pids",
        ),
        (
            json!({"transport": "http", "name": "Bad Name"}),
            400,
            "name",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, r) = v1(&host, "POST", "/v1/backends", body.clone());
        assert_eq!(s, status, "{body}: {r}");
        assert!(
            r["detail"].as_str().unwrap_or("").contains(needle),
            "{body}: {r}"
        );
    }
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/nobody/execute",
        json!({"code": "1"}),
    );
    assert_eq!(s, 404, "{r}");
    // Nothing was left behind by the refusals.
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={}", label.label()),
        "--filter",
        "label=io.beephost.kind=backend",
    ]);
    assert!(left.stdout.is_empty(), "refused requests left containers");
}

#[test]
fn a_killed_container_fails_its_calls_at_once_and_others_carry_on() {
    let (label, host) = host("bk-kill", &[]);
    start(&host, &["http", "--name", "victim"]);
    start(&host, &["http", "--name", "bystander"]);
    let url = format!("{}/v1/backends/victim/execute", host.url);
    let pending = std::thread::spawn(move || {
        let started = Instant::now();
        let code =
            r#"{"code": "import time\nopen('/workspace/started', 'w').close()\ntime.sleep(60)"}"#;
        let reply = http("POST", &url, Some(code));
        (reply, started.elapsed())
    });
    // Wait until the call is running (it leaves a file), then kill the container under it.
    crate::support::wait_for("the call to start", Duration::from_secs(20), || {
        let (_, r) = v1(
            &host,
            "POST",
            "/v1/backends/victim/files.list",
            json!({"path": "."}),
        );
        r.to_string().contains("started").then_some(())
    });
    let filter = "label=io.beephost.backend-name=victim".to_string();
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &filter,
        "--filter",
        &format!("label={}", label.label()),
    ]);
    let id = String::from_utf8_lossy(&ids.stdout).trim().to_string();
    let killed_at = Instant::now();
    docker(&["kill", &id]);
    let ((status, body), _) = pending.join().unwrap();
    let after_kill = killed_at.elapsed();
    assert!(
        after_kill < Duration::from_secs(2),
        "the caller waited {after_kill:?} after the kill"
    );
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(r["error"]["type"], "BackendGone", "{body}");
    // The host forgets the dead backend and removes its container; the other one still works.
    crate::support::wait_for(
        "the dead backend to be removed",
        Duration::from_secs(10),
        || {
            let (s, _) = v1(&host, "GET", "/v1/backends/victim", json!(null));
            (s == 404).then_some(())
        },
    );
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/bystander/execute",
        json!({"code": "1 + 1"}),
    );
    assert_eq!((s, &r["result"]["value"]), (200, &json!(2)), "{r}");
    crate::support::wait_for(
        "the dead container to be removed",
        Duration::from_secs(10),
        || {
            docker(&["ps", "-aq", "--filter", &filter])
                .stdout
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn out_of_memory_kills_the_worker_not_the_backend() {
    let (_label, host) = host("bk-oom", &[]);
    start(&host, &["http", "--name", "small", "--memory", "96m"]);
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/small/execute",
        json!({"code": "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))", "session": "hog"}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["error"]["type"], "WorkerDied", "{r}");
    assert_eq!(r["session_lost"], true, "{r}");
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends/small/execute",
        json!({"code": "'still here'"}),
    );
    assert_eq!(
        (s, &r["result"]["value"]),
        (200, &json!("still here")),
        "{r}"
    );
}

#[test]
fn idle_backends_are_reaped() {
    let (label, host) = host("bk-idle", &[]);
    start(&host, &["http", "--name", "sleepy", "--idle-ttl", "2s"]);
    crate::support::wait_for(
        "the idle backend to be stopped",
        Duration::from_secs(20),
        || {
            let (s, _) = v1(&host, "GET", "/v1/backends/sleepy", json!(null));
            (s == 404).then_some(())
        },
    );
    crate::support::wait_for(
        "its container to be removed",
        Duration::from_secs(10),
        || {
            let filter = format!("label={}", label.label());
            docker(&[
                "ps",
                "-aq",
                "--filter",
                &filter,
                "--filter",
                "label=io.beephost.kind=backend",
            ])
            .stdout
            .is_empty()
            .then_some(())
        },
    );
}

#[test]
fn a_host_killed_with_sigkill_readopts_its_backends_at_the_same_endpoints() {
    let label = TestLabel::new("bk-adopt");
    label.runtime();
    let run_dir = std::env::temp_dir().join(format!("bh-{}", label.prefix));
    let args = [
        "--no-prepare",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--host-id",
        "adopter",
    ];
    let mut host = Host::start(&label, &args, &[]);
    host.wait_ready(Duration::from_secs(60));
    let h = start(&host, &["http", "--name", "keep-h"]);
    let p = start(&host, &["pipe", "--name", "keep-p"]);
    let (ep, token) = (
        h["endpoint"].as_str().unwrap().to_string(),
        h["token"].as_str().unwrap().to_string(),
    );
    let (s, _) = post(
        &format!("{ep}/execute"),
        &token,
        json!({"code": "state = 'kept'", "session": "s"}),
    );
    assert_eq!(s, 200);

    // Traffic through the control plane while the host dies: some frames are cut mid-way.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (
            stop.clone(),
            format!("{}/v1/backends/keep-h/execute", host.url),
        );
        let big = "x".repeat(200_000);
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"code": format!("len('{big}')"), "session": "t"}).to_string();
                if http("POST", &url, Some(&body)).0 == 200 {
                    answered += 1;
                }
            }
            answered
        })
    };
    crate::support::wait_for("traffic to flow", Duration::from_secs(20), || {
        let (_, r) = v1(&host, "GET", "/v1/backends/keep-h", json!(null));
        r["sessions"].to_string().contains("\"t\"").then_some(())
    });
    host.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        traffic.join().unwrap() > 0,
        "no call went through before the kill"
    );
    let (status, _) = post(&format!("{ep}/execute"), &token, json!({"code": "1"}));
    assert_eq!(status, 0, "the endpoint should be down while the host is");
    let host = Host::start(&label, &args, &[]);
    host.wait_ready(Duration::from_secs(60));

    let (s, r) = post(
        &format!("{ep}/execute"),
        &token,
        json!({"code": "state", "session": "s"}),
    );
    assert_eq!(
        (s, &r["result"]["value"]),
        (200, &json!("kept")),
        "{r}\n{}",
        host.log()
    );
    let path = p["endpoint"].as_str().unwrap();
    let mut stream = UnixStream::connect(path).expect("the pipe is back");
    writeln!(
        stream,
        "{}",
        json!({"command": "execute", "payload": {"code": "3 * 3"}, "token": p["token"]})
    )
    .unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"value\":9"), "{reply}");
    let filter = format!("label={}", label.label());
    let containers = docker(&[
        "ps",
        "-aq",
        "--filter",
        &filter,
        "--filter",
        "label=io.beephost.kind=backend",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&containers.stdout).lines().count(),
        2,
        "no container leaked or lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_backend_answers_a_tonic_client() {
    use beephost::endpoints::rpc::{from_json, pb, to_json};
    let (_label, host) = tokio::task::block_in_place(|| host("bk-rpc", &[]));
    let b = tokio::task::block_in_place(|| start(&host, &["rpc", "--name", "grpc"]));
    let endpoint = b["endpoint"]
        .as_str()
        .unwrap()
        .replace("grpc://", "http://");
    let token: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", b["token"].as_str().unwrap())
            .parse()
            .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::backend_client::BackendClient::with_interceptor(
        channel.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", token.clone());
            Ok(req)
        },
    );
    let ctx = |s: &str| {
        Some(pb::CallContext {
            session: s.into(),
            timeout: 0.0,
        })
    };

    assert_eq!(
        client
            .health(pb::HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .status,
        "ok"
    );
    let r = client
        .execute(pb::ExecuteRequest {
            context: ctx("g"),
            code: "n = 7\nprint('out')\nn * 6".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stdout, "out\n");
    assert_eq!(
        to_json(r.result.unwrap().value.as_ref().unwrap()),
        json!(42)
    );
    let r = client
        .execute(pb::ExecuteRequest {
            context: ctx("g"),
            code: "{}[1]".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error.unwrap().r#type, "KeyError");

    let m = client
        .import(pb::ModuleRequest {
            context: ctx("g"),
            module: "collections".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let module = m.object.unwrap();
    assert_eq!(module.r#type, "module");
    let c = client
        .create(pb::CreateRequest {
            context: ctx("g"),
            module_handle: module.handle.clone(),
            class: "OrderedDict".into(),
            kwargs: Some(prost_types::Struct {
                fields: [("a".to_string(), from_json(&json!(1)))].into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let od = c.object.unwrap().handle;
    let r = client
        .call(pb::CallRequest {
            context: ctx("g"),
            handle: od.clone(),
            method: "get".into(),
            args: vec![from_json(&json!("a"))],
            kwargs: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_json(r.object.unwrap().value.as_ref().unwrap()), json!(1));
    let r = client
        .set_attr(pb::SetAttrRequest {
            context: ctx("g"),
            handle: module.handle.clone(),
            name: "marker".into(),
            value: Some(from_json(&json!([1, "two"]))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success);
    let r = client
        .get_attr(pb::GetAttrRequest {
            context: ctx("g"),
            handle: module.handle.clone(),
            name: "marker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        to_json(r.object.unwrap().value.as_ref().unwrap()),
        json!([1, "two"])
    );
    let r = client
        .eval(pb::EvalRequest {
            context: ctx("g"),
            expression: "n + k".into(),
            locals: Some(prost_types::Struct {
                fields: [("k".to_string(), from_json(&json!(1)))].into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_json(r.object.unwrap().value.as_ref().unwrap()), json!(8));
    let w = client
        .wrap(pb::WrapRequest {
            context: ctx("g"),
            value: Some(from_json(&json!([3.0, 4.5]))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!w.object.unwrap().handle.is_empty());
    let avail = client
        .module_available(pb::ModuleRequest {
            context: None,
            module: "json".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(avail.available);
    let d = client
        .dispose(pb::HandleRequest {
            context: ctx("g"),
            handle: od.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success);
    let gone = client
        .call(pb::CallRequest {
            context: ctx("g"),
            handle: od,
            method: "keys".into(),
            args: vec![],
            kwargs: None,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    let sessions = client
        .list_sessions(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        to_json(sessions.sessions.as_ref().unwrap())
            .to_string()
            .contains("\"g\""),
        "{sessions:?}"
    );
    let closed = client
        .close_session(pb::SessionRequest {
            session: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.ok);

    // Without the token: refused.
    let mut anonymous = pb::backend_client::BackendClient::new(channel);
    let refused = anonymous.health(pb::HealthRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[test]
fn status_shows_live_figures_and_restart_keeps_the_endpoint() {
    let (_label, host) = host("bk-restart", &[]);
    let b = start(&host, &["http", "--name", "again"]);
    let (ep, token) = (
        b["endpoint"].as_str().unwrap().to_string(),
        b["token"].as_str().unwrap().to_string(),
    );
    let (s, _) = post(
        &format!("{ep}/execute"),
        &token,
        json!({"code": "v = 1", "session": "keep"}),
    );
    assert_eq!(s, 200);
    let (s, d) = v1(&host, "GET", "/v1/backends/again", json!(null));
    assert_eq!(s, 200, "{d}");
    assert!(d["memory_bytes"].as_u64().unwrap() > 1 << 20, "{d}");
    assert!(d["sessions"].to_string().contains("keep"), "{d}");
    let out = host.cli(&["status", "again"]);
    assert_eq!(out.code, 0, "{out:?}");
    for field in ["uptime", "sessions", "memory", "endpoint"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(field)),
            "no {field}: {}",
            out.stdout
        );
    }
    let out = host.cli(&["status"]);
    assert!(
        out.stdout.contains("again") && out.stdout.contains(&ep),
        "{}",
        out.stdout
    );

    let (s, r) = v1(&host, "POST", "/v1/backends/again/restart", json!(null));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["endpoint"].as_str(), Some(ep.as_str()));
    let (s, r) = post(
        &format!("{ep}/execute"),
        &token,
        json!({"code": "v", "session": "keep"}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r["error"]["type"], "NameError",
        "a restart starts afresh: {r}"
    );
}

#[test]
fn logs_show_what_the_sandbox_wrote_to_stderr() {
    let (label, host) = host("bk-logs", &[]);
    start(&host, &["http", "--name", "chatty"]);
    let out = host.cli(&["logs", "chatty"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = host.cli(&["--output", "json", "logs", "chatty"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["events"].is_array() && v["stderr"].is_array(), "{v}");
    let out = host.cli(&["logs", "nobody"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("error: backend `nobody` not found"),
        "{}",
        out.stderr
    );
    drop(label);
}

#[test]
fn an_unreachable_engine_gives_503_and_the_host_recovers_by_itself() {
    let label = TestLabel::new("bk-engine");
    label.runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("engine.sock");
    let proxy = crate::support::EngineProxy::start(&sock);
    let docker_host = format!("unix://{}", sock.display());
    let run_dir = dir.path().join("run");
    let host = Host::start(
        &label,
        &["--no-prepare", "--run-dir", run_dir.to_str().unwrap()],
        &[("DOCKER_HOST", &docker_host)],
    );
    host.wait_ready(Duration::from_secs(60));
    start(&host, &["http", "--name", "before"]);

    proxy.stop();
    crate::support::wait_for("readiness to drop", Duration::from_secs(20), || {
        (host.get("/readyz").0 == 503).then_some(())
    });
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends",
        json!({"transport": "http", "name": "during"}),
    );
    assert_eq!(s, 503, "{r}");
    assert_eq!(r["title"], "Service Unavailable", "{r}");
    assert_eq!(host.get("/healthz").0, 200);

    let _proxy = crate::support::EngineProxy::start(&sock);
    host.wait_ready(Duration::from_secs(30));
    let b = start(&host, &["http", "--name", "after"]);
    let (s, r) = post(
        &format!("{}/execute", b["endpoint"].as_str().unwrap()),
        b["token"].as_str().unwrap(),
        json!({"code": "'back'"}),
    );
    assert_eq!((s, &r["result"]["value"]), (200, &json!("back")), "{r}");
}

#[test]
fn an_agent_that_never_answers_fails_the_start_with_its_last_words() {
    let label = TestLabel::new("bk-broken");
    let base = label.runtime();
    // A runtime whose entrypoint dies at once, saying why on stderr.
    let broken = format!("beephost-test-broken:{}", label.prefix.to_lowercase());
    let dockerfile = format!(
        "FROM {base}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"echo agent exploded >&2; exit 3\", \"--\"]\n"
    );
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &broken, "--label", &label.label(), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Untag the good one, so the broken runtime is the only one the host sees.
    docker(&["rmi", &base]);
    let run_dir = std::env::temp_dir().join(format!("bh-{}", label.prefix));
    let host = Host::start(
        &label,
        &["--no-prepare", "--run-dir", run_dir.to_str().unwrap()],
        &[],
    );
    host.wait_ready(Duration::from_secs(60));
    let started = Instant::now();
    let (s, r) = v1(
        &host,
        "POST",
        "/v1/backends",
        json!({"transport": "http", "name": "doomed"}),
    );
    assert!(
        started.elapsed() < Duration::from_secs(35),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(s, 422, "{r}");
    let detail = r["detail"].as_str().unwrap();
    assert!(detail.contains("agent exploded"), "{detail}");
    assert!(detail.contains("exited with code 3"), "{detail}");
    let filter = format!("label={}", label.label());
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &filter,
        "--filter",
        "label=io.beephost.kind=backend",
    ]);
    assert!(
        left.stdout.is_empty(),
        "the failed backend's container was left"
    );
    let (_, list) = v1(&host, "GET", "/v1/backends", json!(null));
    assert_eq!(list["backends"], json!([]), "{list}");
}

/// Every operation of the protocol through one transport, `call(op, payload) -> reply`.
fn every_operation(transport: &str, call: &mut dyn FnMut(&str, Value) -> Value) {
    let ctx = |what: &str, r: &Value| format!("{transport} {what}: {r}");
    let r = call("health", json!({}));
    assert!(
        r["pong"] == true || r["status"] == "ok",
        "{}",
        ctx("health", &r)
    );
    let r = call("info", json!({}));
    assert_eq!(
        r["agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{}",
        ctx("info", &r)
    );
    let r = call("session.open", json!({"session": "all"}));
    assert_eq!(r["session"], "all", "{}", ctx("session.open", &r));
    let r = call(
        "execute",
        json!({"code": "import array\nvals = array.array('d', [0.5, 1.5])\nrows = [vals, vals]\nlen(vals)", "session": "all"}),
    );
    assert_eq!(r["result"]["value"], 2, "{}", ctx("execute", &r));
    let r = call(
        "execute",
        json!({"code": "undefined_name", "session": "all"}),
    );
    assert_eq!(
        r["error"]["type"],
        "NameError",
        "{}",
        ctx("execute error", &r)
    );
    let m = call(
        "import",
        json!({"moduleName": "fractions", "session": "all"}),
    );
    assert_eq!(m["type"], "module", "{}", ctx("import", &m));
    let f = call(
        "create",
        json!({"moduleHandleId": m["handle"], "className": "Fraction", "args": [3, 4], "session": "all"}),
    );
    assert_eq!(f["type"], "Fraction", "{}", ctx("create", &f));
    let r = call(
        "call",
        json!({"handleId": f["handle"], "methodName": "limit_denominator", "args": [2], "session": "all"}),
    );
    assert_eq!(r["repr"], "Fraction(1, 1)", "{}", ctx("call", &r));
    let r = call(
        "getattr",
        json!({"handleId": f["handle"], "attributeName": "denominator", "session": "all"}),
    );
    assert_eq!(r["value"], 4, "{}", ctx("getattr", &r));
    let ns = call(
        "create",
        json!({"module": "types", "class": "SimpleNamespace", "session": "all"}),
    );
    let r = call(
        "setattr",
        json!({"handle": ns["handle"], "name": "x", "value": {"deep": [1]}, "session": "all"}),
    );
    assert_eq!(r["success"], true, "{}", ctx("setattr", &r));
    let r = call(
        "eval",
        json!({"expression": "len(rows) + k", "locals": {"k": 40}, "session": "all"}),
    );
    assert_eq!(r["value"], 42, "{}", ctx("eval", &r));
    let w = call("wrap", json!({"value": [1, 2, 3], "session": "all"}));
    assert!(w["handle"].is_string(), "{}", ctx("wrap", &w));
    let v = call("eval", json!({"expression": "vals", "session": "all"}));
    let r = call(
        "tofloatarray",
        json!({"handleId": v["handle"], "session": "all"}),
    );
    assert!(
        r["data"] == json!([0.5, 1.5]) || r["error"]["type"] == "ModuleNotFoundError",
        "{}",
        ctx("tofloatarray", &r)
    );
    let rows = call("eval", json!({"expression": "rows", "session": "all"}));
    let r = call(
        "tofloatarray2d",
        json!({"handleId": rows["handle"], "session": "all"}),
    );
    assert!(
        r["data"] == json!([[0.5, 1.5], [0.5, 1.5]]) || r["error"]["type"] == "ModuleNotFoundError",
        "{}",
        ctx("tofloatarray2d", &r)
    );
    let r = call(
        "dispose",
        json!({"handleId": w["handle"], "session": "all"}),
    );
    assert_eq!(r["success"], true, "{}", ctx("dispose", &r));
    let r = call("module_available", json!({"moduleName": "sqlite3"}));
    assert_eq!(r["available"], true, "{}", ctx("module_available", &r));
    let r = call(
        "files.put",
        json!({"path": "data/in.txt", "data": "aGVsbG8="}),
    );
    assert_eq!(r["size"], 5, "{}", ctx("files.put", &r));
    let r = call("files.get", json!({"path": "data/in.txt"}));
    assert_eq!(r["data"], "aGVsbG8=", "{}", ctx("files.get", &r));
    let r = call("files.list", json!({"path": "data"}));
    assert!(
        r["entries"].to_string().contains("in.txt"),
        "{}",
        ctx("files.list", &r)
    );
    let r = call("files.get", json!({"path": "../etc/passwd"}));
    assert!(
        r["status"] == 400 || r["status"] == 403,
        "{}",
        ctx("files outside", &r)
    );
    let r = call("session.list", json!({}));
    assert!(
        r["sessions"].to_string().contains("\"all\""),
        "{}",
        ctx("session.list", &r)
    );
    let r = call("session.interrupt", json!({"session": "all"}));
    assert!(
        r.get("interrupted").is_some(),
        "{}",
        ctx("session.interrupt", &r)
    );
    let r = call("session.close", json!({"session": "all"}));
    assert_eq!(r["closed"], true, "{}", ctx("session.close", &r));
    let r = call("execute", json!({"code": "vals", "session": "all"}));
    assert!(
        r["error"]["type"] == "NameError" || r["status"] == 404,
        "{}",
        ctx("closed session", &r)
    );
}

#[test]
fn every_operation_over_http_and_pipe() {
    let (_label, host) = host("bk-every", &[]);
    let h = start(&host, &["http", "--name", "every-h"]);
    let (ep, token) = (
        h["endpoint"].as_str().unwrap().to_string(),
        h["token"].as_str().unwrap().to_string(),
    );
    every_operation("http", &mut |op, payload| {
        post(&format!("{ep}/{op}"), &token, payload).1
    });

    let p = start(&host, &["pipe", "--name", "every-p"]);
    let stream = UnixStream::connect(p["endpoint"].as_str().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let token = p["token"].as_str().unwrap().to_string();
    every_operation("pipe", &mut |op, payload| {
        writeln!(
            writer,
            "{}",
            json!({"command": op, "payload": payload, "token": token})
        )
        .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    });

    // And through the control plane.
    every_operation("api", &mut |op, payload| {
        v1(
            &host,
            "POST",
            &format!("/v1/backends/every-h/{op}"),
            payload,
        )
        .1
    });
}
