//! Link summaries: an http(s) URL said in chat gets one line. xkcd comics get their number,
//! title, year and alt text from xkcd's JSON; other pages their `og:title`, else `<title>`.
//!
//! The URL is chosen by whoever types it, so every fetch goes through [`opsbot::fetch`]'s
//! guard: internal addresses are refused however they are written or resolved, redirects are
//! checked hop by hop, one time limit covers the whole fetch and the body is read up to a cap.
//! A refused or failed link gets no answer (nothing to probe the network with). The same URL
//! is summarised once per room within `repeat_window_secs`, and a room gets at most
//! `per_room_per_minute` summaries.
//!
//! Enable with `handlers = ["links"]`; settings in `[bot.handler.links]` (all optional):
//!
//! ```toml
//! [bot.handler.links]
//! allow = ["wiki.corp.example", "10.20.0.0/16"]   # internal sites that may be summarised
//! timeout_secs = 5
//! max_body_bytes = 1048576
//! max_title_chars = 200
//! repeat_window_secs = 600
//! per_room_per_minute = 5
//! xkcd_url = "https://xkcd.com"     # where comics' JSON is read
//! nameservers = []                  # the guard's resolver; the system's by default
//! breaker = { failures = 5, window_secs = 60, open_secs = 60 }   # per site
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsbot::fetch::{Allow, FetchError, FetchSettings, Fetcher, Lookup};
use opsbot::prelude::*;
use opsbot::settings::{FromSettings, SettingsError};
use opsbot::text::Escaped;
use regex::Regex;

/// `[bot.handler.links]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksSettings {
    /// Internal host names, addresses or CIDR ranges that may be fetched.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The whole fetch, in seconds (default 5).
    pub timeout_secs: Option<u64>,
    /// Body bytes read at most (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Longest line (default 200 characters).
    pub max_title_chars: Option<usize>,
    /// A URL is summarised once per room within this many seconds (default 600).
    pub repeat_window_secs: Option<u64>,
    /// Summaries per room per minute (default 5).
    pub per_room_per_minute: Option<usize>,
    /// Base URL of xkcd's JSON (default `https://xkcd.com`).
    pub xkcd_url: Option<String>,
    /// Nameservers for the guard's lookups (`ip` or `ip:port`); the system's when empty.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// The address fetches are made from (default: the system's choice).
    pub local_address: Option<std::net::IpAddr>,
    /// Each site's circuit breaker (5 failures in 60 s open it for 60 s by default).
    pub breaker: Option<opsbot::settings::BreakerSettings>,
}

/// Room memory: recent summaries (for the rate) and URLs (for repeats).
#[derive(Debug, Default)]
struct Memory {
    recent: HashMap<String, VecDeque<Instant>>,
    seen: HashMap<(String, String), Instant>,
}

/// The link summariser.
#[derive(Clone, Debug)]
pub struct Links {
    fetcher: Fetcher,
    xkcd: String,
    max_title_chars: usize,
    window: Duration,
    per_minute: usize,
    breaker: opsbot::breaker::BreakerPolicy,
    memory: Arc<Mutex<Memory>>,
}

fn url_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r#"(?i)\bhttps?://[^\s<>"'`]+"#).expect("valid"))
}

fn lookup_with(nameservers: &[String]) -> Result<Option<Lookup>, SettingsError> {
    if nameservers.is_empty() {
        return Ok(None);
    }
    let dns = crate::dns::Dns::from_settings(crate::dns::DnsSettings {
        nameservers: nameservers.to_vec(),
        timeout_secs: Some(2),
        max_answers: None,
        breaker: None,
    })?;
    let resolver = dns.resolver();
    Ok(Some(Arc::new(move |host: String| {
        let r = resolver.clone();
        Box::pin(async move {
            r.lookup_ip(host.as_str())
                .await
                .map(|l| l.iter().collect())
                .map_err(std::io::Error::other)
        })
    })))
}

impl FromSettings for Links {
    type Settings = LinksSettings;

