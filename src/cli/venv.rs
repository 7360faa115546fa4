//! `beephost venv …`: create, list, show, install, delete, admin, templates, over `/v1/venvs`.
//!
//! Builds stream NDJSON (`?stream=true`); on a terminal the steps and the installer's output
//! print as they come, with `--output json` every line is passed through as it is.

use std::path::Path;

use serde_json::{json, Value};

use super::client::{problem_error, ApiClient, ClientError};
use super::{
    output, ExitCode, GlobalArgs, Output, VenvCommand, VenvCreateArgs, VenvInstallArgs,
    VenvSourceArgs,
};

pub async fn run(global: &GlobalArgs, command: VenvCommand) -> ExitCode {
    let client = ApiClient::new(global);
    let result = match command {
        VenvCommand::Create(args) => create(global, &client, args).await,
        VenvCommand::Admin(sources) => {
            let args = VenvCreateArgs {
                name: "admin".into(),
                packages: Vec::new(),
                requirements: None,
                template: Some("admin".into()),
                runtime: None,
                sources,
            };
            create(global, &client, args).await
        }
        VenvCommand::List => list(global, &client).await,
        VenvCommand::Show(arg) => show(global, &client, &arg.name).await,
        VenvCommand::Install(args) => install(global, &client, args).await,
        VenvCommand::Delete(args) => {
            let path = format!("/v1/venvs/{}?force={}", args.name, args.force);
            client.delete::<Value>(&path).await.map(|v| {
                if global.output == Output::Json {
                    println!("{v}");
                } else {
                    let removed = v["removed_backends"].as_array().map_or(0, Vec::len);
                    if removed > 0 {
                        println!(
                            "venv {} deleted (and {removed} backend(s) using it)",
                            args.name
                        );
                    } else {
                        println!("venv {} deleted", args.name);
                    }
                }
            })
        }
        VenvCommand::Templates => templates(global, &client).await,
    };
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => e.report(),
    }
}

async fn create(
    global: &GlobalArgs,
    client: &ApiClient,
    args: VenvCreateArgs,
) -> Result<(), ClientError> {
    let mut body = json!({
        "name": args.name,
        "packages": args.packages,
        "template": args.template,
        "runtime": args.runtime,
    });
    if let Some(file) = &args.requirements {
        body["requirements"] = json!(read_requirements(file)?);
    }
    add_sources(&mut body, &args.sources);
    let venv = stream(global, client, "/v1/venvs?stream=true", &body).await?;
    if global.output == Output::Table {
        summary(&venv);
    }
    Ok(())
}

async fn install(
    global: &GlobalArgs,
    client: &ApiClient,
    args: VenvInstallArgs,
) -> Result<(), ClientError> {
    let mut body = if args.remove {
        json!({ "remove": args.packages })
    } else {
        json!({ "packages": args.packages })
    };
    if let Some(file) = &args.requirements {
        body["requirements"] = json!(read_requirements(file)?);
    }
    add_sources(&mut body, &args.sources);
    let path = format!("/v1/venvs/{}/packages?stream=true", args.name);
    let venv = stream(global, client, &path, &body).await?;
    if global.output == Output::Table {
        summary(&venv);
    }
    Ok(())
}

