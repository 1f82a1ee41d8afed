//! Configuration: TOML in, validated options out.
//!
//! Two stages, as in ripgrep: serde reads the file into raw structs that reject unknown keys
//! (`deny_unknown_fields`), then [`Config::from_str`] checks the values and builds
//! [`BotOptions`]. Every problem becomes a [`ConfigError`] naming the file, the key path
//! (`bot[0].outbox.rate`), the line when known, what is wrong and a hint; validation collects all
//! of them instead of stopping at the first.
//!
//! Secrets are written as `${ENV_VAR}` and read into [`Secret`], which never prints its value.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::options::{Access, BotOptions, OutboxSettings};
use crate::outbox::Rate;
use crate::router::Budget;
use crate::supervisor::RestartPolicy;
use crate::transport::ReconnectPolicy;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key path (`bot[0].outbox.rate`), or empty for the whole file.
    pub key: String,
    /// The line, when known (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Puts the errors in the order of the file: by file, then line (errors without a line
    /// last), keeping the order of those on one line.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line.is_none(), a.line).cmp(&(&b.file, b.line.is_none(), b.line))
        });
    }
}

/// The distance in edits (insert, delete, replace one character) between two short words.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A parser's message about `key` in a person's words, with a hint where one helps: what
/// `[bot]` for `[[bot]]` means, what number a key wants, which known key a misspelt one is
/// probably (`rat`: did you mean `rate`?).
pub fn explain(key: &str, message: &str) -> (String, Option<String>) {
    let last = key.rsplit(['.', '[']).next().unwrap_or(key);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        let close = known
            .iter()
            .map(|k| (edits(field, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3) && *d < field.len().max(1))
            .min();
        let hint = match close {
            Some((_, k)) => format!("did you mean `{k}`?"),
            None => "check the spelling; the config reference is in README.md".into(),
        };
        return (message.to_owned(), Some(hint));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        if key == "bot" && expected.contains("sequence") {
            return (
                "`[bot]` makes one table, but bots are a list".into(),
                Some("write [[bot]] (two brackets) above each bot".into()),
            );
        }
        let want = match expected {
            "f64" | "f32" if last.ends_with("_secs") => "a number of seconds, like 30".to_owned(),
            "f64" | "f32" => "a number, like 2.5".to_owned(),
            e if ["u8", "u16", "u32", "u64", "usize", "i32", "i64", "isize"].contains(&e) => {
                if last.ends_with("_ms") {
                    "a whole number of milliseconds, like 500".to_owned()
                } else if last.ends_with("_secs") {
                    "a whole number of seconds, like 30".to_owned()
                } else {
                    "a whole number, like 5".to_owned()
                }
            }
            "a boolean" => "true or false".to_owned(),
            "a sequence" => "a list, like [\"a\", \"b\"]".to_owned(),
            "a string" => "a string in quotes".to_owned(),
            other => other.to_owned(),
        };
        return (format!("expected {want}, found {found}"), None);
    }
    (message.to_owned(), None)
}

/// A secret read from the config (usually `${ENV_VAR}`); its value never appears in `Debug`,
/// logs or chat.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// A secret from a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value, for the one place that must send it (an authentication exchange).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw, |k| std::env::var(k).ok())
            .map(Secret::new)
            .map_err(serde::de::Error::custom)
    }
}

/// Replaces each `${NAME}` in `raw` with the variable's value; `$$` stands for `$`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "unclosed `${` (write `${NAME}`, or `$$` for a dollar sign)".to_owned()
            })?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `opsbot=debug,warn`); `RUST_LOG` wins over it.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<PathBuf>,
    healing_log_entries: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    admin_token: Option<String>,
    hosts: Option<Vec<String>>,
    open_without_token: Option<bool>,
}

/// The HTTP status API (`[http]`): off unless the table is there.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Address and port (default `127.0.0.1:9120`).
    pub listen: std::net::SocketAddr,
    /// The bearer token of forced heals; without one, every heal is refused.
    pub admin_token: Option<Secret>,
    /// Host names a request's `Host` header may carry besides addresses and `localhost` (a
    /// defence against DNS rebinding: a web page the operator opens cannot read the API
    /// through a name of its own), lower-case.
    pub hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9120)),
            admin_token: None,
            hosts: Vec::new(),
        }
    }
}

/// Why `token` is too weak to guard forced heals, if it is.
fn token_strength(token: &str) -> Option<String> {
    let distinct = token
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if token.chars().count() < MIN_TOKEN {
        Some(format!("it has fewer than {MIN_TOKEN} characters"))
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it holds spaces or control characters".into())
    } else if distinct < MIN_TOKEN_DISTINCT {
        Some(format!(
            "it has fewer than {MIN_TOKEN_DISTINCT} different characters"
        ))
    } else {
        None
    }
}

/// The shortest admin token taken.
const MIN_TOKEN: usize = 16;
/// The fewest different characters an admin token may have (`aaaa…` is no secret).
const MIN_TOKEN_DISTINCT: usize = 8;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    http_client: RawHttpClient,
    http: Option<RawHttp>,
    #[serde(default)]
    bot: Vec<RawBot>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpClient {
    max_connections_per_host: Option<usize>,
    idle_timeout_secs: Option<f64>,
    connect_timeout_secs: Option<f64>,
    timeout_secs: Option<f64>,
    retries: Option<u32>,
    ca_file: Option<PathBuf>,
}

