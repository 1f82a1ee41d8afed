//! systemd's notify protocol, against a notify socket of the test's own: READY=1 once the bots
//! started, WATCHDOG=1 while their threads answer and none while one is wedged, STOPPING=1 at
//! shutdown.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use opsbot::message::{Incoming, Sender};
use opsbot::prelude::*;
use opsbot::systemd::Notify;
use opsbot::transport::{Limits, memory};
use opsbot::{Bot, Shutdown};

/// `!wedge`: blocks its bot's thread for two seconds, as a handler that calls blocking code
/// without declaring itself BLOCKING would.
#[derive(Clone)]
struct Wedge;

impl Handler for Wedge {
    const NAME: &'static str = "wedge";
    const COMMANDS: &'static [Command] = &[Command::new("wedge", "", "Block the thread.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        std::thread::sleep(Duration::from_secs(2));
        cx.reply("unwedged");
        Ok(())
    }
}

/// The next state line within `within`, with when it came.
fn next(sock: &UnixDatagram, within: Duration) -> Option<(Instant, String)> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            return Some((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    None
}

#[test]
fn ready_then_watchdog_pings_only_while_the_bot_thread_answers_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (transport, remote) = memory::pair("memory", "bot", Limits::unlimited(400));
    let bot = Bot::builder("b")
        .transport(transport)
        .handler(Wedge)
        .build()
        .unwrap();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let notify = Notify {
        socket: path,
        watchdog: Some(Duration::from_millis(400)),
    };
    let runner = std::thread::spawn(move || opsbot::run_with(vec![bot], s, false, Some(notify)));

    let (_, first) = next(&sock, Duration::from_secs(10)).expect("a first state line");
    assert_eq!(first, "READY=1");
    // Pings every 200 ms (half the period) while the thread answers.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some((_, l)) = next(&sock, Duration::from_millis(100)) {
            assert_eq!(l, "WATCHDOG=1");
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} pings in 1.5 s");

    // Wedge the bot's thread for 2 s: the pings stop, then come back.
    assert!(remote.send(Incoming::in_room("#ops", Sender::new("u"), "!wedge")));
    let wedged_at = Instant::now();
    let mut times = Vec::new();
    while wedged_at.elapsed() < Duration::from_secs(4) {
        if let Some((at, l)) = next(&sock, Duration::from_millis(100)) {
            assert_eq!(l, "WATCHDOG=1");
            times.push(at);
        }
    }
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(times.first().map(|t| *t - wedged_at))
        .max()
        .unwrap_or_default();
    assert!(
        longest >= Duration::from_millis(1200),
        "longest gap {longest:?}: {times:?}"
    );
    assert!(
        times
            .last()
            .is_some_and(|t| *t - wedged_at > Duration::from_secs(2)),
        "the pings never came back: {times:?}"
    );

    shutdown.trigger();
    let mut saw_stopping = false;
    while let Some((_, l)) = next(&sock, Duration::from_secs(5)) {
        if l == "STOPPING=1" {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping);
    runner.join().unwrap().unwrap();
}
