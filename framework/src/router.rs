//! The router: decides who gets an [`Incoming`] and guards the bot against its users.
//!
//! Parsing and lookup live in [`RouteTable`], a pure structure (benchmarked and unit-tested
//! without a runtime). The `Router` actor adds the stateful checks, in this order: the per-user
//! command budget (Limnoria's default: 12 commands a minute, then the user is ignored for five
//! minutes, told once), access (admin-only commands), per-command cooldowns, argument parsing,
//! and finally dispatch to the handler's host. Every refusal is a short reply, never silence,
//! except for a user who is being ignored.
//!
//! Dispatch does not wait: each invocation gets a small task that waits for the handler's
//! outcome and tells the user about a failure (usage line, apology after a panic, timeout,
//! "unavailable"), so a slow handler never holds up the router.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::{DefaultKeyedRateLimiter, Quota};
use regex::{Regex, RegexSet};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::command::{Call, Command, Match};
use crate::conversation::Allowance;
use crate::error::Error;
use crate::handler::{Job, Outcome, Work};
use crate::message::{Destination, Incoming, Outgoing};
use crate::outbox::Say;
use crate::shared::BotShared;
use crate::supervisor::{CoreGuard, fault_point};

pub use crate::message::Inbound;

/// What a message means, according to the route table.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// A known command.
    Command {
        /// Index of the handler.
        handler: usize,
        /// Its declaration.
        command: &'static Command,
        /// The name as typed.
        invoked_as: &'a str,
        /// Everything after the name, trimmed.
        args: &'a str,
    },
    /// Looks like a command, but none has this name.
    Unknown {
        /// The name as typed.
        name: &'a str,
    },
    /// Not a command; these passive patterns match (global pattern indices).
    Passive(Vec<usize>),
    /// Nothing to do.
    Nothing,
}

/// Commands and passive patterns of one bot, compiled for fast lookup.
#[derive(Debug)]
pub struct RouteTable {
    prefix: String,
    commands: HashMap<String, (usize, &'static Command)>,
    set: RegexSet,
    regexes: Vec<Regex>,
    owners: Vec<(usize, usize)>,
}

/// Why a route table could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// Two handlers claim one command name or alias.
    #[error("command name `{name}` is claimed by both {first} and {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// First handler.
        first: &'static str,
        /// Second handler.
        second: &'static str,
    },
    /// A command name that users could not type.
    #[error("command name `{0}` must be non-empty letters, digits, `-` or `_`")]
    BadName(String),
    /// A passive pattern that does not compile.
    #[error("pattern {pattern:?} of {handler}: {error}")]
    BadPattern {
        /// The handler.
        handler: &'static str,
        /// The pattern.
        pattern: &'static str,
        /// The regex error.
        error: Box<regex::Error>,
    },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
}

