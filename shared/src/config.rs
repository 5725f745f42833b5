//! Configuration: embedded defaults, then a TOML file, then `SWITCHBOARD_*` environment
//! variables, then `--set` flags; unknown keys fail at start with the key's name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The embedded defaults, also printed by `switchboard config print --defaults`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");
pub const CONFIG_VERSION: u32 = 1;
const ENV_PREFIX: &str = "SWITCHBOARD_";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub node: NodeConfig,
    pub telemetry: TelemetryConfig,
    pub mesh: MeshConfig,
    pub admin: AdminConfig,
    pub channel_server: ChannelServerConfig,
    pub gateway: GatewayConfig,
    pub webapp: WebappConfig,
    pub flannel: FlannelConfig,
    pub store: StoreConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub data_dir: PathBuf,
    pub cluster_secret_file: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: String,
    pub log_filter: String,
}

/// The smallest `mesh.max_frame_bytes` accepted. A frame carries at least one message (a post,
/// a delivery, the first of a backlog), and a message of the Web API's largest size, 40,000
/// characters, is up to 160 KB in UTF-8: a lower limit would refuse it at the receiver, and
/// the link carrying it would fail again on every retry.
pub const MIN_FRAME_BYTES: usize = 512 * 1024;

/// The largest `mesh.max_frame_bytes` accepted: what the frame decoder allows one frame to
/// allocate ([`crate::protocol::MAX_DECODE_BYTES`]); a larger limit would let frames through
/// the length check that the decoder then refuses.
pub const MAX_FRAME_BYTES: usize = crate::protocol::MAX_DECODE_BYTES;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
    pub max_frame_bytes: usize,
    pub connect_timeout_ms: u64,
    pub admin_addr: SocketAddr,
    /// Congestion window, in bytes, that a new mesh connection starts with (0: QUIC's usual
    /// 14,720). At most [`MAX_MESH_INITIAL_WINDOW`].
    pub initial_window_bytes: u64,
    /// Roles of one process (`dev`) answer each other's requests without QUIC.
    pub local_calls: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelServerEntry {
    pub id: String,
    pub mesh_addr: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub mesh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub vnodes: u32,
    pub channel_servers: Vec<ChannelServerEntry>,
    pub presence_debounce_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelServerConfig {
    pub mesh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub window: usize,
    pub gateway_queue: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub webapp_url: String,
    pub session_queue: usize,
    pub max_client_frame_bytes: usize,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_sessions: usize,
    /// New sessions admitted a second, up to a second's worth at once; beyond it an upgrade
    /// is refused (503 `ratelimited`, `Retry-After`). 0: no limit.
    pub max_new_sessions_per_second: u32,
    /// Coalescing window of a busy channel, in microseconds: a channel whose messages reached
    /// the sessions less than this long ago holds the next ones until the window ends, so each
    /// session gets them in one write. A message after a quieter spell goes at once. 0: off.
    pub coalesce_us: u64,
    /// Threads that run the sessions, each a single-threaded runtime holding a share of them:
    /// a message wakes each thread once, not a task on any of the process's workers per
    /// session. 0: sessions run on the process's shared runtime; `"auto"`: chosen from the
    /// machine's cores ([`SessionThreads::resolve`]).
    pub session_threads: SessionThreads,
    /// Base URLs of the Flannel instances this gateway asks for boot data; a workspace's data
    /// lives on the one consistent hashing picks. Empty: `hello` carries no boot data.
    pub flannel_urls: Vec<String>,
    /// Over how long a stopping gateway tells its sessions `goodbye`, each at its own point of
    /// it (0: all at once), so their clients do not all reconnect elsewhere at the same moment.
    pub goodbye_spread_ms: u64,
    /// How long a stopping gateway keeps its listener open after telling its sessions
    /// `goodbye`: `/health` answers 503 meanwhile, so a load balancer sees it draining before
    /// its port closes.
    pub drain_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebappConfig {
    pub http_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub gateway_urls: Vec<String>,
    /// Calls a user may make per minute in each rate-limit tier (a token bucket refilled at
    /// this rate); over it, calls answer `ratelimited` (429 with `Retry-After`). 0: no limit.
    pub rate_limit_per_minute: u32,
    /// Calls a user may make at once in each tier before the per-minute rate applies (the
    /// bucket's size). 0: no limit.
    pub rate_limit_burst: u32,
    /// Where clients reach the Web API (`https://chat.example.com/`), behind a proxy or load
    /// balancer: the base of the links its answers carry (permalinks, `auth.test`'s `url`,
    /// webhook URLs). Empty: the `Host` each request was addressed to.
    pub public_url: String,
    /// How often the node looks for scheduled messages that are due, in milliseconds (at
    /// least 10): the most a message is posted after its `post_at`.
    pub scheduled_poll_ms: u64,
    /// How often the node reads the cluster's own records (the apps' Events API subscriptions,
    /// revoked tokens, the ends of DND snoozes), in milliseconds (at least 10): how long a new
    /// request URL waits for its first event, a token revoked on another node stays usable
    /// here, and a snooze's lapse waits to be told, at most.
    pub records_poll_ms: u64,
    /// Whether apps' request URLs (the Events API) may reach addresses that are not public:
    /// loopback, private networks, link-local (cloud metadata services), unique-local,
    /// shared, unspecified, multicast. Off, a URL whose host is such an address, or resolves
    /// only to such addresses, is refused when set and never called (each connection checks
    /// what the name resolves to then), so that an app cannot make the Web API call into the
    /// cluster's own network. `switchboard dev` turns it on.
    pub private_request_urls: bool,
    /// How long, in seconds, an app's request URL may fail nearly all its events (more than
    /// 95 % of at least ten tries, as seen by one node that has sent it events for that long)
    /// before its subscription is disabled: no more events until the app sets its URL again.
    /// Slack's hour by default; 0 never disables.
    pub events_failure_window_secs: u64,
    /// The largest file `files.getUploadURLExternal` takes, in bytes (an upload is held in
    /// memory while it is stored).
    pub max_file_bytes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlannelConfig {
    pub http_addr: SocketAddr,
    pub webapp_url: String,
    pub max_workspaces: usize,
    /// Most users held across all cached workspaces; least recently used workspaces leave
    /// first when a load goes over it (or over `max_workspaces`).
    pub max_cached_users: usize,
    /// A cached workspace older than this reloads on its next use even if no event said it
    /// changed: bounds the staleness a change event lost on its way (0: no bound).
    pub max_age_secs: u64,
    /// Workspace loads (snapshot calls to the Web API) running at once, in
    /// 1..=[`MAX_FLANNEL_CONCURRENT_LOADS`]: bounds what one Flannel asks of the Web API when
    /// every cached copy turns stale at once (the admin server restarted).
    pub max_concurrent_loads: usize,
    /// While the admin link is down (change events may be missed), how long a workspace
    /// loaded meanwhile counts as fresh; after that its uses answer it and reload it in the
    /// background. Positive.
    pub disconnected_max_age_ms: u64,
}

/// The largest `mesh.initial_window_bytes`: the connection's send window, past which a
/// larger congestion window could never be used.
pub const MAX_MESH_INITIAL_WINDOW: u64 = 64 * 1024 * 1024;
/// Most session threads a gateway starts (`gateway.session_threads`).
pub const MAX_GATEWAY_SESSION_THREADS: usize = 256;

/// Fewest cores on which `gateway.session_threads = "auto"` starts session threads: on 16
/// cores, half of them per gateway took a tenth off the 1 x 1,000 half-peak p99 without
/// moving a peak; on 2 cores session threads changed nothing (`bench/RESULTS.md`).
pub const AUTO_SESSION_THREADS_MIN_CORES: usize = 8;

/// `gateway.session_threads`: a number of threads, or `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionThreads {
    /// Half the cores on a machine of [`AUTO_SESSION_THREADS_MIN_CORES`] or more, else none.
    Auto,
    Count(usize),
}

impl SessionThreads {
    /// How many session threads to start on a machine of `cores` cores.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            SessionThreads::Count(n) => n,
            SessionThreads::Auto if cores >= AUTO_SESSION_THREADS_MIN_CORES => {
                (cores / 2).min(MAX_GATEWAY_SESSION_THREADS)
            }
            SessionThreads::Auto => 0,
        }
    }
}

