//! The HTTP status API against the real `opsbot` binary: each endpoint's JSON over real HTTP
//! on a loopback port, forced heals and their token, breakers in the API and the metrics,
//! readiness against a real IRC server that goes away, the healing log across a restart of
//! the process, and requests built to hurt.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::http::{http, raw_request};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_opsbot");
const TOKEN: &str = "test-admin-token-0123456789";

/// A running `opsbot` with a console bot on pipes and the status API on `port`.
struct Bot {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl Bot {
    /// Runs `opsbot run` on a config made of `[http]` on a fresh port, `[state]` in `dir`,
    /// and `rest`.
    fn start(dir: &Path, port: u16, rest: &str) -> Self {
        Self::start_capped(dir, port, rest, 10_000)
    }

    /// Like [`Bot::start`], keeping `cap` healing-log entries.
    fn start_capped(dir: &Path, port: u16, rest: &str, cap: usize) -> Self {
        Self::start_full(dir, port, "", rest, cap)
    }

    /// Like [`Bot::start`], with `http` added to the `[http]` table.
    fn start_with_http(dir: &Path, port: u16, http: &str, rest: &str) -> Self {
        Self::start_full(dir, port, http, rest, 10_000)
    }

    fn start_full(dir: &Path, port: u16, http: &str, rest: &str, cap: usize) -> Self {
        let config = format!(
            "[state]\npath = \"{}\"\nhealing_log_entries = {cap}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"${{OPSBOT_TEST_TOKEN}}\"\n{http}\n{rest}",
            dir.join("state.redb").display()
        );
        let path = dir.join("bot.toml");
        std::fs::write(&path, config).unwrap();
        let (child, stdin, lines) = crate::common::spawn_piped(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&path)
                .env("OPSBOT_TEST_TOKEN", TOKEN)
                .env("RUST_LOG", "warn"),
        );
        let bot = Self {
            child,
            stdin,
            lines,
            port,
        };
        bot.wait_for("the API to listen", |b| b.get("/livez").0 == 200);
        bot
    }

    /// Crashes `!boom` until its budget (one restart) is spent and the bot is degraded.
    fn spend_boom_budget(&mut self) {
        self.say("!boom");
        self.line_where(|l| l.contains("being restarted"));
        self.say("!boom");
        self.line_where(|l| l.contains("disabled after repeated crashes"));
        self.wait_for("degraded", |b| {
            b.json("/api/v1/health")["state"] == "degraded"
        });
        // And in the log on disk (the writer commits a moment after the bot says it).
        self.wait_for("the failure on disk", |b| {
            entries(&b.json("/api/v1/healing-log"))
                .iter()
                .any(|e| e["action"] == "failed")
        });
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the bot answered within 20 s")
    }

