//! The end-to-end harness: a real Switchboard cluster of separate `switchboard` processes on
//! 127.0.0.1 (admin server, channel servers, gateways, Web API) sharing one data directory,
//! plus Web API and WebSocket client helpers.
//!
//! Every wait is bounded. Each process logs to `<data_dir>/logs/<name>.log`; when a test
//! panics, the cluster prints the tail of every log as it is dropped, then kills its
//! processes. `SWITCHBOARD_E2E_KEEP=1` keeps the data directory (and logs) for a look after;
//! `SWITCHBOARD_E2E_LOG` sets the processes' `RUST_LOG` (default `info`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the whole cluster may take to become healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default bound for one wait on the cluster (a delivery, an answer).
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(25);

/// The newest process named `name` (a name started again means its latest process).
fn newest<'a>(procs: &'a mut [Proc], name: &str) -> &'a mut Proc {
    procs
        .iter_mut()
        .rev()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no process {name}"))
}

/// The binary under test: `SWITCHBOARD_E2E_BIN` if set (say, a release build), else the one
/// Cargo built for these tests.
pub fn bin() -> String {
    std::env::var("SWITCHBOARD_E2E_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchboard").to_string())
}

// ---------------------------------------------------------------------------------------------
// cluster

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub num_gateways: usize,
    pub num_channel_servers: usize,
    /// Workspaces and their users; the first user of each workspace is its admin.
    pub workspaces: Vec<(String, Vec<String>)>,
    /// Extra `--set` flags per role (`"gateway"`, `"channel-server"`, `"admin-server"`,
    /// `"webapp"`).
    pub sets: Vec<(String, String)>,
    /// The CQL node and keyspace prefix when [`ClusterOpts::cql_store`] was chosen.
    pub cql: Option<(String, String)>,
    /// Users made with `create-user --bot` (workspace, name), after the others.
    pub bots: Vec<(String, String)>,
}

impl ClusterOpts {
    /// 2 gateways, 3 channel servers, and workspace `acme` with `users`.
    pub fn standard(users: &[&str]) -> ClusterOpts {
        ClusterOpts {
            num_gateways: 2,
            num_channel_servers: 3,
            workspaces: vec![("acme".into(), users.iter().map(|u| u.to_string()).collect())],
            sets: Vec::new(),
            cql: None,
            bots: Vec::new(),
        }
    }

    /// Adds a bot user `name` to `workspace` (`switchboard admin create-user --bot`).
    pub fn bot(mut self, workspace: &str, name: &str) -> ClusterOpts {
        self.bots.push((workspace.into(), name.into()));
        self
    }

    /// Adds `--set key=value` to every process of `role`.
    pub fn set(mut self, role: &str, key_value: &str) -> ClusterOpts {
        self.sets.push((role.into(), key_value.into()));
        self
    }

    /// Every process (and the `admin` commands that create workspaces and users) uses a
    /// fresh set of keyspaces on the project's test Cassandra instead of the embedded store.
    pub fn cql_store(mut self) -> ClusterOpts {
        let node = shared::store::cql::testing::ensure_cluster();
        let prefix = format!("e2e{:016x}", rand_u64());
        for set in [
            "store.kind=\"cql\"".to_string(),
            format!("store.cql_nodes=[\"{node}\"]"),
            "store.cql_replication_factor=1".to_string(),
            format!("store.cql_keyspace_prefix=\"{prefix}\""),
            "store.cql_feed_settle_ms=300".to_string(),
        ] {
            self.sets.push(("*".into(), set));
        }
        self.cql = Some((node, prefix));
        self
    }

    /// The `--set` flags for every process and command.
    fn global_sets(&self) -> Vec<String> {
        self.sets
            .iter()
            .filter(|(r, _)| r == "*")
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub fn workspace(mut self, name: &str, users: &[&str]) -> ClusterOpts {
        self.workspaces
            .push((name.into(), users.iter().map(|u| u.to_string()).collect()));
        self
    }
}

/// A user created through `switchboard admin create-user`.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub workspace_name: String,
    pub token: String,
}

impl TestUser {
    /// The email `switchboard admin create-user --email` gave the user.
    pub fn email_of(name: &str, workspace_name: &str) -> String {
        format!("{name}@{workspace_name}.example")
    }

    pub fn email(&self) -> String {
        TestUser::email_of(&self.name, &self.workspace_name)
    }
}

/// One channel server process.
#[derive(Clone, Debug)]
pub struct ChannelServerInfo {
    pub id: String,
    pub mesh_addr: SocketAddr,
    /// `http://127.0.0.1:P` (health and metrics).
    pub http: String,
}

/// One gateway process.
#[derive(Clone, Debug)]
pub struct GatewayInfo {
    pub id: String,
    /// `ws://127.0.0.1:P/rtm`.
    pub ws_url: String,
    /// `http://127.0.0.1:P` (health and metrics).
    pub http: String,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Killed on purpose by the test: its exit is not a failure.
    killed: bool,
}

/// A running cluster; its processes are killed when it is dropped.
pub struct Cluster {
    /// Kept alive for the cluster's lifetime (removed on drop unless kept).
    dir: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:P` of the Web API (`/api/<method>`, `/health`, `/metrics`).
    pub webapp: String,
    pub gateways: Vec<GatewayInfo>,
    pub channel_servers: Vec<ChannelServerInfo>,
    /// `http://127.0.0.1:P` of the admin server's HTTP API.
    pub admin_http: String,
    pub admin_mesh: SocketAddr,
    pub http: reqwest::Client,
    users: HashMap<(String, String), TestUser>,
    procs: Mutex<Vec<Proc>>,
    opts_sets: Vec<(String, String)>,
    /// Processes started with [`Cluster::spawn_extra_http`], by name: their HTTP base URLs,
    /// which [`Cluster::role_http_urls`] lists while they run.
    extra_http: Mutex<Vec<(String, String)>>,
}

