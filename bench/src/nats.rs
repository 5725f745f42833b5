//! A minimal NATS client: the text protocol (INFO, CONNECT, SUB, PUB, MSG, PING, PONG, +OK,
//! -ERR) carried over nats-server's WebSocket listener, and the code that starts
//! nats-server for a run.
//!
//! The parser takes bytes as they arrive (a WebSocket frame may hold several protocol
//! messages, or part of one) and yields whole operations borrowed from its buffer.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rawws::{Frame, RawWs};
use anyhow::{bail, Context};

/// What the client sends first, once it has read `INFO`.
pub const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n";
pub const PING: &str = "PING\r\n";
pub const PONG: &str = "PONG\r\n";
/// Longest control line accepted (nats-server's own default is 4 KiB).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    Info(&'a str),
    Msg {
        subject: &'a str,
        sid: u64,
        reply: Option<&'a str>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a str),
}

#[derive(Debug)]
pub enum ParseError {
    Unknown(String),
    Malformed(String),
    TooLong,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Unknown(op) => write!(f, "unknown nats operation {op:?}"),
            ParseError::Malformed(line) => write!(f, "malformed nats control line {line:?}"),
            ParseError::TooLong => {
                write!(f, "nats control line longer than {MAX_CONTROL_LINE} bytes")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Incremental parser of the server's side of the protocol.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Start of unparsed bytes in `buf`.
    start: usize,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

type Span = (usize, usize);

/// An operation located in the buffer, before it is borrowed out.
enum Located {
    Info(Span),
    Err(Span),
    Ping,
    Pong,
    Ok,
    Msg {
        subject: Span,
        sid: u64,
        reply: Option<Span>,
        payload: Span,
    },
}

/// Splits `line` (which starts at `base` in the buffer) on ASCII whitespace into spans.
fn words(line: &str, base: usize) -> Vec<Span> {
    let mut out = Vec::new();
    let mut i = 0;
    let bytes = line.as_bytes();
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > s {
            out.push((base + s, base + i));
        }
    }
    out
}

impl Parser {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes not yet parsed.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn locate(&self) -> Result<Option<(Located, usize)>, ParseError> {
        let start = self.start;
        let avail = &self.buf[start..];
        let Some(eol) = find_crlf(avail) else {
            if avail.len() > MAX_CONTROL_LINE {
                return Err(ParseError::TooLong);
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&avail[..eol])
            .map_err(|_| ParseError::Malformed(String::from_utf8_lossy(&avail[..eol]).into()))?;
        let malformed = || ParseError::Malformed(line.to_string());
        let w = words(line, start);
        let Some(&(os, oe)) = w.first() else {
            return Err(malformed());
        };
        let op = &self.buf[os..oe];
        let after_line = start + eol + 2;
        let rest_of_line = || {
            // Everything after the operation word, trimmed.
            let s = line[oe - start..].trim_start();
            let from = start + eol - s.len();
            let trimmed = s.trim_end();
            (from, from + trimmed.len())
        };
        let located = if op.eq_ignore_ascii_case(b"MSG") {
            let (subject, sid, reply, len) = match w.as_slice() {
                [_, s, sid, len] => (*s, *sid, None, *len),
                [_, s, sid, r, len] => (*s, *sid, Some(*r), *len),
                _ => return Err(malformed()),
            };
            let text = |(a, b): Span| std::str::from_utf8(&self.buf[a..b]).unwrap_or("");
            let sid: u64 = text(sid).parse().map_err(|_| malformed())?;
            let len: usize = text(len).parse().map_err(|_| malformed())?;
            let end = after_line + len;
            if self.buf.len() < end + 2 {
                return Ok(None);
            }
            if &self.buf[end..end + 2] != b"\r\n" {
                return Err(malformed());
            }
            return Ok(Some((
                Located::Msg {
                    subject,
                    sid,
                    reply,
                    payload: (after_line, end),
                },
                end + 2,
            )));
        } else if op.eq_ignore_ascii_case(b"PING") {
            Located::Ping
        } else if op.eq_ignore_ascii_case(b"PONG") {
            Located::Pong
        } else if op.eq_ignore_ascii_case(b"+OK") {
            Located::Ok
        } else if op.eq_ignore_ascii_case(b"INFO") {
            Located::Info(rest_of_line())
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            let (a, b) = rest_of_line();
            let quoted = b - a >= 2 && self.buf[a] == b'\'' && self.buf[b - 1] == b'\'';
            Located::Err(if quoted { (a + 1, b - 1) } else { (a, b) })
        } else {
            return Err(ParseError::Unknown(String::from_utf8_lossy(op).into()));
        };
        Ok(Some((located, after_line)))
    }