/// The process's one HTTP client (`[http_client]`), shared by every bot's transport and
/// handlers: the defaults are what ended a run of pool-exhaustion timeouts in production
/// (a pool of 50 per host, 120 s, 3 retries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpClientConfig {
    /// Requests in flight to one host at once, which is also the most connections opened to
    /// it; more wait for a free one, and that wait does not count against `timeout`.
    pub max_connections_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Limit on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit on one attempt of a request, from sending it to the end of the answer's body.
    pub timeout: Duration,
    /// Further attempts after a transient failure, for requests that are safe to repeat.
    pub retries: u32,
    /// A PEM file of extra CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            max_connections_per_host: 50,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(120),
            retries: 3,
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBot {
    name: String,
    prefix: Option<String>,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    access: BTreeMap<String, RawAccess>,
    #[serde(default)]
    handlers: Vec<String>,
    #[serde(default)]
    handler: toml::Table,
    #[serde(default)]
    pollers: Vec<String>,
    #[serde(default)]
    poller: toml::Table,
    handler_timeout_secs: Option<f64>,
    shutdown_deadline_secs: Option<f64>,
    transport: Option<toml::Table>,
    #[serde(default)]
    supervisor: RawSupervisor,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    reconnect: RawReconnect,
}

/// `[bot.access]`: a command's name, then `"everyone"`, `"admins"`, or a list of identities.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAccess {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    max_restarts: Option<u32>,
    window_secs: Option<f64>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    commands_per_minute: Option<u32>,
    ignore_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_line_bytes: Option<usize>,
    rate: Option<f64>,
    burst: Option<u32>,
    dest_rate: Option<f64>,
    dest_burst: Option<u32>,
    byte_rate: Option<f64>,
    byte_burst: Option<u32>,
    queue: Option<usize>,
    loop_repeats: Option<u32>,
    loop_window_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    initial_secs: Option<f64>,
    max_secs: Option<f64>,
    refused_min_secs: Option<f64>,
    critical_after_secs: Option<f64>,
}

/// A transport section: its kind and the rest of its keys, which the transport reads.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportConfig {
    /// `console`, `irc`, `xmpp` or `webex`.
    pub kind: String,
    /// The other keys of `[bot.transport]`.
    pub settings: toml::Table,
    /// The key path of the section, for error messages (`bot[0].transport`).
    pub key: String,
}

/// One bot's validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct BotConfig {
    /// The bot's name.
    pub name: String,
    /// Options for the framework.
    pub options: BotOptions,
    /// Handlers to enable beyond the built-in ones, by name.
    pub handlers: Vec<String>,
    /// Handlers' own settings (`[bot.handler.NAME]`), by handler name; each value is a table.
    pub handler_settings: toml::Table,
    /// Pollers to run, by name.
    pub pollers: Vec<String>,
    /// Pollers' settings (`[bot.poller.NAME]`), by poller name; each value is a table.
    pub poller_settings: toml::Table,
    /// The transport.
    pub transport: TransportConfig,
    /// The key path of this bot (`bot[0]`).
    pub key: String,
}

/// A validated config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it came from.
    pub path: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// The shared HTTP client.
    pub http_client: HttpClientConfig,
    /// The HTTP status API, when the file has an `[http]` table.
    pub http: Option<HttpConfig>,
    /// The state store (`[state] path`), when set; else each bot's default.
    pub state_path: Option<PathBuf>,
    /// How many healing-log entries the process keeps on disk.
    pub healing_log_entries: usize,
    /// The file's text, to point errors found later (by transports, handlers) at their line.
    pub source: std::sync::Arc<str>,
    /// The bots, in file order.
    pub bots: Vec<BotConfig>,
    /// What is allowed but probably not what was meant (`opsbot check` prints them, `run`
    /// logs them).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                key: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
                hint: None,
            }])
        })?;
        Self::from_str(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let raw = parse(path, text)?;
        let mut v = Validator {
            file: path.to_owned(),
            text,
            errors: Vec::new(),
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            let mut errors = ConfigErrors(v.errors);
            errors.sort();
            Err(errors)
        }
    }

    /// An error about `key` (a key path such as `bot[0].handler.hello.greeting`), pointed at
    /// its line in the file where that can be told.
    pub fn error_at(&self, key: String, message: String, hint: Option<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: locate(&self.source, &key),
            key,
            message,
            hint,
        }
    }

    /// The config used when no file is given: one console bot whose local user is an admin.
    pub fn console_default() -> Self {
        let options = BotOptions {
            admins: vec!["console".into()],
            ..BotOptions::default()
        };
        Self {
            path: PathBuf::from("<built-in>"),
            log: LogConfig::default(),
            http_client: HttpClientConfig::default(),
            http: None,
            state_path: None,
            healing_log_entries: crate::healing_log::DEFAULT_CAP,
            source: "".into(),
            warnings: Vec::new(),
            bots: vec![BotConfig {
                name: "opsbot".into(),
                options,
                handlers: Vec::new(),
                handler_settings: toml::Table::new(),
                pollers: Vec::new(),
                poller_settings: toml::Table::new(),
                transport: TransportConfig {
                    kind: "console".into(),
                    settings: toml::Table::new(),
                    key: "bot[0].transport".into(),
                },
                key: "bot[0]".into(),
            }],
        }
    }
}