    /// Reads lines until one satisfies `want`.
    fn line_where(&self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.next_line();
            if want(&l) {
                return l;
            }
        }
    }

    /// A request over a fresh connection: status and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        http(self.port, method, path, headers, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, &[], b"")
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    fn heal(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let (status, body) = self.request("POST", path, &headers, body.as_bytes());
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Polls `ok` every 50 ms for up to 20 s.
    fn wait_for(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok(self) {
            assert!(Instant::now() < deadline, "waited 20 s for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends the bot as at the end of console input and waits for it to exit.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "opsbot did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subsystem<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["bots"][0]["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no subsystem {name}: {health}"))
}

fn entries(log: &Value) -> &Vec<Value> {
    log["entries"].as_array().unwrap()
}

const BOOM_BOT: &str = r#"
[[bot]]
name = "ops"
admins = ["console"]
handlers = ["boom"]

[bot.supervisor]
max_restarts = 1
backoff_initial_ms = 10

[bot.transport]
kind = "console"
"#;

#[test]
fn a_handler_that_spends_its_budget_degrades_the_bot_and_a_forced_heal_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    bot.wait_for("ready", |b| b.get("/readyz").0 == 200);

    let health = bot.json("/api/v1/health");
    assert_eq!(health["state"], "healthy", "{health}");
    let ops = &health["bots"][0];
    assert_eq!(ops["bot"], "ops");
    assert_eq!(ops["transport"]["kind"], "console");
    assert_eq!(ops["transport"]["connection"], "connected");
    assert_eq!(subsystem(&health, "handler:boom")["health"], "healthy");
    assert_eq!(
        ops["summary"].as_str().unwrap(),
        format!("healthy · 8 of 8 subsystems healthy")
    );

    // Two crashes: one restart, then the budget is spent.
    bot.spend_boom_budget();
    let health = bot.json("/api/v1/health");
    let boom = subsystem(&health, "handler:boom");
    assert_eq!(boom["health"], "degraded", "{health}");
    assert_eq!(boom["state"], "failed");
    assert_eq!(boom["restarts"], 1);
    assert_eq!(
        boom["last_error"].as_str().unwrap(),
        "panicked at handlers/src/demo.rs:19"
    );
    assert_eq!(
        health["bots"][0]["summary"],
        "degraded: handler:boom failed · 7 of 8 subsystems healthy"
    );

    // The healing log holds the restart, the failure and the change of state.
    bot.wait_for("the log on disk", |b| {
        entries(&b.json("/api/v1/healing-log?bot=ops"))
            .iter()
            .any(|e| e["action"] == "failed")
    });
    let log = bot.json("/api/v1/healing-log?bot=ops");
    assert_eq!(log["persisted"], true);
    let log = entries(&log);
    let restart = log
        .iter()
        .find(|e| e["subsystem"] == "handler:boom" && e["action"] == "restart")
        .expect("a restart entry");
    assert!(restart["at"].as_str().unwrap().ends_with('Z'), "{restart}");
    assert!(log.iter().any(|e| e["subsystem"] == "health"
        && e["detail"] == "healthy → degraded (handler:boom failed)"
        && e["state"] == "degraded"));
    // Newest first.
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    assert_eq!(entries(&bot.json("/api/v1/healing-log?limit=2")).len(), 2);
    assert!(entries(&bot.json("/api/v1/healing-log?bot=nobody")).is_empty());

    // Forced heal: no token, a wrong token, unknown names, then the right token.
    let path = "/api/v1/heal/ops/handler:boom";
    let (status, _) = bot.heal(path, None, "");
    assert_eq!(status, 401);
    let (status, raw) = bot.request(
        "POST",
        path,
        &[("Authorization", "Basic b3BzOm9wcw==")],
        b"",
    );
    assert_eq!(status, 401, "{raw}");
    let (status, _) = bot.heal(path, Some("test-admin-token-0123456788"), "");
    assert_eq!(status, 403);
    let (status, _) = bot.heal(path, Some("short"), "");
    assert_eq!(status, 403);
    let (status, body) = bot.heal("/api/v1/heal/nobody/handler:boom", Some(TOKEN), "");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bots: ops"),
        "{body}"
    );
    let (status, body) = bot.heal("/api/v1/heal/ops/handler:nothing", Some(TOKEN), "");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("handler:boom"),
        "{body}"
    );
    assert_eq!(
        bot.json("/api/v1/health")["state"],
        "degraded",
        "refused heals change nothing"
    );
    let (status, body) = bot.heal(
        path,
        Some(TOKEN),
        r#"{"by": "alice", "reason": "deploy fixed it"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subsystem"], "handler:boom");
    bot.wait_for("healthy again", |b| {
        b.json("/api/v1/health")["state"] == "healthy"
    });
    assert_eq!(
        subsystem(&bot.json("/api/v1/health"), "handler:boom")["state"],
        "running"
    );
    bot.wait_for("the heal in the log", |b| {
        entries(&b.json("/api/v1/healing-log")).iter().any(|e| {
            e["action"] == "heal"
                && e["subsystem"] == "handler:boom"
                && e["detail"]
                    == "forced by alice over HTTP from 127.0.0.1 (deploy fixed it): fresh instance, restart budget renewed"
        })
    });
    // A whole budget again: the next crash is restarted, not refused.
    bot.say("!boom");
    bot.line_where(|l| l.contains("being restarted"));

    // Liveness, readiness, metrics, the page.
    assert_eq!(bot.json("/livez")["live"], true);
    assert_eq!(bot.json("/readyz")["ready"], true);
    let (status, metrics) = bot.get("/metrics");
    assert_eq!(status, 200);
    for want in [
        "opsbot_health_state{bot=\"ops\",state=\"healthy\"} ",
        "opsbot_restarts_total{bot=\"ops\",kind=\"handler\",name=\"boom\"} 2",
        "opsbot_handled_total{bot=\"ops\",kind=\"handler\",name=\"boom\"} 3",
        "opsbot_messages_in_total{bot=\"ops\"} 3",
        "opsbot_transport_connected{bot=\"ops\"} 1",
        "opsbot_reconnects_total{bot=\"ops\"} 0",
        "opsbot_outbox_queued{bot=\"ops\"} 0",
        "opsbot_handler_duration_seconds_count{bot=\"ops\",handler=\"boom\"} 3",
        "opsbot_handler_duration_seconds_bucket{le=\"+Inf\",bot=\"ops\",handler=\"boom\"} 3",
        "# EOF",
    ] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }
    let (status, page) = bot.get("/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    bot.stop();
}

