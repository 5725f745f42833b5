//! What more than one Switchboard role needs.
//!
//! # Layout
//! - [`ids`]: domain identifiers (`WorkspaceId`, `ChannelId`, `Seq`, `Ts`, `RingEpoch`, ...).
//! - [`protocol`]: mesh frames (bincode, length-prefixed, versioned) and the client JSON
//!   protocol. Pure codecs, no I/O.
//! - [`ring`]: consistent hashing with virtual nodes, versioned by an epoch.
//! - [`mesh`]: QUIC transport with mutual TLS, frame streams, a reconnecting peer pool.
//! - [`store`]: the `MessageStore` interface and the embedded store.
//! - [`threads`]: a few single-threaded runtimes sharing many similar tasks.
//! - [`config`], [`telemetry`], [`auth`], [`shutdown`], [`listen`].
//!
//! # Invariants kept here
//! - Every process places a channel on the same owner for the same epoch (fixed-key hashing).
//! - A frame larger than the configured maximum is refused from its header, before buffering.
//! - A store append never overwrites: `(channel, seq)` and `(channel, client_msg_id)` are unique.

pub mod auth;
pub mod config;
pub mod ids;
pub mod listen;
pub mod membership;
pub mod mesh;
pub mod protocol;
pub mod ring;
pub mod search;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod threads;
