//! A bot's voice for code outside its handlers: an engine fed over HTTP, a thread of one's
//! own. What it says goes through the bot's outbox like any reply (paced, split, checked for
//! loops).

use super::*;
use crate::card::{Card, CardError};
use crate::message::{Destination, Outgoing};
use crate::outbox::Say;
use crate::rich::Rich;
use tokio::sync::oneshot;

/// Says things through a bot while it runs. Cheap to clone, usable from any thread.
#[derive(Clone, Debug, Default)]
pub struct Voice(Arc<Mutex<Option<Addr<Outbox>>>>, Lead, Arc<str>);

impl Voice {
    /// A voice that speaks only while `lead` is held, for a bot whose commands start with
    /// `prefix`.
    pub(super) fn new(lead: Lead, prefix: String) -> Self {
        Self(Arc::default(), lead, prefix.into())
    }

    /// Queues a card ([`crate::card`]) for `dest`, whose buttons run commands of the handler
    /// named `handler`, with a receipt like [`Voice::post`]. Where the transport has no cards,
    /// its fallback text goes instead, with the commands spelled out. An error when the card
    /// does not pass [`Card::check`]; `Ok(None)` (and nothing queued) as for [`Voice::post`].
    pub fn post_card(
        &self,
        dest: Destination,
        card: Card,
        handler: &str,
    ) -> Result<Option<Posted>, CardError> {
        card.check()?;
        let fallback = card.fallback(&self.2);
        Ok(self.post_message(Outgoing::card(dest, card, fallback, handler)))
    }

    /// Queues `text` for `dest`; answers `false` (and drops it) when the bot is not running,
    /// or another process speaks for it ([`crate::lead`]).
    pub fn say(&self, dest: Destination, text: impl Into<String>) -> bool {
        self.send(Outgoing::new(dest, text))
    }

    /// Queues a formatted reply ([`crate::rich`]) for `dest`, rendered for the transport;
    /// otherwise as [`Voice::say`].
    pub fn say_rich(&self, dest: Destination, rich: impl Into<Rich>) -> bool {
        self.send(Outgoing::rich(dest, rich))
    }

    fn send(&self, out: Outgoing) -> bool {
        if !self.1.holds() {
            return false;
        }
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(outbox) if outbox.connected() => {
                outbox.do_send(Say::new(out));
                true
            }
            _ => false,
        }
    }

    /// Queues `text` for `dest` like [`Voice::say`], and answers a receipt that learns the id
    /// the chat service gave the message once it is written (to answer later in its thread);
    /// `None` (and nothing queued) when the bot is not running, or another process speaks for
    /// it.
    pub fn post(&self, dest: Destination, text: impl Into<String>) -> Option<Posted> {
        self.post_message(Outgoing::new(dest, text))
    }

    /// Queues a formatted reply like [`Voice::say_rich`], with a receipt like [`Voice::post`].
    pub fn post_rich(&self, dest: Destination, rich: impl Into<Rich>) -> Option<Posted> {
        self.post_message(Outgoing::rich(dest, rich))
    }

    fn post_message(&self, out: Outgoing) -> Option<Posted> {
        if !self.1.holds() {
            return None;
        }
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(outbox) if outbox.connected() => {
                let (tx, rx) = oneshot::channel();
                outbox.do_send(Say(out, Some(tx)));
                Some(Posted(rx))
            }
            _ => None,
        }
    }

    /// Whether the bot is running and speaks from this process (what is said now is queued).
    pub fn is_running(&self) -> bool {
        self.1.holds()
            && self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(Addr::connected)
    }

    pub(super) fn set(&self, outbox: Option<Addr<Outbox>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = outbox;
    }
}

/// What became of a message said with [`Voice::post`].
#[derive(Debug)]
pub struct Posted(oneshot::Receiver<Option<Arc<str>>>);

impl Posted {
    /// Waits until the message's first line is written, and answers the id the service gave
    /// it (`None` where the transport has no message ids: IRC, XMPP, the console); an error
    /// when that line was never written (undeliverable, dropped from a full queue, lost at
    /// shutdown).
    pub async fn written(self) -> Result<Option<Arc<str>>, NotWritten> {
        self.0.await.map_err(|_| NotWritten)
    }
}

/// A message said with [`Voice::post`] was never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the message was never written")]
pub struct NotWritten;
