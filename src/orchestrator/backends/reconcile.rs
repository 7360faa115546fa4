//! Reconciliation: make the registry match what the engine holds.
//!
//! On start and every 30 s the host lists containers by label. Its own running backends that it
//! does not know (it restarted) are adopted: re-attached, their endpoints re-opened at the same
//! address, their deadlines re-derived from labels. Its own containers that are dead, or that
//! cannot be adopted, are removed. Containers of other hosts (another owner label) and anything
//! without our labels are never touched.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{keys, Backends, EndpointTarget, Limits, Live, OpenEndpoint, Transport};
use crate::error::Error;
use crate::runtime::Labels;

/// What one reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReconcileReport {
    pub adopted: usize,
    pub removed: usize,
    pub kept: usize,
}

impl Backends {
    /// One pass of reconciliation.
    #[tracing::instrument(
        name = "backends.reconcile",
        skip_all,
        fields(operation = "backends.reconcile")
    )]
    pub async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        let containers = self.engine.list_containers(&self.owned_filter()).await?;
        let mut report = ReconcileReport::default();
        for c in containers {
            // A backend being created or restarted right now is not reconciliation's business.
            let name = c.labels.get(keys::NAME).cloned().unwrap_or_default();
            if self.reserved.lock().unwrap().contains(&name) {
                report.kept += 1;
                continue;
            }
            let id = c.labels.get(keys::ID).cloned().unwrap_or_default();
            let known = self.live.lock().unwrap().get(&id).cloned();
            let running = c.state == "running";
            match (known, running) {
                (Some(live), true) if live.container_id == c.id => report.kept += 1,
                (Some(_), false) => {
                    // The watcher will clean up the registry; the container must go either way.
                    self.forget(&id).await;
                    report.removed += 1;
                }
                (None, true) => match self.adopt_running(&c.id, &c.labels, None).await {
                    Ok(()) => report.adopted += 1,
                    Err(e) => {
                        tracing::warn!(container = %c.name, error = %e, "cannot adopt a backend; removing it");
                        let _ = self.engine.remove_container(&c.id).await;
                        report.removed += 1;
                    }
                },
                _ => {
                    if let Err(e) = self.engine.remove_container(&c.id).await {
                        tracing::warn!(container = %c.name, error = %e, "cannot remove a dead backend");
                    } else {
                        report.removed += 1;
                    }
                }
            }
        }
        crate::metrics::reconcile(report.adopted as u64, report.removed as u64);
        let live = self.live.lock().unwrap().len();
        crate::metrics::set_backends(crate::metrics::BackendState::Running, live);
        if report.adopted + report.removed > 0 {
            tracing::info!(
                adopted = report.adopted,
                removed = report.removed,
                kept = report.kept,
                "reconciled backends"
            );
        }
        Ok(report)
    }

    /// Adopts a running container of ours from its labels.
    pub(super) async fn adopt_running(
        &self,
        container_id: &str,
        labels: &Labels,
        endpoint: Option<OpenEndpoint>,
    ) -> Result<(), Error> {
        let get = |k: &str| {
            labels.get(k).cloned().ok_or_else(|| {
                Error::Internal(format!("backend container {container_id} lacks label {k}"))
            })
        };
        let id = get(keys::ID)?;
        let name = get(keys::NAME)?;
        let transport = Transport::parse(&get(keys::TRANSPORT)?)
            .ok_or_else(|| Error::Internal(format!("backend {name} has an unknown transport")))?;
        let address = get(keys::ENDPOINT)?;
        let token_sha256 = get(keys::TOKEN_SHA256)?;
        let secs = |k: &str| {
            labels
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let created = UNIX_EPOCH + Duration::from_secs(secs(keys::CREATED));
        let limits: Limits = labels
            .get(keys::LIMITS)
            .and_then(|l| serde_json::from_str::<LimitsLabel>(l).ok())
            .map(Into::into)
            .unwrap_or(self.config.bounds.default);
        let endpoint = match endpoint {
            Some(e) => e,
            None => {
                let target = EndpointTarget {
                    backends: self.me.clone(),
                    id: id.clone(),
                    token_sha256,
                    transport,
                };
                self.endpoints
                    .open(transport, &name, Some(&address), target)
                    .await?
            }
        };
        let (client, tail) = self.connect(container_id, false).await?;
        let live = Arc::new(Live {
            id: id.clone(),
            name: name.clone(),
            transport,
            venv: labels.get(keys::VENV).cloned(),
            limits,
            created: created.min(SystemTime::now()),
            idle_ttl: Duration::from_secs(secs(keys::IDLE_TTL)),
            hard_ttl: Duration::from_secs(secs(keys::HARD_TTL)),
            container_id: container_id.to_string(),
            address: endpoint.address.clone(),
            client,
            last_active: Mutex::new(Instant::now()),
            inflight: AtomicUsize::new(0),
            endpoint: Mutex::new(Some(endpoint)),
            stderr_tail: tail,
        });
        self.register(live);
        tracing::info!(backend = %name, id = %id, endpoint = %address, "adopted a running backend");
        Ok(())
    }
}

