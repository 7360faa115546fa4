//! A runtime image for tests that need one, without building it once per test.
//!
//! The first caller builds a shared runtime from the test rootfs through a real host (labelled
//! `io.beephost.test=<run>-shared`, removed by scripts/test's sweep at the end of the run); each
//! test then gets its own thin image on top of it carrying the test's label, so its host sees
//! it as a runtime and its cleanup removes it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{docker, rootfs, Host, TestLabel};

/// Tag of the shared runtime, built on first use.
pub fn shared_runtime() -> &'static str {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED.get_or_init(|| {
        let run = std::env::var("BEEPHOST_TEST_RUN").unwrap_or_else(|_| "it".into());
        let label = format!("io.beephost.test={run}-shared");
        let existing = docker(&[
            "images",
            "-q",
            "--filter",
            &format!("label={label}"),
            "--filter",
            "label=io.beephost.kind=runtime",
        ]);
        if let Some(id) = String::from_utf8_lossy(&existing.stdout).lines().next() {
            return id.to_string();
        }
        // A label object that is never dropped: the shared image outlives single tests.
        let keeper = std::mem::ManuallyDrop::new(TestLabel {
            prefix: format!("{run}-shared"),
        });
        let host = Host::start(&keeper, &["--rootfs", rootfs().to_str().unwrap()], &[]);
        host.wait_ready(Duration::from_secs(600));
        let (_, body) = host.get("/v1/runtimes");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["runtimes"][0]["id"]
            .as_str()
            .expect("the shared host made a runtime")
            .to_string()
    })
}

impl TestLabel {
    /// Gives this test a runtime: a one-line image over the shared one, with this test's label.
    pub fn runtime(&self) -> String {
        let base = shared_runtime();
        let tag = format!("beephost-test-runtime:{}", self.prefix.to_lowercase());
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &tag, "--label", &self.label(), "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker build runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("FROM {base}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cannot derive a test runtime: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tag
    }
}
