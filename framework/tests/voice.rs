//! A bot's voice: code outside the bot's handlers says things through its outbox while the bot
//! runs, from any thread, and is told when the bot is not running.

use std::time::Duration;

use opsbot::message::Destination;
use opsbot::transport::Limits;
use opsbot::transport::memory;
use opsbot::{Bot, Shutdown};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_voice_speaks_while_the_bot_runs_and_is_refused_after() {
    let (transport, mut remote) = memory::pair("memory", "ops", Limits::unlimited(400));
    let bot = Bot::builder("ops")
        .transport(transport)
        .configure(|o| o.shutdown_deadline = Duration::from_secs(2))
        .build()
        .unwrap();
    let voice = bot.voice();
    assert!(
        !voice.say(Destination::room("#ops"), "too early"),
        "not running yet"
    );
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bot], s, false));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !voice.is_running() {
        assert!(std::time::Instant::now() < deadline, "the bot never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From another thread than the bot's.
    let v = voice.clone();
    std::thread::spawn(move || assert!(v.say(Destination::room("#ops"), "alert: disk full")))
        .join()
        .unwrap();
    let said = tokio::time::timeout(Duration::from_secs(20), remote.recv())
        .await
        .expect("the line arrives")
        .expect("the remote is open");
    assert_eq!(said.text, "alert: disk full");
    assert_eq!(said.dest, Destination::room("#ops"));
    shutdown.trigger();
    runner.join().unwrap().unwrap();
    assert!(!voice.say(Destination::room("#ops"), "too late"), "stopped");
    assert!(!voice.is_running());
}

/// A receipt learns the id the service gave a message's first line, also when the line came
/// back from a dropped connection and was written after the reconnect; a line that is never
/// written says so, and a transport without ids answers none.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_receipt_names_the_first_line_written() {
    let (transport, mut remote) = memory::pair("memory", "ops", Limits::unlimited(20));
    let bot = Bot::builder("ops")
        .transport(transport.with_ids())
        .configure(|o| o.shutdown_deadline = Duration::from_secs(2))
        .build()
        .unwrap();
    let voice = bot.voice();
    let health = bot.health();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bot], s, false));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !voice.is_running() {
        assert!(std::time::Instant::now() < deadline, "the bot never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let within = Duration::from_secs(20);

    let posted = voice
        .post(Destination::room("#ops"), "hello")
        .expect("running");
    assert_eq!(next(&mut remote).await.text, "hello");
    let id = tokio::time::timeout(within, posted.written())
        .await
        .unwrap();
    assert_eq!(id.unwrap().as_deref(), Some("m1"));

    // Split in two lines: the message's id is its first line's.
    let posted = voice
        .post(Destination::room("#ops"), "first line\nsecond line")
        .expect("running");
    assert_eq!(next(&mut remote).await.text, "first line");
    assert_eq!(next(&mut remote).await.text, "second line");
    let id = tokio::time::timeout(within, posted.written())
        .await
        .unwrap();
    assert_eq!(id.unwrap().as_deref(), Some("m2"));

    // The connection drops as the line is handed over: it is written after the reconnect,
    // and only then is its receipt answered.
    remote.cut_mid_delivery();
    let posted = voice
        .post(Destination::room("#ops"), "after a cut")
        .expect("running");
    assert_eq!(next(&mut remote).await.text, "after a cut");
    let id = tokio::time::timeout(within, posted.written())
        .await
        .unwrap();
    assert_eq!(id.unwrap().as_deref(), Some("m4"));
    let transport = health.snapshot();
    let transport = transport
        .actor(opsbot::health::ActorKind::Transport, "memory")
        .unwrap();
    assert_eq!(transport.reconnects, 1, "the line was cut once");

    // An impossible destination: never written.
    let posted = voice
        .post(Destination::room("#o ps"), "lost")
        .expect("running");
    let r = tokio::time::timeout(within, posted.written())
        .await
        .unwrap();
    assert_eq!(r, Err(opsbot::bot::NotWritten));

    shutdown.trigger();
    runner.join().unwrap().unwrap();
    assert!(voice.post(Destination::room("#ops"), "too late").is_none());
}

/// Where the transport has no message ids (IRC, XMPP, the console), a receipt answers that
/// the line was written, without an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn without_ids_a_receipt_says_written() {
    let (transport, mut remote) = memory::pair("memory", "ops", Limits::unlimited(400));
    let bot = Bot::builder("ops").transport(transport).build().unwrap();
    let voice = bot.voice();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bot], s, false));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !voice.is_running() {
        assert!(std::time::Instant::now() < deadline, "the bot never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let posted = voice.post(Destination::room("#ops"), "hi").unwrap();
    let said = tokio::time::timeout(Duration::from_secs(20), remote.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(said.text, "hi");
    let r = tokio::time::timeout(Duration::from_secs(20), posted.written())
        .await
        .unwrap();
    assert_eq!(r, Ok(None));
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}

async fn next(remote: &mut memory::Remote) -> memory::Said {
    tokio::time::timeout(Duration::from_secs(20), remote.recv())
        .await
        .expect("a line arrives")
        .expect("the remote is open")
}