#[test]
fn a_breaker_opened_by_a_failing_dependency_shows_in_the_api_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // A source that refuses every connection.
    let dead = crate::support::free_port();
    let config = format!(
        r##"
[[bot]]
name = "ops"
admins = ["console"]
pollers = ["http_json"]

[bot.poller.http_json]
to = ["#ops"]
every_secs = 0.2
url = "http://127.0.0.1:{dead}/issues"
items = "/issues"
id = "key"
template = "{{key}}"
breaker = {{ failures = 2, window_secs = 60, open_secs = 600 }}

[bot.transport]
kind = "console"
"##
    );
    let bot = Bot::start(dir.path(), crate::support::free_port(), &config);
    bot.wait_for("the breaker to open", |b| {
        b.json("/api/v1/circuit-breakers")["breakers"][0]["state"] == "open"
    });
    let list = bot.json("/api/v1/circuit-breakers");
    let breaker = &list["breakers"][0];
    assert_eq!(breaker["bot"], "ops");
    let name = breaker["name"].as_str().unwrap().to_owned();
    assert_eq!(name, "127.0.0.1");
    assert!(breaker["failures"].as_u64().unwrap() >= 2, "{breaker}");
    assert_eq!(breaker["opened"], 1);
    assert!(
        breaker["retry_in_secs"].as_u64().unwrap() > 500,
        "{breaker}"
    );
    assert!(breaker["last_error"].as_str().is_some(), "{breaker}");
    let health = bot.json("/api/v1/health");
    assert_eq!(health["state"], "degraded");
    assert_eq!(
        subsystem(&health, &format!("breaker:{name}"))["health"],
        "degraded"
    );
    let (_, metrics) = bot.get("/metrics");
    for want in [
        format!("opsbot_breaker_state{{bot=\"ops\",breaker=\"{name}\",state=\"open\"}} 1"),
        format!("opsbot_breaker_state{{bot=\"ops\",breaker=\"{name}\",state=\"closed\"}} 0"),
        format!("opsbot_breaker_opened_total{{bot=\"ops\",breaker=\"{name}\"}} 1"),
        "opsbot_health_state{bot=\"ops\",state=\"degraded\"} 1".to_owned(),
    ] {
        assert!(metrics.contains(&want), "no `{want}` in\n{metrics}");
    }
    // A forced heal resets it (the source is still down, so it opens again soon after).
    let (status, body) = bot.heal(&format!("/api/v1/heal/ops/breaker:{name}"), Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    bot.wait_for("the reset in the log", |b| {
        entries(&b.json("/api/v1/healing-log"))
            .iter()
            .any(|e| e["action"] == "breaker reset" && e["detail"] == "127.0.0.1: closed by hand")
    });
    assert!(entries(&bot.json("/api/v1/healing-log")).iter().any(|e| {
        e["action"] == "heal"
            && e["subsystem"] == "breaker:127.0.0.1"
            && e["detail"] == "forced by the admin token over HTTP from 127.0.0.1: reset to closed"
    }));
}

#[test]
fn readiness_follows_a_real_irc_server_going_away_and_coming_back() {
    let mut server = crate::support::Server::start(crate::support::Kind::Ngircd);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r##"
[[bot]]
name = "ircbot"

[bot.reconnect]
initial_secs = 0.2
max_secs = 1
critical_after_secs = 2

[bot.transport]
kind = "irc"
server = "127.0.0.1"
port = {}
tls = false
nick = "apibot"
channels = ["#ops"]
"##,
        server.port
    );
    let bot = Bot::start(dir.path(), crate::support::free_port(), &config);
    bot.wait_for("ready", |b| b.get("/readyz").0 == 200);
    assert_eq!(bot.json("/api/v1/health")["state"], "healthy");

    server.kill();
    bot.wait_for("not ready", |b| b.get("/readyz").0 == 503);
    let (_, body) = bot.get("/readyz");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["waiting"][0]
            .as_str()
            .unwrap()
            .starts_with("bot ircbot: transport "),
        "{body}"
    );
    // Down past its 2 s grace: critical, and alive all the same (a restart would not help).
    bot.wait_for("critical", |b| {
        b.json("/api/v1/health")["state"] == "critical"
    });
    assert_eq!(bot.get("/livez").0, 200);
    let (_, metrics) = bot.get("/metrics");
    assert!(
        metrics.contains("opsbot_transport_connected{bot=\"ircbot\"} 0"),
        "{metrics}"
    );

    server.restart();
    bot.wait_for("ready again", |b| b.get("/readyz").0 == 200);
    let health_changes = |b: &Bot| {
        entries(&b.json("/api/v1/healing-log?bot=ircbot"))
            .iter()
            .filter(|e| e["subsystem"] == "health")
            .map(|e| e["detail"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    bot.wait_for("healthy again, in the log", |b| {
        health_changes(b)
            .first()
            .is_some_and(|c| c.ends_with("→ healthy"))
    });
    let log = bot.json("/api/v1/healing-log?bot=ircbot");
    let changes: Vec<&str> = entries(&log)
        .iter()
        .filter(|e| e["subsystem"] == "health")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("recovering → critical (transport")),
        "{changes:?} in {log}"
    );
    assert_eq!(bot.json("/api/v1/health")["state"], "healthy");

    // A forced heal of the transport: the live session is dropped and a new one made at once.
    let reconnects = |b: &Bot| {
        b.json("/api/v1/health")["bots"][0]["transport"]["reconnects"]
            .as_u64()
            .unwrap()
    };
    let before = reconnects(&bot);
    let (status, body) = bot.heal("/api/v1/heal/ircbot/transport", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subsystem"], "transport");
    bot.wait_for("the reconnect", |b| reconnects(b) == before + 1);
    bot.wait_for("ready after the heal", |b| b.get("/readyz").0 == 200);
    assert!(
        entries(&bot.json("/api/v1/healing-log?bot=ircbot"))
            .iter()
            .any(|e| e["subsystem"] == "transport"
                && e["action"] == "heal"
                && e["detail"]
                    == "forced by the admin token over HTTP from 127.0.0.1: reconnecting now")
    );
}

#[test]
fn a_request_that_never_finishes_arriving_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    // Headers that never end, as a slow-loris client sends them.
    let mut slow = TcpStream::connect(("127.0.0.1", bot.port)).unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    // Others are served meanwhile, and the bot answers.
    assert_eq!(bot.get("/livez").0, 200);
    bot.say("!echo meanwhile");
    assert_eq!(bot.next_line(), "meanwhile");
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // 408 (or a plain close) after the 5 s allowed: a generous bound on the way out.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4), "cut off after {took:?}");
    assert!(took < Duration::from_secs(20), "kept for {took:?}");
    bot.stop();
}

#[test]
fn the_healing_log_survives_a_restart_of_the_process_and_stays_capped() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[[bot]]
name = "ops"
admins = ["console"]
handlers = ["boom"]

