//! Spin's key-value stores (`fermyon:spin/key-value@2.0.0`), as `spin up` provides them: the
//! `default` store in SQLite under the state directory (`.spin/` by the manifest), any store
//! on Redis through a runtime config file, and only the stores the component's
//! `key_value_stores` grants.

use crate::bindings::key_value::{self, Error};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Resource, ResourceTable};

/// Where one store keeps its pairs.
enum Backend {
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

/// An open store: the guest's `store` resource.
pub struct OpenStore {
    label: String,
}

/// What the key-value interface sees of a request's state.
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
    fn backend(&self, store: &Resource<OpenStore>) -> Result<&Backend, Error> {
        let label = &self.table.get(store).map_err(other)?.label;
        self.stores.0.get(label).ok_or(Error::NoSuchStore)
    }

    fn sqlite<T>(
        &self,
        store: &Resource<OpenStore>,
        f: impl FnOnce(&rusqlite::Connection, &str) -> rusqlite::Result<T>,
        redis_op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let label = self.table.get(store).map_err(other)?.label.clone();
        match self.backend(store)? {
            Backend::Sqlite(conn) => {
                let conn = conn.lock().map_err(other)?;
                f(&conn, &label).map_err(other)
            }
            Backend::Redis(client) => {
                let mut conn = client.get_connection().map_err(other)?;
                redis_op(&mut conn).map_err(other)
            }
        }
    }
}

impl key_value::Host for KvView<'_> {}

impl key_value::HostStore for KvView<'_> {
    fn open(&mut self, label: String) -> Result<Resource<OpenStore>, Error> {
        if !self.granted.contains(&label) {
            return Err(Error::AccessDenied);
        }
        if !self.stores.0.contains_key(&label) {
            return Err(Error::NoSuchStore);
        }
        self.table
            .push(OpenStore { label })
            .map_err(|_| Error::StoreTableFull)
    }

    fn get(&mut self, store: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let k = key.clone();
        self.sqlite(
            &store,
            |c, label| {
                use rusqlite::OptionalExtension;
                c.query_row(
                    "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                    (label, &key),
                    |row| row.get(0),
                )
                .optional()
            },
            |r| redis::cmd("GET").arg(&k).query(r),
        )
    }

    fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let (k, v) = (key.clone(), value.clone());
        self.sqlite(
            &store,
            |c, label| {
                c.execute(
                    "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                    (label, &key, &value),
                )
                .map(|_| ())
            },
            |r| redis::cmd("SET").arg(&k).arg(&v).query(r),
        )
    }

    fn delete(&mut self, store: Resource<OpenStore>, key: String) -> Result<(), Error> {
        let k = key.clone();
        self.sqlite(
            &store,
            |c, label| {
                c.execute(
                    "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                    (label, &key),
                )
                .map(|_| ())
            },
            |r| redis::cmd("DEL").arg(&k).query(r),
        )
    }

    fn exists(&mut self, store: Resource<OpenStore>, key: String) -> Result<bool, Error> {
        Ok(self.get(store, key)?.is_some())
    }

    fn get_keys(&mut self, store: Resource<OpenStore>) -> Result<Vec<String>, Error> {
        self.sqlite(
            &store,
            |c, label| {
                let mut q = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
                let keys = q.query_map([label], |row| row.get(0))?;
                keys.collect()
            },
            |r| redis::cmd("KEYS").arg("*").query(r),
        )
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
    Ok(())
}

/// Shared by every request of the application.
pub type SharedStores = Arc<Stores>;
