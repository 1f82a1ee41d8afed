//! Proactive pollers: fetch on a timer, post only what is new.
//!
//! A poller returns the items its source shows now, each with a stable id. The host compares
//! them with the poller's seen-index in the [`crate::store::Store`] and posts only the new
//! ones, in order, to the poller's destinations. The first poll ever primes the index without
//! posting; the index is on disk, so a restarted bot never re-announces old items. A poll that
//! fails is logged and shown in `!status`; one that panics gets a fresh poller instance under the
//! same restart policy as handlers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::error::Error;
use crate::handler::Factory;
use crate::health::{ActorKind, ActorState};
use crate::message::{Destination, Outgoing};
use crate::outbox::Say;
use crate::rich::Rich;
use crate::shared::BotShared;
use crate::store::Store;
use crate::supervisor::{CoreGuard, Restarts, after_crash, catch, fault_point};

/// One thing a source shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Stable id: the same item must have the same id on every poll (a URL, a ticket number).
    pub id: String,
    /// What to post when the item is new (for a formatted item, its plain text).
    pub text: String,
    /// The item formatted ([`crate::rich`]), when the poller gives it so.
    pub rich: Option<Rich>,
}

impl Item {
    /// An item.
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            rich: None,
        }
    }

    /// A formatted item, rendered for each transport (a link keeps its target everywhere).
    pub fn rich(id: impl Into<String>, rich: impl Into<Rich>) -> Self {
        let rich = rich.into();
        Self {
            id: id.into(),
            text: rich.plain(),
            rich: Some(rich),
        }
    }
}

/// A proactive poller.
///
/// ```
/// use opsbot::prelude::*;
///
/// struct Tickets;
///
/// impl Poller for Tickets {
///     const NAME: &'static str = "tickets";
///
///     async fn poll(&mut self) -> Result<Vec<Item>> {
///         Ok(vec![Item::new("T-1", "new ticket T-1: disk full on db3")])
///     }
/// }
/// ```
#[allow(async_fn_in_trait)] // pollers run on their bot's arbiter thread: no Send needed
pub trait Poller: 'static {
    /// The poller's name; also its key in the state store, so keep it stable.
    const NAME: &'static str;

    /// Fetches what the source shows now, oldest first. Returning [`Error::BreakerOpen`]
    /// (what `?` makes of a [`crate::breaker::Open`]) skips this tick without counting a
    /// failure.
    async fn poll(&mut self) -> Result<Vec<Item>, Error>;

    /// The circuit breakers of the poller's dependencies, to show in `!status` and log in the
    /// healing log; asked of each fresh instance. Keep them in the poller's factory so that
    /// they outlive a restart.
    fn breakers(&self) -> Vec<crate::breaker::Breaker> {
        Vec::new()
    }
}

/// A poller's schedule and destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollerOptions {
    /// Time between polls.
    pub every: Duration,
    /// Where new items are posted.
    pub post_to: Vec<Destination>,
    /// Longest a poll may take.
    pub timeout: Duration,
    /// How long an id that left the source is remembered (30 days by default). An id that
    /// comes back after that is posted again; keep this longer than a source's items can
    /// disappear and reappear (paging, flapping feeds).
    pub retain: Duration,
    /// New items posted from one poll at most; beyond, one line says how many more there were
    /// (a source that suddenly shows 500 new items must not flood the room).
    pub max_posts: usize,
}

impl Default for PollerOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(60),
            post_to: Vec::new(),
            timeout: Duration::from_secs(30),
            retain: Duration::from_secs(30 * 24 * 3600),
            max_posts: 10,
        }
    }
}

/// The actor that runs one poller.
pub(crate) struct PollerHost<P: Poller> {
    factory: Factory<P>,
    poller: Option<Box<P>>,
    opts: PollerOptions,
    shared: Arc<BotShared>,
    store: Store,
    restarts: Restarts,
    guard: CoreGuard,
}

impl<P: Poller> std::fmt::Debug for PollerHost<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerHost")
            .field("name", &P::NAME)
            .finish_non_exhaustive()
    }
}

impl<P: Poller> PollerHost<P> {
    pub(crate) fn new(
        factory: Factory<P>,
        opts: PollerOptions,
        shared: Arc<BotShared>,
        store: Store,
    ) -> Self {
        let restarts = Restarts::new(shared.options.restart);
        let guard = shared.fatal.guard(format!("host of poller {}", P::NAME));
        Self {
            factory,
            poller: None,
            opts,
            shared,
            store,
            restarts,
            guard,
        }
    }

    fn scope(&self) -> String {
        format!("{}/{}", self.shared.health.bot(), P::NAME)
    }

    fn update(&self, f: impl FnOnce(&mut crate::health::ActorStatus)) {
        self.shared.health.update(ActorKind::Poller, P::NAME, f);
    }

    fn schedule(&mut self, after: Duration, ctx: &mut actix::Context<Self>) {
        self.update(|s| s.next_run = Some(SystemTime::now() + after));
        ctx.run_later(after, |act, ctx| act.tick(ctx));
    }

