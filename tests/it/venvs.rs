//! Venvs against the real engine: built from a wheelhouse the test makes itself (no network),
//! used by a backend-like container, changed, deleted (409 while in use), built once under
//! concurrent creates, failed builds kept with their log, a dead host's leftovers marked failed,
//! bad input refused with nothing left behind, and (when reachable) the package index.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{docker, http, rootfs, Host, TestLabel};

/// Importing the rootfs and building the runtime on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes `name-version-py3-none-any.whl` into `dir`: a zip (stored) with a module setting
/// `VALUE`, and the METADATA, WHEEL and RECORD files a wheel needs.
pub fn write_wheel(dir: &Path, name: &str, version: &str, value: i64) -> PathBuf {
    use base64::Engine;
    use sha2::Digest;
    let dist_info = format!("{name}-{version}.dist-info");
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{name}/__init__.py"),
            format!("VALUE = {value}\n").into_bytes(),
        ),
        (
            format!("{dist_info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").into_bytes(),
        ),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: beephost-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
    ];
    let mut record = String::new();
    for (path, data) in &files {
        let digest =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(data));
        record.push_str(&format!("{path},sha256={digest},{}\n", data.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    files.push((format!("{dist_info}/RECORD"), record.into_bytes()));

    let mut zip = Vec::new();
    let mut central = Vec::new();
    for (path, data) in &files {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let offset = zip.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((path.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend(0u16.to_le_bytes()); // comment
                h.extend(0u16.to_le_bytes()); // disk
                h.extend(0u16.to_le_bytes()); // internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(path.as_bytes());
            h
        };
        zip.extend(header(0x04034b50, false));
        zip.extend(data);
        central.extend(header(0x02014b50, true));
    }
    let cd_offset = zip.len() as u32;
    zip.extend(&central);
    zip.extend(0x06054b50u32.to_le_bytes());
    zip.extend([0u8; 4]);
    zip.extend((files.len() as u16).to_le_bytes());
    zip.extend((files.len() as u16).to_le_bytes());
    zip.extend((central.len() as u32).to_le_bytes());
    zip.extend(cd_offset.to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&zip))
        .unwrap();
    path
}

/// A package name no other test (or run) uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 1_000_000
    )
}

/// A host with a runtime from the test rootfs, installing from `wheelhouse` only.
pub fn venv_host(label: &TestLabel, wheelhouse: &Path, extra: &[&str]) -> Host {
    let rootfs = rootfs();
    let mut args = vec![
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--wheelhouse",
        wheelhouse.to_str().unwrap(),
        "--no-index",
    ];
    args.extend_from_slice(extra);
    let host = Host::start(label, &args, &[]);
    host.wait_ready(READY_TIMEOUT);
    host
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn post(host: &Host, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        "POST",
        &format!("{}{path}", host.url),
        Some(&body.to_string()),
    );
    (status, json(&text))
}

fn packages(venv: &Value) -> Vec<(String, String)> {
    venv["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no packages in {venv}"))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs python3 from the venv as the sandbox user, with the venv mounted as backends mount it.
