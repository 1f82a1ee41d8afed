//! Conversations: a handler's question waiting for its answer from one person in one place
//! ([`crate::Context::ask`]).
//!
//! The router hands a waiting question the next message of that person in that place (after
//! the bot's name, if they addressed it), unless it is a command (it starts with the prefix):
//! commands keep working while a question is open. Another person's words never answer it.
//! Open questions are bounded per person and per bot; each one is closed when it is answered,
//! cancelled, timed out, or dropped with its handler's invocation (a crash, a timeout), so a
//! question never outlives the code that asked it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::message::Destination;

/// The most questions one person may have open with one bot.
pub const PER_PERSON: usize = 3;
/// The most questions open with one bot.
pub const PER_BOT: usize = 100;

/// Why a question got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unanswered {
    /// No answer came in time.
    #[error("no answer within {}", humanize(*.0))]
    TimedOut(Duration),
    /// The person cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Too many questions are open (for the person, or the bot).
    #[error("too many questions are open; answer or cancel one first")]
    TooMany,
    /// There is nobody to ask (a poller's context).
    #[error("there is nobody to ask")]
    NoOne,
}

impl From<Unanswered> for crate::error::Error {
    /// The person has been told already.
    fn from(e: Unanswered) -> Self {
        Self::Told(e.to_string())
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", s.max(1))
    }
}

/// Who is waiting for whom, where.
type Key = (Arc<str>, Destination);

/// The open questions of one bot.
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    open: Mutex<HashMap<Key, (u64, oneshot::Sender<String>)>>,
    next: AtomicU64,
}

/// An open question; dropping it closes the question.
#[derive(Debug)]
pub(crate) struct Question {
    book: Arc<Conversations>,
    key: Key,
    n: u64,
    pub(crate) answer: oneshot::Receiver<String>,
}

impl Drop for Question {
    fn drop(&mut self) {
        let mut open = self.book.open.lock().unwrap_or_else(|p| p.into_inner());
        // Only this question: a later one in the same place is not closed by this one's end.
        if open.get(&self.key).is_some_and(|(n, _)| *n == self.n) {
            open.remove(&self.key);
        }
    }
}

impl Conversations {
    /// Opens a question for `person` in `place`; a question already open there is replaced
    /// (its asker hears nothing more and ends as cancelled).
    pub(crate) fn open(
        self: &Arc<Self>,
        person: Arc<str>,
        place: Destination,
    ) -> Result<Question, Unanswered> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let key = (person, place);
        if !open.contains_key(&key) {
            let theirs = open.keys().filter(|(p, _)| *p == key.0).count();
            if theirs >= PER_PERSON || open.len() >= PER_BOT {
                return Err(Unanswered::TooMany);
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        open.insert(key.clone(), (n, tx));
        Ok(Question {
            book: self.clone(),
            key,
            n,
            answer: rx,
        })
    }

    /// Gives `text` to the question `person` has open in `place`, if any; answers whether it
    /// was taken.
    pub(crate) fn answer(&self, person: &Arc<str>, place: &Destination, text: &str) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.remove(&(person.clone(), place.clone())) {
            Some((_, tx)) => tx.send(text.to_owned()).is_ok(),
            None => false,
        }
    }

    /// How many questions are open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Time a handler spends waiting for people, which its timeout does not count: the
/// invocation's deadline moves out by it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Allowance(Arc<AtomicU64>);

impl Allowance {
    pub(crate) fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Acquire))
    }

    pub(crate) fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::AcqRel);
    }

    pub(crate) fn take_back(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(ms))
            });
    }

    /// Runs `fut` for at most `base` plus the allowance (read again whenever the time is up,
    /// since it may have grown meanwhile); `Err` when that time passed first.
    pub(crate) async fn within<F: std::future::Future>(
        &self,
        base: Duration,
        fut: F,
    ) -> Result<F::Output, ()> {
        let start = tokio::time::Instant::now();
        tokio::pin!(fut);
        loop {
            let deadline = start + base + self.get();
            match tokio::time::timeout_at(deadline, &mut fut).await {
                Ok(v) => return Ok(v),
                Err(_) if tokio::time::Instant::now() >= start + base + self.get() => {
                    return Err(());
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_bounded_and_closed_when_dropped() {
        let c = Arc::new(Conversations::default());
        let alice: Arc<str> = "alice".into();
        let qs: Vec<Question> = (0..PER_PERSON)
            .map(|i| {
                c.open(alice.clone(), Destination::room(format!("#r{i}")))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            c.open(alice.clone(), Destination::room("#more"))
                .unwrap_err(),
            Unanswered::TooMany
        );
        // Another person is not held by alice's count.
        let bob = c.open("bob".into(), Destination::room("#r0")).unwrap();
        assert!(!c.answer(&"bob".into(), &Destination::room("#r1"), "x"));
        drop(qs);
        assert_eq!(c.len(), 1);
        assert!(c.answer(&"bob".into(), &Destination::room("#r0"), "yes"));
        let mut bob = bob;
        assert_eq!(bob.answer.try_recv().unwrap(), "yes");
    }

    #[test]
    fn a_replaced_question_does_not_close_its_successor() {
        let c = Arc::new(Conversations::default());
        let first = c.open("a".into(), Destination::room("#r")).unwrap();
        let _second = c.open("a".into(), Destination::room("#r")).unwrap();
        drop(first);
        assert_eq!(c.len(), 1);
    }
}
