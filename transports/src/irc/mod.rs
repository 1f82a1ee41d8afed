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

mod config;
mod conn;
mod profile;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use irc::proto::{CapSubCommand, Command, Message, Prefix};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};

pub use config::{IrcConfig, ProfileChoice, SaslConfig};
pub use profile::Profile;

use crate::common::{Removals, refusal_backoff};
use conn::{LineReader, LineWriter, Read};

/// The most a server relays in one line, CRLF included (RFC 1459 §2.3).
const IRC_LINE: usize = 512;
/// Assumed lengths of our user and host before the server has shown them (RFC 1459 user names
/// are short; 63 is the longest DNS label).
const ASSUMED_USER: usize = 10;
const ASSUMED_HOST: usize = 63;
/// Longest target we size the outbox's split for (channel or nick); longer ones are cut exactly
/// at send time.
const ASSUMED_TARGET: usize = 50;
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
/// Lines the bot ignores as out of place are logged at most this often per kind.
const STRAY_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest nick accepted from the server when its 005 names no NICKLEN.
const DEFAULT_NICKLEN: usize = 30;
/// Longest host accepted (a cloak or vhost).
const MAX_HOST: usize = 128;

/// Folds a nick or channel name as RFC 1459 does (the default CASEMAPPING): A-Z and `[]\~`
/// match a-z and `{}|^`. Servers echo a channel in the spelling it was created with, which need
/// not be the config's.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Where we stand with one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Chan {
    /// JOIN due at registration (`sent: None`) or sent and not yet answered.
    Joining { sent: Option<Instant> },
    /// In the channel.
    Joined,
    /// Kicked; rejoin at the instant.
    Kicked { rejoin_at: Instant, by: String },
    /// The server refused the join; retry at the instant. `sent` while a retry's JOIN is out.
    Refused {
        reason: String,
        retry_at: Instant,
        backoff: Duration,
        sent: Option<Instant>,
    },
}

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
}

impl Irc {
    /// A transport for this config (checked with [`IrcConfig::problems`]).
    pub fn new(cfg: IrcConfig) -> Self {
        let mut nicks = vec![cfg.nick.clone()];
        nicks.extend(cfg.alt_nicks.iter().cloned());
        let channels = cfg
            .channels
            .iter()
            .map(|c| (c.clone(), Chan::Joining { sent: None }))
            .collect();
        let profile = cfg.profile.fixed().unwrap_or(Profile::Conservative);
        Self {
            cfg,
            nicks,
            channels,
            profile,
            removals: Removals::default(),
            waiting: Arc::default(),
        }
    }

    /// The configured name of the channel the server calls `name`.
    fn chan_key(&self, name: &str) -> Option<String> {
        let folded = fold(name);
        self.channels.keys().find(|k| fold(k) == folded).cloned()
    }

    /// Whether a JOIN to `name` is out and waiting for the server's answer (a first join, or
    /// the retry of a refused one).
    fn awaiting_join(&self, name: &str) -> bool {
        self.chan_key(name).is_some_and(|k| {
            matches!(
                self.channels.get(&k),
                Some(Chan::Joining { sent: Some(_) } | Chan::Refused { sent: Some(_), .. })
            )
        })
    }

    /// Whether any JOIN of ours is waiting for an answer.
    fn any_join_awaited(&self) -> bool {
        self.channels.values().any(|c| {
            matches!(
                c,
                Chan::Joining { sent: Some(_) } | Chan::Refused { sent: Some(_), .. }
            )
        })
    }

    /// The nick for registration attempt `n`: the configured ones, then the nick with a number.
    fn nick_for(&self, n: usize) -> String {
        match self.nicks.get(n) {
            Some(nick) => nick.clone(),
            None => {
                // Stay within the shortest common NICKLEN (9) where possible.
                let base: String = self.cfg.nick.chars().take(6).collect();
                format!("{base}{}", fastrand::u16(100..1000))
            }
        }
    }