fn in_backend_like(label: &TestLabel, venv: &Value, mode: &str, code: &str) -> (bool, String) {
    let volume = venv["volume"].as_str().unwrap();
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--user",
        "10001:10001",
        "--label",
        &label.label(),
        "-v",
        &format!("{volume}:/venv:{mode}"),
        "--entrypoint",
        "/venv/bin/python",
        venv["runtime"].as_str().unwrap(),
        "-c",
        code,
    ]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn volumes_of(label: &TestLabel) -> Vec<String> {
    let out = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label={}", label.label()),
        "--filter",
        "label=io.beephost.kind=venv",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn containers_of(label: &TestLabel) -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label={}", label.label())]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn venv_lifecycle_from_a_wheelhouse_the_test_built() {
    let label = TestLabel::new("venv-life");
    let wheels = tempfile::tempdir().unwrap();
    let pkg = unique("bhpkg");
    let more = unique("bhmore");
    write_wheel(wheels.path(), &pkg, "1.0", 42);
    write_wheel(wheels.path(), &more, "2.5", 7);
    let host = venv_host(&label, wheels.path(), &[]);
    let name = unique("life-");

    // Create through the CLI: NDJSON progress with the installer's output, then the venv.
    let out = host.cli(&["--output", "json", "venv", "create", &name, &pkg]);
    assert_eq!(out.code, 0, "{out:?}\n{}", host.log());
    let lines: Vec<Value> = out.stdout.lines().map(json).collect();
    assert!(
        lines
            .iter()
            .any(|l| l["phase"] == "install" && l["message"].as_str().unwrap_or("").contains(&pkg)),
        "no install output: {}",
        out.stdout
    );
    let venv = lines.last().unwrap()["venv"].clone();
    assert_eq!(venv["state"], "ready", "{venv}");
    assert_eq!(venv["volume"], format!("beephost-venv-{name}"));
    assert_eq!(packages(&venv), vec![(pkg.clone(), "1.0".to_string())]);
    assert!(venv["python"].as_str().unwrap().starts_with("3."), "{venv}");
    assert!(venv["size"].as_u64().unwrap() > 0);

    // Labelled volume.
    let inspect = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"io.beephost.venv\"}} {{index .Labels \"io.beephost.test\"}}",
        venv["volume"].as_str().unwrap(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("{name} {}", label.prefix)
    );

    // A backend-like container imports it, as the sandbox user, read-only and offline.
    let (ok, printed) = in_backend_like(
        &label,
        &venv,
        "ro",
        &format!("import {pkg}; print({pkg}.VALUE)"),
    );
    assert!(ok, "{printed}");
    assert_eq!(printed.trim(), "42");

    // A real backend on the venv imports it too, and shows up as the venv's user.
    let out = host.cli(&[
        "--output",
        "json",
        "start",
        "http",
        "--venv",
        &name,
        "--name",
        &format!("{name}-b"),
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", host.log());
    let backend = json(&out.stdout);
    assert_eq!(backend["venv"], name.as_str(), "{backend}");
    let out = host.cli(&[
        "exec",
        "--backend",
        &format!("{name}-b"),
        &format!("import {pkg}, sys\nprint(sys.prefix)\n{pkg}.VALUE"),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "/venv\n42\n");
    let (_, shown) = host.get(&format!("/v1/venvs/{name}"));
    assert!(
        shown.contains(&format!("{name}-b")),
        "the venv lists its backend: {shown}"
    );
    assert_eq!(host.cli(&["stop", &format!("{name}-b")]).code, 0);

    // The sandbox cannot write into its venv: not through the read-only mount, and not even
    // through a writable one (the files are root's).
    for mode in ["ro", "rw"] {
        let (ok, printed) = in_backend_like(
            &label,
            &venv,
            mode,
            "open('/venv/lib/evil.txt', 'w'); open('/venv/bin/python', 'a')",
        );
        assert!(!ok, "wrote into the venv through a {mode} mount: {printed}");
        assert!(
            printed.contains("Read-only file system") || printed.contains("Permission denied"),
            "{printed}"
        );
    }

    // Listed and shown with the frozen set.
    let (status, body) = host.get("/v1/venvs");
    assert_eq!(status, 200, "{body}");
    let listed = json(&body);
    let found = listed["venvs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {body}"))
        .clone();
    assert_eq!(packages(&found), packages(&venv));
    let out = host.cli(&["venv", "list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("ready")),
        "{}",
        out.stdout
    );
    let out = host.cli(&["venv", "show", &name]);
    assert!(
        out.stdout.contains(&format!("{pkg}  1.0")),
        "{}",
        out.stdout
    );
    let (status, body) = host.get(&format!("/v1/venvs/{name}"));
    assert_eq!(status, 200, "{body}");
    let shown = json(&body);
    assert_eq!(shown["backends"], serde_json::json!([]));
    assert_eq!(shown["requested"], serde_json::json!([pkg]));

    // Install more, then uninstall the first.
    let out = host.cli(&["--output", "json", "venv", "install", &name, &more]);
    assert_eq!(out.code, 0, "{out:?}");
    let after: Value = json(out.stdout.lines().last().unwrap())["venv"].clone();
    let mut expected = vec![
        (pkg.clone(), "1.0".to_string()),
        (more.clone(), "2.5".to_string()),
    ];
    expected.sort();
    let mut got = packages(&after);
    got.sort();
    assert_eq!(got, expected);
    let (status, removed) = post(
        &host,
        &format!("/v1/venvs/{name}/packages"),
        &serde_json::json!({ "remove": [pkg] }),
    );
    assert_eq!(status, 200, "{removed}");
    assert_eq!(packages(&removed), vec![(more.clone(), "2.5".to_string())]);
    assert_eq!(removed["requested"], serde_json::json!([more]));
    let (ok, printed) = in_backend_like(&label, &venv, "ro", &format!("import {pkg}"));
    assert!(!ok && printed.contains("ModuleNotFoundError"), "{printed}");

    // Delete while a backend uses it: 409 naming the backend; with force the backend goes too.
    let backend = format!("{}-backend", label.prefix);
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &backend,
        "--label",
        &label.label(),
        "--label",
        "io.beephost.kind=backend",
        "--label",
        &format!("io.beephost.venv={name}"),
        "--network",
        "none",
        "-v",
        &format!("{}:/venv:ro", venv["volume"].as_str().unwrap()),
        "--entrypoint",
        "python3",
        venv["runtime"].as_str().unwrap(),
        "-c",
        "import time; time.sleep(600)",
    ]);
    assert!(run.status.success(), "{run:?}");
    let (status, body) = host.get(&format!("/v1/venvs/{name}"));
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["backends"][0]["name"],
        backend.as_str(),
        "{body}"
    );
    let out = host.cli(&["venv", "delete", &name]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&backend), "{}", out.stderr);
    let (status, body) = http("DELETE", &format!("{}/v1/venvs/{name}", host.url), None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        volumes_of(&label).len(),
        1,
        "the venv survives a refused delete"
    );
    let (status, body) = http(
        "DELETE",
        &format!("{}/v1/venvs/{name}?force=true", host.url),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["removed_backends"][0]["name"], backend.as_str());
    assert!(volumes_of(&label).is_empty(), "{:?}", volumes_of(&label));
    assert!(
        containers_of(&label).is_empty(),
        "{:?}",
        containers_of(&label)
    );
    let (status, _) = host.get(&format!("/v1/venvs/{name}"));
    assert_eq!(status, 404);
}

