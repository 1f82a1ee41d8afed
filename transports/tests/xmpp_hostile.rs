//! The XMPP transport against a server that misbehaves: a fake one on loopback that speaks just
//! enough XMPP to log the bot in, then sends what a real server would not (or a broken one
//! would): history without stamps, unknown elements, invalid stanzas, a 1 MB message, forged
//! senders, carbons, and finally XML that does not parse.

use std::time::{Duration, Instant};

use crate::support::RunningBot;
use opsbot::health::{ActorKind, ConnState};
use opsbot_transports::xmpp::{Xmpp, XmppConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);
const ROOM: &str = "ops@conference.localhost";

/// One connection from the bot, scripted by the test.
struct Conn {
    tcp: TcpStream,
    /// What the bot wrote and the test has not yet consumed.
    buf: String,
}

impl Conn {
    async fn send(&mut self, xml: &str) {
        self.tcp.write_all(xml.as_bytes()).await.unwrap();
    }

    /// Reads until `needle` has arrived; answers everything up to and including it.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            if let Some(i) = self.buf.find(needle) {
                let rest = self.buf.split_off(i + needle.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.tcp.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} from the bot; got {:?}", self.buf))
                .unwrap();
            assert!(
                n > 0,
                "the bot closed the connection waiting for {needle:?}"
            );
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// Logs the bot in (PLAIN, bind; no stream management) and lets it into the room with
    /// the given history before the subject.
    async fn log_in(&mut self, history: &str) {
        self.authenticate().await;
        self.let_in(history, true).await;
    }

    /// Logs the bot in (PLAIN, bind; no stream management) and waits for its join.
    async fn authenticate(&mut self) {
        self.authenticate_with(false).await;
    }

    /// Logs the bot in (PLAIN, bind, and stream management if `sm`) and waits for its join.
    async fn authenticate_with(&mut self, sm: bool) {
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' id='s1' \
                      from='localhost' version='1.0'>";
        self.until("version='1.0'>").await;
        self.send(&format!(
            "{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
             <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        ))
        .await;
        self.until("</auth>").await;
        self.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            .await;
        self.until("version='1.0'>").await;
        let sm_feature = if sm {
            "<sm xmlns='urn:xmpp:sm:3'/>"
        } else {
            ""
        };
        self.send(&format!(
            "{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
             {sm_feature}</stream:features>"
        ))
        .await;
        let bind = self.until("</iq>").await;
        let id = bind
            .split("id=")
            .nth(1)
            .and_then(|r| r.get(1..))
            .and_then(|r| r.split(['\'', '"']).next())
            .unwrap()
            .to_owned();
        self.send(&format!(
            "<iq type='result' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <jid>opsbot@localhost/bot</jid></bind></iq>"
        ))
        .await;
        if sm {
            self.until("urn:xmpp:sm:3").await;
            self.send("<enabled xmlns='urn:xmpp:sm:3' id='sm1' resume='true'/>")
                .await;
        }
        self.until(&format!("{ROOM}/opsbot")).await;
    }

    /// Lets the bot into the room: presences, `history`, and the subject if `subject`.
    async fn let_in(&mut self, history: &str, subject: bool) {
        let subject = if subject {
            format!(
                "<message type='groupchat' from='{ROOM}' to='opsbot@localhost/bot'>\
                 <subject>ops</subject></message>"
            )
        } else {
            String::new()
        };
        self.send(&format!(
            "<presence from='{ROOM}/alice' to='opsbot@localhost/bot'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' \
             role='moderator' jid='alice@localhost/x'/></x></presence>\
             <presence from='{ROOM}/opsbot' to='opsbot@localhost/bot'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' \
             role='participant'/><status code='110'/></x></presence>\
             {history}{subject}"
        ))
        .await;
    }

    /// The bodies of the messages the bot sends, up to and including one that says `last`.
    async fn bodies_until(&mut self, last: &str) -> Vec<String> {
        let text = self.until(&format!(">{last}</body>")).await;
        text.split("<body")
            .skip(1)
            .filter_map(|b| b.split_once('>').map(|(_, r)| r))
            .map(|b| b.split("</body>").next().unwrap_or(b).to_owned())
            .collect()
    }
}