impl Serialize for SessionThreads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SessionThreads::Auto => s.serialize_str("auto"),
            SessionThreads::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for SessionThreads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(SESSION_THREADS_EXPECTED))? {
            Raw::Count(n) => usize::try_from(n)
                .map(SessionThreads::Count)
                .map_err(|_| serde::de::Error::custom(SESSION_THREADS_EXPECTED)),
            Raw::Word(w) if w == "auto" => Ok(SessionThreads::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "{SESSION_THREADS_EXPECTED}, not {w:?}"
            ))),
        }
    }
}

const SESSION_THREADS_EXPECTED: &str = "expected a number of threads or \"auto\"";

/// The longest coalescing window a gateway accepts (`gateway.coalesce_us`): past it the wait
/// would be visible to people.
pub const MAX_GATEWAY_COALESCE_US: u64 = 100_000;
/// The most `flannel.max_concurrent_loads` accepted: far more snapshot calls at once than one
/// Web API serves usefully, and well within what a semaphore can count.
pub const MAX_FLANNEL_CONCURRENT_LOADS: usize = 1024;
/// The shortest `store.cql_feed_settle_ms` accepted. A change feed write that takes longer
/// than half the settle time is written again under a fresh id (a reader may have passed the
/// first one), so a settle time of a few milliseconds, under an ordinary write's latency,
/// would rewrite nearly every change several times.
pub const MIN_CQL_FEED_SETTLE_MS: u64 = 100;
/// The longest `store.cql_feed_settle_ms` accepted: search lags writes by this much.
pub const MAX_CQL_FEED_SETTLE_MS: u64 = 600_000;
/// The longest CQL message bucket, `store.cql_bucket_hours` (ten years): a bucket's partition
/// holds a channel's messages of one period, and the period in microseconds must fit an i64.
pub const MAX_CQL_BUCKET_HOURS: u64 = 24 * 365 * 10;
/// The most message shards a store may have (`store.shards`; a store refuses a recorded
/// count past it as corrupt).
pub const MAX_STORE_SHARDS: u32 = 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: String,
    pub path: String,
    pub shards: u32,
    pub cql_nodes: Vec<String>,
    pub cql_local_datacenter: String,
    pub cql_keyspace_prefix: String,
    pub cql_shard_keyspaces: Vec<String>,
    pub cql_replication_factor: u32,
    pub cql_write_consistency: String,
    pub cql_read_consistency: String,
    pub cql_bucket_hours: u64,
    pub cql_feed_settle_ms: u64,
    pub cql_request_timeout_ms: u64,
}

