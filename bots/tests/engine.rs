//! The self-healing engine end to end: a real Alertmanager (two, as an HA pair) sends its
//! webhook to the real `opsbot` binary, which posts in chat (the console), asks for approval,
//! runs the action once, and keeps an audit trail that `opsbot audit verify` checks.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::alertmanager::Alertmanager;
use crate::support::free_port;
use crate::support::http::http;
#[cfg(feature = "cluster")]
use crate::support::nats::Nats;

const TOKEN: &str = "am-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const SECRET: &str = "ci-secret-0123456789abcdef";

/// The bot: a console bot with the engine, its API on `port`.
struct Opsbot {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Opsbot {
    fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// Started with more environment variables.
    fn start_with(config: &Path, env: &[(&str, &str)]) -> Self {
        let (child, stdin, lines) = crate::common::spawn_piped(
            Command::new(env!("CARGO_BIN_EXE_opsbot"))
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "warn")
                .env("OPSBOT_ADMIN_TOKEN", ADMIN)
                .env("OPSBOT_ALERTMANAGER_TOKEN", TOKEN)
                .env("OPSBOT_CI_SECRET", SECRET)
                .envs(env.iter().copied()),
        );
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// The first line from now on that satisfies `want`, within `within`.
    fn expect(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no such line within {within:?}; the bot said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line that comes within `within`.
    fn drain(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l.clone());
            out.push(l);
        }
        out
    }

    fn stop(mut self) {
        // The end of the console's input stops the bot gracefully.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the bot did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Opsbot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, rule: &str) -> std::path::PathBuf {
    let path = dir.join("alerts.toml");
    let text = format!(
        r##"
[state]
path = "{state}"

[http]
listen = "127.0.0.1:{port}"
admin_token = "${{OPSBOT_ADMIN_TOKEN}}"

[[bot]]
name = "ops"
admins = ["console"]
handlers = ["engine"]
[bot.transport]
kind = "console"

[engine]
alertmanager_token = "${{OPSBOT_ALERTMANAGER_TOKEN}}"
programs = ["/usr/bin/touch"]
approvers.oncall = ["console"]

[engine.source.ci]
secret = "${{OPSBOT_CI_SECRET}}"

[[engine.route]]
match = ['severity=~"page|warn"']
room = "ops"

[[engine.rule]]
name = "restart"
match = ['alertname="WebDown"', 'service=~".+"']
action = {{ kind = "command", program = "/usr/bin/touch", args = ["{marks}/{{service}}"] }}
target = "{{service}}"
{rule}
"##,
        state = dir.join("state.redb").display(),
        marks = dir.display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An alert as Prometheus sends it to every replica: with the time it became active, so that
/// replicas agree on it; `ends_at` (after that) resolves it.
fn web_down(service: &str, ends_at: Option<&str>) -> String {
    let ends = ends_at.map_or(String::new(), |e| format!(",\"endsAt\":\"{e}\""));
    format!(
        r#"[{{"labels":{{"alertname":"WebDown","service":"{service}","severity":"page","instance":"web-1"}},
        "annotations":{{"summary":"web is down"}},"startsAt":"2026-01-01T00:00:00Z"{ends}}}]"#
    )
}

fn opsbot_audit_verify(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env("OPSBOT_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Alertmanager fires, the bot asks, the approver approves, the action runs once; the
/// resolution refers to the first message; the audit holds, and an edit in it is found.
#[test]
fn alertmanager_fires_the_bot_asks_an_approval_runs_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(
        dir.path(),
        port,
        "approval = \"one\"\napprovers = \"oncall\"",
    );
    let mut bot = Opsbot::start(&config);
    let webhook = format!("http://127.0.0.1:{port}/api/v1/alerts/alertmanager");
    let am = Alertmanager::start(&webhook, TOKEN, &[]);
    am.post_alerts(&web_down("web", None));
    let fired = bot.expect(Duration::from_secs(30), |l| l.contains("FIRING"));
    assert_eq!(fired, "[G1] FIRING WebDown: web-1: web is down");
    let ask = bot.expect(Duration::from_secs(10), |l| l.contains("wants to"));
    assert!(
        ask.starts_with("[A1] rule restart wants to run /usr/bin/touch ")
            && ask.contains("!approve A1"),
        "{ask}"
    );
    assert!(
        !dir.path().join("web").exists(),
        "nothing runs before the approval"
    );
    bot.say("!approve A1");
    bot.expect(Duration::from_secs(10), |l| l.starts_with("[A1] approved"));
    let done = bot.expect(Duration::from_secs(10), |l| l.starts_with("[A1] done"));
    assert!(done.contains("exit status 0"), "{done}");
    assert!(dir.path().join("web").exists(), "the action ran");

    // Resolved in Alertmanager: the same group's reference, and nothing is run.
    am.post_alerts(&web_down("web", Some("2026-01-02T00:00:00Z")));
    let resolved = bot.expect(Duration::from_secs(30), |l| l.contains("RESOLVED"));
    assert_eq!(resolved, "[G1] RESOLVED WebDown: web-1: web is down");
    bot.say("!actions");
    let listed = bot.expect(Duration::from_secs(10), |l| l.starts_with("[A"));
    assert!(listed.starts_with("[A1] succeeded: restart"), "{listed}");

    // The audit over the API, with the admin token only.
    let (status, _) = http(port, "GET", "/api/v1/audit", &[], b"");
    assert_eq!(status, 401);
    let (status, _) = http(
        port,
        "GET",
        "/api/v1/audit",
        &[("Authorization", "Bearer not-the-admin-token")],
        b"",
    );
    assert_eq!(status, 403);
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = http(
        port,
        "GET",
        "/api/v1/audit?limit=50",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"intact\":true"), "{body}");
    for step in [
        "received",
        "planned",
        "approval-asked",
        "approved",
        "started",
        "finished",
    ] {
        assert!(
            body.contains(&format!("\"step\":\"{step}\"")),
            "{step} not in {body}"
        );
    }
    bot.stop();

    let (ok, said) = opsbot_audit_verify(&config);
    assert!(ok, "{said}");
    // Someone edits an entry in the store: verify names it.
    {
        let store = opsbot::store::Store::open(&dir.path().join("state.redb")).unwrap();
        let j = store.journal("engine.audit");
        let (seq, bytes) = j.read(3, 1).unwrap().remove(0);
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"who\":\"", "\"who\":\"mallory+");
        j.overwrite(seq, text.as_bytes()).unwrap();
    }
    let (ok, said) = opsbot_audit_verify(&config);
    assert!(!ok, "{said}");
    assert!(said.contains("audit entry 3"), "{said}");
}