fn from_alice(body: &str) -> String {
    format!(
        "<message type='chat' from='alice@localhost/x' to='opsbot@localhost/bot' id='a'>\
         <body>{body}</body></message>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_server_input_is_skipped_or_handled_without_a_crash_or_a_reconnect_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!(
        "jid = \"opsbot@localhost\"\npassword = \"pw\"\nserver = \"127.0.0.1\"\nport = {port}\n\
         tls = false\nresource = \"bot\"\nrooms = [\"{ROOM}\"]\n"
    );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b,
    );
    let (tcp, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut c = Conn {
        tcp,
        buf: String::new(),
    };
    // History as a server may send it although the bot asked for none: one stamped, one not,
    // both before the subject.
    c.log_in(&format!(
        "<message type='groupchat' from='{ROOM}/alice' id='h1'><body>!echo old stamped</body>\
         <delay xmlns='urn:xmpp:delay' from='{ROOM}' stamp='2026-01-01T00:00:00Z'/></message>\
         <message type='groupchat' from='{ROOM}/alice' id='h2'><body>!echo old unstamped</body>\
         </message>"
    ))
    .await;
    bot.wait_status(T, "in the room", |s| {
        s.actor(ActorKind::Transport, "xmpp")
            .and_then(|a| a.detail.clone())
            .is_some_and(|d| d.contains("joined as opsbot") && !d.contains("(history)"))
    })
    .await;
    c.send(&format!(
        "<message type='groupchat' from='{ROOM}/alice' id='l1'><body>!echo live</body></message>"
    ))
    .await;
    let big = "A".repeat(1024 * 1024);
    let hostile = [
        // A stanza that does not parse (an iq without an id) and one with an unknown payload.
        "<iq type='get' from='alice@localhost/x'><query xmlns='urn:example:q'/></iq>".to_owned(),
        "<message type='chat' from='alice@localhost/x' id='u'><body>!echo one</body>\
         <weird xmlns='urn:example:w'><deep/></weird></message>"
            .to_owned(),
        // The bot's own account as the sender, a carbon, an error and a headline.
        "<message type='chat' from='opsbot@localhost/evil'><body>!echo forged</body></message>"
            .to_owned(),
        "<message type='chat' from='opsbot@localhost'><received xmlns='urn:xmpp:carbons:2'>\
         <forwarded xmlns='urn:xmpp:forward:0'><message type='chat' from='alice@localhost/x'>\
         <body>!echo carbon</body></message></forwarded></received></message>"
            .to_owned(),
        "<message type='error' from='alice@localhost/x'><body>!echo error</body></message>"
            .to_owned(),
        "<message type='headline' from='alice@localhost/x'><body>!echo headline</body></message>"
            .to_owned(),
        // A 1 MB message.
        from_alice(&format!("!echo {big}")),
        from_alice("!echo two"),
    ];
    for h in &hostile {
        c.send(h).await;
    }
    let bodies = c.bodies_until("two").await;
    assert_eq!(
        bodies,
        ["live", "one", "two"],
        "the bot answered what it should not"
    );
    // The unparsable iq got nothing (an error reply at most): still one connection.
    let s = bot.status();
    let t = s.actor(ActorKind::Transport, "xmpp").unwrap();
    assert_eq!(t.reconnects, 0);

    // What ends a stream by the protocol's rules ends it: a top-level element that is neither
    // a stanza nor a known nonza (RFC 6120 makes it a stream error), then XML that does not
    // parse. Each is one reconnect, then business as usual.
    let mut old = c;
    // Last, an element over the 4 MiB read cap: the connection ends rather than the memory.
    let huge = from_alice(&"A".repeat(5 * 1024 * 1024));
    for (n, (poison, word)) in [
        ("<foo xmlns='urn:example:unknown'><bar/></foo>", "three"),
        ("<message from='alice@localhost/x'><body>x</wrong>", "four"),
        (huge.as_str(), "five"),
    ]
    .into_iter()
    .enumerate()
    {
        // The bot may close the connection while a large element is still being written.
        let _ = old.tcp.write_all(poison.as_bytes()).await;
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
            .await
            .expect("the bot reconnects")
            .unwrap();
        let mut next = Conn {
            tcp,
            buf: String::new(),
        };
        next.log_in("").await;
        let want = u32::try_from(n).unwrap() + 1;
        bot.wait_status(T, "back in the room", |s| {
            s.actor(ActorKind::Transport, "xmpp")
                .is_some_and(|a| a.conn == Some(ConnState::Connected) && a.reconnects == want)
        })
        .await;
        next.send(&from_alice(&format!("!echo {word}"))).await;
        assert_eq!(next.bodies_until(word).await, [word]);
        old = next;
    }
    // No further connection attempts: the bad XML was one event, not a loop.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), listener.accept())
            .await
            .is_err(),
        "the bot connected again"
    );
    assert_eq!(
        bot.status()
            .actor(ActorKind::Transport, "xmpp")
            .unwrap()
            .reconnects,
        3
    );
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_never_gets_the_password_and_is_a_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // TLS on (the default): the server is asked for STARTTLS and does not offer it.
    let text = format!(
        "jid = \"opsbot@localhost\"\npassword = \"hunter2\"\nserver = \"127.0.0.1\"\nport = {port}\n"
    );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b.configure(|o| o.reconnect.refused_min = Duration::from_secs(30)),
    );
    let (tcp, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut c = Conn {
        tcp,
        buf: String::new(),
    };
    c.until("version='1.0'>").await;
    c.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>\
         <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
         <mechanism>PLAIN</mechanism></mechanisms></stream:features>",
    )
    .await;
    // The bot hangs up without a word more.
    let mut rest = Vec::new();
    tokio::time::timeout(T, c.tcp.read_to_end(&mut rest))
        .await
        .expect("the bot hangs up")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("auth"),
        "the bot tried to log in anyway: {rest:?}"
    );
    // The reconnect count and the healing-log entry are written one after the other: wait for
    // both.
    let s = bot
        .wait_status(T, "the refusal", |s| {
            s.actor(ActorKind::Transport, "xmpp")
                .is_some_and(|a| a.reconnects == 1)
                && s.healing_log.iter().any(|e| e.action == "reconnect")
        })
        .await;
    let entry = s
        .healing_log
        .iter()
        .find(|e| e.action == "reconnect")
        .unwrap();
    assert!(
        entry
            .detail
            .contains("refused: localhost does not offer STARTTLS"),
        "{}",
        entry.detail
    );
    assert!(
        opsbot::testkit::next_attempt_in(&entry.detail) >= Duration::from_secs(30),
        "{}",
        entry.detail
    );
}

