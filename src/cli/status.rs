//! `beephost status [NAME]`: runtimes, venvs and backends, or one backend.

use serde_json::{json, Value};

use super::client::ApiClient;
use super::{output, ExitCode, GlobalArgs, Output, StatusArgs};

fn s(v: &Value, k: &str) -> String {
    super::output::field(v, k, "")
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> ExitCode {
    let client = ApiClient::new(global);
    if let Some(name) = args.name {
        if let Err(e) = super::backends::segment(&name) {
            return e.report();
        }
        return match client.get::<Value>(&format!("/v1/backends/{name}")).await {
            Ok(b) if global.output == Output::Json => {
                println!("{b}");
                ExitCode::Ok
            }
            Ok(b) => {
                for key in [
                    "name",
                    "id",
                    "state",
                    "transport",
                    "endpoint",
                    "venv",
                    "created",
                    "idle_expires_at",
                    "expires_at",
                    "container",
                ] {
                    println!("{key:<16} {}", s(&b, key));
                }
                println!("{:<16} {}", "limits", b["limits"]);
                let uptime = b["uptime_secs"].as_u64().unwrap_or(0);
                println!(
                    "{:<16} {}",
                    "uptime",
                    humantime::format_duration(std::time::Duration::from_secs(uptime))
                );
                let sessions = b["sessions"]
                    .as_array()
                    .map(|a| a.len().to_string())
                    .unwrap_or_else(|| "?".into());
                println!("{:<16} {sessions}", "sessions");
                let memory = b["memory_bytes"]
                    .as_u64()
                    .map(output::size)
                    .unwrap_or_else(|| "?".into());
                println!("{:<16} {memory}", "memory");
                ExitCode::Ok
            }
            Err(e) => e.report(),
        };
    }
    let runtimes: Value = match client.get("/v1/runtimes").await {
        Ok(v) => v,
        Err(e) => return e.report(),
    };
    let backends: Value = match client.get("/v1/backends").await {
        Ok(v) => v,
        Err(e) => return e.report(),
    };
    // Venvs are listed when the host serves them.
    let venvs: Value = client
        .get("/v1/venvs")
        .await
        .unwrap_or(json!({ "venvs": [] }));
    let list = |v: &Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    let (runtimes, venvs, backends) = (
        list(&runtimes, "runtimes"),
        list(&venvs, "venvs"),
        list(&backends, "backends"),
    );
    if global.output == Output::Json {
        println!(
            "{}",
            json!({ "runtimes": runtimes, "venvs": venvs, "backends": backends })
        );
        return ExitCode::Ok;
    }
    println!("RUNTIMES");
    if runtimes.is_empty() {
        println!("(none: run `beephost init`, or start the host with --rootfs)");
    } else {
        let rows: Vec<Vec<String>> = runtimes
            .iter()
            .map(|r| {
                vec![
                    s(r, "tag"),
                    s(r, "python"),
                    format!("{} {}", s(r, "source"), s(r, "source_ref")),
                    output::size(r.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    s(r, "created"),
                ]
            })
            .collect();
        output::table(&["TAG", "PYTHON", "SOURCE", "SIZE", "CREATED"], &rows);
    }
    if !venvs.is_empty() {
        println!("\nVENVS");
        let rows: Vec<Vec<String>> = venvs
            .iter()
            .map(|v| {
                vec![
                    s(v, "name"),
                    s(v, "state"),
                    s(v, "python"),
                    output::size(v.get("size").and_then(Value::as_u64).unwrap_or(0)),
                ]
            })
            .collect();
        output::table(&["NAME", "STATE", "PYTHON", "SIZE"], &rows);
    }
    println!("\nBACKENDS");
    if backends.is_empty() {
        println!("(none: start one with `beephost start http`)");
    } else {
        let rows: Vec<Vec<String>> = backends
            .iter()
            .map(|b| {
                vec![
                    s(b, "name"),
                    s(b, "state"),
                    s(b, "transport"),
                    s(b, "endpoint"),
                    s(b, "venv"),
                    s(b, "created"),
                ]
            })
            .collect();
        output::table(
            &["NAME", "STATE", "TRANSPORT", "ENDPOINT", "VENV", "CREATED"],
            &rows,
        );
    }
    ExitCode::Ok
}
