//! Control configuration: a TOML file, then environment overrides (`SFU__SECTION__KEY=value`),
//! then command-line flags. Every key has a default; an invalid value is an error naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sfu_core::NodeConfig;

/// Prefix of environment overrides: `SFU__NODE__WORKERS=4` sets `node.workers`.
pub const ENV_PREFIX: &str = "SFU__";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub node: NodeConfig,
    /// `[turn]`: TURN credentials handed to clients; off unless a secret and URLs are set.
    pub turn: crate::turn::TurnConfig,
    /// `[cluster]`: media nodes on other hosts join over QUIC; off unless `listen` is set.
    pub cluster: ClusterConfig,
    /// `[store]`: where control keeps its state; in memory unless `redis_url` is set.
    pub store: StoreConfig,
    /// `[cascade]`: rooms that span nodes (docs/cascade.md).
    pub cascade: CascadeConfig,
    /// `[rtc]`: the WebSocket room protocol (docs/signaling.md).
    pub rtc: crate::rtc::RtcConfig,
    /// `[ptt]`: push-to-talk channels (docs/push-to-talk.md).
    pub ptt: crate::rtc::floor::PttConfig,
    /// `[hybrid]`: rooms peer to peer while small (docs/hybrid.md).
    pub hybrid: crate::rtc::hybrid::HybridSettings,
}

/// `[cascade]`: how rooms that span nodes are relayed between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// A node relaying a room from another leaves it once the room has had no subscriber on
    /// it for this long (the relay comes back with the room's next session there).
    pub idle_secs: u32,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self { idle_secs: 30 }
    }
}

/// `[store]`: state shared by several control instances (Redis), or kept in this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://HOST:PORT[/DB]`: share sessions, rooms and nodes with the other control
    /// instances using the same Redis. Unset = in memory (one control instance).
    pub redis_url: Option<String>,
    /// How long a node's registry entry lives unless its holding instance refreshes it (it
    /// does every third of this): a node held by an instance that died is gone after it.
    pub node_ttl_ms: u64,
    /// How long a request forwarded to the instance holding a node may take.
    pub forward_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_ttl_ms: 6000,
            forward_timeout_ms: 5000,
        }
    }
}

/// `[cluster]`: control as the head of media nodes that run `sfu run` on other hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// QUIC address nodes connect to (`HOST:PORT`); unset = no remote nodes.
    pub listen: Option<SocketAddr>,
    /// Shared secret nodes prove they know (at least 16 bytes; never sent over the link).
    pub secret: String,
    /// Control's certificate (PEM) and key. When the files do not exist, a self-signed pair
    /// is generated at start and written there; give nodes the certificate file.
    pub tls_cert: std::path::PathBuf,
    pub tls_key: std::path::PathBuf,
    /// Also run the in-process node with `[cluster]` set (`control dev` always does).
    pub embedded_node: bool,
    /// A node silent this long is suspect (no new rooms), then dead (its rooms move).
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    /// How far above the average load (as a fraction) a node may go before new rooms skip
    /// it (bounded-load consistent hashing).
    pub load_slack: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listen: None,
            secret: String::new(),
            tls_cert: "control-cert.pem".into(),
            tls_key: "control-key.pem".into(),
            embedded_node: false,
            suspect_after_ms: 3000,
            dead_after_ms: 5000,
            load_slack: 0.25,
        }
    }
}

impl ClusterConfig {
    /// The health timings; `drain_timeout_secs` (`node.drain_timeout_secs`) bounds a drain.
    pub fn health(&self, drain_timeout_secs: u64) -> crate::cluster::HealthConfig {
        crate::cluster::HealthConfig {
            suspect_after: std::time::Duration::from_millis(self.suspect_after_ms),
            dead_after: std::time::Duration::from_millis(self.dead_after_ms),
            drain_timeout: std::time::Duration::from_secs(drain_timeout_secs),
        }
    }