    fn limits(&self, prefix_len: usize) -> Limits {
        // The server relays `:prefix PRIVMSG target :text\r\n`.
        let overhead = 1 + prefix_len + 1 + "PRIVMSG ".len() + ASSUMED_TARGET + 2 + 2;
        self.profile
            .limits(IRC_LINE.saturating_sub(overhead).max(64))
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

/// Where SASL stands on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sasl {
    /// Not configured, or over.
    Done,
    /// `CAP REQ :sasl` sent.
    Requested,
    /// `AUTHENTICATE PLAIN` sent.
    Authenticating,
    /// The payload sent; waiting for 903 or a failure.
    Sent,
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

/// `text` without mIRC formatting: bold, italics, underline, strike-through, monospace,
/// reverse and reset codes, and colour codes with their numbers (`\x0304,01red` is `red`;
/// stripping only the control character would leave `04,01red`).
pub(crate) fn strip_formatting(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{2}' | '\u{f}' | '\u{11}' | '\u{16}' | '\u{1d}' | '\u{1e}' | '\u{1f}' => {}
            '\u{3}' => {
                // Up to two digits of foreground, then a comma and up to two of background.
                let digits = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let mut n = 0;
                    while n < 2 && chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        n += 1;
                    }
                    n
                };
                if digits(&mut chars) > 0 && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        digits(&mut chars);
                    }
                }
            }
            '\u{4}' => {
                // A hex colour: six hex digits, then a comma and six more.
                let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let mut ahead = chars.clone();
                    let ok = (0..6).all(|_| ahead.next().is_some_and(|c| c.is_ascii_hexdigit()));
                    if ok {
                        for _ in 0..6 {
                            chars.next();
                        }
                    }
                    ok
                };
                if hex(&mut chars) && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if (0..6).all(|_| ahead.next().is_some_and(|c| c.is_ascii_hexdigit())) {
                        chars.next();
                        hex(&mut chars);
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `host` (or a user name) can be one: printable ASCII without spaces, `!` or `@`.
fn valid_host(host: &str, max: usize) -> bool {
    !host.is_empty()
        && host.len() <= max
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '!' && c != '@')
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

    /// Applies the current profile and prefix to the pacing budget. A new budget starts full,
    /// but the server still counts what we sent in the last seconds: charge that again. (A new
    /// nick or host only changes the line length; the budget is kept as it is.)
    fn set_limits(&mut self) {
        let limits = self.irc.limits(self.prefix_len());
        if !self.link.pacing().set_limits(&limits) {
            return;
        }
        let now = Instant::now();
        let recent = self
            .recent_sends
            .iter()
            .filter(|t| now.duration_since(**t) < RECENT)
            .count();
        if recent > 0 {
            self.link.pacing().charge_n(recent as u32, 0);
        }
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

    fn prefix_len(&self) -> usize {
        self.nick.len()
            + 1
            + self.user.as_ref().map_or(ASSUMED_USER, String::len)
            + 1
            + self.host.as_ref().map_or(ASSUMED_HOST, String::len)
    }

    /// Bytes of text that fit in one PRIVMSG to `target`, as the server relays it.
    fn room(&self, target: &str) -> usize {
        let overhead = 1 + self.prefix_len() + 1 + "PRIVMSG ".len() + target.len() + 2 + 2;
        IRC_LINE.saturating_sub(overhead).max(1)
    }

    fn publish(&mut self) {
        self.sync_gate();
        let chans: Vec<String> = self
            .irc
            .channels
            .iter()
            .map(|(name, c)| match c {
                Chan::Joining { .. } => format!("{name} joining"),
                Chan::Joined if self.muted.contains_key(&fold(name)) => {
                    format!("{name} joined, muted")
                }
                Chan::Joined => format!("{name} joined"),
                Chan::Kicked { by, .. } => format!("{name} kicked by {by}"),
                Chan::Refused {
                    reason, retry_at, ..
                } => format!(
                    "{name} refused ({reason}; retry in {}s)",
                    retry_at.saturating_duration_since(Instant::now()).as_secs()
                ),
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

    async fn register(&mut self) -> Result<(), TransportError> {
        if let Some(pass) = &self.irc.cfg.password {
            let line = format!("PASS :{}\r\n", pass.expose());
            self.send_raw(&line).await?;
        }
        if self.irc.cfg.sasl.is_some() {
            self.sasl = Sasl::Requested;
            self.send(Command::CAP(
                None,
                CapSubCommand::REQ,
                None,
                Some("sasl".into()),
            ))
            .await?;
        }
        self.send_nick(self.nick.clone()).await?;
        let user = self
            .irc
            .cfg
            .username
            .clone()
            .unwrap_or_else(|| self.irc.cfg.nick.clone());
        let real = self
            .irc
            .cfg
            .realname
            .clone()
            .unwrap_or_else(|| "opsbot".into());
        self.send(Command::USER(user, "0".into(), real)).await
    }

    /// Queues JOINs; they go out as the pacing budget allows (each costs InspIRCd two
    /// penalty points, so ten channels at once would be an Excess Flood on a strict server).
    async fn join(&mut self, names: Vec<String>) -> Result<(), TransportError> {
        let now = Instant::now();
        for name in names {
            if self.pending_joins.contains(&name) {
                continue;
            }
            match self.irc.channels.get_mut(&name) {
                // A retry keeps the refusal and its backoff, so that a second refusal doubles
                // it; the next retry is one backoff away unless the JOIN succeeds.
                Some(Chan::Refused {
                    retry_at, backoff, ..
                }) => *retry_at = now + *backoff,
                _ => {
                    self.irc
                        .channels
                        .insert(name.clone(), Chan::Joining { sent: None });
                }
            }
            self.pending_joins.push_back(name);
        }
        self.sync_gate();
        self.flush_joins().await
    }

    /// Tells the outbox which channels are being joined: their lines wait until we are in.
    fn sync_gate(&self) {
        let waiting: BTreeSet<String> = self
            .irc
            .channels
            .iter()
            .filter(|(_, c)| matches!(c, Chan::Joining { .. }))
            .map(|(n, _)| fold(n))
            .collect();
        *self.irc.waiting.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
    }

    /// Sends the queued JOINs the budget allows now; the tick sends the rest later.
    async fn flush_joins(&mut self) -> Result<(), TransportError> {
        let mut sent = false;
        while let Some(name) = self.pending_joins.front() {
            let line = match self.irc.cfg.channel_keys.get(name) {
                Some(key) => format!("JOIN {name} :{}\r\n", key.expose()),
                None => format!("JOIN {name}\r\n"),
            };
            let cost = server_cost(&line, self.registered);
            if !self.link.pacing().try_take_n(cost, line.len()) {
                break;
            }
            let name = self.pending_joins.pop_front().expect("front exists");
            match self.irc.channels.get_mut(&name) {
                Some(Chan::Refused {
                    sent,
                    retry_at,
                    backoff,
                    ..
                }) => {
                    // The next retry counts from this one going out, not from its queueing.
                    *sent = Some(Instant::now());
                    *retry_at = Instant::now() + *backoff;
                }
                _ => {
                    self.irc.channels.insert(
                        name,
                        Chan::Joining {
                            sent: Some(Instant::now()),
                        },
                    );
                }
            }
            self.note_sent(cost);
            self.writer.write_line(&line).await?;
            sent = true;
        }
        if sent {
            self.publish();
        }
        Ok(())
    }

    async fn on_welcome(&mut self, me: &str) -> Result<(), TransportError> {
        self.registered = true;
        self.registered_at = Some(Instant::now());
        me.clone_into(&mut self.nick);
        self.link.set_nick(&self.nick);
        tracing::info!(server = %self.server, nick = %self.nick, "registered");
        if let Some(line) = self.irc.cfg.nickserv_line() {
            self.send_raw(&line).await?;
        }
        let all: Vec<String> = self.irc.channels.keys().cloned().collect();
        self.link.connected(format!(
            "{}:{} as {}",
            self.server,
            self.irc.cfg.port(),
            self.nick
        ));
        self.join(all).await
    }

    async fn on_nick_taken(&mut self, code: u16, why: &str) -> Result<(), TransportError> {
        if self.registered {
            // A regain attempt failed. Taken (433, 436, 437): keep the nick we have and try
            // again later. Refused outright (432: too long, or characters this server does
            // not allow): asking again would only cost an error reply each time.
            if code == 432 && !self.regain_refused {
                self.regain_refused = true;
                self.link.heal_event(
                    "nick",
                    format!(
                        "{} is refused by this server ({why}); keeping {} on this connection",
                        self.irc.cfg.nick, self.nick
                    ),
                );
            }
            return Ok(());
        }
        self.nick_attempt += 1;
        let next = self.irc.nick_for(self.nick_attempt);
        self.link.heal_event(
            "nick",
            format!("{} unavailable ({why}); trying {next}", self.nick),
        );
        self.nick = next.clone();
        self.send_nick(next).await
    }

    fn on_refused(&mut self, name: &str, reason: &str) {
        let now = Instant::now();
        let Some(key) = self.irc.chan_key(name) else {
            return;
        };
        let chan = key.as_str();
        let backoff = match self.irc.channels.get(chan) {
            Some(Chan::Refused { backoff, .. }) => {
                refusal_backoff(Some(*backoff), self.irc.cfg.join_retry())
            }
            Some(_) => refusal_backoff(None, self.irc.cfg.join_retry()),
            None => return,
        };
        self.irc.channels.insert(
            chan.to_owned(),
            Chan::Refused {
                reason: reason.to_owned(),
                retry_at: now + backoff,
                backoff,
                sent: None,
            },
        );
        self.last_refusal = Some(now);
        // State first, then the event: whoever sees the event also sees the state.
        self.publish();
        self.link.heal_event(
            "join refused",
            format!("{chan}: {reason}; retry in {}s", backoff.as_secs()),
        );
    }

    /// Handles one line from the server; `Err` ends the session.
    ///
    /// Every command and numeric acts only in the state that expects it (registration numerics
    /// while registering, SASL replies while SASL runs, nick errors for a NICK we sent, join
    /// errors for a JOIN we sent, KICK/PART/NICK about us and our channels); anything else is
    /// logged (rate-limited) and ignored, and what a line may set (our nick, our host) is
    /// validated first. A hostile or broken server cannot steer the bot with stray lines.
    async fn on_line(&mut self, line: &str) -> Result<(), TransportError> {
        let msg: Message = match line.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, line = %truncate(line, 200), "unparsable line from server skipped");
                return Ok(());
            }
        };
        let from_nick = match &msg.prefix {
            Some(Prefix::Nickname(n, _, _)) => Some(n.as_str()),
            _ => None,
        };
        let from_me = from_nick.is_some_and(|n| fold(n) == fold(&self.nick));
        match &msg.command {
            Command::PING(a, b) => {
                let line = match b {
                    Some(b) => format!("PONG {a} :{b}\r\n"),
                    None => format!("PONG :{a}\r\n"),
                };
                if line.len() <= IRC_LINE && !line[..line.len() - 2].contains(['\r', '\n', '\0']) {
                    self.send_raw(&line).await?;
                } else {
                    self.strays.note("oversized PING", line.as_str());
                }
            }
            Command::PONG(..) => self.ping_sent = None,
            Command::ERROR(reason) => {
                // The server says goodbye and closes the link; the session ends when it does.
                // An ERROR that the server does not follow by closing was not its goodbye.
                let why = format!("server closed the link: {}", truncate(reason, 200));
                // A ban (K-line, G-line, Z-line, AKILL, DNSBL) will not lift in a minute.
                let lower = reason.to_ascii_lowercase();
                let banned = [
                    "k-line", "kline", "g-line", "gline", "z-line", "zline", "akill", "banned",
                ]
                .iter()
                .any(|w| lower.contains(w));
                let err = if banned {
                    TransportError::Refused(why)
                } else {
                    TransportError::Connection(why)
                };
                self.server_error = Some((err, Instant::now()));
            }
            Command::CAP(_, CapSubCommand::ACK, _, caps)
            | Command::CAP(_, CapSubCommand::ACK, caps, _)
                if caps
                    .as_deref()
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "sasl")) =>
            {
                if self.sasl == Sasl::Requested {
                    self.sasl = Sasl::Authenticating;
                    self.send(Command::AUTHENTICATE("PLAIN".into())).await?;
                } else {
                    self.strays.note("CAP ACK not asked for", line);
                }
            }
            Command::CAP(_, CapSubCommand::NAK, ..) => {
                if self.sasl == Sasl::Requested {
                    self.no_sasl()?;
                    self.send(Command::CAP(None, CapSubCommand::END, None, None))
                        .await?;
                } else {
                    self.strays.note("CAP NAK not asked for", line);
                }
            }
            Command::AUTHENTICATE(arg) if arg == "+" => {
                if self.sasl == Sasl::Authenticating
                    && let Some(sasl) = &self.irc.cfg.sasl
                {
                    let raw = format!("{0}\0{0}\0{1}", sasl.user, sasl.password.expose());
                    let payload = base64::engine::general_purpose::STANDARD.encode(raw);
                    // Payloads over 400 bytes would need chunking; account names and passwords
                    // that long are refused by the config check instead.
                    let line = format!("AUTHENTICATE {payload}\r\n");
                    self.sasl = Sasl::Sent;
                    self.send_raw(&line).await?;
                } else {
                    self.strays.note("AUTHENTICATE outside SASL", line);
                }
            }
            Command::JOIN(chan, ..) if from_me => self.on_own_join(&msg, chan, line).await?,
            Command::KICK(chan, target, reason) if fold(target) == fold(&self.nick) => {
                let by = from_nick.unwrap_or("the server").to_owned();
                match self.irc.chan_key(chan) {
                    Some(key) if self.irc.channels.get(&key) == Some(&Chan::Joined) => {
                        let delay = self
                            .irc
                            .removals
                            .delay(key.clone(), self.irc.cfg.rejoin_delay());
                        let event = format!(
                            "from {chan} by {by} ({}); rejoining in {}s",
                            truncate(reason.as_deref().unwrap_or("no reason"), 200),
                            delay.as_secs()
                        );
                        self.irc.channels.insert(
                            key,
                            Chan::Kicked {
                                rejoin_at: Instant::now() + delay,
                                by,
                            },
                        );
                        self.publish();
                        self.link.heal_event("kicked", event);
                    }
                    _ => self.strays.note("KICK from a channel we are not in", line),
                }
            }
            Command::PART(chan, reason) if from_me => {
                // The bot never leaves a configured channel by itself: this PART was forced
                // (REMOVE, SAPART). Come back as after a kick.
                match self.irc.chan_key(chan) {
                    Some(key) if self.irc.channels.get(&key) == Some(&Chan::Joined) => {
                        let delay = self
                            .irc
                            .removals
                            .delay(key.clone(), self.irc.cfg.rejoin_delay());
                        self.irc.channels.insert(
                            key,
                            Chan::Kicked {
                                rejoin_at: Instant::now() + delay,
                                by: "a forced part".into(),
                            },
                        );
                        self.publish();
                        self.link.heal_event(
                            "parted",
                            format!(
                                "from {chan} ({}); rejoining in {}s",
                                truncate(reason.as_deref().unwrap_or("no reason"), 200),
                                delay.as_secs()
                            ),
                        );
                    }
                    _ => self.strays.note("PART from a channel we are not in", line),
                }
            }
            Command::NICK(new) if from_me => {
                if !self.valid_nick(new) {
                    self.strays.note("NICK to an invalid nick", line);
                    return Ok(());
                }
                if self
                    .nick_sent
                    .as_ref()
                    .is_some_and(|(n, _)| fold(n) == fold(new))
                {
                    self.nick_sent = None;
                }
                let event = format!("now {new} (was {})", self.nick);
                new.clone_into(&mut self.nick);
                self.link.set_nick(new);
                // The relayed prefix changed length.
                self.set_limits();
                self.publish();
                self.link.heal_event("nick", event);
            }
            Command::PRIVMSG(target, text) if !from_me => self.on_privmsg(&msg, target, text),
            Command::Response(resp, args) => self.on_numeric(*resp as u16, args, line).await?,
            Command::Raw(cmd, args) if cmd.len() == 3 => {
                if let Ok(code) = cmd.parse::<u16>() {
                    self.on_numeric(code, args, line).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Our own JOIN, echoed: the answer to a JOIN we sent, or a server forward.
    async fn on_own_join(
        &mut self,
        msg: &Message,
        chan: &str,
        line: &str,
    ) -> Result<(), TransportError> {
        if let Some(key) = self.irc.chan_key(chan) {
            if !self.irc.awaiting_join(chan) {
                self.strays.note("JOIN we did not send", line);
                return Ok(());
            }
            if let Some(Prefix::Nickname(_, user, host)) = &msg.prefix
                && valid_host(user, 64)
                && valid_host(host, MAX_HOST)
            {
                let learnt =
                    self.user.as_deref() != Some(user) || self.host.as_deref() != Some(host);
                self.user = Some(user.clone());
                self.host = Some(host.clone());
                if learnt {
                    self.set_limits();
                }
            }
            self.irc.channels.insert(key, Chan::Joined);
            tracing::info!(channel = %chan, "joined");
            self.publish();
        } else if (self.irc.any_join_awaited()
            || self
                .last_refusal
                .is_some_and(|t| t.elapsed() < FORWARD_WINDOW))
            && self.is_channel(chan)
            && !self.parted.iter().any(|p| fold(p) == fold(chan))
        {
            // Not a channel of ours, right after a JOIN of ours: a server forward (+f, +L; the
            // server says 470 about our channel, then puts us in another).
            // Leave, rather than be where nobody configured the bot to be; replies to it are
            // undeliverable meanwhile.
            if self.parted.len() >= 16 {
                self.parted.pop_front();
            }
            self.parted.push_back(chan.to_owned());
            self.link
                .heal_event("part", format!("{chan} is not configured; leaving it"));
            let line = format!("PART {chan} :not configured here\r\n");
            self.send_raw(&line).await?;
        } else {
            self.strays
                .note("JOIN to a channel we did not ask for", line);
        }
        Ok(())
    }

    fn on_privmsg(&mut self, msg: &Message, target: &str, text: &str) {
        let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else {
            return;
        };
        if nick.is_empty() || nick.chars().any(char::is_control) {
            return;
        }
        if text.starts_with('\u{1}') {
            // CTCP (VERSION, PING, ACTION, DCC ...): not for the bot.
            return;
        }
        let sender = Sender::with_name(format!("{nick}!{user}@{host}"), nick.as_str());
        let text = &strip_formatting(text);
        let incoming = if self.is_channel(target) {
            // Only from a channel we are in: anything else was not said to us.
            match self.irc.chan_key(target) {
                Some(k) if self.irc.channels.get(&k) == Some(&Chan::Joined) => {}
                _ => {
                    self.strays
                        .note("PRIVMSG to a channel we are not in", target);
                    return;
                }
            }
            Incoming::in_room(target, sender, text)
        } else if fold(target) == fold(&self.nick) {
            Incoming::direct(sender, text)
        } else {
            self.strays.note("PRIVMSG to someone else", target);
            return;
        };
        self.link.incoming(incoming);
    }

    /// The server does not offer SASL although the config has credentials for it: a refusal
    /// (the bot would end up unidentified on the network), unless `sasl_optional` says to go
    /// on without it.
    fn no_sasl(&mut self) -> Result<(), TransportError> {
        self.sasl = Sasl::Done;
        if self.irc.cfg.sasl_optional {
            tracing::warn!("the server does not offer SASL; going on without it (sasl_optional)");
            Ok(())
        } else {
            Err(TransportError::Refused(
                "the server does not offer SASL, and the config has SASL credentials: the bot \
                 would be unidentified (set sasl_optional = true to go on without it)"
                    .into(),
            ))
        }
    }

    async fn on_numeric(
        &mut self,
        code: u16,
        args: &[String],
        line: &str,
    ) -> Result<(), TransportError> {
        let arg = |i: usize| args.get(i).map_or("", String::as_str);
        let last = truncate(args.last().map_or("", String::as_str), 200).to_owned();
        let last = last.as_str();
        match code {
            1 => {
                if self.registered {
                    self.strays.note("001 after registration", line);
                    return Ok(());
                }
                if self.sasl == Sasl::Requested {
                    // A server that ignored our CAP request registered us without SASL.
                    self.no_sasl()?;
                }
                // Our nick as the server says it, when it is one; else the one we sent.
                let me = if self.valid_nick(arg(0)) {
                    arg(0).to_owned()
                } else {
                    self.nick.clone()
                };
                self.nick_sent = None;
                self.on_welcome(&me).await?;
            }
            2 | 3 => {}
            4 => {
                if !self.in_registration() || self.myinfo_seen {
                    self.strays.note("004 outside registration", line);
                    return Ok(());
                }
                self.myinfo_seen = true;
                let version = arg(2);
                if self.irc.cfg.profile == ProfileChoice::Auto {
                    let profile = Profile::from_version(version);
                    if profile != self.irc.profile {
                        tracing::info!(
                            version = %truncate(version, 60),
                            profile = profile.name(),
                            "pacing profile from server version"
                        );
                    }
                    self.irc.profile = profile;
                }
                self.set_limits();
                self.publish();
            }
            5 => {
                if !self.in_registration() {
                    self.strays.note("005 outside registration", line);
                    return Ok(());
                }
                self.on_isupport(args);
            }
            376 | 422 => self.burst_done = true,
            // Any error about a channel we are joining is a refusal: banned (474), full (471),
            // invite-only (473), bad key (475), registered users only (477), forwarded (470),
            // reserved (479), join throttle (480), TLS only (489), opers only (520), rejoin
            // delay (495), ... The same numerics about a channel we are in (477 answers a
            // PRIVMSG to a +M channel on InspIRCd) are not about joining.
            400..=599 if self.irc.awaiting_join(arg(1)) => {
                let chan = arg(1).to_owned();
                self.on_refused(&chan, last);
            }
            431..=437 => {
                // Only an answer to a NICK we sent (its nick is the second argument).
                let ours = self
                    .nick_sent
                    .as_ref()
                    .is_some_and(|(n, at)| fold(n) == fold(arg(1)) && at.elapsed() < ANSWER_WINDOW);
                if ours {
                    self.nick_sent = None;
                    self.on_nick_taken(code, last).await?;
                } else {
                    self.strays
                        .note("nick error for a NICK we did not send", line);
                }
            }
            404 => {
                let chan = arg(1).to_owned();
                let ours = self
                    .irc
                    .chan_key(&chan)
                    .is_some_and(|k| self.irc.channels.get(&k) == Some(&Chan::Joined))
                    && self
                        .last_channel_send
                        .get(&fold(&chan))
                        .is_some_and(|t| t.elapsed() < SEND_ERROR_WINDOW);
                if !ours {
                    self.strays
                        .note("404 about a channel we did not write to", line);
                } else if let std::collections::btree_map::Entry::Vacant(e) =
                    self.muted.entry(fold(&chan))
                {
                    e.insert((Instant::now() + MUTE, 0));
                    self.publish();
                    self.link.heal_event(
                        "muted",
                        format!(
                            "{chan}: {last}; its lines are dropped for {}s",
                            MUTE.as_secs()
                        ),
                    );
                }
            }
            396 => {
                // RPL_HOSTHIDDEN: `<nick> <host> :is now your displayed host` (a cloak or vhost
                // set after identification). The server relays our lines with it from now on.
                let host = arg(1).rsplit('@').next().unwrap_or_default();
                if fold(arg(0)) != fold(&self.nick) || !valid_host(host, MAX_HOST) {
                    self.strays.note("396 not about us, or not a host", line);
                } else if self.host.as_deref() != Some(host) {
                    tracing::info!(host, "displayed host changed");
                    self.host = Some(host.to_owned());
                    self.set_limits();
                }
            }
            303 => {
                // RPL_ISON: the nicks that are online. Ours is free when it is not among them.
                if self.ison_sent.is_none_or(|t| t.elapsed() >= ANSWER_WINDOW) {
                    self.strays.note("303 without our ISON", line);
                    return Ok(());
                }
                self.ison_sent = None;
                let wanted = self.irc.cfg.nick.clone();
                let online = last.split_whitespace().any(|n| fold(n) == fold(&wanted));
                if self.registered && !online && fold(&self.nick) != fold(&wanted) {
                    self.send_nick(wanted).await?;
                }
            }
            464 | 465 => {
                if self.registered {
                    self.strays
                        .note("registration refusal after registration", line);
                } else {
                    return Err(TransportError::Refused(format!("{code}: {last}")));
                }
            }
            902 | 904 | 905 | 906 => {
                if matches!(self.sasl, Sasl::Authenticating | Sasl::Sent) {
                    return Err(TransportError::Refused(format!("{code}: {last}")));
                }
                self.strays.note("SASL failure outside SASL", line);
            }
            903 => {
                if self.sasl == Sasl::Sent {
                    self.sasl = Sasl::Done;
                    self.send(Command::CAP(None, CapSubCommand::END, None, None))
                        .await?;
                } else {
                    self.strays.note("SASL success outside SASL", line);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// RPL_ISUPPORT (005): the limits the server sets on nicks and channel names.
    fn on_isupport(&mut self, args: &[String]) {
        // `<nick> TOKEN=value ... :are supported by this server`
        for token in args.iter().skip(1).take(args.len().saturating_sub(2)) {
            if let Some(n) = token.strip_prefix("NICKLEN=") {
                if let Ok(n) = n.parse::<usize>()
                    && (1..=255).contains(&n)
                {
                    self.nicklen = n;
                }
            } else if let Some(t) = token.strip_prefix("CHANTYPES=")
                && !t.is_empty()
                && t.len() <= 8
                && t.chars().all(|c| c.is_ascii_punctuation())
            {
                t.clone_into(&mut self.chantypes);
            }
        }
    }

    /// Whether the rest of the registration burst may still come.
    fn in_registration(&self) -> bool {
        self.registered
            && !self.burst_done
            && self
                .registered_at
                .is_some_and(|t| t.elapsed() < REGISTRATION_BURST)
    }

    /// Whether `n` can be a nick on this server (RFC 2812's characters, the server's NICKLEN).
    fn valid_nick(&self, n: &str) -> bool {
        let special = |c: char| "[]\\`_^{|}".contains(c);
        let mut chars = n.chars();
        n.len() <= self.nicklen
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || special(c))
            && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
    }

    /// Whether `target` names a channel on this server (its CHANTYPES) that could be real.
    fn is_channel(&self, target: &str) -> bool {
        target.starts_with(|c| self.chantypes.contains(c))
            && target.len() <= 200
            && !target
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    }

    /// Sends NICK and remembers it, so that only an answer to it is taken as one.
    async fn send_nick(&mut self, nick: String) -> Result<(), TransportError> {
        self.nick_sent = Some((nick.clone(), Instant::now()));
        self.send(Command::NICK(nick)).await
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
                Some(Chan::Joined) => {}
                Some(Chan::Joining { .. }) => {
                    d.hold(Duration::from_millis(500));
                    return Ok(());
                }
                Some(Chan::Kicked { .. } | Chan::Refused { .. }) => {
                    d.undeliverable(format!("not in {target}"));
                    return Ok(());
                }
                None => {
                    d.undeliverable(format!("{target} is not one of our channels"));
                    return Ok(());
                }
            }
        }
        // The outbox already removed control characters; make sure, since a stray CR or LF here
        // would start a protocol line of the user's choosing.
        let text: String = d.text.chars().filter(|c| !c.is_control()).collect();
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
        for (i, piece) in cut(&text, room).into_iter().enumerate() {
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
            .filter(|(name, c)| match c {
                Chan::Kicked { rejoin_at, .. } => *rejoin_at <= now,
                // Not while its retry is queued or out: the retry's answer decides.
                Chan::Refused {
                    retry_at,
                    sent: None,
                    ..
                } => *retry_at <= now && !self.pending_joins.contains(*name),
                _ => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        let unanswered: Vec<String> = self
            .irc
            .channels
            .iter()
            .filter(|(_, c)| match c {
                Chan::Joining { sent: Some(t) } | Chan::Refused { sent: Some(t), .. } => {
                    now.duration_since(*t) > self.irc.cfg.join_timeout()
                }
                _ => false,
            })
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

/// What the server charges for a line we send, in PRIVMSG units (InspIRCd 3's penalties, the
/// strictest we know: JOIN 2, NICK after registration 4, PART 5, a PONG answering the server's
/// PING nothing; ngircd charges less or nothing for these).
fn server_cost(line: &str, registered: bool) -> u32 {
    match line.split(' ').next().unwrap_or("") {
        "PONG" => 0,
        "JOIN" => 2,
        "NICK" if registered => 4,
        "PART" => 5,
        _ => 1,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cuts `text` into pieces of at most `room` bytes on character boundaries.
fn cut(text: &str, room: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > room {
        let piece = truncate(rest, room);
        if piece.is_empty() {
            break;
        }
        out.push(piece);
        rest = &rest[piece.len()..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

impl Transport for Irc {
    fn kind(&self) -> &'static str {
        "irc"
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
            *c = Chan::Joining { sent: None };
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
