//! What Redis counted per command (`INFO commandstats`), for tests and
//! benchmarks that bound or report the commands an operation costs. Commands
//! run inside scripts count too; `INFO` and `CONFIG` (the reading and the
//! resetting themselves) do not.

/// Counts since Redis started or since the last [`reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Script calls by SHA.
    pub evalsha: u64,
    /// Microseconds Redis spent in them, the commands they ran included.
    pub evalsha_usec: u64,
    /// Every command, inside scripts included.
    pub total: u64,
}

/// Read the counts.
pub fn read(con: &mut redis::Connection) -> CommandStats {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let field = |line: &str, name: &str| -> u64 {
        line.split(name).nth(1).and_then(|rest| rest.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let mut stats = CommandStats::default();
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        if line.starts_with("cmdstat_info:") || line.starts_with("cmdstat_config") {
            continue;
        }
        if line.starts_with("cmdstat_evalsha:") {
            stats.evalsha = field(line, "calls=");
            stats.evalsha_usec = field(line, "usec=");
        }
        stats.total += field(line, "calls=");
    }
    stats
}

/// How many times Redis ran `command` (lower case, e.g. `hgetall`), inside
/// scripts included.
pub fn calls(con: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Zero every count (`CONFIG RESETSTAT`).
pub fn reset(con: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(con).unwrap();
}
