//! The command line's shape and its errors, against real host processes.

use std::time::Duration;

use crate::support::{cli, Host, TestLabel};

#[test]
fn help_lists_every_command() {
    let out = cli(&[], &["--help"]);
    assert_eq!(out.code, 0, "{out:?}");
    for command in [
        "serve", "init", "venv", "start", "status", "stop", "logs", "exec", "agent",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "--help does not list `{command}`:\n{}",
            out.stdout
        );
    }
    let venv = cli(&[], &["venv", "--help"]);
    for sub in ["create", "list", "show", "delete", "install", "admin"] {
        assert!(
            venv.stdout.contains(sub),
            "venv --help lacks {sub}:\n{}",
            venv.stdout
        );
    }
}

#[test]
fn unbuilt_commands_say_so_and_fail() {
    // The stateless warm pool (exec without --backend) is the one path not built yet.
    for args in [vec!["exec", "1+1"], vec!["exec", "-f", "/dev/null"]] {
        let out = cli(&["--url", "http://127.0.0.1:9"], &args);
        assert_eq!(out.code, 3, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .starts_with("error: `beephost exec` without --backend"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("not built yet"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("hint: "), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
    }
}

#[test]
fn usage_errors_and_unreachable_hosts_exit_differently() {
    let usage = cli(&[], &["start", "carrier-pigeon"]);
    assert_eq!(usage.code, 2, "{usage:?}");
    let unreachable = cli(&["--url", "http://127.0.0.1:9"], &["status"]);
    assert_eq!(unreachable.code, 69, "{unreachable:?}");
    let lines: Vec<&str> = unreachable.stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: cannot reach the beephost host at http://127.0.0.1:9"),
        "{lines:?}"
    );
    assert!(
        lines.len() == 2 && lines[1].starts_with("hint: "),
        "{lines:?}"
    );
}

#[test]
fn bad_serve_settings_exit_before_binding() {
    let out = cli(&[], &["serve", "--listen", "nowhere"]);
    assert_eq!(out.code, 78, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "error: listen address `nowhere` is not HOST:PORT (like 127.0.0.1:5678)"
    );
    let out = cli(&[], &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr.contains("hint: set BEEPHOST_TOKEN"),
        "{}",
        out.stderr
    );
}

#[test]
fn without_an_engine_the_host_serves_health_and_answers_503() {
    let label = TestLabel::new("noengine");
    let host = Host::start(
        &label,
        &["--no-prepare"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let (status, body) = host.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    let (status, body) = host.get("/v1/runtimes");
    assert_eq!(status, 503, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 503);
    assert!(
        !body.contains("nonexistent"),
        "a 503 leaks internals: {body}"
    );
    let out = host.cli(&["status"]);
    assert_eq!(out.code, 69, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: the container engine is unavailable"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_token_guards_the_api_when_set() {
    let label = TestLabel::new("token");
    let host = Host::start(
        &label,
        &["--no-prepare", "--token", "s3cret"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(host.get("/healthz").0, 200);
    assert_eq!(host.get("/v1/runtimes").0, 401);
    let out = host.cli(&["status"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("hint: pass the host's token"),
        "{}",
        out.stderr
    );
    let out = crate::support::cli(&["--url", &host.url, "--token", "s3cret"], &["status"]);
    // Authorised: now the missing engine is the only problem.
    assert_eq!(out.code, 69, "{out:?}");
    let _ = Duration::from_secs(0);
}

#[test]
fn sigterm_stops_the_host_gracefully() {
    let label = TestLabel::new("sigterm");
    let mut host = Host::start(
        &label,
        &["--no-prepare"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(host.get("/healthz").0, 200);
    let code = host.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit status after SIGTERM\n{}", host.log());
    assert!(host.log().contains("shutting down"), "{}", host.log());
    assert_ne!(host.get("/healthz").0, 200, "still serving after SIGTERM");
}
