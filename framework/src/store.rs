//! The state store: pollers' seen-indexes and the process's healing log, on disk.
//!
//! Backed by redb: an embedded, pure-Rust key-value store with ACID transactions and
//! copy-on-write B-trees. Chosen over SQLite because the data is a plain set of keys (no queries
//! to write), it needs no C toolchain in the build, and a crash mid-write can never leave a
//! half-written index that would make a poller re-announce old items.
//!
//! Keys are `scope \0 id`, where the scope is `bot/poller`; every id seen in the latest poll is
//! stamped with the time, and ids absent from the feed for longer than the retention period are
//! pruned, so the index stays the size of what the sources show.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
const PRIMED: TableDefinition<&str, u64> = TableDefinition::new("primed");
/// The healing log: sequence number → (unix milliseconds, bot, subsystem, action, detail,
/// resulting state).
const HEALING: TableDefinition<u64, (u64, &str, &str, &str, &str, &str)> =
    TableDefinition::new("healing_log");

/// One persisted healing-log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealingRecord {
    /// Its place in the log (grows by one per entry, over restarts too).
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The bot.
    pub bot: String,
    /// Which part of it (`handler:echo`, `transport`, `breaker:api.example.com`, `health`).
    pub subsystem: String,
    /// What happened or was done (`restart`, `reconnect`, `heal`, `state`).
    pub action: String,
    /// Why, and what comes next.
    pub detail: String,
    /// The bot's state right after (`healthy`, `degraded`, ...).
    pub state: String,
}

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

