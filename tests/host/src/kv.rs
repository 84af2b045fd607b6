//! Spin's key-value stores, as `spin up` provides them: the `default` store in SQLite under
//! the state directory (`.spin/` by the manifest), any store on Redis through a runtime config
//! file, and only the stores the component's `key_value_stores` grants. Two interfaces reach
//! the same stores: `fermyon:spin/key-value@2.0.0` (here) and `wasi:keyvalue@0.2.0-draft2`
//! (`wasi_kv`), each a thin layer over the backend operations below.

use crate::bindings::key_value::{self, Error};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Resource, ResourceTable};

/// Where one store keeps its pairs.
pub enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Redis(redis::Client),
}

/// Every store the application can open, by label.
pub struct Stores(HashMap<String, Backend>);

/// `[key_value_store.<label>]` of a Spin runtime config file.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StoreConfig {
    Spin { path: Option<PathBuf> },
    Redis { url: String },
}

#[derive(Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreConfig>,
}

fn sqlite(path: &Path) -> Result<Backend> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS spin_key_value (
            store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
            PRIMARY KEY (store, key))",
    )?;
    Ok(Backend::Sqlite(Mutex::new(conn)))
}

impl Stores {
    /// The `default` store in `<state_dir>/sqlite_key_value.db`, then whatever the runtime
    /// config file (`--runtime-config-file`) declares, relative to that file.
    pub fn load(state_dir: &Path, runtime_config: Option<&Path>) -> Result<Self> {
        let mut stores = HashMap::new();
        let mut declared = RuntimeConfig::default();
        if let Some(path) = runtime_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            declared = toml::from_str(&text)
                .with_context(|| format!("invalid runtime config {}", path.display()))?;
        }
        let base = runtime_config
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        if !declared.key_value_store.contains_key("default") {
            stores.insert(
                "default".into(),
                sqlite(&state_dir.join("sqlite_key_value.db"))?,
            );
        }
        for (label, config) in declared.key_value_store {
            let backend = match config {
                StoreConfig::Spin { path } => {
                    let path = path.unwrap_or_else(|| state_dir.join("sqlite_key_value.db"));
                    sqlite(&base.join(path))?
                }
                StoreConfig::Redis { url } => Backend::Redis(
                    redis::Client::open(url.as_str())
                        .with_context(|| format!("key_value_store.{label}: invalid Redis URL"))?,
                ),
            };
            stores.insert(label, backend);
        }
        Ok(Self(stores))
    }

    /// The backend of the store labelled `label`.
    pub fn backend(&self, label: &str) -> Option<&Backend> {
        self.0.get(label)
    }

    /// Checks, at load, that a component is granted only stores that exist (as Spin does).
    pub fn check_grants(&self, component: &str, granted: &[String]) -> Result<()> {
        for label in granted {
            if !self.0.contains_key(label) {
                bail!(
                    "component {component:?} uses key-value store {label:?}, which is not defined"
                );
            }
        }
        Ok(())
    }
}

/// What a compare-and-swap found.
pub enum Swapped {
    Done,
    /// Another writer came first: the value now.
    Conflict(Option<Vec<u8>>),
}

