//! Transports: the trait a chat protocol implements, and the host that keeps it connected.
//!
//! A transport implements one *session*: connect, authenticate, join, then move messages both
//! ways until the connection ends. Reconnecting is not its job: `TransportHost` calls
//! [`Transport::session`] again after an exponential backoff with full jitter (1 s, 2 s, 4 s, …
//! capped), so every protocol heals the same way and the healing shows in `!status` and the
//! healing log. The transport object lives across sessions, so it can remember what a reconnect
//! needs (a fallback nick, the rooms to rejoin).
//!
//! Lines to send arrive as [`Delivery`]s from the outbox, in order, at most [`Limits::window`]
//! of them unanswered at once; the transport calls [`Delivery::done`] once a line is written (or
//! acknowledged by its server). A delivery dropped without `done` (the session died) goes back
//! to its place in the outbox's queue and is sent after the reconnect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::health::{ActorKind, ActorState, ConnState, Health};
use crate::lead::Lead;
pub use crate::message::Identity;
use crate::message::{Destination, Inbound, Incoming};
use crate::options::ReconnectPolicy;
pub use crate::pacing::Limits;
use crate::pacing::Pacing;
use crate::supervisor::{CoreGuard, Fatal, fault_point, full_jitter};

pub mod memory;

/// How a session ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The outbox closed (bot shutting down) or the input ended: do not reconnect.
    Finished,
}

/// Why a session ended; the host reconnects after a backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Could not connect or lost the connection.
    #[error("connection: {0}")]
    Connection(String),
    /// The service refused us (bad credentials, banned): still retried, after at least
    /// [`ReconnectPolicy::refused_min`].
    #[error("refused: {0}")]
    Refused(String),
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One line for the transport to send.
///
/// Answer it with exactly one of [`Delivery::done`] (or [`Delivery::done_as`]),
/// [`Delivery::undeliverable`] or [`Delivery::hold`]. Dropping it unanswered (the session died before the line was written)
/// puts the line back at the head of its queue, to be sent after the reconnect.
#[derive(Debug)]
pub struct Delivery {
    /// Where.
    pub dest: Destination,
    /// The text: one line (several on a multi-line transport), sanitized and within the
    /// transport's limit.
    pub text: String,
    /// Whether `text` is a formatted reply rendered for the transport's
    /// [`crate::pacing::Limits::style`]: it then holds that style's own codes (IRC's
    /// `\x02`, Markdown already escaped), which the transport sends as they are. Plain text is
    /// shown as written.
    pub formatted: bool,
    /// A card to send with `text` (its fallback), on a transport with cards
    /// ([`crate::pacing::Limits::cards`]).
    pub card: Option<Arc<crate::card::Card>>,
    /// The id of the message this line answers (a handler's reply to the message it
    /// handles; on the first line of it), for a transport that marks replies as such.
    pub in_reply_to: Option<Arc<str>>,
    /// Taken once answered; still here when the delivery is dropped unanswered.
    pub(crate) ack: Option<oneshot::Sender<Ack>>,
    /// The recall count when the outbox chose it: a delivery chosen before a line came back
    /// unanswered is stale, and [`Link::next_delivery`] gives it back rather than let it
    /// overtake that line.
    pub(crate) stamp: u64,
    pub(crate) recall: Recall,
}

/// How many times a delivery came back unanswered (dropped, or held), shared by the outbox
/// (which stamps each delivery it chooses) and the link (which refuses stale ones). It moves at
/// the moment a delivery comes back, before the outbox has heard of it, so no delivery chosen
/// earlier can slip past the returned line in that gap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recall(Arc<std::sync::atomic::AtomicU64>);

