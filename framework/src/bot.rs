//! Bots: building one, running several in one process.
//!
//! Each bot runs on an actix arbiter (a thread) of its own, with its own supervision tree, so a
//! bot whose handler blocks its thread, or whose transport cannot connect, never holds up
//! another. Handlers that declare [`Handler::BLOCKING`] get a further arbiter each.
//!
//! Shutdown (end of console input, SIGINT, SIGTERM) is graceful: the router stops taking input,
//! in-flight commands get until the deadline to finish, the outbox sends what it holds, and only
//! then does the transport close.

mod process;
mod voice;

use process::HEARTBEAT;
pub use process::{RunOptions, Shutdown, run, run_process, run_until, run_with};
pub use voice::{NotWritten, Posted, Voice};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cards::CardBook;
use crate::command::CatalogEntry;
use crate::command::Command;
use crate::handler::{Factory, Handler, HandlerHost, Job};
use crate::health::Health;
use crate::lead::Lead;
use crate::message::Identity;
use crate::options::ReconnectPolicy;
pub use crate::options::{BotOptions, OutboxSettings};
use crate::outbox::{Drain, Outbox};
use crate::pacing::Limits;
use crate::pacing::Pacing;
use crate::poller::{Poller, PollerHost, PollerOptions};
use crate::router::{Close, RouteError, RouteTable, Router};
use crate::shared::BotShared;
use crate::store::Store;
use crate::supervisor::{Fatal, fault_point};
use crate::transport::{Link, Recall, Transport, TransportHost};

/// Why a bot could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No transport was given.
    #[error("bot {0}: no transport")]
    NoTransport(String),
    /// Commands or patterns conflict.
    #[error("bot {bot}: {source}")]
    Route {
        /// The bot.
        bot: String,
        /// What is wrong.
        source: RouteError,
    },
}

type StartHandler =
    Box<dyn FnOnce(Arc<BotShared>) -> (Recipient<Job>, Option<ArbiterHandle>) + Send>;
type StartPoller = Box<dyn FnOnce(Arc<BotShared>, Store) + Send>;
type StartTransport = Box<dyn FnOnce(Link, ReconnectPolicy, oneshot::Sender<()>) + Send>;

struct HandlerReg {
    name: &'static str,
    commands: &'static [Command],
    patterns: &'static [&'static str],
    start: StartHandler,
}

struct TransportReg {
    kind: &'static str,
    limits: Limits,
    identity: Identity,
    start: StartTransport,
}

/// Builds a [`Bot`].
pub struct BotBuilder {
    name: String,
    options: BotOptions,
    transport: Option<TransportReg>,
    handlers: Vec<HandlerReg>,
    pollers: Vec<StartPoller>,
    store: Option<Store>,
    lead: Lead,
}

