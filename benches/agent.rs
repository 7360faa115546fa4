//! Benchmark of `beephost agent` through its stdin/stdout, with the machine's python3.
//!
//! Run with `scripts/bench-agent.sh` (or `cargo bench --bench agent -- [--write] [--calls N]`).
//! Measures: round-trip latency of `exec x = 1 + 1` on a warm session, throughput of four
//! sessions in parallel, and the resident memory of an idle agent and an idle worker. With
//! `--write` the results replace the agent section of BENCHMARKS.md.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use beephost::agent::{AgentClient, CallOpts};
use tokio::process::Command;

const START: &str = "<!-- agent-bench:start -->";
const END: &str = "<!-- agent-bench:end -->";

struct Opts {
    calls: usize,
    parallel_calls: usize,
    write: bool,
    python: String,
}

fn opts() -> Opts {
    let mut o = Opts {
        calls: 5000,
        parallel_calls: 20000,
        write: false,
        python: std::env::var("BEEPHOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write" => o.write = true,
            "--calls" => o.calls = args.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--parallel-calls" => {
                o.parallel_calls = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--parallel-calls N")
            }
            "--python" => o.python = args.next().expect("--python PATH"),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| format!("{:.0} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    format!(
        "{model}, {cores} cores, {mem}, Linux {}; load average {load} when the run started \
         (other builds and tests running make the figures noisier)",
        kernel.trim()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    let machine = machine();
    let workspace = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_beephost"))
        .args(["agent", "--python", &o.python, "--workspace"])
        .arg(workspace.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start beephost agent");
    let agent_pid = child.id().unwrap();
    let client = AgentClient::connect(child.stdout.take().unwrap(), child.stdin.take().unwrap())
        .await
        .expect("handshake");
    let warm = CallOpts::session("bench");
    let opened = client.session_open(Some("bench")).await.unwrap();
    // Let the warm spare worker finish starting before measuring anything.
    let info = client
        .exec(&CallOpts::default(), "import sys; sys.version.split()[0]")
        .await
        .unwrap();
    let python_version = info
        .result
        .and_then(|r| r.value().and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_default();
    client.exec(&warm, "pass").await.unwrap();
    let agent_idle_rss = rss_kib(agent_pid);
    let worker_idle_rss = rss_kib(opened.pid);

    for _ in 0..500 {
        client.exec(&warm, "x = 1 + 1").await.unwrap();
    }
    let mut lat = Vec::with_capacity(o.calls);
    let t0 = Instant::now();
    for _ in 0..o.calls {
        let t = Instant::now();
        let r = client.exec(&warm, "x = 1 + 1").await.unwrap();
        lat.push(t.elapsed());
        assert!(r.error.is_none());
    }
    let serial_elapsed = t0.elapsed();
    lat.sort();
    let (p50, p90, p99) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
    );

    let sessions = 4;
    for s in 0..sessions {
        client
            .exec(&CallOpts::session(format!("par{s}")), "x = 1 + 1")
            .await
            .unwrap();
    }
    let per_session = o.parallel_calls / sessions;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let opts = CallOpts::session(format!("par{s}"));
            for _ in 0..per_session {
                let r = c.exec(&opts, "x = 1 + 1").await.unwrap();
                assert!(r.error.is_none());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let parallel_elapsed = t0.elapsed();
    let throughput = (per_session * sessions) as f64 / parallel_elapsed.as_secs_f64();
    let agent_busy_rss = rss_kib(agent_pid);

    let report = format!(
        "{START}\n## Agent (issue 3)\n\n\
         Run with `scripts/bench-agent.sh` (release build). `exec x = 1 + 1` through the agent's \
         stdin/stdout of the release `beephost agent`, by `AgentClient` on a tokio runtime with 2 \
         worker threads; workers run Python {python_version} (`--python {python}`).\n\n\
         Machine: {machine}.\n\n\
         | measure | result | target |\n| --- | --- | --- |\n\
         | round trip, warm session, {calls} calls: p50 | {p50} | ≤ 150 µs |\n\
         | round trip p90 / p99 | {p90} / {p99} | |\n\
         | serial throughput (one session) | {serial:.0} execs/s | |\n\
         | 4 sessions in parallel, {pcalls} calls | {throughput:.0} execs/s | ≥ 5,000 execs/s |\n\
         | agent RSS, idle (one session, one warm spare) | {agent_idle:.1} MiB | ≤ 10 MiB |\n\
         | agent RSS after the runs | {agent_busy:.1} MiB | |\n\
         | one idle worker RSS | {worker_idle:.1} MiB | ≤ 15 MiB |\n\
         {END}\n",
        machine = machine,
        python = o.python,
        calls = o.calls,
        p50 = us(p50),
        p90 = us(p90),
        p99 = us(p99),
        serial = o.calls as f64 / serial_elapsed.as_secs_f64(),
        pcalls = per_session * sessions,
        agent_idle = agent_idle_rss as f64 / 1024.0,
        agent_busy = agent_busy_rss as f64 / 1024.0,
        worker_idle = worker_idle_rss as f64 / 1024.0,
    );
    print!("{report}");
    drop(client);
    let _ = child.wait().await;

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
