//! The Matrix transport against a real Synapse started by each test on a free loopback port,
//! with a matrix-sdk client as the person in the room.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::RunningBot;
use crate::support::synapse::Synapse;
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, UserId};
use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot_transports::matrix::{Matrix, MatrixConfig};

const T: Duration = Duration::from_secs(30);
const BOT: &str = "@opsbot:localhost";

/// A notice the bot sent, as a person's client received it.
#[derive(Clone, Debug)]
struct Heard {
    room: OwnedRoomId,
    body: String,
    html: Option<String>,
    /// The event it replies to (`m.in_reply_to`, also inside a thread).
    reply_to: Option<OwnedEventId>,
    /// The thread's root, when sent in one.
    thread: Option<OwnedEventId>,
}

/// A person: a matrix-sdk client (stores in memory) that keeps what the bot says, and counts
/// the bot's encrypted messages it could not decrypt.
struct Person {
    client: Client,
    heard: Arc<Mutex<Vec<Heard>>>,
    locked: Arc<Mutex<usize>>,
}

impl Person {
    /// Registers the bot's account and alice's, and logs alice in.
    async fn alice_beside_the_bot(synapse: &Synapse) -> Self {
        synapse.register("opsbot", "botpass");
        synapse.register("alice", "alicepass");
        Self::login(synapse, "alice", "alicepass").await
    }

    async fn login(synapse: &Synapse, user: &str, password: &str) -> Self {
        let client = Client::builder()
            .homeserver_url(synapse.url())
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(user, password)
            .send()
            .await
            .unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        client.add_event_handler(
            move |ev: OriginalSyncRoomMessageEvent, room: matrix_sdk::Room| {
                let h = h.clone();
                async move {
                    if ev.sender.as_str() != BOT {
                        return;
                    }
                    let MessageType::Notice(n) = &ev.content.msgtype else {
                        return;
                    };
                    let (reply_to, thread) = match &ev.content.relates_to {
                        Some(Relation::Reply(r)) => (Some(r.in_reply_to.event_id.clone()), None),
                        Some(Relation::Thread(t)) => (
                            t.in_reply_to.as_ref().map(|r| r.event_id.clone()),
                            Some(t.event_id.clone()),
                        ),
                        _ => (None, None),
                    };
                    h.lock().unwrap().push(Heard {
                        room: room.room_id().to_owned(),
                        body: n.body.clone(),
                        html: n.formatted.as_ref().map(|f| f.body.clone()),
                        reply_to,
                        thread,
                    });
                }
            },
        );
        let locked = Arc::new(Mutex::new(0));
        let l = locked.clone();
        client.add_event_handler(move |ev: OriginalSyncRoomEncryptedEvent| {
            let l = l.clone();
            async move {
                if ev.sender.as_str() == BOT {
                    *l.lock().unwrap() += 1;
                }
            }
        });
        client.sync_once(SyncSettings::default()).await.unwrap();
        Self {
            client,
            heard,
            locked,
        }
    }

    /// Creates a public room with the alias `#{alias}:localhost`.
    async fn create_room(&self, alias: &str) -> matrix_sdk::Room {
        let mut req = CreateRoom::new();
        req.room_alias_name = Some(alias.to_owned());
        req.preset = Some(RoomPreset::PublicChat);
        self.client.create_room(req).await.unwrap()
    }

    /// Creates an invite-only room with the alias `#{alias}:localhost`.
    async fn create_private_room(&self, alias: &str) -> matrix_sdk::Room {
        let mut req = CreateRoom::new();
        req.room_alias_name = Some(alias.to_owned());
        req.preset = Some(RoomPreset::PrivateChat);
        self.client.create_room(req).await.unwrap()
    }

    /// Creates a public, encrypted room with the alias `#{alias}:localhost`.
    async fn create_encrypted_room(&self, alias: &str) -> matrix_sdk::Room {
        let mut req = CreateRoom::new();
        req.room_alias_name = Some(alias.to_owned());
        req.preset = Some(RoomPreset::PublicChat);
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
        self.client.create_room(req).await.unwrap()
    }

