//! The daemon's configuration: a TOML file, overridden by flags and `DCLOUD_*`
//! environment variables (the binary merges them into [`RawConfig`] before
//! calling [`RawConfig::validate`]).
//!
//! ```toml
//! data_dir = "/var/lib/dcloud"
//! trust_root = "/etc/dcloud/root.chain"
//! listen = ["/ip4/0.0.0.0/tcp/7700", "/ip4/0.0.0.0/udp/7700/quic-v1"]
//! bootstrap = ["/ip4/192.0.2.10/tcp/7700"]
//! api = "127.0.0.1:7780"
//! mdns = false
//! freshness_skew_ms = 60000       # timestamp keys only (docs/operator-guide.md)
//! freshness_grace_ms = 120000
//! freshness_lag_max_ms = 300000
//!
//! [apply]
//! file = "/etc/site/dcloud.json"
//! command = "systemctl reload my-service"
//! timeout_ms = 30000
//! secrets_file = "/etc/site/dcloud-secrets.json"   # default: <data_dir>/secrets.json, mode 0600
//!
//! [engine]                      # replication tuning (optional; every key of
//! status_refresh_interval_ms = 600000 # dcloud_node::engine::EngineConfig,
//! anti_entropy_interval_ms = 1500   # with its defaults; docs/daemon.md lists them)
//! lazy_flush_interval_ms = 100
//! graft_timeout_ms = 150
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

use crate::engine::EngineConfig;

/// The largest engine frame the daemon accepts or sends (`net.rs`); the
/// engine's `wire.message_size_max_bytes` may not exceed it.
pub const FRAME_SIZE_MAX_BYTES: usize = 8 << 20;
/// Default local API address.
pub const API_DEFAULT: &str = "127.0.0.1:7780";
/// Default apply command timeout.
pub const APPLY_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// Default number of peers the daemon tries to stay connected to.
pub const PEERS_TARGET_DEFAULT: usize = 8;

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A key of the config file.
    File(PathBuf),
    /// A command-line flag or its environment variable.
    Flag,
}

/// An invalid configuration: names the file (or flag), the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (it names the key and line).
        reason: String,
    },
    /// A key holds a value that is not valid.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        /// "config file X" or "flag/environment".
        origin: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required key is missing everywhere.
    #[error("{origin}: key `{key}` is required ({hint})")]
    Missing {
        /// Where we looked.
        origin: String,
        /// The key.
        key: &'static str,
        /// How to set it.
        hint: &'static str,
    },
}

/// The apply section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApply {
    /// File the effective config is rendered to (JSON).
    pub file: Option<PathBuf>,
    /// Command run (with `/bin/sh -c`) after each render.
    pub command: Option<String>,
    /// Command timeout.
    pub timeout_ms: Option<u64>,
    /// File the secrets sealed to this site are written to (JSON, mode
    /// 0600); default `<data_dir>/secrets.json`.
    pub secrets_file: Option<PathBuf>,
}

/// The configuration as written in the file, before validation. Every field is
/// optional so that flags and environment variables can fill or override it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Data directory (key, store, epoch file).
    pub data_dir: Option<PathBuf>,
    /// Trust root chain file (`dcloud-admin root init` writes it).
    pub trust_root: Option<PathBuf>,
    /// Listen multiaddrs.
    pub listen: Option<Vec<String>>,
    /// Bootstrap peer multiaddrs (optionally ending in `/p2p/<peer id>`).
    pub bootstrap: Option<Vec<String>>,
    /// Local API address.
    pub api: Option<String>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: Option<bool>,
    /// Peers to stay connected to.
    pub peers_target: Option<usize>,
    /// Applying policy to the site.
    pub apply: Option<RawApply>,
    /// Replication tuning: the engine's own configuration, with its defaults.
    pub engine: Option<EngineConfig>,
    /// Clock skew allowed past a freshness statement's expiry.
    pub freshness_skew_ms: Option<u64>,
    /// How long after start a node may hold no freshness statement.
    pub freshness_grace_ms: Option<u64>,
    /// How long a node may lack policy heads a freshness statement names.
    pub freshness_lag_max_ms: Option<u64>,
    #[serde(skip)]
    origin: Option<PathBuf>,
}