    /// The placement policy's settings.
    pub fn placement(&self) -> crate::cluster::PlacementConfig {
        crate::cluster::PlacementConfig {
            load_slack: self.load_slack,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the signaling / metrics / demo HTTP server.
    pub listen: SocketAddr,
    /// Largest accepted request body (SDP offers), in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API key → secret. Tokens name their key in the JWT `kid` header.
    pub keys: BTreeMap<String, String>,
    /// Also trust the public development key pair (`devkey` / `devsecret`) and serve
    /// `POST /dev/token`. `control dev` turns this on. Never in production.
    pub dev: bool,
    /// Tokens may be this many seconds past `exp` (clock skew between minting and checking).
    pub leeway_secs: u64,
}

/// `[limits]`: what one client, identity or room may ask of control. Each switches off at 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Signaling POSTs (`/whip`, `/whep`, `/dev/token`) a client IP may make per second on
    /// average; 0 switches the rate limit off.
    pub signaling_rate_per_sec: u32,
    /// How many of those a client IP may make at once (the token bucket's size).
    pub signaling_burst: u32,
    /// Live sessions one identity (token `sub`) may hold, over all rooms; 0 = no cap.
    pub max_sessions_per_identity: usize,
    /// Live sessions in one room; 0 = no cap.
    pub max_sessions_per_room: usize,
    /// Live sessions on this control instance (and its node); 0 = no cap.
    pub max_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // A browser joining a room makes 2-3 POSTs; a page reload or a reconnect loop a
            // few more. 20/s with a burst of 50 never touches that, or a NAT with a few
            // dozen users joining at once, and it stops a single client's offer flood.
            signaling_rate_per_sec: 20,
            signaling_burst: 50,
            // A participant publishes audio+video (one session, or two with screen share)
            // and watches with one WHEP session per publisher it follows.
            max_sessions_per_identity: 20,
            max_sessions_per_room: 1000,
            // 4096 sessions per worker is the node's own bound; 20 000 is about what one
            // host's NIC carries (20 000 x 500 kbit/s = 10 Gbit/s) and keeps control's
            // state small.
            max_sessions: 20_000,
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl Config {
    /// Load `path` (if any), apply `SFU__*` environment overrides, validate.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                // Typed parse of the text first: its errors carry the line and the key.
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string().trim_end().to_string(),
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string().trim_end().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> =
            env.filter(|(var, _)| var.starts_with(ENV_PREFIX)).collect();
        env.sort();
        for (var, value) in env {
            let rest = &var[ENV_PREFIX.len()..];
            // Section and key names are lowercase in the schema; what follows them (the key id
            // in `SFU__AUTH__KEYS__<kid>`) is data and keeps its case.
            let keys: Vec<String> = rest
                .split("__")
                .enumerate()
                .map(|(i, k)| {
                    if i < 2 {
                        k.to_ascii_lowercase()
                    } else {
                        k.to_string()
                    }
                })
                .collect();
            let key = keys.join(".");
            let env_error = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let typed = toml_value(&value);
            let as_text = toml::Value::String(value.clone());
            apply_override(&mut table, &keys, typed.clone())
                .map_err(|m| env_error(format!("`{key}`: {m}")))?;
            // Check after each override, so an error names the variable that caused it. A
            // value that reads as a number or boolean where the key wants text (a secret of
            // digits) is taken as the text it was written as.
            if let Err(e) = Config::deserialize(toml::Value::Table(table.clone())) {
                if typed == as_text {
                    return Err(env_error(format!("`{key}` = {value:?}: {}", e.message())));
                }
                apply_override(&mut table, &keys, as_text)
                    .map_err(|m| env_error(format!("`{key}`: {m}")))?;
                Config::deserialize(toml::Value::Table(table.clone()))
                    .map_err(|_| env_error(format!("`{key}` = {value:?}: {}", e.message())))?;
            }
        }
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: path.map_or("(defaults)".into(), |p| p.display().to_string()),
                message: e.message().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate().map_err(|e| ConfigError::Invalid {
            key: e.key.to_string(),
            reason: e.reason,
        })?;
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "http.max_body_bytes".into(),
                reason: "must be at least 1024".into(),
            });
        }
        if self.limits.signaling_rate_per_sec > 0 && self.limits.signaling_burst == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.signaling_burst".into(),
                reason: "must be at least 1 while limits.signaling_rate_per_sec is above 0 \
                         (set the rate to 0 to switch the limit off)"
                    .into(),
            });
        }
        self.turn.validate()?;
        self.rtc.validate()?;
        self.ptt.validate()?;
        self.hybrid.validate()?;
        if let Some(url) = &self.store.redis_url {
            if !url.starts_with("redis://") {
                return Err(ConfigError::Invalid {
                    key: "store.redis_url".into(),
                    reason: format!("{url:?} is not a redis:// URL"),
                });
            }
        }
        if self.store.node_ttl_ms < 1500 {
            return Err(ConfigError::Invalid {
                key: "store.node_ttl_ms".into(),
                reason: "must be at least 1500 (entries are refreshed every third of it)".into(),
            });
        }
        if self.cascade.idle_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "cascade.idle_secs".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.store.forward_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "store.forward_timeout_ms".into(),
                reason: "must be above 0".into(),
            });
        }
        if self.cluster.listen.is_some()
            && self.cluster.secret.len() < sfu_link::auth::MIN_SECRET_LEN
        {
            return Err(ConfigError::Invalid {
                key: "cluster.secret".into(),
                reason: format!(
                    "must be at least {} bytes when cluster.listen is set",
                    sfu_link::auth::MIN_SECRET_LEN
                ),
            });
        }
        // A node reports its load (its heartbeat) every second.
        if self.cluster.suspect_after_ms < 1500 {
            return Err(ConfigError::Invalid {
                key: "cluster.suspect_after_ms".into(),
                reason: "must be at least 1500: nodes send a heartbeat every second".into(),
            });
        }
        let setting = |e: crate::cluster::SettingError| ConfigError::Invalid {
            key: format!("cluster.{}", e.key),
            reason: e.reason,
        };
        self.cluster
            .health(self.node.drain_timeout_secs)
            .validate()
            .map_err(setting)?;
        self.cluster.placement().validate().map_err(setting)?;
        for (key, secret) in &self.auth.keys {
            if secret.len() < 16 {
                return Err(ConfigError::Invalid {
                    key: format!("auth.keys.{key}"),
                    reason: "secret must be at least 16 characters".into(),
                });
            }
        }
        Ok(())
    }
}

