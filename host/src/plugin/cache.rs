//! The precompiled-plugin cache. Its artifacts are native code that wasmtime
//! loads without checking, so the host trusts one only when it can prove it
//! wrote it: the directory must be owned by this process's user and not
//! writable by anyone else, nothing is opened through a symlink, artifacts
//! are written through unique temporary files, and each carries an HMAC
//! (under a key in the directory that only the host can read) over its name
//! and bytes, checked before anything is deserialized. A planted or damaged
//! artifact is refused with a logged reason, and the plugin is compiled again.

use super::metrics::PluginMetrics;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const KEY_FILE: &str = "cache.key";
const TAG_BYTES: usize = 32;

/// Why the cache directory cannot be used (the loader reports it as a
/// [`super::LoadError::Cache`]).
#[derive(Debug, thiserror::Error)]
#[error("plugin cache {path}: {reason}")]
pub struct OpenError {
    /// The directory.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// A checked cache directory and its key.
pub struct Cache {
    dir: PathBuf,
    key: [u8; 32],
    /// Counts refused artifacts (`cache_rejected`).
    metrics: Arc<PluginMetrics>,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Open without following a symlink in the last component.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// A file (or directory) this host may trust: owned by its user, not a
/// symlink, and not writable by group or others.
fn check_owned(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err(format!("{what} is a symlink"));
    }
    if meta.uid() != euid() {
        return Err(format!("{what} is owned by uid {}, not by this process (uid {})", meta.uid(), euid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{what} is writable by others (mode {:o})", meta.mode() & 0o777));
    }
    Ok(())
}

impl Cache {
    /// Create the directory if needed (mode 0700), check it, and read its
    /// key (or make one, mode 0600).
    pub fn open(dir: &Path, metrics: Arc<PluginMetrics>) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError { path: dir.to_owned(), reason };
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(format!("cannot restrict it to this user: {e}")))?;
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
        if !meta.is_dir() {
            return Err(fail("not a directory".into()));
        }
        check_owned(&meta, "the directory").map_err(fail)?;
        let key = Self::key(&dir.join(KEY_FILE)).map_err(fail)?;
        Ok(Self { dir: dir.to_owned(), key, metrics })
    }

    fn key(path: &Path) -> Result<[u8; 32], String> {
        let mut key = [0u8; 32];
        match open_nofollow(path) {
            Ok(mut file) => {
                let meta = file.metadata().map_err(|e| e.to_string())?;
                check_owned(&meta, "the key file")?;
                if meta.mode() & 0o077 != 0 {
                    return Err(format!("the key file is readable by others (mode {:o})", meta.mode() & 0o777));
                }
                file.read_exact(&mut key).map_err(|e| format!("cannot read the key file: {e}"))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rand::Rng::fill(&mut rand::rng(), &mut key);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| format!("cannot create the key file: {e}"))?;
                file.write_all(&key).map_err(|e| format!("cannot write the key file: {e}"))?;
            }
            Err(e) => return Err(format!("cannot open the key file: {e}")),
        }
        Ok(key)
    }

    fn tag(&self, name: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac
    }

    /// The artifact stored under `name`, if there is one this host wrote.
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.dir.join(name);
        let mut file = match open_nofollow(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return self.refuse(&path, &format!("cannot open it: {e}")),
        };
        let checked = file.metadata().map_err(|e| e.to_string()).and_then(|meta| check_owned(&meta, "it"));
        if let Err(reason) = checked {
            return self.refuse(&path, &reason);
        }
        let mut bytes = Vec::new();
        if let Err(e) = file.read_to_end(&mut bytes) {
            return self.refuse(&path, &format!("cannot read it: {e}"));
        }
        if bytes.len() < TAG_BYTES {
            return self.refuse(&path, "too short to carry a tag");
        }
        let body = bytes.split_off(TAG_BYTES);
        if self.tag(name, &body).verify_slice(&bytes).is_err() {
            return self.refuse(&path, "its tag does not match: not written by this host, or damaged");
        }
        Some(body)
    }

    fn refuse(&self, path: &Path, reason: &str) -> Option<Vec<u8>> {
        self.metrics.cache_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %path.display(), reason, "plugin cache artifact refused; compiling instead");
        None
    }

    /// Store an artifact under `name`: tag, write a unique temporary file,
    /// rename it into place.
    pub fn store(&self, name: &str, body: &[u8]) {
        let tag = self.tag(name, body).finalize().into_bytes();
        let tmp = self.dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&tag)?;
                file.write_all(body)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(name)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write a plugin cache artifact");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("presence-cache-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn only_artifacts_this_host_wrote_are_loaded() {
        let dir = scratch();
        let metrics = Arc::new(PluginMetrics::default());
        let cache = Cache::open(&dir, metrics.clone()).unwrap();
        cache.store("a.cwasm", b"native code");
        assert_eq!(cache.load("a.cwasm").as_deref(), Some(&b"native code"[..]));
        assert_eq!(cache.load("missing.cwasm"), None);
        // Another name, the same bytes: refused (the name is under the tag).
        std::fs::copy(dir.join("a.cwasm"), dir.join("b.cwasm")).unwrap();
        assert_eq!(cache.load("b.cwasm"), None);
        // A planted artifact.
        std::fs::write(dir.join("c.cwasm"), [0u8; 100]).unwrap();
        assert_eq!(cache.load("c.cwasm"), None);
        // A symlink to a good artifact.
        std::os::unix::fs::symlink(dir.join("a.cwasm"), dir.join("d.cwasm")).unwrap();
        assert_eq!(cache.load("d.cwasm"), None);
        assert_eq!(metrics.cache_rejected.load(Ordering::Relaxed), 3);
        // The key persists: a second host process reads what the first wrote.
        assert!(Cache::open(&dir, metrics).unwrap().load("a.cwasm").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = scratch();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = Cache::open(&dir, Default::default()).err().expect("refused").to_string();
        assert!(error.contains("writable by others"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
