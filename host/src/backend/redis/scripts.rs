//! The Lua scripts, each built once from its `.lua` file (with the shared
//! prelude) and called by SHA, and their typed replies.
//!
//! There are two builds of the set, told apart by how they announce changes:
//! `PUBLISH` on one Redis, `SPUBLISH` (sharded pub/sub, Redis 7+) on a
//! cluster, where the channel carries the topic's hash tag and so lives on the
//! topic's own shard instead of being broadcast to every node.

use redis::{FromRedisValue, ParsingError, Script, Value};
use std::sync::LazyLock;

/// One script: its text (for `EVAL` and `SCRIPT LOAD`) and its SHA1.
pub struct Lua {
    pub text: String,
    pub script: Script,
}

impl Lua {
    /// A script from its whole text (prelude included).
    pub(crate) fn new(text: String) -> Self {
        let script = Script::new(&text);
        Self { text, script }
    }

    /// A call of this script, to fill with keys and arguments.
    pub fn call(&'static self) -> Call {
        Call { lua: self, keys: Vec::new(), args: Vec::new() }
    }

    /// `SCRIPT LOAD` of this script.
    pub fn load(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.text);
        cmd
    }
}

/// One call of a script: `EVALSHA` normally, `EVAL` when the node that owns
/// its keys has not seen the script (a restarted node, a promoted replica).
/// Both are routed by the first key, so neither needs every node of a
/// cluster to answer (as `SCRIPT LOAD` to all nodes would).
pub struct Call {
    lua: &'static Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    pub fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Declare a topic's keys, in the order every script takes them.
    pub fn topic_keys(&mut self, keys: &super::keys::TopicKeys) -> &mut Self {
        for key in keys.all() {
            self.key(key);
        }
        self
    }

    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, verb: &str, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    /// `EVALSHA`, for pipelines and the first try.
    pub fn evalsha(&self) -> redis::Cmd {
        self.command("EVALSHA", self.lua.script.get_hash())
    }

    /// `EVAL` with the whole text: loads the script where it runs.
    pub fn eval(&self) -> redis::Cmd {
        self.command("EVAL", &self.lua.text)
    }

    /// `EVALSHA`; after a NOSCRIPT (the node restarted, or is a promoted
    /// replica), `EVAL` on the same node, which also loads it there.
    pub async fn invoke<T: FromRedisValue>(&self, conn: &mut super::RedisConnection) -> redis::RedisResult<T> {
        match self.evalsha().query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.eval().query_async(conn).await
            }
            result => result,
        }
    }
}

/// The presence scripts of one publish mode.
pub struct Scripts {
    pub join: Lua,
    pub leave: Lua,
    pub tick: Lua,
    pub snapshot: Lua,
    pub count: Lua,
    pub clear: Lua,
    pub stats: Lua,
}

/// Each script's file name and text, in the order of [`Scripts::all`].
pub const SOURCES: [(&str, &str); 7] = [
    ("join.lua", include_str!("join.lua")),
    ("leave.lua", include_str!("leave.lua")),
    ("tick.lua", include_str!("tick.lua")),
    ("snapshot.lua", include_str!("snapshot.lua")),
    ("count.lua", include_str!("count.lua")),
    ("clear.lua", include_str!("clear.lua")),
    ("stats.lua", include_str!("stats.lua")),
];

impl Scripts {
    fn build(publish_command: &str) -> Self {
        let [join, leave, tick, snapshot, count, clear, stats] = SOURCES.map(|(_, body)| {
            Lua::new(format!("local publish_command = '{publish_command}'\n{}{body}", include_str!("prelude.lua")))
        });
        Self { join, leave, tick, snapshot, count, clear, stats }
    }

    /// The scripts that publish with `PUBLISH` (one Redis) or, when
    /// `sharded`, with `SPUBLISH` (a cluster).
    pub fn get(sharded: bool) -> &'static Scripts {
        static PLAIN: LazyLock<Scripts> = LazyLock::new(|| Scripts::build("PUBLISH"));
        static SHARDED: LazyLock<Scripts> = LazyLock::new(|| Scripts::build("SPUBLISH"));
        if sharded {
            &SHARDED
        } else {
            &PLAIN
        }
    }

    /// Every script, for loading after a NOSCRIPT (Redis restarted or flushed).
    pub fn all(&self) -> [&Lua; 7] {
        [&self.join, &self.leave, &self.tick, &self.snapshot, &self.count, &self.clear, &self.stats]
    }
}

