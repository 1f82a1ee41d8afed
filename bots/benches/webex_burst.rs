//! Ten Webex bots in one `opsbot` process against the fake Webex with 50 ms per REST answer:
//! 1,000 commands at once (100 per bot over five rooms), with the outbox pace raised, then the
//! same burst at the default pace. Reports replies per second against the ideal (each bot
//! posts one reply at a time, so ten connections at one answer per 50 ms: 200/s), the gap
//! between one bot's consecutive posts (p50/p99: the time one reply takes through outbox,
//! transport and HTTP), connections opened, and the process's peak RSS. Every reply must
//! arrive once and in order per room, or the run fails.
//!
//! Run: `cargo bench -p opsbot-bots --bench webex_burst` (`cargo test --benches` runs a short
//! version).

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::Process;
use support::webex::{Account, FakeWebex};

const LATENCY: Duration = Duration::from_millis(50);

fn opsbot(fake: &FakeWebex, accounts: &[Account], raised: bool) -> Process {
    let mut config = String::from("[log]\nlevel = \"warn\"\n");
    for a in accounts {
        config.push_str(&format!(
            "[[bot]]\nname = \"{}\"\n[bot.transport]\nkind = \"webex\"\n{}\n[bot.budget]\ncommands_per_minute = 0\n",
            a.name,
            fake.bot_toml(a, "")
        ));
        if raised {
            config.push_str("[bot.outbox]\nrate = 0\ndest_rate = 0\nloop_repeats = 0\n");
        }
    }
    Process::opsbot(env!("CARGO_BIN_EXE_opsbot"), &config)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn burst(per_bot: u32, raised: bool) {
    let fake = FakeWebex::start().await;
    fake.set_latency(LATENCY);
    let accounts: Vec<Account> = (0..10).map(|i| fake.add_bot(&format!("bot{i}"))).collect();
    let bot = opsbot(&fake, &accounts, raised);
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in &accounts {
        while !fake.connected(&a.token) {
            assert!(Instant::now() < deadline, "{} never connected", a.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let start = Instant::now();
    for i in 0..per_bot {
        for a in &accounts {
            let room = format!("room-{}", i % 5);
            fake.say(
                a,
                "alice@example.com",
                Some(&room),
                None,
                &format!("{} !echo {i}", a.name),
            );
        }
    }
    let total = per_bot as usize * accounts.len();
    let patience = Duration::from_secs(if raised { 60 } else { 300 });
    while fake.posts().len() < total {
        assert!(
            start.elapsed() < patience,
            "{} of {total} replies after {patience:?}",
            fake.posts().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = fake.posts();
    assert_eq!(posts.len(), total, "a reply was sent twice");
    let mut gaps = Vec::new();
    for a in &accounts {
        let mine: Vec<_> = posts.iter().filter(|p| p.token == a.token).collect();
        for w in mine.windows(2) {
            gaps.push(w[1].at.duration_since(w[0].at));
        }
        for r in 0..5 {
            let room = format!("room-{r}");
            let seq: Vec<u32> = mine
                .iter()
                .filter(|p| p.field("roomId").as_deref() == Some(&room))
                .map(|p| p.text().parse().unwrap())
                .collect();
            let want: Vec<u32> = (0..per_bot).filter(|i| i % 5 == r).collect();
            assert_eq!(seq, want, "{} in {room}: out of order or lost", a.name);
        }
    }
    gaps.sort();
    let (rss, cpu) = bot.usage();
    let rate = total as f64 / took.as_secs_f64();
    let ideal = accounts.len() as f64 / LATENCY.as_secs_f64();
    println!(
        "webex_burst ({}): {total} replies in {:.2} s = {rate:.0}/s, ideal {ideal:.0}/s ({:.0}%); per-bot gap p50 {:.1?} p99 {:.1?}; {} REST connections; nothing lost, none twice, in order per room; peak RSS {rss:.1} MiB, CPU {cpu:.2} s",
        if raised {
            "pace raised"
        } else {
            "default pace"
        },
        took.as_secs_f64(),
        100.0 * rate / ideal,
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        fake.rest_connections(),
    );
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        burst(if quick { 10 } else { 100 }, true).await;
        burst(if quick { 5 } else { 100 }, false).await;
    });
}
