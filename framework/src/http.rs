//! One HTTP client for the process, shared by every bot's transport and handlers.
//!
//! A chat service's REST API is where a busy bot meets connection pools, timeouts and rate
//! limits. [`HttpClient`] wraps one pooled `reqwest` client (rustls) with what production runs
//! have shown a bot needs:
//!
//! - **Per-host limits, no pool starvation.** At most
//!   [`max_connections_per_host`](HttpClientConfig::max_connections_per_host) requests are in
//!   flight to one host, which is also the most connections opened to it. A request past that
//!   waits for a free slot *before* its clock starts, so a burst queues instead of timing out.
//! - **Explicit timeouts**: connect, and one attempt from sending to the end of the body.
//! - **Retries with backoff and full jitter** for transient failures (connect errors, 502, 503,
//!   504, a timeout) of requests that are safe to repeat ([`Repeat::Safe`]). A request that is
//!   not ([`Repeat::IfNotSent`], such as posting a message) is repeated only when it certainly
//!   was not carried out: it could not connect, or the answer was 502, 503, 429 or 423. After a
//!   timeout, a broken connection or a 504 it is not repeated: the server may have acted on it.
//! - **No redirects.** The client answers a 3xx as it is (its `Location` in
//!   [`HttpResponse::location`]): following one is the caller's decision, because the next
//!   host may be one the caller must not reach or must not send its headers to (pollers
//!   follow theirs through the link guard of the `fetch` module).
//! - **`Retry-After`** on 429 and 423 (15 s when absent): the caller's [`Throttle`] holds every
//!   request of that caller (one bot) until then, and never retries before it; other callers
//!   go on.
//!
//! [`shared`] is the process's client, configured once from the config's `[http_client]` table
//! with [`init`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub use crate::config::HttpClientConfig;
use crate::supervisor::full_jitter;

/// The wait after a 429 or 423 that names none.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(15);
/// The longest `Retry-After` honoured; a longer one is cut to this (a service asking for a day
/// would otherwise silence a bot for a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// The largest answer body read; a longer one is an error.
pub const MAX_BODY: usize = 4 << 20;

/// Whether a request may be sent again after a failure that leaves open whether the server got
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Reading, or a write the server treats idempotently: retried on any transient failure.
    Safe,
    /// A write that must not happen twice (posting a message): retried only when it certainly
    /// did not reach the server.
    IfNotSent,
}

/// An answer, read whole.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Retry-After` wait, when the answer was a 429 or 423.
    pub retry_after: Option<Duration>,
    /// The `Location` of a redirect (3xx), as the server wrote it.
    pub location: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, lossily, cut to `max` bytes on a character boundary (for messages).
    pub fn text(&self, max: usize) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection could be made: the request did not reach the server.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The attempt ran out of time, or the connection broke after the request was written:
    /// the server may have acted on it.
    #[error("no answer in time ({0}); the server may have received the request")]
    Unconfirmed(String),
    /// The request could not be built or the answer not read (bad URL, body too large).
    #[error("{0}")]
    Invalid(String),
}

impl HttpError {
    /// Whether the request certainly did not reach the server.
    pub fn not_sent(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Invalid(_))
    }
}

/// One caller's (one bot's) standing with the services it calls: when a 429 or 423 said to
/// come back later, every request of this caller waits until then. Other callers have their
/// own and are not held.
#[derive(Debug, Default)]
pub struct Throttle {
    until: Mutex<Option<Instant>>,
    throttled: AtomicU64,
}

impl Throttle {
    /// A throttle that holds nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long requests are still held, if they are.
    pub fn remaining(&self) -> Option<Duration> {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.and_then(|u| u.checked_duration_since(Instant::now()))
    }

    /// How many 429/423 answers this caller has had.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Holds this caller's requests for `wait` (or longer, if already held longer).
    pub fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut u = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if u.is_none_or(|old| old < until) {
            *u = Some(until);
        }
    }

    async fn ready(&self) {
        while let Some(wait) = self.remaining() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counters for `!status` and benchmarks.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Attempts sent (retries included).
    pub attempts: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Attempts that ran out of time.
    pub timeouts: AtomicU64,
    /// Answers with 429 or 423.
    pub throttled: AtomicU64,
}

/// The process's HTTP client; see the [module documentation](self).
#[derive(Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    config: HttpClientConfig,
    tls: Arc<rustls::ClientConfig>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    stats: HttpStats,
}

static SHARED: OnceLock<Arc<HttpClient>> = OnceLock::new();

/// Configures the process's shared client, before the bots start. Fails when the client was
/// already built with other settings (by an earlier `init` or a use of [`shared`]) or cannot
/// be built; the same settings again are fine.
pub fn init(config: &HttpClientConfig) -> std::io::Result<()> {
    if let Some(c) = SHARED.get() {
        return if c.config == *config {
            Ok(())
        } else {
            Err(std::io::Error::other(
                "the shared HTTP client is already configured with other settings",
            ))
        };
    }
    let client = Arc::new(HttpClient::new(config.clone())?);
    SHARED
        .set(client)
        .map_err(|_| std::io::Error::other("the shared HTTP client is already configured"))
}

