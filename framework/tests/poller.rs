//! Pollers post only what is new, also across a restart of the bot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsbot::health::{ActorKind, ActorState};
use opsbot::prelude::*;
use opsbot::store::Store;
use opsbot::testkit::TestBot;

/// A source whose items the test controls.
#[derive(Clone, Default)]
struct Source(Arc<Mutex<Vec<Item>>>);

impl Source {
    /// Replaces every item at once (a poll never sees a half-made list).
    fn set(&self, ids: &[&str]) {
        *self.0.lock().unwrap() = ids
            .iter()
            .map(|id| Item::new(*id, format!("new: {id}")))
            .collect();
    }

    fn push(&self, id: &str) {
        self.0
            .lock()
            .unwrap()
            .push(Item::new(id, format!("new: {id}")));
    }
}

struct Feed {
    source: Source,
}

impl Poller for Feed {
    const NAME: &'static str = "feed";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let items = self.source.0.lock().unwrap().clone();
        if items.iter().any(|i| i.id == "explode") {
            panic!("feed parser crashed");
        }
        if items.iter().any(|i| i.id == "fail") {
            return Err(Error::user("upstream answered 503"));
        }
        Ok(items)
    }
}

/// Waits until `f` holds, or fails the test after 20 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn opts() -> PollerOptions {
    PollerOptions {
        every: Duration::from_millis(30),
        post_to: vec![Destination::room("#feed")],
        ..PollerOptions::default()
    }
}

fn feed_bot(store: &Store, source: &Source) -> TestBot {
    let source = source.clone();
    TestBot::new()
        .store(store.clone())
        .poller(opts(), move || Feed {
            source: source.clone(),
        })
}

#[tokio::test]
async fn posts_only_new_items_and_nothing_old_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let source = Source::default();
    source.push("a");
    source.push("b");

    let store = Store::open(&path).unwrap();
    let mut bot = feed_bot(&store, &source);
    bot.start();
    // The first poll primes the index: wait until it has, then add an item.
    eventually("the first poll primes", || {
        (store.seen_count("test/feed").unwrap() >= 2).then_some(())
    })
    .await;
    source.push("c");
    let s = bot.said().await;
    assert_eq!(
        (s.dest, s.text.as_str()),
        (Destination::room("#feed"), "new: c")
    );
    assert!(
        bot.shutdown().await.is_empty(),
        "a, b and c are never posted again"
    );
    drop(store);

    // A new bot on the same file: old items stay quiet, only d is new.
    source.push("d");
    let store = Store::open(&path).unwrap();
    let mut bot = feed_bot(&store, &source);
    assert_eq!(bot.reply().await, "new: d");
    source.push("e");
    assert_eq!(bot.reply().await, "new: e");
    let status = bot.status();
    let feed = status.actor(ActorKind::Poller, "feed").unwrap();
    assert!(feed.last_run.is_some() && feed.handled >= 2);
}

#[tokio::test]
async fn a_failing_poll_is_shown_and_a_panicking_poller_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    let source = Source::default();
    source.push("fail");
    // Enough restarts that a slow test thread cannot use up the budget while the source
    // still explodes.
    let mut bot = feed_bot(&store, &source).configure(|o| o.restart.max_restarts = 1_000);
    bot.start();
    let err = eventually("the failure shows", || {
        let a = bot.status().actor(ActorKind::Poller, "feed").cloned()?;
        a.last_error.map(|(_, e)| e)
    })
    .await;
    assert!(err.contains("503"), "{err}");

    source.set(&["explode"]);
    let restarted = eventually("a restart", || {
        let a = bot.status().actor(ActorKind::Poller, "feed").cloned()?;
        (a.restarts > 0).then_some(a)
    })
    .await;
    // The panic's message may carry anything (a secret included): status shows where the
    // poller panicked, never what it said.
    let last = restarted.last_error.unwrap().1;
    assert!(
        last.starts_with("panicked at framework/tests/poller.rs:"),
        "{last}"
    );
    assert!(!last.contains("feed parser crashed"), "{last}");

    // Once the source is sane again the fresh instance polls normally and posts new items.
    source.set(&["x"]);
    eventually("a sane poll primes the index", || {
        (store.seen_count("test/feed").unwrap() > 0).then_some(())
    })
    .await;
    source.push("y");
    assert_eq!(bot.reply().await, "new: y");
    assert_eq!(
        bot.status().actor(ActorKind::Poller, "feed").unwrap().state,
        ActorState::Running
    );
}

