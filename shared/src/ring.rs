//! The consistent-hash ring that places channels on channel servers.
//!
//! Built on `hashring` (SipHash with fixed keys, so every process computes the same owner),
//! with virtual nodes added by hand: one ring entry per (member, replica index). A channel is
//! placed by hashing [`ChannelId::ring_key`]. Draining members are left out, so their channels
//! move to the remaining owners while everything else stays put.
//!
//! [`Placement`] is the same scheme over a plain list of names (gateways use it to pick the
//! Flannel instance that holds a workspace).

use std::hash::{Hash, Hasher};

use hashring::HashRing;

use crate::ids::{ChannelId, NodeId, RingEpoch};
use crate::protocol::{RingMember, RingState};

/// Virtual nodes per member unless configured: enough for an even spread over a handful of
/// servers (see the balance test).
pub const DEFAULT_VNODES: u32 = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
struct VirtualNode {
    member: usize,
    node: NodeId,
    replica: u32,
}

impl Hash for VirtualNode {
    // Only the stable parts: the member's id and the replica index.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.node.0.as_bytes());
        state.write_u8(0xff);
        state.write_u32(self.replica);
    }
}

/// A placement snapshot for one epoch.
#[derive(Clone)]
pub struct Ring {
    state: RingState,
    ring: HashRing<VirtualNode>,
    num_owners: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("state", &self.state).finish()
    }
}

struct RingKey<'a>(&'a [u8]);

impl Hash for RingKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

impl Ring {
    pub fn new(state: RingState) -> Ring {
        let vnodes = if state.vnodes == 0 {
            DEFAULT_VNODES
        } else {
            state.vnodes
        };
        // All virtual nodes first, then one sort (`batch_add`): `HashRing::add` sorts the whole
        // ring on every call, which made a build quadratic in members x vnodes (seconds for
        // 16 x 4096). The sort is stable, so equal keys keep the order they were pushed in and
        // the ring is the same as adding them one by one: placement does not change.
        let num_owners = state.members.iter().filter(|m| !m.draining).count();
        let mut nodes = Vec::with_capacity(num_owners * vnodes as usize);
        for (member, m) in state.members.iter().enumerate() {
            if m.draining {
                continue;
            }
            for replica in 0..vnodes {
                nodes.push(VirtualNode {
                    member,
                    node: m.node.clone(),
                    replica,
                });
            }
        }
        let mut ring = HashRing::new();
        ring.batch_add(nodes);
        Ring {
            state,
            ring,
            num_owners,
        }
    }

    pub fn empty() -> Ring {
        Ring::new(RingState::default())
    }

    pub fn epoch(&self) -> RingEpoch {
        self.state.epoch
    }

    pub fn state(&self) -> &RingState {
        &self.state
    }

    pub fn member(&self, node: &NodeId) -> Option<&RingMember> {
        self.state.members.iter().find(|m| &m.node == node)
    }

    /// The member that owns `channel`, if any member is up.
    pub fn owner(&self, channel: &ChannelId) -> Option<&RingMember> {
        let v = self.ring.get(&RingKey(channel.ring_key()))?;
        self.state.members.get(v.member)
    }