impl RouteTable {
    /// Builds the table from each handler's name, commands and patterns, in order.
    pub fn new(
        prefix: &str,
        handlers: &[(&'static str, &'static [Command], &'static [&'static str])],
    ) -> Result<Self, RouteError> {
        let mut commands: HashMap<String, (usize, &'static Command)> = HashMap::new();
        let mut patterns = Vec::new();
        let mut owners = Vec::new();
        for (h, (hname, cmds, pats)) in handlers.iter().enumerate() {
            for cmd in cmds.iter() {
                for name in std::iter::once(&cmd.name).chain(cmd.aliases.iter()) {
                    if !valid_name(name) {
                        return Err(RouteError::BadName((*name).to_owned()));
                    }
                    let key = name.to_ascii_lowercase();
                    if let Some((other, _)) = commands.get(&key) {
                        return Err(RouteError::Duplicate {
                            name: key,
                            first: handlers[*other].0,
                            second: hname,
                        });
                    }
                    commands.insert(key, (h, cmd));
                }
            }
            for (p, pat) in pats.iter().enumerate() {
                let re = Regex::new(pat).map_err(|error| RouteError::BadPattern {
                    handler: hname,
                    pattern: pat,
                    error: Box::new(error),
                })?;
                patterns.push(re);
                owners.push((h, p));
            }
        }
        let set =
            RegexSet::new(patterns.iter().map(Regex::as_str)).expect("each pattern compiled alone");
        Ok(Self {
            prefix: prefix.to_owned(),
            commands,
            set,
            regexes: patterns,
            owners,
        })
    }

    /// The command prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Which handler and which of its patterns a global pattern index belongs to.
    pub fn owner(&self, pattern: usize) -> (usize, usize) {
        self.owners[pattern]
    }

    /// The compiled pattern at a global index.
    pub fn regex(&self, pattern: usize) -> &Regex {
        &self.regexes[pattern]
    }

    /// Routes a message; `nick` is the bot's current nick (for `nick: command`).
    pub fn route<'a>(&self, msg: &'a Incoming, nick: &str) -> Route<'a> {
        let text = msg.text.trim();
        let body = if let Some(rest) = text.strip_prefix(self.prefix.as_str()) {
            Some(rest)
        } else if let Some(rest) = addressed_to(text, nick) {
            Some(rest.strip_prefix(self.prefix.as_str()).unwrap_or(rest))
        } else if msg.is_direct() || msg.addressed {
            Some(text)
        } else {
            None
        };
        if let Some(body) = body {
            let (name, args) = match body.find(char::is_whitespace) {
                Some(i) => (&body[..i], body[i..].trim()),
                None => (body, ""),
            };
            if valid_name(name) {
                if let Some((handler, command)) = self.commands.get(name).or_else(|| {
                    // Names are stored lower-case; most users type them so, so only fall back
                    // to an allocation when the exact lookup misses.
                    self.commands.get(&name.to_ascii_lowercase())
                }) {
                    return Route::Command {
                        handler: *handler,
                        command,
                        invoked_as: name,
                        args,
                    };
                }
                // A private message that is not a command may still be for a passive matcher.
                if !msg.is_direct() || text.starts_with(self.prefix.as_str()) {
                    return Route::Unknown { name };
                }
                let matches = self.passive(text);
                return if matches.is_empty() {
                    Route::Unknown { name }
                } else {
                    Route::Passive(matches)
                };
            }
        }
        let matches = self.passive(text);
        if matches.is_empty() {
            Route::Nothing
        } else {
            Route::Passive(matches)
        }
    }

    fn passive(&self, text: &str) -> Vec<usize> {
        if self.regexes.is_empty() {
            return Vec::new();
        }
        self.set.matches(text).into_iter().collect()
    }
}

/// `nick: rest` or `nick, rest` (nick case-insensitive) gives `rest`.
fn addressed_to<'a>(text: &'a str, nick: &str) -> Option<&'a str> {
    if nick.is_empty() || text.len() <= nick.len() || !text.is_char_boundary(nick.len()) {
        return None;
    }
    let (head, tail) = text.split_at(nick.len());
    if !head.eq_ignore_ascii_case(nick) {
        return None;
    }
    let rest = tail.strip_prefix(':').or_else(|| tail.strip_prefix(','))?;
    Some(rest.trim_start())
}

