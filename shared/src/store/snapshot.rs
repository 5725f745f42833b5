//! A workspace's cacheable state read in one go: what the Web API's
//! `internal.flannel.snapshot` answers and what Flannel caches.

use super::{Channel, MessageStore, StorageResult, User};
use crate::ids::WorkspaceId;
use crate::protocol::{ChannelSummary, MemberRow, UserProfile, WorkspaceSnapshot};

/// Channels read per store call.
const CHANNEL_PAGE: u32 = 10_000;

impl User {
    /// The user as change events and caches carry it.
    pub fn profile(&self) -> UserProfile {
        UserProfile {
            id: self.id.clone(),
            name: self.name.clone(),
            real_name: self.real_name.clone(),
            display_name: self.display_name.clone(),
            is_bot: self.is_bot,
            is_admin: self.is_admin,
            deleted: self.deleted,
            email: self.email.clone(),
        }
    }
}

impl Channel {
    /// The channel as change events and caches carry it.
    pub fn summary(&self) -> ChannelSummary {
        ChannelSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            is_private: self.is_private,
            is_archived: self.is_archived,
            topic: self.topic.clone(),
            purpose: self.purpose.clone(),
            created: self.created,
            creator: self.creator.clone(),
        }
    }
}

/// Users, channels, memberships (with read positions), user groups and closed DMs of
/// `workspace`; `None` when there is no such workspace.
pub async fn workspace_snapshot(
    store: &dyn MessageStore,
    workspace: &WorkspaceId,
) -> StorageResult<Option<WorkspaceSnapshot>> {
    let Some(ws) = store.workspace(workspace).await? else {
        return Ok(None);
    };
    let users = store.users(&ws.id).await?;
    let mut channels = Vec::new();
    let mut after = None;
    loop {
        let page = store.channels(&ws.id, after.as_ref(), CHANNEL_PAGE).await?;
        let done = page.len() < CHANNEL_PAGE as usize;
        after = page.last().map(|c| c.id.clone());
        channels.extend(page);
        if done {
            break;
        }
    }
    let members = store.workspace_members(&ws.id).await?;
    let mut closed_dms = Vec::new();
    for m in &members {
        if !super::dm::is_open(store, &ws.id, &m.channel, m.closed).await? {
            closed_dms.push((m.channel.clone(), m.user.clone()));
        }
    }
    let usergroups = store.usergroups(&ws.id).await?.groups;
    Ok(Some(WorkspaceSnapshot {
        workspace: ws.id,
        workspace_name: ws.name,
        users: users.iter().map(User::profile).collect(),
        channels: channels.iter().map(Channel::summary).collect(),
        members: members
            .into_iter()
            .map(|m| MemberRow(m.channel, m.user, m.last_read))
            .collect(),
        usergroups,
        closed_dms,
    }))
}
