//! The state every actor of one bot shares: its options, admins, command catalog, health
//! table and outbox. Built once by the bot, read by the router, handlers and pollers.

use actix::Addr;

use crate::command::{CatalogEntry, Command};
use crate::health::Health;
use crate::message::{Identity, Sender};
use crate::options::{Access, BotOptions};
use crate::outbox::Outbox;
use crate::supervisor::Fatal;

/// What every actor of one bot shares.
#[derive(Debug)]
pub(crate) struct BotShared {
    pub(crate) prefix: String,
    pub(crate) admins: Vec<String>,
    pub(crate) identity: Identity,
    pub(crate) options: BotOptions,
    pub(crate) catalog: Vec<CatalogEntry>,
    pub(crate) health: Health,
    pub(crate) outbox: Addr<Outbox>,
    pub(crate) fatal: Fatal,
    /// The cards the bot posted, for their buttons.
    pub(crate) cards: std::sync::Arc<crate::cards::CardBook>,
    /// Questions waiting for their answers.
    pub(crate) conversations: std::sync::Arc<crate::conversation::Conversations>,
}

impl BotShared {
    /// Whether `sender` may run `command`: admins may run anything; others what is not
    /// admin-only, within the command's access list when the config gives one.
    pub(crate) fn may_run(&self, sender: &Sender, command: &Command) -> bool {
        if self.is_admin(sender) {
            return true;
        }
        if command.admin {
            return false;
        }
        match self.options.access.get(command.name) {
            None | Some(Access::Everyone) => true,
            Some(Access::Admins) => false,
            Some(Access::Only(list)) => {
                sender.verified && list.iter().any(|e| self.identity.matches(e, &sender.id))
            }
        }
    }

    /// Whether `sender` is one of the bot's admins: a verified identity that an entry covers.
    pub(crate) fn is_admin(&self, sender: &Sender) -> bool {
        sender.verified
            && self
                .admins
                .iter()
                .any(|a| self.identity.matches(a, &sender.id))
    }
}
