//! Actions as work on NATS JetStream (`[cluster]`, cargo feature `cluster`).
//!
//! The engine publishes each action it would run to a work-queue stream, deduplicated at
//! publish by its idempotency key (`Nats-Msg-Id`, within the stream's two-minute window);
//! workers (`opsbot worker`, or `opsbot run` with `worker = true`) pull with explicit acks,
//! send in-progress acks while an action runs, and publish its result to a results stream that
//! the engine reads and posts once.
//!
//! Acks are not enough for exactly-once effects: JetStream takes an ack that comes after the
//! ack wait, so a slow worker and the copy delivered again can both act. So before acting a
//! worker claims the action's key in a KV bucket (create-if-absent, with its id); after, it
//! records the outcome there. A copy whose key is claimed and finished is acked without
//! acting (its result published again, which the engine says only once); claimed and not
//! finished means the worker that claimed it stopped answering mid-action (its message came
//! back only because its in-progress acks stopped): the outcome is unknown, and it is not run
//! again unless the rule says it is safe to repeat.
//!
//! Every stream, subject and bucket starts with the cluster's `name`, so two deployments can
//! share one NATS.

use std::path::PathBuf;
use std::time::Duration;

use opsbot::config::Secret;
use opsbot::settings::SettingsError;
use serde::{Deserialize, Serialize};

use crate::action::Outcome;

/// The checked `[cluster]` table.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Prefixes every stream, subject and bucket.
    pub name: String,
    /// A NATS credentials file.
    pub creds: Option<PathBuf>,
    /// A user name, with `password`.
    pub user: Option<String>,
    /// The password (from the environment).
    pub password: Option<Secret>,
    /// A CA file for TLS to the servers (TLS is then required).
    pub ca_file: Option<PathBuf>,
    /// Whether this process also runs actions (as `opsbot worker` does).
    pub worker: bool,
    /// How long a worker may go without acknowledging a delivery before it is given to
    /// another (a running action is acknowledged as in progress every third of it).
    pub ack_wait: Duration,
    /// How many times an action is delivered before it is given up on.
    pub max_deliver: i64,
    /// How long an action may wait for NATS to take it before it is reported "not run".
    pub publish_timeout: Duration,
}

impl ClusterConfig {
    /// The work-queue stream of actions.
    pub fn actions_stream(&self) -> String {
        format!("{}_actions", self.name)
    }

    /// The subject actions are published on.
    pub fn actions_subject(&self) -> String {
        format!("{}.actions", self.name)
    }

    /// The stream of results.
    pub fn results_stream(&self) -> String {
        format!("{}_results", self.name)
    }

    /// The subject results are published on.
    pub fn results_subject(&self) -> String {
        format!("{}.results", self.name)
    }

