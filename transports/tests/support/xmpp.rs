//! XMPP test support: a real Prosody per test, and a person on it.
//!
//! [`Prosody`] writes its own config into a temp directory (data, pid file, loopback c2s port, a
//! MUC component, a self-signed certificate for `localhost` that the bot trusts through
//! `ca_file`), registers users with `prosodyctl`, and stops by its PID. Test users connect in
//! plaintext over loopback (the server allows it there) so that the bot's STARTTLS path is the
//! one under test. [`XmppUser`] is a small client on `tokio-xmpp`'s XML stream.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::{Command as OsCommand, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::Stanza;
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::bind::BindQuery;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmppStream, XmppStreamElement,
    initiate_stream,
};

use super::{Daemon, free_port};

pub const DOMAIN: &str = "localhost";
pub const MUC: &str = "conference.localhost";

/// A Prosody of the test's own.
pub struct Prosody {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Daemon,
    extra: String,
}

impl Prosody {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts Prosody with `extra` appended to the global section of its config.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cert =
            rcgen::generate_simple_self_signed(vec![DOMAIN.to_owned(), MUC.to_owned()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut p = Self {
            port,
            dir,
            process: Daemon::default(),
            extra: extra.to_owned(),
        };
        p.write_config();
        p.launch();
        p
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
admin_socket = "{d}/admin.sock"
log = {{ info = "{d}/server.log" }}
certificates = "{d}/certs"
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "smacks"; "limits"; "posix"; "offline" }}
modules_disabled = {{ "s2s" }}
authentication = "internal_hashed"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
limits = {{ c2s = {{ rate = "10kb/s"; burst = "2s" }} }}
ssl = {{ certificate = "{d}/cert.pem"; key = "{d}/key.pem" }}
{extra}
VirtualHost "{DOMAIN}"
  ssl = {{ certificate = "{d}/cert.pem"; key = "{d}/key.pem" }}
Component "{MUC}" "muc"
  ssl = {{ certificate = "{d}/cert.pem"; key = "{d}/key.pem" }}
  muc_room_locking = false
  max_history_messages = 40
"#,
            port = self.port,
            extra = self.extra,
        );
        std::fs::write(self.config(), config).unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Creates an account.
    pub fn register(&self, user: &str, password: &str) {
        let out = OsCommand::new(super::which("prosodyctl"))
            .arg("--config")
            .arg(self.config())
            .args(["register", user, DOMAIN, password])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "prosodyctl register {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("server.log");
        let stdout = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = OsCommand::new(super::which("prosody"))
            .arg("--config")
            .arg(self.config())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Prosody runs as `lua5.4 /usr/bin/prosody`: the child itself holds the socket.
        self.process.start(child, &[self.port], "prosody", &log);
    }

    /// SIGKILL: every connection drops, and nothing in memory survives.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.process.freeze();
    }

    pub fn thaw(&self) {
        self.process.thaw();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The `[bot.transport]` settings for a bot on this server (kind omitted).
    pub fn bot_toml(&self, user: &str, password: &str, rooms: &[&str], extra: &str) -> String {
        let rooms: Vec<String> = rooms.iter().map(|r| format!("\"{r}\"")).collect();
        format!(
            "jid = \"{user}@{DOMAIN}\"\npassword = \"{password}\"\nserver = \"127.0.0.1\"\n\
             port = {}\nca_file = \"{}\"\nresource = \"bot\"\nrooms = [{}]\n\
             ping_interval_secs = 2\nping_timeout_secs = 3\nconnect_timeout_secs = 5\n{extra}",
            self.port,
            self.ca_file().display(),
            rooms.join(", ")
        )
    }
}

/// What a user received.
#[derive(Clone, Debug)]
pub struct Said {
    pub from: Jid,
    pub type_: MessageType,
    pub body: String,
    pub delayed: bool,
}

/// A person on the server: a plaintext loopback client.
pub struct XmppUser {
    pub jid: FullJid,
    stream: XmppStream<BufStream<TcpStream>>,
    counter: u32,
    /// Presences received (for joins).
    pub presences: Vec<Presence>,
    /// Stanzas received since stream management was enabled, when it is.
    sm_inbound: Option<u32>,
}

impl XmppUser {
    pub async fn connect(port: u16, user: &str, password: &str) -> Self {
        Self::connect_as(port, user, password, "test").await
    }

