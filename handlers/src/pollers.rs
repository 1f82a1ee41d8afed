//! Pollers for any bot: an RSS/Atom feed (`feed`) and an HTTP JSON API (`http_json`). Each posts
//! only new items (the framework's seen-index in the state store: the first poll primes
//! silently, nothing old comes back after a restart), at most `max_posts` per poll and then
//! "… and N more", and sits behind a circuit breaker: a source that keeps failing is left alone
//! for a while, its ticks skipped, and shows in `!status`.
//!
//! ```toml
//! [[bot]]
//! pollers = ["feed", "http_json"]
//!
//! [bot.poller.feed]
//! to = ["#ops"]
//! every_secs = 300
//! url = "https://status.example.com/history.atom"
//!
//! [bot.poller.http_json]
//! to = ["#ops"]
//! url = "https://tickets.example.com/api/issues?state=new"
//! headers = { Authorization = "Bearer ${TICKETS_TOKEN}" }
//! items = "/issues"                                  # JSON pointer to the list
//! id = "key"                                         # the field that identifies an item
//! template = "{key}: {fields.summary} ({fields.priority.name})"
//! breaker = { failures = 5, window_secs = 60, open_secs = 60 }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use opsbot::breaker::{Breaker, BreakerSettings};
use opsbot::config::Secret;
use opsbot::http::{HttpClient, Repeat, Throttle};
use opsbot::prelude::*;
use opsbot::settings::{FromSettings, SettingsError};
use serde_json::Value;

use crate::links::clean;

fn checked_url(url: &str) -> Result<(), SettingsError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(SettingsError::at("url", "is not an http(s) URL"))
    }
}

fn host_of(url: &str) -> String {
    opsbot::fetch::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| url.to_owned())
}

/// A polled HTTP source: its URL and headers, line length, the shared client with a throttle
/// of its own, and its breaker (which outlives restarts: clones share it).
#[derive(Clone, Debug)]
struct Source {
    url: String,
    headers: Vec<(String, Secret)>,
    max_chars: usize,
    http: Arc<HttpClient>,
    throttle: Arc<Throttle>,
    breaker: Breaker,
}

impl Source {
    /// Checks the settings every source has.
    fn new(
        url: String,
        headers: Vec<(String, Secret)>,
        max_chars: Option<usize>,
        breaker: Option<BreakerSettings>,
    ) -> Result<Self, SettingsError> {
        checked_url(&url)?;
        let max_chars = max_chars.unwrap_or(300);
        if !(40..=2000).contains(&max_chars) {
            return Err(SettingsError::at("max_chars", "must be 40 to 2000"));
        }
        Ok(Self {
            breaker: Breaker::new(host_of(&url), BreakerSettings::resolve(breaker)?),
            url,
            headers,
            max_chars,
            http: opsbot::http::shared(),
            throttle: Arc::new(Throttle::new()),
        })
    }

    /// What one poll of the source brought; a failure counts against its breaker, and an open
    /// breaker skips the poll.
    async fn get(&self) -> Result<Vec<u8>> {
        let permit = self.breaker.check()?;
        let url = self.url.as_str();
        let result = self
            .http
            .send(&self.throttle, Repeat::Safe, url, |c| {
                let mut r = c.get(url);
                for (k, v) in &self.headers {
                    r = r.header(k.as_str(), v.expose());
                }
                r
            })
            .await;
        match result {
            Ok(resp) if resp.is_success() => {
                permit.success();
                Ok(resp.body)
            }
            Ok(resp) => {
                let why = format!("{} answered HTTP {}", host_of(url), resp.status);
                permit.failure(&why);
                Err(Error::user(why))
            }
            Err(e) => {
                let why = format!("{}: {e}", host_of(url));
                permit.failure(&why);
                Err(Error::user(why))
            }
        }
    }
}

/// `[bot.poller.feed]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// The feed (RSS 0.9x/1.0/2.0, Atom or JSON Feed).
    pub url: String,
    /// Longest line posted (default 300 characters).
    pub max_chars: Option<usize>,
    /// The source's circuit breaker.
    pub breaker: Option<BreakerSettings>,
}

/// The feed poller: one line per new entry, its title and link.
#[derive(Clone, Debug)]
pub struct Feed {
    source: Source,
}

impl FromSettings for Feed {
    type Settings = FeedSettings;

    fn from_settings(s: FeedSettings) -> Result<Self, SettingsError> {
        Ok(Self {
            source: Source::new(s.url, Vec::new(), s.max_chars, s.breaker)?,
        })
    }
}

