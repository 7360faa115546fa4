//! The example frames in tests/protocol/, which python/tests/test_examples.py loads too: every
//! request parses into the Rust types and serializes back unchanged, every reply decodes into
//! its typed payload, and the live agent answers each request with the example's reply.

use std::collections::BTreeSet;
use std::path::PathBuf;

use beephost::protocol::{
    Body, DisposeReply, ExecReply, FilesGetReply, FilesListReply, FilesPutReply, FloatArray2dReply,
    FloatArrayReply, Frame, FrameCodec, HelloReply, InfoReply, InterruptReply,
    ModuleAvailableReply, ObjectReply, PingReply, Request, Response, SessionCloseReply,
    SessionListReply, SessionOpenReply, SetAttrReply, MAGIC,
};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use crate::agent::{spawn_raw, within};

struct Example {
    name: String,
    setup: Vec<Value>,
    request: Value,
    reply: Value,
    ignore: BTreeSet<String>,
}

fn examples() -> Vec<Example> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/protocol");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 30, "examples missing from {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Example {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                setup: v["setup"].as_array().cloned().unwrap_or_default(),
                request: v["request"].clone(),
                reply: v["reply"].clone(),
                ignore: v["ignore"]
                    .as_array()
                    .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Removes ignored keys at any depth, checking that the actual value has them too.
fn strip(expected: &Value, actual: &Value, ignore: &BTreeSet<String>, at: &str) -> (Value, Value) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut eo = serde_json::Map::new();
            let mut ao = serde_json::Map::new();
            for (k, ev) in e {
                if ignore.contains(k) {
                    assert!(
                        a.contains_key(k),
                        "{at}: ignored key `{k}` missing from {actual}"
                    );
                    continue;
                }
                let av = a.get(k).cloned().unwrap_or(Value::Null);
                let (ev, av) = strip(ev, &av, ignore, &format!("{at}.{k}"));
                eo.insert(k.clone(), ev);
                ao.insert(k.clone(), av);
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    ao.insert(k.clone(), av.clone());
                }
            }
            (Value::Object(eo), Value::Object(ao))
        }
        _ => (expected.clone(), actual.clone()),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str, v: &Value) {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{name}: reply does not decode as {}: {e}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        v,
        "{name}: typed reply serializes back unchanged"
    );
}

fn check_typed_reply(name: &str, op: &str, ok: &Value) {
    match op {
        "exec" => round_trip::<ExecReply>(name, ok),
        "eval" | "import" | "create" | "call" | "getattr" | "wrap" => {
            round_trip::<ObjectReply>(name, ok)
        }
        "setattr" => round_trip::<SetAttrReply>(name, ok),
        "dispose" => round_trip::<DisposeReply>(name, ok),
        "module_available" => round_trip::<ModuleAvailableReply>(name, ok),
        "to_float_array" => round_trip::<FloatArrayReply>(name, ok),
        "to_float_array_2d" => round_trip::<FloatArray2dReply>(name, ok),
        "ping" => round_trip::<PingReply>(name, ok),
        "hello" => round_trip::<HelloReply>(name, ok),
        "info" => round_trip::<InfoReply>(name, ok),
        "session.open" => round_trip::<SessionOpenReply>(name, ok),
        "session.close" => round_trip::<SessionCloseReply>(name, ok),
        "session.list" => round_trip::<SessionListReply>(name, ok),
        "session.interrupt" => round_trip::<InterruptReply>(name, ok),
        "files.put" => round_trip::<FilesPutReply>(name, ok),
        "files.get" => round_trip::<FilesGetReply>(name, ok),
        "files.list" => round_trip::<FilesListReply>(name, ok),
        other => panic!("{name}: no typed reply for op `{other}`"),
    }
}

#[test]
fn examples_parse_into_the_rust_types_and_back() {
    for ex in examples() {
        let response: Response = serde_json::from_value(ex.reply.clone())
            .unwrap_or_else(|e| panic!("{}: reply is not a Response: {e}", ex.name));
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            ex.reply,
            "{}",
            ex.name
        );
        match Request::from_value(ex.request.clone()) {
            Ok(req) => {
                assert_eq!(
                    req.to_value(),
                    ex.request,
                    "{}: request serializes back unchanged",
                    ex.name
                );
                assert_eq!(
                    serde_json::to_value(&req).unwrap(),
                    ex.request,
                    "{}",
                    ex.name
                );
                if let Body::Ok(ok) = &response.body {
                    check_typed_reply(&ex.name, req.op.name(), ok);
                }
            }
            Err(e) => {
                // Requests the agent refuses before they reach a worker.
                let Body::Error(want) = &response.body else {
                    panic!(
                        "{}: request does not parse ({e}) but the example expects success",
                        ex.name
                    )
                };
                assert_eq!(
                    (e.kind.as_str(), e.message.as_str()),
                    (want.kind.as_str(), want.message.as_str()),
                    "{}",
                    ex.name
                );
                assert_eq!(e.id, response.id, "{}", ex.name);
            }
        }
    }
}

#[tokio::test]
async fn the_agent_answers_each_example_with_its_reply() {
    let (mut child, mut stdin, stdout, _ws) = spawn_raw(&[]);
    let mut frames = FramedRead::new(stdout, FrameCodec::default());
    let mut next_id = 1_000_000u64;
    for ex in examples() {
        let session = ex.request.get("session").cloned();
        let mut steps: Vec<Value> = ex
            .setup
            .iter()
            .map(|s| {
                let mut s = s.clone();
                next_id += 1;
                s["id"] = next_id.into();
                if let Some(session) = &session {
                    s["session"] = session.clone();
                }
                s
            })
            .collect();
        steps.push(ex.request.clone());
        let last = steps.len() - 1;
        if let Some(session) = &session {
            // Close each example's session, so they never add up to the session cap.
            next_id += 1;
            steps.push(
                serde_json::json!({"id": next_id, "op": "session.close", "session": session}),
            );
        }
        for (i, step) in steps.into_iter().enumerate() {
            let payload = serde_json::to_vec(&step).unwrap();
            let mut bytes = MAGIC.to_vec();
            bytes.extend((payload.len() as u32).to_be_bytes());
            bytes.extend(payload);
            stdin.write_all(&bytes).await.unwrap();
            let reply: Value = match within(60, frames.next()).await {
                Some(Ok(Frame::Data(b))) => serde_json::from_slice(&b).unwrap(),
                other => panic!("{}: expected a reply frame, got {other:?}", ex.name),
            };
            if i > last {
                continue;
            }
            if i < last {
                assert!(
                    reply.get("ok").is_some(),
                    "{}: setup step {step} failed: {reply}",
                    ex.name
                );
                if let Some(err) = reply["ok"].get("error") {
                    assert!(
                        err.is_null(),
                        "{}: setup step {step} failed: {reply}",
                        ex.name
                    );
                }
                continue;
            }
            let (want, got) = strip(&ex.reply, &reply, &ex.ignore, &ex.name);
            assert_eq!(
                got, want,
                "{}: the agent's reply differs from the example",
                ex.name
            );
        }
    }
    drop(stdin);
    assert!(within(30, child.wait()).await.unwrap().success());
}
