//! One cached workspace: users, bots, channels, memberships both ways and read positions, in
//! memory, with what the query API needs precomputed.
//!
//! Users and channels get dense indices in load order (nothing is ever removed from a
//! workspace: users are deactivated, channels archived), so a membership is a pair of small
//! integers and "who shares a channel with me" is a bitset union. Each user's JSON object is
//! rendered once, when it is loaded or changed, and spliced into boot answers as bytes: a boot
//! for a user who shares `#general` with 10,000 people copies 10,000 small strings and
//! serializes nothing.
//!
//! Everything here is synchronous and pure; [`crate::cache`] adds loading, eviction and
//! locking.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::json;
use shared::ids::{ChannelId, Seq, UserId, WorkspaceId};
use shared::protocol::{ChannelSummary, UserEvent, UserProfile, WorkspaceSnapshot};

type UserIdx = u32;
type ChannelIdx = u32;

/// Longest prefix accepted by the lookups (longer ones cannot match a name).
pub const MAX_PREFIX_CHARS: usize = 200;

struct UserEntry {
    profile: UserProfile,
    /// The user's JSON object, as boot and lookup answers carry it.
    json: Box<str>,
    /// Lower-cased keys under which prefix lookups find the user.
    keys: Vec<String>,
    /// Channels the user is a member of, with the last `seq` it marked read (0: never).
    channels: BTreeMap<ChannelIdx, Seq>,
}

struct ChannelEntry {
    summary: ChannelSummary,
    /// The channel's JSON object without its closing brace: per-caller fields follow.
    json_head: Box<str>,
    key: String,
    members: HashSet<UserIdx>,
}

/// A user group (Slack's subteam) as boot answers carry it.
struct SubteamEntry {
    /// Slack's object, with `user_count` and without the member list.
    json: Box<str>,
    members: HashSet<UserId>,
    /// Disabled groups are listed, but nobody is in one.
    enabled: bool,
}

impl SubteamEntry {
    fn from_group(g: &shared::store::UserGroup) -> SubteamEntry {
        SubteamEntry {
            json: g.slack_json(None, true).to_string().into_boxed_str(),
            members: g.users.iter().cloned().collect(),
            enabled: g.disabled.is_none(),
        }
    }

    /// From a `subteam_created` / `subteam_updated` event's `subteam`; `None` when it is
    /// not one, or lists only part of its members (a large group: the workspace is loaded
    /// again instead).
    fn from_event(subteam: &serde_json::Value) -> Option<(String, SubteamEntry)> {
        let id = subteam["id"].as_str()?.to_string();
        let users: Vec<UserId> = subteam["users"]
            .as_array()?
            .iter()
            .map(|u| u.as_str().map(UserId::from))
            .collect::<Option<_>>()?;
        if subteam["user_count"].as_u64() != Some(users.len() as u64) {
            return None;
        }
        let mut shown = subteam.clone();
        shown.as_object_mut()?.remove("users");
        let entry = SubteamEntry {
            json: shown.to_string().into_boxed_str(),
            members: users.into_iter().collect(),
            enabled: subteam["date_delete"].as_u64() == Some(0),
        };
        Some((id, entry))
    }
}

/// The `subteam_*` events that change a cached group (their `subteam` is the whole group).
fn subteam_event(event: &str) -> Option<serde_json::Value> {
    if !event.contains("\"subteam_") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(event).ok()?;
    matches!(
        v["type"].as_str(),
        Some("subteam_created" | "subteam_updated")
    )
    .then_some(v)
}

/// What applying a change event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The cached data now reflects the event (or already did).
    Applied,
    /// The event names a user or channel this copy does not hold (created behind the
    /// events' back, or an event was lost): the workspace must be loaded again.
    NeedsReload,
}

/// A query's refusal, in Slack's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    UserNotFound,
    ChannelNotFound,
}

/// One workspace's cached state.
pub struct WorkspaceData {
    id: WorkspaceId,
    name: String,
    team_json: Box<str>,
    users: Vec<UserEntry>,
    user_ix: HashMap<UserId, UserIdx>,
    channels: Vec<ChannelEntry>,
    channel_ix: HashMap<ChannelId, ChannelIdx>,
    /// `(key, user)` for prefix lookups: keys are lower-cased names, real and display names
    /// and their words.
    user_keys: BTreeSet<(String, UserIdx)>,
    channel_keys: BTreeSet<(String, ChannelIdx)>,
    /// User groups by id.
    subteams: BTreeMap<String, SubteamEntry>,
    /// `(member, DM)`: the direct messages their members have closed (`is_open: false`
    /// to them until they open it or a message arrives, which the Web API's `im_open`
    /// says).
    closed_dms: HashSet<(UserIdx, ChannelIdx)>,
}

/// A user as Flannel answers it: compact (a boot can carry thousands), flat, without the
/// workspace (the answer's `team` says it). `display_name` is what a client shows: the
/// profile's display name, else the user name. `email` only when the user has one.
fn render_user(u: &UserProfile) -> Box<str> {
    let display = if u.display_name.is_empty() {
        &u.name
    } else {
        &u.display_name
    };
    let mut v = json!({
        "id": u.id,
        "name": u.name,
        "real_name": u.real_name,
        "display_name": display,
        "is_bot": u.is_bot,
        "is_admin": u.is_admin,
        "deleted": u.deleted,
    });
    if !u.email.is_empty() {
        v["email"] = u.email.as_str().into();
    }
    v.to_string().into_boxed_str()
}