impl Recall {
    pub(crate) fn current(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A delivery stamped `stamp` came back: every delivery stamped up to it is stale.
    fn returned(&self, stamp: u64) {
        self.0
            .fetch_max(stamp + 1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.ack.is_some() {
            // Unanswered: it goes back to the outbox (the sender's drop tells it).
            self.recall.returned(self.stamp);
        }
    }
}

/// How a transport answered a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Written; with the id the service gave the message, where it gives one.
    Sent(Option<Arc<str>>),
    /// Dropped: the destination cannot take it (the bot is not in that room).
    Undeliverable(String),
    /// Not yet: the destination's lines wait this long (a room still being joined).
    Hold(Duration),
}

impl Delivery {
    /// Confirms that the line was written; the outbox then sends the next one.
    pub fn done(mut self) {
        self.answer(Ack::Sent(None));
    }

    /// Confirms that the line was written as the message the service calls `id` (a Webex
    /// message id): whoever asked for a receipt ([`crate::bot::Voice::post`]) learns it, and
    /// can later answer in that message's thread.
    pub fn done_as(mut self, id: impl Into<Arc<str>>) {
        self.answer(Ack::Sent(Some(id.into())));
    }

    fn answer(&mut self, ack: Ack) {
        if let Some(tx) = self.ack.take() {
            let _ = tx.send(ack);
        }
    }

    /// Drops the line because its destination cannot take it now and will not soon (the bot is
    /// not in that room, or may not speak there). The outbox counts it as undeliverable, logs
    /// `why`, and `!status` shows the count.
    pub fn undeliverable(mut self, why: impl Into<String>) {
        self.answer(Ack::Undeliverable(why.into()));
    }

    /// Gives the line back because its destination will be ready soon (a room still being
    /// joined): it returns to the head of its queue, and that destination's lines wait `wait`
    /// while other destinations go on.
    pub fn hold(mut self, wait: Duration) {
        // Back to its place: what was chosen after it must not go first.
        self.recall.returned(self.stamp);
        self.answer(Ack::Hold(wait));
    }
}

/// A chat protocol.
#[allow(async_fn_in_trait)] // sessions run on their bot's arbiter thread: no Send needed
pub trait Transport: Send + 'static {
    /// The config name of the protocol (`console`, `irc`, …).
    fn kind(&self) -> &'static str;

    /// What the service tolerates; the outbox's default pacing.
    fn limits(&self) -> Limits;

    /// What its sender ids are, for matching admin entries ([`Identity::Address`] unless
    /// the transport says otherwise).
    fn identity(&self) -> Identity {
        Identity::Address
    }

    /// This process lost the bot's lead ([`crate::lead`]) and its session was dropped: forget
    /// what a later session would otherwise resume or send again (unacknowledged lines kept
    /// for a stream's resumption), since another process speaks for the bot now.
    fn lead_lost(&mut self) {}

    /// Runs one connection until it ends. Pass every message heard to [`Link::incoming`],
    /// send what [`Link::next_delivery`] gives, and return `Ok(SessionEnd::Finished)` when it
    /// answers `None` (the bot is shutting down).
    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError>;
}

