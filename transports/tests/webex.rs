//! The Webex transport against the fake Webex of `support/webex.rs` (REST and the Mercury
//! WebSocket on loopback ports it picks), with each failure made to happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::RunningBot;
use crate::support::webex::{Account, FakeWebex, Fault};
use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot::http::{HttpClient, HttpClientConfig};
use opsbot::prelude::*;
use opsbot_transports::webex::{MAX_MESSAGE_BYTES, Webex, WebexConfig};
use serde_json::json;

const T: Duration = Duration::from_secs(20);
const ROOM: &str = "Y2lzY29zcGFyazovL3VzL1JPT00vb3Bz";
const ALICE: &str = "alice@example.com";

fn config(fake: &FakeWebex, account: &Account, extra: &str) -> WebexConfig {
    let cfg: WebexConfig = toml::from_str(&fake.bot_toml(account, extra)).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    cfg
}

fn builder(fake: &FakeWebex, account: &Account, extra: &str) -> opsbot::BotBuilder {
    opsbot::Bot::builder(account.name.as_str()).transport(Webex::new(config(fake, account, extra)))
}

/// Starts a bot for `account` on the fake, with `extra` transport settings.
fn bot(fake: &FakeWebex, account: &Account, extra: &str) -> RunningBot {
    RunningBot::launch(builder(fake, account, extra), ALICE, |b| b.handler(Big20))
}

fn transport(s: &Snapshot) -> Option<&opsbot::health::ActorStatus> {
    s.actor(ActorKind::Transport, "webex")
}

fn detail(s: &Snapshot) -> String {
    transport(s)
        .and_then(|a| a.detail.clone())
        .unwrap_or_default()
}

fn connected(s: &Snapshot) -> bool {
    transport(s).is_some_and(|a| a.conn == Some(ConnState::Connected))
}

fn reconnects(s: &Snapshot) -> u32 {
    transport(s).map_or(0, |a| a.reconnects)
}