impl std::fmt::Debug for BotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotBuilder")
            .field("name", &self.name)
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl BotBuilder {
    /// Replaces the options.
    pub fn options(mut self, options: BotOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the options in place.
    pub fn configure(mut self, f: impl FnOnce(&mut BotOptions)) -> Self {
        f(&mut self.options);
        self
    }

    /// Makes the bot speak only while this process holds `lead` (active/standby across
    /// processes, see [`crate::lead`]); by default it always does.
    pub fn lead(mut self, lead: Lead) -> Self {
        self.lead = lead;
        self
    }

    /// Sets the transport.
    pub fn transport<T: Transport>(mut self, transport: T) -> Self {
        self.transport = Some(TransportReg {
            kind: transport.kind(),
            limits: transport.limits(),
            identity: transport.identity(),
            start: Box::new(move |link, policy, finished| {
                TransportHost::new(transport, link, policy, finished).start();
            }),
        });
        self
    }

    /// Adds a handler; after a crash the framework restarts it from a clone of this value.
    pub fn handler<H: Handler + Clone + Send + Sync>(self, handler: H) -> Self {
        self.handler_fn(move || handler.clone())
    }

    /// Adds a handler built by `factory` at start and after every crash.
    pub fn handler_fn<H: Handler>(
        mut self,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Self {
        let factory: Factory<H> = Arc::new(factory);
        let start: StartHandler = Box::new(move |shared| {
            if H::BLOCKING {
                let arbiter = Arbiter::new();
                let handle = arbiter.handle();
                let addr = HandlerHost::start_in_arbiter(&handle, move |_| {
                    HandlerHost::new(factory, shared)
                });
                (addr.recipient(), Some(handle))
            } else {
                (HandlerHost::new(factory, shared).start().recipient(), None)
            }
        });
        self.handlers.push(HandlerReg {
            name: H::NAME,
            commands: H::COMMANDS,
            patterns: H::PATTERNS,
            start,
        });
        self
    }

    /// Adds a poller built by `factory` (at start and after every crash).
    pub fn poller<P: Poller>(
        mut self,
        opts: PollerOptions,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> Self {
        let factory: Factory<P> = Arc::new(factory);
        self.pollers.push(Box::new(move |shared, store| {
            PollerHost::new(factory, opts, shared, store).start();
        }));
        self
    }

    /// Uses an already opened store (several bots of one process share one).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// The names of the handlers added so far.
    pub fn handler_names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.name).collect()
    }

    /// The commands of the handlers added so far.
    pub fn commands(&self) -> Vec<&'static Command> {
        self.handlers.iter().flat_map(|h| h.commands).collect()
    }

    /// Validates the bot: commands and patterns, and the state store if pollers or cards need
    /// one.
    pub fn build(self) -> Result<Bot, BuildError> {
        let name = self.name;
        let transport = self
            .transport
            .ok_or_else(|| BuildError::NoTransport(name.clone()))?;
        let spec: Vec<_> = self
            .handlers
            .iter()
            .map(|h| (h.name, h.commands, h.patterns))
            .collect();
        let table =
            RouteTable::new(&self.options.prefix, &spec).map_err(|source| BuildError::Route {
                bot: name.clone(),
                source,
            })?;
        // Pollers keep what they have seen, and a transport with cards the cards it posted.
        let store = match (
            self.pollers.is_empty() && !transport.limits.cards,
            self.store,
        ) {
            (true, _) => None,
            (false, Some(s)) => Some(s),
            (false, None) => {
                let path = self
                    .options
                    .state_path
                    .clone()
                    .unwrap_or_else(default_state_path);
                // A store that cannot be opened never keeps the bot from running: it runs on
                // one in memory, and says so.
                Some(Store::open(&path).unwrap_or_else(|e| Store::in_memory(e.to_string())))
            }
        };
        let health = Health::new(&name, transport.kind);
        health.set_critical_after(self.options.reconnect.critical_after);
        health.set_lead(self.lead.clone());
        if let Some(store) = &store
            && let Some(trouble) = store.trouble()
        {
            if store.is_persistent() {
                health.note_store("started afresh", trouble, false);
            } else {
                health.note_store("in memory", trouble, true);
            }
        }
        let cards = Arc::new(CardBook::new(
            store
                .as_ref()
                .filter(|_| transport.limits.cards)
                .map(|s| s.records(&format!("cards:{name}"))),
        ));
        Ok(Bot {
            voice: Voice::new(self.lead.clone(), self.options.prefix.clone()),
            cards,
            name,
            options: self.options,
            transport,
            handlers: self.handlers,
            pollers: self.pollers,
            table,
            store,
            health,
            lead: self.lead,
        })
    }
}

/// The default state store path: `$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/opsbot`,
/// else `~/.local/state/opsbot`, else the current directory.
pub fn default_state_path() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("STATE_DIRECTORY")
        .or_else(|| env("XDG_STATE_HOME").map(|p| p.join("opsbot")))
        .or_else(|| env("HOME").map(|p| p.join(".local/state/opsbot")))
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("state.redb")
}