[bot.supervisor]
max_restarts = 100
backoff_initial_ms = 1
backoff_max_ms = 1

[bot.outbox]
loop_repeats = 0        # the same apology 25 times is no loop here

[bot.transport]
kind = "console"
"#;
    let mut bot = Bot::start_capped(dir.path(), crate::support::free_port(), config, 40);
    // Each crash is a restart and two changes of state: 25 crashes make 75 entries or so.
    for _ in 0..25 {
        bot.say("!boom");
        bot.line_where(|l| l.contains("being restarted"));
    }
    // Every crash on disk (the replies come before the writer commits), the log at its cap.
    bot.wait_for("the 25th restart on disk", |b| {
        let log = b.json("/api/v1/healing-log?limit=1000");
        entries(&log).len() == 40
            && entries(&log)
                .iter()
                .any(|e| e["detail"].as_str().unwrap().ends_with("(restart 25)"))
    });
    let before = bot.json("/api/v1/healing-log?limit=1000");
    let newest_before = entries(&before)[0]["seq"].as_u64().unwrap();
    assert!(newest_before >= 70, "{before}");
    bot.stop();

    // The process again, on the same state: the entries are there, and still 40 at most.
    let mut bot = Bot::start_capped(dir.path(), crate::support::free_port(), config, 40);
    let after = bot.json("/api/v1/healing-log?limit=1000");
    let first_run: Vec<&Value> = entries(&after)
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() <= newest_before)
        .collect();
    assert!(first_run.len() >= 30, "{after}");
    assert!(
        first_run
            .iter()
            .any(|e| e["subsystem"] == "handler:boom" && e["action"] == "restart")
    );
    bot.say("!boom");
    bot.line_where(|l| l.contains("being restarted"));
    bot.wait_for("the new entries", |b| {
        entries(&b.json("/api/v1/healing-log?limit=1000"))[0]["seq"]
            .as_u64()
            .unwrap()
            > newest_before
    });
    assert_eq!(
        entries(&bot.json("/api/v1/healing-log?limit=1000")).len(),
        40
    );
    bot.stop();
}

#[test]
fn requests_built_to_hurt_get_4xx_and_the_bot_goes_on_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    bot.wait_for("ready", |b| b.get("/readyz").0 == 200);
    let auth = format!("Bearer {TOKEN}");
    let auth = [("Authorization", auth.as_str())];
    let heal = "/api/v1/heal/ops/handler:boom";

    // A huge body is refused before it is read.
    let (status, _) = bot.request("POST", heal, &auth, &vec![b'{'; 1 << 20]);
    assert_eq!(status, 413);
    // Bad JSON, with the right token: 400, and nothing healed. Nesting as deep as the body
    // cap allows stops at serde_json's 128 levels.
    let deep = format!("{{\"by\": {}{}}}", "[".repeat(8000), "]".repeat(8000));
    for body in [
        &b"{\"by\": "[..],
        b"[1,2,3]",
        b"{\"by\": 7}",
        b"{\"rm\": \"-rf\"}",
        b"\xff\xfe",
        deep.as_bytes(),
    ] {
        let (status, text) = bot.request("POST", heal, &auth, body);
        assert_eq!(status, 400, "{body:?}: {text}");
    }
    // Unknown methods.
    for (method, path) in [
        ("DELETE", "/api/v1/health"),
        ("PUT", "/api/v1/healing-log"),
        ("GET", heal),
        ("POST", "/metrics"),
        ("PATCH", "/"),
    ] {
        let (status, _) = bot.request(method, path, &auth, b"");
        assert_eq!(status, 405, "{method} {path}");
    }
    // Path traversal and odd encodings in {subsystem} name nothing.
    for path in [
        "/api/v1/heal/ops/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/heal/ops/%2e%2e",
        "/api/v1/heal/ops/handler:boom%00",
        "/api/v1/heal/ops/%ff%fe",
        "/api/v1/heal/ops/handler%3Aboom%0D%0AX-Injected:%201",
        "/api/v1/heal/ops/%E2%80%AEmoob:reldnah",
        "/api/v1/heal/..%2Fops/handler:boom",
    ] {
        let (status, text) = bot.request("POST", path, &auth, b"");
        assert!((400..500).contains(&status), "{path}: {status} {text}");
        assert!(!text.contains("X-Injected: 1\r\n"), "{path}: {text}");
    }
    for path in [
        "/../../etc/passwd",
        "/api/v1/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let (status, text) = bot.get(path);
        assert_eq!(status, 404, "{path}: {text}");
    }
    // Bad queries.
    for q in [
        "limit=abc",
        "limit=0",
        "limit=-1",
        "limit=10001",
        "limit=99999999999999999999999",
        "lmit=3",
    ] {
        let (status, text) = bot.get(&format!("/api/v1/healing-log?{q}"));
        assert_eq!(status, 400, "{q}: {text}");
    }
    // Not HTTP at all, and a header that never ends.
    let (status, _) = raw_request(
        bot.port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(status == 400 || status == 0, "{status}");
    let (status, _) = raw_request(
        bot.port,
        format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(200_000)).as_bytes(),
    );
    assert!(status == 431 || status == 400 || status == 0, "{status}");
    assert_eq!(
        bot.json("/api/v1/health")["state"],
        "healthy",
        "nothing above healed or broke anything"
    );
    assert!(
        !entries(&bot.json("/api/v1/healing-log"))
            .iter()
            .any(|e| e["action"] == "heal")
    );

    // 1,000 requests at once, while the bot answers chat.
    bot.say("!echo before");
    assert_eq!(bot.next_line(), "before");
    let port = bot.port;
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..1000)
                .map(|i| {
                    tokio::spawn(async move {
                        let path = match i % 4 {
                            0 => "/api/v1/health",
                            1 => "/metrics",
                            2 => "/api/v1/healing-log?limit=50",
                            _ => "/readyz",
                        };
                        tokio::task::spawn_blocking(move || http(port, "GET", path, &[], b"").0)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut codes = Vec::new();
            for t in tasks {
                codes.push(t.await.unwrap());
            }
            codes
        })
    });
    // The bot answers while the API is under load: well within a generous bound.
    for i in 0..5 {
        let asked = Instant::now();
        bot.say(&format!("!echo during {i}"));
        assert_eq!(bot.next_line(), format!("during {i}"));
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "an echo took {:?} under HTTP load",
            asked.elapsed()
        );
    }
    let codes = load.join().unwrap();
    assert_eq!(codes.len(), 1000);
    assert!(codes.iter().all(|c| *c == 200), "{:?}", {
        let mut bad: Vec<_> = codes.iter().filter(|c| **c != 200).collect();
        bad.dedup();
        bad
    });
    assert_eq!(bot.json("/livez")["live"], true);
    bot.say("!echo after");
    assert_eq!(bot.next_line(), "after");
    bot.stop();
}

