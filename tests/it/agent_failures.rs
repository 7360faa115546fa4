//! The agent under failure: timeouts, dead workers, limits, idle expiry, a vanished stream.

use std::time::{Duration, Instant};

use beephost::agent::{AgentClient, CallOpts, ClientError};
use serde_json::json;

use crate::agent::{eventually, spawn_raw, within, Agent};

#[tokio::test]
async fn a_timeout_interrupts_and_keeps_the_session() {
    let a = Agent::start(&[]).await;
    a.exec("s", "keep = 'state'").await;
    let opts = CallOpts::session("s").timeout(Duration::from_millis(300));
    let started = Instant::now();
    let r = within(
        30,
        a.client.exec(
            &opts,
            "import time\nprint('before', flush=True)\ntime.sleep(30)",
        ),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "timed out promptly"
    );
    let e = r.error.clone().expect("timeout error");
    assert_eq!(e.kind, "Timeout");
    assert!(e.message.contains("0.3s"), "{}", e.message);
    assert!(!r.session_lost);
    assert_eq!(r.stdout, "before\n", "output until the timeout is kept");
    assert!(matches!(
        r.failure(),
        Some(ClientError::Timeout {
            session_lost: false,
            ..
        })
    ));
    assert_eq!(a.value("s", "keep").await, json!("state"));
    // A timeout on another op is an error reply.
    let e = a
        .client
        .eval(&opts, "__import__('time').sleep(30)", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                session_lost: false,
                ..
            }
        ),
        "{e}"
    );
    a.stop().await;
}

#[tokio::test]
async fn a_call_that_ignores_the_interrupt_is_killed_after_the_grace_period() {
    let a = Agent::start(&["--grace", "0.3"]).await;
    let pid = a.value("s", "import os\nkeep = 1\nos.getpid()").await;
    let code = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass";
    let opts = CallOpts::session("s").timeout(Duration::from_millis(200));
    let r = within(30, a.client.exec(&opts, code)).await.unwrap();
    let e = r.error.clone().expect("timeout error");
    assert_eq!((e.kind.as_str(), e.session_lost), ("Timeout", Some(true)));
    assert!(r.session_lost);
    assert!(matches!(
        r.failure(),
        Some(ClientError::Timeout {
            session_lost: true,
            ..
        })
    ));
    assert_eq!(
        unsafe { libc::kill(pid.as_i64().unwrap() as i32, 0) },
        -1,
        "the worker is gone"
    );
    // The session name now starts afresh.
    let r = a.exec("s", "keep").await;
    assert_eq!(r.error.map(|e| e.kind), Some("NameError".into()));
    a.stop().await;
}

#[tokio::test]
async fn dead_workers_are_reported_and_other_sessions_carry_on() {
    let a = Agent::start(&[]).await;
    a.exec("bystander", "keep = [1, 2]").await;
    let cases = [
        (
            "exit",
            "import os\nprint('last words', flush=True)\nos._exit(3)",
            Some(3),
            None,
        ),
        (
            "segv",
            "import ctypes\nctypes.string_at(0)",
            None,
            Some(libc::SIGSEGV),
        ),
        (
            "oom",
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            None,
            Some(libc::SIGKILL),
        ),
    ];
    for (session, code, exit_code, signal) in cases {
        a.exec(session, "x = 1").await;
        let r = a.exec(session, code).await;
        let e = r
            .error
            .clone()
            .unwrap_or_else(|| panic!("{session}: no error"));
        assert_eq!(e.kind, "WorkerDied", "{session}");
        assert_eq!(
            (e.exit_code, e.signal),
            (exit_code, signal),
            "{session}: {}",
            e.message
        );
        assert!(r.session_lost, "{session}");
        match r.failure() {
            Some(ClientError::WorkerDied {
                exit_code: c,
                signal: s,
                ..
            }) => assert_eq!((c, s), (exit_code, signal)),
            other => panic!("{session}: {other:?}"),
        }
        if session == "exit" {
            assert_eq!(r.stdout, "last words\n");
        }
        // The same name gives a fresh session.
        assert_eq!(
            a.exec(session, "x").await.error.map(|e| e.kind),
            Some("NameError".into())
        );
    }
    // Non-exec ops report a dead worker as an error reply.
    let e = a
        .client
        .eval(&CallOpts::session("e"), "__import__('os')._exit(9)", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::WorkerDied {
                exit_code: Some(9),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.session_lost());
    assert_eq!(a.value("bystander", "keep").await, json!([1, 2]));
    a.stop().await;
}

#[tokio::test]
async fn memory_errors_come_back_as_exceptions() {
    let a = Agent::start(&[]).await;
    // Limit this one-call worker's address space, then ask for far more.
    let code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\nb = bytearray(4 << 30)";
    let r = within(60, a.client.exec(&CallOpts::default(), code))
        .await
        .unwrap();
    let e = r.error.expect("an error");
    assert_eq!(e.kind, "MemoryError", "{e:?}");
    assert!(!r.session_lost);
    a.stop().await;
}

#[tokio::test]
async fn a_worker_that_closes_its_own_pipes_is_reported_not_waited_for() {
    let a = Agent::start(&[]).await;
    a.exec("bystander", "keep = 1").await;
    // Closing every fd (protocol pipes and private output fds included) ends the worker's
    // ability to answer; the agent must notice and not hang.
    let r = within(
        30,
        a.client
            .exec(&CallOpts::session("s"), "import os\nos.closerange(0, 1024)"),
    )
    .await
    .unwrap();
    let e = r.error.expect("an error");
    assert_eq!(e.kind, "WorkerDied", "{e:?}");
    assert!(r.session_lost);
    assert_eq!(a.value("bystander", "keep").await, json!(1));
    a.stop().await;
}

#[tokio::test]
async fn the_session_cap_is_enforced() {
    let a = Agent::start(&["--max-sessions", "2"]).await;
    a.client.session_open(Some("one")).await.unwrap();
    a.client.session_open(Some("two")).await.unwrap();
    let e = a.client.session_open(Some("three")).await.unwrap_err();
    assert!(
        matches!(e, ClientError::TooManySessions { limit: Some(2), .. }),
        "{e}"
    );
    let e = a.client.exec(&CallOpts::default(), "1").await.unwrap_err();
    assert!(
        matches!(e, ClientError::TooManySessions { .. }),
        "one-call workers count too: {e}"
    );
    // Existing sessions still work, and closing one makes room.
    assert_eq!(a.value("two", "1 + 1").await, json!(2));
    assert!(a.client.session_close("one").await.unwrap());
    assert_eq!(a.value("three", "3").await, json!(3));
    a.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire() {
    let a = Agent::start(&["--idle-ttl", "0.3"]).await;
    let pid = a.value("s", "import os\nkeep = 1\nos.getpid()").await;
    eventually(20, "the idle session to expire", || async {
        let l = a.client.session_list().await.unwrap();
        l.sessions.is_empty().then_some(())
    })
    .await;
    eventually(20, "the expired worker to exit", || async {
        (unsafe { libc::kill(pid.as_i64().unwrap() as i32, 0) } != 0).then_some(())
    })
    .await;
    assert_eq!(
        a.exec("s", "keep").await.error.map(|e| e.kind),
        Some("NameError".into())
    );
    a.stop().await;
}

#[tokio::test]
async fn each_call_moves_the_idle_deadline() {
    let a = Agent::start(&["--idle-ttl", "1.0"]).await;
    a.exec("s", "n = 0").await;
    // Calls every 0.3 s for twice the ttl: the session must live through all of them.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(2) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = a.exec("s", "n += 1").await;
        assert!(r.error.is_none(), "the session expired while in use: {r:?}");
    }
    assert!(a.value("s", "n").await.as_i64().unwrap() >= 5);
    eventually(20, "the idle session to expire", || async {
        let l = a.client.session_list().await.unwrap();
        l.sessions.is_empty().then_some(())
    })
    .await;
    a.stop().await;
}

#[tokio::test]
async fn a_bad_python_fails_the_call_not_the_agent() {
    let a = Agent::start(&["--python", "/nonexistent/python3"]).await;
    let e = a
        .client
        .exec(&CallOpts::session("s"), "1")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::WorkerStartFailed { message } if message.contains("/nonexistent/python3")),
        "{e}"
    );
    assert!(a.client.ping().await.unwrap().pong);
    a.stop().await;
}

