//! How every role's HTTP listener treats the connections it accepts.

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};

/// `listener`, with Nagle's algorithm off on every connection it accepts: a small write (one
/// message to a WebSocket session, a short API answer) goes out at once instead of waiting
/// for the peer to acknowledge the previous one, which a peer delaying its acknowledgements
/// holds for up to 40 ms. Messages are batched per write by the code itself.
pub fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay as fn(&mut TcpStream))
}

fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "failed to set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let mut listener = without_nagle(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
        assert!(!client.nodelay().unwrap(), "the default, for contrast");
    }
}