    pub async fn connect_as(port: u16, user: &str, password: &str, resource: &str) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let header = || StreamHeader {
            to: Some(Cow::Borrowed(DOMAIN)),
            from: None,
            id: None,
        };
        let (features, stream) = initiate_stream(
            BufStream::new(tcp),
            ns::JABBER_CLIENT,
            header(),
            Timeouts::tight(),
        )
        .await
        .unwrap()
        .recv_features::<FallibleStreamElement>()
        .await
        .unwrap();
        let creds = sasl::common::Credentials::default()
            .with_username(user)
            .with_password(password)
            .with_channel_binding(sasl::common::ChannelBinding::None);
        let authed = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
            .await
            .unwrap();
        let (_, mut stream) = authed
            .send_header(header())
            .await
            .unwrap()
            .recv_features::<FallibleStreamElement>()
            .await
            .unwrap();
        let bind = Iq::from_set("bind", BindQuery::new(Some(resource.to_owned())));
        stream
            .send(&XmppStreamElement::Stanza(bind.into()))
            .await
            .unwrap();
        let jid = match stream.next().await.unwrap().unwrap() {
            FallibleStreamElement::Ok(XmppStreamElement::Stanza(Stanza::Iq(Iq::Result {
                payload: Some(p),
                ..
            }))) => FullJid::new(&p.get_child("jid", ns::BIND).unwrap().text()).unwrap(),
            other => panic!("while binding: {other:?}"),
        };
        let mut u = Self {
            jid,
            stream,
            counter: 0,
            presences: Vec::new(),
            sm_inbound: None,
        };
        u.send(Presence::available().into()).await;
        u
    }

    /// Enables stream management (XEP-0198) on this connection, as a reliable client does:
    /// from now on every stanza is counted and the server's `<r/>` answered at once.
    pub async fn enable_sm(&mut self) {
        use tokio_xmpp::parsers::sm;
        self.stream
            .send(&XmppStreamElement::SM(sm::Nonza::Enable(sm::Enable {
                max: None,
                resume: false,
            })))
            .await
            .unwrap();
        loop {
            match self.stream.next().await.unwrap().unwrap() {
                FallibleStreamElement::Ok(XmppStreamElement::SM(sm::Nonza::Enabled(_))) => break,
                FallibleStreamElement::Ok(XmppStreamElement::SM(other)) => {
                    panic!("stream management refused: {other:?}")
                }
                _ => {}
            }
        }
        self.sm_inbound = Some(0);
    }

    pub async fn send(&mut self, s: Stanza) {
        self.stream
            .send(&XmppStreamElement::Stanza(s))
            .await
            .unwrap();
    }

    /// Sends a chat message to a JID (a person, or `room@…/nick` for a private message
    /// through a room).
    pub async fn chat(&mut self, to: &str, text: &str) {
        self.message(to, MessageType::Chat, text).await;
    }

    pub async fn groupchat(&mut self, room: &str, text: &str) {
        self.message(room, MessageType::Groupchat, text).await;
    }

    pub async fn message(&mut self, to: &str, type_: MessageType, text: &str) {
        self.counter += 1;
        let mut m = Message::new_with_type(type_, Some(Jid::new(to).unwrap()))
            .with_body(Lang(String::new()), text.to_owned());
        m.id = Some(tokio_xmpp::parsers::message::Id(format!(
            "u{}",
            self.counter
        )));
        self.send(m.into()).await;
    }

    /// Joins a room as `nick` and waits for the room to confirm (status 110), taking any
    /// history the room sends.
    pub async fn join(&mut self, room: &str, nick: &str) {
        let to = FullJid::new(&format!("{room}/{nick}")).unwrap();
        let x = Element::builder("x", ns::MUC).build();
        self.send(
            Presence::available()
                .with_to(to)
                .with_payloads(vec![x])
                .into(),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = self
                .next_presence(deadline)
                .await
                .unwrap_or_else(|| panic!("no answer to joining {room}"));
            let own = p.payloads.iter().any(|x| {
                x.is("x", ns::MUC_USER)
                    && x.children()
                        .any(|c| c.is("status", ns::MUC_USER) && c.attr("code") == Some("110"))
            });
            if own {
                return;
            }
        }
    }

    async fn next_presence(&mut self, deadline: Instant) -> Option<Presence> {
        loop {
            if let Stanza::Presence(p) = self.next_stanza(deadline).await? {
                return Some(p);
            }
        }
    }

    /// The next stanza, answering pings; `None` at the deadline.
    pub async fn next_stanza(&mut self, deadline: Instant) -> Option<Stanza> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let el = tokio::time::timeout(left, self.stream.next()).await.ok()?;
            match el {
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::SM(
                    tokio_xmpp::parsers::sm::Nonza::Req(_),
                )))) if self.sm_inbound.is_some() => {
                    let h = self.sm_inbound.unwrap_or(0);
                    self.stream
                        .send(&XmppStreamElement::SM(tokio_xmpp::parsers::sm::Nonza::Ack(
                            tokio_xmpp::parsers::sm::A { h },
                        )))
                        .await
                        .unwrap();
                }
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(s)))) => {
                    if let Some(n) = self.sm_inbound.as_mut() {
                        *n = n.wrapping_add(1);
                    }
                    if let Stanza::Iq(Iq::Get {
                        from, id, payload, ..
                    }) = &s
                        && payload.is("ping", ns::PING)
                    {
                        let pong = Iq::Result {
                            from: None,
                            to: from.clone(),
                            id: id.clone(),
                            payload: None,
                        };
                        self.send(pong.into()).await;
                        continue;
                    }
                    if let Stanza::Presence(p) = &s {
                        self.presences.push(p.clone());
                    }
                    return Some(s);
                }
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
                Some(Err(e)) => panic!("user stream failed: {e}"),
                None => panic!("user stream closed"),
            }
        }
    }

    /// Every message body from `from` that reached this connection before it ended (the
    /// server went away): what was delivered to this person, read to the end.
    pub async fn bodies_until_closed(&mut self, from: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let want = Jid::new(from).unwrap().to_bare();
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(el) = tokio::time::timeout(left, self.stream.next()).await else {
                return out;
            };
            match el {
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(
                    Stanza::Message(m),
                )))) => {
                    if m.from.as_ref().is_some_and(|f| f.to_bare() == want)
                        && let Some(body) = m.bodies.values().next()
                    {
                        out.push(body.clone());
                    }
                }
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
                _ => return out,
            }
        }
    }

    /// The next message with a body from `from` (a bare JID matches any of its resources);
    /// `None` if none comes within `within`.
    pub async fn next_from(&mut self, from: &str, within: Duration) -> Option<Said> {
        let deadline = Instant::now() + within;
        let want = Jid::new(from).unwrap();
        loop {
            let Stanza::Message(m) = self.next_stanza(deadline).await? else {
                continue;
            };
            let Some(f) = m.from.clone() else { continue };
            let matches = if want.resource().is_some() {
                f == want
            } else {
                f.to_bare() == want.to_bare()
            };
            let Some(body) = m.bodies.values().next().cloned() else {
                continue;
            };
            if matches {
                let delayed = m.payloads.iter().any(|p| p.is("delay", ns::DELAY));
                return Some(Said {
                    from: f,
                    type_: m.type_,
                    body,
                    delayed,
                });
            }
        }
    }

    /// Like [`XmppUser::next_from`], panicking when nothing comes.
    pub async fn expect_from(&mut self, from: &str, within: Duration) -> Said {
        self.next_from(from, within)
            .await
            .unwrap_or_else(|| panic!("nothing from {from} within {within:?}"))
    }

    /// The next message `nick` says in `room` (private ones through the room are skipped).
    pub async fn next_in_room(&mut self, room: &str, nick: &str, within: Duration) -> Option<Said> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let said = self.next_from(&format!("{room}/{nick}"), left).await?;
            if said.type_ == MessageType::Groupchat {
                return Some(said);
            }
        }
    }

    pub async fn expect_in_room(&mut self, room: &str, nick: &str, within: Duration) -> Said {
        self.next_in_room(room, nick, within)
            .await
            .unwrap_or_else(|| panic!("{nick} said nothing in {room} within {within:?}"))
    }

    pub fn bare(&self) -> BareJid {
        self.jid.to_bare()
    }

    /// The logged-in connection as bytes, for XML that a well-behaved client library would
    /// never write.
    pub fn into_raw(self) -> RawXmpp {
        RawXmpp {
            io: self.stream.into_inner(),
            got: String::new(),
        }
    }
}

/// A logged-in connection written and read as bytes.
pub struct RawXmpp {
    io: BufStream<TcpStream>,
    /// What arrived and was not yet consumed.
    pub got: String,
}

impl RawXmpp {
    pub async fn send(&mut self, xml: &str) {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(xml.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Reads until `needle` has arrived; answers everything before it and consumes it.
    pub async fn until(&mut self, needle: &str, within: Duration) -> String {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.got.find(needle) {
                let rest = self.got.split_off(i + needle.len());
                return std::mem::replace(&mut self.got, rest);
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.io.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within {within:?}; got {:?}", self.got))
                .unwrap();
            assert!(n > 0, "the server closed the connection");
            self.got.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}
