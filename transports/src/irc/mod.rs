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

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use irc::proto::{CapSubCommand, Command, Message, Prefix, Response};
use opsbot::message::{Incoming, Sender};
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};

pub use config::{IrcConfig, ProfileChoice, SaslConfig};
pub use profile::Profile;

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
/// First retry after a channel refused us (banned, full, invite-only, bad key); doubles to 30 min.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// A JOIN that gets neither our JOIN back nor an error in this time counts as refused (some
/// servers answer refusals we do not know, or nothing at all).
const JOIN_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// After "cannot send to channel" (404: moderated, quieted, banned), lines for the channel are
/// dropped this long instead of each costing an error reply (ngircd charges 2 s apiece, enough
/// to delay our PONG into a ping timeout).
const MUTE: Duration = Duration::from_secs(60);
/// A kick or forced part this long after the previous one starts the rejoin delay afresh.
const REMOVALS_FORGOTTEN: Duration = Duration::from_secs(600);
/// Lines sent this recently still weigh on the server's flood counter when the pacing budget is
/// replaced (InspIRCd forgets one point a second; a burst is a few points).
const RECENT: Duration = Duration::from_secs(10);

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
    /// The server refused the join; retry at the instant.
    Refused {
        reason: String,
        retry_at: Instant,
        backoff: Duration,
    },
}

