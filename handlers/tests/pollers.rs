//! The feed and HTTP JSON pollers against an HTTP server of the test's own on loopback: only
//! new items, nothing again after a restart, a burst capped, and a failing source behind its
//! breaker until it recovers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::Page;
use crate::support::http_server_heads;
use opsbot::breaker::BreakerState;
use opsbot::health::BotHealth;
use opsbot::prelude::*;
use opsbot::settings::BreakerSettings;
use opsbot::settings::FromSettings;
use opsbot::store::Store;
use opsbot::testkit::TestBot;
use opsbot_handlers::pollers::{Feed, FeedSettings, HttpJson, HttpJsonSettings};

type Live = Arc<Mutex<(u16, &'static str, Vec<u8>)>>;

fn atom(ids: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut ids: Vec<u32> = ids.into_iter().collect();
    ids.reverse(); // newest first, as feeds list them
    let entries: String = ids
        .iter()
        .map(|i| {
            format!(
                "<entry><id>urn:item:{i}</id><title>Incident {i} &amp; fix</title>\
                 <link href=\"https://status.example/{i}\"/><updated>2026-11-27T00:00:00Z</updated></entry>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><feed xmlns=\"http://www.w3.org/2005/Atom\">\
         <id>urn:feed</id><title>Status</title><updated>2026-11-27T00:00:00Z</updated>{entries}</feed>"
    )
    .into_bytes()
}

fn json(ids: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let issues: Vec<serde_json::Value> = ids
        .into_iter()
        .map(|i| serde_json::json!({"key": format!("OPS-{i}"), "fields": {"summary": format!("disk {i} full")}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "issues": issues })).unwrap()
}

fn opts() -> PollerOptions {
    PollerOptions {
        every: Duration::from_millis(100),
        post_to: vec![Destination::room("#ops")],
        ..PollerOptions::default()
    }
}

async fn served(first: (u16, &'static str, Vec<u8>)) -> (u16, Live) {
    let live: Live = Arc::new(Mutex::new(first));
    let (port, _) = crate::support::http_server(vec![("/src", Page::Live(live.clone()))]).await;
    (port, live)
}

fn feed(port: u16) -> Feed {
    Feed::from_settings(FeedSettings {
        url: format!("http://127.0.0.1:{port}/src"),
        max_chars: None,
        breaker: Some(BreakerSettings {
            failures: Some(5),
            window_secs: Some(60),
            open_secs: Some(1),
        }),
        allow: Vec::new(),
    })
    .unwrap()
}

/// Waits until the poller's first run (which primes its index) is over.
async fn primed(bot: &mut TestBot, name: &str) {
    bot.wait_status("the first poll", |s| {
        s.actor(opsbot::health::ActorKind::Poller, name)
            .is_some_and(|a| a.last_run.is_some() && a.next_run.is_some())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_posts_only_new_entries_also_after_a_restart_and_caps_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (port, live) = served((200, "application/atom+xml", atom(1..=3))).await;
    {
        let f = feed(port);
        let mut bot = TestBot::new()
            .store(Store::open(&path).unwrap())
            .poller(opts(), move || f.clone());
        bot.start();
        primed(&mut bot, "feed").await;
        live.lock().unwrap().2 = atom(1..=4);
        let said = bot.said().await;
        assert_eq!(said.text, "Incident 4 & fix <https://status.example/4>");
        assert_eq!(said.dest.name(), "#ops");
        bot.shutdown().await;
    }
    // A restart: entries 1-4 are known; 5 is new.
    live.lock().unwrap().2 = atom(1..=5);
    let f = feed(port);
    let mut bot = TestBot::new()
        .store(Store::open(&path).unwrap())
        .poller(opts(), move || f.clone());
    bot.start();
    let said = bot.said().await;
    assert_eq!(said.text, "Incident 5 & fix <https://status.example/5>");
    // 500 new at once: ten lines, then how many more.
    live.lock().unwrap().2 = atom(1..=505);
    let lines = bot.replies(11).await;
    assert!(lines[0].starts_with("Incident 6 & fix"), "{lines:?}");
    assert!(lines[9].starts_with("Incident 15 & fix"), "{lines:?}");
    assert_eq!(lines[10], "… and 490 more from feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_feed_opens_its_breaker_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (port, live) = served((200, "application/atom+xml", atom(1..=2))).await;
    let f = feed(port);
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("s.redb")).unwrap())
        .poller(opts(), move || f.clone());
    bot.start();
    primed(&mut bot, "feed").await;
    live.lock().unwrap().0 = 503;
    let s = bot
        .wait_status("the breaker open", |s| {
            s.breakers
                .iter()
                .any(|b| matches!(b.state, BreakerState::Open { .. }))
        })
        .await;
    assert_eq!(s.health, BotHealth::Degraded);
    let b = &s.breakers[0];
    assert_eq!(b.name, "127.0.0.1");
    assert!(
        b.last_error.as_ref().unwrap().1.contains("HTTP 503"),
        "{b:?}"
    );
    let shown = opsbot_handlers::status::render(&s, std::time::SystemTime::now());
    assert!(shown.contains("breaker 127.0.0.1: open"), "{shown}");
    // The source comes back with a new entry: the trial succeeds, the breaker closes, the
    // entry is posted.
    {
        let mut l = live.lock().unwrap();
        l.0 = 200;
        l.2 = atom(1..=3);
    }
    let said = bot.said().await;
    assert_eq!(said.text, "Incident 3 & fix <https://status.example/3>");
    let s = bot.status();
    assert_eq!(s.breakers[0].state, BreakerState::Closed);
    assert!(s.healing_log.iter().any(|e| e.action == "breaker open"));
    assert!(s.healing_log.iter().any(|e| e.action == "breaker closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_json_source_posts_new_items_through_its_template() {
    let dir = tempfile::tempdir().unwrap();
    let (port, live) = served((200, "application/json", json(1..=2))).await;
    let token = "Bearer test-token";
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        "Authorization".to_owned(),
        opsbot::config::Secret::new(token),
    );
    let p = HttpJson::from_settings(HttpJsonSettings {
        url: format!("http://127.0.0.1:{port}/src"),
        headers,
        items: "/issues".into(),
        id: "key".into(),
        template: "{key}: {fields.summary}".into(),
        max_chars: None,
        breaker: None,
        allow: Vec::new(),
    })
    .unwrap();
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("s.redb")).unwrap())
        .poller(opts(), move || p.clone());
    bot.start();
    primed(&mut bot, "http_json").await;
    live.lock().unwrap().2 = json(1..=3);
    assert_eq!(bot.said().await.text, "OPS-3: disk 3 full");
    // An answer without the list is an error shown in status, not a crash.
    live.lock().unwrap().2 = br#"{"error": "maintenance"}"#.to_vec();
    let s = bot
        .wait_status("the error shown", |s| {
            s.actor(opsbot::health::ActorKind::Poller, "http_json")
                .and_then(|a| a.last_error.clone())
                .is_some_and(|(_, e)| e.contains("no list at `/issues`"))
        })
        .await;
    let a = s
        .actor(opsbot::health::ActorKind::Poller, "http_json")
        .unwrap();
    assert_eq!(a.restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_json_source_that_fails_opens_its_breaker_then_recovers_after_a_restart_and_a_burst()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (port, live) = served((200, "application/json", json(1..=2))).await;
    let make = move || {
        HttpJson::from_settings(HttpJsonSettings {
            url: format!("http://127.0.0.1:{port}/src"),
            headers: Default::default(),
            items: "/issues".into(),
            id: "key".into(),
            template: "{key}: {fields.summary}".into(),
            max_chars: None,
            breaker: Some(BreakerSettings {
                failures: Some(3),
                window_secs: Some(60),
                open_secs: Some(1),
            }),
            allow: Vec::new(),
        })
        .unwrap()
    };
    {
        let p = make();
        let mut bot = TestBot::new()
            .store(Store::open(&path).unwrap())
            .poller(opts(), move || p.clone());
        bot.start();
        primed(&mut bot, "http_json").await;
        live.lock().unwrap().0 = 500;
        bot.wait_status("the breaker open", |s| {
            s.breakers
                .iter()
                .any(|b| matches!(b.state, BreakerState::Open { .. }))
        })
        .await;
        bot.shutdown().await;
    }
    // Back, after a restart, with 300 new items at once: ten, then the rest counted.
    {
        let mut l = live.lock().unwrap();
        l.0 = 200;
        l.2 = json(1..=302);
    }
    let p = make();
    let mut bot = TestBot::new()
        .store(Store::open(&path).unwrap())
        .poller(opts(), move || p.clone());
    bot.start();
    let lines = bot.replies(11).await;
    assert_eq!(lines[0], "OPS-3: disk 3 full");
    assert_eq!(lines[10], "… and 290 more from http_json");
    assert_eq!(bot.status().breakers[0].state, BreakerState::Closed);
}

/// A source that nests its answer deeply, through the pollers' real parsers: a feed entry whose
/// content nests 60,000 levels (the XML reader's own bound is 65,535; feed-rs reads it without
/// recursion) is posted like any other, and 100,000 levels is an error; a JSON list of lists
/// 100,000 levels deep is an error (serde_json stops at 128). No restart, no crash, and the
/// sources work again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_nested_100000_levels_deep_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let deep_feed = |levels: usize, ids: std::ops::RangeInclusive<u32>| {
        let last = *ids.end();
        let f = String::from_utf8(atom(ids)).unwrap();
        let nest = format!(
            "<content type=\"xhtml\"><div xmlns=\"http://www.w3.org/1999/xhtml\">{}{}</div></content>",
            "<b>".repeat(levels),
            "</b>".repeat(levels)
        );
        f.replacen(
            &format!("<title>Incident {last}"),
            &format!("{nest}<title>Incident {last}"),
            1,
        )
        .into_bytes()
    };
    let deep_json = format!(
        "{{\"issues\": [{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    )
    .into_bytes();
    let (feed_port, live_feed) = served((200, "application/atom+xml", atom(1..=1))).await;
    let (json_port, live_json) = served((200, "application/json", json(1..=1))).await;
    let f = feed(feed_port);
    let j = HttpJson::from_settings(HttpJsonSettings {
        url: format!("http://127.0.0.1:{json_port}/src"),
        headers: Default::default(),
        items: "/issues".into(),
        id: "key".into(),
        template: "{key}: {fields.summary}".into(),
        max_chars: None,
        breaker: None,
        allow: Vec::new(),
    })
    .unwrap();
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("s.redb")).unwrap())
        .poller(opts(), move || f.clone())
        .poller(opts(), move || j.clone());
    bot.start();
    primed(&mut bot, "feed").await;
    primed(&mut bot, "http_json").await;
    live_feed.lock().unwrap().2 = deep_feed(60_000, 1..=2);
    assert_eq!(
        bot.said().await.text,
        "Incident 2 & fix <https://status.example/2>"
    );
    live_feed.lock().unwrap().2 = deep_feed(100_000, 1..=3);
    live_json.lock().unwrap().2 = deep_json;
    let s = bot
        .wait_status("both errors shown", |s| {
            let err = |name| {
                s.actor(opsbot::health::ActorKind::Poller, name)
                    .and_then(|a| a.last_error.clone())
                    .map(|(_, e)| e)
                    .unwrap_or_default()
            };
            err("feed").contains("deeper than the supported limit")
                && err("http_json").contains("recursion limit exceeded")
        })
        .await;
    for name in ["feed", "http_json"] {
        let a = s.actor(opsbot::health::ActorKind::Poller, name).unwrap();
        assert_eq!(a.restarts, 0, "{name}");
    }
    // Sources back to normal: the pollers post again.
    live_feed.lock().unwrap().2 = atom(1..=3);
    live_json.lock().unwrap().2 = json(1..=2);
    let mut said: Vec<String> = bot.replies(2).await;
    said.sort();
    assert_eq!(
        said,
        [
            "Incident 3 & fix <https://status.example/3>",
            "OPS-2: disk 2 full"
        ]
    );
}

/// A source that redirects its poller elsewhere: a hop on the configured host keeps the
/// configured headers; a hop to another host goes through the link guard (an internal target
/// is refused unless listed in `allow`, and nothing is sent to it) and gets none of the
/// configured headers. It used to follow up to ten redirects unchecked, sending `X-Api-Key` to
/// the second host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_guarded_and_configured_headers_stay_on_their_host() {
    let dir = tempfile::tempdir().unwrap();
    // The other host: `localhost` is another origin than 127.0.0.1, and internal.
    let (other, other_paths, other_heads) = http_server_heads(vec![(
        "/list",
        Page::Full(200, "application/json", json(1..=2)),
    )])
    .await;
    let (port, _, heads) = http_server_heads(vec![
        ("/old", Page::Redirect("/src".into())),
        ("/src", Page::Full(200, "application/json", json(1..=2))),
        (
            "/away",
            Page::Redirect(format!("http://localhost:{other}/list")),
        ),
    ])
    .await;
    let make = |path: &str, allow: Vec<String>| {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("X-Api-Key".to_owned(), opsbot::config::Secret::new("k3y"));
        HttpJson::from_settings(HttpJsonSettings {
            url: format!("http://127.0.0.1:{port}{path}"),
            headers,
            items: "/issues".into(),
            id: "key".into(),
            template: "{key}: {fields.summary}".into(),
            max_chars: None,
            breaker: None,
            allow,
        })
        .unwrap()
    };
    let err = |bot: &mut TestBot| {
        bot.status()
            .actor(opsbot::health::ActorKind::Poller, "http_json")
            .and_then(|a| a.last_error.clone())
            .map(|(_, e)| e)
            .unwrap_or_default()
    };

    // Same host: followed, with the header.
    let p = make("/old", Vec::new());
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("a.redb")).unwrap())
        .poller(opts(), move || p.clone());
    bot.start();
    primed(&mut bot, "http_json").await;
    assert_eq!(err(&mut bot), "");
    let h = heads.lock().unwrap().clone();
    assert!(
        h.iter().any(
            |h| h.starts_with("GET /src ") && h.to_ascii_lowercase().contains("x-api-key: k3y")
        ),
        "{h:?}"
    );
    bot.shutdown().await;

    // Another host, internal and not allowed: refused before any connection to it.
    let p = make("/away", Vec::new());
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("b.redb")).unwrap())
        .poller(opts(), move || p.clone());
    bot.start();
    let s = bot
        .wait_status("the refusal shown", |s| {
            s.actor(opsbot::health::ActorKind::Poller, "http_json")
                .and_then(|a| a.last_error.clone())
                .is_some_and(|(_, e)| e.contains("redirected to localhost, refused"))
        })
        .await;
    let e = s
        .actor(opsbot::health::ActorKind::Poller, "http_json")
        .and_then(|a| a.last_error.clone())
        .unwrap()
        .1;
    assert!(
        e.contains("list it in `allow`") && !e.contains("/list"),
        "{e}"
    );
    assert!(other_paths.lock().unwrap().is_empty());
    bot.shutdown().await;

    // Allowed: fetched, and without the configured header.
    let p = make("/away", vec!["localhost".into()]);
    let mut bot = TestBot::new()
        .store(Store::open(&dir.path().join("c.redb")).unwrap())
        .poller(opts(), move || p.clone());
    bot.start();
    primed(&mut bot, "http_json").await;
    assert_eq!(err(&mut bot), "");
    let h = other_heads.lock().unwrap().clone();
    assert!(!h.is_empty());
    assert!(
        h.iter().all(|h| !h.to_ascii_lowercase().contains("k3y")),
        "the header went to the other host: {h:?}"
    );
}