impl StoreConfig {
    /// The CQL store's shard count: `shards`, or 4 when it is 0 (its keyspaces are created by
    /// `switchboard store migrate`, so the count cannot follow the machine).
    pub fn cql_shards(&self) -> u32 {
        if self.shards == 0 {
            4
        } else {
            self.shards
        }
    }
}

impl Config {
    /// The embedded defaults alone.
    pub fn defaults() -> Config {
        Config::load(None, std::iter::empty(), &[]).expect("embedded defaults are valid")
    }

    /// Defaults, then `file`, then environment variables (`SWITCHBOARD_SECTION__KEY`), then
    /// `overrides` (`section.key=value`), then validation.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> anyhow::Result<Config> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_CONFIG_TOML).context("embedded defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read config file {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("failed to parse config file {}", path.display()))?;
            if let Some(v) = table.get("version") {
                if v.as_integer() != Some(i64::from(CONFIG_VERSION)) {
                    bail!(
                        "config file {} has version {v}, this build reads version {CONFIG_VERSION}",
                        path.display()
                    );
                }
            }
            merge(&mut merged, table);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            set_path(
                &mut merged,
                &section.to_ascii_lowercase(),
                &field.to_ascii_lowercase(),
                &value,
            )
            .with_context(|| format!("environment variable {key}"))?;
        }
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: expected section.key=value"))?;
            let (section, field) = path
                .split_once('.')
                .with_context(|| format!("--set {o}: expected section.key=value"))?;
            set_path(&mut merged, section, field, value).with_context(|| format!("--set {o}"))?;
        }
        let config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!("invalid configuration: {}", e.message())
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads with the process's environment.
    pub fn load_from_env(file: Option<&Path>, overrides: &[String]) -> anyhow::Result<Config> {
        Config::load(file, std::env::vars(), overrides)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.version != CONFIG_VERSION {
            bail!(
                "config version {} is not supported (expected {CONFIG_VERSION})",
                self.version
            );
        }
        if !matches!(self.telemetry.log_format.as_str(), "human" | "json") {
            bail!(
                "telemetry.log_format must be \"human\" or \"json\", not {:?}",
                self.telemetry.log_format
            );
        }
        if self.mesh.max_frame_bytes < MIN_FRAME_BYTES {
            bail!(
                "mesh.max_frame_bytes must be at least {MIN_FRAME_BYTES}: one message of the \
                 largest size (40,000 characters, up to 160 KB in UTF-8) must fit in a frame, \
                 with room for its fields"
            );
        }
        if self.mesh.max_frame_bytes > MAX_FRAME_BYTES {
            bail!("mesh.max_frame_bytes must be at most {MAX_FRAME_BYTES} (64 MiB)");
        }
        if self.admin.vnodes == 0 || self.admin.vnodes > 4096 {
            bail!("admin.vnodes must be in 1..=4096");
        }
        if self.channel_server.window == 0 {
            bail!("channel_server.window must be positive");
        }
        if self.gateway.session_queue == 0 || self.channel_server.gateway_queue == 0 {
            bail!("queue sizes must be positive");
        }
        if self.mesh.initial_window_bytes > MAX_MESH_INITIAL_WINDOW {
            bail!("mesh.initial_window_bytes must be at most {MAX_MESH_INITIAL_WINDOW}");
        }
        if self.gateway.coalesce_us > MAX_GATEWAY_COALESCE_US {
            bail!("gateway.coalesce_us must be at most {MAX_GATEWAY_COALESCE_US} (100 ms)");
        }
        if let SessionThreads::Count(n) = self.gateway.session_threads {
            if n > MAX_GATEWAY_SESSION_THREADS {
                bail!("gateway.session_threads must be at most {MAX_GATEWAY_SESSION_THREADS}");
            }
        }
        if self.gateway.max_client_frame_bytes < 256 {
            bail!("gateway.max_client_frame_bytes must be at least 256");
        }
        match self.store.kind.as_str() {
            "embedded" => {}
            "cql" => {
                if self.store.cql_nodes.is_empty() {
                    bail!("store.cql_nodes must name at least one CQL node (host:port)");
                }
                if self.store.cql_replication_factor == 0 {
                    bail!("store.cql_replication_factor must be positive");
                }
                if !(1..=MAX_CQL_BUCKET_HOURS).contains(&self.store.cql_bucket_hours) {
                    bail!(
                        "store.cql_bucket_hours must be in 1..={MAX_CQL_BUCKET_HOURS} (ten years), \
                         not {}",
                        self.store.cql_bucket_hours
                    );
                }
                if !(MIN_CQL_FEED_SETTLE_MS..=MAX_CQL_FEED_SETTLE_MS)
                    .contains(&self.store.cql_feed_settle_ms)
                {
                    bail!(
                        "store.cql_feed_settle_ms must be in \
                         {MIN_CQL_FEED_SETTLE_MS}..={MAX_CQL_FEED_SETTLE_MS}, not {}: a change \
                         feed write slower than half of it is written again, so a few \
                         milliseconds would rewrite nearly every change",
                        self.store.cql_feed_settle_ms
                    );
                }
                if self.store.cql_request_timeout_ms == 0 {
                    bail!("store.cql_request_timeout_ms must be positive");
                }
                crate::store::cql::CqlSettings::from_config(&self.store)?;
            }
            other => bail!("store.kind {other:?} is not known (expected \"embedded\" or \"cql\")"),
        }
        if self.store.shards > MAX_STORE_SHARDS {
            bail!("store.shards must be in 0..={MAX_STORE_SHARDS} (0: chosen by the store)");
        }
        if self.flannel.max_workspaces == 0 || self.flannel.max_cached_users == 0 {
            bail!("flannel.max_workspaces and flannel.max_cached_users must be positive");
        }
        if !(1..=MAX_FLANNEL_CONCURRENT_LOADS).contains(&self.flannel.max_concurrent_loads) {
            bail!(
                "flannel.max_concurrent_loads must be in 1..={MAX_FLANNEL_CONCURRENT_LOADS}, not {} \
                 (with no load allowed, every query for an uncached workspace would wait forever)",
                self.flannel.max_concurrent_loads
            );
        }
        if self.flannel.disconnected_max_age_ms == 0 {
            bail!(
                "flannel.disconnected_max_age_ms must be positive (0 would reload a workspace \
                 on every use while the admin link is down)"
            );
        }
        if !(1..=1 << 30).contains(&self.webapp.max_file_bytes) {
            bail!(
                "webapp.max_file_bytes must be in 1..=1073741824, not {}",
                self.webapp.max_file_bytes
            );
        }
        if !(10..=3_600_000).contains(&self.webapp.scheduled_poll_ms) {
            bail!(
                "webapp.scheduled_poll_ms must be in 10..=3600000, not {} (how often due \
                 scheduled messages are looked for)",
                self.webapp.scheduled_poll_ms
            );
        }
        if !(10..=3_600_000).contains(&self.webapp.records_poll_ms) {
            bail!(
                "webapp.records_poll_ms must be in 10..=3600000, not {} (how often the cluster's \
                 records are read)",
                self.webapp.records_poll_ms
            );
        }
        if self.webapp.events_failure_window_secs > 7 * 24 * 3600 {
            bail!(
                "webapp.events_failure_window_secs must be at most 604800 (a week), not {} (how \
                 long a request URL may fail before its events stop; 0 never stops them)",
                self.webapp.events_failure_window_secs
            );
        }
        let public = &self.webapp.public_url;
        if !public.is_empty() {
            let rest = public
                .strip_prefix("https://")
                .or_else(|| public.strip_prefix("http://"));
            let host = rest.map(|r| r.split('/').next().unwrap_or_default());
            if host.is_none_or(str::is_empty) || public.contains(['?', '#', ' ']) {
                bail!(
                    "webapp.public_url {public:?} must be an http:// or https:// URL with a host \
                     and no query or fragment (or empty)"
                );
            }
        }
        for url in self
            .gateway
            .flannel_urls
            .iter()
            .chain([&self.flannel.webapp_url])
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{url:?} is not an http:// or https:// URL (gateway.flannel_urls, flannel.webapp_url)");
            }
        }
        let mut urls = std::collections::HashSet::new();
        for url in &self.gateway.flannel_urls {
            if !urls.insert(url.trim_end_matches('/')) {
                bail!("gateway.flannel_urls lists {url} twice");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for cs in &self.admin.channel_servers {
            if !seen.insert(&cs.id) {
                bail!("admin.channel_servers lists {} twice", cs.id);
            }
        }
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_empty() {
            self.node.data_dir.join("store")
        } else {
            PathBuf::from(&self.store.path)
        }
    }

    pub fn cluster_secret_path(&self) -> PathBuf {
        if self.node.cluster_secret_file.is_empty() {
            self.node.data_dir.join("cluster-secret")
        } else {
            PathBuf::from(&self.node.cluster_secret_file)
        }
    }

    /// Paths of the CA certificate, this node's certificate and its key.
    pub fn tls_paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.node.data_dir.join("tls");
        let pick = |s: &str, default: &str| {
            if s.is_empty() {
                dir.join(default)
            } else {
                PathBuf::from(s)
            }
        };
        (
            pick(&self.mesh.ca_cert, "ca.pem"),
            pick(&self.mesh.cert, "node.pem"),
            pick(&self.mesh.key, "node.key"),
        )
    }

    /// This node's id, or `<role>-<random>` when unset.
    pub fn node_id(&self, role: &str) -> crate::ids::NodeId {
        if self.node.id.is_empty() {
            crate::ids::NodeId(format!("{role}-{:08x}", rand::random::<u32>()))
        } else {
            crate::ids::NodeId(self.node.id.clone())
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets `section.field` from a string, parsed as a TOML value when it is one (numbers,
/// booleans, arrays), else taken as a string.
fn set_path(table: &mut toml::Table, section: &str, field: &str, raw: &str) -> anyhow::Result<()> {
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed v"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    if section == "version" {
        bail!("version cannot be overridden");
    }
    let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
        bail!("unknown config section {section:?}");
    };
    if !sec.contains_key(field) {
        bail!("unknown config key {section}.{field}");
    }
    sec.insert(field.to_string(), value);
    Ok(())
}

/// Reads the cluster secret, creating a random one if `create` and it does not exist.
///
/// The secret signs every token, admin tokens included, so a created one is readable and
/// writable by its owner only (0600, whatever the umask), and an existing one that its group
/// or others may access is loaded with a warning.
pub fn load_cluster_secret(path: &Path, create: bool) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => {
            warn_if_exposed(path);
            Ok(bytes)
        }
        Ok(_) => bail!("cluster secret file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create {}", parent.display()))?;
            }
            let secret: [u8; 32] = rand::random();
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            match write_new_private(path, hex.as_bytes()) {
                Ok(()) => Ok(hex.into_bytes()),
                // Another process created it meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_cluster_secret(path, false)
                }
                Err(e) => Err(e).with_context(|| format!("failed to write {}", path.display())),
            }
        }
        Err(e) => {
            Err(e).with_context(|| format!("failed to read cluster secret {}", path.display()))
        }
    }
}