/// The IRC transport.
#[derive(Debug)]
pub struct Irc {
    cfg: IrcConfig,
    nicks: Vec<String>,
    channels: BTreeMap<String, Chan>,
    profile: Profile,
    /// Per channel: removals (kicks, forced parts) in a row, and when the last one was.
    removals: BTreeMap<String, (u32, Instant)>,
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
            removals: BTreeMap::new(),
        }
    }

    /// How long to wait before rejoining `chan` after a kick or forced part: the configured
    /// delay, doubled for every removal within ten minutes of the one before, up to 30 minutes,
    /// so that a channel that keeps removing the bot is not rejoined every few seconds forever.
    fn removal_delay(&mut self, chan: &str) -> Duration {
        let now = Instant::now();
        let entry = self.removals.entry(chan.to_owned()).or_insert((0, now));
        if now.duration_since(entry.1) > REMOVALS_FORGOTTEN {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        (self.cfg.rejoin_delay() * 2u32.pow(doublings)).min(REFUSED_RETRY_MAX)
    }

    /// The configured name of the channel the server calls `name`.
    fn chan_key(&self, name: &str) -> Option<String> {
        let folded = fold(name);
        self.channels.keys().find(|k| fold(k) == folded).cloned()
    }

    /// Whether a JOIN to `name` is waiting for the server's answer (a first join, or the retry
    /// of a refused one).
    fn awaiting_join(&self, name: &str) -> bool {
        self.chan_key(name).is_some_and(|k| {
            matches!(
                self.channels.get(&k),
                Some(Chan::Joining { sent: Some(_) } | Chan::Refused { .. })
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
    /// but the server still counts what we sent in the last seconds: charge that again.
    fn set_limits(&mut self) {
        let limits = self.irc.limits(self.prefix_len());
        self.link.pacing().set_limits(&limits);
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
            self.send(Command::CAP(
                None,
                CapSubCommand::REQ,
                None,
                Some("sasl".into()),
            ))
            .await?;
        }
        self.send(Command::NICK(self.nick.clone())).await?;
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
        self.flush_joins().await
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
            if !matches!(self.irc.channels.get(&name), Some(Chan::Refused { .. })) {
                self.irc.channels.insert(
                    name,
                    Chan::Joining {
                        sent: Some(Instant::now()),
                    },
                );
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
        self.send(Command::NICK(next)).await
    }

    fn on_refused(&mut self, name: &str, reason: &str) {
        let now = Instant::now();
        let Some(key) = self.irc.chan_key(name) else {
            return;
        };
        let chan = key.as_str();
        let backoff = match self.irc.channels.get(chan) {
            Some(Chan::Refused { backoff, .. }) => (*backoff * 2).min(REFUSED_RETRY_MAX),
            Some(_) => REFUSED_RETRY,
            None => return,
        };
        self.irc.channels.insert(
            chan.to_owned(),
            Chan::Refused {
                reason: reason.to_owned(),
                retry_at: now + backoff,
                backoff,
            },
        );
        // State first, then the event: whoever sees the event also sees the state.
        self.publish();
        self.link.heal_event(
            "join refused",
            format!("{chan}: {reason}; retry in {}s", backoff.as_secs()),
        );
    }

    /// Handles one line from the server; `Err` ends the session.
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
        let from_me = from_nick.is_some_and(|n| n.eq_ignore_ascii_case(&self.nick));
        match &msg.command {
            Command::PING(a, b) => {
                let line = match b {
                    Some(b) => format!("PONG {a} :{b}\r\n"),
                    None => format!("PONG :{a}\r\n"),
                };
                self.send_raw(&line).await?;
            }
            Command::PONG(..) => self.ping_sent = None,
            Command::ERROR(reason) => {
                let why = format!("server closed the link: {reason}");
                // A ban (K-line, G-line, Z-line, AKILL, DNSBL) will not lift in a minute.
                let lower = reason.to_ascii_lowercase();
                let banned = [
                    "k-line", "kline", "g-line", "gline", "z-line", "zline", "akill", "banned",
                ]
                .iter()
                .any(|w| lower.contains(w));
                return Err(if banned {
                    TransportError::Refused(why)
                } else {
                    TransportError::Connection(why)
                });
            }
            Command::CAP(_, CapSubCommand::ACK, _, caps)
            | Command::CAP(_, CapSubCommand::ACK, caps, _)
                if caps
                    .as_deref()
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "sasl")) =>
            {
                self.send(Command::AUTHENTICATE("PLAIN".into())).await?;
            }
            Command::CAP(_, CapSubCommand::NAK, ..) => {
                tracing::warn!("server does not offer SASL; continuing without it");
                self.send(Command::CAP(None, CapSubCommand::END, None, None))
                    .await?;
            }
            Command::AUTHENTICATE(arg) if arg == "+" => {
                if let Some(sasl) = &self.irc.cfg.sasl {
                    let raw = format!("{0}\0{0}\0{1}", sasl.user, sasl.password.expose());
                    let payload = base64::engine::general_purpose::STANDARD.encode(raw);
                    // Payloads over 400 bytes would need chunking; account names and passwords
                    // that long are refused by the config check instead.
                    let line = format!("AUTHENTICATE {payload}\r\n");
                    self.send_raw(&line).await?;
                }
            }
            Command::JOIN(chan, ..) if from_me => {
                if let Some(Prefix::Nickname(_, user, host)) = &msg.prefix
                    && !user.is_empty()
                    && !host.is_empty()
                {
                    let learnt =
                        self.user.as_deref() != Some(user) || self.host.as_deref() != Some(host);
                    self.user = Some(user.clone());
                    self.host = Some(host.clone());
                    if learnt {
                        self.set_limits();
                    }
                }
                if let Some(key) = self.irc.chan_key(chan) {
                    self.irc.channels.insert(key, Chan::Joined);
                    tracing::info!(channel = %chan, "joined");
                    self.publish();
                } else {
                    // Not a channel of ours: a server forward (+f, +L) or an oper's SAJOIN. Leave,
                    // rather than answer commands where nobody configured the bot to be.
                    self.link
                        .heal_event("part", format!("{chan} is not configured; leaving it"));
                    let line = format!("PART {chan} :not configured here\r\n");
                    self.send_raw(&line).await?;
                }
            }
            Command::KICK(chan, target, reason) if target.eq_ignore_ascii_case(&self.nick) => {
                let by = from_nick.unwrap_or("the server").to_owned();
                if let Some(key) = self.irc.chan_key(chan) {
                    let delay = self.irc.removal_delay(&key);
                    let event = format!(
                        "from {chan} by {by} ({}); rejoining in {}s",
                        reason.as_deref().unwrap_or("no reason"),
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
            }
            Command::PART(chan, reason) if from_me => {
                // The bot never leaves a configured channel by itself: this PART was forced
                // (REMOVE, SAPART). Come back as after a kick.
                if let Some(key) = self.irc.chan_key(chan) {
                    let delay = self.irc.removal_delay(&key);
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
                            reason.as_deref().unwrap_or("no reason"),
                            delay.as_secs()
                        ),
                    );
                }
            }
            Command::NICK(new) if from_me => {
                let event = format!("now {new} (was {})", self.nick);
                new.clone_into(&mut self.nick);
                self.link.set_nick(new);
                // The relayed prefix changed length.
                self.set_limits();
                self.publish();
                self.link.heal_event("nick", event);
            }
            Command::PRIVMSG(target, text) if !from_me => self.on_privmsg(&msg, target, text),
            Command::Response(resp, args) => self.on_numeric(*resp as u16, args).await?,
            Command::Raw(cmd, args) if cmd.len() == 3 => {
                if let Ok(code) = cmd.parse::<u16>() {
                    self.on_numeric(code, args).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_privmsg(&mut self, msg: &Message, target: &str, text: &str) {
        let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else {
            return;
        };
        if text.starts_with('\u{1}') {
            // CTCP (VERSION, PING, ACTION, DCC ...): not for the bot.
            return;
        }
        let sender = Sender::with_name(format!("{nick}!{user}@{host}"), nick.as_str());
        let incoming = if is_channel(target) {
            Incoming::in_room(target, sender, text)
        } else {
            Incoming::direct(sender, text)
        };
        self.link.incoming(incoming);
    }

    async fn on_numeric(&mut self, code: u16, args: &[String]) -> Result<(), TransportError> {
        let arg = |i: usize| args.get(i).map_or("", String::as_str);
        let last = args.last().map_or("", String::as_str);
        match code {
            c if c == Response::RPL_WELCOME as u16 => {
                let me = arg(0).to_owned();
                self.on_welcome(&me).await?;
            }
            c if c == Response::RPL_MYINFO as u16 => {
                let version = arg(2);
                if self.irc.cfg.profile == ProfileChoice::Auto {
                    let profile = Profile::from_version(version);
                    if profile != self.irc.profile {
                        tracing::info!(
                            version,
                            profile = profile.name(),
                            "pacing profile from server version"
                        );
                    }
                    self.irc.profile = profile;
                }
                self.set_limits();
                self.publish();
            }
            // Any error about a channel we are joining is a refusal: banned (474), full (471),
            // invite-only (473), bad key (475), registered users only (477), forwarded (470),
            // reserved (479), join throttle (480), TLS only (489), opers only (520), rejoin
            // delay (495), ... The same numerics about a channel we are in (477 answers a
            // PRIVMSG to a +M channel on InspIRCd) are not about joining.
            400..=599 if self.irc.awaiting_join(arg(1)) => {
                let chan = arg(1).to_owned();
                self.on_refused(&chan, last);
            }
            431..=437 => self.on_nick_taken(code, last).await?,
            404 => {
                let chan = arg(1).to_owned();
                if let std::collections::btree_map::Entry::Vacant(e) = self.muted.entry(fold(&chan))
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
                if !host.is_empty() && self.host.as_deref() != Some(host) {
                    tracing::info!(host, "displayed host changed");
                    self.host = Some(host.to_owned());
                    self.set_limits();
                }
            }
            303 => {
                // RPL_ISON: the nicks that are online. Ours is free when it is not among them.
                let wanted = self.irc.cfg.nick.clone();
                let online = last
                    .split_whitespace()
                    .any(|n| n.eq_ignore_ascii_case(&wanted));
                if self.registered && !online && !self.nick.eq_ignore_ascii_case(&wanted) {
                    self.send(Command::NICK(wanted)).await?;
                }
            }
            464 | 465 | 904 | 905 | 906 | 902 => {
                return Err(TransportError::Refused(format!("{code}: {last}")));
            }
            903 => {
                self.send(Command::CAP(None, CapSubCommand::END, None, None))
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn deliver(&mut self, d: Delivery) -> Result<(), TransportError> {
        let target = d.dest.name().to_owned();
        if target.is_empty() || target.contains([' ', ',', '\r', '\n', '\0']) {
            tracing::warn!(target = %truncate(&target, 60), "line for an impossible target dropped");
            d.done();
            return Ok(());
        }
        // The outbox already removed control characters; make sure, since a stray CR or LF here
        // would start a protocol line of the user's choosing.
        let text: String = d.text.chars().filter(|c| !c.is_control()).collect();
        if let Some((until, dropped)) = self.muted.get_mut(&fold(&target)) {
            if Instant::now() < *until {
                *dropped += 1;
                d.done();
                return Ok(());
            }
            if *dropped > 0 {
                tracing::warn!(channel = %target, dropped = *dropped, "lines dropped while muted");
            }
            self.muted.remove(&fold(&target));
            self.publish();
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
            .filter(|(_, c)| match c {
                Chan::Kicked { rejoin_at, .. } => *rejoin_at <= now,
                Chan::Refused { retry_at, .. } => *retry_at <= now,
                _ => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        let unanswered: Vec<String> = self
            .irc
            .channels
            .iter()
            .filter(|(_, c)| {
                matches!(c, Chan::Joining { sent: Some(t) } if now.duration_since(*t) > JOIN_REPLY_TIMEOUT)
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

fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&', '+', '!'])
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

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let connect_timeout = self.cfg.connect_timeout();
        let (host, port, tls) = (self.cfg.server.clone(), self.cfg.port(), self.cfg.tls);
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
        // Channels are joined again from scratch on every connection.
        for c in self.channels.values_mut() {
            *c = Chan::Joining { sent: None };
        }
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
        };
        let connected_at = Instant::now();
        s.register().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                read = reader.next() => match read? {
                    None => return Err(TransportError::Connection("server closed the connection".into())),
                    Some(Read::Oversized(n)) => {
                        s.last_rx = Instant::now();
                        tracing::warn!(bytes = n, "oversized line from server skipped");
                    }
                    Some(Read::Line(line)) => {
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
}