#[test]
fn venv_builds_are_exclusive_failures_are_kept_and_bad_input_leaves_nothing() {
    let label = TestLabel::new("venv-edges");
    let wheels = tempfile::tempdir().unwrap();
    let pkg = unique("bhedge");
    write_wheel(wheels.path(), &pkg, "0.3", 3);
    let host = venv_host(&label, wheels.path(), &[]);

    // Templates as data.
    let (status, body) = host.get("/v1/venv-templates");
    assert_eq!(status, 200, "{body}");
    let templates = json(&body)["templates"].clone();
    let ds = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "data-science")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        ds["packages"],
        serde_json::json!(["numpy", "pandas", "matplotlib"])
    );

    // Bad input: 400/422 naming the offender, and nothing made.
    let cases: Vec<(Value, u16, &str)> = vec![
        (serde_json::json!({"name": "Bad Name"}), 400, "`Bad Name`"),
        (serde_json::json!({"name": "-x"}), 400, "`-x`"),
        (
            serde_json::json!({"name": "ok", "packages": ["six", "six>>1"]}),
            400,
            "packages[1]",
        ),
        (
            serde_json::json!({"name": "ok", "packages": ["--index-url=https://evil.example"]}),
            422,
            "--index-url",
        ),
        (
            serde_json::json!({"name": "ok", "packages": ["-e ."]}),
            422,
            "packages[0]",
        ),
        (
            serde_json::json!({"name": "ok", "packages": ["/etc/passwd"]}),
            422,
            "local path",
        ),
        (
            serde_json::json!({"name": "ok", "packages": ["six @ https://example.com/six.whl"]}),
            422,
            "URL",
        ),
        (
            serde_json::json!({"name": "ok", "requirements": "six\n-r other.txt\n"}),
            422,
            "requirements line 2",
        ),
        (
            serde_json::json!({"name": "ok", "template": "nope"}),
            400,
            "`nope`",
        ),
        (
            serde_json::json!({"name": "ok", "find_links": "/etc"}),
            422,
            "/etc",
        ),
        (serde_json::json!({"name": "ok", "pkgs": []}), 400, "pkgs"),
    ];
    for (body, status, needle) in cases {
        let (got, problem) = post(&host, "/v1/venvs", &body);
        assert_eq!(got, status, "{body} → {problem}");
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(needle),
            "{body}: `{needle}` not in {detail}"
        );
    }
    let out = host.cli(&["venv", "create", "ok", "six;rm -rf /"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("packages[0]"), "{}", out.stderr);
    assert!(volumes_of(&label).is_empty(), "{:?}", volumes_of(&label));
    assert!(
        containers_of(&label).is_empty(),
        "{:?}",
        containers_of(&label)
    );

    // Two concurrent creates of one name: one builds, the other gets 409; one volume.
    let name = unique("race-");
    let body = serde_json::json!({ "name": name, "packages": [pkg] });
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| post(&host, "/v1/venvs", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 409], "{results:?}");
    assert_eq!(volumes_of(&label).len(), 1);

    // The seed's ensure: concurrent calls for one provider all succeed, with one build.
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    post(
                        &host,
                        "/venv/create",
                        &serde_json::json!({"providerName": label.prefix, "modelId": "Small/Model"}),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["success"], true);
    }
    let path = results[0].1["path"].as_str().unwrap().to_string();
    assert_eq!(path, results[1].1["path"].as_str().unwrap());
    assert!(path.ends_with("-small-model"), "{path}");
    assert_eq!(volumes_of(&label).len(), 2);
    let (status, body) = post(
        &host,
        "/venv/delete",
        &serde_json::json!({ "venvPath": path }),
    );
    assert_eq!(
        (status, body["success"].clone()),
        (200, Value::Bool(true)),
        "{body}"
    );
    assert_eq!(volumes_of(&label).len(), 1);

    // A failed build is kept as failed, with the installer's log tail, never ready.
    let broken = unique("broken-");
    let (status, problem) = post(
        &host,
        "/v1/venvs",
        &serde_json::json!({ "name": broken, "packages": ["not-in-the-wheelhouse"] }),
    );
    assert_eq!(status, 422, "{problem}");
    let (_, body) = host.get(&format!("/v1/venvs/{broken}"));
    let failed = json(&body);
    assert_eq!(failed["state"], "failed", "{failed}");
    let tail = failed["log_tail"].to_string();
    assert!(tail.contains("not-in-the-wheelhouse"), "{failed}");
    // A create over a failed venv rebuilds it.
    let (status, rebuilt) = post(
        &host,
        "/v1/venvs",
        &serde_json::json!({ "name": broken, "packages": [pkg] }),
    );
    assert_eq!(status, 201, "{rebuilt}");
    assert_eq!(rebuilt["state"], "ready");

    // What a host that died mid-build leaves: a volume without a record and its job
    // container. A host that starts afterwards reports the venv failed and removes the job.
    let dead = unique("dead-");
    let runtime = rebuilt["runtime"].as_str().unwrap().to_string();
    let volume = format!("beephost-venv-{dead}");
    let made = docker(&[
        "volume",
        "create",
        "--label",
        &label.label(),
        "--label",
        "io.beephost.kind=venv",
        "--label",
        &format!("io.beephost.venv={dead}"),
        "--label",
        &format!("io.beephost.venv-runtime={runtime}"),
        &volume,
    ]);
    assert!(made.status.success(), "{made:?}");
    let job = format!("beephost-job-venv-{dead}");
    let made = docker(&[
        "create",
        "--name",
        &job,
        "--label",
        &label.label(),
        "--label",
        "io.beephost.kind=venv-job",
        "--label",
        &format!("io.beephost.venv={dead}"),
        "-v",
        &format!("{volume}:/venv"),
        &runtime,
    ]);
    assert!(made.status.success(), "{made:?}");
    drop(host);
    let host = Host::start(
        &label,
        &[
            "--no-prepare",
            "--wheelhouse",
            wheels.path().to_str().unwrap(),
            "--no-index",
        ],
        &[],
    );
    let (status, body) = host.get(&format!("/v1/venvs/{dead}"));
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("did not finish"),
        "{v}"
    );
    let gone = docker(&["ps", "-aq", "--filter", &format!("name={job}")]);
    assert!(
        String::from_utf8_lossy(&gone.stdout).trim().is_empty(),
        "job left"
    );
    // The other venvs are read back from their records after the restart.
    let (_, body) = host.get(&format!("/v1/venvs/{broken}"));
    let v = json(&body);
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(packages(&v), vec![(pkg.clone(), "0.3".to_string())]);
}

