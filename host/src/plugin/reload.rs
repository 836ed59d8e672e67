//! Hot reload: the plugin file's directory is watched (deploys and editors
//! replace files by rename), changes are debounced, and each new version is
//! prepared off the request path, smoke-tested and swapped in atomically.
//! Calls in flight finish on the version they started with; a version that
//! fails any step is rejected with a logged reason and the old one serves on.
//! Only events that can change the content count (not the reads of the file,
//! the reload's own among them), and bytes already loaded, or already
//! rejected, are not prepared again: one change, at most one reload.

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
            if changes_content(&event.kind) && event.paths.iter().any(|p| p.file_name() == file_name.as_deref()) {
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
            let before = shared.current_generation();
            match shared.reload().await {
                Ok(generation) if generation != before => tracing::info!(generation, "plugin reloaded"),
                Ok(_) => tracing::debug!("plugin file touched, content unchanged: nothing to reload"),
                Err(super::LoadError::AlreadyRejected) => tracing::debug!("plugin file unchanged since it was refused"),
                Err(e) => tracing::warn!(error = %e, "plugin change rejected; the previous version keeps serving"),
            }
        }
    });
    Ok(FileWatcher { _watcher: watcher, task })
}

/// Whether an event can mean new content: the file written, created,
/// renamed into place or removed. Opening or reading it (as the reload
/// itself, a checksum or a backup does) cannot, and must not cause a reload.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        // A writer closing the file: its last write is done.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}
