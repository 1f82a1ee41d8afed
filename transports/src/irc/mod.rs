//! The IRC transport (`kind = "irc"`).
//!
//! Protocol types come from the `irc` crate (`irc::proto`); the connection is ours, because the
//! crate's client does no throttling (its burst settings are not read by its code), ends the
//! stream on the first line that is not UTF-8, and queues writes without bound, which puts the
//! backlog in the socket where keep-alives wait behind it. Here:
//!
//! - **Pacing** is the outbox's, with a profile per server ([`Profile`]) picked from the version
//!   in numeric 004; the transport charges its own lines (PONG, JOIN, NICK) to the same budget
//!   and never sends costly commands such as WHO on its own.
//! - **Lines are exact:** a reply is cut so that the whole line the server relays to others
//!   (`:nick!user@host PRIVMSG #chan :text` CRLF) fits in 512 bytes, counting the bot's own
//!   prefix as the server shows it (learnt from the echo of our JOIN), on UTF-8 boundaries.
//!   Control characters never reach the wire: the outbox strips them and the transport checks.
//! - **Reading is lenient:** Latin-1 lines are decoded, oversized or unparsable lines are logged
//!   and skipped.
//! - **Healing:** a PING after `ping_interval` of silence, and the connection is declared dead if
//!   nothing comes back within `ping_timeout` (plus the time the server needs for what we sent
//!   recently); the framework reconnects with backoff and jitter; the transport falls back to
//!   other nicks when its nick is taken (a ghost of our own previous connection, often) and takes
//!   it back later, identifies (SASL PLAIN or NickServ), rejoins every channel, rejoins after a
//!   kick, and backs off per channel when banned or refused. `!status` shows it all.

mod channels;
mod config;
mod conn;
mod dispatch;
mod lines;
mod profile;
mod register;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use irc::proto::{CapSubCommand, Command, Message, Prefix};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};

pub use config::{Formatting, IrcConfig, ProfileChoice, SaslConfig};
pub use profile::Profile;

use crate::common::Removals;
use crate::membership::Membership;
use channels::{Chan, fold};
use conn::{LineReader, LineWriter, Read};
use lines::*;
use register::Sasl;

/// After "cannot send to channel" (404: moderated, quieted, banned), lines for the channel are
/// dropped this long instead of each costing an error reply (ngircd charges 2 s apiece, enough
/// to delay our PONG into a ping timeout).
const MUTE: Duration = Duration::from_secs(60);
/// Lines sent this recently still weigh on the server's flood counter when the pacing budget is
/// replaced (InspIRCd forgets one point a second; a burst is a few points).
const RECENT: Duration = Duration::from_secs(10);
/// After 001, how long the rest of the registration burst (002-005) may take when the server
/// sends no end of MOTD (376, 422) to close it.
const REGISTRATION_BURST: Duration = Duration::from_secs(30);
/// How long an answer to something we asked (ISON, a NICK) may take before a reply that looks
/// like one is no longer taken as its answer.
const ANSWER_WINDOW: Duration = Duration::from_secs(30);
/// A 404 (cannot send to channel) answers one of our lines only this soon after it.
const SEND_ERROR_WINDOW: Duration = Duration::from_secs(30);
/// A server's ERROR is followed by the server closing the link; an ERROR with the connection
/// still open this much later was not the server's goodbye.
const ERROR_CLOSE_WINDOW: Duration = Duration::from_secs(10);
/// A JOIN into a channel nobody configured this soon after a refusal is a forward.
const FORWARD_WINDOW: Duration = Duration::from_secs(5);
/// How long a bot that other processes carry keeps asking for its own nick, when the server
/// says it is taken, before it takes an alternative: the nick may be held by the previous
/// holder's connection, frozen or cut off, which the server drops within its ping timeout
/// (about two minutes on ngircd and InspIRCd); the bot stays unregistered meanwhile, so only
/// one nick of the bot is ever on the server.
const TAKEOVER_NICK_WAIT: Duration = Duration::from_secs(180);
/// How often the nick is asked for again meanwhile.
const TAKEOVER_NICK_RETRY: Duration = Duration::from_secs(2);
/// Lines the bot ignores as out of place are logged at most this often per kind.
const STRAY_LOG_EVERY: Duration = Duration::from_secs(60);
/// The IRC transport.
#[derive(Debug)]
pub struct Irc {
    cfg: IrcConfig,
    nicks: Vec<String>,
    channels: BTreeMap<String, Chan>,
    profile: Profile,
    /// Per channel: kicks and forced parts, for the rejoin delay.
    removals: Removals<String>,
    /// Channels being joined (folded names): the outbox holds their lines until we are in.
    waiting: Arc<Mutex<BTreeSet<String>>>,
    /// Since when the configured nick has been found taken while other processes carry this
    /// bot (see [`TAKEOVER_NICK_WAIT`]); cleared once registered.
    nick_wait: Option<Instant>,
}