/// Two Alertmanagers of an HA pair both deliver the same group: one notification, one action.
#[test]
fn an_ha_pair_delivering_twice_gives_one_notification_and_one_action() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "");
    let mut bot = Opsbot::start(&config);
    let webhook = format!("http://127.0.0.1:{port}/api/v1/alerts/alertmanager");
    let a = Alertmanager::start(&webhook, TOKEN, &[]);
    let b = Alertmanager::start(&webhook, TOKEN, &[a.cluster_port]);
    // Prometheus sends every alert to every replica.
    a.post_alerts(&web_down("web", None));
    b.post_alerts(&web_down("web", None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.notifications_sent() < 1 || b.notifications_sent() < 1 {
        assert!(
            Instant::now() < deadline,
            "both replicas must deliver: {} and {}\n{}\n{}",
            a.notifications_sent(),
            b.notifications_sent(),
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bot.say("!actions");
    bot.expect(Duration::from_secs(10), |l| l.starts_with("[A1]"));
    let later = bot.drain(Duration::from_secs(2));
    let all = bot.seen.join("\n");
    assert_eq!(all.matches("FIRING").count(), 1, "{all}");
    assert_eq!(all.matches("[A1] done").count(), 1, "{all}");
    assert!(!all.contains("[A2]"), "{all}\n{later:?}");
}

/// Requests that must be refused are, with a 4xx that says why, and change nothing.
#[test]
fn wrong_tokens_bad_signatures_replays_and_bad_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "dry_run = true");
    let mut bot = Opsbot::start(&config);
    let alerts = "/api/v1/alerts/alertmanager";
    let body = br#"{"version":"4","groupKey":"g","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"WebDown","service":"web","severity":"page"},"startsAt":"2026-12-06T10:00:00Z","fingerprint":"f1"}]}"#;
    let good = format!("Bearer {TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the API never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, b) = http(port, "POST", alerts, &[], body);
    assert_eq!(s, 401, "{b}");
    let (s, b) = http(
        port,
        "POST",
        alerts,
        &[("Authorization", "Bearer wrong")],
        body,
    );
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("wrong bearer token"), "{b}");
    let (s, b) = http(
        port,
        "POST",
        alerts,
        &[("Authorization", &good)],
        b"{\"version\":\"4\"",
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("not an Alertmanager webhook payload"), "{b}");
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let (s, _) = http(port, "POST", alerts, &[("Authorization", &good)], &huge);
    assert_eq!(s, 413);
    let (s, b) = http(port, "GET", alerts, &[("Authorization", &good)], b"");
    assert_eq!(s, 405, "{b}");

    // Signed events.
    let event =
        br#"{"id":"build-1","labels":{"alertname":"WebDown","service":"web","severity":"page"}}"#;
    let ts = now_secs();
    let sig = opsbot_engine::signature::sign(SECRET.as_bytes(), ts, event);
    let ts_s = ts.to_string();
    let signed = [
        ("X-Opsbot-Timestamp", ts_s.as_str()),
        ("X-Opsbot-Signature", sig.as_str()),
    ];
    let (s, b) = http(port, "POST", "/api/v1/events/nope", &signed, event);
    assert_eq!(s, 404, "{b}");
    let bad_sig = opsbot_engine::signature::sign(b"another secret entirely", ts, event);
    let (s, b) = http(
        port,
        "POST",
        "/api/v1/events/ci",
        &[
            ("X-Opsbot-Timestamp", &ts_s),
            ("X-Opsbot-Signature", &bad_sig),
        ],
        event,
    );
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("signature does not match"), "{b}");
    let old = (ts - 3600).to_string();
    let old_sig = opsbot_engine::signature::sign(SECRET.as_bytes(), ts - 3600, event);
    let (s, b) = http(
        port,
        "POST",
        "/api/v1/events/ci",
        &[
            ("X-Opsbot-Timestamp", &old),
            ("X-Opsbot-Signature", &old_sig),
        ],
        event,
    );
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("outside the accepted window"), "{b}");
    assert!(
        bot.drain(Duration::from_millis(500)).is_empty(),
        "nothing refused reached chat"
    );

    // The good one goes through once (a dry run says what it would do); its replay does not.
    let (s, b) = http(port, "POST", "/api/v1/events/ci", &signed, event);
    assert_eq!(s, 200, "{b}");
    bot.expect(Duration::from_secs(10), |l| l.contains("FIRING WebDown"));
    let dry = bot.expect(Duration::from_secs(10), |l| l.contains("dry run"));
    assert!(dry.contains("would run /usr/bin/touch"), "{dry}");
    let (s, b) = http(port, "POST", "/api/v1/events/ci", &signed, event);
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("already received"), "{b}");
    let (s, _) = http(port, "POST", alerts, &[("Authorization", &good)], body);
    assert_eq!(s, 200);
    assert!(!dir.path().join("web").exists(), "a dry run does nothing");
}

/// Sends one signed event to the bot's API.
fn send_event(port: u16, body: &str) -> (u16, String) {
    let ts = now_secs();
    let sig = opsbot_engine::signature::sign(SECRET.as_bytes(), ts, body.as_bytes());
    let ts = ts.to_string();
    http(
        port,
        "POST",
        "/api/v1/events/ci",
        &[("X-Opsbot-Timestamp", &ts), ("X-Opsbot-Signature", &sig)],
        body.as_bytes(),
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the API never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process is killed while an action runs: after a restart the action is "outcome
/// unknown" and not run again. An approval asked before a restart is still open after it.
#[test]
fn a_crash_mid_action_is_outcome_unknown_and_an_open_approval_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rules = format!(
        "[[engine.rule]]\nname = \"slow\"\nmatch = ['alertname=\"Slow\"']\n\
         action = {{ kind = \"command\", program = \"/bin/sleep\", args = [\"30\"] }}\n\
         [[engine.rule]]\nname = \"asked\"\nmatch = ['alertname=\"Asked\"', 'service=~\".+\"']\n\
         action = {{ kind = \"command\", program = \"/usr/bin/touch\", args = [\"{}/{{service}}\"] }}\n\
         approval = \"one\"\napprovers = \"oncall\"\n",
        dir.path().display()
    );
    let config = config(dir.path(), port, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "programs = [\"/usr/bin/touch\"]",
        "programs = [\"/usr/bin/touch\", \"/bin/sleep\"]",
    );
    text.push_str(&rules);
    std::fs::write(&config, text).unwrap();

    let mut bot = Opsbot::start(&config);
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"s1","labels":{"alertname":"Slow","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    bot.expect(Duration::from_secs(10), |l| {
        l.starts_with("[A1] running rule slow")
    });
    let (s, b) = send_event(
        port,
        r#"{"id":"a1","labels":{"alertname":"Asked","service":"web","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    bot.expect(Duration::from_secs(10), |l| {
        l.starts_with("[A2] rule asked wants to")
    });
    // SIGKILL: no chance to record anything more.
    let _ = bot.child.kill();
    let _ = bot.child.wait();
    drop(bot);

    let mut bot = Opsbot::start(&config);
    let unknown = bot.expect(Duration::from_secs(20), |l| l.contains("outcome unknown"));
    assert!(unknown.starts_with("[A1] outcome unknown"), "{unknown}");
    bot.say("!approve A2");
    bot.expect(Duration::from_secs(10), |l| l.starts_with("[A2] done"));
    assert!(dir.path().join("web").exists());
    bot.say("!actions");
    bot.expect(Duration::from_secs(10), |l| {
        l.starts_with("[A1] outcome unknown: slow")
    });
    let later = bot.drain(Duration::from_secs(1));
    let all = bot.seen.join("\n");
    assert!(
        !all.contains("[A1] running"),
        "run again after the restart: {all}\n{later:?}"
    );
}

