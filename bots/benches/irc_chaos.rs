//! Hostile input the IRC transport absorbs: the `opsbot` binary against a fake server that
//! streams seeded random lines (random bytes, prefixes, tags, commands, numerics and parameters,
//! the generator of the `irc_hostile` tests) at rising rates, while a user's `!echo`
//! every two seconds must be answered within 5 s and the connection must hold.
//!
//! For each rate: lines sent, probes answered and their latency (p50, max), whether the bound
//! and the connection held, and the bot's CPU time per 10,000 hostile lines (from /proc).
//! Run: `cargo bench -p opsbot-bots --bench irc_chaos` (a quick pass under `cargo test`).

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::chaos::Chaos;
use support::{FakeServer, Process};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const BOUND: Duration = Duration::from_secs(5);

fn start_bot(port: u16) -> Process {
    Process::opsbot(
        env!("CARGO_BIN_EXE_opsbot"),
        &format!(
            "[log]\nlevel = \"error\"\n[[bot]]\nname = \"chaos\"\n[bot.transport]\nkind = \"irc\"\n\
             server = \"127.0.0.1\"\nport = {port}\ntls = false\nnick = \"opsbot\"\nchannels = [\"#ops\"]\n"
        ),
    )
}

struct Run {
    rate: u32,
    sent: u64,
    probes: usize,
    answered: usize,
    latencies: Vec<Duration>,
    held: bool,
    cpu: f64,
}

async fn run(rate: u32, secs: u64, seed: u64) -> Run {
    let fake = FakeServer::bind().await;
    let bot = start_bot(fake.port);
    let mut c = fake.accept().await;
    c.welcome().await;
    c.let_in("#ops").await;
    // Wait until the bot answers at all, so that start-up is not measured.
    c.send(":alice!a@127.0.0.1 PRIVMSG #ops :!echo ready\r\n")
        .await;
    c.read_until("PRIVMSG #ops :ready").await;
    let (mut r, mut w) = c.into_parts();
    let mut chaos = Chaos::new(seed, "opsbot", "#ops");
    let per_tick = (rate / 100).max(1) as usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut probes = tokio::time::interval(Duration::from_secs(2));
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let cpu_before = bot.usage().1;
    let mut asked: Vec<(usize, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let (mut sent, mut next) = (0u64, 0usize);
    let mut buf = Vec::new();
    let mut held = true;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                batch.clear();
                for _ in 0..per_tick {
                    batch.extend(chaos.line());
                }
                if w.write_all(&batch).await.is_err() {
                    held = false;
                    break;
                }
                sent += per_tick as u64;
            }
            _ = probes.tick() => {
                let line = format!(":alice!a@127.0.0.1 PRIVMSG #ops :!echo probe {next}\r\n");
                if w.write_all(line.as_bytes()).await.is_err() {
                    held = false;
                    break;
                }
                asked.push((next, Instant::now()));
                next += 1;
            }
            n = r.read_until(b'\n', &mut buf) => {
                if !matches!(n, Ok(1..)) {
                    held = false;
                    break;
                }
                let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if let Some(i) = text.strip_prefix("PRIVMSG #ops :probe ").and_then(|n| n.parse::<usize>().ok())
                    && let Some(at) = asked.get(i).map(|(_, at)| *at)
                {
                    latencies.push(at.elapsed());
                }
                buf.clear();
            }
        }
    }
    // Answers still on their way.
    let deadline = tokio::time::Instant::now() + BOUND;
    while held && latencies.len() < asked.len() {
        buf.clear();
        match tokio::time::timeout_at(deadline, r.read_until(b'\n', &mut buf)).await {
            Ok(Ok(1..)) => {
                let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if let Some(i) = text
                    .strip_prefix("PRIVMSG #ops :probe ")
                    .and_then(|n| n.parse::<usize>().ok())
                    && let Some(at) = asked.get(i).map(|(_, at)| *at)
                {
                    latencies.push(at.elapsed());
                }
            }
            Ok(_) => held = false,
            Err(_) => break,
        }
    }
    let cpu = bot.usage().1 - cpu_before;
    held = held && !fake.has_pending_connection().await;
    latencies.sort();
    Run {
        rate,
        sent,
        probes: asked.len(),
        answered: latencies.len(),
        latencies,
        held,
        cpu,
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (rates, secs): (&[u32], u64) = if quick {
        (&[200], 2)
    } else {
        (&[100, 1_000, 5_000, 20_000, 50_000, 100_000, 200_000], 10)
    };
    rt.block_on(async {
        for &rate in rates {
            let r = run(rate, secs, 7).await;
            let p50 = r.latencies.get(r.latencies.len() / 2).copied().unwrap_or_default();
            let max = r.latencies.last().copied().unwrap_or_default();
            let within = r.answered == r.probes && max < BOUND;
            println!(
                "irc_chaos {:>6} lines/s asked: {} hostile lines sent ({:.0}/s), probes {}/{} answered, p50 {p50:.2?}, max {max:.2?}, within {BOUND:?}: {}, connection held: {}, bot CPU {:.2} s = {:.3} s per 10,000 lines",
                r.rate,
                r.sent,
                r.sent as f64 / secs as f64,
                r.answered,
                r.probes,
                if within { "yes" } else { "NO" },
                if r.held { "yes" } else { "NO" },
                r.cpu,
                r.cpu / (r.sent as f64 / 10_000.0),
            );
            if quick {
                assert!(within && r.held, "the quick pass must hold");
            }
        }
    });
}
