//! Bots in active/standby across processes: two `opsbot run` processes carry the same IRC bot,
//! with a real nats-server holding the bot's lease and a real ngircd. One speaks; the other
//! stands by, not even connected; when the holder is killed, frozen, cut off from NATS or
//! stopped, the other takes over, and the channel never hears the bot twice.

#![cfg(all(feature = "cluster", feature = "irc"))]

mod common;
#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cut::CutProxy;
use support::http::http;
use support::nats::Nats;
use support::{Kind, Server, User, free_port};

const ADMIN: &str = "admin-token-0123456789";
const ROOM: &str = "#ops";

/// One `opsbot run` process carrying the bot `ops`.
struct Node {
    child: Option<Child>,
    api: u16,
    dir: PathBuf,
}

impl Node {
    /// Started with its own state folder and status API port; the bot's lease on NATS at
    /// `nats` (the server's port, or a proxy's in front of it).
    fn start(dir: &Path, name: &str, irc: u16, nats: u16, ttl: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let api = free_port();
        let config = format!(
            r##"
[state]
path = "{state}"

[http]
listen = "127.0.0.1:{api}"
admin_token = "${{OPSBOT_ADMIN_TOKEN}}"

[[bot]]
name = "ops"
[bot.transport]
kind = "irc"
server = "127.0.0.1"
port = {irc}
tls = false
nick = "opsbot"
channels = ["{ROOM}"]
[bot.reconnect]
initial_secs = 1
max_secs = 2

[cluster]
servers = ["nats://127.0.0.1:{nats}"]
name = "standby"
lease_ttl = "{ttl}"

[engine]
alertmanager_token = "${{OPSBOT_ADMIN_TOKEN}}"
"##,
            state = dir.join("state.redb").display(),
        );
        let path = dir.join("bot.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = common::opsbot()
            .args(["run", "--config"])
            .arg(&path)
            .env("OPSBOT_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            api,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Killed outright (SIGKILL): it releases nothing.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asked to stop (SIGTERM), and waited for.
    fn stop(&mut self) {
        self.signal("-TERM");
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{} did not stop",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// What its status API says of the bot (`null` while the API is not up).
    fn bot(&self) -> Value {
        let (code, body) = http(self.api, "GET", "/api/v1/health", &[], b"");
        if code != 200 {
            return Value::Null;
        }
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["bots"][0].clone()
    }

    /// Waits (at most `within`) until the bot's status satisfies `ok`; answers it.
    fn wait(&mut self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "{}: exited ({status})\nlog:\n{}",
                    self.dir.display(),
                    self.log()
                );
            }
            let b = self.bot();
            if ok(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not {what} within {within:?}; status: {b}\nlog:\n{}",
                self.dir.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn holds(&mut self, within: Duration) -> Value {
        self.wait("holding the lead", within, |b| {
            b["lead"]["held"] == true && b["transport"]["connection"] == "connected"
        })
    }

    fn stands_by(&mut self, within: Duration) -> Value {
        self.wait("standing by", within, |b| {
            b["lead"]["held"] == false && b["transport"]["connection"] == "standby"
        })
    }

    fn me(&self) -> String {
        self.bot()["lead"]["me"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The steps of the engine's audit trail, as `step by who`.
    fn audit(&self) -> Vec<String> {
        let auth = format!("Bearer {ADMIN}");
        let (code, body) = http(
            self.api,
            "GET",
            "/api/v1/audit",
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} by {}",
                    e["step"].as_str().unwrap(),
                    e["who"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A person in the bot's channel, keeping every answer any bot gave.
struct Room {
    user: User,
    answers: Vec<(String, String)>,
}

impl Room {
    async fn join(port: u16) -> Self {
        let mut user = User::connect(port, "alice").await;
        user.join(ROOM).await;
        Self {
            user,
            answers: Vec::new(),
        }
    }

    /// Reads until `deadline`, or until an answer `until` arrives; answers whether it did.
    async fn read(&mut self, deadline: Instant, until: &str) -> bool {
        while let Some(l) = self.user.next_line(deadline).await {
            if let Some((nick, target, text)) = l.privmsg()
                && nick.starts_with("opsbot")
                && target.eq_ignore_ascii_case(ROOM)
            {
                let done = text == until;
                self.answers.push((nick, text));
                if done {
                    return true;
                }
            }
        }
        false
    }

    /// Asks `!echo <text>` once a second until some bot answers it, for at most `within`;
    /// answers how long that took.
    async fn until_answered(&mut self, text: &str, within: Duration) -> Duration {
        let t = Instant::now();
        let mut n = 0;
        loop {
            let probe = format!("{text}-{n}");
            self.user.say(ROOM, &format!("!echo {probe}")).await;
            if self
                .read(Instant::now() + Duration::from_secs(1), &probe)
                .await
            {
                return t.elapsed();
            }
            n += 1;
            assert!(
                t.elapsed() < within,
                "nobody answered {text} within {within:?}; answers: {:?}",
                self.answers
            );
        }
    }

    /// Asks `!echo <text>` and waits for the answer.
    async fn ask(&mut self, text: &str) {
        self.user.say(ROOM, &format!("!echo {text}")).await;
        assert!(
            self.read(Instant::now() + Duration::from_secs(20), text)
                .await,
            "no answer to {text}; answers: {:?}",
            self.answers
        );
    }

    /// The bots in the channel now, by `NAMES`.
    async fn bots_present(&mut self) -> Vec<String> {
        self.user.raw(&format!("NAMES {ROOM}")).await;
        let mut bots = Vec::new();
        loop {
            let l = self
                .user
                .expect(Duration::from_secs(10), |l| {
                    let (_, cmd, _) = l.parts();
                    cmd == "353" || cmd == "366"
                })
                .await;
            let (_, cmd, params) = l.parts();
            if cmd == "366" {
                return bots;
            }
            let names = params.last().cloned().unwrap_or_default();
            bots.extend(
                names
                    .split(' ')
                    .map(|n| n.trim_start_matches(['@', '+']).to_owned())
                    .filter(|n| n.starts_with("opsbot")),
            );
        }
    }

    /// Every answer was given once: no text from two voices, or twice from one.
    fn each_once(&self) {
        let mut seen = std::collections::HashMap::<&str, Vec<&str>>::new();
        for (nick, text) in &self.answers {
            seen.entry(text).or_default().push(nick);
        }
        let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(twice.is_empty(), "answered more than once: {twice:?}");
    }
}

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_voice_and_a_take_over_when_the_holder_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "2s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "2s");
    let standby = b.stands_by(PATIENCE);
    assert_eq!(standby["lead"]["holder"], a.me(), "{standby}");
    let mut room = Room::join(irc.port).await;
    for i in 0..5 {
        room.ask(&format!("one-{i}")).await;
    }
    assert_eq!(
        room.bots_present().await,
        ["opsbot"],
        "the standby is not connected"
    );
    let a_me = a.me();

    a.kill();
    let took = room.until_answered("after-kill", PATIENCE).await;
    eprintln!("take-over after SIGKILL: {took:.1?}");
    let holder = b.holds(PATIENCE);
    assert_eq!(holder["lead"]["holder"], b.me(), "{holder}");
    assert_eq!(room.bots_present().await.len(), 1);
    room.ask("after").await;
    room.each_once();
    let audit = b.audit();
    assert!(
        audit.contains(&format!("lead acquired by {}", b.me())),
        "{audit:?}"
    );
    assert!(!audit.iter().any(|s| s.contains(&a_me)), "{audit:?}");
    let (_, healing) = http(b.api, "GET", "/api/v1/healing-log", &[], b"");
    assert!(
        healing.contains("holds the bot's lead now"),
        "the take-over is in the healing log: {healing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_quiet_when_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "2s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "2s");
    b.stands_by(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;

    // Frozen: its connection stays open, and what is asked meanwhile waits in its socket.
    a.signal("-STOP");
    room.user.say(ROOM, "!echo while-frozen").await;
    // The standby takes the lease once it runs out, but not the nick, which the frozen
    // connection still holds: it waits unregistered, so the bot is never on the server twice.
    let t = Instant::now();
    b.wait("holding the lease", PATIENCE, |v| v["lead"]["held"] == true);
    eprintln!("lease taken over after SIGSTOP: {:.1?}", t.elapsed());
    assert_eq!(room.bots_present().await, ["opsbot"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(room.bots_present().await, ["opsbot"]);

    // Running again, it finds its lead run out: it answers nothing of what it read, and
    // closes its connection; the new holder then gets the nick and answers.
    a.signal("-CONT");
    let took = room.until_answered("after-thaw", PATIENCE).await;
    eprintln!("answering after SIGCONT: {took:.1?}");
    a.stands_by(PATIENCE);
    let b_me = b.me();
    let st = a.wait("seeing the new holder", PATIENCE, |v| {
        v["lead"]["holder"] == b_me.as_str()
    });
    assert_eq!(st["transport"]["connection"], "standby", "{st}");
    room.ask("after").await;
    room.each_once();
    assert!(
        !room.answers.iter().any(|(_, t)| t == "while-frozen"),
        "the frozen holder spoke again: {:?}",
        room.answers
    );
    assert_eq!(room.bots_present().await, ["opsbot"]);
    let (_, healing) = http(a.api, "GET", "/api/v1/healing-log", &[], b"");
    assert!(
        healing.contains("lost the bot's lead"),
        "the loss is in the healing log: {healing}"
    );
    assert!(
        a.audit().contains(&format!("lead lost by {}", a.me())),
        "{:?}",
        a.audit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_nats_goes_quiet_and_the_standby_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    let proxy = CutProxy::start(nats.port).await;
    let mut a = Node::start(dir.path(), "a", irc.port, proxy.port, "2s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "2s");
    b.stands_by(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;

    // What `a` says to NATS is dropped from now on: its renewals never arrive.
    proxy.hold();
    let t = Instant::now();
    b.holds(PATIENCE);
    eprintln!("take-over after a cut from NATS: {:.1?}", t.elapsed());
    a.stands_by(PATIENCE);
    // Connected is not yet in the channel: asked until it has joined.
    room.until_answered("during", PATIENCE).await;

    // The partition heals: `a` sees the lease held by `b`, and stays quiet.
    proxy.cut();
    let b_me = b.me();
    let st = a.wait("seeing the new holder", PATIENCE, |v| {
        v["lead"]["holder"] == b_me.as_str()
    });
    assert_eq!(st["transport"]["connection"], "standby", "{st}");
    room.ask("healed").await;
    room.each_once();
    assert_eq!(room.bots_present().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_hands_over_before_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    // A lease of a minute: a take-over within half of it was handed over, not waited out.
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "60s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "60s");
    b.stands_by(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;
    let a_me = a.me();
    a.stop();
    let took = room.until_answered("after-stop", PATIENCE).await;
    eprintln!("hand-over after SIGTERM: {took:.1?}");
    b.holds(PATIENCE);
    room.each_once();
    // `a`'s own trail says it let go.
    let mut node_a = Node::start(dir.path(), "a", irc.port, nats.port, "60s");
    node_a.stands_by(PATIENCE);
    assert!(
        node_a.audit().contains(&format!("lead released by {a_me}")),
        "{:?}",
        node_a.audit()
    );
}
