//! `start`, `stop`, `logs` and `exec`: backends from the command line.

use serde_json::{json, Value};

use super::client::{ApiClient, ClientError};
use super::{
    output, ExecArgs, ExitCode, GlobalArgs, NameArg, Output, StartArgs, StopArgs, Transport,
};

fn print_json(v: &Value) {
    println!("{v}");
}

fn s(v: &Value, k: &str) -> String {
    super::output::field(v, k, "-")
}

/// The path segment of a backend (its id or name), checked before it goes into a URL.
pub(crate) fn segment(name: &str) -> Result<&str, ClientError> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(name)
    } else {
        Err(ClientError {
            message: format!("`{name}` is not a backend name or id"),
            hint: Some("see `beephost status` for the backends".into()),
            exit: ExitCode::Usage,
        })
    }
}

pub async fn start(global: &GlobalArgs, args: StartArgs) -> ExitCode {
    let transport = match args.transport {
        Transport::Http => "http",
        Transport::Pipe => "pipe",
        Transport::Rpc => "rpc",
    };
    let mut limits = json!({});
    if let Some(m) = &args.memory {
        limits["memory"] = json!(m);
    }
    if let Some(c) = args.cpus {
        limits["cpus"] = json!(c);
    }
    if let Some(p) = args.pids {
        limits["pids"] = json!(p);
    }
    if let Some(t) = args.timeout {
        limits["timeout"] = json!(t);
    }
    let mut ttl = json!({});
    if let Some(i) = &args.idle_ttl {
        ttl["idle"] = json!(i);
    }
    if let Some(h) = &args.ttl {
        ttl["hard"] = json!(h);
    }
    let body = json!({
        "transport": transport,
        "venv": args.venv,
        "name": args.name,
        "limits": limits,
        "ttl": ttl,
        "network": args.network,
    });
    let client = ApiClient::new(global);
    match client.post::<_, Value>("/v1/backends", &body).await {
        Ok(b) if global.output == Output::Json => {
            print_json(&b);
            ExitCode::Ok
        }
        Ok(b) => {
            println!("backend {} started ({})", s(&b, "name"), s(&b, "id"));
            println!("endpoint: {}", s(&b, "endpoint"));
            println!("token:    {}", s(&b, "token"));
            println!(
                "expires:  idle {}, at the latest {}",
                s(&b, "idle_expires_at"),
                s(&b, "expires_at")
            );
            ExitCode::Ok
        }
        Err(e) => e.report(),
    }
}

pub async fn stop(global: &GlobalArgs, args: StopArgs) -> ExitCode {
    let client = ApiClient::new(global);
    let names: Vec<String> = if args.all {
        match client.get::<Value>("/v1/backends").await {
            Ok(v) => v["backends"]
                .as_array()
                .map(|a| a.iter().map(|b| s(b, "id")).collect())
                .unwrap_or_default(),
            Err(e) => return e.report(),
        }
    } else {
        match args.name {
            Some(n) => vec![n],
            None => {
                output::error(
                    "name a backend to stop, or pass --all",
                    Some("see `beephost status`"),
                );
                return ExitCode::Usage;
            }
        }
    };
    let mut stopped = Vec::new();
    for name in names {
        let result = match segment(&name) {
            Ok(seg) => client.delete::<Value>(&format!("/v1/backends/{seg}")).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(b) => {
                if global.output == Output::Table {
                    println!("stopped {} ({})", s(&b, "name"), s(&b, "id"));
                }
                stopped.push(b);
            }
            Err(e) => return e.report(),
        }
    }
    if global.output == Output::Json {
        print_json(&json!({ "stopped": stopped }));
    } else if stopped.is_empty() {
        println!("no backends to stop");
    }
    ExitCode::Ok
}

pub async fn logs(global: &GlobalArgs, args: NameArg) -> ExitCode {
    let client = ApiClient::new(global);
    let seg = match segment(&args.name) {
        Ok(seg) => seg,
        Err(e) => return e.report(),
    };
    match client
        .get::<Value>(&format!("/v1/backends/{seg}/logs"))
        .await
    {
        Ok(v) if global.output == Output::Json => {
            print_json(&v);
            ExitCode::Ok
        }
        Ok(v) => {
            for e in v["events"].as_array().into_iter().flatten() {
                println!("{} {}", s(e, "level"), s(e, "message"));
            }
            for line in v["stderr"].as_array().into_iter().flatten() {
                println!("stderr {}", line.as_str().unwrap_or_default());
            }
            ExitCode::Ok
        }
        Err(e) => e.report(),
    }
}

pub async fn exec(global: &GlobalArgs, args: ExecArgs) -> ExitCode {
    let code = match (&args.code, &args.file) {
        (Some(code), None) => code.clone(),
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(code) => code,
            Err(e) => {
                output::error(&format!("cannot read {}: {e}", file.display()), None);
                return ExitCode::Usage;
            }
        },
        _ => {
            output::error(
                "give the code as an argument or with -f FILE (one of them)",
                None,
            );
            return ExitCode::Usage;
        }
    };
    let Some(backend) = args.backend else {
        output::error(
            "`beephost exec` without --backend (the stateless warm pool) is not built yet",
            Some("start a backend with `beephost start http` and pass --backend NAME"),
        );
        return ExitCode::NotBuilt;
    };
    let seg = match segment(&backend) {
        Ok(seg) => seg,
        Err(e) => return e.report(),
    };
    let body = json!({ "code": code, "session": args.session, "timeout": args.timeout });
    let client = ApiClient::new(global);
    let reply: Value = match client
        .post(&format!("/v1/backends/{seg}/execute"), &body)
        .await
    {
        Ok(v) => v,
        Err(e) => return e.report(),
    };
    let failed = !reply.get("error").is_none_or(Value::is_null);
    if global.output == Output::Json {
        print_json(&reply);
        return if failed {
            ExitCode::Failure
        } else {
            ExitCode::Ok
        };
    }
    if let Some(out) = reply.get("stdout").and_then(Value::as_str) {
        print!("{out}");
    }
    if let Some(err) = reply.get("stderr").and_then(Value::as_str) {
        eprint!("{err}");
    }
    if let Some(repr) = reply.pointer("/result/repr").and_then(Value::as_str) {
        println!("{repr}");
    }
    if failed {
        let e = &reply["error"];
        match e
            .get("traceback")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            Some(tb) => eprint!("{tb}"),
            None => eprintln!("{}: {}", s(e, "type"), s(e, "message")),
        }
        if reply.get("session_lost").and_then(Value::as_bool) == Some(true) {
            eprintln!("hint: the session's state was lost");
        }
        return ExitCode::Failure;
    }
    ExitCode::Ok
}
