//! The CQL cluster the posts scenario measures the CQL store on: a single-node Apache
//! Cassandra that the bench starts with `deploy/cassandra/start.sh` in a data directory and on
//! ports of its own (or a running cluster named by `--cql-node`), a keyspace prefix that is
//! new for each run, and clean-up that drops only the keyspaces this run created.
//!
//! Statements outside the system under test (listing keyspaces, `release_version`, `DROP
//! KEYSPACE`) go through `deploy/cassandra/cql_probe.py`, the project's dependency-free CQL
//! client; the keyspace names come from the same code the system under test uses
//! ([`CqlSettings::from_config`]) with the same `--set` flags, so they cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Serialize;
use shared::config::{Config, StoreConfig};
use shared::store::cql::CqlSettings;

use crate::report::note;

/// `<repo>/deploy/cassandra`.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("deploy/cassandra")
}

/// The default data directory of the node the bench starts: `<repo>/target/cassandra-bench`.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target/cassandra-bench")
}

#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// A running cluster's contact points; empty: start a node.
    pub nodes: Vec<String>,
    pub data_dir: PathBuf,
    pub cql_port: u16,
    pub storage_port: u16,
    /// Leave a node this run started running at the end.
    pub keep_node: bool,
}

/// The cluster of one run. A node this run started is stopped (`deploy/cassandra/stop.sh`)
/// when this is dropped, unless `--cql-keep-node`.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub nodes: Vec<String>,
    /// `release_version` of the node the bench talks to, when it answered.
    pub release_version: Option<String>,
    /// The data directory of a node on this machine (started by the bench, or found running
    /// there), else `None`.
    pub data_dir: Option<PathBuf>,
    /// The node's process, when it runs on this machine and the bench knows it: its CPU time
    /// is reported as `store cpu`.
    pub pid: Option<u32>,
    /// Whether this run started the node.
    pub started_by_bench: bool,
    #[serde(skip)]
    stop_on_drop: bool,
}

