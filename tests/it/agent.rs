//! `beephost agent` driven through its stdin/stdout by [`AgentClient`], with the machine's
//! python3: every operation, and (in agent_failures.rs, agent_frames.rs, agent_files.rs,
//! agent_examples.rs) every failure. No Docker needed. Each test starts its own agent with its
//! own workspace, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use beephost::agent::{AgentClient, CallOpts, ClientError};
use beephost::protocol::{Call, Create, ExecReply, Object};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A running agent process and a client connected to it.
pub struct Agent {
    pub client: AgentClient,
    pub child: Child,
    pub workspace: TempDir,
}

/// The Python the tests use: $BEEPHOST_TEST_PYTHON, or python3 on PATH.
pub fn python() -> PathBuf {
    std::env::var_os("BEEPHOST_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Starts `beephost agent` with a fresh workspace and `extra` options, without connecting.
pub fn spawn_raw(extra: &[&str]) -> (Child, ChildStdin, ChildStdout, TempDir) {
    let workspace = tempfile::tempdir().expect("temp workspace");
    // BEEPHOST_TEST_AGENT_BIN runs the tests against another build (a static one, say).
    let bin = std::env::var_os("BEEPHOST_TEST_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_beephost")));
    let mut cmd = Command::new(bin);
    cmd.arg("agent");
    if !extra.contains(&"--python") {
        cmd.arg("--python").arg(python());
    }
    cmd.arg("--workspace")
        .arg(workspace.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start beephost agent");
    let stdin = child.stdin.take().expect("agent stdin");
    let stdout = child.stdout.take().expect("agent stdout");
    (child, stdin, stdout, workspace)
}

impl Agent {
    pub async fn start(extra: &[&str]) -> Agent {
        let (child, stdin, stdout, workspace) = spawn_raw(extra);
        let client =
            tokio::time::timeout(Duration::from_secs(30), AgentClient::connect(stdout, stdin))
                .await
                .expect("handshake within 30s")
                .expect("handshake");
        Agent {
            client,
            child,
            workspace,
        }
    }

    pub fn path(&self) -> &Path {
        self.workspace.path()
    }

    /// Exec in a session; panics on transport errors, not on Python errors.
    pub async fn exec(&self, session: &str, code: &str) -> ExecReply {
        within(60, self.client.exec(&CallOpts::session(session), code))
            .await
            .unwrap_or_else(|e| panic!("exec {code:?}: {e}"))
    }

    /// Exec that must succeed; returns the trailing expression's JSON value (null if none).
    pub async fn value(&self, session: &str, code: &str) -> Value {
        let r = self.exec(session, code).await;
        assert!(r.error.is_none(), "exec {code:?} failed: {:?}", r.error);
        match r.result {
            Some(Object::Value { value, .. }) => value,
            Some(other) => panic!("exec {code:?} returned a handle: {other:?}"),
            None => Value::Null,
        }
    }

    /// Stops the agent by closing its stdin and checks it exits cleanly.
    pub async fn stop(mut self) {
        drop(self.client);
        let status = within(30, self.child.wait())
            .await
            .expect("agent exit status");
        assert!(status.success(), "agent exited with {status}");
    }
}

/// Awaits `f`, failing the test after `secs` seconds instead of hanging.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("no result within {secs}s"))
}

/// Polls `check` until it returns Some, failing after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_trailing_expression_is_the_result_and_state_persists() {
    let a = Agent::start(&[]).await;
    let r = a.exec("s1", "x = 20").await;
    assert_eq!((r.result.clone(), r.error.clone()), (None, None));
    assert_eq!(r.session.as_deref(), Some("s1"));
    let r = a.exec("s1", "y = 2\nx + y * 11").await;
    assert_eq!(
        r.result,
        Some(Object::Value {
            value: json!(42),
            repr: Some("42".into())
        })
    );
    assert!(r.duration_ms > 0.0);
    assert_eq!(a.value("s1", "'%s-%s' % (x, y)").await, json!("20-2"));
    // None is no result, as in a notebook; `_` holds the last value.
    assert_eq!(a.exec("s1", "None").await.result, None);
    assert_eq!(a.value("s1", "_").await, json!("20-2"));
    // Tuples become lists; dicts keep str keys.
    assert_eq!(
        a.value("s1", "(1, 'a', [True, None], {'k': 1.5})").await,
        json!([1, "a", [true, null], {"k": 1.5}])
    );
    a.stop().await;
}

