//! The mesh behind the Web API in the HTTP-level tests that need a post acknowledged or a
//! user event relayed: the real admin server and one real channel server, run in this process
//! on loopback (QUIC, mutual TLS with throwaway certificates), the channel server on the test
//! server's own store. A follower on the admin server's ring stream, as a Flannel cache
//! follows it, records the user events the admin server relays, in the order it relays them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::config::Config;
use shared::mesh::{Mesh, MeshTls, PeerPool};
use shared::protocol::{MeshFrame, Role, UserEvent, PROTOCOL_VERSION};
use shared::shutdown::Shutdown;
use shared::store::SharedStore;
use shared::telemetry::Health;

use crate::AdminLink;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Cluster {
    /// What the Web API under test is given as its admin link.
    pub(crate) link: AdminLink,
    events: Arc<Mutex<Vec<UserEvent>>>,
    shutdown: Shutdown,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    /// Certificates and the admin server's data directory, for as long as the nodes live.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the admin server and a channel server on `store`, and waits until the channel
    /// server owns the ring (at most 10 s).
    pub(crate) async fn start(store: SharedStore) -> Cluster {
        shared::mesh::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = MeshTls::dev(&dir.path().join("tls")).expect("tls");
        let udp = || std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        let tcp = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("tcp listener")
        };
        let admin_mesh = udp();
        let admin_addr = admin_mesh.local_addr().expect("admin addr");
        let admin_http = tcp().await;
        let mut config = Config::defaults();
        config.node.data_dir = dir.path().join("data");
        config.mesh.admin_addr = admin_addr;
        let shutdown = Shutdown::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(admin_server::run(
            config.clone(),
            "admin-1".into(),
            admin_mesh,
            admin_http,
            admin_server::AdminDeps {
                tls: tls.clone(),
                health: Health::default(),
                local: None,
            },
            shutdown.clone(),
        ));
        tasks.spawn(channel_server::run(
            config.clone(),
            "cs-1".into(),
            udp(),
            tcp().await,
            channel_server::ChannelServerDeps {
                store,
                tls: tls.clone(),
                health: Health::default(),
                local: None,
            },
            shutdown.clone(),
        ));
        let mesh = |tls: &MeshTls| {
            Arc::new(
                Mesh::client(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls,
                    config.mesh.max_frame_bytes,
                    CONNECT_TIMEOUT,
                )
                .expect("client mesh"),
            )
        };
        let link = AdminLink::new(Arc::new(PeerPool::new(mesh(&tls))), admin_addr);
        let events = Arc::new(Mutex::new(Vec::new()));
        let follower = mesh(&tls);
        let owned = follow(follower, admin_addr, events.clone(), shutdown.clone()).await;
        for _ in 0..100 {
            if owned.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            owned.load(std::sync::atomic::Ordering::SeqCst),
            "the channel server did not join the ring within 10 s"
        );
        Cluster {
            link,
            events,
            shutdown,
            tasks,
            _dir: dir,
        }
    }

    /// The user events the admin server relayed so far, oldest first.
    pub(crate) fn events(&self) -> Vec<UserEvent> {
        self.events.lock().expect("events lock").clone()
    }

    pub(crate) async fn stop(mut self) {
        self.shutdown.trigger();
        while let Some(done) = self.tasks.join_next().await {
            done.expect("node task").expect("node stopped cleanly");
        }
    }
}

/// Follows the admin server's ring stream as a Flannel cache does and records every user event
/// relayed on it. The flag turns true once a ring with an owner arrived.
async fn follow(
    mesh: Arc<Mesh>,
    admin: SocketAddr,
    events: Arc<Mutex<Vec<UserEvent>>>,
    shutdown: Shutdown,
) -> Arc<std::sync::atomic::AtomicBool> {
    let conn = mesh
        .connect(admin)
        .await
        .expect("connect to the admin server");
    let (mut w, mut r) = conn.open().await.expect("ring stream");
    w.send(&MeshFrame::Hello {
        node: "follower-1".into(),
        role: Role::Flannel,
        protocol_version: PROTOCOL_VERSION,
        mesh_addr: String::new(),
    })
    .await
    .expect("hello");
    let owned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = owned.clone();
    tokio::spawn(async move {
        let _keep = (mesh, w);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                frame = r.read() => match frame {
                    Ok(Some(MeshFrame::User(ev))) => events.lock().expect("events lock").push(ev),
                    Ok(Some(MeshFrame::Ring(ring))) => {
                        if !ring.members.is_empty() {
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
            }
        }
    });
    owned
}