/// Asks `!echo probe N` in each of `places` (a room, or `None` for 1:1), in order, and waits
/// for the answers: once they are there, the bot has handled everything said before them
/// (events are handled in order, and each answer goes to the same place as the ones before
/// it). Answers every post of the account.
async fn probe(
    fake: &FakeWebex,
    account: &Account,
    places: &[Option<&str>],
) -> Vec<crate::support::webex::Post> {
    let mut want = Vec::new();
    for (i, place) in places.iter().enumerate() {
        let text = format!("probe {}", i + 1);
        match place {
            Some(room) => fake.say(
                account,
                ALICE,
                Some(room),
                None,
                &format!("{} !echo {text}", account.name),
            ),
            None => fake.say(account, ALICE, None, None, &format!("!echo {text}")),
        };
        want.push(text);
    }
    let deadline = Instant::now() + T;
    loop {
        let got: Vec<crate::support::webex::Post> = fake
            .posts()
            .into_iter()
            .filter(|p| p.token == account.token)
            .collect();
        if want.iter().all(|w| got.iter().any(|p| p.text() == *w)) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no answer to the probes: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn up(fake: &FakeWebex, bot: &RunningBot, account: &Account) {
    bot.wait_status(T, "connected", connected).await;
    fake.wait_connected(&account.token, T).await;
}

/// `!big20`: one reply of 20,000 bytes in lines of multi-byte text.
#[derive(Clone)]
struct Big20;

fn big20() -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < 20_000 {
        i += 1;
        s.push_str(&format!("{i:04} é€𝄞 line of the long answer\n"));
    }
    s.truncate(s.trim_end().len());
    s
}

impl Handler for Big20 {
    const NAME: &'static str = "big20";
    const COMMANDS: &'static [Command] = &[Command::new("big20", "", "Reply with 20 KB.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        cx.reply(big20());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_status_answer_in_a_group_room_and_one_to_one() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;

    // In a group room Webex puts the bot's name first; `!cmd`, `name cmd` and `name !cmd` work.
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !help");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].field("roomId").as_deref(), Some(ROOM));
    assert!(p[0].shown().contains("status"), "{}", p[0].text());
    assert_eq!(p[0].field("parentId"), None);
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot status");
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert!(p[1].shown().contains("webex"), "{}", p[1].text());
    assert!(p[1].shown().contains("opsbot@webex.bot"), "{}", p[1].text());
    assert!(
        !p[1].text().contains(&a.token) && !p[1].shown().contains(&a.token),
        "the token leaked into !status"
    );
    fake.say(&a, ALICE, Some(ROOM), None, "!echo plain prefix");
    let p = fake.wait_posts(&a.token, 3, T).await;
    assert_eq!(p[2].text(), "plain prefix");

    // 1:1: no name, the prefix optional, the answer to the person.
    fake.say(&a, ALICE, None, None, "help");
    let p = fake.wait_posts(&a.token, 4, T).await;
    assert_eq!(p[3].field("toPersonEmail").as_deref(), Some(ALICE));
    assert_eq!(p[3].field("roomId"), None);
    assert!(p[3].shown().contains("echo"), "{}", p[3].text());
    fake.say(&a, ALICE, None, None, "!status");
    let p = fake.wait_posts(&a.token, 5, T).await;
    assert!(p[4].shown().contains("webex"), "{}", p[4].text());

    // Every event was acknowledged, the bot's own reflected posts included, and none of those
    // ran: five commands, five posts. Probes in the room and 1:1, after the reflections on the
    // same socket and answered to the same places, are the next posts.
    let p = probe(&fake, &a, &[Some(ROOM), None]).await;
    assert_eq!(p.len(), 7, "{p:#?}");
    assert!(fake.acks().len() >= 10, "{:?}", fake.acks());
    // Markdown that would mention everybody is shown, not acted on.
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo <@all> look");
    let p = fake.wait_posts(&a.token, 8, T).await;
    assert_eq!(p[7].text(), "&lt;@all> look");
}

/// Formatted replies as the Markdown Webex renders: code spans and bold where the handler
/// formats; a user's `<@all>`, `&`, `*` shown as written, in code spans too, where an entity
/// would show as `&lt;`; a code block cut between posts closed and opened again in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatted_replies_are_posted_as_markdown() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = RunningBot::launch(builder(&fake, &a, ""), ALICE, |b| {
        b.handler(crate::support::Formatted)
    });
    up(&fake, &bot, &a).await;

    fake.say(&a, ALICE, None, None, "!help log");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(
        p[0].field("markdown").as_deref(),
        Some("usage: `!log <lines> [width]`\nA code block\\.")
    );

    fake.say(&a, ALICE, None, None, "!rich <@all> & *x*");
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert_eq!(
        p[1].field("markdown").as_deref(),
        Some(
            "**Report**\n&lt;@all\\> &amp; \\*x\\* **&lt;@all\\> &amp; \\*x\\*** \
             `\u{2039}@all> & *x*` [runbook](https://wiki.example.com/runbook)"
        )
    );

    fake.say(&a, ALICE, None, None, "!log 1000 60");
    let mut lines = Vec::new();
    let mut n = 2;
    while lines.len() < 1000 {
        n += 1;
        let p = fake.wait_posts(&a.token, n, T).await;
        let md = p[n - 1].field("markdown").unwrap_or_default();
        assert!(md.len() <= MAX_MESSAGE_BYTES);
        let inner = md
            .strip_prefix("```\n")
            .and_then(|b| b.strip_suffix("\n```"))
            .unwrap_or_else(|| panic!("a post that is not one whole block: {md:.80}"));
        lines.extend(inner.lines().map(str::to_owned));
    }
    assert!(n > 4, "{n} posts");
    let want: Vec<String> = (0..1000)
        .map(|i| format!("{i:05} {}", "x".repeat(54)))
        .collect();
    assert_eq!(lines, want);
}