/// The backend operations both interfaces use; `store` is the store's label (SQLite keeps
/// every store in one table).
impl Backend {
    fn sqlite<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T>,
        redis_op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        match self {
            Backend::Sqlite(conn) => crate::spin_blocking::as_spin_blocks(|| {
                let mut conn = conn.lock().map_err(|e| e.to_string())?;
                f(&mut conn).map_err(|e| e.to_string())
            }),
            Backend::Redis(client) => {
                let mut conn = client.get_connection().map_err(|e| e.to_string())?;
                redis_op(&mut conn).map_err(|e| e.to_string())
            }
        }
    }

    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.sqlite(
            |c| sqlite_get(c, store, key),
            |r| redis::cmd("GET").arg(key).query(r),
        )
    }

    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.sqlite(
            |c| sqlite_set(c, store, key, value),
            |r| redis::cmd("SET").arg(key).arg(value).query(r),
        )
    }

    pub fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        self.sqlite(
            |c| {
                c.execute(
                    "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                    (store, key),
                )
                .map(|_| ())
            },
            |r| redis::cmd("DEL").arg(key).query(r),
        )
    }

    pub fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        self.sqlite(
            |c| {
                let mut q = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
                let keys = q.query_map([store], |row| row.get(0))?;
                keys.collect()
            },
            |r| redis::cmd("KEYS").arg("*").query(r),
        )
    }

    /// Adds `delta` to the number at `key` (0 when absent). Spin 4.0.2 keeps it as 8 bytes,
    /// little-endian, in SQLite and as Redis's own decimal text (INCRBY): measured, a `get`
    /// after two increments read `[7, 0, 0, 0, 0, 0, 0, 0]` and `"7"`.
    pub fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, String> {
        self.sqlite(
            |c| {
                let tx = c.transaction()?;
                let now = match sqlite_get(&tx, store, key)? {
                    None => 0,
                    Some(v) => {
                        let bytes: [u8; 8] = v.try_into().map_err(|_| {
                            rusqlite::Error::InvalidColumnType(
                                0,
                                "value".into(),
                                rusqlite::types::Type::Blob,
                            )
                        })?;
                        i64::from_le_bytes(bytes)
                    }
                };
                let new = now.wrapping_add(delta);
                sqlite_set(&tx, store, key, &new.to_le_bytes())?;
                tx.commit()?;
                Ok(new)
            },
            |r| redis::cmd("INCRBY").arg(key).arg(delta).query(r),
        )
    }

    /// Sets `key` to `value` if it still holds `expected` (on SQLite, `None` sets it
    /// whatever it holds now, as Spin does), atomically: in one SQLite transaction (other
    /// processes on the file wait for it), or under Redis's WATCH on a connection of its own.
    pub fn swap(
        &self,
        store: &str,
        key: &str,
        expected: &Option<Vec<u8>>,
        value: &[u8],
    ) -> Result<Swapped, String> {
        self.sqlite(
            |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let now = sqlite_get(&tx, store, key)?;
                // Spin's SQLite swap is `UPDATE ... WHERE value = <read>`, or an upsert when
                // nothing was read: a key created meanwhile is overwritten.
                if expected.is_some() && now != *expected {
                    return Ok(Swapped::Conflict(now));
                }
                sqlite_set(&tx, store, key, value)?;
                tx.commit()?;
                Ok(Swapped::Done)
            },
            |r| {
                redis::cmd("WATCH").arg(key).query::<()>(r)?;
                let now: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(r)?;
                if now != *expected {
                    redis::cmd("UNWATCH").query::<()>(r)?;
                    return Ok(Swapped::Conflict(now));
                }
                let done: Option<()> = redis::pipe().atomic().set(key, value).query(r)?;
                match done {
                    Some(()) => Ok(Swapped::Done),
                    None => {
                        let now = redis::cmd("GET").arg(key).query(r)?;
                        Ok(Swapped::Conflict(now))
                    }
                }
            },
        )
    }

    pub fn is_redis(&self) -> bool {
        matches!(self, Backend::Redis(_))
    }
}

fn sqlite_get(
    c: &rusqlite::Connection,
    store: &str,
    key: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension;
    // Prepared once per connection, as Spin's store prepares its statements.
    c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
        .query_row((store, key), |row| row.get(0))
        .optional()
}

fn sqlite_set(
    c: &rusqlite::Connection,
    store: &str,
    key: &str,
    value: &[u8],
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
    )?
    .execute((store, key, value))
    .map(|_| ())
}

/// Whether `label` may be opened by a component granted `granted`: the error Spin gives if not.
pub fn may_open(stores: &Stores, granted: &[String], label: &str) -> Result<(), OpenError> {
    if !granted.iter().any(|g| g == label) {
        return Err(OpenError::AccessDenied);
    }
    match stores.backend(label) {
        None => Err(OpenError::NoSuchStore),
        // Spin's SQLite store manager hands off the worker to open a store, connection made
        // or not.
        Some(Backend::Sqlite(_)) => {
            crate::spin_blocking::as_spin_blocks(|| {});
            Ok(())
        }
        Some(Backend::Redis(_)) => Ok(()),
    }
}

pub enum OpenError {
    AccessDenied,
    NoSuchStore,
}

/// An open store: the guest's `store` resource.
pub struct OpenStore {
    label: String,
}

