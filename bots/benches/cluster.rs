//! The engine's actions through NATS JetStream, against the real `opsbot` binary and a real
//! `nats-server`:
//!
//! 1. Alert to action start: from the Alertmanager webhook POST to the moment the action's
//!    HTTP call reaches a local endpoint, one alert at a time; in one process (the engine runs
//!    the action) and through NATS (a worker runs it).
//! 2. Actions a second through 1, 2 and 4 workers: a trivial action (an HTTP call answered at
//!    once) for each of N alerts, published while no worker runs; then the workers start, and
//!    the time until every result is in chat is taken. Every action must run once.
//!
//! Run: `cargo bench -p opsbot-bots --bench cluster` (`cargo test --benches` runs a short one).

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use support::free_port;
use support::http::http;
use support::nats::Nats;

const TOKEN: &str = "bench-alertmanager-token-0123456789";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn show(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

/// Killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A local endpoint: each call's path and arrival time, answered at once.
type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

fn endpoint() -> (u16, Calls) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls: Calls = Arc::default();
    let c = calls.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let at = Instant::now();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                c.lock().unwrap().push((path, at));
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, calls)
}

/// The config: a console bot with the engine, an `http` action to `hook`, and `[cluster]`
/// when `nats` is given.
fn config(dir: &Path, api: u16, hook: u16, nats: Option<u16>) -> std::path::PathBuf {
    let cluster = nats.map_or(String::new(), |p| {
        format!("[cluster]\nservers = [\"nats://127.0.0.1:{p}\"]\nname = \"bench\"\n")
    });
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            r##"
[log]
level = "warn"
[state]
path = "{state}"
[http]
listen = "127.0.0.1:{api}"
[[bot]]
name = "ops"
handlers = ["engine"]
[bot.transport]
kind = "console"
[engine]
alertmanager_token = "${{BENCH_AM_TOKEN}}"
storm_lines_per_minute = 1000000
hosts = ["127.0.0.1:{hook}"]
[[engine.route]]
match = ['severity="page"']
room = "ops"
[[engine.rule]]
name = "act"
match = ['severity="page"', 'instance=~".+"']
action = {{ kind = "http", url = "http://127.0.0.1:{hook}/{{instance}}" }}
target = "{{instance}}"
{cluster}"##,
            state = dir.join("state.redb").display()
        ),
    )
    .unwrap();
    path
}

fn opsbot(args: &[&str], config: &Path) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("BENCH_AM_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsbot");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (Proc(child), lines)
}

fn webhook(i: usize) -> String {
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"B{i}\"}}","status":"firing","receiver":"opsbot",
        "groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"","truncatedAlerts":0,
        "alerts":[{{"status":"firing","labels":{{"alertname":"B{i}","instance":"h{i}","severity":"page"}},
        "annotations":{{}},"startsAt":"2026-12-06T10:00:00Z","fingerprint":"f{i}"}}]}}"#
    )
}

fn post(api: u16, i: usize) -> Instant {
    let auth = format!("Bearer {TOKEN}");
    let sent = Instant::now();
    let (status, answer) = http(
        api,
        "POST",
        "/api/v1/alerts/alertmanager",
        &[("Authorization", &auth)],
        webhook(i).as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    sent
}

fn wait_api(api: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < deadline, "the API never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alert to action start, `n` alerts one at a time; through NATS with `cluster`.
fn latency(n: usize, cluster: bool) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (hook, calls) = endpoint();
    let api = free_port();
    let server = cluster.then(|| Nats::start(&dir.path().join("nats")));
    let config = config(dir.path(), api, hook, server.as_ref().map(|s| s.port));
    let (_bot, _lines) = opsbot(&["run"], &config);
    let _worker = cluster.then(|| opsbot(&["worker"], &config));
    wait_api(api);
    // The first action through NATS also waits for the connections: not counted.
    let warm = post(api, 1_000_000);
    let deadline = warm + Duration::from_secs(30);
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the warm-up action never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut took = Vec::new();
    for i in 0..n {
        let path = format!("/h{i}");
        let sent = post(api, i);
        let deadline = sent + Duration::from_secs(30);
        loop {
            if let Some((_, at)) = calls.lock().unwrap().iter().find(|(p, _)| *p == path) {
                took.push(*at - sent);
                break;
            }
            assert!(Instant::now() < deadline, "action {i} never ran");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    took.sort();
    (pct(&took, 0.5), pct(&took, 0.99))
}

/// `n` actions queued in the stream, then run by `workers` workers: actions a second.
fn throughput(n: usize, workers: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (hook, calls) = endpoint();
    let api = free_port();
    let nats = Nats::start(&dir.path().join("nats"));
    let config = config(dir.path(), api, hook, Some(nats.port));
    let (_bot, lines) = opsbot(&["run"], &config);
    wait_api(api);
    for i in 0..n {
        post(api, i);
    }
    // Every action is in the stream before a worker starts: wait for the last "running" line
    // and a moment for its publish.
    let mut running = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running < n {
        let l = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the bot says each action runs");
        if l.contains("running rule act") {
            running += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let _workers: Vec<_> = (0..workers).map(|_| opsbot(&["worker"], &config)).collect();
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done < n {
        let l = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("every result reaches chat");
        if l.contains("] done:") {
            done += 1;
        }
    }
    let took = start.elapsed();
    let mut per: HashMap<String, usize> = HashMap::new();
    for (p, _) in calls.lock().unwrap().iter() {
        *per.entry(p.clone()).or_default() += 1;
    }
    assert_eq!(per.len(), n, "every action ran");
    assert!(per.values().all(|c| *c == 1), "an action ran twice");
    n as f64 / took.as_secs_f64()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, m) = if quick { (5, 20) } else { (200, 500) };
    let (p50, p99) = latency(n, false);
    println!(
        "cluster: alert to action start in one process p50 {} p99 {} ({n} alerts)",
        show(p50),
        show(p99)
    );
    let (p50, p99) = latency(n, true);
    println!(
        "cluster: alert to action start through NATS and a worker p50 {} p99 {} ({n} alerts)",
        show(p50),
        show(p99)
    );
    for workers in [1, 2, 4] {
        let rate = throughput(m, workers);
        println!(
            "cluster: {m} actions through {workers} worker{}: {rate:.0} actions/s, each run once",
            if workers == 1 { "" } else { "s" }
        );
    }
}
