//! The audit trail: every step of the engine (received, matched, planned, asked, approved,
//! denied, expired, started, finished, failed, overridden, reloaded) as an entry with who and
//! why, persisted in the state store and hash-chained: each entry carries the SHA-256 of the
//! one before it, so an entry edited or removed in the file is found by [`Audit::verify`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use opsbot::store::{Journal, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The journal's name in the state store.
pub const JOURNAL: &str = "engine.audit";

/// The hash the first entry chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One step, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its place in the trail, from 0.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened (`received`, `matched`, `approved`, …).
    pub step: String,
    /// Who did it: a chat identity, `alertmanager`, a source's name, or `engine`.
    pub who: String,
    /// What it is about: an action's id, a group key, a rule's name.
    pub subject: String,
    /// Why, or what was seen.
    pub detail: String,
    /// The hash of the entry before (of [`GENESIS`] for the first).
    pub prev: String,
    /// This entry's hash: SHA-256 over `prev` and the fields above.
    pub hash: String,
}

impl Entry {
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        // Each field with its length first, so no two entries hash alike by moving a
        // boundary between fields.
        for part in [
            self.prev.as_bytes(),
            &self.seq.to_be_bytes(),
            &self.at_ms.to_be_bytes(),
            self.step.as_bytes(),
            self.who.as_bytes(),
            self.subject.as_bytes(),
            self.detail.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trail, in a store.
#[derive(Clone, Debug)]
pub struct Audit {
    journal: Journal,
}

/// A failure to write or read the trail.
pub type AuditError = opsbot::store::StoreError;

impl Audit {
    /// The trail in `store`.
    pub fn new(store: &Store) -> Self {
        Self {
            journal: store.journal(JOURNAL),
        }
    }

    /// Appends a step; answers its entry.
    pub fn record(
        &self,
        step: &str,
        who: &str,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut written = None;
        self.journal.append(|seq, last| {
            let prev = last
                .and_then(|l| serde_json::from_slice::<Entry>(l).ok())
                .map_or_else(|| GENESIS.to_owned(), |e| e.hash);
            let mut e = Entry {
                seq,
                at_ms,
                step: step.to_owned(),
                who: who.to_owned(),
                subject: subject.to_owned(),
                detail: detail.to_owned(),
                prev,
                hash: String::new(),
            };
            e.hash = e.digest();
            let bytes = serde_json::to_vec(&e).expect("an entry serialises");
            written = Some(e);
            bytes
        })?;
        Ok(written.expect("append calls its builder"))
    }

    /// At most `limit` of the newest entries, newest first (unreadable ones left out).
    pub fn newest(&self, limit: usize) -> Result<Vec<Entry>, AuditError> {
        Ok(self
            .journal
            .newest(limit)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// Checks the whole chain; answers how many entries it holds.
    pub fn verify(&self) -> Result<u64, Broken> {
        let mut prev = GENESIS.to_owned();
        let mut expected = 0u64;
        loop {
            let batch = self.journal.read(expected, 1024).map_err(|e| Broken {
                seq: expected,
                why: e.to_string(),
            })?;
            if batch.is_empty() {
                return Ok(expected);
            }
            for (seq, bytes) in batch {
                let bad = |why: String| Broken { seq, why };
                if seq != expected {
                    return Err(Broken {
                        seq: expected,
                        why: format!("missing (the next entry is {seq})"),
                    });
                }
                let e: Entry = serde_json::from_slice(&bytes)
                    .map_err(|err| bad(format!("unreadable: {err}")))?;
                if e.seq != seq {
                    return Err(bad(format!("says it is entry {}", e.seq)));
                }
                if e.prev != prev {
                    return Err(bad("does not chain to the entry before it".into()));
                }
                if e.digest() != e.hash {
                    return Err(bad("its content does not match its hash (edited)".into()));
                }
                prev = e.hash;
                expected += 1;
            }
        }
    }
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The first bad entry.
    pub seq: u64,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit entry {}: {}", self.seq, self.why)
    }
}

impl std::error::Error for Broken {}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail() -> (Store, Audit) {
        let store = Store::in_memory("test");
        let audit = Audit::new(&store);
        for i in 0..5 {
            audit
                .record("received", "alertmanager", &format!("g{i}"), "firing")
                .unwrap();
        }
        (store, audit)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (_, audit) = trail();
        assert_eq!(audit.verify(), Ok(5));
        let newest = audit.newest(2).unwrap();
        assert_eq!(newest[0].seq, 4);
        assert_eq!(newest[0].prev, newest[1].hash);
    }

    #[test]
    fn an_edited_entry_is_named() {
        let (store, audit) = trail();
        let j = store.journal(JOURNAL);
        let (_, bytes) = j.read(2, 1).unwrap().remove(0);
        let mut e: Entry = serde_json::from_slice(&bytes).unwrap();
        e.who = "mallory".into();
        j.overwrite(2, &serde_json::to_vec(&e).unwrap()).unwrap();
        let broken = audit.verify().unwrap_err();
        assert_eq!(broken.seq, 2, "{broken}");
        assert!(broken.why.contains("edited"), "{broken}");
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let (store, audit) = trail();
        let j = store.journal(JOURNAL);
        let (_, bytes) = j.read(1, 1).unwrap().remove(0);
        let mut e: Entry = serde_json::from_slice(&bytes).unwrap();
        e.detail = "resolved".into();
        e.hash = e.digest();
        j.overwrite(1, &serde_json::to_vec(&e).unwrap()).unwrap();
        let broken = audit.verify().unwrap_err();
        assert_eq!(broken.seq, 2, "{broken}");
        assert!(broken.why.contains("chain"), "{broken}");
    }

    #[test]
    fn relinking_the_next_entry_to_an_edit_is_found_too() {
        let (store, audit) = trail();
        let j = store.journal(JOURNAL);
        let read =
            |seq| -> Entry { serde_json::from_slice(&j.read(seq, 1).unwrap()[0].1).unwrap() };
        let mut edited = read(1);
        edited.detail = "resolved".into();
        edited.hash = edited.digest();
        j.overwrite(1, &serde_json::to_vec(&edited).unwrap())
            .unwrap();
        // The next entry pointed at the edit: its own hash covers the link it carries.
        let mut next = read(2);
        next.prev = edited.hash.clone();
        j.overwrite(2, &serde_json::to_vec(&next).unwrap()).unwrap();
        let broken = audit.verify().unwrap_err();
        assert_eq!(broken.seq, 2, "{broken}");
    }

    #[test]
    fn moving_a_field_boundary_changes_the_hash() {
        let (_, audit) = trail();
        let mut a = audit.newest(1).unwrap().remove(0);
        let h = a.digest();
        a.step = "receive".into();
        a.who = "dalertmanager".into();
        assert_ne!(a.digest(), h);
    }
}
