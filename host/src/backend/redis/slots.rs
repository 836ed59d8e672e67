//! Which master serves which hash slot of a cluster, so the heartbeat can send
//! one pipeline per node and `clear()` can visit every master.
//!
//! The table is a cache read with `CLUSTER SLOTS`; it is only a hint. A batch
//! sent to a node that lost the slot comes back with `MOVED`, and the backend
//! then retries those calls one by one through the cluster client (which
//! follows the redirect) and reads the table again.

use redis::Value;

/// Slots in a cluster (CRC16 of the key or its hash tag, modulo this).
const SLOTS: u16 = 16384;

/// The hash slot of a key: of its `{…}` hash tag when it has a non-empty one.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    slot_of_parts(&[hashed])
}

/// The slot of a hash tag given in pieces (no allocation to join them).
pub fn slot_of_parts(tag: &[&[u8]]) -> u16 {
    let mut crc = crc16::State::<crc16::XMODEM>::new();
    for part in tag {
        crc.update(part);
    }
    crc.get() % SLOTS
}

/// A master's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

/// Slot ranges and the master serving each.
#[derive(Debug, Default, Clone)]
pub struct SlotTable {
    /// `(first, last, master)`, sorted by `first`.
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotTable {
    /// Parse a `CLUSTER SLOTS` reply.
    pub fn parse(reply: &Value) -> Result<Self, String> {
        let Value::Array(entries) = reply else {
            return Err(format!("CLUSTER SLOTS: expected an array, got {reply:?}"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else { return Err("CLUSTER SLOTS: entry is not an array".into()) };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("CLUSTER SLOTS: entry without a range and a master".into());
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => return Err("CLUSTER SLOTS: master without a host".into()),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err("CLUSTER SLOTS: master without a port".into());
            };
            let narrow = |n: i64| u16::try_from(n).map_err(|_| format!("CLUSTER SLOTS: {n} is out of range"));
            ranges.push((narrow(*first)?, narrow(*last)?, Node { host, port: narrow(*port)? }));
        }
        ranges.sort_by_key(|(first, ..)| *first);
        Ok(Self { ranges })
    }

    /// The master serving `slot`, if the table knows one.
    pub fn node_of(&self, slot: u16) -> Option<&Node> {
        let at = self.ranges.partition_point(|(first, ..)| *first <= slot).checked_sub(1)?;
        let (_, last, node) = &self.ranges[at];
        (slot <= *last).then_some(node)
    }

    /// Every master, once each.
    pub fn masters(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self.ranges.iter().map(|(.., node)| node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots Redis documents for these keys (`CLUSTER KEYSLOT`).
    #[test]
    fn slots_follow_hash_tags() {
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"{user1000}.followers"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"p:{room}:users"), slot_of(b"room"));
    }

    #[test]
    fn table_finds_the_master_of_each_slot() {
        let node = |port: i64| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7002)]),
        ]);
        let table = SlotTable::parse(&reply).unwrap();
        assert_eq!(table.node_of(0).unwrap().port, 7000);
        assert_eq!(table.node_of(5461).unwrap().port, 7001);
        assert_eq!(table.node_of(16383).unwrap().port, 7002);
        assert_eq!(table.masters().len(), 3);
        assert!(SlotTable::parse(&Value::Int(1)).is_err());
    }
}