fn text(value: &Value) -> Result<String, ParsingError> {
    String::from_redis_value_ref(value)
}

fn int(value: &Value) -> Result<u64, ParsingError> {
    u64::from_redis_value_ref(value)
}

fn items(value: Value, at_least: usize) -> Result<Vec<Value>, ParsingError> {
    match value {
        Value::Array(items) if items.len() >= at_least => Ok(items),
        other => Err(format!("expected an array of {at_least}+ items, got {other:?}").into()),
    }
}

/// Reply of join.lua, and whether the call created this instance's hold on
/// the topic (its first join there, or the hold had been lost).
pub struct JoinReply(pub super::JoinOutcome, pub bool);

impl FromRedisValue for JoinReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        use super::JoinOutcome::*;
        let items = items(v, 2)?;
        let outcome = match text(&items[0])?.as_str() {
            "join" => Joined { seq: int(&items[1])? },
            "updated" => Updated { seq: int(&items[1])? },
            "same" => Unchanged,
            "stale" => StaleEpoch { epoch: text(&items[1])? },
            "full" => Full { members: int(&items[1])? },
            other => return Err(format!("unknown join status {other:?}").into()),
        };
        let fresh_hold = items.get(2).map(int).transpose()? == Some(1);
        Ok(JoinReply(outcome, fresh_hold))
    }
}

/// Reply of leave.lua.
pub struct LeaveReply(pub super::LeaveOutcome);

impl FromRedisValue for LeaveReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        use super::LeaveOutcome::*;
        let items = items(v, 2)?;
        Ok(LeaveReply(match text(&items[0])?.as_str() {
            "left" if items.len() == 3 => Left { seq: int(&items[1])?, data: text(&items[2])? },
            "held" => StillHeld,
            "absent" => NotHeld,
            other => return Err(format!("unknown leave status {other:?}").into()),
        }))
    }
}

/// Reply of tick.lua: Redis's clock (ms) when it ran, and one report per
/// topic of the batch, in order (`None`: tick this topic again in full).
pub struct TickReply {
    pub redis_now: u64,
    pub reports: Vec<Option<super::TickReport>>,
}

impl FromRedisValue for TickReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut items = items(v, 2)?.into_iter();
        let redis_now = int(&items.next().expect("two items"))?;
        let marks = text(&items.next().expect("two items"))?;
        let mut reports = Vec::with_capacity(marks.len());
        for mark in marks.bytes() {
            reports.push(match mark {
                b'a' => Some(super::TickReport { outcome: crate::backend::TickOutcome::Alive, latest: None }),
                b'f' => None,
                b'd' => Some(tick_report(items.next().ok_or("fewer tick details than marks")?)?),
                other => return Err(format!("unknown tick mark {:?}", other as char).into()),
            });
        }
        Ok(TickReply { redis_now, reports })
    }
}

/// One topic's detail in a tick.lua reply: `{status, epoch[, seq, members]}`.
fn tick_report(v: Value) -> Result<super::TickReport, ParsingError> {
    use crate::backend::TickOutcome::*;
    let items = items(v, 2)?;
    let outcome = match text(&items[0])?.as_str() {
        "alive" => Alive,
        "lost" => Lost,
        "cleared" => Cleared { epoch: text(&items[1])? },
        "error" => Failed { reason: text(&items[1])? },
        other => return Err(format!("unknown tick status {other:?}").into()),
    };
    let latest = match items.get(2..4) {
        Some([seq, members]) => Some(crate::backend::Latest { seq: int(seq)?, members: int(members)? }),
        _ => None,
    };
    Ok(super::TickReport { outcome, latest })
}

/// Reply of snapshot.lua.
pub struct SnapshotReply(pub super::Snapshot);

impl FromRedisValue for SnapshotReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items = items(v, 2)?;
        let (head, rest) = items.split_at(2);
        let seq = int(&head[0])?;
        let epoch = text(&head[1])?;
        let mut users = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks_exact(2) {
            let (key, data) = (text(&pair[0])?, text(&pair[1])?);
            // Data is spliced into frames as raw JSON: a value written by
            // something else than our scripts must not break every client.
            if serde_json::from_str::<&serde_json::value::RawValue>(&data).is_err() {
                tracing::warn!(key = %key.chars().take(64).collect::<String>(), "snapshot: member data is not JSON; skipped");
                continue;
            }
            users.push((key, data));
        }
        Ok(SnapshotReply(super::Snapshot { seq, epoch: (!epoch.is_empty()).then_some(epoch), users }))
    }
}