fn add_sources(body: &mut Value, sources: &VenvSourceArgs) {
    if let Some(dir) = &sources.find_links {
        // The host reads the directory, so it gets an absolute path.
        body["find_links"] = json!(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    }
    if sources.no_index {
        body["no_index"] = json!(true);
    }
    if let Some(url) = &sources.index_url {
        body["index_url"] = json!(url);
    }
}

fn read_requirements(file: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(file).map_err(|e| ClientError {
        message: format!("cannot read requirements file {}: {e}", file.display()),
        hint: None,
        exit: ExitCode::Usage,
    })
}

/// Posts `body` to `path`, renders the NDJSON progress, and returns the final venv.
async fn stream(
    global: &GlobalArgs,
    client: &ApiClient,
    path: &str,
    body: &Value,
) -> Result<Value, ClientError> {
    let mut venv = None;
    client
        .post_ndjson(path, body, |line| {
            if global.output == Output::Json {
                println!("{line}");
            }
            if let Some(err) = line.get("error") {
                let status = err.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
                return Err(problem_error(status, err, ""));
            }
            if let Some(v) = line.get("venv") {
                venv = Some(v.clone());
            } else if global.output == Output::Table {
                let phase = line["phase"].as_str().unwrap_or("");
                let message = line["message"].as_str().unwrap_or("");
                eprintln!("{phase:>8} {message}");
            }
            Ok(())
        })
        .await?;
    venv.ok_or_else(|| ClientError {
        message: "the host ended the stream without a venv".into(),
        hint: Some("see the host's log".into()),
        exit: ExitCode::Failure,
    })
}

fn summary(venv: &Value) {
    let n = venv["packages"].as_array().map_or(0, Vec::len);
    println!(
        "venv {} {} (python {}, {n} package(s), {})",
        s(venv, "name"),
        s(venv, "state"),
        s(venv, "python"),
        output::size(venv["size"].as_u64().unwrap_or(0))
    );
}

fn s(v: &Value, k: &str) -> String {
    super::output::field(v, k, "")
}

async fn list(global: &GlobalArgs, client: &ApiClient) -> Result<(), ClientError> {
    let v: Value = client.get("/v1/venvs").await?;
    if global.output == Output::Json {
        println!("{v}");
        return Ok(());
    }
    let venvs = v["venvs"].as_array().cloned().unwrap_or_default();
    if venvs.is_empty() {
        println!("(no venvs: create one with `beephost venv create NAME PACKAGE…`)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = venvs
        .iter()
        .map(|v| {
            vec![
                s(v, "name"),
                s(v, "state"),
                s(v, "python"),
                v["packages"].as_array().map_or(0, Vec::len).to_string(),
                v["size"].as_u64().map(output::size).unwrap_or_default(),
                s(v, "created"),
            ]
        })
        .collect();
    output::table(
        &["NAME", "STATE", "PYTHON", "PACKAGES", "SIZE", "CREATED"],
        &rows,
    );
    Ok(())
}

async fn show(global: &GlobalArgs, client: &ApiClient, name: &str) -> Result<(), ClientError> {
    let v: Value = client.get(&format!("/v1/venvs/{name}")).await?;
    if global.output == Output::Json {
        println!("{v}");
        return Ok(());
    }
    println!("name:      {}", s(&v, "name"));
    println!("state:     {}", s(&v, "state"));
    println!("volume:    {}", s(&v, "volume"));
    println!("runtime:   {}", s(&v, "runtime"));
    println!("python:    {}", s(&v, "python"));
    if let Some(size) = v["size"].as_u64() {
        println!("size:      {}", output::size(size));
    }
    println!("created:   {}", s(&v, "created"));
    let requested: Vec<&str> = v["requested"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("requested: {}", requested.join(" "));
    let backends: Vec<String> = v["backends"]
        .as_array()
        .map(|a| a.iter().map(|b| s(b, "name")).collect())
        .unwrap_or_default();
    println!(
        "backends:  {}",
        if backends.is_empty() {
            "(none)".to_string()
        } else {
            backends.join(" ")
        }
    );
    if let Some(error) = v["error"].as_str() {
        println!("error:     {error}");
        for line in v["log_tail"].as_array().into_iter().flatten() {
            println!("  {}", line.as_str().unwrap_or(""));
        }
    }
    let rows: Vec<Vec<String>> = v["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| vec![s(p, "name"), s(p, "version")])
        .collect();
    if !rows.is_empty() {
        println!();
        output::table(&["PACKAGE", "VERSION"], &rows);
    }
    Ok(())
}

async fn templates(global: &GlobalArgs, client: &ApiClient) -> Result<(), ClientError> {
    let v: Value = client.get("/v1/venv-templates").await?;
    if global.output == Output::Json {
        println!("{v}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let packages: Vec<&str> = t["packages"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            vec![s(t, "name"), packages.join(" "), s(t, "description")]
        })
        .collect();
    output::table(&["TEMPLATE", "PACKAGES", "DESCRIPTION"], &rows);
    Ok(())
}
