//! The messages that cross the bot: what a transport hears ([`Incoming`]) and what the bot says
//! ([`Outgoing`]).
//!
//! These types are normalized: nothing protocol-specific leaks past the transport, so a handler
//! written against them runs unchanged on IRC, XMPP, Webex or the console.

use std::fmt;
use std::sync::Arc;

use crate::card::{Card, Submission};
use crate::rich::Rich;

/// Who sent a message: a stable identity and the name people see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Sender {
    /// Stable identity used for access checks and per-user budgets (`nick!user@host` on IRC, a
    /// bare JID on XMPP, an email on Webex, `console` on the console).
    pub id: Arc<str>,
    /// Display name (the nick on IRC).
    pub name: Arc<str>,
    /// Whether the service vouches for `id` (see [`Identity`]). An id the
    /// transport had to make from text the sender chose (an occupant's nick in an XMPP room
    /// that hides real JIDs) is not verified: it keeps the sender's budget apart from others',
    /// and never matches an admin entry.
    pub verified: bool,
}

impl Sender {
    /// A sender whose id and display name are the same.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        let id = id.into();
        Self {
            name: id.clone(),
            id,
            verified: true,
        }
    }

    /// A sender with distinct id and display name.
    pub fn with_name(id: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            verified: true,
        }
    }

    /// A sender whose id the service does not vouch for; see [`Sender::verified`].
    pub fn unverified(id: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            verified: false,
            ..Self::with_name(id, name)
        }
    }
}

/// Where a line goes: a room (channel, MUC, space) or one person privately.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A shared room, by the transport's room name (`#ops` on IRC).
    Room(Arc<str>),
    /// One person, privately, by the transport's address for them (a nick on IRC).
    User(Arc<str>),
    /// A thread inside a room (Webex): the room's name and the id of the thread's first
    /// message. Paced with its room; transports without threads send to the room.
    Thread {
        /// The room.
        room: Arc<str>,
        /// The message that started the thread.
        parent: Arc<str>,
    },
}

impl Destination {
    /// A room destination.
    pub fn room(name: impl Into<Arc<str>>) -> Self {
        Self::Room(name.into())
    }

    /// A private destination.
    pub fn user(name: impl Into<Arc<str>>) -> Self {
        Self::User(name.into())
    }

    /// A thread in a room.
    pub fn thread(room: impl Into<Arc<str>>, parent: impl Into<Arc<str>>) -> Self {
        Self::Thread {
            room: room.into(),
            parent: parent.into(),
        }
    }

    /// The transport's name for the destination (for a thread, its room's).
    pub fn name(&self) -> &str {
        match self {
            Self::Room(n) | Self::User(n) | Self::Thread { room: n, .. } => n,
        }
    }

    /// The destination whose pace this one shares: a thread is paced with its room.
    pub fn paced_as(&self) -> Destination {
        match self {
            Self::Thread { room, .. } => Self::Room(room.clone()),
            other => other.clone(),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Room(n) => write!(f, "{n}"),
            Self::User(n) => write!(f, "@{n}"),
            Self::Thread { room, parent } => write!(f, "{room} (thread {parent})"),
        }
    }
}

/// A message heard by a transport, normalized. Made with [`Incoming::in_room`] or
/// [`Incoming::direct`], then its fields set: it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Incoming {
    /// Where it was said: the room, or `None` for a direct (private) message.
    pub room: Option<Arc<str>>,
    /// Who said it.
    pub sender: Sender,
    /// The text, as received (already decoded to UTF-8 by the transport).
    pub text: String,
    /// The service's message id, when it has one.
    pub id: Option<String>,
    /// The thread the message was said in (Webex), if any: replies go there.
    pub thread: Option<Arc<str>>,
    /// Whether the service says the message was meant for the bot (a Webex mention, which the
    /// transport has already stripped from the text): routed like `nick: text`.
    pub addressed: bool,
    /// A card's button pressed ([`crate::card`]): the router runs that button's command for
    /// the sender, with the card's inputs; `text` is then not read.
    pub submission: Option<Submission>,
}

impl Incoming {
    /// A message said in a room.
    pub fn in_room(room: impl Into<Arc<str>>, sender: Sender, text: impl Into<String>) -> Self {
        Self {
            room: Some(room.into()),
            sender,
            text: text.into(),
            id: None,
            thread: None,
            addressed: false,
            submission: None,
        }
    }

    /// A direct (private) message.
    pub fn direct(sender: Sender, text: impl Into<String>) -> Self {
        Self {
            room: None,
            sender,
            text: text.into(),
            id: None,
            thread: None,
            addressed: false,
            submission: None,
        }
    }

    /// Whether the message was sent privately to the bot.
    pub fn is_direct(&self) -> bool {
        self.room.is_none()
    }

    /// Where a reply to this message goes: its thread, the room, or the sender privately.
    pub fn reply_to(&self) -> Destination {
        match (&self.room, &self.thread) {
            (Some(room), Some(parent)) => Destination::thread(room.clone(), parent.clone()),
            (Some(room), None) => Destination::Room(room.clone()),
            (None, _) => Destination::User(self.sender.name.clone()),
        }
    }
}

