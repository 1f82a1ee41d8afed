//! The XMPP transport against a real Prosody started by each test on a free loopback port, with
//! plain XMPP clients as the people in the chat.

use std::time::{Duration, Instant};

use crate::support::RunningBot;
use crate::support::xmpp::{MUC, Prosody, XmppUser};
use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot::testkit::next_attempt_in;
use opsbot_transports::xmpp::{Xmpp, XmppConfig};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
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

/// Formatted replies as XEP-0393 styling, in the bodies a client receives: code spans and
/// bold where the handler formats, a user's `*` and `>` unable to style anything, and a code
/// block of 3,000 lines sent as whole blocks, each message opening and closing its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatted_replies_arrive_as_message_styling() {
    let prosody = server();
    let bot = bot_with(&prosody, &[], "", |b| b.handler(crate::support::Formatted));
    ready(&bot, 0).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;

    alice.chat(BOT, "!help log").await;
    assert_eq!(
        alice.expect_from(BOT, T).await.body,
        "usage: `!log <lines> [width]`\nA code block."
    );

    alice.chat(BOT, "!rich > *y* _z_").await;
    assert_eq!(
        alice.expect_from(BOT, T).await.body,
        "*Report*\n\u{203A} \u{2217}y* \u{FF3F}z_ *\u{203A} \u{2217}y\u{2217} \u{FF3F}z_* `> *y* _z_` runbook <https://wiki.example.com/runbook>"
    );

    alice.chat(BOT, "!log 3000").await;
    let mut lines = Vec::new();
    let mut messages = 0;
    while lines.len() < 3000 {
        let body = alice.expect_from(BOT, T).await.body;
        let inner = body
            .strip_prefix("```\n")
            .and_then(|b| b.strip_suffix("\n```"))
            .unwrap_or_else(|| panic!("a message that is not one whole block: {body:.80}"));
        assert!(!inner.contains("```"));
        lines.extend(inner.lines().map(str::to_owned));
        messages += 1;
    }
    let want: Vec<String> = (0..3000)
        .map(|i| format!("{i:05} {}", "x".repeat(14)))
        .collect();
    assert_eq!(lines, want);
    assert!(messages > 3, "{messages} messages");
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
    // And nothing of it in the room: the next thing the bot says there is the answer to a
    // probe asked there after it.
    alice.groupchat(&room("ops"), "!echo probe").await;
    assert_eq!(
        alice.expect_in_room(&room("ops"), "opsbot", T).await.body,
        "probe"
    );
}

/// Any user who can message the bot once could abort its whole process: a stanza nested 8,000
/// levels deep (56 KB, under Prosody's stanza limit) overflowed the stack of the bot's thread
/// while it was parsed or freed. The stanza must arrive emptied, run nothing, and leave the
/// connection (and the process) as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nested_8000_levels_deep_is_emptied_and_the_bot_carries_on() {
    let prosody = server();
    prosody.register("mallory", "mallorypass");
    let bot = bot(&prosody, &["ops"], "");
    ready(&bot, 1).await;
    let mut mallory = XmppUser::connect(prosody.port, "mallory", "mallorypass")
        .await
        .into_raw();
    let deep = format!(
        "<message to='{BOT}' type='chat' id='deep'><body>!echo deep</body>{}{}</message>",
        "<a>".repeat(8000),
        "</a>".repeat(8000)
    );
    assert!(deep.len() > 50_000);
    mallory.send(&deep).await;
    // A probe after it on the same connection: once it is answered, the deep one was read.
    mallory
        .send(&format!(
            "<message to='{BOT}' type='chat' id='probe'><body>!echo probe</body></message>"
        ))
        .await;
    let before = mallory.until(">probe</body>", T).await;
    assert!(
        !before.contains(">deep<"),
        "the emptied stanza ran: {before}"
    );
    let s = bot
        .wait_status(T, "the emptied stanza in !status", |s| {
            detail(s).contains("1 stanzas nested too deeply emptied")
        })
        .await;
    assert_eq!(reconnects(&s), 0, "the connection was kept");
    // And the bot still answers everyone else.
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!echo alive").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "alive");
}