/// The process's shared client, built with the default settings if [`init`] did not run.
///
/// # Panics
/// When no TLS trust store can be built (no system CA certificates), which [`init`] reports as
/// an error instead.
pub fn shared() -> Arc<HttpClient> {
    SHARED
        .get_or_init(|| {
            Arc::new(
                HttpClient::new(HttpClientConfig::default())
                    .expect("an HTTP client with the default settings"),
            )
        })
        .clone()
}

impl HttpClient {
    /// A client with `config`; most code wants [`shared`] instead.
    pub fn new(config: HttpClientConfig) -> std::io::Result<Self> {
        let tls = Arc::new(crate::tls::client_config(config.ca_file.as_deref())?);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_connections_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("opsbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            client,
            config,
            tls,
            hosts: Mutex::new(HashMap::new()),
            stats: HttpStats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HttpClientConfig {
        &self.config
    }

    /// The TLS settings, for a protocol that opens its own connections (a WebSocket).
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    fn host_slots(&self, url: &str) -> Arc<Semaphore> {
        let host = reqwest::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_connections_per_host)))
            .clone()
    }

    /// Sends a request built by `build` (called again for each attempt) on behalf of the caller
    /// whose `throttle` this is, with retries as `repeat` allows; answers with the last
    /// response, whatever its status, or why there was none.
    pub async fn send<F>(
        &self,
        throttle: &Throttle,
        repeat: Repeat,
        url: &str,
        build: F,
    ) -> Result<HttpResponse, HttpError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let slots = self.host_slots(url);
        let mut attempt = 0u32;
        loop {
            throttle.ready().await;
            let outcome = {
                // Waiting for a slot is not part of the attempt's time limit.
                let _slot = slots
                    .acquire()
                    .await
                    .map_err(|_| HttpError::Invalid("the HTTP client is shutting down".into()))?;
                self.stats.attempts.fetch_add(1, Ordering::Relaxed);
                if attempt > 0 {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::timeout(self.config.timeout, self.attempt(&build)).await
            };
            let again = match outcome {
                Err(_) => {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    let e = HttpError::Unconfirmed(format!(
                        "timed out after {:?}",
                        self.config.timeout
                    ));
                    if repeat == Repeat::IfNotSent || attempt >= self.config.retries {
                        return Err(e);
                    }
                    None
                }
                Ok(Err(e)) => {
                    if attempt >= self.config.retries
                        || (repeat == Repeat::IfNotSent && !e.not_sent())
                        || matches!(e, HttpError::Invalid(_))
                    {
                        return Err(e);
                    }
                    None
                }
                Ok(Ok(resp)) => match resp.status {
                    429 | 423 => {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        throttle.throttled.fetch_add(1, Ordering::Relaxed);
                        let wait = resp.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                        throttle.hold(wait);
                        if attempt >= self.config.retries {
                            return Ok(resp);
                        }
                        // The throttle makes the next attempt wait; no backoff on top.
                        Some(Duration::ZERO)
                    }
                    // 502 and 503 say the request was not carried out; 504 leaves it open.
                    502 | 503 if attempt < self.config.retries => None,
                    504 if repeat == Repeat::Safe && attempt < self.config.retries => None,
                    _ => return Ok(resp),
                },
            };
            attempt += 1;
            let pause = again.unwrap_or_else(|| {
                full_jitter(
                    Duration::from_millis(250),
                    Duration::from_secs(10),
                    attempt - 1,
                )
            });
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt<F>(&self, build: &F) -> Result<HttpResponse, HttpError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let resp = build(&self.client).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let retry_after = matches!(status, 429 | 423).then(|| {
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .unwrap_or(DEFAULT_RETRY_AFTER)
        });
        let location = (300..400)
            .contains(&status)
            .then(|| resp.headers().get(reqwest::header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(HttpError::Invalid(format!(
                "answer of {} bytes is over the {MAX_BODY}-byte limit",
                resp.content_length().unwrap_or(0)
            )));
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::Invalid(format!(
                    "answer over the {MAX_BODY}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            retry_after,
            location,
            body,
        })
    }
}

fn classify(e: reqwest::Error) -> HttpError {
    let (builder, connect) = (e.is_builder(), e.is_connect());
    let text = error_chain(e.without_url());
    if builder {
        HttpError::Invalid(text)
    } else if connect {
        HttpError::Connect(text)
    } else {
        HttpError::Unconfirmed(text)
    }
}

/// The error and its causes in one line, without the URL (which may carry a secret in its query).
fn error_chain(e: reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` as seconds (`120`) or an HTTP date, capped at [`MAX_RETRY_AFTER`]; `None` when
/// it is neither.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(
            secs.min(MAX_RETRY_AFTER.as_secs_f64()),
        ));
    }
    let when = httpdate(value)?;
    let now = std::time::SystemTime::now();
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP dates are sent in.
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3600 + m * 60 + sec) as i64;
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates_and_is_capped() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        for bad in ["", "soon", "-3", "Sun, 06 Foo 1994 08:49:37 GMT", "NaN"] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_throttle_holds_for_the_longest_wait_it_was_given() {
        let t = Throttle::new();
        assert_eq!(t.remaining(), None);
        t.hold(Duration::from_secs(30));
        t.hold(Duration::from_secs(1));
        assert!(t.remaining().unwrap() > Duration::from_secs(20));
    }
}
