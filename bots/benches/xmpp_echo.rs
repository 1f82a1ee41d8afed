//! `!echo` round trips through a real Prosody: the `opsbot` binary against the floor, a minimal
//! client-to-client echo (a bare XML-stream client that answers every chat message) on the same
//! server, measured both without and with stream management (XEP-0198, which the bot uses so
//! that a cut loses nothing); then the 200-line answer with the default pace and Prosody's default limits.
//!
//! Both subjects connect in plaintext over loopback, so the numbers compare the same path. For
//! the round trips the server's c2s limit and the bot's pacing and budget are raised.
//! Run: `cargo bench -p opsbot-bots --bench xmpp_echo` (`cargo test --benches` runs a short
//! version).

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::Process;
use support::xmpp::{Prosody, XmppUser};
use tokio_xmpp::Stanza;
use tokio_xmpp::parsers::message::MessageType;

const PATIENCE: Duration = Duration::from_secs(30);

fn opsbot(prosody: &Prosody, raised: bool) -> Process {
    opsbot_via(prosody.port, raised)
}

/// The bot, connecting to `port` (Prosody's, or a proxy's in front of it).
fn opsbot_via(port: u16, raised: bool) -> Process {
    let limits = if raised {
        "[bot.budget]\ncommands_per_minute = 0\n[bot.outbox]\nrate = 0\nbyte_rate = 0\nloop_repeats = 0\n"
    } else {
        ""
    };
    let config = format!(
        "[log]\nlevel = \"warn\"\n[[bot]]\nname = \"bench\"\nhandlers = [\"lines\"]\n[bot.transport]\nkind = \"xmpp\"\n\
         jid = \"opsbot@localhost\"\npassword = \"botpass\"\nserver = \"127.0.0.1\"\nport = {}\n\
         tls = false\nresource = \"bot\"\n{limits}",
        port
    );
    Process::opsbot(env!("CARGO_BIN_EXE_opsbot"), &config)
}

