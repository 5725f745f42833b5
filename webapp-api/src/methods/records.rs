//! Changes to a workspace's small record sets (user groups, custom emoji), each checked
//! against the whole set it read and written only if the set is still that one
//! ([`shared::store::MessageStore::put_record`]), else made again from the set as it now is.

use std::future::Future;

use shared::ids::WorkspaceId;
use shared::store::{cluster_records, RecordKind, RecordSet, SharedStore, StorageResult};

use crate::api::{ApiError, ApiResult, AppState};

/// Tries of a change whose set another change replaced meanwhile.
const WRITE_TRIES: usize = 8;

/// One record's new state: its id and JSON, or `None` to remove it.
pub(crate) type Write = (String, Option<String>);

/// Reads the workspace's records of `kind`, asks `change` what to write (it may refuse) and
/// writes it, each write against the version the one before left. When another change came
/// first (a write refused), reads again and asks again: `change` makes what is still to do
/// from the set as it is. `raced` counts each retry. What `change` answered besides.
pub(crate) async fn change_records<F, Fut, T>(
    state: &AppState,
    workspace: &WorkspaceId,
    kind: &RecordKind,
    raced: impl Fn(),
    mut change: F,
) -> ApiResult<T>
where
    F: FnMut(RecordSet) -> Fut,
    Fut: Future<Output = ApiResult<(Vec<Write>, T)>>,
{
    'tries: for _ in 0..WRITE_TRIES {
        let set = state.store.record_set(workspace, kind).await?;
        let mut version = set.version;
        let (writes, out) = change(set).await?;
        for (id, record) in &writes {
            let written = state
                .store
                .put_record(workspace, kind, id, record.as_deref(), version)
                .await?;
            if !written {
                raced();
                continue 'tries;
            }
            version += 1;
        }
        return Ok(out);
    }
    Err(ApiError::ServiceUnavailable(format!(
        "the workspace's {} records kept changing; try again",
        kind.name()
    )))
}

/// A cluster record set as a poller last read it: each look reads the set's version alone and
/// the whole set only when the version moved, so an idle look costs one small read however
/// many records the set holds (every Web API node looks every `webapp.records_poll_ms`).
pub(crate) struct PolledSet {
    kind: RecordKind,
    set: Option<RecordSet>,
}

impl PolledSet {
    pub(crate) fn new(kind: RecordKind) -> PolledSet {
        PolledSet { kind, set: None }
    }

    /// Reads the set whole at the next look, changed or not (what was made of the last read
    /// could not be kept).
    pub(crate) fn forget(&mut self) {
        self.set = None;
    }

    /// The set as it is now, and whether it was read again (it changed, or this is the
    /// first look) rather than kept.
    pub(crate) async fn look(&mut self, store: &SharedStore) -> StorageResult<(&RecordSet, bool)> {
        let cluster = cluster_records();
        let version = store.record_set_version(&cluster, &self.kind).await?;
        let name = self.kind.name();
        let fresh = match &self.set {
            Some(set) if set.version == version => false,
            _ => {
                self.set = Some(store.record_set(&cluster, &self.kind).await?);
                true
            }
        };
        let read = if fresh { "set" } else { "version" };
        crate::metrics::RECORD_POLLS
            .with_label_values(&[name.as_ref(), read])
            .inc();
        Ok((self.set.get_or_insert_with(RecordSet::default), fresh))
    }
}
