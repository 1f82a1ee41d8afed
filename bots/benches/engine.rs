//! The engine's speed, against the real `opsbot` binary (a console bot with `[engine]`):
//!
//! 1. Alert to chat line, and alert to action start (`approval = none`): from the moment an
//!    Alertmanager webhook POST is sent (Alertmanager's own `group_wait` excluded) to the
//!    `[G…] FIRING` line and to the `[A…] running` line, one new alert group at a time.
//! 2. A storm through a real Alertmanager: 1,000 alerts in 10 s over 50 groups. Every alert is
//!    posted once, in its group's lines or (past ten lines a minute in the room) in a storm
//!    summary every 15 s, each acted on once (no action twice), and `!echo`
//!    typed every half second during the storm is answered; its p50/p99 are reported.
//!
//! Run: `cargo bench -p opsbot-bots --bench engine` (`cargo test --benches` runs a short one).

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::alertmanager::Alertmanager;
use support::free_port;
use support::http::http;

const TOKEN: &str = "bench-alertmanager-token-0123456789";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn show(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

struct Bot {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<(Instant, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bot; `storm` is its `storm_lines_per_minute`.
fn start(port: u16, storm: usize) -> Bot {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            r##"
[log]
level = "warn"
[state]
path = "{state}"
[http]
listen = "127.0.0.1:{port}"
[[bot]]
name = "ops"
handlers = ["engine"]
# The storm's !echo every half second is more than a person's default command budget.
[bot.budget]
commands_per_minute = 0
[bot.transport]
kind = "console"
[engine]
alertmanager_token = "${{BENCH_AM_TOKEN}}"
storm_lines_per_minute = {storm}
programs = ["/usr/bin/true"]
[[engine.route]]
match = ['severity="page"']
room = "ops"
[[engine.rule]]
name = "act"
match = ['severity="page"', 'instance=~".+"']
action = {{ kind = "command", program = "/usr/bin/true", args = ["{{instance}}"] }}
target = "{{instance}}"
"##,
            state = dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(["run", "--config"])
        .arg(&config)
        .env("BENCH_AM_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsbot");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the API never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Bot {
        child,
        stdin,
        lines,
        _dir: dir,
    }
}

fn webhook(group: usize, alerts: &[(usize, usize)]) -> String {
    let alerts: Vec<String> = alerts
        .iter()
        .map(|(g, i)| {
            format!(
                r#"{{"status":"firing","labels":{{"alertname":"A{g}","instance":"h{g}-{i}","severity":"page"}},
                "annotations":{{"summary":"down"}},"startsAt":"2026-12-06T10:00:00Z","fingerprint":"f{g}x{i}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"A{group}\"}}","status":"firing","receiver":"opsbot",
        "groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"","truncatedAlerts":0,
        "alerts":[{}]}}"#,
        alerts.join(",")
    )
}

fn latency(n: usize) {
    let port = free_port();
    // Every alert its own line: the latency of one, not a storm's summary.
    let bot = start(port, 1_000_000);
    let auth = format!("Bearer {TOKEN}");
    let (mut to_line, mut to_action) = (Vec::new(), Vec::new());
    for g in 0..n {
        let body = webhook(g, &[(g, 0)]);
        let sent = Instant::now();
        let (status, answer) = http(
            port,
            "POST",
            "/api/v1/alerts/alertmanager",
            &[("Authorization", &auth)],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{answer}");
        let (mut line, mut action) = (None, None);
        while line.is_none() || action.is_none() {
            let (at, l) = bot
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the bot answers");
            if l.contains("FIRING") {
                line = Some(at - sent);
            } else if l.contains("running rule act") {
                action = Some(at - sent);
            }
        }
        to_line.push(line.unwrap());
        to_action.push(action.unwrap());
    }
    to_line.sort();
    to_action.sort();
    println!(
        "engine: alert to chat line p50 {} p99 {}; alert to action start p50 {} p99 {} ({n} alerts, one group each)",
        show(pct(&to_line, 0.5)),
        show(pct(&to_line, 0.99)),
        show(pct(&to_action, 0.5)),
        show(pct(&to_action, 0.99)),
    );
}

fn storm(alerts: usize, groups: usize, over: Duration) {
    let port = free_port();
    let mut bot = start(port, 10);
    let am = Alertmanager::start(
        &format!("http://127.0.0.1:{port}/api/v1/alerts/alertmanager"),
        TOKEN,
        &[],
    );
    let started = Instant::now();
    let batches = 20usize;
    let per_batch = alerts / batches;
    let mut echoes_sent: Vec<(String, Instant)> = Vec::new();
    let mut next_echo = Instant::now();
    for b in 0..batches {
        let batch: Vec<String> = (0..per_batch)
            .map(|k| {
                let i = b * per_batch + k;
                let g = i % groups;
                format!(
                    r#"{{"labels":{{"alertname":"A{g}","instance":"h{i}","severity":"page"}},"annotations":{{"summary":"down"}},"startsAt":"2026-12-06T10:00:00Z"}}"#
                )
            })
            .collect();
        am.post_alerts(&format!("[{}]", batch.join(",")));
        let until = started + over.mul_f64((b + 1) as f64 / batches as f64);
        while Instant::now() < until {
            if Instant::now() >= next_echo {
                let word = format!("ping{}", echoes_sent.len());
                writeln!(bot.stdin, "!echo {word}").unwrap();
                bot.stdin.flush().unwrap();
                echoes_sent.push((word, Instant::now()));
                next_echo += Duration::from_millis(500);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Collect until every alert was posted and acted on, or a minute passed.
    let mut covered = 0usize;
    let mut summaries = 0usize;
    let mut actions: HashMap<String, usize> = HashMap::new();
    let mut lines = 0usize;
    let mut echo_at: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while (actions.len() < alerts || echo_at.len() < echoes_sent.len() || covered < alerts)
        && Instant::now() < deadline
    {
        let Ok((at, l)) = bot.lines.recv_timeout(Duration::from_secs(5)) else {
            continue;
        };
        last = at;
        if let Some(w) = echoes_sent.iter().find(|(w, _)| l == *w) {
            echo_at.insert(w.0.clone(), at);
            continue;
        }
        if let Some(rest) = l.strip_prefix("[storm] ") {
            // "[storm] 12 more notifications (240 alerts) in the last 15s: …"
            summaries += 1;
            covered += rest
                .split_once('(')
                .and_then(|(_, r)| r.split_whitespace().next()?.parse::<usize>().ok())
                .unwrap_or(0);
        }
        if let Some(rest) = l.split(" FIRING ").nth(1) {
            lines += 1;
            // "20 × A0: …" covers 20 alerts; "A0: …" one.
            let n = rest
                .split_once(" × ")
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .unwrap_or(1);
            covered += n;
        }
        if l.contains("running rule act")
            && let Some(rest) = l.split("/usr/bin/true ").nth(1)
        {
            let target = rest.split_whitespace().next().unwrap_or("").to_owned();
            *actions.entry(target).or_default() += 1;
        }
    }
    let twice = actions.values().filter(|n| **n > 1).count();
    let mut echo: Vec<Duration> = echoes_sent
        .iter()
        .filter_map(|(w, sent)| echo_at.get(w).map(|at| *at - *sent))
        .collect();
    echo.sort();
    let distinct: HashSet<&String> = actions.keys().collect();
    println!(
        "engine storm: {alerts} alerts over {groups} groups in {:.0?}: {lines} FIRING lines and {summaries} storm \
         summaries covering {covered} alerts, {} actions ({} distinct, {twice} run twice), last line after {:.1?}; \
         !echo during the storm: {}/{} answered, p50 {} p99 {}",
        over,
        actions.values().sum::<usize>(),
        distinct.len(),
        last - started,
        echo.len(),
        echoes_sent.len(),
        show(pct(&echo, 0.5)),
        show(pct(&echo, 0.99)),
    );
    assert_eq!(twice, 0, "an action ran twice");
    assert_eq!(covered, alerts, "every alert is in a FIRING line once");
    assert_eq!(distinct.len(), alerts, "every alert is acted on once");
    assert_eq!(echo.len(), echoes_sent.len(), "every !echo is answered");
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        latency(5);
        storm(40, 4, Duration::from_secs(2));
    } else {
        latency(200);
        storm(1000, 50, Duration::from_secs(10));
    }
}
