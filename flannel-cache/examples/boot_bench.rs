//! Flannel's numbers: boot latency from a warm cache against the same answer computed from the
//! store, and how fast a posted profile change is served by every Flannel.
//!
//! ```sh
//! cargo run -p switchboard-flannel-cache --release --example boot_bench
//! # smaller and quicker: BOOT_BENCH_USERS=2000 BOOT_BENCH_CHANNELS=200 ...
//! ```
//!
//! What it builds, in one process on loopback with a real embedded store in a temporary
//! directory: two workspaces of 10,000 users (1% bots) and 1,000 channels, each user in 10
//! random channels (about 100 members a channel). In `wide`, every user is also in #general,
//! so every boot carries all 10,000 users (the worst case of "the users you share a channel
//! with"); in `sized` there is no #general, so a boot carries the ~1,000 users of the caller's
//! 10 channels.
//!
//! What it measures:
//! 1. Load: one workspace from the store into the cache (the Web API's snapshot read plus
//!    indexing), and the same through the real Web API's `internal.flannel.snapshot` over HTTP.
//! 2. Boot from a warm cache, per workspace, random users: in process (the function the HTTP
//!    handler calls: token check, lookup, answer) and over HTTP (Flannel's real router, one
//!    keep-alive client, sequential calls).
//! 3. The same answer computed from the store the way a Web API would (the user's channels,
//!    each channel's members, the workspace's users, JSON), for the speedup.
//! 4. Freshness, end to end with a real admin server, Web API and two Flannels (QUIC mesh,
//!    HTTP): time from posting `users.profile.set` until both Flannels serve the new value
//!    (`users.info` polled at each in a tight loop).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flannel_cache::{Budget, Cache, Flannel, StoreSource, WebappSource};
use serde_json::{json, Value};
use shared::auth::{Claims, TokenSigner};
use shared::config::Config;
use shared::ids::{ChannelId, Ts, UserId, WorkspaceId};
use shared::mesh::{Mesh, MeshTls, PeerPool};
use shared::shutdown::Shutdown;
use shared::store::sqlite::SqliteStore;
use shared::store::{Channel, SharedStore, User};
use shared::telemetry::Health;

const FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
    "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yusuf", "Zoe",
    "Aiko", "Bruno", "Chloe", "Diego", "Elif", "Farah", "Gus", "Hana", "Igor",
];
const LAST: &[&str] = &[
    "Smith", "Jones", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Anderson", "Thomas",
    "Taylor", "Moore", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson",
];

/// Deterministic xorshift, so every run builds the same workspace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Built {
    name: String,
    workspace: WorkspaceId,
    users: Vec<User>,
}

/// Creates a workspace: `num_users` users, `num_channels` channels, each user in `per_user`
/// random channels, plus #general with everyone when `general`. The workspace and channels go
/// through the store's API; users and memberships are written straight into the store's
/// SQLite file in one transaction each (through the API every row is its own synced commit,
/// which for 110,000 memberships takes minutes). Everything measured reads through the API.
#[allow(clippy::too_many_arguments)]
async fn build_workspace(
    store: &SharedStore,
    meta_path: &std::path::Path,
    name: &str,
    num_users: usize,
    num_channels: usize,
    per_user: usize,
    general: bool,
    seed: u64,
) -> Built {
    let start = Instant::now();
    let ws = store.create_workspace(name).await.expect("workspace");
    let mut rng = Rng(seed);
    let mut db = rusqlite::Connection::open(meta_path).expect("open meta");
    db.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    {
        let tx = db.transaction().expect("transaction");
        for i in 0..num_users {
            let real = format!(
                "{} {}",
                FIRST[(i * 7 + seed as usize) % FIRST.len()],
                LAST[(i * 13) % LAST.len()]
            );
            tx.execute(
                "INSERT INTO users (id, workspace, name, real_name, is_admin, is_bot, display_name)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, '')",
                rusqlite::params![
                    UserId::generate().0,
                    ws.id.0,
                    format!("user{i:05}"),
                    real,
                    i % 100 == 99
                ],
            )
            .expect("insert user");
        }
        tx.commit().expect("commit users");
    }
    let mut users = store.users(&ws.id).await.expect("users");
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut channels = Vec::with_capacity(num_channels);
    for i in 0..num_channels {
        let name = if general && i == 0 {
            "general".to_string()
        } else {
            format!("channel-{i:04}")
        };
        let c = Channel {
            id: ChannelId::generate(),
            workspace: ws.id.clone(),
            name,
            is_private: i % 10 == 5,
            creator: users[i % users.len()].id.clone(),
            created: Ts::now(),
            topic: format!("topic of channel {i}"),
            purpose: String::new(),
            is_archived: false,
        };
        store.create_channel(&c).await.expect("channel");
        channels.push(c.id);
    }
    let mut num_memberships = 0;
    {
        let tx = db.transaction().expect("transaction");
        for (n, u) in users.iter().enumerate() {
            let mut mine = HashSet::new();
            if general {
                mine.insert(0);
            }
            while mine.len() < per_user + usize::from(general) {
                let c = rng.below(num_channels);
                if !(general && c == 0) {
                    mine.insert(c);
                }
            }
            for c in mine {
                num_memberships += 1;
                tx.execute(
                    "INSERT INTO members (channel, user, last_read) VALUES (?1, ?2, ?3)",
                    rusqlite::params![channels[c].0, u.id.0, (n % 7) as i64],
                )
                .expect("insert member");
            }
        }
        tx.commit().expect("commit members");
    }
    println!(
        "built workspace {name}: {} users, {} channels, {num_memberships} memberships in {:.1?}",
        users.len(),
        channels.len(),
        start.elapsed()
    );
    Built {
        name: name.to_string(),
        workspace: ws.id,
        users,
    }
}