/// A label with shell syntax and a newline reaches the program as one argument: the file it
/// names is made as it is, and nothing else happens.
#[test]
fn a_hostile_label_reaches_the_command_as_one_argument() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "");
    let mut bot = Opsbot::start(&config);
    wait_listening(port);
    let hostile = "web; touch pwned $(touch pwned2) `touch pwned3`\nx";
    let body = format!(
        r#"{{"id":"h1","labels":{{"alertname":"WebDown","service":{},"severity":"page"}}}}"#,
        serde_json_string(hostile)
    );
    let (s, b) = send_event(port, &body);
    assert_eq!(s, 200, "{b}");
    let done = bot.expect(Duration::from_secs(10), |l| l.starts_with("[A1] done"));
    assert!(!done.contains('\n'));
    assert!(
        dir.path().join(hostile).exists(),
        "the file is named by the whole label"
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(
            !dir.path().join(f).exists() && !Path::new(f).exists(),
            "{f}"
        );
    }
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// SIGHUP re-reads the rules without reconnecting anything; a file that does not check is
/// refused and the rules in force stay.
#[test]
fn rules_reload_at_sighup_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut bot = Opsbot::start(&config);
    wait_listening(port);
    bot.say("!rules");
    bot.expect(Duration::from_secs(10), |l| l.starts_with("restart: run"));
    let added = format!(
        "{original}\n[[engine.rule]]\nname = \"second\"\nmatch = ['alertname=\"Other\"']\n\
         action = {{ kind = \"command\", program = \"/usr/bin/touch\", args = [\"x\"] }}\n"
    );
    std::fs::write(&config, &added).unwrap();
    let pid = bot.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        bot.say("!rules");
        let lines = bot.drain(Duration::from_millis(500));
        if lines.iter().any(|l| l.starts_with("second: run")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule never showed: {lines:?}"
        );
    }
    // A broken file: refused, the two rules stay, and the bot still answers.
    std::fs::write(
        &config,
        added.replace("name = \"second\"", "name = \"bad name!\""),
    )
    .unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let auth = format!("Bearer {ADMIN}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(
            port,
            "GET",
            "/api/v1/audit?limit=5",
            &[("Authorization", &auth)],
            b"",
        );
        if body.contains("reload-refused") {
            assert!(body.contains("bad name!"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused reload in the audit: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bot.say("!rules");
    let lines = bot.drain(Duration::from_secs(1));
    assert!(
        lines.iter().any(|l| l.starts_with("second: run")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("restart: run")),
        "{lines:?}"
    );
    assert!(bot.child.try_wait().unwrap().is_none(), "still running");
    // The same from chat, by an admin, once the file is right again.
    std::fs::write(&config, &added).unwrap();
    bot.say("!rules reload");
    let line = bot.expect(Duration::from_secs(10), |l| l.starts_with("rules reloaded"));
    assert_eq!(line, "rules reloaded: 2 rules, 1 routes (were 2 and 1)");
}

/// Overrides from chat: a paused engine notifies but does not act, and says so; a silenced
/// rule does nothing; an [engine]-less config that lists the engine's commands is an error.
#[test]
fn pause_resume_and_silence_from_chat() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "");
    let mut bot = Opsbot::start(&config);
    wait_listening(port);
    bot.say("!automation pause");
    bot.expect(Duration::from_secs(10), |l| {
        l.starts_with("automation paused")
    });
    let (s, b) = send_event(
        port,
        r#"{"id":"p1","labels":{"alertname":"WebDown","service":"web","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let held = bot.expect(Duration::from_secs(10), |l| {
        l.contains("automation is paused")
    });
    assert!(held.contains("(by console"), "{held}");
    bot.say("!automation resume");
    bot.expect(Duration::from_secs(10), |l| l == "automation resumed");
    bot.say("!silence restart 1h");
    bot.expect(Duration::from_secs(10), |l| {
        l == "rule restart silenced for 1h"
    });
    let (s, b) = send_event(
        port,
        r#"{"id":"p2","labels":{"alertname":"WebDown","service":"api","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    bot.expect(Duration::from_secs(10), |l| l.contains("FIRING"));
    bot.say("!silence nosuch soon");
    bot.expect(Duration::from_secs(10), |l| {
        l.starts_with("usage") || l.contains("!silence")
    });
    let later = bot.drain(Duration::from_secs(1));
    assert!(
        !bot.seen.iter().any(|l| l.contains("running rule")),
        "{later:?}"
    );
    assert!(!dir.path().join("web").exists() && !dir.path().join("api").exists());

    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[[bot]]\nname = \"ops\"\nhandlers = [\"engine\"]\n[bot.transport]\nkind = \"console\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(["check", "--config"])
        .arg(&bare)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`bot[0].handlers`: the `engine` handler needs an [engine] table"),
        "{err}"
    );
}

/// A `heal` action heals one of the bot's own subsystems, as `!heal` would, and says so.
#[test]
fn a_heal_action_heals_a_subsystem_of_the_bot() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(dir.path(), port, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[[engine.rule]]\nname = \"heal-it\"\nmatch = ['alertname=\"Stuck\"', 'handler=~\".+\"']\n\
         action = { kind = \"heal\", bot = \"ops\", subsystem = \"handler:{handler}\" }\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut bot = Opsbot::start(&config);
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"st1","labels":{"alertname":"Stuck","handler":"echo","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let done = bot.expect(Duration::from_secs(10), |l| l.starts_with("[A1] done"));
    assert_eq!(
        done,
        "[A1] done: heal handler:echo of bot ops (healing handler:echo)"
    );
    let (s, b) = send_event(
        port,
        r#"{"id":"st2","labels":{"alertname":"Stuck","handler":"nosuch","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let failed = bot.expect(Duration::from_secs(10), |l| l.starts_with("[A2] FAILED"));
    assert!(
        failed.contains("heal handler:nosuch of bot ops"),
        "{failed}"
    );
    bot.say("!echo still here");
    bot.expect(Duration::from_secs(10), |l| l == "still here");
}

/// On IRC (a real ngircd), approvals come from the people the approver list's masks name,
/// as the server reports them: someone else's `!approve` is refused in the channel.
#[cfg(feature = "irc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_irc_only_a_listed_mask_approves() {
    use crate::support::{Kind, Server, User};
    let server = Server::start(Kind::Ngircd);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The console test's config, moved to IRC: the transport, the room and the approvers
    // as IRC proves people (a mask).
    let path = config(
        dir.path(),
        port,
        "approval = \"one\"\napprovers = \"oncall\"",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "[bot.transport]\nkind = \"console\"",
            &format!(
                "[bot.transport]\nkind = \"irc\"\nserver = \"127.0.0.1\"\nport = {}\ntls = false\n\
                 nick = \"opsbot\"\nchannels = [\"#ops\"]",
                server.port
            ),
        )
        .replace("admins = [\"console\"]\n", "")
        .replace(
            "approvers.oncall = [\"console\"]",
            "approvers.oncall = [\"alice!*@*\"]",
        )
        .replace("room = \"ops\"", "room = \"#ops\"");
    assert!(
        text.contains("kind = \"irc\"") && text.contains("alice!*@*") && text.contains("\"#ops\"")
    );
    std::fs::write(&path, text).unwrap();
    let _bot = Opsbot::start(&path);
    let mut alice = User::connect(server.port, "alice").await;
    alice.join("#ops").await;
    let mut mallory = User::connect(server.port, "mallory").await;
    mallory.join("#ops").await;
    // The bot is in the channel once it says something there; wait for its JOIN.
    alice
        .expect(Duration::from_secs(30), |l| {
            let (n, cmd, _) = l.parts();
            n == "opsbot" && cmd == "JOIN"
        })
        .await;
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"i1","labels":{"alertname":"WebDown","service":"web","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let fired = said_by_bot(&mut alice, "FIRING").await;
    assert!(fired.starts_with("[G1] FIRING WebDown"), "{fired}");
    let ask = said_by_bot(&mut alice, "wants to").await;
    assert!(ask.contains("!approve A1"), "{ask}");
    mallory.say("#ops", "!approve A1").await;
    let refused = said_by_bot(&mut mallory, "approver list").await;
    assert!(
        refused.contains("you are not on the approver list"),
        "{refused}"
    );
    assert!(!dir.path().join("web").exists());
    alice.say("#ops", "!approve A1").await;
    said_by_bot(&mut alice, "[A1] done").await;
    assert!(dir.path().join("web").exists());
}

/// The next line the bot says (in the channel or privately) that contains `text`.
#[cfg(feature = "irc")]
async fn said_by_bot(user: &mut crate::support::User, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = user.privmsg_from("opsbot", left).await;
        if line.contains(text) {
            return line;
        }
    }
}

/// An Alertmanager notification (webhook v4) for group `group` with `alerts` as
/// (fingerprint, service, status).
fn notification(group: &str, alerts: &[(&str, &str, &str)]) -> String {
    let all: Vec<String> = alerts
        .iter()
        .map(|(fp, service, status)| {
            let ends = if *status == "resolved" {
                "2026-12-06T10:05:00Z"
            } else {
                "0001-01-01T00:00:00Z"
            };
            format!(
                r#"{{"status":"{status}","labels":{{"alertname":"WebDown","service":"{service}","severity":"page"}},"annotations":{{}},"startsAt":"2026-12-06T10:00:00Z","endsAt":"{ends}","generatorURL":"","fingerprint":"{fp}"}}"#
            )
        })
        .collect();
    let status = if alerts.iter().all(|a| a.2 == "resolved") {
        "resolved"
    } else {
        "firing"
    };
    format!(
        r#"{{"version":"4","groupKey":"{group}","truncatedAlerts":0,"status":"{status}","receiver":"opsbot","groupLabels":{{"alertname":"WebDown"}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am","alerts":[{}]}}"#,
        all.join(",")
    )
}

/// The Webex room the engine's notifications go to in the Webex tests.
#[cfg(feature = "webex")]
const ROOM: &str = "Y2lzY29zcGFyazovL3VzL1JPT00vb3Bz";

/// [`config`] with the bot on `account` of the fake Webex (its token from the environment,
/// `OPSBOT_WEBEX_TOKEN`), notifying [`ROOM`], and each of `more` replaced; answers its path.
#[cfg(feature = "webex")]
fn webex_config(
    dir: &Path,
    port: u16,
    rule: &str,
    fake: &crate::support::webex::FakeWebex,
    account: &crate::support::webex::Account,
    more: &[(&str, &str)],
) -> std::path::PathBuf {
    let path = config(dir, port, rule);
    let transport = fake
        .bot_toml(account, "")
        .replace(&account.token, "${OPSBOT_WEBEX_TOKEN}");
    let mut text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "[bot.transport]\nkind = \"console\"",
            &format!("[bot.transport]\nkind = \"webex\"\n{transport}"),
        )
        .replace("admins = [\"console\"]\n", "")
        .replace("room = \"ops\"", &format!("room = \"{ROOM}\""));
    for (from, to) in more {
        assert!(text.contains(from), "{from} is not in the config");
        text = text.replace(from, to);
    }
    assert!(text.contains("kind = \"webex\"") && text.contains(ROOM));
    std::fs::write(&path, text).unwrap();
    path
}