#[tokio::test]
async fn values_json_cannot_carry_come_back_as_handles() {
    let a = Agent::start(&[]).await;
    for (code, type_name) in [
        ("object()", "object"),
        ("{1: 'int key'}", "dict"),
        ("2 ** 70", "int"),
        ("float('nan')", "float"),
        ("b'bytes'", "bytes"),
        (
            "import collections; collections.OrderedDict(a=1)",
            "OrderedDict",
        ),
    ] {
        let r = a.exec("s", code).await;
        match r.result {
            Some(Object::Handle {
                handle,
                type_name: t,
                repr,
            }) => {
                assert!(handle.starts_with('h'), "{code}: {handle}");
                assert_eq!(t, type_name, "{code}");
                assert!(!repr.is_empty());
            }
            other => panic!("{code}: expected a handle, got {other:?}"),
        }
    }
    a.stop().await;
}

#[tokio::test]
async fn python_exceptions_come_back_with_type_message_and_traceback() {
    let a = Agent::start(&[]).await;
    a.exec("s", "keep = 'me'").await;
    let r = a.exec("s", "def f():\n    return 1 / 0\nf()").await;
    let e = r.error.clone().expect("an error");
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        ("ZeroDivisionError", "division by zero")
    );
    let tb = e.traceback.expect("a traceback");
    assert!(
        tb.contains("return 1 / 0"),
        "traceback shows the source line: {tb}"
    );
    assert!(
        !tb.contains("beephost_worker"),
        "worker frames are hidden: {tb}"
    );
    assert!(!r.session_lost);
    assert!(matches!(r.failure(), Some(ClientError::Python { .. })));
    let e = a
        .exec("s", "def broken(:")
        .await
        .error
        .expect("syntax error");
    assert_eq!(e.kind, "SyntaxError");
    let e = a
        .exec("s", "raise SystemExit(3)")
        .await
        .error
        .expect("SystemExit is reported");
    assert_eq!(e.kind, "SystemExit");
    assert_eq!(
        a.value("s", "keep").await,
        json!("me"),
        "the session survives exceptions"
    );
    a.stop().await;
}

#[tokio::test]
async fn output_is_captured_at_the_file_descriptor_level() {
    let a = Agent::start(&[]).await;
    let code = r#"
import os, subprocess, sys
print("from print")
sys.stdout.flush()
os.write(1, b"from os.write\n")
subprocess.run(["sh", "-c", "echo from a subprocess; echo to stderr >&2"], check=True)
print("err print", file=sys.stderr)
os.write(2, b"err write\n")
7
"#;
    let r = a.exec("s", code).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.stdout, "from print\nfrom os.write\nfrom a subprocess\n");
    assert!(
        r.stderr.contains("to stderr\n")
            && r.stderr.contains("err print\n")
            && r.stderr.contains("err write\n"),
        "{}",
        r.stderr
    );
    assert!(!r.truncated);
    // Output belongs to the call that made it.
    let r = a.exec("s", "print('second')").await;
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("second\n", ""));
    // Output of other operations comes along with their reply.
    let h = a
        .client
        .eval(&CallOpts::session("s"), "print('in eval') or 5", None)
        .await
        .unwrap();
    assert_eq!(
        (h.object.value(), h.stdout.as_str()),
        (Some(&json!(5)), "in eval\n")
    );
    a.stop().await;
}

