//! Shared test plumbing: unique label prefixes with cleanup by label, a real host process,
//! the CLI, and waiting on conditions with deadlines.

#![allow(dead_code)]

pub mod otlp;

pub mod runtime;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_beephost"))
}

/// A unique `io.beephost.test` value; everything labelled with it is removed on drop.
pub struct TestLabel {
    pub prefix: String,
}

impl TestLabel {
    pub fn new(name: &str) -> TestLabel {
        let prefix = format!(
            "{}-{}-{}",
            std::env::var("BEEPHOST_TEST_RUN").unwrap_or_else(|_| "it".into()),
            name,
            hex(rand_u32())
        );
        TestLabel { prefix }
    }

    /// `io.beephost.test=<prefix>`.
    pub fn label(&self) -> String {
        format!("io.beephost.test={}", self.prefix)
    }

    /// Ids of containers, volumes and images carrying this label.
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("label={}", self.label());
        let mut found = Vec::new();
        for args in [
            vec!["ps", "-aq", "--filter", &filter],
            vec!["volume", "ls", "-q", "--filter", &filter],
            vec!["images", "-aq", "--filter", &filter],
        ] {
            let out = docker(&args);
            found.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| format!("{}: {l}", args[0])),
            );
        }
        found
    }

    /// Removes everything carrying this label.
    pub fn cleanup(&self) {
        let filter = format!("label={}", self.label());
        let ids = |args: &[&str]| -> Vec<String> {
            String::from_utf8_lossy(&docker(args).stdout)
                .lines()
                .map(str::to_string)
                .collect()
        };
        let containers = ids(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-fv"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args);
        }
        let volumes = ids(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker(&args);
        }
        // Images: children before parents, so retry a few rounds.
        for _ in 0..5 {
            let images = ids(&["images", "-aq", "--filter", &filter]);
            if images.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(images.iter().map(String::as_str));
            docker(&args);
        }
    }
}

impl Drop for TestLabel {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs the docker CLI (to inspect what the host made, and to clean up).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

fn hex(n: u32) -> String {
    format!("{n:08x}")
}

/// The rootfs tarball the test script built (cached by content). Tests need it: a missing
/// one is a failure with a hint, never a skip.
pub fn rootfs() -> PathBuf {
    let path = std::env::var("BEEPHOST_TEST_ROOTFS").unwrap_or_else(|_| {
        panic!("BEEPHOST_TEST_ROOTFS is not set; run the tests with scripts/test (it builds the rootfs)")
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "BEEPHOST_TEST_ROOTFS={} is not a file",
        path.display()
    );
    path
}

/// Waits until `check` returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `beephost serve` process on a free loopback port, killed on drop.
pub struct Host {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Host {
    /// Starts a host labelled for `label`, with extra `serve` arguments and environment.
    pub fn start(label: &TestLabel, args: &[&str], env: &[(&str, &str)]) -> Host {
        let mut cmd = Command::new(bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--labels",
        ])
        .arg(label.label())
        .args(args)
        .env_remove("BEEPHOST_TOKEN")
        .env_remove("BEEPHOST_ROOTFS")
        .env_remove("BEEPHOST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("beephost serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(v["addr"].as_str().unwrap_or("").to_string());
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the host did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Host {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    /// Kills the host with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `within`) for the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET a path; returns status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http("GET", &format!("{}{path}", self.url), None)
    }

    /// Runs the CLI against this host.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli(&["--url", &self.url], args)
    }

    /// Waits for /readyz to answer 200.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_for("the host to be ready", timeout, || {
            (self.get("/readyz").0 == 200).then_some(())
        });
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- host log ---\n{}", self.log());
        }
    }
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `beephost <global> <args>`.
pub fn cli(global: &[&str], args: &[&str]) -> CliOutput {
    let out = Command::new(bin())
        .args(global)
        .args(args)
        .env_remove("BEEPHOST_URL")
        .env_remove("BEEPHOST_TOKEN")
        .env_remove("BEEPHOST_OUTPUT")
        .stdin(Stdio::null())
        .output()
        .expect("the beephost CLI runs");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A minimal blocking HTTP/1.1 client, enough for probes and JSON calls in tests.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    http_with(method, url, body, &[])
}

/// [`http`] with extra headers (`("Authorization", "Bearer …")`).
pub fn http_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (addr, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let chunked = text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(&body) } else { body })
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A Unix-socket relay to the real engine that a test can cut, as if the engine went away.
pub struct EngineProxy {
    path: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl EngineProxy {
    pub fn start(path: &std::path::Path) -> EngineProxy {
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the engine proxy");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>> = Arc::default();
        let (stop2, conns2) = (stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::os::unix::net::UnixStream::connect(&upstream) else {
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        EngineProxy {
            path: path.to_path_buf(),
            stop,
            conns,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}
