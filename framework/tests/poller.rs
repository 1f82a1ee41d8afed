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
    while store.seen_count("test/feed").unwrap() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let mut bot = feed_bot(&store, &source);
    bot.start();
    let err = loop {
        if let Some(a) = bot.status().actor(ActorKind::Poller, "feed")
            && let Some((_, e)) = &a.last_error
        {
            break e.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(err.contains("503"), "{err}");

    source.0.lock().unwrap().clear();
    source.push("explode");
    let restarted = loop {
        let a = bot
            .status()
            .actor(ActorKind::Poller, "feed")
            .cloned()
            .unwrap();
        if a.restarts > 0 {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        restarted
            .last_error
            .unwrap()
            .1
            .contains("feed parser crashed")
    );

    // Once the source is sane again the fresh instance polls normally and posts new items.
    source.0.lock().unwrap().clear();
    while store.seen_count("test/feed").unwrap() == 0 {
        source.0.lock().unwrap().retain(|i| i.id != "explode");
        source.push("x");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    source.push("y");
    assert_eq!(bot.reply().await, "new: y");
    assert_eq!(
        bot.status().actor(ActorKind::Poller, "feed").unwrap().state,
        ActorState::Running
    );
}
