//! `switchboard`: one binary, every role.
//!
//! It parses arguments, loads config, starts telemetry, binds listeners and calls the roles'
//! `run`. `switchboard dev` runs every role in one process on loopback with the embedded store.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shared::auth::TokenSigner;
use shared::config::{load_cluster_secret, Config};
use shared::mesh::{LocalPeers, Mesh, MeshTls, PeerPool};
use shared::shutdown::{self, Shutdown};
use shared::store::cql::{CqlSettings, CqlStore};
use shared::store::sqlite::SqliteStore;
use shared::store::SharedStore;
use shared::telemetry::Health;

/// mimalloc: about 14 % more durable posts per second than glibc's allocator on 2 cores; lazy arena
/// commit (`.cargo/config.toml`) keeps idle sessions about as cheap (README, dependencies).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Slack-style real-time messaging mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct Common {
    /// TOML config file (defaults are built in; see `switchboard config print`).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Override one key: `--set gateway.session_queue=2048` (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Data directory (store, certificates, cluster secret); same as `--set node.data_dir=…`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
}

impl Common {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = self.set.clone();
        if let Some(dir) = &self.data_dir {
            overrides.push(format!(
                "node.data_dir={}",
                toml_string(&dir.to_string_lossy())
            ));
        }
        if self.log_json {
            overrides.push("telemetry.log_format=json".to_string());
        }
        Config::load_from_env(self.config.as_deref(), &overrides)
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Subcommand)]
enum Command {
    /// Every role in one process on loopback, with the embedded store and a demo workspace.
    Dev {
        #[command(flatten)]
        common: Common,
        /// Web API port (`0` picks free ports for everything).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Channel servers to run.
        #[arg(long, default_value_t = 2)]
        channel_servers: usize,
    },
    /// A gateway: client WebSockets at the edge.
    Gateway(Common),
    /// A channel server: sequencing, durable append and fan-out for the channels it owns.
    ChannelServer(Common),
    /// The admin server: the ring, membership and post routing.
    AdminServer(Common),
    /// The Web API (Slack-style methods).
    Webapp(Common),
    /// Flannel, the edge cache.
    Flannel(Common),
    /// Writes a throwaway cluster CA and node certificate (`ca.pem`, `node.pem`, `node.key`).
    Certs {
        #[arg(long)]
        out: PathBuf,
    },
    /// Workspace administration on the store directly.
    Admin {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Storage administration.
    Store {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Creates a workspace (with its #general channel once users join).
    CreateWorkspace { name: String },
    /// Creates a user and prints its id and token as JSON.
    CreateUser {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin: bool,
        /// A bot user: its token is a bot token (`xoxb-`) and its messages carry `bot_id`.
        #[arg(long, conflicts_with = "admin")]
        bot: bool,
        /// Its email (unique in the workspace), for `users.lookupByEmail`.
        #[arg(long)]
        email: Option<String>,
    },
    /// Prints a new token for an existing user.
    IssueToken {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        name: String,
    },
    /// Imports an unzipped Slack workspace export (users, channels, their history and
    /// reactions) into a workspace, made if missing; prints what it did as JSON. Run it with
    /// the cluster stopped, or into channels that are new.
    ImportSlack {
        #[arg(long)]
        workspace: String,
        /// The export's directory (`unzip export.zip -d DIR`).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Creates the store's schema if it is missing: the CQL keyspaces and tables (safe to run
    /// again, and on every deploy), or the embedded store's files.
    Migrate,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (defaults, file, environment, flags).
    Print,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::mesh::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs { out } => {
            shared::mesh::tls::generate_dev_certs(&out)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Config {
            common,
            command: ConfigCommand::Print,
        } => {
            print!("{}", common.load()?.to_toml());
            Ok(())
        }
        Command::Admin { common, command } => admin(common.load()?, command).await,
        Command::Store {
            common,
            command: StoreCommand::Migrate,
        } => migrate(common.load()?).await,
        Command::Dev {
            common,
            http_port,
            channel_servers,
        } => dev(common, http_port, channel_servers).await,
        Command::Gateway(c) => role(c, "gateway").await,
        Command::ChannelServer(c) => role(c, "channel-server").await,
        Command::AdminServer(c) => role(c, "admin-server").await,
        Command::Webapp(c) => role(c, "webapp").await,
        Command::Flannel(c) => role(c, "flannel").await,
    }
}

fn init_telemetry(config: &Config) {
    shared::telemetry::init_tracing(&config.telemetry.log_format, &config.telemetry.log_filter);
}

async fn open_store(config: &Config) -> anyhow::Result<SharedStore> {
    if config.store.kind == "cql" {
        let settings = CqlSettings::from_config(&config.store)?;
        let store = CqlStore::open(settings).await.with_context(|| {
            format!(
                "failed to open the CQL store at {:?}",
                config.store.cql_nodes
            )
        })?;
        return Ok(Arc::new(store));
    }
    let path = config.store_path();
    let store = SqliteStore::open(&path, config.store.shards)
        .with_context(|| format!("failed to open store at {}", path.display()))?;
    Ok(Arc::new(store))
}

fn signer(config: &Config, create: bool) -> anyhow::Result<TokenSigner> {
    Ok(TokenSigner::new(&load_cluster_secret(
        &config.cluster_secret_path(),
        create,
    )?))
}

fn mesh_tls(config: &Config) -> anyhow::Result<MeshTls> {
    let (ca, cert, key) = config.tls_paths();
    Ok(MeshTls::load(&ca, &cert, &key)
        .context("failed to load mesh TLS material (run `switchboard certs --out DIR`)")?
        .with_initial_window(config.mesh.initial_window_bytes))
}

fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let l = StdTcpListener::bind(addr)
        .with_context(|| format!("failed to bind {what} listener on {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

fn bind_udp(addr: SocketAddr, what: &str) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).with_context(|| format!("failed to bind {what} mesh socket on {addr}"))
}

/// The Web API's link to the admin server; `local` holds the servers of this process (`dev`).
fn webapp_admin_link(
    config: &Config,
    tls: &MeshTls,
    local: Option<LocalPeers>,
) -> anyhow::Result<webapp_api::AdminLink> {
    let bind: SocketAddr = if config.mesh.admin_addr.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let mesh = Mesh::client(
        bind,
        tls,
        config.mesh.max_frame_bytes,
        Duration::from_millis(config.mesh.connect_timeout_ms),
    )
    .context("failed to start web API mesh endpoint")?;
    Ok(webapp_api::AdminLink::new(
        Arc::new(PeerPool::new(Arc::new(mesh)).with_local(local)),
        config.mesh.admin_addr,
    ))
}

/// Runs one role in this process until SIGINT/SIGTERM.
async fn role(common: Common, name: &'static str) -> anyhow::Result<()> {
    let config = common.load()?;
    init_telemetry(&config);
    let shutdown = Shutdown::new();
    {
        // Installed here, before the role starts: a signal during startup stops it cleanly.
        let stop = shutdown::signal();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested");
            shutdown.trigger();
        });
    }
    let health = Health::default();
    let node = config.node_id(name);
    match name {
        "gateway" => {
            let http = bind_tcp(config.gateway.http_addr, "gateway")?;
            let deps = gateway::GatewayDeps {
                signer: signer(&config, false)?,
                tls: mesh_tls(&config)?,
                health,
            };
            gateway::run(config, node, http, deps, shutdown).await
        }
        "channel-server" => {
            let mesh = bind_udp(config.channel_server.mesh_addr, "channel server")?;
            let http = bind_tcp(config.channel_server.http_addr, "channel server")?;
            let deps = channel_server::ChannelServerDeps {
                store: open_store(&config).await?,
                tls: mesh_tls(&config)?,
                health,
                local: None,
            };
            channel_server::run(config, node, mesh, http, deps, shutdown).await
        }
        "admin-server" => {
            let mesh = bind_udp(config.admin.mesh_addr, "admin server")?;
            let http = bind_tcp(config.admin.http_addr, "admin server")?;
            let deps = admin_server::AdminDeps {
                tls: mesh_tls(&config)?,
                health,
                local: None,
            };
            admin_server::run(config, node, mesh, http, deps, shutdown).await
        }
        "webapp" => {
            let http = bind_tcp(config.webapp.http_addr, "web API")?;
            let tls = mesh_tls(&config)?;
            let deps = webapp_api::WebappDeps {
                store: open_store(&config).await?,
                signer: signer(&config, false)?,
                admin: webapp_admin_link(&config, &tls, None)?,
                health,
            };
            webapp_api::run(config, http, deps, shutdown).await
        }
        "flannel" => {
            let http = bind_tcp(config.flannel.http_addr, "flannel")?;
            let deps = flannel_cache::FlannelDeps {
                signer: signer(&config, false)?,
                tls: mesh_tls(&config)?,
                health,
            };
            flannel_cache::run(config, node, http, deps, shutdown).await
        }
        other => bail!("unknown role {other}"),
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    if config.store.kind == "cql" {
        let settings = CqlSettings::from_config(&config.store)?;
        CqlStore::migrate(&settings)
            .await
            .with_context(|| format!("migration on {:?} failed", config.store.cql_nodes))?;
        println!(
            "CQL schema is current: keyspaces {} and {}",
            settings.meta_keyspace,
            settings.shard_keyspaces.join(", ")
        );
    } else {
        open_store(&config).await?;
        println!(
            "embedded store is current at {}",
            config.store_path().display()
        );
    }
    Ok(())
}

async fn admin(config: Config, command: AdminCommand) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    // A new data directory gets its secret here (tests and first setups run `admin` before
    // any server). Said aloud: tokens signed with a secret the servers do not read are refused.
    let secret = config.cluster_secret_path();
    let existed = secret.exists();
    let signer = signer(&config, true)?;
    if !existed {
        eprintln!(
            "created a new cluster secret at {}: gateways, Flannel and the Web API accept the \
             tokens printed here only if node.cluster_secret_file names this file",
            secret.display()
        );
    }
    match command {
        AdminCommand::CreateWorkspace { name } => {
            let ws = webapp_api::create_workspace(&store, &name).await?;
            println!("{}", serde_json::json!({ "id": ws.id, "name": ws.name }));
        }
        AdminCommand::CreateUser {
            workspace,
            name,
            admin,
            bot,
            email,
        } => {
            let kind = webapp_api::UserKind {
                admin,
                bot,
                email: email.as_deref(),
            };
            let (user, token) =
                webapp_api::create_user(&store, &signer, &workspace, &name, kind).await?;
            println!(
                "{}",
                serde_json::json!({ "id": user.id, "name": user.name, "workspace": user.workspace, "email": (!user.email.is_empty()).then_some(&user.email), "is_bot": user.is_bot, "token": token })
            );
        }
        AdminCommand::IssueToken { workspace, name } => {
            let token = webapp_api::issue_token(&store, &signer, &workspace, &name).await?;
            println!("{}", serde_json::json!({ "token": token }));
        }
        AdminCommand::ImportSlack { workspace, dir } => {
            let report = webapp_api::import::import_slack_export(&store, &dir, &workspace)
                .await
                .with_context(|| format!("importing the Slack export at {}", dir.display()))?;
            println!("{}", report.json());
        }
    }
    Ok(())
}

/// Every role in one process on loopback.
async fn dev(common: Common, http_port: u16, num_cs: usize) -> anyhow::Result<()> {
    // Installed first: SIGTERM or SIGINT while the roles start stops them cleanly.
    let stop = shutdown::signal();
    tokio::pin!(stop);
    let mut common = common;
    let data_dir = common
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".dev-data"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("failed to create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    common.data_dir = Some(data_dir.clone());
    if num_cs == 0 {
        bail!("--channel-servers must be at least 1");
    }

    let lo = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let webapp_http = bind_tcp(lo(http_port), "web API")?;
    let webapp_addr = webapp_http.local_addr()?;
    let admin_mesh = bind_udp(lo(0), "admin server")?;
    let admin_mesh_addr = admin_mesh.local_addr()?;
    let admin_http = bind_tcp(lo(0), "admin server")?;
    let admin_http_addr = admin_http.local_addr()?;
    let gateway_http = bind_tcp(lo(0), "gateway")?;
    let gateway_addr = gateway_http.local_addr()?;
    let flannel_http = bind_tcp(lo(0), "flannel")?;
    let flannel_addr = flannel_http.local_addr()?;
    let mut cs_sockets = Vec::new();
    for _ in 0..num_cs {
        cs_sockets.push((
            bind_udp(lo(0), "channel server")?,
            bind_tcp(lo(0), "channel server")?,
        ));
    }

    let gateway_url = format!("ws://{gateway_addr}/rtm");
    let webapp_url = format!("http://{webapp_addr}");
    // Apps tried beside `dev` listen on this machine: their request URLs may be loopback
    // (first, so that a `--set` of the user's own comes after it and wins).
    common
        .set
        .insert(0, "webapp.private_request_urls=true".to_string());
    common.set.extend([
        format!(
            "mesh.admin_addr={}",
            toml_string(&admin_mesh_addr.to_string())
        ),
        format!("gateway.webapp_url={}", toml_string(&webapp_url)),
        format!("flannel.webapp_url={}", toml_string(&webapp_url)),
        format!(
            "gateway.flannel_urls=[{}]",
            toml_string(&format!("http://{flannel_addr}"))
        ),
        format!("webapp.gateway_urls=[{}]", toml_string(&gateway_url)),
    ]);
    let config = common.load()?;
    init_telemetry(&config);
    shared::mesh::tls::generate_dev_certs(&data_dir.join("tls"))?;
    let tls = mesh_tls(&config)?;
    let signer = signer(&config, true)?;
    if config.store.kind == "cql" {
        // `dev` is for trying things: create the schema rather than ask for a migration.
        CqlStore::migrate(&CqlSettings::from_config(&config.store)?).await?;
    }
    let store = open_store(&config).await?;
    let tokens = webapp_api::seed_demo(&store, &signer, &data_dir).await?;

    let shutdown = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    // The roles below share this process: their requests to each other skip QUIC.
    let local = config.mesh.local_calls.then(LocalPeers::new);
    let admin_deps = admin_server::AdminDeps {
        tls: tls.clone(),
        health: Health::default(),
        local: local.clone(),
    };
    tasks.spawn(admin_server::run(
        config.clone(),
        "admin-1".into(),
        admin_mesh,
        admin_http,
        admin_deps,
        shutdown.clone(),
    ));
    let mut cs_health = Vec::new();
    for (i, (mesh, http)) in cs_sockets.into_iter().enumerate() {
        let health = Health::default();
        cs_health.push((http.local_addr()?, health.clone()));
        let deps = channel_server::ChannelServerDeps {
            store: store.clone(),
            tls: tls.clone(),
            health,
            local: local.clone(),
        };
        tasks.spawn(channel_server::run(
            config.clone(),
            format!("cs-{}", i + 1).as_str().into(),
            mesh,
            http,
            deps,
            shutdown.clone(),
        ));
    }
    let gw_deps = gateway::GatewayDeps {
        signer: signer.clone(),
        tls: tls.clone(),
        health: Health::default(),
    };
    tasks.spawn(gateway::run(
        config.clone(),
        "gw-1".into(),
        gateway_http,
        gw_deps,
        shutdown.clone(),
    ));
    let webapp_deps = webapp_api::WebappDeps {
        store: store.clone(),
        signer: signer.clone(),
        admin: webapp_admin_link(&config, &tls, local.clone())?,
        health: Health::default(),
    };
    tasks.spawn(webapp_api::run(
        config.clone(),
        webapp_http,
        webapp_deps,
        shutdown.clone(),
    ));
    let flannel_deps = flannel_cache::FlannelDeps {
        signer: signer.clone(),
        tls: tls.clone(),
        health: Health::default(),
    };
    tasks.spawn(flannel_cache::run(
        config.clone(),
        "flannel-1".into(),
        flannel_http,
        flannel_deps,
        shutdown.clone(),
    ));

    let urls = serde_json::json!({
        "webapp": webapp_url,
        "api": format!("{webapp_url}/api"),
        "gateway": gateway_url,
        "admin": format!("http://{admin_http_addr}"),
        "admin_mesh": admin_mesh_addr.to_string(),
        "flannel": format!("http://{flannel_addr}"),
        "channel_servers": cs_health.iter().map(|(a, _)| format!("http://{a}")).collect::<Vec<_>>(),
    });
    write_json(&data_dir.join("urls.json"), &urls)?;

    // Wait until the channel servers joined the ring, so the first post succeeds (at most
    // 30 s: a loaded machine can take seconds; past that, say so rather than claim it).
    let mut ready = false;
    let mut stopping = false;
    for _ in 0..600 {
        ready = cs_health.iter().all(|(_, h)| h.is_ready());
        if ready {
            break;
        }
        tokio::select! {
            _ = &mut stop => {
                stopping = true;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if stopping {
        tracing::info!("shutdown requested while starting");
    } else {
        if !ready {
            tracing::warn!("channel servers have not joined the ring after 30 s; posts fail with no_owner until they do");
        }
        print_welcome(&urls, &tokens, &data_dir);
        tokio::select! {
            _ = &mut stop => tracing::info!("shutdown requested"),
            Some(result) = tasks.join_next() => {
                shutdown.trigger();
                match result {
                    Ok(Ok(())) => bail!("a role stopped unexpectedly"),
                    Ok(Err(e)) => return Err(e.context("a role failed")),
                    Err(e) => bail!("a role panicked: {e}"),
                }
            }
        }
    }
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

fn print_welcome(urls: &serde_json::Value, tokens: &serde_json::Value, data_dir: &Path) {
    let api = urls["api"].as_str().unwrap_or_default();
    let gateway = urls["gateway"].as_str().unwrap_or_default();
    let alice = tokens["users"]["alice"]["token"]
        .as_str()
        .unwrap_or_default();
    let bob = tokens["users"]["bob"]["token"].as_str().unwrap_or_default();
    let general = tokens["general"].as_str().unwrap_or("#general");
    println!(
        "\nSwitchboard dev is running (data in {dir}).\n\
         \n  Web API   {api}/<method>\
         \n  Gateway   {gateway}?token=<token>\
         \n  Admin     {admin}/ring\
         \n  URLs      {dir}/urls.json    tokens: {dir}/tokens.json\n\
         \nWatch #general as bob:\n  websocat '{gateway}?token={bob}'\n\
         \nPost as alice:\n  curl -s {api}/chat.postMessage -H 'Authorization: Bearer {alice}' \\\n       -H 'Content-Type: application/json' -d '{{\"channel\":\"{general}\",\"text\":\"hello\"}}'\n",
        dir = data_dir.display(),
        admin = urls["admin"].as_str().unwrap_or_default(),
    );
}
