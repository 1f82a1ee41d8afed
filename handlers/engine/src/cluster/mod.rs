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
    /// Whether several processes carry this config's bots (and engine), one speaking for each
    /// bot and the others standing by, with leases on NATS. Off: every process speaks for its
    /// bots, and NATS is only for actions.
    pub active_standby: bool,
    /// How many NATS servers keep a copy of each stream and bucket (3 on a cluster of three, so
    /// that losing one loses nothing).
    pub replicas: usize,
    /// How long a bot's lead outlives its holder's last renewal (active/standby): a standby
    /// takes over within it (plus a poll and its connect time) when the holder dies, freezes or
    /// is cut off.
    pub lease_ttl: Duration,
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

    /// The stream of alerts for the engine that holds the engine's lead (active/standby).
    pub fn alerts_stream(&self) -> String {
        format!("{}_alerts", self.name)
    }

    /// The subject alerts are forwarded on.
    pub fn alerts_subject(&self) -> String {
        format!("{}.alerts", self.name)
    }

    /// The bucket of claims.
    pub fn claims_bucket(&self) -> String {
        format!("{}_claims", self.name)
    }

    /// The bucket of leases (one key per bot).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.name)
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
    #[serde(default)]
    active_standby: bool,
    lease_ttl: Option<String>,
    replicas: Option<usize>,
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
        let lease_ttl = within_an_hour(raw.lease_ttl.as_deref(), "lease_ttl", 10, &mut errors);
        let replicas = raw.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            errors.push(
                SettingsError::at("replicas", "from 1 to 5")
                    .hint("3 on a NATS cluster of three, 1 on a single server"),
            );
        }
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
            active_standby: raw.active_standby,
            lease_ttl,
            replicas,
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
mod lease;
#[cfg(feature = "cluster")]
mod nats;
#[cfg(feature = "cluster")]
pub use lease::{Elector, spawn_elector};

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
        assert!(!c.active_standby, "one process per bot unless asked");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.leases_bucket(), "opsbot_leases");
        let p = problems(
            "servers = [\"http://x:4222\"]\nname = \"a.b\"\nuser = \"u\"\nack_wait = \"0s\"\npublish_timeout = \"2h\"\nmax_deliver = 0\nlease_ttl = \"soon\"\nreplicas = 7",
        );
        for want in [
            "servers[0]: `http://x:4222` is not a NATS URL",
            "name: `a.b` cannot prefix streams and subjects",
            ": user and password go together",
            "ack_wait: not a duration from 1s to 1h",
            "publish_timeout: not a duration from 1s to 1h",
            "max_deliver: from 1 to 100",
            "lease_ttl: not a duration from 1s to 1h",
            "replicas: from 1 to 5",
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
