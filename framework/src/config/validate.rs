//! Checking the values: every problem becomes a [`ConfigError`] pointed at its line; all
//! of them are collected instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::options::MAX_SECS;
use crate::options::{Access, BotOptions, Budget, ReconnectPolicy, RestartPolicy};
use crate::pacing::{OutboxSettings, Rate};

mod bot;

use super::raw::*;
use super::*;

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

/// Reads the file's tables; top-level tables named in `extensions` are set aside, whole, for
/// the crates that own them.
pub(super) fn parse(
    path: &Path,
    text: &str,
    extensions: &[&str],
) -> Result<(RawFile, BTreeMap<String, toml::Table>), ConfigErrors> {
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
    let taken = super::extensions::Taken::default();
    let aside = super::extensions::SetAside {
        inner: de,
        names: extensions,
        taken: &taken,
    };
    let raw: RawFile = serde_path_to_error::deserialize(aside).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        let key = if key == "." { String::new() } else { key };
        let span = inner.span().map(|s| line_of(text, s.start));
        // A top-level key's name passes through the set-aside filter, which cannot keep its
        // place: the error carries the whole file's span, so find the key by its name.
        let line = match unknown_key(inner.message()) {
            Some(k) if !key.contains(['.', '[']) => locate(text, k).or(span),
            _ => span,
        };
        let (message, hint) = explain(&key, inner.message());
        let mut err = fail(key, line, message);
        err.0[0].hint = hint;
        err
    })?;
    let mut tables = BTreeMap::new();
    for (name, value) in taken.into_inner() {
        match value {
            toml::Value::Table(t) => {
                tables.insert(name, t);
            }
            other => {
                return Err(fail(
                    name.clone(),
                    locate(text, &name),
                    format!(
                        "`{name}` must be a table ([{name}]), not a {}",
                        other.type_str()
                    ),
                ));
            }
        }
    }
    Ok((raw, tables))
}

/// The key an "unknown field" message names.
fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

pub(super) struct Validator<'a> {
    pub(super) file: PathBuf,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
    /// Whether a file without `[[bot]]` is refused (it is, but for a process that runs none).
    pub(super) bots_required: bool,
}

/// The line of `key` in `text`, when the key's last segment appears once as a key there.
pub(super) fn locate(text: &str, key: &str) -> Option<usize> {
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

    pub(super) fn config(&mut self, raw: RawFile) -> Config {
        if let Some(level) = &raw.log.level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            self.error(
                "log.level".into(),
                format!("`{level}` is not a log filter"),
                Some("a level such as `info`, or directives such as `opsbot=debug,warn`"),
            );
        }
        if raw.bot.is_empty() && self.bots_required {
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
            extensions: Default::default(),
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
}
