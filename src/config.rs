//! Node configuration: a documented serde struct whose `Default` is a working local
//! dev setup.
//!
//! Precedence, lowest first: built-in defaults < a TOML file < `MLMESH_*` environment
//! variables (< command-line flags, applied by binaries). Environment keys use `__`
//! between levels: `MLMESH_NODE__NAME=trainer`, `MLMESH_DISCOVERY__SEEDS=tcp://10.0.0.2:7001`
//! (lists are comma-separated), `MLMESH_LIVENESS__HEARTBEAT_MS=500`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use mlmesh_protocol::NodeId;

/// The empty section of a node without one of its own.
#[derive(Default, Serialize, Deserialize)]
struct NoSection {}

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value outside what it accepts.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// Dotted field path, e.g. `liveness.heartbeat_ms`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file or environment could not be read or has the wrong shape.
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
}

/// Everything a node needs to know at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Who this node is.
    pub node: NodeSection,
    /// Where it listens.
    pub network: NetworkSection,
    /// How it finds peers.
    pub discovery: DiscoverySection,
    /// How it judges peers alive.
    pub liveness: LivenessSection,
    /// Bounds on sizes, queues and concurrency.
    pub limits: LimitsSection,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Human-readable name; need not be unique. `[a-zA-Z0-9_-]`, at most 30 bytes.
    pub name: String,
    /// Mesh name: nodes ignore peers of other meshes on the same network.
    pub mesh: String,
    /// Roles advertised to peers (e.g. `tracker`).
    pub roles: Vec<String>,
    /// A fixed node id (UUID). Unset: a new id at every start.
    pub id: Option<NodeId>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "node".into(),
            mesh: "default".into(),
            roles: Vec::new(),
            id: None,
        }
    }
}

/// `[network]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// IPv4 address to bind both sockets to; `0.0.0.0` for every interface.
    pub bind: Ipv4Addr,
    /// Bind to this interface's IPv4 address instead of `bind` (e.g. `eth0`).
    pub interface: Option<String>,
    /// Address peers should dial. Unset: `bind`, or the interfaces' addresses
    /// (as mDNS sees them) when `bind` is `0.0.0.0`.
    pub advertise: Option<Ipv4Addr>,
    /// PUB (events) port; 0 picks a free one.
    pub pub_port: u16,
    /// ROUTER (instructions) port; 0 picks a free one.
    pub rpc_port: u16,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            bind: Ipv4Addr::LOCALHOST,
            interface: None,
            advertise: None,
            pub_port: 0,
            rpc_port: 0,
        }
    }
}

/// `[discovery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySection {
    /// Advertise and browse over mDNS.
    pub mdns: bool,
    /// Interfaces mDNS uses, by name (`lo`, `eth0`). Empty: follow the bind address
    /// (loopback only for `127.0.0.1`, `network.interface` if set, a specific address's
    /// interface, or every IPv4 interface for `0.0.0.0`).
    pub mdns_interfaces: Vec<String>,
    /// Seed peers' ROUTER endpoints, `tcp://host:port`, for networks without multicast.
    pub seeds: Vec<String>,
    /// How often seeds are asked for the peers they know, in milliseconds.
    pub seed_interval_ms: u64,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            mdns: true,
            mdns_interfaces: Vec::new(),
            seeds: Vec::new(),
            seed_interval_ms: 2000,
        }
    }
}

/// `[liveness]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessSection {
    /// Heartbeat interval in milliseconds. Peers call this node suspect after two
    /// intervals of silence and gone after three.
    pub heartbeat_ms: u32,
}

impl Default for LivenessSection {
    fn default() -> Self {
        Self { heartbeat_ms: 1000 }
    }
}