impl Irc {
    /// A transport for this config (checked with [`IrcConfig::problems`]).
    pub fn new(cfg: IrcConfig) -> Self {
        let mut nicks = vec![cfg.nick.clone()];
        nicks.extend(cfg.alt_nicks.iter().cloned());
        let channels = cfg
            .channels
            .iter()
            .map(|c| (c.clone(), Chan::due((), None)))
            .collect();
        let profile = cfg.profile.fixed().unwrap_or(Profile::Conservative);
        Self {
            cfg,
            nicks,
            channels,
            profile,
            removals: Removals::default(),
            waiting: Arc::default(),
            nick_wait: None,
        }
    }
}

/// Per-connection state.
struct Session<'a> {
    irc: &'a mut Irc,
    link: &'a mut Link,
    writer: LineWriter,
    server: String,
    nick: String,
    nick_attempt: usize,
    user: Option<String>,
    host: Option<String>,
    registered: bool,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    last_regain: Instant,
    /// The server refused our configured nick as invalid (432): do not ask again on this
    /// connection.
    regain_refused: bool,
    /// Channels waiting for the pacing budget to allow their JOIN.
    pending_joins: VecDeque<String>,
    /// Channels we may not speak in (folded name): until when, and lines dropped meanwhile.
    muted: BTreeMap<String, (Instant, u64)>,
    recent_sends: VecDeque<Instant>,
    /// When 001 came.
    registered_at: Option<Instant>,
    /// The registration burst ended (376 or 422): no more 002-005 are taken.
    burst_done: bool,
    /// 004 was taken (once per connection).
    myinfo_seen: bool,
    /// The server's NICKLEN and CHANTYPES (005).
    nicklen: usize,
    chantypes: String,
    /// Where SASL stands on this connection.
    sasl: Sasl,
    /// The NICK we sent and have no answer to yet.
    nick_sent: Option<(String, Instant)>,
    /// When we sent the ISON that has no answer yet.
    ison_sent: Option<Instant>,
    /// When we last wrote to each channel (folded name), to tell a 404 about our line from a
    /// stray one.
    last_channel_send: BTreeMap<String, Instant>,
    /// The server's ERROR, waiting for the server to close the link.
    server_error: Option<(TransportError, Instant)>,
    /// Channels we were forwarded into and left, so that a repeat is not left again.
    parted: VecDeque<String>,
    /// When a channel last refused a JOIN of ours (a forward's JOIN follows its 470).
    last_refusal: Option<Instant>,
    strays: Strays,
}

/// Server lines ignored as out of place, logged at most once a minute per kind with a count.
#[derive(Debug, Default)]
struct Strays {
    seen: BTreeMap<&'static str, (u64, Option<Instant>)>,
}

impl Strays {
    fn note(&mut self, kind: &'static str, line: &str) {
        let e = self.seen.entry(kind).or_default();
        e.0 += 1;
        let now = Instant::now();
        if e.1.is_none_or(|t| now.duration_since(t) >= STRAY_LOG_EVERY) {
            tracing::warn!(
                kind,
                ignored = e.0,
                line = %truncate(line, 120).escape_debug(),
                "out-of-place server line ignored"
            );
            *e = (0, Some(now));
        }
    }
}