/// In a room that hides real JIDs (Prosody's default), a sender is known only by the nick they
/// chose: `mallory` joining as `alice@localhost` (or as `x!y@ops.example.com`, which matched the
/// IRC mask the XMPP example used to ship) ran `!heal`. Now no one in such a room is an admin,
/// the real alice included; in a room that shows real JIDs, and in a direct chat, alice is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_nick_is_never_an_identity_and_admins_are_real_jids() {
    let prosody = server();
    prosody.register("mallory", "mallorypass");
    let (hidden, open) = (room("hidden"), room("open"));
    // alice owns both rooms; `open` shows everyone's real JID.
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&hidden, "alice").await;
    alice.join(&open, "alice").await;
    configure_room(&mut alice, &open, &[("muc#roomconfig_whois", "anyone")]).await;
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(
            toml::from_str(&prosody.bot_toml("opsbot", "botpass", &[&hidden, &open], "")).unwrap(),
        )),
        // Both an address and the IRC-style mask the old example had.
        "alice@localhost",
        |b| {
            b.handler(opsbot_handlers::heal::Heal)
                .configure(|o| o.admins.push("*!*@ops.example.com".into()))
        },
    );
    ready(&bot, 2).await;
    let mut mallory = XmppUser::connect(prosody.port, "mallory", "mallorypass").await;
    for nick in ["alice@localhost", "x!y@ops.example.com"] {
        mallory.join(&hidden, nick).await;
        mallory.groupchat(&hidden, "!heal echo").await;
        // (The room's history, replayed on the second join, is skipped.)
        let said = loop {
            let said = mallory.expect_in_room(&hidden, "opsbot", T).await;
            if !said.delayed {
                break said;
            }
        };
        assert_eq!(said.body, format!("{nick}: !heal is for admins only"));
        mallory
            .send(
                tokio_xmpp::parsers::presence::Presence::new(
                    tokio_xmpp::parsers::presence::Type::Unavailable,
                )
                .with_to(Jid::new(&format!("{hidden}/{nick}")).unwrap())
                .into(),
            )
            .await;
    }
    // The real alice is no admin where the room hides who she is (she saw the answers to
    // mallory go by first)...
    alice.groupchat(&hidden, "!heal echo").await;
    let mut seen = Vec::new();
    loop {
        let body = alice.expect_in_room(&hidden, "opsbot", T).await.body;
        if body.starts_with("alice: ") {
            assert_eq!(body, "alice: !heal is for admins only");
            break;
        }
        seen.push(body);
    }
    assert_eq!(
        seen,
        [
            "alice@localhost: !heal is for admins only",
            "x!y@ops.example.com: !heal is for admins only"
        ]
    );
    // ...and is one where it shows her JID, and in a direct chat.
    alice.groupchat(&open, "!heal echo").await;
    assert_eq!(
        alice.expect_in_room(&open, "opsbot", T).await.body,
        "healing handler:echo: see !status"
    );
    alice.chat(BOT, "!heal echo").await;
    assert_eq!(
        alice.expect_from(BOT, T).await.body,
        "healing handler:echo: see !status"
    );
    let heals: Vec<String> = bot
        .status()
        .healing_log
        .iter()
        .filter(|e| e.action == "heal")
        .map(|e| e.detail.clone())
        .collect();
    assert_eq!(heals.len(), 2, "{heals:?}");
    assert!(
        heals.iter().all(|h| h.contains("alice@localhost")),
        "{heals:?}"
    );
}

/// A room's history never runs, even when the server sends it: the bot asks for none, so a
/// proxy (the bot on plain XMPP over loopback) takes the request out of its join, and Prosody
/// replays the room's 20 old commands to it. None runs; the new one does.
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
    let proxy =
        crate::support::cut::RewriteProxy::start(prosody.port, b"maxstanzas=", b"xmaxstanza=")
            .await;
    let mut text = prosody.bot_toml("opsbot", "botpass", &[&room("hist")], "tls = false\n");
    text = text.replace(
        &format!("port = {}", prosody.port),
        &format!("port = {}", proxy.port),
    );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b,
    );
    ready(&bot, 1).await;
    // The history did arrive.
    let seen = proxy.seen();
    assert!(
        (1..=20).all(|i| seen.contains(&format!(">!echo old {i}<"))),
        "no history reached the bot: {}",
        &seen[..seen.len().min(2000)]
    );
    alice.groupchat(&room("hist"), "!echo new").await;
    loop {
        let said = alice.expect_from(&room("hist"), T).await;
        assert!(!said.body.starts_with("old"), "history ran: {}", said.body);
        if said.from.resource().is_some_and(|r| r.as_str() == "opsbot") {
            assert_eq!(said.body, "new");
            break;
        }
    }
    assert_eq!(
        bot.status()
            .actor(ActorKind::Handler, "echo")
            .map(|a| a.handled),
        Some(1)
    );
}