    async fn say(&self, room: &matrix_sdk::Room, text: &str) -> OwnedEventId {
        self.send(room, RoomMessageEventContent::text_plain(text))
            .await
    }

    async fn send(
        &self,
        room: &matrix_sdk::Room,
        content: RoomMessageEventContent,
    ) -> OwnedEventId {
        room.send(content).await.unwrap().response.event_id
    }

    async fn sync(&self) {
        let settings = SyncSettings::default().timeout(Duration::from_millis(500));
        self.client.sync_once(settings).await.unwrap();
    }

    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Syncs until the bot has said `want`; answers that notice.
    async fn expect(&self, want: &str) -> Heard {
        let deadline = Instant::now() + T;
        loop {
            if let Some(h) = self.heard().into_iter().find(|h| h.body == want) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "the bot never said {want:?}: {:?}",
                self.heard()
            );
            self.sync().await;
        }
    }

    /// Syncs until `user` has the membership `state` (`join`, `leave`) in `room`.
    async fn wait_membership(&self, room: &matrix_sdk::Room, user: &str, state: &str) {
        let deadline = Instant::now() + T;
        loop {
            let member = room
                .get_member_no_sync(<&UserId>::try_from(user).unwrap())
                .await
                .unwrap();
            if member.is_some_and(|m| m.membership().as_str() == state) {
                return;
            }
            assert!(Instant::now() < deadline, "{user} never got to {state}");
            self.sync().await;
        }
    }
}

/// Sets the bot's display name with a short login of its own (a device then logged out).
async fn name_the_bot(synapse: &Synapse, name: &str) {
    let c = Client::builder()
        .homeserver_url(synapse.url())
        .build()
        .await
        .unwrap();
    c.matrix_auth()
        .login_username("opsbot", "botpass")
        .send()
        .await
        .unwrap();
    c.account().set_display_name(Some(name)).await.unwrap();
    c.logout().await.unwrap();
}

fn config_with(
    synapse: &Synapse,
    store: &std::path::Path,
    rooms: &[&str],
    extra: &str,
) -> MatrixConfig {
    let rooms: Vec<String> = rooms.iter().map(|r| format!("\"{r}\"")).collect();
    let text = format!(
        "homeserver = \"{}\"\nuser = \"{BOT}\"\npassword = \"botpass\"\n\
         store = \"{}\"\nstore_passphrase = \"passphrase\"\nrooms = [{}]\n\
         sync_timeout_secs = 2\n{extra}\n",
        synapse.url(),
        store.display(),
        rooms.join(", ")
    );
    let cfg: MatrixConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    cfg
}

fn config(synapse: &Synapse, store: &std::path::Path, room: &str) -> MatrixConfig {
    config_with(synapse, store, &[room], "")
}

fn bot(cfg: MatrixConfig) -> RunningBot {
    RunningBot::launch(
        opsbot::Bot::builder("matrixbot").transport(Matrix::new(cfg, std::path::Path::new("."))),
        "@alice:localhost",
        |b| b,
    )
}

fn detail(s: &Snapshot) -> String {
    s.actor(ActorKind::Transport, "matrix")
        .and_then(|a| a.detail.clone())
        .unwrap_or_default()
}

fn is_connected(s: &Snapshot) -> bool {
    s.actor(ActorKind::Transport, "matrix")
        .is_some_and(|a| a.conn == Some(ConnState::Connected))
}

async fn connected(bot: &RunningBot) -> Snapshot {
    bot.wait_status(T, "connected in its room", |s| {
        is_connected(s) && detail(s).contains("· 1 room ")
    })
    .await
}