/// The transport's side of the bot: where to put what it hears, where to take what to say.
#[derive(Debug)]
pub struct Link {
    router: Recipient<Inbound>,
    outgoing: mpsc::Receiver<Delivery>,
    health: Health,
    kind: &'static str,
    nick: Arc<Mutex<String>>,
    input_closed: CancellationToken,
    connected_at: Option<Instant>,
    /// Whether the current session said it is connected (read by the host while the session
    /// holds the link).
    connected: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled once the outbox has closed for good (the bot is stopping).
    closing: CancellationToken,
    pacing: Pacing,
    fatal: Fatal,
    lead: Lead,
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        router: Recipient<Inbound>,
        outgoing: mpsc::Receiver<Delivery>,
        health: Health,
        kind: &'static str,
        nick: Arc<Mutex<String>>,
        input_closed: CancellationToken,
        closing: CancellationToken,
        pacing: Pacing,
        fatal: Fatal,
        lead: Lead,
    ) -> Self {
        Self {
            router,
            outgoing,
            health,
            kind,
            nick,
            input_closed,
            connected_at: None,
            connected: Arc::default(),
            closing,
            pacing,
            fatal,
            lead,
        }
    }

    /// Hands a message to the router; dropped while this process does not hold the bot's
    /// lead (a process that was frozen reads what reached its socket meanwhile: another
    /// process has answered it).
    pub fn incoming(&self, msg: Incoming) {
        if !self.lead.holds() {
            tracing::debug!(bot = %self.health.bot(), "not the bot's lead: a message heard is not routed");
            return;
        }
        self.router.do_send(Inbound(msg));
    }

    /// The next line to send; `None` when the bot is shutting down. The bot's lead is checked
    /// before every line: once this process has lost it, no line is given (the host ends the
    /// session, and the line goes back to its place).
    pub async fn next_delivery(&mut self) -> Option<Delivery> {
        loop {
            let d = self.outgoing.recv().await?;
            if !self.lead.holds() {
                drop(d);
                return std::future::pending().await;
            }
            if d.stamp >= d.recall.current() {
                return Some(d);
            }
            // Chosen before a line ahead of it came back: back to its place too, behind it.
            drop(d);
        }
    }

    /// Gives back, unanswered, every delivery handed over but not yet taken with
    /// [`Link::next_delivery`]: they return to their places in the outbox's queues. The host
    /// does it when a session ends; a transport that keeps deliveries across sessions (to send
    /// them again on a resumed stream) does it too when it gives those up, so that nothing
    /// handed later overtakes them.
    pub fn return_pending(&mut self) {
        while let Ok(d) = self.outgoing.try_recv() {
            drop(d);
        }
    }

    /// Reports that the session is connected and ready; `detail` shows in `!status`
    /// (server, nick, rooms).
    pub fn connected(&mut self, detail: impl Into<String>) {
        self.connected_at = Some(Instant::now());
        self.connected
            .store(true, std::sync::atomic::Ordering::Release);
        let detail = detail.into();
        self.health.update(ActorKind::Transport, self.kind, |s| {
            s.state = ActorState::Running;
            s.conn = Some(ConnState::Connected);
            s.detail = Some(detail);
        });
    }

    /// Updates the detail `!status` shows without changing the state.
    pub fn set_detail(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.health
            .update(ActorKind::Transport, self.kind, |s| s.detail = Some(detail));
    }

    /// Sets the bot's current nick (used for `nick: command` addressing).
    pub fn set_nick(&self, nick: &str) {
        *self.nick.lock().unwrap_or_else(|p| p.into_inner()) = nick.to_owned();
    }

    /// Whether other processes may carry this bot and take over from this one (its lead is
    /// elected, [`crate::lead`]): a transport whose identity is exclusive (an IRC nick) may then
    /// find it still held by the previous holder's connection, frozen or cut off, and should
    /// wait for the server to drop that rather than appear twice.
    pub fn has_standbys(&self) -> bool {
        self.lead.is_elected()
    }

    /// The connection's pacing budget: charge protocol lines sent outside the outbox to it, and
    /// switch it to a server's profile once the server is known.
    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Says that no more input will come (the console's end of file): the bot shuts down
    /// gracefully, draining what it still has to say.
    pub fn end_of_input(&self) {
        if !self.input_closed.is_cancelled() {
            tracing::info!(
                bot = %self.health.bot(),
                transport = self.kind,
                "the input ended (end of file on standard input); stopping the bot"
            );
        }
        self.input_closed.cancel();
    }

    /// Notes an event worth seeing in the healing log (a rejoin after a kick, a nick change).
    pub fn heal_event(&self, action: &str, detail: impl Into<String>) {
        self.health.heal_event("transport", action, detail);
    }
}

/// The actor that keeps a transport connected.
pub(crate) struct TransportHost<T: Transport> {
    transport: Option<Box<T>>,
    link: Option<Link>,
    policy: ReconnectPolicy,
    finished: Option<oneshot::Sender<()>>,
    guard: CoreGuard,
}