/// A chromedriver on a loopback port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Self {
        let port = crate::support::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test installs chromium-driver)");
        let driver = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status", &[], b"").0 != 200 {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A session in headless Chromium with a phone's screen; answers its id.
    fn phone(&self, profile: &Path) -> String {
        let session = self.call(
            "POST",
            "/session",
            &serde_json::json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--disable-background-networking",
                                 format!("--user-data-dir={}", profile.display())],
                        // A phone's screen.
                        "mobileEmulation": {
                            "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0 }
                        }
                    }
                }}
            }),
        );
        session["sessionId"].as_str().unwrap().to_owned()
    }

    /// Runs `script` in the page; answers what it returns.
    fn run(&self, id: &str, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{id}/execute/sync"),
            &serde_json::json!({ "script": script, "args": [] }),
        )
    }

    /// The element `css` selects; answers its WebDriver reference.
    fn element(&self, id: &str, css: &str) -> String {
        let e = self.call(
            "POST",
            &format!("/session/{id}/element"),
            &serde_json::json!({ "using": "css selector", "value": css }),
        );
        e["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_owned()
    }

    /// Types `text` into the element `css` selects, as a person would.
    fn type_into(&self, id: &str, css: &str, text: &str) {
        let e = self.element(id, css);
        self.call(
            "POST",
            &format!("/session/{id}/element/{e}/value"),
            &serde_json::json!({ "text": text }),
        );
    }

    /// Clicks the element `css` selects.
    fn click(&self, id: &str, css: &str) {
        let e = self.element(id, css);
        self.call(
            "POST",
            &format!("/session/{id}/element/{e}/click"),
            &serde_json::json!({}),
        );
    }

    /// A WebDriver command; answers its `value`.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, text) = http(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {text}");
        v["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows, read in the browser.
const READ_PAGE: &str = r##"
const bot = document.querySelector('section.bot[data-bot="ops"]');
const boom = bot && bot.querySelector('tr[data-subsystem="handler:boom"]');
return {
  loaded: document.body.dataset.loaded === "yes",
  overall: document.getElementById("overall").dataset.health || "",
  bot: bot ? bot.querySelector("h2 .badge").dataset.health : "",
  summary: bot ? bot.querySelector(".summary").textContent : "",
  transport: bot ? bot.querySelector(".transport").textContent : "",
  boom_state: boom ? boom.dataset.state : "",
  boom_health: boom ? boom.querySelector(".badge").dataset.health : "",
  boom_error: boom ? boom.lastChild.textContent : "",
  log_rows: document.querySelectorAll("#log tbody tr").length,
  log_text: document.querySelector("#log tbody").textContent,
  controls: document.querySelectorAll("button, form, input, select, textarea, a[href]").length,
  error_shown: document.getElementById("error").style.display === "block",
  fits: document.documentElement.scrollWidth <= window.innerWidth,
  width: window.innerWidth,
  updated: document.getElementById("updated").textContent,
  log_zone: document.querySelector("#log thead th").textContent,
};
"##;

/// DNS rebinding: a page the operator opens at `rebind.attacker.example`, rebound to
/// 127.0.0.1, used to read the healing log. Now only addresses, `localhost` and the names in
/// `[http] hosts` are answered.
#[test]
fn only_its_own_host_names_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    let port = bot.port.to_string();
    let get_as = |host: &str, path: &str| bot.request("GET", path, &[("Host", host)], b"");
    for path in ["/api/v1/healing-log", "/api/v1/health", "/metrics", "/"] {
        let (status, body) = get_as("rebind.attacker.example", path);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(!body.contains("handler:"), "{path}: {body}");
        let (status, _) = get_as(&format!("rebind.attacker.example:{port}"), path);
        assert_eq!(status, 403, "{path}");
        for ok in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ] {
            assert_eq!(get_as(&ok, path).0, 200, "{ok} {path}");
        }
    }
    // A heal through a foreign name is refused before the token is looked at.
    let auth = format!("Bearer {TOKEN}");
    let (status, _) = bot.request(
        "POST",
        "/api/v1/heal/ops/handler:boom",
        &[
            ("Host", "rebind.attacker.example"),
            ("Authorization", &auth),
        ],
        b"",
    );
    assert_eq!(status, 403);
    drop(bot);
    // A name of the operator's own, listed in [http] hosts.
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let bot = Bot::start_with_http(
        dir.path(),
        port,
        "hosts = [\"opsbot.internal.example\"]\n",
        BOOM_BOT,
    );
    let (status, _) = bot.request(
        "GET",
        "/api/v1/health",
        &[("Host", &format!("Opsbot.Internal.Example:{port}"))],
        b"",
    );
    assert_eq!(status, 200);
    let (status, _) = bot.request("GET", "/api/v1/health", &[("Host", "other.example")], b"");
    assert_eq!(status, 403);
}