/// The router actor of one bot.
pub(crate) struct Router {
    table: RouteTable,
    hosts: Vec<(&'static str, Recipient<Job>)>,
    shared: Arc<BotShared>,
    nick: Arc<Mutex<String>>,
    budget: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    ignored: HashMap<Arc<str>, Instant>,
    hint_limiter: DefaultKeyedRateLimiter<Destination>,
    /// All hints together: many different people (or one person under many names) typing
    /// nonsense at the bot must not fill its output budget with hints.
    hint_total: governor::DefaultDirectRateLimiter,
    cooldowns: HashMap<(Arc<str>, &'static str), Instant>,
    tracker: TaskTracker,
    closed: bool,
    guard: CoreGuard,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("prefix", &self.table.prefix)
            .finish_non_exhaustive()
    }
}

impl Router {
    pub(crate) fn new(
        table: RouteTable,
        hosts: Vec<(&'static str, Recipient<Job>)>,
        shared: Arc<BotShared>,
        nick: Arc<Mutex<String>>,
        tracker: TaskTracker,
    ) -> Self {
        let b = shared.options.budget;
        let budget = NonZeroU32::new(b.per_minute).map(|n| {
            let quota = Quota::per_minute(n).allow_burst(n);
            governor::RateLimiter::hashmap(quota)
        });
        // One "unknown command" hint per destination every 10 s, at most.
        let hint_quota = Quota::with_period(Duration::from_secs(10)).expect("non-zero period");
        let guard = shared.fatal.guard("router");
        Self {
            table,
            hosts,
            shared,
            nick,
            budget,
            ignored: HashMap::new(),
            hint_limiter: governor::RateLimiter::hashmap(hint_quota),
            hint_total: governor::RateLimiter::direct(Quota::per_minute(
                NonZeroU32::new(6).expect("non-zero"),
            )),
            cooldowns: HashMap::new(),
            tracker,
            closed: false,
            guard,
        }
    }

    fn say(&self, dest: Destination, text: String) {
        self.shared
            .outbox
            .do_send(Say::new(Outgoing::answer(dest, text)));
    }

    /// Replies to the sender of `msg`, addressing them by name in a room.
    fn tell(&self, msg: &Incoming, text: &str) {
        self.say(msg.reply_to(), address(msg, text));
    }

    /// Spends one unit of the sender's budget; false if the command must be ignored.
    fn within_budget(&mut self, msg: &Incoming) -> bool {
        let Some(limiter) = &self.budget else {
            return true;
        };
        let id = &msg.sender.id;
        if self.shared.is_admin(&msg.sender) {
            return true;
        }
        let now = Instant::now();
        if let Some(until) = self.ignored.get(id) {
            if now < *until {
                return false;
            }
            self.ignored.remove(id);
        }
        if limiter.check_key(id).is_ok() {
            return true;
        }
        let ignore_for = self.shared.options.budget.ignore_for;
        self.ignored.insert(id.clone(), now + ignore_for);
        tracing::warn!(sender = %id, "command budget spent; ignoring sender");
        let how_long = if ignore_for < Duration::from_secs(60) {
            format!("{}s", ignore_for.as_secs().max(1))
        } else {
            format!("{} minutes", ignore_for.as_secs().div_ceil(60))
        };
        self.tell(
            msg,
            &format!("too many commands; ignoring you for {how_long}"),
        );
        false
    }

    fn dispatch(
        &mut self,
        handler: usize,
        work: Work,
        reply_to: Destination,
        what: Option<(String, Incoming)>,
    ) {
        let (hname, host) = self.hosts[handler].clone();
        let (started_tx, started_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let expired = Arc::new(AtomicBool::new(false));
        let allowance = Allowance::default();
        host.do_send(Job {
            work,
            reply_to,
            started: started_tx,
            done: done_tx,
            expired: expired.clone(),
            allowance: allowance.clone(),
        });
        let shared = self.shared.clone();
        let timeout = shared.options.handler_timeout;
        self.tracker.spawn_local(async move {
            let outcome = if started_rx.await.is_err() {
                // The host answered without starting (failed) or is gone.
                done_rx.await.unwrap_or(Outcome::Unavailable)
            } else {
                // Async handlers time themselves out; this bound catches a blocking one.
                match allowance
                    .within(timeout + Duration::from_millis(100), done_rx)
                    .await
                {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Outcome::Unavailable,
                    Err(_) => {
                        // A blocking handler cannot be interrupted: whatever it says from now
                        // on is dropped, so that nothing arrives after "was stopped".
                        expired.store(true, Ordering::Release);
                        Outcome::TimedOut(timeout)
                    }
                }
            };
            let Some((what, msg)) = what else {
                match outcome {
                    Outcome::Panicked { .. } => {
                        tracing::warn!(handler = hname, "a passive handler crashed");
                    }
                    Outcome::TimedOut(t) => {
                        tracing::warn!(handler = hname, "a passive handler took longer than {t:?}");
                    }
                    _ => {}
                }
                return;
            };
            let text = match outcome {
                Outcome::Done => return,
                Outcome::Failed(e) => match e.user_message(&what) {
                    told if told.is_empty() => return,
                    text => text,
                },
                Outcome::Panicked { disabled: false } => {
                    format!("sorry, {what} crashed; it is being restarted")
                }
                Outcome::Panicked { disabled: true } => {
                    format!("sorry, {what} crashed and is disabled after repeated crashes")
                }
                Outcome::TimedOut(t) => format!(
                    "{what} took longer than {} and was stopped",
                    short_duration(t)
                ),
                Outcome::Unavailable => Error::Unavailable { command: what }.to_string(),
            };
            shared.outbox.do_send(Say::new(Outgoing::answer(
                msg.reply_to(),
                address(&msg, &text),
            )));
        });
    }

    /// A card's button was pressed: runs the command the bot kept for that button (never one
    /// the submission names), as a typed command from the presser, so the same access rules,
    /// budget and cooldowns apply; a second press of the same button by the same person is
    /// told so and runs nothing.
    fn on_submission(&mut self, mut msg: Incoming) {
        let Some(sub) = msg.submission.clone() else {
            return;
        };
        let Some(card) = self.shared.cards.get(&sub.card) else {
            tracing::info!(bot = %self.shared.health.bot(), card = %crate::text::Escaped(&sub.card), "a button of a card the bot does not keep");
            if self.within_budget(&msg) {
                self.tell(
                    &msg,
                    "that card is no longer active; use the command instead",
                );
            }
            return;
        };
        let Some((title, command_line)) = card.buttons.get(sub.button).cloned() else {
            tracing::warn!(bot = %self.shared.health.bot(), %sub, "a button the card does not have");
            return;
        };
        if !self.within_budget(&msg) {
            return;
        }
        msg.text = format!("{}{command_line}", self.table.prefix);
        msg.addressed = false;
        let nick = self.nick.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Route::Command {
            handler,
            command,
            invoked_as,
            args,
        } = self.table.route(&msg, &nick)
        else {
            tracing::warn!(bot = %self.shared.health.bot(), %sub, "a card's button names no command");
            return;
        };
        if self.hosts.get(handler).map(|h| h.0) != Some(card.handler.as_str()) {
            // A card runs only commands of the handler that posted it.
            tracing::warn!(bot = %self.shared.health.bot(), %sub, owner = %card.handler, "a card's button names another handler's command");
            return;
        }
        let (invoked_as, args) = (invoked_as.to_owned(), args.to_owned());
        if self.shared.may_run(&msg.sender, command)
            && !self
                .shared
                .cards
                .press(&sub.card, &msg.sender.id, sub.button)
        {
            self.tell(
                &msg,
                &format!(
                    "you already pressed “{}” on that card",
                    crate::text::printable(&title)
                ),
            );
            return;
        }
        self.on_command(msg, handler, command, invoked_as, args);
    }

    fn on_command(
        &mut self,
        msg: Incoming,
        handler: usize,
        command: &'static Command,
        invoked_as: String,
        args: String,
    ) {
        let prefix = self.table.prefix.clone();
        let what = format!("{prefix}{}", command.name);
        if !self.shared.may_run(&msg.sender, command) {
            tracing::info!(
                bot = %self.shared.health.bot(),
                sender = %crate::text::Escaped(&msg.sender.id),
                verified = msg.sender.verified,
                command = command.name,
                "refused: not allowed to run the command"
            );
            let e = match self.shared.options.access.get(command.name) {
                Some(crate::options::Access::Only(_)) if !command.admin => {
                    Error::NotAllowed { command: what }
                }
                _ => Error::NotAuthorized { command: what },
            };
            self.tell(&msg, &e.to_string());
            return;
        }
        if let Some(cd) = command.cooldown() {
            let key = (msg.sender.id.clone(), command.name);
            let now = Instant::now();
            if let Some(last) = self.cooldowns.get(&key) {
                let elapsed = now.duration_since(*last);
                if elapsed < cd {
                    let secs = (cd - elapsed).as_secs_f64().ceil() as u64;
                    self.tell(
                        &msg,
                        &Error::Cooldown {
                            command: what,
                            secs,
                        }
                        .to_string(),
                    );
                    return;
                }
            }
            self.cooldowns.insert(key, now);
        }
        let parsed = match shell_words::split(&hashes_literal(&args)) {
            Ok(a) => a,
            Err(_) => {
                let e = Error::Usage(command.usage_line(&prefix));
                self.tell(&msg, &e.to_string());
                return;
            }
        };
        let call = Call {
            command,
            prefix,
            invoked_as,
            raw_args: args,
            args: parsed,
            message: msg.clone(),
        };
        let reply_to = msg.reply_to();
        self.dispatch(handler, Work::Command(call), reply_to, Some((what, msg)));
    }
}

/// Escapes each `#` that starts a word outside quotes, so that shell-style splitting keeps it:
/// shell-words reads such a `#` as the start of a comment and drops the rest of the line, and
/// chat arguments are channel names (`!join #ops`) far more often than comments.
fn hashes_literal(args: &str) -> std::borrow::Cow<'_, str> {
    if !args.contains('#') {
        return std::borrow::Cow::Borrowed(args);
    }
    let mut out = String::with_capacity(args.len() + 4);
    let (mut single, mut double, mut escaped, mut word_start) = (false, false, false, true);
    for c in args.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if c == '#' && word_start && !single && !double {
            out.push('\\');
        }
        word_start = !single && !double && !escaped && c.is_whitespace();
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// `30s`, or `250ms` below a second.
fn short_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) && d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `alice: text` in a room, `text` in private.
fn address(msg: &Incoming, text: &str) -> String {
    if msg.is_direct() {
        text.to_owned()
    } else {
        format!("{}: {text}", msg.sender.name)
    }
}

impl Actor for Router {
    type Context = actix::Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.guard.disarm();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(300), |act, _| {
            let now = Instant::now();
            act.ignored.retain(|_, until| *until > now);
            act.cooldowns.retain(|(_, name), last| {
                let cd = act
                    .table
                    .commands
                    .get(*name)
                    .and_then(|(_, c)| c.cooldown())
                    .unwrap_or_default();
                now.duration_since(*last) < cd
            });
            if let Some(b) = &act.budget {
                b.retain_recent();
            }
            act.hint_limiter.retain_recent();
        });
    }
}

