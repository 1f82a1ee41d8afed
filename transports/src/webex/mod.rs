//! The Webex transport: messages in over the Mercury WebSocket that Webex clients use (no
//! public webhook needed), replies out through the REST API.
//!
//! One session: read who the bot is (`GET people/me`), find the device service in the service
//! catalog (U2C, else `wdm_url`), reuse the bot's device there or register one, open its
//! WebSocket and authorize it, then move messages both ways. Each `conversation.activity` event
//! with verb `post` or `share` is acknowledged, and its message fetched with
//! `GET messages/{id}` (the event itself carries no readable text).
//!
//! What may run as a command: a message not seen before (Webex redelivers what was not
//! acknowledged), created after the bot started (no replay of old commands after a restart),
//! not the bot's own and not another bot's (unless `allow_bots`), from an approved sender or
//! room. In a group room the text starts with the bot's name (Webex shows bots only the
//! messages that mention them); the name is stripped and the rest is addressed to the bot, so
//! `!help`, `opsbot help` and a mention all work. A command in a thread is answered in it.
//!
//! Every request goes through the process's shared [`HttpClient`] with this bot's own
//! [`Throttle`]: a 429 holds this bot's requests for the `Retry-After`, not the other bots'.

mod admission;
mod card;
mod config;
mod device;

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::future::LocalBoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, SinkExt, StreamExt};
use opsbot::http::{HttpClient, HttpError, HttpResponse, Repeat, Throttle};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::pacing::Rate;
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

pub use admission::message_id;
use admission::*;
use card::*;
pub use config::{MAX_MESSAGE_BYTES, REST_URL, U2C_URL, WDM_URL, WEBEX_DOMAINS, WebexConfig};
use device::*;

/// Largest WebSocket message read; a larger one ends the connection.
const MAX_FRAME_BYTES: usize = 4 << 20;
/// Replies posted at once, to different rooms.
const WINDOW: usize = 8;
/// Failed attempts at one reply (server errors, no connection) before it is dropped.
const MAX_SEND_FAILURES: u32 = 5;
/// The Webex transport; see the [module documentation](self).
#[derive(Debug)]
pub struct Webex {
    cfg: WebexConfig,
    api: Arc<Api>,
    /// When the bot started: messages created before it never run.
    started: SystemTime,
    /// The device registered at WDM, kept across sessions.
    device: Option<Device>,
    /// Ids of messages already handled, oldest first.
    seen: Seen,
    stats: Stats,
    slow: Slowdown,
}

/// The gap kept between this bot's replies after the service answered 429 (or 423): half a
/// second after the first, doubling with each further one up to [`SLOW_MAX`], halving for
/// each [`SLOW_RELAX`] without one until it is gone. The `Retry-After` wait itself is the
/// throttle's; this keeps the bot from running straight back into the limit after it.
#[derive(Debug, Default)]
struct Slowdown {
    gap: Duration,
    /// The throttle's count of 429s when last looked at.
    seen: u64,
    /// When the gap last changed.
    changed: Option<Instant>,
    /// When the last reply was posted.
    last_post: Option<Instant>,
}

const SLOW_MIN: Duration = Duration::from_millis(500);
const SLOW_MAX: Duration = Duration::from_secs(8);
const SLOW_RELAX: Duration = Duration::from_secs(60);

impl Slowdown {
    /// Looks at the throttle's count; answers the new gap when a new 429 widened it.
    fn observe(&mut self, throttled: u64, now: Instant) -> Option<Duration> {
        if throttled > self.seen {
            self.seen = throttled;
            self.gap = (self.gap * 2).clamp(SLOW_MIN, SLOW_MAX);
            self.changed = Some(now);
            return Some(self.gap);
        }
        if !self.gap.is_zero()
            && self
                .changed
                .is_some_and(|c| now.duration_since(c) >= SLOW_RELAX)
        {
            self.gap /= 2;
            if self.gap < SLOW_MIN {
                self.gap = Duration::ZERO;
            }
            self.changed = Some(now);
        }
        None
    }

