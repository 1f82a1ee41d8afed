//! `!echo` round trips through a real ngircd: the `opsbot` binary against a bare echo loop
//! written directly on the `irc` crate.
//!
//! For each subject: p50/p99 latency of sequential commands from one user, replies per second
//! with several users at once, and the subject's peak RSS and CPU time (from /proc). The bot runs
//! with its own rate limits raised. ngircd throttles every client with a one-second clock, which
//! hides what the bot itself adds, so the run is repeated on InspIRCd with its flood limits
//! raised.
//! Run: `cargo bench -p opsbot-bots --bench irc_echo`; with `BARE_CURRENT_THREAD=1` the bare
//! loop runs on a single-threaded runtime, as each bot does, for a like-for-like comparison.

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Kind, Process, Server, User};

const CHANNEL: &str = "#bench";

/// The bare loop: no framework, no pacing, no supervision.
async fn bare_echo(port: u16, nick: &str) {
    use futures::StreamExt;
    use irc::client::prelude::*;
    let config = Config {
        nickname: Some(nick.to_owned()),
        server: Some("127.0.0.1".to_owned()),
        port: Some(port),
        channels: vec![CHANNEL.to_owned()],
        ..Config::default()
    };
    let mut client = Client::from_config(config).await.expect("connect");
    client.identify().expect("identify");
    let mut stream = client.stream().expect("stream");
    while let Some(Ok(message)) = stream.next().await {
        if let Command::PRIVMSG(ref target, ref text) = message.command
            && let Some(rest) = text.strip_prefix("!echo ")
        {
            let to = message.response_target().unwrap_or(target).to_owned();
            client.send_privmsg(to, rest).expect("send");
        }
    }
}

struct Subject {
    name: &'static str,
    nick: &'static str,
    process: Process,
}

fn start_opsbot(port: u16) -> Subject {
    let config = format!(
        "[log]\nlevel = \"warn\"\n[[bot]]\nname = \"bench\"\n[bot.transport]\nkind = \"irc\"\n\
         server = \"127.0.0.1\"\nport = {port}\ntls = false\nnick = \"opsbot\"\nchannels = [\"{CHANNEL}\"]\n\
         [bot.budget]\ncommands_per_minute = 0\n[bot.outbox]\nrate = 0\nbyte_rate = 0\nloop_repeats = 0\n"
    );
    Subject {
        name: "opsbot",
        nick: "opsbot",
        process: Process::opsbot(env!("CARGO_BIN_EXE_opsbot"), &config),
    }
}

fn start_bare(port: u16) -> Subject {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--bare-echo", &port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Subject {
        name: "bare irc crate loop",
        nick: "bareecho",
        process: Process::new(child),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(
    port: u16,
    subject: Subject,
    sequential: usize,
    users: usize,
    window: Duration,
) -> (Duration, Duration, f64) {
    let mut user = User::connect(port, "timer").await;
    user.join(CHANNEL).await;
    let nick = subject.nick;
    user.expect(Duration::from_secs(30), |l| {
        let (who, cmd, p) = l.parts();
        (who == nick && cmd == "JOIN")
            || (cmd == "353" && p.last().is_some_and(|n| n.contains(nick)))
    })
    .await;
    for i in 0..5 {
        user.say(CHANNEL, &format!("!echo warm{i}")).await;
        user.privmsg_from(nick, Duration::from_secs(30)).await;
    }
    let mut lat = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let text = format!("seq{i}");
        let t = Instant::now();
        user.say(CHANNEL, &format!("!echo {text}")).await;
        loop {
            let (_, got) = user.privmsg_from(nick, Duration::from_secs(30)).await;
            if got == text {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();

    let mut tasks = Vec::new();
    for u in 0..users {
        tasks.push(tokio::spawn(async move {
            let me = format!("load{u}");
            let mut c = User::connect(port, &me).await;
            c.join(CHANNEL).await;
            let end = Instant::now() + window;
            let mut n = 0u32;
            while Instant::now() < end {
                let text = format!("{me}-{n}");
                c.say(CHANNEL, &format!("!echo {text}")).await;
                let t = text.clone();
                if c.wait_for(Duration::from_secs(30), move |l| {
                    l.privmsg().is_some_and(|(_, _, x)| x == t)
                })
                .await
                .is_none()
                {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    let mut replies = 0u32;
    for t in tasks {
        replies += t.await.unwrap();
    }
    let rate = f64::from(replies) / started.elapsed().as_secs_f64();
    let (rss, cpu) = subject.process.usage();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "{:>22}: {sequential} sequential: p50 {p50:.2?} p99 {p99:.2?} | {users} users: {rate:.2} replies/s | peak RSS {rss:.1} MiB, CPU {cpu:.2} s",
        subject.name
    );
    drop(subject);
    (p50, p99, rate)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--bare-echo") {
        let port: u16 = args[i + 1].parse().unwrap();
        if std::env::var_os("BARE_CURRENT_THREAD").is_some() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(bare_echo(port, "bareecho"));
        } else {
            rt.block_on(bare_echo(port, "bareecho"));
        }
        return;
    }
    let quick = !args.iter().any(|a| a == "--bench");
    let (sequential, users, window) = if quick {
        (20, 2, Duration::from_secs(2))
    } else {
        (1000, 4, Duration::from_secs(20))
    };
    rt.block_on(async {
        for (label, server) in [
            ("ngircd (default settings)", Server::start(Kind::Ngircd)),
            ("InspIRCd (flood limits raised)", Server::start_unthrottled()),
        ] {
            println!("{label}:");
            let bot = measure(server.port, start_opsbot(server.port), sequential, users, window).await;
            let bare = measure(server.port, start_bare(server.port), sequential, users, window).await;
            println!(
                "irc_echo on {label}: opsbot/bare latency ratio p50 {:.3}, p99 {:.3}; replies/s ratio {:.3}",
                bot.0.as_secs_f64() / bare.0.as_secs_f64(),
                bot.1.as_secs_f64() / bare.1.as_secs_f64(),
                bot.2 / bare.2
            );
        }
    });
}
