//! The Matrix transport, on the `matrix-sdk` crate with its end-to-end encryption and its
//! SQLite stores (encrypted with `store_passphrase`) in the bot's state folder.
//!
//! A session: log in once (password) or take a token, and keep the session (the device id
//! with it) in the store folder, so a restart is the same device and never a new one in the
//! user's device list; join the configured rooms; then sync, handing each new text message to
//! the router and sending what the outbox gives. The sync token is kept after each sync, and a
//! message older than the bot's start never runs, so a restart never replays old commands.
//! Encrypted rooms are read and written by the SDK's crypto; a message the bot cannot decrypt
//! is counted and logged, and answered with nothing.

mod config;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::pacing::Rate;
use opsbot::transport::{Delivery, Identity, Limits, Link, SessionEnd, Transport, TransportError};
use tokio::sync::mpsc;

pub use config::MatrixConfig;

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
        std::fs::create_dir_all(&self.store).map_err(|e| {
            TransportError::Refused(format!(
                "cannot create the store folder {}: {e}",
                self.store.display()
            ))
        })?;
        let client = Client::builder()
            .homeserver_url(self.cfg.homeserver.trim())
            .sqlite_store(&self.store, Some(self.cfg.store_passphrase.expose()))
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
            "{} on {} · device {} · {rooms} room{} · received {} · older than the bot {} · undecryptable {} · rate-limited {}",
            self.cfg.user,
            self.cfg.homeserver.trim(),
            client.device_id().map_or("?".into(), |d| d.to_string()),
            if rooms == 1 { "" } else { "s" },
            self.stats.received.load(Ordering::Relaxed),
            self.stats.old.load(Ordering::Relaxed),
            self.stats.undecryptable.load(Ordering::Relaxed),
            self.stats.limited.load(Ordering::Relaxed),
        )
    }

    /// Hands new text messages to `tx` as they are synced, and counts what cannot be read.
    fn listen(&self, client: &Client, tx: mpsc::UnboundedSender<Incoming>) {
        let started = MilliSecondsSinceUnixEpoch::from_system_time(self.started)
            .unwrap_or(MilliSecondsSinceUnixEpoch(0u32.into()));
        let stats = self.stats.clone();
        client.add_event_handler(
            move |ev: OriginalSyncRoomMessageEvent, room: Room, client: Client| {
                let (tx, stats) = (tx.clone(), stats.clone());
                async move {
                    if client.user_id() == Some(ev.sender.as_ref()) {
                        return;
                    }
                    if ev.origin_server_ts < started {
                        stats.old.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let MessageType::Text(text) = &ev.content.msgtype else {
                        return;
                    };
                    if text.body.len() > MAX_COMMAND_BYTES {
                        return;
                    }
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let sender = Sender::new(ev.sender.to_string());
                    let direct = room.is_direct().await.unwrap_or(false);
                    let mut m = if direct {
                        Incoming::direct(sender, text.body.clone())
                    } else {
                        Incoming::in_room(room.room_id().to_string(), sender, text.body.clone())
                    };
                    m.id = Some(ev.event_id.to_string());
                    if let Some(Relation::Thread(t)) = &ev.content.relates_to {
                        m.thread = Some(t.event_id.to_string().into());
                    }
                    let _ = tx.send(m);
                }
            },
        );
        let stats = self.stats.clone();
        client.add_event_handler(move |ev: OriginalSyncRoomEncryptedEvent, room: Room| {
            let stats = stats.clone();
            async move {
                stats.undecryptable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = "matrix", room = %room.room_id(), event = %ev.event_id, "a message the bot cannot decrypt");
            }
        });
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
        let mut content = RoomMessageEventContent::notice_plain(d.text.clone());
        if let Destination::Thread { parent, .. } = &d.dest
            && let Ok(parent) = OwnedEventId::try_from(parent.as_ref())
        {
            content.relates_to = Some(Relation::Thread(Thread::plain(parent.clone(), parent)));
        }
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
            style: opsbot::rich::Style::Plain,
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
        for r in &self.cfg.rooms {
            match matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(r.as_str()) {
                Ok(id) => {
                    if let Err(e) = client.join_room_by_id_or_alias(&id, &[]).await {
                        link.heal_event("join", format!("{r}: {e}"));
                        tracing::warn!(kind = "matrix", room = %r, error = %e, "cannot join");
                    }
                }
                Err(e) => tracing::warn!(kind = "matrix", room = %r, error = %e, "not a room"),
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.listen(&client, tx);
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
        link.connected(self.detail(&client));
        let mut sync = Box::pin(client.sync_once(settings(&self.sync_token)));
        loop {
            tokio::select! {
                r = &mut sync => {
                    match r {
                        Ok(resp) => {
                            self.sync_token = Some(resp.next_batch);
                            self.keep(&client);
                        }
                        Err(e) => match e.client_api_error_kind() {
                            Some(ErrorKind::LimitExceeded(_)) => {
                                self.stats.limited.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            _ => return Err(classify(&e, "syncing")),
                        },
                    }
                    link.set_detail(self.detail(&client));
                    sync = Box::pin(client.sync_once(settings(&self.sync_token)));
                }
                Some(m) = rx.recv() => link.incoming(m),
                d = link.next_delivery() => match d {
                    Some(d) => self.deliver(&client, d).await?,
                    None => return Ok(SessionEnd::Finished),
                },
            }
        }
    }
}