/// The bot's session as kept in its store folder: (access token, device id).
fn kept_session(store: &std::path::Path) -> (String, String) {
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("session.json")).unwrap()).unwrap();
    let find = |key: &str| {
        fn walk(v: &serde_json::Value, key: &str) -> Option<String> {
            match v {
                serde_json::Value::Object(m) => m
                    .get(key)
                    .and_then(|x| x.as_str().map(str::to_owned))
                    .or_else(|| m.values().find_map(|x| walk(x, key))),
                _ => None,
            }
        }
        walk(&kept, key).unwrap_or_else(|| panic!("no {key} in the kept session"))
    };
    (find("access_token"), find("device_id"))
}

/// A client on the bot's own store and session, after the bot has stopped: what the bot's
/// device can read.
async fn open_bot_store(synapse: &Synapse, store: &std::path::Path) -> Client {
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("session.json")).unwrap()).unwrap();
    let session: matrix_sdk::authentication::matrix::MatrixSession =
        serde_json::from_value(kept["session"].clone()).unwrap();
    let client = Client::builder()
        .homeserver_url(synapse.url())
        .sqlite_store(store, Some("passphrase"))
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .restore_session(session, matrix_sdk::store::RoomLoadSettings::default())
        .await
        .unwrap();
    client.sync_once(SyncSettings::default()).await.unwrap();
    client
}

/// Whether the bot's `client` reads `event` in `room` as a decrypted message with `body`,
/// trying for up to `T` (room keys may come from the key backup first).
async fn reads(client: &Client, room: &OwnedRoomId, event: &OwnedEventId, body: &str) -> bool {
    let room = client.get_room(room).unwrap();
    let deadline = Instant::now() + T;
    loop {
        if let Ok(ev) = room.event(event, None).await {
            let content: Option<serde_json::Value> = ev.raw().get_field("content").ok().flatten();
            if content.is_some_and(|c| c["body"] == body) {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Commands in a room are answered; after a restart the bot is the same device, and a
/// command sent while it was down (older than its start) never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_and_a_restart_replays_nothing_on_the_same_device() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_room("ops").await;
    let tmp = tempfile::tempdir().unwrap();
    // A folder the bot makes itself (a temporary folder is private already).
    let store = tmp.path().join("matrix");

    let first = bot(config(&synapse, store.as_path(), "#ops:localhost"));
    let s = connected(&first).await;
    let device = detail(&s);
    assert!(
        device.contains("@opsbot:localhost on http://127.0.0.1:"),
        "{device}"
    );
    alice.say(&room, "!echo hello").await;
    alice.expect("hello").await;
    // The session (its token) and the key stores are the bot's user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.as_path()), 0o700);
    assert_eq!(mode(&store.as_path().join("session.json")), 0o600);
    drop(first);

    // While the bot is down, a command waits on the server.
    alice.say(&room, "!echo while down").await;
    let second = bot(config(&synapse, store.as_path(), "#ops:localhost"));
    let s = connected(&second).await;
    let device_of = |d: &str| d.split(" · ").nth(1).unwrap_or_default().to_owned();
    assert_eq!(
        device_of(&detail(&s)),
        device_of(&device),
        "the same device"
    );
    alice.say(&room, "!echo after").await;
    alice.expect("after").await;
    let heard = alice.heard();
    assert!(
        !heard.iter().any(|h| h.body == "while down"),
        "an old command ran: {heard:?}"
    );
    let s = second.status();
    assert!(
        detail(&s).contains("older than the bot 1"),
        "{}",
        detail(&s)
    );
}

/// An encrypted room works like any other (the bot reads the command and its answer is
/// encrypted for the room); a message the bot cannot decrypt is counted, and answered with
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_works_and_an_undecryptable_message_is_counted() {
    use matrix_sdk::ruma::TransactionId;
    use matrix_sdk::ruma::api::client::message::send_message_event::v3::Request as SendRaw;
    use matrix_sdk::ruma::events::MessageLikeEventType;
    use matrix_sdk::ruma::serde::Raw;

    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_encrypted_room("secure").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#secure:localhost"));
    connected(&bot).await;
    // Alice learns that the bot joined, so her message is encrypted for its device too.
    alice.wait_membership(&room, BOT, "join").await;
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());
    let secret = alice.say(&room, "!echo secret").await;
    alice.expect("secret").await;

    // A message no key can open.
    let garbage = serde_json::json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9IsN9r4RNFg7MaZencUJe4qvELiDiopUjy5wYVDAtqdBzer5bWRD9ldxp1FLgbQvBcjkkywYjCsmsq6+hArLd9oAQZnGKn/qLsK+5uNX3PaWzDRC9wZPQvWYYPCTov3jCwXKTPsLKIiTrcCXDqMvnn8m+T3zF/I2zqxg158tnUwWWIw51UO",
        "device_id": "RJYKSTBOIE",
        "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
        "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
    });
    alice
        .client
        .send(SendRaw::new_raw(
            room.room_id().to_owned(),
            TransactionId::new(),
            MessageLikeEventType::RoomEncrypted,
            Raw::new(&garbage).unwrap().cast_unchecked(),
        ))
        .await
        .unwrap();
    alice.say(&room, "!echo after").await;
    alice.expect("after").await;
    let bodies: Vec<String> = alice.heard().into_iter().map(|h| h.body).collect();
    assert_eq!(bodies, ["secret", "after"], "nothing answered the garbage");
    let s = bot
        .wait_status(T, "the garbage counted", |s| {
            detail(s).contains("undecryptable 1")
        })
        .await;
    assert!(detail(&s).contains("undecryptable 1"));

    // After a restart (here: the bot stopped and its store opened again), the device still
    // reads the room's encrypted history.
    drop(bot);
    let again = open_bot_store(&synapse, store.path()).await;
    assert!(
        reads(&again, &room.room_id().to_owned(), &secret, "!echo secret").await,
        "the bot's device cannot read its room's history"
    );
}

