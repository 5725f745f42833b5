//! A lean WebSocket client for the fan-out subscribers (RFC 6455, client side, no extensions).
//!
//! Every system's subscribers (Switchboard, the limit server, nats-server) read through this
//! one client, so the bench spends the same per-frame cost on each and the comparison measures
//! the servers. tungstenite's reader zero-fills its whole read buffer before every read
//! (`FrameCodec::read_in`); with one small frame per read, as fan-out delivers them, that
//! memset was 18 % of the machine in a 1×1,000 run, all of it charged to the bench. This
//! client reads into the spare capacity of a `BytesMut` (no zeroing) and parses frames in
//! place: text frames are UTF-8-checked and handed out borrowed.
//!
//! The handshake is the plain HTTP/1.1 upgrade with a random `Sec-WebSocket-Key`, and the
//! answer's `Sec-WebSocket-Accept` is checked. Pings are answered with pongs, fragmented
//! messages are reassembled, a close frame ends the stream, and a server that masks its
//! frames, sets reserved bits or sends an oversized frame is an error.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::ws::{connect_tcp, url_lite};

/// Largest message accepted (whole, after reassembly).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Largest HTTP answer to the upgrade request.
const MAX_HANDSHAKE: usize = 16 << 10;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// The server closed the connection (code, reason); nothing follows.
    Close(Option<u16>, &'a str),
}

/// A complete frame located in the read buffer.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Bytes of header before the payload.
    header_len: usize,
    payload_len: usize,
}

/// Parses the frame header at the start of `b`: `Ok(None)` while the frame is incomplete.
fn parse_header(b: &[u8]) -> anyhow::Result<Option<Header>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (b[0], b[1]);
    if b0 & 0x70 != 0 {
        bail!("websocket frame with reserved bits set ({b0:#04x}) without an extension");
    }
    if b1 & 0x80 != 0 {
        bail!("the server masked a websocket frame (RFC 6455 5.1 forbids it)");
    }
    let opcode = b0 & 0x0f;
    let (len, header_len) = match b1 & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (n as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        bail!("websocket frame of {len} bytes is over the {MAX_MESSAGE}-byte limit");
    }
    let payload_len = len as usize;
    if opcode >= OP_CLOSE && (payload_len > 125 || b0 & 0x80 == 0) {
        bail!("websocket control frame {opcode:#x} fragmented or over 125 bytes");
    }
    if b.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Appends one masked client frame (FIN set) to `out`.
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A client WebSocket connection.
pub struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
    /// How much spare room each read asks for.
    read_size: usize,
    /// A fragmented message being reassembled: its opcode and the bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    mask_state: u64,
    closed: bool,
}

impl RawWs {
    /// Opens a TCP connection from `source` to the loopback `url` and upgrades it.
    pub async fn connect(url: &str, source: Ipv4Addr, read_size: usize) -> anyhow::Result<RawWs> {
        let (parsed, stream) = connect_tcp(url, source).await?;
        let mut ws = RawWs {
            stream,
            buf: BytesMut::with_capacity(read_size.max(1024)),
            read_size: read_size.max(1024),
            partial: None,
            mask_state: RandomState::new().build_hasher().finish() | 1,
            closed: false,
        };
        ws.handshake(&parsed)
            .await
            .with_context(|| format!("websocket handshake with {}", parsed.redacted()))?;
        Ok(ws)
    }

