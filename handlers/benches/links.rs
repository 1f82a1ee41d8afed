//! Link summaries: what the URL matcher adds to routing every chat line (the router benchmark's
//! 200 commands and 50 passive patterns, plus the `links` pattern), and summaries per second
//! against a local web server (fetch, guard, title extraction), one at a time and eight at once.
//!
//! Run: `cargo bench -p opsbot-handlers --bench links` (`cargo test --benches` runs a short
//! version).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use opsbot::Handler;
use opsbot::command::Command;
use opsbot::message::{Incoming, Sender};
use opsbot::router::{Route, RouteTable};
use opsbot::settings::FromSettings;
use opsbot_handlers::links::{Links, LinksSettings};
use support::Page;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

type Reg = (&'static str, &'static [Command], &'static [&'static str]);

/// 20 handlers, 200 commands, 50 ticket patterns; with `links`, its URL pattern too.
fn table(links: bool) -> RouteTable {
    let mut handlers: Vec<Reg> = Vec::new();
    for h in 0..20 {
        let commands: Vec<Command> = (0..10)
            .map(|c| Command::new(leak(format!("cmd{h}x{c}")), "<arg>", "A benchmark command."))
            .collect();
        let patterns: Vec<&'static str> = (0..if h < 10 { 3 } else { 2 })
            .map(|p| leak(format!(r"\b(?:TICKET{h}P{p})-(\d+)\b")))
            .collect();
        handlers.push((
            leak(format!("handler{h}")),
            Box::leak(commands.into_boxed_slice()),
            Box::leak(patterns.into_boxed_slice()),
        ));
    }
    if links {
        handlers.push((Links::NAME, Links::COMMANDS, Links::PATTERNS));
    }
    RouteTable::new("!", &handlers).unwrap()
}

fn per_line(t: &RouteTable, msg: &Incoming, n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        black_box(t.route(black_box(msg), "bot"));
    }
    start.elapsed() / n
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 2_000 } else { 500_000 };
    let sender = Sender::new("alice");
    let chatter = Incoming::in_room(
        "#ops",
        sender.clone(),
        "just people talking about the deploy that went out this morning, nothing for the bot",
    );
    let link = Incoming::in_room(
        "#ops",
        sender,
        "the postmortem is at https://wiki.example.com/ops/2026-11-27 have a look",
    );
    let (without, with) = (table(false), table(true));
    assert_eq!(with.route(&chatter, "bot"), Route::Nothing);
    assert!(matches!(with.route(&link, "bot"), Route::Passive(_)));
    let base = per_line(&without, &chatter, n);
    let chat = per_line(&with, &chatter, n);
    let url = per_line(&with, &link, n);
    println!(
        "links_route: per chat line, 200 commands + 50 patterns: {base:.2?}; with the links pattern: {chat:.2?} (a line without a URL), {url:.2?} (a line with one)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pages: Vec<(&'static str, Page)> = (0..2000)
            .map(|i| {
                let path = leak(format!("/p{i}"));
                let body = format!(
                    "<html><head><meta property=\"og:title\" content=\"Page {i} &amp; more\"><title>x</title></head><body>{}</body></html>",
                    "lorem ipsum ".repeat(800)
                );
                (path, Page::Full(200, "text/html", body.into_bytes()))
            })
            .collect();
        let (port, _) = support::http_server(pages).await;
        let links = Links::from_settings(LinksSettings {
            allow: vec!["127.0.0.1".into()],
            local_address: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            ..LinksSettings::default()
        })
        .unwrap();
        let total = if quick { 40 } else { 1000 };
        let t = Instant::now();
        for i in 0..total {
            let s = links
                .summary(&format!("http://127.0.0.1:{port}/p{i}"))
                .await
                .unwrap();
            assert_eq!(s.as_deref(), Some(format!("Page {i} & more").as_str()));
        }
        let one = total as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let links = links.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..total).step_by(8) {
                    let s = links
                        .summary(&format!("http://127.0.0.1:{port}/p{}", 1000 + i % 1000))
                        .await
                        .unwrap();
                    assert!(s.is_some());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let eight = total as f64 / t.elapsed().as_secs_f64();
        println!(
            "links_fetch: summaries of a 10 KB page on loopback: {one:.0}/s one at a time, {eight:.0}/s eight at once"
        );
    });
}
