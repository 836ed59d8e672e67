//! How the Redis backend reaches Redis: one node or a cluster, plain or TLS,
//! as the operator's URLs say, behind one command connection type.
//!
//! - `redis://[user:password@]host:port/db` is one node; `rediss://` is the
//!   same over TLS (trusting the system's roots, or [`RedisOptions::tls_ca`]).
//! - Several URLs separated by commas are the seed nodes of a cluster, the
//!   list `redis::cluster::ClusterClient::new` takes. A single URL whose node
//!   reports `cluster_enabled:1` is a cluster too, so a deployment moves from
//!   one Redis to a cluster without changing its flags.
//! - ACL users and passwords travel in the URL, on either topology.

use super::slots::Node;
use super::{bounded, map_err, RedisOptions};
use crate::backend::BackendError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
use std::time::Duration;

/// One Redis server, or a cluster of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server.
    Single,
    /// A Redis Cluster.
    Cluster,
}

/// Where Redis is, parsed and checked once.
#[derive(Clone)]
pub(crate) struct Endpoint {
    seeds: Vec<String>,
    tls_ca: Option<Vec<u8>>,
    pub topology: Topology,
    timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    /// Without passwords: the URLs may carry them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} Redis at {}", self.topology, redact(&self.seeds.join(",")))
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            },
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn config_error(reason: impl Into<String>) -> BackendError {
    BackendError::Config(reason.into())
}

impl Endpoint {
    /// Parse the URLs and find out which topology they lead to.
    pub async fn resolve(options: &RedisOptions) -> Result<Self, BackendError> {
        let seeds: Vec<String> =
            options.url.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if seeds.is_empty() {
            return Err(config_error("no Redis URL given"));
        }
        for seed in &seeds {
            redis::parse_redis_url(seed).ok_or_else(|| {
                config_error(format!(
                    "{} is not a Redis URL (redis://host:port, rediss:// for TLS, commas between cluster seeds)",
                    redact(seed)
                ))
            })?;
        }
        let mut endpoint =
            Self { seeds, tls_ca: options.tls_ca.clone(), topology: Topology::Single, timeout: options.timeout };
        endpoint.topology = if endpoint.seeds.len() > 1 { Topology::Cluster } else { endpoint.probe().await? };
        Ok(endpoint)
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.tls_ca.clone().map(|root| TlsCertificates { client_tls: None, root_cert: Some(root) })
    }

    /// A client for the first seed (the only one on a single node).
    pub fn single_client(&self) -> Result<redis::Client, BackendError> {
        let opened = match self.certificates() {
            Some(certificates) => redis::Client::build_with_tls(self.seeds[0].as_str(), certificates),
            None => redis::Client::open(self.seeds[0].as_str()),
        };
        opened.map_err(|e| map_err("connect", self.timeout, e))
    }

    /// A cluster client over every seed; `push` receives pub/sub messages
    /// (RESP3), for the subscriber's connection.
    pub fn cluster_client(
        &self,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterClient, BackendError> {
        let mut builder = ClusterClientBuilder::new(self.seeds.iter().map(String::as_str))
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(certificates) = self.certificates() {
            builder = builder.certs(certificates);
        }
        if let Some(push) = push {
            builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
        }
        builder.build().map_err(|e| map_err("connect", self.timeout, e))
    }

    /// One node answers `INFO cluster`: is it part of a cluster?
    async fn probe(&self) -> Result<Topology, BackendError> {
        let client = self.single_client()?;
        let mut conn = bounded("connect", self.timeout, client.get_multiplexed_async_connection()).await?;
        match bounded("connect", self.timeout, redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn)).await
        {
            Ok(info) if info.lines().any(|line| line.trim() == "cluster_enabled:1") => Ok(Topology::Cluster),
            Ok(_) => Ok(Topology::Single),
            // An ACL without INFO: the node cannot tell; a cluster is still
            // reachable by naming several seeds.
            Err(BackendError::Refused { cause, .. }) => {
                tracing::warn!(reason = %cause, "INFO is not allowed: using one Redis (name several seed URLs for a cluster)");
                Ok(Topology::Single)
            }
            Err(e) => Err(e),
        }
    }

    /// A command connection that reconnects (and, on a cluster, follows
    /// slot moves and failovers) by itself.
    pub async fn connect(&self) -> Result<RedisConnection, BackendError> {
        match self.topology {
            Topology::Single => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let client = self.single_client()?;
                let conn = bounded("connect", self.timeout, client.get_connection_manager_with_config(config)).await?;
                Ok(RedisConnection::Single(conn))
            }
            Topology::Cluster => {
                let client = self.cluster_client(None)?;
                Ok(RedisConnection::Cluster(bounded("connect", self.timeout, client.get_async_connection()).await?))
            }
        }
    }
}

/// A command connection to one node or to a cluster: commands and scripts are
/// routed by their first key; pipelines must stay within one slot (or be
/// sent to one node with `RedisConnection::pipeline_to`).
#[derive(Clone)]
pub enum RedisConnection {
    /// One node, reconnecting by itself.
    Single(ConnectionManager),
    /// A cluster, following slot moves and failovers.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Send `pipeline` to `node` (a cluster's master of every slot the
    /// pipeline touches); on one node, to that node.
    pub(crate) async fn pipeline_to(&mut self, pipeline: Pipeline, node: &Node) -> redis::RedisResult<Vec<Value>> {
        let count = pipeline.len();
        match self {
            RedisConnection::Single(conn) => conn.req_packed_commands(&pipeline, 0, count).await,
            RedisConnection::Cluster(conn) => conn.route_pipeline(pipeline, 0, count, address(node)).await,
        }
    }

    /// Send one command to `node` (SCAN, per master); on one node, or
    /// without a node, where the command routes itself.
    pub(crate) async fn command_to(&mut self, command: Cmd, node: Option<&Node>) -> redis::RedisResult<Value> {
        match (self, node) {
            (RedisConnection::Cluster(conn), Some(node)) => {
                conn.route_command(command, redis::cluster_routing::RoutingInfo::SingleNode(address(node))).await
            }
            (conn, _) => conn.req_packed_command(&command).await,
        }
    }
}

fn address(node: &Node) -> redis::cluster_routing::SingleNodeRoutingInfo {
    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host: node.host.clone(), port: node.port }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(conn) => conn.get_db(),
            RedisConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://secret@h:1,redis://h:2"), "rediss://***@h:1,redis://h:2");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