#[tokio::test]
async fn a_poll_that_times_out_is_recorded_and_retried_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    let source = Source::default();
    source.push("hang");
    let s = source.clone();
    let mut bot = TestBot::new().store(store.clone()).poller(
        PollerOptions {
            timeout: Duration::from_millis(100),
            ..opts()
        },
        move || Hanging { source: s.clone() },
    );
    bot.start();
    let err = eventually("the timeout shows", || {
        let a = bot.status().actor(ActorKind::Poller, "hanging").cloned()?;
        a.last_error.map(|(_, e)| e)
    })
    .await;
    assert_eq!(err, "poll timed out after 100ms");
    // Retried at the next ticks, by the same instance: no restart.
    let a = eventually("a second timed-out poll", || {
        let a = bot.status().actor(ActorKind::Poller, "hanging").cloned()?;
        (a.last_run.is_some() && a.handled == 0 && a.state == ActorState::Running).then_some(a)
    })
    .await;
    assert_eq!(a.restarts, 0);
    // Once the source answers, the poller primes its index and then posts what is new.
    source.set(&["a"]);
    eventually("a sane poll primes the index", || {
        (store.seen_count("test/hanging").unwrap() > 0).then_some(())
    })
    .await;
    source.push("b");
    assert_eq!(bot.reply().await, "new: b");
    let a = bot
        .status()
        .actor(ActorKind::Poller, "hanging")
        .cloned()
        .unwrap();
    assert_eq!((a.restarts, a.state), (0, ActorState::Running));
}

/// Hangs while its source has an item `hang`.
struct Hanging {
    source: Source,
}

impl Poller for Hanging {
    const NAME: &'static str = "hanging";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let items = self.source.0.lock().unwrap().clone();
        if items.iter().any(|i| i.id == "hang") {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(items)
    }
}

/// A source that refuses every poll, behind a breaker that two failures open for an hour.
struct Down {
    site: opsbot::breaker::Breaker,
    polls: Arc<Mutex<u32>>,
}

impl Poller for Down {
    const NAME: &'static str = "down";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let permit = self.site.check()?;
        *self.polls.lock().unwrap() += 1;
        permit.failure("connection refused");
        Err(Error::user("tickets.example: connection refused"))
    }

    fn breakers(&self) -> Vec<opsbot::breaker::Breaker> {
        vec![self.site.clone()]
    }
}

#[tokio::test]
async fn a_poller_behind_an_open_breaker_skips_its_ticks() {
    use opsbot::breaker::{Breaker, BreakerPolicy, BreakerState};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    let site = Breaker::new(
        "tickets.example",
        BreakerPolicy {
            failures: 2,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(3600),
        },
    );
    let polls = Arc::new(Mutex::new(0));
    let (s, p) = (site.clone(), polls.clone());
    let opts = PollerOptions {
        every: Duration::from_millis(20),
        post_to: vec![Destination::room("#ops")],
        ..PollerOptions::default()
    };
    let mut bot = TestBot::new().store(store).poller(opts, move || Down {
        site: s.clone(),
        polls: p.clone(),
    });
    bot.start();
    let skipped = eventually("a skipped tick", || {
        let a = bot.status().actor(ActorKind::Poller, "down").cloned()?;
        a.detail.filter(|d| d.starts_with("tick skipped"))
    })
    .await;
    assert!(
        skipped.contains("tickets.example is unreachable"),
        "{skipped}"
    );
    // Two polls reached the source; the skipped ticks neither asked it nor count as failures.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*polls.lock().unwrap(), 2);
    let s = bot.status();
    let a = s.actor(ActorKind::Poller, "down").unwrap();
    assert_eq!(a.state, ActorState::Running);
    assert_eq!(a.restarts, 0);
    assert!(matches!(s.breakers[0].state, BreakerState::Open { .. }));
    assert!(s.healing_log.iter().any(|e| e.action == "breaker open"));
}
