//! The event pump: applies what other instances did (as the backend reports
//! it) to the local replicas and shows it to local subscribers. Changes this
//! instance made were applied when their script replied; their echoes are
//! ignored here. After the backend's event stream was interrupted, every
//! watched topic is read again and the difference shown.

use super::{lock, Inner};
use crate::backend::BackendEvent;
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

pub(super) async fn pump(inner: Weak<Inner>, mut events: mpsc::UnboundedReceiver<BackendEvent>) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            BackendEvent::Change(change) if change.instance != inner.backend.instance() => {
                let topic = lock(&inner.topics).get(&change.topic).cloned();
                if let Some(topic) = topic {
                    let mut state = topic.lock();
                    if !state.detached {
                        inner.show(&change.topic, &mut state, change.seq, change.kind, &change.key, &change.data);
                    }
                }
            }
            BackendEvent::Cleared { topic, instance, .. } if instance != inner.backend.instance() => {
                inner.clear_local(&topic);
            }
            BackendEvent::Resynced => {
                tokio::spawn(resync(inner));
            }
            _ => {}
        }
    }
}

/// Re-read every watched topic and show what changed while events were lost.
async fn resync(inner: Arc<Inner>) {
    let topics: Vec<_> = lock(&inner.topics).values().filter(|t| t.ready.initialized()).cloned().collect();
    for topic in topics {
        match inner.backend.snapshot(&topic.name).await {
            Ok(snapshot) => {
                let cleared = {
                    let mut state = topic.lock();
                    if state.detached {
                        continue;
                    }
                    if snapshot.epoch.is_some() && snapshot.epoch != state.epoch {
                        true
                    } else {
                        for (kind, key, data) in state.replica.install(&snapshot) {
                            inner.announce(&topic.name, kind, &key, &data);
                        }
                        false
                    }
                };
                if cleared {
                    inner.clear_local(&topic.name);
                }
            }
            Err(e) => {
                tracing::warn!(topic = %topic.name, error = %e, "resync: cannot re-read topic")
            }
        }
    }
}