impl actix::Handler<Inbound> for Router {
    type Result = ();

    fn handle(&mut self, Inbound(msg): Inbound, _: &mut Self::Context) {
        if self.closed {
            return;
        }
        fault_point!(self.shared.health.bot(), Router);
        self.shared.health.count_inbound();
        if msg.submission.is_some() {
            self.on_submission(msg);
            return;
        }
        let nick = self.nick.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // An answer to a question the sender has open here (a command is never one).
        let text = addressed_to(&msg.text, &nick).unwrap_or(&msg.text).trim();
        if !text.is_empty()
            && (!text.starts_with(self.table.prefix.as_str())
                || text[self.table.prefix.len()..].eq_ignore_ascii_case("cancel"))
            && self
                .shared
                .conversations
                .answer(&msg.sender.id, &msg.reply_to(), text)
        {
            return;
        }
        match self.table.route(&msg, &nick) {
            Route::Nothing => {}
            Route::Unknown { .. } => {
                if !self.within_budget(&msg) {
                    return;
                }
                let dest = msg.reply_to();
                if self.hint_limiter.check_key(&dest).is_ok() && self.hint_total.check().is_ok() {
                    let hint = Error::UnknownCommand {
                        prefix: self.table.prefix.clone(),
                    };
                    self.tell(&msg, &hint.to_string());
                }
            }
            Route::Command {
                handler,
                command,
                invoked_as,
                args,
            } => {
                if !self.within_budget(&msg) {
                    return;
                }
                let (invoked_as, args) = (invoked_as.to_owned(), args.to_owned());
                self.on_command(msg, handler, command, invoked_as, args);
            }
            Route::Passive(patterns) => {
                for p in patterns {
                    let (handler, local) = self.table.owner(p);
                    let re = self.table.regex(p);
                    let Some(caps) = re.captures(&msg.text) else {
                        continue;
                    };
                    let m = Match {
                        pattern: local,
                        captures: caps
                            .iter()
                            .map(|c| c.map(|c| c.as_str().to_owned()))
                            .collect(),
                        names: re.capture_names().map(|n| n.map(str::to_owned)).collect(),
                        message: msg.clone(),
                    };
                    self.dispatch(handler, Work::Match(m), msg.reply_to(), None);
                }
            }
        }
    }
}