/// What the key-value interfaces see of a request's state.
pub struct KvView<'a> {
    pub table: &'a mut ResourceTable,
    pub stores: &'a Stores,
    pub granted: &'a [String],
}

pub struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl KvView<'_> {
    /// The backend and label of an open store.
    fn open_store(&self, store: &Resource<OpenStore>) -> Result<(&Backend, String), Error> {
        let label = self.table.get(store).map_err(other)?.label.clone();
        let backend = self.stores.backend(&label).ok_or(Error::NoSuchStore)?;
        Ok((backend, label))
    }
}

impl key_value::Host for KvView<'_> {}

impl key_value::HostStore for KvView<'_> {
    fn open(&mut self, label: String) -> Result<Resource<OpenStore>, Error> {
        may_open(self.stores, self.granted, &label).map_err(|e| match e {
            OpenError::AccessDenied => Error::AccessDenied,
            OpenError::NoSuchStore => Error::NoSuchStore,
        })?;
        self.table
            .push(OpenStore { label })
            .map_err(|_| Error::StoreTableFull)
    }

    fn get(&mut self, store: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let (b, label) = self.open_store(&store)?;
        b.get(&label, &key).map_err(Error::Other)
    }

    fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let (b, label) = self.open_store(&store)?;
        b.set(&label, &key, &value).map_err(Error::Other)
    }

    fn delete(&mut self, store: Resource<OpenStore>, key: String) -> Result<(), Error> {
        let (b, label) = self.open_store(&store)?;
        b.delete(&label, &key).map_err(Error::Other)
    }

    fn exists(&mut self, store: Resource<OpenStore>, key: String) -> Result<bool, Error> {
        Ok(self.get(store, key)?.is_some())
    }

    fn get_keys(&mut self, store: Resource<OpenStore>) -> Result<Vec<String>, Error> {
        let (b, label) = self.open_store(&store)?;
        b.keys(&label).map_err(Error::Other)
    }

    fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
) -> Result<()> {
    key_value::add_to_linker::<T, KvData>(linker, get)?;
    crate::wasi_kv::add_to_linker(linker, get)?;
    Ok(())
}

/// Shared by every request of the application.
pub type SharedStores = Arc<Stores>;

#[cfg(test)]
mod tests {
    use super::*;

    fn file_store(path: &Path) -> Backend {
        sqlite(path).unwrap()
    }

    /// Two processes' connections to one SQLite file, each with threads that add one by
    /// compare-and-swap, starting over with the newer value when another came first: every
    /// addition counts (without the transaction around the compare, some are lost).
    #[test]
    fn compare_and_swap_loses_nothing_across_connections() {
        let dir = std::env::temp_dir().join(format!("kv-cas-{}", std::process::id()));
        let path = dir.join("kv.db");
        let stores = [file_store(&path), file_store(&path)];
        // A swap whose read found nothing is an upsert (as on Spin): the key exists first.
        stores[0].set("default", "n", &0u64.to_le_bytes()).unwrap();
        let add = |b: &Backend| {
            for _ in 0..50 {
                let mut read = b.get("default", "n").unwrap();
                loop {
                    let now = read
                        .as_deref()
                        .map_or(0u64, |v| u64::from_le_bytes(v.try_into().unwrap()));
                    match b
                        .swap("default", "n", &read, &(now + 1).to_le_bytes())
                        .unwrap()
                    {
                        Swapped::Done => break,
                        Swapped::Conflict(newer) => read = newer,
                    }
                }
            }
        };
        std::thread::scope(|s| {
            for b in &stores {
                for _ in 0..4 {
                    s.spawn(|| add(b));
                }
            }
        });
        let n = stores[0].get("default", "n").unwrap().unwrap();
        assert_eq!(u64::from_le_bytes(n.try_into().unwrap()), 400);
        // As Spin 4.0.2 keeps a counter: 8 bytes, little-endian.
        assert_eq!(stores[1].increment("default", "c", 3), Ok(3));
        assert_eq!(stores[0].increment("default", "c", 4), Ok(7));
        assert_eq!(
            stores[0].get("default", "c").unwrap(),
            Some(7i64.to_le_bytes().to_vec())
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