    /// Up to `n` distinct members for `channel`, the owner first, then the next distinct
    /// members walking clockwise (virtual nodes can repeat a member, so repeats are skipped).
    pub fn owners(&self, channel: &ChannelId, n: usize) -> Vec<&RingMember> {
        let want = n.min(self.num_owners);
        let mut out: Vec<&RingMember> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let walk = self.ring.len().saturating_sub(1);
        let Some(vs) = self
            .ring
            .get_with_replicas(&RingKey(channel.ring_key()), walk)
        else {
            return out;
        };
        for v in vs {
            let m = &self.state.members[v.member];
            if !out.iter().any(|o| o.node == m.node) {
                out.push(m);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// Whether `node` owns `channel` in this epoch.
    pub fn is_owner(&self, node: &NodeId, channel: &ChannelId) -> bool {
        self.owner(channel).is_some_and(|m| &m.node == node)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NamedVirtualNode {
    index: usize,
    name: String,
    replica: u32,
}

impl Hash for NamedVirtualNode {
    // Only the stable parts: the name and the replica index (never the list position).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write_u8(0xff);
        state.write_u32(self.replica);
    }
}

/// Consistent hashing over a list of names (URLs, node ids) with virtual nodes: every process
/// that has the same names picks the same one for a key, and adding a name moves only the
/// keys it takes over.
#[derive(Clone)]
pub struct Placement {
    names: Vec<String>,
    ring: HashRing<NamedVirtualNode>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("names", &self.names)
            .finish()
    }
}

impl Placement {
    /// A ring over `names` with `vnodes` virtual nodes each (at least one).
    pub fn new(names: impl IntoIterator<Item = String>, vnodes: u32) -> Placement {
        let names: Vec<String> = names.into_iter().collect();
        let mut ring = HashRing::new();
        let mut nodes = Vec::with_capacity(names.len() * vnodes.max(1) as usize);
        for (index, name) in names.iter().enumerate() {
            for replica in 0..vnodes.max(1) {
                nodes.push(NamedVirtualNode {
                    index,
                    name: name.clone(),
                    replica,
                });
            }
        }
        ring.batch_add(nodes);
        Placement { names, ring }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name that `key` (stable bytes, such as an id's) is placed on; `None` when empty.
    pub fn pick(&self, key: &[u8]) -> Option<&str> {
        let v = self.ring.get(&RingKey(key))?;
        Some(self.names[v.index].as_str())
    }
}

/// `names` in their order of preference for `key` (rendezvous hashing: each name scores a
/// fixed hash of itself with the key, highest first). Every process ranks alike, and when a
/// name is left out only the keys it ranked first move, each to its own second choice.
pub fn rendezvous<'a>(names: &'a [String], key: &[u8]) -> Vec<&'a str> {
    let score = |name: &str| {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(0x5377_6974_6368, 0x0062_6f61_7264);
        h.write(name.as_bytes());
        h.write_u8(0xff);
        h.write(key);
        h.finish()
    };
    let mut ranked: Vec<(u64, &str)> = names.iter().map(|n| (score(n), n.as_str())).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn rendezvous_ranks_alike_everywhere_and_moves_only_a_removed_name_s_keys() {
        let names = urls(3);
        let keys: Vec<String> = (0..3_000).map(|i| format!("U{i:08}")).collect();
        let mut firsts: HashMap<&str, usize> = HashMap::new();
        for k in &keys {
            let ranked = rendezvous(&names, k.as_bytes());
            assert_eq!(ranked.len(), 3, "every name, once");
            // The same ranking whatever order the names were listed in.
            let mut reversed = names.clone();
            reversed.reverse();
            assert_eq!(rendezvous(&reversed, k.as_bytes()), ranked);
            *firsts.entry(ranked[0]).or_default() += 1;
            // Without its first choice, a key goes to its second; without another name,
            // it stays.
            let without_first: Vec<String> =
                names.iter().filter(|n| *n != ranked[0]).cloned().collect();
            assert_eq!(rendezvous(&without_first, k.as_bytes())[0], ranked[1]);
            let without_last: Vec<String> =
                names.iter().filter(|n| *n != ranked[2]).cloned().collect();
            assert_eq!(rendezvous(&without_last, k.as_bytes())[0], ranked[0]);
        }
        for n in &names {
            let share = firsts[n.as_str()];
            assert!((700..1300).contains(&share), "{n}: {share} of 3,000");
        }
        // Fixed: processes of other builds must agree.
        assert_eq!(
            rendezvous(&names, b"UBOT"),
            vec![
                "http://10.0.0.2:7400",
                "http://10.0.0.0:7400",
                "http://10.0.0.1:7400"
            ]
        );
        assert!(rendezvous(&[], b"UBOT").is_empty());
    }

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:7400")).collect()
    }

    #[test]
    fn placement_spreads_keys_and_adding_a_name_moves_only_its_share() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("T{i:08}")).collect();
        let before = Placement::new(urls(4), DEFAULT_VNODES);
        let after = Placement::new(urls(5), DEFAULT_VNODES);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut moved = 0;
        for k in &keys {
            let (b, a) = (
                before.pick(k.as_bytes()).unwrap(),
                after.pick(k.as_bytes()).unwrap(),
            );
            *counts.entry(b).or_default() += 1;
            if a != b {
                moved += 1;
                // Only to the new instance: nothing moves between the old ones.
                assert_eq!(a, "http://10.0.0.4:7400", "{k} moved from {b} to {a}");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!(share <= 1.0 / 5.0 + 0.05, "moved {:.1}%", share * 100.0);
        assert!(
            share >= 1.0 / 5.0 - 0.05,
            "moved only {:.1}%",
            share * 100.0
        );
        for (name, count) in counts {
            let off = (count as f64 - 2_500.0).abs() / 2_500.0;
            assert!(off <= 0.15, "{name} holds {count} keys");
        }
    }

    #[test]
    fn placement_does_not_depend_on_list_order_and_empty_picks_nothing() {
        let mut reversed = urls(3);
        reversed.reverse();
        let a = Placement::new(urls(3), 64);
        let b = Placement::new(reversed, 64);
        for i in 0..500 {
            let k = format!("T{i}");
            assert_eq!(a.pick(k.as_bytes()), b.pick(k.as_bytes()));
        }
        assert_eq!(Placement::new(Vec::new(), 64).pick(b"T1"), None);
        assert_eq!(
            Placement::new(vec!["only".to_string()], 1).pick(b"T1"),
            Some("only")
        );
    }

    fn state(n: usize, epoch: u64) -> RingState {
        RingState {
            epoch: RingEpoch(epoch),
            members: (0..n)
                .map(|i| RingMember {
                    node: NodeId(format!("cs-{i}")),
                    mesh_addr: format!("127.0.0.1:{}", 7000 + i),
                    draining: false,
                })
                .collect(),
            vnodes: DEFAULT_VNODES,
        }
    }

    fn channels(n: usize) -> Vec<ChannelId> {
        (0..n).map(|i| ChannelId(format!("C{i:08}"))).collect()
    }

    #[test]
    fn distribution_is_within_ten_percent_of_even() {
        let ring = Ring::new(state(8, 1));
        let mut counts: HashMap<NodeId, usize> = HashMap::new();
        let chans = channels(10_000);
        for c in &chans {
            *counts
                .entry(ring.owner(c).unwrap().node.clone())
                .or_default() += 1;
        }
        let even = chans.len() as f64 / 8.0;
        assert_eq!(counts.len(), 8);
        for (node, count) in counts {
            let off = (count as f64 - even).abs() / even;
            assert!(
                off <= 0.10,
                "{node} owns {count} channels, {:.1}% from even",
                off * 100.0
            );
        }
    }

    #[test]
    fn adding_a_ninth_server_moves_about_a_ninth() {
        let before = Ring::new(state(8, 1));
        let after = Ring::new(state(9, 2));
        let chans = channels(10_000);
        let moved = chans
            .iter()
            .filter(|c| before.owner(c).unwrap().node != after.owner(c).unwrap().node)
            .count();
        let share = moved as f64 / chans.len() as f64;
        assert!(share <= 1.0 / 9.0 + 0.05, "moved {:.1}%", share * 100.0);
        // Every moved channel went to the new server: nothing moved between old servers.
        for c in &chans {
            let (b, a) = (before.owner(c).unwrap(), after.owner(c).unwrap());
            if b.node != a.node {
                assert_eq!(a.node, NodeId::from("cs-8"));
            }
        }
    }

    #[test]
    fn draining_moves_only_the_drained_members_channels() {
        let before = Ring::new(state(3, 1));
        let mut drained = state(3, 2);
        drained.members[1].draining = true;
        let after = Ring::new(drained);
        for c in channels(2_000) {
            let (b, a) = (before.owner(&c).unwrap(), after.owner(&c).unwrap());
            assert_ne!(a.node, NodeId::from("cs-1"));
            if b.node != NodeId::from("cs-1") {
                assert_eq!(a.node, b.node, "{c} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn owners_are_distinct_and_start_with_the_owner() {
        let ring = Ring::new(state(4, 1));
        for c in channels(200) {
            let owners = ring.owners(&c, 3);
            assert_eq!(owners.len(), 3);
            assert_eq!(owners[0].node, ring.owner(&c).unwrap().node);
            let mut ids: Vec<_> = owners.iter().map(|m| m.node.clone()).collect();
            ids.dedup();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3);
        }
        assert_eq!(ring.owners(&ChannelId::from("C1"), 10).len(), 4);
    }

    #[test]
    fn placement_is_the_same_in_every_process() {
        // Fixed-key SipHash: a known channel always lands on the same member.
        let a = Ring::new(state(5, 1));
        let b = Ring::new(state(5, 9));
        for c in channels(100) {
            assert_eq!(a.owner(&c).unwrap().node, b.owner(&c).unwrap().node);
        }
    }

    /// Owners (up to three) of the first channels in a 5-member ring with `cs-3` draining and
    /// 64 vnodes, as the ring placed them when it added virtual nodes one at a time. Placement
    /// is shared state between processes of different versions: it must never change.
    const PINNED_OWNERS: &[(&str, [&str; 3])] = &[
        ("C00000000", ["cs-1", "cs-2", "cs-0"]),
        ("C00000001", ["cs-0", "cs-4", "cs-2"]),
        ("C00000002", ["cs-2", "cs-0", "cs-4"]),
        ("C00000003", ["cs-1", "cs-4", "cs-0"]),
        ("C00000004", ["cs-0", "cs-1", "cs-2"]),
        ("C00000005", ["cs-1", "cs-4", "cs-0"]),
        ("C00000006", ["cs-1", "cs-2", "cs-0"]),
        ("C00000007", ["cs-1", "cs-2", "cs-0"]),
        ("C00000008", ["cs-2", "cs-0", "cs-4"]),
        ("C00000009", ["cs-0", "cs-4", "cs-1"]),
        ("C00000010", ["cs-1", "cs-4", "cs-2"]),
        ("C00000011", ["cs-0", "cs-2", "cs-4"]),
        ("C00000012", ["cs-4", "cs-1", "cs-2"]),
        ("C00000013", ["cs-4", "cs-0", "cs-2"]),
        ("C00000014", ["cs-4", "cs-2", "cs-1"]),
        ("C00000015", ["cs-4", "cs-2", "cs-0"]),
        ("C00000016", ["cs-1", "cs-4", "cs-2"]),
        ("C00000017", ["cs-4", "cs-2", "cs-1"]),
        ("C00000018", ["cs-2", "cs-0", "cs-4"]),
        ("C00000019", ["cs-4", "cs-2", "cs-1"]),
        ("C00000020", ["cs-1", "cs-0", "cs-4"]),
        ("C00000021", ["cs-1", "cs-4", "cs-0"]),
        ("C00000022", ["cs-1", "cs-0", "cs-4"]),
        ("C00000023", ["cs-1", "cs-4", "cs-0"]),
    ];

    #[test]
    fn placement_matches_the_pinned_owners_and_adding_one_by_one() {
        let mut st = state(5, 1);
        st.members[3].draining = true;
        st.vnodes = 64;
        let ring = Ring::new(st.clone());
        for (channel, want) in PINNED_OWNERS {
            let got: Vec<&str> = ring
                .owners(&ChannelId::from(*channel), 3)
                .iter()
                .map(|m| m.node.0.as_str())
                .collect();
            assert_eq!(got, want, "{channel}");
        }
        // The same ring built the old way, one `add` (and one sort) per virtual node.
        let mut one_by_one = HashRing::new();
        for (member, m) in st.members.iter().enumerate() {
            for replica in 0..64 {
                if !m.draining {
                    one_by_one.add(VirtualNode {
                        member,
                        node: m.node.clone(),
                        replica,
                    });
                }
            }
        }
        for c in channels(5_000) {
            let key = RingKey(c.ring_key());
            assert_eq!(
                ring.ring.get(&key).map(|v| &v.node),
                one_by_one.get(&key).map(|v| &v.node),
                "{c}"
            );
        }
    }

    #[test]
    fn a_large_ring_builds_and_places_on_every_member() {
        let mut st = state(16, 1);
        st.vnodes = 4096;
        let ring = Ring::new(st);
        assert_eq!(ring.ring.len(), 16 * 4096);
        let mut seen: HashMap<NodeId, usize> = HashMap::new();
        for c in channels(2_000) {
            *seen
                .entry(ring.owner(&c).unwrap().node.clone())
                .or_default() += 1;
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn empty_ring_owns_nothing() {
        assert!(Ring::empty().owner(&ChannelId::from("C1")).is_none());
    }
}