impl Cluster {
    /// Uses `--cql-node`, or starts a single node with `deploy/cassandra/start.sh` (idempotent:
    /// a node already running in the data directory is used and left running).
    pub fn ensure(opts: &NodeOptions) -> anyhow::Result<Cluster> {
        if !opts.nodes.is_empty() {
            let mut c = Cluster {
                nodes: opts.nodes.clone(),
                release_version: None,
                data_dir: None,
                pid: None,
                started_by_bench: false,
                stop_on_drop: false,
            };
            c.release_version = c.release_version();
            note(format!(
                "cql: using the cluster at {} (release_version {})",
                c.nodes.join(","),
                c.release_version.as_deref().unwrap_or("unknown")
            ));
            return Ok(c);
        }
        let start = scripts_dir().join("start.sh");
        if !start.is_file() {
            bail!(
                "{} not found: run the bench from the repository's target directory, or pass \
                 --cql-node HOST:PORT of a running cluster",
                start.display()
            );
        }
        let was_running = live_pid(&opts.data_dir).is_some();
        note(format!(
            "cql: {} Cassandra with {} (data dir {}, CQL 127.0.0.1:{}, storage port {})",
            if was_running {
                "checking the running"
            } else {
                "starting a single-node"
            },
            start.display(),
            opts.data_dir.display(),
            opts.cql_port,
            opts.storage_port
        ));
        let out = Command::new("bash")
            .arg(&start)
            .arg(&opts.data_dir)
            .env("CASSANDRA_PORT", opts.cql_port.to_string())
            .env("CASSANDRA_STORAGE_PORT", opts.storage_port.to_string())
            .env("CASSANDRA_JMX_PORT", "off")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run {}", start.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} {} failed ({}):\n{stderr}",
                start.display(),
                opts.data_dir.display(),
                out.status
            );
        }
        for line in stderr
            .lines()
            .filter(|l| l.contains("ready") || l.contains("already"))
        {
            note(line.trim());
        }
        let pid = live_pid(&opts.data_dir);
        let mut c = Cluster {
            nodes: vec![format!("127.0.0.1:{}", opts.cql_port)],
            release_version: None,
            data_dir: Some(opts.data_dir.clone()),
            pid,
            started_by_bench: !was_running,
            stop_on_drop: !was_running && !opts.keep_node,
        };
        c.release_version = c.release_version();
        Ok(c)
    }

    /// Runs one statement with `cql_probe.py` on the first node; returns its rows (first
    /// column), without the header.
    fn probe(&self, cql: &str) -> anyhow::Result<Vec<String>> {
        let node = self.nodes.first().context("no CQL node")?;
        let (host, port) = node
            .rsplit_once(':')
            .with_context(|| format!("CQL node {node:?} is not host:port"))?;
        let probe = scripts_dir().join("cql_probe.py");
        let out = Command::new("python3")
            .arg(&probe)
            .args([
                "--host",
                host,
                "--port",
                port,
                "--timeout",
                "120",
                "--query",
                cql,
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run python3 {}", probe.display()))?;
        if !out.status.success() {
            bail!("{cql}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split(" | ").next().unwrap_or("").trim().to_string())
            .collect())
    }

    fn release_version(&self) -> Option<String> {
        self.probe("SELECT release_version FROM system.local")
            .ok()
            .and_then(|rows| rows.into_iter().next())
    }

    /// Every keyspace of the cluster.
    pub fn keyspaces(&self) -> anyhow::Result<Vec<String>> {
        self.probe("SELECT keyspace_name FROM system_schema.keyspaces")
    }

    /// Drops the named keyspaces that exist; returns the ones dropped.
    pub fn drop_keyspaces(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        let existing = self.keyspaces()?;
        let mut dropped = Vec::new();
        for ks in names.iter().filter(|k| existing.contains(k)) {
            self.probe(&format!("DROP KEYSPACE IF EXISTS {ks}"))?;
            dropped.push(ks.clone());
        }
        Ok(dropped)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stop_on_drop {
            return;
        }
        let Some(dir) = &self.data_dir else { return };
        note(format!("cql: stopping the node in {}", dir.display()));
        let stop = scripts_dir().join("stop.sh");
        let _ = Command::new("bash")
            .arg(stop)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The pid in `<data dir>/cassandra.pid` when it is a live Cassandra process.
fn live_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("cassandra.pid")).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("CassandraDaemon")
        .then_some(pid)
}

/// A keyspace prefix no earlier run used: `bench_<pid>_<unix seconds>`.
pub fn fresh_prefix() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("bench_{}_{secs}", std::process::id())
}

/// The `--set` flags that put the system under test on the CQL store of `cluster` with
/// keyspaces `<prefix>_meta` and `<prefix>_shard_<n>`; `extra` (`--cql-set`) comes last and
/// wins.
pub fn store_sets(
    nodes: &[String],
    prefix: &str,
    replication_factor: u32,
    extra: &[String],
) -> Vec<String> {
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(",");
    let mut sets = vec![
        "store.kind=\"cql\"".to_string(),
        format!("store.cql_nodes=[{list}]"),
        format!("store.cql_replication_factor={replication_factor}"),
        format!("store.cql_keyspace_prefix=\"{prefix}\""),
    ];
    sets.extend(extra.iter().cloned());
    sets
}

/// The `[store]` section and the CQL settings the system under test will run with, given
/// these `--set` flags (and the process's `SWITCHBOARD_*` environment, which the processes
/// the bench starts inherit).
pub fn settings_for(sets: &[String]) -> anyhow::Result<(StoreConfig, CqlSettings)> {
    let config = Config::load_from_env(None, sets).context("the CQL store's --set flags")?;
    let settings = CqlSettings::from_config(&config.store)?;
    Ok((config.store, settings))
}

/// Every keyspace the settings name: meta first, then the shards.
pub fn keyspace_names(settings: &CqlSettings) -> Vec<String> {
    std::iter::once(settings.meta_keyspace.clone())
        .chain(settings.shard_keyspaces.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_sets_name_fresh_keyspaces() {
        let sets = store_sets(
            &["127.0.0.1:19142".into(), "127.0.0.2:19142".into()],
            "bench_42_1795629551",
            1,
            &["store.cql_write_consistency=\"ONE\"".into()],
        );
        assert!(sets.contains(&"store.cql_nodes=[\"127.0.0.1:19142\",\"127.0.0.2:19142\"]".into()));
        let (store, s) = settings_for(&sets).unwrap();
        assert_eq!(store.cql_write_consistency, "ONE");
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.replication_factor, 1);
        let names = keyspace_names(&s);
        assert_eq!(names[0], "bench_42_1795629551_meta");
        assert!(names[1..]
            .iter()
            .all(|n| n.starts_with("bench_42_1795629551_shard_")));
        assert!(fresh_prefix().starts_with("bench_"));
        assert!(shared::store::cql::valid_keyspace(&format!(
            "{}_shard_99",
            fresh_prefix()
        )));
    }
}
