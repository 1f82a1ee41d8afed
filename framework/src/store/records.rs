//! Tables for crates built on the framework, in the same file as the bots' own state: keyed
//! records (an action's idempotency record, created only if absent) and append-only journals
//! (an audit trail, each entry written knowing the one before it, in one transaction).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Store, StoreError};

/// Keyed records in a table of their own. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Records {
    store: Store,
    table: String,
}

/// An append-only journal: entries numbered from 0 in the order they were appended. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Journal {
    store: Store,
    table: String,
}

impl Store {
    /// The records table `name` (created on first write).
    pub fn records(&self, name: &str) -> Records {
        Records {
            store: self.clone(),
            table: format!("records:{name}"),
        }
    }

    /// The journal `name` (created on first write).
    pub fn journal(&self, name: &str) -> Journal {
        Journal {
            store: self.clone(),
            table: format!("journal:{name}"),
        }
    }
}

/// `def` of `store` for reading, or `None` while nothing was ever written to it.
fn readable<K: redb::Key + 'static, V: redb::Value + 'static>(
    store: &Store,
    def: TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    let r = store.db.begin_read().map_err(|e| store.err(e))?;
    match r.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(store.err(e)),
    }
}

impl Records {
    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    /// Writes `value` under `key`, replacing what was there.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let s = &self.store;
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        w.open_table(self.def())
            .map_err(|e| s.err(e))?
            .insert(key, value)
            .map_err(|e| s.err(e))?;
        w.commit().map_err(|e| s.err(e))
    }

    /// Writes `value` under `key` only if nothing is there; answers whether it did. Once this
    /// answers `true` the record is on disk.
    pub fn create(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let s = &self.store;
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        {
            let mut t = w.open_table(self.def()).map_err(|e| s.err(e))?;
            if t.get(key).map_err(|e| s.err(e))?.is_some() {
                return Ok(false);
            }
            t.insert(key, value).map_err(|e| s.err(e))?;
        }
        w.commit().map_err(|e| s.err(e))?;
        Ok(true)
    }

    /// The record under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let s = &self.store;
        let Some(t) = readable(s, self.def())? else {
            return Ok(None);
        };
        Ok(t.get(key)
            .map_err(|e| s.err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let s = &self.store;
        let Some(t) = readable(s, self.def())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| s.err(e))? {
            let (k, v) = item.map_err(|e| s.err(e))?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Removes the record under `key`; answers whether there was one.
    pub fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let s = &self.store;
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        let had = w
            .open_table(self.def())
            .map_err(|e| s.err(e))?
            .remove(key)
            .map_err(|e| s.err(e))?
            .is_some();
        w.commit().map_err(|e| s.err(e))?;
        Ok(had)
    }
}

impl Journal {
    fn def(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    /// Appends the entry `make` builds from its number and the last entry, in one transaction
    /// (so no other append comes between); answers its number.
    pub fn append(
        &self,
        make: impl FnOnce(u64, Option<&[u8]>) -> Vec<u8>,
    ) -> Result<u64, StoreError> {
        let s = &self.store;
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        let seq;
        {
            let mut t = w.open_table(self.def()).map_err(|e| s.err(e))?;
            let (next, entry) = match t.last().map_err(|e| s.err(e))? {
                Some((k, v)) => (k.value() + 1, make(k.value() + 1, Some(v.value()))),
                None => (0, make(0, None)),
            };
            seq = next;
            t.insert(seq, entry.as_slice()).map_err(|e| s.err(e))?;
        }
        w.commit().map_err(|e| s.err(e))?;
        Ok(seq)
    }

    /// At most `limit` entries from number `from` on, oldest first.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let s = &self.store;
        let Some(t) = readable(s, self.def())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in t.range(from..).map_err(|e| s.err(e))?.take(limit) {
            let (k, v) = item.map_err(|e| s.err(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// At most `limit` of the newest entries, newest first.
    pub fn newest(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let s = &self.store;
        let Some(t) = readable(s, self.def())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| s.err(e))?.rev().take(limit) {
            let (k, v) = item.map_err(|e| s.err(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces entry `seq` as it is: for tools that repair a journal, and for tests that show
    /// a check finds an edit. Appending is the only way entries are written otherwise.
    pub fn overwrite(&self, seq: u64, entry: &[u8]) -> Result<(), StoreError> {
        let s = &self.store;
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        w.open_table(self.def())
            .map_err(|e| s.err(e))?
            .insert(seq, entry)
            .map_err(|e| s.err(e))?;
        w.commit().map_err(|e| s.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_created_once_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            let r = store.records("t");
            assert_eq!(r.get("k").unwrap(), None);
            assert!(r.create("k", b"one").unwrap());
            assert!(!r.create("k", b"two").unwrap());
            assert_eq!(r.get("k").unwrap().as_deref(), Some(&b"one"[..]));
            r.put("j", b"x").unwrap();
            assert!(store.records("other").list().unwrap().is_empty());
        }
        let store = Store::open(&path).unwrap();
        let r = store.records("t");
        let keys: Vec<String> = r.list().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["j", "k"]);
        assert!(r.remove("j").unwrap());
        assert!(!r.remove("j").unwrap());
    }

    #[test]
    fn a_journal_entry_is_built_from_the_one_before() {
        let store = Store::in_memory("test");
        let j = store.journal("audit");
        assert!(j.read(0, 10).unwrap().is_empty());
        for _ in 0..3 {
            j.append(|seq, last| {
                let prev = last.map_or(String::new(), |l| String::from_utf8_lossy(l).into_owned());
                format!("{prev}{seq}").into_bytes()
            })
            .unwrap();
        }
        let all: Vec<String> = j
            .read(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(all, ["0", "01", "012"]);
        assert_eq!(j.newest(1).unwrap()[0].0, 2);
        assert_eq!(j.read(1, 1).unwrap()[0].0, 1);
    }
}
