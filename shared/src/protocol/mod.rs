//! Wire protocols. Pure codecs: no I/O and no async, so this module could be split out.
//!
//! - [`mesh`]: frames between nodes (bincode behind a length prefix and a protocol version).
//! - [`client`]: RTM-style JSON events between gateways and WebSocket clients.
//! - [`model`]: the message and event types both protocols carry.

pub mod client;
pub mod mesh;
pub mod model;

pub use mesh::{
    MeshError, MeshFrame, WireError, MAX_DECODE_BYTES, MAX_FRAME_BYTES_DEFAULT, MAX_PRESENCE_QUERY,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use model::{
    is_emoji_name, ChannelSetting, ChannelSummary, EphemeralEvent, Identity, MemberRow, Message,
    MessageKind, NewMessage, Presence, PreviousMessage, RichContent, RingMember, RingState, Role,
    UserEvent, UserProfile, WorkspaceSnapshot,
};
