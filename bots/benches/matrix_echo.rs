//! The Matrix transport through a real Synapse: `!echo` round trips of the `opsbot` binary
//! against the floor, a minimal matrix-sdk client on the same homeserver that answers every
//! `!echo` with a notice, in plain rooms of their own; the same in an encrypted room; the
//! bot's peak memory with its crypto store open; and the time from starting the process to
//! its first answer in an encrypted room, on a new device and on a restart.
//!
//! Run: `cargo bench -p opsbot-bots --bench matrix_echo` (`cargo test --benches` runs a short
//! version).

#![recursion_limit = "256"]

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::{Client, Room};
use support::Process;
use support::synapse::Synapse;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);
const BOT: &str = "@opsbot:localhost";

/// A client logged in as `user`, caught up once (so handlers added next see only new events).
async fn login(synapse: &Synapse, user: &str, password: &str) -> Client {
    let c = Client::builder()
        .homeserver_url(synapse.url())
        .build()
        .await
        .unwrap();
    c.matrix_auth()
        .login_username(user, password)
        .send()
        .await
        .unwrap();
    c.sync_once(SyncSettings::default()).await.unwrap();
    c
}

/// Keeps `c` syncing in the background, as the bot does: one long poll after another.
/// `Client::sync` is not used: after a sync that came back within a second of the one before, it
/// sleeps a second, which in a conversation puts up to a second on every answer seen.
fn keep_syncing(c: &Client) {
    let syncing = c.clone();
    tokio::spawn(async move {
        let settings = SyncSettings::default().timeout(Duration::from_secs(30));
        while syncing.sync_once(settings.clone()).await.is_ok() {}
    });
}

/// A logged-in client that syncs in the background and hands every notice (room, body) it
/// sees to the returned channel.
async fn client(
    synapse: &Synapse,
    user: &str,
    password: &str,
) -> (Client, mpsc::UnboundedReceiver<(String, String)>) {
    let c = login(synapse, user, password).await;
    let (tx, rx) = mpsc::unbounded_channel();
    c.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
        let tx = tx.clone();
        async move {
            if let MessageType::Notice(n) = &ev.content.msgtype {
                let _ = tx.send((room.room_id().to_string(), n.body.clone()));
            }
        }
    });
    keep_syncing(&c);
    (c, rx)
}

/// The floor: a client that answers `!echo X` with the notice `X`, nothing else.
async fn floor(synapse: &Synapse) -> Client {
    let c = login(synapse, "echo", "echopass").await;
    c.add_event_handler(|ev: OriginalSyncRoomMessageEvent, room: Room| async move {
        if let MessageType::Text(t) = &ev.content.msgtype
            && let Some(text) = t.body.strip_prefix("!echo ")
        {
            let _ = room.send(RoomMessageEventContent::notice_plain(text)).await;
        }
    });
    keep_syncing(&c);
    c
}

async fn room(alice: &Client, alias: &str, encrypted: bool) -> Room {
    let mut req = CreateRoom::new();
    req.room_alias_name = Some(alias.to_owned());
    req.preset = Some(RoomPreset::PublicChat);
    if encrypted {
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
    }
    alice.create_room(req).await.unwrap()
}

