//! The config file as serde reads it, before any value is checked: unknown keys are
//! refused here (`deny_unknown_fields`), everything else in [`super::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::LogConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) path: Option<PathBuf>,
    pub(super) healing_log_entries: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) admin_token: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) open_without_token: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) log: LogConfig,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) http_client: RawHttpClient,
    pub(super) http: Option<RawHttp>,
    #[serde(default)]
    pub(super) bot: Vec<RawBot>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpClient {
    pub(super) max_connections_per_host: Option<usize>,
    pub(super) idle_timeout_secs: Option<f64>,
    pub(super) connect_timeout_secs: Option<f64>,
    pub(super) timeout_secs: Option<f64>,
    pub(super) retries: Option<u32>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBot {
    pub(super) name: String,
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) admins: Vec<String>,
    #[serde(default)]
    pub(super) access: BTreeMap<String, RawAccess>,
    #[serde(default)]
    pub(super) handlers: Vec<String>,
    #[serde(default)]
    pub(super) handler: toml::Table,
    #[serde(default)]
    pub(super) pollers: Vec<String>,
    #[serde(default)]
    pub(super) poller: toml::Table,
    pub(super) handler_timeout_secs: Option<f64>,
    pub(super) shutdown_deadline_secs: Option<f64>,
    pub(super) transport: Option<toml::Table>,
    #[serde(default)]
    pub(super) supervisor: RawSupervisor,
    #[serde(default)]
    pub(super) budget: RawBudget,
    #[serde(default)]
    pub(super) outbox: RawOutbox,
    #[serde(default)]
    pub(super) reconnect: RawReconnect,
}

/// `[bot.access]`: a command's name, then `"everyone"`, `"admins"`, or a list of identities.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAccess {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    pub(super) max_restarts: Option<u32>,
    pub(super) window_secs: Option<f64>,
    pub(super) backoff_initial_ms: Option<u64>,
    pub(super) backoff_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) commands_per_minute: Option<u32>,
    pub(super) ignore_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) max_line_bytes: Option<usize>,
    pub(super) rate: Option<f64>,
    pub(super) burst: Option<u32>,
    pub(super) dest_rate: Option<f64>,
    pub(super) dest_burst: Option<u32>,
    pub(super) byte_rate: Option<f64>,
    pub(super) byte_burst: Option<u32>,
    pub(super) queue: Option<usize>,
    pub(super) loop_repeats: Option<u32>,
    pub(super) loop_window_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconnect {
    pub(super) initial_secs: Option<f64>,
    pub(super) max_secs: Option<f64>,
    pub(super) refused_min_secs: Option<f64>,
    pub(super) critical_after_secs: Option<f64>,
}