// A channel summary carries its name, not its kind: direct messages are told by the names
// the Web API gives them.
use shared::ids::{IM_PREFIX, MPIM_PREFIX};

fn is_im(c: &ChannelSummary) -> bool {
    c.name.starts_with(IM_PREFIX)
}

fn is_direct(c: &ChannelSummary) -> bool {
    is_im(c) || c.name.starts_with(MPIM_PREFIX)
}

/// A `UserNotice`'s event that opens or closes a DM for its user (`im_open`, `im_close`,
/// `mpim_open`, `mpim_close`): the channel, and whether it is open now.
fn dm_open_event(event: &str) -> Option<(ChannelId, bool)> {
    if !(event.contains("im_open\"") || event.contains("im_close\"")) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(event).ok()?;
    let open = match v["type"].as_str()? {
        "im_open" | "mpim_open" => true,
        "im_close" | "mpim_close" => false,
        _ => return None,
    };
    Some((ChannelId::from(v["channel"].as_str()?), open))
}

fn render_channel_head(c: &ChannelSummary) -> Box<str> {
    let is_mpim = c.name.starts_with(MPIM_PREFIX);
    let mut v = json!({
        "id": c.id,
        "name": c.name,
        "is_channel": !(is_im(c) || is_mpim),
        "is_im": is_im(c),
        "is_mpim": is_mpim,
        "is_private": c.is_private,
        "is_archived": c.is_archived,
        "created": c.created.0 / 1_000_000,
        "creator": c.creator,
        "topic": { "value": c.topic },
        "purpose": { "value": c.purpose },
    })
    .to_string();
    v.pop(); // the closing brace
    v.into_boxed_str()
}

