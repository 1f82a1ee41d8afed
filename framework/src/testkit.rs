//! The test kit: drive a real bot (router, supervisors, outbox) over the in-memory transport and
//! assert on what it says, with no chat service.
//!
//! ```
//! use opsbot::prelude::*;
//! use opsbot::testkit::TestBot;
//!
//! #[derive(Clone)]
//! struct Ping;
//!
//! impl Handler for Ping {
//!     const NAME: &'static str = "ping";
//!     const COMMANDS: &'static [Command] = &[Command::new("ping", "", "Answer pong.")];
//!     async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
//!         cx.reply("pong");
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut bot = TestBot::new().with(Ping);
//! bot.send("!ping");
//! assert_eq!(bot.reply().await, "pong");
//! # }
//! ```
//!
//! The bot runs on a thread of its own (its own actor system), so tests can use any async
//! runtime. Defaults differ from production in three ways, each changeable with
//! [`TestBot::configure`]: restarts back off 10 ms instead of 100 ms, the per-user command budget
//! is off, and the transport has no rate limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::bot::{Bot, BotBuilder, BotOptions};
use crate::handler::Handler;
use crate::health::{Health, Snapshot};
use crate::message::{Incoming, Sender};
use crate::options::Budget;
use crate::poller::{Poller, PollerOptions};
use crate::store::Store;
use crate::transport::Limits;
use crate::transport::memory::{self, Remote, Said};

/// `!echo <text>`: says the text back. A ready-made handler for tests that need a second
/// command beside the one under test (to show it still answers, or to sync on).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    const NAME: &'static str = "echo";
    const COMMANDS: &'static [crate::Command] =
        &[crate::Command::new("echo", "<text>", "Say the text back.")];

    async fn command(&mut self, cx: &mut crate::Context, call: crate::Call) -> crate::Result {
        cx.reply(call.rest());
        Ok(())
    }
}

/// The delay a reconnect entry of the healing log announces (`...; next attempt in 1.2s`, the
/// transport host's wording). Panics, failing the test, on a detail without one.
pub fn next_attempt_in(detail: &str) -> Duration {
    let d = detail
        .rsplit_once("next attempt in ")
        .unwrap_or_else(|| panic!("no next attempt in {detail:?}"))
        .1;
    let split = d
        .find(|c: char| c.is_alphabetic() || c == 'µ')
        .unwrap_or_else(|| panic!("no unit in {detail:?}"));
    let (number, unit) = d.split_at(split);
    let n: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("no number in {detail:?}"));
    match unit {
        "s" => Duration::from_secs_f64(n),
        "ms" => Duration::from_secs_f64(n / 1e3),
        "µs" => Duration::from_secs_f64(n / 1e6),
        "ns" => Duration::from_secs_f64(n / 1e9),
        other => panic!("unit {other} in {detail:?}"),
    }
}

/// How long [`TestBot::said`] waits before failing the test.
const PATIENCE: Duration = Duration::from_secs(20);

/// A bot under test. See the [module docs](self).
pub struct TestBot {
    builder: Option<BotBuilder>,
    remote: Option<Remote>,
    pending: Option<Remote>,
    running: Option<Running>,
    health: Option<Health>,
    room: Arc<str>,
    sender: Sender,
}

struct Running {
    shutdown: CancellationToken,
    stopped: oneshot::Receiver<()>,
}

