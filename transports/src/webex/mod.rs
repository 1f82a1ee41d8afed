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

mod config;

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
use opsbot::outbox::Rate;
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

pub use config::{MAX_MESSAGE_BYTES, REST_URL, U2C_URL, WDM_URL, WEBEX_DOMAINS, WebexConfig};

/// How many message ids are remembered to run a redelivered event once.
const SEEN: usize = 4096;
/// Longest text taken as a command; longer ones are skipped (and logged).
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest WebSocket message read; a larger one ends the connection.
const MAX_FRAME_BYTES: usize = 4 << 20;
/// Replies posted at once, to different rooms.
const WINDOW: usize = 8;
/// Failed attempts at one reply (server errors, no connection) before it is dropped.
const MAX_SEND_FAILURES: u32 = 5;
/// Webex bot accounts' email domain.
const BOT_DOMAIN: &str = "@webex.bot";

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

#[derive(Clone, Debug)]
struct Device {
    ws_url: String,
}

/// Who the bot is.
#[derive(Clone, Debug, Default)]
struct Me {
    id: String,
    /// The person's UUID inside the id, which events name actors by.
    uuid: String,
    emails: Vec<String>,
    name: String,
}

impl Me {
    fn is(&self, id: &str, email: &str) -> bool {
        (!id.is_empty() && (id == self.id || id == self.uuid))
            || (!email.is_empty() && self.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
    }
}

#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    /// Remembers `id`; answers whether it is new.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// The REST side, for one bot: its token, its throttle, the shared client.
struct Api {
    http: Arc<HttpClient>,
    throttle: Throttle,
    token: opsbot::config::Secret,
    rest: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("rest", &self.rest).finish()
    }
}

impl Api {
    async fn get(&self, url: &str) -> Result<HttpResponse, HttpError> {
        let auth = format!("Bearer {}", self.token.expose());
        self.http
            .send(&self.throttle, Repeat::Safe, url, |c| {
                c.get(url)
                    .header("Authorization", &auth)
                    .header("Accept", "application/json")
            })
            .await
    }

    async fn post(&self, url: &str, body: &Value) -> Result<HttpResponse, HttpError> {
        let auth = format!("Bearer {}", self.token.expose());
        let body = body.to_string();
        self.http
            .send(&self.throttle, Repeat::IfNotSent, url, |c| {
                c.post(url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            })
            .await
    }
}

/// What went wrong with a REST call during setup, as the session's end.
fn setup_error(what: &str, r: Result<HttpResponse, HttpError>) -> Result<Value, TransportError> {
    match r {
        Err(e) => Err(TransportError::Connection(format!("{what}: {e}"))),
        Ok(resp) if matches!(resp.status, 401 | 403) => Err(TransportError::Refused(format!(
            "{what}: the token was refused ({})",
            resp.status
        ))),
        Ok(resp) if !resp.is_success() => Err(TransportError::Connection(format!(
            "{what}: HTTP {} {}",
            resp.status,
            resp.text(200)
        ))),
        Ok(resp) => serde_json::from_slice(&resp.body)
            .map_err(|e| TransportError::Connection(format!("{what}: unreadable answer: {e}"))),
    }
}

/// The id REST uses for the message an event names: the unpadded base64 of its URI.
pub fn message_id(activity_id: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("ciscospark://us/MESSAGE/{activity_id}"))
}

/// The UUID inside a REST id (`base64("ciscospark://us/PEOPLE/<uuid>")`), padded or not.
fn uuid_of(id: &str) -> Option<String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine.decode(id).ok()?;
    let uri = String::from_utf8(raw).ok()?;
    uri.rsplit('/').next().map(str::to_owned)
}

/// `text` without the bot's name at its start (its full display name, or the first word of
/// it, as a mention shows it), if it starts with one.
fn strip_name<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let first = name.split_whitespace().next().unwrap_or("");
    for n in [name, first] {
        if n.is_empty() || text.len() < n.len() || !text.is_char_boundary(n.len()) {
            continue;
        }
        let (head, tail) = text.split_at(n.len());
        if head.to_lowercase() == n.to_lowercase()
            && (tail.is_empty() || tail.starts_with([' ', '\t', '\n', ':', ',', '\u{a0}']))
        {
            return Some(
                tail.trim_start_matches([':', ','])
                    .trim_start_matches(|c: char| c.is_whitespace()),
            );
        }
    }
    None
}

/// Markdown that shows `text` as written: `<` opens HTML and mentions (`<@all>`), so it is
/// escaped and nothing a user made the bot repeat can ping a room.
fn markdown(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

/// A message as `GET messages/{id}` answers it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RestMessage {
    id: String,
    room_id: String,
    room_type: String,
    text: String,
    person_id: String,
    person_email: String,
    created: String,
    parent_id: Option<String>,
}

