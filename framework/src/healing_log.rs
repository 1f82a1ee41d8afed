//! The process's healing log on disk: every restart, reconnect, refusal, breaker transition,
//! forced heal and change of health of every bot, kept in the state store so that it is still
//! there after a restart of the process.
//!
//! Bots never wait for the disk: an entry is handed to a queue (a bounded channel, without
//! blocking) and a writer thread of its own commits whatever has queued up in one transaction.
//! A disk slow enough to fill the queue loses entries, counted and written down as one entry
//! once the disk is back, never a reply. The log keeps the newest `cap` entries (10,000 by
//! default, for the whole process); the oldest go first.
//!
//! Each bot also keeps its latest 200 entries in memory for `!status` (see
//! the bot's health record).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, UNIX_EPOCH};

pub use crate::store::HealingRecord;
use crate::store::{Store, StoreError};

/// How many entries the process keeps unless told otherwise.
pub const DEFAULT_CAP: usize = 10_000;

/// Entries that may wait for the writer; beyond, new ones are counted and dropped.
const QUEUE: usize = 4_096;

/// Entries per transaction at most.
const BATCH: usize = 1_024;

enum Msg {
    Entry(HealingRecord),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The persisted healing log. Cheap to clone; every clone writes to the same queue. When the
/// last clone goes (at the end of the process), the writer finishes what is queued and the
/// store is closed.
#[derive(Clone)]
pub struct HealingLog {
    tx: SyncSender<Msg>,
    store: Store,
    dropped: Arc<AtomicU64>,
    _writer: Arc<WriterThread>,
}

/// Joins the writer thread when the last [`HealingLog`] is dropped (its fields go in order:
/// the last sender first, so the writer has ended its loop), so that the store is closed and
/// can be opened again.
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for HealingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealingLog")
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl HealingLog {
    /// Keeps the log in `store`, at most `cap` entries, starting the writer thread.
    pub fn open(store: Store, cap: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            store: store.clone(),
            cap: cap.max(1),
            dropped: dropped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("healing-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx,
            store,
            dropped,
            _writer: Arc::new(WriterThread(Some(thread))),
        })
    }

    /// Queues `record` (its `seq` is given by the log when written); never waits.
    pub fn record(&self, record: HealingRecord) {
        match self.tx.try_send(Msg::Entry(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The newest entries, newest first: at most `limit`, of `bot` only if given. Entries
    /// still queued for the writer are not there yet (see [`HealingLog::flush`]).
    pub fn read(&self, limit: usize, bot: Option<&str>) -> Result<Vec<HealingRecord>, StoreError> {
        self.store.read_healing(limit, bot)
    }

    /// Entries kept on disk.
    pub fn len(&self) -> Result<usize, StoreError> {
        self.store.healing_len()
    }

    /// Whether nothing is kept on disk.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Waits until everything queued before this call is on disk, or `timeout`; answers
    /// whether it got there (at shutdown, so that the last entries survive the exit).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        rx.recv_timeout(left).is_ok()
    }
}

struct Writer {
    store: Store,
    cap: usize,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(self, rx: Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut waiting = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Entry(r) => batch.push(r),
                    Msg::Flush(w) => waiting.push(w),
                }
                if batch.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(lost, "healing log: entries lost while the disk was slow");
                batch.push(HealingRecord {
                    seq: 0,
                    at_ms: std::time::SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    bot: "*".into(),
                    subsystem: "healing-log".into(),
                    action: "lost".into(),
                    detail: format!("{lost} entries lost while the disk was slow"),
                    state: String::new(),
                });
            }
            if !batch.is_empty()
                && let Err(e) = self.store.append_healing(&mut batch, self.cap)
            {
                tracing::error!(error = %e, entries = batch.len(), "healing log: cannot write");
            }
            for w in waiting {
                let _ = w.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bot: &str, i: usize) -> HealingRecord {
        HealingRecord {
            seq: 0,
            at_ms: 0,
            bot: bot.into(),
            subsystem: "handler:boom".into(),
            action: "restart".into(),
            detail: format!("crash {i}"),
            state: "recovering".into(),
        }
    }

    #[test]
    fn a_stuck_disk_delays_the_log_and_never_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let log = HealingLog::open(store.clone(), DEFAULT_CAP).unwrap();
        // Another writer holds the database: the log's writer waits, as on a disk that hangs.
        let stuck = store.db.begin_write().unwrap();
        let started = std::time::Instant::now();
        for i in 0..3 * QUEUE {
            log.record(event("a", i));
        }
        // 12,288 entries queued or counted without waiting for the disk (a generous bound:
        // each is a channel send).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(log.len().unwrap(), 0, "nothing reached the disk yet");
        drop(stuck);
        assert!(log.flush(Duration::from_secs(20)));
        let kept = log.read(DEFAULT_CAP, None).unwrap();
        // What fitted in the queue (the writer may have taken a batch before it blocked), and
        // entries saying how many were lost (one per batch that saw new losses).
        let (losses, entries): (Vec<_>, Vec<_>) = kept.iter().partition(|r| r.action == "lost");
        let lost: usize = losses
            .iter()
            .map(|r| {
                r.detail
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert!(lost > 0, "the loss is written down");
        assert_eq!(entries.len() + lost, 3 * QUEUE);
    }

    #[test]
    fn the_log_survives_reopening_and_keeps_the_newest_cap_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let log = HealingLog::open(Store::open(&path).unwrap(), 100).unwrap();
            for i in 0..150 {
                log.record(event(if i % 2 == 0 { "a" } else { "b" }, i));
            }
            assert!(log.flush(Duration::from_secs(10)));
            assert_eq!(log.len().unwrap(), 100);
        }
        // Another process later: the same file, opened again.
        let log = HealingLog::open(Store::open(&path).unwrap(), 100).unwrap();
        let all = log.read(1_000, None).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].detail, "crash 149", "newest first");
        assert_eq!(all[99].detail, "crash 50", "the oldest 50 were dropped");
        assert_eq!(all[0].state, "recovering");
        let b = log.read(10, Some("b")).unwrap();
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|r| r.bot == "b"));
        // Numbering goes on after a restart.
        log.record(event("a", 150));
        assert!(log.flush(Duration::from_secs(10)));
        let newest = &log.read(1, None).unwrap()[0];
        assert_eq!(newest.seq, all[0].seq + 1);
        assert_eq!(log.len().unwrap(), 100);
    }
}