/// In a room: `!cmd`, `botname: cmd` and a mention pill reach the bot (the bot's display name
/// alone, with no mention, does not); answers are replies to the command, in its thread when
/// it was in one, and formatted answers are HTML with a plain body. In a direct chat, any
/// text is a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_mentions_threads_replies_direct_chats_and_html() {
    use matrix_sdk::ruma::events::Mentions;
    use matrix_sdk::ruma::events::relation::Thread;

    let synapse = Synapse::start();
    synapse.register("opsbot", "botpass");
    synapse.register("alice", "alicepass");
    name_the_bot(&synapse, "Ops Bot").await;
    let alice = Person::login(&synapse, "alice", "alicepass").await;
    let room = alice.create_room("ops").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config_with(
        &synapse,
        store.path(),
        &["#ops:localhost"],
        "invites_from = [\"@alice:localhost\"]",
    ));
    connected(&bot).await;

    let cmd = alice.say(&room, "!echo one").await;
    let h = alice.expect("one").await;
    assert_eq!((h.reply_to, h.thread), (Some(cmd), None), "a reply to it");

    alice.say(&room, "opsbot: echo by name").await;
    alice.expect("by name").await;

    let pill = RoomMessageEventContent::text_html(
        "Ops Bot: echo pill",
        "<a href=\"https://matrix.to/#/@opsbot:localhost\">Ops Bot</a>: echo pill",
    )
    .add_mentions(Mentions::with_user_ids([BOT.try_into().unwrap()]));
    alice.send(&room, pill).await;
    alice.expect("pill").await;
    // The display name typed without the mention is chatter.
    alice.say(&room, "Ops Bot: echo no pill").await;

    let root = alice.say(&room, "deploying web").await;
    let mut in_thread = RoomMessageEventContent::text_plain("!echo threaded");
    in_thread.relates_to = Some(Relation::Thread(Thread::plain(root.clone(), root.clone())));
    let cmd = alice.send(&room, in_thread).await;
    let h = alice.expect("threaded").await;
    assert_eq!(
        (h.thread, h.reply_to),
        (Some(root), Some(cmd)),
        "in the thread"
    );

    alice.say(&room, "!help echo").await;
    let deadline = Instant::now() + T;
    let help = loop {
        if let Some(h) = alice.heard().into_iter().find(|h| h.html.is_some()) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no formatted help: {:?}",
            alice.heard()
        );
        alice.sync().await;
    };
    let html = help.html.unwrap();
    assert!(html.contains("<code>"), "{html}");
    assert!(
        !help.body.contains('`') && help.body.contains("echo"),
        "{}",
        help.body
    );

    let dm = alice
        .client
        .create_dm(<&UserId>::try_from(BOT).unwrap())
        .await
        .unwrap();
    alice.wait_membership(&dm, BOT, "join").await;
    alice.say(&dm, "echo direct").await;
    let h = alice.expect("direct").await;
    assert_eq!(h.room, dm.room_id());

    alice.say(&room, "!echo last").await;
    alice.expect("last").await;
    let heard = alice.heard();
    assert!(
        !heard.iter().any(|h| h.body == "no pill"),
        "a name without a mention ran: {heard:?}"
    );
}

