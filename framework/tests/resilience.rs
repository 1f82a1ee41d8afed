//! Connections that drop, bots that fail, and the bots beside them that must not notice.

use std::time::Duration;

use opsbot::health::{ActorKind, BotHealth, ConnState};
use opsbot::prelude::*;
use opsbot::testkit::{Echo, TestBot};
use opsbot::transport::Limits;
use opsbot::transport::memory::{self, Said};
use opsbot::{Bot, Shutdown};

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
    assert_eq!(down.health, BotHealth::Critical);
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

/// Blocks its bot's whole thread (a handler that should have been declared blocking) and
/// panics afterwards.
#[derive(Clone)]
struct Hog;

impl Handler for Hog {
    const NAME: &'static str = "hog";
    const COMMANDS: &'static [Command] = &[Command::new("hog", "", "Misbehave.")];

    async fn command(&mut self, _cx: &mut Context, _call: Call) -> Result {
        std::thread::sleep(Duration::from_secs(2));
        panic!("hog gave up");
    }
}

#[test]
fn one_failing_bot_leaves_the_other_answering() {
    let (t_bad, bad) = memory::pair("memory", "bad", Limits::unlimited(400));
    let (t_good, mut good) = memory::pair("memory", "good", Limits::unlimited(400));
    let fast = |o: &mut opsbot::BotOptions| {
        o.reconnect.initial = Duration::from_millis(10);
        o.reconnect.max = Duration::from_millis(50);
        o.reconnect.refused_min = Duration::from_millis(10);
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
        tokio::time::sleep(Duration::from_millis(100)).await;
        bad.refuse(true);
        bad.drop_connection("network unreachable");
        for i in 0..5 {
            assert!(good.send(from("b", &format!("!echo {i}"))));
            let said: Said = tokio::time::timeout(Duration::from_secs(5), good.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(said.text, i.to_string());
        }
        assert_eq!(good_health.snapshot().health, BotHealth::Healthy);
        // Once the hog lets go, the bad bot's troubles show in its own health only.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let bad_status = loop {
            let s = bad_health.snapshot();
            let hog_restarted = s
                .actor(ActorKind::Handler, "hog")
                .is_some_and(|a| a.restarts > 0);
            if s.health == BotHealth::Critical && hog_restarted {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
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
    });
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}