/// The longest duration a key may hold: tokio's timers reach about two years, and an `Instant`
/// plus a longer one can overflow.
pub const MAX_SECS: f64 = 365.0 * 86_400.0;
/// The slowest pace a limiter can keep: one line a day.
const MIN_RATE: f64 = 1.0 / 86_400.0;
/// The fastest: one a nanosecond.
const MAX_RATE: f64 = 1e9;

/// A number as a person would write it in the file: `1e-300`, not three hundred zeros.
fn num(x: f64) -> String {
    if x != 0.0 && !(1e-4..1e9).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse(path: &Path, text: &str) -> Result<RawFile, ConfigErrors> {
    let fail = |key: String, line: Option<usize>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            key,
            line,
            message,
            hint: None,
        }])
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        fail(
            String::new(),
            e.span().map(|s| line_of(text, s.start)),
            e.message().to_owned(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let line = inner.span().map(|s| line_of(text, s.start));
        let key = if key == "." { String::new() } else { key };
        let (message, hint) = explain(&key, inner.message());
        let mut err = fail(key, line, message);
        err.0[0].hint = hint;
        err
    })
}

struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
}

/// The line of `key` in `text`, when the key's last segment appears once as a key there.
fn locate(text: &str, key: &str) -> Option<usize> {
    // `nameservers[0]` is on the line of `nameservers`.
    let mut key = key;
    while key.ends_with(']') {
        key = key.rfind('[').map_or(key, |i| &key[..i]);
        if !key.ends_with(']') {
            break;
        }
    }
    let last = key.rsplit(['.', ']']).next().unwrap_or("");
    if last.is_empty() {
        return None;
    }
    // A key of one bot (`bot[1].prefix`) is looked for in that bot's part of the file: from
    // its `[[bot]]` to the next.
    let (from, to) = key
        .strip_prefix("bot[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .and_then(|n| {
            let starts: Vec<usize> = text
                .match_indices("[[bot]]")
                .map(|(i, _)| i)
                .filter(|&i| text[..i].rfind('\n').map_or(0, |l| l + 1) == i)
                .collect();
            let from = *starts.get(n)?;
            Some((from, starts.get(n + 1).copied().unwrap_or(text.len())))
        })
        .unwrap_or((0, text.len()));
    let hits: Vec<usize> = text[from..to]
        .match_indices(last)
        .map(|(i, _)| i + from)
        .filter(|&i| {
            let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
            let before = text[line_start..i].trim();
            let after = text[i + last.len()..].trim_start_matches([' ', '\t']);
            (before.is_empty() || before.ends_with('.') || before == "[" || before == "[[")
                && (after.starts_with('=') || after.starts_with(']'))
        })
        .collect();
    (hits.len() == 1).then(|| line_of(text, hits[0]))
}

