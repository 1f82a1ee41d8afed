//! Reactive handlers: the trait authors implement, the context they talk through, and the host
//! actor that runs them under supervision.
//!
//! A handler is plain straight-line async code with `&mut self` state. The framework hosts each
//! handler in its own actix actor (`HandlerHost`), which runs one invocation at a time (so the
//! state needs no locks), bounds it with a timeout, catches a panic, and replaces the crashed
//! instance with a fresh one from the handler's factory after a backoff. Authors never see actix:
//! the runtime stays an implementation detail behind [`Handler`] and [`Context`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::card::Card;
use crate::command::{Call, CatalogEntry, Command, Match};
use crate::conversation::{Allowance, Unanswered};
use crate::error::Error;
use crate::health::{ActorKind, ActorState, Snapshot};
use crate::message::{Destination, Outgoing, Sender};
use crate::outbox::Say;
use crate::rich::Rich;
use crate::shared::BotShared;
use crate::supervisor::{Caught, CoreGuard, Panic, Restarts, after_crash, caught, fault_point};

/// A reactive handler: answers commands and passive matches.
///
/// Declare the commands once in [`Handler::COMMANDS`]; `!help`, the router and the access checks
/// all read that declaration. Return [`Error::Usage`] (for instance via [`Call::arg`]) and the
/// user sees the usage line; panic and the user gets a short apology while the framework
/// restarts the handler from its factory.
///
/// ```
/// use opsbot::prelude::*;
///
/// #[derive(Clone)]
/// struct Hello;
///
/// impl Handler for Hello {
///     const NAME: &'static str = "hello";
///     const COMMANDS: &'static [Command] = &[Command::new("hello", "[name]", "Say hello.")];
///
///     async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
///         let name = call.args().first().map_or(&*call.sender().name, |n| n.as_str());
///         cx.reply(format!("hello, {name}!"));
///         Ok(())
///     }
/// }
/// ```
#[allow(async_fn_in_trait)] // handlers run on one arbiter thread: their futures need not be Send
pub trait Handler: 'static {
    /// The handler's name, as `!status` shows it.
    const NAME: &'static str;
    /// The commands it answers.
    const COMMANDS: &'static [Command] = &[];
    /// Passive patterns (regular expressions); a match calls [`Handler::matched`].
    const PATTERNS: &'static [&'static str] = &[];
    /// Whether the handler blocks (synchronous I/O, heavy computing): if so it gets a thread of
    /// its own so it cannot stall the transport or other handlers.
    const BLOCKING: bool = false;

    /// Answers one of [`Handler::COMMANDS`] (`call.command().name` says which).
    async fn command(&mut self, cx: &mut Context, call: Call) -> Result<(), Error> {
        let _ = (cx, call);
        Ok(())
    }

    /// Answers a match of one of [`Handler::PATTERNS`] (`m.pattern()` says which).
    async fn matched(&mut self, cx: &mut Context, m: Match) -> Result<(), Error> {
        let _ = (cx, m);
        Ok(())
    }
}

/// What a handler talks through: replies, the bot's catalog of commands, its health.
#[derive(Debug)]
pub struct Context {
    shared: Arc<BotShared>,
    handler: &'static str,
    reply_to: Destination,
    /// The id of the message being handled: replies to it are marked as its replies.
    in_reply_to: Option<Arc<str>>,
    sender: Option<Sender>,
    expired: Arc<AtomicBool>,
    allowance: Allowance,
}

impl Context {
    pub(crate) fn new(
        shared: Arc<BotShared>,
        handler: &'static str,
        reply_to: Destination,
        sender: Option<Sender>,
        expired: Arc<AtomicBool>,
    ) -> Self {
        Self {
            shared,
            handler,
            reply_to,
            in_reply_to: None,
            sender,
            expired,
            allowance: Allowance::default(),
        }
    }

