//! `beephost init`: asks the host for a runtime and renders its NDJSON progress.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::client::{problem_error, ApiClient, ClientError};
use super::{ExitCode, GlobalArgs, InitArgs, Output};

pub async fn run(global: &GlobalArgs, args: InitArgs) -> ExitCode {
    let mut body = json!({ "force": args.force });
    if let Some(rootfs) = &args.rootfs {
        // The host reads the file, so it gets an absolute path.
        let path = std::path::absolute(rootfs).unwrap_or_else(|_| rootfs.clone());
        body["rootfs"] = json!(path);
    } else if let Some(image) = &args.from_image {
        body["image"] = json!(image);
    } else if let Some(python) = &args.python {
        body["python"] = json!(python);
    }
    let client = ApiClient::new(global);
    let mut view = ProgressView::new(global.output);
    let mut runtime = None;
    let result = client
        .post_ndjson("/v1/runtimes", &body, |line| {
            if let Some(err) = line.get("error") {
                let status = err.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
                return Err(problem_error(status, err, ""));
            }
            if global.output == Output::Json {
                println!("{line}");
            } else if let Some(r) = line.get("runtime") {
                runtime = Some(r.clone());
            } else {
                view.update(&line);
            }
            Ok(())
        })
        .await;
    view.finish();
    match result {
        Err(e) => e.report(),
        Ok(()) if global.output == Output::Json => ExitCode::Ok,
        Ok(()) => match runtime {
            Some(r) => {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                println!(
                    "runtime {} ready (python {}, from {} {})",
                    s("tag"),
                    s("python"),
                    s("source"),
                    s("source_ref")
                );
                ExitCode::Ok
            }
            None => ClientError {
                message: "the host ended the stream without a runtime".into(),
                hint: Some("see the host's log".into()),
                exit: ExitCode::Failure,
            }
            .report(),
        },
    }
}

/// Progress bars on a terminal, nothing otherwise.
struct ProgressView {
    multi: Option<MultiProgress>,
    step: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
}

impl ProgressView {
    fn new(output: Output) -> ProgressView {
        let tty = std::io::stderr().is_terminal() && output == Output::Table;
        ProgressView {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            step: None,
            bars: HashMap::new(),
        }
    }

    fn update(&mut self, line: &Value) {
        let phase = line.get("phase").and_then(Value::as_str).unwrap_or("");
        let message = line.get("message").and_then(Value::as_str).unwrap_or("");
        let current = line.get("current").and_then(Value::as_u64);
        let total = line.get("total").and_then(Value::as_u64);
        let id = line.get("id").and_then(Value::as_str);
        // Not a terminal: stay quiet (`--output json` gives every progress line).
        let Some(multi) = &self.multi else {
            return;
        };
        if let (Some(current), Some(total)) = (current, total) {
            let key = format!("{phase}/{}", id.unwrap_or(""));
            let bar = self.bars.entry(key).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(
                    id.map(|i| i.chars().take(12).collect())
                        .unwrap_or(phase.to_string()),
                );
                bar
            });
            bar.set_length(total);
            bar.set_position(current);
            bar.set_message(message.to_string());
            return;
        }
        let step = self.step.get_or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>8} {wide_msg}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        step.set_prefix(phase.to_string());
        step.set_message(message.to_string());
    }

    fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        if let Some(step) = &self.step {
            step.finish_and_clear();
        }
    }
}