impl Validator<'_> {
    fn error(&mut self, key: String, message: impl Into<String>, hint: Option<&str>) {
        let line = locate(self.text, &key);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key,
            line,
            message: message.into(),
            hint: hint.map(str::to_owned),
        });
    }

    fn secs(&mut self, key: String, v: Option<f64>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECS => Duration::from_secs_f64(s),
            Some(s) if s.is_finite() && s > MAX_SECS => {
                self.error(
                    key,
                    format!(
                        "{} seconds is longer than the runtime's timers allow",
                        num(s)
                    ),
                    Some("at most a year (31536000)"),
                );
                default
            }
            Some(s) => {
                self.error(
                    key,
                    format!("{} is not a positive number of seconds", num(s)),
                    None,
                );
                default
            }
        }
    }

    fn millis(&mut self, key: String, v: Option<u64>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(ms) if ms as f64 / 1000.0 <= MAX_SECS => Duration::from_millis(ms),
            Some(ms) => {
                self.error(
                    key,
                    format!("{ms} ms is longer than the runtime's timers allow"),
                    Some("at most a year (31536000000)"),
                );
                default
            }
        }
    }

    fn rate(&mut self, key: &str, rate: Option<f64>, burst: Option<u32>) -> Option<Rate> {
        if let (Some(r), Some(b)) = (rate, burst)
            && r.is_finite()
            && r > 0.0
            && f64::from(b) / r > MAX_SECS
        {
            self.error(
                key.replace("rate", "burst"),
                format!(
                    "a burst of {b} at {} per second takes longer than a year to refill",
                    num(r)
                ),
                Some("lower the burst or raise the rate"),
            );
            return None;
        }
        match rate {
            None => {
                if burst.is_some() {
                    self.error(
                        key.replace("rate", "burst"),
                        "a burst needs a rate",
                        Some("set the rate too"),
                    );
                }
                None
            }
            Some(r) if r == 0.0 || (r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r)) => {
                Some(Rate::new(r, burst.unwrap_or(1).max(1)))
            }
            Some(r) if r.is_finite() && r > 0.0 => {
                self.error(
                    key.to_owned(),
                    format!("{} per second is outside what a pacer can keep", num(r)),
                    Some(
                        "between one a day (0.0000116) and 1000000000 a second; 0 means unlimited",
                    ),
                );
                None
            }
            Some(r) => {
                self.error(
                    key.to_owned(),
                    format!("{} is not a rate", num(r)),
                    Some("lines per second; 0 means unlimited"),
                );
                None
            }
        }
    }

    fn config(&mut self, raw: RawFile) -> Config {
        if let Some(level) = &raw.log.level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            self.error(
                "log.level".into(),
                format!("`{level}` is not a log filter"),
                Some("a level such as `info`, or directives such as `opsbot=debug,warn`"),
            );
        }
        if raw.bot.is_empty() {
            self.error(
                "bot".into(),
                "no bot is defined",
                Some("add a [[bot]] table with a name"),
            );
        }
        let mut names = HashSet::new();
        let mut consoles = 0;
        let bots = raw
            .bot
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let bot = self.bot(i, b, raw.state.path.clone());
                if !names.insert(bot.name.clone()) {
                    self.error(
                        format!("bot[{i}].name"),
                        format!("bot name `{}` is used twice", bot.name),
                        None,
                    );
                }
                if bot.transport.kind == "console" {
                    consoles += 1;
                    if consoles > 1 {
                        self.error(
                            format!("bot[{i}].transport.kind"),
                            "only one bot can use the console (there is one terminal)",
                            None,
                        );
                    }
                }
                bot
            })
            .collect();
        let http_client = self.http_client(raw.http_client);
        let http = raw.http.map(|h| self.http(h));
        let healing_log_entries = match raw.state.healing_log_entries {
            None => crate::healing_log::DEFAULT_CAP,
            Some(n @ 1..=1_000_000) => n as usize,
            Some(n) => {
                self.error(
                    "state.healing_log_entries".into(),
                    format!("{n} entries cannot be kept"),
                    Some("between 1 and 1000000; 10000 by default"),
                );
                crate::healing_log::DEFAULT_CAP
            }
        };
        Config {
            path: self.file.clone(),
            log: raw.log,
            http_client,
            http,
            state_path: raw.state.path,
            healing_log_entries,
            source: self.text.into(),
            warnings: Vec::new(),
            bots,
        }
    }

    fn http(&mut self, raw: RawHttp) -> HttpConfig {
        let mut c = HttpConfig::default();
        if let Some(listen) = raw.listen {
            match listen.parse() {
                Ok(a) => c.listen = a,
                Err(_) => self.error(
                    "http.listen".into(),
                    format!("`{listen}` is not an address and port"),
                    Some("for example \"127.0.0.1:9120\", or \"[::1]:9120\""),
                ),
            }
        }
        if let Some(raw) = raw.admin_token {
            let whole_var = raw
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .is_some_and(|name| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !raw.contains("${") {
                self.error(
                    "http.admin_token".into(),
                    "the token is written in the file itself",
                    Some("keep it out of the file: admin_token = \"${OPSBOT_ADMIN_TOKEN}\", set in the environment"),
                );
            } else if !whole_var {
                self.error(
                    "http.admin_token".into(),
                    "the token must be one environment variable and nothing else (part of it would be written in the file)",
                    Some("admin_token = \"${OPSBOT_ADMIN_TOKEN}\""),
                );
            } else {
                match expand_env(&raw, |k| std::env::var(k).ok()) {
                    Ok(t) if token_strength(&t).is_none() => {
                        c.admin_token = Some(Secret::new(t));
                    }
                    Ok(t) => self.error(
                        "http.admin_token".into(),
                        format!(
                            "the environment's token is no secret: {}",
                            token_strength(&t).unwrap_or_default()
                        ),
                        Some("make one with: openssl rand -hex 32"),
                    ),
                    Err(e) => self.error("http.admin_token".into(), e, None),
                }
            }
        }
        if let Some(hosts) = raw.hosts {
            for (i, h) in hosts.iter().enumerate() {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                let ok = !h.is_empty()
                    && h.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if ok {
                    c.hosts.push(h);
                } else {
                    self.error(
                        format!("http.hosts[{i}]"),
                        format!("`{}` is not a host name", hosts[i]),
                        Some("the names the API is reached by, such as \"opsbot.internal.example\" (addresses and localhost are always accepted)"),
                    );
                }
            }
        }
        let loopback = c.listen.ip().is_loopback();
        if !loopback && c.admin_token.is_none() && raw.open_without_token != Some(true) {
            self.error(
                "http.listen".into(),
                format!(
                    "{} is reachable from other machines, and the API has no admin_token",
                    c.listen
                ),
                Some("set admin_token, listen on 127.0.0.1, or say open_without_token = true if a firewall or a proxy guards it"),
            );
        }
        c
    }

    fn http_client(&mut self, raw: RawHttpClient) -> HttpClientConfig {
        let d = HttpClientConfig::default();
        let k = "http_client";
        let max_connections_per_host = match raw.max_connections_per_host {
            None => d.max_connections_per_host,
            Some(n @ 1..=10_000) => n,
            Some(n) => {
                self.error(
                    format!("{k}.max_connections_per_host"),
                    format!("{n} connections per host cannot work"),
                    Some("between 1 and 10000; 50 by default"),
                );
                d.max_connections_per_host
            }
        };
        let retries = match raw.retries {
            None => d.retries,
            Some(n @ 0..=10) => n,
            Some(n) => {
                self.error(
                    format!("{k}.retries"),
                    format!("{n} retries would hide an outage for too long"),
                    Some("between 0 and 10; 3 by default"),
                );
                d.retries
            }
        };
        if let Some(ca) = &raw.ca_file
            && !ca.is_file()
        {
            self.error(
                format!("{k}.ca_file"),
                format!("{} is not a readable file", ca.display()),
                Some("a PEM file of CA certificates"),
            );
        }
        HttpClientConfig {
            max_connections_per_host,
            idle_timeout: self.secs(
                format!("{k}.idle_timeout_secs"),
                raw.idle_timeout_secs,
                d.idle_timeout,
            ),
            connect_timeout: self.secs(
                format!("{k}.connect_timeout_secs"),
                raw.connect_timeout_secs,
                d.connect_timeout,
            ),
            timeout: self.secs(format!("{k}.timeout_secs"), raw.timeout_secs, d.timeout),
            retries,
            ca_file: raw.ca_file,
        }
    }

    fn bot(&mut self, i: usize, b: RawBot, state_path: Option<PathBuf>) -> BotConfig {
        let k = format!("bot[{i}]");
        let mut o = BotOptions::default();
        if b.name.trim().is_empty() || b.name.chars().any(|c| c.is_control() || c == '/') {
            self.error(
                format!("{k}.name"),
                "a bot needs a name without `/` or control characters",
                None,
            );
        }
        if let Some(prefix) = b.prefix {
            if prefix.is_empty()
                || prefix
                    .chars()
                    .any(|c| c.is_whitespace() || !crate::text::is_printable(c))
                || prefix.chars().count() > 3
            {
                self.error(
                    format!("{k}.prefix"),
                    format!("`{prefix}` cannot be a command prefix"),
                    Some("one to three non-space characters, such as `!` or `.`"),
                );
            } else {
                o.prefix = prefix;
            }
        }
        o.admins = b.admins;
        for (command, raw) in b.access {
            let key = format!("{k}.access.{command}");
            let access = match raw {
                RawAccess::Word(w) if w == "everyone" => Access::Everyone,
                RawAccess::Word(w) if w == "admins" => Access::Admins,
                RawAccess::Word(w) => {
                    self.error(
                        key,
                        format!("`{w}` is not who may run it"),
                        Some("\"everyone\", \"admins\", or a list of identities like admins'"),
                    );
                    continue;
                }
                RawAccess::List(list) => Access::Only(list),
            };
            o.access.insert(
                command.trim_start_matches(o.prefix.as_str()).to_owned(),
                access,
            );
        }
        o.handler_timeout = self.secs(
            format!("{k}.handler_timeout_secs"),
            b.handler_timeout_secs,
            o.handler_timeout,
        );
        o.shutdown_deadline = self.secs(
            format!("{k}.shutdown_deadline_secs"),
            b.shutdown_deadline_secs,
            o.shutdown_deadline,
        );
        o.state_path = state_path;

        let s = b.supervisor;
        let d = RestartPolicy::default();
        o.restart = RestartPolicy {
            max_restarts: s.max_restarts.unwrap_or(d.max_restarts),
            window: self.secs(
                format!("{k}.supervisor.window_secs"),
                s.window_secs,
                d.window,
            ),
            backoff_initial: self.millis(
                format!("{k}.supervisor.backoff_initial_ms"),
                s.backoff_initial_ms,
                d.backoff_initial,
            ),
            backoff_max: self.millis(
                format!("{k}.supervisor.backoff_max_ms"),
                s.backoff_max_ms,
                d.backoff_max,
            ),
        };
        if o.restart.backoff_max < o.restart.backoff_initial {
            self.error(
                format!("{k}.supervisor.backoff_max_ms"),
                "is smaller than backoff_initial_ms",
                None,
            );
        }

        let d = Budget::default();
        o.budget = Budget {
            per_minute: b.budget.commands_per_minute.unwrap_or(d.per_minute),
            ignore_for: self.secs(
                format!("{k}.budget.ignore_secs"),
                b.budget.ignore_secs,
                d.ignore_for,
            ),
        };

        let ob = b.outbox;
        let d = OutboxSettings::default();
        if ob.max_line_bytes.is_some_and(|m| m < 16) {
            self.error(
                format!("{k}.outbox.max_line_bytes"),
                "must be at least 16",
                None,
            );
        }
        if ob.queue == Some(0) {
            self.error(format!("{k}.outbox.queue"), "must be at least 1", None);
        }
        o.outbox = OutboxSettings {
            max_line_bytes: ob.max_line_bytes,
            global: self.rate(&format!("{k}.outbox.rate"), ob.rate, ob.burst),
            global_bytes: self.rate(
                &format!("{k}.outbox.byte_rate"),
                ob.byte_rate,
                ob.byte_burst,
            ),
            per_destination: self.rate(
                &format!("{k}.outbox.dest_rate"),
                ob.dest_rate,
                ob.dest_burst,
            ),
            queue: ob.queue.unwrap_or(d.queue),
            loop_repeats: ob.loop_repeats.unwrap_or(d.loop_repeats),
            loop_window: self.secs(
                format!("{k}.outbox.loop_window_secs"),
                ob.loop_window_secs,
                d.loop_window,
            ),
        };

        let d = ReconnectPolicy::default();
        o.reconnect = ReconnectPolicy {
            initial: self.secs(
                format!("{k}.reconnect.initial_secs"),
                b.reconnect.initial_secs,
                d.initial,
            ),
            max: self.secs(
                format!("{k}.reconnect.max_secs"),
                b.reconnect.max_secs,
                d.max,
            ),
            stable_after: d.stable_after,
            refused_min: self.secs(
                format!("{k}.reconnect.refused_min_secs"),
                b.reconnect.refused_min_secs,
                d.refused_min,
            ),
            critical_after: self.secs(
                format!("{k}.reconnect.critical_after_secs"),
                b.reconnect.critical_after_secs,
                d.critical_after,
            ),
        };

        if b.transport.is_none() {
            self.error(
                k.clone(),
                format!("bot `{}` has no [bot.transport]: which chat service is it on?", b.name),
                Some("add a [bot.transport] table with kind = \"console\" (this terminal), \"irc\", \"xmpp\" or \"webex\""),
            );
        }
        let mut settings = b.transport.unwrap_or_default();
        let kind = match settings.remove("kind") {
            None if settings.is_empty() => "console".to_owned(),
            None => {
                self.error(
                    format!("{k}.transport.kind"),
                    "the transport has no `kind`".to_owned(),
                    Some("one of console, irc, xmpp, webex"),
                );
                "console".to_owned()
            }
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                self.error(
                    format!("{k}.transport.kind"),
                    format!("expected a string, found {}", other.type_str()),
                    Some("one of console, irc, xmpp, webex"),
                );
                "console".to_owned()
            }
        };
        let mut seen = HashSet::new();
        let handlers = b
            .handlers
            .into_iter()
            .filter(|h| {
                let fresh = seen.insert(h.clone());
                if !fresh {
                    self.errors.push(ConfigError {
                        file: self.file.clone(),
                        key: format!("{k}.handlers"),
                        line: None,
                        message: format!("handler `{h}` is listed twice"),
                        hint: None,
                    });
                }
                fresh
            })
            .collect();
        let mut seen = HashSet::new();
        let pollers = b
            .pollers
            .into_iter()
            .filter(|p| {
                let fresh = seen.insert(p.clone());
                if !fresh {
                    self.error(
                        format!("{k}.pollers"),
                        format!("poller `{p}` is listed twice"),
                        None,
                    );
                }
                fresh
            })
            .collect();
        for (table, what) in [(&b.handler, "handler"), (&b.poller, "poller")] {
            for (name, v) in table {
                if !v.is_table() {
                    self.error(
                        format!("{k}.{what}.{name}"),
                        format!(
                            "expected a table of the {what}'s settings, found {}",
                            v.type_str()
                        ),
                        Some(&format!(
                            "write [bot.{what}.{name}] with the settings under it"
                        )),
                    );
                }
            }
        }
        BotConfig {
            name: b.name,
            options: o,
            handlers,
            handler_settings: b.handler,
            pollers,
            poller_settings: b.poller,
            transport: TransportConfig {
                kind,
                settings,
                key: format!("{k}.transport"),
            },
            key: k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::from_str(Path::new("bots.toml"), text)
            .unwrap_err()
            .0
    }

    #[test]
    fn unknown_key_is_named_with_file_and_line() {
        let e = errors(
            "[[bot]]\nname = \"a\"\n[bot.outbox]\nrat = 3\n[bot.transport]\nkind = \"console\"\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].file, Path::new("bots.toml"));
        assert_eq!(e[0].key, "bot[0].outbox.rat");
        assert!(
            e[0].message.contains("unknown field `rat`"),
            "{}",
            e[0].message
        );
        assert_eq!(e[0].line, Some(4));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let e = errors(
            "[[bot]]\nname = \"a\"\nprefix = \"\"\nhandler_timeout_secs = -1\n[bot.outbox]\nrate = -2\n\
             [bot.transport]\nkind = \"console\"\n[[bot]]\nname = \"a\"\n[bot.transport]\nkind = \"console\"\n",
        );
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bot[0].prefix",
                "bot[0].handler_timeout_secs",
                "bot[0].outbox.rate",
                "bot[1].name",
                "bot[1].transport.kind"
            ]
        );
        let shown = ConfigErrors(e).to_string();
        assert!(shown.contains("bots.toml:3: `bot[0].prefix`"), "{shown}");
    }

    /// A bot without a transport used to become a console bot, and under a service manager
    /// (stdin from /dev/null) it stopped at once and exited 0: a quiet restart loop.
    #[test]
    fn a_bot_must_name_its_transport() {
        let e = errors("[[bot]]\nname = \"ops\"\nhandlers = [\"boom\"]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].key.as_str(), e[0].line), ("bot[0]", Some(1)));
        assert!(
            e[0].message.contains("has no [bot.transport]"),
            "{}",
            e[0].message
        );
        assert!(e[0].hint.as_deref().unwrap().contains("kind = \"console\""));
        let e = errors("[[bot]]\nname = \"ops\"\n[bot.transport]\nserver = \"x\"\n");
        assert_eq!(e[0].key, "bot[0].transport.kind", "{e:?}");
    }

    /// The common mistakes read like internals no more: `[bot]` for `[[bot]]`, a duration as a
    /// string, a misspelt key; and errors come in the file's order.
    #[test]
    fn common_mistakes_are_told_in_words_with_a_hint() {
        let e = errors("[bot]\nname = \"ops\"\n");
        assert_eq!(e[0].message, "`[bot]` makes one table, but bots are a list");
        assert_eq!(
            e[0].hint.as_deref(),
            Some("write [[bot]] (two brackets) above each bot")
        );
        let e = errors(
            "[[bot]]\nname = \"ops\"\nhandler_timeout_secs = \"30s\"\n[bot.transport]\nkind = \"console\"\n",
        );
        assert_eq!(e[0].key, "bot[0].handler_timeout_secs");
        assert_eq!(
            e[0].message,
            "expected a number of seconds, like 30, found string \"30s\""
        );
        let e = errors(
            "[[bot]]\nname = \"ops\"\n[bot.outbox]\nrat = 3\n[bot.transport]\nkind = \"console\"\n",
        );
        assert_eq!(e[0].hint.as_deref(), Some("did you mean `rate`?"));
        let e = errors(
            "[[bot]]\nname = \"ops\"\n[bot.outbox]\nzzzzzz = 3\n[bot.transport]\nkind = \"console\"\n",
        );
        assert!(e[0].hint.as_deref().unwrap().contains("check the spelling"));
        // In the file's order, though found in another.
        let e = errors(
            "[[bot]]\nname = \"a\"\n[bot.outbox]\nrate = -2\n[bot.transport]\nkind = \"console\"\n\
             [[bot]]\nname = \"b\"\nprefix = \"\"\n[bot.transport]\nkind = \"console\"\n",
        );
        let lines: Vec<(bool, Option<usize>)> =
            e.iter().map(|e| (e.line.is_none(), e.line)).collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted, "{e:?}");
        assert_eq!(e[1].key, "bot[1].prefix");
        assert_eq!(
            e[1].line,
            Some(9),
            "a key two bots have is found in its own bot"
        );
    }

    #[test]
    fn nearest_keys_are_found_by_edits() {
        assert_eq!(edits("rat", "rate"), 1);
        assert_eq!(edits("shuot", "shout"), 2);
        assert_eq!(edits("", "abc"), 3);
        assert_eq!(edits("kitten", "sitting"), 3);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = errors(
            "[[bot]]\nname = \"a\"\n[bot.budget]\ncommands_per_minute = \"many\"\n[bot.transport]\nkind = \"console\"\n",
        );
        assert_eq!(e[0].key, "bot[0].budget.commands_per_minute");
        assert_eq!(e[0].line, Some(4));
    }

    #[test]
    fn a_good_file_gives_options() {
        let c = Config::from_str(
            Path::new("x.toml"),
            "[log]\nlevel = \"debug\"\n[[bot]]\nname = \"ops\"\nprefix = \".\"\nadmins = [\"alice\"]\n\
             handlers = [\"boom\"]\n[bot.transport]\nkind = \"console\"\n[bot.outbox]\nrate = 2.5\nburst = 4\n",
        )
        .unwrap();
        let b = &c.bots[0];
        assert_eq!(b.options.prefix, ".");
        assert_eq!(b.options.outbox.global, Some(Rate::new(2.5, 4)));
        assert_eq!(b.handlers, ["boom"]);
        assert_eq!(b.transport.kind, "console");
    }

    /// The values of issue "2d of 6": accepted by the check, then a panic at run time that left
    /// the bot deaf. Each is now refused with its key and a hint.
    #[test]
    fn values_the_runtime_cannot_use_are_refused() {
        let e = errors(
            "[[bot]]\nname = \"x\"\nprefix = \"\\u0007\"\nhandler_timeout_secs = 1e300\n\
             shutdown_deadline_secs = 4e7\n\
             [bot.outbox]\nrate = 1e-300\nbyte_rate = 1e300\ndest_rate = 0.001\ndest_burst = 4000000000\n\
             [bot.supervisor]\nbackoff_max_ms = 18446744073709551615\n[bot.transport]\nkind = \"console\"\n\
             [[bot]]\nname = \"y\"\nprefix = \"\\u200B!\"\n[bot.transport]\nkind = \"console\"\n",
        );
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bot[0].prefix",
                "bot[0].handler_timeout_secs",
                "bot[0].shutdown_deadline_secs",
                "bot[0].outbox.rate",
                "bot[0].outbox.byte_rate",
                "bot[0].outbox.dest_burst",
                "bot[0].supervisor.backoff_max_ms",
                "bot[1].prefix",
                "bot[1].transport.kind",
            ]
        );
        assert!(
            e.iter()
                .filter(|e| !e.key.ends_with("transport.kind"))
                .all(|e| e.hint.is_some()),
            "{e:?}"
        );
    }

    /// Whatever number a numeric key holds, the check either refuses it (naming that key) or
    /// the runtime can use it: limiters build, timers can be set, restarts back off.
    #[test]
    fn every_accepted_number_is_usable_at_run_time() {
        let float_keys = [
            "handler_timeout_secs",
            "shutdown_deadline_secs",
            "supervisor.window_secs",
            "budget.ignore_secs",
            "outbox.rate",
            "outbox.dest_rate",
            "outbox.byte_rate",
            "outbox.loop_window_secs",
            "reconnect.initial_secs",
            "reconnect.max_secs",
            "reconnect.refused_min_secs",
            "reconnect.critical_after_secs",
        ];
        let int_keys = [
            "supervisor.max_restarts",
            "supervisor.backoff_initial_ms",
            "supervisor.backoff_max_ms",
            "budget.commands_per_minute",
            "outbox.burst",
            "outbox.dest_burst",
            "outbox.byte_burst",
            "outbox.queue",
            "outbox.max_line_bytes",
            "outbox.loop_repeats",
        ];
        let edges = [
            0.0, 1e-300, 1e-9, 1e-5, 0.5, 1.0, 3.0, 86_400.0, 3.2e7, 1e9, 1e12, 1e300,
        ];
        let mut rng = fastrand::Rng::with_seed(0x05b0);
        let mut floats: Vec<f64> = edges.to_vec();
        floats.extend((0..40).map(|_| 10f64.powf(rng.f64() * 40.0 - 20.0)));
        let mut ints: Vec<u64> = vec![0, 1, 4, 1000, u32::MAX as u64, u64::MAX];
        ints.extend((0..20).map(|_| rng.u64(..) >> rng.u32(0..64)));
        let one = |key: &str, value: String| {
            let (table, field) = key.split_once('.').map_or(("", key), |(t, f)| (t, f));
            let body = if table.is_empty() {
                format!(
                    "[[bot]]\nname = \"x\"\n{field} = {value}\n[bot.transport]\nkind = \"console\"\n"
                )
            } else {
                // Rates and bursts come in pairs: give a burst its rate.
                let rate = if field.ends_with("burst") {
                    format!("{} = 1.0\n", field.replace("burst", "rate"))
                } else {
                    String::new()
                };
                format!(
                    "[[bot]]\nname = \"x\"\n[bot.{table}]\n{rate}{field} = {value}\n[bot.transport]\nkind = \"console\"\n"
                )
            };
            match Config::from_str(Path::new("p.toml"), &body) {
                Err(ConfigErrors(errs)) => {
                    // The key itself, or its partner in the same table (a maximum below the
                    // initial value is reported on the maximum).
                    let table = format!("bot[0].{}", key.rsplit_once('.').map_or("", |(t, _)| t));
                    assert!(
                        errs.iter().all(|e| e.key == format!("bot[0].{key}")
                            || (!table.ends_with('.') && e.key.starts_with(&table))),
                        "{key} = {value}: {errs:?}"
                    );
                }
                Ok(c) => usable(&c.bots[0].options, &format!("{key} = {value}")),
            }
        };
        for key in float_keys {
            for v in &floats {
                one(key, format!("{v:e}"));
            }
        }
        for key in int_keys {
            for v in &ints {
                if *v <= i64::MAX as u64 {
                    one(key, v.to_string());
                }
            }
        }
    }

    /// What the runtime does with the options, minus the network: fails the test by panicking.
    fn usable(o: &BotOptions, what: &str) {
        let now = std::time::Instant::now();
        for d in [
            o.handler_timeout + Duration::from_millis(100),
            o.shutdown_deadline,
            o.restart.window,
            o.restart.backoff_max,
            o.budget.ignore_for,
            o.outbox.loop_window,
            o.reconnect.max,
            o.reconnect.refused_min,
        ] {
            assert!(now.checked_add(d).is_some(), "{what}: {d:?}");
        }
        let limits = crate::transport::Limits::unlimited(400);
        let pacing = crate::outbox::Pacing::new(o.outbox.clone(), &limits);
        assert!(pacing.try_take_n(1, 10), "{what}: a first line must pass");
        let mut r = crate::supervisor::Restarts::new(o.restart);
        for _ in 0..30 {
            let _ = r.record(now);
        }
        let _ = crate::supervisor::full_jitter(o.reconnect.initial, o.reconnect.max, 40);
    }

    #[test]
    fn env_expansion_and_redaction() {
        let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(expand_env("a${TOKEN}b$$", env).unwrap(), "as3cretb$");
        assert!(
            expand_env("${MISSING}", env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(expand_env("${TOKEN", env).is_err());
        let s = Secret::new("s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.expose(), "s3cret");
    }
}