/// Invites to a configured room and from `invites_from` are taken; any other is declined
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_taken_to_configured_rooms_and_from_approved_people_only() {
    let synapse = Synapse::start();
    for (u, p) in [
        ("opsbot", "botpass"),
        ("alice", "alicepass"),
        ("mallory", "mallorypass"),
    ] {
        synapse.register(u, p);
    }
    let alice = Person::login(&synapse, "alice", "alicepass").await;
    let mallory = Person::login(&synapse, "mallory", "mallorypass").await;
    // Configured, but invite-only: the bot cannot join it at start.
    let private = mallory.create_private_room("private").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config_with(
        &synapse,
        store.path(),
        &["#private:localhost"],
        "invites_from = [\"@alice:localhost\"]",
    ));
    bot.wait_status(T, "connected", is_connected).await;

    private
        .invite_user_by_id(<&UserId>::try_from(BOT).unwrap())
        .await
        .unwrap();
    mallory.wait_membership(&private, BOT, "join").await;

    let other = mallory.create_private_room("other").await;
    other
        .invite_user_by_id(<&UserId>::try_from(BOT).unwrap())
        .await
        .unwrap();
    mallory.wait_membership(&other, BOT, "leave").await;
    let s = bot
        .wait_status(T, "the invite declined", |s| {
            detail(s).contains("invites declined 1")
        })
        .await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.action == "invite" && e.detail.contains("declined")),
        "{:?}",
        s.healing_log
    );

    let alices = alice.create_private_room("alices").await;
    alices
        .invite_user_by_id(<&UserId>::try_from(BOT).unwrap())
        .await
        .unwrap();
    alice.wait_membership(&alices, BOT, "join").await;
    alice.say(&alices, "!echo in the room of alice").await;
    alice.expect("in the room of alice").await;
    let s = bot.status();
    assert!(detail(&s).contains("invites declined 1"), "{}", detail(&s));
}

/// Synapse killed: the bot loses its sync, tries again with backoff, and answers once the
/// homeserver is back (same device, nothing lost from the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_homeserver_killed_and_restarted_is_a_reconnect() {
    let mut synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_room("ops").await;
    // The room by its id, which Synapse's rooms (version 12) have with no server name.
    let id = room.room_id().as_str().to_owned();
    assert!(!id.contains(':'), "{id}");
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), &id));
    let s = connected(&bot).await;
    let device = kept_session(store.path()).1;
    assert!(detail(&s).contains(&device), "{}", detail(&s));

    synapse.kill();
    bot.wait_status(T, "the sync lost", |s| !is_connected(s))
        .await;
    synapse.restart();
    let s = bot.wait_status(T, "reconnected", is_connected).await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.subsystem == "transport" && e.action == "reconnect"),
        "{:?}",
        s.healing_log
    );
    assert_eq!(kept_session(store.path()).1, device, "the same device");
    alice.say(&room, "!echo back").await;
    alice.expect("back").await;
}