    /// The bucket of claims.
    pub fn claims_bucket(&self) -> String {
        format!("{}_claims", self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    servers: Vec<String>,
    name: Option<String>,
    creds: Option<String>,
    user: Option<String>,
    password: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    worker: bool,
    ack_wait: Option<String>,
    max_deliver: Option<i64>,
    publish_timeout: Option<String>,
}

impl ClusterConfig {
    /// Reads and checks the `[cluster]` table.
    pub fn from_table(table: toml::Table) -> Result<Self, Vec<SettingsError>> {
        let raw: RawCluster =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                vec![if path == "." {
                    SettingsError::new(e.inner().to_string())
                } else {
                    SettingsError::at(path, e.inner().to_string())
                }]
            })?;
        let mut errors = Vec::new();
        if !cfg!(feature = "cluster") {
            errors.push(
                SettingsError::new("this opsbot was built without the `cluster` feature")
                    .hint("build it with: cargo build --release --features cluster"),
            );
        }
        if raw.servers.is_empty() {
            errors.push(
                SettingsError::at("servers", "no NATS server")
                    .hint("servers = [\"nats://nats.example.com:4222\"]"),
            );
        }
        for (i, url) in raw.servers.iter().enumerate() {
            let ok = ["nats://", "tls://", "nats+tls://"]
                .iter()
                .any(|p| url.starts_with(p))
                && url.len() > 8;
            if !ok {
                errors.push(
                    SettingsError::at(
                        format!("servers[{i}]"),
                        format!("`{url}` is not a NATS URL"),
                    )
                    .hint("nats://host:4222, or tls://host:4222"),
                );
            }
        }
        let name = raw.name.unwrap_or_else(|| "opsbot".into());
        if !good_name(&name) {
            errors.push(
                SettingsError::at(
                    "name",
                    format!("`{name}` cannot prefix streams and subjects"),
                )
                .hint("1 to 32 letters, digits, '-' and '_'"),
            );
        }
        for (key, path) in [("creds", &raw.creds), ("ca_file", &raw.ca_file)] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                errors.push(SettingsError::at(key, format!("{p}: {e}")));
            }
        }
        let password = match (&raw.user, &raw.password) {
            (Some(_), Some(p)) => {
                crate::config::secret(p, "password", "NATS_PASSWORD", &mut errors)
            }
            (None, None) => None,
            _ => {
                errors.push(SettingsError::new("user and password go together"));
                None
            }
        };
        if password.is_some() && raw.ca_file.is_none() {
            // Without TLS the password would cross the network as it is written.
            for (i, url) in raw.servers.iter().enumerate() {
                if url.starts_with("nats://") && !loopback(url) {
                    errors.push(
                        SettingsError::at(
                            format!("servers[{i}]"),
                            format!("`{url}`: the password would travel in clear"),
                        )
                        .hint("use tls:// with ca_file, or a server on this machine"),
                    );
                }
            }
        }
        let ack_wait = within_an_hour(raw.ack_wait.as_deref(), "ack_wait", 30, &mut errors);
        let publish_timeout = within_an_hour(
            raw.publish_timeout.as_deref(),
            "publish_timeout",
            60,
            &mut errors,
        );
        let max_deliver = raw.max_deliver.unwrap_or(5);
        if !(1..=100).contains(&max_deliver) {
            errors.push(SettingsError::at("max_deliver", "from 1 to 100"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            servers: raw.servers,
            name,
            creds: raw.creds.map(Into::into),
            user: raw.user,
            password,
            ca_file: raw.ca_file.map(Into::into),
            worker: raw.worker,
            ack_wait,
            max_deliver,
            publish_timeout,
        })
    }
}

/// Whether a NATS URL's host is this machine.
fn loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A duration from 1 s to 1 h written at `key`, or `default` seconds when unset (or wrong,
/// which is reported).
fn within_an_hour(
    raw: Option<&str>,
    key: &str,
    default: u64,
    errors: &mut Vec<SettingsError>,
) -> Duration {
    match raw.map(humantime::parse_duration) {
        None => Duration::from_secs(default),
        Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => d,
        Some(_) => {
            errors.push(
                SettingsError::at(key, "not a duration from 1s to 1h")
                    .hint(format!("{key} = \"{default}s\"")),
            );
            Duration::from_secs(default)
        }
    }
}

/// What a worker made of an action, published for the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkResult {
    /// The action's id.
    pub id: u64,
    /// The action's idempotency key.
    pub key: String,
    /// The worker that tells it.
    pub worker: String,
    /// What came of it; `None`: the outcome is unknown (`why` says why).
    pub outcome: Option<Outcome>,
    /// Why the outcome is unknown.
    pub why: Option<String>,
}

/// A claim on an action's key, in the claims bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The worker that claimed it.
    pub worker: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// What came of it, once finished.
    pub outcome: Option<Outcome>,
}

