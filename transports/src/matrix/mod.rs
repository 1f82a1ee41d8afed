//! The Matrix transport, on the `matrix-sdk` crate with its end-to-end encryption and its
//! SQLite stores (encrypted with `store_passphrase`) in the bot's state folder.
//!
//! A session: log in once (password) or take a token, and keep the session (the device id
//! with it) in the store folder, so a restart is the same device and never a new one in the
//! user's device list; join the configured rooms; then sync, handing each new text message to
//! the router and sending what the outbox gives. The sync token is kept after each sync, and a
//! message older than the bot's start never runs, so a restart never replays old commands.
//! Encrypted rooms are read and written by the SDK's crypto; a message the bot cannot decrypt
//! is counted and logged, and answered with nothing. The device is cross-signed without a
//! human step, and with `recovery_passphrase` the bot's secrets and room keys are kept in the
//! homeserver's secret storage and key backup, so a bot on a new device reads its rooms.
//!
//! Invites are taken to the configured rooms and from `invites_from`; every other is
//! declined. Replies are notices, HTML with a plain body when formatted, marked as replies
//! to the command (`m.in_reply_to`), in its thread when it was in one. The SDK's own retries
//! are off: a rate limit holds the line for the server's wait, and a failed request is the
//! framework's reconnect with backoff.

mod config;
mod crypto;
mod text;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::events::relation::{InReplyTo, Reply, Thread};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId,
};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::pacing::Rate;
use opsbot::transport::{Delivery, Identity, Limits, Link, SessionEnd, Transport, TransportError};
use tokio::sync::mpsc;

pub use config::{MatrixConfig, ShareKeys};

/// The longest text kept from one message as a command.
const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// The longest message the bot sends (Matrix events are at most 64 KiB in all).
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// What the transport counts, for `!status`.
#[derive(Debug, Default)]
struct Stats {
    received: AtomicU64,
    old: AtomicU64,
    undecryptable: AtomicU64,
    limited: AtomicU64,
    declined: AtomicU64,
}

/// What the event handlers hand to the session.
enum Heard {
    Message(Incoming),
    /// An invite of the bot into `room` by `sender`.
    Invite {
        room: OwnedRoomId,
        sender: OwnedUserId,
    },
}

/// The session kept in the store folder: the SDK's session (user, device, token) and the
/// last sync token.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    session: MatrixSession,
    sync_token: Option<String>,
}

/// The Matrix transport; see the [module documentation](self).
#[derive(Debug)]
pub struct Matrix {
    cfg: MatrixConfig,
    store: PathBuf,
    started: SystemTime,
    stats: Arc<Stats>,
    sync_token: Option<String>,
    /// The configured rooms' ids, once joined: invites to them are always taken.
    configured: Vec<OwnedRoomId>,
    /// The encryption's state, for `!status`.
    crypto: String,
}

impl Matrix {
    /// A transport for `cfg`, keeping its session and stores in `cfg.store`, else in
    /// `state_dir`.
    pub fn new(cfg: MatrixConfig, state_dir: &std::path::Path) -> Self {
        let store = cfg.store.clone().unwrap_or_else(|| {
            let user: String = cfg
                .user
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            state_dir.join(format!("matrix-{user}"))
        });
        Self {
            cfg,
            store,
            started: SystemTime::now(),
            stats: Arc::default(),
            sync_token: None,
            configured: Vec::new(),
            crypto: String::new(),
        }
    }

    fn session_file(&self) -> PathBuf {
        self.store.join("session.json")
    }

    fn keep(&self, client: &Client) {
        let Some(session) = client.matrix_auth().session() else {
            return;
        };
        let kept = Kept {
            session,
            sync_token: self.sync_token.clone(),
        };
        let path = self.session_file();
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&kept)
            .map_err(std::io::Error::other)
            .and_then(|b| write_private(&tmp, &b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(kind = "matrix", error = %e, "the session could not be kept");
        }
    }