    /// Says `text` where the message came from (the room, or privately for a direct message).
    pub fn reply(&self, text: impl Into<String>) {
        self.say(self.reply_to.clone(), text);
    }

    /// Says `text` privately to the sender of the message being handled.
    pub fn reply_private(&self, text: impl Into<String>) {
        match &self.sender {
            Some(s) => self.say(Destination::User(s.name.clone()), text),
            None => self.reply(text),
        }
    }

    /// Says `text` to any destination.
    ///
    /// After the handler's timeout the user has been told that the command was stopped; a
    /// blocking handler that cannot be interrupted may still get here afterwards, and its late
    /// lines are dropped (and logged), so the user never reads an answer after "stopped".
    pub fn say(&self, dest: Destination, text: impl Into<String>) {
        self.send(Outgoing::new(dest, text));
    }

    /// Says a formatted reply ([`crate::rich`]) where the message came from, rendered for the
    /// transport: Markdown on Webex, XEP-0393 styling on XMPP, mIRC codes or plain text on
    /// IRC, ANSI styles on a terminal.
    pub fn reply_rich(&self, rich: impl Into<Rich>) {
        self.send(Outgoing::rich(self.reply_to.clone(), rich));
    }

    /// Says a formatted reply to any destination; see [`Context::reply_rich`].
    pub fn say_rich(&self, dest: Destination, rich: impl Into<Rich>) {
        self.send(Outgoing::rich(dest, rich));
    }

    /// Posts a card ([`crate::card`]) where the message came from: a card on a transport with
    /// cards, whose buttons run this handler's commands for whoever presses them; its fallback
    /// text, with the commands spelled out, elsewhere. An error (for the handler's author: the
    /// user sees an apology) when the card does not pass [`Card::check`].
    pub fn reply_card(&self, card: Card) -> Result<(), Error> {
        self.say_card(self.reply_to.clone(), card)
    }

    /// Posts a card to any destination; see [`Context::reply_card`].
    pub fn say_card(&self, dest: Destination, card: Card) -> Result<(), Error> {
        card.check().map_err(Error::internal)?;
        let fallback = card.fallback(&self.shared.prefix);
        self.send(Outgoing::card(dest, card, fallback, self.handler));
        Ok(())
    }

    /// Asks the person who sent the message being handled `question`, where they asked, and
    /// waits up to `within` for their answer: their next message there that is not a command
    /// (after the bot's name, if they address it). Another person's words do not answer it.
    /// Commands keep working meanwhile; `cancel` (or the prefix and `cancel`) cancels. The
    /// time spent waiting does not count against the handler's timeout; other messages for
    /// this handler wait their turn while it waits.
    ///
    /// A timeout, a cancel, or too many open questions (3 per person, 100 per bot) end it with
    /// a line to the person and an [`Unanswered`], which `?` turns into an error the router
    /// does not repeat. If the handler crashes or is stopped while waiting, the question is
    /// closed with it.
    pub async fn ask(
        &self,
        question: impl Into<Rich>,
        within: Duration,
    ) -> std::result::Result<String, Unanswered> {
        let Some(person) = self.sender.as_ref().map(|s| s.id.clone()) else {
            return Err(Unanswered::NoOne);
        };
        let q = match self
            .shared
            .conversations
            .open(person, self.reply_to.clone())
        {
            Ok(q) => q,
            Err(e) => {
                self.reply(self.addressed(&e.to_string()));
                return Err(e);
            }
        };
        self.reply_rich(question);
        let began = Instant::now();
        self.allowance.add(within);
        let mut q = q;
        let got = tokio::time::timeout(within, &mut q.answer).await;
        self.allowance
            .take_back(within.saturating_sub(began.elapsed()));
        let e = match got {
            Ok(Ok(answer)) => {
                let cancel = answer.trim();
                let bare = cancel.strip_prefix(self.prefix()).unwrap_or(cancel);
                if !bare.eq_ignore_ascii_case("cancel") {
                    return Ok(answer);
                }
                Unanswered::Cancelled
            }
            // Replaced by a newer question in the same place.
            Ok(Err(_)) => Unanswered::Cancelled,
            Err(_) => Unanswered::TimedOut(within),
        };
        self.reply(self.addressed(&e.to_string()));
        Err(e)
    }