/// Posts Alertmanager's webhook `body` to the engine on `port`, once it listens.
#[cfg(feature = "webex")]
async fn post_alerts(port: u16, body: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        wait_listening(port);
        let auth = format!("Bearer {TOKEN}");
        http(
            port,
            "POST",
            "/api/v1/alerts/alertmanager",
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
    })
    .await
    .unwrap()
}

/// On Webex the engine asks for an approval with a card: Deny (with the card's reason) and
/// Approve decide as the commands do, answered in the card's thread; the approved action runs
/// once; a second press is told so; someone not on the approver list is refused.
#[cfg(feature = "webex")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_webex_an_approval_is_a_card_whose_buttons_decide() {
    use crate::support::webex::FakeWebex;
    let fake = FakeWebex::start().await;
    let account = fake.add_bot("ops");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = webex_config(
        dir.path(),
        port,
        "approval = \"one\"\napprovers = \"oncall\"",
        &fake,
        &account,
        &[(
            "approvers.oncall = [\"console\"]",
            "approvers.oncall = [\"alice@example.com\", \"bob@example.com\"]",
        )],
    );
    let env = [("OPSBOT_WEBEX_TOKEN", account.token.as_str())];
    let _bot = Opsbot::start_with(&path, &env);
    let post = move |body: String| post_alerts(port, body);
    let card_for = |label: &'static str| {
        let fake = &fake;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(p) = fake.posts().into_iter().find(|p| {
                    p.body["attachments"][0]["content"]["body"][0]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(label))
                }) {
                    return p;
                }
                assert!(Instant::now() < deadline, "no card for {label}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let answer_in = |card: String, n: usize| {
        let fake = &fake;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let answers: Vec<_> = fake
                    .posts()
                    .into_iter()
                    .filter(|p| p.field("parentId").as_deref() == Some(card.as_str()))
                    .collect();
                if answers.len() >= n {
                    return answers[n - 1].shown();
                }
                assert!(Instant::now() < deadline, "no answer {n} under the card");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let (s, b) = post(notification("g1", &[("f1", "web", "firing")])).await;
    assert_eq!(s, 200, "{b}");
    let a1 = card_for("\\[A1\\]").await;
    let content = &a1.body["attachments"][0]["content"];
    assert_eq!(content["actions"][0]["title"], "Approve");
    assert_eq!(content["actions"][1]["title"], "Deny");
    assert!(
        a1.shown().contains("!approve A1") && a1.shown().contains("!deny A1"),
        "the fallback spells the commands out: {}",
        a1.shown()
    );
    fake.press(
        &account,
        "mallory@example.com",
        &a1.id,
        0,
        serde_json::json!({}),
        None,
    );
    assert!(
        answer_in(a1.id.clone(), 1)
            .await
            .contains("[A1] you are not on the approver list `oncall`"),
    );
    fake.press(
        &account,
        "bob@example.com",
        &a1.id,
        1,
        serde_json::json!({ "reason": "maintenance window" }),
        None,
    );
    let denied = answer_in(a1.id.clone(), 2).await;
    assert!(
        denied.contains("[A1] denied") && denied.contains("(maintenance window)"),
        "{denied}"
    );

    let (s, b) = post(notification("g2", &[("f2", "api", "firing")])).await;
    assert_eq!(s, 200, "{b}");
    let a2 = card_for("\\[A2\\]").await;
    fake.press(
        &account,
        "alice@example.com",
        &a2.id,
        0,
        serde_json::json!({}),
        None,
    );
    let approved = answer_in(a2.id.clone(), 1).await;
    assert!(approved.contains("[A2]"), "{approved}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("api").exists() {
        assert!(Instant::now() < deadline, "the approved action never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dir.path().join("web").exists(), "the denied action ran");
    fake.press(
        &account,
        "alice@example.com",
        &a2.id,
        0,
        serde_json::json!({}),
        None,
    );
    assert!(
        answer_in(a2.id.clone(), 2)
            .await
            .contains("you already pressed “Approve” on that card")
    );
}

/// On Webex, a group's first notification starts a thread: its updates and its resolution
/// are answers in that thread, also an update that comes before Webex has confirmed the first
/// message, and also after the bot restarts.
#[cfg(feature = "webex")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_webex_updates_and_the_resolution_are_in_the_first_messages_thread() {
    use crate::support::webex::FakeWebex;
    let fake = FakeWebex::start().await;
    let account = fake.add_bot("ops");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = webex_config(dir.path(), port, "dry_run = true", &fake, &account, &[]);
    let env = [("OPSBOT_WEBEX_TOKEN", account.token.as_str())];
    let bot = Opsbot::start_with(&path, &env);
    let post = move |body: String| post_alerts(port, body);
    // Webex is slow to confirm the first message: the update comes before it has an id.
    fake.set_latency(Duration::from_millis(400));
    let (s, b) = post(notification("g1", &[("f1", "web", "firing")])).await;
    assert_eq!(s, 200, "{b}");
    let first = fake
        .wait_posts(&account.token, 1, Duration::from_secs(30))
        .await;
    let (s, b) = post(notification(
        "g1",
        &[("f1", "web", "firing"), ("f2", "api", "firing")],
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    let notes = |posts: Vec<crate::support::webex::Post>| -> Vec<crate::support::webex::Post> {
        posts
            .into_iter()
            .filter(|p| p.shown().contains("[G1]"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut g1 = notes(first);
    while g1.len() < 2 {
        assert!(Instant::now() < deadline, "no update: {g1:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        g1 = notes(fake.posts());
    }
    assert!(g1[0].shown().contains("[G1] FIRING WebDown"), "{g1:?}");
    assert_eq!(g1[0].field("roomId").as_deref(), Some(ROOM));
    assert_eq!(g1[0].field("parentId"), None, "the first starts the thread");
    assert!(g1[1].shown().contains("api"), "{g1:?}");
    assert_eq!(
        g1[1].field("parentId").as_deref(),
        Some(g1[0].id.as_str()),
        "the update is in the first message's thread"
    );

    // After a restart, the resolution still finds the thread.
    fake.set_latency(Duration::ZERO);
    drop(bot);
    let _bot = Opsbot::start_with(&path, &env);
    let (s, b) = post(notification(
        "g1",
        &[("f1", "web", "resolved"), ("f2", "api", "resolved")],
    ))
    .await;
    assert_eq!(s, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g1 = notes(fake.posts());
        if let Some(r) = g1.iter().find(|p| p.shown().contains("RESOLVED")) {
            assert_eq!(
                r.field("parentId").as_deref(),
                Some(g1[0].id.as_str()),
                "the resolution is in the thread: {g1:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no resolution: {g1:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `kubernetes` action against a fake API server that authorises by the shipped
/// `examples/kubernetes/rbac.yaml`: a rollout restart, a scale, a pod deleted and a node
/// cordoned, each planned in one line; names outside the engine's lists, or not Kubernetes
/// names, never reach the API; a namespace the engine lists but the Role does not grant fails
/// with the API server's 403 in chat, and so does a cluster that is gone.
#[cfg(feature = "kubernetes")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_actions_do_what_the_plan_says_and_only_that() {
    use crate::fake_kubernetes::FakeKubernetes;
    let rbac = include_str!("../../examples/kubernetes/rbac.yaml");
    let api_token = "sa-token-0123456789abcdef";
    let fake = FakeKubernetes::start(api_token, ("opsbot", "opsbot"), rbac).await;
    fake.add_deployment("prod", "web", 2);
    fake.add_deployment("staging", "web", 2);
    fake.add_deployment("kube-system", "coredns", 2);
    fake.add_pod("prod", "web-7d4b9-x2x5q");
    fake.add_node("worker-3");
    fake.add_node("control-1");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let port = free_port();
    let path = config(dir.path(), port, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        r#"
[[engine.rule]]
name = "kube-restart"
match = ['alertname="KubeWebDown"', 'namespace=~".+"', 'deployment=~".+"']
action = {{ kind = "kubernetes", verb = "restart", deployment = "{{deployment}}", namespace = "{{namespace}}" }}
target = "{{namespace}}/{{deployment}}"

[[engine.rule]]
name = "kube-scale"
match = ['alertname="WebBusy"']
action = {{ kind = "kubernetes", verb = "scale", deployment = "web", namespace = "prod", replicas = 4 }}

[[engine.rule]]
name = "kube-pod"
match = ['alertname="PodStuck"', 'pod=~".+"']
action = {{ kind = "kubernetes", verb = "delete", pod = "{{pod}}", namespace = "prod" }}
target = "{{pod}}"

[[engine.rule]]
name = "kube-cordon"
match = ['alertname="NodeBad"', 'node=~".+"']
action = {{ kind = "kubernetes", verb = "cordon", node = "{{node}}" }}
target = "{{node}}"

[engine.kubernetes]
kubeconfig = "{}"
namespaces = ["prod", "staging"]
nodes = ["worker-*"]
timeout = "5s"
"#,
        kubeconfig.display()
    ));
    std::fs::write(&path, text).unwrap();
    let mut bot = Opsbot::start(&path);
    let event = |id: &str, labels: &str| {
        format!(r#"{{"id":"{id}","labels":{{"severity":"page",{labels}}}}}"#)
    };
    let fire = |body: String| {
        tokio::task::spawn_blocking(move || {
            wait_listening(port);
            let (s, b) = send_event(port, &body);
            assert_eq!(s, 200, "{b}");
        })
    };
    let long = Duration::from_secs(20);
    let ended = |l: &str, n: u32| {
        l.starts_with(&format!("[A{n}] done")) || l.starts_with(&format!("[A{n}] FAILED"))
    };

    // A rollout restart, as kubectl does it.
    fire(event(
        "e1",
        r#""alertname":"KubeWebDown","namespace":"prod","deployment":"web""#,
    ))
    .await
    .unwrap();
    let done = bot.expect(long, |l| l.starts_with("[A1] done"));
    assert!(
        done.contains("restart deployment web in namespace prod"),
        "{done}"
    );
    let web = fake.get("prod", "deployments", "web").unwrap();
    let at =
        &web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
    assert!(at.as_str().is_some_and(|a| a.starts_with("20")), "{web}");
    assert_eq!(web["metadata"]["generation"], 2, "{web}");

    // Scale, delete a pod, cordon a node.
    fire(event("e2", r#""alertname":"WebBusy""#)).await.unwrap();
    let done = bot.expect(long, |l| ended(l, 2));
    assert!(
        done.starts_with("[A2] done: scale deployment web in namespace prod to 4 replicas"),
        "{done}"
    );
    assert_eq!(
        fake.get("prod", "deployments", "web").unwrap()["spec"]["replicas"],
        4
    );
    fire(event(
        "e3",
        r#""alertname":"PodStuck","pod":"web-7d4b9-x2x5q""#,
    ))
    .await
    .unwrap();
    let done = bot.expect(long, |l| ended(l, 3));
    assert!(
        done.starts_with("[A3] done: delete pod web-7d4b9-x2x5q in namespace prod"),
        "{done}"
    );
    assert!(fake.get("prod", "pods", "web-7d4b9-x2x5q").is_none());
    fire(event("e4", r#""alertname":"NodeBad","node":"worker-3""#))
        .await
        .unwrap();
    let done = bot.expect(long, |l| ended(l, 4));
    assert!(
        done.starts_with("[A4] done: cordon node worker-3"),
        "{done}"
    );
    assert_eq!(
        fake.get("", "nodes", "worker-3").unwrap()["spec"]["unschedulable"],
        true
    );
    let calls = fake.seen().len();

    // Outside the lists, or not a Kubernetes name: refused before any call.
    for (id, labels) in [
        (
            "e5",
            r#""alertname":"KubeWebDown","namespace":"kube-system","deployment":"coredns""#,
        ),
        (
            "e6",
            r#""alertname":"KubeWebDown","namespace":"prod","deployment":"web/../../nodes/x""#,
        ),
        ("e7", r#""alertname":"NodeBad","node":"control-1""#),
    ] {
        fire(event(id, labels)).await.unwrap();
    }
    let a5 = bot.expect(long, |l| ended(l, 5));
    assert!(
        a5.contains("FAILED") && a5.contains("namespace kube-system is not on the engine's list"),
        "{a5}"
    );
    let a6 = bot.expect(long, |l| ended(l, 6));
    assert!(
        a6.contains("FAILED") && a6.contains("is not a Kubernetes name"),
        "{a6}"
    );
    let a7 = bot.expect(long, |l| ended(l, 7));
    assert!(
        a7.contains("FAILED") && a7.contains("node control-1 is not on the engine's list of nodes"),
        "{a7}"
    );
    assert_eq!(fake.seen().len(), calls, "a refused plan reached the API");
    assert_eq!(
        fake.get("", "nodes", "control-1").unwrap()["spec"]["unschedulable"],
        serde_json::Value::Null
    );

    // Listed by the engine, not granted by the Role: the API server's 403 in chat.
    fire(event(
        "e8",
        r#""alertname":"KubeWebDown","namespace":"staging","deployment":"web""#,
    ))
    .await
    .unwrap();
    let a8 = bot.expect(long, |l| ended(l, 8));
    assert!(
        a8.contains("FAILED")
            && a8.contains("Kubernetes answered 403 Forbidden")
            && a8.contains("cannot patch resource \"deployments\""),
        "{a8}"
    );
    assert!(
        fake.get("staging", "deployments", "web").unwrap()["spec"]["template"]["metadata"]
            .get("annotations")
            .is_none()
    );

    // The cluster is gone: a clear failure, and the bot goes on.
    drop(fake);
    fire(event("e9", r#""alertname":"NodeBad","node":"worker-4""#))
        .await
        .unwrap();
    let a9 = bot.expect(Duration::from_secs(30), |l| ended(l, 9));
    assert!(a9.contains("FAILED") && a9.contains("Kubernetes"), "{a9}");
    bot.say("!echo still here");
    bot.expect(long, |l| l == "still here");
}

/// An HTTP endpoint that counts the calls to each path and answers after `delay`.
#[cfg(feature = "cluster")]
fn counting_endpoint(
    delay: Duration,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let c = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                if path.is_empty() {
                    // A caller killed between connecting and sending: no call was made.
                    return;
                }
                *c.lock().unwrap().entry(path).or_insert(0) += 1;
                std::thread::sleep(delay);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, counts)
}

/// The console config with an `http` rule `hook` calling `127.0.0.1:hook/{job}`, and a
/// `[cluster]` on the NATS at `nats` with the keys in `cluster` (`name = …` and more).
#[cfg(feature = "cluster")]
fn cluster_config(
    dir: &Path,
    port: u16,
    hook: u16,
    nats: u16,
    cluster: &str,
) -> std::path::PathBuf {
    let path = config(dir, port, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        "programs = [\"/usr/bin/touch\"]",
        &format!("programs = [\"/usr/bin/touch\"]\nhosts = [\"127.0.0.1:{hook}\"]"),
    );
    text.push_str(&format!(
        r#"
[[engine.rule]]
name = "hook"
match = ['alertname="Hook"', 'job=~".+"']
action = {{ kind = "http", url = "http://127.0.0.1:{hook}/{{job}}" }}
target = "{{job}}"

[cluster]
servers = ["nats://127.0.0.1:{nats}"]
{cluster}
"#
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// `opsbot worker` with the test's secrets.
#[cfg(feature = "cluster")]
fn start_worker(config: &Path) -> Child {
    let log = config.with_extension(format!("worker-{}.log", fastrand::u32(..)));
    Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(["worker", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("OPSBOT_ADMIN_TOKEN", ADMIN)
        .env("OPSBOT_ALERTMANAGER_TOKEN", TOKEN)
        .env("OPSBOT_CI_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Actions run by workers on NATS JetStream. A worker killed while its action's effect is
/// under way: the effect happened once, the next worker does not repeat it, and chat says the
/// outcome is unknown. A later action runs on the other worker, and its result is said once.
#[cfg(feature = "cluster")]
#[test]
fn a_worker_killed_mid_action_never_makes_the_effect_twice() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let (hook, counts) = counting_endpoint(Duration::from_secs(8));
    let port = free_port();
    let path = cluster_config(
        dir.path(),
        port,
        hook,
        nats.port,
        "name = \"t1\"\nack_wait = \"2s\"",
    );
    let mut bot = Opsbot::start(&path);
    let mut first = start_worker(&path);
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"h1","labels":{"alertname":"Hook","job":"slow","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    // The worker's call has reached the endpoint, which takes 8 s to answer: kill it now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.lock().unwrap().get("/slow").copied().unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            let mut logs = String::new();
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let p = e.unwrap().path();
                if p.to_string_lossy().contains("worker-") {
                    logs.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
            panic!(
                "no worker made the call; bot said {:?}; workers: {logs}",
                bot.drain(Duration::from_millis(100))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = first.kill();
    let _ = first.wait();
    let mut second = start_worker(&path);
    let unknown = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A1] outcome unknown")
    });
    assert!(unknown.contains("stopped answering"), "{unknown}");
    // Another action: the second worker runs it, and its result is said once.
    let (s, b) = send_event(
        port,
        r#"{"id":"h2","labels":{"alertname":"Hook","job":"quick","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let done = bot.expect(Duration::from_secs(30), |l| l.starts_with("[A2] done"));
    assert!(done.contains("POST http://127.0.0.1"), "{done}");
    let later = bot.drain(Duration::from_secs(4));
    assert!(
        !later
            .iter()
            .any(|l| l.starts_with("[A2] done") || l.starts_with("[A1]")),
        "said twice: {later:?}"
    );
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.get("/slow"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("/quick"), Some(&1), "{counts:?}");
    let _ = second.kill();
    let _ = second.wait();
}

/// NATS down, killed and restarted: what was published survives the restart (file storage)
/// and runs once; an action that NATS cannot take in time is reported "not run", never done;
/// the bot answers in chat all along.
#[cfg(feature = "cluster")]
#[test]
fn nats_killed_and_restarted_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nats");
    let nats = Nats::start(&store);
    let (hook, counts) = counting_endpoint(Duration::ZERO);
    let port = free_port();
    let path = cluster_config(
        dir.path(),
        port,
        hook,
        nats.port,
        "name = \"t2\"\nack_wait = \"2s\"\npublish_timeout = \"3s\"",
    );
    let mut bot = Opsbot::start(&path);
    wait_listening(port);
    // Published while no worker runs: it waits in the stream.
    let before = nats.messages();
    let (s, b) = send_event(
        port,
        r#"{"id":"k1","labels":{"alertname":"Hook","job":"kept","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while nats.messages() <= before {
        assert!(
            Instant::now() < deadline,
            "the action never reached the stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // NATS crashes and comes back on the same store: the action is still there.
    let (nats_port, monitor) = nats.kill();
    let nats = Nats::start_on(&store, nats_port, monitor);
    let mut worker = start_worker(&path);
    let done = bot.expect(Duration::from_secs(30), |l| l.starts_with("[A1] done"));
    assert!(done.contains("/kept"), "{done}");

    // NATS down: the bot goes on answering, and the action is reported not run.
    let _ = nats.kill();
    let (s, b) = send_event(
        port,
        r#"{"id":"k2","labels":{"alertname":"Hook","job":"lost","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    bot.say("!echo still here");
    bot.expect(Duration::from_secs(10), |l| l == "still here");
    let failed = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A2] FAILED") || l.starts_with("[A2] done")
    });
    assert!(
        failed.starts_with("[A2] FAILED") && failed.contains("not run: the cluster"),
        "{failed}"
    );
    let later = bot.drain(Duration::from_secs(2));
    assert!(!later.iter().any(|l| l.starts_with("[A1]")), "{later:?}");
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.get("/kept"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("/lost"), None, "{counts:?}");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// A worker runs only what its own lists allow: an action it may not run is left to another
/// worker that may, and when none takes it within `max_deliver` deliveries, chat says it was
/// not run.
#[cfg(feature = "cluster")]
#[test]
fn an_action_a_worker_may_not_run_is_left_to_one_that_may() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let (hook, counts) = counting_endpoint(Duration::ZERO);
    let port = free_port();
    let keys = "name = \"t3\"\nack_wait = \"2s\"\nmax_deliver = 3";
    // A worker elsewhere, with a file of its own that holds only what a worker uses (no bot,
    // none of the bots' secrets), whose lists lack the endpoint's host.
    let elsewhere = dir.path().join("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        format!(
            "[cluster]\nservers = [\"nats://127.0.0.1:{}\"]\n{keys}\n\n[engine]\nprograms = [\"/usr/bin/touch\"]\n",
            nats.port
        ),
    )
    .unwrap();
    let path = cluster_config(dir.path(), port, hook, nats.port, keys);

    let mut bot = Opsbot::start(&path);
    let mut refuser = start_worker(&elsewhere);
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"r1","labels":{"alertname":"Hook","job":"nobody","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let failed = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A1] FAILED") || l.starts_with("[A1] done")
    });
    assert!(
        failed.contains("not run: no worker took it in 3 deliveries")
            && failed.contains("is not on the engine's list of hosts"),
        "{failed}"
    );
    // With a worker that may run it beside the one that may not, it runs, once.
    let mut able = start_worker(&path);
    let (s, b) = send_event(
        port,
        r#"{"id":"r2","labels":{"alertname":"Hook","job":"able","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let done = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A2] FAILED") || l.starts_with("[A2] done")
    });
    assert!(done.starts_with("[A2] done"), "{done}");
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.get("/able"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("/nobody"), None, "{counts:?}");
    for w in [&mut refuser, &mut able] {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// Many actions over two workers while one or the other is SIGKILLed every second and started
/// again: no action runs twice, none is lost (each ends done or "outcome unknown"), and each
/// result is said once.
#[cfg(feature = "cluster")]
#[test]
fn actions_survive_workers_killed_at_random() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let (hook, counts) = counting_endpoint(Duration::from_millis(5));
    let port = free_port();
    let path = cluster_config(
        dir.path(),
        port,
        hook,
        nats.port,
        "name = \"t4\"\nack_wait = \"2s\"",
    );
    let mut bot = Opsbot::start(&path);
    let mut workers = [start_worker(&path), start_worker(&path)];
    wait_listening(port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body = format!(
                    r#"{{"id":"m{i}","labels":{{"alertname":"Hook","job":"j{i}","severity":"page"}}}}"#
                );
                let (s, b) = send_event(port, &body);
                assert_eq!(s, 200, "{b}");
            }
        })
    };
    // Kill one worker or the other every second while the actions come, and start it again.
    let mut ended: std::collections::HashMap<usize, Vec<String>> = std::collections::HashMap::new();
    let mut next_kill = Instant::now() + Duration::from_secs(1);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while ended.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} actions ended; {kills} kills",
            ended.len()
        );
        if Instant::now() >= next_kill && kills < 40 {
            let w = &mut workers[fastrand::usize(..2)];
            let _ = w.kill();
            let _ = w.wait();
            *w = start_worker(&path);
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(fastrand::u64(500..1500));
        }
        for l in bot.drain(Duration::from_millis(100)) {
            let Some(rest) = l.strip_prefix("[A") else {
                continue;
            };
            let Some((n, tail)) = rest.split_once("] ") else {
                continue;
            };
            if tail.starts_with("done")
                || tail.starts_with("FAILED")
                || tail.starts_with("outcome unknown")
            {
                ended.entry(n.parse().unwrap()).or_default().push(l.clone());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    // A moment for any second result to show.
    for l in bot.drain(Duration::from_secs(3)) {
        if let Some((n, _)) = l.strip_prefix("[A").and_then(|r| r.split_once("] "))
            && let Ok(n) = n.parse::<usize>()
            && (l.contains("] done") || l.contains("] FAILED") || l.contains("] outcome unknown"))
        {
            ended.entry(n).or_default().push(l.clone());
        }
    }
    let twice: Vec<_> = ended.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "results said twice: {twice:?}");
    let counts = counts.lock().unwrap().clone();
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "effects twice: {doubled:?}");
    let done = ended.values().filter(|v| v[0].contains("] done")).count();
    let unknown = ended
        .values()
        .filter(|v| v[0].contains("] outcome unknown"))
        .count();
    assert_eq!(done + unknown, N, "{ended:?}");
    // Each action that is done made its call exactly once.
    for v in ended.values().filter(|v| v[0].contains("] done")) {
        let job = v[0]
            .split(&format!("127.0.0.1:{hook}"))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(counts.get(&job), Some(&1), "{job}: {}", v[0]);
    }
    assert!(kills >= 5, "the workers were killed {kills} times only");
    eprintln!("{N} actions, {kills} kills: {done} done, {unknown} outcome unknown, none twice");
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// `worker = true`: the bot's own process also works the cluster's actions.
#[cfg(feature = "cluster")]
#[test]
fn a_bot_with_worker_true_runs_the_actions_itself() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let (hook, counts) = counting_endpoint(Duration::ZERO);
    let port = free_port();
    let path = cluster_config(
        dir.path(),
        port,
        hook,
        nats.port,
        "name = \"t5\"\nworker = true",
    );
    let mut bot = Opsbot::start(&path);
    wait_listening(port);
    let (s, b) = send_event(
        port,
        r#"{"id":"w1","labels":{"alertname":"Hook","job":"self","severity":"page"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let done = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A1] done") || l.starts_with("[A1] FAILED")
    });
    assert!(done.starts_with("[A1] done"), "{done}");
    assert_eq!(counts.lock().unwrap().get("/self"), Some(&1));
}

/// Whether the bot of the process whose API is on `port` holds its lead (`None`: not known
/// yet).
#[cfg(feature = "cluster")]
fn lead_held(port: u16) -> Option<bool> {
    let (code, body) = http(port, "GET", "/api/v1/health", &[], b"");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["bots"][0]["lead"]["held"].as_bool()
}

#[cfg(feature = "cluster")]
fn wait_lead(port: u16, held: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lead_held(port) != Some(held) {
        assert!(
            Instant::now() < deadline,
            "lead held {held} not seen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two processes run the engine (`active_standby`), each fed by one Alertmanager of an HA pair:
/// the alert is decided once, by the process that holds the engine's lead, and acted on once.
/// When that process is killed, the other decides the next alert, once.
#[cfg(feature = "cluster")]
#[test]
fn duplicated_deliveries_to_two_engine_processes_make_one_action() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let (hook, counts) = counting_endpoint(Duration::ZERO);
    let extra = "name = \"ha\"\nworker = true\nactive_standby = true\nlease_ttl = \"2s\"";
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = Opsbot::start(&cluster_config(&dir_a, port_a, hook, nats.port, extra));
    wait_listening(port_a);
    wait_lead(port_a, true);
    let mut b = Opsbot::start(&cluster_config(&dir_b, port_b, hook, nats.port, extra));
    wait_listening(port_b);
    wait_lead(port_b, false);
    let am_a = Alertmanager::start(
        &format!("http://127.0.0.1:{port_a}/api/v1/alerts/alertmanager"),
        TOKEN,
        &[],
    );
    let am_b = Alertmanager::start(
        &format!("http://127.0.0.1:{port_b}/api/v1/alerts/alertmanager"),
        TOKEN,
        &[am_a.cluster_port],
    );
    let hook_alert = |job: &str| {
        format!(
            r#"[{{"labels":{{"alertname":"Hook","job":"{job}","severity":"page"}},"startsAt":"2026-01-01T00:00:00Z"}}]"#
        )
    };
    am_a.post_alerts(&hook_alert("once"));
    am_b.post_alerts(&hook_alert("once"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while am_a.notifications_sent() < 1 || am_b.notifications_sent() < 1 {
        assert!(
            Instant::now() < deadline,
            "both replicas must deliver: {} and {}",
            am_a.notifications_sent(),
            am_b.notifications_sent()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = a.expect(Duration::from_secs(30), |l| l.starts_with("[A1] done"));
    assert!(done.contains("/once"), "{done}");
    let later = a.drain(Duration::from_secs(3));
    let all = a.seen.join("\n");
    assert_eq!(all.matches("FIRING").count(), 1, "{all}");
    assert_eq!(all.matches("[A1] done").count(), 1, "{all}");
    assert!(!all.contains("[A2]"), "{all}\n{later:?}");
    assert!(
        b.drain(Duration::from_millis(200)).is_empty(),
        "the standby said nothing"
    );
    assert_eq!(counts.lock().unwrap().get("/once"), Some(&1));
    // Decided once: the standby's trail has its leads' steps, and not one decision.
    let auth = format!("Bearer {ADMIN}");
    let (code, body) = http(
        port_b,
        "GET",
        "/api/v1/audit",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let trail: serde_json::Value = serde_json::from_str(&body).unwrap();
    let steps: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert!(
        steps.iter().all(|s| s.starts_with("lead ")),
        "the standby decided something: {steps:?}"
    );

    // The deciding process dies: the other takes over and decides the next alert, once.
    let _ = a.child.kill();
    let _ = a.child.wait();
    wait_lead(port_b, true);
    am_b.post_alerts(&hook_alert("next"));
    am_a.post_alerts(&hook_alert("next"));
    let done = b.expect(Duration::from_secs(30), |l| {
        l.contains("done") && l.contains("/next")
    });
    assert!(done.starts_with("[A"), "{done}");
    b.drain(Duration::from_secs(3));
    let all = b.seen.join("\n");
    let done_next = all
        .lines()
        .filter(|l| l.contains("done") && l.contains("/next"))
        .count();
    assert_eq!(done_next, 1, "said once: {all}");
    assert_eq!(counts.lock().unwrap().get("/next"), Some(&1));
    // The group still fires `once`, which the new engine had not seen: it may propose it
    // again, and the workers' claim on its key keeps the effect to the one already made.
    assert_eq!(
        counts.lock().unwrap().get("/once"),
        Some(&1),
        "not again: {all}"
    );
}

/// The NATS-backed Kubernetes layout (`examples/kubernetes/cluster`), as shipped but for its
/// addresses and paths: `nats.conf`'s users and permissions on a real nats-server with TLS,
/// `bots.toml`'s bot (on the console) and engine, `worker.toml`'s worker acting on a fake
/// Kubernetes API that grants only `workers.yaml`'s Role. An alert, an approval in chat, and a
/// rollout restart made once by the worker; the worker's NATS user may not publish an action
/// or touch a lease.
#[cfg(all(feature = "cluster", feature = "kubernetes"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_cluster_layout_runs_with_its_own_users_and_permissions() {
    // This test's own NATS clients take rustls's process default too.
    opsbot::tls::install_default_provider();
    use crate::fake_kubernetes::FakeKubernetes;
    const BOTS_PW: &str = "bots-nats-password-0123456789";
    const WORKER_PW: &str = "worker-nats-password-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes/cluster");
    let read = |f: &str| std::fs::read_to_string(shipped.join(f)).unwrap();

    // NATS, with TLS.
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(d.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(d.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(d.join("ca.crt"), cert.cert.pem()).unwrap();
    let (port, monitor) = (free_port(), free_port());
    let mut conf = read("nats.conf")
        .replace("port: 4222", &format!("port: {port}"))
        .replace("http: 8222", &format!("http: {monitor}"))
        .replace("/etc/nats/tls/", &format!("{}/", d.display()))
        .replace("/data/jetstream", &d.join("js").display().to_string());
    // One server here: no cluster of three.
    let from = conf.find("\ncluster {").unwrap();
    let to = from + conf[from..].find("\n}\n").unwrap() + 3;
    conf.replace_range(from..to, "\n");
    std::fs::write(d.join("nats.conf"), conf).unwrap();
    let _nats = Nats::start_with_config(
        &d.join("nats.conf"),
        port,
        monitor,
        &[
            ("POD_NAME", "nats-0"),
            ("OPSBOT_NATS_PASSWORD", BOTS_PW),
            ("WORKER_NATS_PASSWORD", WORKER_PW),
        ],
    );
    let nats_here = |text: String| {
        text.replace(
            "tls://nats.opsbot.svc:4222",
            &format!("tls://127.0.0.1:{port}"),
        )
        .replace(
            "/etc/opsbot/nats/ca.crt",
            &d.join("ca.crt").display().to_string(),
        )
        // One server here, so one copy of each stream.
        .replace("replicas = 3", "replicas = 1")
    };

    // The bots' config: the bot on the console, here.
    let api = free_port();
    let bots = nats_here(read("bots.toml"));
    let from = bots.find("[bot.transport]").unwrap();
    let to = bots.find("\n[engine]").unwrap();
    let bots = format!(
        "{}[bot.transport]\nkind = \"console\"\n{}",
        &bots[..from],
        &bots[to..]
    )
    .replace("0.0.0.0:9120", &format!("127.0.0.1:{api}"))
    .replace(
        "/var/lib/opsbot/state.redb",
        &d.join("state.redb").display().to_string(),
    )
    .replace(
        "admins = [\"*!*@ops.example.com\"]",
        "admins = [\"console\"]",
    )
    .replace(
        "approvers.oncall = [\"*!*@ops.example.com\"]",
        "approvers.oncall = [\"console\"]",
    )
    .replace("room = \"#ops\"", "room = \"ops\"");
    std::fs::write(d.join("bots.toml"), bots).unwrap();

    // The worker, on a Kubernetes API that grants it workers.yaml's Role only.
    let fake = FakeKubernetes::start(
        "worker-sa-token-0123456789",
        ("opsbot", "opsbot-worker"),
        &read("workers.yaml"),
    )
    .await;
    fake.add_deployment("prod", "web", 2);
    std::fs::write(d.join("kubeconfig"), fake.kubeconfig()).unwrap();
    let worker = nats_here(read("worker.toml")).replace(
        "namespaces = [\"prod\"]",
        &format!(
            "namespaces = [\"prod\"]\nkubeconfig = \"{}\"",
            d.join("kubeconfig").display()
        ),
    );
    std::fs::write(d.join("worker.toml"), worker).unwrap();

    let mut bot = Opsbot::start_with(&d.join("bots.toml"), &[("NATS_PASSWORD", BOTS_PW)]);
    let mut worker = Command::new(env!("CARGO_BIN_EXE_opsbot"))
        .args(["worker", "--config"])
        .arg(d.join("worker.toml"))
        .env("NATS_PASSWORD", WORKER_PW)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(api);
    wait_lead(api, true);
    let alert = r#"{"version":"4","groupKey":"k8s","truncatedAlerts":0,"status":"firing","receiver":"opsbot","groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"","alerts":[{"status":"firing","labels":{"alertname":"WebDown","namespace":"prod","deployment":"web","severity":"page"},"annotations":{},"startsAt":"2026-12-06T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"f1"}]}"#;
    let auth = format!("Bearer {TOKEN}");
    let (code, body) = http(
        api,
        "POST",
        "/api/v1/alerts/alertmanager",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        alert.as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let ask = bot.expect(Duration::from_secs(30), |l| l.contains("wants to"));
    assert!(
        ask.contains("restart deployment web in namespace prod"),
        "{ask}"
    );
    bot.say("!approve A1");
    let done = bot.expect(Duration::from_secs(30), |l| {
        l.starts_with("[A1] done") || l.starts_with("[A1] FAILED")
    });
    assert!(
        done.starts_with("[A1] done"),
        "{done}\nworker: {}",
        std::fs::read_to_string(d.join("worker.log")).unwrap_or_default()
    );
    let patches: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| format!("{s:?}").contains("PATCH"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");

    // The workers' NATS user may not make the others act or speak.
    let (tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let client =
        async_nats::ConnectOptions::with_user_and_password("worker".into(), WORKER_PW.into())
            .add_root_certificates(d.join("ca.crt"))
            .require_tls(true)
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = e {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(format!("tls://127.0.0.1:{port}"))
            .await
            .unwrap();
    for subject in ["opsbot.actions", "opsbot.alerts", "$KV.opsbot_leases.x"] {
        client.publish(subject, "x".into()).await.unwrap();
        client.flush().await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), refused.recv())
            .await
            .unwrap_or_else(|_| panic!("publishing to {subject} was not refused"))
            .unwrap();
        assert!(
            e.to_lowercase().contains("permissions violation") && e.contains(subject),
            "{subject}: {e}"
        );
    }
    let _ = worker.kill();
    let _ = worker.wait();
}
