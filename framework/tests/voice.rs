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
