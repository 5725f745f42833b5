//! The machine's ceiling: a plain tokio-tungstenite server in this process that broadcasts
//! each published frame to every subscriber of its channel. No routing, no storage, no mesh,
//! no JSON: what is left is the WebSocket and TCP work that any fan-out server on this
//! machine must do, with the same clients as the other systems.
//!
//! A subscriber connects to `/sub/<channel>` and gets `ready` once registered; the publisher
//! connects to `/pub` and sends text frames whose payload starts with `c=<channel>;`.
//! The server runs on its own runtime (own threads), as a separate server process would.
//! It does what a tuned broadcast server does: the handshake through tokio-tungstenite,
//! then each message framed once (RFC 6455) and the same bytes written to every subscriber,
//! all frames queued for a socket in one write.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Frames queued per subscriber before it counts as too slow (its frames are then dropped,
/// which the in-order check reports as loss).
const SUB_QUEUE: usize = 4096;

type Subscribers = Arc<RwLock<Vec<Vec<mpsc::Sender<Bytes>>>>>;

pub struct LimitServer {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl LimitServer {
    /// Starts the server for `channels` channels on `threads` worker threads.
    pub fn start(channels: usize, threads: usize) -> anyhow::Result<LimitServer> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind limit server")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dropped2 = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("limit-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("limit-worker")
                    .enable_all()
                    .build()
                    .expect("limit server runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let subs: Subscribers = Arc::new(RwLock::new(vec![Vec::new(); channels]));
                    tokio::select! {
                        _ = rx => {}
                        _ = accept_loop(listener, subs, dropped2) => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(LimitServer {
            url: format!("ws://{addr}"),
            shutdown: Some(tx),
            thread: Some(thread),
            dropped,
        })
    }

    /// Frames dropped because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for LimitServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn accept_loop(
    listener: TcpListener,
    subs: Subscribers,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                eprintln!("limit server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let subs = subs.clone();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            // Subscribers send nothing: a small read buffer (tungstenite zero-fills the whole
            // buffer before each read attempt; at its 128 KiB default that memset would be
            // most of this server's work at low message rates).
            let config = crate::ws::client_config(4096);
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                |req: &Request, resp: Response| {
                    path = req.uri().path().to_string();
                    Ok(resp)
                },
                Some(config),
            )
            .await;
            let Ok(ws) = ws else { return };
            if let Some(c) = path.strip_prefix("/sub/") {
                if let Ok(c) = c.parse::<usize>() {
                    subscriber(ws, c, subs).await;
                }
            } else if path == "/pub" {
                publisher(ws, subs, dropped).await;
            }
        });
    }
}

/// An unmasked server-to-client text frame (RFC 6455, section 5.2), encoded once per
/// message and written as is to every subscriber.
pub fn text_frame(payload: &[u8]) -> Bytes {
    Bytes::from(server_frame(0x81, payload)) // FIN, text
}

/// An unmasked server-to-client frame whose first byte (FIN, opcode) is `first`.
pub fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

async fn subscriber(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    channel: usize,
    subs: Subscribers,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(SUB_QUEUE);
    {
        let mut s = subs.write();
        let Some(list) = s.get_mut(channel) else {
            return;
        };
        list.push(tx);
    }
    if ws.send(Message::text("ready")).await.is_err() {
        return;
    }
    // From here on the socket is written directly: pre-encoded frames, every queued one in
    // one write. Whatever the client sends (only a close, at the end) ends the session.
    let (mut rd, mut wr) = ws.get_mut().split();
    let mut batch = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 { break; }
                let result = if n == 1 {
                    wr.write_all(&batch[0]).await
                } else {
                    buf.clear();
                    for frame in &batch {
                        buf.extend_from_slice(frame);
                    }
                    wr.write_all(&buf).await
                };
                batch.clear();
                if result.is_err() { break; }
            }
            r = rd.read(&mut scratch) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => break,
            }
        }
    }
}

async fn publisher(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    subs: Subscribers,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let (_, mut stream) = ws.split();
    while let Some(Ok(frame)) = stream.next().await {
        let Message::Text(text) = frame else { continue };
        let Some(channel) = crate::fanout::payload_channel(text.as_str()) else {
            continue;
        };
        let bytes = text_frame(text.as_bytes());
        let s = subs.read();
        let Some(list) = s.get(channel) else { continue };
        for tx in list {
            if tx.try_send(bytes.clone()).is_err() {
                dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The limit server in a process of its own (`switchboard-bench limit-server`), for runs
/// whose sockets would not fit in this process's open-files limit twice over.
pub struct LimitChild {
    child: std::process::Child,
    pub url: String,
}

impl LimitChild {
    pub fn start(channels: usize, threads: usize) -> anyhow::Result<LimitChild> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("current exe")?;
        let mut child = std::process::Command::new(exe)
            .args(["limit-server", "--channels", &channels.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("failed to start the limit server process")?;
        let stdout = child.stdout.take().context("limit server stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let url = line.trim().to_string();
        if !url.starts_with("ws://") {
            let _ = child.kill();
            anyhow::bail!("limit server process printed {line:?} instead of its URL");
        }
        Ok(LimitChild { child, url })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LimitChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `switchboard-bench limit-server`: serves until its stdin closes.
pub fn serve_child(channels: usize, threads: usize) -> anyhow::Result<()> {
    let server = LimitServer::start(channels, threads)?;
    println!("{}", server.url);
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    if server.dropped() > 0 {
        eprintln!("limit server dropped {} frames", server.dropped());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_rfc6455() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text_frame(&[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        assert_eq!(f.len(), 204);
        let f = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
    }

    #[tokio::test]
    async fn broadcasts_to_subscribers_through_a_real_client() {
        let server = LimitServer::start(2, 1).unwrap();
        let cfg = crate::ws::client_config(4096);
        let src = std::net::Ipv4Addr::LOCALHOST;
        let mut sub = crate::ws::connect(&format!("{}/sub/1", server.url), src, cfg)
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().unwrap(), Message::text("ready"));
        let mut other = crate::ws::connect(&format!("{}/sub/0", server.url), src, cfg)
            .await
            .unwrap();
        assert_eq!(other.next().await.unwrap().unwrap(), Message::text("ready"));
        let mut publ = crate::ws::connect(&format!("{}/pub", server.url), src, cfg)
            .await
            .unwrap();
        let long = format!("c=1;{}", "y".repeat(300));
        for p in ["c=1;a", long.as_str(), "c=1;b"] {
            publ.send(Message::text(p)).await.unwrap();
        }
        for want in ["c=1;a", long.as_str(), "c=1;b"] {
            assert_eq!(sub.next().await.unwrap().unwrap(), Message::text(want));
        }
        let nothing = tokio::time::timeout(Duration::from_millis(100), other.next()).await;
        assert!(nothing.is_err(), "channel 0 got a channel 1 message");
        assert_eq!(server.dropped(), 0);
    }
}
