//! The XMPP transport against a real Prosody started by each test on a free loopback port, with
//! plain XMPP clients as the people in the chat.

mod support;

use std::time::{Duration, Instant};

use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot::testkit::next_attempt_in;
use opsbot_transports::xmpp::{Xmpp, XmppConfig};
use support::RunningBot;
use support::xmpp::{MUC, Prosody, XmppUser};
use tokio_xmpp::parsers::message::MessageType;

const T: Duration = Duration::from_secs(15);
const BOT: &str = "opsbot@localhost";

fn room(name: &str) -> String {
    format!("{name}@{MUC}")
}

/// Starts the bot `opsbot` on `server` in `rooms`, with `extra` settings.
fn bot(server: &Prosody, rooms: &[&str], extra: &str) -> RunningBot {
    bot_with(server, rooms, extra, |b| b)
}

fn bot_with(
    server: &Prosody,
    rooms: &[&str],
    extra: &str,
    more: impl FnOnce(opsbot::BotBuilder) -> opsbot::BotBuilder,
) -> RunningBot {
    let rooms: Vec<String> = rooms.iter().map(|r| room(r)).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let text = server.bot_toml("opsbot", "botpass", &rooms, extra);
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        more,
    )
}

fn detail(s: &Snapshot) -> String {
    s.actor(ActorKind::Transport, "xmpp")
        .and_then(|a| a.detail.clone())
        .unwrap_or_default()
}

fn connected(s: &Snapshot) -> bool {
    s.actor(ActorKind::Transport, "xmpp")
        .is_some_and(|a| a.conn == Some(ConnState::Connected))
}

fn reconnects(s: &Snapshot) -> u32 {
    s.actor(ActorKind::Transport, "xmpp")
        .map_or(0, |a| a.reconnects)
}

/// Waits until the bot is connected and in every room it was given, its history over.
async fn ready(bot: &RunningBot, rooms: usize) -> Snapshot {
    bot.wait_status(T, "connected and in its rooms", |s| {
        let d = detail(s);
        connected(s)
            && d.matches(" joined as ").count() == rooms
            && !d.contains("(history)")
            && !d.contains("joining")
    })
    .await
}

