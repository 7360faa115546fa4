//! `init` against the real engine: from a rootfs tarball, idempotent, and clean on bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{docker, rootfs, Host, TestLabel};

/// A generous bound for importing a rootfs and building the beephost layer on a busy machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

fn image_label(image: &str, key: &str) -> String {
    let out = docker(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
        image,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn init_from_rootfs_builds_a_labelled_non_root_runtime_once() {
    let label = TestLabel::new("init");
    let host = Host::start(&label, &["--no-prepare"], &[]);
    let rootfs = rootfs();
    let rootfs = rootfs.to_str().unwrap();

    let out = host.cli(&["--output", "json", "init", "--rootfs", rootfs]);
    assert_eq!(out.code, 0, "{out:?}\n{}", host.log());
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    for phase in ["resolve", "import", "probe", "build", "verify"] {
        assert!(
            lines.iter().any(|l| l["phase"] == phase),
            "no {phase} progress: {}",
            out.stdout
        );
    }
    let runtime = &lines.last().unwrap()["runtime"];
    let tag = runtime["tag"].as_str().unwrap().to_string();
    assert!(tag.starts_with("beephost-runtime:3."), "{tag}");
    assert!(
        tag.contains(&format!("-bh{}-", env!("CARGO_PKG_VERSION"))),
        "{tag}"
    );
    assert_eq!(runtime["source"], "rootfs");

    // Labelled, with the Python version read from the image.
    assert_eq!(image_label(&tag, "io.beephost.kind"), "runtime");
    assert_eq!(image_label(&tag, "io.beephost.test"), label.prefix);
    assert_eq!(
        image_label(&tag, "io.beephost.python"),
        runtime["python"].as_str().unwrap()
    );
    assert_eq!(
        image_label(&tag, "io.beephost.version"),
        env!("CARGO_PKG_VERSION")
    );

    // python3 runs there as a non-root user, without a network.
    let run = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        &label.label(),
        "--entrypoint",
        "python3",
        &tag,
        "-c",
        "import os, sys; print(os.getuid(), sys.version_info[0])",
    ]);
    let printed = String::from_utf8_lossy(&run.stdout).trim().to_string();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let uid: u32 = printed.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "python runs as root");
    assert_eq!(printed.split_whitespace().nth(1), Some("3"));

    // A repeat is a no-op answering in under a second.
    let started = Instant::now();
    let again = host.cli(&["init", "--rootfs", rootfs]);
    let took = started.elapsed();
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        took < Duration::from_secs(1),
        "a repeated init took {took:?}"
    );
    assert!(again.stdout.contains(&tag), "{again:?}");
    assert!(
        again.stderr.is_empty(),
        "the repeat printed {}",
        again.stderr
    );

    // status lists it, as a table and as JSON.
    let status = host.cli(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains(&tag), "{}", status.stdout);
    let status = host.cli(&["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["runtimes"][0]["tag"], tag.as_str());
    let _ = BUILD_TIMEOUT;
}

#[test]
fn serve_prepares_the_default_runtime_from_rootfs() {
    let label = TestLabel::new("prepare");
    let rootfs = rootfs();
    let host = Host::start(&label, &["--rootfs", rootfs.to_str().unwrap()], &[]);
    // Not ready while the runtime is being prepared; ready once it is.
    let (status, body) = host.get("/readyz");
    assert!(
        status == 503 || body.contains("\"state\":\"ready\""),
        "{status} {body}"
    );
    host.wait_ready(BUILD_TIMEOUT);
    let (_, body) = host.get("/readyz");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["runtime"]["state"], "ready", "{body}");
    let (status, body) = host.get("/v1/runtimes");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["runtimes"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(list["runtimes"][0]["tag"], ready["runtime"]["tag"]);
}

fn write_tar(path: &Path, files: &[(&str, &[u8])]) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    std::fs::write(path, tar.into_inner().unwrap()).unwrap();
}

#[test]
fn bad_inputs_give_one_line_errors_and_leave_nothing_behind() {
    let label = TestLabel::new("badinit");
    let host = Host::start(&label, &["--no-prepare"], &[]);
    let dir = tempfile::tempdir().unwrap();

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not an archive\n".repeat(100)).unwrap();
    let no_python = dir.path().join("empty-rootfs.tar");
    write_tar(
        &no_python,
        &[("etc/hostname", b"sandbox\n"), ("bin/true", b"")],
    );
    let missing = dir.path().join("missing.tar");

    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["init".into(), "--rootfs".into(), text.display().to_string()],
            format!(
                "error: rootfs: {} is not a tar or tar.gz archive",
                text.display()
            ),
        ),
        (
            vec![
                "init".into(),
                "--rootfs".into(),
                missing.display().to_string(),
            ],
            format!("error: rootfs: cannot read {}", missing.display()),
        ),
        (
            vec![
                "init".into(),
                "--rootfs".into(),
                no_python.display().to_string(),
            ],
            format!(
                "error: rootfs {} has no usable python3",
                no_python.display()
            ),
        ),
        (
            vec![
                "init".into(),
                "--from-image".into(),
                "beephost-test-no-such-image:1".into(),
            ],
            "error: cannot pull image `beephost-test-no-such-image:1`".to_string(),
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = host.cli(&args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("hint:"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {}", out.stderr);
        assert!(
            lines[0].starts_with(&expected),
            "{args:?}: got {:?}, want {expected:?}",
            lines[0]
        );
        assert!(
            label.leftovers().is_empty(),
            "{args:?} left {:?}",
            label.leftovers()
        );
    }
    // Nothing tagged for the rootfs without python either.
    let images = docker(&["images", "-q", "beephost-rootfs"]);
    let ids = String::from_utf8_lossy(&images.stdout).to_string();
    for id in ids.lines() {
        assert_ne!(
            image_label(id, "io.beephost.test"),
            label.prefix,
            "a rootfs image was left"
        );
    }
}