    /// A logged-in client: the kept session, else a new login (the device id kept from an
    /// earlier one when there is one).
    async fn client(&mut self) -> Result<Client, TransportError> {
        // The folder holds the session (its access token) and the key stores: its user's only,
        // as the state store's folder is.
        std::fs::create_dir_all(&self.store)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.store, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| {
                TransportError::Refused(format!(
                    "cannot create the store folder {}: {e}",
                    self.store.display()
                ))
            })?;
        let client = Client::builder()
            .homeserver_url(self.cfg.homeserver.trim())
            .sqlite_store(&self.store, Some(self.cfg.store_passphrase.expose()))
            .request_config(RequestConfig::new().disable_retry())
            .with_encryption_settings(crypto::settings())
            .with_room_key_recipient_strategy(crypto::strategy(self.cfg.share_keys))
            .build()
            .await
            .map_err(|e| TransportError::Refused(format!("cannot open the stores: {e}")))?;
        let kept: Option<Kept> = std::fs::read(self.session_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match kept {
            Some(k) if k.session.meta.user_id.as_str() == self.cfg.user => {
                self.sync_token = k.sync_token;
                client
                    .matrix_auth()
                    .restore_session(k.session, RoomLoadSettings::default())
                    .await
                    .map_err(|e| classify(&e, "restoring the session"))?;
            }
            _ => {
                if let Some(token) = &self.cfg.access_token {
                    let user_id = OwnedUserId::try_from(self.cfg.user.as_str())
                        .map_err(|e| TransportError::Refused(format!("user: {e}")))?;
                    let whoami = {
                        // Who the token is, and its device.
                        let probe = MatrixSession {
                            meta: matrix_sdk::SessionMeta {
                                user_id,
                                device_id: "PROBE".into(),
                            },
                            tokens: matrix_sdk::authentication::SessionTokens {
                                access_token: token.expose().to_owned(),
                                refresh_token: None,
                            },
                        };
                        let c = Client::builder()
                            .homeserver_url(self.cfg.homeserver.trim())
                            .request_config(RequestConfig::new().disable_retry())
                            .build()
                            .await
                            .map_err(|e| TransportError::Connection(e.to_string()))?;
                        c.matrix_auth()
                            .restore_session(probe, RoomLoadSettings::default())
                            .await
                            .map_err(|e| classify(&e, "checking the token"))?;
                        c.whoami()
                            .await
                            .map_err(|e| classify(&e.into(), "whoami"))?
                    };
                    let device = whoami.device_id.ok_or_else(|| {
                        TransportError::Refused("the access token has no device".into())
                    })?;
                    let session = MatrixSession {
                        meta: matrix_sdk::SessionMeta {
                            user_id: whoami.user_id,
                            device_id: device,
                        },
                        tokens: matrix_sdk::authentication::SessionTokens {
                            access_token: token.expose().to_owned(),
                            refresh_token: None,
                        },
                    };
                    client
                        .matrix_auth()
                        .restore_session(session, RoomLoadSettings::default())
                        .await
                        .map_err(|e| classify(&e, "restoring the token's session"))?;
                } else if let Some(password) = &self.cfg.password {
                    client
                        .matrix_auth()
                        .login_username(&self.cfg.user, password.expose())
                        .initial_device_display_name(&self.cfg.device_name)
                        .send()
                        .await
                        .map_err(|e| classify(&e, "logging in"))?;
                }
                self.keep(&client);
            }
        }
        Ok(client)
    }

    fn detail(&self, client: &Client) -> String {
        let rooms = client.joined_rooms().len();
        format!(
            "{} on {} · device {} · {rooms} room{} · {} · received {} · older than the bot {} · undecryptable {} · rate-limited {} · invites declined {}",
            self.cfg.user,
            self.cfg.homeserver.trim(),
            client.device_id().map_or("?".into(), |d| d.to_string()),
            if rooms == 1 { "" } else { "s" },
            self.crypto,
            self.stats.received.load(Ordering::Relaxed),
            self.stats.old.load(Ordering::Relaxed),
            self.stats.undecryptable.load(Ordering::Relaxed),
            self.stats.limited.load(Ordering::Relaxed),
            self.stats.declined.load(Ordering::Relaxed),
        )
    }