/// The package index, when containers can reach it (through the host's CA bundle). Skips, and
/// says so, where they cannot.
#[test]
fn venv_from_the_package_index_when_reachable() {
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if !ca.is_file() {
        eprintln!(
            "skipped venv_from_the_package_index_when_reachable: no {}",
            ca.display()
        );
        return;
    }
    let label = TestLabel::new("venv-index");
    let wheels = tempfile::tempdir().unwrap();
    let rootfs = rootfs();
    let host = Host::start(
        &label,
        &[
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--ca-bundle",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    host.wait_ready(READY_TIMEOUT);
    let _ = wheels;
    let (_, body) = host.get("/v1/runtimes");
    let runtime = json(&body)["runtimes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let probe = docker(&[
        "run",
        "--rm",
        "--label",
        &label.label(),
        "-v",
        &format!("{}:/ca.pem:ro", ca.display()),
        "-e",
        "SSL_CERT_FILE=/ca.pem",
        "--entrypoint",
        "python3",
        &runtime,
        "-c",
        "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/six/', timeout=10)",
    ]);
    if !probe.status.success() {
        eprintln!(
            "skipped venv_from_the_package_index_when_reachable: containers cannot reach pypi.org: {}",
            String::from_utf8_lossy(&probe.stderr).lines().last().unwrap_or("")
        );
        return;
    }
    let started = Instant::now();
    let first = host.cli(&["--output", "json", "venv", "create", &unique("idx-"), "six"]);
    assert_eq!(first.code, 0, "{first:?}\n{}", host.log());
    let venv = json(first.stdout.lines().last().unwrap())["venv"].clone();
    assert!(packages(&venv).iter().any(|(n, _)| n == "six"), "{venv}");
    eprintln!("index build took {:?}", started.elapsed());
    // The second build of the same package takes it from the shared cache.
    let second = host.cli(&[
        "--output",
        "json",
        "venv",
        "create",
        &unique("idx2-"),
        "six",
    ]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        !second.stdout.contains("Downloading"),
        "the second build downloaded again: {}",
        second.stdout
    );
    // The admin venv: the management tools, pip and uv, from the index.
    let admin = host.cli(&["--output", "json", "venv", "admin"]);
    assert_eq!(admin.code, 0, "{admin:?}\n{}", host.log());
    let venv = admin
        .stdout
        .lines()
        .rev()
        .map(json)
        .find(|l| l.get("venv").is_some())
        .expect("the admin venv")["venv"]
        .clone();
    let names: Vec<String> = packages(&venv)
        .into_iter()
        .map(|(n, _)| n.to_lowercase())
        .collect();
    assert!(
        names.contains(&"pip".to_string()) && names.contains(&"uv".to_string()),
        "{venv}"
    );
}

/// The venv benchmark (scripts/bench-venv.sh runs it): a venv with one small package from the
/// wheelhouse, built by beephost cold (no package cache volume) and warm, beside the plain
/// `python -m venv` + `pip install` in the same runtime image, in one run.
#[test]
#[ignore = "a benchmark: scripts/bench-venv.sh"]
fn bench_venv_create() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let label = TestLabel::new("venv-bench");
    let wheels = tempfile::tempdir().unwrap();
    let pkg = unique("bhbench");
    write_wheel(wheels.path(), &pkg, "1.0", 1);
    let host = venv_host(&label, wheels.path(), &[]);
    let (_, body) = host.get("/v1/runtimes");
    let runtime = json(&body)["runtimes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wh = format!("{}:/wh:ro", wheels.path().display());

    let mut plain = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let build = |name: &str| -> Duration {
        let started = Instant::now();
        let (status, venv) = post(
            &host,
            "/v1/venvs",
            &serde_json::json!({ "name": name, "packages": [pkg] }),
        );
        let took = started.elapsed();
        assert_eq!(status, 201, "{venv}");
        let (status, _) = http("DELETE", &format!("{}/v1/venvs/{name}", host.url), None);
        assert_eq!(status, 200);
        took
    };
    for i in 0..runs {
        // Plain: the runtime's Python makes a venv (with pip) and its pip installs.
        let started = Instant::now();
        let out = docker(&[
            "run", "--rm", "--network", "none", "--label", &label.label(), "-v", &wh,
            "--entrypoint", "sh", &runtime, "-c",
            &format!("python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --no-index --find-links /wh {pkg}"),
        ]);
        plain.push(started.elapsed());
        assert!(out.status.success(), "{out:?}");
        // Cold: no package cache volume yet.
        for v in volumes_of_kind(&label, "package-cache") {
            docker(&["volume", "rm", "-f", &v]);
        }
        cold.push(build(&format!("cold-{i}")));
        warm.push(build(&format!("warm-{i}")));
    }
    let report = |what: &str, d: &mut Vec<Duration>| {
        d.sort();
        let median = d[d.len() / 2];
        let p99 = d[((d.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
        println!(
            "BENCH {what:<28} n={} median={:>6.0} ms p99={:>6.0} ms",
            d.len(),
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        median
    };
    let p = report("plain venv + pip install", &mut plain);
    report("beephost create, cold cache", &mut cold);
    let w = report("beephost create, warm cache", &mut warm);
    println!(
        "BENCH warm / plain = {:.2}",
        w.as_secs_f64() / p.as_secs_f64()
    );
}

fn volumes_of_kind(label: &TestLabel, kind: &str) -> Vec<String> {
    let out = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label={}", label.label()),
        "--filter",
        &format!("label=io.beephost.kind={kind}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
