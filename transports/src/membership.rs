//! Membership of one room (an IRC channel, an XMPP MUC room): the one state machine of every
//! transport that joins rooms.
//!
//! ```text
//!            join sent             answered: in
//!  Joining ───────────► Joining ─────────────────► Joined
//!  (due)                (sent)                        │
//!    ▲                    │ refused, or no answer      │ kicked, destroyed, parted
//!    │ retry_at           ▼ in the join timeout        ▼
//!    └────────────── Refused              Removed ──────► Joining (at rejoin_at)
//!                    (backoff doubles
//!                     at each refusal
//!                     in a row)
//! ```
//!
//! A join that retries a refusal carries the refusal's backoff, so that the next refusal
//! doubles it (up to [`crate::common::RETRY_MAX`]); a join that gets in forgets it. Lines for a
//! room being joined wait at the outbox's gate ([`Membership::is_joining`]); lines for a room
//! the bot is kept out of are undeliverable. What each transport keeps about a join it sent
//! (`A`: the nick asked for, on XMPP) and about a room it is in (`J`) is its own.

use std::time::{Duration, Instant};

use crate::common::refusal_backoff;

/// Where a transport stands with one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Membership<J, A = ()> {
    /// A join due (`sent: None`) or sent and not yet answered; `retrying` is the backoff of
    /// the refusal this join retries.
    Joining {
        sent: Option<Instant>,
        asked: A,
        retrying: Option<Duration>,
    },
    /// In the room.
    Joined(J),
    /// Removed (kicked, the room destroyed, parted by someone else): join again at the
    /// instant.
    Removed { rejoin_at: Instant, why: String },
    /// The room refused the join: retry at the instant, `backoff` after the refusal.
    Refused {
        reason: String,
        retry_at: Instant,
        backoff: Duration,
    },
}

impl<J, A> Membership<J, A> {
    /// A join that is due (not sent yet), retrying the refusal whose backoff was `retrying`.
    pub(crate) fn due(asked: A, retrying: Option<Duration>) -> Self {
        Self::Joining {
            sent: None,
            asked,
            retrying,
        }
    }

    /// A join sent now.
    pub(crate) fn sent(asked: A, retrying: Option<Duration>) -> Self {
        Self::Joining {
            sent: Some(Instant::now()),
            asked,
            retrying,
        }
    }

    /// Whether a join is due or out: the outbox holds the room's lines meanwhile.
    pub(crate) fn is_joining(&self) -> bool {
        matches!(self, Self::Joining { .. })
    }

    /// Whether a join is out and waiting for its answer.
    pub(crate) fn awaiting(&self) -> bool {
        matches!(self, Self::Joining { sent: Some(_), .. })
    }

    /// Whether the bot is in the room.
    pub(crate) fn is_joined(&self) -> bool {
        matches!(self, Self::Joined(_))
    }

    /// Whether a join went out more than `timeout` ago and has no answer: a refusal.
    pub(crate) fn unanswered(&self, now: Instant, timeout: Duration) -> bool {
        matches!(self, Self::Joining { sent: Some(t), .. } if now.duration_since(*t) > timeout)
    }

    /// The backoff a join made now would carry: the refusal's, when the room refused the bot
    /// or this join retries a refusal.
    pub(crate) fn retrying(&self) -> Option<Duration> {
        match self {
            Self::Joining { retrying, .. } => *retrying,
            Self::Refused { backoff, .. } => Some(*backoff),
            Self::Joined(_) | Self::Removed { .. } => None,
        }
    }

    /// Whether it is time to join again (after a removal or a refusal).
    pub(crate) fn rejoin_due(&self, now: Instant) -> bool {
        match self {
            Self::Removed { rejoin_at, .. } => now >= *rejoin_at,
            Self::Refused { retry_at, .. } => now >= *retry_at,
            Self::Joining { .. } | Self::Joined(_) => false,
        }
    }

    /// The room refused the bot (or did not answer): `first` is the wait after a first
    /// refusal, doubled for each refusal in a row. Answers the wait.
    pub(crate) fn refuse(&mut self, reason: String, first: Duration) -> Duration {
        let backoff = refusal_backoff(self.retrying(), first);
        *self = Self::Refused {
            reason,
            retry_at: Instant::now() + backoff,
            backoff,
        };
        backoff
    }

    /// The bot was removed (`why`: kicked, destroyed); it joins again after `delay`.
    pub(crate) fn remove(&mut self, why: String, delay: Duration) {
        *self = Self::Removed {
            rejoin_at: Instant::now() + delay,
            why,
        };
    }

    /// One room in `!status`: `#ops joining`, what `joined` says of a room the bot is in,
    /// `#ops kicked by alice, rejoin in 8s`, `#ops refused (banned), retry in 60s`.
    pub(crate) fn describe(&self, name: &str, joined: impl FnOnce(&J) -> String) -> String {
        let now = Instant::now();
        match self {
            Self::Joining { .. } => format!("{name} joining"),
            Self::Joined(j) => joined(j),
            Self::Removed { rejoin_at, why } => format!(
                "{name} {why}, rejoin in {}s",
                rejoin_at.saturating_duration_since(now).as_secs()
            ),
            Self::Refused {
                reason, retry_at, ..
            } => format!(
                "{name} refused ({reason}), retry in {}s",
                retry_at.saturating_duration_since(now).as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Room = Membership<&'static str>;

    #[test]
    fn refusals_in_a_row_double_the_backoff_and_getting_in_forgets_it() {
        let first = Duration::from_secs(60);
        let mut room = Room::sent((), None);
        assert!(room.is_joining() && room.awaiting());
        assert_eq!(room.refuse("banned".into(), first), first);
        assert!(!room.is_joining() && !room.rejoin_due(Instant::now()));
        // The retry carries the backoff; a second refusal doubles it.
        room = Room::sent((), room.retrying());
        assert_eq!(room.refuse("banned".into(), first), first * 2);
        room = Room::sent((), room.retrying());
        assert_eq!(room.refuse("no answer".into(), first), first * 4);
        // In at last: the next refusal starts from the first wait again.
        room = Room::Joined("in");
        assert_eq!(room.retrying(), None);
        assert_eq!(room.refuse("banned".into(), first), first);
    }

    #[test]
    fn a_removal_or_refusal_is_due_again_at_its_instant() {
        let mut room = Room::Joined("in");
        room.remove("kicked by alice".into(), Duration::ZERO);
        assert!(room.rejoin_due(Instant::now()));
        assert_eq!(room.retrying(), None, "a removal is not a refusal");
        assert!(
            room.describe("#ops", |j| j.to_string())
                .starts_with("#ops kicked by alice, rejoin in")
        );
        room.refuse("full".into(), Duration::from_secs(30));
        assert!(!room.rejoin_due(Instant::now()));
        assert!(room.rejoin_due(Instant::now() + Duration::from_secs(31)));
        assert!(
            room.describe("#ops", |j| j.to_string())
                .starts_with("#ops refused (full), retry in")
        );
    }

    #[test]
    fn only_a_sent_join_can_go_unanswered() {
        let due = Room::due((), None);
        assert!(due.is_joining() && !due.awaiting());
        let later = Instant::now() + Duration::from_secs(120);
        assert!(!due.unanswered(later, Duration::from_secs(60)));
        let sent = Room::sent((), None);
        assert!(!sent.unanswered(Instant::now(), Duration::from_secs(60)));
        assert!(sent.unanswered(later, Duration::from_secs(60)));
        assert_eq!(
            Room::Joined("x").describe("#a", |j| format!("#a {j}")),
            "#a x"
        );
    }
}