/// A line the bot wants to say, before the outbox sanitizes, splits and paces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub dest: Destination,
    /// What to say; may hold several lines and any characters: the outbox makes it safe.
    /// For a formatted reply, its plain rendering.
    pub text: String,
    /// A formatted reply, rendered by the outbox for the transport's style.
    pub(crate) rich: Option<Arc<Rich>>,
    /// A card, sent as one where the transport has cards (`rich` is then its fallback), and
    /// the handler whose commands its buttons run.
    pub(crate) card: Option<(Arc<Card>, Arc<str>)>,
    /// The framework's own answer to a user's command (an apology, "unavailable", a usage
    /// line, a refusal): never taken for a loop, however often it repeats.
    pub(crate) answer: bool,
    /// The id of the message this one answers, where the transport shows replies as such
    /// (Matrix's `m.in_reply_to`); set for a handler's replies to the message it handles.
    pub(crate) in_reply_to: Option<Arc<str>>,
}

impl Outgoing {
    /// A new outgoing message.
    pub fn new(dest: Destination, text: impl Into<String>) -> Self {
        Self {
            dest,
            text: text.into(),
            rich: None,
            card: None,
            answer: false,
            in_reply_to: None,
        }
    }

    /// A formatted reply ([`crate::rich`]), rendered for the transport it goes out on.
    pub fn rich(dest: Destination, rich: impl Into<Rich>) -> Self {
        let rich = rich.into();
        Self {
            text: rich.plain(),
            rich: Some(Arc::new(rich)),
            ..Self::new(dest, "")
        }
    }

    /// A card ([`crate::card`]) with its fallback: a card where the transport has cards, the
    /// fallback (formatted) elsewhere. Its buttons run commands of the handler `handler`.
    pub(crate) fn card(dest: Destination, card: Card, fallback: Rich, handler: &str) -> Self {
        Self {
            card: Some((Arc::new(card), handler.into())),
            ..Self::rich(dest, fallback)
        }
    }

    /// The framework's own answer to a command (see the `answer` field).
    pub(crate) fn answer(dest: Destination, text: impl Into<String>) -> Self {
        Self {
            answer: true,
            ..Self::new(dest, text)
        }
    }
}

/// A message for the router: something a transport heard.
#[derive(Debug)]
pub struct Inbound(pub Incoming);

impl actix::Message for Inbound {
    type Result = ();
}

/// What a transport's sender ids are, and so how the config's admin entries match them.
///
/// Identity is what the service can prove, never text a user chose: on IRC the host part of
/// `nick!user@host` (the server looked it up or cloaked it; the nick and the user name are the
/// client's own words), on XMPP a real JID (the server stamps it), on Webex the sender's email
/// (Webex's own record). A transport that cannot prove who sent a message marks its
/// [`Sender`] unverified, and no entry matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// `nick!user@host` (IRC): an entry is a mask, with `*` for any run and `?` for one
    /// character, compared without ASCII case.
    Mask,
    /// An address the service vouches for (a bare JID, an email, `console`): an entry is the
    /// whole address, compared without case; wildcards are not allowed.
    Address,
}

impl Identity {
    /// Whether the admin entry `entry` covers the sender id `id`.
    pub fn matches(self, entry: &str, id: &str) -> bool {
        match self {
            Self::Mask => {
                entry.eq_ignore_ascii_case(id)
                    || (entry.contains(['*', '?']) && wildcard(entry.as_bytes(), id.as_bytes()))
            }
            Self::Address => entry.to_lowercase() == id.to_lowercase(),
        }
    }

    /// Checks an admin entry for this kind of identity: an error when it can never be right
    /// (or could match someone it should not), a warning when it trusts what a user chooses.
    pub fn check_entry(self, entry: &str) -> Result<Option<String>, (String, String)> {
        let entry = entry.trim();
        if entry.is_empty() || entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err((
                format!("`{entry}` is not an identity"),
                "write a host mask on IRC (`*!*@ops.example.com`), an address elsewhere".into(),
            ));
        }
        match self {
            Self::Mask => {
                let Some((who, host)) = entry.rsplit_once('@') else {
                    return Err((
                        format!("`{entry}` is not an IRC host mask (nick!user@host)"),
                        "IRC senders are `nick!user@host`: trust the host, `*!*@ops.example.com`"
                            .into(),
                    ));
                };
                if !who.contains('!') {
                    return Err((
                        format!("`{entry}` is not an IRC host mask (nick!user@host)"),
                        format!("IRC senders are `nick!user@host`: write `*!*@{host}`"),
                    ));
                }
                if host.chars().all(|c| matches!(c, '*' | '?' | '.')) {
                    return Ok(Some(format!(
                        "`{entry}` trusts only a nick and a user name, which anyone can choose; \
                         match the host (`*!*@ops.example.com`) or a services cloak"
                    )));
                }
                Ok(None)
            }
            Self::Address => {
                if entry.contains(['*', '?', '!', '/']) || !entry.contains('@') {
                    return Err((
                        format!("`{entry}` is not an address this transport can prove"),
                        "write the whole address (`alice@example.org`): wildcards, IRC masks and \
                         room nicks are not identities here"
                            .into(),
                    ));
                }
                Ok(None)
            }
        }
    }
}

/// Glob match with `*` (any run) and `?` (one byte), as IRC host masks use them
/// (`*!*@ops.example.com`). Comparison is ASCII case-insensitive.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
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