    /// Hands new text messages and invites to `tx` as they are synced, and counts what cannot
    /// be read. `names` are the bot's names a mention pill writes (display name, user id,
    /// local part).
    fn listen(&self, client: &Client, names: Vec<String>, tx: mpsc::UnboundedSender<Heard>) {
        let started = MilliSecondsSinceUnixEpoch::from_system_time(self.started)
            .unwrap_or(MilliSecondsSinceUnixEpoch(0u32.into()));
        let stats = self.stats.clone();
        let names = Arc::new(names);
        let messages = tx.clone();
        client.add_event_handler(
            move |ev: OriginalSyncRoomMessageEvent, room: Room, client: Client| {
                let (tx, stats, names) = (messages.clone(), stats.clone(), names.clone());
                async move {
                    let Some(own) = client.user_id() else { return };
                    if own == ev.sender {
                        return;
                    }
                    if ev.origin_server_ts < started {
                        stats.old.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let MessageType::Text(text) = &ev.content.msgtype else {
                        return;
                    };
                    // An edit never runs a command again.
                    if matches!(ev.content.relates_to, Some(Relation::Replacement(_)))
                        || text.body.len() > MAX_COMMAND_BYTES
                    {
                        return;
                    }
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let pill = format!("matrix.to/#/{own}");
                    let mentioned = ev
                        .content
                        .mentions
                        .as_ref()
                        .is_some_and(|m| m.user_ids.contains(own))
                        || text
                            .formatted
                            .as_ref()
                            .is_some_and(|f| f.body.contains(&pill));
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let (body, addressed) = match text::after_name(&text.body, &names) {
                        Some(rest) if mentioned => (rest, true),
                        _ => (text.body.as_str(), false),
                    };
                    let sender = Sender::new(ev.sender.to_string());
                    let direct = room.is_direct().await.unwrap_or(false);
                    let mut m = if direct {
                        Incoming::direct(sender, body)
                    } else {
                        Incoming::in_room(room.room_id().to_string(), sender, body)
                    };
                    m.addressed = addressed && !direct;
                    m.id = Some(ev.event_id.to_string());
                    if let Some(Relation::Thread(t)) = &ev.content.relates_to {
                        m.thread = Some(t.event_id.to_string().into());
                    }
                    let _ = tx.send(Heard::Message(m));
                }
            },
        );
        client.add_event_handler(
            move |ev: StrippedRoomMemberEvent, room: Room, client: Client| {
                let tx = tx.clone();
                async move {
                    if ev.content.membership == MembershipState::Invite
                        && client.user_id() == Some(ev.state_key.as_ref())
                    {
                        let _ = tx.send(Heard::Invite {
                            room: room.room_id().to_owned(),
                            sender: ev.sender,
                        });
                    }
                }
            },
        );
        let stats = self.stats.clone();
        client.add_event_handler(move |ev: OriginalSyncRoomEncryptedEvent, room: Room| {
            let stats = stats.clone();
            async move {
                // History the bot cannot read is not a message to it.
                if ev.origin_server_ts < started {
                    return;
                }
                stats.undecryptable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = "matrix", room = %room.room_id(), event = %ev.event_id, "a message the bot cannot decrypt");
            }
        });
    }

    /// Takes an invite to a configured room or from `invites_from`, and declines any other.
    async fn invited(&self, client: &Client, link: &Link, room: OwnedRoomId, sender: OwnedUserId) {
        let Some(r) = client.get_room(&room) else {
            return;
        };
        if self.configured.contains(&room) || self.cfg.may_invite(sender.as_str()) {
            match r.join().await {
                Ok(()) => link.heal_event("invite", format!("joined {room}, invited by {sender}")),
                Err(e) => link.heal_event("invite", format!("cannot join {room}: {e}")),
            }
        } else {
            self.stats.declined.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind = "matrix", %room, %sender, "invite declined: not from invites_from");
            link.heal_event("invite", format!("declined {room} from {sender}"));
            if let Err(e) = r.leave().await {
                tracing::warn!(kind = "matrix", %room, error = %e, "cannot decline the invite");
            }
        }
    }

    /// Sends one line; answers the delivery.
    async fn deliver(&self, client: &Client, d: Delivery) -> Result<(), TransportError> {
        let room = match &d.dest {
            Destination::Room(id) | Destination::Thread { room: id, .. } => {
                OwnedRoomId::try_from(id.as_ref())
                    .ok()
                    .and_then(|id| client.get_room(&id))
            }
            Destination::User(user) => match OwnedUserId::try_from(user.as_ref()) {
                Ok(u) => match client.get_dm_room(&u) {
                    Some(r) => Some(r),
                    None => client.create_dm(&u).await.ok(),
                },
                Err(_) => None,
            },
        };
        let Some(room) = room else {
            let why = format!("the bot is not in {}", d.dest);
            d.undeliverable(why);
            return Ok(());
        };
        let mut content = if d.formatted {
            let (body, html) = text::html_and_body(&d.text);
            RoomMessageEventContent::notice_html(body, html)
        } else {
            RoomMessageEventContent::notice_plain(d.text.clone())
        };
        let answers = d
            .in_reply_to
            .as_deref()
            .and_then(|id| OwnedEventId::try_from(id).ok());
        content.relates_to = match (&d.dest, answers) {
            (Destination::Thread { parent, .. }, answers) => {
                OwnedEventId::try_from(parent.as_ref())
                    .ok()
                    .map(|root| match answers {
                        Some(a) => Relation::Thread(Thread::reply(root, a)),
                        None => Relation::Thread(Thread::without_fallback(root)),
                    })
            }
            (_, Some(a)) => Some(Relation::Reply(Reply::new(InReplyTo::new(a)))),
            (_, None) => None,
        };
        match room.send(content).await {
            Ok(r) => {
                d.done_as(r.response.event_id.to_string());
                Ok(())
            }
            Err(e) => match e.client_api_error_kind() {
                Some(ErrorKind::LimitExceeded(data)) => {
                    self.stats.limited.fetch_add(1, Ordering::Relaxed);
                    let wait = match data.retry_after {
                        Some(RetryAfter::Delay(d)) => d,
                        Some(RetryAfter::DateTime(t)) => t
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::from_secs(1)),
                        None => Duration::from_secs(2),
                    };
                    d.hold(wait.min(Duration::from_secs(300)));
                    Ok(())
                }
                Some(ErrorKind::UnknownToken(_)) => {
                    drop(d);
                    Err(TransportError::Refused(
                        "the homeserver no longer takes the bot's token".into(),
                    ))
                }
                Some(_) => {
                    d.undeliverable(e.to_string());
                    Ok(())
                }
                None => {
                    drop(d);
                    Err(TransportError::Connection(format!("sending: {e}")))
                }
            },
        }
    }
}

