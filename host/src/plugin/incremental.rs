//! Cranelift's incremental compilation cache: compiled functions keyed by a
//! hash of their body and the compiler's settings. A plugin version whose
//! code is mostly one compiled before — a JavaScript or Python guest is the
//! same interpreter with a new script — reuses those functions and compiles
//! only what changed, so an edit goes live in a fraction of a cold compile.
//!
//! With a plugin cache directory, the functions are kept there as one
//! authenticated artifact (the [`Cache`]'s rules: native code is trusted only
//! when the host can prove it wrote it), read when a compile starts and
//! released from memory when it ends; the first edit after a restart is
//! quick too. Without one, they stay in memory. Either way at most
//! [`MAX_BYTES`]: past that the cache starts over.

use super::cache::Cache;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The most compiled code kept (a SpiderMonkey-based JS guest is ~30 MiB).
pub const MAX_BYTES: usize = 256 << 20;

const ARTIFACT: &str = "functions.bin";

/// The function cache a compile reads and fills.
pub struct FunctionCache {
    disk: Option<Arc<Cache>>,
    entries: Mutex<Option<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
    /// Inserted since the artifact was last written.
    dirty: bool,
}

impl Entries {
    fn insert(&mut self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if self.bytes + size > MAX_BYTES {
            *self = Entries::default(); // start over rather than grow
        }
        self.bytes += size;
        self.dirty = true;
        if let Some(old) = self.map.insert(key.to_vec(), value) {
            self.bytes -= key.len() + old.len();
        }
        true
    }

    /// `[count u64] ([key len u32][key][value len u32][value])*`, little-endian.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 8 + self.map.len() * 8);
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (key, value) in &self.map {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = bytes.split_at_checked(n)?;
            *bytes = tail;
            Some(head)
        }
        fn part<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
            take(bytes, len)
        }
        let mut rest = bytes;
        let count = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let mut entries = Entries::default();
        for _ in 0..count {
            let (key, value) = (part(&mut rest)?, part(&mut rest)?);
            entries.insert(key, value.to_vec());
        }
        entries.dirty = false;
        rest.is_empty().then_some(entries)
    }
}

impl FunctionCache {
    /// Backed by `disk` when the host has a plugin cache directory.
    pub fn new(disk: Option<Arc<Cache>>) -> Self {
        Self { disk, entries: Mutex::new(None) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entries = entries.get_or_insert_with(|| {
            let stored = self.disk.as_ref().and_then(|disk| disk.load(ARTIFACT));
            stored.and_then(|bytes| Entries::decode(&bytes)).unwrap_or_default()
        });
        f(entries)
    }

    /// A compile is over: write what it added to the cache directory and
    /// free the memory (without a directory, keep it).
    pub fn compiled(&self) {
        let Some(disk) = &self.disk else { return };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entries) = entries.take().filter(|e| e.dirty) {
            disk.store(ARTIFACT, &entries.encode());
        }
    }

    /// Functions held in memory now (0 between compiles with a directory).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().as_ref().map_or(0, |e| e.map.len())
    }
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCache").field("on_disk", &self.disk.is_some()).finish_non_exhaustive()
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.with(|entries| entries.map.get(key).map(|value| Cow::Owned(value.clone())))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.with(|entries| entries.insert(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use wasmtime::CacheStore;

    #[test]
    fn functions_survive_a_restart_through_the_cache_directory() {
        let dir = std::env::temp_dir().join(format!("presence-functions-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let disk = Arc::new(Cache::open(&dir, Default::default()).unwrap());
        let first = FunctionCache::new(Some(disk.clone()));
        assert!(first.insert(b"f1", b"code one".to_vec()) && first.insert(b"f2", b"code two".to_vec()));
        first.compiled();
        assert_eq!(first.len(), 0, "released after the compile");
        let again = FunctionCache::new(Some(disk));
        assert_eq!(again.get(b"f2").as_deref(), Some(&b"code two"[..]));
        assert_eq!(again.get(b"f3"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_encoding_is_no_cache_at_all() {
        let mut entries = Entries::default();
        entries.insert(b"key", b"value".to_vec());
        let bytes = entries.encode();
        assert_eq!(Entries::decode(&bytes).unwrap().map.len(), 1);
        assert!(Entries::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(Entries::decode(&[bytes.as_slice(), b"x"].concat()).is_none());
    }
}
