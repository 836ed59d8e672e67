//! The engine's options (the original extension's `key`, `select`, `heartbeat`, `ttl`, plus
//! limits) and their validation.

use super::Error;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Raw user data → public data. An `Err` rejects the join with that message.
/// Asynchronous, so a `select` can run in a plugin; see [`select_fn`] for a
/// plain function.
pub type SelectFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// A [`SelectFn`] from a plain function.
pub fn select_fn(f: impl Fn(&Value) -> Result<Value, String> + Send + Sync + 'static) -> SelectFn {
    Arc::new(move |user_data| {
        let result = f(&user_data);
        Box::pin(std::future::ready(result))
    })
}

/// The engine's options: the original extension's (`key`, `select`,
/// `heartbeat`, `ttl`) and the caps that bound what clients can make it hold.
///
/// ```
/// use presence::engine::select_fn;
/// use presence::Options;
/// use std::time::Duration;
///
/// let options = Options {
///     key: "userId".into(),
///     // Only the name is public; everything else stays on the server.
///     select: Some(select_fn(|user| Ok(serde_json::json!({"name": user["name"]})))),
///     heartbeat: Duration::from_secs(10),
///     ttl: Duration::from_secs(30),
///     count_only: [("stadium:".to_owned(), 1_000)].into(),
///     ..Options::default()
/// };
/// assert!(options.validate().is_ok());
/// let nonsense = Options { ttl: Duration::from_secs(5), ..options };
/// assert!(nonsense.validate().unwrap_err().to_string().contains("ttl"));
/// ```
#[derive(Clone)]
pub struct Options {
    /// Field of the user data that identifies a user across tabs (default `id`).
    /// A connection without it counts as its own user.
    pub key: String,
    /// Public fields; `None` = [`super::select::default_select`].
    pub select: Option<SelectFn>,
    /// How often holds are refreshed and expired holds swept (default 30 s).
    pub heartbeat: Duration,
    /// How long a hold outlives its instance's last heartbeat (default 90 s).
    pub ttl: Duration,
    /// Largest public data, as JSON, of one user (default 16 KiB).
    pub max_data_bytes: usize,
    /// Longest topic name in bytes (default 1 KiB).
    pub max_topic_bytes: usize,
    /// Longest user key (the `key` field's value) in bytes (default 256).
    pub max_key_bytes: usize,
    /// Users one topic may list, over every instance; a new user beyond it
    /// is refused with [`super::Error::TopicFull`] (default 10,000; 0: no cap).
    pub max_members_per_topic: u64,
    /// Topics one connection may join or observe (default 256).
    pub max_topics_per_connection: usize,
    /// Topics this instance may serve at once (default 100,000).
    pub max_topics_per_instance: usize,
    /// Count-only topics: topic prefix → `above`. A topic whose name starts
    /// with the prefix (the longest matching one wins; `""` matches every
    /// topic) shows its subscribers only its member count once it lists more
    /// than `above` users (default: none). See [`super::Presence::set_count_only`].
    pub count_only: BTreeMap<String, u64>,
    /// At most one `count` event per count-only topic per window (default 1 s;
    /// 0: as soon as the engine gets to it).
    pub count_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            key: "id".into(),
            select: None,
            heartbeat: Duration::from_secs(30),
            ttl: Duration::from_secs(90),
            max_data_bytes: 16 * 1024,
            max_topic_bytes: 1024,
            max_key_bytes: 256,
            max_members_per_topic: 10_000,
            max_topics_per_connection: 256,
            max_topics_per_instance: 100_000,
            count_only: BTreeMap::new(),
            count_window: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("key", &self.key)
            .field("select", &self.select.as_ref().map(|_| "custom"))
            .field("heartbeat", &self.heartbeat)
            .field("ttl", &self.ttl)
            .field("max_data_bytes", &self.max_data_bytes)
            .field("max_topic_bytes", &self.max_topic_bytes)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("max_members_per_topic", &self.max_members_per_topic)
            .field("max_topics_per_connection", &self.max_topics_per_connection)
            .field("max_topics_per_instance", &self.max_topics_per_instance)
            .field("count_only", &self.count_only)
            .field("count_window", &self.count_window)
            .finish()
    }
}

impl Options {
    /// Refuse nonsense (an empty key, `ttl` not above `heartbeat`, a zero
    /// cap), naming the option.
    pub fn validate(&self) -> Result<(), Error> {
        const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
        const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
        let invalid = |name, reason: &str| Err(Error::InvalidOption { name, reason: reason.into() });
        if self.key.is_empty() {
            return invalid("key", "must name a field");
        }
        if self.heartbeat.is_zero() {
            return invalid("heartbeat", "must be greater than 0 ms");
        }
        if self.ttl.is_zero() {
            return invalid("ttl", "must be greater than 0 s");
        }
        // Beyond these, expiries overflow the scripts' millisecond clock
        // arithmetic and the backstop (ten ttls) means nothing.
        if self.heartbeat > MAX_HEARTBEAT {
            return Err(Error::InvalidOption {
                name: "heartbeat",
                reason: format!("{:?} is longer than the most allowed, {MAX_HEARTBEAT:?}", self.heartbeat),
            });
        }
        if self.ttl > MAX_TTL {
            return Err(Error::InvalidOption {
                name: "ttl",
                reason: format!("{:?} is longer than the most allowed, {MAX_TTL:?}", self.ttl),
            });
        }
        if self.ttl <= self.heartbeat {
            return Err(Error::InvalidOption {
                name: "ttl",
                reason: format!(
                    "{:?} is not longer than the heartbeat ({:?}): every hold would expire between refreshes",
                    self.ttl, self.heartbeat
                ),
            });
        }
        if self.max_data_bytes < 2 {
            return invalid("max_data_bytes", "must allow at least `{}`");
        }
        if self.max_topic_bytes == 0 {
            return invalid("max_topic_bytes", "must be greater than 0");
        }
        if self.max_key_bytes == 0 {
            return invalid("max_key_bytes", "must be greater than 0");
        }
        if self.max_topics_per_connection == 0 {
            return invalid("max_topics_per_connection", "must be greater than 0");
        }
        if self.max_topics_per_instance == 0 {
            return invalid("max_topics_per_instance", "must be greater than 0");
        }
        self.count_only.keys().try_for_each(|prefix| self.check_count_prefix(prefix))
    }

    /// A count-only prefix no longer than a topic may be (options and
    /// [`super::Presence::set_count_only`] alike).
    pub(super) fn check_count_prefix(&self, prefix: &str) -> Result<(), Error> {
        if prefix.len() <= self.max_topic_bytes {
            return Ok(());
        }
        Err(Error::InvalidOption {
            name: "count_only",
            reason: format!(
                "prefix {:?}… is {} bytes, longer than max_topic_bytes",
                prefix.chars().take(32).collect::<String>(),
                prefix.len()
            ),
        })
    }
}
