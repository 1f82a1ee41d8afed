//! The `kubernetes` action: a rollout restart or a scale of a Deployment, the deletion of a
//! Pod, the cordon of a Node, through the `kube` client (cargo feature `kubernetes`).
//!
//! What it may touch is the engine's `[engine.kubernetes]` table: the namespaces the
//! namespaced verbs may act in, and the nodes `cordon` may act on. Names filled from an alert
//! must be Kubernetes names (RFC 1123) before anything is sent; the Role in
//! `examples/kubernetes/` grants exactly these four verbs and nothing else.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a `kubernetes` action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// A rollout restart of a Deployment (as `kubectl rollout restart`).
    Restart,
    /// Sets a Deployment's replicas.
    Scale,
    /// Deletes a Pod (its controller makes a new one).
    Delete,
    /// Marks a Node unschedulable.
    Cordon,
}

impl Verb {
    /// The kind of object the verb acts on.
    pub fn object(self) -> &'static str {
        match self {
            Verb::Restart | Verb::Scale => "deployment",
            Verb::Delete => "pod",
            Verb::Cordon => "node",
        }
    }

    /// Whether the object lives in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Verb::Cordon)
    }
}

/// The `[engine.kubernetes]` table: how to reach the cluster and what may be touched.
#[derive(Clone, Debug, Default)]
pub struct KubeSettings {
    /// A kubeconfig file; without one, the pod's service account (in a cluster), else the
    /// kubeconfig `kubectl` would use.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use (its current one by default).
    pub context: Option<String>,
    /// Namespaces where Deployments may be restarted or scaled and Pods deleted.
    pub namespaces: Vec<String>,
    /// Nodes that may be cordoned: names, or prefixes written `worker-*`.
    pub nodes: Vec<String>,
    /// How long one call to the API may take.
    pub timeout: Duration,
}

/// The most replicas a `scale` may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// Why `name` is not a Kubernetes object name (an RFC 1123 subdomain: at most 253 lower-case
/// letters, digits, `-` and `.`, starting and ending with a letter or digit), if it is not.
pub fn bad_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        format!(
            "`{}` is not a Kubernetes name (lower-case letters, digits, '-' and '.')",
            name.escape_default()
        )
    })
}

impl KubeSettings {
    /// Why `verb` may not act on `name` in `namespace`, if it may not.
    pub fn refuses(&self, verb: Verb, namespace: Option<&str>, name: &str) -> Option<String> {
        if let Some(why) = bad_name(name) {
            return Some(why);
        }
        match (verb.namespaced(), namespace) {
            (true, None) => Some(format!("a {} needs a namespace", verb.object())),
            (true, Some(ns)) => {
                if ns.len() > 63 || ns.contains('.') || bad_name(ns).is_some() {
                    Some(format!("`{}` is not a namespace name", ns.escape_default()))
                } else if !self.namespaces.iter().any(|n| n == ns) {
                    Some(format!(
                        "namespace {ns} is not on the engine's list of namespaces"
                    ))
                } else {
                    None
                }
            }
            (false, Some(_)) => Some("a node has no namespace".into()),
            (false, None) => (!self.nodes.iter().any(|p| node_matches(p, name)))
                .then(|| format!("node {name} is not on the engine's list of nodes")),
        }
    }
}

/// Whether node `name` is what `pattern` allows: the name itself, or with a `*` at the end,
/// any name that starts with what comes before it.
fn node_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The plan in one line.
pub fn describe(verb: Verb, namespace: Option<&str>, name: &str, replicas: Option<u32>) -> String {
    let place = namespace.map_or(String::new(), |ns| format!(" in namespace {ns}"));
    match verb {
        Verb::Restart => format!("restart deployment {name}{place}"),
        Verb::Scale => format!(
            "scale deployment {name}{place} to {} replicas",
            replicas.unwrap_or(0)
        ),
        Verb::Delete => format!("delete pod {name}{place}"),
        Verb::Cordon => format!("cordon node {name}"),
    }
}

#[cfg(feature = "kubernetes")]
pub use client::run;

#[cfg(feature = "kubernetes")]
mod client {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, DeleteParams, Patch, PatchParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::{Client, Config};

    use super::{KubeSettings, Verb};
    use crate::action::Outcome;

    /// Who the changes are made by, in the objects' managed fields.
    const MANAGER: &str = "opsbot";

    fn failed(summary: String) -> Outcome {
        Outcome {
            ok: false,
            summary,
            output: String::new(),
        }
    }

    fn done(summary: String) -> Outcome {
        Outcome {
            ok: true,
            summary,
            output: String::new(),
        }
    }