/// Creates `path` readable by its owner only, holding `bytes`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// A refused token or login is a refusal (the framework waits its floor); the rest is a
/// connection error, tried again with backoff.
fn classify(e: &matrix_sdk::Error, doing: &str) -> TransportError {
    match e.client_api_error_kind() {
        Some(ErrorKind::UnknownToken(_) | ErrorKind::Forbidden | ErrorKind::UserDeactivated) => {
            TransportError::Refused(format!("{doing}: {e}"))
        }
        _ => TransportError::Connection(format!("{doing}: {e}")),
    }
}

impl Transport for Matrix {
    fn kind(&self) -> &'static str {
        "matrix"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_line_bytes: MAX_MESSAGE_BYTES,
            // Synapse's default for a user is 0.2 messages a second with a burst of 10; a
            // bot's account is usually exempted, and a 429 holds the line for its wait.
            global: Some(Rate::new(2.0, 10)),
            global_bytes: None,
            line_overhead: 0,
            per_destination: Some(Rate::new(1.0, 5)),
            multiline: true,
            window: 1,
            window_per_destination: 1,
            style: opsbot::rich::Style::Markdown,
            cards: false,
        }
    }

    fn identity(&self) -> Identity {
        Identity::Address
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let client = self.client().await?;
        let nick = self
            .cfg
            .user
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        link.set_nick(&nick);
        self.configured.clear();
        for r in &self.cfg.rooms {
            let Ok(id) = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(r.as_str()) else {
                tracing::warn!(kind = "matrix", room = %r, "not a room");
                continue;
            };
            // The room's id, so that an invite to it is known as one to a configured room
            // even when joining it now fails (an invite-only room the bot is not yet in).
            let room_id = match OwnedRoomId::try_from(r.as_str()) {
                Ok(rid) => Some(rid),
                Err(_) => match OwnedRoomAliasId::try_from(r.as_str()) {
                    Ok(alias) => client
                        .resolve_room_alias(&alias)
                        .await
                        .ok()
                        .map(|a| a.room_id),
                    Err(_) => None,
                },
            };
            self.configured.extend(room_id);
            if let Err(e) = client.join_room_by_id_or_alias(&id, &[]).await {
                if e.client_api_error_kind().is_none() {
                    return Err(classify(&e, "joining"));
                }
                link.heal_event("join", format!("{r}: {e}"));
                tracing::warn!(kind = "matrix", room = %r, error = %e, "cannot join");
            }
        }
        let mut names = vec![self.cfg.user.clone(), nick];
        if let Ok(Some(display)) = client.account().get_display_name().await {
            names.insert(0, display);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.listen(&client, names, tx);
        let timeout = self.cfg.sync_timeout();
        let settings = move |token: &Option<String>| {
            let s = SyncSettings::default().timeout(timeout);
            match token {
                Some(t) => s.token(t.clone()),
                None => s,
            }
        };
        // The first sync catches up; what it brings is older than the bot, or new.
        let first = client
            .sync_once(settings(&self.sync_token))
            .await
            .map_err(|e| classify(&e, "syncing"))?;
        self.sync_token = Some(first.next_batch);
        self.keep(&client);
        crypto::secure(&client, &self.cfg, link).await;
        self.crypto = crypto::state(&client, self.cfg.share_keys).await;
        link.connected(self.detail(&client));
        // Syncing runs on a task of its own. The SDK holds its locks while it processes a
        // response (event handlers, keys); a sync future parked in this loop's select while a
        // send waits for those locks would stop the bot for good.
        let (synced_tx, mut synced) = mpsc::channel(4);
        let syncing = SyncTask(tokio::spawn(sync_loop(
            client.clone(),
            self.sync_token.clone(),
            timeout,
            self.stats.clone(),
            synced_tx,
        )));
        loop {
            tokio::select! {
                r = synced.recv() => {
                    match r {
                        Some(Ok(token)) => {
                            self.sync_token = Some(token);
                            self.keep(&client);
                        }
                        Some(Err(e)) => return Err(classify(&e, "syncing")),
                        None => {
                            return Err(TransportError::Connection("the sync stopped".into()));
                        }
                    }
                    self.crypto = crypto::state(&client, self.cfg.share_keys).await;
                    link.set_detail(self.detail(&client));
                }
                Some(heard) = rx.recv() => match heard {
                    Heard::Message(m) => {
                        link.incoming(m);
                        link.set_detail(self.detail(&client));
                    }
                    Heard::Invite { room, sender } => {
                        self.invited(&client, link, room, sender).await;
                    }
                },
                d = link.next_delivery() => match d {
                    Some(d) => {
                        self.deliver(&client, d).await?;
                        link.set_detail(self.detail(&client));
                    }
                    None => {
                        drop(syncing);
                        return Ok(SessionEnd::Finished);
                    }
                },
            }
        }
    }
}