/// How the effective config is applied to the site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyConfig {
    /// File rendered atomically.
    pub file: Option<PathBuf>,
    /// Command run after rendering.
    pub command: Option<String>,
    /// Bound on the command's run time.
    pub timeout_ms: u64,
    /// File the secrets sealed to this site are written to (mode 0600).
    pub secrets_file: Option<PathBuf>,
}

/// The default secrets file inside a data directory.
pub fn secrets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.json")
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Trust root chain file.
    pub trust_root: PathBuf,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// Local API address.
    pub api: SocketAddr,
    /// mDNS discovery.
    pub mdns: bool,
    /// Peers to stay connected to.
    pub peers_target: usize,
    /// Applying policy.
    pub apply: ApplyConfig,
    /// Replication tuning (validated).
    pub engine: EngineConfig,
    /// The freshness verdict's bounds.
    pub freshness: crate::freshness::FreshnessConfig,
}

impl Config {
    /// The node's secret key file.
    pub fn key_path(&self) -> PathBuf {
        key_path(&self.data_dir)
    }
}

/// The key file inside a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.key")
}

impl RawConfig {
    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        raw.origin = Some(path.to_path_buf());
        Ok(raw)
    }

    fn origin(&self) -> String {
        match &self.origin {
            Some(p) => format!("config file {}", p.display()),
            None => "flags/environment (no config file)".to_string(),
        }
    }

    /// Check every value and fill in defaults. Errors name the file (or the
    /// flags), the key and the reason.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let origin = self.origin();
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.to_string(),
            reason,
        };
        let data_dir = self.data_dir.clone().ok_or(ConfigError::Missing {
            origin: origin.clone(),
            key: "data_dir",
            hint: "--data-dir or DCLOUD_DATA_DIR",
        })?;
        let trust_root = self.trust_root.clone().ok_or(ConfigError::Missing {
            origin: origin.clone(),
            key: "trust_root",
            hint: "--trust-root or DCLOUD_TRUST_ROOT",
        })?;
        let parse_addrs = |key: &'static str, list: &Option<Vec<String>>| {
            list.iter()
                .flatten()
                .map(|s| {
                    s.trim()
                        .parse::<Multiaddr>()
                        .map_err(|e| invalid(key, format!("{s:?} is not a multiaddr: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut listen = parse_addrs("listen", &self.listen)?;
        if listen.is_empty() {
            listen = vec![
                "/ip4/0.0.0.0/tcp/7700".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/7700/quic-v1".parse().expect("valid"),
            ];
        }
        let bootstrap = parse_addrs("bootstrap", &self.bootstrap)?;
        let api_text = self.api.clone().unwrap_or_else(|| API_DEFAULT.to_string());
        let api: SocketAddr = api_text.parse().map_err(|e| {
            invalid(
                "api",
                format!("{api_text:?} is not an address like 127.0.0.1:7780: {e}"),
            )
        })?;
        let peers_target = self.peers_target.unwrap_or(PEERS_TARGET_DEFAULT);
        if !(1..=256).contains(&peers_target) {
            return Err(invalid(
                "peers_target",
                format!("{peers_target} is outside 1..=256"),
            ));
        }
        let apply_raw = self.apply.clone().unwrap_or_default();
        let timeout_ms = apply_raw.timeout_ms.unwrap_or(APPLY_TIMEOUT_DEFAULT_MS);
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(invalid(
                "apply.timeout_ms",
                format!("{timeout_ms} is outside 1..=3600000"),
            ));
        }
        if let Some(file) = &apply_raw.file {
            let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
            if file.file_name().is_none() {
                return Err(invalid(
                    "apply.file",
                    format!("{} is not a file path", file.display()),
                ));
            }
            if let Some(p) = parent
                && !p.is_dir()
            {
                return Err(invalid(
                    "apply.file",
                    format!("directory {} does not exist", p.display()),
                ));
            }
        }
        if let Some(p) = apply_raw
            .secrets_file
            .as_ref()
            .and_then(|f| f.parent())
            .filter(|p| !p.as_os_str().is_empty())
            && !p.is_dir()
        {
            return Err(invalid(
                "apply.secrets_file",
                format!("directory {} does not exist", p.display()),
            ));
        }
        if apply_raw
            .command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(invalid("apply.command", "is empty".into()));
        }
        let engine = self.engine.clone().unwrap_or_default();
        engine.validate().map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            key: format!("engine.{}", e.field),
            reason: e.reason,
        })?;
        if engine.wire.message_size_max_bytes > FRAME_SIZE_MAX_BYTES {
            // A message the daemon's framing would never carry.
            return Err(invalid(
                "engine.wire.message_size_max_bytes",
                format!(
                    "{} is over the daemon's frame bound of {} bytes",
                    engine.wire.message_size_max_bytes, FRAME_SIZE_MAX_BYTES
                ),
            ));
        }
        if engine.status_refresh_interval_ms == 0 {
            // An owner's signed view must never be very old.
            return Err(invalid(
                "engine.status_refresh_interval_ms",
                "0 (never) is for the simulator; a daemon needs 50..=86400000".into(),
            ));
        }
        let ranged = |key: &'static str, v: Option<u64>, default: u64, lo: u64, hi: u64| {
            let v = v.unwrap_or(default);
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(key, format!("{v} is outside {lo}..={hi}")))
            }
        };
        let fd = crate::freshness::FreshnessConfig::default();
        let freshness = crate::freshness::FreshnessConfig {
            skew_ms: ranged(
                "freshness_skew_ms",
                self.freshness_skew_ms,
                fd.skew_ms,
                0,
                86_400_000,
            )?,
            grace_ms: ranged(
                "freshness_grace_ms",
                self.freshness_grace_ms,
                fd.grace_ms,
                0,
                86_400_000,
            )?,
            lag_max_ms: ranged(
                "freshness_lag_max_ms",
                self.freshness_lag_max_ms,
                fd.lag_max_ms,
                0,
                86_400_000,
            )?,
        };
        let secrets_file = apply_raw
            .secrets_file
            .clone()
            .unwrap_or_else(|| secrets_path(&data_dir));
        Ok(Config {
            engine,
            freshness,
            data_dir,
            trust_root,
            listen,
            bootstrap,
            api,
            mdns: self.mdns.unwrap_or(false),
            peers_target,
            apply: ApplyConfig {
                file: apply_raw.file,
                command: apply_raw.command,
                timeout_ms,
                secrets_file: Some(secrets_file),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"/x\"\ntrust_root = \"/r\"\nlisten = [\"nonsense\"]\n",
        )
        .unwrap();
        let err = RawConfig::from_file(&path)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.toml"), "{err}");
        assert!(err.contains("`listen`"), "{err}");
        assert!(err.contains("nonsense"), "{err}");

        std::fs::write(&path, "data_dir = 3\n").unwrap();
        let err = RawConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("node.toml") && err.contains("data_dir"),
            "{err}"
        );

        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = RawConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn defaults_fill_in() {
        let raw = RawConfig {
            data_dir: Some("/d".into()),
            trust_root: Some("/r".into()),
            ..Default::default()
        };
        let c = raw.validate().unwrap();
        assert_eq!(c.api.to_string(), API_DEFAULT);
        assert_eq!(c.engine, EngineConfig::default());
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.freshness, crate::freshness::FreshnessConfig::default());
        assert_eq!(c.freshness.skew_ms, 60_000);
    }
}