impl Poller for Feed {
    const NAME: &'static str = "feed";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let src = &self.source;
        let body = src.get().await?;
        let feed = feed_rs::parser::parse(&body[..])
            .map_err(|e| Error::user(format!("{}: not a feed ({e})", host_of(&src.url))))?;
        // Feeds list the newest first; items go oldest first.
        let mut items: Vec<Item> = feed
            .entries
            .iter()
            .filter(|e| !e.id.is_empty())
            .map(|e| {
                let title = e
                    .title
                    .as_ref()
                    .map_or("(untitled)", |t| t.content.as_str());
                let link = e.links.first().map_or("", |l| l.href.as_str());
                let text = clean(&format!("{title} {link}"), src.max_chars);
                Item::new(e.id.clone(), text)
            })
            .collect();
        items.reverse();
        Ok(items)
    }

    fn breakers(&self) -> Vec<Breaker> {
        vec![self.source.breaker.clone()]
    }
}

/// `[bot.poller.http_json]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpJsonSettings {
    /// The API's URL.
    pub url: String,
    /// Request headers; values may be secrets (`${ENV_VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// JSON pointer to the list of items (`/issues`); the answer itself by default.
    #[serde(default)]
    pub items: String,
    /// The field that identifies an item (a dotted path: `key`, `fields.id`).
    pub id: String,
    /// The line posted: `{dotted.path}` stands for a field's value.
    pub template: String,
    /// Longest line posted (default 300 characters).
    pub max_chars: Option<usize>,
    /// The source's circuit breaker.
    pub breaker: Option<BreakerSettings>,
}

/// The HTTP JSON poller: one templated line per new item of a JSON list.
#[derive(Clone, Debug)]
pub struct HttpJson {
    source: Source,
    items: String,
    id: String,
    template: String,
}

/// The value at a dotted path (`fields.status.name`; list indexes as numbers).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| match v {
        Value::Array(a) => a.get(key.parse::<usize>().ok()?),
        _ => v.get(key),
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `template` with each `{path}` replaced by the item's value there (empty when missing).
pub fn render(template: &str, item: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j) => {
                out.push_str(&at(item, after[..j].trim()).map(text_of).unwrap_or_default());
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

impl FromSettings for HttpJson {
    type Settings = HttpJsonSettings;

    fn from_settings(s: HttpJsonSettings) -> Result<Self, SettingsError> {
        if !(s.items.is_empty() || s.items.starts_with('/')) {
            return Err(SettingsError::at(
                "items",
                "is a JSON pointer: empty, or starting with / (`/issues`)",
            ));
        }
        if s.id.trim().is_empty() {
            return Err(SettingsError::at(
                "id",
                "names the field that identifies an item",
            ));
        }
        if !s.template.contains('{') {
            return Err(SettingsError::at(
                "template",
                "should show at least one field, such as {title}",
            ));
        }
        for k in s.headers.keys() {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(SettingsError::at(
                    format!("headers.{k}"),
                    "is not a header name",
                ));
            }
        }
        Ok(Self {
            source: Source::new(
                s.url,
                s.headers.into_iter().collect(),
                s.max_chars,
                s.breaker,
            )?,
            items: s.items,
            id: s.id,
            template: s.template,
        })
    }
}

impl Poller for HttpJson {
    const NAME: &'static str = "http_json";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let src = &self.source;
        let body = src.get().await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::user(format!("{}: not JSON ({e})", host_of(&src.url))))?;
        let list = v
            .pointer(&self.items)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::user(format!(
                    "{}: no list at `{}`",
                    host_of(&src.url),
                    self.items
                ))
            })?;
        Ok(list
            .iter()
            .filter_map(|item| {
                let id = at(item, &self.id).map(text_of).filter(|s| !s.is_empty())?;
                Some(Item::new(
                    id,
                    clean(&render(&self.template, item), src.max_chars),
                ))
            })
            .collect())
    }

    fn breakers(&self) -> Vec<Breaker> {
        vec![self.source.breaker.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_dotted_paths() {
        let item = serde_json::json!({"key": "OPS-7", "fields": {"summary": "disk <full>", "n": 3, "tags": ["a", "b"]}});
        assert_eq!(
            render(
                "{key}: {fields.summary} ({fields.n}, {fields.tags.1}){missing}",
                &item
            ),
            "OPS-7: disk <full> (3, b)"
        );
        assert_eq!(render("open { brace", &item), "open { brace");
    }
}