/// A card on the fake: posted as an Adaptive Card with its fallback; a press by an approved
/// person runs the button's command once, answered in the card's thread; a press redelivered,
/// a second press of the same button, a press by someone not approved and a press from before
/// the bot started run nothing; after a restart the card's buttons still work and still know
/// who pressed what; a card too big is an error in chat, not a post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cards_buttons_run_their_command_once_for_approved_people_even_after_a_restart() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let start = || {
        let state = state.clone();
        RunningBot::launch(
            builder(
                &fake,
                &a,
                "approved_users = [\"alice@example.com\", \"bob@example.com\"]",
            )
            .configure(move |o| o.state_path = Some(state)),
            ALICE,
            |b| b.handler(crate::support::Formatted),
        )
    };
    let bot = start();
    up(&fake, &bot, &a).await;

    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !card q1");
    let card = fake.wait_posts(&a.token, 1, T).await.remove(0);
    let att = &card.body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["version"], "1.3");
    assert_eq!(att["content"]["actions"][0]["title"], "Yes");
    assert_eq!(
        att["content"]["body"][1]["text"],
        "Restart \\*web\\* in <prod\\>?"
    );
    assert!(
        card.shown()
            .contains("reply `!pick q1 yes` (Yes) or `!pick q1 no` (No)"),
        "{}",
        card.shown()
    );

    let pressed = fake.press(
        &a,
        "bob@example.com",
        &card.id,
        0,
        json!({ "note": "go" }),
        None,
    );
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert_eq!(p[1].shown(), "q1: yes from bob@example.com (go)");
    assert_eq!(
        p[1].field("parentId").as_deref(),
        Some(card.id.as_str()),
        "the answer is in the card's thread"
    );
    fake.redeliver_press(&a, &pressed);
    fake.press(&a, "bob@example.com", &card.id, 0, json!({}), None);
    let p = fake.wait_posts(&a.token, 3, T).await;
    assert_eq!(
        p[2].shown(),
        "bob@example.com: you already pressed “Yes” on that card"
    );
    fake.press(&a, "mallory@evil.example", &card.id, 1, json!({}), None);
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo probe");
    let p = fake.wait_posts(&a.token, 4, T).await;
    assert_eq!(p[3].text(), "probe", "nothing came of the other presses");
    assert_eq!(fake.posts().len(), 4);
    let d = detail(&bot.status());
    assert!(
        d.contains("duplicates 1") && d.contains("refused senders 1"),
        "{d}"
    );

    // A restart: the card is still the bot's.
    drop(bot);
    let bot = start();
    up(&fake, &bot, &a).await;
    fake.press(
        &a,
        ALICE,
        &card.id,
        1,
        json!({ "note": "old" }),
        Some("2020-01-01T00:00:00.000Z"),
    );
    fake.press(&a, ALICE, &card.id, 1, json!({ "note": "after" }), None);
    let p = fake.wait_posts(&a.token, 5, T).await;
    assert_eq!(p[4].shown(), "q1: no from alice@example.com (after)");
    fake.press(&a, "bob@example.com", &card.id, 0, json!({}), None);
    let p = fake.wait_posts(&a.token, 6, T).await;
    assert!(
        p[5].shown().contains("already pressed “Yes”"),
        "{}",
        p[5].shown()
    );

    // Too big: the sender hears of it, and nothing is posted with a card.
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !bigcard");
    let p = fake.wait_posts(&a.token, 7, T).await;
    assert!(p[6].shown().contains("!bigcard failed"), "{}", p[6].shown());
    assert!(p[6].body.get("attachments").is_none());
    let d = detail(&bot.status());
    assert!(d.contains("older than the bot 1"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_a_thread_is_answered_in_that_thread() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    let parent = fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo top");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].field("parentId"), None);
    fake.say(
        &a,
        ALICE,
        Some(ROOM),
        Some(&parent),
        "opsbot !echo in thread",
    );
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert_eq!(p[1].text(), "in thread");
    assert_eq!(p[1].field("roomId").as_deref(), Some(ROOM));
    assert_eq!(p[1].field("parentId").as_deref(), Some(parent.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_approved_people_domains_and_rooms_get_answers() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(
        &fake,
        &a,
        "approved_users = [\"alice@example.com\"]\napproved_domains = [\"corp.example\"]\n\
         approved_rooms = [\"open-room\"]",
    );
    up(&fake, &bot, &a).await;
    fake.say(
        &a,
        "mallory@evil.example",
        Some(ROOM),
        None,
        "opsbot !echo m1",
    );
    fake.say(&a, "mallory@evil.example", None, None, "!echo m2");
    fake.say(&a, "eve@corp.example.evil", None, None, "!echo m3");
    fake.say(&a, "other@webex.bot", None, None, "!echo from a bot");
    fake.say(&a, ALICE, None, None, "!echo alice");
    fake.say(&a, "bob@corp.example", None, None, "!echo bob");
    fake.say(
        &a,
        "carol@else.example",
        Some("open-room"),
        None,
        "opsbot !echo carol",
    );
    fake.wait_posts(&a.token, 3, T).await;
    // The three refused are counted (read and refused), and a probe after them all is the
    // next post.
    let s = bot
        .wait_status(T, "the refusals counted", |s| {
            detail(s).contains("refused senders 3")
        })
        .await;
    assert!(detail(&s).contains("refused senders 3"), "{}", detail(&s));
    let texts: Vec<String> = probe(&fake, &a, &[None])
        .await
        .iter()
        .map(|p| p.text())
        .collect();
    // Posts to different spaces go out side by side (the delivery window), so only each
    // space's order is fixed: alice's answer, then the probe in her 1:1 space.
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(sorted, ["alice", "bob", "carol", "probe 1"]);
    let pos = |t: &str| texts.iter().position(|x| x == t).unwrap();
    assert!(pos("alice") < pos("probe 1"), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_reopened_and_the_bot_answers() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    assert!(fake.drop_socket(&a.token));
    bot.wait_status(T, "a reconnect", |s| reconnects(s) >= 1 && connected(s))
        .await;
    fake.wait_connected(&a.token, T).await;
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo after the drop");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "after the drop");
    assert_eq!(fake.devices(&a.token), 1, "the device was reused");
    // A close frame with an ordinary code is a reconnect too.
    assert!(fake.close_socket(&a.token, 4000));
    bot.wait_status(T, "a second reconnect", |s| {
        reconnects(s) >= 2 && connected(s)
    })
    .await;
    fake.wait_connected(&a.token, T).await;
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo after the close");
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert_eq!(p[1].text(), "after the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_declared_dead_and_reopened() {
    let fake = FakeWebex::start().await;
    fake.set_ping_every(None);
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "ping_interval_secs = 1\nping_timeout_secs = 2");
    up(&fake, &bot, &a).await;
    let muted = Instant::now();
    assert!(fake.mute_socket(&a.token));
    bot.wait_status(T, "a reconnect", |s| reconnects(s) >= 1 && connected(s))
        .await;
    // Dead after the interval and the timeout (about 3 s), not never.
    assert!(
        muted.elapsed() < Duration::from_secs(15),
        "{:?}",
        muted.elapsed()
    );
    fake.wait_connected(&a.token, T).await;
    fake.say(&a, ALICE, None, None, "!echo alive");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_device_is_registered_again() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    assert_eq!(fake.devices(&a.token), 1);
    fake.stale_devices(&a.token);
    assert!(fake.drop_socket(&a.token));
    let s = bot
        .wait_status(T, "a new device", |s| {
            s.healing_log.iter().any(|e| e.action == "re-register")
        })
        .await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.detail.contains("the device is stale")),
        "{:?}",
        s.healing_log
    );
    fake.wait_connected(&a.token, T).await;
    assert_eq!(fake.devices(&a.token), 2);
    fake.say(&a, ALICE, None, None, "!echo on the new device");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "on the new device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_authorized_close_codes_are_refusals_not_a_tight_loop() {
    for code in [4401u16, 1008] {
        let fake = FakeWebex::start().await;
        let a = fake.add_bot("opsbot");
        fake.refuse_sockets(Some(code));
        let bot = RunningBot::launch(builder(&fake, &a, ""), ALICE, |b| {
            b.configure(|o| {
                o.reconnect.initial = Duration::from_millis(100);
                o.reconnect.refused_min = Duration::from_secs(3);
            })
        });
        let s = bot
            .wait_status(T, "a refusal", |s| {
                s.healing_log.iter().any(|e| e.detail.contains("refused"))
            })
            .await;
        let first = fake.upgrades(&a.token)[0];
        tokio::time::sleep(Duration::from_secs(7)).await;
        let attempts = fake
            .upgrades(&a.token)
            .iter()
            .filter(|t| t.duration_since(first) < Duration::from_secs(7))
            .count();
        // A tight loop would be dozens; the refusal floor allows one every 3 s or more.
        assert!(
            (2..=3).contains(&attempts),
            "code {code}: {attempts} attempts; {:?}",
            s.healing_log
        );
        assert!(
            s.healing_log
                .iter()
                .any(|e| e.detail.contains(&code.to_string())),
            "{:?}",
            s.healing_log
        );
        // Let it in: the bot connects and answers.
        fake.refuse_sockets(None);
        up(&fake, &bot, &a).await;
        fake.say(&a, ALICE, None, None, "!echo let in");
        let p = fake.wait_posts(&a.token, 1, T).await;
        assert_eq!(p[0].text(), "let in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_holds_that_bot_for_its_retry_after_while_another_answers() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("alpha");
    let b = fake.add_bot("beta");
    let bots = RunningBot::launch_all(
        vec![builder(&fake, &a, ""), builder(&fake, &b, "")],
        ALICE,
        |x| x,
    );
    for (acc, h) in [(&a, &bots.all[0]), (&b, &bots.all[1])] {
        let deadline = Instant::now() + T;
        while !connected(&h.snapshot()) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.wait_connected(&acc.token, T).await;
    }
    fake.fail(
        "POST /v1/messages",
        Some(&a.token),
        1,
        Fault::Status(429, Some("2".into())),
    );
    fake.say(&a, ALICE, None, None, "!echo held");
    // Wait for the 429 to be given before beta's command.
    let deadline = Instant::now() + T;
    let throttled_at = loop {
        if let Some(r) = fake
            .requests()
            .into_iter()
            .find(|r| r.token == a.token && r.method == "POST" && r.path == "/v1/messages")
        {
            break r.at;
        }
        assert!(Instant::now() < deadline, "alpha never posted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    fake.say(&b, ALICE, None, None, "!echo beta goes on");
    let pb = fake.wait_posts(&b.token, 1, T).await;
    assert!(
        pb[0].at.duration_since(throttled_at) < Duration::from_secs(2),
        "beta waited for alpha's Retry-After"
    );
    let pa = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(pa[0].text(), "held");
    // Nothing from alpha inside its 2 s (allowing the fake's own clock a little).
    let early: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.token == a.token
                && r.at > throttled_at
                && r.at < throttled_at + Duration::from_millis(1950)
        })
        .collect();
    assert!(
        early.is_empty(),
        "alpha asked during its Retry-After: {early:?}"
    );
    assert!(pa[0].at >= throttled_at + Duration::from_millis(1950));
    assert_eq!(fake.posts().len(), 2);

    // After the wait, alpha keeps a gap between its replies; beta does not.
    let s = bots.all[0].snapshot();
    assert!(
        detail(&s).contains("slowed to a reply per 0.5s"),
        "{}",
        detail(&s)
    );
    assert!(
        s.healing_log.iter().any(|e| e.action == "slow down"),
        "{:?}",
        s.healing_log
    );
    fake.say(&a, ALICE, None, None, "!echo one");
    fake.say(&a, ALICE, None, None, "!echo two");
    let pa = fake.wait_posts(&a.token, 3, T).await;
    assert!(
        pa[2].at.duration_since(pa[1].at) >= Duration::from_millis(450),
        "alpha's replies came {:?} apart",
        pa[2].at.duration_since(pa[1].at)
    );
    assert!(!detail(&bots.all[1].snapshot()).contains("slowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_events_are_ignored_and_the_bot_answers() {
    use tokio_tungstenite::tungstenite::Message;
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    for frame in [
        Message::text("not json"),
        Message::text("{}"),
        Message::text("{\"id\": 5, \"data\": null}"),
        Message::text("[1, 2, 3]"),
        Message::binary(vec![0xff, 0x00, 0xfe]),
        Message::text(
            "{\"id\":\"e1\",\"data\":{\"eventType\":\"conversation.activity\",\"activity\":{\"verb\":\"post\"}}}",
        ),
        Message::text(
            "{\"id\":\"e2\",\"data\":{\"eventType\":\"conversation.activity\",\"activity\":{\"verb\":\"post\",\"id\":\"no-such-message\",\"actor\":{}}}}",
        ),
        Message::text(format!(
            "{{\"id\":\"e3\",\"data\":{{\"eventType\":\"conversation.activity\",\"activity\":{{\"verb\":\"post\",\"id\":\"{}\"}}}}}}",
            "x".repeat(10_000)
        )),
        // Nested 200,000 levels deep, bare and inside an event: serde_json stops at 128.
        Message::text(format!("{}{}", "[".repeat(200_000), "]".repeat(200_000))),
        Message::text(format!(
            "{{\"id\":\"e4\",\"data\":{{\"eventType\":\"conversation.activity\",\"activity\":{}{}}}}}",
            "{\"a\":".repeat(200_000),
            "}".repeat(200_000)
        )),
    ] {
        assert!(fake.raw(&a.token, frame));
    }
    fake.say(&a, ALICE, None, None, "!echo still here");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "still here");
    let s = bot.status();
    assert_eq!(reconnects(&s), 0, "{:?}", s.healing_log);
    // Envelopes with an id were acknowledged, whatever they held.
    let acks = fake.acks();
    for id in ["e1", "e2", "e3"] {
        assert!(acks.iter().any(|a| a == id), "{id} not acked: {acks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_client_waits_out_429_and_423_and_retries_only_what_it_may() {
    use opsbot::http::{HttpError, Repeat, Throttle};
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let client = Arc::new(HttpClient::new(HttpClientConfig::default()).unwrap());
    let me = format!("http://127.0.0.1:{}/v1/people/me", fake.rest_port);
    let auth = format!("Bearer {}", a.token);
    let get = |client: Arc<HttpClient>, throttle: Arc<Throttle>, url: String, auth: String| async move {
        client
            .send(&throttle, Repeat::Safe, &url, |c| {
                c.get(&url).header("Authorization", &auth)
            })
            .await
    };

    // 423 with Retry-After: 1 is waited out, then retried once.
    let throttle = Arc::new(Throttle::new());
    fake.fail(
        "GET /v1/people/me",
        None,
        1,
        Fault::Status(423, Some("1".into())),
    );
    let t = Instant::now();
    let r = get(client.clone(), throttle.clone(), me.clone(), auth.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(throttle.throttled(), 1);

    // 429 without Retry-After holds this caller 15 s, and not another.
    let throttle = Arc::new(Throttle::new());
    fake.fail("GET /v1/people/me", None, 1, Fault::Status(429, None));
    let held = tokio::spawn(get(
        client.clone(),
        throttle.clone(),
        me.clone(),
        auth.clone(),
    ));
    let deadline = Instant::now() + T;
    while throttle.throttled() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = throttle.remaining().unwrap();
    assert!(
        left > Duration::from_secs(13) && left <= Duration::from_secs(15),
        "{left:?}"
    );
    let other = Arc::new(Throttle::new());
    let r = get(client.clone(), other, me.clone(), auth.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "another caller is not held");
    let asked = |fake: &FakeWebex| {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/v1/people/me")
            .count()
    };
    let before = asked(&fake);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(asked(&fake), before, "retried before the Retry-After");
    held.abort();

    // No server there: what is safe to repeat is tried 1 + 3 times, and so is a post, which
    // certainly did not arrive; both end as a connection error.
    let closed = crate::support::free_port();
    let url = format!("http://127.0.0.1:{closed}/v1/messages");
    let throttle = Throttle::new();
    let before = client
        .stats()
        .attempts
        .load(std::sync::atomic::Ordering::Relaxed);
    let r = client
        .send(&throttle, Repeat::IfNotSent, &url, |c| {
            c.post(&url).body("{}")
        })
        .await;
    assert!(matches!(r, Err(HttpError::Connect(_))), "{r:?}");
    let after = client
        .stats()
        .attempts
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_a_timed_out_post_is_not_sent_twice() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    // A client of its own with a short timeout, so that a slow answer is a timeout.
    let client = Arc::new(
        HttpClient::new(HttpClientConfig {
            timeout: Duration::from_secs(1),
            ..HttpClientConfig::default()
        })
        .unwrap(),
    );
    let transport = Webex::with_client(config(&fake, &a, ""), client.clone());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("opsbot").transport(transport),
        ALICE,
        |b| b,
    );
    up(&fake, &bot, &a).await;

    // 503 twice, then the post goes through, once.
    fake.fail(
        "POST /v1/messages",
        Some(&a.token),
        2,
        Fault::Status(503, None),
    );
    fake.say(&a, ALICE, None, None, "!echo after two errors");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "after two errors");
    let tries = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/messages")
        .count();
    assert_eq!(tries, 3);

    // The fake takes the post and answers after the client gave up: not sent again.
    fake.fail(
        "POST /v1/messages",
        Some(&a.token),
        1,
        Fault::Slow(Duration::from_secs(3)),
    );
    fake.say(&a, ALICE, None, None, "!echo only once");
    let s = bot
        .wait_status(T, "an unconfirmed reply", |s| {
            detail(s).contains("unconfirmed replies 1")
        })
        .await;
    assert!(
        s.healing_log.iter().any(|e| e.action == "unconfirmed"),
        "{:?}",
        s.healing_log
    );
    fake.say(&a, ALICE, None, None, "!echo next");
    let p = fake.wait_posts(&a.token, 3, T).await;
    assert_eq!(p[2].text(), "next");
    // A reply sent again would have gone back to the head of its queue, before `next`; a
    // probe shows nothing came after it either.
    let p = probe(&fake, &a, &[None]).await;
    let once = p.iter().filter(|p| p.text() == "only once").count();
    assert_eq!(once, 1);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        client
            .stats()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_runs_once() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    let id = fake.say(&a, ALICE, None, None, "!echo once");
    fake.wait_posts(&a.token, 1, T).await;
    fake.redeliver(&a, &id);
    fake.redeliver(&a, &id);
    fake.say(&a, ALICE, None, None, "!echo marker");
    // The redeliveries came before the marker on the same socket, answered to the same place.
    let p = fake.wait_posts(&a.token, 2, T).await;
    assert_eq!(p[1].text(), "marker");
    assert_eq!(fake.posts().len(), 2);
    let s = bot.status();
    assert!(detail(&s).contains("duplicates 2"), "{}", detail(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_old_unacknowledged_messages_never_run() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let first = bot(&fake, &a, "");
    up(&fake, &first, &a).await;
    drop(first);
    let deadline = Instant::now() + T;
    while fake.connected(&a.token) {
        assert!(Instant::now() < deadline, "the socket outlived the bot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the bot is down, commands pile up unacknowledged, one of them an hour old.
    fake.say(&a, ALICE, None, None, "!echo old 1");
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !echo old 2");
    fake.say_at(
        &a,
        ALICE,
        None,
        None,
        "!echo old 3",
        "2020-01-01T00:00:00.000Z",
    );
    let second = bot(&fake, &a, "");
    up(&fake, &second, &a).await;
    second
        .wait_status(T, "the old messages read", |s| {
            detail(s).contains("older than the bot 3")
        })
        .await;
    // All three were read and passed over before the new one was said.
    fake.say(&a, ALICE, None, None, "!echo new");
    let p = probe(&fake, &a, &[Some(ROOM)]).await;
    // Two spaces, two posts side by side: either may land first; nothing else was answered.
    let mut texts: Vec<String> = p.iter().map(|p| p.text()).collect();
    texts.sort();
    assert_eq!(texts, ["new", "probe 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kb_reply_arrives_in_ordered_parts_within_the_limit() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    fake.say(&a, ALICE, Some(ROOM), None, "opsbot !big20");
    let want = big20();
    let deadline = Instant::now() + T;
    loop {
        let got: Vec<String> = fake.posts().iter().map(|p| p.text()).collect();
        if got.join("\n") == want {
            assert!(got.len() >= 3, "{}", got.len());
            for part in &got {
                assert!(part.len() <= MAX_MESSAGE_BYTES, "{}", part.len());
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the parts never made up the reply: {} parts, {} bytes",
            got.len(),
            got.iter().map(String::len).sum::<usize>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ten bots in one process, 100 commands each over five rooms, all at once; answers with
/// `latency` per REST call. Answers every room's replies in order, or fails.
async fn burst(fake: &FakeWebex, raise: bool) -> (Duration, Arc<HttpClient>) {
    let client = Arc::new(HttpClient::new(HttpClientConfig::default()).unwrap());
    let accounts: Vec<Account> = (0..10).map(|i| fake.add_bot(&format!("bot{i}"))).collect();
    let builders = accounts
        .iter()
        .map(|a| {
            opsbot::Bot::builder(a.name.as_str())
                .transport(Webex::with_client(config(fake, a, ""), client.clone()))
        })
        .collect();
    let bots = RunningBot::launch_all(builders, ALICE, |b| {
        b.configure(|o| {
            o.budget.per_minute = 0;
            if raise {
                o.outbox.global = Some(opsbot::pacing::Rate::new(1000.0, 1000));
                o.outbox.per_destination = Some(opsbot::pacing::Rate::new(1000.0, 1000));
            }
        })
    });
    for (a, h) in accounts.iter().zip(&bots.all) {
        let deadline = Instant::now() + T;
        while !connected(&h.snapshot()) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.wait_connected(&a.token, T).await;
    }
    let start = Instant::now();
    for i in 0..100 {
        for a in &accounts {
            let room = format!("room-{}", i % 5);
            fake.say(
                a,
                ALICE,
                Some(&room),
                None,
                &format!("{} !echo {i}", a.name),
            );
        }
    }
    let mut last_ok = Instant::now();
    let mut count = 0;
    loop {
        let n = fake.posts().len();
        if n >= 1000 {
            break;
        }
        if n > count {
            count = n;
            last_ok = Instant::now();
        }
        assert!(
            last_ok.elapsed() < Duration::from_secs(30),
            "stalled at {n} of 1000 replies"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    // Every bot handled its 100 and its outbox is empty: nothing more is on the way.
    for h in &bots.all {
        let deadline = Instant::now() + T;
        loop {
            let s = h.snapshot();
            let handled = s.actor(ActorKind::Handler, "echo").map_or(0, |a| a.handled);
            if handled == 100 && s.outbox.queued == 0 && s.outbox.sent == 100 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {handled} handled, {:?}",
                s.bot,
                s.outbox
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let posts = fake.posts();
    assert_eq!(posts.len(), 1000, "nothing more, nothing lost");
    for a in &accounts {
        for r in 0..5 {
            let room = format!("room-{r}");
            let seq: Vec<u32> = posts
                .iter()
                .filter(|p| p.token == a.token && p.field("roomId").as_deref() == Some(&room))
                .map(|p| p.text().parse().unwrap())
                .collect();
            let want: Vec<u32> = (0..100).filter(|i| i % 5 == r).collect();
            assert_eq!(seq, want, "{} in {room}", a.name);
        }
    }
    drop(bots);
    (took, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_bots_send_a_thousand_replies_at_once_without_a_timeout_or_a_loss() {
    let fake = FakeWebex::start().await;
    fake.set_latency(Duration::from_millis(50));
    let (_took, client) = burst(&fake, true).await;
    let stats = client.stats();
    assert_eq!(stats.timeouts.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Every bot shares the one client, whose per-host limit bounds the requests in flight; the
    // pool may open a connection that a freed one then makes spare, so allow a fifth more.
    let limit = HttpClientConfig::default().max_connections_per_host;
    assert!(
        fake.rest_connections() <= limit + limit / 5,
        "{} connections for ten bots",
        fake.rest_connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_burst_at_the_default_pace_loses_nothing() {
    let fake = FakeWebex::start().await;
    fake.set_latency(Duration::from_millis(50));
    burst(&fake, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_catalog_the_configured_device_service_is_used() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    fake.fail("GET /u2c/", None, 100, Fault::Status(500, None));
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().any(|p| p == "/u2c/api/v1/catalog"),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p == "/wdm-fallback/api/v1/devices"),
        "{paths:?}"
    );
    fake.say(&a, ALICE, None, None, "!echo via wdm_url");
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "via wdm_url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_refusal_and_never_shown() {
    let fake = FakeWebex::start().await;
    let mut a = fake.add_bot("opsbot");
    a.token = "wrong-token-value".into();
    let bot = RunningBot::launch(builder(&fake, &a, ""), ALICE, |b| {
        b.configure(|o| o.reconnect.refused_min = Duration::from_secs(3))
    });
    let s = bot
        .wait_status(T, "a refusal", |s| {
            s.healing_log.iter().any(|e| e.detail.contains("refused"))
        })
        .await;
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.detail.contains("the token was refused (401)")),
        "{:?}",
        s.healing_log
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = bot.status();
    let tries = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/people/me")
        .count();
    assert!((1..=3).contains(&tries), "{tries} tries in 4 s");
    let shown = format!("{:?} {}", s.healing_log, detail(&s));
    assert!(!shown.contains("wrong-token-value"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_while_posting_is_a_refusal_and_the_reply_waits_for_the_reconnect() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let bot = bot(&fake, &a, "");
    up(&fake, &bot, &a).await;
    fake.fail(
        "POST /v1/messages",
        Some(&a.token),
        1,
        Fault::Status(401, None),
    );
    fake.say(&a, ALICE, None, None, "!echo after the refusal");
    let s = bot
        .wait_status(T, "the refusal", |s| {
            s.healing_log.iter().any(|e| {
                e.action == "reconnect"
                    && e.detail
                        .contains("refused: posting a message: the token was refused (401)")
            })
        })
        .await;
    assert!(reconnects(&s) >= 1);
    // The reply went back to the queue and goes out, once, on the new session.
    let p = fake.wait_posts(&a.token, 1, T).await;
    assert_eq!(p[0].text(), "after the refusal");
    let texts: Vec<String> = probe(&fake, &a, &[None])
        .await
        .iter()
        .map(|p| p.text())
        .collect();
    assert_eq!(texts, ["after the refusal", "probe 1"]);
}

/// URLs that Webex's own services hand over are checked before the token goes there: a
/// catalog naming a device service on another host is not used (`wdm_url` is), and a device
/// whose WebSocket is plain `ws` to a name that is not this machine's (`localhost.` resolves
/// here, but is not a loopback address as written) is never connected to: the token stays
/// home, the reason is in the healing log, and once the device service behaves the bot
/// connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_urls_that_would_take_the_token_elsewhere_are_refused() {
    let fake = FakeWebex::start().await;
    let a = fake.add_bot("opsbot");
    let p = fake.rest_port;
    fake.set_catalog_wdm(&format!("http://localhost.:{p}/wdm/api/v1"));
    fake.set_socket_url(Some(&format!(
        "ws://localhost.:{}/mercury/{{id}}",
        fake.ws_port
    )));
    let bot = bot(&fake, &a, "");
    let s = bot
        .wait_status(T, "the refused WebSocket in the healing log", |s| {
            s.healing_log
                .iter()
                .any(|e| e.detail.contains("a WebSocket the token may not go to"))
        })
        .await;
    assert!(!connected(&s));
    assert!(
        fake.upgrades(&a.token).is_empty(),
        "the token went to the socket"
    );
    // The catalog's device service was passed over for wdm_url.
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.starts_with("/wdm-fallback/")),
        "{:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(!requests.iter().any(|r| r.path.starts_with("/wdm/")));
    // A device service that behaves again: connected, and answering.
    fake.set_socket_url(None);
    fake.stale_devices(&a.token);
    up(&fake, &bot, &a).await;
    fake.say(&a, ALICE, None, None, "!echo home");
    assert_eq!(fake.wait_posts(&a.token, 1, T).await[0].text(), "home");
}