/// A homeserver that answers every sync at once with nothing new, instead of waiting for news
/// as asked (a proxy turns the bot's `timeout=2000` into `timeout=0000`): the bot does not poll
/// it back to back, and still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_that_never_waits_is_not_polled_back_to_back() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_room("ops").await;
    let proxy =
        crate::support::cut::RewriteProxy::start(synapse.port, b"timeout=2000", b"timeout=0000")
            .await;
    let store = tempfile::tempdir().unwrap();
    let mut cfg = config(&synapse, store.path(), "#ops:localhost");
    cfg.homeserver = format!("http://127.0.0.1:{}", proxy.port);
    let bot = bot(cfg);
    connected(&bot).await;
    let syncs = || proxy.seen().matches("\"next_batch\"").count();
    let before = syncs();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = syncs() - before;
    // About one a second; back to back, it was hundreds.
    assert!((1..=12).contains(&idle), "{idle} syncs in 4 s");
    alice.say(&room, "!echo still here").await;
    alice.expect("still here").await;
}

/// A homeserver that rate-limits the bot (`M_LIMIT_EXCEEDED` with a wait): the lines wait
/// and all arrive, once each and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_the_line_and_lose_nothing() {
    let synapse = Synapse::start_with("rc_message:\n  per_second: 0.5\n  burst_count: 3\n");
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_room("ops").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#ops:localhost"));
    connected(&bot).await;
    alice.say(&room, "!lines 7").await;
    alice.expect("line 7 of 7").await;
    let bodies: Vec<String> = alice.heard().into_iter().map(|h| h.body).collect();
    let want: Vec<String> = (1..=7).map(|i| format!("line {i} of 7")).collect();
    assert_eq!(bodies, want);
    let s = bot.status();
    let limited: u64 = detail(&s)
        .split("rate-limited ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(limited >= 1, "never rate-limited: {}", detail(&s));
}

/// The bot's token revoked on the server: a refusal (said in the healing log, retried only
/// at the refusal floor), not a tight reconnect loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_a_refusal() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    alice.create_room("ops").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#ops:localhost"));
    connected(&bot).await;
    let (token, _) = kept_session(store.path());
    let r = matrix_sdk::reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/logout", synapse.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let s = bot
        .wait_status(T, "the refusal", |s| {
            s.healing_log
                .iter()
                .any(|e| e.detail.contains("refused") && e.detail.contains("M_UNKNOWN_TOKEN"))
        })
        .await;
    assert!(!is_connected(&s));
    // Refusals are paced (the test's floor is 200 ms, doubling): a tight loop would be
    // hundreds in three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = bot.status();
    let refusals = s
        .healing_log
        .iter()
        .filter(|e| e.detail.contains("M_UNKNOWN_TOKEN"))
        .count();
    assert!(
        (1..=15).contains(&refusals),
        "{refusals}: {:?}",
        s.healing_log
    );
    assert!(!is_connected(&s));
}

