//! Presence, aggregated over every gateway: a user is active while it has a session on some
//! gateway and has not set itself away. Going away is debounced: a user whose last session
//! closes and who comes back (to any gateway) within the debounce produces no change at all.
//! Changes are broadcast to gateways as `UserEvent::PresenceChanged`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shared::ids::{NodeId, UserId, WorkspaceId};
use shared::protocol::{Presence, UserEvent};
use tokio::sync::broadcast;

use crate::metrics as m;

struct Entry {
    workspace: WorkspaceId,
    /// Gateways where the user has sessions.
    gateways: HashSet<NodeId>,
    manual_away: bool,
    /// What was last broadcast.
    published: Presence,
    /// Bumped on every change, so a pending away that was overtaken does nothing.
    generation: u64,
}

impl Entry {
    fn effective(&self) -> Presence {
        if !self.gateways.is_empty() && !self.manual_away {
            Presence::Active
        } else {
            Presence::Away
        }
    }
}

pub struct PresenceBook {
    users: Mutex<HashMap<UserId, Entry>>,
    events: broadcast::Sender<UserEvent>,
    debounce: Duration,
}

impl PresenceBook {
    pub fn new(events: broadcast::Sender<UserEvent>, debounce: Duration) -> Arc<PresenceBook> {
        Arc::new(PresenceBook {
            users: Mutex::new(HashMap::new()),
            events,
            debounce,
        })
    }

    /// A gateway says `user` has (or no longer has) sessions on it.
    pub fn report(
        self: &Arc<Self>,
        workspace: WorkspaceId,
        user: UserId,
        gateway: NodeId,
        online: bool,
    ) {
        self.update(workspace, user, |e| {
            if online {
                e.gateways.insert(gateway);
            } else {
                e.gateways.remove(&gateway);
            }
        });
    }

    /// `users.setPresence`.
    pub fn set_manual(self: &Arc<Self>, workspace: WorkspaceId, user: UserId, away: bool) {
        self.update(workspace, user, |e| e.manual_away = away);
    }

    /// A gateway left (its membership stream closed): its sessions are gone.
    pub fn gateway_gone(self: &Arc<Self>, gateway: &NodeId) {
        let affected: Vec<(WorkspaceId, UserId)> = self
            .users
            .lock()
            .iter()
            .filter(|(_, e)| e.gateways.contains(gateway))
            .map(|(u, e)| (e.workspace.clone(), u.clone()))
            .collect();
        for (ws, user) in affected {
            self.report(ws, user, gateway.clone(), false);
        }
    }

    /// (presence as broadcast, online anywhere, manually away).
    pub fn get(&self, user: &UserId) -> (Presence, bool, bool) {
        match self.users.lock().get(user) {
            Some(e) => (e.published, !e.gateways.is_empty(), e.manual_away),
            None => (Presence::Away, false, false),
        }
    }

    /// Which of `users` are active for a session of `workspace`: a user of another workspace
    /// (or one the book never heard of) is away to it.
    pub fn active_among(&self, workspace: &WorkspaceId, users: &[UserId]) -> Vec<UserId> {
        let book = self.users.lock();
        users
            .iter()
            .filter(|u| {
                book.get(*u)
                    .is_some_and(|e| e.workspace == *workspace && e.published == Presence::Active)
            })
            .cloned()
            .collect()
    }

