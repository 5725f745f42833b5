//! Domain identifiers. Each is a string newtype so that it keeps Slack's shape on the wire
//! (`T…` workspaces, `U…` users, `C…`/`G…`/`D…` conversations) and cannot be mixed up with another.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Alphabet of generated ids: Slack uses upper-case base32-like ids.
const ID_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789";

fn random_suffix(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// A new random id with this type's Slack prefix.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_suffix(10)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `s` looks like an id of this type (prefix, length, alphabet), so that
            /// garbage from clients is refused before it reaches the store.
            pub fn is_well_formed(s: &str) -> bool {
                s.len() >= 2
                    && s.len() <= 32
                    && s.starts_with($prefix)
                    && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            }

            /// Parses a client-supplied id, refusing malformed ones.
            pub fn parse(s: &str) -> Option<Self> {
                Self::is_well_formed(s).then(|| Self(s.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
    };
}

string_id!(
    /// A workspace (Slack "team"): the unit of isolation and of sharding.
    WorkspaceId,
    "T"
);
string_id!(
    /// A person or bot in a workspace.
    UserId,
    "U"
);
string_id!(
    /// A conversation: a public channel (`C…`); private channels and DMs use the same type.
    ChannelId,
    "C"
);

string_id!(
    /// An uploaded file.
    FileId,
    "F"
);
string_id!(
    /// A message waiting to be posted (Slack's `scheduled_message_id`).
    ScheduledMessageId,
    "Q"
);
string_id!(
    /// A user group (Slack's `subteam`).
    UserGroupId,
    "S"
);

impl ChannelId {
    /// The stable bytes hashed to place this channel on the ring. Every process hashes the
    /// same bytes, so every process agrees on the owner.
    pub fn ring_key(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Identifies one node (a gateway, channel server, admin server or Web API process) in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// Name prefix of a 1:1 direct message (`dm-…`). The Web API names direct messages so; Flannel
/// and others tell them from channels by it (a summary carries a conversation's name, not its
/// kind). Channel names a user chooses may not start with either prefix.
pub const IM_PREFIX: &str = "dm-";
/// Name prefix of a group direct message (`mpdm-…`).
pub const MPIM_PREFIX: &str = "mpdm-";

/// Per-channel sequence number: contiguous from 1, so a gap is always detectable.
pub type Seq = u64;

/// Version of the ring: every change bumps it, and every node learns it from the admin server.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RingEpoch(pub u64);

impl fmt::Display for RingEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Slack-style message timestamp: microseconds since the Unix epoch, unique and increasing
/// within a channel, rendered as `"1700000000.000123"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Ts(pub u64);

impl Ts {
    pub fn now() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Ts(micros)
    }

    /// Slack's string form, `seconds.micros` with six digits.
    pub fn to_slack(self) -> String {
        format!("{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }

    /// Parses Slack's `"1700000000.000123"` (or a bare integer of seconds).
    pub fn parse_slack(s: &str) -> Option<Ts> {
        let s = s.trim();
        let (secs, frac) = match s.split_once('.') {
            Some((a, b)) => (a, b),
            None => (s, ""),
        };
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || secs.len() > 12 {
            return None;
        }
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs: u64 = secs.parse().ok()?;
        let mut micros: u64 = 0;
        if !frac.is_empty() {
            micros = frac.parse::<u64>().ok()? * 10u64.pow(6 - frac.len() as u32);
        }
        secs.checked_mul(1_000_000)?.checked_add(micros).map(Ts)
    }
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_slack())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_round_trips_through_slack_form() {
        let ts = Ts(1_700_000_000_000_123);
        assert_eq!(ts.to_slack(), "1700000000.000123");
        assert_eq!(Ts::parse_slack("1700000000.000123"), Some(ts));
        assert_eq!(
            Ts::parse_slack("1700000000"),
            Some(Ts(1_700_000_000_000_000))
        );
        assert_eq!(
            Ts::parse_slack("1700000000.5"),
            Some(Ts(1_700_000_000_500_000))
        );
        assert_eq!(Ts::parse_slack("abc"), None);
        assert_eq!(Ts::parse_slack("1.1234567"), None);
        assert_eq!(Ts::parse_slack(""), None);
    }

    #[test]
    fn generated_ids_are_well_formed() {
        let c = ChannelId::generate();
        assert!(ChannelId::is_well_formed(c.as_str()));
        assert!(!ChannelId::is_well_formed("U123"));
        assert!(!ChannelId::is_well_formed("C12 3"));
        assert!(UserId::parse("Ufoo").is_none());
        assert!(WorkspaceId::parse("TABC").is_some());
    }
}
