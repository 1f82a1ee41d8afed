//! The messages that cross the bot: what a transport hears ([`Incoming`]) and what the bot says
//! ([`Outgoing`]).
//!
//! These types are normalized: nothing protocol-specific leaks past the transport, so a handler
//! written against them runs unchanged on IRC, XMPP, Webex or the console.

use std::fmt;
use std::sync::Arc;

/// Who sent a message: a stable identity and the name people see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Sender {
    /// Stable identity used for access checks and per-user budgets (`nick!user@host` on IRC, a
    /// bare JID on XMPP, an email on Webex, `console` on the console).
    pub id: Arc<str>,
    /// Display name (the nick on IRC).
    pub name: Arc<str>,
    /// Whether the service vouches for `id` (see [`crate::transport::Identity`]). An id the
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

/// A message heard by a transport, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub text: String,
    /// The framework's own answer to a user's command (an apology, "unavailable", a usage
    /// line, a refusal): never taken for a loop, however often it repeats.
    pub(crate) answer: bool,
}

impl Outgoing {
    /// A new outgoing message.
    pub fn new(dest: Destination, text: impl Into<String>) -> Self {
        Self {
            dest,
            text: text.into(),
            answer: false,
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