/// A heal's `by` and `reason` are words from outside: U+202E reached the healing log through
/// `by`. What the healing log and the API (and so the page) show holds only printable text.
#[test]
fn a_heal_by_with_bidi_and_invisible_characters_is_logged_printable() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    bot.spend_boom_budget();
    let (status, v) = bot.heal(
        "/api/v1/heal/ops/handler:boom",
        Some(TOKEN),
        r#"{"by": "mal\u202elory\u2066\u200b", "reason": "fixed\n\u2067it\u0007"}"#,
    );
    assert_eq!(status, 200, "{v}");
    let bad = |s: &str| s.chars().any(|c| !opsbot::text::is_printable(c));
    assert!(!bad(v["by"].as_str().unwrap()), "{v}");
    assert_eq!(v["by"], "mallory over HTTP from 127.0.0.1 (fixedit)");
    bot.wait_for("the heal on disk", |b| {
        entries(&b.json("/api/v1/healing-log"))
            .iter()
            .any(|e| e["action"] == "heal")
    });
    for e in entries(&bot.json("/api/v1/healing-log")) {
        let detail = e["detail"].as_str().unwrap();
        assert!(!bad(detail), "{detail:?}");
    }
}

const POLLER_BOT: &str = r##"
[[bot]]
name = "ops"
admins = ["console"]
pollers = ["http_json"]

[bot.poller.http_json]
to = ["#ops"]
url = "http://127.0.0.1:9/nothing"
id = "id"
template = "{id}"

[bot.transport]
kind = "console"
"##;

/// A damaged state store made every bot with pollers fail to build (and systemd then looped
/// the whole process). Now the bots run: the file is moved aside and a new store started,
/// which `!status`, the API and the healing log say; and a store that cannot be opened at all
/// leaves the bots running on one in memory, degraded.
#[test]
fn a_damaged_or_unopenable_state_store_never_stops_the_bots() {
    let dir = tempfile::tempdir().unwrap();
    let junk = b"\x00not a store\xff".repeat(4096);
    std::fs::write(dir.path().join("state.redb"), &junk).unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), POLLER_BOT);
    let health = bot.json("/api/v1/health");
    let store = subsystem(&health, "store");
    assert_eq!(store["state"], "started afresh", "{health}");
    assert_eq!(store["health"], "healthy", "{health}");
    assert!(
        store["detail"].as_str().unwrap().contains("moved aside to"),
        "{store}"
    );
    assert_eq!(health["bots"][0]["state"], "healthy", "{health}");
    bot.say("!status");
    let line = bot.line_where(|l| l.starts_with("state store: "));
    assert!(line.contains("could not be read"), "{line}");
    bot.wait_for("the store's entry in the healing log", |b| {
        entries(&b.json("/api/v1/healing-log"))
            .iter()
            .any(|e| e["subsystem"] == "store" && e["action"] == "started afresh")
    });
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), junk);
    bot.stop();

    // Where the store should be there is a folder: nothing can be opened or moved.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state.redb")).unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), POLLER_BOT);
    let health = bot.json("/api/v1/health");
    assert_eq!(health["bots"][0]["state"], "degraded", "{health}");
    let store = subsystem(&health, "store");
    assert_eq!(store["state"], "in memory", "{health}");
    bot.say("!echo still here");
    bot.line_where(|l| l == "still here");
    bot.stop();
}

/// One source for every counter: `/metrics` said `dropped_total{reason="repeat"} 1` while the
/// JSON said `"dropped": 0`. A handler repeating itself (collapsed by the anti-loop guard) now
/// shows the same totals and reasons in `!status`, the JSON and the metrics.
#[test]
fn the_outbox_counters_agree_in_chat_the_json_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    for _ in 0..7 {
        bot.say("!echo same");
    }
    bot.say("!echo next");
    bot.line_where(|l| l == "next");
    let o = &bot.json("/api/v1/health")["bots"][0]["outbox"];
    assert_eq!(o["dropped"], 2, "{o}");
    assert_eq!(o["dropped_by_reason"]["repeat"], 2, "{o}");
    assert_eq!(o["dropped_by_reason"]["queue_full"], 0, "{o}");
    let (_, metrics) = bot.get("/metrics");
    let total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("opsbot_outbox_dropped_total{bot=\"ops\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 2, "{metrics}");
    assert!(
        metrics.contains("opsbot_outbox_dropped_total{bot=\"ops\",reason=\"repeat\"} 2"),
        "{metrics}"
    );
    bot.say("!status");
    let line = bot.line_where(|l| l.starts_with("outbox: "));
    assert!(line.contains(" 2 dropped (repeat 2)"), "{line}");
}