    /// Asks a yes-or-no `question` (see [`Context::ask`]); answers `true` for yes, `false`
    /// for no, and asks again after anything else, until `within` has passed.
    pub async fn confirm(
        &self,
        question: impl Into<String>,
        within: Duration,
    ) -> std::result::Result<bool, Unanswered> {
        let deadline = Instant::now() + within;
        let mut q = format!("{} (yes/no)", question.into());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .ask(q.as_str(), left.max(Duration::from_secs(1)))
                .await?;
            match answer.trim().to_ascii_lowercase().as_str() {
                "yes" | "y" => return Ok(true),
                "no" | "n" => return Ok(false),
                _ => q = "yes or no?".to_owned(),
            }
        }
    }

    /// `text` addressed to the sender in a room (`alice: text`).
    fn addressed(&self, text: &str) -> String {
        match (&self.reply_to, &self.sender) {
            (Destination::User(_), _) | (_, None) => text.to_owned(),
            (_, Some(s)) => format!("{}: {text}", s.name),
        }
    }

    fn send(&self, mut out: Outgoing) {
        if out.dest == self.reply_to {
            out.in_reply_to.clone_from(&self.in_reply_to);
        }
        if self.expired.load(Ordering::Acquire) {
            tracing::warn!(
                handler = self.handler,
                dest = %out.dest,
                "reply after the handler's timeout dropped"
            );
            return;
        }
        self.shared.outbox.do_send(Say::new(out));
    }

    /// Where [`Context::reply`] goes.
    pub fn reply_to(&self) -> &Destination {
        &self.reply_to
    }

    /// The bot's command prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The bot's name (from the config).
    pub fn bot_name(&self) -> &str {
        self.shared.health.bot()
    }

    /// Every command the bot answers, in registration order.
    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.shared.catalog
    }

    /// A copy of the bot's health right now.
    pub fn status(&self) -> Snapshot {
        self.shared.health.snapshot()
    }

    /// Heals one of the bot's subsystems by hand, for `who` (see
    /// [`crate::health::Health::heal`]): answers its full name.
    pub fn heal(&self, subsystem: &str, who: &str) -> Result<String, crate::health::HealError> {
        self.shared.health.heal(subsystem, who)
    }

    /// The bot's circuit breaker for the dependency `name` (a host, a service), with the
    /// default policy (5 failures in 60 s open it for 60 s): shared by every handler that
    /// names it, shown in `!status`, its transitions in the healing log.
    pub fn breaker(&self, name: &str) -> crate::breaker::Breaker {
        self.breaker_with(name, crate::breaker::BreakerPolicy::default())
    }

    /// Like [`Context::breaker`] with a policy of one's own (used when the breaker is made).
    pub fn breaker_with(
        &self,
        name: &str,
        policy: crate::breaker::BreakerPolicy,
    ) -> crate::breaker::Breaker {
        self.shared.health.breaker(name, policy)
    }

    /// The breaker for a site that chat input chose (a host in a pasted link); see
    /// [`crate::health::Health::site_breaker`]: bounded in number, shown, and never a reason
    /// for the bot's health.
    pub fn site_breaker(
        &self,
        name: &str,
        policy: crate::breaker::BreakerPolicy,
    ) -> crate::breaker::Breaker {
        self.shared.health.site_breaker(name, policy)
    }

    /// The bot's breaker named `name`, if there is one (nothing is made).
    pub fn find_breaker(&self, name: &str) -> Option<crate::breaker::Breaker> {
        self.shared.health.find_breaker(name)
    }

    /// Whether the sender of the message being handled is an admin (by the identity the
    /// transport proved, never by display name).
    pub fn sender_is_admin(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|s| self.shared.is_admin(s))
    }

    /// What the transport's sender ids are (how admin entries match them).
    pub fn identity(&self) -> crate::transport::Identity {
        self.shared.identity
    }

    /// The sender of the message being handled, if there is one (a poller's context has none).
    pub fn sender(&self) -> Option<&Sender> {
        self.sender.as_ref()
    }
}