/// Odd and malformed events from a client of the test's own: a body over the bound, broken
/// relations and formatted bodies, an edit, another bot's notice, an emote, an image, control
/// characters. None crashes the bot; the edit, the notice, the emote, the image and the huge
/// body run nothing, and a good command is answered with its control characters gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_run_nothing_and_break_nothing() {
    use matrix_sdk::ruma::TransactionId;
    use matrix_sdk::ruma::api::client::message::send_message_event::v3::Request as SendRaw;
    use matrix_sdk::ruma::events::MessageLikeEventType;
    use matrix_sdk::ruma::serde::Raw;

    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_room("ops").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#ops:localhost"));
    connected(&bot).await;
    let huge = format!("!echo {}", "x".repeat(20 * 1024));
    let earlier = alice.say(&room, "just chatting").await;
    // Events Synapse lets through (it refuses a body or msgtype that is not a string, a
    // missing one, or odd mentions, itself): none may run a command.
    let bad = [
        serde_json::json!({"msgtype": "m.text", "body": huge}),
        serde_json::json!({"msgtype": "m.text", "body": "!echo broken thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": 7}}),
        serde_json::json!({"msgtype": "m.text", "body": "!echo broken reply",
            "m.relates_to": {"m.in_reply_to": {"event_id": ["x"]}}}),
        serde_json::json!({"msgtype": "m.text", "body": "!echo edited",
            "m.relates_to": {"rel_type": "m.replace", "event_id": earlier},
            "m.new_content": {"msgtype": "m.text", "body": "!echo edited"}}),
        serde_json::json!({"msgtype": "m.notice", "body": "!echo from another bot"}),
        serde_json::json!({"msgtype": "m.emote", "body": "!echo emote"}),
        serde_json::json!({"msgtype": "m.image", "body": "!echo image", "url": "mxc://x/y"}),
        serde_json::json!({"msgtype": "m.text", "body": "!echo nested", "format": "org.matrix.custom.html",
            "formatted_body": {"deep": [[[[{"a": [[[]]]}]]]]}}),
    ];
    for content in bad {
        alice
            .client
            .send(SendRaw::new_raw(
                room.room_id().to_owned(),
                TransactionId::new(),
                MessageLikeEventType::RoomMessage,
                Raw::new(&content).unwrap().cast_unchecked(),
            ))
            .with_request_config(matrix_sdk::config::RequestConfig::new().disable_retry())
            .await
            .unwrap_or_else(|e| panic!("{content}: {e}"));
    }
    alice
        .say(&room, "!echo ok\u{7}\r\nPRIVMSG #x :hi\u{0}")
        .await;
    let deadline = Instant::now() + T;
    let h = loop {
        if let Some(h) = alice.heard().into_iter().find(|h| h.body.starts_with("ok")) {
            break h;
        }
        assert!(Instant::now() < deadline, "no answer: {:?}", alice.heard());
        alice.sync().await;
    };
    assert!(
        !h.body.chars().any(|c| c.is_control() && c != '\n'),
        "{:?}",
        h.body
    );
    let heard = alice.heard();
    for never in ["edited", "from another bot", "emote", "image"] {
        assert!(
            !heard.iter().any(|h| h.body == never),
            "{never:?} ran: {heard:?}"
        );
    }
    assert!(
        !heard.iter().any(|h| h.body.starts_with("xxx")),
        "the huge body ran"
    );
    // A good command with a broken relation or formatted body runs as a plain message.
    assert!(heard.iter().all(|h| h.thread.is_none()), "{heard:?}");
    assert!(is_connected(&bot.status()));
}

/// Encrypted rooms, as people use them: a second device of a person reads the bot's answers
/// (the bot shares its key with it), and a person's rotated room key is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_reads_the_bot_and_a_rotated_key_is_read() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_encrypted_room("secure").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#secure:localhost"));
    connected(&bot).await;
    alice.wait_membership(&room, BOT, "join").await;
    alice.say(&room, "!echo one").await;
    alice.expect("one").await;

    // Alice on a second device: the bot's next answer is readable there too.
    let phone = Person::login(&synapse, "alice", "alicepass").await;
    alice.say(&room, "!echo two").await;
    alice.expect("two").await;
    phone.expect("two").await;

    // Alice's client starts a new room key: the bot reads it.
    room.discard_room_key().await.unwrap();
    alice.say(&room, "!echo three").await;
    alice.expect("three").await;
    let s = bot.status();
    assert!(detail(&s).contains("undecryptable 0"), "{}", detail(&s));
    assert!(detail(&s).contains("keys to all devices"), "{}", detail(&s));
}

