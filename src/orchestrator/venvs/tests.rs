//! Unit tests of the venv service's orchestration, over the recording fake engine: what the
//! job looks like, how outcomes become states, and that refusals make nothing.

use std::sync::Arc;

use super::*;
use crate::orchestrator::runtimes::AgentPayload;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerInfo, RunOutput};

fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn setup(settings: VenvSettings) -> (Arc<FakeRuntime>, Runtimes, Venvs) {
    let fake = Arc::new(FakeRuntime::default());
    let extra = labels_of(&[(labels::TEST, "unit")]);
    let mut runtime_labels = labels::base("runtime", &extra);
    runtime_labels.insert(labels::PYTHON.into(), "3.11.2".into());
    fake.build_image(
        bytes::Bytes::new(),
        "beephost-runtime:3.11.2-test",
        &runtime_labels,
        &|_| {},
    )
    .await
    .unwrap();
    let runtimes = Runtimes::new(
        fake.clone(),
        extra.clone(),
        AgentPayload {
            binary: std::env::current_exe().unwrap(),
        },
    );
    let venvs = Venvs::new(fake.clone(), extra, settings);
    (fake, runtimes, venvs)
}

fn offline() -> VenvSettings {
    VenvSettings {
        wheelhouse: Some(std::env::temp_dir()),
        no_index: true,
        ..Default::default()
    }
}

