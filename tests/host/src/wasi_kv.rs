//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) on the stores `kv` keeps, as Spin 3.0
//! and later link it beside their own interface: a key written through one is read through
//! the other.
//!
//! Checked on Spin 4.0.2 (a probe component, SQLite and Redis stores): a compare-and-swap on
//! an absent key creates it; one whose key another writer changed fails with `cas-failed`,
//! holding the newer value; on SQLite, one whose read found nothing sets the key whatever it
//! holds by then; on Redis, every swap reports `cas-failed`, the ones that wrote too (the test
//! host does the same: a guest must tell its own write from another's); `increment` starts
//! from 0.

use crate::bindings::wasi_keyvalue::{atomics, batch, store};
use crate::kv::{may_open, Backend, KvData, KvView, OpenError, Swapped};
use anyhow::Result;
use wasmtime::component::Resource;

use store::Error;

/// An open store: the guest's `bucket`.
pub struct Bucket {
    label: String,
}

/// A compare-and-swap under way: the key, and the value it was read with.
pub struct Cas {
    label: String,
    key: String,
    read: Option<Vec<u8>>,
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl KvView<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<(&Backend, String), Error> {
        let label = self.table.get(bucket).map_err(other)?.label.clone();
        Ok((
            self.stores.backend(&label).ok_or(Error::NoSuchStore)?,
            label,
        ))
    }
}

impl store::Host for KvView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        may_open(self.stores, self.granted, &identifier).map_err(|e| match e {
            OpenError::AccessDenied => Error::AccessDenied,
            OpenError::NoSuchStore => Error::NoSuchStore,
        })?;
        self.table.push(Bucket { label: identifier }).map_err(other)
    }
}

impl store::HostBucket for KvView<'_> {
    fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let (b, label) = self.bucket(&bucket)?;
        b.get(&label, &key).map_err(Error::Other)
    }

    fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), Error> {
        let (b, label) = self.bucket(&bucket)?;
        b.set(&label, &key, &value).map_err(Error::Other)
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let (b, label) = self.bucket(&bucket)?;
        b.delete(&label, &key).map_err(Error::Other)
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        Ok(self.get(bucket, key)?.is_some())
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> Result<store::KeyResponse, Error> {
        let (b, label) = self.bucket(&bucket)?;
        Ok(store::KeyResponse {
            keys: b.keys(&label).map_err(Error::Other)?,
            cursor: None,
        })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, Error> {
        let (b, label) = self.bucket(&bucket)?;
        b.increment(&label, &key, delta).map_err(Error::Other)
    }

    fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let store_error = |e: Error| atomics::CasError::StoreError(e);
        let c = self.table.delete(cas).map_err(|e| store_error(other(e)))?;
        let b = self
            .stores
            .backend(&c.label)
            .ok_or(atomics::CasError::StoreError(Error::NoSuchStore))?;
        match b.swap(&c.label, &c.key, &c.read, &value) {
            // Spin 4.0.2 on Redis reports `cas-failed` even when its transaction wrote (its
            // UNWATCH, given the key, is refused): the handle then reads the value written.
            Ok(Swapped::Done) if b.is_redis() => {
                let now = b
                    .get(&c.label, &c.key)
                    .map_err(|e| store_error(Error::Other(e)))?;
                cas_failed(self, c, now)
            }
            Ok(Swapped::Done) => Ok(()),
            Ok(Swapped::Conflict(now)) => cas_failed(self, c, now),
            Err(e) => Err(store_error(Error::Other(e))),
        }
    }
}

/// `cas-failed`, with a handle that has read `now` (Spin's own handle reads the key anew).
fn cas_failed(
    view: &mut KvView<'_>,
    c: Cas,
    now: Option<Vec<u8>>,
) -> Result<(), atomics::CasError> {
    let newer = Cas {
        label: c.label,
        key: c.key,
        read: now,
    };
    match view.table.push(newer) {
        Ok(handle) => Err(atomics::CasError::CasFailed(handle)),
        Err(e) => Err(atomics::CasError::StoreError(other(e))),
    }
}

impl atomics::HostCas for KvView<'_> {
    fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, Error> {
        let (b, label) = self.bucket(&bucket)?;
        let read = b.get(&label, &key).map_err(Error::Other)?;
        self.table.push(Cas { label, key, read }).map_err(other)
    }

    fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.table.get(&cas).map_err(other)?.read.clone())
    }

    fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
        let (b, label) = self.bucket(&bucket)?;
        keys.into_iter()
            .map(|k| Ok((k.clone(), b.get(&label, &k).map_err(Error::Other)?)))
            .collect()
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let (b, label) = self.bucket(&bucket)?;
        for (k, v) in key_values {
            b.set(&label, &k, &v).map_err(Error::Other)?;
        }
        Ok(())
    }

    fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), Error> {
        let (b, label) = self.bucket(&bucket)?;
        for k in keys {
            b.delete(&label, &k).map_err(Error::Other)?;
        }
        Ok(())
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
) -> Result<()> {
    store::add_to_linker::<T, KvData>(linker, get)?;
    atomics::add_to_linker::<T, KvData>(linker, get)?;
    batch::add_to_linker::<T, KvData>(linker, get)?;
    Ok(())
}
