//! The CQL store (`store.kind = "cql"`): ScyllaDB, or anything else that speaks CQL (the
//! tests run Apache Cassandra), through the `scylla` driver.
//!
//! # Layout
//! - One metadata keyspace (`<prefix>_meta`): workspaces, users, channels, memberships, and
//!   the settings the schema was created with.
//! - One keyspace per message shard (`store.cql_shard_keyspaces`, or `<prefix>_shard_<n>`):
//!   the messages of the workspaces that [`shard_for`] maps to that shard. The same map picks
//!   the shard's search index, so a shard's store and index move together.
//!
//! Messages are partitioned like Discord's: by `(channel_id, bucket)` where `bucket` is the
//! message's `ts` divided by a fixed period (`store.cql_bucket_hours`), clustered by `seq`.
//! A history page is one range read in one partition (and a small read of the channel's
//! bucket list to find it); a partition never grows past one period of one channel.
//!
//! # Appends: fencing, group commit and recovery
//! Each channel has a head row `channel_heads(channel_id) -> (last_seq, pending)`. An append
//! group (every append waiting for one channel) is claimed with one lightweight transaction
//! (`UPDATE … IF last_seq = first_seq - 1`, or `INSERT … IF NOT EXISTS` for a new channel's
//! group from seq 1) that also stores the group itself in `pending`. Only then are the rows
//! written. So:
//! - two channel servers that both believe they own a channel cannot both write a sequence:
//!   the second claim fails and the append answers [`StorageErrorKind::SeqConflict`];
//! - a group never claims past a gap: if an earlier group's claim failed, the next one
//!   conflicts instead of leaving those seqs missing for good (seqs stay contiguous);
//! - a crash between the claim and the rows loses nothing: [`MessageStore::last_message`],
//!   which a channel server calls when it takes a channel over, replays `pending`.
//!
//! Every row that an entry writes carries the entry's `ts` as its write timestamp (`USING
//! TIMESTAMP`), and `ts` increases with `seq` in a channel. Replaying an entry, at any time
//! and in any order, is therefore harmless: an edit, deletion or reaction that came later
//! always wins over an earlier one, as it did the first time.
//!
//! # The change feed
//! CQL has no auto-increment, so change ids are time-based: `(micros << 12) | process tag`,
//! in per-hour partitions of a `feed` table in the shard's keyspace. A reader only sees
//! changes older than `store.cql_feed_settle_ms`, and a writer whose feed write took longer
//! than half that writes the change again under a fresh id. A change therefore never appears
//! behind a reader's cursor; at worst it is indexed twice, which the indexer's upsert absorbs.
//! If the writes stay slow for several rounds the append still succeeds (its rows are stored),
//! and `switchboard_store_errors_total{op="feed_late"}` counts that search may miss it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{join_all, try_join_all};
use futures_util::StreamExt;
use parking_lot::Mutex;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset, Row};
use scylla::DeserializeRow;
use tokio::sync::{mpsc, oneshot};

use super::{
    shard_for, AppendOutcome, Change, Channel, FileRecord, HistoryQuery, Membership, MessageStore,
    MessageView, Reaction, RecordKind, RecordSet, ScheduledMessage, StorageError, StorageErrorKind,
    StorageResult, User, UserReaction, Workspace,
};
use crate::config::StoreConfig;
use crate::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use crate::protocol::{Message, MessageKind};
use crate::telemetry::metrics as m;

/// Most entries claimed and written as one group.
const MAX_GROUP: usize = 256;
/// Most bytes of a group's entries as JSON, which the claim stores in the head row's
/// `pending` cell with one lightweight transaction. A mutation past Cassandra's limit
/// (`max_mutation_size`: half the commit log segment, 16 MiB by default) fails the whole group,
/// and 256 messages of the largest size (40,000 characters, with an edit's previous text) are
/// far past it. A group always takes at least one entry, however large.
const MAX_GROUP_BYTES: usize = 1 << 20;
/// Append lanes: a channel always uses the same lane, so its groups are written in order.
const LANES: usize = 32;
/// Times a group's changes are written to the feed, each under fresh ids, while the writes
/// take longer than half the settle time.
const FEED_WRITE_ROUNDS: usize = 8;
/// Rows per page when a read scans a partition.
const PAGE_SIZE: i32 = 256;
const MICROS_PER_HOUR: u64 = 3_600_000_000;

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(StorageErrorKind::Unavailable, e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(StorageErrorKind::Corrupt, e.to_string())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn set<T>(v: Option<T>) -> MaybeUnset<T> {
    match v {
        Some(v) => MaybeUnset::Set(v),
        None => MaybeUnset::Unset,
    }
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The values of `message_put`, in its order: more than a tuple binds.
#[derive(scylla::SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
struct MessagePut<'a> {
    channel_id: &'a str,
    bucket: i64,
    seq: i64,
    ts: i64,
    workspace: &'a str,
    user_id: &'a str,
    body: &'a str,
    client_msg_id: MaybeUnset<&'a str>,
    thread_ts: MaybeUnset<i64>,
    kind: &'a str,
    target_ts: MaybeUnset<i64>,
    reaction: MaybeUnset<&'a str>,
    previous: MaybeUnset<&'a str>,
    broadcast: MaybeUnset<bool>,
    rich: MaybeUnset<&'a str>,
    bot: MaybeUnset<bool>,
    /// `USING TIMESTAMP`.
    write_ts: i64,
}

/// What the CQL store needs from the configuration.
#[derive(Clone, Debug)]
pub struct CqlSettings {
    pub nodes: Vec<String>,
    pub local_datacenter: Option<String>,
    pub meta_keyspace: String,
    pub shard_keyspaces: Vec<String>,
    pub replication_factor: u32,
    pub write_consistency: Consistency,
    pub read_consistency: Consistency,
    pub bucket_micros: u64,
    pub feed_settle: Duration,
    pub request_timeout: Duration,
}

/// Parses a consistency level's CQL name (`LOCAL_QUORUM`, `QUORUM`, `ONE`, ...).
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

/// A keyspace name CQL accepts unquoted.
pub fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

impl CqlSettings {
    /// The settings of `[store]` (already validated by [`crate::config::Config::validate`]).
    pub fn from_config(store: &StoreConfig) -> anyhow::Result<CqlSettings> {
        let shard_count = store.cql_shards();
        let shard_keyspaces = if store.cql_shard_keyspaces.is_empty() {
            (0..shard_count)
                .map(|n| format!("{}_shard_{n}", store.cql_keyspace_prefix))
                .collect()
        } else {
            store.cql_shard_keyspaces.clone()
        };
        if shard_keyspaces.len() != shard_count as usize {
            anyhow::bail!(
                "store.cql_shard_keyspaces names {} keyspaces but store.shards is {}",
                shard_keyspaces.len(),
                shard_count
            );
        }
        let meta_keyspace = format!("{}_meta", store.cql_keyspace_prefix);
        for ks in shard_keyspaces.iter().chain([&meta_keyspace]) {
            if !valid_keyspace(ks) {
                anyhow::bail!(
                    "keyspace name {ks:?} (from store.cql_keyspace_prefix or store.cql_shard_keyspaces) is not valid: letters, digits and _, at most 48, starting with a letter"
                );
            }
        }
        // Bucket numbers and their bounds are i64 in CQL: the period must fit one.
        let bucket_micros = store
            .cql_bucket_hours
            .checked_mul(MICROS_PER_HOUR)
            .filter(|&m| m > 0 && i64::try_from(m).is_ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "store.cql_bucket_hours {} is out of range (at most {})",
                    store.cql_bucket_hours,
                    crate::config::MAX_CQL_BUCKET_HOURS
                )
            })?;
        let consistency = |key: &str, v: &str| {
            parse_consistency(v)
                .ok_or_else(|| anyhow::anyhow!("{key} {v:?} is not a CQL consistency level"))
        };
        Ok(CqlSettings {
            nodes: store.cql_nodes.clone(),
            local_datacenter: Some(store.cql_local_datacenter.clone()).filter(|d| !d.is_empty()),
            meta_keyspace,
            shard_keyspaces,
            replication_factor: store.cql_replication_factor,
            write_consistency: consistency(
                "store.cql_write_consistency",
                &store.cql_write_consistency,
            )?,
            read_consistency: consistency(
                "store.cql_read_consistency",
                &store.cql_read_consistency,
            )?,
            bucket_micros,
            feed_settle: Duration::from_millis(store.cql_feed_settle_ms),
            request_timeout: Duration::from_millis(store.cql_request_timeout_ms),
        })
    }

    fn serial(&self) -> SerialConsistency {
        if matches!(
            self.write_consistency,
            Consistency::LocalQuorum | Consistency::LocalOne
        ) {
            SerialConsistency::LocalSerial
        } else {
            SerialConsistency::Serial
        }
    }

    fn replication(&self) -> String {
        match &self.local_datacenter {
            Some(dc) => format!(
                "{{'class': 'NetworkTopologyStrategy', '{dc}': {}}}",
                self.replication_factor
            ),
            None => format!(
                "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ),
        }
    }
}

const META_TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.settings (k text PRIMARY KEY, v text)",
    "CREATE TABLE IF NOT EXISTS {ks}.workspaces (id text PRIMARY KEY, name text)",
    "CREATE TABLE IF NOT EXISTS {ks}.workspace_names (name text PRIMARY KEY, id text)",
    "CREATE TABLE IF NOT EXISTS {ks}.users (workspace text, id text, name text, real_name text,
        display_name text, is_admin boolean, is_bot boolean, email text, deleted boolean,
        PRIMARY KEY ((workspace), id))",
    // Who has each email in a workspace: claimed with a lightweight transaction, like names.
    "CREATE TABLE IF NOT EXISTS {ks}.user_emails (workspace text, email text, id text,
        PRIMARY KEY ((workspace), email))",
    "CREATE TABLE IF NOT EXISTS {ks}.user_ids (id text PRIMARY KEY, workspace text)",
    "CREATE TABLE IF NOT EXISTS {ks}.user_names (workspace text, name text, id text,
        PRIMARY KEY ((workspace), name))",
    "CREATE TABLE IF NOT EXISTS {ks}.channels (workspace text, id text, name text,
        is_private boolean, creator text, created bigint, topic text, purpose text,
        is_archived boolean, PRIMARY KEY ((workspace), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.channel_ids (id text PRIMARY KEY, workspace text)",
    "CREATE TABLE IF NOT EXISTS {ks}.channel_names (workspace text, name text, id text,
        PRIMARY KEY ((workspace), name))",
    "CREATE TABLE IF NOT EXISTS {ks}.members (channel_id text, user_id text, last_read bigint,
        PRIMARY KEY ((channel_id), user_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.user_channels (user_id text, channel_id text,
        workspace text, PRIMARY KEY ((user_id), channel_id))",
    // Messages waiting to be posted (`chat.scheduleMessage`): a workspace's in one partition
    // (Slack caps them per channel and time), and by time in SCHEDULED_PARTS partitions
    // (by id), which a scheduler reads from a low-water mark, past the tombstones of those
    // it posted.
    // Files: records by workspace and id, by time for listings, and bytes in chunks of
    // FILE_CHUNK_BYTES (a partition per file).
    "CREATE TABLE IF NOT EXISTS {ks}.files (workspace text, id text, created bigint,
        record text, PRIMARY KEY ((workspace), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.files_by_time (workspace text, created bigint, id text,
        PRIMARY KEY ((workspace), created, id)) WITH CLUSTERING ORDER BY (created DESC, id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.file_chunks (workspace text, id text, n int, data blob,
        PRIMARY KEY ((workspace, id), n))",
    "CREATE TABLE IF NOT EXISTS {ks}.scheduled (workspace text, id text, post_at bigint,
        created bigint, message text, PRIMARY KEY ((workspace), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.scheduled_due (part int, post_at bigint, id text,
        workspace text, PRIMARY KEY ((part), post_at, id))",
    // A workspace's small record sets (user groups, custom emoji): each kind's in one
    // partition, with the set's version as a static column, which every write's condition
    // names, so writes to a set are serial (they are few and rare) and a write checked
    // against a stale set fails. A removed record's `record` is null.
    "CREATE TABLE IF NOT EXISTS {ks}.records (workspace text, kind text, id text, record text,
        version bigint static, PRIMARY KEY ((workspace, kind), id))",
];

/// A `scheduled` row (id, post_at, created, message) read back.
fn scheduled_from_row(row: (String, i64, i64, String)) -> StorageResult<ScheduledMessage> {
    let (id, post_at, created, message) = row;
    ScheduledMessage::from_row(
        id,
        Ts(post_at.max(0) as u64),
        Ts(created.max(0) as u64),
        &message,
    )
}

/// Bytes per row of `file_chunks`.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// Most `user_reactions` rows one `user_reactions` reads (a row per reaction).
const USER_REACTION_ROWS_READ: i32 = 20_000;

/// Most `reactions_by_name` rows one `reacted` reads (a row per reacting user).
const REACTED_ROWS_READ: i32 = 20_000;

/// Partitions of `scheduled_due`: a scheduler's read of due messages reads each.
const SCHEDULED_PARTS: u32 = 8;

/// The `scheduled_due` partition of a scheduled message's id (FNV-1a: the same in every
/// process and version).
fn scheduled_part(id: &str) -> i32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(SCHEDULED_PARTS)) as i32
}

const SHARD_TABLES: &[&str] = &[
    // Every stream entry; posted messages also carry their current state.
    "CREATE TABLE IF NOT EXISTS {ks}.messages (channel_id text, bucket bigint, seq bigint,
        ts bigint, workspace text, user_id text, body text, client_msg_id text,
        thread_ts bigint, kind text, target_ts bigint, reaction text, edited_ts bigint,
        deleted boolean, reply_count int, latest_reply bigint, previous text, broadcast boolean,
        rich text, bot boolean, PRIMARY KEY ((channel_id, bucket), seq))",
    // ts -> seq within a bucket (a message's ts is its id in the Web API).
    "CREATE TABLE IF NOT EXISTS {ks}.message_ts (channel_id text, bucket bigint, ts bigint,
        seq bigint, PRIMARY KEY ((channel_id, bucket), ts))",
    // The buckets a channel has, with the first sequence of each.
    "CREATE TABLE IF NOT EXISTS {ks}.channel_buckets (channel_id text, bucket bigint,
        first_seq bigint, PRIMARY KEY ((channel_id), bucket))",
    // The fence and the write-ahead of the last group (see the module docs).
    "CREATE TABLE IF NOT EXISTS {ks}.channel_heads (channel_id text PRIMARY KEY,
        last_seq bigint, pending blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.client_ids (channel_id text, client_msg_id text,
        seq bigint, bucket bigint, PRIMARY KEY ((channel_id, client_msg_id)))",
    "CREATE TABLE IF NOT EXISTS {ks}.thread_replies (channel_id text, parent_ts bigint,
        reply_ts bigint, seq bigint, PRIMARY KEY ((channel_id, parent_ts), reply_ts))",
    "CREATE TABLE IF NOT EXISTS {ks}.reactions (channel_id text, target_ts bigint,
        reaction text, user_id text, seq bigint,
        PRIMARY KEY ((channel_id, target_ts), reaction, user_id))",
    // Which messages of a channel have a reaction, newest first: search's `has::name:`
    // (`reactions` is keyed by message, for views). Written with `reactions` since it came;
    // reactions added before are not found by search.
    "CREATE TABLE IF NOT EXISTS {ks}.reactions_by_name (channel_id text, reaction text,
        target_ts bigint, user_id text, PRIMARY KEY ((channel_id, reaction), target_ts, user_id))
        WITH CLUSTERING ORDER BY (target_ts DESC, user_id ASC)",
    // What each user reacted to (`reactions.list`): a partition per user, read whole (up to
    // USER_REACTION_ROWS_READ rows) and ordered by `reacted_ts` here, since a removal
    // knows the reaction but not when it was added. Reactions added before it came are not
    // listed.
    "CREATE TABLE IF NOT EXISTS {ks}.user_reactions (user_id text, channel_id text,
        target_ts bigint, reaction text, reacted_ts bigint, workspace text,
        PRIMARY KEY ((user_id), channel_id, target_ts, reaction))",
    // A channel's pins: one partition per channel (Slack channels pin tens, not millions).
    "CREATE TABLE IF NOT EXISTS {ks}.pins (channel_id text, target_ts bigint, user_id text,
        pinned_ts bigint, PRIMARY KEY ((channel_id), target_ts))",
    "CREATE TABLE IF NOT EXISTS {ks}.feed (hour bigint, id bigint, channel_id text, seq bigint,
        message blob, deleted boolean, PRIMARY KEY ((hour), id, channel_id, seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.feed_hours (k int, hour bigint, PRIMARY KEY ((k), hour))",
];

