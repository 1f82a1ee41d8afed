//! The NATS side of the cluster: the streams and the claims bucket, the engine's dispatcher,
//! and the worker.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;

use super::{Claim, ClusterConfig, WorkResult, token};
use crate::action::{self, Allowed, Healer, Outcome};
use crate::alert::{Bounds, Notification};
use crate::driver::now_ms;
use crate::record::ActionRecord;

/// Connects to the cluster's NATS and makes sure its streams and bucket exist.
pub async fn connect(cfg: &ClusterConfig, who: &str) -> Result<jetstream::Context, String> {
    // The NATS client takes rustls's process default.
    opsbot::tls::install_default_provider();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("opsbot {who}"))
        .connection_timeout(Duration::from_secs(10));
    if let Some(path) = &cfg.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("[cluster] creds {}: {e}", path.display()))?;
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(ca) = &cfg.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options
        .connect(cfg.servers.clone())
        .await
        .map_err(|e| format!("NATS at {}: {e}", cfg.servers.join(", ")))?;
    let js = jetstream::new(client);
    work_queue(
        &js,
        cfg,
        cfg.actions_stream(),
        cfg.actions_subject(),
        "actions",
    )
    .await?;
    work_queue(
        &js,
        cfg,
        cfg.results_stream(),
        cfg.results_subject(),
        "results",
    )
    .await?;
    if cfg.active_standby {
        work_queue(
            &js,
            cfg,
            cfg.alerts_stream(),
            cfg.alerts_subject(),
            "alerts",
        )
        .await?;
    }
    claims(&js, cfg).await?;
    Ok(js)
}

/// Makes sure the work-queue stream `name` on `subject` exists: file storage, publishes
/// deduplicated for two minutes, at most 100,000 messages, and when full new messages are
/// refused (their publisher is told, and says so) rather than stored ones dropped.
async fn work_queue(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
    name: String,
    subject: String,
    what: &str,
) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name,
        subjects: vec![subject],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_messages: 100_000,
        discard: stream::DiscardPolicy::New,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("the {what} stream: {e}"))
}

