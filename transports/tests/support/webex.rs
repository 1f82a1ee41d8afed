//! A fake Webex: the REST endpoints a bot uses (people/me, the U2C catalog, WDM devices,
//! messages) on one loopback port, and the Mercury WebSocket on another, following the
//! protocol as the public clients speak it.
//!
//! REST: every request needs `Authorization: Bearer <token>` of a known bot (else 401); answers
//! can be delayed (`latency`) and faults injected per path (`fail`). Messages posted are
//! recorded when received (before any delay), checked against Webex's rules (one of `roomId`,
//! `toPersonEmail`, `toPersonId`; `text` or `markdown` of at most 7,439 bytes) and reflected to
//! the poster's socket as an event, as Webex does.
//!
//! Cards: a post may carry one attachment, an Adaptive Card (content type
//! `application/vnd.microsoft.card.adaptive`, `type` `AdaptiveCard`, version at most 1.3, at
//! most 22,000 bytes as JSON: a bound of the fake's, Webex publishes none), with a text or
//! markdown fallback. [`FakeWebex::press`] is a person pressing one of its buttons: the
//! button's `data` merged into the inputs, an `attachmentActions` record kept for
//! `GET attachment/actions/{id}`, and a `cardAction` activity delivered. `GET people/{id}`
//! answers every person the fake has seen.
//!
//! WebSocket: the path names the device (404 for an unknown or stale one); the first frame
//! must be the authorization frame with the bot's token, `Bearer x` or bare `x` (else close
//! 4401). Events carry increasing `sequenceNumber`s and alternate between text and binary
//! frames; acks are recorded; events not acked are delivered again on the next connection.
//! The fake pings every `ping_every` and answers pings. Faults: drop the socket without a
//! close frame, close with a code, go silent, refuse every connection with a close code.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A bot account the fake knows.
#[derive(Clone, Debug)]
pub struct Account {
    pub token: String,
    pub uuid: String,
    pub id: String,
    pub email: String,
    pub name: String,
}

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub token: String,
    pub method: String,
    pub path: String,
    pub at: Instant,
}

/// A message a bot posted.
#[derive(Clone, Debug)]
pub struct Post {
    pub token: String,
    pub body: Value,
    pub at: Instant,
    /// The id Webex gave the message.
    pub id: String,
}