#[tokio::test]
async fn a_full_session_queue_refuses_more_calls() {
    let a = Agent::start(&["--max-queue", "1"]).await;
    let c = a.client.clone();
    let first = tokio::spawn(async move {
        c.exec(
            &CallOpts::session("q"),
            "import time\nwhile not __import__('os').path.exists('go'): time.sleep(0.01)",
        )
        .await
    });
    eventually(20, "the session to be busy", || async {
        let l = a.client.session_list().await.unwrap();
        l.sessions.iter().any(|s| s.busy).then_some(())
    })
    .await;
    let c = a.client.clone();
    let second = tokio::spawn(async move { c.exec(&CallOpts::session("q"), "2").await });
    eventually(20, "the second call to be queued", || async {
        let l = a.client.session_list().await.unwrap();
        l.sessions.iter().any(|s| s.queued == 1).then_some(())
    })
    .await;
    let e = a
        .client
        .exec(&CallOpts::session("q"), "3")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::SessionBusy { .. }), "{e}");
    std::fs::write(a.path().join("go"), "").unwrap();
    assert!(within(20, first).await.unwrap().unwrap().error.is_none());
    assert!(within(20, second).await.unwrap().unwrap().error.is_none());
    a.stop().await;
}

#[tokio::test]
async fn calls_in_flight_fail_with_backend_gone_when_the_agent_dies() {
    let (mut child, stdin, stdout, _ws) = spawn_raw(&[]);
    let client = AgentClient::connect(stdout, stdin).await.unwrap();
    let c = client.clone();
    let slow = tokio::spawn(async move {
        c.exec(&CallOpts::session("s"), "import time\ntime.sleep(60)")
            .await
    });
    eventually(20, "the call to be running", || async {
        let l = client.session_list().await.unwrap();
        l.sessions.iter().any(|s| s.busy).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    let e = within(20, slow).await.unwrap().unwrap_err();
    assert!(matches!(e, ClientError::BackendGone { .. }), "{e}");
    let e = within(20, client.ping()).await.unwrap_err();
    assert!(
        matches!(e, ClientError::BackendGone { .. }),
        "later calls fail at once: {e}"
    );
    assert!(client.is_closed());
    let _ = child.wait().await;
}

#[tokio::test]
async fn closing_stdin_stops_the_agent_and_its_workers() {
    let a = Agent::start(&[]).await;
    let pid = a
        .value(
            "s",
            "import os, subprocess\np = subprocess.Popen(['sleep', '60'])\n[os.getpid(), p.pid]",
        )
        .await;
    let pids: Vec<i32> = pid
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    a.stop().await;
    for pid in pids {
        // Killed with the process group; gone once reaped (the sleep is reparented to init).
        eventually(20, "workers and their children to be gone", || async {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (state.is_empty() || state.contains(") Z ")).then_some(())
        })
        .await;
    }
}