    fn update(
        self: &Arc<Self>,
        workspace: WorkspaceId,
        user: UserId,
        change: impl FnOnce(&mut Entry),
    ) {
        let mut users = self.users.lock();
        let e = users.entry(user.clone()).or_insert_with(|| Entry {
            workspace: workspace.clone(),
            gateways: HashSet::new(),
            manual_away: false,
            published: Presence::Away,
            generation: 0,
        });
        change(e);
        e.generation += 1;
        let now = e.effective();
        if now == e.published {
            // Back before a pending away fired: the bumped generation cancels it.
            return;
        }
        match now {
            Presence::Active => {
                e.published = Presence::Active;
                self.broadcast(&e.workspace, &user, Presence::Active);
            }
            Presence::Away => {
                let (generation, book) = (e.generation, self.clone());
                drop(users);
                tokio::spawn(async move {
                    tokio::time::sleep(book.debounce).await;
                    let mut users = book.users.lock();
                    let Some(e) = users.get_mut(&user) else {
                        return;
                    };
                    if e.generation == generation
                        && e.effective() == Presence::Away
                        && e.published != Presence::Away
                    {
                        e.published = Presence::Away;
                        let ws = e.workspace.clone();
                        book.broadcast(&ws, &user, Presence::Away);
                    }
                    // Forget users with nothing left to remember.
                    if e.gateways.is_empty() && !e.manual_away && e.published == Presence::Away {
                        users.remove(&user);
                    }
                });
            }
        }
    }

    fn broadcast(&self, workspace: &WorkspaceId, user: &UserId, presence: Presence) {
        m::PRESENCE_CHANGES
            .with_label_values(&[presence.as_str()])
            .inc();
        let _ = self.events.send(UserEvent::PresenceChanged {
            workspace: workspace.clone(),
            user: user.clone(),
            presence,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(rx: &mut broadcast::Receiver<UserEvent>) -> Vec<Presence> {
        let mut out = Vec::new();
        while let Ok(UserEvent::PresenceChanged { presence, .. }) = rx.try_recv() {
            out.push(presence);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_reconnect_elsewhere_does_not_flap() {
        let (tx, mut rx) = broadcast::channel(16);
        let book = PresenceBook::new(tx, Duration::from_secs(3));
        let (ws, u) = (WorkspaceId::from("TW"), UserId::from("UA"));
        book.report(ws.clone(), u.clone(), NodeId::from("gw-1"), true);
        assert_eq!(changes(&mut rx), vec![Presence::Active]);
        // Drops from gw-1, comes back on gw-2 a second later.
        book.report(ws.clone(), u.clone(), NodeId::from("gw-1"), false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        book.report(ws.clone(), u.clone(), NodeId::from("gw-2"), true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            changes(&mut rx),
            Vec::<Presence>::new(),
            "no away/active flap"
        );
        assert_eq!(book.get(&u), (Presence::Active, true, false));
        // Gone for good: away after the debounce, once.
        book.gateway_gone(&NodeId::from("gw-2"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(changes(&mut rx).is_empty());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(changes(&mut rx), vec![Presence::Away]);
        assert_eq!(book.get(&u), (Presence::Away, false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn manual_away_wins_over_sessions() {
        let (tx, mut rx) = broadcast::channel(16);
        let book = PresenceBook::new(tx, Duration::from_secs(3));
        let (ws, u) = (WorkspaceId::from("TW"), UserId::from("UA"));
        book.report(ws.clone(), u.clone(), NodeId::from("gw-1"), true);
        book.set_manual(ws.clone(), u.clone(), true);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(changes(&mut rx), vec![Presence::Active, Presence::Away]);
        assert_eq!(book.get(&u), (Presence::Away, true, true));
        book.set_manual(ws, u.clone(), false);
        assert_eq!(changes(&mut rx), vec![Presence::Active]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_sees_only_its_own_workspaces_active_users() {
        let (tx, _rx) = broadcast::channel(16);
        let book = PresenceBook::new(tx, Duration::from_secs(3));
        let (tw, other) = (WorkspaceId::from("TW"), WorkspaceId::from("TX"));
        let user = |u: &str| UserId::from(u);
        book.report(tw.clone(), user("UA"), NodeId::from("gw-1"), true);
        book.report(tw.clone(), user("UB"), NodeId::from("gw-1"), true);
        book.set_manual(tw.clone(), user("UB"), true);
        book.report(other.clone(), user("UX"), NodeId::from("gw-1"), true);
        // Going away is debounced: the query answers what was announced.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let asked = [user("UA"), user("UB"), user("UX"), user("UNEVERSEEN")];
        assert_eq!(book.active_among(&tw, &asked), vec![user("UA")]);
        assert_eq!(book.active_among(&other, &asked), vec![user("UX")]);
    }
}
