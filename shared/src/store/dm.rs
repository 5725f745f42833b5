//! Whether a closed direct message is open again. A member closes a DM
//! (`conversations.close`) at the channel's last `seq` then ([`MessageStore::dm_closed`]),
//! and the first message shown after that point opens it again, as Slack's sidebar does:
//! nothing is written per message, so the point is compared with the history when asked
//! (by the Web API, and by the snapshot that Flannel caches).

use super::{HistoryQuery, MessageStore, StorageResult};
use crate::ids::{ChannelId, Seq, WorkspaceId};
use crate::protocol::client::{unread_effect, Reader, UnreadEffect};

/// How far past the point where a DM was closed a message that opened it again is looked for
/// (in entries: reactions, edits and replies in threads are entries too).
pub const REOPEN_LOOKAHEAD: u32 = 1000;

/// The `seq` of the first message shown in the channel after `seq` (looked for in the next
/// [`REOPEN_LOOKAHEAD`] entries): any author's message, not a reaction, an edit or a reply
/// kept in its thread.
pub async fn first_message_after(
    store: &dyn MessageStore,
    workspace: &WorkspaceId,
    channel: &ChannelId,
    seq: Seq,
) -> StorageResult<Option<Seq>> {
    // A few entries at a time: the first after the point is usually the message.
    const PAGE: u32 = 20;
    let mut after = seq;
    while after - seq < u64::from(REOPEN_LOOKAHEAD) {
        let query = HistoryQuery {
            after_seq: Some(after),
            limit: PAGE,
            ..HistoryQuery::default()
        };
        let entries = store.history(workspace, channel, &query).await?;
        // Counted for no reader: every author's message counts.
        if let Some(m) = entries
            .iter()
            .find(|m| matches!(unread_effect(m, &Reader::NOBODY), UnreadEffect::Adds(..)))
        {
            return Ok(Some(m.seq));
        }
        match entries.last() {
            Some(last) if entries.len() == PAGE as usize => after = last.seq,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Whether a member that closed the DM at `closed` (`None`: never closed, or opened since)
/// has it open now.
pub async fn is_open(
    store: &dyn MessageStore,
    workspace: &WorkspaceId,
    channel: &ChannelId,
    closed: Option<Seq>,
) -> StorageResult<bool> {
    match closed {
        None => Ok(true),
        Some(seq) => Ok(first_message_after(store, workspace, channel, seq)
            .await?
            .is_some()),
    }
}
