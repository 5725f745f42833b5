//! The Web API's search index, kept current by an indexer task that tails the store's change
//! feeds (so messages acked by any channel server are found, and an index reopened after a
//! crash catches up from its last commit).
//!
//! # Layout
//! - `search/all`: one index following every store shard. Each indexer round then commits
//!   once, however many shards took messages; a commit's cost is mostly fixed (see
//!   [`shared::search::indexer`]), and with a workspace's channels spread over the shards
//!   every shard takes some of a busy workspace's messages.
//! - `search/shard-<n>`: one index per shard, as deployments made before `search/all` did.
//!   A directory that has them keeps them (they hold everything indexed so far); one that
//!   has none gets `search/all`, which a deleted index directory also becomes, rebuilt from
//!   the start of the feeds.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shared::ids::{ChannelId, WorkspaceId};
use shared::search::SearchIndex;
use shared::shutdown::Shutdown;
use shared::store::SharedStore;

pub struct Search {
    layout: Layout,
}

enum Layout {
    /// `search/all`.
    One(Arc<SearchIndex>),
    /// `search/shard-<n>`, by shard.
    PerShard(Vec<Arc<SearchIndex>>),
}

impl Search {
    /// Opens (creating) the indexes under `dir` for `store`'s shards.
    pub fn open(dir: &Path, store: &SharedStore) -> anyhow::Result<Search> {
        let open = |name: String| {
            let path = dir.join(name);
            SearchIndex::open(&path)
                .map(Arc::new)
                .with_context(|| format!("failed to open search index {}", path.display()))
        };
        let shards = store.num_shards();
        let legacy = (0..shards).any(|n| dir.join(format!("shard-{n}")).is_dir());
        let layout = if legacy {
            Layout::PerShard(
                (0..shards)
                    .map(|n| open(format!("shard-{n}")))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            )
        } else {
            Layout::One(open("all".to_string())?)
        };
        Ok(Search { layout })
    }

    /// Whether this is one index per shard (a deployment's first layout).
    pub fn per_shard(&self) -> bool {
        matches!(self.layout, Layout::PerShard(_))
    }

    /// Starts the indexer tasks: one for `search/all`, or one per shard index.
    pub fn spawn_indexers(&self, store: &SharedStore, shutdown: &Shutdown) {
        match &self.layout {
            Layout::One(index) => {
                tokio::spawn(shared::search::indexer::run(
                    store.clone(),
                    index.clone(),
                    (0..store.num_shards()).collect(),
                    shutdown.clone(),
                ));
            }
            Layout::PerShard(indexes) => {
                for (shard, index) in indexes.iter().enumerate() {
                    tokio::spawn(shared::search::indexer::run(
                        store.clone(),
                        index.clone(),
                        vec![shard as u32],
                        shutdown.clone(),
                    ));
                }
            }
        }
    }

    /// The indexes holding the messages of `channels` (of `workspace`): `search/all`, or in
    /// the per-shard layout the indexes of the shards that hold them, in shard order.
    pub fn indexes_for(
        &self,
        store: &SharedStore,
        workspace: &WorkspaceId,
        channels: &[ChannelId],
    ) -> Vec<Arc<SearchIndex>> {
        match &self.layout {
            Layout::One(index) => vec![index.clone()],
            Layout::PerShard(indexes) => {
                let shards: BTreeSet<u32> = channels
                    .iter()
                    .map(|c| store.shard_of(workspace, c))
                    .collect();
                shards
                    .into_iter()
                    .filter_map(|n| indexes.get(n as usize).cloned())
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::store::sqlite::SqliteStore;

    #[test]
    fn a_new_directory_gets_one_index_and_an_old_one_keeps_its_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store"), 3).unwrap());
        let fresh = dir.path().join("fresh");
        let s = Search::open(&fresh, &store).unwrap();
        assert!(!s.per_shard());
        assert!(fresh.join("all").is_dir());
        let ws = WorkspaceId::from("TW");
        let chans: Vec<ChannelId> = (0..9).map(|n| ChannelId(format!("C{n}"))).collect();
        assert_eq!(s.indexes_for(&store, &ws, &chans).len(), 1);

        let old = dir.path().join("old");
        std::fs::create_dir_all(old.join("shard-1")).unwrap();
        let s = Search::open(&old, &store).unwrap();
        assert!(s.per_shard());
        assert!(!old.join("all").exists());
        let want: BTreeSet<u32> = chans.iter().map(|c| store.shard_of(&ws, c)).collect();
        assert_eq!(s.indexes_for(&store, &ws, &chans).len(), want.len());
        assert_eq!(s.indexes_for(&store, &ws, &[]).len(), 0);
    }
}