impl Session<'_> {
    async fn send(&mut self, cmd: Command) -> Result<(), TransportError> {
        let line = Message::from(cmd).to_string();
        self.send_raw(&line).await
    }

    async fn send_raw(&mut self, line: &str) -> Result<(), TransportError> {
        let cost = server_cost(line, self.registered);
        self.link.pacing().charge_n(cost, line.len());
        self.note_sent(cost);
        self.writer.write_line(line).await?;
        Ok(())
    }

    /// Records a command the server counts as `cost` lines.
    fn note_sent(&mut self, cost: u32) {
        let now = Instant::now();
        for _ in 0..cost {
            self.recent_sends.push_back(now);
        }
        while self
            .recent_sends
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent_sends.pop_front();
        }
    }

    fn publish(&mut self) {
        self.sync_gate();
        let chans: Vec<String> = self
            .irc
            .channels
            .iter()
            .map(|(name, c)| {
                c.describe(name, |()| {
                    if self.muted.contains_key(&fold(name)) {
                        format!("{name} joined, muted")
                    } else {
                        format!("{name} joined")
                    }
                })
            })
            .collect();
        let detail = format!(
            "{}:{} as {}, profile {}{}{}",
            self.server,
            self.irc.cfg.port(),
            self.nick,
            self.irc.profile.name(),
            if chans.is_empty() { "" } else { "; " },
            chans.join(", ")
        );
        if self.registered {
            self.link.set_detail(detail);
        }
    }

    async fn deliver(&mut self, d: Delivery) -> Result<(), TransportError> {
        let target = d.dest.name().to_owned();
        if target.is_empty() || target.contains([' ', ',', '\r', '\n', '\0']) {
            d.undeliverable(format!(
                "{:?} cannot be an IRC target",
                truncate(&target, 60)
            ));
            return Ok(());
        }
        if self.is_channel(&target) {
            // Only where we are: a reply to a channel we were forwarded into and left, or were
            // kicked from, would earn an error reply (or worse, land where nobody wants it).
            match self
                .irc
                .chan_key(&target)
                .and_then(|k| self.irc.channels.get(&k))
            {
                Some(Membership::Joined(())) => {}
                Some(Membership::Joining { .. }) => {
                    d.hold(Duration::from_millis(500));
                    return Ok(());
                }
                Some(Membership::Removed { .. } | Membership::Refused { .. }) => {
                    d.undeliverable(format!("not in {target}"));
                    return Ok(());
                }
                None => {
                    d.undeliverable(format!("{target} is not one of our channels"));
                    return Ok(());
                }
            }
        }
        // The outbox already removed control characters (a formatted line keeps mIRC's own
        // codes); make sure, since a stray CR or LF here would start a protocol line of the
        // user's choosing, and a \x01 a CTCP request.
        let text: String = d
            .text
            .chars()
            .filter(|c| !c.is_control() || (d.formatted && FORMAT_CODES.contains(c)))
            .collect();
        if let Some((until, dropped)) = self.muted.get_mut(&fold(&target)) {
            if Instant::now() < *until {
                *dropped += 1;
                d.undeliverable(format!("muted in {target}"));
                return Ok(());
            }
            if *dropped > 0 {
                tracing::warn!(channel = %target, dropped = *dropped, "lines dropped while muted");
            }
            self.muted.remove(&fold(&target));
            self.publish();
        }
        if self.is_channel(&target) {
            self.last_channel_send.insert(fold(&target), Instant::now());
        }
        let room = self.room(&target);
        let pieces: Vec<String> = if d.formatted {
            cut_formatted(&text, room)
        } else {
            cut(&text, room).into_iter().map(str::to_owned).collect()
        };
        for (i, piece) in pieces.into_iter().enumerate() {
            let line = format!("PRIVMSG {target} :{piece}\r\n");
            if i > 0 {
                // The outbox paid for one line; a longer target than it assumed made more.
                self.link.pacing().charge_n(1, line.len());
            }
            self.note_sent(1);
            self.writer.write_line(&line).await?;
        }
        d.done();
        Ok(())
    }

    /// Periodic work: keep-alive, dead-link detection, rejoins, taking the nick back.
    async fn tick(&mut self, connected_at: Instant) -> Result<(), TransportError> {
        let now = Instant::now();
        if !self.registered {
            if now.duration_since(connected_at) > self.irc.cfg.connect_timeout() {
                return Err(TransportError::Connection("registration timed out".into()));
            }
            return Ok(());
        }
        self.flush_joins().await?;
        if self
            .server_error
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) > ERROR_CLOSE_WINDOW)
        {
            self.server_error = None;
            self.strays
                .note("ERROR without the server closing the link", "ERROR");
        }
        let silence = now.duration_since(self.last_rx);
        match self.ping_sent {
            None if silence >= self.irc.cfg.ping_interval() => {
                self.ping_sent = Some(now);
                self.send_raw("PING :opsbot\r\n").await?;
            }
            Some(sent) => {
                // Lines we sent recently may still wait in the server's input queue, ahead of
                // our PING; give the server the time its own budget needs for them.
                let rate = self
                    .irc
                    .limits(self.prefix_len())
                    .global
                    .map_or(1.0, |r| r.per_second);
                let backlog =
                    Duration::from_secs_f64(self.recent_sends.len() as f64 / rate.max(0.1));
                let bound = self.irc.cfg.ping_timeout() + backlog;
                if now.duration_since(sent) > bound {
                    return Err(TransportError::Connection(format!(
                        "ping timeout: no reply for {}s",
                        now.duration_since(sent).as_secs()
                    )));
                }
            }
            None => {}
        }
        let due: Vec<String> = self
            .irc
            .channels
            .iter()
            // Not while its retry is queued: the retry's answer decides.
            .filter(|(name, c)| c.rejoin_due(now) && !self.pending_joins.contains(*name))
            .map(|(n, _)| n.clone())
            .collect();
        let unanswered: Vec<String> = self
            .irc
            .channels
            .iter()
            .filter(|(_, c)| c.unanswered(now, self.irc.cfg.join_timeout()))
            .map(|(n, _)| n.clone())
            .collect();
        for chan in unanswered {
            self.on_refused(&chan, "no answer to JOIN");
        }
        if !due.is_empty() {
            for chan in &due {
                self.link
                    .heal_event("rejoin", format!("joining {chan} again"));
            }
            self.join(due).await?;
        }
        if !self.nick.eq_ignore_ascii_case(&self.irc.cfg.nick)
            && !self.regain_refused
            && now.duration_since(self.last_regain) >= self.irc.cfg.nick_regain()
        {
            // Ask whether the nick is free before taking it: a refused NICK costs an error
            // reply, which servers charge for (ngircd 2 s, InspIRCd 4 units).
            self.last_regain = now;
            self.ison_sent = Some(now);
            let line = format!("ISON {}\r\n", self.irc.cfg.nick);
            self.send_raw(&line).await?;
        }
        Ok(())
    }
}