/// What `publish` does when the publish queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the new event and count it; subscribers see a sequence gap.
    #[default]
    DropNewest,
    /// Wait for room (backpressure on the publisher).
    Block,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest frame sent or accepted, in bytes.
    pub max_message_size: usize,
    /// Events waiting to be written to the PUB socket.
    pub publish_queue: usize,
    /// Bytes the publish queue may hold (encoded events).
    pub publish_queue_bytes: usize,
    /// What to do when `publish_queue` or `publish_queue_bytes` is full.
    pub publish_overflow: Overflow,
    /// Frames queued at the PUB socket per subscriber; beyond that, frames for that
    /// subscriber are dropped (it sees a sequence gap). With `batch_max_bytes`, this
    /// bounds what a stalled subscriber costs the publisher.
    pub subscriber_queue: usize,
    /// Largest batch frame the publisher builds from a backlog, in bytes.
    pub batch_max_bytes: usize,
    /// Events buffered per subscription; further events are dropped and counted.
    pub subscription_queue: usize,
    /// Instructions this node executes at once; more get RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Outstanding instructions this node sends at once; more wait.
    pub max_in_flight: usize,
    /// Deadline of a request that names none, in milliseconds.
    pub default_deadline_ms: u32,
    /// How long a background connect to a peer may take, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_size: mlmesh_protocol::DEFAULT_MAX_MESSAGE_SIZE,
            publish_queue: 16_384,
            publish_queue_bytes: 64 << 20,
            publish_overflow: Overflow::DropNewest,
            subscriber_queue: 1024,
            batch_max_bytes: 16 * 1024,
            subscription_queue: 16_384,
            max_concurrent_requests: 256,
            max_in_flight: 1024,
            default_deadline_ms: 5000,
            connect_timeout_ms: 2000,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then `MLMESH_*` environment variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Self::load_with::<NoSection>(file, "")?.0)
    }

    /// As [`Config::load`], for a node with a section of its own (a tracker's `[store]`):
    /// the same file and environment (`MLMESH_<SECTION>__FIELD`) fill both, with
    /// `E::default()` under them. `E` checks its own values after loading.
    pub fn load_with<E>(file: Option<&Path>, section: &str) -> Result<(Self, E), ConfigError>
    where
        E: Default + Serialize + serde::de::DeserializeOwned,
    {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default())?);
        if !section.is_empty() {
            let defaults = config::Config::try_from(&E::default())?;
            builder = builder.set_default(section, defaults.cache)?;
        }
        if let Some(path) = file {
            // Read here, as TOML whatever its name: `node.conf`, `/dev/null` for no
            // settings, or a pipe (`--config <(...)`), which `config` takes for missing.
            let in_file = |e: &dyn std::fmt::Display| {
                config::ConfigError::Message(format!("configuration file {}: {e}", path.display()))
            };
            let text = std::fs::read_to_string(path).map_err(|e| in_file(&e))?;
            let file = config::File::from_str(&text, config::FileFormat::Toml);
            // Parsed alone first, so that a syntax error names the file.
            config::Config::builder()
                .add_source(file.clone())
                .build()
                .map_err(|e| in_file(&e))?;
            builder = builder.add_source(file);
        }
        // Only `MLMESH_SECTION__FIELD` variables are configuration; others with the
        // prefix (MLMESH_LOG, MLMESH_PYTHON, ...) belong to binaries and tools.
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| {
                k.strip_prefix("MLMESH_")
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MLMESH")
                .source(Some(vars))
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("node.roles")
                .with_list_parse_key("discovery.seeds")
                .with_list_parse_key("discovery.mdns_interfaces")
                .try_parsing(true),
        );
        let mut table: config::Map<String, config::Value> = builder.build()?.try_deserialize()?;
        let extra = match table.remove(section) {
            Some(v) if !section.is_empty() => v.try_deserialize()?,
            _ => E::default(),
        };
        let cfg: Config =
            config::Value::new(None, config::ValueKind::Table(table)).try_deserialize()?;
        cfg.validate()?;
        Ok((cfg, extra))
    }

    /// Parses TOML text over the defaults (no environment), and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = config::Config::builder()
            .add_source(config::Config::try_from(&Config::default())?)
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A config for tests and single-host meshes: loopback, mDNS off, ephemeral ports,
    /// the given node name and mesh.
    pub fn local(name: &str, mesh: &str) -> Self {
        let mut cfg = Config::default();
        cfg.node.name = name.into();
        cfg.node.mesh = mesh.into();
        cfg.discovery.mdns = false;
        cfg
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        }
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        // The mDNS instance name is `<name>-<32 hex digits>`, one DNS label of at most 63.
        let node_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 30
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !node_name(&self.node.name) {
            return bad("node.name", "must be 1-30 characters of [a-zA-Z0-9_-]");
        }
        if !label(&self.node.mesh) {
            return bad("node.mesh", "must be 1-63 characters of [a-zA-Z0-9_-]");
        }
        if let Some(role) = self.node.roles.iter().find(|r| !label(r)) {
            return bad(
                "node.roles",
                format!("role {role:?} must be 1-63 characters of [a-zA-Z0-9_-]"),
            );
        }
        if let Some(addr) = self.network.advertise {
            if addr.is_unspecified() {
                return bad(
                    "network.advertise",
                    "must be a dialable address, not 0.0.0.0",
                );
            }
        }
        if self.network.pub_port != 0 && self.network.pub_port == self.network.rpc_port {
            return bad("network.rpc_port", "must differ from network.pub_port");
        }
        for seed in &self.discovery.seeds {
            if let Err(reason) = parse_tcp_endpoint(seed) {
                return bad("discovery.seeds", format!("{seed:?}: {reason}"));
            }
        }
        if !self.discovery.mdns && self.discovery.seeds.is_empty() {
            tracing::debug!("mDNS is off and no seeds are set: this node finds no peers itself");
        }
        if self.discovery.seed_interval_ms < 100 {
            return bad("discovery.seed_interval_ms", "must be at least 100");
        }
        if !(10..=600_000).contains(&self.liveness.heartbeat_ms) {
            return bad("liveness.heartbeat_ms", "must be between 10 and 600000");
        }
        let l = &self.limits;
        if !(1024..=256 << 20).contains(&l.max_message_size) {
            return bad(
                "limits.max_message_size",
                "must be between 1 KiB and 256 MiB",
            );
        }
        if l.publish_queue_bytes < l.max_message_size || l.publish_queue_bytes > u32::MAX as usize {
            return bad(
                "limits.publish_queue_bytes",
                "must be at least limits.max_message_size and at most 4 GiB",
            );
        }
        if l.batch_max_bytes > l.max_message_size {
            return bad(
                "limits.batch_max_bytes",
                "must not exceed limits.max_message_size",
            );
        }
        for (field, v) in [
            ("limits.publish_queue", l.publish_queue),
            ("limits.subscriber_queue", l.subscriber_queue),
            ("limits.subscription_queue", l.subscription_queue),
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
            ("limits.max_in_flight", l.max_in_flight),
        ] {
            if !(1..=1 << 24).contains(&v) {
                return bad(field, "must be between 1 and 16777216");
            }
        }
        if l.default_deadline_ms == 0 {
            return bad("limits.default_deadline_ms", "must be positive");
        }
        if !(10..=600_000).contains(&l.connect_timeout_ms) {
            return bad("limits.connect_timeout_ms", "must be between 10 and 600000");
        }
        Ok(())
    }

    /// The IPv4 address the sockets bind to: `network.interface`'s address if set, else
    /// `network.bind`.
    pub fn bind_address(&self) -> Result<Ipv4Addr, ConfigError> {
        let Some(name) = &self.network.interface else {
            return Ok(self.network.bind);
        };
        if_addrs::get_if_addrs()
            .map_err(|e| ConfigError::Invalid {
                field: "network.interface",
                reason: format!("cannot list interfaces: {e}"),
            })?
            .into_iter()
            .filter(|i| &i.name == name)
            .find_map(|i| match i.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .ok_or_else(|| ConfigError::Invalid {
                field: "network.interface",
                reason: format!("no interface {name:?} with an IPv4 address"),
            })
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.liveness.heartbeat_ms.into())
    }

    /// The default request deadline.
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.limits.default_deadline_ms.into())
    }

    /// The default config as commented TOML, for `config print`.
    pub fn default_toml() -> &'static str {
        include_str!("config/default.toml")
    }
}

