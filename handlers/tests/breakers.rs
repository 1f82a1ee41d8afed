//! Circuit breakers as a handler author and a user meet them: a dependency that keeps failing
//! opens its breaker, the command then answers at once with when it will be tried again,
//! `!status` and the healing log show it, and the bot counts as degraded until it closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use opsbot::breaker::{BreakerPolicy, BreakerState};
use opsbot::health::BotHealth;
use opsbot::prelude::*;
use opsbot::testkit::TestBot;

/// `!fetch`: asks a dependency that fails while `down` is set; counts the calls it made.
#[derive(Clone)]
struct Fetch {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Handler for Fetch {
    const NAME: &'static str = "fetch";
    const COMMANDS: &'static [Command] = &[Command::new("fetch", "", "Ask the flaky site.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        let site = cx.breaker_with(
            "flaky.example",
            BreakerPolicy {
                failures: 3,
                window: Duration::from_secs(60),
                open_for: Duration::from_millis(300),
            },
        );
        let (down, calls) = (self.down.clone(), self.calls.clone());
        let body = site
            .call(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    Err(std::io::Error::other("connection refused"))
                } else {
                    Ok("fresh data")
                }
            })
            .await?;
        cx.reply(body);
        Ok(())
    }
}

/// What `!status` shows (the built-in handler's rendering).
fn opsbot_status(s: &opsbot::health::Snapshot) -> String {
    opsbot_handlers::status::render(s, std::time::SystemTime::now())
}

#[tokio::test]
async fn an_open_breaker_answers_at_once_shows_in_status_and_closes_after_a_good_trial() {
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let mut bot = TestBot::new().with(Fetch {
        down: down.clone(),
        calls: calls.clone(),
    });
    for _ in 0..3 {
        bot.send("!fetch");
        let r = bot.reply().await;
        assert!(r.contains("failed"), "{r}");
    }
    // Open: answered at once, the site not asked.
    let t = Instant::now();
    bot.send("!fetch");
    let r = bot.reply().await;
    assert!(
        r.contains("flaky.example is unreachable; next try at "),
        "{r}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let s = bot.status();
    assert_eq!(s.health, BotHealth::Degraded);
    let b = &s.breakers[0];
    assert!(matches!(b.state, BreakerState::Open { .. }));
    assert!(
        b.last_error
            .as_ref()
            .unwrap()
            .1
            .contains("connection refused")
    );
    assert!(
        s.healing_log.iter().any(|e| e.subsystem == "breaker"
            && e.action == "breaker open"
            && e.detail.contains("flaky.example: 3 failures in 60s")),
        "{:?}",
        s.healing_log
    );
    let shown = opsbot_status(&s);
    assert!(
        shown.contains("breaker flaky.example: open, next try in"),
        "{shown}"
    );

    // The site comes back; after open_for the trial succeeds and the breaker closes.
    down.store(false, Ordering::SeqCst);
    bot.wait_status("the breaker half-open or later", |s| {
        s.breakers.iter().all(|b| match b.state {
            BreakerState::Open { until } => until <= std::time::SystemTime::now(),
            _ => true,
        })
    })
    .await;
    bot.send("!fetch");
    let r = bot.reply().await;
    assert!(r.ends_with("fresh data"), "{r}");
    let s = bot.status();
    assert_eq!(s.breakers[0].state, BreakerState::Closed);
    assert_eq!(s.health, BotHealth::Healthy);
    assert!(
        s.healing_log.iter().any(|e| e.action == "breaker closed"),
        "{:?}",
        s.healing_log
    );
    // Each change of the bot's state is in the healing log too, with its cause.
    let changes: Vec<&str> = s
        .healing_log
        .iter()
        .filter(|e| e.subsystem == "health")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(
        changes,
        [
            "healthy → degraded (breaker:flaky.example open)",
            "degraded → recovering (breaker:flaky.example half-open)",
            "recovering → healthy"
        ]
    );
}

/// Two handlers that share one dependency's breaker, asked at the same moment while it is
/// half-open: one trial call goes through, the other caller is told at once. (Each handler
/// answers one message at a time, so only separate handlers make the calls concurrent.)
macro_rules! shared_site_handler {
    ($ty:ident, $name:literal) => {
        #[derive(Clone)]
        struct $ty {
            down: Arc<AtomicBool>,
            calls: Arc<AtomicU32>,
        }

        impl Handler for $ty {
            const NAME: &'static str = $name;
            const COMMANDS: &'static [Command] = &[Command::new($name, "", "Ask the shared site.")];

            async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
                let site = cx.breaker_with(
                    "shared.example",
                    BreakerPolicy {
                        failures: 1,
                        window: Duration::from_secs(60),
                        open_for: Duration::from_millis(200),
                    },
                );
                let (down, calls) = (self.down.clone(), self.calls.clone());
                let body = site
                    .call(async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        if down.load(Ordering::SeqCst) {
                            Err(std::io::Error::other("connection refused"))
                        } else {
                            Ok("fresh data")
                        }
                    })
                    .await?;
                cx.reply(body);
                Ok(())
            }
        }
    };
}

shared_site_handler!(SiteA, "a");
shared_site_handler!(SiteB, "b");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_breaker_lets_one_trial_through_to_concurrent_callers() {
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let mut bot = TestBot::new()
        .with(SiteA {
            down: down.clone(),
            calls: calls.clone(),
        })
        .with(SiteB {
            down: down.clone(),
            calls: calls.clone(),
        });
    bot.send("!a");
    assert!(bot.reply().await.contains("failed"));
    down.store(false, Ordering::SeqCst);
    bot.wait_status("the open period over", |s| {
        s.breakers.iter().all(|b| match b.state {
            BreakerState::Open { until } => until <= std::time::SystemTime::now(),
            _ => true,
        })
    })
    .await;
    bot.send("!a");
    bot.send("!b");
    let mut replies = bot.replies(2).await;
    replies.sort();
    assert!(replies[0].ends_with("fresh data"), "{replies:?}");
    assert!(
        replies[1].contains("shared.example is unreachable; next try at "),
        "{replies:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one failure, then one trial"
    );
}
