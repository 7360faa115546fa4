//! Backends benchmark (issue 5): start → first exec beside `docker run`, warm exec through the
//! http endpoint, 20 backends started at once, and an idle backend's memory.
//!
//! Runs a real release host (`beephost serve --rootfs …`) against the real engine. The floor
//! (`docker run --rm --network none <runtime> python3 -c pass`) is measured in the same run, so
//! the ratio holds on shared machines where absolute times drift. With `--write` the results
//! replace the backends section of BENCHMARKS.md.
//!
//! Usage: `scripts/bench-backends.sh [--starts N] [--calls N]` (needs BEEPHOST_TEST_ROOTFS or
//! `--rootfs FILE`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const START: &str = "<!-- bench:backends:start -->";
const END: &str = "<!-- bench:backends:end -->";

struct Opts {
    starts: usize,
    calls: usize,
    concurrent: usize,
    rootfs: PathBuf,
    write: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        starts: 10,
        calls: 3000,
        concurrent: 20,
        rootfs: std::env::var("BEEPHOST_TEST_ROOTFS")
            .map(PathBuf::from)
            .unwrap_or_default(),
        write: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--starts" => {
                o.starts = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--starts N")
            }
            "--calls" => o.calls = args.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--concurrent" => {
                o.concurrent = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--concurrent N")
            }
            "--rootfs" => o.rootfs = PathBuf::from(args.next().expect("--rootfs FILE")),
            "--write" => o.write = true,
            _ => {}
        }
    }
    assert!(
        o.rootfs.is_file(),
        "give --rootfs FILE or BEEPHOST_TEST_ROOTFS (docker/build-rootfs.sh makes one)"
    );
    o
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]);
    format!("{cores} cores ({cpu}), Docker engine {engine}")
}

/// One HTTP/1.1 keep-alive connection on a blocking socket, as wrk or curl would hold it: the
/// figure is then the endpoint's, not a client runtime's (a multi-threaded async client adds a
/// thread hop each way, about 0.06 ms here).
struct KeepAlive {
    stream: std::net::TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(base: &str) -> KeepAlive {
        let host = base.trim_start_matches("http://").to_string();
        let stream = std::net::TcpStream::connect(&host).expect("the endpoint accepts");
        stream.set_nodelay(true).unwrap();
        KeepAlive {
            stream,
            host,
            buf: vec![0; 64 << 10],
        }
    }

    /// Sends one request and reads the whole response; returns its status and body.
    fn call(&mut self, method: &str, path: &str, auth: &str, body: &str) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let auth = if auth.is_empty() {
            String::new()
        } else {
            format!("authorization: {auth}\r\n")
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut got = 0;
        loop {
            let n = self.stream.read(&mut self.buf[got..]).unwrap();
            assert!(n > 0, "the endpoint closed the connection");
            got += n;
            let Some(end) = self.buf[..got].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if got >= end + 4 + length {
                let status = head[9..12].parse().unwrap_or(0);
                return (status, self.buf[end + 4..end + 4 + length].to_vec());
            }
        }
    }
}

/// A container of `image` running `cat`, attached the way the host attaches to a backend
/// (no TTY, stdin open, log driver none, no network): its echo is the floor of every call.
struct Echo {
    docker: bollard::Docker,
    id: String,
    attached: bollard::container::AttachContainerResults,
}

impl Echo {
    async fn start(image: &str, label: &str) -> Echo {
        use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
        use bollard::query_parameters::AttachContainerOptionsBuilder;
        let docker = bollard::Docker::connect_with_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let (key, value) = label.split_once('=').unwrap();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["cat".into()]),
            user: Some("10001:10001".into()),
            labels: Some([(key.to_string(), value.to_string())].into()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(false),
            tty: Some(false),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                init: Some(true),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .unwrap()
            .id;
        let opts = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = docker.attach_container(&id, Some(opts)).await.unwrap();
        docker.start_container(&id, None).await.unwrap();
        Echo {
            docker,
            id,
            attached,
        }
    }

    /// One round trip of `payload` through the container.
    async fn round_trip(&mut self, payload: &[u8]) -> Duration {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let t = Instant::now();
        self.attached.input.write_all(payload).await.unwrap();
        self.attached.input.flush().await.unwrap();
        let mut got = 0;
        while got < payload.len() {
            match self.attached.output.next().await {
                Some(Ok(out)) => got += out.into_bytes().len(),
                other => panic!("the echo container stopped: {other:?}"),
            }
        }
        t.elapsed()
    }