/// An address that guesses tokens gets five tries a minute, then 429 for a minute, the right
/// token included; nothing is healed meanwhile.
#[test]
fn wrong_tokens_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    bot.spend_boom_budget();
    let path = "/api/v1/heal/ops/handler:boom";
    for i in 0..5 {
        let (status, _) = bot.heal(path, Some(&format!("wrong-token-0123456789-{i}")), "");
        assert_eq!(status, 403, "guess {i}");
    }
    let (status, raw) = bot.request(
        "POST",
        path,
        &[("Authorization", "Bearer wrong-token-0123456789-x")],
        b"",
    );
    assert_eq!(status, 429, "{raw}");
    let (status, v) = bot.heal(path, Some(TOKEN), "");
    assert_eq!(status, 429, "{v}");
    assert_eq!(bot.json("/api/v1/health")["state"], "degraded");
    assert!(
        entries(&bot.json("/api/v1/healing-log"))
            .iter()
            .all(|e| e["action"] != "heal")
    );
    // Reading goes on.
    assert_eq!(bot.get("/api/v1/health").0, 200);
}

/// Idle connections are capped (the process's file descriptors are its bots' too): 800 of
/// them used to be accepted. While they are held the process keeps under the cap plus what
/// it had; once they go, the API answers at once.
#[test]
fn idle_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", bot.child.id()))
            .unwrap()
            .count()
    };
    let before = fds();
    let idle: Vec<TcpStream> = (0..800)
        .map(|_| TcpStream::connect(("127.0.0.1", bot.port)).unwrap())
        .collect();
    // Let the server accept what it will.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(fds());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        most <= before + opsbot::status_api::MAX_CONNECTIONS + 8,
        "{most} descriptors open ({before} before, cap {})",
        opsbot::status_api::MAX_CONNECTIONS
    );
    assert!(most > before + 100, "the test held no connections: {most}");
    drop(idle);
    bot.wait_for("the API to answer again", |b| {
        b.get("/api/v1/health").0 == 200
    });
}

#[test]
fn the_status_page_shows_a_failed_handler_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(dir.path(), crate::support::free_port(), BOOM_BOT);
    bot.wait_for("ready", |b| b.get("/readyz").0 == 200);
    bot.spend_boom_budget();

    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let id = driver.phone(&dir.path().join("chromium-profile"));
    let url = format!("http://127.0.0.1:{}/", bot.port);
    driver.call(
        "POST",
        &format!("/session/{id}/url"),
        &serde_json::json!({ "url": url }),
    );
    let read = || {
        driver.call(
            "POST",
            &format!("/session/{id}/execute/sync"),
            &serde_json::json!({ "script": READ_PAGE, "args": [] }),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut page = read();
    while page["loaded"] != true {
        assert!(Instant::now() < deadline, "the page never loaded: {page}");
        std::thread::sleep(Duration::from_millis(100));
        page = read();
    }
    assert_eq!(page["overall"], "degraded", "{page}");
    assert_eq!(page["bot"], "degraded", "{page}");
    assert_eq!(
        page["summary"],
        "degraded: handler:boom failed · 7 of 8 subsystems healthy"
    );
    assert_eq!(page["boom_state"], "failed", "{page}");
    assert_eq!(page["boom_health"], "degraded", "{page}");
    assert_eq!(page["boom_error"], "panicked at handlers/src/demo.rs:19");
    assert!(
        page["transport"]
            .as_str()
            .unwrap()
            .starts_with("transport console: connected"),
        "{page}"
    );
    assert!(page["log_rows"].as_u64().unwrap() >= 3, "{page}");
    assert!(
        page["log_text"]
            .as_str()
            .unwrap()
            .contains("healthy → degraded (handler:boom failed)"),
        "{page}"
    );
    assert_eq!(page["error_shown"], false, "{page}");
    // Readable on a phone: nothing wider than the screen.
    assert_eq!(page["fits"], true, "{page}");
    assert!(page["width"].as_u64().unwrap() <= 400, "{page}");
    // Nothing to press: the page only reads.
    assert_eq!(page["controls"], 0, "{page}");
    // One time zone on the page, labelled: the update time is UTC like the healing log.
    assert_eq!(page["log_zone"], "UTC", "{page}");
    let updated = page["updated"].as_str().unwrap();
    assert!(
        updated.ends_with(" UTC") && updated.len() == "12:34:56 UTC".len(),
        "{page}"
    );

    let shot = driver.call("GET", &format!("/session/{id}/screenshot"), &Value::Null);
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("degraded.png"), &png).unwrap();

    // Healed elsewhere, the page catches up by itself.
    let (status, _) = bot.heal("/api/v1/heal/ops/boom", Some(TOKEN), "");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while read()["bot"] != "healthy" {
        assert!(Instant::now() < deadline, "the page did not refresh itself");
        std::thread::sleep(Duration::from_millis(200));
    }
    let page = read();
    assert_eq!(page["boom_state"], "running", "{page}");
    driver.call("DELETE", &format!("/session/{id}"), &Value::Null);

    // The visit changed nothing: the only heal is the one made above.
    let heals: Vec<Value> = entries(&bot.json("/api/v1/healing-log"))
        .iter()
        .filter(|e| e["action"] == "heal")
        .cloned()
        .collect();
    assert_eq!(heals.len(), 1, "{heals:?}");
    bot.stop();
}

