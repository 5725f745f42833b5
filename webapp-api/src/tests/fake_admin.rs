//! A stand-in admin server for the HTTP-level tests that need a post to be acknowledged: a
//! real mesh endpoint (QUIC, mutual TLS with throwaway certificates) that the Web API's real
//! [`AdminLink`] talks to.
//!
//! It places each post the way an owning channel server does, on the real store under the
//! test server: the channel's next sequence, then an append, which answers a repeated
//! `client_msg_id` with the stored message through the store's own `(channel, client_msg_id)`
//! index, exactly as the cluster finds repeats. It records the user events it is asked to
//! relay, in the order they arrive (each relay waits for its answer, so that is the order
//! the Web API published them in). It keeps a node's membership stream open without sending a
//! ring, and refuses everything else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::ids::Ts;
use shared::mesh::{FrameReader, FrameWriter, Mesh, MeshConn, MeshTls, PeerPool};
use shared::protocol::{MeshError, MeshFrame, Message, NewMessage, UserEvent};
use shared::store::{AppendOutcome, SharedStore};

use crate::AdminLink;

const MAX_FRAME: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct FakeAdmin {
    /// What the Web API under test is given as its admin link.
    pub(crate) link: AdminLink,
    events: Arc<Mutex<Vec<UserEvent>>>,
    mesh: Arc<Mesh>,
    task: tokio::task::JoinHandle<()>,
    /// Holds the certificates for as long as the endpoints live.
    _certs: tempfile::TempDir,
}

impl FakeAdmin {
    /// Listens on a loopback port and places posts on `store`.
    pub(crate) fn start(store: SharedStore) -> FakeAdmin {
        shared::mesh::install_crypto_provider();
        let certs = tempfile::tempdir().expect("tempdir");
        shared::mesh::tls::generate_dev_certs(certs.path()).expect("certs");
        let tls = MeshTls::load(
            &certs.path().join("ca.pem"),
            &certs.path().join("node.pem"),
            &certs.path().join("node.key"),
        )
        .expect("tls");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        let mesh = Arc::new(Mesh::server(socket, &tls, MAX_FRAME, CONNECT_TIMEOUT).expect("mesh"));
        let addr = mesh.local_addr().expect("addr");
        let client = Mesh::client(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &tls,
            MAX_FRAME,
            CONNECT_TIMEOUT,
        )
        .expect("client mesh");
        let link = AdminLink::new(Arc::new(PeerPool::new(Arc::new(client))), addr);
        let events = Arc::new(Mutex::new(Vec::new()));
        let placing = Arc::new(tokio::sync::Mutex::new(()));
        let task = tokio::spawn({
            let (mesh, events) = (mesh.clone(), events.clone());
            async move {
                while let Some(conn) = mesh.accept().await {
                    tokio::spawn(serve(conn, store.clone(), events.clone(), placing.clone()));
                }
            }
        });
        FakeAdmin {
            link,
            events,
            mesh,
            task,
            _certs: certs,
        }
    }

    /// The user events relayed so far, oldest first.
    pub(crate) fn events(&self) -> Vec<UserEvent> {
        self.events.lock().expect("events lock").clone()
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.mesh.close();
        self.task.abort();
    }
}

async fn serve(
    conn: MeshConn,
    store: SharedStore,
    events: Arc<Mutex<Vec<UserEvent>>>,
    placing: Arc<tokio::sync::Mutex<()>>,
) {
    while let Some((w, r)) = conn.accept().await {
        tokio::spawn(answer(w, r, store.clone(), events.clone(), placing.clone()));
    }
}

async fn answer(
    mut w: FrameWriter,
    mut r: FrameReader,
    store: SharedStore,
    events: Arc<Mutex<Vec<UserEvent>>>,
    placing: Arc<tokio::sync::Mutex<()>>,
) {
    let Ok(Some(frame)) = r.read().await else {
        return;
    };
    let reply = match frame {
        // A node's membership stream: kept open (until the connection closes), no ring sent.
        MeshFrame::Hello { .. } => {
            while let Ok(Some(_)) = r.read().await {}
            return;
        }
        MeshFrame::User(ev) => {
            events.lock().expect("events lock").push(ev);
            MeshFrame::Ok
        }
        MeshFrame::Post { msg } => {
            let _one_at_a_time = placing.lock().await;
            match place(&store, msg).await {
                Ok((msg, duplicate)) => MeshFrame::PostOk { msg, duplicate },
                Err(e) => MeshFrame::Error(MeshError::Store(e.to_string())),
            }
        }
        _ => MeshFrame::Error(MeshError::Unavailable(
            "not served by the fake admin".into(),
        )),
    };
    if w.send(&reply).await.is_ok() {
        w.finish();
    }
}

/// Appends `new` as its channel's next message; a repeated `client_msg_id` answers the stored
/// message (and `true`), as a channel server does.
async fn place(
    store: &SharedStore,
    new: NewMessage,
) -> shared::store::StorageResult<(Message, bool)> {
    let last = store.last_message(&new.workspace, &new.channel).await?;
    let seq = last.as_ref().map_or(1, |m| m.seq + 1);
    let ts = Ts(last.map_or(0, |m| m.ts.0 + 1).max(Ts::now().0));
    let msg = Message::from_new(new, seq, ts);
    Ok(match store.append(&msg).await? {
        AppendOutcome::Stored => (msg, false),
        AppendOutcome::Duplicate(stored) => (stored, true),
    })
}
