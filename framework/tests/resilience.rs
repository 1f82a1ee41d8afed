//! Connections that drop, bots that fail, and the bots beside them that must not notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opsbot::health::{ActorKind, BotHealth, ConnState};
use opsbot::prelude::*;
use opsbot::testkit::{Echo, TestBot, next_attempt_in};
use opsbot::transport::Limits;
use opsbot::transport::memory::{self, Said};
use opsbot::{Bot, Destination, Shutdown};

/// Answers after a pause, so that the answer is produced while the connection is down.
#[derive(Clone)]
struct Late;

impl Handler for Late {
    const NAME: &'static str = "late";
    const COMMANDS: &'static [Command] = &[Command::new("late", "", "Answer after 200 ms.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cx.reply("late answer");
        Ok(())
    }
}

#[tokio::test]
async fn after_a_refusal_the_bot_waits_at_least_the_refusal_floor() {
    let mut bot = TestBot::new()
        .with(Echo)
        .configure(|o| o.reconnect.refused_min = Duration::from_secs(30));
    bot.send("!echo up");
    assert_eq!(bot.reply().await, "up");
    // The line drops (a quick retry), then the service refuses the bot.
    bot.refuse_connections(true).drop_connection();
    let s = bot
        .wait_status("a refused attempt", |s| {
            s.healing_log
                .iter()
                .any(|e| e.action == "reconnect" && e.detail.starts_with("refused"))
        })
        .await;
    let retry_in = match s.actor(ActorKind::Transport, "memory").unwrap().conn {
        Some(ConnState::Reconnecting { retry_in }) => retry_in,
        ref other => panic!("{other:?}"),
    };
    assert!(retry_in >= Duration::from_secs(30), "{retry_in:?}");
    let refusal = s
        .healing_log
        .iter()
        .find(|e| e.detail.starts_with("refused"))
        .unwrap();
    assert!(
        refusal.detail.contains("next attempt in 30"),
        "{}",
        refusal.detail
    );
}

#[tokio::test]
async fn replies_made_while_disconnected_are_sent_after_the_reconnect() {
    let mut bot = TestBot::new().with(Late).with(Echo);
    bot.send("!echo up");
    assert_eq!(bot.reply().await, "up");
    bot.send("!late");
    // Give the router the message, then cut the line and keep it cut for a while.
    tokio::time::sleep(Duration::from_millis(50)).await;
    bot.refuse_connections(true).drop_connection();
    let down = bot
        .wait_status("reconnecting", |s| {
            matches!(
                s.actor(ActorKind::Transport, "memory")
                    .and_then(|a| a.conn.clone()),
                Some(ConnState::Reconnecting { .. })
            )
        })
        .await;
    // Down for less than its grace period (30 s by default): recovering, not yet critical.
    assert_eq!(down.health, BotHealth::Recovering);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        bot.drain_said().is_empty(),
        "nothing can be said while down"
    );
    bot.refuse_connections(false);
    assert_eq!(bot.reply().await, "late answer");

    let status = bot.status();
    let transport = status.actor(ActorKind::Transport, "memory").unwrap();
    // Backoff bounds the attempts: 10 ms doubling to 200 ms with jitter over ~0.7 s.
    assert!(
        (2..40).contains(&transport.reconnects),
        "{} reconnect attempts",
        transport.reconnects
    );
    assert!(status.healing_log.iter().any(|e| e.action == "reconnect"));
    assert_eq!(status.health, BotHealth::Healthy);
}

/// A transport down is recovering for the whole of its grace period, as the bot's health sees
/// it live, and critical soon after it ends (the bot looks again every second).
#[tokio::test]
async fn a_transport_down_turns_critical_only_when_its_grace_period_ends() {
    let grace = Duration::from_secs(2);
    let mut bot = TestBot::new().with(Echo).configure(|o| {
        o.reconnect.critical_after = grace;
        o.reconnect.initial = Duration::from_millis(50);
        o.reconnect.max = Duration::from_millis(200);
        o.reconnect.refused_min = Duration::from_millis(50);
    });
    bot.send("!echo up");
    assert_eq!(bot.reply().await, "up");
    bot.refuse_connections(true).drop_connection();
    let mut observed = 0;
    let critical_at = loop {
        let s = bot.status();
        let t = s.actor(ActorKind::Transport, "memory").unwrap();
        if let Some(since) = t.down_since {
            let down = since.elapsed();
            if s.health == BotHealth::Critical {
                break down;
            }
            assert_eq!(s.health, BotHealth::Recovering, "after {down:?}");
            if down < grace.mul_f32(0.9) {
                observed += 1;
            }
        }
        assert!(observed < 10_000, "never critical");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        observed > 20,
        "looked {observed} times before the end of the grace"
    );
    assert!(critical_at >= grace, "critical after {critical_at:?}");
    assert!(
        critical_at < grace + Duration::from_secs(2),
        "{critical_at:?}"
    );
    bot.refuse_connections(false);
    bot.wait_status("healthy again", |s| s.health == BotHealth::Healthy)
        .await;
}