    /// The next whole operation, or `None` until more bytes arrive.
    pub fn next_op(&mut self) -> Result<Option<ServerOp<'_>>, ParseError> {
        let Some((located, next)) = self.locate()? else {
            return Ok(None);
        };
        self.start = next;
        let buf = &self.buf;
        // Spans come from a line that was checked to be UTF-8.
        let text = |(a, b): Span| std::str::from_utf8(&buf[a..b]).expect("checked utf-8");
        Ok(Some(match located {
            Located::Info(s) => ServerOp::Info(text(s)),
            Located::Err(s) => ServerOp::Err(text(s)),
            Located::Ping => ServerOp::Ping,
            Located::Pong => ServerOp::Pong,
            Located::Ok => ServerOp::Ok,
            Located::Msg {
                subject,
                sid,
                reply,
                payload,
            } => ServerOp::Msg {
                subject: text(subject),
                sid,
                reply: reply.map(text),
                payload: &buf[payload.0..payload.1],
            },
        }))
    }
}

/// `SUB <subject> <sid>\r\n`
pub fn sub(subject: &str, sid: u64) -> String {
    format!("SUB {subject} {sid}\r\n")
}

/// `PUB <subject> <#bytes>\r\n<payload>\r\n`
pub fn publish(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// A NATS connection over WebSocket.
pub struct NatsWs {
    pub ws: RawWs,
    pub parser: Parser,
}

impl NatsWs {
    /// Connects, reads `INFO`, sends `CONNECT` and waits for the `PONG` that answers a `PING`
    /// (so the server has taken the connection).
    pub async fn connect(
        url: &str,
        source: Ipv4Addr,
        read_buffer: usize,
    ) -> anyhow::Result<NatsWs> {
        let ws = RawWs::connect(url, source, read_buffer).await?;
        let mut c = NatsWs {
            ws,
            parser: Parser::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got_info = false;
        while !got_info {
            c.read_more(deadline).await?;
            while let Some(op) = c.parser.next_op()? {
                match op {
                    ServerOp::Info(_) => got_info = true,
                    ServerOp::Err(e) => bail!("nats error before INFO: {e}"),
                    other => bail!("nats sent {other:?} before INFO"),
                }
            }
        }
        c.send(format!("{CONNECT}{PING}").into_bytes()).await?;
        c.wait_pong(deadline).await?;
        Ok(c)
    }

    pub async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws
            .send_binary(&bytes)
            .await
            .context("nats websocket write")
    }

    /// Subscribes and waits until the server has processed it.
    pub async fn subscribe(&mut self, subject: &str, sid: u64) -> anyhow::Result<()> {
        self.send(format!("{}{PING}", sub(subject, sid)).into_bytes())
            .await?;
        self.wait_pong(Instant::now() + Duration::from_secs(10))
            .await
    }

    /// Feeds the WebSocket frames of the next read to the parser; `false` when the socket
    /// closed.
    pub async fn read_frame(&mut self) -> anyhow::Result<bool> {
        let parser = &mut self.parser;
        self.ws
            .read_batch(|f| match f {
                Frame::Text(t) => parser.push(t.as_bytes()),
                Frame::Binary(b) => parser.push(b),
                Frame::Close(..) => {}
            })
            .await
            .context("nats websocket read")
    }

    async fn read_more(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.read_frame()).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => bail!("nats closed the connection"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("timed out waiting for nats"),
        }
    }

    async fn wait_pong(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let mut pong = false;
            let mut ping = false;
            while let Some(op) = self.parser.next_op()? {
                match op {
                    ServerOp::Pong => pong = true,
                    ServerOp::Ping => ping = true,
                    ServerOp::Err(e) => bail!("nats error: {e}"),
                    _ => {}
                }
            }
            if ping {
                self.send(PONG.as_bytes().to_vec()).await?;
            }
            if pong {
                return Ok(());
            }
            self.read_more(deadline).await?;
        }
    }
}

/// A nats-server this run started; killed on drop.
pub struct NatsServer {
    child: Child,
    pub ws_url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `nats-server` on the PATH (or in /usr/sbin, where Debian puts it).
pub fn find_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join("nats-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "nats-server not found on PATH or in /usr/sbin: install it (`apt-get install -y nats-server`, \
         or run bench/nats/start.sh), or pass --nats-url ws://127.0.0.1:PORT of a running one"
    )
}