/// The on-disk state store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: Arc<Database>,
    path: PathBuf,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (or creates) the store at `path`, creating missing parent directories.
    ///
    /// Bots of one process that name the same file share one open database (a file can be open
    /// only once); their scopes keep their indexes apart. Another process that holds the file
    /// makes this fail with a clear error.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        static OPEN: Mutex<Vec<(PathBuf, Weak<Database>)>> = Mutex::new(Vec::new());
        let err = |message: String| StoreError {
            path: path.to_owned(),
            message,
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("cannot create directory: {e}")))?;
        }
        let key = match (parent.map(Path::canonicalize), path.file_name()) {
            (Some(Ok(dir)), Some(file)) => dir.join(file),
            _ => std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_owned()),
        };
        let mut open = OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|(_, db)| db.strong_count() > 0);
        if let Some(db) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, db)| db.upgrade())
        {
            return Ok(Self {
                db,
                path: path.to_owned(),
            });
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                err("already in use by another process (is another opsbot running with the same state path?)".into())
            }
            e => err(e.to_string()),
        })?;
        let w = db.begin_write().map_err(|e| err(e.to_string()))?;
        w.open_table(SEEN).map_err(|e| err(e.to_string()))?;
        w.open_table(PRIMED).map_err(|e| err(e.to_string()))?;
        w.open_table(HEALING).map_err(|e| err(e.to_string()))?;
        w.commit().map_err(|e| err(e.to_string()))?;
        let db = Arc::new(db);
        open.push((key, Arc::downgrade(&db)));
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Records a poll of `scope` that returned `ids`; answers which of them are new, in order.
    /// Ids that have been absent from the source for longer than `retain` are forgotten (an id
    /// that comes back after that is announced again).
    ///
    /// On the very first poll of a scope nothing is new: the index is primed with what the
    /// source already shows, so a bot's first start does not flood a room with old items.
    pub fn observe(
        &self,
        scope: &str,
        ids: &[String],
        retain: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.observe_at(now_secs(), scope, ids, retain)
    }

    fn observe_at(
        &self,
        now: u64,
        scope: &str,
        ids: &[String],
        retain: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        let fresh;
        {
            let mut primed = w.open_table(PRIMED).map_err(|e| self.err(e))?;
            let first = primed.get(scope).map_err(|e| self.err(e))?.is_none();
            if first {
                primed.insert(scope, now).map_err(|e| self.err(e))?;
            }
            let mut seen = w.open_table(SEEN).map_err(|e| self.err(e))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let key = format!("{scope}\0{id}");
                let known = seen
                    .insert(key.as_str(), now)
                    .map_err(|e| self.err(e))?
                    .is_some();
                out.push(!first && !known);
            }
            // Prune ids that left the source long ago.
            let lo = format!("{scope}\0");
            let hi = format!("{scope}\u{1}");
            let cutoff = now.saturating_sub(retain.as_secs());
            let stale: Vec<String> = seen
                .range(lo.as_str()..hi.as_str())
                .map_err(|e| self.err(e))?
                .filter_map(Result::ok)
                .filter(|(_, t)| t.value() < cutoff)
                .map(|(k, _)| k.value().to_owned())
                .collect();
            for k in stale {
                seen.remove(k.as_str()).map_err(|e| self.err(e))?;
            }
            fresh = out;
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok(fresh)
    }

    /// Appends healing-log entries (their `seq` is given here), then drops the oldest so
    /// that at most `cap` remain; answers the next sequence number.
    pub fn append_healing(
        &self,
        records: &mut [HealingRecord],
        cap: usize,
    ) -> Result<u64, StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        let next;
        {
            let mut t = w.open_table(HEALING).map_err(|e| self.err(e))?;
            let mut seq = t
                .last()
                .map_err(|e| self.err(e))?
                .map_or(0, |(k, _)| k.value() + 1);
            for r in records.iter_mut() {
                r.seq = seq;
                let v = (
                    r.at_ms,
                    r.bot.as_str(),
                    r.subsystem.as_str(),
                    r.action.as_str(),
                    r.detail.as_str(),
                    r.state.as_str(),
                );
                t.insert(seq, v).map_err(|e| self.err(e))?;
                seq += 1;
            }
            next = seq;
            let len = t.len().map_err(|e| self.err(e))? as usize;
            if len > cap {
                let excess = (len - cap) as u64;
                let first = t
                    .first()
                    .map_err(|e| self.err(e))?
                    .map_or(0, |(k, _)| k.value());
                t.retain_in(first..first + excess, |_, _| false)
                    .map_err(|e| self.err(e))?;
                // Keys are dense, so this leaves `cap`; a gap would only keep more.
            }
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok(next)
    }

    /// The newest healing-log entries, newest first: at most `limit`, of `bot` only if given.
    pub fn read_healing(
        &self,
        limit: usize,
        bot: Option<&str>,
    ) -> Result<Vec<HealingRecord>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(HEALING).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (at_ms, b, subsystem, action, detail, state) = v.value();
            if bot.is_some_and(|want| want != b) {
                continue;
            }
            out.push(HealingRecord {
                seq: k.value(),
                at_ms,
                bot: b.to_owned(),
                subsystem: subsystem.to_owned(),
                action: action.to_owned(),
                detail: detail.to_owned(),
                state: state.to_owned(),
            });
        }
        Ok(out)
    }

    /// How many healing-log entries are kept.
    pub fn healing_len(&self) -> Result<usize, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(HEALING).map_err(|e| self.err(e))?;
        Ok(t.len().map_err(|e| self.err(e))? as usize)
    }

    /// How many ids the index holds for `scope`.
    pub fn seen_count(&self, scope: &str) -> Result<usize, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let seen = r.open_table(SEEN).map_err(|e| self.err(e))?;
        let lo = format!("{scope}\0");
        let hi = format!("{scope}\u{1}");
        Ok(seen
            .range(lo.as_str()..hi.as_str())
            .map_err(|e| self.err(e))?
            .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_poll_primes_then_only_new_ids_are_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.observe("b/p", &ids(&["1", "2"]), KEEP).unwrap(),
            [false, false]
        );
        assert_eq!(
            store.observe("b/p", &ids(&["1", "2", "3"]), KEEP).unwrap(),
            [false, false, true]
        );
        // Scopes are independent.
        assert_eq!(store.observe("b/q", &ids(&["3"]), KEEP).unwrap(), [false]);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.observe("b/p", &ids(&["3", "4"]), KEEP).unwrap(),
            [false, true]
        );
        assert_eq!(store.seen_count("b/p").unwrap(), 4);
    }

    #[test]
    fn ids_gone_longer_than_the_retention_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let day = 24 * 3600;
        let keep = Duration::from_secs(7 * day);
        let t0 = 1_000_000_000;
        store
            .observe_at(t0, "b/p", &ids(&["old", "kept"]), keep)
            .unwrap();
        // "old" leaves the feed; "kept" stays in it.
        store
            .observe_at(t0 + 6 * day, "b/p", &ids(&["kept"]), keep)
            .unwrap();
        assert_eq!(store.seen_count("b/p").unwrap(), 2, "six days: still known");
        store
            .observe_at(t0 + 8 * day, "b/p", &ids(&["kept"]), keep)
            .unwrap();
        assert_eq!(store.seen_count("b/p").unwrap(), 1, "eight days: forgotten");
        // An id still in the feed is never forgotten, and a forgotten one is news again.
        assert_eq!(
            store
                .observe_at(t0 + 9 * day, "b/p", &ids(&["kept", "old"]), keep)
                .unwrap(),
            [false, true]
        );
    }

    #[test]
    fn bots_of_one_process_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let a = Store::open(&path).unwrap();
        let b = Store::open(&dir.path().join(".").join("state.redb")).unwrap();
        a.observe("a/p", &ids(&["1"]), KEEP).unwrap();
        b.observe("b/p", &ids(&["1", "2"]), KEEP).unwrap();
        assert_eq!(a.seen_count("b/p").unwrap(), 2);
        assert_eq!(b.seen_count("a/p").unwrap(), 1);
        drop((a, b));
        // Once every handle is gone the file is closed, and opens again.
        assert_eq!(Store::open(&path).unwrap().seen_count("a/p").unwrap(), 1);
    }

    #[test]
    fn a_file_held_elsewhere_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        // Another holder of the file lock (as another process would be).
        let _other = Database::create(&path).unwrap();
        let e = Store::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("state.redb") && e.contains("already in use"),
            "{e}"
        );
    }
}