impl std::fmt::Debug for TestBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBot")
            .field("started", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for TestBot {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBot {
    /// A bot named `test` whose nick is `testbot`, with no handlers yet. Messages come from
    /// `tester` in `#test` unless sent with [`TestBot::send_as`].
    pub fn new() -> Self {
        Self::with_limits(Limits::unlimited(400))
    }

    /// Like [`TestBot::new`], with the transport limits a real service would have.
    pub fn with_limits(limits: Limits) -> Self {
        let (transport, remote) = memory::pair("memory", "testbot", limits);
        let builder = Bot::builder("test").transport(transport).configure(|o| {
            o.restart.backoff_initial = Duration::from_millis(10);
            o.restart.backoff_max = Duration::from_millis(100);
            o.budget = Budget {
                per_minute: 0,
                ..Budget::default()
            };
            o.reconnect.initial = Duration::from_millis(10);
            o.reconnect.max = Duration::from_millis(200);
            o.reconnect.refused_min = Duration::from_millis(10);
        });
        Self {
            builder: Some(builder),
            remote: None,
            pending: Some(remote),
            running: None,
            health: None,
            room: "#test".into(),
            sender: Sender::new("tester"),
        }
    }

    fn builder(&mut self) -> BotBuilder {
        self.builder
            .take()
            .expect("the bot has started: add handlers before the first send")
    }

    /// Adds a handler (restarted from a clone after a crash).
    pub fn with<H: Handler + Clone + Send + Sync>(mut self, handler: H) -> Self {
        self.builder = Some(self.builder().handler(handler));
        self
    }

    /// Adds a handler built by a factory.
    pub fn with_fn<H: Handler>(mut self, factory: impl Fn() -> H + Send + Sync + 'static) -> Self {
        self.builder = Some(self.builder().handler_fn(factory));
        self
    }

    /// Adds a poller.
    pub fn poller<P: Poller>(
        mut self,
        opts: PollerOptions,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> Self {
        self.builder = Some(self.builder().poller(opts, factory));
        self
    }

    /// Speaks only while `lead` is held (active/standby, [`crate::lead`]).
    pub fn lead(mut self, lead: crate::lead::Lead) -> Self {
        self.builder = Some(self.builder().lead(lead));
        self
    }

    /// Uses this state store.
    pub fn store(mut self, store: Store) -> Self {
        self.builder = Some(self.builder().store(store));
        self
    }

    /// Changes the bot's options.
    pub fn configure(mut self, f: impl FnOnce(&mut BotOptions)) -> Self {
        self.builder = Some(self.builder().configure(f));
        self
    }

    /// Starts the bot now (the first send does it otherwise). Panics if the bot does not build.
    pub fn start(&mut self) -> &mut Self {
        if self.running.is_some() {
            return self;
        }
        let bot = self
            .builder()
            .build()
            .unwrap_or_else(|e| panic!("test bot does not build: {e}"));
        self.health = Some(bot.health());
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let token = shutdown.clone();
        std::thread::Builder::new()
            .name("testbot".into())
            .spawn(move || {
                let system = actix::System::new();
                let arbiter = system.block_on(async move {
                    let (arbiter, done) = crate::bot::spawn_bot(bot, token, None, None);
                    let _ = done.await;
                    arbiter.stop();
                    arbiter
                });
                // How the bot ended shows in its health (`Snapshot::failed`).
                // Wait for the bot's thread, so that everything it held (the state store's
                // file lock, for one) is released when `shutdown` returns.
                let _ = arbiter.join();
                let _ = tx.send(());
            })
            .expect("spawn test bot thread");
        self.remote = self.pending.take();
        self.running = Some(Running {
            shutdown,
            stopped: rx,
        });
        self
    }

    fn remote(&mut self) -> &mut Remote {
        self.start();
        self.remote.as_mut().expect("started")
    }

    /// Says `text` in `#test` as `tester`.
    pub fn send(&mut self, text: &str) -> &mut Self {
        let msg = Incoming::in_room(self.room.clone(), self.sender.clone(), text);
        self.send_message(msg)
    }

    /// Says `text` in `room` as `sender` (id and display name).
    pub fn send_as(&mut self, sender: &str, room: &str, text: &str) -> &mut Self {
        self.send_message(Incoming::in_room(room, Sender::new(sender), text))
    }

    /// Sends `text` privately to the bot as `sender`.
    pub fn send_direct(&mut self, sender: &str, text: &str) -> &mut Self {
        self.send_message(Incoming::direct(Sender::new(sender), text))
    }

    /// Delivers any message.
    pub fn send_message(&mut self, msg: Incoming) -> &mut Self {
        assert!(self.remote().send(msg), "the bot has stopped");
        self
    }

    /// Breaks the transport's connection (the bot reconnects with backoff).
    pub fn drop_connection(&mut self) -> &mut Self {
        self.remote().drop_connection("connection reset by test");
        self
    }

    /// Cuts the connection in the middle of the next line (see
    /// [`Remote::cut_mid_delivery`]).
    pub fn cut_mid_delivery(&mut self) -> &mut Self {
        self.remote().cut_mid_delivery();
        self
    }

    /// A live view of the bot's health, which outlives [`TestBot::shutdown`].
    pub fn health(&mut self) -> Health {
        self.start();
        self.health.clone().expect("started")
    }

    /// Makes reconnect attempts fail (or succeed again).
    pub fn refuse_connections(&mut self, refuse: bool) -> &mut Self {
        self.remote().refuse(refuse);
        self
    }

    /// The next line the bot says. Fails the test if it says nothing for 20 seconds.
    pub async fn said(&mut self) -> Said {
        match tokio::time::timeout(PATIENCE, self.remote().recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("the bot stopped without saying anything more"),
            Err(_) => panic!("the bot said nothing within {PATIENCE:?}"),
        }
    }

    /// The text of the next line the bot says.
    pub async fn reply(&mut self) -> String {
        self.said().await.text
    }

    /// The next `n` lines' texts.
    pub async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.reply().await);
        }
        out
    }

    /// Lines said so far and not yet read, without waiting.
    pub fn drain_said(&mut self) -> Vec<Said> {
        let remote = self.remote();
        std::iter::from_fn(|| remote.try_recv()).collect()
    }

    /// The bot's health right now.
    pub fn status(&mut self) -> Snapshot {
        self.start();
        self.health.as_ref().expect("started").snapshot()
    }

    /// Waits until the bot's health satisfies `ready` and returns that snapshot. Fails the test,
    /// naming `what`, if it does not within 20 seconds.
    ///
    /// ```
    /// # use opsbot::testkit::{Echo, TestBot};
    /// # use opsbot::health::{ActorKind, ActorState};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut bot = TestBot::new().with(Echo);
    /// bot.wait_status("echo running", |s| {
    ///     s.actor(ActorKind::Handler, "echo")
    ///         .is_some_and(|a| a.state == ActorState::Running)
    /// })
    /// .await;
    /// # }
    /// ```
    pub async fn wait_status(&mut self, what: &str, ready: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.status();
            if ready(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {PATIENCE:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Shuts the bot down gracefully and returns what it said while doing so.
    pub async fn shutdown(mut self) -> Vec<Said> {
        let Some(running) = self.running.take() else {
            return Vec::new();
        };
        running.shutdown.cancel();
        let mut out = Vec::new();
        let remote = self.remote.as_mut().expect("started");
        while let Ok(Some(s)) = tokio::time::timeout(PATIENCE, remote.recv()).await {
            out.push(s);
        }
        let _ = tokio::time::timeout(PATIENCE, running.stopped).await;
        out
    }
}

impl Drop for TestBot {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown.cancel();
        }
    }
}