    async fn handshake(&mut self, url: &url_lite::Url) -> anyhow::Result<()> {
        let key = generate_key();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            url.rest, url.host, url.port
        );
        self.stream.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HANDSHAKE {
                bail!("upgrade answer longer than {MAX_HANDSHAKE} bytes");
            }
            self.buf.reserve(self.read_size);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed during the upgrade");
            }
        };
        let head = self.buf.split_to(end);
        let head = std::str::from_utf8(&head).context("upgrade answer is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {status}");
        }
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_string());
        let expected = derive_accept_key(key.as_bytes());
        if accept.as_deref() != Some(expected.as_str()) {
            bail!("Sec-WebSocket-Accept {accept:?} does not answer the key (expected {expected})");
        }
        Ok(())
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: masking keys only need to be unpredictable to intermediaries.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_ne_bytes()
    }

    /// Sends one frame (masked, as a client must).
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let mask = self.next_mask();
        encode_frame(&mut out, opcode, payload, mask);
        self.stream.write_all(&out).await.context("websocket write")
    }

    #[cfg(test)]
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_frame(OP_TEXT, text.as_bytes()).await
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send_frame(OP_BINARY, bytes).await
    }

    /// Waits for data, then hands every whole message in the buffer to `f`, answering pings
    /// along the way. `Ok(false)` once the server closed (after a `Frame::Close`) or the
    /// connection ended.
    pub async fn read_batch(&mut self, mut f: impl FnMut(Frame<'_>)) -> anyhow::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        loop {
            let delivered = self.drain(&mut f, &mut pongs)?;
            for p in pongs.drain(..) {
                self.send_frame(OP_PONG, &p).await?;
            }
            if self.closed {
                return Ok(false);
            }
            if delivered {
                return Ok(true);
            }
            self.buf.reserve(self.read_size);
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .context("websocket read")?
                == 0
            {
                self.closed = true;
                if self.buf.is_empty() && self.partial.is_none() {
                    return Ok(false);
                }
                bail!("connection closed in the middle of a websocket frame");
            }
        }
    }

    /// Parses the buffered frames; whether any message reached `f`.
    fn drain(
        &mut self,
        f: &mut impl FnMut(Frame<'_>),
        pongs: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<bool> {
        let mut delivered = false;
        while !self.closed {
            let Some(h) = parse_header(&self.buf)? else {
                break;
            };
            let start = h.header_len;
            let payload = &self.buf[start..start + h.payload_len];
            match h.opcode {
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    bail!("new websocket message before the previous fragmented one ended")
                }
                OP_TEXT | OP_BINARY if h.fin => {
                    deliver(f, h.opcode, payload)?;
                    delivered = true;
                }
                OP_TEXT | OP_BINARY => self.partial = Some((h.opcode, payload.to_vec())),
                OP_CONTINUATION => {
                    let Some((op, mut data)) = self.partial.take() else {
                        bail!("websocket continuation frame without a message to continue");
                    };
                    if data.len() + payload.len() > MAX_MESSAGE {
                        bail!("fragmented websocket message over the {MAX_MESSAGE}-byte limit");
                    }
                    data.extend_from_slice(payload);
                    if h.fin {
                        deliver(f, op, &data)?;
                        delivered = true;
                    } else {
                        self.partial = Some((op, data));
                    }
                }
                OP_PING => pongs.push(payload.to_vec()),
                OP_PONG => {}
                OP_CLOSE => {
                    let (code, reason) = match payload {
                        [a, b, rest @ ..] => (
                            Some(u16::from_be_bytes([*a, *b])),
                            std::str::from_utf8(rest).unwrap_or("(reason not UTF-8)"),
                        ),
                        _ => (None, ""),
                    };
                    f(Frame::Close(code, reason));
                    self.closed = true;
                    delivered = true;
                }
                other => bail!("unknown websocket opcode {other:#x}"),
            }
            self.buf.advance(start + h.payload_len);
        }
        Ok(delivered)
    }
}