/// What the audit panel shows, read in the browser.
const READ_AUDIT: &str = r##"
const p = document.querySelector('section.panel[data-panel="Audit"]');
return {
  loaded: document.body.dataset.loaded === "yes",
  panel: !!p,
  note: p ? p.querySelector(".note").textContent : "",
  rows: p ? [...p.querySelectorAll("tbody tr")].map(r => [...r.cells].map(c => c.textContent)) : [],
  headings: p ? [...p.querySelectorAll("thead th")].map(h => h.textContent) : [],
  form: !!document.getElementById("admin"),
  stored: JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }),
  injected: document.querySelectorAll("#panels img, #panels script").length,
  pwned: document.body.dataset.pwned || "",
  fits: document.documentElement.scrollWidth <= window.innerWidth,
};
"##;

/// The engine's audit on the status page: a panel that asks for the admin token, refuses a
/// wrong one, and with the right one shows the trail and whether its chain holds; text from
/// an alert is shown as text, and the token is kept nowhere but in the tab's memory.
#[test]
fn the_audit_is_on_the_status_page_behind_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let bot = Bot::start(
        dir.path(),
        port,
        r#"
[[bot]]
name = "ops"
admins = ["console"]
handlers = ["engine"]
[bot.transport]
kind = "console"

[engine]
alertmanager_token = "${OPSBOT_TEST_TOKEN}"

[[engine.route]]
match = ['severity=~".+"']
room = "ops"
"#,
    );
    // A group key with markup in it reaches the audit as the entry's subject.
    let hostile = r#"{}:{alertname=\"<img src=x onerror=document.body.dataset.pwned=1>\"}"#;
    let body = format!(
        r#"{{"version":"4","groupKey":"{hostile}","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"DiskFull","severity":"page"}},"startsAt":"2026-12-06T10:00:00Z","fingerprint":"f1"}}]}}"#
    );
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = http(
        port,
        "POST",
        "/api/v1/alerts/alertmanager",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    bot.line_where(|l| l.contains("FIRING DiskFull"));
    // The panel is listed for the page, with no secret in it.
    let panels = bot.json("/api/v1/panels");
    assert_eq!(panels["panels"][0]["title"], "Audit", "{panels}");
    assert_eq!(panels["panels"][0]["admin"], true, "{panels}");
    assert!(!panels.to_string().contains(TOKEN));

    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let id = driver.phone(&dir.path().join("chromium-profile"));
    driver.call(
        "POST",
        &format!("/session/{id}/url"),
        &serde_json::json!({ "url": format!("http://127.0.0.1:{port}/") }),
    );
    let wait = |what: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = driver.run(&id, READ_AUDIT);
            if ok(&page) {
                return page;
            }
            assert!(Instant::now() < deadline, "{what}: {page}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let page = wait("the panel asks for the token", &|p| {
        p["loaded"] == true && p["note"] == "needs the admin token"
    });
    assert_eq!(page["form"], true, "{page}");
    assert_eq!(page["rows"].as_array().unwrap().len(), 0, "{page}");
    // Markup that ever slipped into the page could run nothing: the policy allows the page's
    // own script by its hash, and no inline handler.
    driver.run(
        &id,
        "const i = document.createElement('img'); \
         i.setAttribute('onerror', 'document.body.dataset.handler = 1'); \
         i.src = 'x'; document.body.append(i); return 0;",
    );

    driver.type_into(&id, "#token", "not-the-admin-token-at-all");
    driver.click(&id, "#admin button");
    wait("a wrong token is refused", &|p| {
        p["note"] == "the admin token was refused"
    });

    driver.type_into(&id, "#token", TOKEN);
    driver.click(&id, "#admin button");
    let page = wait("the trail is shown", &|p| {
        p["note"]
            .as_str()
            .unwrap_or("")
            .starts_with("the chain holds")
    });
    let rows = page["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{page}");
    assert_eq!(
        page["headings"],
        serde_json::json!(["#", "UTC", "step", "who", "subject", "detail"])
    );
    let received = rows
        .iter()
        .find(|r| r[2] == "received")
        .unwrap_or_else(|| panic!("no received entry: {page}"));
    assert_eq!(received[3], "alertmanager", "{page}");
    assert!(
        received[4].as_str().unwrap().contains("<img src=x"),
        "the markup is shown as text: {page}"
    );
    let time = received[1].as_str().unwrap();
    assert_eq!(time.len(), "12:34:56".len(), "{page}");
    assert_eq!(page["injected"], 0, "{page}");
    assert_eq!(page["pwned"], "", "{page}");
    assert_eq!(page["fits"], true, "{page}");
    assert!(
        !page["stored"].as_str().unwrap().contains(TOKEN),
        "the token is in no storage: {page}"
    );
    let handler = driver.run(&id, "return document.body.dataset.handler || '';");
    assert_eq!(handler, "", "an inline handler ran");
    // The field was emptied once read.
    let left = driver.run(&id, "return document.getElementById('token').value;");
    assert_eq!(left, "");
    driver.call("DELETE", &format!("/session/{id}"), &Value::Null);
    drop(bot);
}