/// Ports handed out by [`free_tcp`] and [`free_udp`]: below Linux's ephemeral range
/// (32768-60999), so that no outgoing connection of another process takes one between the
/// check and the server's bind; random, so that concurrent test processes rarely pick the
/// same one (and [`Cluster::start`] retries when one does).
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A pseudo-random number (xorshift seeded from the clock and pid): ports, keyspace names.
fn rand_u64() -> u64 {
    static STATE: Mutex<u64> = Mutex::new(0);
    let mut x = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if *x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        *x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn random_port() -> u16 {
    PORT_RANGE.start + (rand_u64() % u64::from(PORT_RANGE.end - PORT_RANGE.start)) as u16
}

/// A loopback TCP address that was free a moment ago.
pub fn free_tcp() -> SocketAddr {
    for _ in 0..1000 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", random_port())) {
            return l.local_addr().unwrap();
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free tcp port")
        .local_addr()
        .unwrap()
}

/// A loopback UDP address that was free a moment ago.
pub fn free_udp() -> SocketAddr {
    for _ in 0..1000 {
        if let Ok(u) = UdpSocket::bind(("127.0.0.1", random_port())) {
            return u.local_addr().unwrap();
        }
    }
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind a free udp port")
        .local_addr()
        .unwrap()
}

/// Whether process `pid` holds a TCP socket listening on `port` (from Linux's `/proc`: the
/// process's socket inodes, and the listening sockets of its network namespace); `None` where
/// `/proc` cannot tell.
fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut known = false;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        known = true;
        // `sl local_address rem_address st ... inode`: "0100007F:1F90", state 0A is LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((local, state, inode)) = fields
                .get(1)
                .zip(fields.get(3))
                .zip(fields.get(9))
                .map(|((l, s), i)| (*l, *s, *i))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if state == "0A" && local_port == Some(port) && inodes.contains(inode) {
                return Some(true);
            }
        }
    }
    known.then_some(false)
}

/// `s` as a TOML string, for `--set key=value`.
pub fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// Runs a `switchboard` CLI command to completion and parses its stdout's last line as JSON.
fn cli_json(args: &[&str]) -> Value {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run switchboard");
    assert!(
        out.status.success(),
        "switchboard {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!("switchboard {args:?} printed no JSON: {stdout}");
        });
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("switchboard {args:?}: bad JSON {line:?}: {e}"))
}