/// Work for a handler host.
#[derive(Debug)]
pub(crate) enum Work {
    Command(Call),
    Match(Match),
}

/// How an invocation ended, as the dispatcher tells the user.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Failed(Error),
    /// The handler panicked; `disabled` when that crash spent its restart budget.
    Panicked {
        disabled: bool,
    },
    TimedOut(Duration),
    Unavailable,
}

/// One invocation sent to a host. `started` fires when the handler begins (not while the job
/// waits behind a restart), so the dispatcher can time the handler itself. The dispatcher sets
/// `expired` when it gives up waiting; the handler's later replies are then dropped.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) reply_to: Destination,
    pub(crate) started: oneshot::Sender<()>,
    pub(crate) done: oneshot::Sender<Outcome>,
    pub(crate) expired: Arc<AtomicBool>,
    /// Time spent waiting for people ([`Context::ask`]), which the timeout does not count.
    pub(crate) allowance: Allowance,
}

impl Message for Job {
    type Result = ();
}

/// Builds a fresh handler instance: at start and after every crash.
pub(crate) type Factory<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// The actor that hosts one handler under the restart policy.
pub(crate) struct HandlerHost<H: Handler> {
    factory: Factory<H>,
    handler: Option<Box<H>>,
    shared: Arc<BotShared>,
    restarts: Restarts,
    timeout: Duration,
    guard: CoreGuard,
}

impl<H: Handler> std::fmt::Debug for HandlerHost<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerHost")
            .field("name", &H::NAME)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> HandlerHost<H> {
    pub(crate) fn new(factory: Factory<H>, shared: Arc<BotShared>) -> Self {
        let restarts = Restarts::new(shared.options.restart);
        let timeout = shared.options.handler_timeout;
        let guard = shared.fatal.guard(format!("host of handler {}", H::NAME));
        Self {
            factory,
            handler: None,
            shared,
            restarts,
            timeout,
            guard,
        }
    }

    fn set_state(&self, state: ActorState) {
        self.shared
            .health
            .update(ActorKind::Handler, H::NAME, |s| s.state = state);
    }

    /// Builds a fresh instance; a factory that panics counts as another crash.
    fn fresh(&mut self, ctx: &mut Context2<H>) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| caught(|| (self.factory)()))) {
            Ok(h) => {
                self.handler = Some(Box::new(h));
                self.set_state(ActorState::Running);
            }
            Err(payload) => {
                let panic = Panic::from_payload(&*payload);
                tracing::error!(handler = H::NAME, panic = %panic.message, at = panic.at.as_deref().unwrap_or("?"), "handler factory panicked");
                self.crashed(format!("factory {}", panic.summary()), ctx);
            }
        }
    }

    /// Records a crash and restarts or disables the handler (see [`after_crash`]); answers
    /// whether it is now disabled.
    fn crashed(&mut self, why: String, ctx: &mut Context2<H>) -> bool {
        self.handler = None;
        let delay = after_crash(
            &self.shared.health,
            &mut self.restarts,
            (ActorKind::Handler, H::NAME),
            &why,
            "disabled after repeated crashes, commands answer unavailable",
        );
        match delay {
            Some(delay) => {
                ctx.wait(
                    actix::clock::sleep(delay)
                        .into_actor(self)
                        .map(|(), act, ctx| act.fresh(ctx)),
                );
                false
            }
            None => true,
        }
    }
}

type Context2<H> = actix::Context<HandlerHost<H>>;