/// An event's message, fetched.
type Fetched = (String, Result<HttpResponse, HttpError>);

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

    async fn me(&self) -> Result<Me, TransportError> {
        let url = format!("{}/people/me", self.api.rest);
        let v = setup_error("reading the bot's account", self.api.get(&url).await)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let id = s("id");
        let emails = v
            .get("emails")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Me {
            uuid: uuid_of(&id).unwrap_or_default(),
            id,
            emails,
            name: s("displayName"),
        })
    }

    /// The device service: from the catalog when there is one (and it leads to Webex or the
    /// catalog's own host), else `wdm_url`.
    async fn wdm(&self) -> String {
        let u2c = self.cfg.u2c_url.trim_end_matches('/');
        if !u2c.is_empty() {
            let url = format!("{u2c}/catalog?format=hostmap");
            match setup_error("reading the service catalog", self.api.get(&url).await) {
                Ok(v) => match v.pointer("/serviceLinks/wdm").and_then(Value::as_str) {
                    Some(wdm) => {
                        let from = opsbot::fetch::Url::parse(u2c).expect("checked u2c_url");
                        match config::served_url(wdm, "https", "http", &from) {
                            Ok(_) => return wdm.trim_end_matches('/').to_owned(),
                            Err(why) => tracing::warn!(
                                kind = "webex",
                                %why,
                                "the service catalog's device service is not used; using wdm_url"
                            ),
                        }
                    }
                    None => {
                        tracing::warn!(kind = "webex", "the service catalog names no wdm service");
                    }
                },
                Err(e) => tracing::warn!(kind = "webex", error = %e, "using wdm_url"),
            }
        }
        self.cfg.wdm_url.trim_end_matches('/').to_owned()
    }

    /// The bot's device: the one registered under our name, else a new one (`fresh`: always a
    /// new one, when the old one turned out stale).
    async fn register(&mut self, fresh: bool) -> Result<Device, TransportError> {
        let wdm = self.wdm().await;
        let devices = format!("{wdm}/devices");
        if !fresh {
            let v = setup_error("listing devices", self.api.get(&devices).await)?;
            let found = v
                .get("devices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|d| {
                    d.get("name").and_then(Value::as_str) == Some(self.cfg.device_name.as_str())
                });
            if let Some(d) = found.and_then(device_of) {
                return checked_socket(d, &wdm);
            }
        }
        let body = json!({
            "deviceName": self.cfg.device_name,
            "deviceType": "DESKTOP",
            "localizedModel": "rust",
            "model": "rust",
            "name": self.cfg.device_name,
            "systemName": "opsbot",
            "systemVersion": env!("CARGO_PKG_VERSION"),
        });
        let v = setup_error("registering a device", self.api.post(&devices, &body).await)?;
        self.stats.registrations += 1;
        let d = device_of(&v).ok_or_else(|| {
            TransportError::Connection("the device registration named no webSocketUrl".into())
        })?;
        checked_socket(d, &wdm)
    }

    /// Opens and authorizes the device's socket (whose URL [`checked_socket`] passed);
    /// `Ok(None)` when the device is stale (404).
    async fn open(&self, device: &Device) -> Result<Option<Socket>, TransportError> {
        let mut req = device
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| TransportError::Connection(format!("webSocketUrl: {e}")))?;
        let auth = format!("Bearer {}", self.cfg.token.expose());
        req.headers_mut().insert(
            "Authorization",
            auth.parse()
                .map_err(|_| TransportError::Refused("the token is not a header value".into()))?,
        );
        let ws_config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connector = tokio_tungstenite::Connector::Rustls(self.api.http.tls());
        let (mut ws, _) = match tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config),
            true,
            Some(connector),
        )
        .await
        {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                return match resp.status().as_u16() {
                    404 => Ok(None),
                    s @ (401 | 403) => Err(TransportError::Refused(format!(
                        "the WebSocket refused the token ({s})"
                    ))),
                    s => Err(TransportError::Connection(format!(
                        "the WebSocket upgrade answered HTTP {s}"
                    ))),
                };
            }
            Err(e) => return Err(TransportError::Connection(format!("WebSocket: {e}"))),
        };
        let frame = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "authorization",
            "data": { "token": auth },
        });
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| TransportError::Connection(format!("WebSocket: {e}")))?;
        Ok(Some(ws))
    }

    fn detail(&self, me: &Me, device: &Device) -> String {
        let host = device
            .ws_url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("?");
        let s = &self.stats;
        let mut d = format!(
            "{} via {host} · device {} · received {} · duplicates {} · older than the bot {} · refused senders {} · unconfirmed replies {} · throttled {}",
            me.emails.first().map_or(me.name.as_str(), String::as_str),
            self.cfg.device_name,
            s.received,
            s.duplicates,
            s.old,
            s.refused_senders,
            s.unconfirmed,
            self.api.throttle.throttled(),
        );
        if let Some(wait) = self.api.throttle.remaining() {
            let _ = write!(d, " (holding {:.0}s)", wait.as_secs_f64().ceil());
        }
        if !self.slow.gap.is_zero() {
            let _ = write!(
                d,
                " · slowed to a reply per {:.1}s",
                self.slow.gap.as_secs_f64()
            );
        }
        d
    }

    /// Whether the sender may use the bot.
    fn approved(&self, email: &str, room: &str) -> bool {
        let c = &self.cfg;
        if c.approved_users.is_empty()
            && c.approved_domains.is_empty()
            && c.approved_rooms.is_empty()
        {
            return true;
        }
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        c.approved_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(email))
            || c.approved_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            || (!room.is_empty() && c.approved_rooms.iter().any(|r| r == room))
    }

    /// Turns a fetched message into a command for the router, or says why not.
    fn accept(&mut self, me: &Me, m: RestMessage) -> Result<Incoming, &'static str> {
        if me.is(&m.person_id, &m.person_email) {
            return Err("own message");
        }
        if !self.seen.insert(&m.id) {
            self.stats.duplicates += 1;
            return Err("already handled");
        }
        let created = chrono::DateTime::parse_from_rfc3339(&m.created)
            .map(SystemTime::from)
            .map_err(|_| "no readable creation time")?;
        if created < self.started {
            self.stats.old += 1;
            return Err("created before the bot started");
        }
        if m.person_email.to_ascii_lowercase().ends_with(BOT_DOMAIN) && !self.cfg.allow_bots {
            return Err("from another bot");
        }
        if !self.approved(&m.person_email, &m.room_id) {
            self.stats.refused_senders += 1;
            tracing::warn!(
                kind = "webex",
                sender = %m.person_email,
                room = %m.room_id,
                "a sender who is not approved tried the bot"
            );
            return Err("not approved");
        }
        if m.text.len() > MAX_COMMAND_BYTES {
            return Err("too long");
        }
        self.stats.received += 1;
        let sender = Sender::with_name(m.person_email.clone(), m.person_email.clone());
        let group = m.room_type != "direct";
        let (text, addressed) = match strip_name(&m.text, &me.name) {
            Some(rest) if group => (rest.to_owned(), true),
            _ => (m.text.trim().to_owned(), false),
        };
        let mut incoming = if group {
            Incoming::in_room(m.room_id.clone(), sender, text)
        } else {
            Incoming::direct(sender, text)
        };
        incoming.id = Some(m.id);
        incoming.addressed = addressed;
        if group {
            incoming.thread = m.parent_id.filter(|p| !p.is_empty()).map(Into::into);
        }
        Ok(incoming)
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
        let md = markdown(&d.text);
        if md.len() <= self.cfg.max_message_bytes() {
            body["markdown"] = Value::String(md);
        } else {
            // Escaping made it too long: plain text shows it as written, and has no mentions.
            body["text"] = Value::String(d.text.clone());
        }
        body
    }
}