/// Stops accepting input (shutdown).
#[derive(Debug)]
pub(crate) struct Close;

impl Message for Close {
    type Result = ();
}

impl actix::Handler<Close> for Router {
    type Result = ();

    fn handle(&mut self, _: Close, _: &mut Self::Context) {
        self.closed = true;
        self.tracker.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Sender;

    const CMDS: &[Command] = &[
        Command::new("echo", "<text>", "Echo.").aliases(&["say"]),
        Command::new("status", "", "Status."),
    ];
    const PATS: &[&str] = &[r"https?://(\S+)"];

    fn table() -> RouteTable {
        RouteTable::new("!", &[("echo", CMDS, PATS)]).unwrap()
    }

    fn room(text: &str) -> Incoming {
        Incoming::in_room("#ops", Sender::new("alice"), text)
    }

    #[test]
    fn prefix_nick_and_direct_all_reach_commands() {
        let t = table();
        for (msg, name) in [
            (room("!echo hi"), "echo"),
            (room("bot: echo hi"), "echo"),
            (room("Bot, !ECHO hi"), "ECHO"),
            (Incoming::direct(Sender::new("alice"), "say hi"), "say"),
            (Incoming::direct(Sender::new("alice"), "!echo hi"), "echo"),
            (
                Incoming {
                    addressed: true,
                    ..room("echo hi")
                },
                "echo",
            ),
        ] {
            match t.route(&msg, "bot") {
                Route::Command {
                    command,
                    invoked_as,
                    args,
                    ..
                } => {
                    assert_eq!(command.name, "echo");
                    assert_eq!(invoked_as, name);
                    assert_eq!(args, "hi");
                }
                other => panic!("{msg:?} routed to {other:?}"),
            }
        }
    }

    #[test]
    fn plain_room_chatter_is_nothing_or_passive() {
        let t = table();
        assert_eq!(t.route(&room("hello there"), "bot"), Route::Nothing);
        assert_eq!(
            t.route(&room("see https://example.org"), "bot"),
            Route::Passive(vec![0])
        );
        assert_eq!(
            t.route(&room("!nope"), "bot"),
            Route::Unknown { name: "nope" }
        );
        assert_eq!(t.route(&room("!!!"), "bot"), Route::Nothing);
        assert_eq!(t.route(&room("bot:"), "bot"), Route::Nothing);
    }

    /// shell-words takes a `#` that starts a word for a comment: `!sayto #ops hi` lost both its
    /// arguments.
    #[test]
    fn channel_names_survive_argument_splitting() {
        let split = |s: &str| shell_words::split(&hashes_literal(s)).unwrap();
        assert_eq!(split("#ops hi there"), ["#ops", "hi", "there"]);
        assert_eq!(
            split("a #b 'c #d' \"#e\" f#g"),
            ["a", "#b", "c #d", "#e", "f#g"]
        );
        assert_eq!(split("\\#x #y"), ["#x", "#y"]);
    }

    #[test]
    fn duplicate_names_are_refused() {
        const OTHER: &[Command] = &[Command::new("say", "", "Say.")];
        let err = RouteTable::new("!", &[("echo", CMDS, &[]), ("other", OTHER, &[])]).unwrap_err();
        assert!(err.to_string().contains("`say`"), "{err}");
    }
}