/// A message stamped as delayed (XEP-0203) never runs, even in a room that is live and in a
/// direct chat: the stamp means it was said before (history, a server's store). And the
/// messages Prosody stored for the bot while it was offline, delivered stamped at its login,
/// none of them runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stamped_as_delayed_never_run() {
    let prosody = server();
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    // While the bot is away: Prosody keeps these for it.
    for i in 1..=3 {
        alice.chat(BOT, &format!("!echo offline {i}")).await;
    }
    alice.join(&room("live"), "alice").await;
    let bot = bot(&prosody, &["live"], "");
    ready(&bot, 1).await;
    let stamp = |body: &str, to: &str, type_: MessageType| {
        let mut m = tokio_xmpp::parsers::message::Message::new_with_type(
            type_,
            Some(Jid::new(to).unwrap()),
        )
        .with_body(
            tokio_xmpp::parsers::message::Lang(String::new()),
            body.to_owned(),
        );
        m.payloads.push(
            Element::builder("delay", "urn:xmpp:delay")
                .attr(
                    tokio_xmpp::minidom::rxml::NcName::try_from("stamp").unwrap(),
                    "2026-01-01T00:00:00Z",
                )
                .build(),
        );
        m
    };
    alice
        .send(
            stamp(
                "!echo stamped in the room",
                &room("live"),
                MessageType::Groupchat,
            )
            .into(),
        )
        .await;
    alice
        .send(stamp("!echo stamped direct", BOT, MessageType::Chat).into())
        .await;
    // The probe, after them on the same connection: the first thing the bot says to alice.
    alice.chat(BOT, "!echo probe").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "probe");
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

/// Lines of the form `line i of n` in `bodies`: (first occurrences in order, duplicates).
fn numbered(bodies: &[String]) -> (Vec<usize>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    let mut dups = 0;
    for b in bodies {
        let i: usize = b
            .strip_prefix("line ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a numbered line: {b:?}"));
        if seen.insert(i) {
            order.push(i);
        } else {
            dups += 1;
        }
    }
    (order, dups)
}