/// The device, if its WebSocket URL is one the token may go to: `wss` (or `ws` to this
/// machine when the device service is here too), on a Webex host or the device service's own.
fn checked_socket(d: Device, wdm: &str) -> Result<Device, TransportError> {
    let from = opsbot::fetch::Url::parse(wdm)
        .map_err(|e| TransportError::Connection(format!("the device service's URL: {e}")))?;
    match config::served_url(&d.ws_url, "wss", "ws", &from) {
        Ok(_) => Ok(d),
        Err(why) => Err(TransportError::Connection(format!(
            "the device service handed over a WebSocket the token may not go to: {why}"
        ))),
    }
}

fn device_of(v: &Value) -> Option<Device> {
    Some(Device {
        ws_url: v.get("webSocketUrl")?.as_str()?.to_owned(),
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one event asks of us.
enum Event {
    /// A message to fetch, by REST id.
    Message(String),
    /// Nothing (another kind of event, the bot's own message, unreadable).
    Nothing,
}

/// Reads one frame's event; `ack` is the envelope id to acknowledge.
fn event_of(raw: &[u8], me: &Me) -> (Option<String>, Event) {
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return (None, Event::Nothing);
    };
    let ack = v.get("id").and_then(Value::as_str).map(str::to_owned);
    let data = v.get("data").unwrap_or(&Value::Null);
    if data.get("eventType").and_then(Value::as_str) != Some("conversation.activity") {
        return (ack, Event::Nothing);
    }
    let activity = data.get("activity").unwrap_or(&Value::Null);
    let verb = activity.get("verb").and_then(Value::as_str).unwrap_or("");
    if !matches!(verb, "post" | "share") {
        return (ack, Event::Nothing);
    }
    let actor = activity.get("actor").unwrap_or(&Value::Null);
    let s = |k: &str| actor.get(k).and_then(Value::as_str).unwrap_or("");
    let actor_id = if s("entryUUID").is_empty() {
        s("id")
    } else {
        s("entryUUID")
    };
    if me.is(actor_id, s("emailAddress")) {
        return (ack, Event::Nothing);
    }
    match activity.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() < 256 => (ack, Event::Message(message_id(id))),
        _ => (ack, Event::Nothing),
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
                    if let Event::Message(id) = event {
                        let api = self.api.clone();
                        let url = format!("{}/messages/{id}", api.rest);
                        fetches.push_back(async move { (id, api.get(&url).await) }.boxed_local());
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
                d.done();
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
