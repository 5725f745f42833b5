//! The real Web API for the unit tests that load workspaces: `webapp_api::run` in process on
//! loopback, over a real embedded store in a temporary directory seeded with the demo
//! workspace, with its mesh link to a real admin server. Flannel reaches it the way it does
//! in production, through [`WebappSource`] over HTTP.
//!
//! A test that needs a load to be under way (to join it, or to send an event while it runs)
//! starts with [`WebApi::prepare`]: the listener is bound but the Web API does not answer
//! until [`WebApi::serve`], so a load connects (the kernel queues the connection) and then
//! waits, for as long as the test wants, without a sleep.
//!
//! A test whose cache must first load, then meet a Web API that is slow or down (a stale copy
//! being reloaded, a failed load), loads through a [`SourceSwitch`] and moves it between real
//! endpoints: the Web API, a second Web API on the same store that does not answer until
//! served ([`WebApi::beside`], as production runs several), or an address that refuses
//! connections ([`WebApi::refusing_source`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use shared::auth::TokenSigner;
use shared::config::Config;
use shared::ids::{ChannelId, Ts, UserId, WorkspaceId};
use shared::mesh::{Mesh, MeshTls, PeerPool};
use shared::protocol::WorkspaceSnapshot;
use shared::shutdown::Shutdown;
use shared::store::sqlite::SqliteStore;
use shared::store::{Channel, SharedStore};
use shared::telemetry::Health;
use tokio::net::{TcpListener, TcpSocket};

use crate::loader::{LoadError, SnapshotSource, WebappSource};

