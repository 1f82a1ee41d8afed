//! Who speaks for a bot when several processes carry it (active/standby).
//!
//! A [`Lead`] is given to a bot by whatever elects one process among several (the cluster's
//! lease on NATS, in `opsbot-engine`); the framework only obeys it. While this process does not
//! hold the lead, the bot's transport does not connect, what it hears is not routed, and what
//! it is asked to say is not queued; when the lead is lost, the transport's session ends at
//! once and no line is handed to it. A lead is held *until an instant*: the elector grants it
//! up to the moment its lease could have expired for the others, so a process that was frozen
//! (SIGSTOP) or cut off finds the lead gone the moment it runs again, before its elector has
//! had a chance to say so.
//!
//! A bot given no lead ([`Lead::always`], the default) holds it for ever, at no cost.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

/// Who holds a bot's lead, as the elector last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's id (its host and process, as the elector names it).
    pub id: String,
    /// Since when it holds the lead.
    pub since: SystemTime,
}

/// The most characters of a holder's id that are kept: it comes from whoever wrote the lease,
/// and it is shown in `!status`, the status API and the page.
pub const MAX_HOLDER_ID: usize = 128;

impl Holder {
    /// A holder. Its id is kept printable and at most [`MAX_HOLDER_ID`] characters (a longer
    /// one is cut and ends with `…`).
    pub fn new(id: impl Into<String>, since: SystemTime) -> Self {
        let id = crate::text::printable(&id.into());
        let id = if id.chars().count() > MAX_HOLDER_ID {
            let mut cut: String = id.chars().take(MAX_HOLDER_ID - 1).collect();
            cut.push('…');
            cut
        } else {
            id
        };
        Self { id, since }
    }
}

/// What `!status`, the status API and the page show of a bot's lead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeadStatus {
    /// This process's id, as the elector names it.
    pub me: String,
    /// Whether this process holds the lead now.
    pub held: bool,
    /// Who holds it, if anyone is known to.
    pub holder: Option<Holder>,
}

#[derive(Debug, Default)]
struct State {
    /// Held until then; `None`: not held.
    until: Option<Instant>,
    holder: Option<Holder>,
}

#[derive(Debug)]
struct Shared {
    me: String,
    state: watch::Sender<State>,
    /// The same instant as `state.until`, read without the watch's lock on every delivery.
    until: Mutex<Option<Instant>>,
}

/// A bot's lead: held for ever ([`Lead::always`]), or granted and taken back by an elector.
/// Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Lead(Option<Arc<Shared>>);

impl Lead {
    /// The lead of a bot that is alone: always held.
    pub fn always() -> Self {
        Self(None)
    }

    /// A lead that an elector grants; not held until it does. `me` names this process in
    /// `!status`.
    pub fn elected(me: impl Into<String>) -> Self {
        Self(Some(Arc::new(Shared {
            me: me.into(),
            state: watch::Sender::new(State::default()),
            until: Mutex::new(None),
        })))
    }

    /// Whether an elector decides this lead (it is not [`Lead::always`]).
    pub fn is_elected(&self) -> bool {
        self.0.is_some()
    }

    /// Grants (or extends) the lead until `until`, and says who holds it (this process).
    pub fn grant(&self, until: Instant, since: SystemTime) {
        let Some(s) = &self.0 else { return };
        *s.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        let me = s.me.clone();
        s.state.send_modify(|st| {
            st.until = Some(until);
            if st.holder.as_ref().is_none_or(|h| h.id != me) {
                st.holder = Some(Holder::new(me, since));
            }
        });
    }

    /// Takes the lead back at once; `holder` is who holds it now, if known.
    pub fn revoke(&self, holder: Option<Holder>) {
        let Some(s) = &self.0 else { return };
        *s.until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        s.state.send_modify(|st| {
            st.until = None;
            st.holder = holder;
        });
    }

    /// Whether this process holds the lead now.
    pub fn holds(&self) -> bool {
        let Some(s) = &self.0 else { return true };
        s.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    /// Resolves once this process holds the lead.
    pub async fn held(&self) {
        let Some(s) = &self.0 else { return };
        let mut rx = s.state.subscribe();
        loop {
            if self.holds() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once this process no longer holds the lead: taken back, or run out.
    pub async fn lost(&self) {
        let Some(s) = &self.0 else {
            return std::future::pending().await;
        };
        let mut rx = s.state.subscribe();
        loop {
            let until = *s.until.lock().unwrap_or_else(|p| p.into_inner());
            let Some(until) = until.filter(|u| Instant::now() < *u) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                r = rx.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        }
    }

    /// What `!status` shows; `None` for a bot that is alone.
    pub fn status(&self) -> Option<LeadStatus> {
        let s = self.0.as_ref()?;
        let held = self.holds();
        // A lead run out by itself is nobody's that this process knows of, until the elector
        // learns who took it.
        let holder = s
            .state
            .borrow()
            .holder
            .clone()
            .filter(|h| held || h.id != s.me);
        Some(LeadStatus {
            me: s.me.clone(),
            held,
            holder,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_holders_id_from_outside_is_printable_and_bounded() {
        let h = Holder::new(
            format!("a\u{202e}b\n{}", "x".repeat(500)),
            SystemTime::now(),
        );
        assert_eq!(h.id.chars().count(), MAX_HOLDER_ID);
        assert!(h.id.starts_with("ab") && h.id.ends_with('…'));
        assert_eq!(Holder::new("host:41", SystemTime::now()).id, "host:41");
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bot_alone_always_holds_its_lead() {
        let l = Lead::always();
        assert!(l.holds());
        assert!(l.status().is_none());
        l.revoke(None);
        assert!(l.holds());
    }

    #[test]
    fn an_elected_lead_is_held_only_until_its_instant() {
        let l = Lead::elected("a:1");
        assert!(!l.holds());
        l.grant(Instant::now() + Duration::from_secs(60), SystemTime::now());
        assert!(l.holds());
        let st = l.status().unwrap();
        assert!(st.held);
        assert_eq!(st.holder.unwrap().id, "a:1");
        // Run out (a frozen process wakes up past it): not held, with nobody saying so, and
        // not shown as held by this process either.
        l.grant(Instant::now(), SystemTime::now());
        assert!(!l.holds());
        assert_eq!(l.status().unwrap().holder, None);
        l.grant(Instant::now() + Duration::from_secs(60), SystemTime::now());
        l.revoke(Some(Holder::new("b:2", SystemTime::now())));
        assert!(!l.holds());
        let st = l.status().unwrap();
        assert!(!st.held);
        assert_eq!(st.holder.unwrap().id, "b:2");
    }

    #[tokio::test]
    async fn waiting_for_the_lead_and_for_its_loss() {
        let l = Lead::elected("a:1");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.held().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        l.grant(
            Instant::now() + Duration::from_millis(200),
            SystemTime::now(),
        );
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("granted: the wait ends")
            .unwrap();
        // Nobody revokes it: it runs out by itself.
        tokio::time::timeout(Duration::from_secs(5), l.lost())
            .await
            .expect("it runs out");
        assert!(!l.holds());
        // Revoked: lost at once.
        l.grant(Instant::now() + Duration::from_secs(600), SystemTime::now());
        let lost = tokio::spawn({
            let l = l.clone();
            async move { l.lost().await }
        });
        tokio::task::yield_now().await;
        assert!(!lost.is_finished());
        l.revoke(None);
        tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .expect("revoked: lost")
            .unwrap();
    }
}