/// Reads the work-queue stream `name` through the durable consumer `engine` for ever: each
/// message read with `parse` is handed to `take` (which answers once the engine has it) and
/// acknowledged only then, else offered again a second later; one that does not read is
/// dropped with a warning.
async fn read_each<T, P, F, Fut>(
    js: &jetstream::Context,
    name: String,
    what: &str,
    parse: P,
    take: F,
) -> Result<(), String>
where
    P: Fn(&[u8]) -> Result<T, String>,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("the {what} stream: {e}"))?;
    let consumer = stream
        .get_or_create_consumer(
            "engine",
            consumer::pull::Config {
                durable_name: Some("engine".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("the {what} consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading {what}: {e}"))?;
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading {what}");
                continue;
            }
        };
        match parse(&m.payload) {
            Ok(item) => {
                if take(item).await {
                    let _ = m.ack().await;
                } else {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable {what} dropped");
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
    Err(format!("the {what} consumer ended"))
}

/// The claims bucket, laid out as JetStream lays out a KV bucket (stream `KV_<bucket>`,
/// subjects `$KV.<bucket>.<key>`, the last value per key kept), so that `nats kv` reads it;
/// written through the stream API, which every JetStream server since 2.7 answers alike.
#[derive(Clone, Debug)]
struct Claims {
    js: jetstream::Context,
    stream: stream::Stream,
    bucket: String,
}

enum Created {
    Yes,
    Taken,
}

impl Claims {
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }

    /// Creates `key` with `value` unless it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Created, String> {
        let sent = self
            .js
            .send_publish(
                self.subject(key),
                jetstream::message::PublishMessage::build()
                    .payload(value.into())
                    .expected_last_subject_sequence(0),
            )
            .await
            .map_err(|e| e.to_string())?;
        match sent.await {
            Ok(_) => Ok(Created::Yes),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(Created::Taken)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sets `key` to `value`.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let sent = self
            .js
            .send_publish(
                self.subject(key),
                jetstream::message::PublishMessage::build().payload(value.into()),
            )
            .await
            .map_err(|e| e.to_string())?;
        sent.await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// The value of `key`, if it has one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(m) => Ok(Some(m.payload.to_vec())),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn claims(js: &jetstream::Context, cfg: &ClusterConfig) -> Result<Claims, String> {
    let bucket = cfg.claims_bucket();
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            allow_rollup: true,
            deny_delete: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the claims bucket: {e}"))?;
    Ok(Claims {
        js: js.clone(),
        stream,
        bucket,
    })
}

/// The engine's side: publishes actions, and hands their results back.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    js: jetstream::Context,
    cfg: ClusterConfig,
}

impl Dispatcher {
    /// Connects; the engine calls it on its own thread.
    pub async fn new(cfg: ClusterConfig) -> Result<Self, String> {
        let js = connect(&cfg, "engine").await?;
        Ok(Self { js, cfg })
    }

    /// Publishes `a` for a worker; the same key within two minutes is taken once.
    pub async fn publish(&self, a: &ActionRecord) -> Result<(), String> {
        let payload = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        let ack = self
            .js
            .send_publish(
                self.cfg.actions_subject(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(token(&a.key)),
            )
            .await
            .map_err(|e| format!("publishing {}: {e}", a.label()))?;
        ack.await
            .map_err(|e| format!("publishing {}: {e}", a.label()))?;
        Ok(())
    }

    /// Hands a notification to whichever engine holds the engine's lead: stored in the alerts
    /// stream once JetStream acknowledges it, the same body within two minutes once.
    pub async fn forward(&self, n: &Notification) -> Result<(), String> {
        let payload = serde_json::to_vec(n).map_err(|e| e.to_string())?;
        let id = token(&String::from_utf8_lossy(&payload));
        let ack = self
            .js
            .send_publish(
                self.cfg.alerts_subject(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| format!("forwarding alerts: {e}"))?;
        ack.await.map_err(|e| format!("forwarding alerts: {e}"))?;
        Ok(())
    }

    /// Reads forwarded notifications for ever, each checked with `bounds` as a webhook's body
    /// is, handing each to `take` (which answers once the engine has it in its store); one is
    /// acknowledged only then, and offered again a second later otherwise.
    pub async fn alerts<F, Fut>(&self, bounds: &Bounds, take: F) -> Result<(), String>
    where
        F: Fn(Notification) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let parse = |b: &[u8]| Notification::parse(b, bounds).map_err(|e| e.0);
        read_each(&self.js, self.cfg.alerts_stream(), "alerts", parse, take).await
    }

    /// Reads results for ever, handing each to `take` (which answers once the engine has
    /// it); a result is acknowledged only then, so none is lost if the engine stops.
    pub async fn results<F, Fut>(&self, take: F) -> Result<(), String>
    where
        F: Fn(WorkResult) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let parse = |b: &[u8]| serde_json::from_slice::<WorkResult>(b).map_err(|e| e.to_string());
        read_each(&self.js, self.cfg.results_stream(), "results", parse, take).await
    }
}

/// Runs actions as worker `me` on a thread of its own, for the life of the process,
/// reconnecting when the cluster goes away.
pub fn spawn_worker(
    cfg: ClusterConfig,
    me: String,
    allowed: Allowed,
    heal: Arc<Healer>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the worker");
            rt.block_on(async move {
                loop {
                    let ended = work(cfg.clone(), me.clone(), allowed.clone(), heal.clone()).await;
                    if let Err(e) = ended {
                        tracing::warn!(error = %e, "the worker lost the cluster; again in 2s");
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        })
}

async fn publish_result(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
    r: &WorkResult,
) -> Result<(), String> {
    let payload = serde_json::to_vec(r).map_err(|e| e.to_string())?;
    let ack = js
        .send_publish(
            cfg.results_subject(),
            jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("result-{}", token(&r.key))),
        )
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs actions as worker `me` until the connection ends: each within `allowed` (the
/// worker's own lists), claimed before it acts, its outcome recorded and published.
pub async fn work(
    cfg: ClusterConfig,
    me: String,
    allowed: Allowed,
    heal: Arc<Healer>,
) -> Result<(), String> {
    let js = connect(&cfg, &format!("worker {me}")).await?;
    let claims = claims(&js, &cfg).await?;
    let stream = js
        .get_stream(cfg.actions_stream())
        .await
        .map_err(|e| format!("the actions stream: {e}"))?;
    let consumer = stream
        .get_or_create_consumer(
            "workers",
            consumer::pull::Config {
                durable_name: Some("workers".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_deliver: cfg.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("the workers' consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading actions: {e}"))?;
    tracing::info!(worker = %me, "worker ready");
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading an action");
                continue;
            }
        };
        let a: ActionRecord = match serde_json::from_slice(&m.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable action was dropped");
                let _ = m.ack_with(AckKind::Term).await;
                continue;
            }
        };
        // Not this worker's to run: another may (a worker on a Kubernetes node, say). The
        // last delivery says so for good, so the action does not wait for ever.
        if let Some(why) = allowed.refuses(&a.plan) {
            let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
            if delivered < cfg.max_deliver {
                tracing::info!(worker = %me, action = %a.label(), %why, "not this worker's to run; left to another");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                continue;
            }
            let r = WorkResult {
                id: a.id,
                key: a.key.clone(),
                worker: me.clone(),
                outcome: Some(Outcome {
                    ok: false,
                    summary: format!(
                        "not run: no worker took it in {delivered} deliveries (the last refused: {why})"
                    ),
                    output: String::new(),
                }),
                why: None,
            };
            if publish_result(&js, &cfg, &r).await.is_ok() {
                let _ = m.ack_with(AckKind::Term).await;
            }
            continue;
        }
        let result = handle(&cfg, &claims, &me, &allowed, &*heal, &a, &m).await;
        match result {
            Ok(r) => {
                // Published before the ack: a worker that stops in between leaves the
                // action to be delivered again, and the claim then tells what it came to.
                if let Err(e) = publish_result(&js, &cfg, &r).await {
                    tracing::warn!(action = %a.label(), error = %e, "publishing a result; the action comes back");
                    continue;
                }
                let _ = m.double_ack().await;
            }
            Err(e) => {
                tracing::warn!(action = %a.label(), error = %e, "could not claim the action; it comes back");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
    Err("the actions consumer ended".into())
}

/// Claims, runs and records one action; answers the result to publish.
async fn handle(
    cfg: &ClusterConfig,
    claims: &Claims,
    me: &str,
    allowed: &Allowed,
    heal: &Healer,
    a: &ActionRecord,
    m: &jetstream::Message,
) -> Result<WorkResult, String> {
    let key = token(&a.key);
    let result = |outcome: Option<Outcome>, why: Option<String>| WorkResult {
        id: a.id,
        key: a.key.clone(),
        worker: me.to_owned(),
        outcome,
        why,
    };
    let claim = Claim {
        worker: me.to_owned(),
        at_ms: now_ms(),
        outcome: None,
    };
    let body = serde_json::to_vec(&claim).map_err(|e| e.to_string())?;
    match claims.create(&key, body).await? {
        Created::Yes => {}
        Created::Taken => {
            let held: Option<Claim> = claims
                .get(&key)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok());
            return match held {
                Some(Claim {
                    outcome: Some(o), ..
                }) => Ok(result(Some(o), None)),
                Some(c) if !a.safe_to_repeat => Ok(result(
                    None,
                    Some(format!(
                        "worker {} started it and stopped answering before it finished",
                        c.worker
                    )),
                )),
                _ => {
                    // Safe to repeat: run it again under a fresh claim.
                    let claim = serde_json::to_vec(&claim).map_err(|e| e.to_string())?;
                    claims.put(&key, claim).await?;
                    Ok(run_claimed(cfg, claims, &key, me, allowed, heal, a, m, &result).await)
                }
            };
        }
    }
    Ok(run_claimed(cfg, claims, &key, me, allowed, heal, a, m, &result).await)
}

#[allow(clippy::too_many_arguments)]
async fn run_claimed(
    cfg: &ClusterConfig,
    claims: &Claims,
    key: &str,
    me: &str,
    allowed: &Allowed,
    heal: &Healer,
    a: &ActionRecord,
    m: &jetstream::Message,
    result: &dyn Fn(Option<Outcome>, Option<String>) -> WorkResult,
) -> WorkResult {
    tracing::info!(worker = %me, action = %a.label(), plan = %a.plan_line, "action started");
    let run = action::run(&a.plan, allowed, heal);
    tokio::pin!(run);
    // While it runs, tell JetStream it is in hand, so it is not given to another.
    let mut progress = tokio::time::interval(cfg.ack_wait / 3);
    progress.tick().await;
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            _ = progress.tick() => {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    };
    let done = Claim {
        worker: me.to_owned(),
        at_ms: now_ms(),
        outcome: Some(outcome.clone()),
    };
    if let Ok(body) = serde_json::to_vec(&done)
        && let Err(e) = claims.put(key, body).await
    {
        tracing::warn!(action = %a.label(), error = %e, "recording the outcome");
    }
    result(Some(outcome), None)
}