/// Creates `path`, which must not exist, readable and writable by its owner only, holding
/// `contents`. A file left half written is removed.
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// The permission bits of `path` that give its group or others any access, if any do.
#[cfg(unix)]
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn exposed_mode(_path: &Path) -> Option<u32> {
    None
}

fn warn_if_exposed(path: &Path) {
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "cluster secret file is accessible to its group or others, and it signs admin tokens: make it 0600"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::defaults();
        assert_eq!(c.version, 1);
        assert_eq!(c.webapp.http_addr.port(), 8080);
    }

    #[test]
    fn env_and_flags_override_in_order() {
        let env = vec![
            (
                "SWITCHBOARD_GATEWAY__SESSION_QUEUE".to_string(),
                "17".to_string(),
            ),
            (
                "SWITCHBOARD_TELEMETRY__LOG_FORMAT".to_string(),
                "json".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(None, env, &["gateway.session_queue=18".to_string()]).unwrap();
        assert_eq!(c.gateway.session_queue, 18);
        assert_eq!(c.telemetry.log_format, "json");
    }

    #[test]
    fn unknown_keys_fail_with_their_name() {
        let err = Config::load(
            None,
            std::iter::empty(),
            &["gateway.sesion_queue=1".to_string()],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("gateway.sesion_queue"),
            "{err:#}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "version = 1\n[gateway]\nbogus = 1\n").unwrap();
        let err = Config::load(Some(&path), std::iter::empty(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(Config::load(Some(&path), std::iter::empty(), &[]).is_err());
    }

    #[test]
    fn invalid_values_fail_validation() {
        assert!(Config::load(
            None,
            std::iter::empty(),
            &["telemetry.log_format=xml".to_string()]
        )
        .is_err());
        assert!(
            Config::load(None, std::iter::empty(), &["store.shards=1025".to_string()]).is_err()
        );
        let window = |v: u64| {
            Config::load(
                None,
                std::iter::empty(),
                &[format!("mesh.initial_window_bytes={v}")],
            )
        };
        assert!(window(MAX_MESH_INITIAL_WINDOW + 1).is_err());
        assert_eq!(window(1 << 20).unwrap().mesh.initial_window_bytes, 1 << 20);
        assert_eq!(Config::defaults().mesh.initial_window_bytes, 0);
        assert!(Config::load(
            None,
            std::iter::empty(),
            &[format!(
                "gateway.coalesce_us={}",
                MAX_GATEWAY_COALESCE_US + 1
            )]
        )
        .is_err());
        assert_eq!(
            Config::defaults().gateway.coalesce_us,
            0,
            "off unless asked for"
        );
        let threads = |n: usize| {
            Config::load(
                None,
                std::iter::empty(),
                &[format!("gateway.session_threads={n}")],
            )
        };
        assert!(threads(MAX_GATEWAY_SESSION_THREADS + 1).is_err());
        assert_eq!(
            threads(4).unwrap().gateway.session_threads,
            SessionThreads::Count(4)
        );
        assert_eq!(
            threads(0).unwrap().gateway.session_threads,
            SessionThreads::Count(0),
            "0 keeps the sessions on the shared runtime"
        );
        assert_eq!(
            Config::defaults().gateway.session_threads,
            SessionThreads::Auto
        );
        assert_eq!(
            Config::defaults().store.shards,
            0,
            "chosen by the store by default"
        );
        assert_eq!(Config::defaults().store.cql_shards(), 4);
        // A frame limit under one message of the largest size would fail its link for good.
        let small = format!("mesh.max_frame_bytes={}", MIN_FRAME_BYTES - 1);
        let err = Config::load(None, std::iter::empty(), &[small]).unwrap_err();
        assert!(err.to_string().contains("max_frame_bytes"), "{err}");
        let too_big = format!("mesh.max_frame_bytes={}", MAX_FRAME_BYTES + 1);
        let err = Config::load(None, std::iter::empty(), &[too_big]).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let enough = format!("mesh.max_frame_bytes={MIN_FRAME_BYTES}");
        assert!(Config::load(None, std::iter::empty(), &[enough]).is_ok());
    }

    #[test]
    fn session_threads_take_a_number_or_auto() {
        let env = |raw: &str| {
            Config::load(
                None,
                [(
                    "SWITCHBOARD_GATEWAY__SESSION_THREADS".to_string(),
                    raw.to_string(),
                )],
                &[],
            )
        };
        assert_eq!(
            env("auto").unwrap().gateway.session_threads,
            SessionThreads::Auto
        );
        assert_eq!(
            env("6").unwrap().gateway.session_threads,
            SessionThreads::Count(6)
        );
        let err = format!("{:#}", env("many").unwrap_err());
        assert!(err.contains("\"auto\"") && err.contains("many"), "{err}");
        assert!(env("-1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, "[gateway]\nsession_threads = \"auto\"\n").unwrap();
        let config = Config::load(Some(&file), std::iter::empty(), &[]).unwrap();
        assert_eq!(config.gateway.session_threads, SessionThreads::Auto);
        // What `config show` prints reads back as the same setting.
        let shown: toml::Table = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(shown["gateway"]["session_threads"].as_str(), Some("auto"));

        // Half the cores from 8 up; none on a small machine, where they changed nothing.
        assert_eq!(SessionThreads::Auto.resolve(2), 0);
        assert_eq!(SessionThreads::Auto.resolve(7), 0);
        assert_eq!(SessionThreads::Auto.resolve(8), 4);
        assert_eq!(SessionThreads::Auto.resolve(16), 8);
        assert_eq!(
            SessionThreads::Auto.resolve(4096),
            MAX_GATEWAY_SESSION_THREADS
        );
        assert_eq!(SessionThreads::Count(3).resolve(64), 3);
        assert_eq!(SessionThreads::Count(0).resolve(64), 0);
    }

    #[test]
    fn flannel_settings_parse_and_validate() {
        let c = Config::load(
            None,
            std::iter::empty(),
            &[
                r#"gateway.flannel_urls=["http://127.0.0.1:7400","http://127.0.0.1:7401"]"#
                    .to_string(),
                "flannel.max_cached_users=10".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(c.gateway.flannel_urls.len(), 2);
        assert_eq!(c.flannel.max_cached_users, 10);
        assert!(Config::defaults().gateway.flannel_urls.is_empty());
        for bad in [
            r#"gateway.flannel_urls=["127.0.0.1:7400"]"#,
            r#"gateway.flannel_urls=["http://a:1","http://a:1/"]"#,
            "flannel.max_workspaces=0",
            "flannel.max_cached_users=0",
        ] {
            assert!(
                Config::load(None, std::iter::empty(), &[bad.to_string()]).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn flannel_load_settings_parse_and_validate() {
        let defaults = Config::defaults().flannel;
        assert_eq!(
            (
                defaults.max_concurrent_loads,
                defaults.disconnected_max_age_ms
            ),
            (4, 1000)
        );
        let c = Config::load(
            None,
            [(
                "SWITCHBOARD_FLANNEL__MAX_CONCURRENT_LOADS".to_string(),
                "1".to_string(),
            )],
            &["flannel.disconnected_max_age_ms=2500".to_string()],
        )
        .unwrap();
        assert_eq!(c.flannel.max_concurrent_loads, 1);
        assert_eq!(c.flannel.disconnected_max_age_ms, 2500);
        let most = format!("flannel.max_concurrent_loads={MAX_FLANNEL_CONCURRENT_LOADS}");
        assert!(Config::load(None, std::iter::empty(), &[most]).is_ok());
        let too_many = format!(
            "flannel.max_concurrent_loads={}",
            MAX_FLANNEL_CONCURRENT_LOADS + 1
        );
        for (bad, key) in [
            (
                "flannel.max_concurrent_loads=0",
                "flannel.max_concurrent_loads",
            ),
            (too_many.as_str(), "flannel.max_concurrent_loads"),
            (
                "flannel.disconnected_max_age_ms=0",
                "flannel.disconnected_max_age_ms",
            ),
            ("webapp.scheduled_poll_ms=0", "webapp.scheduled_poll_ms"),
            ("webapp.records_poll_ms=5", "webapp.records_poll_ms"),
            ("webapp.max_file_bytes=0", "webapp.max_file_bytes"),
            (
                "webapp.events_failure_window_secs=604801",
                "webapp.events_failure_window_secs",
            ),
            (
                "webapp.scheduled_poll_ms=3600001",
                "webapp.scheduled_poll_ms",
            ),
        ] {
            let err = Config::load(None, std::iter::empty(), &[bad.to_string()])
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn cql_store_settings_parse_and_validate() {
        let load = |sets: &[&str]| {
            let mut all = vec![r#"store.kind="cql""#.to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            Config::load(None, std::iter::empty(), &all)
        };
        let c = load(&[
            "store.shards=2",
            r#"store.cql_shard_keyspaces=["eu_a","eu_b"]"#,
        ])
        .unwrap();
        let settings = crate::store::cql::CqlSettings::from_config(&c.store).unwrap();
        assert_eq!(settings.shard_keyspaces, vec!["eu_a", "eu_b"]);
        assert_eq!(settings.meta_keyspace, "switchboard_meta");
        let defaults =
            crate::store::cql::CqlSettings::from_config(&load(&[]).unwrap().store).unwrap();
        assert_eq!(
            defaults.shard_keyspaces,
            (0..4)
                .map(|n| format!("switchboard_shard_{n}"))
                .collect::<Vec<_>>()
        );
        for bad in [
            "store.cql_nodes=[]",
            r#"store.cql_write_consistency="MOSTLY""#,
            r#"store.cql_read_consistency="""#,
            r#"store.cql_shard_keyspaces=["only_one"]"#,
            r#"store.cql_keyspace_prefix="drop table""#,
            "store.cql_replication_factor=0",
            "store.cql_bucket_hours=0",
            r#"store.kind="mongo""#,
        ] {
            let err = load(&[bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(err.to_string().contains("store."), "{bad}: {err}");
        }
    }

    #[test]
    fn cql_feed_settle_and_bucket_period_are_bounded() {
        let load = |set: String| {
            Config::load(
                None,
                std::iter::empty(),
                &[r#"store.kind="cql""#.to_string(), set],
            )
        };
        // Too short a settle time made every change feed write "slow": after the rows were
        // stored, the post failed, and so did every replay of it.
        for bad in [
            0,
            1,
            5,
            MIN_CQL_FEED_SETTLE_MS - 1,
            MAX_CQL_FEED_SETTLE_MS + 1,
        ] {
            let err = load(format!("store.cql_feed_settle_ms={bad}"))
                .err()
                .unwrap_or_else(|| panic!("cql_feed_settle_ms {bad} was accepted"));
            assert!(
                err.to_string().contains("store.cql_feed_settle_ms"),
                "{bad}: {err}"
            );
        }
        for ok in [MIN_CQL_FEED_SETTLE_MS, 1000, MAX_CQL_FEED_SETTLE_MS] {
            let c = load(format!("store.cql_feed_settle_ms={ok}")).unwrap();
            let settings = crate::store::cql::CqlSettings::from_config(&c.store).unwrap();
            assert_eq!(settings.feed_settle, std::time::Duration::from_millis(ok));
        }
        // A period whose microseconds overflow is refused, not wrapped or panicked on.
        for bad in [
            MAX_CQL_BUCKET_HOURS + 1,
            u64::MAX / 3_600_000_000 + 1,
            i64::MAX as u64,
        ] {
            let err = load(format!("store.cql_bucket_hours={bad}"))
                .err()
                .unwrap_or_else(|| panic!("cql_bucket_hours {bad} was accepted"));
            assert!(
                err.to_string().contains("store.cql_bucket_hours"),
                "{bad}: {err}"
            );
        }
        let c = load(format!("store.cql_bucket_hours={MAX_CQL_BUCKET_HOURS}")).unwrap();
        let settings = crate::store::cql::CqlSettings::from_config(&c.store).unwrap();
        assert_eq!(settings.bucket_micros, MAX_CQL_BUCKET_HOURS * 3_600_000_000);
        // `from_config` on its own (the bench and `store migrate` call it) checks the period.
        let mut store = Config::defaults().store;
        store.cql_bucket_hours = u64::MAX;
        let err = crate::store::cql::CqlSettings::from_config(&store).unwrap_err();
        assert!(err.to_string().contains("store.cql_bucket_hours"), "{err}");
    }

    /// Log lines written while a test runs with it as its subscriber's writer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Loads the cluster secret at `path` (not creating it) and returns what was logged.
    fn load_logging(path: &Path) -> (Vec<u8>, String) {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let secret = tracing::subscriber::with_default(subscriber, || {
            load_cluster_secret(path, false).unwrap()
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        (secret, text)
    }

    #[cfg(unix)]
    #[test]
    fn a_created_cluster_secret_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("cluster-secret");
        let secret = load_cluster_secret(&path, true).unwrap();
        assert_eq!(secret.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        // Loaded again, it is the same secret, and nothing is warned about.
        let (again, logs) = load_logging(&path);
        assert_eq!(again, secret);
        assert!(!logs.contains("cluster secret"), "{logs}");
    }

    #[cfg(unix)]
    #[test]
    fn an_exposed_cluster_secret_loads_with_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster-secret");
        std::fs::write(&path, "00ff").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let (secret, logs) = load_logging(&path);
            assert_eq!(secret, b"00ff");
            assert!(
                logs.contains("WARN") && logs.contains("cluster secret file is accessible"),
                "{mode:o}: {logs}"
            );
            assert!(logs.contains(&format!("{mode:o}")), "{mode:o}: {logs}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, logs) = load_logging(&path);
        assert!(!logs.contains("cluster secret"), "{logs}");
    }

    #[test]
    fn the_public_url_must_be_a_plain_http_url() {
        let load = |v: &str| {
            Config::load(
                None,
                std::iter::empty(),
                &[format!("webapp.public_url={v:?}")],
            )
            .map(|c| c.webapp.public_url)
        };
        for ok in [
            "",
            "https://chat.example.com/",
            "http://10.0.0.1:8080",
            "https://x.io/slack/",
        ] {
            assert_eq!(load(ok).unwrap(), ok);
        }
        for bad in [
            "chat.example.com",
            "ftp://x/",
            "https://",
            "https:///path",
            "https://x/?a=1",
            "https://x/#f",
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("webapp.public_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn channel_server_list_parses() {
        let c = Config::load(
            None,
            std::iter::empty(),
            &[r#"admin.channel_servers=[{id="cs-1",mesh_addr="127.0.0.1:9000"}]"#.to_string()],
        )
        .unwrap();
        assert_eq!(c.admin.channel_servers[0].id, "cs-1");
    }
}
