//! A fake Kubernetes API server: the calls the engine's `kubernetes` actions make (patch a
//! Deployment, patch its scale, delete a Pod, patch a Node), on a loopback port, plain HTTP,
//! following the API as the real one answers it.
//!
//! Every request needs `Authorization: Bearer <token>` (else 401 with a `Status`). It is then
//! authorised by RBAC objects the test hands over (`Role`, `RoleBinding`, `ClusterRole`,
//! `ClusterRoleBinding`, as in a manifest: the shipped `examples/kubernetes/rbac.yaml` is
//! the one used), for the service account the token stands for; a request they do not allow
//! is 403 with the API server's message. Patches must carry a patch content type (else 415);
//! a JSON merge patch or a strategic merge patch (treated as a merge patch, which is what it
//! is for the fields used) is applied to the stored object, whose `resourceVersion` and (for a
//! spec change) `generation` go up. Unknown objects are 404. Every request is recorded.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Default)]
struct State {
    token: String,
    /// The service account the token stands for: (namespace, name).
    account: (String, String),
    rbac: Vec<Value>,
    /// (namespace or "", resource, name) to the object.
    objects: HashMap<(String, String, String), Value>,
    seen: Vec<Seen>,
    version: u64,
}

/// The fake; stops when dropped.
pub struct FakeKubernetes {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKubernetes {
    /// Starts on a free loopback port; requests with `token` are the service account
    /// `namespace/name`, authorised by the RBAC objects in `rbac` (a manifest, YAML).
    pub async fn start(token: &str, account: (&str, &str), rbac: &str) -> Self {
        let docs: Vec<Value> = serde_saphyr::from_multiple(rbac).expect("RBAC manifest");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            account: (account.0.to_owned(), account.1.to_owned()),
            rbac: docs,
            version: 1000,
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, st.clone()));
            }
        });
        Self { port, state, task }
    }

    /// A kubeconfig for this fake, with the token.
    pub fn kubeconfig(&self) -> String {
        let token = self.state.lock().unwrap().token.clone();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: opsbot\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: opsbot\n\
             current-context: fake\n",
            self.port
        )
    }

    /// Adds a Deployment with `replicas`.
    pub fn add_deployment(&self, namespace: &str, name: &str, replicas: u32) {
        self.put(
            namespace,
            "deployments",
            name,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": name, "namespace": namespace, "generation": 1 },
                "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": name } },
                          "template": { "metadata": { "labels": { "app": name } },
                                        "spec": { "containers": [{ "name": name, "image": "registry.example.com/web:1" }] } } },
                "status": { "replicas": replicas }
            }),
        );
    }

    /// Adds a Pod.
    pub fn add_pod(&self, namespace: &str, name: &str) {
        self.put(
            namespace,
            "pods",
            name,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace },
                "spec": { "containers": [{ "name": "web", "image": "registry.example.com/web:1" }] },
                "status": { "phase": "Running" }
            }),
        );
    }

    /// Adds a Node.
    pub fn add_node(&self, name: &str) {
        self.put(
            "",
            "nodes",
            name,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": name },
                "spec": {},
                "status": { "conditions": [{ "type": "Ready", "status": "True" }] }
            }),
        );
    }

    fn put(&self, namespace: &str, resource: &str, name: &str, mut object: Value) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{resource}-{name}"));
        s.objects.insert(
            (namespace.to_owned(), resource.to_owned(), name.to_owned()),
            object,
        );
    }

    /// The object, if it exists.
    pub fn get(&self, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(namespace.to_owned(), resource.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every request, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// A `Status` answer, as the API server writes it.
fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code
        }),
    )
}

/// What a path names: (API group, namespace or "", resource, name, subresource).
fn parse(path: &str) -> Option<(String, String, String, String, String)> {
    let path = path.split('?').next()?;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        rest => ("", rest),
    };
    let (resource, name, sub) = match rest {
        [resource, name] => (*resource, *name, ""),
        [resource, name, sub] => (*resource, *name, *sub),
        _ => return None,
    };
    Some((
        group.to_owned(),
        namespace.to_owned(),
        resource.to_owned(),
        name.to_owned(),
        sub.to_owned(),
    ))
}

fn lists(v: &Value, key: &str, want: &str) -> bool {
    v[key]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == want || x == "*"))
}