/// The count after `what` in the transport's detail (`3 re-sent`).
fn count_in(detail: &str, what: &str) -> usize {
    detail
        .split(';')
        .flat_map(|part| part.split(','))
        .find_map(|p| p.trim().strip_suffix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{what}` count in {detail:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_killed_and_restarted_mid_answer_the_answer_arrives_complete() {
    let mut prosody = server();
    let bot = bot(&prosody, &["ops"], "");
    ready(&bot, 1).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!lines 50").await;
    let mut bodies = Vec::new();
    while bodies.len() < 10 {
        bodies.push(alice.expect_from(BOT, T).await.body);
    }
    prosody.kill();
    let killed = Instant::now();
    // What reached alice before the server died was delivered: read her connection to its end.
    bodies.extend(alice.bodies_until_closed(BOT, T).await);
    prosody.restart();
    // Back in the room and connected again, within a bound the backoff (at most 2 s in these
    // tests) and login explain.
    let s = bot
        .wait_status(Duration::from_secs(30), "back after the restart", |s| {
            reconnects(s) >= 1 && connected(s) && detail(s).contains("joined as opsbot")
        })
        .await;
    assert!(killed.elapsed() < Duration::from_secs(30));
    // Alice comes back too. What reached the server while she was away, it stores and hands
    // her (stamped as delayed) when she is back, possibly after newer lines that found her
    // already online: so order holds within each of the two, and nothing may be missing.
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut live, mut stored) = (Vec::new(), Vec::new());
    loop {
        let all: Vec<String> = bodies.iter().chain(&live).chain(&stored).cloned().collect();
        if numbered(&all).0.len() == 50 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(said) = alice.next_from(BOT, left).await else {
            panic!("lines missing after the restart: {:?}", numbered(&all));
        };
        if said.delayed {
            stored.push(said.body);
        } else {
            live.push(said.body);
        }
    }
    let increasing = |v: &[usize]| v.windows(2).all(|w| w[0] < w[1]);
    let (live_order, _) = numbered(&live);
    let (stored_order, _) = numbered(&stored);
    assert!(
        increasing(&live_order),
        "live lines out of order: {live_order:?}"
    );
    assert!(
        increasing(&stored_order),
        "stored lines out of order: {stored_order:?}"
    );
    bodies.extend(live);
    bodies.extend(stored);
    let (order, dups) = numbered(&bodies);
    let mut all = order.clone();
    all.sort_unstable();
    assert_eq!(all, (1..=50).collect::<Vec<_>>(), "lines lost");
    let resent = count_in(&detail(&bot.status()), "re-sent");
    assert!(
        dups <= resent,
        "{dups} duplicates but only {resent} lines were sent again unacknowledged"
    );
    // Still answering, in the room too.
    alice.join(&room("ops"), "alice").await;
    alice.groupchat(&room("ops"), "!echo after").await;
    assert_eq!(
        alice.expect_in_room(&room("ops"), "opsbot", T).await.body,
        "after"
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_prosody_is_detected_within_the_keepalive_bound_and_healed_after_it_thaws() {
    let prosody = server();
    // ping_interval_secs = 2, ping_timeout_secs = 3: dead after at most 5 s of silence.
    let bot = bot(&prosody, &["ops"], "");
    ready(&bot, 1).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    prosody.freeze();
    let frozen = Instant::now();
    let s = bot
        .wait_status(Duration::from_secs(15), "the dead link noticed", |s| {
            reconnects(s) >= 1
        })
        .await;
    let noticed = frozen.elapsed();
    // 5 s of silence at most, plus a tick and a loaded machine.
    assert!(
        noticed < Duration::from_secs(9),
        "noticed after {noticed:?}"
    );
    let entry = s
        .healing_log
        .iter()
        .find(|e| e.action == "reconnect")
        .unwrap();
    assert!(
        entry.detail.contains("no answer from the server within 3s"),
        "{}",
        entry.detail
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    prosody.thaw();
    bot.wait_status(Duration::from_secs(30), "connected again", |s| {
        connected(s) && detail(s).contains("joined as opsbot")
    })
    .await;
    alice.chat(BOT, "!echo thawed").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "thawed");
}

/// Alice in a room, for the shared cut scenario.
struct InRoom {
    user: XmppUser,
    room: String,
}

impl crate::support::cut::ChatUser for InRoom {
    async fn ask(&mut self, text: &str) {
        self.user.groupchat(&self.room, text).await;
    }

    async fn next_from_bot(&mut self, within: Duration) -> Option<String> {
        let said = self.user.next_in_room(&self.room, "opsbot", within).await?;
        Some(said.body)
    }
}

/// The bot's connection is cut while a reply is certainly unacknowledged: the proxy drops
/// what the bot writes from line 10 on (plain XMPP over loopback, so the proxy can see that a
/// reply was among it), so the reply in flight never reaches the server, then cuts. The stream is resumed, the server's count shows what it lacks, the bot sends that
/// again ("1 re-sent"), and all 30 lines arrive exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_when_the_network_cuts_the_bot_off_and_the_stream_resumes() {
    let prosody = server();
    let proxy = crate::support::cut::CutProxy::start(prosody.port).await;
    let rooms = [room("cut")];
    let text = prosody
        .bot_toml("opsbot", "botpass", &[rooms[0].as_str()], "tls = false\n")
        .replace(
            &format!("port = {}", prosody.port),
            &format!("port = {}", proxy.port),
        );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b,
    );
    ready(&bot, 1).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("cut"), "alice").await;
    alice.groupchat(&room("cut"), "!lines 30").await;
    let mut got = Vec::new();
    while got.len() < 10 {
        got.push(alice.expect_in_room(&room("cut"), "opsbot", T).await.body);
    }
    proxy.hold();
    // Replies the bot wrote after the hold: the server never had them, and the bot waits for
    // their acknowledgement (up to its window of them).
    bot.wait_status(T, "a reply written and unacknowledged", |s| {
        count_in(&detail(s), "awaiting ack") >= 1 && proxy.dropped().contains("line ")
    })
    .await;
    proxy.cut();
    let lost = proxy.dropped().matches("<message").count();
    assert!(lost >= 1);
    while got.len() < 30 {
        let said = alice.expect_in_room(&room("cut"), "opsbot", T).await;
        assert!(!said.delayed, "{said:?}");
        got.push(said.body);
    }
    let want: Vec<String> = (1..=30).map(|i| format!("line {i} of 30")).collect();
    assert_eq!(got, want);
    let s = bot
        .wait_status(T, "resumed", |s| detail(s).contains("1 resumed"))
        .await;
    let d = detail(&s);
    // Exactly what the server never had was sent again.
    assert_eq!(count_in(&d, "re-sent"), lost, "{d}");
    assert_eq!(reconnects(&s), 1);
    // Nothing twice: the next thing the bot says is the answer to the next question.
    alice.groupchat(&room("cut"), "!echo after").await;
    assert_eq!(
        alice.expect_in_room(&room("cut"), "opsbot", T).await.body,
        "after"
    );
}

/// `!big N`: one reply of N characters of 1, 2, 3 and 4 bytes, no spaces.
#[derive(Clone)]
struct Big;

fn big(n: usize) -> String {
    "aé€𝄞".chars().cycle().take(n).collect()
}

impl opsbot::prelude::Handler for Big {
    const NAME: &'static str = "big";
    const COMMANDS: &'static [opsbot::prelude::Command] = &[opsbot::prelude::Command::new(
        "big",
        "<n>",
        "Answer n characters.",
    )];

    async fn command(
        &mut self,
        cx: &mut opsbot::prelude::Context,
        call: opsbot::prelude::Call,
    ) -> opsbot::prelude::Result {
        let n: usize = call.arg(0)?;
        cx.reply(big(n));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20000_character_reply_arrives_whole_in_messages_within_the_limit() {
    let prosody = server();
    let bot = bot_with(&prosody, &[], "max_message_bytes = 1000\n", |b| {
        b.handler(Big)
    });
    ready(&bot, 0).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!big 20000").await;
    let want = big(20_000);
    let mut got = String::new();
    let mut messages = 0;
    while got.len() < want.len() {
        let body = alice.expect_from(BOT, T).await.body;
        assert!(body.len() <= 1000, "a message of {} bytes", body.len());
        got.push_str(&body);
        messages += 1;
    }
    assert_eq!(got, want);
    // Full messages: a cut only where the next character would not fit.
    assert!(messages <= want.len().div_ceil(997), "{messages} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_line_answer_with_the_default_pace_loses_nothing_and_keeps_the_link() {
    let prosody = server();
    let bot = bot(&prosody, &["ops"], "");
    ready(&bot, 1).await;
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("ops"), "alice").await;
    alice.groupchat(&room("ops"), "!lines 200").await;
    let start = Instant::now();
    let mut bodies = Vec::new();
    while bodies.len() < 200 {
        bodies.push(
            alice
                .expect_in_room(&room("ops"), "opsbot", Duration::from_secs(30))
                .await
                .body,
        );
    }
    let took = start.elapsed();
    let expected: Vec<String> = (1..=200).map(|i| format!("line {i} of 200")).collect();
    assert_eq!(bodies, expected);
    let s = bot.status();
    assert_eq!(reconnects(&s), 0, "{:?}", s.healing_log);
    assert_eq!(s.outbox.dropped, 0);
    println!(
        "200 lines in {:.1} s: {:.1} lines/s",
        took.as_secs_f64(),
        200.0 / took.as_secs_f64()
    );
}

/// An owner's request to the room: kick a nick, or destroy the room.
async fn owner_request(owner: &mut XmppUser, room_jid: &str, ns: &str, child: Element) {
    let q = Element::builder("query", ns).append(child).build();
    let iq = Iq::Set {
        from: None,
        to: Some(Jid::new(room_jid).unwrap()),
        id: "own1".into(),
        payload: q,
    };
    owner.send(iq.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_or_with_its_room_destroyed_the_bot_rejoins_after_a_delay() {
    let prosody = server();
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    // Alice creates the room, so she owns it.
    alice.join(&room("kick"), "alice").await;
    let bot = bot(&prosody, &["kick"], "rejoin_delay_secs = 1\n");
    ready(&bot, 1).await;
    let item = Element::builder("item", "http://jabber.org/protocol/muc#admin")
        .attr(
            tokio_xmpp::minidom::rxml::NcName::try_from("nick").unwrap(),
            "opsbot",
        )
        .attr(
            tokio_xmpp::minidom::rxml::NcName::try_from("role").unwrap(),
            "none",
        )
        .build();
    owner_request(
        &mut alice,
        &room("kick"),
        "http://jabber.org/protocol/muc#admin",
        item,
    )
    .await;
    let s = bot
        .wait_status(T, "the kick noticed", |s| {
            detail(s).contains("kicked, rejoin in")
        })
        .await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.action == "removed" && e.detail.contains("kicked")),
        "{:?}",
        s.healing_log
    );
    // Back after the delay, and answering.
    ready(&bot, 1).await;
    alice.groupchat(&room("kick"), "!echo back").await;
    assert_eq!(
        alice.expect_in_room(&room("kick"), "opsbot", T).await.body,
        "back"
    );
    // The second removal within ten minutes waits twice as long.
    let destroy = Element::builder("destroy", "http://jabber.org/protocol/muc#owner").build();
    owner_request(
        &mut alice,
        &room("kick"),
        "http://jabber.org/protocol/muc#owner",
        destroy,
    )
    .await;
    let s = bot
        .wait_status(T, "the destruction noticed", |s| {
            detail(s).contains("destroyed, rejoin in")
        })
        .await;
    assert!(
        s.healing_log.iter().any(|e| e.action == "removed"
            && e.detail.contains("destroyed")
            && e.detail.contains("rejoining in 2s")),
        "{:?}",
        s.healing_log
    );
    ready(&bot, 1).await;
    assert!(
        bot.status()
            .healing_log
            .iter()
            .filter(|e| e.action == "rejoin")
            .count()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_from_the_first_byte() {
    let tls_port = crate::support::free_port();
    let prosody = Prosody::start_with(&format!("c2s_direct_tls_ports = {{ {tls_port} }}"));
    prosody.register("opsbot", "botpass");
    prosody.register("alice", "alicepass");
    let text = prosody
        .bot_toml("opsbot", "botpass", &[], "direct_tls = true\n")
        .replace(
            &format!("port = {}", prosody.port),
            &format!("port = {tls_port}"),
        );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b,
    );
    let s = ready(&bot, 0).await;
    assert!(
        detail(&s).contains(&format!("via 127.0.0.1:{tls_port} (direct TLS)")),
        "{}",
        detail(&s)
    );
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!echo over direct TLS").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "over direct TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_taking_the_bots_resource_is_a_refusal_not_a_fight() {
    let prosody = server();
    let text = prosody.bot_toml("opsbot", "botpass", &[], "");
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b.configure(|o| o.reconnect.refused_min = Duration::from_secs(30)),
    );
    ready(&bot, 0).await;
    // Same account, same resource: the server replaces the bot's session with a conflict.
    let _usurper = XmppUser::connect_as(prosody.port, "opsbot", "botpass", "bot").await;
    let s = bot
        .wait_status(T, "the conflict", |s| reconnects(s) >= 1)
        .await;
    let entry = s
        .healing_log
        .iter()
        .find(|e| e.action == "reconnect")
        .unwrap();
    assert!(
        entry.detail.contains("refused: stream error Conflict"),
        "{}",
        entry.detail
    );
    assert!(
        next_attempt_in(&entry.detail) >= Duration::from_secs(30),
        "{}",
        entry.detail
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reconnects(&bot.status()),
        1,
        "the bot fought for its resource"
    );
}

/// Alice (the room's owner) makes `room` password-protected.
async fn protect(owner: &mut XmppUser, room_jid: &str, secret: &str) {
    configure_room(
        owner,
        room_jid,
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", secret),
        ],
    )
    .await;
}

/// Submits the room's configuration form with `fields` set, as its owner.
async fn configure_room(owner: &mut XmppUser, room_jid: &str, fields: &[(&str, &str)]) {
    let field = |var: &str, value: &str| {
        Element::builder("field", "jabber:x:data")
            .attr(
                tokio_xmpp::minidom::rxml::NcName::try_from("var").unwrap(),
                var,
            )
            .append(
                Element::builder("value", "jabber:x:data")
                    .append(value)
                    .build(),
            )
            .build()
    };
    let mut form = Element::builder("x", "jabber:x:data")
        .attr(
            tokio_xmpp::minidom::rxml::NcName::try_from("type").unwrap(),
            "submit",
        )
        .append(field(
            "FORM_TYPE",
            "http://jabber.org/protocol/muc#roomconfig",
        ));
    for (var, value) in fields {
        form = form.append(field(var, value));
    }
    let form = form.build();
    owner_request(
        owner,
        room_jid,
        "http://jabber.org/protocol/muc#owner",
        form,
    )
    .await;
    let deadline = Instant::now() + T;
    loop {
        match owner.next_stanza(deadline).await {
            Some(tokio_xmpp::Stanza::Iq(Iq::Result { id, .. })) if id == "own1" => return,
            Some(tokio_xmpp::Stanza::Iq(Iq::Error { id, error, .. })) if id == "own1" => {
                panic!("the room refused its configuration: {error:?}")
            }
            Some(_) => {}
            None => panic!("no answer to the room configuration"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_refuses_the_bot_is_retried_with_a_doubling_wait_and_its_password_works() {
    let prosody = server();
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("locked"), "alice").await;
    protect(&mut alice, &room("locked"), "s3cret").await;
    let bot = bot(&prosody, &["locked"], "join_retry_secs = 1\n");
    let s = bot
        .wait_status(T, "two refusals", |s| {
            s.healing_log
                .iter()
                .filter(|e| e.action == "refused")
                .count()
                >= 2
        })
        .await;
    let refusals: Vec<&str> = s
        .healing_log
        .iter()
        .filter(|e| e.action == "refused")
        .map(|e| e.detail.as_str())
        .collect();
    assert!(
        refusals[0].contains("(not-authorized); retrying in 1s"),
        "{refusals:?}"
    );
    assert!(
        refusals[1].contains("(not-authorized); retrying in 2s"),
        "{refusals:?}"
    );
    assert!(
        detail(&s).contains("refused (not-authorized), retry in"),
        "{}",
        detail(&s)
    );
    // Still answering outside the room meanwhile.
    alice.chat(BOT, "!echo outside").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "outside");
    drop(bot);

    // With the room's password, the bot gets in.
    let bot = bot_with(
        &prosody,
        &["locked"],
        &format!(
            "room_passwords = {{ \"{}\" = \"s3cret\" }}\n",
            room("locked")
        ),
        |b| b,
    );
    ready(&bot, 1).await;
    alice.groupchat(&room("locked"), "!echo inside").await;
    assert_eq!(
        alice
            .expect_in_room(&room("locked"), "opsbot", T)
            .await
            .body,
        "inside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bot_keeps_its_connection() {
    let prosody = server();
    // Keep-alive after 2 s of silence, dead after 3 s more: an idle bot must still never
    // mistake the quiet for a dead link.
    let bot = bot(&prosody, &["ops"], "");
    ready(&bot, 1).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = bot.status();
    assert_eq!(reconnects(&s), 0, "{:?}", s.healing_log);
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.chat(BOT, "!echo awake").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "awake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_bot_backs_off_from_the_room_and_keeps_answering_elsewhere() {
    let prosody = server();
    let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
    alice.join(&room("strict"), "alice").await;
    let bot = bot(&prosody, &["strict"], "join_retry_secs = 1\n");
    ready(&bot, 1).await;
    let item = Element::builder("item", "http://jabber.org/protocol/muc#admin")
        .attr(
            tokio_xmpp::minidom::rxml::NcName::try_from("jid").unwrap(),
            BOT,
        )
        .attr(
            tokio_xmpp::minidom::rxml::NcName::try_from("affiliation").unwrap(),
            "outcast",
        )
        .build();
    owner_request(
        &mut alice,
        &room("strict"),
        "http://jabber.org/protocol/muc#admin",
        item,
    )
    .await;
    // Banned: a refusal, retried after 1 s, refused again (forbidden), then after 2 s.
    let s = bot
        .wait_status(T, "two refusals", |s| {
            s.healing_log
                .iter()
                .filter(|e| e.action == "refused")
                .count()
                >= 2
        })
        .await;
    let refusals: Vec<&str> = s
        .healing_log
        .iter()
        .filter(|e| e.action == "refused")
        .map(|e| e.detail.as_str())
        .collect();
    assert!(refusals[0].contains("(banned"), "{refusals:?}");
    assert!(refusals[0].contains("retrying in 1s"), "{refusals:?}");
    assert!(
        refusals[1].contains("(forbidden); retrying in 2s"),
        "{refusals:?}"
    );
    assert_eq!(reconnects(&s), 0);
    alice.chat(BOT, "!echo elsewhere").await;
    assert_eq!(alice.expect_from(BOT, T).await.body, "elsewhere");
}