#[tokio::test]
async fn output_is_capped_per_call_and_not_utf8_is_replaced() {
    let a = Agent::start(&["--output-cap", "1000"]).await;
    let r = a
        .exec(
            "s",
            "import os, sys\nprint('x' * 5000)\nos.write(2, b'e' * 3000)\n1",
        )
        .await;
    assert_eq!(
        (r.stdout.len(), r.stderr.len(), r.truncated),
        (1000, 1000, true)
    );
    assert_eq!(r.result.and_then(|o| o.value().cloned()), Some(json!(1)));
    let r = a.exec("s", "print('ok')").await;
    assert_eq!(
        (r.stdout.as_str(), r.truncated),
        ("ok\n", false),
        "the cap is per call"
    );
    let r = a
        .exec("s", "import os\nos.write(1, b'bad \\xff\\xfe bytes\\n')")
        .await;
    assert!(r.error.is_none());
    assert_eq!(r.stdout, "bad \u{fffd}\u{fffd} bytes\n");
    // A str with a lone surrogate (from an undecodable file name) still makes a valid reply.
    let r = a.exec("s", "'\\udcff'").await;
    assert_eq!(r.result.and_then(|o| o.value().cloned()), Some(json!("?")));
    a.stop().await;
}

#[tokio::test]
async fn objects_through_import_create_call_getattr_setattr_dispose_wrap() {
    let a = Agent::start(&[]).await;
    let s = CallOpts::session("objs");
    let c = &a.client;
    let m = c.import(&s, "collections").await.unwrap();
    let Object::Handle {
        handle: module,
        type_name,
        ..
    } = m.object
    else {
        panic!("module handle")
    };
    assert_eq!(type_name, "module");
    let create = Create {
        module: Some("collections".into()),
        module_handle: None,
        class: "Counter".into(),
        args: vec![json!("abca")],
        kwargs: Default::default(),
    };
    let counter = c.create(&s, create).await.unwrap();
    let Object::Handle {
        handle: counter,
        type_name,
        repr,
    } = counter.object
    else {
        panic!("counter handle")
    };
    assert_eq!(
        (type_name.as_str(), repr.as_str()),
        ("Counter", "Counter({'a': 2, 'b': 1, 'c': 1})")
    );
    let call = |method: &str, args: Vec<Value>| Call {
        handle: counter.clone(),
        method: Some(method.into()),
        args,
        kwargs: Default::default(),
    };
    let top = c
        .call(&s, call("most_common", vec![json!(1)]))
        .await
        .unwrap();
    assert_eq!(top.object.value(), Some(&json!([["a", 2]])));
    // Create from a module handle, with kwargs; pass a handle as an argument.
    let create = Create {
        module: None,
        module_handle: Some(module.clone()),
        class: "OrderedDict".into(),
        args: vec![],
        kwargs: [("z".to_owned(), json!(1))].into_iter().collect(),
    };
    let od = c.create(&s, create).await.unwrap();
    let od = od.object.handle().unwrap().to_owned();
    c.call(&s, call("update", vec![json!({"$handle": od})]))
        .await
        .unwrap();
    assert_eq!(
        c.call(&s, call("__getitem__", vec![json!("z")]))
            .await
            .unwrap()
            .object
            .value(),
        Some(&json!(1))
    );
    // getattr / setattr on a plain object.
    let ns = c
        .create(
            &s,
            Create {
                module: Some("types".into()),
                module_handle: None,
                class: "SimpleNamespace".into(),
                args: vec![],
                kwargs: [("a".to_owned(), json!([1, 2]))].into_iter().collect(),
            },
        )
        .await
        .unwrap();
    let ns = ns.object.handle().unwrap().to_owned();
    assert_eq!(
        c.getattr(&s, &ns, "a").await.unwrap().object.value(),
        Some(&json!([1, 2]))
    );
    assert!(c.setattr(&s, &ns, "b", json!({"k": "v"})).await.unwrap().ok);
    assert_eq!(
        c.getattr(&s, &ns, "b").await.unwrap().object.value(),
        Some(&json!({"k": "v"}))
    );
    let missing = c.getattr(&s, &ns, "nope").await.unwrap_err();
    assert!(
        matches!(&missing, ClientError::Python { kind, .. } if kind == "AttributeError"),
        "{missing}"
    );
    // Calling the object itself (no method), and eval with locals.
    let len = c.eval(&s, "len", None).await.unwrap();
    let len = len.object.handle().unwrap().to_owned();
    let n = c
        .call(
            &s,
            Call {
                handle: len,
                method: None,
                args: vec![json!([1, 2, 3])],
                kwargs: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(n.object.value(), Some(&json!(3)));
    let locals = json!({"a": 2, "c": {"$handle": counter}})
        .as_object()
        .cloned();
    let v = c.eval(&s, "a * c['a']", locals).await.unwrap();
    assert_eq!(v.object.value(), Some(&json!(4)));
    // wrap keeps a JSON value as a Python object; dispose drops handles.
    let w = c.wrap(&s, json!([3, 1, 2])).await.unwrap();
    let Object::Handle {
        handle: w,
        type_name,
        ..
    } = w.object
    else {
        panic!("wrap gives a handle")
    };
    assert_eq!(type_name, "list");
    c.call(
        &s,
        Call {
            handle: w.clone(),
            method: Some("sort".into()),
            args: vec![],
            kwargs: Default::default(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.call(
            &s,
            Call {
                handle: w.clone(),
                method: Some("copy".into()),
                args: vec![],
                kwargs: Default::default()
            }
        )
        .await
        .unwrap()
        .object
        .value(),
        Some(&json!([1, 2, 3]))
    );
    assert!(c.dispose(&s, &w).await.unwrap().disposed);
    assert!(!c.dispose(&s, &w).await.unwrap().disposed);
    let gone = c.getattr(&s, &w, "sort").await.unwrap_err();
    assert!(matches!(gone, ClientError::NoSuchHandle { .. }), "{gone}");
    // module_available.
    assert!(c.module_available(&s, "json").await.unwrap());
    assert!(!c
        .module_available(&s, "surely_not_a_module_xyz")
        .await
        .unwrap());
    assert!(!c.module_available(&s, "").await.unwrap());
    a.stop().await;
}

#[tokio::test]
async fn float_arrays() {
    let a = Agent::start(&[]).await;
    let s = CallOpts::session("f");
    let r = a
        .exec(
            "f",
            "import array\narray.array('d', [1.5, 2.0, float('inf')])",
        )
        .await;
    let h = r.result.unwrap().handle().unwrap().to_owned();
    let v = a.client.to_float_array(&s, &h).await.unwrap();
    assert_eq!(&v[..2], &[1.5, 2.0]);
    assert!(v[2].is_nan(), "non-finite numbers come back as NaN");
    let r = a.exec("f", "m = ((1, 2), (3, 4.5))\nm").await;
    let h = a
        .client
        .wrap(&s, r.result.unwrap().value().unwrap().clone())
        .await
        .unwrap();
    let v = a
        .client
        .to_float_array_2d(&s, h.object.handle().unwrap())
        .await
        .unwrap();
    assert_eq!(v, vec![vec![1.0, 2.0], vec![3.0, 4.5]]);
    let e = a
        .client
        .to_float_array_2d(&s, &h.object.handle().unwrap().replace('h', "h9"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NoSuchHandle { .. }));
    a.stop().await;
}

#[tokio::test]
async fn sessions_run_in_parallel_and_calls_in_one_session_queue() {
    let a = Agent::start(&[]).await;
    // A waits for a file that only B creates: this finishes only if they run at once.
    let wait = "import os, time\nd = time.time() + 20\nwhile not os.path.exists('flag') and time.time() < d: time.sleep(0.01)\nos.path.exists('flag')";
    let (ra, rb) = tokio::join!(a.exec("A", wait), async {
        a.exec("B", "open('flag', 'w').close()").await
    });
    assert!(rb.error.is_none());
    assert_eq!(
        ra.result.and_then(|o| o.value().cloned()),
        Some(json!(true))
    );
    // Three calls sent at once to one session run one after another, in order.
    a.exec("Q", "order = []").await;
    let slow = "import time\ntime.sleep(0.2)\norder.append('first')";
    let (_, _, r3) = tokio::join!(
        a.exec("Q", slow),
        a.exec("Q", "order.append('second')"),
        a.exec("Q", "order.append('third'); order")
    );
    assert_eq!(
        r3.result.and_then(|o| o.value().cloned()),
        Some(json!(["first", "second", "third"]))
    );
    a.stop().await;
}

#[tokio::test]
async fn a_call_without_a_session_runs_on_a_fresh_worker() {
    let a = Agent::start(&[]).await;
    let none = CallOpts::default();
    let r1 = a
        .client
        .exec(&none, "import os\nleft_behind = 1\nos.getpid()")
        .await
        .unwrap();
    let r2 = a
        .client
        .exec(&none, "import os\nos.getpid()")
        .await
        .unwrap();
    assert_ne!(r1.result, r2.result, "each call has its own worker");
    assert_eq!(r1.session, None);
    let r3 = a.client.exec(&none, "left_behind").await.unwrap();
    assert_eq!(r3.error.map(|e| e.kind), Some("NameError".to_owned()));
    assert!(
        a.client.session_list().await.unwrap().sessions.is_empty(),
        "one-call workers are not sessions"
    );
    a.stop().await;
}

#[tokio::test]
async fn sessions_open_list_interrupt_close() {
    let a = Agent::start(&[]).await;
    let c = &a.client;
    let opened = c.session_open(None).await.unwrap();
    assert!(opened.session.starts_with("s-") && opened.pid > 0);
    let named = c.session_open(Some("mine")).await.unwrap();
    assert_eq!(named.session, "mine");
    assert_eq!(
        c.session_open(Some("mine")).await.unwrap().pid,
        named.pid,
        "opening twice returns the same"
    );
    let pid = a.value("mine", "import os\nkeep = 1\nos.getpid()").await;
    assert_eq!(pid, json!(named.pid));
    let list = c.session_list().await.unwrap();
    let names: Vec<_> = list.sessions.iter().map(|s| s.session.as_str()).collect();
    let mut want = vec!["mine", opened.session.as_str()];
    want.sort();
    assert_eq!(names, want);
    assert!(list.sessions.iter().all(|s| !s.busy && s.created > 0.0));

    // Interrupt: idle → false; running → KeyboardInterrupt, state kept.
    assert!(!c.session_interrupt("mine").await.unwrap());
    let running = tokio::spawn({
        let c = c.clone();
        async move { c.exec(&CallOpts::session("mine"), "while True: pass").await }
    });
    eventually(20, "the session to be busy", || async {
        let l = c.session_list().await.unwrap();
        l.sessions
            .iter()
            .any(|s| s.session == "mine" && s.busy)
            .then_some(())
    })
    .await;
    assert!(c.session_interrupt("mine").await.unwrap());
    let r = within(20, running).await.unwrap().unwrap();
    assert_eq!(
        r.error.as_ref().map(|e| e.kind.as_str()),
        Some("KeyboardInterrupt")
    );
    assert!(!r.session_lost);
    assert_eq!(a.value("mine", "keep").await, json!(1));
    let e = c.session_interrupt("nobody").await.unwrap_err();
    assert!(matches!(e, ClientError::NoSuchSession { .. }), "{e}");

    // Close: the worker goes away; the name can be used again for a fresh session.
    assert!(c.session_close("mine").await.unwrap());
    assert!(!c.session_close("mine").await.unwrap());
    let r = a.exec("mine", "keep").await;
    assert_eq!(r.error.map(|e| e.kind), Some("NameError".into()));
    eventually(20, "the closed worker to exit", || async {
        (unsafe { libc::kill(named.pid as i32, 0) } != 0).then_some(())
    })
    .await;
    a.stop().await;
}

#[tokio::test]
async fn ping_and_info() {
    let a = Agent::start(&[]).await;
    assert!(a.client.ping().await.unwrap().pong);
    a.exec("s", "1").await;
    let info = a.client.info().await.unwrap();
    assert_eq!(info.agent_version, beephost::VERSION);
    assert_eq!(info.sessions, 1);
    let v = info
        .python_version
        .expect("python version known once a worker ran");
    assert!(v.starts_with("3."), "{v}");
    assert_eq!(info.workspace, a.path().display().to_string());
    a.stop().await;
}