#[derive(Clone, Copy)]
enum Mode {
    Read,
    Write,
    /// A lightweight transaction (Paxos).
    Lwt,
    /// A read that must see the last lightweight transaction.
    SerialRead,
}

const MESSAGE_COLUMNS: &str = "channel_id, bucket, seq, ts, workspace, user_id, body, client_msg_id, thread_ts, kind, target_ts, reaction, edited_ts, deleted, reply_count, latest_reply, previous, broadcast, rich, bot";

/// An entry's `rich` as stored: JSON, or null.
fn rich_json(m: &Message) -> Option<String> {
    m.rich
        .as_ref()
        .map(|r| serde_json::to_string(r).expect("rich content serializes"))
}

/// Columns added to the meta keyspace's tables after their first version, for keyspaces made
/// before: `ALTER TABLE` adds each one that is missing.
const META_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("users", "email", "text"),
    ("users", "deleted", "boolean"),
    // Where a member closed a DM (`conversations.close`); unset while open.
    ("members", "closed_seq", "bigint"),
];

/// Columns added to a shard's tables after their first version, for keyspaces made before:
/// `ALTER TABLE` adds each one that is missing.
const SHARD_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // An edit's or deletion's `previous_message`, as JSON.
    ("messages", "previous", "text"),
    // A thread reply also shown in the channel (`reply_broadcast`); unset for the others.
    ("messages", "broadcast", "boolean"),
    // Its `blocks` and `attachments` (`RichContent`), as JSON.
    ("messages", "rich", "text"),
    // Posted by a bot user; unset for the others.
    ("messages", "bot", "boolean"),
];