/// Set while the hog holds its bot's thread.
static HOG_BLOCKING: AtomicBool = AtomicBool::new(false);

/// Blocks its bot's whole thread for three seconds (a handler that should have been declared
/// blocking) and panics afterwards.
#[derive(Clone)]
struct Hog;

impl Handler for Hog {
    const NAME: &'static str = "hog";
    const COMMANDS: &'static [Command] = &[Command::new("hog", "", "Misbehave.")];

    async fn command(&mut self, _cx: &mut Context, _call: Call) -> Result {
        HOG_BLOCKING.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        HOG_BLOCKING.store(false, Ordering::SeqCst);
        panic!("hog gave up");
    }
}

/// One bot's blocked thread never slows another: while the bad bot's thread is held, each answer
/// of the good bot comes within a few hundred milliseconds (a single thread shared by both
/// would make them wait the whole three seconds).
#[test]
fn one_failing_bot_leaves_the_other_answering() {
    let (t_bad, bad) = memory::pair("memory", "bad", Limits::unlimited(400));
    let (t_good, mut good) = memory::pair("memory", "good", Limits::unlimited(400));
    let fast = |o: &mut opsbot::BotOptions| {
        o.reconnect.initial = Duration::from_millis(10);
        o.reconnect.max = Duration::from_millis(50);
        o.reconnect.refused_min = Duration::from_millis(10);
        // Down for longer than this is critical.
        o.reconnect.critical_after = Duration::from_millis(100);
        // The bad bot cannot deliver its last apology; do not wait long for it at the end.
        o.shutdown_deadline = Duration::from_millis(500);
    };
    let bad_bot = Bot::builder("bad")
        .transport(t_bad)
        .handler(Hog)
        .handler(Echo)
        .configure(fast)
        .build()
        .unwrap();
    let good_bot = Bot::builder("good")
        .transport(t_good)
        .handler(Echo)
        .configure(fast)
        .build()
        .unwrap();
    let good_health = good_bot.health();
    let bad_health = bad_bot.health();
    let shutdown = Shutdown::new();
    let runner = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || opsbot::run_until(vec![bad_bot, good_bot], shutdown, false))
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let from = |who: &str, text: &str| Incoming::in_room("#ops", Sender::new(who), text);
        // The bad bot's thread is blocked by its hog, then its connection keeps failing.
        assert!(bad.send(from("a", "!hog")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !HOG_BLOCKING.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the hog never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bad.refuse(true);
        bad.drop_connection("network unreachable");
        for i in 0..5 {
            let asked = Instant::now();
            assert!(good.send(from("b", &format!("!echo {i}"))));
            let said: Said = tokio::time::timeout(Duration::from_secs(5), good.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(said.text, i.to_string());
            let took = said.at.duration_since(asked);
            assert!(
                took < Duration::from_millis(300),
                "answer {i} took {took:?} while the other bot's thread was blocked"
            );
        }
        assert!(
            HOG_BLOCKING.load(Ordering::SeqCst),
            "every answer came while the other bot's thread was blocked"
        );
        assert_eq!(good_health.snapshot().health, BotHealth::Healthy);
        // Once the hog lets go, the bad bot's troubles show in its own health only.
        let deadline = Instant::now() + Duration::from_secs(20);
        let bad_status = loop {
            let s = bad_health.snapshot();
            let hog_restarted = s
                .actor(ActorKind::Handler, "hog")
                .is_some_and(|a| a.restarts > 0);
            if s.health == BotHealth::Critical && hog_restarted {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the bad bot's health never showed its troubles: {:?}",
                s.health
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            bad_status
                .actor(ActorKind::Handler, "hog")
                .unwrap()
                .restarts,
            1
        );
        assert!(good.send(from("b", "!echo still fine")));
        let said = tokio::time::timeout(Duration::from_secs(5), good.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(said.text, "still fine");
        assert_eq!(good_health.snapshot().health, BotHealth::Healthy);
    });
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}

/// Says `count` numbered lines in one reply.
#[derive(Clone)]
struct Count;

impl Handler for Count {
    const NAME: &'static str = "count";
    const COMMANDS: &'static [Command] = &[Command::new("count", "<n>", "Say 1..n.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let n: u32 = call.arg(0)?;
        let text: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
        cx.reply(text.join("\n"));
        Ok(())
    }
}

fn numbered(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
}

/// A line the transport took but never acknowledged (the connection was cut while it was being
/// written) is sent after the reconnect, in its place: nothing lost, nothing twice.
#[tokio::test]
async fn a_line_cut_mid_delivery_is_sent_after_the_reconnect() {
    let mut bot = TestBot::with_limits(Limits {
        global: Some(opsbot::pacing::Rate::new(20.0, 1)),
        ..Limits::unlimited(400)
    })
    .with(Count);
    bot.send("!count 10");
    assert_eq!(bot.reply().await, "line 1");
    assert_eq!(bot.reply().await, "line 2");
    bot.cut_mid_delivery();
    let rest = bot.replies(8).await;
    assert_eq!(rest, numbered(10)[2..]);
    // The last acknowledgement reaches the counters just after the line itself.
    let s = bot
        .wait_status("ten lines sent", |s| s.outbox.sent >= 10)
        .await;
    assert_eq!(
        s.actor(ActorKind::Transport, "memory").unwrap().reconnects,
        1
    );
    assert_eq!(s.outbox.sent, 10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bot.drain_said().is_empty(), "a line was said twice");
}

/// A shutdown waits for a command still running when it finishes within the deadline...
#[tokio::test]
async fn shutdown_lets_a_running_command_finish_within_the_deadline() {
    let mut bot = TestBot::new()
        .with(Late)
        .configure(|o| o.shutdown_deadline = Duration::from_secs(5));
    bot.send("!late");
    // The router has the message once the handler runs; shut down while it sleeps.
    bot.wait_status("late running", |s| {
        s.actor(ActorKind::Handler, "late").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let said: Vec<String> = bot.shutdown().await.into_iter().map(|s| s.text).collect();
    assert_eq!(said, ["late answer"]);
}

/// Answers after ten seconds.
#[derive(Clone)]
struct Sleepy;

impl Handler for Sleepy {
    const NAME: &'static str = "sleepy";
    const COMMANDS: &'static [Command] = &[Command::new("sleepy", "", "Answer after 10 s.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        tokio::time::sleep(Duration::from_secs(10)).await;
        cx.reply("too late");
        Ok(())
    }
}

/// ...and cuts it at the deadline when it does not.
#[tokio::test]
async fn shutdown_cuts_a_running_command_at_the_deadline() {
    let mut bot = TestBot::new()
        .with(Sleepy)
        .with(Echo)
        .configure(|o| o.shutdown_deadline = Duration::from_millis(500));
    bot.send("!sleepy");
    bot.send("!echo sync");
    assert_eq!(bot.reply().await, "sync");
    let started = Instant::now();
    let said = bot.shutdown().await;
    assert!(said.is_empty(), "{said:?}");
    // Two deadlines at most (commands, then the outbox), with room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// A backlog longer than the shutdown deadline: what does not go out in time is dropped,
/// counted, logged and shown.
#[tokio::test]
async fn a_backlog_longer_than_the_deadline_is_counted_as_lost() {
    let mut bot = TestBot::with_limits(Limits {
        global: Some(opsbot::pacing::Rate::new(20.0, 1)),
        ..Limits::unlimited(400)
    })
    .with(Count)
    .configure(|o| o.shutdown_deadline = Duration::from_secs(1));
    let health = bot.health();
    bot.send("!count 100");
    assert_eq!(bot.reply().await, "line 1");
    let said = bot.shutdown().await;
    // About a second's worth at 20 a second.
    assert!((5..60).contains(&said.len()), "{} lines said", said.len());
    let texts: Vec<String> = said.into_iter().map(|s| s.text).collect();
    assert_eq!(texts, numbered(100)[1..1 + texts.len()]);
    // Every line is either said or counted as lost, none both.
    let o = health.snapshot().outbox;
    assert_eq!(o.lost_at_shutdown as usize, 100 - 1 - texts.len());
}

/// Says to a destination of the caller's choosing.
#[derive(Clone)]
struct Relay;

impl Handler for Relay {
    const NAME: &'static str = "relay";
    const COMMANDS: &'static [Command] = &[Command::new("relay", "", "Say to bad places.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        for dest in [
            Destination::room("#a\r\nQUIT :bye"),
            Destination::room("#a\nJOIN #b"),
            Destination::user("bob x"),
            Destination::room("#a\0"),
            Destination::room(""),
        ] {
            cx.say(dest, "hello");
        }
        cx.reply("relayed");
        Ok(())
    }
}

/// A destination a handler chose that contains CR, LF, a space or NUL is refused by the outbox
/// before any transport sees it: it could end a protocol line early and start another.
#[tokio::test]
async fn a_destination_that_could_inject_protocol_lines_is_refused() {
    let mut bot = TestBot::new().with(Relay);
    bot.send("!relay");
    let said = bot.said().await;
    assert_eq!(
        (said.dest, said.text),
        (Destination::room("#test"), "relayed".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bot.drain_said().is_empty());
    assert_eq!(bot.status().outbox.undeliverable, 5);
}

/// After a connection has been up for `stable_after`, the next drop starts the backoff afresh
/// (the first step), not where the last outage left it.
#[tokio::test]
async fn the_reconnect_backoff_starts_afresh_after_a_stable_connection() {
    let mut bot = TestBot::new().with(Echo).configure(|o| {
        o.reconnect.initial = Duration::from_millis(20);
        o.reconnect.max = Duration::from_secs(10);
        o.reconnect.refused_min = Duration::ZERO;
        o.reconnect.stable_after = Duration::from_millis(300);
    });
    bot.send("!echo up");
    assert_eq!(bot.reply().await, "up");
    // Five failed attempts: the steps grow to 20 ms * 2^5 = 640 ms.
    bot.refuse_connections(true).drop_connection();
    bot.wait_status("five failed attempts", |s| {
        s.actor(ActorKind::Transport, "memory")
            .is_some_and(|a| a.reconnects >= 6)
    })
    .await;
    bot.refuse_connections(false);
    bot.send("!echo back");
    assert_eq!(bot.reply().await, "back");
    // Stay up past the stable period, then drop once more.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reconnects = |s: &opsbot::health::Snapshot| {
        s.healing_log
            .iter()
            .filter(|e| e.action == "reconnect")
            .count()
    };
    let before = reconnects(&bot.status());
    bot.drop_connection();
    let s = bot
        .wait_status("the next drop", |s| reconnects(s) > before)
        .await;
    let last = &s
        .healing_log
        .iter()
        .rev()
        .find(|e| e.action == "reconnect")
        .unwrap()
        .detail;
    // The first step is at most 20 ms; without the reset it would be at least 10% of 1.28 s.
    assert!(next_attempt_in(last) <= Duration::from_millis(20), "{last}");
}

/// A user ignored for overspending the command budget is heard again after `ignore_for`.
#[tokio::test]
async fn an_ignored_user_is_heard_again_after_the_ignore_period() {
    let mut bot = TestBot::new().with(Echo).configure(|o| {
        o.budget = opsbot::options::Budget {
            per_minute: 60,
            ignore_for: Duration::from_secs(1),
        };
    });
    for i in 0..61 {
        bot.send(&format!("!echo {i}"));
    }
    let mut replies = bot.replies(61).await;
    replies.sort();
    assert!(
        replies.contains(&"tester: too many commands; ignoring you for 1s".to_owned()),
        "{replies:?}"
    );
    bot.send("!echo ignored");
    bot.send_as("other", "#test", "!echo sync");
    assert_eq!(bot.reply().await, "sync");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bot.send("!echo heard again");
    assert_eq!(bot.reply().await, "heard again");
}

/// The cut takes the last line of its destination's queue: it must still go out after the
/// reconnect (the destination has to be put back in the outbox's rotation).
#[tokio::test]
async fn the_last_line_cut_mid_delivery_is_sent_after_the_reconnect() {
    let mut bot = TestBot::new().with(Count).with(Echo);
    bot.send("!echo up");
    assert_eq!(bot.reply().await, "up");
    bot.cut_mid_delivery();
    bot.send("!count 1");
    assert_eq!(bot.reply().await, "line 1");
    let s = bot
        .wait_status("one reconnect", |s| {
            s.actor(ActorKind::Transport, "memory")
                .is_some_and(|a| a.reconnects == 1)
        })
        .await;
    assert_eq!(s.outbox.queued, 0);
}
