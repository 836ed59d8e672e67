//! Hot reload: the plugin file's directory is watched (deploys and editors
//! replace files by rename), changes are debounced, and each new version is
//! prepared off the request path, smoke-tested and swapped in atomically.
//! Calls in flight finish on the version they started with; a version that
//! fails any step is rejected with a logged reason and the old one serves on.

use super::Shared;
use notify::{RecursiveMode, Watcher as _};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last change before reloading (a copy may take
/// several writes).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Owns the watcher and its task; dropping it stops both.
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn watch(shared: Weak<Shared>, path: &std::path::Path) -> notify::Result<FileWatcher> {
    let file_name = path.file_name().map(|n| n.to_owned());
    let directory = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.iter().any(|p| p.file_name() == file_name.as_deref()) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until changes stop for a moment.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let Some(shared) = shared.upgrade() else { return };
            match shared.reload().await {
                Ok(generation) => tracing::info!(generation, "plugin reloaded"),
                Err(e) => tracing::warn!(error = %e, "plugin change rejected; the previous version keeps serving"),
            }
        }
    });
    Ok(FileWatcher { _watcher: watcher, task })
}
