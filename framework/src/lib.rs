//! # opsbot
//!
//! A ChatOps bot framework for teams who live in chat: a bot is a supervision tree of actors.
//! Its **transport** speaks one chat protocol; a **router** hands each message to **handlers**
//! (commands with a prefix, passive regex matchers); **pollers** post what is new on a timer;
//! everything said goes through the **outbox**, which sanitizes, splits and rate-limits so the
//! chat service never kicks the bot; and **supervisors** restart whatever crashes.
//!
//! The key design decision: handler authors write plain async code against this crate's traits
//! ([`Handler`], [`Poller`], [`Transport`](transport::Transport)) and never touch the actor
//! runtime (actix), which hosts each of them in an actor of its own, catches its panics and
//! restarts it with backoff. A complete handler:
//!
//! ```
//! use opsbot::prelude::*;
//!
//! #[derive(Clone)]
//! struct Hello;
//!
//! impl Handler for Hello {
//!     const NAME: &'static str = "hello";
//!     const COMMANDS: &'static [Command] = &[Command::new("hello", "[name]", "Say hello.")];
//!
//!     async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
//!         let name: Option<String> = call.opt_arg(0)?;
//!         cx.reply(format!("hello, {}!", name.as_deref().unwrap_or(&call.sender().name)));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Unit-test it with the test kit: a real router, supervisor and outbox, no chat service.
//! let mut bot = opsbot::testkit::TestBot::new().with(Hello);
//! bot.send("!hello ops");
//! assert_eq!(bot.reply().await, "hello, ops!");
//! # }
//! ```
//!
//! See `docs/ARCHITECTURE.md` in the repository for the supervision tree and the message flow.

/// The framework version, as `!status` shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod bot;
pub mod breaker;
pub mod card;
mod cards;
pub mod command;
pub mod config;
pub mod conversation;
mod error;
#[cfg(feature = "http")]
pub mod fetch;
mod handler;
pub mod healing_log;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod lead;
pub mod logging;
pub mod message;
pub mod options;
mod outbox;
pub mod pacing;
mod poller;
pub mod rich;
pub mod router;
pub mod settings;
mod shared;
#[cfg(feature = "status-api")]
pub mod status_api;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod testkit;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;

pub use bot::{
    Bot, BotBuilder, BotOptions, RunOptions, Shutdown, run, run_process, run_until, run_with,
};
pub use command::{Call, Command, Match};
pub use error::{Error, Result};
pub use handler::{Context, Handler};
pub use message::{Destination, Incoming, Outgoing, Sender};
pub use poller::{Item, Poller, PollerOptions};

/// What a handler or poller author needs, in one import.
pub mod prelude {
    pub use crate::bot::Bot;
    pub use crate::card::Card;
    pub use crate::command::{Call, Command, Match};
    pub use crate::error::{Error, Result};
    pub use crate::handler::{Context, Handler};
    pub use crate::message::{Destination, Incoming, Sender};
    pub use crate::poller::{Item, Poller, PollerOptions};
    pub use crate::rich::{Line, Rich};
}