fn user_keys(u: &UserProfile) -> Vec<String> {
    let mut keys = Vec::new();
    for text in [&u.name, &u.real_name, &u.display_name] {
        let lower = text.trim().to_lowercase();
        if lower.is_empty() {
            continue;
        }
        for word in lower.split_whitespace() {
            keys.push(word.to_string());
        }
        keys.push(lower);
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Whether `event` can change what a cached workspace holds. Presence is not boot data (the
/// gateways carry it live), nor are ephemeral messages or notices (the caches learn the same
/// changes from their own events) other than the user groups' (`subteam_created`,
/// `subteam_updated`) and the DMs opened and closed (`im_open`, `im_close` and their
/// `mpim_` forms), so those events change nothing here and need no lock.
pub fn changes_cached_data(event: &UserEvent) -> bool {
    match event {
        UserEvent::Notice { event, .. } => event.contains("\"subteam_"),
        UserEvent::UserNotice { event, .. } => dm_open_event(event).is_some(),
        _ => !matches!(
            event,
            UserEvent::PresenceReport { .. }
                | UserEvent::PresenceSet { .. }
                | UserEvent::PresenceChanged { .. }
                | UserEvent::Ephemeral { .. }
                | UserEvent::UserNotice { .. }
        ),
    }
}

/// A lookup prefix as keys hold it: trimmed and lower-cased.
pub fn normalize_prefix(prefix: &str) -> String {
    prefix.trim().to_lowercase()
}

impl WorkspaceData {
    /// Builds the cache of a workspace from its snapshot. Memberships naming an unknown user
    /// or channel are skipped.
    pub fn from_snapshot(snapshot: WorkspaceSnapshot) -> WorkspaceData {
        let team_json = json!({ "id": snapshot.workspace, "name": snapshot.workspace_name })
            .to_string()
            .into_boxed_str();
        let mut ws = WorkspaceData {
            id: snapshot.workspace,
            name: snapshot.workspace_name,
            team_json,
            users: Vec::with_capacity(snapshot.users.len()),
            user_ix: HashMap::with_capacity(snapshot.users.len()),
            channels: Vec::with_capacity(snapshot.channels.len()),
            channel_ix: HashMap::with_capacity(snapshot.channels.len()),
            user_keys: BTreeSet::new(),
            channel_keys: BTreeSet::new(),
            subteams: snapshot
                .usergroups
                .iter()
                .map(|g| (g.id.clone(), SubteamEntry::from_group(g)))
                .collect(),
            closed_dms: HashSet::new(),
        };
        for u in snapshot.users {
            ws.upsert_user(u);
        }
        for c in snapshot.channels {
            ws.upsert_channel(c);
        }
        for row in snapshot.members {
            let (Some(&ci), Some(&ui)) = (ws.channel_ix.get(&row.0), ws.user_ix.get(&row.1)) else {
                continue;
            };
            ws.users[ui as usize].channels.insert(ci, row.2);
            ws.channels[ci as usize].members.insert(ui);
        }
        for (channel, user) in snapshot.closed_dms {
            if let (Some(&ci), Some(&ui)) = (ws.channel_ix.get(&channel), ws.user_ix.get(&user)) {
                ws.closed_dms.insert((ui, ci));
            }
        }
        ws
    }

    pub fn id(&self) -> &WorkspaceId {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn num_users(&self) -> usize {
        self.users.len()
    }

    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    pub fn has_user(&self, user: &UserId) -> bool {
        self.user_ix.contains_key(user)
    }

    pub fn user(&self, user: &UserId) -> Option<&UserProfile> {
        self.user_ix
            .get(user)
            .map(|&i| &self.users[i as usize].profile)
    }

    pub fn channel(&self, channel: &ChannelId) -> Option<&ChannelSummary> {
        self.channel_ix
            .get(channel)
            .map(|&i| &self.channels[i as usize].summary)
    }

    /// The members of a channel, sorted.
    pub fn members(&self, channel: &ChannelId) -> Vec<UserId> {
        let Some(&ci) = self.channel_ix.get(channel) else {
            return Vec::new();
        };
        let mut out: Vec<UserId> = self.channels[ci as usize]
            .members
            .iter()
            .map(|&u| self.users[u as usize].profile.id.clone())
            .collect();
        out.sort();
        out
    }

    /// The last `seq` `user` marked read in `channel`, if it is a member.
    pub fn last_read(&self, user: &UserId, channel: &ChannelId) -> Option<Seq> {
        let ui = *self.user_ix.get(user)?;
        let ci = *self.channel_ix.get(channel)?;
        self.users[ui as usize].channels.get(&ci).copied()
    }

    fn upsert_user(&mut self, profile: UserProfile) -> UserIdx {
        let json = render_user(&profile);
        let keys = user_keys(&profile);
        if let Some(&i) = self.user_ix.get(&profile.id) {
            let entry = &mut self.users[i as usize];
            for k in entry.keys.drain(..) {
                self.user_keys.remove(&(k, i));
            }
            for k in &keys {
                self.user_keys.insert((k.clone(), i));
            }
            entry.profile = profile;
            entry.json = json;
            entry.keys = keys;
            return i;
        }
        let i = self.users.len() as UserIdx;
        for k in &keys {
            self.user_keys.insert((k.clone(), i));
        }
        self.user_ix.insert(profile.id.clone(), i);
        self.users.push(UserEntry {
            profile,
            json,
            keys,
            channels: BTreeMap::new(),
        });
        i
    }

    fn upsert_channel(&mut self, summary: ChannelSummary) -> ChannelIdx {
        let json_head = render_channel_head(&summary);
        let key = summary.name.to_lowercase();
        if let Some(&i) = self.channel_ix.get(&summary.id) {
            let entry = &mut self.channels[i as usize];
            self.channel_keys
                .remove(&(std::mem::take(&mut entry.key), i));
            self.channel_keys.insert((key.clone(), i));
            entry.summary = summary;
            entry.json_head = json_head;
            entry.key = key;
            return i;
        }
        let i = self.channels.len() as ChannelIdx;
        self.channel_keys.insert((key.clone(), i));
        self.channel_ix.insert(summary.id.clone(), i);
        self.channels.push(ChannelEntry {
            summary,
            json_head,
            key,
            members: HashSet::new(),
        });
        i
    }

    /// Applies a change event of this workspace. Applying an event twice, or one the loaded
    /// snapshot already reflects, changes nothing.
    pub fn apply(&mut self, event: &UserEvent) -> Applied {
        match event {
            // Presence and ephemeral messages are not boot data ([`changes_cached_data`]).
            UserEvent::PresenceReport { .. }
            | UserEvent::PresenceSet { .. }
            | UserEvent::PresenceChanged { .. }
            | UserEvent::Ephemeral { .. } => {}
            UserEvent::UserNotice { user, event, .. } => {
                let Some((channel, open)) = dm_open_event(event) else {
                    return Applied::Applied;
                };
                let (Some(&ci), Some(&ui)) =
                    (self.channel_ix.get(&channel), self.user_ix.get(user))
                else {
                    // Opened: nothing cached to change. Closed: a DM this copy does not hold.
                    return if open {
                        Applied::Applied
                    } else {
                        Applied::NeedsReload
                    };
                };
                if open {
                    self.closed_dms.remove(&(ui, ci));
                } else {
                    self.closed_dms.insert((ui, ci));
                }
            }
            UserEvent::Notice { event, .. } => {
                if let Some(v) = subteam_event(event) {
                    let Some((id, entry)) = SubteamEntry::from_event(&v["subteam"]) else {
                        return Applied::NeedsReload;
                    };
                    self.subteams.insert(id, entry);
                }
            }
            UserEvent::UserChanged { user, .. } => {
                self.upsert_user(user.clone());
            }
            UserEvent::ChannelCreated { channel, .. }
            | UserEvent::ChannelChanged { channel, .. } => {
                self.upsert_channel(channel.clone());
            }
            UserEvent::ChannelJoined { channel, user, .. } => {
                let (Some(&ci), Some(&ui)) = (self.channel_ix.get(channel), self.user_ix.get(user))
                else {
                    return Applied::NeedsReload;
                };
                self.channels[ci as usize].members.insert(ui);
                self.users[ui as usize].channels.entry(ci).or_insert(0);
            }
            UserEvent::ChannelLeft { channel, user, .. } => {
                let (Some(&ci), Some(&ui)) = (self.channel_ix.get(channel), self.user_ix.get(user))
                else {
                    // Nothing cached to remove.
                    return Applied::Applied;
                };
                self.channels[ci as usize].members.remove(&ui);
                self.users[ui as usize].channels.remove(&ci);
                self.closed_dms.remove(&(ui, ci));
            }
            UserEvent::ReadMarked {
                channel, user, seq, ..
            } => {
                let (Some(&ci), Some(&ui)) = (self.channel_ix.get(channel), self.user_ix.get(user))
                else {
                    return Applied::NeedsReload;
                };
                match self.users[ui as usize].channels.get_mut(&ci) {
                    Some(last) => *last = *seq,
                    // A mark is only stored for members: the join event is still to come.
                    None => return Applied::NeedsReload,
                }
            }
        }
        Applied::Applied
    }

    // ---- queries ----

    /// The boot answer of `user` as JSON text (with `"ok":true`): the user itself, the
    /// workspace, the user's channels with read positions, and the users and bots that share
    /// at least one channel with it (the user included).
    pub fn boot_json(&self, user: &UserId) -> Result<String, LookupError> {
        let ui = *self.user_ix.get(user).ok_or(LookupError::UserNotFound)?;
        let me = &self.users[ui as usize];
        let mut seen = vec![0u64; self.users.len().div_ceil(64)];
        seen[ui as usize / 64] |= 1 << (ui % 64);
        let mut out = String::with_capacity(4096);
        out.push_str("{\"ok\":true,\"self\":");
        out.push_str(&me.json);
        out.push_str(",\"team\":");
        out.push_str(&self.team_json);
        out.push_str(",\"channels\":[");
        for (n, (&ci, &last_read)) in me.channels.iter().enumerate() {
            let c = &self.channels[ci as usize];
            for &m in &c.members {
                seen[m as usize / 64] |= 1 << (m % 64);
            }
            if n > 0 {
                out.push(',');
            }
            out.push_str(&c.json_head);
            self.push_dm_fields(&mut out, ci, ui);
            let _ = write!(
                out,
                ",\"is_member\":true,\"num_members\":{},\"last_read\":{last_read}}}",
                c.members.len()
            );
        }
        // Exact size of the two lists, so the answer is written with one allocation.
        let mut extra = 0;
        for (w, word) in seen.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                extra += self.users[i].json.len() + 1;
                bits &= bits - 1;
            }
        }
        // And the user groups' (each id in `self` at most as long as the group's object).
        let subteams: usize = self.subteams.values().map(|g| 2 * g.json.len() + 2).sum();
        out.reserve(extra + subteams + 64);
        let reserved = out.capacity();
        for bots in [false, true] {
            out.push_str(if bots {
                "],\"bots\":["
            } else {
                "],\"users\":["
            });
            let mut first = true;
            for (w, word) in seen.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let u = &self.users[i];
                    if u.profile.is_bot != bots {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&u.json);
                }
            }
        }
        // The user groups: `self` those the user is in, `all` every one (disabled ones too,
        // with their `date_delete`).
        out.push_str("],\"subteams\":{\"self\":[");
        let mine = self
            .subteams
            .iter()
            .filter(|(_, g)| g.enabled && g.members.contains(user));
        for (n, (id, _)) in mine.enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", serde_json::Value::from(id.as_str()));
        }
        out.push_str("],\"all\":[");
        for (n, g) in self.subteams.values().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&g.json);
        }
        out.push_str("]}}");
        debug_assert_eq!(
            out.capacity(),
            reserved,
            "the boot answer outgrew its reserve"
        );
        Ok(out)
    }

    /// The user's JSON object.
    pub fn user_json(&self, user: &UserId) -> Result<&str, LookupError> {
        self.user_ix
            .get(user)
            .map(|&i| &*self.users[i as usize].json)
            .ok_or(LookupError::UserNotFound)
    }

    /// Users (not deleted) whose name, real name or display name, or a word of them, starts
    /// with `prefix` (already [`normalize_prefix`]ed), at most `limit`, best keys first.
    pub fn users_lookup(&self, prefix: &str, limit: usize) -> Vec<&str> {
        let mut found = Vec::new();
        let mut taken = HashSet::new();
        for (key, i) in self.user_keys.range((prefix.to_string(), 0)..) {
            if !key.starts_with(prefix) || found.len() >= limit {
                break;
            }
            let u = &self.users[*i as usize];
            if u.profile.deleted || !taken.insert(*i) {
                continue;
            }
            found.push(&*u.json);
        }
        found
    }

    fn channel_json(&self, ci: ChannelIdx, caller: UserIdx) -> String {
        let c = &self.channels[ci as usize];
        let last_read = self.users[caller as usize].channels.get(&ci);
        let mut out = String::with_capacity(c.json_head.len() + 64);
        out.push_str(&c.json_head);
        self.push_dm_fields(&mut out, ci, caller);
        let _ = write!(
            out,
            ",\"is_member\":{},\"num_members\":{}",
            last_read.is_some(),
            c.members.len()
        );
        if let Some(seq) = last_read {
            let _ = write!(out, ",\"last_read\":{seq}");
        }
        out.push('}');
        out
    }

    /// For a DM, whether `caller` has it open (`is_open`, as Slack's sidebar shows it: a
    /// member that closed it sees `false` until it opens it or a message arrives), and for a
    /// 1:1 DM Slack's `user` field: the other member as `caller` sees it (the caller itself
    /// in a DM with oneself).
    fn push_dm_fields(&self, out: &mut String, ci: ChannelIdx, caller: UserIdx) {
        let c = &self.channels[ci as usize];
        if !is_direct(&c.summary) {
            return;
        }
        if c.members.contains(&caller) {
            let open = !self.closed_dms.contains(&(caller, ci));
            let _ = write!(out, ",\"is_open\":{open}");
        }
        if !is_im(&c.summary) {
            return;
        }
        let other = c
            .members
            .iter()
            .find(|&&m| m != caller)
            .or_else(|| c.members.get(&caller));
        if let Some(&m) = other {
            out.push_str(",\"user\":");
            out.push_str(&json!(self.users[m as usize].profile.id).to_string());
        }
    }

    fn visible(&self, ci: ChannelIdx, caller: UserIdx) -> bool {
        let c = &self.channels[ci as usize];
        !c.summary.is_private || c.members.contains(&caller)
    }

    /// Channels `caller` may see (public ones, and private ones it is in) whose name starts
    /// with `prefix`, at most `limit`, by name.
    pub fn channels_lookup(
        &self,
        caller: &UserId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, LookupError> {
        let me = *self.user_ix.get(caller).ok_or(LookupError::UserNotFound)?;
        let mut found = Vec::new();
        for (key, ci) in self.channel_keys.range((prefix.to_string(), 0)..) {
            if !key.starts_with(prefix) || found.len() >= limit {
                break;
            }
            if self.visible(*ci, me) {
                found.push(self.channel_json(*ci, me));
            }
        }
        Ok(found)
    }

    /// One channel as `caller` sees it: `channel_not_found` when there is no such channel in
    /// this workspace or it is private and `caller` is not in it.
    pub fn channel_info(
        &self,
        caller: &UserId,
        channel: &ChannelId,
    ) -> Result<String, LookupError> {
        let me = *self.user_ix.get(caller).ok_or(LookupError::UserNotFound)?;
        let ci = *self
            .channel_ix
            .get(channel)
            .ok_or(LookupError::ChannelNotFound)?;
        if !self.visible(ci, me) {
            return Err(LookupError::ChannelNotFound);
        }
        Ok(self.channel_json(ci, me))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;
    use shared::ids::Ts;
    use shared::protocol::MemberRow;

    pub(crate) fn profile(id: &str, name: &str, real: &str, bot: bool) -> UserProfile {
        UserProfile {
            id: UserId::from(id),
            name: name.into(),
            real_name: real.into(),
            display_name: String::new(),
            is_bot: bot,
            is_admin: false,
            deleted: false,
            email: String::new(),
        }
    }

    pub(crate) fn channel(id: &str, name: &str, private: bool) -> ChannelSummary {
        ChannelSummary {
            id: ChannelId::from(id),
            name: name.into(),
            is_private: private,
            is_archived: false,
            topic: String::new(),
            purpose: String::new(),
            created: Ts(1_700_000_000_000_000),
            creator: UserId::from("UALICE"),
        }
    }

    /// alice, bob, carol, dave and a bot; #general (alice, bob, bot), #secret (private:
    /// alice, carol), #random (dave alone).
    pub(crate) fn snapshot() -> WorkspaceSnapshot {
        let row = |c: &str, u: &str, seq| MemberRow(ChannelId::from(c), UserId::from(u), seq);
        WorkspaceSnapshot {
            workspace: WorkspaceId::from("TACME"),
            workspace_name: "acme".into(),
            users: vec![
                profile("UALICE", "alice", "Alice Liddell", false),
                profile("UBOB", "bob", "Bob Builder", false),
                profile("UCAROL", "carol", "Carol Ann", false),
                profile("UDAVE", "dave", "Dave Alvarez", false),
                profile("UBOT", "alertbot", "Alert Bot", true),
            ],
            channels: vec![
                channel("CGENERAL", "general", false),
                channel("CSECRET", "secret", true),
                channel("CRANDOM", "random", false),
            ],
            members: vec![
                row("CGENERAL", "UALICE", 5),
                row("CGENERAL", "UBOB", 0),
                row("CGENERAL", "UBOT", 0),
                row("CSECRET", "UALICE", 2),
                row("CSECRET", "UCAROL", 0),
                row("CRANDOM", "UDAVE", 0),
                row("CRANDOM", "UNOBODY", 0),
            ],
            usergroups: vec![],
            closed_dms: vec![],
        }
    }

    fn boot(ws: &WorkspaceData, user: &str) -> Value {
        serde_json::from_str(&ws.boot_json(&UserId::from(user)).unwrap()).unwrap()
    }

    fn ids(v: &Value, key: &str) -> Vec<String> {
        let mut out: Vec<String> = v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    /// The user groups come in the boot data: `self` those the caller is in (enabled), `all`
    /// every one, as Slack's objects without the member list; kept fresh by the groups'
    /// events, and a group too large for its event to list whole reloads the workspace.
    #[test]
    fn boot_lists_the_user_groups_and_the_callers_own() {
        use shared::store::UserGroup;
        let group = |id: &str, users: &[&str], disabled: bool| UserGroup {
            id: id.into(),
            workspace: WorkspaceId::from("TACME"),
            name: format!("group {id}"),
            handle: id.to_lowercase(),
            description: String::new(),
            channels: vec![ChannelId::from("CGENERAL")],
            users: users.iter().map(|u| UserId::from(*u)).collect(),
            created: Ts(1_700_000_000_000_000),
            created_by: UserId::from("UALICE"),
            updated: Ts(1_700_000_000_000_000),
            updated_by: UserId::from("UALICE"),
            disabled: disabled.then(|| (Ts(1_700_000_100_000_000), UserId::from("UALICE"))),
        };
        let mut snap = snapshot();
        snap.usergroups = vec![
            group("SONCALL", &["UALICE", "UBOB"], false),
            group("SOLD", &["UALICE"], true),
        ];
        let mut ws = WorkspaceData::from_snapshot(snap);
        let v = boot(&ws, "UALICE");
        assert_eq!(v["subteams"]["self"], json!(["SONCALL"]), "{v}");
        let all = v["subteams"]["all"].as_array().unwrap();
        assert_eq!(all.len(), 2, "{v}");
        let oncall = all.iter().find(|g| g["id"] == "SONCALL").unwrap();
        assert_eq!(oncall["handle"], "soncall");
        assert_eq!(oncall["user_count"], 2);
        assert!(oncall.get("users").is_none(), "{oncall}");
        let old = all.iter().find(|g| g["id"] == "SOLD").unwrap();
        assert_ne!(old["date_delete"], 0, "{old}");
        assert_eq!(boot(&ws, "UCAROL")["subteams"]["self"], json!([]));

        // carol is added: the event carries the whole group.
        let changed = group("SONCALL", &["UALICE", "UBOB", "UCAROL"], false);
        let event = |kind: &str, subteam: Value| UserEvent::Notice {
            workspace: WorkspaceId::from("TACME"),
            members_of: None,
            event: json!({ "type": kind, "subteam": subteam }).to_string(),
        };
        let updated = event("subteam_updated", changed.slack_json(Some(500), true));
        assert!(changes_cached_data(&updated));
        assert_eq!(ws.apply(&updated), Applied::Applied);
        assert_eq!(boot(&ws, "UCAROL")["subteams"]["self"], json!(["SONCALL"]));
        let created = event(
            "subteam_created",
            group("SNEW", &["UDAVE"], false).slack_json(Some(500), true),
        );
        assert_eq!(ws.apply(&created), Applied::Applied);
        assert_eq!(boot(&ws, "UDAVE")["subteams"]["self"], json!(["SNEW"]));
        assert_eq!(
            boot(&ws, "UDAVE")["subteams"]["all"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // An event that lists only part of the members: loaded again.
        let big = changed.slack_json(Some(2), true);
        assert_eq!(
            ws.apply(&event("subteam_updated", big)),
            Applied::NeedsReload
        );
        // Other notices change nothing here.
        let other = UserEvent::Notice {
            workspace: WorkspaceId::from("TACME"),
            members_of: None,
            event: json!({ "type": "emoji_changed" }).to_string(),
        };
        assert!(!changes_cached_data(&other));
        assert_eq!(ws.apply(&other), Applied::Applied);
    }

    /// [`snapshot`] with direct messages: alice and bob (`CDM`), alice alone (`CSELF`), and
    /// alice, bob and carol (`CGROUP`).
    fn snapshot_with_dms() -> WorkspaceSnapshot {
        let mut snap = snapshot();
        let row = |c: &str, u: &str| MemberRow(ChannelId::from(c), UserId::from(u), 0);
        snap.channels.push(channel("CDM", "dm-ualice-ubob", true));
        snap.channels.push(channel("CSELF", "dm-ualice", true));
        snap.channels
            .push(channel("CGROUP", "mpdm-ualice-ubob-ucarol", true));
        for r in [
            row("CDM", "UALICE"),
            row("CDM", "UBOB"),
            row("CSELF", "UALICE"),
            row("CGROUP", "UALICE"),
            row("CGROUP", "UBOB"),
            row("CGROUP", "UCAROL"),
        ] {
            snap.members.push(r);
        }
        snap
    }

    #[test]
    fn direct_messages_say_their_kind_and_their_other_member() {
        let ws = WorkspaceData::from_snapshot(snapshot_with_dms());
        let find = |v: &Value, id: &str| {
            v["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .unwrap()
                .clone()
        };
        let kind = |c: &Value| {
            (
                c["is_channel"].as_bool().unwrap(),
                c["is_im"].as_bool().unwrap(),
                c["is_mpim"].as_bool().unwrap(),
            )
        };
        for (user, other) in [("UALICE", "UBOB"), ("UBOB", "UALICE")] {
            let b = boot(&ws, user);
            let dm = find(&b, "CDM");
            assert_eq!(kind(&dm), (false, true, false), "{dm}");
            assert_eq!(dm["user"], other, "{dm}");
            let info: Value = serde_json::from_str(
                &ws.channel_info(&UserId::from(user), &ChannelId::from("CDM"))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(info["user"], other, "{info}");
            assert_eq!(info["is_im"], true, "{info}");
            let group = find(&b, "CGROUP");
            assert_eq!(kind(&group), (false, false, true), "{group}");
            assert!(group.get("user").is_none(), "{group}");
            let general = find(&b, "CGENERAL");
            assert_eq!(kind(&general), (true, false, false), "{general}");
            assert!(general.get("user").is_none(), "{general}");
        }
        assert_eq!(find(&boot(&ws, "UALICE"), "CSELF")["user"], "UALICE");
    }

    #[test]
    fn a_closed_dm_says_is_open_false_to_its_closer_alone() {
        let mut snap = snapshot_with_dms();
        // Alice closed the DM with Bob; a row naming a user this copy does not hold is skipped.
        snap.closed_dms = vec![
            (ChannelId::from("CDM"), UserId::from("UALICE")),
            (ChannelId::from("CDM"), UserId::from("UNOBODY")),
        ];
        let mut ws = WorkspaceData::from_snapshot(snap);
        let is_open = |ws: &WorkspaceData, user: &str, channel: &str| {
            let b = boot(ws, user);
            let in_boot = b["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == channel)
                .unwrap()["is_open"]
                .clone();
            let info: Value = serde_json::from_str(
                &ws.channel_info(&UserId::from(user), &ChannelId::from(channel))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(info["is_open"], in_boot, "{info}");
            in_boot.as_bool().unwrap()
        };
        assert!(!is_open(&ws, "UALICE", "CDM"));
        assert!(is_open(&ws, "UBOB", "CDM"), "Bob's stays open");
        assert!(is_open(&ws, "UCAROL", "CGROUP"));
        // Channels carry no `is_open`.
        let b = boot(&ws, "UALICE");
        let general = b["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "CGENERAL")
            .unwrap();
        assert!(general.get("is_open").is_none(), "{general}");

        let notice = |user: &str, kind: &str, channel: &str| UserEvent::UserNotice {
            workspace: WorkspaceId::from("TACME"),
            user: UserId::from(user),
            event: json!({"type": kind, "user": user, "channel": channel, "event_ts": "1.000001"})
                .to_string(),
        };
        // The Web API's notices open and close them; others change nothing.
        for (event, open) in [
            (notice("UCAROL", "mpim_close", "CGROUP"), false),
            (notice("UCAROL", "mpim_close", "CGROUP"), false),
            (notice("UCAROL", "mpim_marked", "CGROUP"), false),
            (notice("UCAROL", "mpim_open", "CGROUP"), true),
        ] {
            assert_eq!(ws.apply(&event), Applied::Applied);
            assert_eq!(is_open(&ws, "UCAROL", "CGROUP"), open, "{event:?}");
            assert!(is_open(&ws, "UALICE", "CGROUP"));
        }
        // Only the opening and closing ones are taken under the workspace's lock.
        assert!(changes_cached_data(&notice(
            "UCAROL",
            "mpim_close",
            "CGROUP"
        )));
        assert!(changes_cached_data(&notice("UALICE", "im_open", "CDM")));
        assert!(!changes_cached_data(&notice(
            "UCAROL",
            "mpim_marked",
            "CGROUP"
        )));
        assert_eq!(
            ws.apply(&notice("UALICE", "im_open", "CDM")),
            Applied::Applied
        );
        assert!(is_open(&ws, "UALICE", "CDM"));
        assert_eq!(
            ws.apply(&notice("UALICE", "im_close", "CDM")),
            Applied::Applied
        );
        assert!(!is_open(&ws, "UALICE", "CDM"));
        // A DM this copy does not hold: closing it needs a reload, opening it does not.
        assert_eq!(
            ws.apply(&notice("UALICE", "im_close", "CUNKNOWN")),
            Applied::NeedsReload
        );
        assert_eq!(
            ws.apply(&notice("UALICE", "im_open", "CUNKNOWN")),
            Applied::Applied
        );
        // Leaving forgets it: back in, the DM is open.
        ws.apply(&UserEvent::ChannelLeft {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CDM"),
            user: UserId::from("UALICE"),
        });
        ws.apply(&UserEvent::ChannelJoined {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CDM"),
            user: UserId::from("UALICE"),
            channel_name: "dm-ualice-ubob".into(),
            after_seq: None,
            private: true,
        });
        assert!(is_open(&ws, "UALICE", "CDM"));
    }

    #[test]
    fn boot_is_sized_to_the_user() {
        let ws = WorkspaceData::from_snapshot(snapshot());
        let alice = boot(&ws, "UALICE");
        assert_eq!(alice["ok"], true);
        assert_eq!(alice["self"]["id"], "UALICE");
        assert_eq!(alice["team"], json!({"id": "TACME", "name": "acme"}));
        assert_eq!(ids(&alice, "channels"), ["CGENERAL", "CSECRET"]);
        // alice shares #general with bob and the bot, #secret with carol; not dave.
        assert_eq!(ids(&alice, "users"), ["UALICE", "UBOB", "UCAROL"]);
        assert_eq!(ids(&alice, "bots"), ["UBOT"]);
        let general = alice["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "CGENERAL")
            .unwrap();
        assert_eq!(general["last_read"], 5);
        assert_eq!(general["num_members"], 3);
        assert_eq!(general["is_private"], false);

        let dave = boot(&ws, "UDAVE");
        assert_eq!(ids(&dave, "users"), ["UDAVE"]);
        assert_eq!(ids(&dave, "bots"), Vec::<String>::new());
        // The unknown member of #random was skipped.
        assert_eq!(dave["channels"][0]["num_members"], 1);
        assert_eq!(
            ws.boot_json(&UserId::from("UNOBODY")),
            Err(LookupError::UserNotFound)
        );
    }

    #[test]
    fn events_change_what_boot_and_lookups_answer() {
        let mut ws = WorkspaceData::from_snapshot(snapshot());
        let mut bob = profile("UBOB", "bob", "Robert Builder", false);
        bob.display_name = "bobby".into();
        bob.email = "bob@acme.example".into();
        let ev = |e| e;
        assert_eq!(
            ws.apply(&ev(UserEvent::UserChanged {
                workspace: WorkspaceId::from("TACME"),
                user: bob.clone(),
            })),
            Applied::Applied
        );
        let alice = boot(&ws, "UALICE");
        let b = alice["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == "UBOB")
            .unwrap()
            .clone();
        assert_eq!(b["real_name"], "Robert Builder");
        assert_eq!(b["display_name"], "bobby");
        assert_eq!(b["email"], "bob@acme.example");
        // A user without an email has no such field.
        let a = alice["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == "UALICE")
            .unwrap()
            .clone();
        assert!(a.get("email").is_none(), "{a}");
        // Old keys are gone, new ones found.
        assert!(ws.users_lookup("bob b", 10).is_empty());
        assert_eq!(ws.users_lookup("rob", 10).len(), 1);
        assert_eq!(ws.users_lookup("bobby", 10).len(), 1);

        // dave joins #general: he now shares it with alice.
        let joined = UserEvent::ChannelJoined {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CGENERAL"),
            user: UserId::from("UDAVE"),
            channel_name: "general".into(),
            after_seq: None,
            private: false,
        };
        assert_eq!(ws.apply(&joined), Applied::Applied);
        assert_eq!(ws.apply(&joined), Applied::Applied, "idempotent");
        assert_eq!(
            ids(&boot(&ws, "UALICE"), "users"),
            ["UALICE", "UBOB", "UCAROL", "UDAVE"]
        );
        // ...and leaves again.
        ws.apply(&UserEvent::ChannelLeft {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CGENERAL"),
            user: UserId::from("UDAVE"),
        });
        assert_eq!(ids(&boot(&ws, "UDAVE"), "channels"), ["CRANDOM"]);

        // A new channel, then its creator joins; then it is renamed and archived.
        let mut c = channel("CNEW", "launch", false);
        ws.apply(&UserEvent::ChannelCreated {
            workspace: WorkspaceId::from("TACME"),
            channel: c.clone(),
        });
        ws.apply(&UserEvent::ChannelJoined {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CNEW"),
            user: UserId::from("UCAROL"),
            channel_name: "launch".into(),
            after_seq: None,
            private: false,
        });
        c.name = "launch-2".into();
        c.is_archived = true;
        ws.apply(&UserEvent::ChannelChanged {
            workspace: WorkspaceId::from("TACME"),
            channel: c,
        });
        let carol = boot(&ws, "UCAROL");
        let launch = carol["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "CNEW")
            .unwrap()
            .clone();
        assert_eq!(launch["name"], "launch-2");
        assert_eq!(launch["is_archived"], true);
        let alice = UserId::from("UALICE");
        assert!(ws.channels_lookup(&alice, "launch-", 10).unwrap().len() == 1);
        assert!(ws.channels_lookup(&alice, "launch", 10).unwrap()[0].contains("launch-2"));

        // Read positions.
        ws.apply(&UserEvent::ReadMarked {
            workspace: WorkspaceId::from("TACME"),
            channel: ChannelId::from("CSECRET"),
            user: UserId::from("UALICE"),
            seq: 9,
        });
        assert_eq!(ws.last_read(&alice, &ChannelId::from("CSECRET")), Some(9));

        // Events naming what this copy does not hold ask for a reload.
        assert_eq!(
            ws.apply(&UserEvent::ChannelJoined {
                workspace: WorkspaceId::from("TACME"),
                channel: ChannelId::from("CUNKNOWN"),
                user: UserId::from("UALICE"),
                channel_name: "x".into(),
                after_seq: None,
                private: false,
            }),
            Applied::NeedsReload
        );
        assert_eq!(
            ws.apply(&UserEvent::ReadMarked {
                workspace: WorkspaceId::from("TACME"),
                channel: ChannelId::from("CRANDOM"),
                user: UserId::from("UALICE"),
                seq: 1,
            }),
            Applied::NeedsReload
        );
    }

    #[test]
    fn prefix_lookups_match_names_and_words_case_insensitively() {
        let ws = WorkspaceData::from_snapshot(snapshot());
        let names = |found: Vec<&str>| {
            let mut v: Vec<String> = found
                .iter()
                .map(|j| {
                    serde_json::from_str::<Value>(j).unwrap()["name"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            v.sort();
            v
        };
        // "al": alice (name), alertbot (name), dave (Alvarez), alice again via Alice: once.
        assert_eq!(
            names(ws.users_lookup(&normalize_prefix(" AL "), 20)),
            ["alertbot", "alice", "dave"]
        );
        assert_eq!(ws.users_lookup("al", 2).len(), 2);
        assert_eq!(names(ws.users_lookup("liddell", 20)), ["alice"]);
        assert!(ws.users_lookup("zz", 20).is_empty());
        // Deleted users are not offered.
        let mut ws = ws;
        let mut gone = profile("UDAVE", "dave", "Dave Alvarez", false);
        gone.deleted = true;
        ws.apply(&UserEvent::UserChanged {
            workspace: WorkspaceId::from("TACME"),
            user: gone,
        });
        assert_eq!(names(ws.users_lookup("al", 20)), ["alertbot", "alice"]);
    }

    #[test]
    fn private_channels_are_visible_to_members_only() {
        let ws = WorkspaceData::from_snapshot(snapshot());
        let (alice, bob) = (UserId::from("UALICE"), UserId::from("UBOB"));
        let secret = ChannelId::from("CSECRET");
        let info: Value = serde_json::from_str(&ws.channel_info(&alice, &secret).unwrap()).unwrap();
        assert_eq!(info["is_member"], true);
        assert_eq!(info["last_read"], 2);
        assert_eq!(
            ws.channel_info(&bob, &secret),
            Err(LookupError::ChannelNotFound)
        );
        assert_eq!(
            ws.channel_info(&bob, &ChannelId::from("COTHER")),
            Err(LookupError::ChannelNotFound)
        );
        let found = ws.channels_lookup(&bob, "", 10).unwrap();
        assert_eq!(found.len(), 2, "general and random, not secret: {found:?}");
        assert_eq!(ws.channels_lookup(&alice, "s", 10).unwrap().len(), 1);
        let info: Value =
            serde_json::from_str(&ws.channel_info(&bob, &ChannelId::from("CRANDOM")).unwrap())
                .unwrap();
        assert_eq!(info["is_member"], false);
        assert!(info.get("last_read").is_none());
    }
}