impl Cluster {
    /// Starts admin server, channel servers, Web API and gateways as separate processes and
    /// waits until every `/health` is 200 and the ring shows every channel server up.
    pub async fn start(opts: ClusterOpts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-e2e-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let data = data_dir.to_str().expect("utf-8 temp path").to_string();
        std::fs::create_dir_all(data_dir.join("logs")).unwrap();

        let status = Command::new(bin())
            .args(["certs", "--out"])
            .arg(data_dir.join("tls"))
            .stdout(Stdio::null())
            .status()
            .expect("run switchboard certs");
        assert!(status.success(), "switchboard certs failed");

        let global: Vec<String> = opts
            .global_sets()
            .into_iter()
            .flat_map(|s| ["--set".to_string(), s])
            .collect();
        let global: Vec<&str> = global.iter().map(String::as_str).collect();
        if !global.is_empty() {
            let mut args = vec!["store", "migrate", "--data-dir", &data];
            args.extend(&global);
            let out = Command::new(bin())
                .args(&args)
                .output()
                .expect("run switchboard store migrate");
            assert!(
                out.status.success(),
                "switchboard store migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut users = HashMap::new();
        for (ws, names) in &opts.workspaces {
            let mut args = vec!["admin", "--data-dir", &data, "create-workspace", ws];
            args.extend(&global);
            let created = cli_json(&args);
            let ws_id = created["id"].as_str().expect("workspace id").to_string();
            let bots = opts.bots.iter().filter(|(w, _)| w == ws).map(|(_, n)| n);
            for (i, name) in names.iter().chain(bots).enumerate() {
                let is_bot = i >= names.len();
                let email = TestUser::email_of(name, ws);
                let mut args = vec![
                    "admin",
                    "--data-dir",
                    &data,
                    "create-user",
                    "--workspace",
                    ws,
                    "--name",
                    name,
                    "--email",
                    &email,
                ];
                if i == 0 {
                    args.push("--admin");
                }
                if is_bot {
                    args.push("--bot");
                }
                args.extend(&global);
                let u = cli_json(&args);
                assert_eq!(u["email"], email.as_str(), "create-user's email: {u}");
                assert_eq!(u["is_bot"], is_bot, "create-user's kind: {u}");
                let user = TestUser {
                    id: u["id"].as_str().expect("user id").to_string(),
                    name: name.clone(),
                    workspace: u["workspace"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| ws_id.clone()),
                    workspace_name: ws.clone(),
                    token: u["token"].as_str().expect("user token").to_string(),
                };
                users.insert((ws.clone(), name.clone()), user);
            }
        }

        let mut cluster = Cluster {
            dir: Some(dir),
            data_dir: data_dir.clone(),
            webapp: String::new(),
            gateways: Vec::new(),
            channel_servers: Vec::new(),
            admin_http: String::new(),
            admin_mesh: "127.0.0.1:0".parse().unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            users,
            procs: Mutex::new(Vec::new()),
            opts_sets: opts.sets.clone(),
            extra_http: Mutex::new(Vec::new()),
        };
        // A port picked as free can be taken before the server binds it: start again on
        // fresh ports when a process says so.
        for attempt in 1..=3 {
            cluster.spawn_all(&opts);
            match cluster.wait_ready().await {
                Ok(()) => break,
                Err(name) => {
                    let log = cluster.log(&name);
                    assert!(
                        log.contains("Address already in use") && attempt < 3,
                        "process {name} exited during start-up"
                    );
                    eprintln!(
                        "{name} found its port taken; starting the cluster again on other ports"
                    );
                    cluster.kill_all();
                }
            }
        }
        cluster
    }

    /// Picks ports and starts every process.
    fn spawn_all(&mut self, opts: &ClusterOpts) {
        let admin_mesh = free_udp();
        let admin_http_addr = free_tcp();
        let webapp_addr = free_tcp();
        self.admin_mesh = admin_mesh;
        self.admin_http = format!("http://{admin_http_addr}");
        self.webapp = format!("http://{webapp_addr}");
        self.gateways = (0..opts.num_gateways)
            .map(|i| {
                let a = free_tcp();
                GatewayInfo {
                    id: format!("gw-{}", i + 1),
                    ws_url: format!("ws://{a}/rtm"),
                    http: format!("http://{a}"),
                }
            })
            .collect();
        self.channel_servers = (0..opts.num_channel_servers)
            .map(|i| ChannelServerInfo {
                id: format!("cs-{}", i + 1),
                mesh_addr: free_udp(),
                http: format!("http://{}", free_tcp()),
            })
            .collect();

        let admin_set = format!("mesh.admin_addr={}", quoted(&admin_mesh.to_string()));
        self.spawn(
            "admin-server",
            "admin-server",
            &[
                admin_set.clone(),
                "node.id=\"admin-1\"".into(),
                format!("admin.mesh_addr={}", quoted(&admin_mesh.to_string())),
                format!("admin.http_addr={}", quoted(&admin_http_addr.to_string())),
            ],
        );
        for cs in self.channel_servers.clone() {
            let http = cs.http.trim_start_matches("http://");
            self.spawn(
                &cs.id,
                "channel-server",
                &[
                    admin_set.clone(),
                    format!("node.id={}", quoted(&cs.id)),
                    format!(
                        "channel_server.mesh_addr={}",
                        quoted(&cs.mesh_addr.to_string())
                    ),
                    format!("channel_server.http_addr={}", quoted(http)),
                ],
            );
        }
        self.spawn("webapp", "webapp", &self.webapp_sets(webapp_addr));
        for gw in self.gateways.clone() {
            self.spawn(
                &gw.id,
                "gateway",
                &[
                    admin_set.clone(),
                    format!("node.id={}", quoted(&gw.id)),
                    format!(
                        "gateway.http_addr={}",
                        quoted(gw.http.trim_start_matches("http://"))
                    ),
                    format!("gateway.webapp_url={}", quoted(&self.webapp)),
                ],
            );
        }
    }

    /// The first process (not killed on purpose) that is no longer running.
    fn first_exited(&self) -> Option<String> {
        self.procs()
            .iter_mut()
            .filter(|p| !p.killed)
            .find_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then(|| p.name.clone()))
    }

    /// Waits until every role's `/health` is 200 (answered by that role) and the ring shows
    /// each of our channel servers up at its address; `Err(name)` when process `name` exited
    /// meanwhile. (A process that could not bind its port exits at once, while whatever holds
    /// the port may well answer `/health`: the checks of the ring and of exits catch that.)
    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut roles = vec![("admin-server", self.admin_http.clone())];
        roles.extend(
            self.channel_servers
                .iter()
                .map(|c| ("channel-server", c.http.clone())),
        );
        roles.push(("webapp", self.webapp.clone()));
        roles.extend(self.gateways.iter().map(|g| ("gateway", g.http.clone())));
        for (role, url) in roles {
            loop {
                if let Some(name) = self.first_exited() {
                    return Err(name);
                }
                if let Ok(r) = self.http.get(format!("{url}/health")).send().await {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if status == 200 && body["role"] == role {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "{url}/health (the {role}) did not become 200 within {START_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let ours: Vec<(String, String)> = self
            .channel_servers
            .iter()
            .map(|c| (c.id.clone(), c.mesh_addr.to_string()))
            .collect();
        loop {
            if let Some(name) = self.first_exited() {
                return Err(name);
            }
            let ring = self
                .http
                .get(format!("{}/ring", self.admin_http))
                .send()
                .await;
            let ring: Value = match ring {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let up = ring["members"].as_array().is_some_and(|members| {
                ours.iter().all(|(id, addr)| {
                    members.iter().any(|m| {
                        m["id"] == id.as_str()
                            && m["mesh_addr"] == addr.as_str()
                            && m["status"] == "up"
                            && m["draining"] == false
                    })
                })
            });
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ring never showed every channel server up within {START_TIMEOUT:?}: {ring}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        match self.first_exited() {
            Some(name) => Err(name),
            None => Ok(()),
        }
    }

    fn kill_all(&self) {
        let mut procs = self.procs();
        for p in procs.iter_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.clear();
    }

    fn spawn(&self, name: &str, role: &str, sets: &[String]) {
        // A process started again under its name keeps the first one's log.
        let logs = self.data_dir.join("logs");
        let log = (1..)
            .map(|n| match n {
                1 => logs.join(format!("{name}.log")),
                n => logs.join(format!("{name}-{n}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let file = File::create(&log).expect("create log file");
        let mut cmd = Command::new(bin());
        cmd.arg(role).arg("--data-dir").arg(&self.data_dir);
        let extra = self
            .opts_sets
            .iter()
            .filter(|(r, _)| r == role || r == "*")
            .map(|(_, s)| s);
        for s in sets.iter().chain(extra) {
            cmd.arg("--set").arg(s);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("SWITCHBOARD_E2E_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log file"))
        .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs().push(Proc {
            name: name.to_string(),
            child,
            log,
            killed: false,
        });
    }

    /// Starts one more process of `role` named `name` (a Flannel, a gateway with its own
    /// settings, ...) pointed at this cluster's admin server, with the role's `--set` flags
    /// from [`ClusterOpts`] and then `sets`. It is watched, logged and killed like the others;
    /// a name may be started again after [`Cluster::kill`] (the newest process of a name is
    /// the one that [`Cluster::kill`] and [`Cluster::log`] mean).
    pub fn spawn_extra(&self, name: &str, role: &str, sets: &[String]) {
        let mut all = vec![
            format!("mesh.admin_addr={}", quoted(&self.admin_mesh.to_string())),
            format!("node.id={}", quoted(name)),
        ];
        all.extend(sets.iter().cloned());
        self.spawn(name, role, &all);
    }

    /// Like [`Cluster::spawn_extra`], for a process that serves HTTP on a port picked here:
    /// `sets_for(addr)` gives its flags for the address it is to bind. A port picked as free
    /// can be taken before the process binds it; then the process exits saying so and is
    /// started again on another port, up to 3 times in all (as [`Cluster::start`] does).
    /// Returns its base URL (`http://127.0.0.1:P`) once it listens there (it may not be
    /// healthy yet: see [`Cluster::wait_healthy`]). While it runs, [`Cluster::role_http_urls`]
    /// lists it.
    pub async fn spawn_extra_http(
        &self,
        name: &str,
        role: &str,
        sets_for: impl Fn(SocketAddr) -> Vec<String>,
    ) -> String {
        for attempt in 1..=3 {
            let addr = free_tcp();
            self.spawn_extra(name, role, &sets_for(addr));
            let base = format!("http://{addr}");
            if self.wait_listening(name, role, addr).await {
                self.extra_http().retain(|(n, _)| n.as_str() != name);
                self.extra_http().push((name.to_string(), base.clone()));
                return base;
            }
            let log = self.log(name);
            assert!(
                log.contains("Address already in use") && attempt < 3,
                "{name} ({role}) exited during start-up"
            );
            eprintln!("{name} found its port {addr} taken; starting it again on another port");
            // Its exit is no failure of the cluster.
            self.kill(name);
        }
        unreachable!("the last attempt returns or fails")
    }

    /// Waits (bounded by [`START_TIMEOUT`]) until the newest process `name` listens on `addr`
    /// (`true`) or exits (`false`). Where `/proc` cannot tell which process holds the port,
    /// a `/health` answer of `role` while the process runs counts as listening.
    async fn wait_listening(&self, name: &str, role: &str, addr: SocketAddr) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let pid = {
                let mut procs = self.procs();
                let p = newest(&mut procs, name);
                if matches!(p.child.try_wait(), Ok(Some(_))) {
                    return false;
                }
                p.child.id()
            };
            let listening = match listens_on(pid, addr.port()) {
                Some(known) => known,
                None => match self.http.get(format!("http://{addr}/health")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|b| b["role"] == role),
                    Err(_) => false,
                },
            };
            if listening {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{name} ({role}) did not listen on {addr} within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts a Flannel named `name` for this cluster (boot data from its Web API) with the
    /// `extra` flags, on a free port (see [`Cluster::spawn_extra_http`]); returns its base URL
    /// once its `/health` is 200.
    pub async fn spawn_flannel(&self, name: &str, extra: &[&str]) -> String {
        let base = self
            .spawn_extra_http(name, "flannel", |addr| {
                let mut sets = vec![
                    format!("flannel.http_addr={}", quoted(&addr.to_string())),
                    format!("flannel.webapp_url={}", quoted(&self.webapp)),
                ];
                sets.extend(extra.iter().map(|s| s.to_string()));
                sets
            })
            .await;
        self.wait_healthy(&base).await;
        base
    }

    fn extra_http(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.extra_http.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `base/health` answers 200 (bounded by [`START_TIMEOUT`]), failing at once
    /// if a process of the cluster exited meanwhile.
    pub async fn wait_healthy(&self, base: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_running();
            let ok = matches!(
                self.http.get(format!("{base}/health")).send().await,
                Ok(r) if r.status() == 200
            );
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{base}/health not 200 within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every role's HTTP base URL (admin, channel servers, Web API, gateways), then those of
    /// the processes started with [`Cluster::spawn_extra_http`] (a Flannel, say) that the test
    /// has not stopped.
    pub fn role_http_urls(&self) -> Vec<String> {
        let mut urls = vec![self.admin_http.clone()];
        urls.extend(self.channel_servers.iter().map(|c| c.http.clone()));
        urls.push(self.webapp.clone());
        urls.extend(self.gateways.iter().map(|g| g.http.clone()));
        let procs = self.procs();
        let stopped = |name: &str| {
            procs
                .iter()
                .rev()
                .find(|p| p.name == name)
                .is_none_or(|p| p.killed)
        };
        urls.extend(
            self.extra_http()
                .iter()
                .filter(|(name, _)| !stopped(name))
                .map(|(_, url)| url.clone()),
        );
        urls
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills process `name` (SIGKILL, no goodbye) and waits for it to exit.
    pub fn kill(&self, name: &str) {
        let mut procs = self.procs();
        let p = newest(&mut procs, name);
        p.killed = true;
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Kills the admin server and starts it again at the same addresses and data directory
    /// (its saved ring comes back with it); returns once it is healthy.
    pub async fn restart_admin(&self) {
        self.kill("admin-server");
        let admin_set = format!("mesh.admin_addr={}", quoted(&self.admin_mesh.to_string()));
        self.spawn(
            "admin-server",
            "admin-server",
            &[
                admin_set,
                "node.id=\"admin-1\"".into(),
                format!("admin.mesh_addr={}", quoted(&self.admin_mesh.to_string())),
                format!(
                    "admin.http_addr={}",
                    quoted(self.admin_http.trim_start_matches("http://"))
                ),
            ],
        );
        self.wait_healthy(&self.admin_http).await;
    }

    /// The Web API's flags: its address, the admin server and the gateways it hands out.
    fn webapp_sets(&self, addr: SocketAddr) -> Vec<String> {
        let gateway_urls: Vec<String> = self.gateways.iter().map(|g| quoted(&g.ws_url)).collect();
        vec![
            format!("mesh.admin_addr={}", quoted(&self.admin_mesh.to_string())),
            "node.id=\"webapp-1\"".into(),
            format!("webapp.http_addr={}", quoted(&addr.to_string())),
            format!("webapp.gateway_urls=[{}]", gateway_urls.join(",")),
        ]
    }

    /// Kills the Web API and starts it again at the same address and data directory; returns
    /// once it is healthy.
    pub async fn restart_webapp(&self) {
        self.kill("webapp");
        let addr: SocketAddr = self
            .webapp
            .trim_start_matches("http://")
            .parse()
            .expect("the web api's address");
        self.spawn("webapp", "webapp", &self.webapp_sets(addr));
        self.wait_healthy(&self.webapp).await;
    }

    /// Asks process `name` to stop (SIGTERM, as an init system or Kubernetes does) without
    /// waiting; its exit is no failure of the cluster. See [`Cluster::wait_exit`].
    pub fn terminate(&self, name: &str) {
        let mut procs = self.procs();
        let p = newest(&mut procs, name);
        p.killed = true;
        let status = Command::new("kill")
            .args(["-s", "TERM", &p.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {name} failed: {status}");
    }

    /// Waits (bounded) for process `name` to exit; returns how it exited. On timeout it is
    /// killed and the test fails.
    pub async fn wait_exit(&self, name: &str, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut procs = self.procs();
                let p = newest(&mut procs, name);
                if let Some(status) = p.child.try_wait().expect("try_wait") {
                    return status;
                }
                if Instant::now() >= deadline {
                    p.killed = true;
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    drop(procs);
                    panic!("{name} did not exit within {timeout:?}");
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Panics (with logs) if a process exited that the test did not kill.
    pub fn assert_running(&self) {
        for p in self.procs().iter_mut().filter(|p| !p.killed) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("process {} exited: {status}", p.name);
            }
        }
    }

    /// Names of processes that are no longer running (and were not killed by the test).
    pub fn exited(&self) -> Vec<String> {
        self.procs()
            .iter_mut()
            .filter(|p| !p.killed)
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ({status})", p.name)),
                _ => None,
            })
            .collect()
    }

    /// The log of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        self.procs()
            .iter()
            .rev()
            .find(|p| p.name == name)
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn user(&self, workspace: &str, name: &str) -> &TestUser {
        self.users
            .get(&(workspace.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no user {name} in {workspace}"))
    }

    // ---- admin server ----

    pub async fn ring(&self) -> Value {
        self.get_json(&format!("{}/ring", self.admin_http)).await
    }

    /// Polls `GET /ring` until `pred` holds.
    pub async fn wait_ring(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/ring", self.admin_http))
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    if pred(&v) {
                        return v;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "ring never satisfied '{what}' within {timeout:?}; last: {v}"
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "ring never satisfied '{what}' within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The channel server that owns `channel` now (`GET /ring/owner/{channel}`).
    pub async fn owner(&self, channel: &str) -> String {
        let v = self
            .get_json(&format!("{}/ring/owner/{channel}", self.admin_http))
            .await;
        v["owner"]
            .as_str()
            .unwrap_or_else(|| panic!("no owner for {channel}: {v}"))
            .to_string()
    }

    pub async fn get_json(&self, url: &str) -> Value {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        r.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
    }

    pub async fn get_text(&self, url: &str) -> (u16, String) {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// `GET base+path`, with `token` as a bearer if given; (HTTP status, JSON answer).
    pub async fn get_json_status(
        &self,
        base: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{base}{path}");
        let mut req = self.http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        json_answer(req, &format!("GET {url}")).await
    }

    /// The value of one Prometheus sample (`name` with exactly these labels), summed over
    /// label sets when `labels` is empty; 0 when absent.
    pub async fn metric(&self, base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric_sample(base, name, labels).await.unwrap_or(0.0)
    }

    /// Like [`Cluster::metric`], but `None` when the metric has no such sample.
    pub async fn metric_sample(
        &self,
        base: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let (_, text) = self.get_text(&format!("{base}/metrics")).await;
        metric_sample(&text, name, labels)
    }

    /// Sends `frame` (which carries `"id": id`) on `client`, a session of gateway `gateway`,
    /// waits for the `error` event that answers it, and checks that the gateway counted one
    /// more bad input of `kind`; returns the error.
    pub async fn refused_frame(
        &self,
        gateway: usize,
        client: &Client,
        frame: Value,
        id: u64,
        kind: &str,
    ) -> Value {
        let gw = &self.gateways[gateway].http;
        let bad = "switchboard_gateway_bad_input_total";
        let before = self.metric(gw, bad, &[("kind", kind)]).await;
        client.send_json(&frame).await;
        let e = client
            .wait_event(0, WAIT, "error", |e| e["reply_to"] == id)
            .await;
        assert_eq!(e["type"], "error", "{frame} was not refused: {e}");
        let after = self.metric(gw, bad, &[("kind", kind)]).await;
        assert_eq!(after, before + 1.0, "{frame} was not counted as {kind}");
        e
    }

    /// Polls `base/metrics` until the sample of `name` with `labels` satisfies `pred` (a
    /// missing sample never does), bounded by [`WAIT`]; returns its value.
    pub async fn wait_metric(
        &self,
        base: &str,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric_sample(base, name, labels).await;
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{base}: {name}{labels:?} never showed {what} within {WAIT:?}; last: {v:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until gateway `gateway` follows no channel (its sessions are gone and it
    /// unsubscribed), so that the next session there starts from a cold gateway.
    pub async fn wait_gateway_unsubscribed(&self, gateway: usize) {
        self.wait_metric(
            &self.gateways[gateway].http,
            "switchboard_gateway_subscribed_channels",
            &[],
            "no subscribed channel",
            |n| n == 0.0,
        )
        .await;
    }

    // ---- Web API ----

    /// Calls a Web API method with a JSON body; returns (HTTP status, JSON answer).
    pub async fn api_status(&self, method: &str, token: &str, body: Value) -> (u16, Value) {
        let url = format!("{}/api/{method}", self.webapp);
        let mut req = self.http.post(&url).json(&body);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        json_answer(req, &format!("POST {url}")).await
    }

    pub async fn api(&self, method: &str, token: &str, body: Value) -> Value {
        self.api_status(method, token, body).await.1
    }

    /// Calls a method and asserts `ok: true`.
    pub async fn api_ok(&self, method: &str, token: &str, body: Value) -> Value {
        let v = self.api(method, token, body.clone()).await;
        assert_eq!(v["ok"], true, "{method} {body} failed: {v}");
        v
    }

    /// Polls `search.messages` for `query` as `token` until `pred(answer)` holds (bounded by
    /// [`WAIT`]: the index is fed shortly after the acknowledgement); returns the answer.
    pub async fn wait_search(
        &self,
        token: &str,
        query: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self
                .api_ok("search.messages", token, json!({ "query": query }))
                .await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "search for {query:?} never showed {what} within {WAIT:?}; last answer: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates private channel `name` as `owner` and invites `members`; returns its id.
    pub async fn create_private(
        &self,
        owner: &TestUser,
        name: &str,
        members: &[&TestUser],
    ) -> String {
        let id = self
            .api_ok(
                "conversations.create",
                &owner.token,
                json!({ "name": name, "is_private": true }),
            )
            .await["channel"]["id"]
            .as_str()
            .expect("channel id")
            .to_string();
        if !members.is_empty() {
            let users: Vec<&str> = members.iter().map(|u| u.id.as_str()).collect();
            self.api_ok(
                "conversations.invite",
                &owner.token,
                json!({ "channel": id, "users": users.join(",") }),
            )
            .await;
        }
        id
    }

    /// Creates a public channel; returns its id.
    pub async fn create_channel(&self, user: &TestUser, name: &str) -> String {
        let v = self
            .api_ok("conversations.create", &user.token, json!({ "name": name }))
            .await;
        v["channel"]["id"].as_str().expect("channel id").to_string()
    }

    pub async fn join(&self, user: &TestUser, channel: &str) {
        self.api_ok(
            "conversations.join",
            &user.token,
            json!({ "channel": channel }),
        )
        .await;
    }

    /// Posts a message; returns the answer's `message` (with `ts`, `seq`, `text`).
    pub async fn post(&self, user: &TestUser, channel: &str, text: &str) -> Value {
        let v = self
            .api_ok(
                "chat.postMessage",
                &user.token,
                json!({ "channel": channel, "text": text }),
            )
            .await;
        posted(&v)
    }

    /// Posts with a `client_msg_id`, retrying (with the same id) on a failed answer for up to
    /// 20 s, as a client should; returns the answer's `message` and how many attempts failed.
    pub async fn post_idempotent(
        &self,
        user: &TestUser,
        channel: &str,
        text: &str,
        client_msg_id: &str,
    ) -> (Value, usize) {
        let body = json!({ "channel": channel, "text": text, "client_msg_id": client_msg_id });
        let url = format!("{}/api/chat.postMessage", self.webapp);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failures = Vec::new();
        while Instant::now() < deadline {
            match self
                .http
                .post(&url)
                .bearer_auth(&user.token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) if v["ok"] == true => return (posted(&v), failures.len()),
                    Ok(v) => failures.push(v.to_string()),
                    Err(e) => failures.push(e.to_string()),
                },
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("post {client_msg_id} to {channel} never succeeded: {failures:?}");
    }

    /// Creates channels `{prefix}-0` .. `{prefix}-{n-1}` as `user`; returns each one's owner.
    pub async fn channels_with_owners(
        &self,
        user: &TestUser,
        prefix: &str,
        n: usize,
    ) -> BTreeMap<String, String> {
        let mut owners = BTreeMap::new();
        for i in 0..n {
            let c = self.create_channel(user, &format!("{prefix}-{i}")).await;
            owners.insert(c.clone(), self.owner(&c).await);
        }
        owners
    }

    /// `posters` concurrent posters send `num_posts` posts in all (post `i` goes to
    /// `channel_of(i)` with `client_msg_id` `{tag}-{i}`), each retried until acknowledged, and
    /// count acknowledged posts in `count` (for an operator running alongside to wait on).
    /// Returns every acknowledgement as `(channel, client_msg_id, message)` and how many
    /// attempts failed and were retried.
    pub async fn post_concurrently(
        &self,
        user: &TestUser,
        num_posts: usize,
        posters: usize,
        tag: &str,
        channel_of: &(dyn Fn(usize) -> String + Sync),
        count: &AtomicUsize,
    ) -> (Vec<(String, String, Value)>, usize) {
        let poster = |p: usize| async move {
            let mut acks = Vec::new();
            let mut retried = 0;
            for i in (p..num_posts).step_by(posters) {
                let channel = channel_of(i);
                let cmid = format!("{tag}-{i}");
                let (m, failures) = self
                    .post_idempotent(user, &channel, &format!("post {i}"), &cmid)
                    .await;
                retried += failures;
                acks.push((channel, cmid, m));
                count.fetch_add(1, Ordering::SeqCst);
            }
            (acks, retried)
        };
        let results = futures_util::future::join_all((0..posters).map(poster)).await;
        let retried = results.iter().map(|r| r.1).sum();
        (results.into_iter().flat_map(|r| r.0).collect(), retried)
    }

    /// Every message of a channel through `conversations.history`, following cursors with
    /// pages of `page` messages; returned oldest first. Checks the pages as it goes (newest
    /// first within a page, `has_more` agrees with the cursor).
    pub async fn history_all(&self, user: &TestUser, channel: &str, page: usize) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let mut body = json!({ "channel": channel, "limit": page });
            if !cursor.is_empty() {
                body["cursor"] = cursor.clone().into();
            }
            let v = self
                .api_ok("conversations.history", &user.token, body)
                .await;
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            assert!(
                msgs.len() <= page,
                "history page longer than limit {page}: {}",
                msgs.len()
            );
            for w in msgs.windows(2) {
                assert!(
                    seq_of(&w[0]) > seq_of(&w[1]),
                    "history page not newest first: {} then {}",
                    w[0],
                    w[1]
                );
            }
            if let (Some(last), Some(first)) = (all.last(), msgs.first()) {
                assert!(
                    seq_of(last) > seq_of(first),
                    "history pages overlap or go backwards: {last} then {first}"
                );
            }
            all.extend(msgs);
            let next = v["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                v["has_more"] == true,
                !next.is_empty(),
                "has_more disagrees with next_cursor: {v}"
            );
            if next.is_empty() {
                all.reverse();
                return all;
            }
            cursor = next;
        }
        panic!("history of {channel} never ended");
    }

    // ---- WebSocket ----

    /// Connects `user` to gateway `gateway` and waits for `hello`.
    pub async fn connect(&self, gateway: usize, user: &TestUser) -> Client {
        Client::connect(&self.gateways[gateway].ws_url, &user.token, None)
            .await
            .expect("websocket connect")
    }

    /// Connects with `resume=` points.
    pub async fn connect_resume(
        &self,
        gateway: usize,
        user: &TestUser,
        resume: &BTreeMap<String, u64>,
    ) -> Client {
        Client::connect(&self.gateways[gateway].ws_url, &user.token, Some(resume))
            .await
            .expect("websocket connect")
    }

    /// Makes sure every client's subscription to every channel is live: posts a warm-up
    /// message to each channel until every client received one at least as new, so what is
    /// posted afterwards reaches every client. (A session learns a channel's position when the
    /// gateway's subscription is acknowledged; a message posted before that is not live for it.)
    pub async fn warm_up(&self, poster: &TestUser, channels: &[String], clients: &[&Client]) {
        for channel in channels {
            let mut done = false;
            for attempt in 0..20 {
                let m = self
                    .post(poster, channel, &format!("warm-up {attempt}"))
                    .await;
                let seq = seq_of(&m);
                let deadline = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < deadline {
                    if clients
                        .iter()
                        .all(|c| c.max_seq(channel).is_some_and(|s| s >= seq))
                    {
                        done = true;
                        break;
                    }
                    tokio::time::sleep(POLL).await;
                }
                if done {
                    break;
                }
            }
            assert!(
                done,
                "warm-up messages of {channel} never reached every client"
            );
        }
    }

    /// Posts a sentinel message to `channel` as `poster`, waits (bounded) until every client
    /// has it, then asserts that each client's `message` stream of `channel` is contiguous (no
    /// gap, repeat or reorder) and ends with the sentinel. A channel's messages reach a
    /// session in order, so whatever was in flight for the channel before the sentinel (a
    /// straggling duplicate included) has arrived by then: no sleep is needed before judging.
    /// For channels whose entries are all plain messages. Returns the sentinel as posted.
    pub async fn settle(&self, poster: &TestUser, channel: &str, clients: &[&Client]) -> Value {
        let sentinel = self.post(poster, channel, "sentinel").await;
        let seq = seq_of(&sentinel);
        for (i, client) in clients.iter().enumerate() {
            client.wait_seq(channel, seq, WAIT).await;
            let got = client.messages(channel);
            assert_contiguous(&got, &format!("client {i} on {channel} up to the sentinel"));
            assert_eq!(
                got.last().map(|m| (seq_of(m), m["ts"].clone())),
                Some((seq, sentinel["ts"].clone())),
                "client {i}: {channel} ends with the sentinel"
            );
        }
        sentinel
    }

    fn print_logs(&self) {
        for p in self.procs().iter() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "===== {} ({}), last {} of {} lines =====",
                p.name,
                p.log.display(),
                tail.len(),
                lines.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for p in self
            .procs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if failed {
            self.print_logs();
        }
        if failed || std::env::var_os("SWITCHBOARD_E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster data and logs kept in {}", kept.display());
            }
        }
    }
}

fn posted(answer: &Value) -> Value {
    let mut m = answer["message"].clone();
    assert!(m.is_object(), "post answer has no message: {answer}");
    if m.get("ts").is_none() {
        m["ts"] = answer["ts"].clone();
    }
    assert_eq!(
        m["ts"], answer["ts"],
        "post answer's ts and message.ts differ: {answer}"
    );
    m
}

/// A message's `seq`.
pub fn seq_of(m: &Value) -> u64 {
    m["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without seq: {m}"))
}

/// Asserts that `messages` (one channel, in arrival order) have strictly contiguous `seq`.
pub fn assert_contiguous(messages: &[Value], what: &str) {
    for w in messages.windows(2) {
        let (a, b) = (seq_of(&w[0]), seq_of(&w[1]));
        assert_eq!(
            b,
            a + 1,
            "{what}: seq {a} followed by {b} (gap, repeat or reorder); seqs: {:?}",
            seqs(messages)
        );
    }
}

/// Checks the store against what posters were told: each channel's history has seqs `1..=n`
/// and each `client_msg_id` once, and every acknowledged post `(channel, client_msg_id,
/// answered message)` is there with the acknowledged seq and ts.
pub fn assert_acks_in_history(
    acks: &[(String, String, Value)],
    histories: &BTreeMap<String, Vec<Value>>,
) {
    for (c, h) in histories {
        assert_eq!(
            seqs(h),
            (1..=h.len() as u64).collect::<Vec<_>>(),
            "{c}: history seqs are 1..=n"
        );
        let mut ids = std::collections::BTreeSet::new();
        for m in h {
            if let Some(id) = m["client_msg_id"].as_str() {
                assert!(
                    ids.insert(id.to_string()),
                    "{c}: client_msg_id {id} stored twice"
                );
            }
        }
    }
    for (channel, cmid, m) in acks {
        let stored = histories[channel]
            .iter()
            .find(|h| h["client_msg_id"] == cmid.as_str())
            .unwrap_or_else(|| {
                panic!("acknowledged post {cmid} is missing from {channel}'s history")
            });
        assert_eq!(
            stored["seq"], m["seq"],
            "{cmid}: acknowledged seq matches the stored one"
        );
        assert_eq!(
            stored["ts"], m["ts"],
            "{cmid}: acknowledged ts matches the stored one"
        );
    }
}

/// Checks each client's stream of each channel against the history read after the posts:
/// settles the channel with a sentinel from `poster` (see [`Cluster::settle`]: contiguous, no
/// duplicate, everything in flight arrived), then each stream starts at or before
/// `starts_by[channel]`, holds the whole history after that, message by message, and then only
/// the sentinel.
pub async fn assert_streams_match_history(
    cluster: &Cluster,
    poster: &TestUser,
    clients: &[&Client],
    histories: &BTreeMap<String, Vec<Value>>,
    starts_by: &BTreeMap<String, u64>,
) {
    for (c, h) in histories {
        let last = seq_of(h.last().expect("history not empty"));
        let sentinel = seq_of(&cluster.settle(poster, c, clients).await);
        assert_eq!(
            sentinel,
            last + 1,
            "{c}: the sentinel follows the history (nothing else was posted)"
        );
        for (i, client) in clients.iter().enumerate() {
            let got = client.messages(c);
            let (sentinel_msg, got) = got.split_last().expect("settled: not empty");
            assert_eq!(seq_of(sentinel_msg), sentinel);
            let first = got
                .first()
                .unwrap_or_else(|| panic!("client {i}: nothing of {c} before the sentinel"));
            assert!(
                seq_of(first) <= starts_by[c],
                "client {i}: {c} starts after {}: {:?}",
                starts_by[c],
                seqs(got)
            );
            assert_eq!(
                seq_of(got.last().unwrap()),
                last,
                "client {i}: {c} ends with history"
            );
            for m in got {
                let s = seq_of(m) as usize;
                assert_eq!(
                    m["ts"],
                    h[s - 1]["ts"],
                    "client {i}: {c} seq {s} ts matches history"
                );
                assert_eq!(
                    m["text"],
                    h[s - 1]["text"],
                    "client {i}: {c} seq {s} text matches history"
                );
                assert_eq!(
                    m["user"],
                    h[s - 1]["user"],
                    "client {i}: {c} seq {s} user matches history"
                );
            }
        }
    }
}

/// Up to `moved` channels that `victim` owns and up to `stayed` that it does not, in channel
/// order; fails if either side is empty.
pub fn split_by_owner(
    owners: &BTreeMap<String, String>,
    victim: &str,
    moved: usize,
    stayed: usize,
) -> (Vec<String>, Vec<String>) {
    let pick = |on_victim: bool, n: usize| -> Vec<String> {
        owners
            .iter()
            .filter(|(_, o)| (o.as_str() == victim) == on_victim)
            .map(|(c, _)| c.clone())
            .take(n)
            .collect()
    };
    let (m, s) = (pick(true, moved), pick(false, stayed));
    assert!(
        !m.is_empty() && !s.is_empty(),
        "channels must be both on and off {victim}: {owners:?}"
    );
    (m, s)
}

pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(seq_of).collect()
}

/// One sample's value from Prometheus text; with `labels` empty, the sum over every sample of
/// `name`; `None` when no sample of `name` has these labels (checks that must fail when a
/// metric is missing do not read it as 0).
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// Waits until `count` (what concurrent posters have had acknowledged) reaches `n`, bounded
/// by `timeout`; fails saying where the posters stalled.
pub async fn wait_count(count: &AtomicUsize, n: usize, timeout: Duration) {
    let ok = eventually(timeout, || count.load(Ordering::SeqCst) >= n).await;
    assert!(
        ok,
        "the posters stalled at {} of {n} posts within {timeout:?}",
        count.load(Ordering::SeqCst)
    );
}

/// Polls `pred` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Default)]
struct ClientState {
    events: Mutex<Vec<Value>>,
    /// Text frames that were not JSON (should never happen).
    garbage: Mutex<Vec<String>>,
    close: Mutex<Option<(u16, String)>>,
    ended: AtomicBool,
    /// Acknowledge each Socket Mode envelope as it arrives, as Bolt and `slack_sdk` do.
    auto_ack: AtomicBool,
}

/// A WebSocket client of a gateway. A reader task records every event; tests poll them.
pub struct Client {
    pub hello: Value,
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, WsMessage>>>,
    state: Arc<ClientState>,
    reader: tokio::task::JoinHandle<()>,
}

/// Why a WebSocket handshake failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The gateway answered the upgrade with this HTTP status.
    Http(u16, String),
    /// It failed otherwise (timed out, refused, not a WebSocket): why.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Http(status, body) => write!(f, "HTTP {status}: {body}"),
            ConnectError::Other(why) => f.write_str(why),
        }
    }
}

impl Client {
    /// Connects to `ws_url?token=…[&resume=…]` and waits for `hello` (bounded).
    pub async fn connect(
        ws_url: &str,
        token: &str,
        resume: Option<&BTreeMap<String, u64>>,
    ) -> Result<Client, ConnectError> {
        // `ws_url` may carry options of its own (`…/rtm?presence_sub=1`).
        let sep = if ws_url.contains('?') { '&' } else { '?' };
        let mut url = format!("{ws_url}{sep}token={token}");
        if let Some(r) = resume {
            let points: Vec<String> = r.iter().map(|(c, s)| format!("{c}:{s}")).collect();
            url.push_str(&format!("&resume={}", points.join(",")));
        }
        Client::connect_url(&url).await
    }

    /// Connects to `url` as given (it carries the token: `rtm.connect`'s or
    /// `apps.connections.open`'s) and waits for `hello` (bounded).
    pub async fn connect_url(url: &str) -> Result<Client, ConnectError> {
        let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| ConnectError::Other("handshake timed out".into()))?;
        let (ws, _) = match connected {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(ConnectError::Http(resp.status().as_u16(), body));
            }
            Err(e) => return Err(ConnectError::Other(e.to_string())),
        };
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let acks = sink.clone();
        let state = Arc::new(ClientState::default());
        let reader_state = state.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(WsMessage::Text(t)) => match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(v) => {
                            let ack = match v["envelope_id"].as_str() {
                                Some(id) if reader_state.auto_ack.load(Ordering::SeqCst) => {
                                    Some(json!({ "envelope_id": id }).to_string())
                                }
                                _ => None,
                            };
                            reader_state.events.lock().unwrap().push(v);
                            if let Some(ack) = ack {
                                // The connection may be closing: a lost ack is the gateway's to
                                // retry, as with any client.
                                let _ = acks.lock().await.send(WsMessage::Text(ack.into())).await;
                            }
                        }
                        Err(_) => reader_state
                            .garbage
                            .lock()
                            .unwrap()
                            .push(t.as_str().to_string()),
                    },
                    Ok(WsMessage::Close(frame)) => {
                        let (code, reason) = match frame {
                            Some(CloseFrame { code, reason }) => {
                                (u16::from(code), reason.as_str().to_string())
                            }
                            None => (1005, String::new()),
                        };
                        *reader_state.close.lock().unwrap() = Some((code, reason));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            reader_state.ended.store(true, Ordering::SeqCst);
        });
        let mut client = Client {
            hello: Value::Null,
            sink,
            state,
            reader,
        };
        let hello = client
            .wait_event(0, WAIT, "hello", |e| e["type"] == "hello")
            .await;
        client.hello = hello;
        Ok(client)
    }

    /// Whether each Socket Mode envelope is acknowledged as it arrives (off at first).
    pub fn auto_ack(&self, on: bool) {
        self.state.auto_ack.store(on, Ordering::SeqCst);
    }

    /// Every event received so far (including `hello`).
    pub fn events(&self) -> Vec<Value> {
        self.state.events.lock().unwrap().clone()
    }

    pub fn num_events(&self) -> usize {
        self.state.events.lock().unwrap().len()
    }

    /// Text frames that were not JSON.
    pub fn garbage(&self) -> Vec<String> {
        self.state.garbage.lock().unwrap().clone()
    }

    /// The `message` events of `channel`'s stream, in arrival order (not ephemeral ones,
    /// which are outside it and carry no `seq`).
    pub fn messages(&self, channel: &str) -> Vec<Value> {
        self.state
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e["type"] == "message" && e["channel"] == channel && e["is_ephemeral"] != true
            })
            .cloned()
            .collect()
    }

    /// Every `message` event of the channels' streams (not ephemeral ones), any channel.
    pub fn all_messages(&self) -> Vec<Value> {
        self.state
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "message" && e["is_ephemeral"] != true)
            .cloned()
            .collect()
    }

    /// The last seq received in each of `channels` (each must have had one).
    pub fn positions(&self, channels: &[String]) -> BTreeMap<String, u64> {
        channels
            .iter()
            .map(|c| {
                let seq = self
                    .max_seq(c)
                    .unwrap_or_else(|| panic!("no message received in {c}"));
                (c.clone(), seq)
            })
            .collect()
    }

    /// The highest `seq` received on `channel`.
    pub fn max_seq(&self, channel: &str) -> Option<u64> {
        // Read in place: polled often, on streams of many large messages.
        self.state
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e["type"] == "message" && e["channel"] == channel && e["is_ephemeral"] != true
            })
            .filter_map(|m| m["seq"].as_u64())
            .max()
    }

    /// Waits until an event at index `from` or later satisfies `pred`; returns it.
    pub async fn wait_event(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let events = self.state.events.lock().unwrap();
                if let Some(e) = events.iter().skip(from).find(|e| pred(e)) {
                    return e.clone();
                }
            }
            if Instant::now() >= deadline || self.state.ended.load(Ordering::SeqCst) {
                let events = self.events();
                let tail = &events[events.len().saturating_sub(10)..];
                panic!(
                    "no {what} event within {timeout:?} (connection ended: {}, close: {:?}); last events: {tail:?}",
                    self.state.ended.load(Ordering::SeqCst),
                    self.closed()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `channel` has a message with `seq >= seq`.
    pub async fn wait_seq(&self, channel: &str, seq: u64, timeout: Duration) {
        let ok = eventually(timeout, || self.max_seq(channel).is_some_and(|s| s >= seq)).await;
        assert!(
            ok,
            "client of {} never got seq {seq} of {channel}; got {:?}; close {:?}",
            self.hello["user"],
            seqs(&self.messages(channel)),
            self.closed()
        );
    }

    pub async fn send_text(&self, text: String) {
        self.sink
            .lock()
            .await
            .send(WsMessage::Text(text.into()))
            .await
            .expect("websocket send");
    }

    pub async fn send_json(&self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a frame, tolerating a connection the gateway already closed.
    pub async fn try_send(&self, msg: WsMessage) -> bool {
        self.sink.lock().await.send(msg).await.is_ok()
    }

    /// Sends `ping` with `id` and waits for the `pong` that answers it.
    pub async fn ping(&self, id: u64) -> Value {
        let from = self.num_events();
        self.send_json(&json!({ "id": id, "type": "ping" })).await;
        self.wait_event(from, WAIT, "pong", |e| {
            e["type"] == "pong" && e["reply_to"] == id
        })
        .await
    }

    /// The close frame received, if any: (code, reason).
    pub fn closed(&self) -> Option<(u16, String)> {
        self.state.close.lock().unwrap().clone()
    }

    /// Whether the connection ended (closed or failed).
    pub fn ended(&self) -> bool {
        self.state.ended.load(Ordering::SeqCst)
    }

    /// Closes the connection and waits (bounded) for the reader to finish.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sink = self.sink.lock().await;
            let _ = sink.send(WsMessage::Close(None)).await;
            let _ = sink.close().await;
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !self.state.ended.load(Ordering::SeqCst) {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        self.reader.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Sends `count` datagrams of pseudo-random bytes (1 to 1400 long) to `addr`.
pub fn send_garbage_udp(addr: SocketAddr, count: usize, seed: u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..count {
        let len = 1 + (next() % 1400) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some look like QUIC long-header initial packets, to reach the handshake code.
        if i % 3 == 0 && buf.len() > 8 {
            buf[0] = 0xc0 | (buf[0] & 0x0f);
            buf[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        let _ = sock.send_to(&buf, addr);
    }
}

/// Sends `req` and returns its status and JSON body; `what` names the request in a panic (a
/// failed request or a body that is not JSON).
async fn json_answer(req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
    let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: answer is not JSON ({e}): {text:?}"));
    (status, v)
}
