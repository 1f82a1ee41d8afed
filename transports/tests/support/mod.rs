//! Test support: real IRC servers (ngircd, InspIRCd) on free loopback ports, a plain IRC user
//! client, and a bot running the real framework over the IRC transport.
//!
//! Each test starts its own server with a generated config in a temporary directory and stops it
//! when the server value is dropped. The servers are Debian packages that `scripts/test`
//! installs; a missing binary fails the test with that hint, it never skips.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod alertmanager;
pub mod chaos;
pub mod cut;
pub mod http;
pub mod nats;
pub mod synapse;
#[cfg(feature = "webex")]
pub mod webex;
#[cfg(feature = "xmpp")]
pub mod xmpp;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command as OsCommand, Stdio};
use std::time::{Duration, Instant};

use opsbot::health::{Health, Snapshot};
use opsbot::prelude::*;
use opsbot::{Bot, Shutdown};
use opsbot_transports::irc::{Irc, IrcConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ngircd,
    Inspircd,
}

/// A process killed when dropped (a measurement that fails half-way must not leave a bot
/// reconnecting to a port), with the temporary directory its config lives in.
pub struct Process {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn new(child: Child) -> Self {
        Self {
            child,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `opsbot run` (the binary at `bin`) with `config` as its config file.
    pub fn opsbot(bin: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(&path, config).unwrap();
        let child = OsCommand::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, _dir: dir }
    }

