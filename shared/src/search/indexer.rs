//! Tails one shard's change feed into its index: read changes after the index's last applied
//! id, add them, commit with the new id. Polls quickly when idle, so a message is searchable
//! well within a second of its ack.

use std::sync::Arc;
use std::time::Duration;

use super::SearchIndex;
use crate::shutdown::Shutdown;
use crate::store::SharedStore;

const BATCH: u32 = 2000;
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Applies every pending change of `shard` once; returns how many it applied.
pub async fn catch_up(
    store: &SharedStore,
    index: &Arc<SearchIndex>,
    shard: u32,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    loop {
        let after = index.last_change_id();
        let changes = store.changes_since(shard, after, BATCH).await?;
        let Some(last) = changes.last().map(|c| c.id) else {
            return Ok(applied);
        };
        let num = changes.len();
        // A commit waits for the indexing threads and syncs files: on the blocking pool, so
        // it does not hold up one of the runtime's workers (the post path runs on them).
        let index = index.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for change in &changes {
                if change.deleted {
                    index.remove(&change.message.channel, change.message.seq)?;
                } else {
                    index.upsert(&change.message)?;
                }
            }
            index.commit(last)?;
            Ok(())
        })
        .await??;
        applied += num;
        if num < BATCH as usize {
            return Ok(applied);
        }
    }
}

/// Runs until `shutdown`, keeping `index` up to date with `shard`.
pub async fn run(store: SharedStore, index: Arc<SearchIndex>, shard: u32, shutdown: Shutdown) {
    loop {
        match catch_up(&store, &index, shard).await {
            Ok(n) if n > 0 => tracing::debug!(shard, applied = n, "search index caught up"),
            Ok(_) => {}
            Err(e) => tracing::warn!(shard, error = %e, "search indexing failed; retrying"),
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
    use crate::ids::{ChannelId, Ts, UserId};
    use crate::protocol::Message;
    use crate::search::{SearchRequest, SortBy};
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn a_reopened_index_resumes_from_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store"), 1).unwrap());
        let ws = store.create_workspace("w").await.unwrap();
        let ch = ChannelId::from("CIDX");
        let post = |seq: u64, text: &str| Message {
            workspace: ws.id.clone(),
            channel: ch.clone(),
            seq,
            ts: Ts(seq),
            user: UserId::from("UA"),
            text: text.into(),
            client_msg_id: None,
            thread_ts: None,
            kind: crate::protocol::MessageKind::Posted,
        };
        for seq in 1..=3 {
            store.append(&post(seq, "alpha")).await.unwrap();
        }
        let shard = store.shard_of(&ws.id, &ch);
        let index_dir = dir.path().join("index");
        {
            let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
            assert_eq!(catch_up(&store, &index, shard).await.unwrap(), 3);
            assert_eq!(catch_up(&store, &index, shard).await.unwrap(), 0);
        }
        // Acknowledged while the indexer was down.
        store.append(&post(4, "beta")).await.unwrap();
        let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
        assert_eq!(
            catch_up(&store, &index, shard).await.unwrap(),
            1,
            "only what it had not applied"
        );
        let r = index
            .search(&SearchRequest {
                workspace: ws.id.clone(),
                words: vec!["beta".into()],
                phrases: vec![],
                excluded: vec![],
                channels: vec![ch.clone()],
                users: vec![],
                after: None,
                before: None,
                has_link: false,
                sort: SortBy::Timestamp,
                descending: true,
                offset: 0,
                limit: 10,
                highlight: false,
            })
            .unwrap();
        assert_eq!(r.total, 1);
        assert_eq!(index.num_docs(), 4);
    }
}