fn server() -> Prosody {
    let p = Prosody::start();
    p.register("opsbot", "botpass");
    p.register("alice", "alicepass");
    p.register("bob", "bobpass");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_in_a_direct_chat_status_and_addressing_in_a_room_and_a_private_message_through_it() {
    let prosody = server();
    let bot = bot(&prosody, &["ops"], "");
    let s = ready(&bot, 1).await;
    let d = detail(&s);
    assert!(d.starts_with("opsbot@localhost/bot via 127.0.0.1:"), "{d}");
    assert!(
        d.contains("(STARTTLS)") && d.contains("acks on (resumable)"),
        "{d}"
    );
    assert!(
        d.contains(&format!("{} joined as opsbot", room("ops"))),
        "{d}"
    );

    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!help").await;
    let said = alice.expect_from(BOT, T).await;
    assert_eq!(said.type_, MessageType::Chat);
    assert!(said.body.contains("!status"), "{}", said.body);
    // One message: the help's lines are packed, not sent one stanza each.
    assert!(said.body.lines().count() > 3, "{}", said.body);

    alice.join(&room("ops"), "alice").await;
    alice.groupchat(&room("ops"), "!status").await;
    let said = alice.expect_in_room(&room("ops"), "opsbot", T).await;
    assert!(said.body.contains("xmpp"), "{}", said.body);
    assert!(said.body.contains("acks on"), "{}", said.body);

    alice
        .groupchat(&room("ops"), "opsbot: echo addressed")
        .await;
    assert_eq!(
        alice.expect_in_room(&room("ops"), "opsbot", T).await.body,
        "addressed"
    );
    alice
        .groupchat(&room("ops"), "opsbot, echo with a comma")
        .await;
    assert_eq!(
        alice.expect_in_room(&room("ops"), "opsbot", T).await.body,
        "with a comma"
    );

    // A private message through the room is answered privately, through the room.
    alice
        .chat(&format!("{}/opsbot", room("ops")), "echo psst")
        .await;
    let said = alice
        .expect_from(&format!("{}/opsbot", room("ops")), T)
        .await;
    assert_eq!(said.type_, MessageType::Chat);
    assert_eq!(said.body, "psst");
    // And nothing of it in the room.
    assert!(
        alice
            .next_in_room(&room("ops"), "opsbot", Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_history_of_old_commands_is_never_run() {
    let prosody = server();
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("hist"), "alice").await;
    for i in 1..=20 {
        alice
            .groupchat(&room("hist"), &format!("!echo old {i}"))
            .await;
    }
    // The room has them all (its own echo to alice), before the bot comes.
    for _ in 1..=20 {
        alice.expect_from(&room("hist"), T).await;
    }
    let bot = bot(&prosody, &["hist"], "");
    ready(&bot, 1).await;
    alice.groupchat(&room("hist"), "!echo new").await;
    loop {
        let said = alice.expect_from(&room("hist"), T).await;
        assert!(!said.body.starts_with("old"), "history ran: {}", said.body);
        if said.from.resource().is_some_and(|r| r.as_str() == "opsbot") {
            assert_eq!(said.body, "new");
            break;
        }
    }
    assert!(
        alice
            .next_from(&room("hist"), Duration::from_secs(1))
            .await
            .is_none()
    );
    assert_eq!(
        bot.status()
            .actor(ActorKind::Handler, "echo")
            .map(|a| a.handled),
        Some(1)
    );
}

/// Echoes every message said in a room, prefix or not.
#[derive(Clone)]
struct Parrot;

impl opsbot::prelude::Handler for Parrot {
    const NAME: &'static str = "parrot";
    const COMMANDS: &'static [opsbot::prelude::Command] = &[];
    const PATTERNS: &'static [&'static str] = &[".+"];

    async fn matched(
        &mut self,
        cx: &mut opsbot::prelude::Context,
        m: opsbot::prelude::Match,
    ) -> opsbot::prelude::Result {
        cx.reply(format!("parrot: {}", m.message().text));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_own_messages_reflected_by_the_room_are_not_input() {
    let prosody = server();
    let bot = bot_with(&prosody, &["echo"], "", |b| b.handler(Parrot));
    ready(&bot, 1).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("echo"), "alice").await;
    alice.groupchat(&room("echo"), "hello").await;
    let mut from_bot = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(said) = alice
        .next_from(
            &room("echo"),
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
    {
        if said.from.resource().is_some_and(|r| r.as_str() == "opsbot") {
            from_bot.push(said.body);
        }
    }
    assert_eq!(from_bot, ["parrot: hello"], "the bot answered itself");
    assert_eq!(
        bot.status()
            .actor(ActorKind::Handler, "parrot")
            .map(|a| a.handled),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_room_nick_gets_a_fallback_and_the_bot_answers() {
    let prosody = server();
    let mut bob = XmppUser::connect(prosody.port, "bob", "bobpass").await;
    bob.join(&room("taken"), "opsbot").await;
    let bot = bot(&prosody, &["taken"], "");
    let s = ready(&bot, 1).await;
    assert!(detail(&s).contains("joined as opsbot_"), "{}", detail(&s));
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.action == "nick" && e.detail.contains("opsbot is taken; joining as opsbot_")),
        "{:?}",
        s.healing_log
    );
    bob.groupchat(&room("taken"), "!echo still here").await;
    loop {
        let said = bob.expect_from(&room("taken"), T).await;
        if said
            .from
            .resource()
            .is_some_and(|r| r.as_str() == "opsbot_")
        {
            assert_eq!(said.body, "still here");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_refusal_at_the_floor_not_a_loop() {
    let prosody = server();
    let text = prosody.bot_toml("opsbot", "wrong", &[], "");
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b.configure(|o| o.reconnect.refused_min = Duration::from_secs(30)),
    );
    let s = bot
        .wait_status(T, "a refusal", |s| reconnects(s) >= 1)
        .await;
    let entry = s
        .healing_log
        .iter()
        .find(|e| e.action == "reconnect")
        .expect("a reconnect entry");
    assert!(
        entry.detail.contains("refused: authentication failed"),
        "{}",
        entry.detail
    );
    assert!(
        next_attempt_in(&entry.detail) >= Duration::from_secs(30),
        "{}",
        entry.detail
    );
    // No second attempt in the next three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = bot.status();
    assert_eq!(reconnects(&s), 1, "{:?}", s.healing_log);
}