impl<H: Handler> Actor for HandlerHost<H> {
    type Context = Context2<H>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.health.register(ActorKind::Handler, H::NAME);
        let host = ctx.address().downgrade();
        self.shared.health.set_healer(
            format!("handler:{}", H::NAME),
            Arc::new(move || {
                if let Some(host) = host.upgrade() {
                    host.do_send(Heal);
                }
            }),
        );
        self.fresh(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.guard.disarm();
    }
}

/// A forced heal: a fresh instance and a whole restart budget, also for a handler marked
/// failed. Handled between jobs (never in the middle of one).
#[derive(Debug)]
pub(crate) struct Heal;

impl Message for Heal {
    type Result = ();
}

impl<H: Handler> actix::Handler<Heal> for HandlerHost<H> {
    type Result = ();

    fn handle(&mut self, _: Heal, ctx: &mut Self::Context) {
        self.restarts.renew();
        self.handler = None;
        self.fresh(ctx);
    }
}

impl<H: Handler> actix::Handler<Job> for HandlerHost<H> {
    type Result = ();

    fn handle(&mut self, job: Job, ctx: &mut Self::Context) {
        fault_point!(self.shared.health.bot(), HandlerHost);
        let Some(mut handler) = self.handler.take() else {
            // Only reachable when failed: while restarting, `ctx.wait` holds the mailbox.
            let _ = job.done.send(Outcome::Unavailable);
            return;
        };
        let _ = job.started.send(());
        let message = match &job.work {
            Work::Command(c) => &c.message,
            Work::Match(m) => &m.message,
        };
        let sender = message.sender.clone();
        let in_reply_to = message.id.as_deref().map(Arc::from);
        let allowance = job.allowance.clone();
        let mut cx = Context::new(
            self.shared.clone(),
            H::NAME,
            job.reply_to,
            Some(sender),
            job.expired,
        );
        cx.allowance = job.allowance;
        cx.in_reply_to = in_reply_to;
        let timeout = self.timeout;
        let began = Instant::now();
        let run = async move {
            let result = match job.work {
                Work::Command(call) => {
                    allowance
                        .within(timeout, handler.command(&mut cx, call))
                        .await
                }
                Work::Match(m) => allowance.within(timeout, handler.matched(&mut cx, m)).await,
            };
            (handler, result)
        };
        let done = job.done;
        let fut = AssertUnwindSafe(Caught::new(run)).catch_unwind();
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            act.shared.health.update(ActorKind::Handler, H::NAME, |s| {
                s.handled += 1;
                s.latency.observe(began.elapsed());
            });
            match res {
                Ok((handler, result)) => {
                    act.handler = Some(handler);
                    let outcome = match result {
                        Ok(Ok(())) => Outcome::Done,
                        Ok(Err(e)) => {
                            if let Error::Internal(inner) = &e {
                                tracing::error!(handler = H::NAME, error = %inner, "handler error");
                                act.shared.health.update(ActorKind::Handler, H::NAME, |s| {
                                    s.last_error =
                                        Some((std::time::SystemTime::now(), inner.to_string()));
                                });
                            }
                            Outcome::Failed(e)
                        }
                        Err(_) => {
                            act.shared.health.update(ActorKind::Handler, H::NAME, |s| {
                                s.last_error = Some((
                                    std::time::SystemTime::now(),
                                    format!("timed out after {timeout:?}"),
                                ));
                            });
                            Outcome::TimedOut(timeout)
                        }
                    };
                    let _ = done.send(outcome);
                }
                Err(payload) => {
                    let panic = Panic::from_payload(&*payload);
                    tracing::error!(handler = H::NAME, panic = %panic.message, at = panic.at.as_deref().unwrap_or("?"), "handler panicked");
                    // Decide first, so that the user is told the truth: restarted, or disabled.
                    let disabled = act.crashed(panic.summary(), ctx);
                    let _ = done.send(Outcome::Panicked { disabled });
                }
            }
        }));
    }
}