    fn tick(&mut self, ctx: &mut actix::Context<Self>) {
        fault_point!(self.shared.health.bot(), PollerHost);
        let mut poller = match self.poller.take() {
            Some(p) => p,
            None => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::supervisor::caught(|| (self.factory)())
                })) {
                    Ok(p) => {
                        for b in p.breakers() {
                            self.shared.health.attach(&b);
                        }
                        Box::new(p)
                    }
                    Err(payload) => {
                        let panic = crate::supervisor::Panic::from_payload(&*payload);
                        tracing::error!(poller = P::NAME, panic = %panic.message, at = panic.at.as_deref().unwrap_or("?"), "poller factory panicked");
                        return self.crashed(format!("factory {}", panic.summary()), ctx);
                    }
                }
            }
        };
        self.update(|s| {
            s.state = ActorState::Running;
            s.last_run = Some(SystemTime::now());
            s.next_run = None;
        });
        let timeout = self.opts.timeout;
        let fut = catch(async move {
            let r = tokio::time::timeout(timeout, poller.poll()).await;
            (poller, r)
        });
        ctx.wait(
            fut.into_actor(self)
                .then(move |res, act, _| {
                    let store = act.store.clone();
                    let scope = act.scope();
                    let retain = act.opts.retain;
                    async move {
                        match res {
                            Ok((poller, Ok(Ok(items)))) => {
                                let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
                                let fresh = tokio::task::spawn_blocking(move || {
                                    store.observe(&scope, &ids, retain)
                                })
                                .await
                                .map_err(|e| (e.to_string(), false))
                                .and_then(|r| r.map_err(|e| (e.to_string(), false)));
                                (Some(poller), fresh.map(|f| (items, f)))
                            }
                            Ok((poller, Ok(Err(e)))) => {
                                let skip = matches!(e, Error::BreakerOpen(_));
                                (Some(poller), Err((e.to_string(), skip)))
                            }
                            Ok((poller, Err(_))) => (
                                Some(poller),
                                Err((format!("poll timed out after {timeout:?}"), false)),
                            ),
                            Err(panic) => {
                                tracing::error!(poller = P::NAME, panic = %panic.message, at = panic.at.as_deref().unwrap_or("?"), "poller panicked");
                                (None, Err((panic.summary(), false)))
                            }
                        }
                    }
                    .into_actor(act)
                })
                .map(|(poller, result), act, ctx| {
                    let panicked = poller.is_none();
                    act.poller = poller;
                    match result {
                        Ok((items, fresh)) => {
                            act.update(|s| s.detail = None);
                            let new: Vec<&Item> = items
                                .iter()
                                .zip(fresh)
                                .filter_map(|(item, new)| new.then_some(item))
                                .collect();
                            let max = act.opts.max_posts.max(1);
                            let more = new.len().saturating_sub(max);
                            let mut lines: Vec<(String, Option<Rich>)> = new
                                .iter()
                                .take(max)
                                .map(|i| (i.text.clone(), i.rich.clone()))
                                .collect();
                            if more > 0 {
                                lines.push((format!("… and {more} more from {}", P::NAME), None));
                            }
                            for (text, rich) in &lines {
                                for dest in &act.opts.post_to {
                                    let out = match rich {
                                        Some(r) => Outgoing::rich(dest.clone(), r.clone()),
                                        None => Outgoing::new(dest.clone(), text.clone()),
                                    };
                                    act.shared.outbox.do_send(Say::new(out));
                                }
                            }
                            let posted = new.len() as u64;
                            act.update(|s| s.handled += posted);
                        }
                        Err((why, _)) if panicked => return act.crashed(why, ctx),
                        Err((why, true)) => {
                            tracing::debug!(poller = P::NAME, %why, "tick skipped");
                            act.update(|s| s.detail = Some(format!("tick skipped: {why}")));
                        }
                        Err((why, false)) => {
                            tracing::warn!(poller = P::NAME, error = %why, "poll failed");
                            act.update(|s| s.last_error = Some((SystemTime::now(), why)));
                        }
                    }
                    let every = act.opts.every;
                    act.schedule(every, ctx);
                }),
        );
    }

    fn crashed(&mut self, why: String, ctx: &mut actix::Context<Self>) {
        let delay = after_crash(
            &self.shared.health,
            &mut self.restarts,
            (ActorKind::Poller, P::NAME),
            &why,
            "restart budget spent, poller stopped",
        );
        match delay {
            Some(delay) => self.schedule(delay.max(Duration::from_millis(1)), ctx),
            None => self.update(|s| s.next_run = None),
        }
    }
}

impl<P: Poller> Actor for PollerHost<P> {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.health.register(ActorKind::Poller, P::NAME);
        // A strong address: nothing else holds a poller's host, and one that failed (no tick
        // scheduled) must stay to be healed. The bot's arbiter ends it at shutdown.
        let host = ctx.address();
        self.shared.health.set_healer(
            format!("poller:{}", P::NAME),
            Arc::new(move || host.do_send(crate::handler::Heal)),
        );
        self.schedule(Duration::ZERO, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.guard.disarm();
    }
}

impl<P: Poller> actix::Handler<crate::handler::Heal> for PollerHost<P> {
    type Result = ();

    /// A fresh instance at the next tick and a whole restart budget; a failed poller runs
    /// again at once. Handled between polls (never in the middle of one).
    fn handle(&mut self, _: crate::handler::Heal, ctx: &mut Self::Context) {
        self.restarts.renew();
        self.poller = None;
        // Failed (its budget spent), it has no tick scheduled: start one.
        if self.shared.health.actor_state(ActorKind::Poller, P::NAME) == Some(ActorState::Failed) {
            self.update(|s| s.state = ActorState::Starting);
            self.schedule(Duration::ZERO, ctx);
        }
    }
}