    /// How long the next reply waits to keep the gap.
    fn wait(&self, now: Instant) -> Duration {
        self.last_post.map_or(Duration::ZERO, |l| {
            (l + self.gap).saturating_duration_since(now)
        })
    }
}

/// What `!status` counts.
#[derive(Debug, Default)]
struct Stats {
    received: u64,
    duplicates: u64,
    old: u64,
    refused_senders: u64,
    unconfirmed: u64,
    registrations: u64,
}

/// An event's message, fetched.
type Fetched = (String, Result<HttpResponse, HttpError>);

/// A card action fetched: the action, its presser's email and the card's message, or why not.
type ActionFetched = (String, Result<(RestAction, String, RestMessage), String>);

/// Whether `id` (from Webex, going into a URL's path) is a plausible REST id: base64url, well
/// under 256 bytes.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() < 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

/// Fetches what a card action needs: the action, who pressed (`people/{id}`: actions carry no
/// email), and the card's message.
async fn fetch_action(api: Arc<Api>, id: String) -> ActionFetched {
    let get = |url: String| {
        let api = api.clone();
        async move {
            match api.get(&url).await {
                Ok(r) if r.is_success() => Ok(r.body),
                Ok(r) => Err(format!("HTTP {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let result = async {
        let body = get(format!("{}/attachment/actions/{id}", api.rest)).await?;
        let a: RestAction = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if !plausible_id(&a.person_id) || !plausible_id(&a.message_id) {
            return Err("an implausible id in the action".to_owned());
        }
        let body = get(format!("{}/people/{}", api.rest, a.person_id)).await?;
        #[derive(serde::Deserialize)]
        struct Person {
            emails: Vec<String>,
        }
        let p: Person = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let email = p
            .emails
            .into_iter()
            .next()
            .ok_or("a person without an email")?;
        let body = get(format!("{}/messages/{}", api.rest, a.message_id)).await?;
        let m: RestMessage = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((a, email, m))
    }
    .await;
    (id, result)
}

/// The outcome of posting one reply.
type Posted = (Delivery, Result<HttpResponse, HttpError>);

impl Webex {
    /// A transport with `cfg`, on the process's shared HTTP client.
    pub fn new(cfg: WebexConfig) -> Self {
        Self::with_client(cfg, opsbot::http::shared())
    }

    /// A transport with `cfg` on `http` (tests give it a client of their own settings).
    pub fn with_client(cfg: WebexConfig, http: Arc<HttpClient>) -> Self {
        let api = Arc::new(Api {
            http,
            throttle: Throttle::new(),
            token: cfg.token.clone(),
            rest: cfg.rest().to_owned(),
        });
        Self {
            cfg,
            api,
            started: SystemTime::now(),
            device: None,
            seen: Seen::default(),
            stats: Stats::default(),
            slow: Slowdown::default(),
        }
    }

    /// The request that posts `d`.
    fn post_of(&self, d: &Delivery) -> Value {
        let mut body = match &d.dest {
            Destination::Room(room) => json!({ "roomId": room.as_ref() }),
            Destination::Thread { room, parent } => {
                json!({ "roomId": room.as_ref(), "parentId": parent.as_ref() })
            }
            Destination::User(email) => json!({ "toPersonEmail": email.as_ref() }),
        };
        // A formatted reply was rendered as Markdown with its text escaped already.
        let md = if d.formatted {
            d.text.clone()
        } else {
            markdown(&d.text)
        };
        if let Some(card) = &d.card {
            body["attachments"] = json!([attachment(card)]);
        }
        if md.len() <= self.cfg.max_message_bytes() {
            body["markdown"] = Value::String(md);
        } else {
            // Escaping made it too long: plain text shows it as written, and has no mentions.
            body["text"] = Value::String(d.text.clone());
        }
        body
    }
}

impl Transport for Webex {
    fn kind(&self) -> &'static str {
        "webex"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_line_bytes: self.cfg.max_message_bytes(),
            // Webex publishes no fixed numbers; these stay well inside what it takes from one
            // bot (a reply a second per room, four a second in all) and a 429 slows further.
            global: Some(Rate::new(4.0, 10)),
            global_bytes: None,
            line_overhead: 0,
            per_destination: Some(Rate::new(1.0, 5)),
            multiline: true,
            // Posts run side by side, one per room at a time (two could overtake each other).
            window: WINDOW,
            window_per_destination: 1,
            style: opsbot::rich::Style::Markdown,
            cards: true,
        }
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let limit = self.cfg.connect_timeout();
        let setup = async {
            let me = self.me().await?;
            let mut fresh = false;
            loop {
                let device = match self.device.clone() {
                    Some(d) if !fresh => d,
                    _ => {
                        let d = self.register(fresh).await?;
                        self.device = Some(d.clone());
                        d
                    }
                };
                match self.open(&device).await? {
                    Some(ws) => return Ok::<_, TransportError>((me, device, ws)),
                    None if !fresh => {
                        link.heal_event(
                            "re-register",
                            "the WebSocket answered 404: the device is stale",
                        );
                        tracing::warn!(kind = "webex", "stale device; registering a new one");
                        self.device = None;
                        fresh = true;
                    }
                    None => {
                        return Err(TransportError::Connection(
                            "a newly registered device's WebSocket answered 404".into(),
                        ));
                    }
                }
            }
        };
        let (me, device, ws) = tokio::time::timeout(limit, setup).await.map_err(|_| {
            TransportError::Connection(format!(
                "registering and opening the WebSocket took over {}s",
                limit.as_secs()
            ))
        })??;
        link.set_nick(&me.name);
        link.connected(self.detail(&me, &device));
        let (mut sink, mut stream) = ws.split();
        let mut fetches: FuturesOrdered<LocalBoxFuture<'static, Fetched>> = FuturesOrdered::new();
        let mut actions: FuturesOrdered<LocalBoxFuture<'static, ActionFetched>> =
            FuturesOrdered::new();
        let mut posting: FuturesUnordered<LocalBoxFuture<'static, Posted>> =
            FuturesUnordered::new();
        let mut failures: u32 = 0;
        let mut heard = Instant::now();
        let mut pinged: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let ping_interval = self.cfg.ping_interval();
        let ping_timeout = self.cfg.ping_timeout();
        let ws_err = |e: tungstenite::Error| TransportError::Connection(format!("WebSocket: {e}"));
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let Some(frame) = frame else {
                        return Err(TransportError::Connection("the WebSocket ended".into()));
                    };
                    let frame = frame.map_err(ws_err)?;
                    heard = Instant::now();
                    pinged = None;
                    let raw: &[u8] = match &frame {
                        Message::Text(t) => t.as_bytes(),
                        Message::Binary(b) => b,
                        Message::Close(close) => {
                            let (code, reason) = close
                                .as_ref()
                                .map(|c| (u16::from(c.code), c.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            let why = format!("the WebSocket closed ({code} {reason})");
                            return Err(if matches!(code, 4401 | 1008) {
                                TransportError::Refused(why)
                            } else {
                                TransportError::Connection(why)
                            });
                        }
                        _ => continue,
                    };
                    let (ack, event) = event_of(raw, &me);
                    if let Some(id) = ack {
                        let ack = json!({ "type": "ack", "messageId": id });
                        sink.send(Message::text(ack.to_string())).await.map_err(ws_err)?;
                    }
                    match event {
                        Event::Message(id) => {
                            let api = self.api.clone();
                            let url = format!("{}/messages/{id}", api.rest);
                            fetches.push_back(async move { (id, api.get(&url).await) }.boxed_local());
                        }
                        Event::CardAction(id) => {
                            actions.push_back(fetch_action(self.api.clone(), id).boxed_local());
                        }
                        Event::Nothing => {}
                    }
                }
                Some((id, got)) = fetches.next(), if !fetches.is_empty() => {
                    match got {
                        Ok(resp) if resp.is_success() => {
                            match serde_json::from_slice::<RestMessage>(&resp.body) {
                                Ok(m) => match self.accept(&me, m) {
                                    Ok(incoming) => link.incoming(incoming),
                                    Err(why) => tracing::debug!(kind = "webex", %id, why, "not a command"),
                                },
                                Err(e) => tracing::warn!(kind = "webex", %id, error = %e, "unreadable message"),
                            }
                        }
                        Ok(resp) => tracing::warn!(kind = "webex", %id, status = resp.status, "cannot read a message"),
                        Err(e) => tracing::warn!(kind = "webex", %id, error = %e, "cannot read a message"),
                    }
                    link.set_detail(self.detail(&me, &device));
                }
                Some((id, got)) = actions.next(), if !actions.is_empty() => {
                    match got {
                        Ok((a, email, card)) => match self.accept_action(&me, a, email, card) {
                            Ok(incoming) => link.incoming(incoming),
                            Err(why) => tracing::debug!(kind = "webex", %id, why, "not a button press to run"),
                        },
                        Err(e) => tracing::warn!(kind = "webex", %id, error = %e, "cannot read a card action"),
                    }
                    link.set_detail(self.detail(&me, &device));
                }
                Some((d, result)) = posting.next(), if !posting.is_empty() => {
                    self.posted(link, d, result, &mut failures)?;
                    link.set_detail(self.detail(&me, &device));
                }
                // Several rooms at once (the outbox hands one line per room at a time); one at
                // a time while a 429 keeps the bot slowed down.
                d = link.next_delivery(), if posting.len() < if self.slow.gap.is_zero() { WINDOW } else { 1 } => {
                    let Some(d) = d else {
                        let _ = sink.close().await;
                        return Ok(SessionEnd::Finished);
                    };
                    let body = self.post_of(&d);
                    let api = self.api.clone();
                    let gap = self.slow.wait(Instant::now());
                    posting.push(async move {
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                        let url = format!("{}/messages", api.rest);
                        let r = api.post(&url, &body).await;
                        (d, r)
                    }.boxed_local());
                }
                _ = tick.tick() => {
                    let quiet = heard.elapsed();
                    if let Some(at) = pinged {
                        if at.elapsed() >= ping_timeout {
                            return Err(TransportError::Connection(format!(
                                "no answer on the WebSocket for {}s",
                                quiet.as_secs()
                            )));
                        }
                    } else if quiet >= ping_interval {
                        sink.send(Message::Ping(Vec::new().into())).await.map_err(ws_err)?;
                        pinged = Some(Instant::now());
                    }
                }
            }
        }
    }
}

impl Webex {
    /// Answers the outbox for a reply that was posted (or not).
    fn posted(
        &mut self,
        link: &Link,
        d: Delivery,
        result: Result<HttpResponse, HttpError>,
        failures: &mut u32,
    ) -> Result<(), TransportError> {
        let retry = |failures: &mut u32, d: Delivery, why: String| {
            *failures += 1;
            if *failures >= MAX_SEND_FAILURES {
                *failures = 0;
                d.undeliverable(format!("{why}, {MAX_SEND_FAILURES} times"));
            } else {
                d.hold(Duration::from_secs(2u64 << (*failures).min(5)));
            }
        };
        let now = Instant::now();
        self.slow.last_post = Some(now);
        if let Some(gap) = self.slow.observe(self.api.throttle.throttled(), now) {
            let why = format!(
                "Webex answered 429: one reply per {:.1} s from now on, relaxing after a minute without one",
                gap.as_secs_f64()
            );
            tracing::warn!(kind = "webex", "{why}");
            link.heal_event("slow down", why);
        }
        match result {
            Ok(resp) if resp.is_success() => {
                *failures = 0;
                // The message's id lets whoever posted it answer in its thread later.
                match posted_id(&resp.body) {
                    Some(id) => d.done_as(id),
                    None => d.done(),
                }
            }
            Ok(resp) if matches!(resp.status, 429 | 423) => {
                // Retries ran out; the throttle already holds this bot for the wait.
                d.hold(
                    resp.retry_after
                        .unwrap_or(opsbot::http::DEFAULT_RETRY_AFTER),
                );
            }
            Ok(resp) if resp.status == 401 => {
                // The delivery goes back to its queue; the token is checked again on reconnect.
                drop(d);
                return Err(TransportError::Refused(
                    "posting a message: the token was refused (401)".into(),
                ));
            }
            Ok(resp) if resp.status >= 500 => {
                retry(failures, d, format!("HTTP {}", resp.status));
            }
            Ok(resp) => {
                *failures = 0;
                let why = format!("HTTP {} {}", resp.status, resp.text(200));
                link.heal_event("undeliverable", format!("{}: {why}", d.dest));
                d.undeliverable(why);
            }
            Err(e) if e.not_sent() => retry(failures, d, e.to_string()),
            Err(e) => {
                // The server may have posted it: sending again could say it twice.
                *failures = 0;
                self.stats.unconfirmed += 1;
                tracing::warn!(kind = "webex", dest = %d.dest, error = %e, "a reply may not have arrived");
                link.heal_event("unconfirmed", format!("{}: {e}", d.dest));
                d.done();
            }
        }
        Ok(())
    }
}

/// The id in Webex's answer to a post, if it is a plausible one (a Webex id is base64url,
/// well under 200 bytes); the answer is read no further.
fn posted_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: String,
    }
    let id = serde_json::from_slice::<Created>(body).ok()?.id;
    let plausible = !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
    plausible.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_the_unpadded_base64_of_the_uri() {
        let id = message_id("92db3be0-43bd-11e6-8ae9-dd5b3dfc565d");
        assert!(!id.ends_with('='));
        assert_eq!(
            uuid_of(&id).as_deref(),
            Some("92db3be0-43bd-11e6-8ae9-dd5b3dfc565d")
        );
        // An id whose URI length is not a multiple of three has padding in its padded form.
        let padded = base64::engine::general_purpose::STANDARD.encode("ciscospark://us/PEOPLE/abc");
        assert!(padded.ends_with('='));
        assert_eq!(uuid_of(&padded).as_deref(), Some("abc"), "padding accepted");
        assert_eq!(
            uuid_of(padded.trim_end_matches('=')).as_deref(),
            Some("abc")
        );
        assert_eq!(uuid_of("not base64!"), None);
    }

    #[test]
    fn the_bots_name_is_stripped_whole_or_by_first_word() {
        assert_eq!(strip_name("OpsBot !help", "opsbot"), Some("!help"));
        assert_eq!(strip_name("Ops Bot status", "Ops Bot"), Some("status"));
        assert_eq!(strip_name("Ops: status", "Ops Bot"), Some("status"));
        assert_eq!(strip_name("opsbotty help", "opsbot"), None);
        assert_eq!(strip_name("help", "opsbot"), None);
        assert_eq!(strip_name("é", "opsbot"), None);
    }

    #[test]
    fn a_429_widens_the_gap_and_quiet_minutes_narrow_it() {
        let mut s = Slowdown::default();
        let t0 = Instant::now();
        assert_eq!(s.observe(0, t0), None);
        assert_eq!(s.wait(t0), Duration::ZERO);
        assert_eq!(s.observe(1, t0), Some(SLOW_MIN));
        assert_eq!(s.observe(3, t0), Some(SLOW_MIN * 2));
        s.last_post = Some(t0);
        assert_eq!(s.wait(t0), SLOW_MIN * 2);
        for n in 4..14 {
            s.observe(n, t0);
        }
        assert_eq!(s.gap, SLOW_MAX);
        let mut t = t0;
        for _ in 0..4 {
            t += SLOW_RELAX;
            assert_eq!(s.observe(13, t), None);
        }
        assert_eq!(s.gap, SLOW_MIN);
        s.observe(13, t + SLOW_RELAX);
        assert_eq!(s.gap, Duration::ZERO);
    }

    #[test]
    fn markdown_cannot_mention_or_open_html() {
        assert_eq!(markdown("<@all> hi & <b>"), "&lt;@all> hi &amp; &lt;b>");
    }

    #[test]
    fn a_redelivered_id_is_seen_and_memory_is_bounded() {
        let mut s = Seen::default();
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        for i in 0..SEEN * 2 {
            s.insert(&i.to_string());
        }
        assert_eq!(s.set.len(), SEEN);
        assert!(s.insert("a"), "long forgotten");
    }
}