/// The name an idempotency key goes by in NATS (a message id, a KV key): its SHA-256, in hex,
/// so any key is a valid token.
pub fn token(key: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` can prefix streams, subjects and buckets: 1 to 32 letters, digits, `-`, `_`.
pub fn good_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(feature = "cluster")]
pub use nats::{Dispatcher, connect, spawn_worker, work};

/// Blocks until the process is asked to stop (SIGTERM, or Ctrl-C).
pub fn wait_for_stop() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => r?,
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}

#[cfg(feature = "cluster")]
mod nats {
    use std::sync::Arc;
    use std::time::Duration;

    use async_nats::jetstream::{self, AckKind, consumer, stream};
    use futures::StreamExt as _;

    use super::{Claim, ClusterConfig, WorkResult, token};
    use crate::action::{self, Allowed, Healer, Outcome};
    use crate::driver::now_ms;
    use crate::record::ActionRecord;

    /// Connects to the cluster's NATS and makes sure its streams and bucket exist.
    pub async fn connect(cfg: &ClusterConfig, who: &str) -> Result<jetstream::Context, String> {
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
        js.get_or_create_stream(stream::Config {
            name: cfg.actions_stream(),
            subjects: vec![cfg.actions_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_messages: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the actions stream: {e}"))?;
        js.get_or_create_stream(stream::Config {
            name: cfg.results_stream(),
            subjects: vec![cfg.results_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_messages: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the results stream: {e}"))?;
        claims(&js, cfg).await?;
        Ok(js)
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
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
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

        /// Reads results for ever, handing each to `take` (which answers once the engine has
        /// it); a result is acknowledged only then, so none is lost if the engine stops.
        pub async fn results<F, Fut>(&self, take: F) -> Result<(), String>
        where
            F: Fn(WorkResult) -> Fut,
            Fut: std::future::Future<Output = bool>,
        {
            let stream = self
                .js
                .get_stream(self.cfg.results_stream())
                .await
                .map_err(|e| format!("the results stream: {e}"))?;
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
                .map_err(|e| format!("the results consumer: {e}"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| format!("reading results: {e}"))?;
            while let Some(m) = messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a result");
                        continue;
                    }
                };
                match serde_json::from_slice::<WorkResult>(&m.payload) {
                    Ok(r) => {
                        if take(r).await {
                            let _ = m.ack().await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "an unreadable result was dropped");
                        let _ = m.ack_with(AckKind::Term).await;
                    }
                }
            }
            Err("the results consumer ended".into())
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
                        let ended =
                            work(cfg.clone(), me.clone(), allowed.clone(), heal.clone()).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        ClusterConfig::from_table(table)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.key.unwrap_or_default(), e.message))
            .collect()
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn the_cluster_table_is_checked() {
        let table: toml::Table =
            toml::from_str("servers = [\"nats://127.0.0.1:4222\"]\nworker = true").unwrap();
        let c = ClusterConfig::from_table(table).unwrap();
        assert_eq!(c.name, "opsbot");
        assert_eq!(c.actions_subject(), "opsbot.actions");
        assert_eq!(c.claims_bucket(), "opsbot_claims");
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert!(c.worker);
        let p = problems(
            "servers = [\"http://x:4222\"]\nname = \"a.b\"\nuser = \"u\"\nack_wait = \"0s\"\npublish_timeout = \"2h\"\nmax_deliver = 0",
        );
        for want in [
            "servers[0]: `http://x:4222` is not a NATS URL",
            "name: `a.b` cannot prefix streams and subjects",
            ": user and password go together",
            "ack_wait: not a duration from 1s to 1h",
            "publish_timeout: not a duration from 1s to 1h",
            "max_deliver: from 1 to 100",
        ] {
            assert!(p.iter().any(|p| p.starts_with(want)), "{want}: {p:?}");
        }
        let p = problems("servers = []\nuser = \"u\"\npassword = \"plain-text-password\"");
        assert!(
            p.iter().any(|p| p.starts_with("servers: no NATS server")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.starts_with("password: the secret must be one environment variable")),
            "{p:?}"
        );
        // $PATH stands in for a password (set, and long enough).
        let p = problems(
            "servers = [\"nats://nats.example.com:4222\", \"nats://127.0.0.1:4222\"]\nuser = \"u\"\npassword = \"${PATH}\"",
        );
        assert_eq!(
            p,
            ["servers[0]: `nats://nats.example.com:4222`: the password would travel in clear"]
        );
        let table: toml::Table = toml::from_str(
            "servers = [\"nats://[::1]:4222\", \"tls://nats.example.com:4222\"]\nuser = \"u\"\npassword = \"${PATH}\"",
        )
        .unwrap();
        assert!(ClusterConfig::from_table(table).is_ok());
        let p = problems("servers = [\"nats://h:1\"]\nqueue = \"x\"");
        assert!(
            p.iter().any(|p| p.contains("unknown field `queue`")),
            "{p:?}"
        );
    }

    #[cfg(not(feature = "cluster"))]
    #[test]
    fn without_the_feature_the_table_says_so() {
        let p = problems("servers = [\"nats://127.0.0.1:4222\"]");
        assert!(
            p.iter()
                .any(|p| p.contains("built without the `cluster` feature")),
            "{p:?}"
        );
    }

    #[test]
    fn tokens_and_names() {
        assert_eq!(token("a").len(), 64);
        assert_ne!(token("rule\u{1f}fp\u{1f}1"), token("rule\u{1f}fp\u{1f}2"));
        assert!(good_name("opsbot-prod_1"));
        assert!(!good_name("ops.bot"));
        assert!(!good_name(""));
        assert!(!good_name("a b"));
        assert!(!good_name(&"x".repeat(33)));
    }
}