    async fn client(k: &KubeSettings) -> Result<Client, String> {
        let mut config = match &k.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                let options = KubeConfigOptions {
                    context: k.context.clone(),
                    ..KubeConfigOptions::default()
                };
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            None => Config::infer()
                .await
                .map_err(|e| format!("no cluster to talk to: {e}"))?,
        };
        config.connect_timeout = Some(k.timeout);
        config.read_timeout = Some(k.timeout);
        config.write_timeout = Some(k.timeout);
        // The kube client takes rustls's process default.
        opsbot::tls::install_default_provider();
        Client::try_from(config).map_err(|e| format!("the Kubernetes client: {e}"))
    }

    /// What the API answered, in one line.
    fn refusal(e: kube::Error) -> String {
        match e {
            kube::Error::Api(s) => {
                let reason = if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(" {}", s.reason)
                };
                format!("Kubernetes answered {}{reason}: {}", s.code, s.message)
            }
            other => format!("Kubernetes: {other}"),
        }
    }

    /// Runs `verb` on `name`; `settings` must allow it (checked before).
    pub async fn run(
        settings: &KubeSettings,
        verb: Verb,
        namespace: Option<&str>,
        name: &str,
        replicas: Option<u32>,
    ) -> Outcome {
        let client = match client(settings).await {
            Ok(c) => c,
            Err(why) => return failed(why),
        };
        let ns = namespace.unwrap_or_default();
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        let answer = match verb {
            Verb::Restart => {
                let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let patch = serde_json::json!({
                    "spec": { "template": { "metadata": { "annotations": {
                        "kubectl.kubernetes.io/restartedAt": at.to_string()
                    }}}}
                });
                Api::<Deployment>::namespaced(client, ns)
                    .patch(name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| format!("deployment {ns}/{name} restarted at {at}"))
            }
            Verb::Scale => {
                let n = replicas.unwrap_or(0);
                let patch = serde_json::json!({ "spec": { "replicas": n } });
                Api::<Deployment>::namespaced(client, ns)
                    .patch_scale(name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|scale| {
                        let now = scale.spec.and_then(|s| s.replicas).unwrap_or(n as i32);
                        format!("deployment {ns}/{name} scaled to {now} replicas")
                    })
            }
            Verb::Delete => Api::<Pod>::namespaced(client, ns)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| format!("pod {ns}/{name} deleted")),
            Verb::Cordon => {
                let patch = serde_json::json!({ "spec": { "unschedulable": true } });
                Api::<Node>::all(client)
                    .patch(name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| format!("node {name} cordoned"))
            }
        };
        match answer {
            Ok(line) => done(line),
            Err(e) => failed(refusal(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeSettings {
        KubeSettings {
            namespaces: vec!["prod".into()],
            nodes: vec!["worker-*".into(), "gpu-1".into()],
            ..KubeSettings::default()
        }
    }

    #[test]
    fn names_namespaces_and_nodes_are_held_to_the_lists() {
        let k = settings();
        assert_eq!(k.refuses(Verb::Restart, Some("prod"), "web"), None);
        assert!(
            k.refuses(Verb::Restart, Some("kube-system"), "coredns")
                .unwrap()
                .contains("not on the engine's list of namespaces")
        );
        assert!(k.refuses(Verb::Restart, None, "web").is_some());
        for hostile in [
            "web; rm -rf /",
            "../../secrets",
            "Web",
            "web\n",
            "",
            "-web",
            "a/b",
        ] {
            assert!(
                k.refuses(Verb::Delete, Some("prod"), hostile).is_some(),
                "{hostile:?}"
            );
        }
        assert!(k.refuses(Verb::Delete, Some("pr/od"), "web").is_some());
        assert_eq!(k.refuses(Verb::Cordon, None, "worker-3"), None);
        assert_eq!(k.refuses(Verb::Cordon, None, "gpu-1"), None);
        assert!(k.refuses(Verb::Cordon, None, "gpu-10").is_some());
        assert!(k.refuses(Verb::Cordon, None, "control-plane-1").is_some());
        assert!(k.refuses(Verb::Cordon, Some("prod"), "worker-3").is_some());
    }

    #[test]
    fn plans_read_as_one_line() {
        assert_eq!(
            describe(Verb::Restart, Some("prod"), "web", None),
            "restart deployment web in namespace prod"
        );
        assert_eq!(
            describe(Verb::Scale, Some("prod"), "web", Some(4)),
            "scale deployment web in namespace prod to 4 replicas"
        );
        assert_eq!(
            describe(Verb::Delete, Some("prod"), "web-1", None),
            "delete pod web-1 in namespace prod"
        );
        assert_eq!(
            describe(Verb::Cordon, None, "worker-3", None),
            "cordon node worker-3"
        );
    }
}