impl<T: Transport> std::fmt::Debug for TransportHost<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportHost").finish_non_exhaustive()
    }
}

impl<T: Transport> TransportHost<T> {
    pub(crate) fn new(
        transport: T,
        link: Link,
        policy: ReconnectPolicy,
        finished: oneshot::Sender<()>,
    ) -> Self {
        let guard = link.fatal.guard("transport host");
        Self {
            transport: Some(Box::new(transport)),
            link: Some(link),
            policy,
            finished: Some(finished),
            guard,
        }
    }
}

impl<T: Transport> Actor for TransportHost<T> {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(mut transport), Some(mut link)) = (self.transport.take(), self.link.take())
        else {
            return;
        };
        let policy = self.policy;
        let finished = self.finished.take();
        let kind = transport.kind();
        link.health.register(ActorKind::Transport, kind);
        // A forced heal ends the session (or the wait before the next one) and connects anew.
        let heal = Arc::new(tokio::sync::Notify::new());
        link.health.set_healer("transport".into(), {
            let heal = heal.clone();
            Arc::new(move || heal.notify_one())
        });
        let fut = async move {
            let mut attempt = 0u32;
            loop {
                fault_point!(link.health.bot(), TransportHost);
                if !link.lead.holds() {
                    link.health.update(ActorKind::Transport, kind, |s| {
                        s.conn = Some(ConnState::Standby);
                    });
                    tokio::select! {
                        () = link.lead.held() => {}
                        () = link.closing.cancelled() => break,
                    }
                    link.health.heal_event(
                        "transport",
                        "lead",
                        "this process holds the bot's lead now: connecting",
                    );
                    link.health.update(ActorKind::Transport, kind, |s| {
                        s.conn = Some(ConnState::Connecting);
                    });
                    attempt = 0;
                }
                link.health.update(ActorKind::Transport, kind, |s| {
                    if s.conn.is_none() {
                        s.conn = Some(ConnState::Connecting);
                    }
                });
                link.connected_at = None;
                link.connected
                    .store(false, std::sync::atomic::Ordering::Release);
                // Once the bot stops, a session that is still connecting has nothing to send
                // and ends at once; a connected one ends by itself when its deliveries end.
                let (closing, connected) = (link.closing.clone(), link.connected.clone());
                let unneeded = async move {
                    closing.cancelled().await;
                    if connected.load(std::sync::atomic::Ordering::Acquire) {
                        std::future::pending::<()>().await;
                    }
                };
                let lead = link.lead.clone();
                let session = tokio::select! {
                    // The lead first: a process that wakes up past its lead (after SIGSTOP)
                    // finds it lost and the session ready in the same turn, and must not write.
                    biased;
                    () = lead.lost() => {
                        // Another process may speak for the bot now: this one goes quiet at
                        // once, closing the connection.
                        link.return_pending();
                        transport.lead_lost();
                        link.health.heal_event(
                            "transport",
                            "lead",
                            "this process lost the bot's lead: connection closed, standing by",
                        );
                        continue;
                    }
                    r = crate::supervisor::catch(transport.session(&mut link)) => Some(r),
                    () = heal.notified() => None,
                    () = unneeded => break,
                };
                // Lines handed over that the session never took go back to their places.
                link.return_pending();
                let Some(result) = session else {
                    // The heal is in the log already, with who asked.
                    attempt = 0;
                    link.health.update(ActorKind::Transport, kind, |s| {
                        s.conn = Some(ConnState::Reconnecting {
                            retry_in: Duration::ZERO,
                        });
                        s.reconnects += 1;
                    });
                    continue;
                };
                let refused = matches!(result, Ok(Err(TransportError::Refused(_))));
                let why = match result {
                    Ok(Ok(SessionEnd::Finished)) => break,
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => {
                        tracing::error!(transport = kind, panic = %panic.message, at = panic.at.as_deref().unwrap_or("?"), "transport session panicked");
                        format!("session {}", panic.summary())
                    }
                };
                if link
                    .connected_at
                    .is_some_and(|t| t.elapsed() >= policy.stable_after)
                {
                    attempt = 0;
                }
                let mut delay = full_jitter(policy.initial, policy.max, attempt);
                if refused {
                    delay = delay.max(policy.refused_min);
                }
                attempt = attempt.saturating_add(1);
                // The log entry first: whoever sees the count go up finds the entry too.
                link.health.heal_event(
                    "transport",
                    "reconnect",
                    format!("{why}; next attempt in {delay:.1?}"),
                );
                link.health.update(ActorKind::Transport, kind, |s| {
                    s.conn = Some(ConnState::Reconnecting { retry_in: delay });
                    s.reconnects += 1;
                    s.last_error = Some((std::time::SystemTime::now(), why.clone()));
                });
                tokio::select! {
                    () = actix::clock::sleep(delay) => {}
                    () = heal.notified() => attempt = 0,
                    // Stopping while waiting to reconnect: nothing is left to say.
                    () = link.closing.cancelled() => break,
                }
            }
            link.health.update(ActorKind::Transport, kind, |s| {
                s.conn = Some(ConnState::Closed);
                s.state = ActorState::Stopped;
            });
            if let Some(f) = finished {
                let _ = f.send(());
            }
        };
        ctx.spawn(fut.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.guard.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Sender;
    use futures::FutureExt as _;
    use std::time::Instant;

    /// Counts what the router would have been given.
    #[derive(Default)]
    struct Sink(usize);

    impl Actor for Sink {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<Inbound> for Sink {
        type Result = ();
        fn handle(&mut self, _: Inbound, _: &mut Self::Context) {
            self.0 += 1;
        }
    }

    struct Count;

    impl actix::Message for Count {
        type Result = usize;
    }

    impl actix::Handler<Count> for Sink {
        type Result = usize;
        fn handle(&mut self, _: Count, _: &mut Self::Context) -> usize {
            self.0
        }
    }

    /// A process that was frozen past its lead runs again before anyone tells it: the lead's
    /// own instant keeps it from saying the line in its hands, or acting on what it heard.
    #[test]
    fn without_the_lead_a_link_gives_no_line_and_routes_nothing() {
        actix::System::new().block_on(async {
            let sink = Sink::default().start();
            let (tx, rx) = mpsc::channel(4);
            let lead = Lead::elected("here:1");
            lead.grant(
                Instant::now() + Duration::from_secs(600),
                std::time::SystemTime::now(),
            );
            let mut link = Link::new(
                sink.clone().recipient(),
                rx,
                Health::new("b", "memory"),
                "memory",
                Arc::default(),
                CancellationToken::new(),
                CancellationToken::new(),
                Pacing::new(
                    crate::pacing::OutboxSettings::default(),
                    &crate::pacing::Limits::unlimited(400),
                ),
                Fatal::default(),
                lead.clone(),
            );
            let line = |text: &str| {
                let (ack, _acked) = oneshot::channel();
                Delivery {
                    dest: Destination::room("#r"),
                    text: text.into(),
                    formatted: false,
                    card: None,
                    in_reply_to: None,
                    ack: Some(ack),
                    stamp: 0,
                    recall: Recall::default(),
                }
            };
            let heard = || Incoming::in_room("#r", Sender::new("u"), "!x");

            tx.send(line("held")).await.unwrap();
            let d = link.next_delivery().now_or_never().flatten();
            assert_eq!(d.map(|d| d.text.clone()), Some("held".into()));
            link.incoming(heard());
            assert_eq!(sink.send(Count).await.unwrap(), 1);

            // Run out: nobody has said so, yet nothing goes out and nothing is routed.
            lead.grant(Instant::now(), std::time::SystemTime::now());
            tx.send(line("late")).await.unwrap();
            assert!(link.next_delivery().now_or_never().is_none());
            link.incoming(heard());
            assert_eq!(sink.send(Count).await.unwrap(), 1);
        });
    }
}
