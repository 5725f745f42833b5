//! WebSocket client connections from spread loopback source addresses.
//!
//! One source address has about 28,000 ephemeral ports; binding each client socket to one of
//! many 127.x.y.z addresses before connecting lets a run open more sessions than that. Only
//! loopback addresses are ever used, as sources and as targets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Hands out loopback source addresses round-robin: 127.0.1.1, 127.0.1.2, …
pub struct SourceAddrs {
    count: u32,
    next: AtomicU32,
}

impl SourceAddrs {
    /// `count` addresses (at least one, at most 65,000).
    pub fn new(count: u32) -> SourceAddrs {
        SourceAddrs {
            count: count.clamp(1, 65_000),
            next: AtomicU32::new(0),
        }
    }

    /// The `i`-th address: 127.0.1.1 upwards, skipping .0 and .255 in the last octet.
    pub fn nth(i: u32) -> Ipv4Addr {
        let host = i % 254 + 1;
        let net = i / 254 + 1;
        Ipv4Addr::new(127, (net >> 8) as u8, (net & 0xff) as u8, host as u8)
    }

    pub fn take(&self) -> Ipv4Addr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        SourceAddrs::nth(i)
    }
}

/// Checks that a URL points at loopback and returns its socket address.
pub fn loopback_addr(url: &url_lite::Url) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = url.host.parse().with_context(|| {
        format!(
            "{}: the benchmark only targets literal loopback addresses",
            url.host
        )
    })?;
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address: the benchmark only targets 127.0.0.0/8");
    }
    Ok(SocketAddr::new(ip, url.port))
}

/// Client WebSocket settings: a read buffer sized for the scenario (tungstenite's default
/// 128 KiB, allocated per connection, would make the bench itself the memory hog).
pub fn client_config(read_buffer: usize) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = read_buffer;
    c.write_buffer_size = 0;
    c
}

/// Opens a TCP connection (no Nagle delay) from `source` to the loopback address of `url`.
pub async fn connect_tcp(
    url: &str,
    source: Ipv4Addr,
) -> anyhow::Result<(url_lite::Url, TcpStream)> {
    let parsed = url_lite::Url::parse(url)?;
    let addr = loopback_addr(&parsed)?;
    let socket = TcpSocket::new_v4().context("tcp socket")?;
    socket.set_nodelay(true)?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .with_context(|| format!("failed to bind client socket to {source}"))?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("failed to connect to {addr} from {source}"))?;
    Ok((parsed, stream))
}

/// Opens a TCP connection from `source` and performs the WebSocket handshake on `url`.
pub async fn connect(url: &str, source: Ipv4Addr, config: WebSocketConfig) -> anyhow::Result<Ws> {
    let (parsed, stream) = connect_tcp(url, source).await?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .with_context(|| format!("websocket handshake with {}", parsed.redacted()))?;
    Ok(ws)
}

/// Just enough URL parsing for `ws://127.0.0.1:port/path?query` and `http://…`.
pub mod url_lite {
    use anyhow::{bail, Context};

    #[derive(Debug, PartialEq, Eq)]
    pub struct Url {
        pub scheme: String,
        pub host: String,
        pub port: u16,
        /// Path and query, starting with `/`.
        pub rest: String,
    }

    impl Url {
        pub fn parse(s: &str) -> anyhow::Result<Url> {
            let (scheme, after) = s.split_once("://").context("url without scheme")?;
            let (authority, rest) = match after.find(['/', '?']) {
                Some(i) => (&after[..i], after[i..].to_string()),
                None => (after, "/".to_string()),
            };
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().with_context(|| format!("bad port in {s}"))?),
                None => match scheme {
                    "ws" | "http" => (authority, 80),
                    other => bail!("no port and no default for {other}"),
                },
            };
            Ok(Url {
                scheme: scheme.to_string(),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                rest,
            })
        }

        /// The URL without its query (which carries tokens).
        pub fn redacted(&self) -> String {
            let path = self.rest.split('?').next().unwrap_or("/");
            format!("{}://{}:{}{}", self.scheme, self.host, self.port, path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_lite::Url;
    use super::*;

    #[test]
    fn source_addresses_stay_in_loopback_and_skip_network_and_broadcast() {
        for i in [0, 1, 253, 254, 255, 10_000, 64_999] {
            let a = SourceAddrs::nth(i);
            assert!(a.is_loopback(), "{a}");
            assert_ne!(a.octets()[3], 0);
            assert_ne!(a.octets()[3], 255);
        }
        assert_eq!(SourceAddrs::nth(0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(SourceAddrs::nth(254), Ipv4Addr::new(127, 0, 2, 1));
        let s = SourceAddrs::new(2);
        let (a, b, c) = (s.take(), s.take(), s.take());
        assert_ne!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn urls_parse_and_must_be_loopback() {
        let u = Url::parse("ws://127.0.0.1:7300/rtm?token=x").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 7300);
        assert_eq!(u.rest, "/rtm?token=x");
        assert_eq!(u.redacted(), "ws://127.0.0.1:7300/rtm");
        assert!(loopback_addr(&u).is_ok());
        let u = Url::parse("http://127.0.0.2:80").unwrap();
        assert_eq!(u.rest, "/");
        assert!(loopback_addr(&Url::parse("ws://10.0.0.1:1/").unwrap()).is_err());
        assert!(loopback_addr(&Url::parse("ws://example.com:1/").unwrap()).is_err());
        assert!(Url::parse("nope").is_err());
    }
}