fn deliver(f: &mut impl FnMut(Frame<'_>), opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
    if opcode == OP_TEXT {
        let text = std::str::from_utf8(payload).context("websocket text frame is not UTF-8")?;
        f(Frame::Text(text));
    } else {
        f(Frame::Binary(payload));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        crate::limit::server_frame(if fin { 0x80 } else { 0 } | opcode, payload)
    }

    #[test]
    fn headers_wait_for_whole_frames_and_read_every_length_form() {
        let short = server_frame(true, OP_TEXT, b"hello");
        for cut in 0..short.len() {
            assert_eq!(parse_header(&short[..cut]).unwrap(), None, "cut at {cut}");
        }
        let h = parse_header(&short).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len),
            (true, 1, 2, 5)
        );
        let mid = server_frame(false, OP_BINARY, &[7; 300]);
        let h = parse_header(&mid).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len),
            (false, 2, 4, 300)
        );
        let big = server_frame(true, OP_BINARY, &vec![1; 70_000]);
        let h = parse_header(&big).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len), (10, 70_000));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut masked = server_frame(true, OP_TEXT, b"x");
        masked[1] |= 0x80;
        assert!(parse_header(&masked).is_err());
        let mut rsv = server_frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert!(parse_header(&rsv).is_err());
        assert!(parse_header(&server_frame(false, OP_PING, b"")).is_err());
        assert!(parse_header(&server_frame(true, OP_PING, &[0; 126])).is_err());
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        assert!(parse_header(&huge).is_err());
    }

    #[test]
    fn client_frames_are_masked_and_decode_back() {
        let mut out = Vec::new();
        let payload = vec![b'a'; 200];
        encode_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(&out[2..4], &200u16.to_be_bytes());
        assert_eq!(&out[4..8], &[1, 2, 3, 4]);
        let unmasked: Vec<u8> = out[8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, payload);
    }

    /// Against tungstenite's server: the handshake, batched and fragmented messages, a ping
    /// answered with a pong carrying its payload, client frames the server can read, close.
    #[tokio::test]
    async fn talks_to_a_real_websocket_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/sub?x=1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            for i in 0..50 {
                ws.feed(Message::text(format!("m{i}"))).await.unwrap();
            }
            ws.feed(Message::binary(vec![9u8; 100_000])).await.unwrap();
            ws.flush().await.unwrap();
            // A fragmented text message and a ping between its fragments.
            let tcp = ws.get_mut();
            tcp.write_all(&server_frame(false, OP_TEXT, "héllo, ".as_bytes()))
                .await
                .unwrap();
            tcp.write_all(&server_frame(true, OP_PING, b"p1"))
                .await
                .unwrap();
            tcp.write_all(&server_frame(true, OP_CONTINUATION, b"world"))
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                match ws.next().await.unwrap().unwrap() {
                    Message::Pong(p) => got.push(format!("pong {}", String::from_utf8_lossy(&p))),
                    Message::Text(t) => got.push(format!("text {}", t.as_str())),
                    other => panic!("unexpected {other:?}"),
                }
            }
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))
            .await
            .unwrap();
            got
        });
        let mut c = RawWs::connect(&url, Ipv4Addr::LOCALHOST, 4096)
            .await
            .unwrap();
        let mut seen: Vec<String> = Vec::new();
        let mut sent = false;
        loop {
            let more = c
                .read_batch(|f| {
                    seen.push(match f {
                        Frame::Text(t) => format!("text {t}"),
                        Frame::Binary(b) => format!("binary {}", b.len()),
                        Frame::Close(code, reason) => format!("close {code:?} {reason}"),
                    })
                })
                .await
                .unwrap();
            if !sent && seen.iter().any(|s| s.starts_with("text héllo")) {
                c.send_text("from client").await.unwrap();
                sent = true;
            }
            if !more {
                break;
            }
        }
        let mut expected: Vec<String> = (0..50).map(|i| format!("text m{i}")).collect();
        expected.push("binary 100000".into());
        expected.push("text héllo, world".into());
        expected.push("close Some(1001) bye".into());
        assert_eq!(seen, expected);
        let server_got = server.await.unwrap();
        assert_eq!(server_got, vec!["pong p1", "text from client"]);
        assert!(!c.read_batch(|_| {}).await.unwrap());
    }

    #[tokio::test]
    async fn refused_upgrades_and_wrong_accept_keys_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n",
            ] {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 4096];
                let _ = tcp.read(&mut req).await.unwrap();
                tcp.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let url = format!("ws://{addr}/");
        let e = RawWs::connect(&url, Ipv4Addr::LOCALHOST, 4096)
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("403"), "{e:#}");
        let e = RawWs::connect(&url, Ipv4Addr::LOCALHOST, 4096)
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("Sec-WebSocket-Accept"), "{e:#}");
    }
}
