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

/// One HTTP/1.1 connection with keep-alive and no Nagle delay.
struct LeanClient {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
}

impl LeanClient {
    async fn connect(base: &str) -> LeanClient {
        let host = base.trim_start_matches("http://").to_string();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        LeanClient { sender, host }
    }

    async fn post(&mut self, path: &str, auth: &str, body: &str) -> bytes::Bytes {
        use http_body_util::BodyExt;
        let req = hyper::Request::post(path)
            .header("host", &self.host)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
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
    let token = b["token"].as_str().unwrap().to_string();
    let body = json!({"code": "x = 1 + 1", "session": "w"});
    // A lean keep-alive HTTP/1.1 client (hyper's connection API), so the figure is the
    // endpoint's and not a client library's.
    let mut lean = LeanClient::connect(b["endpoint"].as_str().unwrap()).await;
    let auth = format!("Bearer {token}");
    let payload = body.to_string();
    for _ in 0..200 {
        lean.post("/execute", &auth, &payload).await;
    }
    let mut warm = Vec::with_capacity(o.calls);
    for _ in 0..o.calls {
        let t = Instant::now();
        let bytes = lean.post("/execute", &auth, &payload).await;
        warm.push(t.elapsed());
        debug_assert!(!bytes.is_empty());
    }
    warm.sort();
    // Where the time goes: a ping through the same endpoint (agent, no Python), and the same
    // exec through the control plane.
    let health = format!("{}/health", b["endpoint"].as_str().unwrap());
    let mut ping = Vec::with_capacity(o.calls);
    for _ in 0..o.calls {
        let t = Instant::now();
        http.get(&health)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        ping.push(t.elapsed());
    }
    ping.sort();
    let api = format!("{base}/v1/backends/warm/execute");
    let mut via_api = Vec::with_capacity(o.calls);
    for _ in 0..o.calls {
        let t = Instant::now();
        http.post(&api)
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
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
         | warm exec `x = 1 + 1` through the http endpoint ({calls} calls, one keep-alive connection, hyper's client) | {w50:.3} ms | {w99:.3} ms | p50 ≤ 0.5 ms, p99 ≤ 2 ms |\n\
         | the same exec through `/v1/backends/{{id}}/execute` (reqwest) | {a50:.3} ms | {a99:.3} ms | |\n\
         | `GET /health` through the endpoint (agent ping, no Python; reqwest) | {p50:.3} ms | {p99:.3} ms | |\n\n\
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