/// The sync task, stopped when the session ends.
struct SyncTask(tokio::task::JoinHandle<()>);

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the bot waits before it syncs again after a sync that came back at once with
/// nothing new.
const IDLE_PAUSE: Duration = Duration::from_secs(1);

/// Syncs from `token` on, handing each next token (or the failure that ends it) to `out`. A
/// rate limit on the sync itself is counted and waited out here.
///
/// One long poll follows another at once, so an answer is never held back; but a homeserver
/// that answers a sync at once with nothing new (the same token) is not waiting for news as
/// asked, and is then asked again only after [`IDLE_PAUSE`]. matrix-sdk's own loop pauses a
/// second after every quick sync, which in a busy room would delay each answer by as much.
async fn sync_loop(
    client: Client,
    mut token: Option<String>,
    timeout: Duration,
    stats: Arc<Stats>,
    out: mpsc::Sender<Result<String, matrix_sdk::Error>>,
) {
    let mut warned = false;
    loop {
        let mut settings = SyncSettings::default().timeout(timeout);
        if let Some(t) = &token {
            settings = settings.token(t.clone());
        }
        let asked = tokio::time::Instant::now();
        match client.sync_once(settings).await {
            Ok(resp) => {
                let idle = token.as_deref() == Some(resp.next_batch.as_str())
                    && asked.elapsed() < timeout / 2;
                token = Some(resp.next_batch.clone());
                if out.send(Ok(resp.next_batch)).await.is_err() {
                    return;
                }
                if idle {
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            kind = "matrix",
                            "the homeserver answers syncs at once with nothing new; \
                             syncing at most once every {IDLE_PAUSE:?} while it does"
                        );
                    }
                    tokio::time::sleep(IDLE_PAUSE).await;
                }
            }
            Err(e) => {
                if let Some(ErrorKind::LimitExceeded(data)) = e.client_api_error_kind() {
                    stats.limited.fetch_add(1, Ordering::Relaxed);
                    let wait = match data.retry_after {
                        Some(RetryAfter::Delay(d)) => d,
                        _ => Duration::from_secs(2),
                    };
                    tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
                } else {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}
