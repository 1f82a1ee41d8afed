//! Configuration: TOML in, validated options out.
//!
//! Two stages, as in ripgrep: serde reads the file into raw structs that reject unknown keys
//! (`deny_unknown_fields`), then [`Config::from_str`] checks the values and builds
//! [`BotOptions`]. Every problem becomes a [`ConfigError`] naming the file, the key path
//! (`bot[0].outbox.rate`), the line when known, what is wrong and a hint; validation collects all
//! of them instead of stopping at the first.
//!
//! Secrets are written as `${ENV_VAR}` and read into [`Secret`], which never prints its value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::options::BotOptions;

mod error;
mod extensions;
mod raw;
mod secret;
mod validate;

pub use error::{ConfigError, ConfigErrors, explain};
pub use secret::{Secret, expand_env};
use validate::{Validator, locate, parse};

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
#[non_exhaustive]
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
    /// Top-level tables of crates built on the framework, by name, as the file has them
    /// (see [`Config::load_with`]); their owners check them.
    pub extensions: std::collections::BTreeMap<String, toml::Table>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_with(path, &[])
    }

    /// Reads and validates a file in which the top-level tables named in `extensions` are
    /// allowed: they are set aside in [`Config::extensions`] for the crates that own them.
    pub fn load_with(path: &Path, extensions: &[&str]) -> Result<Self, ConfigErrors> {
        let text = read(path)?;
        Self::from_str_with(path, &text, extensions)
    }

    /// Like [`Config::load_with`], for a process that runs no bot (a worker of a crate built on
    /// the framework): a file without `[[bot]]` tables is then whole.
    pub fn load_without_bots(path: &Path, extensions: &[&str]) -> Result<Self, ConfigErrors> {
        let text = read(path)?;
        Self::validate(path, &text, extensions, false)
    }

    /// Validates `text` as if read from `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        Self::from_str_with(path, text, &[])
    }

    /// Validates `text` as if read from `path`, with the extension tables of
    /// [`Config::load_with`].
    pub fn from_str_with(
        path: &Path,
        text: &str,
        extensions: &[&str],
    ) -> Result<Self, ConfigErrors> {
        Self::validate(path, text, extensions, true)
    }

    fn validate(
        path: &Path,
        text: &str,
        extensions: &[&str],
        bots_required: bool,
    ) -> Result<Self, ConfigErrors> {
        let (raw, tables) = parse(path, text, extensions)?;
        let mut v = Validator {
            file: path.to_owned(),
            text,
            errors: Vec::new(),
            bots_required,
        };
        let mut config = v.config(raw);
        config.extensions = tables;
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
            extensions: Default::default(),
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

/// The text of a config file, or why it cannot be read.
fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            key: String::new(),
            line: None,
            message: format!("cannot read: {e}"),
            hint: None,
        }])
    })
}

#[cfg(test)]
mod tests {
    use super::error::edits;
    use super::*;
    use crate::pacing::Rate;

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
        let limits = crate::pacing::Limits::unlimited(400);
        let pacing = crate::pacing::Pacing::new(o.outbox.clone(), &limits);
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