    /// Peak resident memory in MiB and CPU time (user + system) in seconds, from /proc.
    pub fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split(' ').collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (hwm_kib / 1024.0, (ticks(11) + ticks(12)) / 100.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process of the test's own, stopped by signals: SIGKILL (also when dropped, after a
/// SIGCONT so that a frozen one dies cleanly), SIGSTOP and SIGCONT.
#[derive(Default)]
pub struct Daemon(Option<Child>);

impl Daemon {
    /// Takes over a started process and waits until it listens on every one of `ports`.
    pub fn start(&mut self, mut child: Child, ports: &[u16], what: &str, log: &std::path::Path) {
        for port in ports {
            wait_listening(&mut child, *port, what, log);
        }
        self.0 = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Kills the process outright (SIGKILL): every connection drops.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        assert!(
            OsCommand::new("kill")
                .args([sig, &self.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen process.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.is_some() {
            self.thaw();
        }
        self.kill();
    }
}

/// A running IRC server.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    process: Daemon,
}

/// A loopback port that is free now, below the kernel's ephemeral range (read from
/// /proc/sys/net/ipv4/ip_local_port_range), so that no outgoing connection or `bind(0)` elsewhere
/// takes it while a server is down for a restart. Each test process counts up from its own base.
/// Where the ephemeral range leaves no room below it, the kernel picks.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000u16, ephemeral_min.saturating_sub(10_000));
    if span < 2_000 {
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let base = (std::process::id() % u32::from(span)) as u16;
    loop {
        let port = low + (base + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether process `pid` itself holds a socket listening on 127.0.0.1:`port` (read from /proc, so
/// a listener of some other process on the same port is never mistaken for ours).
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
    })
}

/// Waits until `child` listens on `port`; panics with the server's log if it exits or takes more
/// than 20 s.
pub fn wait_listening(child: &mut Child, port: u16, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listens(child.id(), port) {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited with {status}: {log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not listen on port {port} within 20 s: {log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn which(bin: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: run ./scripts/test, which installs the test servers");
}

impl Server {
    pub fn start(kind: Kind) -> Self {
        Self::start_with(kind, None)
    }

    /// InspIRCd with its flood limits raised out of the way (for latency benchmarks, where the
    /// server's throttle would hide what the bot adds).
    pub fn start_unthrottled() -> Self {
        Self::start_inspircd_flood(
            " fakelag=\"no\" commandrate=\"100000000\" threshold=\"1000000\" recvq=\"65536\" softsendq=\"1048576\"",
        )
    }

    /// InspIRCd as its package runs it when the `<connect>` block says nothing of flood
    /// control: fakelag on, threshold 20.
    pub fn start_inspircd_defaults() -> Self {
        Self::start_inspircd_flood("")
    }

    /// InspIRCd with `flood` in place of the test config's ` fakelag="no" threshold="10"`.
    fn start_inspircd_flood(flood: &str) -> Self {
        let mut server = Self {
            kind: Kind::Inspircd,
            port: free_port(),
            tls_port: None,
            dir: tempfile::tempdir().unwrap(),
            process: Daemon::default(),
        };
        server.write_config(None);
        let conf = std::fs::read_to_string(server.conf_path()).unwrap();
        let ours = " fakelag=\"no\" threshold=\"10\"";
        assert!(conf.contains(ours));
        std::fs::write(server.conf_path(), conf.replace(ours, flood)).unwrap();
        server.launch();
        server
    }

    /// A server that also listens for TLS with `cert` and `key` (PEM files).
    pub fn start_with(kind: Kind, tls: Option<(PathBuf, PathBuf)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = tls.as_ref().map(|_| free_port());
        let mut server = Self {
            kind,
            port,
            tls_port,
            dir,
            process: Daemon::default(),
        };
        server.write_config(tls);
        server.launch();
        server
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    fn write_config(&self, tls: Option<(PathBuf, PathBuf)>) {
        let text = match self.kind {
            Kind::Ngircd => {
                let mut c = format!(
                    "[Global]\n\tName = irc.test\n\tListen = 127.0.0.1\n\tPorts = {}\n\
                     \tMotdPhrase = \"opsbot test server\"\n\tPidFile = {}/ngircd.pid\n\
                     [Limits]\n\tMaxConnectionsIP = 0\n\tPingTimeout = 30\n\tPongTimeout = 10\n\
                     [Options]\n\tPAM = no\n\tDNS = no\n\tIdent = no\n",
                    self.port,
                    self.dir.path().display()
                );
                if let (Some((cert, key)), Some(tp)) = (tls, self.tls_port) {
                    c.push_str(&format!(
                        "[SSL]\n\tCertFile = {}\n\tKeyFile = {}\n\tPorts = {tp}\n",
                        cert.display(),
                        key.display()
                    ));
                }
                c
            }
            Kind::Inspircd => {
                let mut c = format!(
                    "<server name=\"irc.test\" description=\"opsbot test\" network=\"Test\">\n\
                     <admin name=\"test\" nick=\"test\" email=\"test@example.invalid\">\n\
                     <bind address=\"127.0.0.1\" port=\"{}\" type=\"clients\">\n\
                     <pid file=\"{}/inspircd.pid\">\n\
                     <connect name=\"users\" allow=\"*\" fakelag=\"no\" threshold=\"10\" localmax=\"50\" globalmax=\"50\" resolvehostnames=\"no\">\n",
                    self.port,
                    self.dir.path().display()
                );
                if let (Some((cert, key)), Some(tp)) = (tls, self.tls_port) {
                    c.push_str(&format!(
                        "<module name=\"ssl_gnutls\">\n<sslprofile name=\"test\" provider=\"gnutls\" certfile=\"{}\" keyfile=\"{}\" dhfile=\"\">\n\
                         <bind address=\"127.0.0.1\" port=\"{tp}\" type=\"clients\" sslprofile=\"test\">\n",
                        cert.display(),
                        key.display()
                    ));
                }
                c
            }
        };
        std::fs::write(self.conf_path(), text).unwrap();
    }

    fn launch(&mut self) {
        let conf = self.conf_path();
        let mut cmd = match self.kind {
            Kind::Ngircd => {
                let mut c = OsCommand::new(which("ngircd"));
                c.arg("-n").arg("-f").arg(&conf);
                c
            }
            Kind::Inspircd => {
                let mut c = OsCommand::new(which("inspircd"));
                c.arg("--nofork").arg("--config").arg(&conf);
                if is_root() {
                    c.arg("--runasroot");
                }
                c
            }
        };
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start IRC server");
        let what = format!("{:?}", self.kind);
        let log = self.dir.path().join("server.log");
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        self.process.start(child, &ports, &what, &log);
    }

    /// Kills the server outright (SIGKILL): every connection drops.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.process.freeze();
    }

    /// Thaws a frozen server.
    pub fn thaw(&self) {
        self.process.thaw();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn is_root() -> bool {
    OsCommand::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A line a user client received, raw and parsed a little.
#[derive(Clone, Debug)]
pub struct Line {
    pub raw: Vec<u8>,
    pub text: String,
    pub at: Instant,
}

impl Line {
    /// `(nick, command, params...)` of a line like `:nick!u@h CMD a b :c`.
    pub fn parts(&self) -> (String, String, Vec<String>) {
        let mut rest = self.text.as_str();
        let mut nick = String::new();
        if let Some(r) = rest.strip_prefix(':') {
            let (prefix, r) = r.split_once(' ').unwrap_or((r, ""));
            nick = prefix.split('!').next().unwrap_or("").to_owned();
            rest = r;
        }
        let (cmd, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut params = Vec::new();
        while !rest.is_empty() {
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(p.to_owned());
            rest = r;
        }
        (nick, cmd.to_owned(), params)
    }

    /// `Some((from, target, text))` for a PRIVMSG.
    pub fn privmsg(&self) -> Option<(String, String, String)> {
        let (nick, cmd, p) = self.parts();
        (cmd == "PRIVMSG" && p.len() == 2).then(|| (nick, p[0].clone(), p[1].clone()))
    }
}

/// A plain IRC user client on a raw socket.
pub struct User {
    pub nick: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    pub seen: Vec<Line>,
}

impl User {
    pub async fn connect(port: u16, nick: &str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (r, w) = stream.into_split();
            let mut user = Self {
                nick: nick.to_owned(),
                reader: BufReader::new(r),
                writer: w,
                seen: Vec::new(),
            };
            user.raw(&format!("NICK {nick}")).await;
            user.raw(&format!("USER {nick} 0 * :test user {nick}"))
                .await;
            let welcome = user
                .wait_for(Duration::from_secs(10), |l| {
                    let (_, cmd, _) = l.parts();
                    cmd == "001" || cmd == "433" || cmd == "ERROR"
                })
                .await;
            match welcome.map(|l| l.parts().1) {
                Some(c) if c == "001" => return user,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "{nick} cannot register: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    pub async fn raw(&mut self, line: &str) {
        // One write per line: two small writes would meet Nagle's algorithm and the peer's
        // delayed ACK, and every round trip would gain 40 ms that no bot caused.
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.writer.write_all(&buf).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    pub async fn join(&mut self, chan: &str) {
        self.raw(&format!("JOIN {chan}")).await;
        let me = self.nick.clone();
        let c = chan.to_owned();
        self.expect(Duration::from_secs(10), move |l| {
            let (n, cmd, p) = l.parts();
            n == me && cmd == "JOIN" && p.first().is_some_and(|x| x.eq_ignore_ascii_case(&c))
        })
        .await;
    }

    pub async fn say(&mut self, target: &str, text: &str) {
        self.raw(&format!("PRIVMSG {target} :{text}")).await;
    }

    /// The next line; answers PINGs by itself. `None` at the deadline or end of stream.
    pub async fn next_line(&mut self, deadline: Instant) -> Option<Line> {
        loop {
            let mut raw = Vec::new();
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.reader.read_until(b'\n', &mut raw)).await {
                Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
            }
            let text = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if let Some(arg) = text.strip_prefix("PING ") {
                let pong = format!("PONG {arg}");
                self.raw(&pong).await;
                continue;
            }
            let line = Line {
                raw,
                text,
                at: Instant::now(),
            };
            self.seen.push(line.clone());
            return Some(line);
        }
    }

    /// Waits for a line matching `pred`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        pred: impl Fn(&Line) -> bool,
    ) -> Option<Line> {
        let deadline = Instant::now() + within;
        while let Some(l) = self.next_line(deadline).await {
            if pred(&l) {
                return Some(l);
            }
        }
        None
    }

    /// Like `wait_for`, failing the test with what was seen.
    pub async fn expect(&mut self, within: Duration, pred: impl Fn(&Line) -> bool) -> Line {
        match self.wait_for(within, pred).await {
            Some(l) => l,
            None => {
                let tail: Vec<&str> = self
                    .seen
                    .iter()
                    .rev()
                    .take(15)
                    .map(|l| l.text.as_str())
                    .collect();
                panic!(
                    "{}: expected line not seen within {within:?}; last lines (newest first): {tail:#?}",
                    self.nick
                )
            }
        }
    }

    /// The text of the next PRIVMSG from `from`.
    pub async fn privmsg_from(&mut self, from: &str, within: Duration) -> (String, String) {
        let f = from.to_owned();
        let l = self
            .expect(within, move |l| {
                l.privmsg()
                    .is_some_and(|(n, _, _)| n.eq_ignore_ascii_case(&f))
            })
            .await;
        let (_, target, text) = l.privmsg().unwrap();
        (target, text)
    }

    /// `n` PRIVMSG lines from `from`, as whole lines.
    pub async fn privmsgs_from(&mut self, from: &str, n: usize, within: Duration) -> Vec<Line> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let Some(l) = self.next_line(deadline).await else {
                panic!(
                    "{}: got {} of {n} lines from {from} within {within:?}",
                    self.nick,
                    out.len()
                );
            };
            if l.privmsg()
                .is_some_and(|(nick, _, _)| nick.eq_ignore_ascii_case(from))
            {
                out.push(l);
            }
        }
        out
    }
}

/// A fake IRC server on a loopback port: it says exactly what a test writes, for what real
/// servers do not do on demand (garbage, unknown refusals, bans, cloaks, SASL failures).
pub struct FakeServer {
    listener: tokio::net::TcpListener,
    pub port: u16,
}

impl FakeServer {
    /// Whether the bot has opened another connection (it reconnected) that was not accepted.
    pub async fn has_pending_connection(&self) -> bool {
        tokio::time::timeout(Duration::from_millis(50), self.listener.accept())
            .await
            .is_ok()
    }

    pub async fn bind() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { listener, port }
    }

    /// The bot's next connection; fails the test after 20 s.
    pub async fn accept(&self) -> FakeConn {
        let (sock, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
            .await
            .expect("the bot did not connect within 20 s")
            .unwrap();
        let (r, w) = sock.into_split();
        FakeConn {
            r: BufReader::new(r),
            w,
        }
    }
}

/// One connection from the bot to a [`FakeServer`].
pub struct FakeConn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl FakeConn {
    /// The two halves, for a test that reads and writes at once.
    pub fn into_parts(self) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.r, self.w)
    }

    /// Writes raw bytes (whole lines, CRLF included) to the bot.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.w.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads lines from the bot until one starts with `prefix`; returns it without its CRLF.
    pub async fn read_until(&mut self, prefix: &str) -> String {
        self.lines_until(prefix, Duration::from_secs(20))
            .await
            .pop()
            .unwrap()
    }

    /// Every line the bot sends until one starts with `prefix` (that one last), without CRLFs;
    /// fails the test if none comes within `patience`.
    pub async fn lines_until(&mut self, prefix: &str, patience: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline, self.r.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("the bot sent no {prefix} line within {patience:?}"))
                .unwrap();
            assert!(n > 0, "the bot hung up while we waited for {prefix}");
            let done = line.starts_with(prefix);
            lines.push(line.trim_end().to_owned());
            if done {
                return lines;
            }
        }
    }

    /// Waits for the bot's USER line and welcomes it (001, a 004 naming a server the bot has
    /// no profile for, and the end of the MOTD, which closes registration).
    pub async fn welcome(&mut self) {
        self.read_until("USER ").await;
        self.send(
            ":fake 001 opsbot :Welcome\r\n:fake 004 opsbot fake fakeircd-1 o o\r\n\
             :fake 376 opsbot :End of /MOTD command.\r\n",
        )
        .await;
    }

    /// Waits for the bot's `JOIN <chan>` and lets it in (echoes the JOIN, as servers do).
    pub async fn let_in(&mut self, chan: &str) {
        self.read_until(&format!("JOIN {chan}")).await;
        self.send(format!(":opsbot!bot@127.0.0.1 JOIN {chan}\r\n"))
            .await;
    }
}

/// A bot on the IRC transport, running the real framework on its own thread.
pub struct RunningBot {
    pub health: Health,
    pub all: Vec<Health>,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningBot {
    /// Starts a bot from the text of a `[bot.transport]` section (kind omitted), with the
    /// built-in handlers, the demos and `extra`.
    pub fn start(
        transport_toml: &str,
        extra: impl FnOnce(opsbot::BotBuilder) -> opsbot::BotBuilder,
    ) -> Self {
        let table: toml::Table = toml::from_str(transport_toml).unwrap();
        let cfg: IrcConfig = toml::Value::Table(table).try_into().unwrap();
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        Self::launch(
            Bot::builder("ircbot").transport(Irc::new(cfg)),
            "*!*@127.0.0.1",
            extra,
        )
    }

    /// Starts a bot on `transport` with the built-in handlers, the demos and `extra`; `admin`
    /// is the admin mask.
    pub fn launch(
        builder: opsbot::BotBuilder,
        admin: &str,
        extra: impl FnOnce(opsbot::BotBuilder) -> opsbot::BotBuilder,
    ) -> Self {
        let mut extra = Some(extra);
        Self::launch_all(vec![builder], admin, |b| (extra.take().unwrap())(b))
    }

    /// Starts several bots in one process (one runner), each with the built-in handlers, the
    /// demos and `extra`; `health` is the first bot's, `all` every bot's.
    pub fn launch_all(
        builders: Vec<opsbot::BotBuilder>,
        admin: &str,
        mut extra: impl FnMut(opsbot::BotBuilder) -> opsbot::BotBuilder,
    ) -> Self {
        let bots: Vec<opsbot::Bot> = builders
            .into_iter()
            .map(|builder| {
                let admin = admin.to_owned();
                let builder = builder.configure(|o| {
                    o.admins = vec![admin];
                    o.reconnect.initial = Duration::from_millis(200);
                    o.reconnect.max = Duration::from_secs(2);
                    o.reconnect.refused_min = Duration::from_millis(200);
                    o.shutdown_deadline = Duration::from_secs(2);
                });
                let builder = opsbot_handlers::add_builtins(builder)
                    .handler(opsbot_handlers::demo::Lines)
                    .handler(opsbot_handlers::demo::Boom);
                extra(builder).build().unwrap()
            })
            .collect();
        let all: Vec<Health> = bots.iter().map(|b| b.health()).collect();
        let health = all[0].clone();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || opsbot::run_until(bots, s, false));
        Self {
            health,
            all,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn status(&self) -> Snapshot {
        self.health.snapshot()
    }

    /// Waits until `pred` holds for the bot's health (polling), failing after `within`.
    pub async fn wait_status(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "bot never got {what}: {s:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RunningBot {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Replies with text a handler should never be able to turn into protocol lines, and with one
/// long multi-byte reply.
#[derive(Clone)]
pub struct Tricky;

/// Formatted replies: `!rich <text>` puts a user's text in every kind of span, `!log <n>
/// [width]` answers a code block of `n` numbered lines of `width` characters.
#[derive(Clone)]
pub struct Formatted;

impl Handler for Formatted {
    const NAME: &'static str = "formatted";
    const COMMANDS: &'static [Command] = &[
        Command::new("rich", "<text>", "A formatted reply holding the text."),
        Command::new("log", "<lines> [width]", "A code block."),
        Command::new("card", "<id>", "A card with two buttons and an input."),
        Command::new("pick", "<id> <answer> [note]", "Answer a card."),
        Command::new("bigcard", "", "A card too big to send."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "card" => {
                let id: String = call.arg(0)?;
                return cx.reply_card(
                    opsbot::card::Card::new(format!("Question {id}"))
                        .text("Restart *web* in <prod>?")
                        .facts([("asked by", call.sender().id.to_string())])
                        .input("note", "Note", "anything to add")
                        .button("Yes", format!("pick {id} yes"))
                        .button("No", format!("pick {id} no")),
                );
            }
            "pick" => {
                let id: String = call.arg(0)?;
                let answer: String = call.arg(1)?;
                let typed = call.args().get(2..).unwrap_or_default().join(" ");
                let note = call.input("note").unwrap_or(&typed).to_owned();
                cx.reply(format!("{id}: {answer} from {} ({note})", call.sender().id));
                return Ok(());
            }
            "bigcard" => {
                return cx.reply_card(
                    opsbot::card::Card::new("big")
                        .text("x".repeat(opsbot::card::MAX_TEXT_BYTES + 1)),
                );
            }
            _ => {}
        }
        if call.command().name == "rich" {
            let t = call.rest().to_owned();
            cx.reply_rich(
                Rich::new().heading("Report").para(
                    opsbot::rich::Line::new()
                        .text(t.clone())
                        .text(" ")
                        .bold(t.clone())
                        .text(" ")
                        .code(t.clone())
                        .text(" ")
                        .link("runbook", "https://wiki.example.com/runbook"),
                ),
            );
            return Ok(());
        }
        let n: usize = call.arg(0)?;
        let width: usize = call.opt_arg(1)?.unwrap_or(20);
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let mut l = format!("{i:05} ");
                while l.len() < width {
                    l.push('x');
                }
                l
            })
            .collect();
        cx.reply_rich(Rich::new().code(lines.join("\n")));
        Ok(())
    }
}

/// The 2,000-byte reply of `!big`: 1-, 2-, 3- and 4-byte characters, no spaces, so that every
/// split point falls inside a run of multi-byte characters.
pub fn big_text() -> String {
    let unit = "aé€𝄞"; // 1 + 2 + 3 + 4 bytes
    let mut s = String::new();
    while s.len() + unit.len() <= 2000 {
        s.push_str(unit);
    }
    while s.len() < 2000 {
        s.push('z');
    }
    s
}

impl Handler for Tricky {
    const NAME: &'static str = "tricky";
    const COMMANDS: &'static [Command] = &[
        Command::new("inject", "", "Reply with CR, LF and NUL inside."),
        Command::new("big", "", "Reply with 2,000 bytes of multi-byte text."),
        Command::new("sayto", "<channel> <text>", "Say the text in a channel."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "inject" => cx.reply("x\r\nQUIT :bye\0\r\nJOIN #elsewhere"),
            "sayto" => {
                let chan: String = call.arg(0)?;
                let text: String = call.arg(1)?;
                cx.say(Destination::room(chan), text);
            }
            _ => cx.reply(big_text()),
        }
        Ok(())
    }
}