fn opsbot(synapse: &Synapse, store: &std::path::Path, rooms: &[&str]) -> Process {
    let rooms: Vec<String> = rooms.iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        "[log]\nlevel = \"error\"\n[[bot]]\nname = \"bench\"\n[bot.budget]\ncommands_per_minute = 0\n\
         [bot.outbox]\nrate = 0\ndest_rate = 0\nbyte_rate = 0\nloop_repeats = 0\n[bot.transport]\nkind = \"matrix\"\n\
         homeserver = \"{}\"\nuser = \"@opsbot:localhost\"\npassword = \"botpass\"\n\
         store = \"{}\"\nstore_passphrase = \"bench passphrase\"\n\
         recovery_passphrase = \"bench recovery passphrase\"\nrooms = [{}]\n",
        synapse.url(),
        store.display(),
        rooms.join(", ")
    );
    Process::opsbot(env!("CARGO_BIN_EXE_opsbot"), &config)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until `who` is in `room` (as the person's client, syncing, sees it: only then does
/// it encrypt for that account's devices), then sends `!echo ready` every 200 ms until the
/// answer comes; answers the time since `since`. Late answers are read away.
async fn ready(
    room: &Room,
    who: &str,
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    since: Instant,
) -> Duration {
    let deadline = Instant::now() + PATIENCE;
    let id = room.room_id().to_string();
    let user = <&matrix_sdk::ruma::UserId>::try_from(who).unwrap();
    loop {
        let member = room.get_member_no_sync(user).await.unwrap();
        if member.is_some_and(|m| m.membership().as_str() == "join") {
            break;
        }
        assert!(Instant::now() < deadline, "{who} never joined {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        room.send(RoomMessageEventContent::text_plain("!echo ready"))
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_millis(200);
        while let Ok(Some((r, body))) = tokio::time::timeout_at(until.into(), rx.recv()).await {
            if r == id && body == "ready" {
                let took = since.elapsed();
                while tokio::time::timeout(Duration::from_millis(500), rx.recv())
                    .await
                    .is_ok()
                {}
                return took;
            }
        }
        assert!(Instant::now() < deadline, "{id} never answered");
    }
}

async fn round_trip(
    room: &Room,
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    i: usize,
) -> Duration {
    let text = format!("seq{i}");
    let id = room.room_id().to_string();
    let t = Instant::now();
    room.send(RoomMessageEventContent::text_plain(format!("!echo {text}")))
        .await
        .unwrap();
    loop {
        let (r, body) = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("an answer")
            .unwrap();
        if r == id && body == text {
            return t.elapsed();
        }
    }
}

/// `n` sequential round trips into each of `rooms`, in turns of ten each. Answers (p50, p99)
/// per room.
async fn interleaved(
    rooms: &[&Room],
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    n: usize,
) -> Vec<(Duration, Duration)> {
    let mut lat: Vec<Vec<Duration>> = rooms.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut i = 0;
    while lat[0].len() < n {
        for (room, l) in rooms.iter().zip(lat.iter_mut()) {
            for _ in 0..10.min(n - l.len()) {
                l.push(round_trip(room, rx, i).await);
                i += 1;
            }
        }
    }
    lat.into_iter()
        .map(|mut l| {
            l.sort();
            (pct(&l, 0.5), pct(&l, 0.99))
        })
        .collect()
}

fn main() {
    opsbot::tls::install_default_provider();
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 10 } else { 60 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let synapse = Synapse::start();
        for (user, pw) in [("opsbot", "botpass"), ("alice", "alicepass"), ("echo", "echopass")] {
            synapse.register(user, pw);
        }
        let (alice, mut rx) = client(&synapse, "alice", "alicepass").await;
        let floor_room = room(&alice, "floor", false).await;
        let bot_room = room(&alice, "bot", false).await;
        let secure = room(&alice, "secure", true).await;
        let echo = floor(&synapse).await;
        echo.join_room_by_id(floor_room.room_id()).await.unwrap();

        // Start to the first answer in an encrypted room: a new device (login, device keys,
        // cross-signing, secret storage and key backup set up), then a restart.
        let store = tempfile::tempdir().unwrap();
        let rooms = ["#floor:localhost", "#bot:localhost", "#secure:localhost"];
        let started = Instant::now();
        let bot = opsbot(&synapse, store.path(), &rooms[1..]);
        let first = ready(&secure, BOT, &mut rx, started).await;
        drop(bot);
        let started = Instant::now();
        let bot = opsbot(&synapse, store.path(), &rooms[1..]);
        let again = ready(&secure, BOT, &mut rx, started).await;
        ready(&bot_room, BOT, &mut rx, Instant::now()).await;
        ready(&floor_room, "@echo:localhost", &mut rx, Instant::now()).await;
        println!("matrix_echo: start to the first answer in an encrypted room: new device {first:.2?}, restart {again:.2?}");

        let got = interleaved(&[&floor_room, &bot_room, &secure], &mut rx, n).await;
        let ((f50, f99), (b50, b99), (e50, e99)) = (got[0], got[1], got[2]);
        let (rss, cpu) = bot.usage();
        println!("{n} sequential round trips to each, in alternating blocks of ten, Synapse, limits raised:");
        println!("  floor (client-to-client echo):  p50 {f50:.2?} p99 {f99:.2?}");
        println!("  opsbot, plain room:             p50 {b50:.2?} p99 {b99:.2?}");
        println!("  opsbot, encrypted room:         p50 {e50:.2?} p99 {e99:.2?}");
        println!(
            "matrix_echo: opsbot/floor latency ratio p50 {:.2}, p99 {:.2}",
            b50.as_secs_f64() / f50.as_secs_f64(),
            b99.as_secs_f64() / f99.as_secs_f64()
        );
        println!(
            "matrix_echo: opsbot peak RSS {rss:.1} MiB with its crypto store open, CPU {cpu:.2} s"
        );
        drop(bot);
    });
}