    fn from_settings(s: LinksSettings) -> Result<Self, SettingsError> {
        let mut allow = Vec::new();
        for (i, a) in s.allow.iter().enumerate() {
            allow.push(
                a.parse::<Allow>()
                    .map_err(|e| SettingsError::at(format!("allow[{i}]"), e))?,
            );
        }
        let total = Duration::from_secs(s.timeout_secs.unwrap_or(5));
        if !(1..=60).contains(&total.as_secs()) {
            return Err(SettingsError::at("timeout_secs", "must be 1 to 60"));
        }
        let max_body = s.max_body_bytes.unwrap_or(1 << 20);
        if !(1024..=16 << 20).contains(&max_body) {
            return Err(SettingsError::at(
                "max_body_bytes",
                "must be 1024 to 16777216",
            ));
        }
        let max_title_chars = s.max_title_chars.unwrap_or(200);
        if !(20..=1000).contains(&max_title_chars) {
            return Err(SettingsError::at("max_title_chars", "must be 20 to 1000"));
        }
        let per_minute = s.per_room_per_minute.unwrap_or(5);
        if !(1..=60).contains(&per_minute) {
            return Err(SettingsError::at("per_room_per_minute", "must be 1 to 60"));
        }
        let xkcd = s
            .xkcd_url
            .unwrap_or_else(|| "https://xkcd.com".into())
            .trim_end_matches('/')
            .to_owned();
        if reqwest_url_ok(&xkcd).is_none() {
            return Err(SettingsError::at("xkcd_url", "is not an http(s) URL"));
        }
        let breaker = opsbot::settings::BreakerSettings::resolve(s.breaker)?;
        let settings = FetchSettings {
            allow,
            total,
            max_body,
            max_redirects: 3,
            local_address: s.local_address,
        };
        let http = opsbot::http::shared();
        let fetcher = match lookup_with(&s.nameservers)? {
            Some(lookup) => Fetcher::with_lookup(&http, settings, lookup),
            None => Fetcher::new(&http, settings),
        }
        .map_err(|e| SettingsError::new(format!("cannot build the fetcher: {e}")))?;
        Ok(Self {
            fetcher,
            xkcd,
            max_title_chars,
            window: Duration::from_secs(s.repeat_window_secs.unwrap_or(600)),
            per_minute,
            breaker,
            memory: Arc::new(Mutex::new(Memory::default())),
        })
    }
}

fn reqwest_url_ok(u: &str) -> Option<()> {
    (u.starts_with("http://") || u.starts_with("https://")).then_some(())
}

/// Text fit for one chat line: entities decoded, whitespace collapsed, controls and invisible
/// characters gone, cut to `max` characters.
pub fn clean(raw: &str, max: usize) -> String {
    let decoded = html_escape::decode_html_entities(raw);
    let mut out = String::new();
    for word in decoded.split_whitespace() {
        let word: String = word
            .chars()
            .filter(|c| opsbot::text::is_printable(*c))
            .collect();
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word);
    }
    if out.chars().count() > max {
        let cut: String = out.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    } else {
        out
    }
}

