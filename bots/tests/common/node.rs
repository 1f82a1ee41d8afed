//! Processes of `opsbot run` carrying the same IRC bot with a lease on NATS, and a person in the
//! bot's channel: what the active/standby tests and the hand-over benchmark share.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::User;
use crate::support::free_port;
use crate::support::http::http;

pub const ADMIN: &str = "admin-token-0123456789";
pub const ROOM: &str = "#ops";

/// One `opsbot run` process carrying the bot `ops`.
pub struct Node {
    child: Option<Child>,
    pub api: u16,
    dir: PathBuf,
}

impl Node {
    /// Started with its own state folder and status API port; the bot's lease on NATS at
    /// `nats` (the server's port, or a proxy's in front of it).
    pub fn start(dir: &Path, name: &str, irc: u16, nats: u16, ttl: &str) -> Self {
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
[bot.budget]
commands_per_minute = 0

[cluster]
servers = ["nats://127.0.0.1:{nats}"]
name = "standby"
active_standby = true
lease_ttl = "{ttl}"

[engine]
alertmanager_token = "${{OPSBOT_ADMIN_TOKEN}}"
"##,
            state = dir.join("state.redb").display(),
        );
        let path = dir.join("bot.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = crate::common::opsbot()
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Killed outright (SIGKILL): it releases nothing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asked to stop (SIGTERM), and waited for.
    pub fn stop(&mut self) {
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
    pub fn bot(&self) -> Value {
        let (code, body) = http(self.api, "GET", "/api/v1/health", &[], b"");
        if code != 200 {
            return Value::Null;
        }
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["bots"][0].clone()
    }

    /// Waits (at most `within`) until the bot's status satisfies `ok`; answers it.
    pub fn wait(&mut self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
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
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn holds(&mut self, within: Duration) -> Value {
        self.wait("holding the lead", within, |b| {
            b["lead"]["held"] == true && b["transport"]["connection"] == "connected"
        })
    }

    pub fn stands_by(&mut self, within: Duration) -> Value {
        self.wait("standing by", within, |b| {
            b["lead"]["held"] == false && b["transport"]["connection"] == "standby"
        })
    }

    pub fn me(&self) -> String {
        self.bot()["lead"]["me"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The steps of the engine's audit trail, as `step by who`.
    pub fn audit(&self) -> Vec<String> {
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

    pub fn log(&self) -> String {
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
pub struct Room {
    pub user: User,
    pub answers: Vec<(String, String)>,
}

impl Room {
    pub async fn join(port: u16) -> Self {
        let mut user = User::connect(port, "alice").await;
        user.join(ROOM).await;
        Self {
            user,
            answers: Vec::new(),
        }
    }

    /// Reads until `deadline`, or until an answer `until` arrives; answers whether it did.
    pub async fn read(&mut self, deadline: Instant, until: &str) -> bool {
        self.read_until(deadline, |t| t == until).await
    }

    /// Reads until `deadline`, or until an answer that `done` accepts arrives.
    async fn read_until(&mut self, deadline: Instant, done: impl Fn(&str) -> bool) -> bool {
        while let Some(l) = self.user.next_line(deadline).await {
            if let Some((nick, target, text)) = l.privmsg()
                && nick.starts_with("opsbot")
                && target.eq_ignore_ascii_case(ROOM)
            {
                let done = done(&text);
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
    pub async fn until_answered(&mut self, text: &str, within: Duration) -> Duration {
        self.until_answered_every(text, within, Duration::from_secs(1))
            .await
    }

    /// The same, asking every `every`.
    pub async fn until_answered_every(
        &mut self,
        text: &str,
        within: Duration,
        every: Duration,
    ) -> Duration {
        let t = Instant::now();
        let mut n = 0;
        loop {
            let probe = format!("{text}-{n}");
            self.user.say(ROOM, &format!("!echo {probe}")).await;
            // An answer to any of the probes counts: a late one is an answer too.
            let series = format!("{text}-");
            if self
                .read_until(Instant::now() + every, |t| t.starts_with(&series))
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
    pub async fn ask(&mut self, text: &str) {
        self.user.say(ROOM, &format!("!echo {text}")).await;
        assert!(
            self.read(Instant::now() + Duration::from_secs(20), text)
                .await,
            "no answer to {text}; answers: {:?}",
            self.answers
        );
    }

    /// The bots in the channel now, by `NAMES`.
    pub async fn bots_present(&mut self) -> Vec<String> {
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
    pub fn each_once(&self) {
        let mut seen = std::collections::HashMap::<&str, Vec<&str>>::new();
        for (nick, text) in &self.answers {
            seen.entry(text).or_default().push(nick);
        }
        let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(twice.is_empty(), "answered more than once: {twice:?}");
    }
}
