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
//!
//! The file is private: created `0600` in folders created `0700` (an existing file readable by
//! others is made `0600`, with a warning). A file that cannot be read as a store (damaged on
//! disk, or not a store at all) is moved aside, never deleted (`state.redb.damaged-<unix
//! time>`), and a new one is started in its place; [`Store::trouble`] says what happened, and
//! bots show it. When not even that works, [`Store::in_memory`] keeps the bots running on a
//! store that lasts as long as the process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

mod records;
pub use records::{Journal, Records};

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
    /// What went wrong opening it, if anything did.
    trouble: Option<Arc<str>>,
    persistent: bool,
}

/// An open file and what happened opening it, shared by the bots of one process.
type Opened = (PathBuf, Weak<Database>, Option<Arc<str>>);

/// Creates `dir` and its missing parents, private to the process's user.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates the file `0600` if it is missing; makes it so if others may read it.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the state store was readable by others; it is now 0600"
            );
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Opens the database at `path` with its tables.
fn open_db(path: &Path) -> Result<Database, redb::Error> {
    let db = Database::create(path)?;
    tables(&db)?;
    Ok(db)
}

fn tables(db: &Database) -> Result<(), redb::Error> {
    let w = db.begin_write()?;
    w.open_table(SEEN)?;
    w.open_table(PRIMED)?;
    w.open_table(HEALING)?;
    w.commit()?;
    Ok(())
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
        static OPEN: Mutex<Vec<Opened>> = Mutex::new(Vec::new());
        let err = |message: String| StoreError {
            path: path.to_owned(),
            message,
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            private_dir(parent).map_err(|e| err(format!("cannot create directory: {e}")))?;
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
        open.retain(|(_, db, _)| db.strong_count() > 0);
        if let Some((db, trouble)) = open
            .iter()
            .find(|(p, _, _)| *p == key)
            .and_then(|(_, db, t)| Some((db.upgrade()?, t.clone())))
        {
            return Ok(Self {
                db,
                path: path.to_owned(),
                trouble,
                persistent: true,
            });
        }
        private_file(path).map_err(|e| err(e.to_string()))?;
        let mut trouble = None;
        let db = match open_db(path) {
            Ok(db) => db,
            Err(redb::Error::DatabaseAlreadyOpen) => {
                return Err(err("already in use by another process (is another opsbot running with the same state path?)".into()));
            }
            Err(e) => {
                // Damaged, or not a store: keep it for whoever wants to look, start afresh.
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".damaged-{stamp}"));
                let aside = PathBuf::from(aside);
                std::fs::rename(path, &aside)
                    .map_err(|r| err(format!("cannot be read ({e}), nor moved aside: {r}")))?;
                private_file(path).map_err(|e| err(e.to_string()))?;
                let db = open_db(path).map_err(|e| err(e.to_string()))?;
                let why = format!(
                    "{} could not be read ({e}); it was moved aside to {} and a new store started: \
                     pollers prime again, and the healing log starts empty",
                    path.display(),
                    aside.display()
                );
                tracing::error!("state store: {why}");
                trouble = Some(Arc::from(why));
                db
            }
        };
        let db = Arc::new(db);
        open.push((key, Arc::downgrade(&db), trouble.clone()));
        Ok(Self {
            db,
            path: path.to_owned(),
            trouble,
            persistent: true,
        })
    }

    /// A store that lasts as long as the process, for bots whose file could not be opened;
    /// `why` is shown as its trouble.
    pub fn in_memory(why: impl Into<String>) -> Self {
        let why = why.into();
        tracing::error!("state store: {why}; keeping it in memory");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database");
        tables(&db).expect("tables in memory");
        Self {
            db: Arc::new(db),
            path: PathBuf::from(":memory:"),
            trouble: Some(Arc::from(format!(
                "{why}; kept in memory: pollers prime again after a restart"
            ))),
            persistent: false,
        }
    }

    /// What went wrong opening the store, if anything did.
    pub fn trouble(&self) -> Option<&str> {
        self.trouble.as_deref()
    }

    /// Whether it is on disk (else in memory, see [`Store::in_memory`]).
    pub fn is_persistent(&self) -> bool {
        self.persistent
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

    #[cfg(unix)]
    #[test]
    fn the_store_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/folder/state.redb");
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new/folder")), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        // A store left readable by others (as it used to be made) is closed up.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(store.trouble().is_none());
    }

    /// A damaged file made every bot with pollers fail to build, and under `Restart=always` the
    /// whole process looped with every bot down. Now it is moved aside, never deleted, and a
    /// new store starts; the trouble says so.
    #[test]
    fn a_damaged_store_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let junk = b"this is not a redb file\0\x01\x02".repeat(1000);
        std::fs::write(&path, &junk).unwrap();
        let store = Store::open(&path).unwrap();
        let trouble = store.trouble().unwrap().to_owned();
        assert!(trouble.contains("moved aside to"), "{trouble}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), junk, "kept as it was");
        assert_eq!(store.observe("b/p", &ids(&["1"]), KEEP).unwrap(), [false]);
        assert_eq!(
            store.observe("b/p", &ids(&["1", "2"]), KEEP).unwrap(),
            [false, true]
        );
        // Another bot of the process opening it is told the same.
        assert_eq!(
            Store::open(&path).unwrap().trouble(),
            Some(trouble.as_str())
        );
        drop(store);
        // And the next start finds a good store.
        assert!(Store::open(&path).unwrap().trouble().is_none());
    }

    #[test]
    fn a_store_in_memory_works_and_says_why() {
        let store = Store::in_memory("the disk is gone");
        assert!(!store.is_persistent());
        assert!(
            store
                .trouble()
                .unwrap()
                .starts_with("the disk is gone; kept in memory")
        );
        assert_eq!(store.observe("b/p", &ids(&["1"]), KEEP).unwrap(), [false]);
        assert_eq!(
            store.observe("b/p", &ids(&["1", "2"]), KEEP).unwrap(),
            [false, true]
        );
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