impl Post {
    pub fn text(&self) -> String {
        self.body
            .get("markdown")
            .or_else(|| self.body.get("text"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    /// What a reader sees of the post's Markdown, near enough for tests: emphasis marks and
    /// backslash escapes removed, entities decoded.
    pub fn shown(&self) -> String {
        let md = self.text().replace("**", "");
        let mut out = String::with_capacity(md.len());
        let mut chars = md.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    pub fn field(&self, k: &str) -> Option<String> {
        self.body.get(k).and_then(Value::as_str).map(str::to_owned)
    }
}

/// A fault for requests whose path starts with a prefix.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (and `Retry-After`, if given) without acting.
    Status(u16, Option<String>),
    /// Act, then answer this much later (longer than the client waits: a timeout).
    Slow(Duration),
}

struct Device {
    id: String,
    token: String,
    name: String,
    stale: bool,
    /// Events delivered and not yet acknowledged, by envelope id.
    unacked: VecDeque<(String, Value)>,
    socket: Option<mpsc::UnboundedSender<Cmd>>,
}

enum Cmd {
    Event(Value),
    Raw(Message),
    Drop,
    Close(u16),
    Mute,
}

#[derive(Default)]
struct State {
    accounts: Vec<Account>,
    devices: Vec<Device>,
    messages: HashMap<String, Value>,
    /// `attachmentActions` records, by REST id.
    actions: HashMap<String, Value>,
    /// People's emails, by REST id.
    people: HashMap<String, String>,
    posts: Vec<Post>,
    requests: Vec<Seen>,
    acks: Vec<String>,
    faults: Vec<(String, Option<String>, u32, Fault)>,
    latency: Duration,
    refuse_sockets: Option<u16>,
    rest_connections: usize,
    upgrades: Vec<(String, Instant)>,
    seq: u64,
    ping_every: Option<Duration>,
    /// What the catalog names as the device service, instead of the fake's own.
    catalog_wdm: Option<String>,
    /// The WebSocket URL devices get, instead of the fake's own (`{id}`: the device's id).
    socket_url: Option<String>,
}

/// The fake; dropping it stops it.
pub struct FakeWebex {
    pub rest_port: u16,
    pub ws_port: u16,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeWebex {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(s)
}

fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl FakeWebex {
    /// Starts the fake on two free loopback ports (in the current runtime).
    pub async fn start() -> Self {
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest_port = rest.local_addr().unwrap().port();
        let ws_port = ws.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            ping_every: Some(Duration::from_secs(5)),
            ..State::default()
        }));
        let mut tasks = Vec::new();
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = rest.accept().await else {
                    return;
                };
                st.lock().unwrap().rest_connections += 1;
                let st = st.clone();
                tokio::spawn(serve_rest(conn, st, rest_port, ws_port));
            }
        }));
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = ws.accept().await else {
                    return;
                };
                tokio::spawn(serve_ws(conn, st.clone()));
            }
        }));
        Self {
            rest_port,
            ws_port,
            state,
            tasks,
        }
    }

    /// Adds a bot account; answers its token.
    pub fn add_bot(&self, name: &str) -> Account {
        let uuid = uuid();
        let a = Account {
            token: format!("token-{name}-{}", &uuid[..8]),
            id: b64(&format!("ciscospark://us/PEOPLE/{uuid}")),
            uuid,
            email: format!("{name}@webex.bot"),
            name: name.to_owned(),
        };
        self.state.lock().unwrap().accounts.push(a.clone());
        a
    }

    /// The `[bot.transport]` settings for `account` with every URL on this fake, plus `extra`.
    pub fn bot_toml(&self, account: &Account, extra: &str) -> String {
        format!(
            "token = \"{}\"\nrest_url = \"http://127.0.0.1:{p}/v1\"\n\
             u2c_url = \"http://127.0.0.1:{p}/u2c/api/v1\"\n\
             wdm_url = \"http://127.0.0.1:{p}/wdm-fallback/api/v1\"\n{extra}",
            account.token,
            p = self.rest_port
        )
    }

    /// Every REST answer waits this long.
    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// The fake's own pings (none with `None`).
    pub fn set_ping_every(&self, d: Option<Duration>) {
        self.state.lock().unwrap().ping_every = d;
    }

    /// The next `times` requests by `token` (any bot with `None`) whose method and path
    /// (`POST /v1/messages`) start with `prefix` get `fault`.
    pub fn fail(&self, prefix: &str, token: Option<&str>, times: u32, fault: Fault) {
        self.state.lock().unwrap().faults.push((
            prefix.to_owned(),
            token.map(str::to_owned),
            times,
            fault,
        ));
    }

    /// The catalog names `url` as the device service (a hostile or broken catalog).
    pub fn set_catalog_wdm(&self, url: &str) {
        self.state.lock().unwrap().catalog_wdm = Some(url.to_owned());
    }

    /// Devices get `url` as their WebSocket URL (`{id}` stands for the device's id).
    pub fn set_socket_url(&self, url: Option<&str>) {
        self.state.lock().unwrap().socket_url = url.map(str::to_owned);
    }

    /// Every new socket is closed with `code` right after its authorization frame.
    pub fn refuse_sockets(&self, code: Option<u16>) {
        self.state.lock().unwrap().refuse_sockets = code;
    }

    /// Marks `token`'s devices stale: their sockets answer 404 and WDM no longer lists them.
    pub fn stale_devices(&self, token: &str) {
        let mut s = self.state.lock().unwrap();
        for d in s.devices.iter_mut().filter(|d| d.token == token) {
            d.stale = true;
        }
    }

    fn command(&self, token: &str, cmd: impl Fn() -> Cmd) -> bool {
        let s = self.state.lock().unwrap();
        let mut any = false;
        for d in s.devices.iter().filter(|d| d.token == token) {
            if let Some(tx) = &d.socket {
                any |= tx.send(cmd()).is_ok();
            }
        }
        any
    }

    /// Sends `frame` as it is on `token`'s socket (malformed input).
    pub fn raw(&self, token: &str, frame: Message) -> bool {
        self.command(token, || Cmd::Raw(frame.clone()))
    }

    /// Drops `token`'s socket without a close frame.
    pub fn drop_socket(&self, token: &str) -> bool {
        self.command(token, || Cmd::Drop)
    }

    /// Closes `token`'s socket with `code`.
    pub fn close_socket(&self, token: &str, code: u16) -> bool {
        self.command(token, || Cmd::Close(code))
    }

    /// `token`'s socket goes silent: nothing sent, pings unanswered.
    pub fn mute_socket(&self, token: &str) -> bool {
        self.command(token, || Cmd::Mute)
    }

    /// Whether `token` has a connected, authorized socket.
    pub fn connected(&self, token: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.devices
            .iter()
            .any(|d| d.token == token && !d.stale && d.socket.is_some())
    }

    /// Waits until `token` has a socket, failing after `within`.
    pub async fn wait_connected(&self, token: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.connected(token) {
            assert!(Instant::now() < deadline, "the bot never opened its socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A person says `text` in `room` (`None`: 1:1 with the bot), seen by `to`'s bot; with
    /// `parent`, inside that thread. Answers the message's REST id.
    pub fn say(
        &self,
        to: &Account,
        from: &str,
        room: Option<&str>,
        parent: Option<&str>,
        text: &str,
    ) -> String {
        self.say_at(to, from, room, parent, text, &now_rfc3339())
    }

    /// Like [`FakeWebex::say`] with the creation time given (RFC 3339).
    pub fn say_at(
        &self,
        to: &Account,
        from: &str,
        room: Option<&str>,
        parent: Option<&str>,
        text: &str,
        created: &str,
    ) -> String {
        let activity = uuid();
        let person = uuid();
        let id = b64(&format!("ciscospark://us/MESSAGE/{activity}"));
        let (room_id, room_type) = match room {
            Some(r) => (r.to_owned(), "group"),
            None => (
                b64(&format!("ciscospark://us/ROOM/direct-{}-{from}", to.uuid)),
                "direct",
            ),
        };
        let mut msg = json!({
            "id": id,
            "roomId": room_id,
            "roomType": room_type,
            "text": text,
            "personId": b64(&format!("ciscospark://us/PEOPLE/{person}")),
            "personEmail": from,
            "created": created,
        });
        if let Some(p) = parent {
            msg["parentId"] = json!(p);
        }
        let event = activity_event(&activity, &person, from, "post");
        let mut s = self.state.lock().unwrap();
        s.people.insert(
            b64(&format!("ciscospark://us/PEOPLE/{person}")),
            from.to_owned(),
        );
        s.messages.insert(id.clone(), msg);
        deliver(&mut s, &to.token, event);
        id
    }

    /// `from` presses button `button` of the card in message `card` (posted by `to`), with
    /// `inputs` (an object) filled in: answers the action's REST id. `created` is now unless
    /// given.
    pub fn press(
        &self,
        to: &Account,
        from: &str,
        card: &str,
        button: usize,
        inputs: Value,
        created: Option<&str>,
    ) -> String {
        let activity = uuid();
        let person = uuid();
        let person_id = b64(&format!("ciscospark://us/PEOPLE/{person}"));
        let id = b64(&format!("ciscospark://us/ATTACHMENT_ACTION/{activity}"));
        let mut s = self.state.lock().unwrap();
        let msg = s.messages.get(card).cloned().unwrap_or(Value::Null);
        // As Webex does: the button's data joins the inputs.
        let mut inputs = inputs;
        if let Some(data) = msg["attachments"][0]["content"]["actions"][button]["data"].as_object()
        {
            for (k, v) in data {
                inputs[k] = v.clone();
            }
        }
        let action = json!({
            "id": id,
            "type": "submit",
            "messageId": card,
            "inputs": inputs,
            "personId": person_id,
            "roomId": msg["roomId"],
            "created": created.map_or_else(now_rfc3339, str::to_owned),
        });
        s.people.insert(person_id, from.to_owned());
        s.actions.insert(id.clone(), action);
        let event = activity_event(&activity, &person, from, "cardAction");
        deliver(&mut s, &to.token, event);
        id
    }

    /// Sends again the `cardAction` event of action `id` to `to` (a redelivery).
    pub fn redeliver_press(&self, to: &Account, id: &str) {
        let activity = activity_of(id);
        let mut s = self.state.lock().unwrap();
        let person = s.actions[id]["personId"].as_str().unwrap().to_owned();
        let from = s.people[&person].clone();
        let event = activity_event(&activity, &uuid(), &from, "cardAction");
        deliver(&mut s, &to.token, event);
    }

    /// Sends again the event of message `id` to `to` (a redelivery).
    pub fn redeliver(&self, to: &Account, id: &str) {
        let activity = activity_of(id);
        let mut s = self.state.lock().unwrap();
        let from = s.messages[id]["personEmail"].as_str().unwrap().to_owned();
        let event = activity_event(&activity, &uuid(), &from, "post");
        deliver(&mut s, &to.token, event);
    }

    /// What bots posted, in the order received.
    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap().posts.clone()
    }

    /// Waits until `n` posts by `token` have arrived; answers them.
    pub async fn wait_posts(&self, token: &str, n: usize, within: Duration) -> Vec<Post> {
        let deadline = Instant::now() + within;
        loop {
            let got: Vec<Post> = self
                .posts()
                .into_iter()
                .filter(|p| p.token == token)
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} posts expected, {} arrived: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The requests seen, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The envelope ids acknowledged.
    pub fn acks(&self) -> Vec<String> {
        self.state.lock().unwrap().acks.clone()
    }

    /// TCP connections the REST side accepted.
    pub fn rest_connections(&self) -> usize {
        self.state.lock().unwrap().rest_connections
    }

    /// WebSocket upgrades attempted, by device token, with their times.
    pub fn upgrades(&self, token: &str) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .upgrades
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Devices registered for `token` (stale ones included).
    pub fn devices(&self, token: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.devices.iter().filter(|d| d.token == token).count()
    }
}

/// The activity (a UUID) a REST id (`base64("ciscospark://us/<KIND>/<uuid>")`) names.
fn activity_of(id: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(id.trim_end_matches('='))
        .unwrap();
    let uri = String::from_utf8(raw).unwrap();
    uri.rsplit('/').next().unwrap().to_owned()
}

fn activity_event(activity: &str, person: &str, email: &str, verb: &str) -> Value {
    json!({
        "data": {
            "activity": {
                "id": activity,
                "objectType": "activity",
                "verb": verb,
                "published": now_rfc3339(),
                "actor": {
                    "id": person,
                    "objectType": "person",
                    "emailAddress": email,
                    "entryUUID": person,
                },
                "object": { "objectType": "comment", "displayName": "(encrypted)" },
                "target": { "id": uuid(), "objectType": "conversation" },
            },
            "eventType": "conversation.activity",
        },
        "alertType": "full",
        "headers": {},
        "filterMessage": false,
    })
}

/// Gives `event` an envelope id and sequence number and sends it to `token`'s socket (or keeps
/// it for the next one).
fn deliver(s: &mut State, token: &str, mut event: Value) {
    s.seq += 1;
    let env = uuid();
    event["id"] = json!(env);
    event["sequenceNumber"] = json!(s.seq);
    event["timestamp"] = json!(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    );
    if let Some(d) = s
        .devices
        .iter_mut()
        .rev()
        .find(|d| d.token == token && !d.stale)
    {
        d.unacked.push_back((env, event.clone()));
        if let Some(tx) = &d.socket {
            let _ = tx.send(Cmd::Event(event));
        }
    }
}

fn find_fault(s: &mut State, path: &str, token: &str) -> Option<Fault> {
    let i = s.faults.iter().position(|(p, t, n, _)| {
        *n > 0 && path.starts_with(p.as_str()) && t.as_deref().is_none_or(|t| t == token)
    })?;
    s.faults[i].2 -= 1;
    Some(s.faults[i].3.clone())
}

async fn serve_rest(mut conn: TcpStream, st: Arc<Mutex<State>>, rest_port: u16, ws_port: u16) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(super::http::Request {
            method,
            target,
            headers,
            body,
        }) = super::http::read_request(&mut conn, &mut buf).await
        else {
            return;
        };
        let token = headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let (status, extra, answer, delay) =
            handle(&st, &method, &target, &token, &body, rest_port, ws_port);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let body = answer.to_string();
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            423 => "Locked",
            429 => "Too Many Requests",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Status",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTrackingID: fake_{}\r\n",
            body.len(),
            uuid()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

type Answer = (u16, Vec<(String, String)>, Value, Duration);

fn handle(
    st: &Arc<Mutex<State>>,
    method: &str,
    target: &str,
    token: &str,
    body: &[u8],
    rest_port: u16,
    ws_port: u16,
) -> Answer {
    let mut s = st.lock().unwrap();
    let latency = s.latency;
    let path = target.split('?').next().unwrap_or("").to_owned();
    s.requests.push(Seen {
        token: token.to_owned(),
        method: method.to_owned(),
        path: path.clone(),
        at: Instant::now(),
    });
    let err = |status: u16, msg: &str| -> Answer {
        (
            status,
            Vec::new(),
            json!({ "message": msg, "errors": [{ "description": msg }], "trackingId": "fake" }),
            latency,
        )
    };
    let Some(me) = s.accounts.iter().find(|a| a.token == token).cloned() else {
        return err(
            401,
            "The request requires a valid access token set in the Authorization request header.",
        );
    };
    let mut delay = latency;
    match find_fault(&mut s, &format!("{method} {path}"), token) {
        Some(Fault::Status(code, retry_after)) => {
            let mut a = err(code, "injected");
            if let Some(r) = retry_after {
                a.1.push(("Retry-After".into(), r));
            }
            return a;
        }
        Some(Fault::Slow(d)) => delay = d,
        None => {}
    }
    let ok = |v: Value| -> Answer { (200, Vec::new(), v, delay) };
    let base = format!("http://127.0.0.1:{rest_port}");
    match (method, path.as_str()) {
        ("GET", "/v1/people/me") => ok(json!({
            "id": me.id,
            "emails": [me.email],
            "displayName": me.name,
            "nickName": me.name,
            "orgId": "fake-org",
            "type": "bot",
            "created": "2024-01-01T00:00:00.000Z",
        })),
        ("GET", "/u2c/api/v1/catalog") => ok(json!({
            "serviceLinks": {
                "wdm": s.catalog_wdm.clone().unwrap_or_else(|| format!("{base}/wdm/api/v1")),
                "hydra": format!("{base}/v1"),
            },
            "hostCatalog": {},
            "format": "hostmap",
        })),
        ("GET", "/wdm/api/v1/devices") | ("GET", "/wdm-fallback/api/v1/devices") => {
            let devices: Vec<Value> = s
                .devices
                .iter()
                .filter(|d| d.token == token && !d.stale)
                .map(|d| device_json(d, &base, ws_port, s.socket_url.as_deref()))
                .collect();
            ok(json!({ "devices": devices }))
        }
        ("POST", "/wdm/api/v1/devices") | ("POST", "/wdm-fallback/api/v1/devices") => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() || v.get("deviceType").and_then(Value::as_str) != Some("DESKTOP") {
                return err(400, "name and deviceType DESKTOP are required");
            }
            let d = Device {
                id: uuid(),
                token: token.to_owned(),
                name: name.to_owned(),
                stale: false,
                unacked: VecDeque::new(),
                socket: None,
            };
            let j = device_json(&d, &base, ws_port, s.socket_url.as_deref());
            s.devices.push(d);
            ok(j)
        }
        ("GET", p) if p.starts_with("/v1/attachment/actions/") => {
            let id = p["/v1/attachment/actions/".len()..].trim_end_matches('=');
            match s.actions.get(id) {
                Some(a) => ok(a.clone()),
                None => err(404, "The requested resource could not be found."),
            }
        }
        ("GET", p) if p.starts_with("/v1/people/") => {
            let id = p["/v1/people/".len()..].trim_end_matches('=');
            match s.people.get(id) {
                Some(email) => ok(
                    json!({ "id": id, "emails": [email], "displayName": email, "type": "person" }),
                ),
                None => err(404, "The requested resource could not be found."),
            }
        }
        ("GET", p) if p.starts_with("/v1/messages/") => {
            let id = p["/v1/messages/".len()..].trim_end_matches('=');
            match s.messages.get(id) {
                Some(m) => ok(m.clone()),
                None => err(404, "The requested resource could not be found."),
            }
        }
        ("POST", "/v1/messages") => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return err(400, "unreadable JSON");
            };
            let to = ["roomId", "toPersonEmail", "toPersonId"]
                .iter()
                .filter(|k| v.get(**k).is_some())
                .count();
            let text = v
                .get("markdown")
                .or_else(|| v.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if to != 1 || text.is_empty() || text.len() > 7439 {
                return err(
                    400,
                    "one of roomId, toPersonEmail, toPersonId and a text of at most 7439 bytes",
                );
            }
            if let Some(a) = v.get("attachments") {
                let one = a.as_array().filter(|a| a.len() == 1).map(|a| &a[0]);
                let card = one.filter(|c| {
                    c["contentType"] == "application/vnd.microsoft.card.adaptive"
                        && c["content"]["type"] == "AdaptiveCard"
                        && matches!(
                            c["content"]["version"].as_str(),
                            Some("1.0" | "1.1" | "1.2" | "1.3")
                        )
                });
                let Some(card) = card else {
                    return err(400, "attachments: one Adaptive Card of version 1.3 at most");
                };
                if serde_json::to_vec(card).unwrap().len() > 22_000 {
                    return err(400, "attachments: the card is too large");
                }
            }
            // A reply names a message of the same room that is not itself a reply, as Webex
            // requires of threads.
            if let Some(parent) = v.get("parentId") {
                let parent = parent
                    .as_str()
                    .and_then(|p| s.messages.get(p.trim_end_matches('=')));
                let fits = parent.is_some_and(|p| {
                    p.get("parentId").is_none() && p.get("roomId") == v.get("roomId")
                });
                if !fits {
                    return err(400, "parentId: no such top-level message in this room");
                }
            }
            let activity = uuid();
            let id = b64(&format!("ciscospark://us/MESSAGE/{activity}"));
            s.posts.push(Post {
                token: token.to_owned(),
                body: v.clone(),
                at: Instant::now(),
                id: id.clone(),
            });
            let mut m = v.clone();
            m["id"] = json!(id);
            m["personId"] = json!(me.id);
            m["personEmail"] = json!(me.email);
            m["created"] = json!(now_rfc3339());
            m["roomType"] = json!(if v.get("roomId").is_some() {
                "group"
            } else {
                "direct"
            });
            if v.get("roomId").is_none() {
                let to = v
                    .get("toPersonEmail")
                    .or_else(|| v.get("toPersonId"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                m["roomId"] = json!(b64(&format!(
                    "ciscospark://us/ROOM/direct-{}-{to}",
                    me.uuid
                )));
            }
            s.messages.insert(id, m.clone());
            // Webex shows the bot its own message too.
            let event = activity_event(&activity, &me.uuid, &me.email, "post");
            deliver(&mut s, token, event);
            ok(m)
        }
        _ => err(404, "The requested resource could not be found."),
    }
}

fn device_json(d: &Device, base: &str, ws_port: u16, socket_url: Option<&str>) -> Value {
    let ws = socket_url.map_or_else(
        || format!("ws://127.0.0.1:{ws_port}/mercury/{}", d.id),
        |u| u.replace("{id}", &d.id),
    );
    json!({
        "url": format!("{base}/wdm/api/v1/devices/{}", d.id),
        "webSocketUrl": ws,
        "deviceType": "DESKTOP",
        "name": d.name,
        "deviceName": d.name,
    })
}

async fn serve_ws(conn: TcpStream, st: Arc<Mutex<State>>) {
    let device_id = Arc::new(Mutex::new(None::<String>));
    let found = device_id.clone();
    let st2 = st.clone();
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let id = req.uri().path().trim_start_matches("/mercury/").to_owned();
        let mut s = st2.lock().unwrap();
        let token = s
            .devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.token.clone());
        if let Some(t) = &token {
            s.upgrades.push((t.clone(), Instant::now()));
        }
        match s.devices.iter().find(|d| d.id == id) {
            Some(d) if !d.stale => {
                *found.lock().unwrap() = Some(id);
                Ok(resp)
            }
            _ => {
                let mut e = ErrorResponse::new(Some("device not found".into()));
                *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                Err(e)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(conn, check).await else {
        return;
    };
    let Some(id) = device_id.lock().unwrap().clone() else {
        return;
    };
    let token = {
        let s = st.lock().unwrap();
        s.devices.iter().find(|d| d.id == id).unwrap().token.clone()
    };
    // The first frame must authorize the socket.
    let authorized = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).ok().is_some_and(|v| {
            v.get("type").and_then(Value::as_str) == Some("authorization")
                && v.get("id").and_then(Value::as_str).is_some()
                && v.pointer("/data/token")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.strip_prefix("Bearer ").unwrap_or(t) == token)
        }),
        _ => false,
    };
    let refuse = st.lock().unwrap().refuse_sockets;
    if !authorized || refuse.is_some() {
        let code = refuse.unwrap_or(4401);
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: "not authorized".into(),
            })))
            .await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mine = tx.clone();
    let pending: Vec<Value> = {
        let mut s = st.lock().unwrap();
        let d = s.devices.iter_mut().find(|d| d.id == id).unwrap();
        d.socket = Some(tx);
        d.unacked.iter().map(|(_, e)| e.clone()).collect()
    };
    let mut binary = false;
    let mut send_event = |e: Value| {
        binary = !binary;
        if binary {
            Message::binary(e.to_string().into_bytes())
        } else {
            Message::text(e.to_string())
        }
    };
    for e in pending {
        if ws.send(send_event(e)).await.is_err() {
            return;
        }
    }
    let ping_every = st.lock().unwrap().ping_every;
    let mut ping = tokio::time::interval(ping_every.unwrap_or(Duration::from_secs(3600)));
    ping.tick().await;
    let mut muted = false;
    let forget = |st: &Arc<Mutex<State>>| {
        let mut s = st.lock().unwrap();
        // Only this socket's registration: a newer socket of the device may have replaced it.
        if let Some(d) = s.devices.iter_mut().find(|d| d.id == id)
            && d.socket.as_ref().is_some_and(|t| t.same_channel(&mine))
        {
            d.socket = None;
        }
    };
    loop {
        tokio::select! {
            frame = ws.next(), if !muted => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t)
                        && v.get("type").and_then(Value::as_str) == Some("ack")
                        && let Some(m) = v.get("messageId").and_then(Value::as_str)
                    {
                        let mut s = st.lock().unwrap();
                        s.acks.push(m.to_owned());
                        if let Some(d) = s.devices.iter_mut().find(|d| d.id == id) {
                            d.unacked.retain(|(e, _)| e != m);
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    forget(&st);
                    return;
                }
            },
            cmd = rx.recv() => match cmd {
                Some(Cmd::Event(e)) if !muted => {
                    if ws.send(send_event(e)).await.is_err() {
                        forget(&st);
                        return;
                    }
                }
                Some(Cmd::Event(_)) => {}
                Some(Cmd::Raw(m)) => {
                    if ws.send(m).await.is_err() {
                        forget(&st);
                        return;
                    }
                }
                Some(Cmd::Mute) => muted = true,
                Some(Cmd::Close(code)) => {
                    let _ = ws.send(Message::Close(Some(CloseFrame { code: code.into(), reason: "".into() }))).await;
                    forget(&st);
                    return;
                }
                Some(Cmd::Drop) | None => {
                    // Gone without a close frame.
                    forget(&st);
                    return;
                }
            },
            _ = ping.tick(), if ping_every.is_some() && !muted => {
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    forget(&st);
                    return;
                }
            }
        }
    }
}
