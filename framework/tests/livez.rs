//! `/livez` says what it claims: 503 while a bot's thread is wedged (and 200 again once it
//! answers), 503 once a bot's own machinery has failed; `/readyz` follows the transport.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use opsbot::config::HttpConfig;
use opsbot::health::BotHealth;
use opsbot::message::{Incoming, Sender};
use opsbot::prelude::*;
use opsbot::supervisor::fault::{self, Point};
use opsbot::transport::{Limits, memory};
use opsbot::{Bot, RunOptions, Shutdown};

/// `!wedge`: blocks its bot's thread for 12 s (past the 10 s liveness bound), as a handler
/// that calls blocking code without declaring itself BLOCKING would.
#[derive(Clone)]
struct Wedge;

impl Handler for Wedge {
    const NAME: &'static str = "wedge";
    const COMMANDS: &'static [Command] = &[Command::new("wedge", "", "Block the thread.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        std::thread::sleep(Duration::from_secs(12));
        cx.reply("unwedged");
        Ok(())
    }
}

#[derive(Clone)]
struct Echo;

impl Handler for Echo {
    const NAME: &'static str = "echo";
    const COMMANDS: &'static [Command] = &[Command::new("echo", "<text>", "Echo.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        cx.reply(call.rest().to_owned());
        Ok(())
    }
}

/// `GET path`: status and body (empty status 0 when nothing listens yet).
fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

fn wait_for(what: &str, within: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn livez_fails_while_a_bot_thread_is_wedged_and_once_a_bot_has_failed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (t_wedgy, wedgy) = memory::pair("memory", "wedgy", Limits::unlimited(400));
    let (t_frail, frail) = memory::pair("memory", "frail", Limits::unlimited(400));
    let wedgy_bot = Bot::builder("livez-wedgy")
        .transport(t_wedgy)
        .handler(Wedge)
        .build()
        .unwrap();
    let frail_bot = Bot::builder("livez-frail")
        .transport(t_frail)
        .handler(Echo)
        .build()
        .unwrap();
    let frail_health = frail_bot.health();
    let shutdown = Shutdown::new();
    let mut options = RunOptions::new();
    options.shutdown = shutdown.clone();
    let mut http = HttpConfig::default();
    http.listen = ([127, 0, 0, 1], port).into();
    options.http = Some(http);
    let runner =
        std::thread::spawn(move || opsbot::run_process(vec![wedgy_bot, frail_bot], options));

    wait_for("ready", Duration::from_secs(20), || {
        get(port, "/readyz").0 == 200
    });
    assert_eq!(get(port, "/livez").0, 200);

    // One bot's thread blocked past the bound: not alive, and the body says which.
    let from = |text: &str| Incoming::in_room("#ops", Sender::new("u"), text);
    assert!(wedgy.send(from("!wedge")));
    wait_for("livez to fail", Duration::from_secs(20), || {
        get(port, "/livez").0 == 503
    });
    let (_, body) = get(port, "/livez");
    assert!(
        body.contains("bot livez-wedgy: thread silent for "),
        "{body}"
    );
    assert!(!body.contains("livez-frail"), "{body}");
    // It lets go: alive again.
    wait_for("livez to recover", Duration::from_secs(20), || {
        get(port, "/livez").0 == 200
    });

    // A bot whose own machinery fails is stopped: the process is no longer alive, for good.
    fault::arm("livez-frail", Point::Router);
    assert!(frail.send(from("!echo hi")));
    wait_for("the bot to fail", Duration::from_secs(20), || {
        frail_health.snapshot().health == BotHealth::Failed
    });
    let (status, body) = get(port, "/livez");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("bot livez-frail: failed: router panicked"),
        "{body}"
    );

    shutdown.trigger();
    let result = runner.join().unwrap();
    assert!(result.is_err(), "the failed bot makes the run fail");
    // The server is gone with the bots.
    assert_eq!(get(port, "/livez").0, 0);
}
