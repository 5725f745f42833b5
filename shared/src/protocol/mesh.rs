//! Frames between nodes of the mesh.
//!
//! # Byte layout
//!
//! ```text
//! +----------------+----------------+----------------------------+
//! | length: u32 BE | version: u16 BE| payload: bincode(MeshFrame)|
//! +----------------+----------------+----------------------------+
//!   length counts the version and the payload (never the length field itself)
//! ```
//!
//! A reader checks the length against its maximum before buffering the payload, so a peer
//! cannot make it allocate an unbounded buffer, and checks the version before decoding.
//!
//! # Streams
//! - Requests (`Post`, `Fetch`, `User`, `Presence*`, `Ping`) go on the connection's lane:
//!   one long-lived bidirectional stream that the requester opens with its first `Call`.
//!   Each request is a `Call` with an id, each answer an `Answer` with the same id, written
//!   when it is ready. A server still answers a request that comes alone on a stream of its
//!   own with one frame.
//! - A gateway holds one long-lived stream per channel server: it writes `Subscribe`,
//!   `Unsubscribe` and `Publish` frames; the channel server writes `SubscribeAck`, `Deliver`,
//!   `Ephemeral` and `Refused` frames, in channel order, once per gateway.
//! - Every node holds one long-lived stream to the admin server: it writes `Hello`; the admin
//!   server writes `Ring` on every epoch and `User` for membership changes. A channel server's
//!   stream doubles as its liveness: when it closes, the admin server takes the member out of
//!   the ring after a grace period.
//! - The Web API sends `User` to the admin server as a request (answered `Ok`), which relays it
//!   to every gateway.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::model::{EphemeralEvent, Message, NewMessage, RingState, Role, UserEvent};
use crate::ids::{ChannelId, NodeId, RingEpoch, Seq, UserId, WorkspaceId};

/// Version this build speaks. 2: a placed message carries the message an edit or deletion
/// changed (`Message::previous`). 3: `UserEvent::ChannelJoined` carries the channel's seq at
/// the join (`after_seq`). 4: messages carry `broadcast` and `rich` (blocks, attachments, a
/// channel's topic or purpose announcement), and `UserEvent::Notice` relays workspace events.
/// 5: messages carry `bot`; a message's `rich` content travels as tagged fields, which a
/// reader skips when it does not know them, so fields added to it later (from 5 on: a bot's
/// own name and icon) need no new version; `UserEvent::ChannelJoined` carries `private`.
/// 6: `MessageKind::Pinned` and `Unpinned` (Slack's pins), kinds a version 5 node cannot
/// decode; every version 5 frame is a version 6 frame too.
/// 7: `UserEvent::UserNotice` (an event for one user's sessions), which a version 6 node
/// cannot decode; every version 6 frame is a version 7 frame too.
pub const PROTOCOL_VERSION: u16 = 7;
/// Oldest version this build accepts: each version before 5 lacks a field that bincode reads
/// by position, so its frames cannot be decoded. Version 5's and 6's frames decode as 7's.
pub const MIN_PROTOCOL_VERSION: u16 = 5;
/// Default cap on one frame; configurable per node.
pub const MAX_FRAME_BYTES_DEFAULT: usize = 8 * 1024 * 1024;
/// ALPN protocol name of the mesh.
pub const ALPN: &[u8] = b"switchboard-mesh/1";