/// A built, validated bot, ready to run.
pub struct Bot {
    name: String,
    options: BotOptions,
    transport: TransportReg,
    handlers: Vec<HandlerReg>,
    pollers: Vec<StartPoller>,
    table: RouteTable,
    store: Option<Store>,
    health: Health,
    voice: Voice,
    cards: Arc<CardBook>,
    lead: Lead,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Bot {
    /// Starts building a bot with the given name.
    pub fn builder(name: impl Into<String>) -> BotBuilder {
        BotBuilder {
            name: name.into(),
            options: BotOptions::default(),
            transport: None,
            handlers: Vec::new(),
            pollers: Vec::new(),
            store: None,
            lead: Lead::always(),
        }
    }

    /// The bot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bot's health registry (a live view).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The bot's lead: who speaks for it when several processes carry it ([`crate::lead`]).
    pub fn lead(&self) -> Lead {
        self.lead.clone()
    }

    /// The bot's voice: what it says reaches the bot's outbox while the bot runs.
    pub fn voice(&self) -> Voice {
        self.voice.clone()
    }

    /// Runs the bot on the current arbiter until `shutdown` is cancelled, its transport ends, or
    /// its own machinery fails (then the answer is why).
    pub(crate) async fn run(
        self,
        shutdown: CancellationToken,
        started: Option<oneshot::Sender<()>>,
    ) -> Result<(), String> {
        let Bot {
            name,
            options,
            transport,
            handlers,
            pollers,
            table,
            store,
            health,
            voice,
            cards,
            lead,
        } = self;
        fault_point!(&name, BotTask);
        let fatal = Fatal::default();
        let (tx, rx) = mpsc::channel(1);
        let recall = Recall::default();
        let pacing = Pacing::new(options.outbox.clone(), &transport.limits);
        let outbox = Outbox::new(
            options.outbox.resolve(&transport.limits),
            pacing.clone(),
            (tx, recall),
            health.clone(),
            fatal.guard("outbox"),
            lead.clone(),
            cards.clone(),
        )
        .start();
        voice.set(Some(outbox.clone()));
        let catalog = handlers
            .iter()
            .flat_map(|h| {
                h.commands.iter().map(|command| CatalogEntry {
                    handler: h.name,
                    command,
                })
            })
            .collect();
        let shared = Arc::new(BotShared {
            prefix: options.prefix.clone(),
            admins: options.admins.clone(),
            identity: transport.identity,
            options: options.clone(),
            catalog,
            health: health.clone(),
            outbox: outbox.clone(),
            fatal: fatal.clone(),
            cards,
            conversations: Arc::default(),
        });
        let mut arbiters = Vec::new();
        let hosts = handlers
            .into_iter()
            .map(|h| {
                let (recipient, arbiter) = (h.start)(shared.clone());
                arbiters.extend(arbiter);
                (h.name, recipient)
            })
            .collect();
        let tracker = TaskTracker::new();
        let nick = Arc::new(Mutex::new(name.clone()));
        let router =
            Router::new(table, hosts, shared.clone(), nick.clone(), tracker.clone()).start();
        if let Some(store) = store {
            for start in pollers {
                start(shared.clone(), store.clone());
            }
        }
        let (fin_tx, mut fin_rx) = oneshot::channel();
        let closing = CancellationToken::new();
        let link = Link::new(
            router.clone().recipient(),
            rx,
            health.clone(),
            transport.kind,
            nick,
            shutdown.clone(),
            closing.clone(),
            pacing,
            fatal.clone(),
            lead,
        );
        (transport.start)(link, options.reconnect, fin_tx);
        // A transport down past its grace period turns the bot critical with no event of its
        // own: look again every second.
        let refresh = {
            let health = health.clone();
            actix::spawn(async move {
                loop {
                    actix::clock::sleep(Duration::from_secs(1)).await;
                    health.refresh();
                }
            })
        };
        tracing::info!(bot = %name, transport = transport.kind, "bot started");
        if let Some(started) = started {
            let _ = started.send(());
        }

        let mut transport_done = false;
        tokio::select! {
            biased;
            () = fatal.failed() => {}
            () = shutdown.cancelled() => {}
            _ = &mut fin_rx => transport_done = true,
        }
        // An actor that died may have closed what the transport waits on; give such a failure
        // the moment it takes to be reported before deciding this was a normal stop.
        tokio::task::yield_now().await;
        let failure = fatal.reason();
        match &failure {
            Some(reason) => health.fail(reason),
            None => tracing::info!(bot = %name, "shutting down"),
        }
        let deadline = if failure.is_some() {
            // Say what can still be said, briefly: the service manager restarts the process.
            options.shutdown_deadline.min(Duration::from_secs(2))
        } else {
            options.shutdown_deadline
        };
        let _ = router.send(Close).await;
        if tokio::time::timeout(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(bot = %name, "in-flight commands did not finish before the deadline");
        }
        voice.set(None);
        let lost = outbox.send(Drain(deadline)).await.unwrap_or(0);
        if lost > 0 {
            tracing::warn!(bot = %name, lost, "lines still queued at the shutdown deadline were dropped");
            health.update_outbox(|o| o.lost_at_shutdown += lost as u64);
        }
        outbox.do_send(StopOutbox);
        closing.cancel();
        drop(shared);
        if !transport_done {
            let _ = tokio::time::timeout(deadline, fin_rx).await;
        }
        // From here on actors are dropped on purpose.
        refresh.abort();
        fatal.stopping();
        for a in arbiters {
            a.stop();
        }
        match failure {
            Some(reason) => {
                tracing::error!(bot = %name, %reason, "stopped after a failure");
                Err(reason)
            }
            None => {
                tracing::info!(bot = %name, "stopped");
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
struct StopOutbox;

impl Message for StopOutbox {
    type Result = ();
}

impl actix::Handler<StopOutbox> for Outbox {
    type Result = ();

    fn handle(&mut self, _: StopOutbox, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// How a bot ended, from what its task sent; nothing at all means the task itself panicked,
/// and its guard wrote why into the bot's health.
pub(crate) fn ended(
    done: Result<Result<(), String>, oneshot::error::RecvError>,
    health: &Health,
) -> Result<(), String> {
    done.unwrap_or_else(|_| {
        Err(health
            .snapshot()
            .failed
            .unwrap_or_else(|| "bot task ended unexpectedly".to_owned()))
    })
}

/// Starts `bot` on a new arbiter; the receiver fires when it has stopped, with why it failed if
/// it did (and is dropped unsent if the bot task itself panicked).
pub(crate) fn spawn_bot(
    bot: Bot,
    shutdown: CancellationToken,
    beat: Option<crate::systemd::Heartbeat>,
    started: Option<oneshot::Sender<()>>,
) -> (Arbiter, oneshot::Receiver<Result<(), String>>) {
    crate::supervisor::install_panic_hook();
    let arbiter = Arbiter::new();
    let (tx, rx) = oneshot::channel();
    let health = bot.health.clone();
    arbiter.spawn_fn(move || {
        if let Some(beat) = beat {
            // Proof that this thread still runs its tasks; a blocked thread stops beating.
            actix::spawn(async move {
                loop {
                    beat.beat();
                    actix::clock::sleep(HEARTBEAT).await;
                }
            });
        }
        actix::spawn(async move {
            // Reports a panic of the bot task itself (dropped unfinished, never sent).
            let mut watch = BotTaskGuard(Some(health));
            let result = bot.run(shutdown, started).await;
            watch.0 = None;
            let _ = tx.send(result);
        });
    });
    (arbiter, rx)
}

/// Marks the bot failed if its task ends without finishing (a panic in the bot task itself).
struct BotTaskGuard(Option<Health>);

impl Drop for BotTaskGuard {
    fn drop(&mut self) {
        if let Some(health) = self.0.take() {
            health.fail(&format!("bot task {}", crate::supervisor::how_it_ended()));
        }
    }
}
