//! A panic in the framework's own actors (not in a handler: those are restarted) never leaves a
//! deaf bot: the bot is stopped and marked failed, says so in its health and healing log, and
//! `run_until` answers an error naming it, so that the process exits non-zero and a service
//! manager restarts it. Faults are injected with the test-only `fault-injection` feature.
//! See: issue "2d of 6".

use std::time::{Duration, Instant};

use opsbot::health::{BotHealth, Health};
use opsbot::prelude::*;
use opsbot::supervisor::fault::{self, Point};
use opsbot::testkit::Echo;
use opsbot::transport::Limits;
use opsbot::transport::memory::{self, Remote};
use opsbot::{Bot, Shutdown};

/// A poller with nothing to say, so that a bot has a poller host.
struct Quiet;

impl Poller for Quiet {
    const NAME: &'static str = "quiet";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        Ok(Vec::new())
    }
}

struct Running {
    remote: Remote,
    health: Health,
    shutdown: Shutdown,
    runner: std::thread::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts a bot named `name` (with echo and a poller) after arming `point`.
fn start(name: &str, point: Option<Point>) -> Running {
    if let Some(p) = point {
        fault::arm(name, p);
    }
    let dir = tempfile::tempdir().unwrap();
    let (transport, remote) = memory::pair("memory", name, Limits::unlimited(400));
    let bot = Bot::builder(name)
        .transport(transport)
        .handler(Echo)
        .poller(
            PollerOptions {
                every: Duration::from_millis(50),
                post_to: vec![Destination::room("#ops")],
                ..PollerOptions::default()
            },
            || Quiet,
        )
        .configure(|o| {
            o.state_path = Some(dir.path().join("state.redb"));
            o.shutdown_deadline = Duration::from_secs(2);
        })
        .build()
        .unwrap();
    let health = bot.health();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bot], s, false));
    Running {
        remote,
        health,
        shutdown,
        runner,
        _dir: dir,
    }
}

fn say(text: &str) -> Incoming {
    Incoming::in_room("#ops", Sender::new("b"), text)
}

/// What the user saw until the bot went away; fails if it is still there after 20 s.
async fn until_gone(remote: &mut Remote) -> Vec<String> {
    let mut said = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), remote.recv()).await {
            Ok(Some(s)) => said.push(s.text),
            Ok(None) => return said,
            Err(_) => panic!("the bot is still there, deaf, after 20 s (said {said:?})"),
        }
    }
}

/// Waits (bounded) for the runner to finish and returns its error text.
fn failure_of(r: Running) -> (String, Health) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !r.runner.is_finished() {
        assert!(
            Instant::now() < deadline,
            "run_until did not return after the bot failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = r.runner.join().unwrap().unwrap_err();
    drop(r.shutdown);
    (err.to_string(), r.health)
}

/// The operator's view: the error `run_until` returns (and `main` prints before exiting
/// non-zero), the health, and the healing log.
fn assert_failed(err: &str, health: &Health, bot: &str, what: &str) {
    let prefix = format!("bot {bot} failed: {what} panicked at framework/src/");
    assert!(
        err.starts_with(&prefix),
        "{err:?} should start with {prefix:?}"
    );
    assert!(!err.contains("injected fault"), "panic text leaked: {err}");
    let s = health.snapshot();
    assert_eq!(s.health, BotHealth::Failed);
    let reason = s.failed.clone().unwrap();
    assert!(err.ends_with(&reason), "{err} vs {reason}");
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.subsystem == "bot" && e.action == "failed" && e.detail.starts_with(&reason)),
        "{:?}",
        s.healing_log
    );
}

#[tokio::test]
async fn a_router_panic_stops_the_bot_and_fails_the_run() {
    let mut r = start("fault-router", Some(Point::Router));
    assert!(r.remote.send(say("!echo hi")));
    let said = until_gone(&mut r.remote).await;
    assert!(said.is_empty(), "{said:?}");
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-router", "router");
}

#[tokio::test]
async fn an_outbox_panic_stops_the_bot_and_fails_the_run() {
    let mut r = start("fault-outbox", Some(Point::Outbox));
    assert!(r.remote.send(say("!echo hi")));
    let said = until_gone(&mut r.remote).await;
    assert!(said.is_empty(), "{said:?}");
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-outbox", "outbox");
}

#[tokio::test]
async fn a_handler_host_panic_is_told_to_the_user_then_fails_the_run() {
    let mut r = start("fault-host", Some(Point::HandlerHost));
    assert!(r.remote.send(say("!echo hi")));
    // The router and the outbox still work: the user learns that the command is gone.
    let said = until_gone(&mut r.remote).await;
    assert_eq!(said, ["b: !echo is unavailable right now"]);
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-host", "host of handler echo");
}

#[tokio::test]
async fn a_poller_host_panic_stops_the_bot_and_fails_the_run() {
    let mut r = start("fault-poller", Some(Point::PollerHost));
    let said = until_gone(&mut r.remote).await;
    assert!(said.is_empty(), "{said:?}");
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-poller", "host of poller quiet");
}

#[tokio::test]
async fn a_transport_host_panic_stops_the_bot_and_fails_the_run() {
    let mut r = start("fault-transport", Some(Point::TransportHost));
    let said = until_gone(&mut r.remote).await;
    assert!(said.is_empty(), "{said:?}");
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-transport", "transport host");
}

#[tokio::test]
async fn a_bot_task_panic_fails_the_run() {
    let mut r = start("fault-task", Some(Point::BotTask));
    let said = until_gone(&mut r.remote).await;
    assert!(said.is_empty(), "{said:?}");
    let (err, health) = failure_of(r);
    assert_failed(&err, &health, "fault-task", "bot task");
}

/// One bot's failure stops that bot only; the run's error comes when the others have stopped
/// too, and names only the failed one.
#[tokio::test]
async fn a_failed_bot_leaves_its_neighbour_answering() {
    let (t_bad, bad) = memory::pair("memory", "bad", Limits::unlimited(400));
    let (t_good, mut good) = memory::pair("memory", "good", Limits::unlimited(400));
    fault::arm("fault-bad", Point::Router);
    let bad_bot = Bot::builder("fault-bad")
        .transport(t_bad)
        .handler(Echo)
        .build()
        .unwrap();
    let good_bot = Bot::builder("fault-good")
        .transport(t_good)
        .handler(Echo)
        .build()
        .unwrap();
    let bad_health = bad_bot.health();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bad_bot, good_bot], s, false));
    assert!(bad.send(say("!echo hi")));
    let deadline = Instant::now() + Duration::from_secs(20);
    while bad_health.snapshot().health != BotHealth::Failed {
        assert!(Instant::now() < deadline, "the bad bot never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(good.send(say("!echo still here")));
    let said = tokio::time::timeout(Duration::from_secs(5), good.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(said.text, "still here");
    assert!(!runner.is_finished());
    shutdown.trigger();
    let err = tokio::task::spawn_blocking(move || runner.join().unwrap())
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("bot fault-bad failed: router panicked at "),
        "{err}"
    );
    assert!(!err.contains("fault-good"), "{err}");
}
