//! Rendering one formatted reply (a heading, a line with every kind of span, and a table of 50
//! pods) for each style, and cutting it into the messages each transport sends.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opsbot::rich::{Line, Rich, Style};

fn reply() -> Rich {
    let rows: Vec<Vec<String>> = (0..50)
        .map(|i| {
            vec![
                format!("web-{i}-7d4b9c8f5-x2x5q"),
                if i % 7 == 0 {
                    "CrashLoopBackOff"
                } else {
                    "Running"
                }
                .to_owned(),
                format!("{}", i % 4),
                format!("{}m", 3 * i + 1),
            ]
        })
        .collect();
    Rich::new()
        .heading("Pods in prod")
        .para(
            Line::new()
                .text("7 of 50 ")
                .bold("not ready")
                .text(", see ")
                .code("kubectl get pods -n prod")
                .text(" and the ")
                .link("runbook", "https://wiki.example.com/runbooks/web"),
        )
        .table(["pod", "status", "restarts", "age"], rows)
}

fn bench(c: &mut Criterion) {
    let r = reply();
    for (name, style) in [
        ("plain", Style::Plain),
        ("irc", Style::Irc),
        ("xmpp", Style::XmppStyling),
        ("markdown", Style::Markdown),
        ("ansi", Style::Ansi),
    ] {
        c.bench_function(&format!("rich_table50_{name}"), |b| {
            b.iter(|| black_box(&r).render(black_box(style)))
        });
    }
    // What the outbox does: render and cut to each transport's message size.
    for (name, style, max, multiline) in [
        ("irc", Style::Irc, 400, false),
        ("xmpp", Style::XmppStyling, 10_000, true),
        ("webex", Style::Markdown, 7_439, true),
        ("console", Style::Ansi, 4_096, false),
    ] {
        c.bench_function(&format!("rich_cut50_{name}"), |b| {
            b.iter(|| black_box(&r).messages(black_box(style), max, multiline))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