/// [`Limits`] as stored in a label.
#[derive(serde::Deserialize)]
struct LimitsLabel {
    memory_bytes: i64,
    cpus: f64,
    pids: i64,
    timeout_secs: f64,
}

impl From<LimitsLabel> for Limits {
    fn from(l: LimitsLabel) -> Limits {
        Limits {
            memory_bytes: l.memory_bytes,
            cpus: l.cpus,
            pids: l.pids,
            timeout_secs: l.timeout_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::orchestrator::backends::{BackendsConfig, Endpoints};
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerRuntime, SandboxSpec};

    /// Endpoints are not this test's business.
    struct NoEndpoints;

    #[async_trait::async_trait]
    impl Endpoints for NoEndpoints {
        async fn open(
            &self,
            _transport: Transport,
            _name: &str,
            _previous: Option<&str>,
            _target: EndpointTarget,
        ) -> Result<OpenEndpoint, Error> {
            Err(Error::NotImplemented("endpoints in this test"))
        }
    }

    fn container(owner: &str, name: &str) -> SandboxSpec {
        let mut labels = crate::labels::base("backend", &Labels::new());
        labels.insert(keys::OWNER.into(), owner.into());
        labels.insert(keys::NAME.into(), name.into());
        labels.insert(keys::ID.into(), format!("id-{name}"));
        SandboxSpec {
            name: format!("beephost-{name}"),
            labels,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn reconcile_spares_backends_being_started_and_other_hosts() {
        let fake = Arc::new(FakeRuntime::default());
        let backends = Backends::new(
            fake.clone(),
            Arc::new(NoEndpoints),
            BackendsConfig {
                host_id: "me".into(),
                extra_labels: Labels::new(),
                bounds: Default::default(),
                oci_runtime: None,
            },
        );
        // Ours, created but not started yet (a create in flight), and another host's.
        fake.create_sandbox(&container("me", "busy")).await.unwrap();
        fake.create_sandbox(&container("someone-else", "theirs"))
            .await
            .unwrap();
        backends.reserved.lock().unwrap().insert("busy".into());
        let report = backends.reconcile().await.unwrap();
        assert_eq!((report.kept, report.removed), (1, 0), "{report:?}");
        let count = || {
            let fake = fake.clone();
            async move { fake.list_containers(&Labels::new()).await.unwrap().len() }
        };
        assert_eq!(count().await, 2);
        // Once the create is over (it failed, say), the dead container is ours to remove.
        backends.reserved.lock().unwrap().remove("busy");
        let report = backends.reconcile().await.unwrap();
        assert_eq!(report.removed, 1, "{report:?}");
        let left = fake.list_containers(&Labels::new()).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].labels[keys::OWNER],
            "someone-else",
            "another host's container was touched"
        );
    }
}
