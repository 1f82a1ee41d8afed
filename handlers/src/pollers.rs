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
//! headers = { Authorization = "Bearer ${TICKETS_TOKEN}" }   # sent to this host only
//! items = "/issues"                                  # JSON pointer to the list
//! id = "key"                                         # the field that identifies an item
//! template = "{key}: {fields.summary} ({fields.priority.name})"
//! breaker = { failures = 5, window_secs = 60, open_secs = 60 }
//! # allow = ["sso.corp.example"]   # internal hosts a redirect may lead to
//! ```
//!
//! **Redirects** are followed by hand, at most three: one to the configured host (same scheme,
//! host and port) is the operator's own and gets the configured headers; one to any other host
//! goes through the link guard of [`opsbot::fetch`] (every hop checked, internal addresses
//! refused unless listed in `allow`) and gets none of them. The shared HTTP client itself
//! follows no redirect.

use std::collections::BTreeMap;
use std::sync::Arc;

use opsbot::breaker::Breaker;
use opsbot::config::Secret;
use opsbot::fetch::{Allow, FetchError, FetchSettings, Fetcher, Url};
use opsbot::http::{HttpClient, Repeat, Throttle};
use opsbot::prelude::*;
use opsbot::settings::BreakerSettings;
use opsbot::settings::{FromSettings, SettingsError};
use serde_json::Value;

/// The longest link a feed item keeps.
const MAX_LINK: usize = 2000;

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

/// Redirects a poll follows at most.
const MAX_REDIRECTS: u32 = 3;

/// The settings every source has.
struct SourceSettings {
    url: String,
    headers: Vec<(String, Secret)>,
    max_chars: Option<usize>,
    breaker: Option<BreakerSettings>,
    allow: Vec<String>,
}

/// A polled HTTP source: its URL and headers, line length, the shared client with a throttle
/// of its own, the guard that checks redirects to other hosts, and its breaker (which
/// outlives restarts: clones share it).
#[derive(Clone, Debug)]
struct Source {
    url: Url,
    headers: Vec<(String, Secret)>,
    max_chars: usize,
    http: Arc<HttpClient>,
    throttle: Arc<Throttle>,
    guard: Fetcher,
    breaker: Breaker,
}

/// Whether two URLs share scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Source {
    /// Checks the settings every source has.
    fn new(s: SourceSettings) -> Result<Self, SettingsError> {
        checked_url(&s.url)?;
        let url = Url::parse(&s.url).map_err(|e| SettingsError::at("url", e.to_string()))?;
        if url.host_str().is_none() {
            return Err(SettingsError::at("url", "has no host"));
        }
        let max_chars = s.max_chars.unwrap_or(300);
        if !(40..=2000).contains(&max_chars) {
            return Err(SettingsError::at("max_chars", "must be 40 to 2000"));
        }
        let mut allow = Vec::new();
        for (i, a) in s.allow.iter().enumerate() {
            allow.push(
                a.parse::<Allow>()
                    .map_err(|e| SettingsError::at(format!("allow[{i}]"), e))?,
            );
        }
        let http = opsbot::http::shared();
        let guard = Fetcher::new(
            &http,
            FetchSettings {
                allow,
                total: http.config().timeout,
                max_body: opsbot::http::MAX_BODY,
                max_redirects: MAX_REDIRECTS,
                local_address: None,
            },
        )
        .map_err(|e| SettingsError::new(format!("cannot build the redirect guard: {e}")))?;
        Ok(Self {
            breaker: Breaker::new(host_of(&s.url), BreakerSettings::resolve(s.breaker)?),
            url,
            headers: s.headers,
            max_chars,
            http,
            throttle: Arc::new(Throttle::new()),
            guard,
        })
    }

    /// What one poll of the source brought; a failure counts against its breaker, and an open
    /// breaker skips the poll.
    async fn get(&self) -> Result<Vec<u8>> {
        let permit = self.breaker.check()?;
        match self.fetch().await {
            Ok(body) => {
                permit.success();
                Ok(body)
            }
            Err(why) => {
                permit.failure(&why);
                Err(Error::user(why))
            }
        }
    }

    /// The body of a 2xx answer, following redirects as the module documentation says; or
    /// why there is none (naming the host, never the whole URL, which may hold a secret).
    async fn fetch(&self) -> std::result::Result<Vec<u8>, String> {
        let host = host_of(self.url.as_str());
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let target = url.as_str();
            let resp = self
                .http
                .send(&self.throttle, Repeat::Safe, target, |c| {
                    let mut r = c.get(target);
                    for (k, v) in &self.headers {
                        r = r.header(k.as_str(), v.expose());
                    }
                    r
                })
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            if resp.is_success() {
                return Ok(resp.body);
            }
            let Some(next) = resp
                .location
                .as_deref()
                .filter(|_| (300..400).contains(&resp.status))
            else {
                return Err(format!("{host} answered HTTP {}", resp.status));
            };
            let next = url
                .join(next)
                .map_err(|e| format!("{host}: a bad redirect ({e})"))?;
            if same_origin(&next, &self.url) {
                url = next;
                continue;
            }
            // Another host: no configured header goes there, and the guard checks every hop.
            let other = host_of(next.as_str());
            return match self.guard.fetch(next.as_str()).await {
                Ok(f) if f.truncated => Err(format!(
                    "{other} (redirected from {host}): answer over {} bytes",
                    opsbot::http::MAX_BODY
                )),
                Ok(f) if (200..300).contains(&f.status) => Ok(f.body),
                Ok(f) => Err(format!(
                    "{other} (redirected from {host}) answered HTTP {}",
                    f.status
                )),
                Err(FetchError::Refused(why)) => Err(format!(
                    "{host} redirected to {other}, refused: {why} (list it in `allow` if it is \
                     yours)"
                )),
                Err(e) => Err(format!("{other} (redirected from {host}): {e}")),
            };
        }
        Err(format!("{host}: more than {MAX_REDIRECTS} redirects"))
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
    /// Internal hosts, addresses or ranges a redirect to another host may lead to.
    #[serde(default)]
    pub allow: Vec<String>,
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
            source: Source::new(SourceSettings {
                url: s.url,
                headers: Vec::new(),
                max_chars: s.max_chars,
                breaker: s.breaker,
                allow: s.allow,
            })?,
        })
    }
}

impl Poller for Feed {
    const NAME: &'static str = "feed";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let src = &self.source;
        let body = src.get().await?;
        let feed = feed_rs::parser::parse(&body[..])
            .map_err(|e| Error::user(format!("{}: not a feed ({e})", host_of(src.url.as_str()))))?;
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
                let title = clean(title, src.max_chars);
                // A link with its title: clickable where the service has links, `title <url>`
                // elsewhere. A link too long to be one is left out.
                if link.is_empty() || link.len() > MAX_LINK {
                    Item::new(e.id.clone(), title)
                } else {
                    Item::rich(e.id.clone(), Line::new().link(title, clean(link, MAX_LINK)))
                }
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
    /// Internal hosts, addresses or ranges a redirect to another host may lead to.
    #[serde(default)]
    pub allow: Vec<String>,
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
            source: Source::new(SourceSettings {
                url: s.url,
                headers: s.headers.into_iter().collect(),
                max_chars: s.max_chars,
                breaker: s.breaker,
                allow: s.allow,
            })?,
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
            .map_err(|e| Error::user(format!("{}: not JSON ({e})", host_of(src.url.as_str()))))?;
        let list = v
            .pointer(&self.items)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::user(format!(
                    "{}: no list at `{}`",
                    host_of(src.url.as_str()),
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