/// Starts a bot on a fake server that has accepted its connection; `extra` is added to the
/// transport's settings.
async fn bot_on_fake(extra: &str) -> (RunningBot, TcpListener, Conn) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!(
        "jid = \"opsbot@localhost\"\npassword = \"pw\"\nserver = \"127.0.0.1\"\nport = {port}\n\
         tls = false\nresource = \"bot\"\nrooms = [\"{ROOM}\"]\n{extra}"
    );
    let cfg: XmppConfig = toml::from_str(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let bot = RunningBot::launch(
        opsbot::Bot::builder("xmppbot").transport(Xmpp::new(cfg)),
        "alice@localhost",
        |b| b,
    );
    let (tcp, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let conn = Conn {
        tcp,
        buf: String::new(),
    };
    (bot, listener, conn)
}

fn room_detail(s: &opsbot::health::Snapshot) -> String {
    s.actor(ActorKind::Transport, "xmpp")
        .and_then(|a| a.detail.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_never_sends_its_subject_counts_as_live_only_after_the_grace() {
    let (bot, _listener, mut c) = bot_on_fake("").await;
    c.authenticate().await;
    let joined = Instant::now();
    // History without stamps, and no subject to end it.
    c.let_in(
        &format!(
            "<message type='groupchat' from='{ROOM}/alice' id='h1'><body>!echo old</body></message>"
        ),
        false,
    )
    .await;
    bot.wait_status(T, "in the room", |s| {
        room_detail(s).contains("joined as opsbot (history)")
    })
    .await;
    c.send(&format!(
        "<message type='groupchat' from='{ROOM}/alice' id='e1'><body>!echo early</body></message>"
    ))
    .await;
    bot.wait_status(Duration::from_secs(30), "the history over", |s| {
        let d = room_detail(s);
        d.contains("joined as opsbot;") || d.ends_with("joined as opsbot")
    })
    .await;
    // 20 s: the grace, counted from the join.
    assert!(
        joined.elapsed() >= Duration::from_secs(19),
        "{:?}",
        joined.elapsed()
    );
    c.send(&format!(
        "<message type='groupchat' from='{ROOM}/alice' id='l1'><body>!echo late</body></message>"
    ))
    .await;
    assert_eq!(c.bodies_until("late").await, ["late"], "history ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_room_never_answers_is_a_refusal_retried_with_a_doubling_wait() {
    let (bot, _listener, mut c) = bot_on_fake("join_timeout_secs = 1\njoin_retry_secs = 1\n").await;
    c.authenticate().await;
    let s = bot
        .wait_status(Duration::from_secs(15), "two refusals", |s| {
            s.healing_log
                .iter()
                .filter(|e| e.action == "refused")
                .count()
                >= 2
        })
        .await;
    let refusals: Vec<&str> = s
        .healing_log
        .iter()
        .filter(|e| e.action == "refused")
        .map(|e| e.detail.as_str())
        .collect();
    assert!(
        refusals[0].contains("(no answer to the join); retrying in 1s"),
        "{refusals:?}"
    );
    assert!(
        refusals[1].contains("(no answer to the join); retrying in 2s"),
        "{refusals:?}"
    );
    // Two joins went out, and nothing else is wrong with the connection.
    assert_eq!(s.actor(ActorKind::Transport, "xmpp").unwrap().reconnects, 0);
    c.send(&from_alice("!echo still here")).await;
    assert!(
        c.bodies_until("still here")
            .await
            .ends_with(&["still here".to_owned()])
    );
}

/// Stream management (XEP-0198) both ways: the server's `<r/>` is answered with an `<a/>`
/// whose `h` counts every stanza the bot received (an emptied handler used to pass every test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_ack_requests_are_answered_with_the_count_of_stanzas_received() {
    let (bot, _listener, mut c) = bot_on_fake("").await;
    c.authenticate_with(true).await;
    // Three stanzas: the room's two presences and its subject.
    c.let_in("", true).await;
    bot.wait_status(T, "in the room", |s| {
        room_detail(s).contains("joined as opsbot") && !room_detail(s).contains("(history)")
    })
    .await;
    // Two more (with no body, so nothing answers them), then the request.
    for i in 0..2 {
        c.send(&format!(
            "<message type='chat' from='alice@localhost/x' id='n{i}'/>"
        ))
        .await;
    }
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let h = |text: &str| -> Option<u32> {
        text.split("<a ")
            .skip(1)
            .filter_map(|a| {
                let a = a.split('>').next()?;
                let v = a.split("h=").nth(1)?.get(1..)?;
                v.split(['\'', '"']).next()?.parse().ok()
            })
            .last()
    };
    // The bot's own <r/> may come too; its <a/> is what counts.
    let mut got = None;
    while got.is_none() {
        got = h(&c.until("</a>").await);
    }
    assert_eq!(got, Some(5), "the bot's acknowledgement");
    // And once more, counting on.
    c.send(&from_alice("!echo counted")).await;
    assert_eq!(c.bodies_until("counted").await, ["counted"]);
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let mut got = None;
    while got != Some(6) {
        if let Some(v) = h(&c.until("</a>").await) {
            assert!(v == 5 || v == 6, "{v}");
            got = Some(v);
        }
    }
}
