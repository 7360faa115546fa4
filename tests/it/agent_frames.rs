//! Raw bytes on the agent's stdin: malformed frames, unknown ops, wrong field types, oversized
//! frames and a host that died mid-frame. Each gets an error reply naming the problem and the
//! agent keeps serving.

use beephost::agent::{AgentClient, CallOpts};
use beephost::protocol::{Body, ErrorInfo, Frame, FrameCodec, Response, MAGIC};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, ChildStdout};
use tokio_util::codec::FramedRead;

use std::time::Duration;

use crate::agent::{eventually, spawn_raw, within};

struct Raw {
    stdin: ChildStdin,
    frames: FramedRead<ChildStdout, FrameCodec>,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend(payload);
    v
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn reply(&mut self) -> Response {
        match within(30, self.frames.next()).await {
            Some(Ok(Frame::Data(b))) => serde_json::from_slice(&b).expect("replies are valid json"),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn error(&mut self) -> (Option<u64>, ErrorInfo) {
        let r = self.reply().await;
        match r.body {
            Body::Error(e) => (r.id, e),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    async fn ping(&mut self, id: u64) {
        self.send(&frame(format!(r#"{{"id":{id},"op":"ping"}}"#).as_bytes()))
            .await;
        let r = self.reply().await;
        assert_eq!((r.id, r.body), (Some(id), Body::Ok(json!({"pong": true}))));
    }
}

#[tokio::test]
async fn malformed_input_gets_error_replies_and_the_agent_keeps_serving() {
    let (mut child, stdin, stdout, _ws) = spawn_raw(&["--max-frame", "4096"]);
    let mut raw = Raw {
        stdin,
        frames: FramedRead::new(stdout, FrameCodec::default()),
    };
    raw.ping(1).await;

    raw.send(b"this is not a frame").await;
    let (id, e) = raw.error().await;
    assert_eq!((id, e.kind.as_str()), (None, "BadFrame"));
    assert!(e.message.contains("19 bytes"), "{}", e.message);
    raw.ping(2).await;

    let cases: Vec<(Vec<u8>, Option<u64>, &str, &str)> = vec![
        (
            frame(b"{not json"),
            None,
            "BadFrame",
            "frame is not valid json",
        ),
        (
            frame(&[b'"', 0xC3, 0x28, b'"']),
            None,
            "BadFrame",
            "frame is not valid json",
        ),
        (
            frame(b"[1, 2]"),
            None,
            "BadRequest",
            "request is not a json object",
        ),
        (
            frame(br#"{"op":"ping"}"#),
            None,
            "BadRequest",
            "missing field `id`",
        ),
        (
            frame(br#"{"id":"7","op":"ping"}"#),
            None,
            "BadRequest",
            "field `id`: expected an unsigned integer",
        ),
        (
            frame(br#"{"id":3}"#),
            Some(3),
            "BadRequest",
            "missing field `op`",
        ),
        (
            frame(br#"{"id":4,"op":"teleport"}"#),
            Some(4),
            "UnknownOp",
            "unknown op `teleport`",
        ),
        (
            frame(br#"{"id":5,"op":"exec","code":42}"#),
            Some(5),
            "BadRequest",
            "field `code`: invalid type: integer `42`, expected a string",
        ),
        (
            frame(br#"{"id":6,"op":"exec"}"#),
            Some(6),
            "BadRequest",
            "missing field `code`",
        ),
        (
            frame(br#"{"id":7,"op":"call","handle":"h1","args":{}}"#),
            Some(7),
            "BadRequest",
            "field `args`: invalid type: map",
        ),
        (
            frame(br#"{"id":8,"op":"exec","code":"1","timeout":"soon"}"#),
            Some(8),
            "BadRequest",
            "field `timeout`",
        ),
        (
            frame(br#"{"id":9,"op":"exec","code":"1","session":"a/b"}"#),
            Some(9),
            "BadRequest",
            "field `session`",
        ),
        (
            frame(br#"{"id":10,"op":"files.put","path":"x","data":"%%"}"#),
            Some(10),
            "BadRequest",
            "field `data`: invalid base64",
        ),
        (
            frame(br#"{"id":11,"op":"session.close"}"#),
            Some(11),
            "BadRequest",
            "missing field `session`",
        ),
        (
            frame(&vec![b' '; 5000]),
            None,
            "FrameTooLarge",
            "frame of 5000 bytes exceeds the limit of 4096 bytes",
        ),
    ];
    for (i, (bytes, want_id, kind, message)) in cases.into_iter().enumerate() {
        raw.send(&bytes).await;
        let (id, e) = raw.error().await;
        assert_eq!(
            (id, e.kind.as_str()),
            (want_id, kind),
            "case {i}: {}",
            e.message
        );
        assert!(
            e.message.starts_with(message),
            "case {i}: {:?} does not start with {message:?}",
            e.message
        );
        raw.ping(100 + i as u64).await;
    }
    drop(raw);
    let status = within(30, child.wait()).await.unwrap();
    assert!(
        status.success(),
        "the agent exits cleanly at end of input: {status}"
    );
}

#[tokio::test]
async fn a_host_that_died_mid_frame_is_resynchronised_by_the_handshake() {
    for cut in [1usize, 5, 8, 20] {
        let (mut child, mut stdin, stdout, _ws) = spawn_raw(&[]);
        // The previous host wrote part of a frame and vanished.
        let half = frame(br#"{"id":1,"op":"exec","session":"s","code":"x = 1"}"#);
        stdin.write_all(&half[..cut]).await.unwrap();
        stdin.flush().await.unwrap();
        let client = within(30, AgentClient::connect(stdout, stdin))
            .await
            .expect("handshake after a cut frame");
        assert!(client.ping().await.unwrap().pong, "cut {cut}");
        let r = client.exec(&CallOpts::session("s"), "1 + 1").await.unwrap();
        assert_eq!(
            r.result.and_then(|o| o.value().cloned()),
            Some(json!(2)),
            "cut {cut}"
        );
        drop(client);
        assert!(within(30, child.wait()).await.unwrap().success());
    }
}

#[tokio::test]
async fn many_requests_in_flight_on_one_stream() {
    let a = crate::agent::Agent::start(&[]).await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let c = a.client.clone();
        let session = format!("s{}", i % 4);
        calls.push(tokio::spawn(async move {
            let r = c
                .exec(&CallOpts::session(session), &format!("{i} * 2"))
                .await
                .unwrap();
            (i, r.result.and_then(|o| o.value().cloned()))
        }));
    }
    for call in calls {
        let (i, v) = within(60, call).await.unwrap();
        assert_eq!(v, Some(json!(i * 2)), "reply {i} matched its request");
    }
    a.stop().await;
}

#[tokio::test]
async fn a_caller_cancelled_mid_write_never_cuts_its_frame() {
    let (mut child, stdin, stdout, _ws) = spawn_raw(&[]);
    let client = within(30, AgentClient::connect(stdout, stdin))
        .await
        .unwrap();
    let s = CallOpts::session("s");
    // A frame far larger than a pipe holds, so its write cannot finish in one go; the caller
    // gives up almost at once.
    let code = format!("written = True\n#{}", "x".repeat(4 << 20));
    let cancelled = tokio::time::timeout(Duration::from_millis(1), client.exec(&s, &code)).await;
    assert!(
        cancelled.is_err(),
        "the big call was still writing when cancelled"
    );
    // The frame went out whole all the same: the cell ran, and the stream is still in step.
    let seen = eventually(30, "the cancelled cell to have run", || async {
        let r = client.exec(&s, "globals().get('written')").await.unwrap();
        r.result
            .and_then(|o| o.value().cloned())
            .filter(|v| v == &json!(true))
    })
    .await;
    assert_eq!(seen, json!(true));
    assert!(client.ping().await.unwrap().pong);
    drop(client);
    assert!(within(30, child.wait()).await.unwrap().success());
}