fn token(signer: &TokenSigner, u: &User) -> String {
    signer.issue(&Claims {
        workspace: u.workspace.clone(),
        user: u.id.clone(),
        admin: false,
        bot: false,
        issued_at: 1,
        service: false,
    })
}

/// The boot answer computed from the store, as a Web API without a cache would: the caller,
/// its channels, each channel's members, the workspace's users filtered to those, as JSON.
async fn boot_from_store(store: &SharedStore, user: &UserId) -> String {
    let me = store.user(user).await.unwrap().unwrap();
    let ws = store.workspace(&me.workspace).await.unwrap().unwrap();
    let channels = store.user_channels(user).await.unwrap();
    let mut shared: HashSet<UserId> = HashSet::new();
    shared.insert(me.id.clone());
    let mut channel_json = Vec::new();
    for c in &channels {
        let members = store.members(&c.id).await.unwrap();
        channel_json.push(json!({
            "id": c.id, "name": c.name, "is_private": c.is_private,
            "is_archived": c.is_archived, "num_members": members.len(),
        }));
        shared.extend(members);
    }
    let (mut users, mut bots) = (Vec::new(), Vec::new());
    for u in store.users(&ws.id).await.unwrap() {
        if shared.contains(&u.id) {
            let display = if u.display_name.is_empty() {
                &u.name
            } else {
                &u.display_name
            };
            let v = json!({
                "id": u.id, "name": u.name, "real_name": u.real_name, "display_name": display,
                "is_bot": u.is_bot, "is_admin": u.is_admin, "deleted": false,
            });
            if u.is_bot {
                bots.push(v)
            } else {
                users.push(v)
            }
        }
    }
    json!({
        "ok": true,
        "self": { "id": me.id, "name": me.name },
        "team": { "id": ws.id, "name": ws.name },
        "channels": channel_json,
        "users": users,
        "bots": bots,
    })
    .to_string()
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let pick =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Stats {
        p50: pick(0.50),
        p99: pick(0.99),
        max: *samples.last().unwrap(),
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, n: usize, s: &Stats, extra: &str) {
    println!(
        "| {what} | {n} | {} | {} | {} | {} | {extra} |",
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        ms(s.mean)
    );
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind(lo(0)).await.unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::mesh::install_crypto_provider();
    if std::env::var_os("RUST_LOG").is_some() {
        shared::telemetry::init_tracing("human", "info");
    }
    let num_users = env_usize("BOOT_BENCH_USERS", 10_000);
    let num_channels = env_usize("BOOT_BENCH_CHANNELS", 1_000);
    let iterations = env_usize("BOOT_BENCH_ITERATIONS", 2_000);
    let changes = env_usize("BOOT_BENCH_CHANGES", 300);
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store"), 4)?);
    let signer = TokenSigner::new(b"bench-secret");

    let meta = dir.path().join("store").join("meta.sqlite");
    let sized = build_workspace(
        &store,
        &meta,
        "sized",
        num_users,
        num_channels,
        10,
        false,
        0x9e37,
    )
    .await;
    let wide = build_workspace(
        &store,
        &meta,
        "wide",
        num_users,
        num_channels,
        10,
        true,
        0x7f4a,
    )
    .await;

    // ---- 1. loads ----
    let cache = Cache::new(
        Arc::new(StoreSource {
            store: store.clone(),
        }),
        Budget {
            max_workspaces: 100,
            max_users: 10_000_000,
            max_age: None,
            ..Budget::from_config(&Config::defaults().flannel)
        },
    );
    cache.link_changed(true);
    let flannel = Flannel::new(cache.clone(), signer.clone());
    println!("\n## Load (cold) of one workspace\n");
    for b in [&sized, &wide] {
        let start = Instant::now();
        cache.get(&b.workspace).await.expect("load");
        println!(
            "- {}: from the store in process: {}",
            b.name,
            ms(start.elapsed())
        );
    }

    // The real Web API, for the snapshot over HTTP and the freshness run.
    let tls = MeshTls::dev(&dir.path().join("tls"))?;
    let admin_mesh = std::net::UdpSocket::bind(lo(0))?;
    let admin_mesh_addr = admin_mesh.local_addr()?;
    let mut config = Config::defaults();
    config.node.data_dir = dir.path().to_path_buf();
    config.mesh.admin_addr = admin_mesh_addr;
    let shutdown = Shutdown::new();
    tokio::spawn(admin_server::run(
        config.clone(),
        "admin-1".into(),
        admin_mesh,
        bind().await,
        admin_server::AdminDeps {
            tls: tls.clone(),
            health: Health::default(),
            local: None,
        },
        shutdown.clone(),
    ));
    let webapp_http = bind().await;
    let webapp_url = format!("http://{}", webapp_http.local_addr()?);
    config.flannel.webapp_url = webapp_url.clone();
    let mesh = Mesh::client(lo(0), &tls, 8 << 20, Duration::from_secs(3))?;
    tokio::spawn(webapp_api::run(
        config.clone(),
        webapp_http,
        webapp_api::WebappDeps {
            store: store.clone(),
            signer: signer.clone(),
            admin: webapp_api::AdminLink::new(
                Arc::new(PeerPool::new(Arc::new(mesh))),
                admin_mesh_addr,
            ),
            health: Health::default(),
        },
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        use flannel_cache::SnapshotSource;
        let source = WebappSource::new(&webapp_url, signer.clone())?;
        for b in [&sized, &wide] {
            let start = Instant::now();
            let snap = source.snapshot(&b.workspace).await.expect("snapshot");
            let fetched = start.elapsed();
            let data = flannel_cache::workspace::WorkspaceData::from_snapshot(snap);
            println!(
                "- {}: through the Web API over HTTP: {} ({} users; snapshot call {})",
                b.name,
                ms(start.elapsed()),
                data.num_users(),
                ms(fetched)
            );
        }
    }

    // ---- 2. and 3. boot latency ----
    let flannel_http = bind().await;
    let flannel_url = format!("http://{}", flannel_http.local_addr()?);
    {
        let app = flannel_cache::http::router(flannel.clone(), Health::default());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let flannel_http = axum::serve::ListenerExt::tap_io(flannel_http, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(flannel_http, app)
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await
        });
    }
    let client = reqwest::Client::new();
    println!("\n## Boot latency, {num_users} users, {num_channels} channels\n");
    println!("| path | calls | p50 | p99 | max | mean | answer |");
    println!("|---|---|---|---|---|---|---|");
    let mut rng = Rng(42);
    for b in [&sized, &wide] {
        let ws_name = &b.name;
        let tokens: Vec<(UserId, String)> = b
            .users
            .iter()
            .map(|u| (u.id.clone(), token(&signer, u)))
            .collect();
        // Warm up.
        for (_, t) in tokens.iter().take(200) {
            flannel.boot(Some(t)).await.expect("boot");
        }
        let mut samples = Vec::with_capacity(iterations);
        let mut bytes = 0usize;
        let mut shared_users = 0usize;
        for _ in 0..iterations {
            let (_, t) = &tokens[rng.below(tokens.len())];
            let start = Instant::now();
            let answer = flannel.boot(Some(t)).await.expect("boot");
            samples.push(start.elapsed());
            bytes += answer.len();
            shared_users += answer.matches("\"real_name\"").count();
        }
        row(
            &format!("{ws_name}: Flannel, in process (warm)"),
            iterations,
            &stats(samples),
            &format!(
                "{} KiB, {} users",
                bytes / iterations / 1024,
                shared_users / iterations
            ),
        );

        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..50 {
            let (_, t) = &tokens[rng.below(tokens.len())];
            client
                .get(format!("{flannel_url}/boot"))
                .bearer_auth(t)
                .send()
                .await?
                .bytes()
                .await?;
        }
        for _ in 0..iterations {
            let (_, t) = &tokens[rng.below(tokens.len())];
            let start = Instant::now();
            let body = client
                .get(format!("{flannel_url}/boot"))
                .bearer_auth(t)
                .send()
                .await?
                .bytes()
                .await?;
            samples.push(start.elapsed());
            assert!(body.starts_with(b"{\"ok\":true"));
        }
        row(
            &format!("{ws_name}: Flannel over HTTP, keep-alive (warm)"),
            iterations,
            &stats(samples),
            "",
        );

        let n = (iterations / 10).max(20);
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let (u, _) = &tokens[rng.below(tokens.len())];
            let start = Instant::now();
            let answer = boot_from_store(&store, u).await;
            samples.push(start.elapsed());
            assert!(answer.len() > 100);
        }
        row(
            &format!("{ws_name}: computed from the store (Web API way)"),
            n,
            &stats(samples),
            "",
        );
    }

    // ---- 4. freshness, end to end ----
    let mut flannels = Vec::new();
    for i in 0..2 {
        let http = bind().await;
        flannels.push(format!("http://{}", http.local_addr()?));
        let mut c = config.clone();
        c.flannel.max_cached_users = 10_000_000;
        tokio::spawn(flannel_cache::run(
            c,
            format!("fl-{}", i + 1).as_str().into(),
            http,
            flannel_cache::FlannelDeps {
                signer: signer.clone(),
                tls: tls.clone(),
                health: Health::default(),
            },
            shutdown.clone(),
        ));
    }
    let poster = &wide.users[0];
    let poster_token = token(&signer, poster);
    let viewer_token = token(&signer, &wide.users[1]);
    // Wait for both to follow the admin server, then load the workspace.
    let deadline = Instant::now() + Duration::from_secs(20);
    for f in &flannels {
        loop {
            let text = client
                .get(format!("{f}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            if text
                .lines()
                .any(|l| l == "switchboard_flannel_admin_link_up 1")
            {
                break;
            }
            assert!(Instant::now() < deadline, "flannel never linked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v: Value = client
            .get(format!("{f}/boot"))
            .bearer_auth(&viewer_token)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(v["ok"], true);
    }
    let info_url = |f: &str| format!("{f}/users.info?user={}", poster.id);
    let loads_before = flannel_cache::metrics::LOAD_DURATION.get_sample_count();
    let invalidations = || {
        ["link_down", "link_up", "unknown_in_event", "unknown_user"]
            .iter()
            .map(|r| {
                flannel_cache::metrics::INVALIDATIONS
                    .with_label_values(&[r])
                    .get()
            })
            .sum::<u64>()
    };
    let invalidations_before = invalidations();
    let mut samples = Vec::with_capacity(changes);
    let mut api_samples = Vec::with_capacity(changes);
    let mut after_samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let name = format!("name-{i}");
        let start = Instant::now();
        let r: Value = client
            .post(format!("{webapp_url}/api/users.profile.set"))
            .bearer_auth(&poster_token)
            .json(&json!({ "profile": { "display_name": name } }))
            .send()
            .await?
            .json()
            .await?;
        api_samples.push(start.elapsed());
        assert_eq!(r["ok"], true, "{r}");
        for f in &flannels {
            loop {
                let v: Value = client
                    .get(info_url(f))
                    .bearer_auth(&viewer_token)
                    .send()
                    .await?
                    .json()
                    .await?;
                if v["user"]["display_name"] == name.as_str() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "{v}");
            }
        }
        samples.push(start.elapsed());
        after_samples.push(start.elapsed() - api_samples[i]);
        if start.elapsed() > Duration::from_millis(50) {
            println!(
                "slow change {i}: answered after {}, served after {}",
                ms(api_samples[i]),
                ms(start.elapsed())
            );
        }
    }
    println!("\n## Freshness: profile change posted -> served by both Flannels\n");
    println!("| path | changes | p50 | p99 | max | mean | answer |");
    println!("|---|---|---|---|---|---|---|");
    row(
        "users.profile.set answered (store write + event relay)",
        changes,
        &stats(api_samples),
        "",
    );
    row(
        "answered -> new value served by both Flannels",
        changes,
        &stats(after_samples),
        "",
    );
    row(
        "posted -> new value served by both Flannels",
        changes,
        &stats(samples),
        "",
    );
    println!(
        "\nduring the freshness run: {} workspace loads, {} invalidations",
        flannel_cache::metrics::LOAD_DURATION.get_sample_count() - loads_before,
        invalidations() - invalidations_before
    );

    shutdown.trigger();
    Ok(())
}