impl Transport for Irc {
    fn kind(&self) -> &'static str {
        "irc"
    }

    fn lead_lost(&mut self) {
        // A later take-over waits for the nick afresh.
        self.nick_wait = None;
    }

    fn limits(&self) -> Limits {
        self.limits(self.cfg.nick.len().max(9) + 1 + ASSUMED_USER + 1 + ASSUMED_HOST)
    }

    fn identity(&self) -> opsbot::transport::Identity {
        opsbot::transport::Identity::Mask
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let connect_timeout = self.cfg.connect_timeout();
        let (host, port, tls) = (self.cfg.server.clone(), self.cfg.port(), self.cfg.tls);
        tracing::info!(
            "connecting to {host}:{port} {}",
            if tls { "with TLS" } else { "without TLS" }
        );
        let stream = tokio::time::timeout(
            connect_timeout,
            conn::connect(&host, port, tls, self.cfg.ca_file.as_deref()),
        )
        .await
        .map_err(|_| {
            TransportError::Connection(format!("connecting to {host}:{port} timed out"))
        })??;
        let (r, w) = tokio::io::split(stream);
        let mut reader = LineReader::new(r);
        if self.cfg.profile == ProfileChoice::Auto {
            // Until the server says what it is.
            self.profile = Profile::Conservative;
        }
        link.pacing().set_limits(&Transport::limits(self));
        // Channels are joined again from scratch on every connection; their lines wait in the
        // outbox until we are in.
        for c in self.channels.values_mut() {
            *c = Chan::due((), None);
        }
        let waiting = self.waiting.clone();
        link.pacing()
            .set_gate(Some(Arc::new(move |dest| match dest {
                Destination::Room(name) | Destination::Thread { room: name, .. } => !waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&fold(name)),
                Destination::User(_) => true,
            })));
        let nick = self.nick_for(0);
        let mut s = Session {
            irc: self,
            link,
            writer: LineWriter::new(w),
            server: host,
            nick,
            nick_attempt: 0,
            user: None,
            host: None,
            registered: false,
            last_rx: Instant::now(),
            ping_sent: None,
            last_regain: Instant::now(),
            regain_refused: false,
            pending_joins: VecDeque::new(),
            muted: BTreeMap::new(),
            recent_sends: VecDeque::new(),
            registered_at: None,
            burst_done: false,
            myinfo_seen: false,
            nicklen: DEFAULT_NICKLEN,
            chantypes: "#&+!".to_owned(),
            sasl: Sasl::Done,
            nick_sent: None,
            ison_sent: None,
            last_channel_send: BTreeMap::new(),
            server_error: None,
            parted: VecDeque::new(),
            last_refusal: None,
            strays: Strays::default(),
        };
        s.sync_gate();
        let connected_at = Instant::now();
        s.register().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                read = reader.next() => match read {
                    // After the server's ERROR, its reason is why the link closed.
                    Ok(None) | Err(_) if s.server_error.is_some() => {
                        return Err(s.server_error.take().expect("checked").0);
                    }
                    Err(e) => return Err(e.into()),
                    Ok(None) => return Err(TransportError::Connection("server closed the connection".into())),
                    Ok(Some(Read::Oversized(n))) => {
                        s.last_rx = Instant::now();
                        tracing::warn!(bytes = n, "oversized line from server skipped");
                    }
                    Ok(Some(Read::Line(line))) => {
                        s.last_rx = Instant::now();
                        s.ping_sent = None;
                        if !line.is_empty() {
                            s.on_line(&line).await?;
                        }
                    }
                },
                delivery = s.link.next_delivery(), if s.registered => match delivery {
                    Some(d) => s.deliver(d).await?,
                    None => {
                        let _ = s.send_raw("QUIT :shutting down\r\n").await;
                        return Ok(SessionEnd::Finished);
                    }
                },
                _ = tick.tick() => s.tick(connected_at).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_room_and_characters() {
        let text = "€".repeat(10); // 30 bytes
        let pieces = cut(&text, 7);
        assert!(pieces.iter().all(|p| p.len() <= 7));
        assert_eq!(pieces.concat(), text);
        assert_eq!(cut("abc", 10), ["abc"]);
    }

    #[test]
    fn a_formatted_cut_closes_and_reopens_its_runs() {
        let text = format!("a \x02{}\x02 \x11{}\x0f", "b".repeat(30), "c".repeat(30));
        let pieces = cut_formatted(&text, 20);
        assert!(pieces.iter().all(|p| p.len() <= 20), "{pieces:?}");
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.ends_with('\x0f'), "{p:?}");
        }
        assert!(pieces[1].starts_with('\x02'), "{pieces:?}");
        assert!(pieces.last().unwrap().starts_with('\x11'), "{pieces:?}");
        let visible = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
        assert_eq!(
            pieces.iter().map(|p| visible(p)).collect::<String>(),
            visible(&text)
        );
        assert_eq!(cut_formatted("\x02x\x0f", 20), ["\x02x\x0f"]);
    }

    #[test]
    fn formatting_codes_go_whole_with_their_numbers() {
        for (raw, want) in [
            ("\u{3}04red", "red"),
            ("\u{3}04,01red\u{3} plain", "red plain"),
            ("\u{3}4,1x", "x"),
            ("\u{3},5comma", ",5comma"),
            ("\u{3}123", "3"),
            ("\u{2}bold\u{2} \u{1d}it\u{1d} \u{1f}u\u{f}", "bold it u"),
            ("\u{4}ff0000,00ff00hex", "hex"),
            ("\u{4}zz", "zz"),
            ("100% \u{3}", "100% "),
        ] {
            assert_eq!(strip_formatting(raw), want, "{raw:?}");
        }
    }
}
