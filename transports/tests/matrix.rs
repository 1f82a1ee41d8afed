//! The Matrix transport against a real Synapse started by each test on a free loopback port,
//! with a matrix-sdk client as the person in the room.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot_transports::matrix::{Matrix, MatrixConfig};
use support::RunningBot;
use support::synapse::Synapse;

const T: Duration = Duration::from_secs(30);
const BOT: &str = "@opsbot:localhost";

/// A person: a matrix-sdk client (stores in memory) that keeps what the bot says.
struct Person {
    client: Client,
    heard: Arc<Mutex<Vec<String>>>,
}

impl Person {
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
        client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
            let h = h.clone();
            async move {
                if ev.sender.as_str() == BOT
                    && let MessageType::Notice(n) = &ev.content.msgtype
                {
                    h.lock().unwrap().push(n.body.clone());
                }
            }
        });
        client.sync_once(SyncSettings::default()).await.unwrap();
        Self { client, heard }
    }

    /// Creates a public room with the alias `#{alias}:localhost`.
    async fn create_room(&self, alias: &str) -> matrix_sdk::Room {
        let mut req = CreateRoom::new();
        req.room_alias_name = Some(alias.to_owned());
        req.preset = Some(RoomPreset::PublicChat);
        self.client.create_room(req).await.unwrap()
    }

    async fn say(&self, room: &matrix_sdk::Room, text: &str) {
        room.send(RoomMessageEventContent::text_plain(text))
            .await
            .unwrap();
    }

    /// Syncs until the bot has said `want`; answers all it said.
    async fn expect(&self, want: &str) -> Vec<String> {
        let deadline = Instant::now() + T;
        loop {
            let heard = self.heard.lock().unwrap().clone();
            if heard.iter().any(|h| h == want) {
                return heard;
            }
            assert!(
                Instant::now() < deadline,
                "the bot never said {want:?}: {heard:?}"
            );
            let settings = SyncSettings::default().timeout(Duration::from_millis(500));
            self.client.sync_once(settings).await.unwrap();
        }
    }
}

fn config(synapse: &Synapse, store: &std::path::Path, room: &str) -> MatrixConfig {
    let text = format!(
        "homeserver = \"{}\"\nuser = \"{BOT}\"\npassword = \"botpass\"\n\
         store = \"{}\"\nstore_passphrase = \"passphrase\"\nrooms = [\"{room}\"]\n\
         sync_timeout_secs = 2\n",
        synapse.url(),
        store.display()
    );
    let cfg: MatrixConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    cfg
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

async fn connected(bot: &RunningBot) -> Snapshot {
    bot.wait_status(T, "connected in its room", |s| {
        s.actor(ActorKind::Transport, "matrix")
            .is_some_and(|a| a.conn == Some(ConnState::Connected))
            && detail(s).contains("· 1 room ")
    })
    .await
}

/// Commands in a room are answered; after a restart the bot is the same device, and a
/// command sent while it was down (older than its start) never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_and_a_restart_replays_nothing_on_the_same_device() {
    let synapse = Synapse::start();
    synapse.register("opsbot", "botpass");
    synapse.register("alice", "alicepass");
    let alice = Person::login(&synapse, "alice", "alicepass").await;
    let room = alice.create_room("ops").await;
    let store = tempfile::tempdir().unwrap();

    let first = bot(config(&synapse, store.path(), "#ops:localhost"));
    let s = connected(&first).await;
    let device = detail(&s);
    assert!(
        device.contains("@opsbot:localhost on http://127.0.0.1:"),
        "{device}"
    );
    alice.say(&room, "!echo hello").await;
    alice.expect("hello").await;
    drop(first);

    // While the bot is down, a command waits on the server.
    alice.say(&room, "!echo while down").await;
    let second = bot(config(&synapse, store.path(), "#ops:localhost"));
    let s = connected(&second).await;
    let device_of = |d: &str| d.split(" · ").nth(1).unwrap_or_default().to_owned();
    assert_eq!(
        device_of(&detail(&s)),
        device_of(&device),
        "the same device"
    );
    alice.say(&room, "!echo after").await;
    let heard = alice.expect("after").await;
    assert!(
        !heard.iter().any(|h| h == "while down"),
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
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    use matrix_sdk::ruma::events::{InitialStateEvent, MessageLikeEventType};
    use matrix_sdk::ruma::serde::Raw;

    let synapse = Synapse::start();
    synapse.register("opsbot", "botpass");
    synapse.register("alice", "alicepass");
    let alice = Person::login(&synapse, "alice", "alicepass").await;
    let mut req = CreateRoom::new();
    req.room_alias_name = Some("secure".to_owned());
    req.preset = Some(RoomPreset::PublicChat);
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.client.create_room(req).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let bot = bot(config(&synapse, store.path(), "#secure:localhost"));
    connected(&bot).await;
    // Alice learns that the bot joined, so her message is encrypted for its device too.
    let deadline = Instant::now() + T;
    while room
        .members(matrix_sdk::RoomMemberships::JOIN)
        .await
        .unwrap()
        .iter()
        .all(|m| m.user_id().as_str() != BOT)
    {
        assert!(Instant::now() < deadline, "alice never saw the bot join");
        let settings = SyncSettings::default().timeout(Duration::from_millis(500));
        alice.client.sync_once(settings).await.unwrap();
    }
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());
    alice.say(&room, "!echo secret").await;
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
    let heard = alice.expect("after").await;
    assert_eq!(heard, ["secret", "after"], "nothing answered the garbage");
    let s = bot
        .wait_status(T, "the garbage counted", |s| {
            detail(s).contains("undecryptable 1")
        })
        .await;
    assert!(detail(&s).contains("undecryptable 1"));
}