/// A job that behaves like the driver: prints installer output and a record (or a failure).
fn scripted(fake: &FakeRuntime, ok: bool) {
    fake.set_job_handler(Arc::new(move |job, out| {
        let spec: serde_json::Value = serde_json::from_str(job.cmd.last().unwrap()).unwrap();
        if spec["action"] == "read" {
            for name in spec["dirs"].as_object().unwrap().keys() {
                out(&format!(
                    "{MARK}{}",
                    serde_json::json!({"event": "missing", "name": name})
                ));
            }
            return RunOutput {
                exit_code: 0,
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        out("Processing /wheelhouse/six-1.16.0-py2.py3-none-any.whl");
        if !ok {
            out("ERROR: No matching distribution found for six");
            out(&format!(
                "{MARK}{}",
                serde_json::json!({"event": "failed", "error": "installing the packages failed",
                                   "log_tail": ["ERROR: No matching distribution found for six"]})
            ));
            return RunOutput {
                exit_code: 1,
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        let record = serde_json::json!({
            "python": "3.11.2", "installer": "pip", "requested": spec["requested"],
            "packages": [{"name": "six", "version": "1.16.0"}], "size": 1234,
            "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"
        });
        out(&format!(
            "{MARK}{}",
            serde_json::json!({"event": "record", "record": record})
        ));
        RunOutput {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
        }
    }));
}

fn req(name: &str, packages: &[&str]) -> CreateVenv {
    CreateVenv {
        name: name.into(),
        packages: packages.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_build_is_one_hardened_offline_job_and_ends_ready() {
    let (fake, runtimes, venvs) = setup(offline()).await;
    scripted(&fake, true);
    let lines = std::sync::Mutex::new(Vec::new());
    let progress = |p: VenvProgress| lines.lock().unwrap().push(p);
    let venv = venvs
        .create(&runtimes, req("ml", &["six"]), &progress)
        .await
        .unwrap();
    assert_eq!(venv.state, VenvState::Ready);
    assert_eq!(
        venv.packages,
        vec![Package {
            name: "six".into(),
            version: "1.16.0".into()
        }]
    );
    assert_eq!(venv.requested, vec!["six".to_string()]);
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.phase == VenvPhase::Install && p.message.contains("six-1.16.0")));

    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.name, "beephost-job-venv-ml");
    assert!(!job.network, "no index, no network");
    assert_eq!(job.labels[labels::TEST], "unit");
    assert_eq!(job.labels[labels::VENV], "ml");
    assert_eq!(job.cmd[0], "python3", "exec form, no shell: {:?}", job.cmd);
    assert!(job.cmd.iter().all(|a| a != "sh" && a != "-lc"));
    let venv_mount = job.volumes.iter().find(|v| v.target == VENV_MOUNT).unwrap();
    assert_eq!(venv_mount.volume, "beephost-venv-ml");
    assert_eq!(
        job.read_only_binds,
        vec![(std::env::temp_dir(), WHEELHOUSE_MOUNT.to_string())],
        "only the wheelhouse from the host"
    );
    let spec: serde_json::Value = serde_json::from_str(job.cmd.last().unwrap()).unwrap();
    assert_eq!(spec["packages"], serde_json::json!(["six"]));
    assert!(spec["source_args"].to_string().contains("--no-index"));

    let volume = fake
        .volumes()
        .into_iter()
        .find(|v| v.name == "beephost-venv-ml")
        .unwrap();
    assert_eq!(volume.labels[labels::KIND], "venv");
    assert_eq!(volume.labels[labels::TEST], "unit");

    // A second create of the name is a conflict, and builds nothing.
    let err = venvs
        .create(&runtimes, req("ml", &["six"]), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(fake.jobs().len(), 1);
}

#[tokio::test]
async fn an_index_build_gets_a_network_and_the_ca_bundle() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    let settings = VenvSettings {
        index_url: Some("https://pypi.example/simple".into()),
        ca_bundle: Some(ca.path().to_path_buf()),
        ..Default::default()
    };
    let (fake, runtimes, venvs) = setup(settings).await;
    scripted(&fake, true);
    venvs
        .create(&runtimes, req("web", &["six"]), &|_| {})
        .await
        .unwrap();
    let job = &fake.jobs()[0];
    assert!(job.network);
    assert!(job
        .read_only_binds
        .contains(&(ca.path().to_path_buf(), CA_MOUNT.to_string())));
    assert!(job
        .env
        .contains(&("PIP_CERT".to_string(), CA_MOUNT.to_string())));
    let spec: serde_json::Value = serde_json::from_str(job.cmd.last().unwrap()).unwrap();
    assert!(spec["source_args"]
        .to_string()
        .contains("https://pypi.example/simple"));
}

#[tokio::test]
async fn a_failed_build_stays_failed_with_its_log_and_is_replaced_by_a_create() {
    let (fake, runtimes, venvs) = setup(offline()).await;
    scripted(&fake, false);
    let err = venvs
        .create(&runtimes, req("bad", &["six"]), &|_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("No matching distribution"),
        "{err}"
    );
    let listed = venvs.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, VenvState::Failed);
    assert!(listed[0].log_tail.iter().any(|l| l.contains("No matching")));
    scripted(&fake, true);
    let venv = venvs
        .create(&runtimes, req("bad", &["six"]), &|_| {})
        .await
        .unwrap();
    assert_eq!(venv.state, VenvState::Ready);
}

#[tokio::test]
async fn a_volume_without_a_record_is_failed_after_a_restart() {
    let (fake, _runtimes, venvs) = setup(offline()).await;
    scripted(&fake, true);
    let runtime = fake.images()[0].id.clone();
    let mut l = labels::base("venv", &labels_of(&[(labels::TEST, "unit")]));
    l.insert(labels::VENV.into(), "half".into());
    l.insert(labels::VENV_RUNTIME.into(), runtime);
    fake.create_volume("beephost-venv-half", &l).await.unwrap();
    let venv = venvs.get("half").await.unwrap();
    assert_eq!(venv.state, VenvState::Failed);
    assert!(venv.error.unwrap().contains("did not finish"));
}

#[tokio::test]
async fn bad_input_touches_nothing() {
    let (fake, runtimes, venvs) = setup(offline()).await;
    let before = fake.calls().len();
    for bad in [
        req("Bad", &[]),
        req("ok", &["--index-url=https://x"]),
        req("ok", &["six==", "x"]),
        CreateVenv {
            template: Some("nope".into()),
            ..req("ok", &[])
        },
        CreateVenv {
            requirements: Some("-e .\n".into()),
            ..req("ok", &[])
        },
        CreateVenv {
            sources: Sources {
                find_links: Some("/etc".into()),
                ..Default::default()
            },
            ..req("ok", &[])
        },
    ] {
        assert!(venvs.create(&runtimes, bad, &|_| {}).await.is_err());
    }
    assert_eq!(fake.calls().len(), before, "{:?}", fake.calls());
}

#[tokio::test]
async fn delete_refuses_while_backends_use_it_unless_forced() {
    let (fake, runtimes, venvs) = setup(offline()).await;
    scripted(&fake, true);
    venvs
        .create(&runtimes, req("used", &["six"]), &|_| {})
        .await
        .unwrap();
    let mut l = labels::base("backend", &labels_of(&[(labels::TEST, "unit")]));
    l.insert(labels::VENV.into(), "used".into());
    fake.add_container_info(ContainerInfo {
        id: "c1".into(),
        name: "b1".into(),
        labels: l,
        state: "running".into(),
        created: 0,
    });
    assert_eq!(
        venvs.get("used").await.unwrap().backends.unwrap()[0].name,
        "b1"
    );
    let err = venvs.delete("used", false).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(_)) && err.to_string().contains("b1"),
        "{err}"
    );
    assert_eq!(fake.volumes().len(), 2, "venv and cache stay");
    let removed = venvs.delete("used", true).await.unwrap();
    assert_eq!(removed[0].id, "c1");
    assert!(fake.calls().contains(&"remove_container".to_string()));
    assert!(!fake
        .volumes()
        .iter()
        .any(|v| v.name == "beephost-venv-used"));
    assert!(matches!(
        venvs.delete("used", false).await.unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[tokio::test]
async fn installs_track_what_was_asked_for() {
    let (fake, runtimes, venvs) = setup(offline()).await;
    scripted(&fake, true);
    venvs
        .create(&runtimes, req("t", &["six==1.16.0"]), &|_| {})
        .await
        .unwrap();
    let change = |packages: &[&str], remove: &[&str]| ChangePackages {
        packages: packages.iter().map(|p| p.to_string()).collect(),
        remove: remove.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let v = venvs
        .change("t", change(&["attrs", "Six>=1"], &[]), &|_| {})
        .await
        .unwrap();
    assert_eq!(v.requested, vec!["attrs".to_string(), "Six>=1".to_string()]);
    let v = venvs
        .change("t", change(&[], &["six"]), &|_| {})
        .await
        .unwrap();
    assert_eq!(v.requested, vec!["attrs".to_string()]);
    let err = venvs
        .change("t", change(&["x"], &["y"]), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("remove"), "{err}");
    let err = venvs
        .change("t", change(&[], &["six>=1"]), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("remove[0]"), "{err}");
}
