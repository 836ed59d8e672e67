//! Who may open a WebSocket at all, decided before the upgrade: the
//! `Origin` check (a page on another site must not borrow a visitor's
//! browser) and the connection limits, in total and per client address.
//! An admitted connection holds a [`Ticket`] for its whole life.

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why an upgrade was refused before it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A page of this origin may not connect.
    #[error("origin {0} is not allowed (see --allowed-origins)")]
    Origin(String),
    /// The server holds its limit of connections.
    #[error("the server holds its limit of {0} connections")]
    Full(usize),
    /// This address holds its limit of connections.
    #[error("address {address} holds its limit of {limit} connections")]
    AddressFull {
        /// The client's address.
        address: IpAddr,
        /// The per-address limit.
        limit: usize,
    },
}

/// Origins allowed to open a socket: `*` (any), an explicit list of
/// `scheme://host[:port]`, or by default the server's own host (the
/// request's `Host`) and loopback pages. Requests without `Origin` (not a
/// browser) are always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// The request's own host, and pages served from loopback.
    #[default]
    SameHostAndLoopback,
    /// Any origin (`*`).
    Any,
    /// These `scheme://host[:port]` origins.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// From a comma-separated list; empty means the default.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries: Vec<&str> = text.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if entries.is_empty() {
            return Ok(Self::SameHostAndLoopback);
        }
        if entries == ["*"] {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for entry in entries {
            let Some((scheme, host)) = entry.split_once("://") else {
                return Err(format!("allowed origin {entry:?} is not of the form scheme://host[:port]"));
            };
            if host.is_empty() || host.contains('/') || !matches!(scheme, "http" | "https") {
                return Err(format!("allowed origin {entry:?} is not of the form http(s)://host[:port]"));
            }
            list.push(entry.to_ascii_lowercase());
        }
        Ok(Self::List(list))
    }

    /// Allow or refuse an upgrade request by its `Origin` (and `Host`).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
        let allowed = match self {
            Self::Any => true,
            Self::List(list) => list.contains(&origin),
            Self::SameHostAndLoopback => {
                let authority = origin.split_once("://").map_or("", |(_, a)| a);
                let host_header = headers.get(axum::http::header::HOST).map(|h| h.as_bytes().to_ascii_lowercase());
                host_header.is_some_and(|h| h == authority.as_bytes()) || is_loopback(authority)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refused::Origin(origin))
        }
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Open connections, in total and per address.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    address: Option<IpAddr>,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// Limits of connections in total and per client address.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self { max_total, max_per_address, counts: Default::default() }
    }

    /// A place for one more connection from `address` (unknown when the
    /// server is embedded without connect info: only the total counts).
    pub fn admit(&self, address: Option<IpAddr>) -> Result<Ticket, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(Refused::Full(self.max_total));
        }
        if let Some(address) = address {
            let held = counts.per_address.entry(address).or_default();
            if *held >= self.max_per_address {
                return Err(Refused::AddressFull { address, limit: self.max_per_address });
            }
            *held += 1;
        }
        counts.total += 1;
        Ok(Ticket { address, counts: self.counts.clone() })
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total -= 1;
        if let Some(address) = self.address {
            if let Some(held) = counts.per_address.get_mut(&address) {
                *held -= 1;
                if *held == 0 {
                    counts.per_address.remove(&address);
                }
            }
        }
    }
}

/// Plugin hooks in flight per client address: the connections of one
/// address wait for each other's hooks, never for everyone's, so one address
/// cannot take the plugin's instances from every other user.
#[derive(Debug)]
pub(crate) struct HookGate {
    per_address: usize,
    gates: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

impl HookGate {
    /// At most `per_address` hooks at once from one address.
    pub fn new(per_address: usize) -> Self {
        Self { per_address, gates: Mutex::default() }
    }

    /// Wait for a place for one more hook from `address` (none to wait for
    /// when the address is unknown); the place is held until dropped.
    pub async fn enter(&self, address: Option<IpAddr>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            if gates.len() > 1024 {
                // Forget the gates of addresses with no hook in flight.
                gates.retain(|_, gate| gate.available_permits() < self.per_address || Arc::strong_count(gate) > 1);
            }
            let per_address = self.per_address;
            gates.entry(address?).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per_address))).clone()
        };
        gate.acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("origin", origin.parse().unwrap());
        headers.insert("host", host.parse().unwrap());
        headers
    }

    #[test]
    fn default_allows_same_host_and_loopback_only() {
        let default = AllowedOrigins::default();
        assert!(default.check(&headers("https://chat.example.com", "chat.example.com")).is_ok());
        assert!(default.check(&headers("http://localhost:5173", "chat.example.com")).is_ok());
        assert!(default.check(&headers("http://127.0.0.1:5173", "chat.example.com")).is_ok());
        assert!(default.check(&headers("http://[::1]:5173", "chat.example.com")).is_ok());
        assert!(default.check(&headers("https://evil.example", "chat.example.com")).is_err());
        assert!(default.check(&headers("https://localhost.evil.example", "chat.example.com")).is_err());
        assert!(default.check(&HeaderMap::new()).is_ok(), "no Origin: not a browser");
    }

    #[test]
    fn explicit_lists_replace_the_default() {
        let list = AllowedOrigins::parse("https://app.example.com, http://localhost:3000").unwrap();
        assert!(list.check(&headers("https://APP.example.com", "x")).is_ok());
        assert!(list.check(&headers("http://localhost:3001", "x")).is_err());
        assert_eq!(AllowedOrigins::parse("*").unwrap(), AllowedOrigins::Any);
        assert!(AllowedOrigins::parse("app.example.com").is_err());
    }

    #[test]
    fn limits_count_total_and_per_address() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(Some(a)).unwrap();
        let _second = admission.admit(Some(a)).unwrap();
        assert!(matches!(admission.admit(Some(a)), Err(Refused::AddressFull { .. })));
        let _third = admission.admit(Some(b)).unwrap();
        assert_eq!(admission.admit(Some(b)).unwrap_err(), Refused::Full(3));
        drop(first);
        let _again = admission.admit(Some(a)).unwrap();
        assert_eq!(admission.open(), 3);
    }

    #[tokio::test]
    async fn hooks_wait_per_address() {
        let gate = HookGate::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (first, _second) = (gate.enter(Some(a)).await, gate.enter(Some(a)).await);
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), gate.enter(Some(a))).await;
        assert!(third.is_err(), "a third hook from one address waits");
        assert!(gate.enter(Some(b)).await.is_some(), "another address does not");
        drop(first);
        assert!(gate.enter(Some(a)).await.is_some());
        assert!(gate.enter(None).await.is_none(), "an unknown address is not gated");
    }
}