/// `value` as a TOML value when it is one (numbers, booleans, arrays, quoted strings), as a
/// string otherwise.
fn toml_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// Set `keys` (a path of table names) to `value`.
fn apply_override(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((last, parents)) = keys.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "control-config-test-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&path, text).expect("temp dir is writable");
                TempPath(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_load_without_a_file() {
        let c = Config::load(None, std::iter::empty()).expect("defaults are valid");
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.node.media_port_base, 50_000);
        assert_eq!(c.http.max_body_bytes, 65_536);
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.signaling_rate_per_sec, 20);
        assert_eq!(c.limits.signaling_burst, 50);
    }

    #[test]
    fn limits_from_file_and_environment() {
        let f = write("[limits]\nsignaling_rate_per_sec = 0\nmax_sessions_per_room = 5\n");
        let env = [
            ("SFU__LIMITS__SIGNALING_BURST", "7"),
            ("SFU__LIMITS__MAX_SESSIONS_PER_IDENTITY", "3"),
            ("SFU__LIMITS__MAX_SESSIONS", "0"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load(Some(&f.0), env.into_iter()).expect("valid");
        assert_eq!(
            c.limits,
            LimitsConfig {
                signaling_rate_per_sec: 0,
                signaling_burst: 7,
                max_sessions_per_identity: 3,
                max_sessions_per_room: 5,
                max_sessions: 0,
            }
        );

        let env =
            [("SFU__LIMITS__SIGNALING_BURST", "0")].map(|(k, v)| (k.to_string(), v.to_string()));
        let e = Config::load(None, env.into_iter()).expect_err("burst 0 with a rate");
        assert!(e.to_string().contains("limits.signaling_burst"), "{e}");
        let e = Config::load(
            None,
            [("SFU__LIMITS__MAX_SESSIONS".to_string(), "-1".to_string())].into_iter(),
        )
        .expect_err("negative cap");
        assert!(e.to_string().contains("max_sessions"), "{e}");
    }

    #[test]
    fn file_then_env_override() {
        let f = write("[node]\nworkers = 3\n[http]\nlisten = \"127.0.0.1:9000\"\n");
        let env = vec![(
            "SFU__NODE__MEDIA_PORT_BASE".to_string(),
            "41000".to_string(),
        )];
        let c = Config::load(Some(&f.0), env.into_iter()).expect("valid");
        assert_eq!(c.node.workers, 3);
        assert_eq!(c.node.media_port_base, 41_000);
        assert_eq!(c.http.listen.port(), 9000);
    }

    /// An API key from the environment keeps its id's case and its secret's text, whatever
    /// the secret looks like; the section and key names before it are case-insensitive.
    #[test]
    fn api_keys_from_the_environment_are_taken_verbatim() {
        let env = [
            ("SFU__AUTH__KEYS__Prod-Key-1", "1234567890123456"),
            ("SFU__Auth__Keys__hexkey", "0x1234567890abcdef"),
            ("SFU__AUTH__KEYS__quoted", "\"a secret with spaces\""),
            ("SFU__NODE__WORKERS", "3"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load(None, env.into_iter()).expect("valid");
        let keys: Vec<(&str, &str)> = c
            .auth
            .keys
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("Prod-Key-1", "1234567890123456"),
                ("hexkey", "0x1234567890abcdef"),
                ("quoted", "a secret with spaces"),
            ]
        );
        assert_eq!(c.node.workers, 3, "other values are still typed");
    }

    #[test]
    fn errors_name_the_key() {
        let f = write("[node]\nworkerz = 3\n");
        let e = Config::load(Some(&f.0), std::iter::empty()).expect_err("unknown key");
        assert!(e.to_string().contains("workerz"), "{e}");

        let f = write("[node]\nmedia_port_base = 0\n");
        let e = Config::load(Some(&f.0), std::iter::empty()).expect_err("bad port");
        assert!(e.to_string().contains("node.media_port_base"), "{e}");

        let f = write("[auth.keys]\nk = \"short\"\n");
        let e = Config::load(Some(&f.0), std::iter::empty()).expect_err("short secret");
        assert!(e.to_string().contains("auth.keys.k"), "{e}");

        let env = vec![("SFU__NODE__WORKERS".to_string(), "lots".to_string())];
        let e = Config::load(None, env.into_iter()).expect_err("not a number");
        assert!(
            e.to_string().contains("workers") || e.to_string().contains("invalid type"),
            "{e}"
        );
    }
}
