//! The ring's source of truth: channel server membership, liveness and epochs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shared::ids::{NodeId, RingEpoch};
use shared::protocol::{RingMember, RingState};
use shared::ring::Ring;
use tokio::sync::watch;

use crate::metrics as m;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Connected to this admin server: owns channels unless draining.
    Up,
    /// Not connected (never was, or its link dropped past the grace period).
    Down,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub mesh_addr: String,
    pub status: MemberStatus,
    /// Kept out of the ring on purpose (drained through the admin API).
    pub draining: bool,
    /// Bumped on every Hello, so an old link's close does not mark a reconnected member down.
    #[serde(skip)]
    pub generation: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    epoch: u64,
    members: Vec<MemberInfo>,
}

/// Membership and the published ring.
pub struct RingAuthority {
    inner: Mutex<Inner>,
    ring_tx: watch::Sender<Arc<Ring>>,
    vnodes: u32,
    path: Option<PathBuf>,
}

struct Inner {
    epoch: u64,
    members: BTreeMap<NodeId, MemberInfo>,
}

impl RingAuthority {
    /// Loads the last epoch and members from `path` (so epochs keep increasing across
    /// restarts), adds the configured members, and publishes.
    pub fn new(
        configured: &[(NodeId, String)],
        vnodes: u32,
        path: Option<PathBuf>,
    ) -> Arc<RingAuthority> {
        let persisted: Persisted = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Members that were up when this admin server stopped stay up (their channel servers
        // most likely still run and reconnect within moments), so a restart publishes the
        // same ring rather than an empty one that would make every channel move and move back.
        // Those that do not say Hello within the grace period go down then
        // ([`RingAuthority::expire_unconfirmed`]). Generation 0 marks them as not yet seen.
        let mut members = BTreeMap::new();
        for mut m in persisted.members {
            m.generation = 0;
            members.insert(m.id.clone(), m);
        }
        for (id, addr) in configured {
            members.entry(id.clone()).or_insert_with(|| MemberInfo {
                id: id.clone(),
                mesh_addr: addr.clone(),
                status: MemberStatus::Down,
                draining: false,
                generation: 0,
            });
        }
        let (ring_tx, _) = watch::channel(Arc::new(Ring::empty()));
        let auth = Arc::new(RingAuthority {
            inner: Mutex::new(Inner {
                epoch: persisted.epoch,
                members,
            }),
            ring_tx,
            vnodes,
            path,
        });
        auth.publish(&mut auth.inner.lock());
        auth
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Ring>> {
        self.ring_tx.subscribe()
    }

    pub fn current(&self) -> Arc<Ring> {
        self.ring_tx.borrow().clone()
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.lock().members.values().cloned().collect()
    }

    fn publish(&self, inner: &mut Inner) {
        inner.epoch += 1;
        let members: Vec<RingMember> = inner
            .members
            .values()
            .filter(|m| m.status == MemberStatus::Up)
            .map(|m| RingMember {
                node: m.id.clone(),
                mesh_addr: m.mesh_addr.clone(),
                draining: m.draining,
            })
            .collect();
        let owners = members.iter().filter(|m| !m.draining).count();
        let state = RingState {
            epoch: RingEpoch(inner.epoch),
            members,
            vnodes: self.vnodes,
        };
        tracing::info!(epoch = inner.epoch, owners, "publishing ring");
        m::RING_EPOCH.set(inner.epoch as i64);
        m::RING_OWNERS.set(owners as i64);
        if let Some(path) = &self.path {
            let persisted = Persisted {
                epoch: inner.epoch,
                members: inner.members.values().cloned().collect(),
            };
            let tmp = path.with_extension("tmp");
            let written = serde_json::to_vec_pretty(&persisted)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                tracing::error!(error = %e, path = %path.display(), "failed to persist the ring");
            }
        }
        self.ring_tx.send_replace(Arc::new(Ring::new(state)));
    }

    /// A channel server said Hello: it is up (joining if new). Returns its link generation.
    pub fn member_up(&self, id: &NodeId, mesh_addr: &str) -> u64 {
        let mut inner = self.inner.lock();
        let member = inner
            .members
            .entry(id.clone())
            .or_insert_with(|| MemberInfo {
                id: id.clone(),
                mesh_addr: mesh_addr.to_string(),
                status: MemberStatus::Down,
                draining: false,
                generation: 0,
            });
        member.generation += 1;
        let generation = member.generation;
        let changed = member.status != MemberStatus::Up || member.mesh_addr != mesh_addr;
        member.status = MemberStatus::Up;
        member.mesh_addr = mesh_addr.to_string();
        if changed {
            tracing::info!(%id, mesh_addr, "channel server up");
            self.publish(&mut inner);
        }
        generation
    }

    /// A channel server's link closed and did not come back within the grace period.
    pub fn member_down(&self, id: &NodeId, generation: u64) {
        let mut inner = self.inner.lock();
        if let Some(member) = inner.members.get_mut(id) {
            if member.generation == generation && member.status == MemberStatus::Up {
                member.status = MemberStatus::Down;
                tracing::warn!(%id, "channel server down, moving its channels");
                self.publish(&mut inner);
            }
        }
    }

    /// Takes down every member that was up before a restart and has not said Hello since;
    /// returns how many. Called once, a grace period after start.
    pub fn expire_unconfirmed(&self) -> usize {
        let mut inner = self.inner.lock();
        let mut expired = 0;
        for member in inner.members.values_mut() {
            if member.status == MemberStatus::Up && member.generation == 0 {
                member.status = MemberStatus::Down;
                tracing::warn!(id = %member.id, "channel server did not come back after the restart, moving its channels");
                expired += 1;
            }
        }
        if expired > 0 {
            self.publish(&mut inner);
        }
        expired
    }

    /// Adds (or re-adds) a member; it owns channels once it is up.
    pub fn add(&self, id: NodeId, mesh_addr: String) {
        let mut inner = self.inner.lock();
        let member = inner
            .members
            .entry(id.clone())
            .or_insert_with(|| MemberInfo {
                id,
                mesh_addr: mesh_addr.clone(),
                status: MemberStatus::Down,
                draining: false,
                generation: 0,
            });
        member.mesh_addr = mesh_addr;
        member.draining = false;
        self.publish(&mut inner);
    }

    /// Takes a member's channels away while it keeps running. `false` if unknown.
    pub fn drain(&self, id: &NodeId) -> bool {
        let mut inner = self.inner.lock();
        match inner.members.get_mut(id) {
            Some(member) => {
                member.draining = true;
                self.publish(&mut inner);
                true
            }
            None => false,
        }
    }

    /// Forgets a member. `false` if unknown.
    pub fn remove(&self, id: &NodeId) -> bool {
        let mut inner = self.inner.lock();
        if inner.members.remove(id).is_some() {
            self.publish(&mut inner);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_increase_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        let a = RingAuthority::new(
            &[(NodeId::from("cs-1"), "127.0.0.1:1".into())],
            64,
            Some(path.clone()),
        );
        let e0 = a.current().epoch();
        assert!(
            a.current().state().members.is_empty(),
            "configured but not up: owns nothing"
        );
        let g = a.member_up(&NodeId::from("cs-1"), "127.0.0.1:1");
        assert!(a.current().epoch() > e0);
        assert_eq!(a.current().state().members.len(), 1);
        // A stale link's close does not take a reconnected member down.
        let g2 = a.member_up(&NodeId::from("cs-1"), "127.0.0.1:1");
        a.member_down(&NodeId::from("cs-1"), g);
        assert_eq!(a.current().state().members.len(), 1);
        a.member_down(&NodeId::from("cs-1"), g2);
        assert!(a.current().state().members.is_empty());
        let last = a.current().epoch();
        let b = RingAuthority::new(&[], 64, Some(path));
        assert!(b.current().epoch() > last);
    }

    #[test]
    fn a_restart_keeps_the_ring_until_the_grace_period_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        let a = RingAuthority::new(&[], 64, Some(path.clone()));
        a.member_up(&NodeId::from("cs-1"), "127.0.0.1:1");
        a.member_up(&NodeId::from("cs-2"), "127.0.0.1:2");
        let c = shared::ids::ChannelId::from("C1");
        let owner = a.current().owner(&c).unwrap().node.clone();
        drop(a);

        let b = RingAuthority::new(&[], 64, Some(path));
        assert_eq!(
            b.current().state().members.len(),
            2,
            "the members that were up still own their channels after a restart"
        );
        assert_eq!(b.current().owner(&c).unwrap().node, owner);
        // cs-1 comes back; cs-2 does not.
        let g = b.member_up(&NodeId::from("cs-1"), "127.0.0.1:1");
        let epoch = b.current().epoch();
        assert_eq!(b.expire_unconfirmed(), 1);
        assert!(b.current().epoch() > epoch);
        let members = b.current().state().members.clone();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].node, NodeId::from("cs-1"));
        assert_eq!(b.expire_unconfirmed(), 0, "nothing left to expire");
        // The member that came back goes down like any other once its link drops.
        b.member_down(&NodeId::from("cs-1"), g);
        assert!(b.current().state().members.is_empty());
    }

    #[test]
    fn draining_keeps_the_member_but_not_its_ownership() {
        let a = RingAuthority::new(&[], 64, None);
        a.member_up(&NodeId::from("cs-1"), "127.0.0.1:1");
        a.member_up(&NodeId::from("cs-2"), "127.0.0.1:2");
        assert!(a.drain(&NodeId::from("cs-1")));
        let ring = a.current();
        assert_eq!(ring.state().members.len(), 2);
        let c = shared::ids::ChannelId::from("C1");
        assert_eq!(ring.owner(&c).unwrap().node, NodeId::from("cs-2"));
        assert!(!a.drain(&NodeId::from("cs-9")));
        assert!(a.remove(&NodeId::from("cs-1")));
        assert_eq!(a.current().state().members.len(), 1);
    }
}
