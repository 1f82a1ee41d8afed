//! A bot's voice for code outside its handlers: an engine fed over HTTP, a thread of one's
//! own. What it says goes through the bot's outbox like any reply (paced, split, checked for
//! loops).

use super::*;
use crate::message::{Destination, Outgoing};
use crate::outbox::Say;

/// Says things through a bot while it runs. Cheap to clone, usable from any thread.
#[derive(Clone, Debug, Default)]
pub struct Voice(Arc<Mutex<Option<Addr<Outbox>>>>);

impl Voice {
    /// Queues `text` for `dest`; answers `false` (and drops it) when the bot is not running.
    pub fn say(&self, dest: Destination, text: impl Into<String>) -> bool {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(outbox) if outbox.connected() => {
                outbox.do_send(Say(Outgoing::new(dest, text)));
                true
            }
            _ => false,
        }
    }

    /// Whether the bot is running (what is said now is queued).
    pub fn is_running(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(Addr::connected)
    }

    pub(super) fn set(&self, outbox: Option<Addr<Outbox>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = outbox;
    }
}