/// `share_keys = "signed"`: a device its owner has not cross-signed gets no key, so the bot's
/// answer stays locked for it (the bot still reads that person).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_only_key_sharing_leaves_unsigned_devices_out() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_encrypted_room("secure").await;
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config_with(
        &synapse,
        store.path(),
        &["#secure:localhost"],
        "share_keys = \"signed\"",
    ));
    connected(&bot).await;
    alice.wait_membership(&room, BOT, "join").await;
    alice.say(&room, "!echo hidden").await;
    let deadline = Instant::now() + T;
    while *alice.locked.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the bot never answered");
        alice.sync().await;
    }
    assert!(alice.heard().is_empty(), "{:?}", alice.heard());
    // The detail is brought up to date after each sync.
    let s = bot
        .wait_status(T, "the command counted", |s| {
            detail(s).contains("received 1")
        })
        .await;
    assert!(
        detail(&s).contains("keys to signed devices"),
        "{}",
        detail(&s)
    );
}

/// With a recovery passphrase the first start sets up cross-signing, secret storage and key
/// backup; a bot on a new device (a new pod: an empty store) recovers them with no human
/// step, is cross-signed, answers in its encrypted room and reads the room's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_recovers_the_account_keys_and_the_history() {
    let synapse = Synapse::start();
    let alice = Person::alice_beside_the_bot(&synapse).await;
    let room = alice.create_encrypted_room("secure").await;
    let extra = "recovery_passphrase = \"correct horse battery staple\"";
    let secured = "device cross-signed, recovery on, key backup on";

    let first_store = tempfile::tempdir().unwrap();
    let first = bot(config_with(
        &synapse,
        first_store.path(),
        &["#secure:localhost"],
        extra,
    ));
    connected(&first).await;
    let s = first
        .wait_status(T, "secured", |s| detail(s).contains(secured))
        .await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.detail.contains("secret storage and key backup set up")),
        "{:?}",
        s.healing_log
    );
    alice.wait_membership(&room, BOT, "join").await;
    let old = alice.say(&room, "!echo before").await;
    alice.expect("before").await;
    // The room key reaches the bot's backup before the first device goes away.
    let (token, first_device) = kept_session(first_store.path());
    let http = matrix_sdk::reqwest::Client::new();
    let deadline = Instant::now() + T;
    loop {
        let body = http
            .get(format!(
                "{}/_matrix/client/v3/room_keys/version",
                synapse.url()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["count"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no key in the backup: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(first);

    let second_store = tempfile::tempdir().unwrap();
    let second = bot(config_with(
        &synapse,
        second_store.path(),
        &["#secure:localhost"],
        extra,
    ));
    connected(&second).await;
    let s = second
        .wait_status(T, "recovered", |s| detail(s).contains(secured))
        .await;
    let second_device = kept_session(second_store.path()).1;
    assert_ne!(second_device, first_device, "a new device");
    assert!(
        s.healing_log.iter().any(|e| e.action == "recover"
            && e.detail.contains("took the account's keys")
            && e.detail.contains("of 1 encrypted room")),
        "{:?}",
        s.healing_log
    );
    // Alice's client learns of the new device (as a client that keeps syncing does), and
    // sees it signed by the bot's own identity.
    let deadline = Instant::now() + T;
    let device = loop {
        let d = alice
            .client
            .encryption()
            .get_device(
                <&UserId>::try_from(BOT).unwrap(),
                second_device.as_str().into(),
            )
            .await
            .unwrap();
        if let Some(d) = d {
            break d;
        }
        assert!(Instant::now() < deadline, "alice never saw the new device");
        alice.sync().await;
    };
    assert!(device.is_cross_signed_by_owner());
    alice.say(&room, "!echo after").await;
    alice.expect("after").await;
    drop(second);
    let again = open_bot_store(&synapse, second_store.path()).await;
    assert!(
        reads(&again, &room.room_id().to_owned(), &old, "!echo before").await,
        "the new device cannot read the history from the key backup"
    );
}