const HEADER_BYTES: usize = 6;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame too short to hold a header")]
    Truncated,
    #[error("unsupported protocol version {version} (accepted {min}..={max})")]
    Version { version: u16, min: u16, max: u16 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// An error answered over the mesh; the sender decides whether to retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MeshError {
    /// The receiver does not own the channel at its epoch; the sender should refresh its ring.
    #[error("not the owner of the channel at epoch {epoch}")]
    WrongOwner { epoch: RingEpoch },
    #[error("no channel server owns this channel")]
    NoOwner,
    #[error("storage failed: {0}")]
    Store(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request went out and no answer came back: it may or may not have been done.
    #[error("no answer, outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// Every frame of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshFrame {
    /// First frame on a node's stream to the admin server.
    /// `mesh_addr` is where a channel server accepts connections (it joins the ring with it);
    /// empty for other roles.
    Hello {
        node: NodeId,
        role: Role,
        protocol_version: u16,
        mesh_addr: String,
    },
    /// The current ring; sent after `Hello` and again on every epoch.
    Ring(RingState),
    /// A membership change for gateways to apply to their sessions.
    User(UserEvent),

    /// Web API -> admin server -> owning channel server: persist and fan out.
    Post {
        msg: NewMessage,
    },
    /// Answer to `Post`: the stored message (the earlier one if `client_msg_id` repeated).
    PostOk {
        msg: Message,
        duplicate: bool,
    },

    /// Gateway -> channel server, on the gateway's subscription stream: send me this
    /// channel's messages after `after_seq` (`None`: from now on).
    Subscribe {
        channel: ChannelId,
        workspace: WorkspaceId,
        after_seq: Option<Seq>,
    },
    /// Answer to `Subscribe`: the channel's current last sequence and the messages after
    /// `after_seq` up to it, in order: the first of them only, at most a page and about half a
    /// frame in bytes (the gateway fetches the rest, page after page, up to `last_seq`).
    SubscribeAck {
        channel: ChannelId,
        last_seq: Seq,
        backlog: Vec<Message>,
    },
    Unsubscribe {
        channel: ChannelId,
    },
    /// Gateway -> channel server: an ephemeral event (typing) for the channel's subscribers.
    Publish {
        channel: ChannelId,
        event: EphemeralEvent,
    },
    /// Channel server -> gateway: a channel's next message.
    Deliver {
        msg: Message,
    },
    /// Channel server -> gateway: an ephemeral event for a channel.
    Ephemeral {
        channel: ChannelId,
        event: EphemeralEvent,
    },
    /// Channel server -> gateway: a subscription or publish it refused.
    Refused {
        channel: ChannelId,
        error: MeshError,
    },

    /// Messages of a channel with `after_seq < seq <= up_to_seq`, at most `limit`.
    Fetch {
        channel: ChannelId,
        workspace: WorkspaceId,
        after_seq: Seq,
        up_to_seq: Option<Seq>,
        limit: u32,
    },
    FetchOk {
        messages: Vec<Message>,
        last_seq: Seq,
    },

    /// Liveness probe; answered with `Ok`.
    Ping,
    /// A request's success when there is nothing to return.
    Ok,
    /// Any request's failure.
    Error(MeshError),

    /// Web API -> admin server: a user's presence.
    PresenceGet {
        user: UserId,
    },
    /// Answer to `PresenceGet`.
    PresenceIs {
        presence: super::model::Presence,
        /// Has at least one session on some gateway.
        online: bool,
        /// Set away by `users.setPresence`.
        manual_away: bool,
    },
    /// Gateway -> admin server (Slack's RTM `presence_query`): which of `users` are active,
    /// as a session of `workspace` may know (a user of another workspace is never active to
    /// it). At most [`MAX_PRESENCE_QUERY`] users.
    PresenceQuery {
        workspace: crate::ids::WorkspaceId,
        users: Vec<UserId>,
    },
    /// Answer to `PresenceQuery`: the active ones among the users asked about.
    PresenceActive {
        users: Vec<UserId>,
    },

    /// A request on a lane, the long-lived stream that carries a connection's requests
    /// (`crate::mesh` describes lanes): `frame` is the request, answered by an `Answer` with
    /// the same `id`. Answers come in the order they are ready, not the order asked.
    Call {
        id: u64,
        frame: Box<MeshFrame>,
    },
    /// The answer to the lane's `Call` with the same `id`.
    Answer {
        id: u64,
        frame: Box<MeshFrame>,
    },
}

/// Index of `MeshFrame::Call` among the variants, as bincode writes it (checked by a test).
const CALL_VARIANT: u32 = 21;
/// Most bytes decoding one frame may allocate (bincode's limit); `mesh.max_frame_bytes` may
/// not exceed it.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// Index of `MeshFrame::Answer` (checked by a test).
const ANSWER_VARIANT: u32 = 22;
/// Index of `MeshFrame::Deliver` (checked by a test).
const DELIVER_VARIANT: u32 = 9;

/// Reads one unsigned integer as bincode's standard configuration writes it (a byte below
/// 251 is the value; 251, 252, 253 and 254 announce a little-endian u16, u32, u64 or u128);
/// `None` when `src` ends first.
fn read_varint(src: &[u8]) -> Option<(u128, &[u8])> {
    let (&first, rest) = src.split_first()?;
    let width = match first {
        0..=250 => return Some((u128::from(first), rest)),
        251 => 2,
        252 => 4,
        253 => 8,
        254 => 16,
        _ => return None,
    };
    if rest.len() < width {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..width].copy_from_slice(&rest[..width]);
    Some((u128::from_le_bytes(bytes), &rest[width..]))
}

/// Whether `payload` is a `Call` or `Answer` whose frame is itself a `Call` or `Answer`.
///
/// Nothing sends that, and decoding it recurses once per level: a peer could nest tens of
/// thousands of levels in a few bytes each and overflow the reading thread's stack, which
/// aborts the whole process. So it is refused before bincode sees it.
fn nests_calls(payload: &[u8]) -> bool {
    let is_call = |v: u128| v == u128::from(CALL_VARIANT) || v == u128::from(ANSWER_VARIANT);
    let Some((outer, rest)) = read_varint(payload) else {
        return false;
    };
    if !is_call(outer) {
        return false;
    }
    let Some((_id, rest)) = read_varint(rest) else {
        return false;
    };
    matches!(read_varint(rest), Some((inner, _)) if is_call(inner))
}

fn encode_framed<T: Serialize>(value: &T, dst: &mut BytesMut) {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u16(PROTOCOL_VERSION);
    let mut writer = dst.writer();
    // Encoding into memory cannot fail for these types.
    bincode::serde::encode_into_std_write(value, &mut writer, bincode::config::standard())
        .expect("mesh frame encodes");
    let dst = writer.into_inner();
    let len = (dst.len() - start - 4) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Most users one `PresenceQuery` (and one RTM `presence_query` or `presence_sub`) may name.
pub const MAX_PRESENCE_QUERY: usize = 5_000;

impl MeshFrame {
    /// Appends the framed encoding of `self` to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_framed(self, dst);
    }

    /// Appends the framed encoding of `MeshFrame::Call { id, frame }` to `dst`, without the
    /// copy of `frame` that building that value would take: bincode writes a variant as its
    /// index followed by its fields, so the tuple below has the same bytes.
    pub fn encode_call(id: u64, frame: &MeshFrame, dst: &mut BytesMut) {
        encode_framed(&(CALL_VARIANT, id, frame), dst);
    }

    /// The framed encoding of `MeshFrame::Deliver { msg }` as one buffer, without the copy
    /// of `msg` that building that value would take (the channel server keeps its messages
    /// shared, for its window).
    pub fn deliver_bytes(msg: &Message) -> bytes::Bytes {
        let mut buf = BytesMut::with_capacity(128);
        encode_framed(&(DELIVER_VARIANT, msg), &mut buf);
        buf.freeze()
    }

    /// The framed encoding of `self` as one buffer, to be shared between many writers.
    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut buf = BytesMut::with_capacity(128);
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Checks whether `src` starts with a whole frame: `Ok(Some(total_len))` when it does,
    /// `Ok(None)` when more bytes are needed. Refuses oversized frames from the header alone.
    pub fn check(src: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > max_frame_bytes {
            return Err(WireError::TooLarge {
                len,
                max: max_frame_bytes,
            });
        }
        if len < 2 {
            return Err(WireError::Truncated);
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(4 + len))
    }

    /// Decodes one frame from the start of `src`: `Ok(None)` if it is not all there yet, else
    /// the frame and the bytes it used.
    pub fn decode(
        src: &[u8],
        max_frame_bytes: usize,
    ) -> Result<Option<(MeshFrame, usize)>, WireError> {
        let Some(total) = Self::check(src, max_frame_bytes)? else {
            return Ok(None);
        };
        let version = u16::from_be_bytes([src[4], src[5]]);
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(WireError::Version {
                version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let payload = &src[HEADER_BYTES..total];
        if nests_calls(payload) {
            return Err(WireError::Malformed(
                "a call or answer inside a call or answer".into(),
            ));
        }
        let (frame, used) = bincode::serde::decode_from_slice::<MeshFrame, _>(
            payload,
            bincode::config::standard().with_limit::<MAX_DECODE_BYTES>(),
        )
        .map_err(|e| WireError::Malformed(e.to_string()))?;
        if used != payload.len() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes after frame",
                payload.len() - used
            )));
        }
        Ok(Some((frame, total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Ts, UserId};
    use crate::protocol::model::{MessageKind, Presence, RingMember};
    use proptest::prelude::*;

    fn sample_message(seq: Seq, text: String) -> Message {
        Message {
            workspace: WorkspaceId::from("TDEMO"),
            channel: ChannelId::from("CGENERAL"),
            seq,
            ts: Ts(1_700_000_000_000_000u64.wrapping_add(seq)),
            user: UserId::from("UALICE"),
            text,
            client_msg_id: Some("abc".into()),
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    fn round_trip(frame: MeshFrame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let (decoded, used) = MeshFrame::decode(&buf, MAX_FRAME_BYTES_DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let channel = ChannelId::from("CGENERAL");
        let frames = vec![
            MeshFrame::Hello {
                node: NodeId::from("gw-1"),
                role: Role::Gateway,
                protocol_version: PROTOCOL_VERSION,
                mesh_addr: String::new(),
            },
            MeshFrame::Ring(RingState {
                epoch: RingEpoch(7),
                members: vec![RingMember {
                    node: NodeId::from("cs-1"),
                    mesh_addr: "127.0.0.1:7000".into(),
                    draining: false,
                }],
                vnodes: 64,
            }),
            MeshFrame::User(UserEvent::ChannelLeft {
                workspace: WorkspaceId::from("TDEMO"),
                channel: channel.clone(),
                user: UserId::from("UBOB"),
            }),
            MeshFrame::User(UserEvent::UserChanged {
                workspace: WorkspaceId::from("TDEMO"),
                user: crate::protocol::UserProfile {
                    id: UserId::from("UBOB"),
                    name: "bob".into(),
                    real_name: "Bob B".into(),
                    display_name: "bobby".into(),
                    is_bot: false,
                    is_admin: false,
                    deleted: false,
                    email: "bob@example.com".into(),
                },
            }),
            MeshFrame::User(UserEvent::ChannelChanged {
                workspace: WorkspaceId::from("TDEMO"),
                channel: crate::protocol::ChannelSummary {
                    id: channel.clone(),
                    name: "renamed".into(),
                    is_private: false,
                    is_archived: true,
                    topic: "t".into(),
                    purpose: "p".into(),
                    created: Ts(1),
                    creator: UserId::from("UALICE"),
                },
            }),
            MeshFrame::User(UserEvent::ReadMarked {
                workspace: WorkspaceId::from("TDEMO"),
                channel: channel.clone(),
                user: UserId::from("UBOB"),
                seq: 41,
            }),
            MeshFrame::Post {
                msg: NewMessage {
                    workspace: WorkspaceId::from("TDEMO"),
                    channel: channel.clone(),
                    user: UserId::from("UALICE"),
                    text: "hello".into(),
                    client_msg_id: None,
                    thread_ts: Some(Ts(5)),
                    kind: MessageKind::ReactionAdded {
                        target: Ts(4),
                        reaction: "tada".into(),
                    },
                    broadcast: false,
                    bot: false,
                    rich: None,
                },
            },
            MeshFrame::PostOk {
                msg: sample_message(1, "hi".into()),
                duplicate: true,
            },
            MeshFrame::Subscribe {
                channel: channel.clone(),
                workspace: WorkspaceId::from("TDEMO"),
                after_seq: Some(3),
            },
            MeshFrame::Ping,
            MeshFrame::Ok,
            MeshFrame::SubscribeAck {
                channel: channel.clone(),
                last_seq: 9,
                backlog: vec![sample_message(4, "x".into())],
            },
            MeshFrame::Unsubscribe {
                channel: channel.clone(),
            },
            MeshFrame::Publish {
                channel: channel.clone(),
                event: EphemeralEvent::Typing {
                    user: UserId::from("UALICE"),
                },
            },
            MeshFrame::Deliver {
                msg: sample_message(2, "yo".into()),
            },
            MeshFrame::Ephemeral {
                channel: channel.clone(),
                event: EphemeralEvent::Presence {
                    user: UserId::from("UBOB"),
                    presence: Presence::Away,
                },
            },
            MeshFrame::Refused {
                channel: channel.clone(),
                error: MeshError::WrongOwner {
                    epoch: RingEpoch(3),
                },
            },
            MeshFrame::Fetch {
                channel,
                workspace: WorkspaceId::from("TDEMO"),
                after_seq: 1,
                up_to_seq: Some(5),
                limit: 100,
            },
            MeshFrame::FetchOk {
                messages: vec![],
                last_seq: 0,
            },
            MeshFrame::Error(MeshError::Store("disk full".into())),
            MeshFrame::Call {
                id: 9,
                frame: Box::new(MeshFrame::Ping),
            },
            MeshFrame::Answer {
                id: u64::MAX,
                frame: Box::new(MeshFrame::Ok),
            },
        ];
        for frame in frames {
            round_trip(frame);
        }
    }

    #[test]
    fn a_delivery_encodes_as_the_deliver_variant_would() {
        let msg = sample_message(7, "hello".into());
        assert_eq!(
            MeshFrame::deliver_bytes(&msg),
            MeshFrame::Deliver { msg }.to_bytes()
        );
    }

    #[test]
    fn an_answer_is_the_answer_variant() {
        let answer = MeshFrame::Answer {
            id: 5,
            frame: Box::new(MeshFrame::Ok),
        }
        .to_bytes();
        assert_eq!(
            read_varint(&answer[HEADER_BYTES..]).map(|(v, _)| v),
            Some(u128::from(ANSWER_VARIANT))
        );
    }

    #[test]
    fn varints_read_as_bincode_writes_them() {
        for v in [0u64, 250, 251, 65_535, 65_536, u32::MAX as u64, u64::MAX] {
            let bytes = bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap();
            let (read, rest) = read_varint(&bytes).unwrap();
            assert_eq!((read, rest.len()), (u128::from(v), 0), "{v}");
            assert_eq!(
                read_varint(&bytes[..bytes.len() - 1]),
                None,
                "{v} cut short"
            );
        }
    }

    /// A call inside a call is refused, at any depth, without recursing: a frame nested a
    /// million deep (2 bytes a level) would overflow the stack if bincode decoded it.
    #[test]
    fn calls_nested_in_calls_are_refused_not_decoded() {
        let nested = MeshFrame::Call {
            id: 1,
            frame: Box::new(MeshFrame::Answer {
                id: 2,
                frame: Box::new(MeshFrame::Ping),
            }),
        };
        let bytes = nested.to_bytes();
        assert!(matches!(
            MeshFrame::decode(&bytes, 1 << 20),
            Err(WireError::Malformed(e)) if e.contains("inside a call")
        ));

        let depth = 1_000_000;
        let mut payload = Vec::with_capacity(depth * 2 + 1);
        for _ in 0..depth {
            payload.extend_from_slice(&[CALL_VARIANT as u8, 0]);
        }
        let mut frame = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&payload);
        assert!(matches!(
            MeshFrame::decode(&frame, 1 << 24),
            Err(WireError::Malformed(_))
        ));

        // One level is what lanes send, and still decodes.
        let call = MeshFrame::Call {
            id: 300,
            frame: Box::new(MeshFrame::Ping),
        };
        let bytes = call.to_bytes();
        assert!(matches!(
            MeshFrame::decode(&bytes, 1 << 20),
            Ok(Some((MeshFrame::Call { id: 300, .. }, n))) if n == bytes.len()
        ));
    }

    #[test]
    fn a_call_encodes_as_the_call_variant_would() {
        let post = MeshFrame::Post {
            msg: NewMessage {
                workspace: WorkspaceId::from("TDEMO"),
                channel: ChannelId::from("CGENERAL"),
                user: UserId::from("UALICE"),
                text: "hello".into(),
                client_msg_id: Some("c-1".into()),
                thread_ts: None,
                kind: MessageKind::Posted,
                broadcast: false,
                bot: false,
                rich: None,
            },
        };
        for (id, frame) in [(0, MeshFrame::Ping), (300, post), (u64::MAX, MeshFrame::Ok)] {
            let mut direct = BytesMut::new();
            MeshFrame::encode_call(id, &frame, &mut direct);
            let mut built = BytesMut::new();
            MeshFrame::Call {
                id,
                frame: Box::new(frame.clone()),
            }
            .encode(&mut built);
            assert_eq!(direct, built);
            let (decoded, _) = MeshFrame::decode(&direct, MAX_FRAME_BYTES_DEFAULT)
                .unwrap()
                .unwrap();
            assert_eq!(
                decoded,
                MeshFrame::Call {
                    id,
                    frame: Box::new(frame)
                }
            );
        }
    }

    #[test]
    fn user_event_tags_of_older_variants_are_unchanged() {
        // Appending variants must not renumber the older ones: a node of the previous build
        // still decodes `ChannelJoined` (tag 0) and `ChannelLeft` (tag 1).
        let cfg = bincode::config::standard();
        let joined = bincode::serde::encode_to_vec(
            UserEvent::ChannelJoined {
                workspace: WorkspaceId::from("T1"),
                channel: ChannelId::from("C1"),
                user: UserId::from("U1"),
                channel_name: "x".into(),
                after_seq: None,
                private: false,
            },
            cfg,
        )
        .unwrap();
        let left = bincode::serde::encode_to_vec(
            UserEvent::ChannelLeft {
                workspace: WorkspaceId::from("T1"),
                channel: ChannelId::from("C1"),
                user: UserId::from("U1"),
            },
            cfg,
        )
        .unwrap();
        assert_eq!((joined[0], left[0]), (0, 1));
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let bytes = MeshFrame::Deliver {
            msg: sample_message(1, "hello".into()),
        }
        .to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                MeshFrame::decode(&bytes[..cut], MAX_FRAME_BYTES_DEFAULT),
                Ok(None)
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut header = vec![];
        header.extend_from_slice(&(1_000_000u32).to_be_bytes());
        header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        assert!(matches!(
            MeshFrame::decode(&header, 1024),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = MeshFrame::Unsubscribe {
            channel: ChannelId::from("C1"),
        }
        .to_bytes()
        .to_vec();
        bytes[4] = 0xff;
        assert!(matches!(
            MeshFrame::decode(&bytes, MAX_FRAME_BYTES_DEFAULT),
            Err(WireError::Version { .. })
        ));
    }

    #[test]
    fn older_versions_frames_are_refused_by_name() {
        // Version 1 wrote messages without `previous`, version 2 joins without `after_seq`,
        // version 3 messages without `broadcast` and `rich`, version 4 without `bot` and with
        // `rich` by position: bincode cannot read any of them as this version's, so the
        // version is refused before the payload is looked at.
        for old in [1u16, 2, 3, 4] {
            let mut bytes = MeshFrame::Unsubscribe {
                channel: ChannelId::from("C1"),
            }
            .to_bytes()
            .to_vec();
            bytes[4..6].copy_from_slice(&old.to_be_bytes());
            let err = MeshFrame::decode(&bytes, MAX_FRAME_BYTES_DEFAULT).unwrap_err();
            assert_eq!(
                err,
                WireError::Version {
                    version: old,
                    min: 5,
                    max: 7
                }
            );
            assert!(
                err.to_string()
                    .contains(&format!("version {old} (accepted 5..=7)")),
                "{err}"
            );
        }
    }

    /// Versions 5 and 6 wrote what version 7 writes but pins (5) and one user's events: their
    /// frames decode as 7's.
    #[test]
    fn version_5_and_6_frames_are_read() {
        for old in [5u16, 6] {
            let msg = sample_message(7, format!("from a version {old} node"));
            let mut bytes = MeshFrame::Deliver { msg: msg.clone() }.to_bytes().to_vec();
            bytes[4..6].copy_from_slice(&old.to_be_bytes());
            let (decoded, _) = MeshFrame::decode(&bytes, MAX_FRAME_BYTES_DEFAULT)
                .unwrap()
                .unwrap();
            assert_eq!(decoded, MeshFrame::Deliver { msg });
        }
        // A pin round-trips from 6 on, an event for one user from 7.
        let mut pin = sample_message(8, String::new());
        pin.kind = crate::protocol::MessageKind::Pinned { target: Ts(5) };
        round_trip(MeshFrame::Deliver { msg: pin });
        round_trip(MeshFrame::User(UserEvent::UserNotice {
            workspace: WorkspaceId::from("TW"),
            user: UserId::from("UA"),
            event: r#"{"type":"subteam_self_added","subteam_id":"S1"}"#.into(),
        }));
    }

    #[test]
    fn edits_round_trip_with_the_message_they_changed() {
        let mut msg = sample_message(7, "now".into());
        msg.kind = super::super::model::MessageKind::Edited { target: Ts(5) };
        msg.previous = Some(Box::new(super::super::model::PreviousMessage {
            user: UserId::from("U1"),
            text: "before".into(),
            thread_ts: Some(Ts(3)),
            edited: None,
            rich: super::super::model::RichContent {
                attachments: Some(r#"[{"fallback":"f"}]"#.into()),
                ..Default::default()
            }
            .boxed(),
        }));
        round_trip(MeshFrame::Deliver { msg });
    }

    #[test]
    fn garbage_payload_is_malformed_not_a_panic() {
        let mut bytes = vec![0, 0, 0, 6];
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            MeshFrame::decode(&bytes, MAX_FRAME_BYTES_DEFAULT),
            Err(WireError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn messages_round_trip(seq in 0u64..u64::MAX, text in ".{0,200}", cmid in proptest::option::of("[a-z0-9-]{1,36}")) {
            let mut msg = sample_message(seq, text);
            msg.client_msg_id = cmid;
            round_trip(MeshFrame::Deliver { msg });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = MeshFrame::decode(&bytes, 4096);
        }
    }
}