/// The floor: answers `!echo X` with `X`, nothing else. With `sm`, it first enables stream
/// management (XEP-0198) and answers every count the server asks for at once, as a client that
/// must not lose a message does; the bot does that work too.
async fn floor_echo(port: u16, resource: &str, sm: bool) {
    let mut me = XmppUser::connect_as(port, "echo", "echopass", resource).await;
    if sm {
        me.enable_sm().await;
    }
    loop {
        let Some(Stanza::Message(m)) = me
            .next_stanza(Instant::now() + Duration::from_secs(3600))
            .await
        else {
            continue;
        };
        let (Some(from), Some(body)) = (m.from.clone(), m.bodies.values().next()) else {
            continue;
        };
        if let Some(text) = body.strip_prefix("!echo ") {
            me.message(&from.to_string(), MessageType::Chat, text).await;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until `to` answers (the bot may still be logging in).
async fn ready(user: &mut XmppUser, to: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        user.chat(to, "!echo ready").await;
        if user
            .next_from(to, Duration::from_millis(500))
            .await
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "{to} never answered");
    }
    // Late answers to the readiness probes.
    while user
        .next_from(to, Duration::from_millis(300))
        .await
        .is_some()
    {}
}

/// One round trip to `to`.
async fn round_trip(user: &mut XmppUser, to: &str, i: usize) -> Duration {
    let text = format!("seq{i}");
    let t = Instant::now();
    user.chat(to, &format!("!echo {text}")).await;
    loop {
        let said = user.expect_from(to, PATIENCE).await;
        if said.body == text {
            break;
        }
    }
    t.elapsed()
}

/// `n` sequential round trips to each of `targets`, in turns of ten each, so that whatever
/// else the machine does in the meantime weighs on all alike. Answers (p50, p99) per target.
async fn interleaved(user: &mut XmppUser, targets: &[&str], n: usize) -> Vec<(Duration, Duration)> {
    for to in targets {
        ready(user, to).await;
    }
    let mut lat: Vec<Vec<Duration>> = targets.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut i = 0;
    while lat[0].len() < n {
        for (to, l) in targets.iter().zip(lat.iter_mut()) {
            for _ in 0..10.min(n - l.len()) {
                l.push(round_trip(user, to, i).await);
                i += 1;
            }
        }
    }
    lat.into_iter()
        .map(|mut l| {
            l.sort();
            (pct(&l, 0.5), pct(&l, 0.99))
        })
        .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 20 } else { 1000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Round trips, limits raised.
        let prosody = Prosody::start_with("limits = { c2s = { rate = \"100mb/s\"; burst = \"2s\" } }");
        for (user, pw) in [("opsbot", "botpass"), ("alice", "alicepass"), ("echo", "echopass")] {
            prosody.register(user, pw);
        }
        let bot = opsbot(&prosody, true);
        let floor = tokio::spawn(floor_echo(prosody.port, "floor", false));
        let floor_sm = tokio::spawn(floor_echo(prosody.port, "floor-sm", true));
        let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
        let got = interleaved(
            &mut alice,
            &["echo@localhost/floor", "opsbot@localhost", "echo@localhost/floor-sm"],
            n,
        )
        .await;
        let ((f50, f99), (b50, b99), (s50, s99)) = (got[0], got[1], got[2]);
        let (rss, cpu) = bot.usage();
        floor.abort();
        floor_sm.abort();
        println!(
            "{n} sequential round trips to each, in alternating blocks of ten, Prosody 0.12, limits raised:"
        );
        println!("  floor (client-to-client echo): p50 {f50:.2?} p99 {f99:.2?}");
        println!(
            "  opsbot:                        p50 {b50:.2?} p99 {b99:.2?} | peak RSS {rss:.1} MiB, CPU {cpu:.2} s"
        );
        println!("  floor with stream management:  p50 {s50:.2?} p99 {s99:.2?}");
        println!(
            "xmpp_echo: opsbot/floor latency ratio p50 {:.2}, p99 {:.2}",
            b50.as_secs_f64() / f50.as_secs_f64(),
            b99.as_secs_f64() / f99.as_secs_f64()
        );
        println!(
            "xmpp_echo: opsbot/floor-with-stream-management latency ratio p50 {:.2}, p99 {:.2}",
            b50.as_secs_f64() / s50.as_secs_f64(),
            b99.as_secs_f64() / s99.as_secs_f64()
        );
        drop(bot);
        drop(prosody);

        // The 200-line answer with the defaults, on a Prosody with its default limits.
        let prosody = Prosody::start();
        prosody.register("opsbot", "botpass");
        prosody.register("alice", "alicepass");
        let bot = opsbot(&prosody, false);
        let mut alice = XmppUser::connect(prosody.port, "alice", "alicepass").await;
        ready(&mut alice, "opsbot@localhost").await;
        let lines = if quick { 40 } else { 200 };
        let t = Instant::now();
        alice.chat("opsbot@localhost", &format!("!lines {lines}")).await;
        for i in 1..=lines {
            let said = alice.expect_from("opsbot@localhost", PATIENCE).await;
            assert_eq!(said.body, format!("line {i} of {lines}"));
        }
        let took = t.elapsed().as_secs_f64();
        let (rss, _) = bot.usage();
        println!(
            "xmpp_echo: {lines}-line answer with default pacing: {took:.1} s, {:.1} lines/s, nothing lost; peak RSS {rss:.1} MiB",
            f64::from(lines) / took
        );
        drop(bot);

        // The same answer with 100 ms between the bot and its server (50 ms each way): each
        // reply is done when the server acknowledges it, so a round trip must not cap the pace.
        let proxy = support::cut::DelayProxy::start(prosody.port, Duration::from_millis(50)).await;
        let bot = opsbot_via(proxy.port, false);
        ready(&mut alice, "opsbot@localhost").await;
        let t = Instant::now();
        alice.chat("opsbot@localhost", &format!("!lines {lines}")).await;
        let mut first = None;
        for i in 1..=lines {
            let said = alice.expect_from("opsbot@localhost", PATIENCE).await;
            assert_eq!(said.body, format!("line {i} of {lines}"));
            first.get_or_insert_with(Instant::now);
        }
        let took = t.elapsed().as_secs_f64();
        // The pace after the opening burst of 20: the rate the default allows is 10 a second.
        let steady = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        println!(
            "xmpp_echo: {lines}-line answer over a 100 ms round trip: {took:.1} s, {:.1} lines/s; after the first line {:.1} lines/s (the pace allows 10 after a burst of 20), nothing lost",
            f64::from(lines) / took,
            f64::from(lines - 1) / steady
        );
        drop(bot);
    });
}
