//! The state every actor of one bot shares: its options, admins, command catalog, health
//! table and outbox. Built once by [`crate::bot`], read by the router, handlers and pollers.

use actix::Addr;

use crate::command::{CatalogEntry, Command};
use crate::health::Health;
use crate::message::Sender;
use crate::options::{Access, BotOptions};
use crate::outbox::Outbox;
use crate::supervisor::Fatal;
use crate::transport::Identity;

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

/// Glob match with `*` (any run) and `?` (one byte), as IRC host masks use them
/// (`*!*@ops.example.com`). Comparison is ASCII case-insensitive.
pub(crate) fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn host_masks_match_as_globs() {
        assert!(wildcard(
            b"*!*@ops.example.com",
            b"alice!al@ops.example.com"
        ));
        assert!(wildcard(b"alice!*@*", b"ALICE!x@y"));
        assert!(!wildcard(
            b"*!*@ops.example.com",
            b"mallory!m@evil.example.com"
        ));
        assert!(wildcard(b"a?c", b"abc") && !wildcard(b"a?c", b"abbc"));
        assert!(wildcard(b"*", b"") && !wildcard(b"", b"x"));
    }
}
