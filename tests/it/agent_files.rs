//! `files.put` / `files.get` / `files.list` through the agent: confined to the workspace, even
//! against symlinks and FIFOs that user code plants, and capped in size.

use beephost::agent::ClientError;
use serde_json::json;

use crate::agent::Agent;

#[tokio::test]
async fn files_round_trip_and_are_shared_with_user_code() {
    let a = Agent::start(&[]).await;
    let c = &a.client;
    let data: Vec<u8> = (0..=255).collect();
    let put = c.files_put("data/in.bin", data.clone()).await.unwrap();
    assert_eq!((put.path.as_str(), put.size), ("data/in.bin", 256));
    assert_eq!(c.files_get("data/in.bin").await.unwrap(), data);
    assert_eq!(
        a.value("s", "len(open('data/in.bin', 'rb').read())").await,
        json!(256)
    );
    a.exec("s", "open('data/out.txt', 'w').write('from python')")
        .await;
    assert_eq!(
        c.files_get("./data//out.txt").await.unwrap(),
        b"from python"
    );
    let list = c.files_list("data").await.unwrap();
    let names: Vec<_> = list
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str(), e.size))
        .collect();
    assert_eq!(
        names,
        vec![("in.bin", "file", 256), ("out.txt", "file", 11)]
    );
    let root = c.files_list(".").await.unwrap();
    assert_eq!(
        root.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        vec!["data"]
    );
    // Overwriting truncates.
    c.files_put("data/in.bin", b"short".to_vec()).await.unwrap();
    assert_eq!(c.files_get("data/in.bin").await.unwrap(), b"short");
    a.stop().await;
}

#[tokio::test]
async fn paths_out_of_the_workspace_are_refused_even_through_planted_links() {
    let a = Agent::start(&[]).await;
    let c = &a.client;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "outside").unwrap();
    let plant = format!(
        "import os\nos.symlink({dir:?}, 'dirlink')\nos.symlink({file:?}, 'filelink')\nos.mkfifo('fifo')\nos.mkdir('real')\nos.symlink('..', 'real/up')",
        dir = outside.path().display().to_string(),
        file = outside.path().join("secret").display().to_string(),
    );
    let r = a.exec("s", &plant).await;
    assert!(r.error.is_none(), "{:?}", r.error);

    let refused = |r: Result<Vec<u8>, ClientError>, what: &str| match r {
        Err(ClientError::PathRefused { message }) => message,
        other => panic!("{what}: expected PathRefused, got {other:?}"),
    };
    for path in [
        "dirlink/secret",
        "filelink",
        "fifo",
        "real/up/filelink",
        "../secret",
        "/etc/hostname",
        "real",
    ] {
        let m = refused(c.files_get(path).await, path);
        assert!(
            m.contains(&format!("`{path}`")),
            "the message names the path: {m}"
        );
    }
    for path in [
        "dirlink/new",
        "filelink",
        "fifo",
        "real/up/x",
        "../x",
        "/tmp/x",
    ] {
        match c.files_put(path, b"x".to_vec()).await {
            Err(ClientError::PathRefused { .. }) => {}
            other => panic!("put {path}: expected PathRefused, got {other:?}"),
        }
    }
    assert!(matches!(
        c.files_list("dirlink").await,
        Err(ClientError::PathRefused { .. })
    ));
    // Nothing outside changed.
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret")).unwrap(),
        "outside"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    // Links are listed as links, not followed.
    let list = c.files_list(".").await.unwrap();
    let kinds: Vec<_> = list
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("dirlink", "symlink"),
            ("fifo", "other"),
            ("filelink", "symlink"),
            ("real", "dir")
        ]
    );
    a.stop().await;
}

#[tokio::test]
async fn file_sizes_are_capped_and_missing_files_reported() {
    let a = Agent::start(&["--max-file", "1000"]).await;
    let c = &a.client;
    match c.files_put("big", vec![0; 1001]).await {
        Err(ClientError::FileTooLarge {
            limit: Some(1000),
            message,
        }) => assert!(message.contains("`big`"), "{message}"),
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
    c.files_put("ok", vec![1; 1000]).await.unwrap();
    a.exec("s", "open('grown', 'wb').write(b'x' * 2000)").await;
    assert!(matches!(
        c.files_get("grown").await,
        Err(ClientError::FileTooLarge {
            limit: Some(1000),
            ..
        })
    ));
    match c.files_get("nope/none.txt").await {
        Err(ClientError::NotFound { message }) => {
            assert!(message.contains("nope/none.txt"), "{message}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    a.stop().await;
}
