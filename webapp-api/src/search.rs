//! The Web API's search indexes: one per store shard, kept current by indexer tasks that tail
//! the store's change feed (so messages acked by any channel server are found, and an index
//! reopened after a crash catches up from its last commit).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shared::ids::WorkspaceId;
use shared::search::SearchIndex;
use shared::shutdown::Shutdown;
use shared::store::{shard_for, SharedStore};

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

    /// The index holding `workspace`'s messages.
    pub fn index_for(&self, workspace: &WorkspaceId) -> &Arc<SearchIndex> {
        &self.indexes[shard_for(workspace, self.indexes.len() as u32) as usize]
    }
}