/// Checks `tcp://host:port` and returns (host, port).
pub(crate) fn parse_tcp_endpoint(s: &str) -> Result<(&str, u16), String> {
    let rest = s
        .strip_prefix("tcp://")
        .ok_or_else(|| "must start with tcp://".to_string())?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| "must be tcp://host:port".to_string())?;
    if host.is_empty() {
        return Err("host is empty".into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port must not be 0".into());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_matches_the_documented_file() {
        Config::default()
            .validate()
            .expect("default config is valid");
        let documented = Config::from_toml(Config::default_toml()).expect("documented config");
        assert_eq!(documented, Config::default());
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        // The only test in this binary that reads the environment (it is process-wide).
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[node]\nname = \"from-file\"\n[liveness]\nheartbeat_ms = 500\n",
        )
        .expect("write config");
        // Any name is read as TOML, an empty file as no settings.
        let conf = dir.path().join("node.conf");
        std::fs::write(&conf, "[liveness]\nheartbeat_ms = 700\n").expect("write config");
        let plain = Config::load(Some(&conf)).expect("a config named node.conf");
        assert_eq!(plain.liveness.heartbeat_ms, 700);
        let empty = Config::load(Some(Path::new("/dev/null"))).expect("an empty config");
        assert_eq!(empty, Config::default());
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[node\n").expect("write config");
        let err = Config::load(Some(&broken)).expect_err("a syntax error");
        assert!(err.to_string().contains("broken.toml"), "{err}");
        std::env::set_var("MLMESH_NODE__NAME", "from-env");
        std::env::set_var("MLMESH_LOG", "debug"); // not configuration: ignored
        std::env::set_var(
            "MLMESH_DISCOVERY__SEEDS",
            "tcp://10.0.0.1:7001,tcp://10.0.0.2:7001",
        );
        let loaded = Config::load(Some(&path));
        std::env::set_var("MLMESH_LIVENESS__HEARTBEAT_MS", "5");
        let invalid = Config::load(Some(&path));
        for k in [
            "MLMESH_NODE__NAME",
            "MLMESH_LOG",
            "MLMESH_DISCOVERY__SEEDS",
            "MLMESH_LIVENESS__HEARTBEAT_MS",
        ] {
            std::env::remove_var(k);
        }
        let cfg = loaded.expect("valid config");
        assert_eq!(cfg.node.name, "from-env");
        assert_eq!(cfg.liveness.heartbeat_ms, 500);
        assert_eq!(cfg.discovery.seeds.len(), 2);
        assert_eq!(cfg.limits, LimitsSection::default());
        let err = invalid.expect_err("heartbeat of 5 ms");
        assert!(err.to_string().contains("liveness.heartbeat_ms"), "{err}");
        let missing = Config::load(Some(&dir.path().join("absent.toml"))).expect_err("no file");
        assert!(missing.to_string().contains("absent.toml"), "{missing}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = Config::from_toml("[liveness]\nheartbeat_ms = 1").expect_err("too small");
        assert!(err.to_string().contains("liveness.heartbeat_ms"), "{err}");
        let err = Config::from_toml("[discovery]\nseeds = [\"udp://x:1\"]").expect_err("bad seed");
        assert!(err.to_string().contains("discovery.seeds"), "{err}");
        let err = Config::from_toml("[node]\nnmae = \"x\"").expect_err("unknown field");
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = Config::from_toml("[network]\nbind = \"not-an-ip\"").expect_err("bad ip");
        assert!(err.to_string().contains("bind"), "{err}");
    }
}
