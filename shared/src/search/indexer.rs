//! Tails change feeds (store shards) into an index: read each feed's changes after the
//! index's position in it, add them all, commit once with every new position. Polls quickly
//! when idle, so a message is searchable well within a second of its ack.
//!
//! An index follows one shard or all of them. One index for all shards commits once per
//! round whatever the number of shards: each commit makes a Tantivy segment, whose fixed
//! cost (a 2^19-slot term table allocated, scanned and freed, a dozen files created and later
//! merged away) does not shrink with the documents in it.

use std::sync::Arc;
use std::time::Duration;

use super::SearchIndex;
use crate::shutdown::Shutdown;
use crate::store::{Change, SharedStore};

/// Most changes read from one feed per round.
const BATCH: u32 = 2000;
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Applies every pending change of `shards` (the feeds `index` follows, in the order its
/// positions record them) once; returns how many it applied.
pub async fn catch_up(
    store: &SharedStore,
    index: &Arc<SearchIndex>,
    shards: &[u32],
) -> anyhow::Result<usize> {
    let mut applied = 0;
    loop {
        let mut positions = index.positions(shards.len());
        let mut changes: Vec<Change> = Vec::new();
        let mut more = false;
        for (i, &shard) in shards.iter().enumerate() {
            let page = store.changes_since(shard, positions[i], BATCH).await?;
            more |= page.len() >= BATCH as usize;
            if let Some(last) = page.last() {
                positions[i] = last.id;
            }
            changes.extend(page);
        }
        if changes.is_empty() {
            return Ok(applied);
        }
        let num = changes.len();
        // A commit waits for the indexing threads and syncs files: on the blocking pool, so
        // it does not hold up one of the runtime's workers (the post path runs on them).
        let index = index.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            index.apply(changes.iter().map(|c| (&c.message, c.deleted)))?;
            index.commit_positions(&positions)?;
            Ok(())
        })
        .await??;
        applied += num;
        if !more {
            return Ok(applied);
        }
    }
}

/// Runs until `shutdown`, keeping `index` up to date with `shards`.
pub async fn run(
    store: SharedStore,
    index: Arc<SearchIndex>,
    shards: Vec<u32>,
    shutdown: Shutdown,
) {
    loop {
        match catch_up(&store, &index, &shards).await {
            Ok(n) if n > 0 => tracing::debug!(?shards, applied = n, "search index caught up"),
            Ok(_) => {}
            Err(e) => tracing::warn!(?shards, error = %e, "search indexing failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChannelId, Ts, UserId, WorkspaceId};
    use crate::protocol::Message;
    use crate::search::SearchRequest;
    use crate::store::sqlite::SqliteStore;

    fn post(ws: &WorkspaceId, ch: &ChannelId, seq: u64, text: &str) -> Message {
        Message {
            workspace: ws.clone(),
            channel: ch.clone(),
            seq,
            ts: Ts(seq),
            user: UserId::from("UA"),
            text: text.into(),
            client_msg_id: None,
            thread_ts: None,
            kind: crate::protocol::MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    /// How many messages of `channels` hold `word`.
    fn matches(index: &SearchIndex, ws: &WorkspaceId, channels: &[ChannelId], word: &str) -> usize {
        index
            .search(&SearchRequest {
                workspace: ws.clone(),
                channels: channels.to_vec(),
                limit: 100,
                ..crate::search::tests::request(&[word])
            })
            .unwrap()
            .total
    }

    #[tokio::test]
    async fn a_reopened_index_resumes_from_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store"), 1).unwrap());
        let ws = store.create_workspace("w").await.unwrap().id;
        let ch = ChannelId::from("CIDX");
        for seq in 1..=3 {
            store.append(&post(&ws, &ch, seq, "alpha")).await.unwrap();
        }
        let shard = store.shard_of(&ws, &ch);
        let index_dir = dir.path().join("index");
        {
            let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
            assert_eq!(catch_up(&store, &index, &[shard]).await.unwrap(), 3);
            assert_eq!(catch_up(&store, &index, &[shard]).await.unwrap(), 0);
        }
        // Acknowledged while the indexer was down.
        store.append(&post(&ws, &ch, 4, "beta")).await.unwrap();
        let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
        assert_eq!(
            catch_up(&store, &index, &[shard]).await.unwrap(),
            1,
            "only what it had not applied"
        );
        assert_eq!(matches(&index, &ws, &[ch], "beta"), 1);
        assert_eq!(index.num_docs(), 4);
    }

    /// One index following every shard of a store that spreads a workspace's channels: one
    /// commit per round holds all shards' changes and each shard's position, and a reopened
    /// index applies only what came after.
    #[tokio::test]
    async fn one_index_follows_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store"), 4).unwrap());
        let ws = store.create_workspace("w").await.unwrap().id;
        let channels: Vec<ChannelId> = (0..12).map(|n| ChannelId(format!("CALL{n}"))).collect();
        for ch in &channels {
            store.append(&post(&ws, ch, 1, "gamma")).await.unwrap();
        }
        let shards: Vec<u32> = (0..store.num_shards()).collect();
        let used: std::collections::BTreeSet<u32> =
            channels.iter().map(|c| store.shard_of(&ws, c)).collect();
        assert!(used.len() > 1, "the channels lie in several shards");
        let index_dir = dir.path().join("index");
        {
            let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
            assert_eq!(catch_up(&store, &index, &shards).await.unwrap(), 12);
            assert_eq!(matches(&index, &ws, &channels, "gamma"), 12);
            let positions = index.positions(shards.len());
            for &s in &shards {
                let last = store
                    .changes_since(s, 0, 100)
                    .await
                    .unwrap()
                    .last()
                    .map_or(0, |c| c.id);
                assert_eq!(positions[s as usize], last, "shard {s}");
            }
        }
        for ch in &channels[..5] {
            store.append(&post(&ws, ch, 2, "delta")).await.unwrap();
        }
        let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
        assert_eq!(catch_up(&store, &index, &shards).await.unwrap(), 5);
        assert_eq!(matches(&index, &ws, &channels, "gamma"), 12);
        assert_eq!(matches(&index, &ws, &channels, "delta"), 5);
        assert_eq!(index.num_docs(), 17);
    }
}