/// Whether the RBAC objects let the account do `verb` on `resource` (with its subresource) of
/// `group` in `namespace` ("" for a cluster-scoped object).
fn allowed(s: &State, verb: &str, group: &str, namespace: &str, resource: &str) -> bool {
    let (sa_ns, sa_name) = &s.account;
    let binds_us = |b: &Value| {
        b["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|x| {
                x["kind"] == "ServiceAccount" && x["name"] == *sa_name && x["namespace"] == *sa_ns
            })
        })
    };
    let role_allows = |kind: &str, name: &str, role_ns: Option<&str>| {
        s.rbac.iter().any(|r| {
            r["kind"] == kind
                && r["metadata"]["name"] == name
                && role_ns.is_none_or(|ns| r["metadata"]["namespace"] == ns)
                && r["rules"].as_array().is_some_and(|rules| {
                    rules.iter().any(|rule| {
                        lists(rule, "apiGroups", group)
                            && lists(rule, "resources", resource)
                            && lists(rule, "verbs", verb)
                    })
                })
        })
    };
    s.rbac.iter().any(|b| {
        if !binds_us(b) {
            return false;
        }
        let role = b["roleRef"]["name"].as_str().unwrap_or("");
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or("");
        match b["kind"].as_str() {
            // A RoleBinding grants in its own namespace only.
            Some("RoleBinding") => {
                let ns = b["metadata"]["namespace"].as_str().unwrap_or("");
                !namespace.is_empty()
                    && ns == namespace
                    && match role_kind {
                        "Role" => role_allows("Role", role, Some(ns)),
                        "ClusterRole" => role_allows("ClusterRole", role, None),
                        _ => false,
                    }
            }
            Some("ClusterRoleBinding") => {
                role_kind == "ClusterRole" && role_allows("ClusterRole", role, None)
            }
            _ => false,
        }
    })
}

/// RFC 7396: `patch` merged into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn handle(
    st: &Mutex<State>,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let mut s = st.lock().unwrap();
    if token != s.token {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let Some((group, namespace, resource, name, sub)) = parse(path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let verb = match method {
        "GET" => "get",
        "PATCH" => "patch",
        "DELETE" => "delete",
        "PUT" => "update",
        "POST" => "create",
        _ => return status(405, "MethodNotAllowed", "method not allowed"),
    };
    let full = if sub.is_empty() {
        resource.clone()
    } else {
        format!("{resource}/{sub}")
    };
    let kind_name = if group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{group}")
    };
    let (sa_ns, sa_name) = s.account.clone();
    if !allowed(&s, verb, &group, &namespace, &full) {
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        let what = if sub.is_empty() {
            format!("resource \"{resource}\"")
        } else {
            format!("resource \"{resource}/{sub}\"")
        };
        return status(
            403,
            "Forbidden",
            &format!(
                "{kind_name} \"{name}\" is forbidden: User \"system:serviceaccount:{sa_ns}:{sa_name}\" \
                 cannot {verb} {what} in API group \"{group}\" {scope}"
            ),
        );
    }
    let key = (namespace.clone(), resource.clone(), name.clone());
    if !s.objects.contains_key(&key) {
        return status(
            404,
            "NotFound",
            &format!("{kind_name} \"{name}\" not found"),
        );
    }
    s.version += 1;
    let version = s.version.to_string();
    match (method, sub.as_str()) {
        ("PATCH", sub) => {
            if !matches!(
                content_type,
                "application/merge-patch+json"
                    | "application/strategic-merge-patch+json"
                    | "application/json-patch+json"
                    | "application/apply-patch+yaml"
            ) {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type}"
                    ),
                );
            }
            if content_type == "application/json-patch+json"
                || content_type == "application/apply-patch+yaml"
            {
                return status(415, "UnsupportedMediaType", "not in this fake");
            }
            let object = s.objects.get_mut(&key).unwrap();
            match sub {
                "" => {
                    let spec_before = object["spec"].clone();
                    merge(object, body);
                    object["metadata"]["resourceVersion"] = json!(version);
                    if object["spec"] != spec_before {
                        let g = object["metadata"]["generation"].as_u64().unwrap_or(1);
                        object["metadata"]["generation"] = json!(g + 1);
                    }
                    (200, object.clone())
                }
                "scale" if resource == "deployments" => {
                    let Some(n) = body["spec"]["replicas"].as_u64() else {
                        return status(422, "Invalid", "spec.replicas: Required value");
                    };
                    object["spec"]["replicas"] = json!(n);
                    object["metadata"]["resourceVersion"] = json!(version);
                    (
                        200,
                        json!({
                            "kind": "Scale", "apiVersion": "autoscaling/v1",
                            "metadata": { "name": name, "namespace": namespace, "resourceVersion": version },
                            "spec": { "replicas": n },
                            "status": { "replicas": object["status"]["replicas"], "selector": format!("app={name}") }
                        }),
                    )
                }
                _ => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            }
        }
        ("DELETE", "") => {
            let mut object = s.objects.remove(&key).unwrap();
            object["metadata"]["deletionTimestamp"] = json!("2026-12-06T10:00:00Z");
            (200, object)
        }
        ("GET", "") => (200, s.objects[&key].clone()),
        _ => status(405, "MethodNotAllowed", "not in this fake"),
    }
}

async fn serve(mut conn: TcpStream, st: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let Some(crate::support::http::Request {
            method,
            target: path,
            headers,
            body: raw,
        }) = crate::support::http::read_request(&mut conn, &mut buf).await
        else {
            return;
        };
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let token = headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let content_type = headers
            .get("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let (code, answer) = handle(&st, &method, &path, &token, &content_type, &body);
        st.lock().unwrap().seen.push(Seen {
            method,
            path,
            content_type,
            body,
            status: code,
        });
        let text = answer.to_string();
        let reason = match code {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            415 => "Unsupported Media Type",
            422 => "Unprocessable Entity",
            _ => "Error",
        };
        let out = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