/// How long a test waits for anything (a load, a signal) before it fails instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// `fut`, or a panic naming `what` if it takes longer than [`WAIT`].
pub(crate) async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A real Web API (and the admin server it links to), stopped when dropped.
pub(crate) struct WebApi {
    pub(crate) url: String,
    /// The Web API's own store: tests change data behind its back through it, as the CLI can.
    pub(crate) store: SharedStore,
    /// The cluster secret: the Web API's, so Flannel's service tokens and client tokens verify.
    pub(crate) signer: TokenSigner,
    /// What `seed_demo` returned: the demo workspace's ids and tokens.
    demo: Value,
    /// Until [`WebApi::serve`]: the bound listener and what the Web API runs with.
    unserved: Mutex<Option<(TcpListener, Config, webapp_api::AdminLink)>>,
    /// What another Web API beside this one needs: config (with the admin server's address)
    /// and mesh identity.
    config: Config,
    tls: MeshTls,
    /// Bound but not listening: connections to it are refused.
    refusing: TcpSocket,
    shutdown: Shutdown,
    _dir: Arc<tempfile::TempDir>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl WebApi {
    /// A Web API that answers at once.
    pub(crate) async fn start() -> WebApi {
        let api = WebApi::prepare().await;
        api.serve();
        api
    }

    /// A seeded store, a running admin server and the Web API's bound listener, not answering
    /// until [`WebApi::serve`].
    pub(crate) async fn prepare() -> WebApi {
        shared::mesh::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore =
            Arc::new(SqliteStore::open(&dir.path().join("store"), 2).expect("store"));
        let signer = TokenSigner::new(b"flannel-test-secret");
        let demo = webapp_api::seed_demo(&store, &signer, dir.path())
            .await
            .expect("seed the demo workspace");

        let tls = MeshTls::dev(&dir.path().join("tls")).expect("mesh tls");
        let admin_mesh = std::net::UdpSocket::bind(loopback()).expect("bind admin mesh");
        let admin_addr = admin_mesh.local_addr().expect("admin mesh addr");
        let mut config = Config::defaults();
        config.node.data_dir = dir.path().to_path_buf();
        config.mesh.admin_addr = admin_addr;
        let shutdown = Shutdown::new();
        let admin_http = TcpListener::bind(loopback())
            .await
            .expect("bind admin http");
        tokio::spawn(admin_server::run(
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
        let mesh = Mesh::client(
            loopback(),
            &tls,
            config.mesh.max_frame_bytes,
            Duration::from_millis(config.mesh.connect_timeout_ms),
        )
        .expect("web api mesh endpoint");
        let admin = webapp_api::AdminLink::new(Arc::new(PeerPool::new(Arc::new(mesh))), admin_addr);

        let listener = TcpListener::bind(loopback()).await.expect("bind web api");
        let url = format!("http://{}", listener.local_addr().expect("web api addr"));
        WebApi {
            url,
            store,
            signer,
            demo,
            unserved: Mutex::new(Some((listener, config.clone(), admin))),
            config,
            tls,
            refusing: refusing_socket(),
            shutdown,
            _dir: Arc::new(dir),
        }
    }

    /// Another Web API on the same store, linked to the same admin server (as production runs
    /// several), not answering until [`WebApi::serve`].
    pub(crate) async fn beside(&self) -> WebApi {
        let mesh = Mesh::client(
            loopback(),
            &self.tls,
            self.config.mesh.max_frame_bytes,
            Duration::from_millis(self.config.mesh.connect_timeout_ms),
        )
        .expect("web api mesh endpoint");
        let admin = webapp_api::AdminLink::new(
            Arc::new(PeerPool::new(Arc::new(mesh))),
            self.config.mesh.admin_addr,
        );
        let listener = TcpListener::bind(loopback()).await.expect("bind web api");
        let addr = listener.local_addr().expect("web api addr");
        let url = format!("http://{addr}");
        // Its own search index beside the same store.
        let mut config = self.config.clone();
        config.node.data_dir = self._dir.path().join(format!("beside-{}", addr.port()));
        WebApi {
            url,
            store: self.store.clone(),
            signer: self.signer.clone(),
            demo: self.demo.clone(),
            unserved: Mutex::new(Some((listener, config.clone(), admin))),
            config,
            tls: self.tls.clone(),
            refusing: refusing_socket(),
            // Its own: dropping it stops it, not this one's admin server.
            shutdown: Shutdown::new(),
            _dir: self._dir.clone(),
        }
    }

    /// Flannel's production source, pointed at an address that refuses connections: every
    /// load fails, as while the Web API is down.
    pub(crate) fn refusing_source(&self) -> Arc<WebappSource> {
        let addr = self.refusing.local_addr().expect("refusing addr");
        Arc::new(WebappSource::new(&format!("http://{addr}"), self.signer.clone()).expect("client"))
    }

    /// Starts answering (queued connections included).
    pub(crate) fn serve(&self) {
        let (listener, config, admin) = self.unserved.lock().take().expect("served once");
        tokio::spawn(webapp_api::run(
            config,
            listener,
            webapp_api::WebappDeps {
                store: self.store.clone(),
                signer: self.signer.clone(),
                admin,
                health: Health::default(),
            },
            self.shutdown.clone(),
        ));
    }

    /// Flannel's production source, pointed at this Web API.
    pub(crate) fn source(&self) -> Arc<WebappSource> {
        Arc::new(WebappSource::new(&self.url, self.signer.clone()).expect("web api client"))
    }

    /// The seeded demo workspace (alice, bob and carol, all in #general).
    pub(crate) fn demo_workspace(&self) -> WorkspaceId {
        WorkspaceId::from(self.demo["workspace"].as_str().expect("seeded workspace"))
    }

    /// A demo user's id, by name.
    pub(crate) fn demo_user(&self, name: &str) -> UserId {
        UserId::from(
            self.demo["users"][name]["id"]
                .as_str()
                .expect("seeded user"),
        )
    }

    /// A demo channel's id (`general`).
    pub(crate) fn demo_general(&self) -> ChannelId {
        ChannelId::from(self.demo["general"].as_str().expect("seeded #general"))
    }

    /// Adds a workspace of `num_users` users and no channels to the store.
    pub(crate) async fn add_workspace(&self, name: &str, num_users: usize) -> WorkspaceId {
        let ws = self.store.create_workspace(name).await.expect("workspace");
        for i in 0..num_users {
            self.add_user(&ws.id, &format!("user{i}")).await;
        }
        ws.id
    }

    /// Adds a user to the store (behind the events' back, as the CLI does).
    pub(crate) async fn add_user(&self, workspace: &WorkspaceId, name: &str) -> UserId {
        self.store
            .create_user(workspace, name, "Some One", false, false)
            .await
            .expect("user")
            .id
    }

    /// Adds a channel with the given members to the store.
    pub(crate) async fn add_channel(
        &self,
        workspace: &WorkspaceId,
        name: &str,
        is_private: bool,
        members: &[&UserId],
    ) -> ChannelId {
        let channel = Channel {
            id: ChannelId::generate(),
            workspace: workspace.clone(),
            name: name.into(),
            is_private,
            creator: members[0].clone(),
            created: Ts::now(),
            topic: String::new(),
            purpose: String::new(),
            is_archived: false,
        };
        self.store.create_channel(&channel).await.expect("channel");
        for user in members {
            self.store
                .add_member(&channel.id, user)
                .await
                .expect("member");
        }
        channel.id
    }
}

/// A loopback port that is bound (so nothing else takes it) but not listening.
fn refusing_socket() -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(loopback()).expect("bind refusing socket");
    socket
}

/// The source a test cache loads from, moved by the test between real endpoints.
pub(crate) struct SourceSwitch {
    current: Mutex<Arc<dyn SnapshotSource>>,
}

impl SourceSwitch {
    pub(crate) fn new(source: Arc<dyn SnapshotSource>) -> Arc<SourceSwitch> {
        Arc::new(SourceSwitch {
            current: Mutex::new(source),
        })
    }

    /// Loads started from now on go to `source`.
    pub(crate) fn set(&self, source: Arc<dyn SnapshotSource>) {
        *self.current.lock() = source;
    }
}

#[async_trait::async_trait]
impl SnapshotSource for SourceSwitch {
    async fn snapshot(&self, workspace: &WorkspaceId) -> Result<WorkspaceSnapshot, LoadError> {
        let source = self.current.lock().clone();
        source.snapshot(workspace).await
    }
}

impl Drop for WebApi {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