    async fn remove(self) {
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
            .force(true)
            .build();
        let _ = self.docker.remove_container(&self.id, Some(opts)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    let label = format!("io.beephost.test=bench-{}", std::process::id());
    let run_dir = std::env::temp_dir().join(format!("bh-bench-{}", std::process::id()));
    let mut host = Command::new(env!("CARGO_BIN_EXE_beephost"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--labels",
            &label,
            "--rootfs",
        ])
        .arg(&o.rootfs)
        .arg("--run-dir")
        .arg(&run_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the host starts");
    let stderr = host.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("the host reports its address").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the host did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let runtimes: Value = http
        .get(format!("{base}/v1/runtimes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let image = runtimes["runtimes"][0]["id"].as_str().unwrap().to_string();

    // Warm exec through the http endpoint, one keep-alive connection; first, while the engine
    // has nothing else to do (container removals of the start phase would run beside it).
    let b: Value = http
        .post(format!("{base}/v1/backends"))
        .json(&json!({"transport": "http", "name": "warm"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = b["endpoint"].as_str().unwrap().to_string();
    let auth = format!("Bearer {}", b["token"].as_str().unwrap());
    let payload = json!({"code": "x = 1 + 1", "session": "w"}).to_string();
    let mut client = KeepAlive::connect(&endpoint);
    let (status, reply) = client.call("POST", "/execute", &auth, &payload);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert!(reply["error"].is_null(), "{reply}");
    // Its floor, in the same rounds: an echo of a frame's size through a container's attach
    // stream (host → dockerd → containerd-shim → container and back), with no agent, worker
    // or HTTP. Rounds alternate so that drift on a shared machine reaches both alike.
    let mut echo = Echo::start(&image, &label).await;
    let frame = vec![b'x'; 76];
    for _ in 0..200 {
        client.call("POST", "/execute", &auth, &payload);
        echo.round_trip(&frame).await;
    }
    let rounds = 10;
    let mut warm = Vec::with_capacity(o.calls);
    let mut attach = Vec::with_capacity(o.calls);
    let mut ping = Vec::with_capacity(o.calls);
    for _ in 0..rounds {
        for _ in 0..o.calls / rounds {
            let t = Instant::now();
            let (status, _) = client.call("POST", "/execute", &auth, &payload);
            warm.push(t.elapsed());
            assert_eq!(status, 200);
        }
        for _ in 0..o.calls / rounds {
            attach.push(echo.round_trip(&frame).await);
        }
        // Where the time goes: a ping through the same endpoint (agent, no Python).
        for _ in 0..o.calls / rounds {
            let t = Instant::now();
            client.call("GET", "/health", "", "");
            ping.push(t.elapsed());
        }
    }
    echo.remove().await;
    warm.sort();
    attach.sort();
    ping.sort();
    // The same exec through the control plane.
    let mut control = KeepAlive::connect(&base);
    let mut via_api = Vec::with_capacity(o.calls);
    for _ in 0..o.calls {
        let t = Instant::now();
        control.call("POST", "/v1/backends/warm/execute", "", &payload);
        via_api.push(t.elapsed());
    }
    via_api.sort();

    // Floor: docker run of the same image, measured in the same run.
    let mut floor = Vec::new();
    for _ in 0..o.starts {
        let t = Instant::now();
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--label",
                &label,
                "--entrypoint",
                "python3",
                &image,
                "-c",
                "pass",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        floor.push(t.elapsed());
    }
    floor.sort();

    // Start → first exec result, through the API.
    let mut starts = Vec::new();
    for i in 0..o.starts {
        let t = Instant::now();
        let b: Value = http
            .post(format!("{base}/v1/backends"))
            .json(&json!({"transport": "http", "name": format!("s{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r: Value = http
            .post(format!("{}/execute", b["endpoint"].as_str().unwrap()))
            .bearer_auth(b["token"].as_str().unwrap())
            .json(&json!({"code": "1 + 1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["result"]["value"], 2, "{r}");
        starts.push(t.elapsed());
        http.delete(format!("{base}/v1/backends/s{i}"))
            .send()
            .await
            .unwrap();
    }
    starts.sort();

    // Idle memory of that backend, as the engine reports it.
    let filter = format!("label={label}");
    let warm_id = docker(&[
        "ps",
        "-q",
        "--filter",
        &filter,
        "--filter",
        "label=io.beephost.backend-name=warm",
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_mem = docker(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        &warm_id,
    ]);

    // What a user would do without beephost: `docker exec` into the running sandbox
    // (after the memory reading: the runs leave page cache charged to the container).
    let mut exec_floor = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let status = Command::new("docker")
            .args(["exec", b["container"].as_str().unwrap()])
            .args(["python3", "-c", "x = 1 + 1"])
            .status()
            .unwrap();
        assert!(status.success());
        exec_floor.push(t.elapsed());
    }
    exec_floor.sort();

    // Many backends at once.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..o.concurrent {
        let http = http.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{base}/v1/backends"))
                .json(&json!({"transport": "http", "name": format!("c{i}")}))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }));
    }
    let mut failures = 0;
    for task in tasks {
        if task.await.unwrap() != 201 {
            failures += 1;
        }
    }
    let concurrent_elapsed = t.elapsed();

    let report = format!(
        "{START}\n## Backends (issue 5)\n\n\
         Run with `scripts/bench-backends.sh` (release build, real engine, runtime from the test \
         rootfs). Machine: {machine}.\n\n\
         | measure | median | p99 | target |\n| --- | --- | --- | --- |\n\
         | floor: `docker run --rm --network none <runtime> python3 -c pass` ({n} runs) | {f50} | {f99} | |\n\
         | start → first exec result (`POST /v1/backends`, then `POST /execute`) | {s50} | {s99} | |\n\
         | ratio to the floor | {ratio50:.2}× | {ratio99:.2}× | ≤ 1.3× |\n\
         | warm exec `x = 1 + 1` through the http endpoint ({calls} calls in {rounds} rounds, one keep-alive connection) | {w50:.3} ms | {w99:.3} ms | p50 ≤ 0.5 ms, p99 ≤ 2 ms |\n\
         | floor: an echo through a container's attach stream (`cat`, 76 bytes, in the same rounds) | {e50:.3} ms | {e99:.3} ms | |\n\
         | warm exec − attach floor (what beephost adds: HTTP, host, agent, worker) | {d50:.3} ms | | |\n\
         | `GET /health` through the endpoint (agent ping, no Python; same rounds) | {p50:.3} ms | {p99:.3} ms | |\n\
         | the same exec through `/v1/backends/{{id}}/execute` | {a50:.3} ms | {a99:.3} ms | |\n\
         | floor: `docker exec <backend> python3 -c 'x = 1 + 1'` (10 runs) | {x50} | {x99} | |\n\n\
         | measure | result | target |\n| --- | --- | --- |\n\
         | {conc} backends started concurrently | {ok} ok, {failures} failed, {celapsed} in all | no error |\n\
         | an idle backend's memory (`docker stats`) | {idle_mem} | ≤ 25 MiB |\n\
         {END}\n",
        machine = machine(),
        n = o.starts,
        f50 = ms(percentile(&floor, 0.5)),
        f99 = ms(percentile(&floor, 0.99)),
        s50 = ms(percentile(&starts, 0.5)),
        s99 = ms(percentile(&starts, 0.99)),
        ratio50 = percentile(&starts, 0.5).as_secs_f64() / percentile(&floor, 0.5).as_secs_f64(),
        ratio99 = percentile(&starts, 0.99).as_secs_f64() / percentile(&floor, 0.99).as_secs_f64(),
        calls = o.calls,
        rounds = rounds,
        e50 = percentile(&attach, 0.5).as_secs_f64() * 1e3,
        e99 = percentile(&attach, 0.99).as_secs_f64() * 1e3,
        d50 = (percentile(&warm, 0.5).as_secs_f64() - percentile(&attach, 0.5).as_secs_f64()) * 1e3,
        x50 = ms(percentile(&exec_floor, 0.5)),
        x99 = ms(percentile(&exec_floor, 0.99)),
        w50 = percentile(&warm, 0.5).as_secs_f64() * 1e3,
        w99 = percentile(&warm, 0.99).as_secs_f64() * 1e3,
        a50 = percentile(&via_api, 0.5).as_secs_f64() * 1e3,
        a99 = percentile(&via_api, 0.99).as_secs_f64() * 1e3,
        p50 = percentile(&ping, 0.5).as_secs_f64() * 1e3,
        p99 = percentile(&ping, 0.99).as_secs_f64() * 1e3,
        conc = o.concurrent,
        ok = o.concurrent - failures,
        celapsed = ms(concurrent_elapsed),
    );
    print!("{report}");

    let _ = host.kill();
    let _ = host.wait();
    // Containers first, then images in rounds: a parent goes once its children have.
    for args in [
        vec!["ps", "-aq", "--filter", filter.as_str()],
        vec!["images", "-aq", "--filter", filter.as_str()],
        vec!["images", "-aq", "--filter", filter.as_str()],
        vec!["images", "-aq", "--filter", filter.as_str()],
    ] {
        let ids = docker(&args);
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut rm = if args[0] == "ps" {
                vec!["rm", "-f"]
            } else {
                vec!["rmi", "-f"]
            };
            rm.extend(ids);
            docker(&rm);
        }
    }
    if o.write {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let new = match (old.find(START), old.find(END)) {
            (Some(s), Some(e)) if e > s => format!(
                "{}{}{}",
                &old[..s],
                report,
                &old[e + END.len()..].trim_start_matches('\n')
            ),
            _ => format!("{}\n\n{report}", old.trim_end()),
        };
        std::fs::write(&path, new).expect("write BENCHMARKS.md");
        eprintln!("updated {}", path.display());
    }
}