const META_STATEMENTS: &[(&str, Mode, &str)] = &[
    ("settings_get", Mode::Read, "SELECT k, v FROM {ks}.settings"),
    ("workspace_claim", Mode::Lwt, "INSERT INTO {ks}.workspace_names (name, id) VALUES (?, ?) IF NOT EXISTS"),
    ("workspace_name_drop", Mode::Lwt, "DELETE FROM {ks}.workspace_names WHERE name = ? IF id = ?"),
    ("workspace_put", Mode::Write, "INSERT INTO {ks}.workspaces (id, name) VALUES (?, ?)"),
    ("workspace_get", Mode::Read, "SELECT id, name FROM {ks}.workspaces WHERE id = ?"),
    ("workspace_by_name", Mode::Read, "SELECT id FROM {ks}.workspace_names WHERE name = ?"),
    ("user_claim", Mode::Lwt, "INSERT INTO {ks}.user_names (workspace, name, id) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("user_name_drop", Mode::Lwt, "DELETE FROM {ks}.user_names WHERE workspace = ? AND name = ? IF id = ?"),
    ("user_put", Mode::Write, "INSERT INTO {ks}.users (workspace, id, name, real_name, display_name, is_admin, is_bot) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    ("user_id_put", Mode::Write, "INSERT INTO {ks}.user_ids (id, workspace) VALUES (?, ?)"),
    ("user_del", Mode::Write, "DELETE FROM {ks}.users WHERE workspace = ? AND id = ?"),
    ("user_id_del", Mode::Write, "DELETE FROM {ks}.user_ids WHERE id = ?"),
    ("user_ws", Mode::Read, "SELECT workspace FROM {ks}.user_ids WHERE id = ?"),
    ("user_get", Mode::Read, "SELECT workspace, id, name, real_name, display_name, is_admin, is_bot, email, deleted FROM {ks}.users WHERE workspace = ? AND id = ?"),
    ("user_by_name", Mode::Read, "SELECT id FROM {ks}.user_names WHERE workspace = ? AND name = ?"),
    ("users_of", Mode::Read, "SELECT workspace, id, name, real_name, display_name, is_admin, is_bot, email, deleted FROM {ks}.users WHERE workspace = ?"),
    ("user_email_claim", Mode::Lwt, "INSERT INTO {ks}.user_emails (workspace, email, id) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("user_email_drop", Mode::Lwt, "DELETE FROM {ks}.user_emails WHERE workspace = ? AND email = ? IF id = ?"),
    ("user_email_put", Mode::Write, "UPDATE {ks}.users SET email = ? WHERE workspace = ? AND id = ?"),
    ("user_deleted_put", Mode::Write, "UPDATE {ks}.users SET deleted = ? WHERE workspace = ? AND id = ?"),
    ("user_by_email", Mode::SerialRead, "SELECT id FROM {ks}.user_emails WHERE workspace = ? AND email = ?"),
    ("user_profile", Mode::Write, "UPDATE {ks}.users SET real_name = ?, display_name = ? WHERE workspace = ? AND id = ?"),
    ("channel_claim", Mode::Lwt, "INSERT INTO {ks}.channel_names (workspace, name, id) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("channel_name_get", Mode::SerialRead, "SELECT id FROM {ks}.channel_names WHERE workspace = ? AND name = ?"),
    ("channel_name_drop", Mode::Lwt, "DELETE FROM {ks}.channel_names WHERE workspace = ? AND name = ? IF id = ?"),
    ("channel_put", Mode::Write, "INSERT INTO {ks}.channels (workspace, id, name, is_private, creator, created, topic, purpose, is_archived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    ("channel_id_put", Mode::Write, "INSERT INTO {ks}.channel_ids (id, workspace) VALUES (?, ?)"),
    ("channel_ws", Mode::Read, "SELECT workspace FROM {ks}.channel_ids WHERE id = ?"),
    ("channel_get", Mode::Read, "SELECT workspace, id, name, is_private, creator, created, topic, purpose, is_archived FROM {ks}.channels WHERE workspace = ? AND id = ?"),
    ("channels_after", Mode::Read, "SELECT workspace, id, name, is_private, creator, created, topic, purpose, is_archived FROM {ks}.channels WHERE workspace = ? AND id > ? LIMIT ?"),
    ("channels_of", Mode::Read, "SELECT workspace, id, name, is_private, creator, created, topic, purpose, is_archived FROM {ks}.channels WHERE workspace = ?"),
    ("channel_update", Mode::Write, "UPDATE {ks}.channels SET name = ?, topic = ?, purpose = ?, is_archived = ? WHERE workspace = ? AND id = ?"),
    ("member_add", Mode::Lwt, "INSERT INTO {ks}.members (channel_id, user_id, last_read) VALUES (?, ?, 0) IF NOT EXISTS"),
    ("member_remove", Mode::Lwt, "DELETE FROM {ks}.members WHERE channel_id = ? AND user_id = ? IF EXISTS"),
    ("member_get", Mode::SerialRead, "SELECT user_id FROM {ks}.members WHERE channel_id = ? AND user_id = ?"),
    ("member_last_read", Mode::SerialRead, "SELECT last_read FROM {ks}.members WHERE channel_id = ? AND user_id = ?"),
    ("members_of", Mode::SerialRead, "SELECT user_id, last_read, closed_seq FROM {ks}.members WHERE channel_id = ?"),
    ("member_read", Mode::Lwt, "UPDATE {ks}.members SET last_read = ? WHERE channel_id = ? AND user_id = ? IF EXISTS"),
    ("member_closed", Mode::SerialRead, "SELECT closed_seq FROM {ks}.members WHERE channel_id = ? AND user_id = ?"),
    ("member_close", Mode::Lwt, "UPDATE {ks}.members SET closed_seq = ? WHERE channel_id = ? AND user_id = ? IF EXISTS"),
    ("user_channel_put", Mode::Write, "INSERT INTO {ks}.user_channels (user_id, channel_id, workspace) VALUES (?, ?, ?)"),
    ("user_channel_drop", Mode::Write, "DELETE FROM {ks}.user_channels WHERE user_id = ? AND channel_id = ?"),
    ("user_channels", Mode::Read, "SELECT channel_id, workspace FROM {ks}.user_channels WHERE user_id = ?"),
    ("file_put", Mode::Lwt, "INSERT INTO {ks}.files (workspace, id, created, record) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
    ("file_update", Mode::Lwt, "UPDATE {ks}.files SET record = ? WHERE workspace = ? AND id = ? IF EXISTS"),
    ("file_get", Mode::SerialRead, "SELECT record FROM {ks}.files WHERE workspace = ? AND id = ?"),
    ("file_drop", Mode::Lwt, "DELETE FROM {ks}.files WHERE workspace = ? AND id = ? IF EXISTS"),
    ("file_time_put", Mode::Write, "INSERT INTO {ks}.files_by_time (workspace, created, id) VALUES (?, ?, ?)"),
    ("file_time_drop", Mode::Write, "DELETE FROM {ks}.files_by_time WHERE workspace = ? AND created = ? AND id = ?"),
    ("files_before", Mode::Read, "SELECT id FROM {ks}.files_by_time WHERE workspace = ? AND created < ? LIMIT ?"),
    ("file_chunk_put", Mode::Write, "INSERT INTO {ks}.file_chunks (workspace, id, n, data) VALUES (?, ?, ?, ?)"),
    ("file_chunk_get", Mode::Read, "SELECT data FROM {ks}.file_chunks WHERE workspace = ? AND id = ? AND n = ?"),
    ("file_chunks_drop", Mode::Write, "DELETE FROM {ks}.file_chunks WHERE workspace = ? AND id = ?"),
    ("records_of", Mode::SerialRead, "SELECT version, id, record FROM {ks}.records WHERE workspace = ? AND kind = ?"),
    ("records_version", Mode::SerialRead, "SELECT version FROM {ks}.records WHERE workspace = ? AND kind = ? LIMIT 1"),
    ("record_first", Mode::Lwt, "UPDATE {ks}.records SET record = ?, version = ? WHERE workspace = ? AND kind = ? AND id = ? IF version = null"),
    ("record_put", Mode::Lwt, "UPDATE {ks}.records SET record = ?, version = ? WHERE workspace = ? AND kind = ? AND id = ? IF version = ?"),
    ("scheduled_put", Mode::Lwt, "INSERT INTO {ks}.scheduled (workspace, id, post_at, created, message) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"),
    ("scheduled_due_put", Mode::Write, "INSERT INTO {ks}.scheduled_due (part, post_at, id, workspace) VALUES (?, ?, ?, ?)"),
    ("scheduled_of", Mode::SerialRead, "SELECT id, post_at, created, message FROM {ks}.scheduled WHERE workspace = ?"),
    ("scheduled_get", Mode::SerialRead, "SELECT id, post_at, created, message FROM {ks}.scheduled WHERE workspace = ? AND id = ?"),
    ("scheduled_due", Mode::Read, "SELECT workspace, id, post_at FROM {ks}.scheduled_due WHERE part = ? AND post_at >= ? AND post_at <= ? LIMIT ?"),
    ("scheduled_drop", Mode::Lwt, "DELETE FROM {ks}.scheduled WHERE workspace = ? AND id = ? IF EXISTS"),
    ("scheduled_due_drop", Mode::Write, "DELETE FROM {ks}.scheduled_due WHERE part = ? AND post_at = ? AND id = ?"),
];

const SHARD_STATEMENTS: &[(&str, Mode, &str)] = &[
    ("head_claim", Mode::Lwt, "UPDATE {ks}.channel_heads SET last_seq = ?, pending = ? WHERE channel_id = ? IF last_seq = ?"),
    ("head_create", Mode::Lwt, "INSERT INTO {ks}.channel_heads (channel_id, last_seq, pending) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("head_get", Mode::SerialRead, "SELECT last_seq, pending FROM {ks}.channel_heads WHERE channel_id = ?"),
    ("message_put", Mode::Write, "INSERT INTO {ks}.messages (channel_id, bucket, seq, ts, workspace, user_id, body, client_msg_id, thread_ts, kind, target_ts, reaction, previous, broadcast, rich, bot, deleted, reply_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false, 0) USING TIMESTAMP ?"),
    ("message_ts_put", Mode::Write, "INSERT INTO {ks}.message_ts (channel_id, bucket, ts, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    ("client_id_put", Mode::Write, "INSERT INTO {ks}.client_ids (channel_id, client_msg_id, seq, bucket) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    ("client_id_get", Mode::Read, "SELECT seq, bucket FROM {ks}.client_ids WHERE channel_id = ? AND client_msg_id = ?"),
    // The smallest sequence wins: its write timestamp is the highest.
    ("bucket_put", Mode::Write, "INSERT INTO {ks}.channel_buckets (channel_id, bucket, first_seq) VALUES (?, ?, ?) USING TIMESTAMP ?"),
    ("buckets_of", Mode::Read, "SELECT bucket, first_seq FROM {ks}.channel_buckets WHERE channel_id = ?"),
    ("message_get", Mode::Read, "SELECT {cols} FROM {ks}.messages WHERE channel_id = ? AND bucket = ? AND seq = ?"),
    ("ts_get", Mode::Read, "SELECT seq FROM {ks}.message_ts WHERE channel_id = ? AND bucket = ? AND ts = ?"),
    ("scan_asc", Mode::Read, "SELECT {cols} FROM {ks}.messages WHERE channel_id = ? AND bucket = ? AND seq > ? AND seq < ? ORDER BY seq ASC"),
    ("scan_desc", Mode::Read, "SELECT {cols} FROM {ks}.messages WHERE channel_id = ? AND bucket = ? AND seq > ? AND seq < ? ORDER BY seq DESC"),
    ("edit", Mode::Write, "UPDATE {ks}.messages USING TIMESTAMP ? SET body = ?, edited_ts = ?, rich = ? WHERE channel_id = ? AND bucket = ? AND seq = ?"),
    ("delete", Mode::Write, "UPDATE {ks}.messages USING TIMESTAMP ? SET body = '', deleted = true, rich = null WHERE channel_id = ? AND bucket = ? AND seq = ?"),
    ("replies_set", Mode::Write, "UPDATE {ks}.messages USING TIMESTAMP ? SET reply_count = ?, latest_reply = ? WHERE channel_id = ? AND bucket = ? AND seq = ?"),
    ("reply_put", Mode::Write, "INSERT INTO {ks}.thread_replies (channel_id, parent_ts, reply_ts, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    ("reply_drop", Mode::Write, "DELETE FROM {ks}.thread_replies USING TIMESTAMP ? WHERE channel_id = ? AND parent_ts = ? AND reply_ts = ?"),
    ("replies_of", Mode::Read, "SELECT reply_ts, seq FROM {ks}.thread_replies WHERE channel_id = ? AND parent_ts = ?"),
    ("reaction_put", Mode::Write, "INSERT INTO {ks}.reactions (channel_id, target_ts, reaction, user_id, seq) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("reaction_drop", Mode::Write, "DELETE FROM {ks}.reactions USING TIMESTAMP ? WHERE channel_id = ? AND target_ts = ? AND reaction = ? AND user_id = ?"),
    ("reactions_drop", Mode::Write, "DELETE FROM {ks}.reactions USING TIMESTAMP ? WHERE channel_id = ? AND target_ts = ?"),
    ("reaction_name_put", Mode::Write, "INSERT INTO {ks}.reactions_by_name (channel_id, reaction, target_ts, user_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    ("reaction_name_drop", Mode::Write, "DELETE FROM {ks}.reactions_by_name USING TIMESTAMP ? WHERE channel_id = ? AND reaction = ? AND target_ts = ? AND user_id = ?"),
    ("reaction_names_drop", Mode::Write, "DELETE FROM {ks}.reactions_by_name USING TIMESTAMP ? WHERE channel_id = ? AND reaction = ? AND target_ts = ?"),
    ("reactions_named", Mode::Read, "SELECT target_ts, user_id FROM {ks}.reactions_by_name WHERE channel_id = ? AND reaction = ? LIMIT ?"),
    ("user_reaction_put", Mode::Write, "INSERT INTO {ks}.user_reactions (user_id, channel_id, target_ts, reaction, reacted_ts, workspace) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    ("user_reaction_drop", Mode::Write, "DELETE FROM {ks}.user_reactions USING TIMESTAMP ? WHERE user_id = ? AND channel_id = ? AND target_ts = ? AND reaction = ?"),
    ("user_reactions_of", Mode::Read, "SELECT channel_id, target_ts, reacted_ts, workspace FROM {ks}.user_reactions WHERE user_id = ? LIMIT ?"),
    ("reactions_of", Mode::Read, "SELECT reaction, user_id, seq FROM {ks}.reactions WHERE channel_id = ? AND target_ts = ?"),
    ("pin_put", Mode::Write, "INSERT INTO {ks}.pins (channel_id, target_ts, user_id, pinned_ts) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    ("pin_drop", Mode::Write, "DELETE FROM {ks}.pins USING TIMESTAMP ? WHERE channel_id = ? AND target_ts = ?"),
    ("pin_of", Mode::Read, "SELECT user_id, pinned_ts FROM {ks}.pins WHERE channel_id = ? AND target_ts = ?"),
    ("pins_of", Mode::Read, "SELECT target_ts, pinned_ts FROM {ks}.pins WHERE channel_id = ?"),
    ("pin_count", Mode::Read, "SELECT COUNT(*) FROM {ks}.pins WHERE channel_id = ?"),
    ("feed_put", Mode::Write, "INSERT INTO {ks}.feed (hour, id, channel_id, seq, message, deleted) VALUES (?, ?, ?, ?, ?, ?)"),
    ("feed_hour_put", Mode::Write, "INSERT INTO {ks}.feed_hours (k, hour) VALUES (0, ?)"),
    ("feed_hours", Mode::Read, "SELECT hour FROM {ks}.feed_hours WHERE k = 0 AND hour >= ? AND hour <= ?"),
    ("feed_read", Mode::Read, "SELECT id, message, deleted FROM {ks}.feed WHERE hour = ? AND id > ? AND id < ? LIMIT ?"),
];

/// Prepared statements of one keyspace, by name.
struct Statements(HashMap<&'static str, PreparedStatement>);

impl Statements {
    fn get(&self, name: &str) -> &PreparedStatement {
        // Every name used below is in the tables above; a typo fails every test at once.
        &self.0[name]
    }
}

#[derive(DeserializeRow)]
struct MsgRow {
    channel_id: String,
    bucket: i64,
    seq: i64,
    ts: i64,
    workspace: String,
    user_id: String,
    body: String,
    client_msg_id: Option<String>,
    thread_ts: Option<i64>,
    kind: String,
    target_ts: Option<i64>,
    reaction: Option<String>,
    edited_ts: Option<i64>,
    deleted: Option<bool>,
    reply_count: Option<i32>,
    latest_reply: Option<i64>,
    previous: Option<String>,
    broadcast: Option<bool>,
    rich: Option<String>,
    bot: Option<bool>,
}

impl MsgRow {
    fn message(&self) -> StorageResult<Message> {
        let kind = MessageKind::from_parts(
            &self.kind,
            self.target_ts.map(|t| Ts(t as u64)),
            self.reaction.clone(),
        )
        .ok_or_else(|| corrupt(format!("bad entry kind {:?}", self.kind)))?;
        Ok(Message {
            workspace: WorkspaceId(self.workspace.clone()),
            channel: ChannelId(self.channel_id.clone()),
            seq: self.seq as Seq,
            ts: Ts(self.ts as u64),
            user: UserId(self.user_id.clone()),
            text: self.body.clone(),
            client_msg_id: self.client_msg_id.clone(),
            thread_ts: self.thread_ts.map(|t| Ts(t as u64)),
            kind,
            previous: match &self.previous {
                Some(json) => Some(Box::new(serde_json::from_str(json).map_err(|e| {
                    corrupt(format!("bad previous message of seq {}: {e}", self.seq))
                })?)),
                None => None,
            },
            broadcast: self.broadcast.unwrap_or(false),
            rich: match &self.rich {
                Some(json) => Some(Box::new(serde_json::from_str(json).map_err(|e| {
                    corrupt(format!(
                        "bad blocks or attachments of seq {}: {e}",
                        self.seq
                    ))
                })?)),
                None => None,
            },
            bot: self.bot.unwrap_or(false),
        })
    }

    fn is_posted(&self) -> bool {
        self.kind == MessageKind::Posted.name()
    }

    /// Whether views show it: undeleted, or a deleted thread parent whose replies remain (a
    /// tombstone).
    fn shown(&self) -> bool {
        !self.deleted.unwrap_or(false) || self.reply_count.unwrap_or(0) > 0
    }

    fn view(&self) -> StorageResult<MessageView> {
        Ok(MessageView {
            message: self.message()?,
            edited: self.edited_ts.map(|t| Ts(t as u64)),
            deleted: self.deleted.unwrap_or(false),
            reply_count: self.reply_count.unwrap_or(0).max(0) as u32,
            latest_reply: self.latest_reply.map(|t| Ts(t as u64)),
            reactions: Vec::new(),
            pinned: None,
        })
    }
}

#[derive(DeserializeRow)]
struct UserRow {
    workspace: String,
    id: String,
    name: String,
    real_name: String,
    display_name: Option<String>,
    is_admin: bool,
    is_bot: bool,
    email: Option<String>,
    deleted: Option<bool>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: UserId(r.id),
            workspace: WorkspaceId(r.workspace),
            name: r.name,
            real_name: r.real_name,
            display_name: r.display_name.unwrap_or_default(),
            is_admin: r.is_admin,
            is_bot: r.is_bot,
            email: r.email.unwrap_or_default(),
            deleted: r.deleted.unwrap_or_default(),
        }
    }
}

#[derive(DeserializeRow)]
struct ChannelRow {
    workspace: String,
    id: String,
    name: String,
    is_private: bool,
    creator: String,
    created: i64,
    topic: String,
    purpose: String,
    is_archived: bool,
}

impl From<ChannelRow> for Channel {
    fn from(r: ChannelRow) -> Channel {
        Channel {
            id: ChannelId(r.id),
            workspace: WorkspaceId(r.workspace),
            name: r.name,
            is_private: r.is_private,
            creator: UserId(r.creator),
            created: Ts(r.created as u64),
            topic: r.topic,
            purpose: r.purpose,
            is_archived: r.is_archived,
        }
    }
}

struct AppendRequest {
    msg: Message,
    /// `msg`'s length as JSON (as a group's `pending` holds it), measured by the caller.
    encoded_len: usize,
    reply: oneshot::Sender<StorageResult<AppendOutcome>>,
}

impl AppendRequest {
    fn new(msg: Message, reply: oneshot::Sender<StorageResult<AppendOutcome>>) -> AppendRequest {
        AppendRequest {
            encoded_len: json_len(&msg),
            msg,
            reply,
        }
    }
}

/// The length of `value` as compact JSON, without keeping the bytes.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A message always serializes (the claim encodes it the same way).
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

struct Inner {
    session: Session,
    settings: CqlSettings,
    meta: Statements,
    shards: Vec<Statements>,
    /// `(shard, channel, bucket)` rows this process already wrote to `channel_buckets`.
    known_buckets: Mutex<HashSet<(u32, String, i64)>>,
    /// `(shard, hour)` rows this process already wrote to `feed_hours`.
    known_hours: Mutex<HashSet<(u32, i64)>>,
    /// This process's change ids: `(micros << 12) | tag`, micros strictly increasing.
    feed_tag: u64,
    last_feed_micros: Mutex<u64>,
}

/// The CQL store. Cheap to share behind an `Arc`; appends run on background lanes.
pub struct CqlStore {
    inner: Arc<Inner>,
    lanes: Vec<mpsc::UnboundedSender<AppendRequest>>,
}

async fn connect(settings: &CqlSettings) -> StorageResult<Session> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &settings.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .consistency(settings.read_consistency)
        .serial_consistency(Some(settings.serial()))
        .request_timeout(Some(settings.request_timeout))
        .build();
    SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(settings.request_timeout)
        .build()
        .await
        .map_err(|e| {
            unavailable(format!(
                "cannot connect to the CQL cluster at {:?}: {e}",
                settings.nodes
            ))
        })
}

/// The settings a schema is created with; a store opened with others would misread it.
fn schema_settings(settings: &CqlSettings) -> Vec<(&'static str, String)> {
    vec![
        ("shards", settings.shard_keyspaces.len().to_string()),
        ("shard_keyspaces", settings.shard_keyspaces.join(",")),
        ("bucket_micros", settings.bucket_micros.to_string()),
    ]
}

/// Whether `keyspace.table` has `column` (from the schema tables, which Cassandra and
/// ScyllaDB both keep).
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> StorageResult<bool> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(|e| unavailable(format!("cannot read the schema of {keyspace}.{table}: {e}")))?
        .into_rows_result()
        .map_err(unavailable)?;
    Ok(rows.rows_num() > 0)
}

async fn read_schema_settings(
    session: &Session,
    meta: &str,
) -> StorageResult<HashMap<String, String>> {
    let rows = session
        .query_unpaged(format!("SELECT k, v FROM {meta}.settings"), ())
        .await
        .map_err(|e| {
            unavailable(format!(
                "cannot read {meta}.settings ({e}); run `switchboard store migrate` first"
            ))
        })?
        .into_rows_result()
        .map_err(unavailable)?;
    let mut out = HashMap::new();
    for row in rows.rows::<(String, String)>().map_err(unavailable)? {
        let (k, v) = row.map_err(corrupt)?;
        out.insert(k, v);
    }
    Ok(out)
}

fn check_schema_settings(
    settings: &CqlSettings,
    recorded: &HashMap<String, String>,
) -> StorageResult<()> {
    for (k, want) in schema_settings(settings) {
        match recorded.get(k) {
            None => {
                return Err(StorageError::new(
                    StorageErrorKind::NotFound,
                    format!(
                        "the CQL schema has no `{k}` setting; run `switchboard store migrate` first"
                    ),
                ))
            }
            Some(have) if *have != want => {
                return Err(corrupt(format!(
                    "the CQL schema was created with {k} = {have}, the configuration says {want}"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl CqlStore {
    /// Creates the keyspaces and tables if they do not exist and records the settings the
    /// schema depends on (shard count and names, bucket period). Idempotent; fails if the
    /// schema exists with other settings.
    pub async fn migrate(settings: &CqlSettings) -> StorageResult<()> {
        let session = connect(settings).await?;
        let replication = settings.replication();
        let ddl = |q: String| {
            let session = &session;
            async move {
                session
                    .query_unpaged(q.clone(), ())
                    .await
                    .map_err(|e| unavailable(format!("{q}: {e}")))
            }
        };
        let meta = &settings.meta_keyspace;
        ddl(format!(
            "CREATE KEYSPACE IF NOT EXISTS {meta} WITH replication = {replication}"
        ))
        .await?;
        for t in META_TABLES {
            ddl(t.replace("{ks}", meta)).await?;
        }
        for (table, column, kind) in META_ADDED_COLUMNS {
            if !has_column(&session, meta, table, column).await? {
                ddl(format!("ALTER TABLE {meta}.{table} ADD {column} {kind}")).await?;
            }
        }
        for ks in &settings.shard_keyspaces {
            ddl(format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"
            ))
            .await?;
            for t in SHARD_TABLES {
                ddl(t.replace("{ks}", ks)).await?;
            }
            for (table, column, kind) in SHARD_ADDED_COLUMNS {
                if !has_column(&session, ks, table, column).await? {
                    ddl(format!("ALTER TABLE {ks}.{table} ADD {column} {kind}")).await?;
                }
            }
        }
        let mut claim = session
            .prepare(format!(
                "INSERT INTO {meta}.settings (k, v) VALUES (?, ?) IF NOT EXISTS"
            ))
            .await
            .map_err(unavailable)?;
        claim.set_serial_consistency(Some(settings.serial()));
        claim.set_consistency(settings.write_consistency);
        for (k, v) in schema_settings(settings) {
            session
                .execute_unpaged(&claim, (k, v))
                .await
                .map_err(unavailable)?;
        }
        let recorded = read_schema_settings(&session, meta).await?;
        check_schema_settings(settings, &recorded)
    }

    /// Connects and prepares; the schema must exist ([`CqlStore::migrate`]) with the same
    /// settings.
    pub async fn open(settings: CqlSettings) -> StorageResult<CqlStore> {
        let session = connect(&settings).await?;
        let recorded = read_schema_settings(&session, &settings.meta_keyspace).await?;
        check_schema_settings(&settings, &recorded)?;
        let meta = prepare_all(
            &session,
            &settings,
            &settings.meta_keyspace,
            META_STATEMENTS,
        )
        .await?;
        let mut shards = Vec::new();
        for ks in &settings.shard_keyspaces {
            shards.push(prepare_all(&session, &settings, ks, SHARD_STATEMENTS).await?);
        }
        let inner = Arc::new(Inner {
            session,
            settings,
            meta,
            shards,
            known_buckets: Mutex::new(HashSet::new()),
            known_hours: Mutex::new(HashSet::new()),
            feed_tag: rand::random::<u64>() & 0xfff,
            last_feed_micros: Mutex::new(0),
        });
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(inner.clone(), rx));
            lanes.push(tx);
        }
        Ok(CqlStore { inner, lanes })
    }
}

async fn prepare_all(
    session: &Session,
    settings: &CqlSettings,
    ks: &str,
    statements: &[(&'static str, Mode, &str)],
) -> StorageResult<Statements> {
    let prepared = try_join_all(statements.iter().map(|(name, mode, cql)| async move {
        let text = cql.replace("{ks}", ks).replace("{cols}", MESSAGE_COLUMNS);
        let mut p = session
            .prepare(text.clone())
            .await
            .map_err(|e| unavailable(format!("prepare {text}: {e}")))?;
        match mode {
            Mode::Read => {
                p.set_consistency(settings.read_consistency);
                p.set_is_idempotent(true);
                p.set_page_size(PAGE_SIZE);
            }
            Mode::Write => {
                p.set_consistency(settings.write_consistency);
                // Every write is an upsert or carries its own timestamp: safe to retry.
                p.set_is_idempotent(true);
            }
            Mode::Lwt => {
                p.set_consistency(settings.write_consistency);
                p.set_serial_consistency(Some(settings.serial()));
            }
            Mode::SerialRead => {
                p.set_consistency(match settings.serial() {
                    SerialConsistency::LocalSerial => Consistency::LocalSerial,
                    SerialConsistency::Serial => Consistency::Serial,
                });
                p.set_is_idempotent(true);
            }
        }
        Ok::<_, StorageError>((*name, p))
    }))
    .await?;
    Ok(Statements(prepared.into_iter().collect()))
}

/// `[applied]` of a lightweight transaction's result, and the `last_seq` it saw if not.
fn lwt_outcome(result: QueryResult) -> StorageResult<(bool, Option<i64>)> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    let row: Row = rows.single_row::<Row>().map_err(unavailable)?;
    let mut applied = false;
    let mut last_seq = None;
    for (name, value) in names.iter().zip(row.columns) {
        match (name.as_str(), value) {
            ("[applied]", Some(CqlValue::Boolean(b))) => applied = b,
            ("last_seq", Some(CqlValue::BigInt(n))) => last_seq = Some(n),
            _ => {}
        }
    }
    Ok((applied, last_seq))
}

/// One append lane: takes every request waiting, groups them by channel (in arrival order)
/// and writes the groups of different channels concurrently.
async fn lane(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<AppendRequest>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while waiting.len() < MAX_GROUP * 4 {
            match rx.try_recv() {
                Ok(r) => waiting.push(r),
                Err(_) => break,
            }
        }
        let groups = group_by_channel(waiting);
        // Groups of one channel beyond MAX_GROUP run after the first (join_all keeps
        // nothing ordered), so write those one after another.
        let mut seen = HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .partition(|g| seen.insert((g[0].msg.workspace.clone(), g[0].msg.channel.clone())));
        join_all(now.into_iter().map(|g| write_group(&inner, g))).await;
        for g in later {
            write_group(&inner, g).await;
        }
    }
}

/// Splits waiting requests into groups of one channel each, in arrival order, of at most
/// [`MAX_GROUP`] entries and [`MAX_GROUP_BYTES`] as the JSON array the claim stores (one entry
/// over that is a group of its own). A channel's requests past a full group start the next.
fn group_by_channel(waiting: Vec<AppendRequest>) -> Vec<Vec<AppendRequest>> {
    // Each group with its JSON length so far: `[`, then each entry and a `,` or `]`.
    let mut groups: Vec<(Vec<AppendRequest>, usize)> = Vec::new();
    let mut index: HashMap<(WorkspaceId, ChannelId), usize> = HashMap::new();
    for r in waiting {
        let key = (r.msg.workspace.clone(), r.msg.channel.clone());
        let bytes = r.encoded_len + 1;
        match index.get(&key) {
            Some(&g)
                if groups[g].0.len() < MAX_GROUP
                    && groups[g].1.saturating_add(bytes) <= MAX_GROUP_BYTES =>
            {
                groups[g].0.push(r);
                groups[g].1 += bytes;
            }
            _ => {
                index.insert(key, groups.len());
                groups.push((vec![r], 1 + bytes));
            }
        }
    }
    groups.into_iter().map(|(g, _)| g).collect()
}

async fn write_group(inner: &Inner, group: Vec<AppendRequest>) {
    let start = Instant::now();
    m::STORE_BATCH_SIZE.observe(group.len() as f64);
    let shard = shard_for(&group[0].msg.workspace, inner.shards.len() as u32);
    let st = &inner.shards[shard as usize];
    // Repeated client_msg_ids: stored ones answer with the stored message.
    let lookups = join_all(group.iter().map(|r| async {
        match &r.msg.client_msg_id {
            Some(cmid) => inner.by_client_id(st, &r.msg.channel, cmid).await,
            None => Ok(None),
        }
    }))
    .await;
    /// How a request of the group is answered.
    enum Answer {
        /// Known before the group is written: a failed lookup, or a repeat of a stored id.
        Now(StorageResult<AppendOutcome>),
        /// A fresh entry: stored if the group is.
        Fresh,
        /// A repeat of a fresh entry earlier in the group: a duplicate of it if the group is
        /// stored, else the group's error (it must not be told that a message is stored
        /// before the group is claimed and written).
        RepeatOf(Message),
    }
    let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
    let mut fresh: Vec<Message> = Vec::new();
    let mut in_group: HashMap<String, Message> = HashMap::new();
    for (r, found) in group.iter().zip(lookups) {
        match found {
            Err(e) => answers.push(Answer::Now(Err(e))),
            Ok(Some(existing)) => answers.push(Answer::Now(Ok(AppendOutcome::Duplicate(
                Box::new(existing),
            )))),
            Ok(None) => match r.msg.client_msg_id.as_ref().and_then(|c| in_group.get(c)) {
                Some(first) => answers.push(Answer::RepeatOf(first.clone())),
                None => {
                    if let Some(c) = &r.msg.client_msg_id {
                        in_group.insert(c.clone(), r.msg.clone());
                    }
                    fresh.push(r.msg.clone());
                    answers.push(Answer::Fresh);
                }
            },
        }
    }
    let result = if fresh.is_empty() {
        Ok(())
    } else {
        fresh.sort_by_key(|m| m.seq);
        match inner.claim(st, &fresh).await {
            Ok(()) => inner.write_entries(shard, &fresh, false).await,
            Err(e) => Err(e),
        }
    };
    if result.is_err() {
        m::STORE_ERRORS.with_label_values(&["append"]).inc();
    }
    for (r, answer) in group.into_iter().zip(answers) {
        let outcome = match (answer, &result) {
            (Answer::Now(a), _) => a,
            (Answer::Fresh, Ok(())) => Ok(AppendOutcome::Stored),
            (Answer::RepeatOf(first), Ok(())) => Ok(AppendOutcome::Duplicate(Box::new(first))),
            (Answer::Fresh | Answer::RepeatOf(_), Err(e)) => {
                Err(StorageError::new(e.kind, e.message.clone()))
            }
        };
        let _ = r.reply.send(outcome);
    }
    m::STORE_OPS
        .with_label_values(&["append_batch"])
        .observe(start.elapsed().as_secs_f64());
}

impl Inner {
    fn bucket(&self, ts: u64) -> i64 {
        (ts / self.settings.bucket_micros) as i64
    }

    fn shard_of(&self, ws: &WorkspaceId) -> (u32, &Statements) {
        let n = shard_for(ws, self.shards.len() as u32);
        (n, &self.shards[n as usize])
    }

    async fn exec(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StorageResult<QueryResult> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(unavailable)
    }

    async fn rows<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StorageResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let mut stream = self
            .session
            .execute_iter(stmt.clone(), values)
            .await
            .map_err(unavailable)?
            .rows_stream::<R>()
            .map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await {
            out.push(row.map_err(unavailable)?);
        }
        Ok(out)
    }

    async fn first<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StorageResult<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.exec(stmt, values).await?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        rows.maybe_first_row::<R>().map_err(unavailable)
    }

    /// Removes a scheduled message's `scheduled_due` row.
    async fn drop_due_row(&self, id: &str, post_at: i64) -> StorageResult<()> {
        self.exec(
            self.meta.get("scheduled_due_drop"),
            (scheduled_part(id), post_at, id),
        )
        .await
        .map(drop)
    }

    async fn applied(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StorageResult<bool> {
        Ok(lwt_outcome(self.exec(stmt, values).await?)?.0)
    }

    /// Claims `fresh`'s sequences in the channel head, storing the group as `pending`.
    async fn claim(&self, st: &Statements, fresh: &[Message]) -> StorageResult<()> {
        let channel = &fresh[0].channel.0;
        let first = i(fresh[0].seq);
        let last = i(fresh[fresh.len() - 1].seq);
        let pending = serde_json::to_vec(fresh).map_err(corrupt)?;
        let conflict = |have: Option<i64>| {
            m::STORE_ERRORS.with_label_values(&["seq_conflict"]).inc();
            StorageError::new(
                StorageErrorKind::SeqConflict,
                format!(
                    "channel {channel} is at seq {} already; cannot append {first}..={last}",
                    have.map(|h| h.to_string()).unwrap_or_else(|| "?".into())
                ),
            )
        };
        // A group claims the sequences right after the head, never past a gap: when an
        // earlier group's claim failed, a later one must not leave its seqs missing for good
        // (per-channel seqs are contiguous; the channel server renumbers after a conflict).
        for _ in 0..2 {
            let (applied, have) = lwt_outcome(
                self.exec(st.get("head_claim"), (last, &pending, channel, first - 1))
                    .await?,
            )?;
            if applied {
                return Ok(());
            }
            if have.is_some() {
                return Err(conflict(have));
            }
            // No head yet: this is the channel's first group, which must start at seq 1.
            if first != 1 {
                return Err(conflict(None));
            }
            let (applied, have) = lwt_outcome(
                self.exec(st.get("head_create"), (channel, last, &pending))
                    .await?,
            )?;
            if applied {
                return Ok(());
            }
            if have.is_some_and(|h| h >= first) {
                return Err(conflict(have));
            }
            // Someone created the head in between with a lower seq: claim again.
        }
        Err(conflict(None))
    }

    /// Writes entries whose sequences are claimed: their rows, then their effect on the
    /// messages they change, then the change feed. Idempotent (see the module docs).
    /// `replay` rewrites the bucket list rows even if this process wrote them before.
    async fn write_entries(
        &self,
        shard: u32,
        entries: &[Message],
        replay: bool,
    ) -> StorageResult<()> {
        let st = &self.shards[shard as usize];
        let mut new_buckets = Vec::new();
        {
            let mut known = self.known_buckets.lock();
            for m in entries {
                let b = self.bucket(m.ts.0);
                let key = (shard, m.channel.0.clone(), b);
                if replay || !known.contains(&key) {
                    if !new_buckets.iter().any(|(bb, _): &(i64, u64)| *bb == b) {
                        new_buckets.push((b, m.seq));
                    }
                    known.insert(key);
                }
            }
        }
        let channel = &entries[0].channel.0;
        let rows = entries.iter().map(|m| async move {
            let b = self.bucket(m.ts.0);
            let wts = i(m.ts.0);
            let previous = m
                .previous
                .as_ref()
                .map(|p| serde_json::to_string(p).expect("a previous message serializes"));
            let rich = rich_json(m);
            let put = self.exec(
                st.get("message_put"),
                MessagePut {
                    channel_id: &m.channel.0,
                    bucket: b,
                    seq: i(m.seq),
                    ts: wts,
                    workspace: &m.workspace.0,
                    user_id: &m.user.0,
                    body: &m.text,
                    client_msg_id: set(m.client_msg_id.as_deref()),
                    thread_ts: set(m.thread_ts.map(|t| i(t.0))),
                    kind: m.kind.name(),
                    target_ts: set(m.kind.target().map(|t| i(t.0))),
                    reaction: set(m.kind.reaction()),
                    previous: set(previous.as_deref()),
                    broadcast: set(m.broadcast.then_some(true)),
                    rich: set(rich.as_deref()),
                    bot: set(m.bot.then_some(true)),
                    write_ts: wts,
                },
            );
            let by_ts = self.exec(
                st.get("message_ts_put"),
                (&m.channel.0, b, wts, i(m.seq), wts),
            );
            let (a, b2) = futures_util::join!(put, by_ts);
            a?;
            b2?;
            if let Some(cmid) = &m.client_msg_id {
                self.exec(
                    st.get("client_id_put"),
                    (&m.channel.0, cmid, i(m.seq), b, wts),
                )
                .await?;
            }
            Ok::<_, StorageError>(())
        });
        let buckets = new_buckets.iter().map(|(b, first_seq)| {
            self.exec(
                st.get("bucket_put"),
                (channel, *b, i(*first_seq), i64::MAX / 2 - i(*first_seq)),
            )
        });
        let (rows, buckets) = futures_util::join!(try_join_all(rows), try_join_all(buckets));
        if let Err(e) = rows.and(buckets.map(|_| ())) {
            // Nothing was acknowledged; the claim's `pending` still holds the group.
            self.known_buckets
                .lock()
                .retain(|(s, c, _)| !(*s == shard && c == channel));
            return Err(e);
        }
        let mut changes = Vec::new();
        for m in entries {
            if let Some(change) = self.apply(st, m).await? {
                changes.push(change);
            }
        }
        self.record_changes(shard, &changes).await
    }

    /// Drops the name claim that `statement` deletes (`IF id = ...`: only if this creation
    /// still holds it) with `values`, after the rows of a new workspace, user or channel
    /// could not be written. Best effort: a failure is logged, and the original error is what
    /// the caller reports.
    /// The user of `workspace` whose claim (a name or an email, read by `statement`) is
    /// `key`.
    async fn user_claimed_by(
        &self,
        statement: &str,
        workspace: &WorkspaceId,
        key: &str,
    ) -> StorageResult<Option<User>> {
        let Some((id,)) = self
            .first::<(String,)>(self.meta.get(statement), (&workspace.0, key))
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .first::<UserRow>(self.meta.get("user_get"), (&workspace.0, &id))
            .await?
            .map(User::from))
    }

    async fn release_name(&self, statement: &str, values: impl SerializeRow, name: &str) {
        if let Err(e) = self.applied(self.meta.get(statement), values).await {
            tracing::warn!(statement, name, error = %e, "could not give back a name claimed by a failed creation");
        }
    }

    /// The posted message with this ts, by its row.
    async fn posted_row(
        &self,
        st: &Statements,
        channel: &str,
        ts: u64,
    ) -> StorageResult<Option<MsgRow>> {
        let b = self.bucket(ts);
        let Some((seq,)) = self
            .first::<(i64,)>(st.get("ts_get"), (channel, b, i(ts)))
            .await?
        else {
            return Ok(None);
        };
        let row = self
            .first::<MsgRow>(st.get("message_get"), (channel, b, seq))
            .await?;
        Ok(row.filter(MsgRow::is_posted))
    }

    /// Sets a thread parent's reply count and latest reply from its replies as they are now.
    async fn count_replies(
        &self,
        st: &Statements,
        channel: &str,
        parent: Ts,
        wts: i64,
    ) -> StorageResult<()> {
        if let Some(p) = self.posted_row(st, channel, parent.0).await? {
            let replies: Vec<(i64, i64)> = self
                .rows(st.get("replies_of"), (channel, i(parent.0)))
                .await?;
            let latest = replies.iter().map(|r| r.0).max();
            self.exec(
                st.get("replies_set"),
                (wts, replies.len() as i32, latest, channel, p.bucket, p.seq),
            )
            .await?;
        }
        Ok(())
    }

    /// Applies one entry to the message it concerns; returns the feed change, if any.
    async fn apply(&self, st: &Statements, m: &Message) -> StorageResult<Option<(Message, bool)>> {
        let ch = &m.channel.0;
        let wts = i(m.ts.0);
        match &m.kind {
            MessageKind::Posted => {
                if let Some(parent) = m.thread_ts.filter(|p| *p != m.ts) {
                    self.exec(st.get("reply_put"), (ch, i(parent.0), wts, i(m.seq), wts))
                        .await?;
                    self.count_replies(st, ch, parent, wts).await?;
                }
                Ok(Some((m.clone(), false)))
            }
            MessageKind::Edited { target } => {
                let Some(row) = self.posted_row(st, ch, target.0).await? else {
                    return Ok(None);
                };
                let mut message = row.message()?;
                if row.deleted.unwrap_or(false) {
                    return Ok(Some((message, true)));
                }
                let rich = rich_json(m);
                self.exec(
                    st.get("edit"),
                    (wts, &m.text, wts, rich.as_deref(), ch, row.bucket, row.seq),
                )
                .await?;
                message.text = m.text.clone();
                message.rich = m.rich.clone();
                Ok(Some((message, false)))
            }
            MessageKind::Deleted { target } => {
                let Some(row) = self.posted_row(st, ch, target.0).await? else {
                    return Ok(None);
                };
                self.exec(st.get("delete"), (wts, ch, row.bucket, row.seq))
                    .await?;
                // A reply that goes leaves its thread's count and latest reply.
                if let Some(parent) = row.thread_ts.filter(|p| *p != row.ts) {
                    if !row.deleted.unwrap_or(false) {
                        self.exec(st.get("reply_drop"), (wts, ch, parent, row.ts))
                            .await?;
                        self.count_replies(st, ch, Ts(parent as u64), wts).await?;
                    }
                }
                // Its reactions go, from both tables (the names first, read from the other).
                let reactions: Vec<(String, String, i64)> =
                    self.rows(st.get("reactions_of"), (ch, i(target.0))).await?;
                for (name, user, _) in &reactions {
                    self.exec(
                        st.get("user_reaction_drop"),
                        (wts, user, ch, i(target.0), name),
                    )
                    .await?;
                }
                let mut names: Vec<String> = reactions.into_iter().map(|r| r.0).collect();
                names.sort();
                names.dedup();
                for name in &names {
                    self.exec(st.get("reaction_names_drop"), (wts, ch, name, i(target.0)))
                        .await?;
                }
                self.exec(st.get("reactions_drop"), (wts, ch, i(target.0)))
                    .await?;
                // A deleted message leaves the channel's pins too, as in Slack.
                self.exec(st.get("pin_drop"), (wts, ch, i(target.0)))
                    .await?;
                let mut message = row.message()?;
                message.text.clear();
                message.rich = None;
                Ok(Some((message, true)))
            }
            MessageKind::ReactionAdded { target, reaction } => {
                self.exec(
                    st.get("reaction_put"),
                    (ch, i(target.0), reaction, &m.user.0, i(m.seq), wts),
                )
                .await?;
                self.exec(
                    st.get("reaction_name_put"),
                    (ch, reaction, i(target.0), &m.user.0, wts),
                )
                .await?;
                self.exec(
                    st.get("user_reaction_put"),
                    (
                        &m.user.0,
                        ch,
                        i(target.0),
                        reaction,
                        i(m.ts.0),
                        &m.workspace.0,
                        wts,
                    ),
                )
                .await?;
                Ok(None)
            }
            MessageKind::ReactionRemoved { target, reaction } => {
                self.exec(
                    st.get("reaction_drop"),
                    (wts, ch, i(target.0), reaction, &m.user.0),
                )
                .await?;
                self.exec(
                    st.get("reaction_name_drop"),
                    (wts, ch, reaction, i(target.0), &m.user.0),
                )
                .await?;
                self.exec(
                    st.get("user_reaction_drop"),
                    (wts, &m.user.0, ch, i(target.0), reaction),
                )
                .await?;
                Ok(None)
            }
            MessageKind::Pinned { target } => {
                // Only a message that is there (not deleted) is pinned.
                if let Some(row) = self.posted_row(st, ch, target.0).await? {
                    if !row.deleted.unwrap_or(false) {
                        self.exec(st.get("pin_put"), (ch, i(target.0), &m.user.0, wts, wts))
                            .await?;
                    }
                }
                Ok(None)
            }
            MessageKind::Unpinned { target } => {
                self.exec(st.get("pin_drop"), (wts, ch, i(target.0)))
                    .await?;
                Ok(None)
            }
        }
    }

    fn next_feed_id(&self) -> (u64, u64) {
        let mut last = self.last_feed_micros.lock();
        let micros = now_micros().max(*last + 1);
        *last = micros;
        (micros, (micros << 12) | self.feed_tag)
    }

    async fn record_changes(&self, shard: u32, changes: &[(Message, bool)]) -> StorageResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let st = &self.shards[shard as usize];
        let half_settle =
            u64::try_from(self.settings.feed_settle.as_micros() / 2).unwrap_or(u64::MAX);
        // A change whose write was slow may sit behind a reader's cursor: write it again.
        for _ in 0..FEED_WRITE_ROUNDS {
            let started = now_micros();
            let writes = changes.iter().map(|(msg, deleted)| async move {
                let (micros, id) = self.next_feed_id();
                let hour = (micros / MICROS_PER_HOUR) as i64;
                let new_hour = self.known_hours.lock().insert((shard, hour));
                if new_hour {
                    if let Err(e) = self.exec(st.get("feed_hour_put"), (hour,)).await {
                        self.known_hours.lock().remove(&(shard, hour));
                        return Err(e);
                    }
                }
                let body = serde_json::to_vec(msg).map_err(corrupt)?;
                self.exec(
                    st.get("feed_put"),
                    (hour, id as i64, &msg.channel.0, i(msg.seq), body, *deleted),
                )
                .await?;
                Ok::<_, StorageError>(micros)
            });
            try_join_all(writes).await?;
            if now_micros().saturating_sub(started) <= half_settle {
                return Ok(());
            }
            m::STORE_ERRORS.with_label_values(&["feed_rewrite"]).inc();
        }
        // Every round was slow, but every write succeeded. The entries are claimed and their
        // rows written: they are stored and in history, and the append says so. Failing it
        // here would report a stored post as failed, and the next owner's replay of `pending`
        // would go through this same path and fail too, so the channel would stay stuck.
        // What is at stake is only the search index: the change is in the feed under
        // FEED_WRITE_ROUNDS ids, and a reader misses it only if it passed all of them.
        m::STORE_ERRORS.with_label_values(&["feed_late"]).inc();
        tracing::warn!(
            shard,
            changes = changes.len(),
            settle_ms = self.settings.feed_settle.as_millis() as u64,
            "change feed writes kept taking over half the settle time; search may miss these changes"
        );
        Ok(())
    }

    async fn by_client_id(
        &self,
        st: &Statements,
        channel: &ChannelId,
        cmid: &str,
    ) -> StorageResult<Option<Message>> {
        let Some((seq, bucket)) = self
            .first::<(i64, i64)>(st.get("client_id_get"), (&channel.0, cmid))
            .await?
        else {
            return Ok(None);
        };
        match self
            .first::<MsgRow>(st.get("message_get"), (&channel.0, bucket, seq))
            .await?
        {
            Some(row) => Ok(Some(row.message()?)),
            None => Err(corrupt(format!(
                "client_msg_id {cmid} points at missing seq {seq} in {channel}"
            ))),
        }
    }

    /// The buckets of a channel that can hold entries of `q`, in the order to read them.
    async fn plan(
        &self,
        st: &Statements,
        channel: &str,
        q: &HistoryQuery,
    ) -> StorageResult<Vec<i64>> {
        let mut buckets: Vec<(i64, i64)> = self.rows(st.get("buckets_of"), (channel,)).await?;
        buckets.sort();
        let after = q.after_seq.map(i).unwrap_or(0);
        let before = q.before_seq.map(i).unwrap_or(i64::MAX);
        let bm = self.settings.bucket_micros as i64;
        let oldest = q.oldest.map(|t| i(t.0)).unwrap_or(-1);
        let latest = q.latest.map(|t| i(t.0)).unwrap_or(i64::MAX);
        let mut keep = Vec::new();
        for (n, (bucket, first_seq)) in buckets.iter().enumerate() {
            let last_seq = buckets.get(n + 1).map(|b| b.1 - 1).unwrap_or(i64::MAX);
            let seq_ok = last_seq > after && *first_seq < before;
            let (t0, t1) = (
                bucket.saturating_mul(bm),
                bucket.saturating_add(1).saturating_mul(bm) - 1,
            );
            let ts_ok = t1 > oldest && t0 < latest;
            if seq_ok && ts_ok {
                keep.push(*bucket);
            }
        }
        if q.newest_first {
            keep.reverse();
        }
        Ok(keep)
    }

    /// Reads a channel's entries in `q`'s range and order, keeping those `keep` accepts,
    /// until `q.limit`.
    async fn scan(
        &self,
        ws: &WorkspaceId,
        channel: &ChannelId,
        q: &HistoryQuery,
        keep: impl Fn(&MsgRow) -> bool,
    ) -> StorageResult<Vec<MsgRow>> {
        let (_, st) = self.shard_of(ws);
        let limit = q.limit.max(1) as usize;
        let after = q.after_seq.map(i).unwrap_or(0);
        let before = q.before_seq.map(i).unwrap_or(i64::MAX);
        let oldest = q.oldest.map(|t| i(t.0)).unwrap_or(-1);
        let latest = q.latest.map(|t| i(t.0)).unwrap_or(i64::MAX);
        let stmt = if q.newest_first {
            st.get("scan_desc")
        } else {
            st.get("scan_asc")
        };
        let mut out = Vec::new();
        'buckets: for bucket in self.plan(st, &channel.0, q).await? {
            let mut stream = self
                .session
                .execute_iter(stmt.clone(), (&channel.0, bucket, after, before))
                .await
                .map_err(unavailable)?
                .rows_stream::<MsgRow>()
                .map_err(unavailable)?;
            while let Some(row) = stream.next().await {
                let row = row.map_err(unavailable)?;
                // ts grows with seq: past the range's far end, nothing more can match.
                if (!q.newest_first && row.ts >= latest) || (q.newest_first && row.ts <= oldest) {
                    break 'buckets;
                }
                if row.ts <= oldest || row.ts >= latest || row.workspace != ws.0 || !keep(&row) {
                    continue;
                }
                out.push(row);
                if out.len() >= limit {
                    break 'buckets;
                }
            }
        }
        Ok(out)
    }

    /// Fills in each view's reactions and pin.
    async fn with_annotations(
        &self,
        st: &Statements,
        mut views: Vec<MessageView>,
    ) -> StorageResult<Vec<MessageView>> {
        let all = try_join_all(views.iter().map(|v| {
            self.rows::<(String, String, i64)>(
                st.get("reactions_of"),
                (&v.message.channel.0, i(v.message.ts.0)),
            )
        }))
        .await?;
        let pins = try_join_all(views.iter().map(|v| {
            self.first::<(String, i64)>(st.get("pin_of"), (&v.message.channel.0, i(v.message.ts.0)))
        }))
        .await?;
        for (v, pin) in views.iter_mut().zip(pins) {
            v.pinned = pin.map(|(by, at)| crate::store::Pin {
                by: UserId(by),
                at: Ts(at as u64),
            });
        }
        for (v, mut rows) in views.iter_mut().zip(all) {
            rows.sort_by_key(|r| r.2);
            for (name, user, _) in rows {
                match v.reactions.iter_mut().find(|r| r.name == name) {
                    Some(r) => r.users.push(UserId(user)),
                    None => v.reactions.push(Reaction {
                        name,
                        users: vec![UserId(user)],
                    }),
                }
            }
        }
        Ok(views)
    }

    async fn channel_workspace(&self, id: &str) -> StorageResult<Option<String>> {
        Ok(self
            .first::<(String,)>(self.meta.get("channel_ws"), (id,))
            .await?
            .map(|r| r.0))
    }

    async fn user_workspace(&self, id: &str) -> StorageResult<Option<String>> {
        Ok(self
            .first::<(String,)>(self.meta.get("user_ws"), (id,))
            .await?
            .map(|r| r.0))
    }
}

async fn timed<T>(
    op: &'static str,
    f: impl std::future::Future<Output = StorageResult<T>>,
) -> StorageResult<T> {
    let start = Instant::now();
    let result = f.await;
    super::record_op(op, start, &result);
    result
}

#[async_trait::async_trait]
impl MessageStore for CqlStore {
    async fn create_workspace(&self, name: &str) -> StorageResult<Workspace> {
        let s = &self.inner;
        timed("create_workspace", async {
            let ws = Workspace {
                id: WorkspaceId::generate(),
                name: name.to_string(),
            };
            if !s
                .applied(s.meta.get("workspace_claim"), (&ws.name, &ws.id.0))
                .await?
            {
                return Err(StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    "workspace already exists",
                ));
            }
            if let Err(e) = s
                .exec(s.meta.get("workspace_put"), (&ws.id.0, &ws.name))
                .await
            {
                // Give the name back, or it would stay claimed by a workspace that does not
                // exist (`workspace_by_name` finds nothing, and no one can create it again).
                s.release_name("workspace_name_drop", (&ws.name, &ws.id.0), &ws.name)
                    .await;
                return Err(e);
            }
            Ok(ws)
        })
        .await
    }

    async fn workspace(&self, id: &WorkspaceId) -> StorageResult<Option<Workspace>> {
        let s = &self.inner;
        timed("workspace", async {
            Ok(
                s.first::<(String, String)>(s.meta.get("workspace_get"), (&id.0,))
                    .await?
                    .map(|(id, name)| Workspace {
                        id: WorkspaceId(id),
                        name,
                    }),
            )
        })
        .await
    }

    async fn workspace_by_name(&self, name: &str) -> StorageResult<Option<Workspace>> {
        let s = &self.inner;
        timed("workspace_by_name", async {
            let Some((id,)) = s
                .first::<(String,)>(s.meta.get("workspace_by_name"), (name,))
                .await?
            else {
                return Ok(None);
            };
            // The name is claimed before the row is written: a half-made workspace is absent.
            Ok(
                s.first::<(String, String)>(s.meta.get("workspace_get"), (&id,))
                    .await?
                    .map(|(id, name)| Workspace {
                        id: WorkspaceId(id),
                        name,
                    }),
            )
        })
        .await
    }

    async fn create_user(
        &self,
        workspace: &WorkspaceId,
        name: &str,
        real_name: &str,
        is_admin: bool,
        is_bot: bool,
    ) -> StorageResult<User> {
        let s = &self.inner;
        timed("create_user", async {
            let user = User {
                id: UserId::generate(),
                workspace: workspace.clone(),
                name: name.to_string(),
                real_name: real_name.to_string(),
                display_name: String::new(),
                is_admin,
                is_bot,
                email: String::new(),
                deleted: false,
            };
            if !s
                .applied(
                    s.meta.get("user_claim"),
                    (&workspace.0, &user.name, &user.id.0),
                )
                .await?
            {
                return Err(StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    "user already exists",
                ));
            }
            let written = async {
                s.exec(
                    s.meta.get("user_put"),
                    (
                        &workspace.0,
                        &user.id.0,
                        &user.name,
                        &user.real_name,
                        &user.display_name,
                        is_admin,
                        is_bot,
                    ),
                )
                .await?;
                s.exec(s.meta.get("user_id_put"), (&user.id.0, &workspace.0))
                    .await
            }
            .await;
            if let Err(e) = written {
                // Give the name back, or it would stay claimed by a user that does not exist.
                s.release_name(
                    "user_name_drop",
                    (&workspace.0, &user.name, &user.id.0),
                    &user.name,
                )
                .await;
                return Err(e);
            }
            Ok(user)
        })
        .await
    }

    async fn delete_user(&self, id: &UserId) -> StorageResult<bool> {
        let s = &self.inner;
        timed("delete_user", async {
            let Some(ws) = s.user_workspace(&id.0).await? else {
                return Ok(false);
            };
            let Some(user) = s
                .first::<UserRow>(s.meta.get("user_get"), (&ws, &id.0))
                .await?
                .map(User::from)
            else {
                return Ok(false);
            };
            // Memberships first (each as a leave), then the user's rows; the name goes last, so
            // that a delete that stops part way leaves the name taken, never two users with it.
            for channel in self.user_channels(id).await? {
                self.remove_member(&channel.id, id).await?;
            }
            s.exec(s.meta.get("user_del"), (&ws, &id.0)).await?;
            s.exec(s.meta.get("user_id_del"), (&id.0,)).await?;
            if !user.email.is_empty() {
                s.applied(s.meta.get("user_email_drop"), (&ws, &user.email, &id.0))
                    .await?;
            }
            s.applied(s.meta.get("user_name_drop"), (&ws, &user.name, &id.0))
                .await?;
            Ok(true)
        })
        .await
    }

    async fn user(&self, id: &UserId) -> StorageResult<Option<User>> {
        let s = &self.inner;
        timed("user", async {
            let Some(ws) = s.user_workspace(&id.0).await? else {
                return Ok(None);
            };
            Ok(s.first::<UserRow>(s.meta.get("user_get"), (&ws, &id.0))
                .await?
                .map(User::from))
        })
        .await
    }

    async fn user_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<User>> {
        let s = &self.inner;
        timed(
            "user_by_name",
            s.user_claimed_by("user_by_name", workspace, name),
        )
        .await
    }

    async fn users(&self, workspace: &WorkspaceId) -> StorageResult<Vec<User>> {
        let s = &self.inner;
        timed("users", async {
            let rows: Vec<UserRow> = s.rows(s.meta.get("users_of"), (&workspace.0,)).await?;
            Ok(rows.into_iter().map(User::from).collect())
        })
        .await
    }

    async fn set_user_deleted(&self, user: &UserId, deleted: bool) -> StorageResult<Option<User>> {
        let s = &self.inner;
        timed("set_user_deleted", async {
            let Some(ws) = s.user_workspace(&user.0).await? else {
                return Ok(None);
            };
            if s.first::<UserRow>(s.meta.get("user_get"), (&ws, &user.0))
                .await?
                .is_none()
            {
                return Ok(None);
            }
            s.exec(s.meta.get("user_deleted_put"), (deleted, &ws, &user.0))
                .await?;
            Ok(s.first::<UserRow>(s.meta.get("user_get"), (&ws, &user.0))
                .await?
                .map(User::from))
        })
        .await
    }

    async fn set_user_email(&self, user: &UserId, email: &str) -> StorageResult<Option<User>> {
        let s = &self.inner;
        let email = super::normalize_email(email);
        timed("set_user_email", async {
            let Some(ws) = s.user_workspace(&user.0).await? else {
                return Ok(None);
            };
            let Some(mut current) = s
                .first::<UserRow>(s.meta.get("user_get"), (&ws, &user.0))
                .await?
                .map(User::from)
            else {
                return Ok(None);
            };
            if current.email == email {
                return Ok(Some(current));
            }
            // Claim the new address first (a claim of ours left by an interrupted change is
            // ours still), then write it, then give the old one back: a change that stops part
            // way leaves an address claimed, never one address on two users.
            if !email.is_empty()
                && !s
                    .applied(s.meta.get("user_email_claim"), (&ws, &email, &user.0))
                    .await?
            {
                let holder = s
                    .first::<(String,)>(s.meta.get("user_by_email"), (&ws, &email))
                    .await?;
                if holder.is_none_or(|(id,)| id != user.0) {
                    return Err(StorageError::new(
                        StorageErrorKind::AlreadyExists,
                        "a user with this email already exists",
                    ));
                }
            }
            s.exec(s.meta.get("user_email_put"), (&email, &ws, &user.0))
                .await?;
            if !current.email.is_empty() {
                s.applied(
                    s.meta.get("user_email_drop"),
                    (&ws, &current.email, &user.0),
                )
                .await?;
            }
            current.email = email;
            Ok(Some(current))
        })
        .await
    }

    async fn user_by_email(
        &self,
        workspace: &WorkspaceId,
        email: &str,
    ) -> StorageResult<Option<User>> {
        let s = &self.inner;
        let email = super::normalize_email(email);
        timed("user_by_email", async {
            if email.is_empty() {
                return Ok(None);
            }
            // A claim whose change stopped part way names a user without that address yet.
            Ok(s.user_claimed_by("user_by_email", workspace, &email)
                .await?
                .filter(|u| u.email == email))
        })
        .await
    }

    async fn update_user_profile(
        &self,
        user: &UserId,
        real_name: Option<&str>,
        display_name: Option<&str>,
    ) -> StorageResult<Option<User>> {
        let s = &self.inner;
        timed("update_user_profile", async {
            let Some(ws) = s.user_workspace(&user.0).await? else {
                return Ok(None);
            };
            let Some(row) = s
                .first::<UserRow>(s.meta.get("user_get"), (&ws, &user.0))
                .await?
            else {
                return Ok(None);
            };
            let mut updated = User::from(row);
            if let Some(r) = real_name {
                updated.real_name = r.to_string();
            }
            if let Some(d) = display_name {
                updated.display_name = d.to_string();
            }
            s.exec(
                s.meta.get("user_profile"),
                (&updated.real_name, &updated.display_name, &ws, &user.0),
            )
            .await?;
            Ok(Some(updated))
        })
        .await
    }

    async fn create_channel(&self, channel: &Channel) -> StorageResult<()> {
        let s = &self.inner;
        timed("create_channel", async {
            let c = channel;
            if !s
                .applied(
                    s.meta.get("channel_claim"),
                    (&c.workspace.0, &c.name, &c.id.0),
                )
                .await?
            {
                return Err(StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    "channel already exists",
                ));
            }
            let written = async {
                s.exec(
                    s.meta.get("channel_put"),
                    (
                        &c.workspace.0,
                        &c.id.0,
                        &c.name,
                        c.is_private,
                        &c.creator.0,
                        i(c.created.0),
                        &c.topic,
                        &c.purpose,
                        c.is_archived,
                    ),
                )
                .await?;
                s.exec(s.meta.get("channel_id_put"), (&c.id.0, &c.workspace.0))
                    .await
            }
            .await;
            if let Err(e) = written {
                // Give the name back, or it would stay claimed by a channel that does not
                // exist (and a DM's pair could never open one again).
                s.release_name(
                    "channel_name_drop",
                    (&c.workspace.0, &c.name, &c.id.0),
                    &c.name,
                )
                .await;
                return Err(e);
            }
            Ok(())
        })
        .await
    }

    async fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>> {
        let s = &self.inner;
        timed("channel", async {
            let Some(ws) = s.channel_workspace(&id.0).await? else {
                return Ok(None);
            };
            Ok(
                s.first::<ChannelRow>(s.meta.get("channel_get"), (&ws, &id.0))
                    .await?
                    .map(Channel::from),
            )
        })
        .await
    }

    async fn channel_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<Channel>> {
        let s = &self.inner;
        timed("channel_by_name", async {
            let Some((id,)) = s
                .first::<(String,)>(s.meta.get("channel_name_get"), (&workspace.0, name))
                .await?
            else {
                return Ok(None);
            };
            Ok(
                s.first::<ChannelRow>(s.meta.get("channel_get"), (&workspace.0, &id))
                    .await?
                    .map(Channel::from),
            )
        })
        .await
    }

    async fn channels(
        &self,
        workspace: &WorkspaceId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> StorageResult<Vec<Channel>> {
        let s = &self.inner;
        timed("channels", async {
            let after = after.map(|a| a.0.as_str()).unwrap_or("");
            let rows: Vec<ChannelRow> = s
                .rows(
                    s.meta.get("channels_after"),
                    (&workspace.0, after, limit.clamp(1, i32::MAX as u32) as i32),
                )
                .await?;
            Ok(rows.into_iter().map(Channel::from).collect())
        })
        .await
    }

    async fn add_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let s = &self.inner;
        timed("add_member", async {
            let (ws, uws) = futures_util::try_join!(
                s.channel_workspace(&channel.0),
                s.user_workspace(&user.0)
            )?;
            let (Some(ws), Some(_)) = (ws, uws) else {
                return Err(StorageError::new(
                    StorageErrorKind::NotFound,
                    "no such channel or user",
                ));
            };
            let added = s
                .applied(s.meta.get("member_add"), (&channel.0, &user.0))
                .await?;
            // Written either way: a previous add may have stopped before this row.
            s.exec(s.meta.get("user_channel_put"), (&user.0, &channel.0, &ws))
                .await?;
            // Not added: the user was a member already, but a remove may have run between the
            // check and the row just written. The row lists the channel among the user's own
            // (search, conversations.list, what a gateway subscribes), so it must not outlive
            // the membership.
            if !added
                && s.first::<(String,)>(s.meta.get("member_get"), (&channel.0, &user.0))
                    .await?
                    .is_none()
            {
                s.exec(s.meta.get("user_channel_drop"), (&user.0, &channel.0))
                    .await?;
            }
            Ok(added)
        })
        .await
    }

    async fn remove_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let s = &self.inner;
        timed("remove_member", async {
            // The user's row goes first: if the membership's delete then fails, the user is
            // still a member (and leaving again works) without the channel listed among theirs,
            // rather than listed (and searched, and delivered) without being a member, which
            // nothing would repair. It is dropped again after the delete, in case an add that
            // found the user a member wrote it in between.
            s.exec(s.meta.get("user_channel_drop"), (&user.0, &channel.0))
                .await?;
            let removed = s
                .applied(s.meta.get("member_remove"), (&channel.0, &user.0))
                .await?;
            s.exec(s.meta.get("user_channel_drop"), (&user.0, &channel.0))
                .await?;
            Ok(removed)
        })
        .await
    }

    async fn is_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let s = &self.inner;
        timed("is_member", async {
            Ok(
                s.first::<(String,)>(s.meta.get("member_get"), (&channel.0, &user.0))
                    .await?
                    .is_some(),
            )
        })
        .await
    }

    async fn members(&self, channel: &ChannelId) -> StorageResult<Vec<UserId>> {
        let s = &self.inner;
        timed("members", async {
            let rows: Vec<(String, Option<i64>, Option<i64>)> =
                s.rows(s.meta.get("members_of"), (&channel.0,)).await?;
            Ok(rows.into_iter().map(|r| UserId(r.0)).collect())
        })
        .await
    }

    async fn user_channels(&self, user: &UserId) -> StorageResult<Vec<Channel>> {
        let s = &self.inner;
        timed("user_channels", async {
            let rows: Vec<(String, String)> =
                s.rows(s.meta.get("user_channels"), (&user.0,)).await?;
            let channels = try_join_all(
                rows.iter()
                    .map(|(id, ws)| s.first::<ChannelRow>(s.meta.get("channel_get"), (ws, id))),
            )
            .await?;
            Ok(channels.into_iter().flatten().map(Channel::from).collect())
        })
        .await
    }

    async fn update_channel(&self, channel: &Channel) -> StorageResult<()> {
        let s = &self.inner;
        timed("update_channel", async {
            let c = channel;
            let not_found =
                || StorageError::new(StorageErrorKind::NotFound, format!("no channel {}", c.id));
            let ws = s.channel_workspace(&c.id.0).await?.ok_or_else(not_found)?;
            let current = s
                .first::<ChannelRow>(s.meta.get("channel_get"), (&ws, &c.id.0))
                .await?
                .ok_or_else(not_found)?;
            let renamed = current.name != c.name;
            if renamed
                && !s
                    .applied(s.meta.get("channel_claim"), (&ws, &c.name, &c.id.0))
                    .await?
            {
                // Taken, unless by this channel (a rename that stopped half-way).
                let holder = s
                    .first::<(String,)>(s.meta.get("channel_name_get"), (&ws, &c.name))
                    .await?;
                if holder.map(|h| h.0) != Some(c.id.0.clone()) {
                    return Err(StorageError::new(
                        StorageErrorKind::AlreadyExists,
                        "channel name already exists",
                    ));
                }
            }
            s.exec(
                s.meta.get("channel_update"),
                (&c.name, &c.topic, &c.purpose, c.is_archived, &ws, &c.id.0),
            )
            .await?;
            if current.name != c.name {
                s.exec(
                    s.meta.get("channel_name_drop"),
                    (&ws, &current.name, &c.id.0),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    async fn last_read(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>> {
        let s = &self.inner;
        timed("last_read", async {
            let row: Option<(Option<i64>,)> = s
                .first(s.meta.get("member_last_read"), (&channel.0, &user.0))
                .await?;
            Ok(row.map(|(seq,)| seq.unwrap_or(0).max(0) as Seq))
        })
        .await
    }

    async fn set_last_read(
        &self,
        channel: &ChannelId,
        user: &UserId,
        seq: Seq,
    ) -> StorageResult<bool> {
        let s = &self.inner;
        timed("set_last_read", async {
            s.applied(s.meta.get("member_read"), (i(seq), &channel.0, &user.0))
                .await
        })
        .await
    }

    async fn dm_closed(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>> {
        let s = &self.inner;
        timed("dm_closed", async {
            let row: Option<(Option<i64>,)> = s
                .first(s.meta.get("member_closed"), (&channel.0, &user.0))
                .await?;
            Ok(row.and_then(|(seq,)| seq).map(|seq| seq.max(0) as Seq))
        })
        .await
    }

    async fn set_dm_closed(
        &self,
        channel: &ChannelId,
        user: &UserId,
        closed: Option<Seq>,
    ) -> StorageResult<bool> {
        let s = &self.inner;
        timed("set_dm_closed", async {
            s.applied(
                s.meta.get("member_close"),
                (closed.map(i), &channel.0, &user.0),
            )
            .await
        })
        .await
    }

    async fn workspace_members(&self, workspace: &WorkspaceId) -> StorageResult<Vec<Membership>> {
        let s = &self.inner;
        timed("workspace_members", async {
            let channels: Vec<ChannelRow> =
                s.rows(s.meta.get("channels_of"), (&workspace.0,)).await?;
            let per_channel = try_join_all(channels.iter().map(|c| {
                s.rows::<(String, Option<i64>, Option<i64>)>(s.meta.get("members_of"), (&c.id,))
            }))
            .await?;
            let mut out = Vec::new();
            for (c, members) in channels.iter().zip(per_channel) {
                for (user, last_read, closed) in members {
                    out.push(Membership {
                        channel: ChannelId(c.id.clone()),
                        user: UserId(user),
                        last_read: last_read.unwrap_or(0).max(0) as Seq,
                        closed: closed.map(|seq| seq.max(0) as Seq),
                    });
                }
            }
            out.sort_by(|a, b| (&a.channel, &a.user).cmp(&(&b.channel, &b.user)));
            Ok(out)
        })
        .await
    }

    async fn append(&self, msg: &Message) -> StorageResult<AppendOutcome> {
        let start = Instant::now();
        let (reply, rx) = oneshot::channel();
        let lane = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            msg.channel.0.hash(&mut h);
            (h.finish() % LANES as u64) as usize
        };
        self.lanes[lane]
            .send(AppendRequest::new(msg.clone(), reply))
            .map_err(|_| unavailable("store append lane stopped"))?;
        let result = rx
            .await
            .map_err(|_| unavailable("store append lane stopped"))?;
        m::STORE_OPS
            .with_label_values(&["append"])
            .observe(start.elapsed().as_secs_f64());
        result
    }

    async fn last_message(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
    ) -> StorageResult<Option<Message>> {
        let s = &self.inner;
        timed("last_message", async {
            let (shard, st) = s.shard_of(workspace);
            let Some((_, pending)) = s
                .first::<(Option<i64>, Option<Vec<u8>>)>(st.get("head_get"), (&channel.0,))
                .await?
            else {
                return Ok(None);
            };
            let pending: Vec<Message> = match pending {
                Some(p) => serde_json::from_slice(&p).map_err(corrupt)?,
                None => Vec::new(),
            };
            if pending.is_empty() {
                return Ok(None);
            }
            // The last group may have been claimed by an owner that died before writing
            // it: writing it again is harmless and makes it whole.
            s.write_entries(shard, &pending, true).await?;
            Ok(pending.into_iter().max_by_key(|m| m.seq))
        })
        .await
    }

    async fn message_by_client_msg_id(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        client_msg_id: &str,
    ) -> StorageResult<Option<Message>> {
        let s = &self.inner;
        timed("message_by_client_msg_id", async {
            let (_, st) = s.shard_of(workspace);
            s.by_client_id(st, channel, client_msg_id).await
        })
        .await
    }

    async fn history(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        query: &HistoryQuery,
    ) -> StorageResult<Vec<Message>> {
        let s = &self.inner;
        timed("history", async {
            s.scan(workspace, channel, query, |_| true)
                .await?
                .iter()
                .map(MsgRow::message)
                .collect()
        })
        .await
    }

    fn num_shards(&self) -> u32 {
        self.inner.shards.len() as u32
    }

    fn change_feed_delay(&self) -> Duration {
        self.inner.settings.feed_settle
    }

    async fn changes_since(
        &self,
        shard: u32,
        after: u64,
        limit: u32,
    ) -> StorageResult<Vec<Change>> {
        let s = &self.inner;
        timed("changes_since", async {
            let Some(st) = s.shards.get(shard as usize) else {
                return Err(StorageError::new(
                    StorageErrorKind::NotFound,
                    format!("no shard {shard}"),
                ));
            };
            let limit = limit.max(1) as usize;
            let cutoff_micros =
                now_micros().saturating_sub(s.settings.feed_settle.as_micros() as u64);
            let cutoff = cutoff_micros << 12;
            if after >= cutoff {
                return Ok(Vec::new());
            }
            let first_hour = if after == 0 {
                0
            } else {
                ((after >> 12) / MICROS_PER_HOUR) as i64
            };
            let last_hour = (cutoff_micros / MICROS_PER_HOUR) as i64;
            let hours: Vec<(i64,)> = s
                .rows(st.get("feed_hours"), (first_hour, last_hour))
                .await?;
            let mut out: Vec<Change> = Vec::new();
            for (hour,) in hours {
                let want = (limit - out.len()) as i32;
                let rows: Vec<(i64, Vec<u8>, bool)> = s
                    .rows(st.get("feed_read"), (hour, i(after), i(cutoff), want))
                    .await?;
                for (id, body, deleted) in rows {
                    out.push(Change {
                        id: id as u64,
                        message: serde_json::from_slice(&body).map_err(corrupt)?,
                        deleted,
                    });
                }
                if out.len() >= limit {
                    break;
                }
            }
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn message_views(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        query: &HistoryQuery,
        thread: Option<Ts>,
    ) -> StorageResult<Vec<MessageView>> {
        let s = &self.inner;
        timed("message_views", async {
            let (_, st) = s.shard_of(workspace);
            let rows = match thread {
                None => {
                    s.scan(workspace, channel, query, |r| {
                        // Top-level messages, and replies also shown in the channel.
                        r.is_posted()
                            && r.shown()
                            && (r.thread_ts.is_none_or(|t| t == r.ts) || r.broadcast == Some(true))
                    })
                    .await?
                }
                Some(parent) => {
                    let replies: Vec<(i64, i64)> = s
                        .rows(st.get("replies_of"), (&channel.0, i(parent.0)))
                        .await?;
                    let parent_row = s.posted_row(st, &channel.0, parent.0).await?;
                    let reply_rows = try_join_all(replies.iter().map(|(reply_ts, seq)| {
                        let b = s.bucket(*reply_ts as u64);
                        s.first::<MsgRow>(st.get("message_get"), (&channel.0, b, *seq))
                    }))
                    .await?;
                    let mut rows: Vec<MsgRow> = parent_row
                        .into_iter()
                        .chain(reply_rows.into_iter().flatten())
                        .collect();
                    let q = query;
                    let after = q.after_seq.map(i).unwrap_or(0);
                    let before = q.before_seq.map(i).unwrap_or(i64::MAX);
                    let oldest = q.oldest.map(|t| i(t.0)).unwrap_or(-1);
                    let latest = q.latest.map(|t| i(t.0)).unwrap_or(i64::MAX);
                    rows.retain(|r| {
                        r.is_posted()
                            && r.shown()
                            && r.workspace == workspace.0
                            && r.seq > after
                            && r.seq < before
                            && r.ts > oldest
                            && r.ts < latest
                    });
                    rows.sort_by_key(|r| r.seq);
                    if q.newest_first {
                        rows.reverse();
                    }
                    rows.truncate(q.limit.max(1) as usize);
                    rows
                }
            };
            let views = rows
                .iter()
                .map(MsgRow::view)
                .collect::<StorageResult<Vec<_>>>()?;
            s.with_annotations(st, views).await
        })
        .await
    }

    async fn message_view(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        ts: Ts,
    ) -> StorageResult<Option<MessageView>> {
        let s = &self.inner;
        timed("message_view", async {
            let (_, st) = s.shard_of(workspace);
            let Some(row) = s.posted_row(st, &channel.0, ts.0).await? else {
                return Ok(None);
            };
            if row.workspace != workspace.0 {
                return Ok(None);
            }
            Ok(s.with_annotations(st, vec![row.view()?]).await?.pop())
        })
        .await
    }

    async fn reacted(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        reaction: &str,
        user: Option<&UserId>,
        limit: usize,
    ) -> StorageResult<Vec<Seq>> {
        let s = &self.inner;
        timed("reacted", async {
            let (_, st) = s.shard_of(workspace);
            let limit = limit.max(1);
            // Newest first; a message reacted by several users has a row for each.
            let rows: Vec<(i64, String)> = s
                .rows(
                    st.get("reactions_named"),
                    (&channel.0, reaction, REACTED_ROWS_READ),
                )
                .await?;
            let mut targets: Vec<i64> = rows
                .into_iter()
                .filter(|(_, u)| user.is_none_or(|user| &user.0 == u))
                .map(|(ts, _)| ts)
                .collect();
            targets.dedup();
            let mut seqs = Vec::new();
            for some in targets.chunks(64) {
                let found = try_join_all(
                    some.iter()
                        .map(|ts| s.posted_row(st, &channel.0, (*ts).max(0) as u64)),
                )
                .await?;
                seqs.extend(
                    found
                        .into_iter()
                        .flatten()
                        .filter(|r| r.workspace == workspace.0 && !r.deleted.unwrap_or(false))
                        .map(|r| r.seq.max(0) as u64),
                );
                if seqs.len() >= limit {
                    break;
                }
            }
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            seqs.truncate(limit);
            Ok(seqs)
        })
        .await
    }

    async fn user_reactions(
        &self,
        workspace: &WorkspaceId,
        user: &UserId,
        before: Option<Ts>,
        limit: usize,
    ) -> StorageResult<Vec<UserReaction>> {
        let s = &self.inner;
        timed("user_reactions", async {
            let (_, st) = s.shard_of(workspace);
            let rows: Vec<(String, i64, i64, String)> = s
                .rows(
                    st.get("user_reactions_of"),
                    (&user.0, USER_REACTION_ROWS_READ),
                )
                .await?;
            // One item per message: its latest reaction by the user.
            let mut latest: HashMap<(String, i64), i64> = HashMap::new();
            for (channel, target, at, ws) in rows {
                if ws == workspace.0 {
                    let e = latest.entry((channel, target)).or_insert(at);
                    *e = (*e).max(at);
                }
            }
            let mut items: Vec<UserReaction> = latest
                .into_iter()
                .map(|((channel, target), at)| UserReaction {
                    channel: ChannelId(channel),
                    target: Ts(target.max(0) as u64),
                    at: Ts(at.max(0) as u64),
                })
                .filter(|r| before.is_none_or(|b| r.at < b))
                .collect();
            items.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.channel.cmp(&a.channel)));
            // Only messages that are still there.
            let mut out = Vec::new();
            for some in items.chunks(64) {
                let found = try_join_all(
                    some.iter()
                        .map(|r| s.posted_row(st, &r.channel.0, r.target.0)),
                )
                .await?;
                for (r, row) in some.iter().zip(found) {
                    if row.is_some_and(|row| !row.deleted.unwrap_or(false)) {
                        out.push(r.clone());
                    }
                }
                if out.len() >= limit.max(1) {
                    break;
                }
            }
            out.truncate(limit.max(1));
            Ok(out)
        })
        .await
    }

    async fn create_file(&self, file: &FileRecord) -> StorageResult<()> {
        let s = &self.inner;
        timed("create_file", async {
            let ws = &file.workspace.0;
            let put = s
                .applied(
                    s.meta.get("file_put"),
                    (ws, &file.id, i(file.created.0), file.json()),
                )
                .await?;
            if !put {
                return Err(StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    format!("file {} exists", file.id),
                ));
            }
            s.exec(
                s.meta.get("file_time_put"),
                (ws, i(file.created.0), &file.id),
            )
            .await
            .map(drop)
        })
        .await
    }

    async fn update_file(&self, file: &FileRecord) -> StorageResult<()> {
        let s = &self.inner;
        timed("update_file", async {
            if !s
                .applied(
                    s.meta.get("file_update"),
                    (file.json(), &file.workspace.0, &file.id),
                )
                .await?
            {
                return Err(StorageError::new(
                    StorageErrorKind::NotFound,
                    format!("no file {}", file.id),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<Option<FileRecord>> {
        let s = &self.inner;
        timed("file", async {
            s.first::<(String,)>(s.meta.get("file_get"), (&workspace.0, id))
                .await?
                .map(|(json,)| FileRecord::from_json(&json))
                .transpose()
        })
        .await
    }

    async fn files(
        &self,
        workspace: &WorkspaceId,
        before: Option<Ts>,
        limit: usize,
    ) -> StorageResult<Vec<FileRecord>> {
        let s = &self.inner;
        timed("files", async {
            let before = before.map_or(i64::MAX, |t| i(t.0));
            let limit = limit.clamp(1, i32::MAX as usize) as i32;
            let ids: Vec<(String,)> = s
                .rows(s.meta.get("files_before"), (&workspace.0, before, limit))
                .await?;
            let found = try_join_all(
                ids.iter()
                    .map(|(id,)| s.first::<(String,)>(s.meta.get("file_get"), (&workspace.0, id))),
            )
            .await?;
            found
                .into_iter()
                .flatten()
                .map(|(json,)| FileRecord::from_json(&json))
                .collect()
        })
        .await
    }

    async fn put_file_content(
        &self,
        workspace: &WorkspaceId,
        id: &str,
        bytes: Vec<u8>,
    ) -> StorageResult<()> {
        let s = &self.inner;
        timed("put_file_content", async {
            for (n, chunk) in bytes.chunks(FILE_CHUNK_BYTES).enumerate() {
                s.exec(
                    s.meta.get("file_chunk_put"),
                    (&workspace.0, id, n as i32, chunk.to_vec()),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    async fn file_content(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<Vec<u8>>> {
        let Some(record) = self.file(workspace, id).await? else {
            return Ok(None);
        };
        if !record.uploaded {
            return Ok(None);
        }
        let s = &self.inner;
        timed("file_content", async {
            let chunks = (record.size as usize).div_ceil(FILE_CHUNK_BYTES);
            let mut out = Vec::with_capacity(record.size as usize);
            for n in 0..chunks {
                let Some((data,)) = s
                    .first::<(Vec<u8>,)>(s.meta.get("file_chunk_get"), (&workspace.0, id, n as i32))
                    .await?
                else {
                    return Err(StorageError::new(
                        StorageErrorKind::Corrupt,
                        format!("file {id} lacks its chunk {n}"),
                    ));
                };
                out.extend_from_slice(&data);
            }
            out.truncate(record.size as usize);
            Ok(Some(out))
        })
        .await
    }

    async fn delete_file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<bool> {
        let Some(record) = self.file(workspace, id).await? else {
            return Ok(false);
        };
        let s = &self.inner;
        timed("delete_file", async {
            let removed = s
                .applied(s.meta.get("file_drop"), (&workspace.0, id))
                .await?;
            s.exec(
                s.meta.get("file_time_drop"),
                (&workspace.0, i(record.created.0), id),
            )
            .await?;
            s.exec(s.meta.get("file_chunks_drop"), (&workspace.0, id))
                .await?;
            Ok(removed)
        })
        .await
    }

    async fn schedule_message(&self, scheduled: &ScheduledMessage) -> StorageResult<()> {
        let s = &self.inner;
        timed("schedule_message", async {
            let id = &scheduled.id;
            let post_at = i(scheduled.post_at.0);
            // The due row first: one without its message is skipped by the scheduler (and
            // dropped), while a message without its due row would never be posted.
            s.exec(
                s.meta.get("scheduled_due_put"),
                (
                    scheduled_part(id),
                    post_at,
                    id,
                    &scheduled.message.workspace.0,
                ),
            )
            .await?;
            let put = s
                .applied(
                    s.meta.get("scheduled_put"),
                    (
                        &scheduled.message.workspace.0,
                        id,
                        post_at,
                        i(scheduled.created.0),
                        scheduled.message_json(),
                    ),
                )
                .await?;
            if !put {
                return Err(StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    format!("scheduled message {id} exists"),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn scheduled_messages(
        &self,
        workspace: &WorkspaceId,
    ) -> StorageResult<Vec<ScheduledMessage>> {
        let s = &self.inner;
        timed("scheduled_messages", async {
            let rows: Vec<(String, i64, i64, String)> =
                s.rows(s.meta.get("scheduled_of"), (&workspace.0,)).await?;
            let mut out = rows
                .into_iter()
                .map(scheduled_from_row)
                .collect::<StorageResult<Vec<_>>>()?;
            out.sort_by(|a, b| (a.post_at, &a.id).cmp(&(b.post_at, &b.id)));
            Ok(out)
        })
        .await
    }

    async fn scheduled_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>> {
        let s = &self.inner;
        timed("scheduled_message", async {
            s.first::<(String, i64, i64, String)>(s.meta.get("scheduled_get"), (&workspace.0, id))
                .await?
                .map(scheduled_from_row)
                .transpose()
        })
        .await
    }

    async fn due_scheduled_messages(
        &self,
        from: Ts,
        to: Ts,
        limit: u32,
    ) -> StorageResult<Vec<ScheduledMessage>> {
        let s = &self.inner;
        timed("due_scheduled_messages", async {
            let limit = limit.min(i32::MAX as u32) as i32;
            let parts = try_join_all((0..SCHEDULED_PARTS as i32).map(|part| {
                s.rows::<(String, String, i64)>(
                    s.meta.get("scheduled_due"),
                    (part, i(from.0), i(to.0), limit),
                )
            }))
            .await?;
            let keys: Vec<(String, String, i64)> = parts.into_iter().flatten().collect();
            let found = try_join_all(keys.iter().map(|(ws, id, _)| {
                s.first::<(String, i64, i64, String)>(s.meta.get("scheduled_get"), (ws, id))
            }))
            .await?;
            // A due row without its message (unscheduled, its due row's removal lost, or
            // never written whole), or whose message is for another time (an id scheduled
            // twice), is dropped.
            let mut out = Vec::with_capacity(found.len());
            for ((_, id, post_at), row) in keys.iter().zip(found) {
                match row {
                    Some(row) if row.1 == *post_at => out.push(scheduled_from_row(row)?),
                    _ => s.drop_due_row(id, *post_at).await?,
                }
            }
            out.sort_by(|a, b| (a.post_at, &a.id).cmp(&(b.post_at, &b.id)));
            out.truncate(limit.max(0) as usize);
            Ok(out)
        })
        .await
    }

    async fn unschedule_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>> {
        let s = &self.inner;
        timed("unschedule_message", async {
            let Some(row) = s
                .first::<(String, i64, i64, String)>(
                    s.meta.get("scheduled_get"),
                    (&workspace.0, id),
                )
                .await?
            else {
                return Ok(None);
            };
            let found = scheduled_from_row(row)?;
            // Of two removals at once, only the one whose delete applied removed it.
            if !s
                .applied(s.meta.get("scheduled_drop"), (&workspace.0, id))
                .await?
            {
                return Ok(None);
            }
            s.drop_due_row(id, i(found.post_at.0)).await?;
            Ok(Some(found))
        })
        .await
    }

    async fn record_set_version(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<u64> {
        let s = &self.inner;
        timed("record_set_version", async {
            let row: Option<(Option<i64>,)> = s
                .first(s.meta.get("records_version"), (&workspace.0, kind.name()))
                .await?;
            Ok(row.and_then(|(v,)| v).unwrap_or(0).max(0) as u64)
        })
        .await
    }

    async fn record_set(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<RecordSet> {
        let s = &self.inner;
        timed("record_set", async {
            let rows: Vec<(Option<i64>, Option<String>, Option<String>)> = s
                .rows(s.meta.get("records_of"), (&workspace.0, kind.name()))
                .await?;
            let version = rows.first().and_then(|r| r.0).unwrap_or(0).max(0) as u64;
            let mut records: Vec<(String, String)> = rows
                .into_iter()
                .filter_map(|(_, id, record)| Some((id?, record?)))
                .collect();
            records.sort();
            Ok(RecordSet { version, records })
        })
        .await
    }

    async fn put_record(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
        id: &str,
        record: Option<&str>,
        expected: u64,
    ) -> StorageResult<bool> {
        let s = &self.inner;
        timed("put_record", async {
            let next = i(expected.saturating_add(1));
            let (ws, kind) = (&workspace.0, kind.name());
            if expected == 0 {
                s.applied(s.meta.get("record_first"), (record, next, ws, &kind, id))
                    .await
            } else {
                s.applied(
                    s.meta.get("record_put"),
                    (record, next, ws, &kind, id, i(expected)),
                )
                .await
            }
        })
        .await
    }

    async fn pin_count(&self, workspace: &WorkspaceId, channel: &ChannelId) -> StorageResult<u64> {
        let s = &self.inner;
        timed("pin_count", async {
            let (_, st) = s.shard_of(workspace);
            let n = s
                .first::<(i64,)>(st.get("pin_count"), (&channel.0,))
                .await?
                .map_or(0, |r| r.0);
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn pins(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        limit: usize,
    ) -> StorageResult<Vec<MessageView>> {
        let s = &self.inner;
        timed("pins", async {
            let (_, st) = s.shard_of(workspace);
            let mut pins: Vec<(i64, i64)> = s.rows(st.get("pins_of"), (&channel.0,)).await?;
            pins.sort_by_key(|p| std::cmp::Reverse(p.1));
            pins.truncate(limit.max(1));
            let rows = try_join_all(
                pins.iter()
                    .map(|(ts, _)| s.posted_row(st, &channel.0, *ts as u64)),
            )
            .await?;
            let views = rows
                .into_iter()
                .flatten()
                .filter(|r| r.workspace == workspace.0)
                .map(|r| r.view())
                .collect::<StorageResult<Vec<_>>>()?;
            let mut views = s.with_annotations(st, views).await?;
            views.sort_by_key(|v| std::cmp::Reverse(v.pinned.as_ref().map(|p| p.at)));
            Ok(views)
        })
        .await
    }
}

/// A real CQL server for tests: the project's single-node Cassandra
/// (`deploy/cassandra/start.sh`), or the cluster named by `SWITCHBOARD_TEST_CQL`. Compiled in
/// (it is small) so the end-to-end tests of other crates can use it without a feature.
pub mod testing {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// The test node's CQL port (set in `deploy/cassandra/test-node.sh`).
    pub const CQL_PORT: u16 = 19042;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("shared/ has a parent")
            .to_path_buf()
    }

    /// Starts the test node if it is not running (idempotent, shared by every test process
    /// of the run) and returns its `host:port`.
    pub fn ensure_cluster() -> String {
        static NODE: OnceLock<String> = OnceLock::new();
        NODE.get_or_init(|| {
            if let Ok(node) = std::env::var("SWITCHBOARD_TEST_CQL") {
                return node;
            }
            let script = repo_root().join("deploy/cassandra/test-node.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg("start")
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} start failed:\n{}\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            format!("127.0.0.1:{CQL_PORT}")
        })
        .clone()
    }

    /// Settings for a fresh, uniquely named set of keyspaces on the test node.
    pub fn settings(shards: u32) -> CqlSettings {
        let prefix = format!("t{:016x}", rand::random::<u64>());
        CqlSettings {
            nodes: vec![ensure_cluster()],
            local_datacenter: None,
            meta_keyspace: format!("{prefix}_meta"),
            shard_keyspaces: (0..shards).map(|n| format!("{prefix}_shard_{n}")).collect(),
            replication_factor: 1,
            write_consistency: Consistency::LocalQuorum,
            read_consistency: Consistency::LocalQuorum,
            bucket_micros: MICROS_PER_HOUR,
            feed_settle: Duration::from_millis(300),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Drops every keyspace whose name starts with `prefix` (test clean-up).
    pub async fn drop_keyspaces_with_prefix(node: &str, prefix: &str) {
        let mut settings = self::settings(0);
        settings.nodes = vec![node.to_string()];
        let session = connect(&settings).await.expect("connect");
        let rows = session
            .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
            .await
            .expect("list keyspaces")
            .into_rows_result()
            .expect("rows");
        let names: Vec<String> = rows
            .rows::<(String,)>()
            .expect("rows")
            .filter_map(Result::ok)
            .map(|r| r.0)
            .filter(|n| n.starts_with(prefix))
            .collect();
        for ks in names {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                .await;
        }
    }

    /// Drops the keyspaces of `settings` (test clean-up).
    pub async fn drop_keyspaces(settings: &CqlSettings) {
        let session = connect(settings).await.expect("connect");
        for ks in settings
            .shard_keyspaces
            .iter()
            .chain([&settings.meta_keyspace])
        {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_storage_conformance_suite_on_a_real_cql_server() {
        let settings = testing::settings(2);
        // The first shard's messages table as made before `previous` was added: the
        // migration adds the column, and the suite runs on it.
        let session = connect(&settings).await.unwrap();
        let old = &settings.shard_keyspaces[0];
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {old} WITH replication = {}",
                    settings.replication()
                ),
                (),
            )
            .await
            .unwrap();
        let old_table = SHARD_TABLES[0].replace(
            " previous text, broadcast boolean,\n        rich text, bot boolean,",
            "",
        );
        assert_ne!(old_table, SHARD_TABLES[0]);
        session
            .query_unpaged(old_table.replace("{ks}", old), ())
            .await
            .unwrap();
        assert!(!has_column(&session, old, "messages", "previous")
            .await
            .unwrap());
        // The meta keyspace's users table as made before `email`.
        let meta = &settings.meta_keyspace;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {meta} WITH replication = {}",
                    settings.replication()
                ),
                (),
            )
            .await
            .unwrap();
        let old_users = META_TABLES[3].replace(" email text,", "");
        assert_ne!(old_users, META_TABLES[3]);
        session
            .query_unpaged(old_users.replace("{ks}", meta), ())
            .await
            .unwrap();
        assert!(!has_column(&session, meta, "users", "email").await.unwrap());
        CqlStore::migrate(&settings).await.unwrap();
        assert!(has_column(&session, meta, "users", "email").await.unwrap());
        for ks in &settings.shard_keyspaces {
            for column in ["previous", "broadcast", "rich", "bot"] {
                assert!(has_column(&session, ks, "messages", column).await.unwrap());
            }
        }
        drop(session);
        // Migrating again is a no-op.
        CqlStore::migrate(&settings).await.unwrap();
        let store = CqlStore::open(settings.clone()).await.unwrap();
        crate::store::conformance::run_all(&store).await;
        drop(store);

        // A store opened with settings the schema was not made with is refused.
        let mut other = settings.clone();
        other.bucket_micros *= 2;
        let err = CqlStore::open(other).await.err().unwrap();
        assert_eq!(err.kind, StorageErrorKind::Corrupt, "{err}");
        testing::drop_keyspaces(&settings).await;

        // A store that was never migrated says what to run.
        let err = CqlStore::open(testing::settings(1)).await.err().unwrap();
        assert!(err.message.contains("switchboard store migrate"), "{err}");
    }

    fn msg(ws: &WorkspaceId, ch: &ChannelId, seq: u64, ts: u64) -> Message {
        Message {
            workspace: ws.clone(),
            channel: ch.clone(),
            seq,
            ts: Ts(ts),
            user: UserId::from("UPOSTER"),
            text: format!("message {seq}"),
            client_msg_id: Some(format!("cmid-{seq}")),
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    fn request(
        msg: Message,
    ) -> (
        AppendRequest,
        oneshot::Receiver<StorageResult<AppendOutcome>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (AppendRequest::new(msg, reply), rx)
    }

    /// A group is stored as JSON in one cell by one lightweight transaction: 256 large
    /// messages were one group of several MiB, past what Cassandra accepts in a mutation, and
    /// every post in it failed. Groups are now capped by their encoded size too.
    #[test]
    fn append_groups_are_capped_by_encoded_bytes_and_keep_arrival_order() {
        let ws = WorkspaceId::from("TBIG");
        let (big, small) = (ChannelId::from("CBIG"), ChannelId::from("CSMALL"));
        let mut waiting = Vec::new();
        let mut expected: HashMap<ChannelId, Vec<u64>> = HashMap::new();
        for seq in 1..=MAX_GROUP as u64 {
            let mut m = msg(&ws, &big, seq, 1_000 + seq);
            // 8,000 characters, 16,000 bytes as JSON (a quote is escaped, é is 2 bytes).
            m.text = "é\"".repeat(4_000);
            waiting.push(request(m).0);
            expected.entry(big.clone()).or_default().push(seq);
            waiting.push(request(msg(&ws, &small, seq, 1_000 + seq)).0);
            expected.entry(small.clone()).or_default().push(seq);
        }
        // One message over the cap on its own is still written, alone.
        let mut huge = msg(&ws, &big, MAX_GROUP as u64 + 1, 5_000);
        huge.text = "x".repeat(MAX_GROUP_BYTES + 1);
        waiting.push(request(huge).0);
        expected.get_mut(&big).unwrap().push(MAX_GROUP as u64 + 1);
        waiting.push(request(msg(&ws, &big, MAX_GROUP as u64 + 2, 5_001)).0);
        expected.get_mut(&big).unwrap().push(MAX_GROUP as u64 + 2);

        let groups = group_by_channel(waiting);
        let mut seen: HashMap<ChannelId, Vec<u64>> = HashMap::new();
        for g in &groups {
            assert!(!g.is_empty() && g.len() <= MAX_GROUP);
            let msgs: Vec<Message> = g.iter().map(|r| r.msg.clone()).collect();
            assert!(msgs.iter().all(|m| m.channel == msgs[0].channel));
            let pending = serde_json::to_vec(&msgs).unwrap().len();
            assert!(
                pending <= MAX_GROUP_BYTES || msgs.len() == 1,
                "a group of {} is {pending} bytes",
                msgs.len()
            );
            seen.entry(msgs[0].channel.clone())
                .or_default()
                .extend(msgs.iter().map(|m| m.seq));
        }
        assert_eq!(seen, expected);
        // The small messages still go as one group; the large ones in several.
        let of = |ch: &ChannelId| groups.iter().filter(|g| g[0].msg.channel == *ch).count();
        assert_eq!(of(&small), 1);
        assert!(of(&big) > 3, "{} groups", of(&big));
        // The measured length is the claim's: a group at the cap is exactly at it.
        let one = request(msg(&ws, &small, 1, 1)).0;
        assert_eq!(one.encoded_len, serde_json::to_vec(&one.msg).unwrap().len());
    }

    /// A repeat of a `client_msg_id` earlier in the same group was told its message was
    /// stored before the group was claimed: when the claim then failed, the repeat still
    /// answered `Duplicate` of a message that is not in the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_group_repeat_gets_the_groups_outcome() {
        let settings = testing::settings(1);
        CqlStore::migrate(&settings).await.unwrap();
        let store = CqlStore::open(settings.clone()).await.unwrap();
        let ws = store.create_workspace("repeats").await.unwrap().id;
        let ch = ChannelId::generate();
        let same_id = |seq: u64| {
            let mut m = msg(&ws, &ch, seq, 10_000 + seq);
            m.client_msg_id = Some("once".into());
            m
        };
        // The group claims from seq 5 on a new channel: a conflict, nothing stored.
        let (first, first_rx) = request(same_id(5));
        let (repeat, repeat_rx) = request(same_id(6));
        write_group(&store.inner, vec![first, repeat]).await;
        assert_eq!(
            first_rx.await.unwrap().unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );
        let answer = repeat_rx.await.unwrap();
        assert_eq!(
            answer.as_ref().map_err(|e| e.kind).err(),
            Some(StorageErrorKind::SeqConflict),
            "{answer:?}"
        );
        assert!(store
            .message_by_client_msg_id(&ws, &ch, "once")
            .await
            .unwrap()
            .is_none());
        // When the group is stored, the repeat is a duplicate of the first.
        let (first, first_rx) = request(same_id(1));
        let (repeat, repeat_rx) = request(same_id(2));
        write_group(&store.inner, vec![first, repeat]).await;
        assert_eq!(first_rx.await.unwrap().unwrap(), AppendOutcome::Stored);
        assert!(matches!(
            repeat_rx.await.unwrap().unwrap(),
            AppendOutcome::Duplicate(m) if m.seq == 1
        ));
        testing::drop_keyspaces(&settings).await;
    }

    /// A workspace whose row could not be written kept its name claimed: `workspace_by_name`
    /// found nothing, and no one could create the name again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workspace_whose_row_failed_gives_its_name_back() {
        let settings = testing::settings(1);
        CqlStore::migrate(&settings).await.unwrap();
        let store = CqlStore::open(settings.clone()).await.unwrap();
        let meta = &settings.meta_keyspace;
        let session = &store.inner.session;
        // The claim (workspace_names) succeeds; the row (workspaces) cannot be written.
        session
            .query_unpaged(format!("DROP TABLE {meta}.workspaces"), ())
            .await
            .unwrap();
        assert!(store.create_workspace("phoenix").await.is_err());
        let claims = session
            .query_unpaged(
                format!("SELECT id FROM {meta}.workspace_names WHERE name = 'phoenix'"),
                (),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
        assert_eq!(claims, 0, "the failed creation kept the name");
        // With the table back, the name can be taken.
        session
            .query_unpaged(META_TABLES[1].replace("{ks}", meta), ())
            .await
            .unwrap();
        let ws = store.create_workspace("phoenix").await.unwrap();
        assert_eq!(store.workspace_by_name("phoenix").await.unwrap(), Some(ws));
        testing::drop_keyspaces(&settings).await;
    }

    /// Change feed writes slower than half the settle time in every round (here every write
    /// is: the settle time is 0, which validation refuses) used to fail the append after its
    /// rows were stored, and the next owner's replay of the group failed the same way, so the
    /// channel stayed stuck. The append is stored, so it now says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_change_feed_writes_do_not_fail_a_stored_append() {
        let mut settings = testing::settings(1);
        settings.feed_settle = Duration::ZERO;
        CqlStore::migrate(&settings).await.unwrap();
        let store = CqlStore::open(settings.clone()).await.unwrap();
        let ws = store.create_workspace("slow feed").await.unwrap().id;
        let ch = ChannelId::generate();
        let late = || m::STORE_ERRORS.with_label_values(&["feed_late"]).get();
        let late_before = late();
        let now = now_micros();
        assert_eq!(
            store.append(&msg(&ws, &ch, 1, now)).await.unwrap(),
            AppendOutcome::Stored
        );
        assert!(late() > late_before);
        // A takeover replays the group through the same path.
        assert_eq!(store.last_message(&ws, &ch).await.unwrap().unwrap().seq, 1);
        assert_eq!(
            store.append(&msg(&ws, &ch, 2, now + 1)).await.unwrap(),
            AppendOutcome::Stored
        );
        let changes = store.changes_since(0, 0, 1000).await.unwrap();
        for seq in [1, 2] {
            assert!(
                changes.iter().any(|c| c.message.seq == seq),
                "seq {seq} is not in the feed"
            );
        }
        testing::drop_keyspaces(&settings).await;
    }

    /// Two handles are two channel servers; a claimed group whose owner died before writing
    /// its rows is made whole by the next owner's `last_message`; history pages across
    /// buckets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_recovery_and_pages_across_buckets() {
        let settings = testing::settings(1);
        CqlStore::migrate(&settings).await.unwrap();
        let a = CqlStore::open(settings.clone()).await.unwrap();
        let b = CqlStore::open(settings.clone()).await.unwrap();
        let ws = a.create_workspace("fence").await.unwrap().id;
        let ch = ChannelId::generate();
        let hour = MICROS_PER_HOUR;
        let base = 1_800_000 * hour / 1000 * 1000;
        // 12 messages, 20 minutes apart: 4 buckets of an hour.
        let at = |seq: u64| base + seq * hour / 3;

        // Concurrent appends of one channel are claimed in groups and all stored.
        let first: Vec<Message> = (1..=6).map(|s| msg(&ws, &ch, s, at(s))).collect();
        let outcomes = join_all(first.iter().map(|m| a.append(m))).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(AppendOutcome::Stored))),
            "{outcomes:?}"
        );

        // The other handle cannot take a sequence the first one wrote.
        let mut clash = msg(&ws, &ch, 6, at(6) + 1);
        clash.client_msg_id = None;
        assert_eq!(
            b.append(&clash).await.unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );
        // It continues after the head once it knows it.
        assert_eq!(b.last_message(&ws, &ch).await.unwrap().unwrap().seq, 6);
        assert_eq!(
            b.append(&msg(&ws, &ch, 7, at(7))).await.unwrap(),
            AppendOutcome::Stored
        );
        // ... and fences the first handle in turn.
        clash = msg(&ws, &ch, 7, at(7) + 5);
        clash.client_msg_id = None;
        assert_eq!(
            a.append(&clash).await.unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );

        // Nor can anyone claim past a gap: seq 9 while the head is 7 would leave 8 missing
        // for good. A new channel starts at seq 1.
        let mut gap = msg(&ws, &ch, 9, at(9));
        gap.client_msg_id = None;
        assert_eq!(
            b.append(&gap).await.unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );
        let fresh = ChannelId::generate();
        let mut second = msg(&ws, &fresh, 2, at(2));
        second.client_msg_id = None;
        assert_eq!(
            b.append(&second).await.unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );
        assert_eq!(
            b.append(&msg(&ws, &fresh, 1, at(1))).await.unwrap(),
            AppendOutcome::Stored
        );

        // An owner claims 8..=9 and dies before writing the rows.
        let lost: Vec<Message> = (8..=9).map(|s| msg(&ws, &ch, s, at(s))).collect();
        a.inner.claim(&a.inner.shards[0], &lost).await.unwrap();
        let page = |after: Option<u64>, before: Option<u64>, newest_first: bool, limit: u32| {
            HistoryQuery {
                after_seq: after,
                before_seq: before,
                limit,
                newest_first,
                ..Default::default()
            }
        };
        let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(
                b.history(&ws, &ch, &page(None, None, false, 100))
                    .await
                    .unwrap()
            )
            .len(),
            7
        );
        // The next owner recovers them and carries on.
        assert_eq!(b.last_message(&ws, &ch).await.unwrap().unwrap().seq, 9);
        assert_eq!(
            b.message_by_client_msg_id(&ws, &ch, "cmid-8")
                .await
                .unwrap()
                .unwrap()
                .seq,
            8
        );
        for s in 10..=12 {
            b.append(&msg(&ws, &ch, s, at(s))).await.unwrap();
        }
        // A repeated client_msg_id after the recovery is a duplicate, not a new message.
        let mut again = msg(&ws, &ch, 13, at(13));
        again.client_msg_id = Some("cmid-9".into());
        assert!(
            matches!(b.append(&again).await.unwrap(), AppendOutcome::Duplicate(m) if m.seq == 9)
        );

        // Pages across the four buckets, both ways.
        assert_eq!(
            seqs(
                a.history(&ws, &ch, &page(None, None, false, 100))
                    .await
                    .unwrap()
            ),
            (1..=12).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(
                a.history(&ws, &ch, &page(None, None, true, 4))
                    .await
                    .unwrap()
            ),
            vec![12, 11, 10, 9]
        );
        assert_eq!(
            seqs(
                a.history(&ws, &ch, &page(None, Some(9), true, 4))
                    .await
                    .unwrap()
            ),
            vec![8, 7, 6, 5]
        );
        assert_eq!(
            seqs(
                a.history(&ws, &ch, &page(Some(2), None, false, 5))
                    .await
                    .unwrap()
            ),
            vec![3, 4, 5, 6, 7]
        );
        assert_eq!(
            seqs(
                a.history(&ws, &ch, &page(Some(5), Some(9), false, 100))
                    .await
                    .unwrap()
            ),
            vec![6, 7, 8]
        );
        let by_ts = HistoryQuery {
            oldest: Some(Ts(at(4))),
            latest: Some(Ts(at(8))),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(
            seqs(a.history(&ws, &ch, &by_ts).await.unwrap()),
            vec![5, 6, 7]
        );
        let view = a.message_view(&ws, &ch, Ts(at(10))).await.unwrap().unwrap();
        assert_eq!(view.message.seq, 10);
        testing::drop_keyspaces(&settings).await;
    }
}
