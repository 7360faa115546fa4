//! `beephost status`: runtimes (venvs and backends join as they land).

use serde_json::{json, Value};

use super::client::ApiClient;
use super::{output, ExitCode, GlobalArgs, Output, StatusArgs};

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> ExitCode {
    if let Some(name) = args.name {
        output::error(
            &format!("status of backend `{name}` is not built yet"),
            Some("backends arrive with issue 5; `beephost status` lists runtimes today"),
        );
        return ExitCode::NotBuilt;
    }
    let client = ApiClient::new(global);
    let runtimes: Value = match client.get("/v1/runtimes").await {
        Ok(v) => v,
        Err(e) => return e.report(),
    };
    let list = runtimes["runtimes"].as_array().cloned().unwrap_or_default();
    if global.output == Output::Json {
        println!("{}", json!({ "runtimes": list }));
        return ExitCode::Ok;
    }
    let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let rows: Vec<Vec<String>> = list
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
    println!("RUNTIMES");
    if rows.is_empty() {
        println!("(none: run `beephost init`, or start the host with --rootfs)");
    } else {
        output::table(&["TAG", "PYTHON", "SOURCE", "SIZE", "CREATED"], &rows);
    }
    ExitCode::Ok
}
