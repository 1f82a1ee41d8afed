//! Routing one message among 200 commands and 50 passive patterns.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opsbot::command::Command;
use opsbot::message::{Incoming, Sender};
use opsbot::router::{Route, RouteTable};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// 20 handlers with 10 commands and 2-3 patterns each: 200 commands, 50 patterns.
fn table() -> RouteTable {
    let mut handlers = Vec::new();
    let mut pattern_count = 0;
    for h in 0..20 {
        let commands: Vec<Command> = (0..10)
            .map(|c| Command::new(leak(format!("cmd{h}x{c}")), "<arg>", "A benchmark command."))
            .collect();
        let n_patterns = if h < 10 { 3 } else { 2 };
        let patterns: Vec<&'static str> = (0..n_patterns)
            .map(|p| {
                pattern_count += 1;
                leak(format!(r"\b(?:TICKET{h}P{p})-(\d+)\b"))
            })
            .collect();
        handlers.push((
            leak(format!("handler{h}")),
            &*Box::leak(commands.into_boxed_slice()),
            &*Box::leak(patterns.into_boxed_slice()),
        ));
    }
    assert_eq!(pattern_count, 50);
    RouteTable::new("!", &handlers).unwrap()
}

fn bench(c: &mut Criterion) {
    let t = table();
    let sender = Sender::new("alice");
    let command = Incoming::in_room("#ops", sender.clone(), "!cmd17x9 some argument here");
    let chatter = Incoming::in_room(
        "#ops",
        sender.clone(),
        "just people talking about the deploy that went out this morning, nothing for the bot",
    );
    let passive = Incoming::in_room("#ops", sender, "have a look at TICKET7P1-4711 please");
    assert!(matches!(t.route(&command, "bot"), Route::Command { .. }));
    assert_eq!(t.route(&chatter, "bot"), Route::Nothing);
    assert!(matches!(t.route(&passive, "bot"), Route::Passive(_)));

    let mut g = c.benchmark_group("route (200 commands, 50 patterns)");
    g.bench_function("command", |b| {
        b.iter(|| black_box(t.route(black_box(&command), "bot")))
    });
    g.bench_function("chatter, no match", |b| {
        b.iter(|| black_box(t.route(black_box(&chatter), "bot")))
    });
    g.bench_function("passive match", |b| {
        b.iter(|| black_box(t.route(black_box(&passive), "bot")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
