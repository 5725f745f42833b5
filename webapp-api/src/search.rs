//! The Web API's search indexes: one per store shard, kept current by indexer tasks that tail
//! the store's change feed (so messages acked by any channel server are found, and an index
//! reopened after a crash catches up from its last commit).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shared::ids::{ChannelId, WorkspaceId};
use shared::search::SearchIndex;
use shared::shutdown::Shutdown;
use shared::store::SharedStore;

pub struct Search {
    indexes: Vec<Arc<SearchIndex>>,
}

impl Search {
    /// Opens (creating) `dir/shard-<n>` for each of the store's shards.
    pub fn open(dir: &Path, store: &SharedStore) -> anyhow::Result<Search> {
        let indexes = (0..store.num_shards())
            .map(|n| {
                let path = dir.join(format!("shard-{n}"));
                SearchIndex::open(&path)
                    .map(Arc::new)
                    .with_context(|| format!("failed to open search index {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Search { indexes })
    }

    /// Starts one indexer per shard.
    pub fn spawn_indexers(&self, store: &SharedStore, shutdown: &Shutdown) {
        for (shard, index) in self.indexes.iter().enumerate() {
            tokio::spawn(shared::search::indexer::run(
                store.clone(),
                index.clone(),
                shard as u32,
                shutdown.clone(),
            ));
        }
    }

    /// The indexes holding the messages of `channels` (of `workspace`), in shard order: one
    /// when the store keeps a workspace on one shard, up to one per shard when it spreads a
    /// workspace's channels.
    pub fn indexes_for(
        &self,
        store: &SharedStore,
        workspace: &WorkspaceId,
        channels: &[ChannelId],
    ) -> Vec<Arc<SearchIndex>> {
        let shards: BTreeSet<u32> = channels
            .iter()
            .map(|c| store.shard_of(workspace, c))
            .collect();
        shards
            .into_iter()
            .filter_map(|n| self.indexes.get(n as usize).cloned())
            .collect()
    }
}