/// Starts nats-server on loopback with a WebSocket listener on a free port.
pub fn start_server(bin: &Path) -> anyhow::Result<NatsServer> {
    let dir = tempfile::Builder::new().prefix("bench-nats-").tempdir()?;
    let client_port = crate::sut::free_port()?;
    let ws_port = crate::sut::free_port()?;
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{client_port}\"\nmax_payload: 1048576\n\
             websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("nats.log"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {}", bin.display()))?;
    let mut server = NatsServer {
        child,
        ws_url: format!("ws://127.0.0.1:{ws_port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_ok() {
            return Ok(server);
        }
        if let Some(status) = server.child.try_wait()? {
            let log =
                std::fs::read_to_string(server._dir.path().join("nats.log")).unwrap_or_default();
            bail!("nats-server exited ({status}): {log}");
        }
        if Instant::now() > deadline {
            bail!("nats-server did not open its websocket port within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(p: &mut Parser) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(op) = p.next_op().unwrap() {
            out.push(format!("{op:?}"));
        }
        out
    }

    #[test]
    fn parses_info_ping_pong_ok_err() {
        let mut p = Parser::default();
        p.push(b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n");
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Info(
                "{\"server_id\":\"x\",\"max_payload\":1048576}"
            ))
        );
        assert_eq!(p.next_op().unwrap(), Some(ServerOp::Ping));
        assert_eq!(p.next_op().unwrap(), Some(ServerOp::Pong));
        assert_eq!(p.next_op().unwrap(), Some(ServerOp::Ok));
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Err("Unknown Protocol Operation"))
        );
        assert_eq!(p.next_op().unwrap(), None);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn parses_msg_with_and_without_reply() {
        let mut p = Parser::default();
        p.push(b"MSG ch.1 7 5\r\nhello\r\nMSG ch.2 8 _INBOX.x 3\r\nabc\r\nMSG e 9 0\r\n\r\n");
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Msg {
                subject: "ch.1",
                sid: 7,
                reply: None,
                payload: b"hello"
            })
        );
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Msg {
                subject: "ch.2",
                sid: 8,
                reply: Some("_INBOX.x"),
                payload: b"abc"
            })
        );
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Msg {
                subject: "e",
                sid: 9,
                reply: None,
                payload: b""
            })
        );
        assert_eq!(p.next_op().unwrap(), None);
    }

    #[test]
    fn payload_may_hold_crlf_and_protocol_words() {
        let mut p = Parser::default();
        p.push(b"MSG s 1 11\r\nPING\r\nPONG\r\r\n");
        assert_eq!(
            p.next_op().unwrap(),
            Some(ServerOp::Msg {
                subject: "s",
                sid: 1,
                reply: None,
                payload: b"PING\r\nPONG\r"
            })
        );
        assert_eq!(p.next_op().unwrap(), None);
    }

    #[test]
    fn operations_split_across_frames() {
        let wire = b"MSG ch.1 1 10\r\n0123456789\r\nPING\r\nMSG ch.1 1 2\r\nab\r\n";
        // Every split point yields the same operations.
        for cut in 0..wire.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            p.push(&wire[..cut]);
            got.extend(ops(&mut p));
            p.push(&wire[cut..]);
            got.extend(ops(&mut p));
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert!(got[0].contains("48, 49, 50"), "{got:?}"); // b"012…"
            assert_eq!(got[1], "Ping");
        }
        // Byte by byte.
        let mut p = Parser::default();
        let mut n = 0;
        for b in wire {
            p.push(&[*b]);
            n += ops(&mut p).len();
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn lowercase_operations_are_accepted() {
        let mut p = Parser::default();
        p.push(b"ping\r\nmsg a 1 1\r\nx\r\n");
        assert_eq!(p.next_op().unwrap(), Some(ServerOp::Ping));
        assert!(matches!(
            p.next_op().unwrap(),
            Some(ServerOp::Msg { payload: b"x", .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        let mut p = Parser::default();
        p.push(b"BOGUS 1 2\r\n");
        assert!(matches!(p.next_op(), Err(ParseError::Unknown(_))));
        let mut p = Parser::default();
        p.push(b"MSG a b 3\r\nabc\r\n");
        assert!(matches!(p.next_op(), Err(ParseError::Malformed(_))));
        let mut p = Parser::default();
        p.push(b"MSG a 1 3\r\nabcXY");
        assert!(matches!(p.next_op(), Err(ParseError::Malformed(_))));
        let mut p = Parser::default();
        p.push(&vec![b'x'; MAX_CONTROL_LINE + 1]);
        assert!(matches!(p.next_op(), Err(ParseError::TooLong)));
    }

    #[test]
    fn buffer_compacts_as_it_goes() {
        let mut p = Parser::default();
        for _ in 0..10_000 {
            p.push(b"MSG ch.1 1 16\r\n0123456789abcdef\r\n");
            assert!(p.next_op().unwrap().is_some());
        }
        assert_eq!(p.pending(), 0);
        assert!(p.buf.capacity() < 1024 * 1024);
    }

    #[test]
    fn client_commands() {
        assert_eq!(sub("ch.3", 4), "SUB ch.3 4\r\n");
        assert_eq!(publish("ch.3", b"hi"), b"PUB ch.3 2\r\nhi\r\n".to_vec());
        assert!(CONNECT.starts_with("CONNECT {"));
        assert!(CONNECT.ends_with("}\r\n"));
        let v: serde_json::Value =
            serde_json::from_str(CONNECT.trim_start_matches("CONNECT ").trim()).unwrap();
        assert_eq!(v["verbose"], false);
        assert_eq!(v["protocol"], 1);
    }
}