/// The page's title: `og:title`, else `<title>`.
pub fn title_of(html: &str) -> Option<String> {
    static META: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static CONTENT: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static TITLE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let meta = META.get_or_init(|| Regex::new(r"(?is)<meta\b[^>]*>").expect("valid"));
    let content = CONTENT.get_or_init(|| {
        Regex::new(r#"(?is)\bcontent\s*=\s*(?:"([^"]*)"|'([^']*)')"#).expect("valid")
    });
    let title =
        TITLE.get_or_init(|| Regex::new(r"(?is)<title\b[^>]*>(.*?)</title\s*>").expect("valid"));
    for m in meta.find_iter(html) {
        let tag = m.as_str();
        let lower = tag.to_ascii_lowercase();
        if lower.contains("og:title")
            && let Some(c) = content.captures(tag)
        {
            let v = c.get(1).or_else(|| c.get(2)).map_or("", |v| v.as_str());
            if !v.trim().is_empty() {
                return Some(v.to_owned());
            }
        }
    }
    title
        .captures(html)
        .and_then(|c| c.get(1))
        .map(|t| t.as_str().to_owned())
        .filter(|t| !t.trim().is_empty())
}

/// The comic number of an xkcd link (`https://xkcd.com/327/`), if it is one.
fn xkcd_number(url: &opsbot::fetch::Url) -> Option<u32> {
    let host = url.host_str()?.trim_start_matches("www.");
    if !host.eq_ignore_ascii_case("xkcd.com") {
        return None;
    }
    let mut segs = url.path_segments()?.filter(|s| !s.is_empty());
    let n: u32 = segs.next()?.parse().ok()?;
    segs.next().is_none().then_some(n)
}

#[derive(serde::Deserialize)]
struct Comic {
    num: u32,
    title: String,
    alt: String,
    year: String,
}

impl Links {
    /// Whether `room` may have a summary of `url` now; remembers it if so.
    fn admit(&self, room: &str, url: &str) -> bool {
        let now = Instant::now();
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        m.seen.retain(|_, t| now.duration_since(*t) < window);
        let key = (room.to_owned(), url.to_owned());
        if m.seen.contains_key(&key) {
            return false;
        }
        let recent = m.recent.entry(room.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            recent.pop_front();
        }
        if recent.len() >= self.per_minute {
            return false;
        }
        recent.push_back(now);
        m.seen.insert(key, now);
        if m.recent.len() > 10_000 {
            m.recent.retain(|_, v| !v.is_empty());
        }
        true
    }

    /// The one-line summary of `url`, or why there is none.
    pub async fn summary(&self, url: &str) -> Result<Option<String>, FetchError> {
        let parsed = opsbot::fetch::Url::parse(url)
            .map_err(|e| FetchError::Failed(format!("not a URL: {e}")))?;
        self.fetcher.check_url(&parsed)?;
        if let Some(n) = xkcd_number(&parsed) {
            let got = self
                .fetcher
                .fetch(&format!("{}/{n}/info.0.json", self.xkcd))
                .await?;
            if got.status != 200 {
                return Err(FetchError::Failed(format!("xkcd answered {}", got.status)));
            }
            let c: Comic = serde_json::from_slice(&got.body)
                .map_err(|e| FetchError::Failed(format!("xkcd's JSON: {e}")))?;
            let line = format!("xkcd #{}: {} ({}) — {}", c.num, c.title, c.year, c.alt);
            return Ok(Some(clean(&line, self.max_title_chars)));
        }
        let got = self.fetcher.fetch(url).await?;
        if !(200..300).contains(&got.status)
            || !matches!(
                got.content_type.as_str(),
                "text/html" | "application/xhtml+xml"
            )
        {
            return Ok(None);
        }
        let html = String::from_utf8_lossy(&got.body);
        Ok(title_of(&html)
            .map(|t| clean(&t, self.max_title_chars))
            .filter(|t| !t.is_empty()))
    }
}

impl Handler for Links {
    const NAME: &'static str = "links";
    const PATTERNS: &'static [&'static str] = &[r#"(?i)\bhttps?://[^\s<>"'`]+"#];

    async fn matched(&mut self, cx: &mut Context, m: Match) -> Result {
        let msg = m.message();
        let room = msg
            .room
            .as_deref()
            .map_or_else(|| format!("@{}", msg.sender.id), str::to_owned);
        let urls: Vec<String> = url_regex()
            .find_iter(&msg.text)
            .map(|u| {
                u.as_str()
                    .trim_end_matches(['.', ',', ')', ']', '!', '?', ';', ':'])
                    .to_owned()
            })
            .take(3)
            .collect();
        for url in urls {
            if !self.admit(&room, &url) {
                continue;
            }
            let Ok(parsed) = opsbot::fetch::Url::parse(&url) else {
                continue;
            };
            let host = parsed.host_str().unwrap_or_default().to_owned();
            // A URL the guard refuses makes nothing: no breaker, no fetch.
            if let Err(why) = self.fetcher.check_url(&parsed) {
                tracing::info!(host = %Escaped(&host), %why, "link not fetched");
                continue;
            }
            // A site's breaker is made only once it has failed, and never moves the bot's
            // health (see `Context::site_breaker`).
            let known = cx.find_breaker(&host);
            let permit = match known.as_ref().map(opsbot::breaker::Breaker::check) {
                Some(Err(_)) => continue,
                Some(Ok(p)) => Some(p),
                None => None,
            };
            match self.summary(&url).await {
                Ok(line) => {
                    if let Some(p) = permit {
                        p.success();
                    }
                    if let Some(line) = line {
                        cx.reply(line);
                    }
                }
                Err(FetchError::Refused(why)) => {
                    // Refused after a lookup or a redirect: not the site's failure.
                    tracing::info!(host = %Escaped(&host), why = %Escaped(&why), "link not fetched");
                }
                Err(e) => {
                    tracing::info!(host = %Escaped(&host), error = %Escaped(&e.to_string()), "no summary");
                    let permit = match permit {
                        Some(p) => Some(p),
                        None => cx.site_breaker(&host, self.breaker).check().ok(),
                    };
                    if let Some(p) = permit {
                        p.failure(&e);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_og_title_then_title_cleaned_and_cut() {
        assert_eq!(
            title_of(
                r#"<html><head><meta property="og:title" content="OG &amp; co"><title>T</title>"#
            )
            .as_deref(),
            Some("OG &amp; co")
        );
        assert_eq!(
            title_of("<TITLE lang=en>\n  Hello\t&lt;world&gt; &#x1F600;\n</title>")
                .map(|t| clean(&t, 200))
                .as_deref(),
            Some("Hello <world> 😀")
        );
        assert_eq!(title_of("<p>no title</p>"), None);
        assert_eq!(title_of("<title>   </title>"), None);
        assert_eq!(clean("a\u{7}b\u{202E}c \r\n d", 200), "abc d");
        // The isolates (U+2066-2069) were missed.
        assert_eq!(clean("x\u{2066}y\u{2067}z\u{2068}w\u{2069}", 200), "xyzw");
        assert_eq!(clean(&"x".repeat(300), 20).chars().count(), 20);
    }

    #[test]
    fn xkcd_links_are_known_by_host_and_number() {
        let n = |u: &str| xkcd_number(&opsbot::fetch::Url::parse(u).unwrap());
        assert_eq!(n("https://xkcd.com/327/"), Some(327));
        assert_eq!(n("https://www.xkcd.com/327"), Some(327));
        assert_eq!(n("https://xkcd.com/327/extra"), None);
        assert_eq!(n("https://xkcd.com/about"), None);
        assert_eq!(n("https://notxkcd.com/327/"), None);
    }
}
