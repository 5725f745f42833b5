//! The embedded store: SQLite files under one directory.
//!
//! - `meta.sqlite`: workspaces, users, channels, memberships.
//! - `shard-<n>.sqlite`: the messages of the channels that [`ShardKey::Channel`] maps to
//!   shard `n` (of the workspaces that [`ShardKey::Workspace`] maps to it, in a store created
//!   before the key was recorded). Each shard has its own writer, so spreading channels lets
//!   one busy workspace commit on every shard at once.
//!
//! Messages are keyed `(channel_id, seq)` in a `WITHOUT ROWID` table, so the rows of one
//! channel are contiguous in the B-tree and a history page is a single range read. Files are
//! in WAL mode with `synchronous=FULL`: several processes of one machine can share them (the
//! multi-process tests and `dev` do), and a committed append survives a crash.
//!
//! Appends go through one writer thread per shard that group-commits: it takes every append
//! waiting, writes them in one transaction, syncs once, then answers each. Throughput then
//! grows with load instead of being capped by one fsync per message.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Params, Row};
use tokio::sync::oneshot;

use super::{
    AppendOutcome, Change, Channel, FileRecord, GroupAppend, HistoryQuery, Membership,
    MessageStore, MessageView, Reaction, RecordKind, RecordSet, ScheduledMessage, ShardKey,
    StorageError, StorageErrorKind, StorageResult, User, UserChannelMembership, UserReaction,
    Workspace,
};
use crate::config::MAX_STORE_SHARDS as MAX_SHARDS;
use crate::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use crate::protocol::{Message, MessageKind};
use crate::telemetry::metrics as m;

/// Most appends written in one transaction.
const MAX_BATCH: usize = 512;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// WAL pages after which a shard's writer checkpoints on commit itself (SQLite's default is
/// 1000). Its checkpointer thread has copied most of them by then, so the writer copies only
/// the newest ones; but only a checkpoint with no append running beside it can finish, and
/// only after a finished one does the next commit start the log again from its beginning, so
/// the writer's own keeps the log bounded. Before the checkpointer, the writer copied all
/// 8,000 pages itself, tens of milliseconds during which every post waited: with appends to
/// many channels (three scattered pages per message) that came every few hundred
/// milliseconds and set the p99 of a post.
const WRITER_WAL_AUTOCHECKPOINT_PAGES: i64 = 8000;
/// How often, at most, a shard's checkpointer thread copies committed WAL pages into the
/// database file (a passive checkpoint, beside the writer, which goes on appending).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Prepared statements kept per connection. Each connection runs fewer than 40 distinct
/// statements (the meta ones, or one shard's reads or writes); this holds all of them, so none
/// is parsed twice.
const STATEMENT_CACHE_CAPACITY: usize = 128;

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(StorageErrorKind::Unavailable, e.to_string())
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Which file a store file is: its device and inode, as `stat` gives them.
#[cfg(unix)]
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Without device and inode numbers, only the path's existence is checked.
#[cfg(not(unix))]
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|_| (0, 0))
}

/// Guards a store file against being deleted or replaced while it is open. Such a file keeps
/// taking writes, into an inode that no path reaches and that is gone once the process ends
/// (a data directory removed under a running server, a restore copied over it): acknowledging
/// them would break "acknowledged means durable". So every write checks, after it commits and
/// before it is acknowledged, that the file at the path is still the one it opened, and is
/// refused when it is not, as is every write after it. While the process holds the file
/// open its inode number cannot be reused, so the same device and inode means the same file.
struct FileGuard {
    path: PathBuf,
    /// `meta` or `shard-N`, the `file` label of [`m::STORE_FILES_LOST`].
    label: String,
    identity: (u64, u64),
    lost: std::sync::atomic::AtomicBool,
}

impl FileGuard {
    fn new(path: &Path, label: String) -> StorageResult<FileGuard> {
        let identity = file_identity(path)
            .map_err(|e| unavailable(format!("stat {}: {e}", path.display())))?;
        Ok(FileGuard {
            path: path.to_path_buf(),
            label,
            identity,
            lost: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Refuses at once when an earlier check found the file gone.
    fn refuse_if_lost(&self) -> StorageResult<()> {
        if self.lost.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.error());
        }
        Ok(())
    }

    /// Whether the file at the path is still the one opened; the first time it is not, says
    /// so in the log and the counter, and from then on every write is refused.
    fn check(&self) -> StorageResult<()> {
        self.refuse_if_lost()?;
        let found = file_identity(&self.path);
        if matches!(&found, Ok(id) if *id == self.identity) {
            return Ok(());
        }
        if !self.lost.swap(true, std::sync::atomic::Ordering::Relaxed) {
            m::STORE_FILES_LOST
                .with_label_values(&[self.label.as_str()])
                .inc();
            let now = match found {
                Ok(_) => "another file is at its path".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(
                file = %self.path.display(),
                now,
                "a store file was deleted or replaced while open: refusing every write to it \
                 from now on, since none would be durable; restart the server on a good data \
                 directory"
            );
        }
        Err(self.error())
    }

    fn error(&self) -> StorageError {
        unavailable(format!(
            "store file {} was deleted or replaced while open; writes to it are refused \
             because they would not be durable",
            self.path.display()
        ))
    }
}

/// `execute` and `query_row` through the connection's statement cache: SQL is parsed once per
/// connection instead of on every call. A [`rusqlite::Transaction`] derefs to its connection,
/// so these work on one too. Errors are those of `execute` and `query_row`.
trait CachedStatements {
    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn open(path: &Path) -> StorageResult<Connection> {
    let conn =
        Connection::open(path).map_err(|e| unavailable(format!("open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(unavailable)?;
    Ok(conn)
}

const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    real_name TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    is_bot INTEGER NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    UNIQUE (workspace, name)
);
CREATE TABLE IF NOT EXISTS channels (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL REFERENCES workspaces(id),
    name TEXT NOT NULL,
    is_private INTEGER NOT NULL,
    creator TEXT NOT NULL,
    created INTEGER NOT NULL,
    topic TEXT NOT NULL,
    purpose TEXT NOT NULL,
    is_archived INTEGER NOT NULL,
    UNIQUE (workspace, name)
);
CREATE TABLE IF NOT EXISTS members (
    channel TEXT NOT NULL REFERENCES channels(id),
    user TEXT NOT NULL REFERENCES users(id),
    last_read INTEGER NOT NULL DEFAULT 0,
    closed_seq INTEGER,
    PRIMARY KEY (channel, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user, channel);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    created INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_time ON files(workspace, created, id);
CREATE TABLE IF NOT EXISTS scheduled (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    post_at INTEGER NOT NULL,
    created INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduled_by_time ON scheduled(post_at, id);
CREATE INDEX IF NOT EXISTS scheduled_by_workspace ON scheduled(workspace, post_at, id);
CREATE TABLE IF NOT EXISTS records (
    workspace TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (workspace, kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS record_versions (
    workspace TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (workspace, kind)
) WITHOUT ROWID;
";

/// Columns added after the first release of the schema: `(table, column, declaration)`.
/// A store created before them gets them on open.
const META_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("users", "display_name", "TEXT NOT NULL DEFAULT ''"),
    ("members", "last_read", "INTEGER NOT NULL DEFAULT 0"),
    ("users", "email", "TEXT NOT NULL DEFAULT ''"),
    ("users", "deleted", "INTEGER NOT NULL DEFAULT 0"),
    // Where a member closed a DM (`conversations.close`); NULL while open.
    ("members", "closed_seq", "INTEGER"),
];

/// Adds the columns of [`META_ADDED_COLUMNS`] that an older store lacks. Several processes
/// may open one store at once: a column another one added meanwhile is not an error.
fn migrate_meta(conn: &Connection) -> StorageResult<()> {
    add_missing_columns(conn, META_ADDED_COLUMNS)?;
    // One user per address in a workspace (after the column, which older stores lack).
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS users_by_email ON users(workspace, email)
         WHERE email != ''",
    )
    .map_err(unavailable)
}

fn add_missing_columns(conn: &Connection, columns: &[(&str, &str, &str)]) -> StorageResult<()> {
    for (table, column, decl) in columns {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(unavailable)?;
        let has = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(unavailable)?
            .filter_map(Result::ok)
            .any(|name| name == *column);
        if has {
            continue;
        }
        match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("duplicate column") => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(())
}

const SHARD_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    channel_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    workspace TEXT NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    client_msg_id TEXT,
    thread_ts INTEGER,
    PRIMARY KEY (channel_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_ts ON messages(channel_id, ts);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages(channel_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    channel_id TEXT NOT NULL,
    target_ts INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    pinned_ts INTEGER NOT NULL,
    PRIMARY KEY (channel_id, target_ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reactions (
    channel_id TEXT NOT NULL,
    target_ts INTEGER NOT NULL,
    reaction TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (channel_id, target_ts, reaction, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reactions_by_name ON reactions(channel_id, reaction, target_ts);
CREATE INDEX IF NOT EXISTS reactions_by_user ON reactions(user_id);
";

/// Columns added to `messages` after its first version: what each stream entry is (kind,
/// target, reaction) and the state of posted messages (edited, deleted, thread replies).
const SHARD_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("messages", "kind", "TEXT NOT NULL DEFAULT 'posted'"),
    ("messages", "target_ts", "INTEGER"),
    ("messages", "reaction", "TEXT"),
    ("messages", "edited_ts", "INTEGER"),
    ("messages", "deleted", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "reply_count", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "latest_reply", "INTEGER"),
    // An edit's or deletion's `previous_message`, as JSON.
    ("messages", "previous", "TEXT"),
    // A thread reply also shown in the channel (`reply_broadcast`).
    ("messages", "broadcast", "INTEGER NOT NULL DEFAULT 0"),
    // Its `blocks` and `attachments` ([`RichContent`]), as JSON.
    ("messages", "rich", "TEXT"),
    // Posted by a bot user.
    ("messages", "bot", "INTEGER NOT NULL DEFAULT 0"),
];

const MESSAGE_COLUMNS: &str =
    "channel_id, seq, ts, workspace, user_id, text, client_msg_id, thread_ts, kind, target_ts, reaction, previous, broadcast, rich, bot";
/// How many columns [`MESSAGE_COLUMNS`] names: what a query selects after them starts here.
const AFTER_MESSAGE: usize = 15;
/// What a message view reads beyond [`MESSAGE_COLUMNS`].
const VIEW_COLUMNS: &str = "edited_ts, deleted, reply_count, latest_reply";

/// An entry's `rich` as stored: JSON, or NULL.
fn rich_json(msg: &Message) -> Option<String> {
    msg.rich
        .as_ref()
        .map(|r| serde_json::to_string(r).expect("rich content serializes"))
}

/// An entry's `previous` as stored: JSON, or NULL.
fn previous_json(msg: &Message) -> Option<String> {
    msg.previous
        .as_ref()
        .map(|p| serde_json::to_string(p).expect("a previous message serializes"))
}

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let kind_name: String = row.get(8)?;
    let previous = match row.get::<_, Option<String>>(11)? {
        Some(json) => Some(Box::new(serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Text, e.into())
        })?)),
        None => None,
    };
    let target = row.get::<_, Option<i64>>(9)?.map(|t| Ts(t as u64));
    let reaction: Option<String> = row.get(10)?;
    let kind = MessageKind::from_parts(&kind_name, target, reaction).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("bad entry kind {kind_name}").into(),
        )
    })?;
    Ok(Message {
        channel: ChannelId(row.get(0)?),
        seq: row.get::<_, i64>(1)? as Seq,
        ts: Ts(row.get::<_, i64>(2)? as u64),
        workspace: WorkspaceId(row.get(3)?),
        user: UserId(row.get(4)?),
        text: row.get(5)?,
        client_msg_id: row.get(6)?,
        thread_ts: row.get::<_, Option<i64>>(7)?.map(|t| Ts(t as u64)),
        kind,
        previous,
        broadcast: row.get(12)?,
        rich: match row.get::<_, Option<String>>(13)? {
            Some(json) => Some(Box::new(serde_json::from_str(&json).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, e.into())
            })?)),
            None => None,
        },
        bot: row.get(14)?,
    })
}

/// A message row with the view columns after the message columns.
fn row_to_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
    const AT: usize = AFTER_MESSAGE;
    Ok(MessageView {
        message: row_to_message(row)?,
        edited: row.get::<_, Option<i64>>(AT)?.map(|t| Ts(t as u64)),
        deleted: row.get(AT + 1)?,
        reply_count: row.get::<_, i64>(AT + 2)? as u32,
        latest_reply: row.get::<_, Option<i64>>(AT + 3)?.map(|t| Ts(t as u64)),
        reactions: Vec::new(),
        pinned: None,
    })
}

fn row_to_workspace(row: &rusqlite::Row<'_>) -> rusqlite::Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId(row.get(0)?),
        name: row.get(1)?,
    })
}

fn row_to_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(row.get(0)?),
        workspace: WorkspaceId(row.get(1)?),
        name: row.get(2)?,
        real_name: row.get(3)?,
        is_admin: row.get(4)?,
        is_bot: row.get(5)?,
        display_name: row.get(6)?,
        email: row.get(7)?,
        deleted: row.get(8)?,
    })
}

const USER_COLUMNS: &str =
    "id, workspace, name, real_name, is_admin, is_bot, display_name, email, deleted";
const CHANNEL_COLUMNS: &str =
    "id, workspace, name, is_private, creator, created, topic, purpose, is_archived";

fn row_to_channel(row: &rusqlite::Row<'_>) -> rusqlite::Result<Channel> {
    Ok(Channel {
        id: ChannelId(row.get(0)?),
        workspace: WorkspaceId(row.get(1)?),
        name: row.get(2)?,
        is_private: row.get(3)?,
        creator: UserId(row.get(4)?),
        created: Ts(row.get::<_, i64>(5)? as u64),
        topic: row.get(6)?,
        purpose: row.get(7)?,
        is_archived: row.get(8)?,
    })
}

/// Connections a pool holds, and so the most blocking calls on one file at once. Calls past
/// it wait (asynchronously) for a connection: on many cores, with hundreds of requests in
/// flight, opening a connection per call past a fixed number of idle ones meant opening the
/// file, setting its pragmas and preparing every statement again for most calls.
const MAX_CONNECTIONS: usize = 32;

/// A bounded pool of connections to one file, for reads and metadata writes.
struct ConnPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Connections opened so far (the first one included).
    opened: std::sync::atomic::AtomicUsize,
}

impl ConnPool {
    fn new(path: PathBuf, first: Connection) -> ConnPool {
        ConnPool {
            path,
            idle: Mutex::new(vec![first]),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            opened: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// Runs `f` on a connection of this pool on the blocking pool, once one is free.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let start = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("store connection pool closed"))?;
        let pool = self.clone();
        timed(op, start, move || {
            let _permit = permit;
            pool.with(f)
        })
        .await
    }

    /// Runs a point read (one row, or a few, by key: a handful of cached pages, a few
    /// microseconds) on the calling thread. On the blocking pool such a read costs more in
    /// the two thread hand-offs than in SQLite: on 2 cores, running the post path's point
    /// reads here took `posts` from 6.8k to 8.2k posts/s and its p99 from 19 to 15 ms. It never
    /// waits on this thread: the connection's busy timeout is zero for it, so a file that is
    /// locked (WAL recovery after a crash, say) fails it at once, and then, as after any
    /// failure here, it runs again on the blocking pool, where it may wait as usual.
    async fn read_now<T, F>(self: &Arc<Self>, op: &'static str, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> StorageResult<T> + Send + 'static,
    {
        let start = Instant::now();
        let first = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| unavailable("store connection pool closed"))?;
            self.with(|c| {
                c.busy_timeout(Duration::ZERO).map_err(unavailable)?;
                let result = f(c);
                c.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
                result
            })
        };
        match first {
            Err(e) if e.kind == StorageErrorKind::Unavailable => {
                m::STORE_READS_HANDED_OFF.with_label_values(&[op]).inc();
                tracing::debug!(op, error = %e, "store read handed to the blocking pool");
                self.run(op, f).await
            }
            result => {
                super::record_op(op, start, &result);
                result
            }
        }
    }

    /// Runs `f` on an idle connection, or a new one. Callers hold a permit, so at most
    /// [`MAX_CONNECTIONS`] are ever open and every one is kept.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> StorageResult<T>) -> StorageResult<T> {
        let popped = self.idle.lock().pop();
        let mut conn = match popped {
            Some(c) => c,
            None => {
                let conn = open(&self.path)?;
                m::STORE_CONNECTIONS_OPENED.inc();
                self.opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn
            }
        };
        let result = f(&mut conn);
        self.idle.lock().push(conn);
        result
    }
}

enum AppendRequest {
    /// [`MessageStore::append`].
    One {
        msg: Message,
        reply: oneshot::Sender<StorageResult<AppendOutcome>>,
    },
    /// [`MessageStore::append_new`].
    Group {
        msgs: Vec<Message>,
        reply: oneshot::Sender<StorageResult<GroupAppend>>,
    },
}

/// What [`write_batch`] answers to one [`AppendRequest`].
enum AppendReply {
    One(StorageResult<AppendOutcome>),
    Group(GroupAppend),
}

impl AppendRequest {
    fn answer(self, reply: AppendReply) {
        match (self, reply) {
            (AppendRequest::One { reply, .. }, AppendReply::One(outcome)) => {
                let _ = reply.send(outcome);
            }
            (AppendRequest::Group { reply, .. }, AppendReply::Group(outcome)) => {
                let _ = reply.send(Ok(outcome));
            }
            (req, _) => req.fail(unavailable(
                "store writer answered the wrong kind of append",
            )),
        }
    }

    fn fail(self, e: StorageError) {
        match self {
            AppendRequest::One { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            AppendRequest::Group { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

struct Shard {
    reads: Arc<ConnPool>,
    writer: std::sync::mpsc::Sender<AppendRequest>,
    /// The shard's file, as its writer checks it (also checked by [`MessageStore::fault`]).
    guard: Arc<FileGuard>,
}

/// The embedded store.
pub struct SqliteStore {
    meta: Arc<ConnPool>,
    /// Checked by every metadata write (see [`FileGuard`]).
    meta_guard: Arc<FileGuard>,
    /// Taken by every metadata write, so that writers queue in order here instead of in
    /// SQLite's busy handler, which sleeps 1, 2, 5, 10 … 100 ms between tries: 16 concurrent
    /// `conversations.join` calls managed about 200 writes a second that way.
    meta_writes: tokio::sync::Mutex<()>,
    shards: Vec<Arc<Shard>>,
    shard_key: ShardKey,
    /// Where files' bytes are kept: a file each, named by its id.
    files_dir: PathBuf,
}

/// The shard count a new store gets when the configuration leaves it to the store: a writer
/// per CPU core, at least 4 and at most 16. On 16 cores, 16 shards instead of 4 took the
/// channel server's p99 per post at about 10,900 posts/s from 8.6–9.3 ms to 4.8–6.2 ms: each
/// writer was busy 60–90 % of the time with 4 (bench/RESULTS.md, tenth session). On 2 cores
/// fewer writers cost less CPU per post, so 4 stays the least.
pub fn auto_shards() -> u32 {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(4, 16) as u32
}

/// Records the shard count and key if the store is new, in one transaction (several processes
/// may create one store at once), and returns the recorded ones. A store from before the key
/// was recorded (a count but no key, or workspaces but no settings) keeps a shard per
/// workspace, which is how its messages were written.
fn record_settings(
    conn: &mut Connection,
    num_shards: u32,
    new_key: ShardKey,
) -> StorageResult<(String, String)> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let get = |tx: &rusqlite::Transaction<'_>, key: &str| {
        tx.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(unavailable)
    };
    if get(&tx, "shards")?.is_none() {
        // A store that has workspaces but recorded nothing predates the settings: per
        // workspace, like everything before the key was recorded.
        let has_data: bool = tx
            .query_row("SELECT EXISTS (SELECT 1 FROM workspaces)", [], |r| r.get(0))
            .map_err(unavailable)?;
        let key = if has_data {
            ShardKey::Workspace
        } else {
            new_key
        };
        tx.execute(
            "INSERT INTO settings VALUES ('shards', ?1), ('shard_key', ?2)",
            params![num_shards.to_string(), key.name()],
        )
        .map_err(unavailable)?;
    }
    let shards = get(&tx, "shards")?.unwrap_or_default();
    let key = get(&tx, "shard_key")?.unwrap_or_else(|| ShardKey::Workspace.name().to_string());
    tx.commit().map_err(unavailable)?;
    Ok((shards, key))
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `dir` with `num_shards` message shards. The
    /// shard count is recorded on first open and must not change afterwards; 0 takes the
    /// recorded count, or [`auto_shards`] for a new store. A new store
    /// spreads each workspace's channels over the shards ([`ShardKey::Channel`]); one created
    /// before that keeps a shard per workspace (its recorded [`ShardKey`]).
    pub fn open(dir: &Path, num_shards: u32) -> StorageResult<SqliteStore> {
        SqliteStore::open_with_key(dir, num_shards, ShardKey::Channel)
    }

    /// [`SqliteStore::open`], with `new_key` as the shard key if this creates the store (an
    /// existing store keeps the one it recorded).
    pub fn open_with_key(
        dir: &Path,
        num_shards: u32,
        new_key: ShardKey,
    ) -> StorageResult<SqliteStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("create {}: {e}", dir.display())))?;
        let meta_path = dir.join("meta.sqlite");
        let mut conn = open(&meta_path)?;
        conn.execute_batch(META_SCHEMA).map_err(unavailable)?;
        migrate_meta(&conn)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(unavailable)?;
        let wanted = if num_shards == 0 {
            auto_shards()
        } else {
            num_shards
        };
        let (recorded, key) = record_settings(&mut conn, wanted, new_key)?;
        let count = match recorded.parse::<u32>() {
            Ok(n) if (1..=MAX_SHARDS).contains(&n) && (num_shards == 0 || n == num_shards) => n,
            Ok(n) if (1..=MAX_SHARDS).contains(&n) => {
                return Err(StorageError::new(
                    StorageErrorKind::Corrupt,
                    format!(
                        "store at {} was created with {n} shards, config says {num_shards}",
                        dir.display()
                    ),
                ))
            }
            _ => {
                return Err(StorageError::new(
                    StorageErrorKind::Corrupt,
                    format!(
                        "store at {} records {recorded:?} shards, not a count in 1..={MAX_SHARDS}",
                        dir.display()
                    ),
                ))
            }
        };
        let Some(shard_key) = ShardKey::from_name(&key) else {
            return Err(StorageError::new(
                StorageErrorKind::Corrupt,
                format!(
                    "store at {} has an unknown shard key {key:?}",
                    dir.display()
                ),
            ));
        };
        let meta_guard = Arc::new(FileGuard::new(&meta_path, "meta".into())?);
        let meta = Arc::new(ConnPool::new(meta_path, conn));
        let mut shards = Vec::new();
        for n in 0..count {
            let path = dir.join(format!("shard-{n}.sqlite"));
            let conn = open(&path)?;
            conn.execute_batch(SHARD_SCHEMA).map_err(unavailable)?;
            add_missing_columns(&conn, SHARD_ADDED_COLUMNS)?;
            let (tx, rx) = std::sync::mpsc::channel();
            let writer = open(&path)?;
            writer
                .pragma_update(None, "wal_autocheckpoint", WRITER_WAL_AUTOCHECKPOINT_PAGES)
                .map_err(unavailable)?;
            let checkpointer = open(&path)?;
            checkpointer
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(unavailable)?;
            let (nudge, commits) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("store-ckpt-{n}"))
                .spawn(move || checkpointer_loop(checkpointer, n.to_string(), commits))
                .map_err(unavailable)?;
            let guard = Arc::new(FileGuard::new(&path, format!("shard-{n}"))?);
            let writer_guard = guard.clone();
            std::thread::Builder::new()
                .name(format!("store-shard-{n}"))
                .spawn(move || writer_loop(writer, rx, nudge, writer_guard))
                .map_err(unavailable)?;
            shards.push(Arc::new(Shard {
                reads: Arc::new(ConnPool::new(path, conn)),
                writer: tx,
                guard,
            }));
        }
        Ok(SqliteStore {
            meta,
            meta_guard,
            meta_writes: tokio::sync::Mutex::new(()),
            shards,
            shard_key,
            files_dir: dir.join("files"),
        })
    }

    /// What picks a message's shard in this store.
    pub fn shard_key(&self) -> ShardKey {
        self.shard_key
    }

    fn shard(&self, workspace: &WorkspaceId, channel: &ChannelId) -> Arc<Shard> {
        self.shards[self
            .shard_key
            .shard(workspace, channel, self.shards.len() as u32) as usize]
            .clone()
    }

    async fn meta<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        self.meta.run(op, f).await
    }

    /// [`Self::meta`] for a call that writes: one at a time (see `meta_writes`).
    /// The user of `workspace` whose `column` (unique in a workspace) is `value`.
    async fn user_where(
        &self,
        op: &'static str,
        column: &'static str,
        workspace: &WorkspaceId,
        value: String,
    ) -> StorageResult<Option<User>> {
        let ws = workspace.clone();
        self.meta
            .read_now(op, move |c| {
                c.query_row_cached(
                    &format!(
                        "SELECT {USER_COLUMNS} FROM users WHERE workspace = ?1 AND {column} = ?2"
                    ),
                    params![ws.0, value],
                    row_to_user,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn meta_write<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let _turn = self.meta_writes.lock().await;
        let guard = self.meta_guard.clone();
        self.meta
            .run(op, move |c| {
                guard.refuse_if_lost()?;
                let written = f(c)?;
                // Committed is not yet durable: the file must still be the one at the path.
                guard.check()?;
                Ok(written)
            })
            .await
    }

    /// Where a file's bytes are kept: under `files/`, named by workspace and id (which are
    /// letters and digits: nothing else reaches a path).
    fn file_path(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<PathBuf> {
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !plain(&workspace.0) || !plain(id) {
            return Err(StorageError::new(
                StorageErrorKind::NotFound,
                format!("no file {id:?}"),
            ));
        }
        Ok(self.files_dir.join(format!("{}-{id}", workspace.0)))
    }

    async fn read_shard<T: Send + 'static>(
        &self,
        op: &'static str,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        self.shard(workspace, channel).reads.run(op, f).await
    }
}

/// Runs `f` on the blocking pool and records its latency (from `start`) and failure.
async fn timed<T: Send + 'static>(
    op: &'static str,
    start: Instant,
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    let result = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| unavailable(format!("store task failed: {e}")))?;
    super::record_op(op, start, &result);
    result
}

/// Group commit: take every waiting append, write them in one transaction, answer each.
fn writer_loop(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<AppendRequest>,
    checkpointer: std::sync::mpsc::SyncSender<()>,
    guard: Arc<FileGuard>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Err(e) = guard.refuse_if_lost() {
            m::STORE_ERRORS.with_label_values(&["append"]).inc();
            for req in batch {
                req.fail(e.clone());
            }
            continue;
        }
        let start = Instant::now();
        m::STORE_BATCH_SIZE.observe(batch.len() as f64);
        // Committed is not yet durable: the file must still be the one at the path.
        match write_batch(&mut conn, &batch)
            .map_err(unavailable)
            .and_then(|replies| {
                guard.check()?;
                Ok(replies)
            }) {
            Ok(replies) => {
                for (req, reply) in batch.into_iter().zip(replies) {
                    req.answer(reply);
                }
            }
            Err(e) => {
                m::STORE_ERRORS.with_label_values(&["append"]).inc();
                for req in batch {
                    req.fail(e.clone());
                }
            }
        }
        m::STORE_OPS
            .with_label_values(&["append_batch"])
            .observe(start.elapsed().as_secs_f64());
        // Full means a nudge is already waiting.
        let _ = checkpointer.try_send(());
    }
}

/// Checkpoints a shard's WAL beside its writer: after commits, at most once per
/// [`CHECKPOINT_EVERY`], a passive checkpoint (it copies what readers no longer need and never
/// waits for the writer, which keeps appending). Ends with the writer.
fn checkpointer_loop(conn: Connection, shard: String, commits: std::sync::mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        let start = Instant::now();
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        match result {
            Ok(frames) => m::STORE_WAL_FRAMES
                .with_label_values(&[shard.as_str()])
                .set(frames.max(0)),
            Err(e) => {
                m::STORE_ERRORS.with_label_values(&["checkpoint"]).inc();
                tracing::warn!(error = %e, "store checkpoint failed");
            }
        }
        m::STORE_OPS
            .with_label_values(&["checkpoint"])
            .observe(start.elapsed().as_secs_f64());
        std::thread::sleep(CHECKPOINT_EVERY.saturating_sub(start.elapsed()));
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[AppendRequest],
) -> Result<Vec<AppendReply>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut replies = Vec::with_capacity(batch.len());
    {
        let mut by_client_id = tx.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ?1 AND client_msg_id = ?2"
        ))?;
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ))?;
        let mut record_change =
            tx.prepare_cached("INSERT INTO changes (channel_id, seq) VALUES (?1, ?2)")?;
        // `checked`: its client_msg_id is known not to be stored (a group checks them all
        // first), so the lookup is not made twice.
        let mut append = |by_client_id: &mut rusqlite::CachedStatement<'_>,
                          msg: &Message,
                          checked: bool|
         -> Result<StorageResult<AppendOutcome>, rusqlite::Error> {
            if let (Some(cmid), false) = (&msg.client_msg_id, checked) {
                if let Some(existing) = by_client_id
                    .query_row(params![msg.channel.0, cmid], row_to_message)
                    .optional()?
                {
                    return Ok(Ok(AppendOutcome::Duplicate(Box::new(existing))));
                }
            }
            let result = insert.execute(params![
                msg.channel.0,
                msg.seq as i64,
                msg.ts.0 as i64,
                msg.workspace.0,
                msg.user.0,
                msg.text,
                msg.client_msg_id,
                msg.thread_ts.map(|t| t.0 as i64),
                msg.kind.name(),
                msg.kind.target().map(|t| t.0 as i64),
                msg.kind.reaction(),
                previous_json(msg),
                msg.broadcast,
                rich_json(msg),
                msg.bot,
            ]);
            Ok(match result {
                Ok(_) => {
                    // Apply the entry to the message it changes, in the same transaction, and
                    // record which posted message changed for the search feed.
                    let changed = apply_entry(&tx, msg)?;
                    if let Some(seq) = changed {
                        record_change.execute(params![msg.channel.0, seq as i64])?;
                    }
                    Ok(AppendOutcome::Stored)
                }
                Err(e) if is_constraint(&e) => Err(StorageError::new(
                    StorageErrorKind::SeqConflict,
                    format!(
                        "channel {} already has seq {} or ts {}",
                        msg.channel, msg.seq, msg.ts
                    ),
                )),
                Err(e) => return Err(e),
            })
        };
        for req in batch {
            match req {
                AppendRequest::One { msg, .. } => {
                    replies.push(AppendReply::One(append(&mut by_client_id, msg, false)?))
                }
                AppendRequest::Group { msgs, .. } => {
                    // Every id is checked before anything is written, so a repeat leaves no
                    // gap in the numbering of the rest.
                    let mut repeated = Vec::new();
                    for (i, msg) in msgs.iter().enumerate() {
                        if let Some(cmid) = &msg.client_msg_id {
                            if let Some(existing) = by_client_id
                                .query_row(params![msg.channel.0, cmid], row_to_message)
                                .optional()?
                            {
                                repeated.push((i, existing));
                            }
                        }
                    }
                    let reply = if repeated.is_empty() {
                        let mut outcomes = Vec::with_capacity(msgs.len());
                        let mut ids = std::collections::HashSet::new();
                        for msg in msgs {
                            // One repeating an earlier message of the group is checked
                            // again, after the earlier one is written.
                            let unique =
                                msg.client_msg_id.as_deref().is_none_or(|id| ids.insert(id));
                            outcomes.push(append(&mut by_client_id, msg, unique)?);
                        }
                        GroupAppend::Appended(outcomes)
                    } else {
                        GroupAppend::Repeated(repeated)
                    };
                    replies.push(AppendReply::Group(reply));
                }
            }
        }
    }
    tx.commit()?;
    Ok(replies)
}

/// Applies a stored entry to the state of the message it concerns. Returns the sequence of the
/// posted message whose searchable state changed, if any.
fn apply_entry(
    tx: &rusqlite::Transaction<'_>,
    msg: &Message,
) -> Result<Option<Seq>, rusqlite::Error> {
    let target_seq = |target: Ts| -> Result<Option<Seq>, rusqlite::Error> {
        tx.prepare_cached(
            "SELECT seq FROM messages WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted'",
        )?
        .query_row(params![msg.channel.0, target.0 as i64], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map(|s| s.map(|s| s as Seq))
    };
    match &msg.kind {
        MessageKind::Posted => {
            if let Some(parent) = msg.thread_ts.filter(|p| *p != msg.ts) {
                tx.prepare_cached(
                    "UPDATE messages SET reply_count = reply_count + 1, latest_reply = ?3
                     WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted'",
                )?
                .execute(params![
                    msg.channel.0,
                    parent.0 as i64,
                    msg.ts.0 as i64
                ])?;
            }
            Ok(Some(msg.seq))
        }
        MessageKind::Edited { target } => {
            tx.prepare_cached(
                "UPDATE messages SET text = ?3, edited_ts = ?4, rich = ?5
                 WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted' AND deleted = 0",
            )?
            .execute(params![
                msg.channel.0,
                target.0 as i64,
                msg.text,
                msg.ts.0 as i64,
                rich_json(msg)
            ])?;
            target_seq(*target)
        }
        MessageKind::Deleted { target } => {
            // A reply that goes leaves its thread: the parent counts one fewer, and its latest
            // reply is the one before it when it was the latest.
            let reply_of: Option<(i64, bool)> = tx
                .prepare_cached(
                    "SELECT thread_ts, deleted FROM messages
                     WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted'",
                )?
                .query_row(params![msg.channel.0, target.0 as i64], |r| {
                    Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, bool>(1)?))
                })
                .optional()?
                .and_then(|(thread, deleted)| thread.map(|t| (t, deleted)))
                .filter(|(thread, deleted)| *thread != target.0 as i64 && !deleted);
            tx.prepare_cached(
                "UPDATE messages SET text = '', deleted = 1, rich = NULL WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted'",
            )?
            .execute(params![msg.channel.0, target.0 as i64])?;
            if let Some((parent, _)) = reply_of {
                tx.prepare_cached(
                    "UPDATE messages SET reply_count = MAX(reply_count - 1, 0),
                         latest_reply = CASE WHEN latest_reply = ?3 THEN
                             (SELECT ts FROM messages
                              WHERE channel_id = ?1 AND ts > ?2 AND ts < ?3 AND thread_ts = ?2
                                AND kind = 'posted' AND deleted = 0
                              ORDER BY ts DESC LIMIT 1)
                         ELSE latest_reply END
                     WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted'",
                )?
                .execute(params![msg.channel.0, parent, target.0 as i64])?;
            }
            tx.prepare_cached("DELETE FROM reactions WHERE channel_id = ?1 AND target_ts = ?2")?
                .execute(params![msg.channel.0, target.0 as i64])?;
            // A deleted message leaves the channel's pins too, as in Slack.
            tx.prepare_cached("DELETE FROM pins WHERE channel_id = ?1 AND target_ts = ?2")?
                .execute(params![msg.channel.0, target.0 as i64])?;
            target_seq(*target)
        }
        MessageKind::Pinned { target } => {
            // Only a message that is there (not deleted) is pinned.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO pins (channel_id, target_ts, user_id, pinned_ts)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM messages
                   WHERE channel_id = ?1 AND ts = ?2 AND kind = 'posted' AND deleted = 0)",
            )?
            .execute(params![
                msg.channel.0,
                target.0 as i64,
                msg.user.0,
                msg.ts.0 as i64
            ])?;
            Ok(None)
        }
        MessageKind::Unpinned { target } => {
            tx.prepare_cached("DELETE FROM pins WHERE channel_id = ?1 AND target_ts = ?2")?
                .execute(params![msg.channel.0, target.0 as i64])?;
            Ok(None)
        }
        MessageKind::ReactionAdded { target, reaction } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO reactions (channel_id, target_ts, reaction, user_id, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![msg.channel.0, target.0 as i64, reaction, msg.user.0, msg.seq as i64])?;
            Ok(None)
        }
        MessageKind::ReactionRemoved { target, reaction } => {
            tx.prepare_cached(
                "DELETE FROM reactions WHERE channel_id = ?1 AND target_ts = ?2 AND reaction = ?3 AND user_id = ?4",
            )?
            .execute(params![msg.channel.0, target.0 as i64, reaction, msg.user.0])?;
            Ok(None)
        }
    }
}

/// Writes `bytes` to `path` (in `dir`) so that it is there after a crash: a temporary file,
/// synced, renamed over `path`, and the directory synced.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> StorageResult<()> {
    use std::io::Write;
    let fail =
        |what: &str, e: std::io::Error| unavailable(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
    f.write_all(bytes).map_err(|e| fail("write", e))?;
    f.sync_all().map_err(|e| fail("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("rename", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync the directory of", e))
}

/// The scheduled messages that `sql` (selecting id, post_at, created, message) finds.
fn scheduled_rows(
    c: &Connection,
    sql: &str,
    params: impl Params,
) -> StorageResult<Vec<ScheduledMessage>> {
    let mut stmt = c.prepare_cached(sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    rows.into_iter()
        .map(|(id, post_at, created, message)| {
            ScheduledMessage::from_row(
                id,
                Ts(post_at.max(0) as u64),
                Ts(created.max(0) as u64),
                &message,
            )
        })
        .collect()
}

/// Fills in the reactions and the pin of each view.
fn load_annotations(c: &Connection, views: &mut [MessageView]) -> StorageResult<()> {
    load_reactions(c, views)?;
    let mut stmt = c
        .prepare_cached(
            "SELECT user_id, pinned_ts FROM pins WHERE channel_id = ?1 AND target_ts = ?2",
        )
        .map_err(unavailable)?;
    for v in views.iter_mut() {
        v.pinned = stmt
            .query_row(params![v.message.channel.0, v.message.ts.0 as i64], |r| {
                Ok(crate::store::Pin {
                    by: UserId(r.get(0)?),
                    at: Ts(r.get::<_, i64>(1)? as u64),
                })
            })
            .optional()
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Fills in the reactions of each view, grouped by name in first-reaction order.
fn load_reactions(c: &Connection, views: &mut [MessageView]) -> StorageResult<()> {
    let mut stmt = c
        .prepare_cached(
            "SELECT reaction, user_id FROM reactions WHERE channel_id = ?1 AND target_ts = ?2 ORDER BY seq",
        )
        .map_err(unavailable)?;
    for v in views.iter_mut() {
        let rows = stmt
            .query_map(params![v.message.channel.0, v.message.ts.0 as i64], |r| {
                Ok((r.get::<_, String>(0)?, UserId(r.get(1)?)))
            })
            .map_err(unavailable)?;
        for row in rows {
            let (name, user) = row.map_err(unavailable)?;
            match v.reactions.iter_mut().find(|r| r.name == name) {
                Some(r) => r.users.push(user),
                None => v.reactions.push(Reaction {
                    name,
                    users: vec![user],
                }),
            }
        }
    }
    Ok(())
}

/// Runs `update` on a user's row and reads the user back, in one transaction; `None` when
/// there is no such user.
fn update_user_row(
    c: &mut Connection,
    id: &UserId,
    update: impl FnOnce(&rusqlite::Transaction<'_>) -> StorageResult<usize>,
) -> StorageResult<Option<User>> {
    let tx = c.transaction().map_err(unavailable)?;
    update(&tx)?;
    let user = tx
        .query_row_cached(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
            params![id.0],
            row_to_user,
        )
        .optional()
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    Ok(user)
}

fn map_insert_err(e: rusqlite::Error, what: &str) -> StorageError {
    if is_constraint(&e) {
        StorageError::new(
            StorageErrorKind::AlreadyExists,
            format!("{what} already exists"),
        )
    } else {
        unavailable(e)
    }
}

#[async_trait::async_trait]
impl MessageStore for SqliteStore {
    async fn create_workspace(&self, name: &str) -> StorageResult<Workspace> {
        let ws = Workspace {
            id: WorkspaceId::generate(),
            name: name.to_string(),
        };
        let row = ws.clone();
        self.meta_write("create_workspace", move |c| {
            c.execute_cached(
                "INSERT INTO workspaces (id, name) VALUES (?1, ?2)",
                params![row.id.0, row.name],
            )
            .map_err(|e| map_insert_err(e, "workspace"))?;
            Ok(())
        })
        .await?;
        Ok(ws)
    }

    async fn workspace(&self, id: &WorkspaceId) -> StorageResult<Option<Workspace>> {
        let id = id.clone();
        self.meta
            .read_now("workspace", move |c| {
                c.query_row_cached(
                    "SELECT id, name FROM workspaces WHERE id = ?1",
                    params![id.0],
                    row_to_workspace,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn workspace_by_name(&self, name: &str) -> StorageResult<Option<Workspace>> {
        let name = name.to_string();
        self.meta
            .read_now("workspace_by_name", move |c| {
                c.query_row_cached(
                    "SELECT id, name FROM workspaces WHERE name = ?1",
                    params![name],
                    row_to_workspace,
                )
                .optional()
                .map_err(unavailable)
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
        let row = user.clone();
        self.meta_write("create_user", move |c| {
            c.execute_cached(
                &format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    row.id.0,
                    row.workspace.0,
                    row.name,
                    row.real_name,
                    row.is_admin,
                    row.is_bot,
                    row.display_name,
                    row.email,
                    row.deleted
                ],
            )
            .map_err(|e| map_insert_err(e, "user"))?;
            Ok(())
        })
        .await?;
        Ok(user)
    }

    fn fault(&self) -> Option<String> {
        std::iter::once(&self.meta_guard)
            .chain(self.shards.iter().map(|s| &s.guard))
            .find_map(|g| g.check().err())
            .map(|e| e.message)
    }

    async fn delete_user(&self, id: &UserId) -> StorageResult<bool> {
        let id = id.clone();
        self.meta_write("delete_user", move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            tx.execute_cached("DELETE FROM members WHERE user = ?1", params![id.0])
                .map_err(unavailable)?;
            let deleted = tx
                .execute_cached("DELETE FROM users WHERE id = ?1", params![id.0])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn user(&self, id: &UserId) -> StorageResult<Option<User>> {
        let id = id.clone();
        self.meta
            .read_now("user", move |c| {
                c.query_row_cached(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                    params![id.0],
                    row_to_user,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn user_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<User>> {
        self.user_where("user_by_name", "name", workspace, name.to_string())
            .await
    }

    async fn users(&self, workspace: &WorkspaceId) -> StorageResult<Vec<User>> {
        let ws = workspace.clone();
        self.meta("users", move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE workspace = ?1 ORDER BY id"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![ws.0], row_to_user)
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn set_user_email(&self, user: &UserId, email: &str) -> StorageResult<Option<User>> {
        let (id, email) = (user.clone(), super::normalize_email(email));
        self.meta_write("set_user_email", move |c| {
            update_user_row(c, &id, |tx| {
                tx.execute_cached(
                    "UPDATE users SET email = ?2 WHERE id = ?1",
                    params![id.0, email],
                )
                .map_err(|e| map_insert_err(e, "a user with this email"))
            })
        })
        .await
    }

    async fn set_user_deleted(&self, user: &UserId, deleted: bool) -> StorageResult<Option<User>> {
        let id = user.clone();
        self.meta_write("set_user_deleted", move |c| {
            update_user_row(c, &id, |tx| {
                tx.execute_cached(
                    "UPDATE users SET deleted = ?2 WHERE id = ?1",
                    params![id.0, deleted],
                )
                .map_err(unavailable)
            })
        })
        .await
    }

    async fn user_by_email(
        &self,
        workspace: &WorkspaceId,
        email: &str,
    ) -> StorageResult<Option<User>> {
        let email = super::normalize_email(email);
        if email.is_empty() {
            return Ok(None);
        }
        self.user_where("user_by_email", "email", workspace, email)
            .await
    }

    async fn update_user_profile(
        &self,
        user: &UserId,
        real_name: Option<&str>,
        display_name: Option<&str>,
    ) -> StorageResult<Option<User>> {
        let (id, real_name, display_name) = (
            user.clone(),
            real_name.map(str::to_string),
            display_name.map(str::to_string),
        );
        self.meta_write("update_user_profile", move |c| {
            update_user_row(c, &id, |tx| {
                tx.execute_cached(
                    "UPDATE users SET real_name = COALESCE(?2, real_name),
                                      display_name = COALESCE(?3, display_name)
                     WHERE id = ?1",
                    params![id.0, real_name, display_name],
                )
                .map_err(unavailable)
            })
        })
        .await
    }

    async fn create_channel(&self, channel: &Channel) -> StorageResult<()> {
        let ch = channel.clone();
        self.meta_write("create_channel", move |c| {
            c.execute_cached(
                &format!("INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    ch.id.0,
                    ch.workspace.0,
                    ch.name,
                    ch.is_private,
                    ch.creator.0,
                    ch.created.0 as i64,
                    ch.topic,
                    ch.purpose,
                    ch.is_archived
                ],
            )
            .map_err(|e| map_insert_err(e, "channel"))?;
            Ok(())
        })
        .await
    }

    async fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>> {
        let id = id.clone();
        self.meta
            .read_now("channel", move |c| {
                c.query_row_cached(
                    &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?1"),
                    params![id.0],
                    row_to_channel,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn channel_by_name(
        &self,
        workspace: &WorkspaceId,
        name: &str,
    ) -> StorageResult<Option<Channel>> {
        let (ws, name) = (workspace.clone(), name.to_string());
        self.meta
            .read_now("channel_by_name", move |c| {
                c.query_row_cached(
                    &format!(
                        "SELECT {CHANNEL_COLUMNS} FROM channels WHERE workspace = ?1 AND name = ?2"
                    ),
                    params![ws.0, name],
                    row_to_channel,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn channels(
        &self,
        workspace: &WorkspaceId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> StorageResult<Vec<Channel>> {
        let ws = workspace.clone();
        let after = after.map(|a| a.0.clone()).unwrap_or_default();
        self.meta("channels", move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {CHANNEL_COLUMNS} FROM channels WHERE workspace = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(unavailable)?;
            let rows = stmt.query_map(params![ws.0, after, limit], row_to_channel).map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn add_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta_write("add_member", move |c| {
            c.execute_cached(
                "INSERT OR IGNORE INTO members (channel, user) VALUES (?1, ?2)",
                params![ch.0, u.0],
            )
            .map(|n| n == 1)
            .map_err(|e| {
                if is_constraint(&e) {
                    StorageError::new(StorageErrorKind::NotFound, "no such channel or user")
                } else {
                    unavailable(e)
                }
            })
        })
        .await
    }

    async fn remove_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta_write("remove_member", move |c| {
            c.execute_cached(
                "DELETE FROM members WHERE channel = ?1 AND user = ?2",
                params![ch.0, u.0],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn is_member(&self, channel: &ChannelId, user: &UserId) -> StorageResult<bool> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta
            .read_now("is_member", move |c| {
                c.query_row_cached(
                    "SELECT 1 FROM members WHERE channel = ?1 AND user = ?2",
                    params![ch.0, u.0],
                    |_| Ok(()),
                )
                .optional()
                .map(|r| r.is_some())
                .map_err(unavailable)
            })
            .await
    }

    async fn user_channel_membership(
        &self,
        user: &UserId,
        channel: &ChannelId,
    ) -> StorageResult<UserChannelMembership> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta
            .read_now("user_channel_membership", move |c| {
                // One read transaction for the three reads: each statement on its own would take
                // and release the WAL read lock (two `fcntl` calls) and check the page cache
                // against the log again. This runs once per post.
                let c = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
                    .map_err(unavailable)?;
                let user = c
                    .query_row_cached(
                        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                        params![u.0],
                        row_to_user,
                    )
                    .optional()
                    .map_err(unavailable)?;
                let channel = c
                    .query_row_cached(
                        &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?1"),
                        params![ch.0],
                        row_to_channel,
                    )
                    .optional()
                    .map_err(unavailable)?;
                let is_member = c
                    .query_row_cached(
                        "SELECT 1 FROM members WHERE channel = ?1 AND user = ?2",
                        params![ch.0, u.0],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(unavailable)?
                    .is_some();
                c.commit().map_err(unavailable)?;
                Ok(UserChannelMembership {
                    user,
                    channel,
                    is_member,
                })
            })
            .await
    }

    async fn members(&self, channel: &ChannelId) -> StorageResult<Vec<UserId>> {
        let ch = channel.clone();
        self.meta("members", move |c| {
            let mut stmt = c
                .prepare_cached("SELECT user FROM members WHERE channel = ?1 ORDER BY user")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![ch.0], |r| Ok(UserId(r.get(0)?)))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn user_channels(&self, user: &UserId) -> StorageResult<Vec<Channel>> {
        let u = user.clone();
        self.meta("user_channels", move |c| {
            let cols = CHANNEL_COLUMNS.split(", ").map(|col| format!("c.{col}")).collect::<Vec<_>>().join(", ");
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {cols} FROM members m JOIN channels c ON c.id = m.channel WHERE m.user = ?1 ORDER BY c.id"
                ))
                .map_err(unavailable)?;
            let rows = stmt.query_map(params![u.0], row_to_channel).map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn update_channel(&self, channel: &Channel) -> StorageResult<()> {
        let ch = channel.clone();
        self.meta_write("update_channel", move |c| {
            let n = c
                .execute_cached(
                    "UPDATE channels SET name = ?2, topic = ?3, purpose = ?4, is_archived = ?5
                     WHERE id = ?1",
                    params![ch.id.0, ch.name, ch.topic, ch.purpose, ch.is_archived],
                )
                .map_err(|e| map_insert_err(e, "channel name"))?;
            if n == 0 {
                return Err(StorageError::new(
                    StorageErrorKind::NotFound,
                    format!("no channel {}", ch.id),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn last_read(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta("last_read", move |c| {
            c.query_row_cached(
                "SELECT last_read FROM members WHERE channel = ?1 AND user = ?2",
                params![ch.0, u.0],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|seq| seq.map(|s| s.max(0) as Seq))
            .map_err(unavailable)
        })
        .await
    }

    async fn set_last_read(
        &self,
        channel: &ChannelId,
        user: &UserId,
        seq: Seq,
    ) -> StorageResult<bool> {
        let (ch, u) = (channel.clone(), user.clone());
        let seq = seq.min(i64::MAX as u64) as i64;
        self.meta_write("set_last_read", move |c| {
            c.execute_cached(
                "UPDATE members SET last_read = ?3 WHERE channel = ?1 AND user = ?2",
                params![ch.0, u.0, seq],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn dm_closed(&self, channel: &ChannelId, user: &UserId) -> StorageResult<Option<Seq>> {
        let (ch, u) = (channel.clone(), user.clone());
        self.meta("dm_closed", move |c| {
            c.query_row_cached(
                "SELECT closed_seq FROM members WHERE channel = ?1 AND user = ?2",
                params![ch.0, u.0],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(|seq| seq.flatten().map(|s| s.max(0) as Seq))
            .map_err(unavailable)
        })
        .await
    }

    async fn set_dm_closed(
        &self,
        channel: &ChannelId,
        user: &UserId,
        closed: Option<Seq>,
    ) -> StorageResult<bool> {
        let (ch, u) = (channel.clone(), user.clone());
        let closed = closed.map(|seq| seq.min(i64::MAX as u64) as i64);
        self.meta_write("set_dm_closed", move |c| {
            c.execute_cached(
                "UPDATE members SET closed_seq = ?3 WHERE channel = ?1 AND user = ?2",
                params![ch.0, u.0, closed],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn workspace_members(&self, workspace: &WorkspaceId) -> StorageResult<Vec<Membership>> {
        let ws = workspace.clone();
        self.meta("workspace_members", move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT m.channel, m.user, m.last_read, m.closed_seq FROM members m
                     JOIN channels c ON c.id = m.channel
                     WHERE c.workspace = ?1 ORDER BY m.channel, m.user",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![ws.0], |r| {
                    Ok(Membership {
                        channel: ChannelId(r.get(0)?),
                        user: UserId(r.get(1)?),
                        last_read: r.get::<_, i64>(2)?.max(0) as Seq,
                        closed: r.get::<_, Option<i64>>(3)?.map(|s| s.max(0) as Seq),
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn append(&self, msg: &Message) -> StorageResult<AppendOutcome> {
        let start = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.shard(&msg.workspace, &msg.channel)
            .writer
            .send(AppendRequest::One {
                msg: msg.clone(),
                reply,
            })
            .map_err(|_| unavailable("store writer stopped"))?;
        let result = rx.await.map_err(|_| unavailable("store writer stopped"))?;
        m::STORE_OPS
            .with_label_values(&["append"])
            .observe(start.elapsed().as_secs_f64());
        result
    }

    async fn append_new(&self, msgs: Vec<Message>) -> StorageResult<GroupAppend> {
        let Some(first) = msgs.first() else {
            return Ok(GroupAppend::Appended(Vec::new()));
        };
        let start = Instant::now();
        let shard = self.shard(&first.workspace, &first.channel);
        // One channel's messages, so one shard.
        debug_assert!(msgs.iter().all(|m| m.channel == first.channel));
        let num = msgs.len();
        let (reply, rx) = oneshot::channel();
        shard
            .writer
            .send(AppendRequest::Group { msgs, reply })
            .map_err(|_| unavailable("store writer stopped"))?;
        let result = rx.await.map_err(|_| unavailable("store writer stopped"))?;
        let elapsed = start.elapsed().as_secs_f64();
        let appends = m::STORE_OPS.with_label_values(&["append"]);
        for _ in 0..num {
            appends.observe(elapsed);
        }
        result
    }

    async fn last_message(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
    ) -> StorageResult<Option<Message>> {
        let ch = channel.clone();
        self.shard(workspace, channel).reads.read_now("last_message", move |c| {
            c.query_row_cached(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ?1 ORDER BY seq DESC LIMIT 1"),
                params![ch.0],
                row_to_message,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn message_by_client_msg_id(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        client_msg_id: &str,
    ) -> StorageResult<Option<Message>> {
        let (ch, id) = (channel.clone(), client_msg_id.to_string());
        self.shard(workspace, channel).reads.read_now("message_by_client_msg_id", move |c| {
            c.query_row_cached(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ?1 AND client_msg_id = ?2"),
                params![ch.0, id],
                row_to_message,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    fn num_shards(&self) -> u32 {
        self.shards.len() as u32
    }

    fn shard_of(&self, workspace: &WorkspaceId, channel: &ChannelId) -> u32 {
        self.shard_key
            .shard(workspace, channel, self.shards.len() as u32)
    }

    async fn changes_since(
        &self,
        shard: u32,
        after: u64,
        limit: u32,
    ) -> StorageResult<Vec<Change>> {
        let Some(shard) = self.shards.get(shard as usize).cloned() else {
            return Err(StorageError::new(
                StorageErrorKind::NotFound,
                format!("no shard {shard}"),
            ));
        };
        let cols = MESSAGE_COLUMNS
            .split(", ")
            .map(|col| format!("m.{col}"))
            .collect::<Vec<_>>()
            .join(", ");
        shard
            .reads
            .run("changes_since", move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {cols}, c.id, m.deleted FROM changes c
                         JOIN messages m ON m.channel_id = c.channel_id AND m.seq = c.seq
                         WHERE c.id > ?1 ORDER BY c.id LIMIT ?2"
                    ))
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![after as i64, limit.max(1)], |r| {
                        Ok(Change {
                            message: row_to_message(r)?,
                            id: r.get::<_, i64>(AFTER_MESSAGE)? as u64,
                            deleted: r.get(AFTER_MESSAGE + 1)?,
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
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
        let (ch, q, ws) = (channel.clone(), query.clone(), workspace.clone());
        self.read_shard("message_views", workspace, channel, move |c| {
            let order = if q.newest_first { "DESC" } else { "ASC" };
            let scope = match thread {
                Some(_) => "(ts = ?8 OR thread_ts = ?8)",
                // Top-level messages, and replies also shown in the channel.
                None => "(thread_ts IS NULL OR thread_ts = ts OR broadcast = 1) AND ?8 = ?8",
            };
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS}, {VIEW_COLUMNS} FROM messages
                 WHERE channel_id = ?1 AND workspace = ?2 AND kind = 'posted'
                   AND (deleted = 0 OR reply_count > 0)
                   AND seq > ?3 AND seq < ?4 AND ts > ?5 AND ts < ?6 AND {scope}
                 ORDER BY seq {order} LIMIT ?7"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        ch.0,
                        ws.0,
                        q.after_seq.map(|s| s as i64).unwrap_or(0),
                        q.before_seq
                            .map(|s| s.min(i64::MAX as u64) as i64)
                            .unwrap_or(i64::MAX),
                        q.oldest.map(|t| t.0 as i64).unwrap_or(-1),
                        q.latest
                            .map(|t| t.0.min(i64::MAX as u64) as i64)
                            .unwrap_or(i64::MAX),
                        q.limit.max(1),
                        thread.map(|t| t.0 as i64).unwrap_or(0),
                    ],
                    row_to_view,
                )
                .map_err(unavailable)?;
            let mut views = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
            load_annotations(c, &mut views)?;
            Ok(views)
        })
        .await
    }

    async fn message_view(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        ts: Ts,
    ) -> StorageResult<Option<MessageView>> {
        let (ch, ws) = (channel.clone(), workspace.clone());
        self.shard(workspace, channel)
            .reads
            .read_now("message_view", move |c| {
                let view = c
                    .query_row_cached(
                        &format!(
                            "SELECT {MESSAGE_COLUMNS}, {VIEW_COLUMNS} FROM messages
                         WHERE channel_id = ?1 AND workspace = ?2 AND ts = ?3 AND kind = 'posted'"
                        ),
                        params![ch.0, ws.0, ts.0 as i64],
                        row_to_view,
                    )
                    .optional()
                    .map_err(unavailable)?;
                let mut views: Vec<MessageView> = view.into_iter().collect();
                load_annotations(c, &mut views)?;
                Ok(views.pop())
            })
            .await
    }

    async fn pin_count(&self, workspace: &WorkspaceId, channel: &ChannelId) -> StorageResult<u64> {
        let ch = channel.clone();
        self.read_shard("pin_count", workspace, channel, move |c| {
            c.query_row_cached(
                "SELECT COUNT(*) FROM pins WHERE channel_id = ?1",
                params![ch.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn pins(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        limit: usize,
    ) -> StorageResult<Vec<MessageView>> {
        let (ch, ws) = (channel.clone(), workspace.clone());
        self.read_shard("pins", workspace, channel, move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS}, {VIEW_COLUMNS} FROM messages
                     WHERE channel_id = ?1 AND workspace = ?2 AND kind = 'posted' AND ts IN
                       (SELECT target_ts FROM pins WHERE channel_id = ?1
                        ORDER BY pinned_ts DESC LIMIT ?3)"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![ch.0, ws.0, limit.max(1) as i64], row_to_view)
                .map_err(unavailable)?;
            let mut views = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
            load_annotations(c, &mut views)?;
            views.sort_by_key(|v| std::cmp::Reverse(v.pinned.as_ref().map(|p| p.at)));
            Ok(views)
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
        let (ws, ch, name) = (workspace.clone(), channel.clone(), reaction.to_string());
        let user = user.map(|u| u.0.clone());
        self.read_shard("reacted", workspace, channel, move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT DISTINCT m.seq FROM reactions r
                     JOIN messages m ON m.channel_id = r.channel_id AND m.ts = r.target_ts
                     WHERE r.channel_id = ?1 AND r.reaction = ?2
                       AND (?3 IS NULL OR r.user_id = ?3)
                       AND m.workspace = ?4 AND m.kind = 'posted' AND m.deleted = 0
                     ORDER BY m.seq DESC LIMIT ?5",
                )
                .map_err(unavailable)?;
            let seqs = stmt
                .query_map(params![ch.0, name, user, ws.0, limit.max(1) as i64], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(unavailable)?
                .map(|r| r.map(|s| s.max(0) as u64))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
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
        let limit = limit.max(1);
        // Every shard may hold channels of the workspace: the newest of each, merged.
        let reads = self.shards.iter().map(|shard| {
            let (ws, user) = (workspace.0.clone(), user.0.clone());
            let before = before.map(|t| t.0.min(i64::MAX as u64) as i64);
            shard.reads.run("user_reactions", move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT r.channel_id, r.target_ts, MAX(e.ts) AS at FROM reactions r
                         JOIN messages e ON e.channel_id = r.channel_id AND e.seq = r.seq
                         JOIN messages m ON m.channel_id = r.channel_id AND m.ts = r.target_ts
                         WHERE r.user_id = ?1 AND e.workspace = ?2
                           AND m.kind = 'posted' AND m.deleted = 0
                         GROUP BY r.channel_id, r.target_ts
                         HAVING ?3 IS NULL OR at < ?3
                         ORDER BY at DESC LIMIT ?4",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![user, ws, before, limit as i64], |r| {
                        Ok(UserReaction {
                            channel: ChannelId(r.get(0)?),
                            target: Ts(r.get::<_, i64>(1)?.max(0) as u64),
                            at: Ts(r.get::<_, i64>(2)?.max(0) as u64),
                        })
                    })
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                Ok(rows)
            })
        });
        let mut all: Vec<UserReaction> = futures_util::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        all.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.channel.cmp(&a.channel)));
        all.truncate(limit);
        Ok(all)
    }

    async fn create_file(&self, file: &FileRecord) -> StorageResult<()> {
        let row = (
            file.id.clone(),
            file.workspace.0.clone(),
            file.created.0 as i64,
            file.json(),
        );
        self.meta_write("create_file", move |c| {
            c.execute_cached(
                "INSERT INTO files (id, workspace, created, record) VALUES (?1, ?2, ?3, ?4)",
                params![row.0, row.1, row.2, row.3],
            )
            .map(drop)
            .map_err(|e| map_insert_err(e, "file"))
        })
        .await
    }

    async fn update_file(&self, file: &FileRecord) -> StorageResult<()> {
        let row = (file.id.clone(), file.workspace.0.clone(), file.json());
        let changed = self
            .meta_write("update_file", move |c| {
                c.execute_cached(
                    "UPDATE files SET record = ?3 WHERE id = ?1 AND workspace = ?2",
                    params![row.0, row.1, row.2],
                )
                .map_err(unavailable)
            })
            .await?;
        if changed == 0 {
            return Err(StorageError::new(
                StorageErrorKind::NotFound,
                format!("no file {}", file.id),
            ));
        }
        Ok(())
    }

    async fn file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<Option<FileRecord>> {
        let (ws, id) = (workspace.0.clone(), id.to_string());
        self.meta("file", move |c| {
            c.query_row_cached(
                "SELECT record FROM files WHERE id = ?1 AND workspace = ?2",
                params![id, ws],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(unavailable)?
            .map(|json| FileRecord::from_json(&json))
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
        let ws = workspace.0.clone();
        let before = before.map_or(i64::MAX, |t| t.0.min(i64::MAX as u64) as i64);
        self.meta("files", move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT record FROM files WHERE workspace = ?1 AND created < ?2
                     ORDER BY created DESC, id DESC LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![ws, before, limit.max(1) as i64], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            rows.iter()
                .map(|json| FileRecord::from_json(json))
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
        let path = self.file_path(workspace, id)?;
        let dir = self.files_dir.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
            .await
            .map_err(unavailable)?
    }

    async fn file_content(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<Vec<u8>>> {
        let path = self.file_path(workspace, id)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(format!("read {}: {e}", path.display()))),
        })
        .await
        .map_err(unavailable)?
    }

    async fn delete_file(&self, workspace: &WorkspaceId, id: &str) -> StorageResult<bool> {
        let path = self.file_path(workspace, id)?;
        let (ws, file_id) = (workspace.0.clone(), id.to_string());
        let removed = self
            .meta_write("delete_file", move |c| {
                c.execute_cached(
                    "DELETE FROM files WHERE id = ?1 AND workspace = ?2",
                    params![file_id, ws],
                )
                .map_err(unavailable)
            })
            .await?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable(format!("remove {}: {e}", path.display()))),
        }
        Ok(removed > 0)
    }

    async fn schedule_message(&self, scheduled: &ScheduledMessage) -> StorageResult<()> {
        let row = (
            scheduled.id.clone(),
            scheduled.message.workspace.0.clone(),
            scheduled.post_at.0.min(i64::MAX as u64) as i64,
            scheduled.created.0.min(i64::MAX as u64) as i64,
            scheduled.message_json(),
        );
        self.meta_write("schedule_message", move |c| {
            c.execute_cached(
                "INSERT INTO scheduled (id, workspace, post_at, created, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.0, row.1, row.2, row.3, row.4],
            )
            .map(drop)
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => StorageError::new(
                    StorageErrorKind::AlreadyExists,
                    format!("scheduled message {} exists", row.0),
                ),
                _ => unavailable(e),
            })
        })
        .await
    }

    async fn scheduled_messages(
        &self,
        workspace: &WorkspaceId,
    ) -> StorageResult<Vec<ScheduledMessage>> {
        let ws = workspace.clone();
        self.meta("scheduled_messages", move |c| {
            scheduled_rows(
                c,
                "SELECT id, post_at, created, message FROM scheduled
                 WHERE workspace = ?1 ORDER BY post_at, id",
                params![ws.0],
            )
        })
        .await
    }

    async fn scheduled_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>> {
        let (ws, id) = (workspace.clone(), id.to_string());
        self.meta("scheduled_message", move |c| {
            Ok(scheduled_rows(
                c,
                "SELECT id, post_at, created, message FROM scheduled
                 WHERE id = ?1 AND workspace = ?2",
                params![id, ws.0],
            )?
            .pop())
        })
        .await
    }

    async fn due_scheduled_messages(
        &self,
        from: Ts,
        to: Ts,
        limit: u32,
    ) -> StorageResult<Vec<ScheduledMessage>> {
        let (from, to) = (
            from.0.min(i64::MAX as u64) as i64,
            to.0.min(i64::MAX as u64) as i64,
        );
        self.meta("due_scheduled_messages", move |c| {
            scheduled_rows(
                c,
                "SELECT id, post_at, created, message FROM scheduled
                 WHERE post_at >= ?1 AND post_at <= ?2 ORDER BY post_at, id LIMIT ?3",
                params![from, to, limit],
            )
        })
        .await
    }

    async fn unschedule_message(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> StorageResult<Option<ScheduledMessage>> {
        let (ws, id) = (workspace.clone(), id.to_string());
        self.meta_write("unschedule_message", move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let found = scheduled_rows(
                &tx,
                "SELECT id, post_at, created, message FROM scheduled
                 WHERE id = ?1 AND workspace = ?2",
                params![id, ws.0],
            )?
            .pop();
            if found.is_some() {
                tx.execute_cached(
                    "DELETE FROM scheduled WHERE id = ?1 AND workspace = ?2",
                    params![id, ws.0],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(found)
        })
        .await
    }

    async fn record_set_version(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<u64> {
        let (ws, kind) = (workspace.clone(), kind.name());
        self.meta("record_set_version", move |c| {
            c.query_row_cached(
                "SELECT version FROM record_versions WHERE workspace = ?1 AND kind = ?2",
                params![ws.0, kind],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0).max(0) as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn record_set(
        &self,
        workspace: &WorkspaceId,
        kind: &RecordKind,
    ) -> StorageResult<RecordSet> {
        let (ws, kind) = (workspace.clone(), kind.name());
        self.meta("record_set", move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let version: Option<i64> = tx
                .query_row_cached(
                    "SELECT version FROM record_versions WHERE workspace = ?1 AND kind = ?2",
                    params![ws.0, kind],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, record FROM records WHERE workspace = ?1 AND kind = ?2 ORDER BY id",
                )
                .map_err(unavailable)?;
            let records = stmt
                .query_map(params![ws.0, kind], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(unavailable)?
                .collect::<Result<Vec<(String, String)>, _>>()
                .map_err(unavailable)?;
            Ok(RecordSet {
                version: version.unwrap_or(0) as u64,
                records,
            })
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
        let (ws, kind, id, record) = (
            workspace.0.clone(),
            kind.name(),
            id.to_string(),
            record.map(str::to_string),
        );
        self.meta_write("put_record", move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let version: i64 = tx
                .query_row_cached(
                    "SELECT version FROM record_versions WHERE workspace = ?1 AND kind = ?2",
                    params![ws, kind],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            if version as u64 != expected {
                return Ok(false);
            }
            match &record {
                Some(record) => tx.execute_cached(
                    "INSERT INTO records (workspace, kind, id, record) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (workspace, kind, id) DO UPDATE SET record = excluded.record",
                    params![ws, kind, id, record],
                ),
                None => tx.execute_cached(
                    "DELETE FROM records WHERE workspace = ?1 AND kind = ?2 AND id = ?3",
                    params![ws, kind, id],
                ),
            }
            .map_err(unavailable)?;
            tx.execute_cached(
                "INSERT INTO record_versions (workspace, kind, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (workspace, kind) DO UPDATE SET version = excluded.version",
                params![ws, kind, version + 1],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn history(
        &self,
        workspace: &WorkspaceId,
        channel: &ChannelId,
        query: &HistoryQuery,
    ) -> StorageResult<Vec<Message>> {
        let (ch, q, ws) = (channel.clone(), query.clone(), workspace.clone());
        self.read_shard("history", workspace, channel, move |c| {
            let order = if q.newest_first { "DESC" } else { "ASC" };
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE channel_id = ?1 AND workspace = ?2 AND seq > ?3 AND seq < ?4 AND ts > ?5 AND ts < ?6
                 ORDER BY seq {order} LIMIT ?7"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        ch.0,
                        ws.0,
                        q.after_seq.map(|s| s as i64).unwrap_or(0),
                        q.before_seq.map(|s| s.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX),
                        q.oldest.map(|t| t.0 as i64).unwrap_or(-1),
                        q.latest.map(|t| t.0.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX),
                        q.limit.max(1),
                    ],
                    row_to_message,
                )
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }
}

/// Profiles, channel updates, read positions and the schema migration (Flannel's store needs).
#[cfg(test)]
mod flannel_tests {
    use super::*;

    async fn store_with_channel() -> (tempfile::TempDir, SqliteStore, User, Channel) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store"), 1).unwrap();
        let ws = store.create_workspace("acme").await.unwrap();
        let user = store
            .create_user(&ws.id, "alice", "Alice", false, false)
            .await
            .unwrap();
        let channel = Channel {
            id: ChannelId::generate(),
            workspace: ws.id.clone(),
            name: "general".into(),
            is_private: false,
            creator: user.id.clone(),
            created: Ts(1),
            topic: String::new(),
            purpose: String::new(),
            is_archived: false,
        };
        store.create_channel(&channel).await.unwrap();
        (dir, store, user, channel)
    }

    #[tokio::test]
    async fn profiles_channels_and_read_positions_update() {
        let (_dir, store, user, channel) = store_with_channel().await;
        assert_eq!(user.display_name, "");
        let updated = store
            .update_user_profile(&user.id, None, Some("ally"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (updated.real_name.as_str(), updated.display_name.as_str()),
            ("Alice", "ally")
        );
        let updated = store
            .update_user_profile(&user.id, Some("Alice A"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (updated.real_name.as_str(), updated.display_name.as_str()),
            ("Alice A", "ally")
        );
        assert!(store
            .update_user_profile(&UserId::from("UNOBODY"), Some("x"), None)
            .await
            .unwrap()
            .is_none());

        let mut renamed = channel.clone();
        renamed.name = "town-square".into();
        renamed.is_archived = true;
        store.update_channel(&renamed).await.unwrap();
        assert_eq!(store.channel(&channel.id).await.unwrap().unwrap(), renamed);
        let mut other = channel.clone();
        other.id = ChannelId::generate();
        other.name = "other".into();
        store.create_channel(&other).await.unwrap();
        other.name = "town-square".into();
        assert_eq!(
            store.update_channel(&other).await.unwrap_err().kind,
            StorageErrorKind::AlreadyExists
        );
        let mut ghost = channel.clone();
        ghost.id = ChannelId::from("CGHOST");
        assert_eq!(
            store.update_channel(&ghost).await.unwrap_err().kind,
            StorageErrorKind::NotFound
        );

        assert!(!store.set_last_read(&channel.id, &user.id, 3).await.unwrap());
        store.add_member(&channel.id, &user.id).await.unwrap();
        assert!(store.set_last_read(&channel.id, &user.id, 7).await.unwrap());
        assert_eq!(
            store.workspace_members(&channel.workspace).await.unwrap(),
            vec![Membership {
                channel: channel.id.clone(),
                user: user.id.clone(),
                last_read: 7,
                closed: None,
            }]
        );
        assert!(store
            .workspace_members(&WorkspaceId::from("TOTHER"))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_store_of_the_first_schema_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        std::fs::create_dir_all(&path).unwrap();
        {
            let c = Connection::open(path.join("meta.sqlite")).unwrap();
            c.execute_batch(
                "CREATE TABLE workspaces (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
                 CREATE TABLE users (id TEXT PRIMARY KEY, workspace TEXT NOT NULL, name TEXT NOT NULL,
                     real_name TEXT NOT NULL, is_admin INTEGER NOT NULL, is_bot INTEGER NOT NULL,
                     UNIQUE (workspace, name));
                 CREATE TABLE members (channel TEXT NOT NULL, user TEXT NOT NULL,
                     PRIMARY KEY (channel, user)) WITHOUT ROWID;
                 INSERT INTO workspaces VALUES ('TOLD', 'old');
                 INSERT INTO users VALUES ('UOLD', 'TOLD', 'olduser', 'Old', 0, 0);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, 1).unwrap();
        let user = store.user(&UserId::from("UOLD")).await.unwrap().unwrap();
        assert_eq!(user.display_name, "");
        // Its messages were written a shard per workspace, so it stays that way.
        assert_eq!(store.shard_key(), ShardKey::Workspace);
        // Opening again (as a second process would) is fine.
        drop(store);
        SqliteStore::open(&path, 1).unwrap();
    }
}

#[cfg(test)]
mod conformance_tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_storage_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 4).unwrap();
        crate::store::conformance::run_all(&store).await;
    }

    fn posted(ws: &WorkspaceId, seq: u64) -> Message {
        Message {
            workspace: ws.clone(),
            channel: ChannelId::from("CGONE"),
            seq,
            ts: Ts(10 * seq),
            user: UserId::from("UX"),
            text: format!("message {seq}"),
            client_msg_id: None,
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        }
    }

    fn files_lost(label: &str) -> u64 {
        m::STORE_FILES_LOST.with_label_values(&[label]).get()
    }

    #[tokio::test]
    async fn writes_to_a_deleted_data_directory_are_refused_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let store = SqliteStore::open(&path, 1).unwrap();
        let ws = store.create_workspace("doomed").await.unwrap();
        store.append(&posted(&ws.id, 1)).await.unwrap();
        let lost = (files_lost("shard-0"), files_lost("meta"));
        std::fs::remove_dir_all(&path).unwrap();

        // SQLite still writes into the open, unlinked files; the store refuses to call that
        // durable, and goes on refusing.
        for seq in [2, 3] {
            let err = store.append(&posted(&ws.id, seq)).await.unwrap_err();
            assert_eq!(err.kind, StorageErrorKind::Unavailable);
            assert!(err.message.contains("deleted or replaced"), "{err}");
        }
        let err = store.create_workspace("after").await.unwrap_err();
        assert!(err.message.contains("meta.sqlite"), "{err}");
        // Counted once per file (other tests' stores may add to the same labels meanwhile).
        assert!(files_lost("shard-0") > lost.0);
        assert!(files_lost("meta") > lost.1);
    }

    /// `fault` finds a removed data directory without a write trying it (what `/health` asks),
    /// and the writes after it are refused.
    #[tokio::test]
    async fn a_removed_data_directory_is_a_fault_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let store = SqliteStore::open(&path, 2).unwrap();
        let ws = store.create_workspace("doomed").await.unwrap();
        assert_eq!(store.fault(), None);
        std::fs::remove_dir_all(&path).unwrap();
        let fault = store.fault().expect("a fault");
        assert!(fault.contains("deleted or replaced"), "{fault}");
        let err = store.append(&posted(&ws.id, 1)).await.unwrap_err();
        assert_eq!(err.kind, StorageErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn writes_to_a_replaced_store_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 1).unwrap();
        let ws = store.create_workspace("restored").await.unwrap();
        store.append(&posted(&ws.id, 1)).await.unwrap();
        // A restore that copies a file over the live one: the path names a new inode.
        let shard = dir.path().join("shard-0.sqlite");
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&shard, &copy).unwrap();
        std::fs::rename(&copy, &shard).unwrap();
        let err = store.append(&posted(&ws.id, 2)).await.unwrap_err();
        assert!(err.message.contains("shard-0.sqlite"), "{err}");
        // The metadata file was left alone: its writes go on.
        store.create_workspace("still").await.unwrap();
    }

    #[tokio::test]
    async fn two_handles_on_one_directory_share_data_like_two_processes() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path(), 2).unwrap();
        let b = SqliteStore::open(dir.path(), 2).unwrap();
        let ws = a.create_workspace("shared").await.unwrap();
        assert_eq!(
            b.workspace_by_name("shared").await.unwrap().unwrap().id,
            ws.id
        );
        let msg = Message {
            workspace: ws.id.clone(),
            channel: ChannelId::from("CSHARED"),
            seq: 1,
            ts: Ts(10),
            user: UserId::from("UX"),
            text: "hi".into(),
            client_msg_id: None,
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        };
        a.append(&msg).await.unwrap();
        // The second handle is fenced by the same key.
        assert_eq!(
            b.append(&msg).await.unwrap_err().kind,
            StorageErrorKind::SeqConflict
        );
        assert_eq!(
            b.last_message(&ws.id, &msg.channel)
                .await
                .unwrap()
                .unwrap()
                .seq,
            1
        );
    }

    #[tokio::test]
    async fn passes_the_storage_conformance_suite_with_a_shard_per_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with_key(dir.path(), 4, ShardKey::Workspace).unwrap();
        assert_eq!(store.shard_key(), ShardKey::Workspace);
        crate::store::conformance::run_all(&store).await;
    }

    /// A new store spreads one workspace's channels over its shards: each channel's messages
    /// and changes are in the shard its id hashes to, and nowhere else.
    #[tokio::test]
    async fn a_new_store_spreads_a_workspace_over_its_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 4).unwrap();
        assert_eq!(store.shard_key(), ShardKey::Channel);
        let ws = store.create_workspace("spread").await.unwrap();
        let channels: Vec<ChannelId> = (0..32).map(|n| ChannelId(format!("CSPREAD{n}"))).collect();
        for ch in &channels {
            for seq in 1..=3 {
                let msg = Message {
                    workspace: ws.id.clone(),
                    channel: ch.clone(),
                    seq,
                    ts: Ts(1_000 + seq),
                    user: UserId::from("UX"),
                    text: format!("{} {seq}", ch.0),
                    client_msg_id: Some(format!("{}-{seq}", ch.0)),
                    thread_ts: None,
                    kind: MessageKind::Posted,
                    previous: None,
                    broadcast: false,
                    bot: false,
                    rich: None,
                };
                store.append(&msg).await.unwrap();
            }
        }
        let mut per_shard = vec![0usize; 4];
        for shard in 0..4 {
            let changes = store.changes_since(shard, 0, 1000).await.unwrap();
            for c in &changes {
                assert_eq!(store.shard_of(&ws.id, &c.message.channel), shard);
            }
            per_shard[shard as usize] = changes.len();
        }
        assert_eq!(per_shard.iter().sum::<usize>(), 32 * 3, "{per_shard:?}");
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "32 channels over 4 shards use every shard: {per_shard:?}"
        );
        for ch in &channels {
            let last = store.last_message(&ws.id, ch).await.unwrap().unwrap();
            assert_eq!((last.seq, &last.text), (3, &format!("{} 3", ch.0)));
        }
        // The key is the store's, not the opener's: a second process agrees.
        drop(store);
        let again = SqliteStore::open_with_key(dir.path(), 4, ShardKey::Workspace).unwrap();
        assert_eq!(again.shard_key(), ShardKey::Channel);
        assert_eq!(
            again
                .history(
                    &ws.id,
                    &channels[5],
                    &HistoryQuery {
                        limit: 100,
                        ..HistoryQuery::default()
                    }
                )
                .await
                .unwrap()
                .len(),
            3
        );
    }

    /// A store created before the shard key was recorded has its count but no key.
    #[test]
    fn a_store_with_a_count_but_no_key_keeps_a_shard_per_workspace() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), 2).unwrap());
        let meta = Connection::open(dir.path().join("meta.sqlite")).unwrap();
        meta.execute("DELETE FROM settings WHERE key = 'shard_key'", [])
            .unwrap();
        drop(meta);
        let store = SqliteStore::open(dir.path(), 2).unwrap();
        assert_eq!(store.shard_key(), ShardKey::Workspace);
        let ws = WorkspaceId::from("TW");
        assert_eq!(
            store.shard_of(&ws, &ChannelId::from("CA")),
            crate::store::shard_for(&ws, 2)
        );
    }

    #[test]
    fn reopening_with_another_shard_count_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), 2).unwrap());
        let err = SqliteStore::open(dir.path(), 3).err().unwrap();
        assert_eq!(err.kind, StorageErrorKind::Corrupt);
    }

    #[test]
    fn a_count_left_to_the_store_follows_the_cores_and_then_what_was_recorded() {
        let auto = auto_shards();
        assert!((4..=16).contains(&auto), "{auto}");
        // A new store: one shard per core, within the bounds.
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(
            SqliteStore::open(fresh.path(), 0).unwrap().num_shards(),
            auto
        );
        // Again, and explicitly: the same count, recorded.
        assert_eq!(
            SqliteStore::open(fresh.path(), 0).unwrap().num_shards(),
            auto
        );
        assert_eq!(
            SqliteStore::open(fresh.path(), auto).unwrap().num_shards(),
            auto
        );
        // An existing store keeps its count, whatever the machine (one made elsewhere).
        let other = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(other.path(), 17).unwrap());
        assert_eq!(SqliteStore::open(other.path(), 0).unwrap().num_shards(), 17);
        assert_eq!(
            SqliteStore::open(other.path(), 4).err().unwrap().kind,
            StorageErrorKind::Corrupt
        );
        // A recorded count that is not one fails clearly instead of opening that many files.
        let conn = Connection::open(other.path().join("meta.sqlite")).unwrap();
        conn.execute(
            "UPDATE settings SET value = '100000' WHERE key = 'shards'",
            [],
        )
        .unwrap();
        drop(conn);
        let err = SqliteStore::open(other.path(), 0).err().unwrap();
        assert_eq!(err.kind, StorageErrorKind::Corrupt);
        assert!(err.to_string().contains("100000"), "{err}");
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Far more calls at once than the pool holds connections: every call succeeds, and no
    /// more than `MAX_CONNECTIONS` connections are ever opened (and all of them are kept).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn calls_past_the_bound_wait_for_a_connection_instead_of_opening_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.sqlite");
        let first = open(&path).unwrap();
        first
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);")
            .unwrap();
        let pool = Arc::new(ConnPool::new(path, first));
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = (0..MAX_CONNECTIONS * 6).map(|_| {
            let (pool, busy, most) = (pool.clone(), busy.clone(), most.clone());
            tokio::spawn(async move {
                pool.run("test", move |c| {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    let x: i64 = c
                        .query_row("SELECT x FROM t", [], |r| r.get(0))
                        .map_err(unavailable)?;
                    busy.fetch_sub(1, Ordering::SeqCst);
                    Ok(x)
                })
                .await
            })
        });
        for call in calls.collect::<Vec<_>>() {
            assert_eq!(call.await.unwrap().unwrap(), 7);
        }
        let opened = pool.opened.load(Ordering::SeqCst);
        assert!(opened <= MAX_CONNECTIONS, "opened {opened}");
        assert!(most.load(Ordering::SeqCst) <= MAX_CONNECTIONS);
        assert_eq!(pool.idle.lock().len(), opened, "every connection is kept");
        assert!(
            opened > 1,
            "calls ran at once, so more than one connection was needed"
        );
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use crate::store::MessageStore;

    /// Appended messages reach the shard's database file (not only its WAL) by the
    /// checkpointer thread, long before the writer's own checkpoint at
    /// `WRITER_WAL_AUTOCHECKPOINT_PAGES`, and stay readable throughout.
    #[tokio::test]
    async fn the_checkpointer_copies_the_log_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 1).unwrap();
        let ws = store.create_workspace("ckpt").await.unwrap();
        let channel = ChannelId::from("CCKPT");
        let file = dir
            .path()
            .join(format!("shard-{}.sqlite", store.shard_of(&ws.id, &channel)));
        let before = std::fs::metadata(&file).unwrap().len();
        for seq in 1..=200u64 {
            let msg = Message {
                workspace: ws.id.clone(),
                channel: channel.clone(),
                seq,
                ts: Ts(1_000_000 + seq),
                user: UserId::from("UA"),
                text: format!("message {seq} {}", "x".repeat(200)),
                client_msg_id: Some(format!("cmid-{seq}")),
                thread_ts: None,
                kind: MessageKind::Posted,
                previous: None,
                broadcast: false,
                bot: false,
                rich: None,
            };
            store.append(&msg).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).unwrap().len() <= before {
            assert!(
                Instant::now() < deadline,
                "the database file is still {before} bytes 10 s after the appends"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = store.last_message(&ws.id, &channel).await.unwrap();
        assert_eq!(last.map(|m| m.seq), Some(200));
    }
}

#[cfg(test)]
mod meta_write_tests {
    use super::*;
    use crate::store::{Channel, MessageStore};

    /// Many metadata writes at once, from many threads: each is applied once, none fails
    /// with a busy database, and reads see all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_metadata_writes_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), 1).unwrap());
        let ws = store.create_workspace("busy").await.unwrap();
        let owner = store
            .create_user(&ws.id, "owner", "Owner", true, false)
            .await
            .unwrap();
        let channel = Channel {
            id: ChannelId::generate(),
            workspace: ws.id.clone(),
            name: "busy".into(),
            is_private: false,
            creator: owner.id.clone(),
            created: Ts::now(),
            topic: String::new(),
            purpose: String::new(),
            is_archived: false,
        };
        store.create_channel(&channel).await.unwrap();
        let joins = (0..64).map(|i| {
            let (store, ws, ch) = (store.clone(), ws.id.clone(), channel.id.clone());
            tokio::spawn(async move {
                let user = store
                    .create_user(&ws, &format!("u{i}"), "U", false, false)
                    .await?;
                assert!(store.add_member(&ch, &user.id).await?);
                assert!(store.set_last_read(&ch, &user.id, i + 1).await?);
                Ok::<_, StorageError>(user.id)
            })
        });
        let mut joined = Vec::new();
        for join in joins.collect::<Vec<_>>() {
            joined.push(join.await.unwrap().unwrap());
        }
        let members = store.members(&channel.id).await.unwrap();
        for user in &joined {
            assert!(members.contains(user), "{user} is missing");
        }
        assert_eq!(members.len(), joined.len());
    }
}

#[cfg(test)]
mod point_read_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn busy_timeout_ms(c: &Connection) -> StorageResult<i64> {
        c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .map_err(unavailable)
    }

    /// A point read runs on the calling thread with no busy wait; when it fails there (a
    /// locked file answers `SQLITE_BUSY` at once), it runs again on the blocking pool with the
    /// usual wait, is counted, and answers; the connection goes back to the usual wait.
    #[tokio::test(flavor = "current_thread")]
    async fn a_point_read_that_fails_on_the_calling_thread_runs_again_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sqlite");
        let pool = Arc::new(ConnPool::new(path.clone(), open(&path).unwrap()));
        let caller = std::thread::current().id();

        // The usual case: answered here, without a wait allowed.
        let (timeout, thread) = pool
            .read_now("probe", move |c| {
                Ok((busy_timeout_ms(c)?, std::thread::current().id()))
            })
            .await
            .unwrap();
        assert_eq!((timeout, thread), (0, caller));

        // The first try fails (as on a locked file): the second runs elsewhere and waits.
        let before = m::STORE_READS_HANDED_OFF
            .with_label_values(&["probe"])
            .get();
        let tries = Arc::new(AtomicUsize::new(0));
        let seen = {
            let tries = tries.clone();
            pool.read_now("probe", move |c| {
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(unavailable("database is locked"));
                }
                Ok((busy_timeout_ms(c)?, std::thread::current().id()))
            })
            .await
            .unwrap()
        };
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        assert_eq!(seen.0, BUSY_TIMEOUT.as_millis() as i64);
        assert_ne!(seen.1, caller, "the second try ran on the blocking pool");
        assert_eq!(
            m::STORE_READS_HANDED_OFF
                .with_label_values(&["probe"])
                .get(),
            before + 1
        );

        // Errors that are not the store's (not found, say) are answered, not retried.
        let tries = Arc::new(AtomicUsize::new(0));
        let err = {
            let tries = tries.clone();
            pool.read_now("probe", move |_| -> StorageResult<()> {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(StorageError::new(StorageErrorKind::NotFound, "no such row"))
            })
            .await
            .unwrap_err()
        };
        assert_eq!(
            (err.kind, tries.load(Ordering::SeqCst)),
            (StorageErrorKind::NotFound, 1)
        );

        // Every connection is back to the usual wait for calls on the blocking pool.
        let timeout = pool.run("probe", |c| busy_timeout_ms(c)).await.unwrap();
        assert_eq!(timeout, BUSY_TIMEOUT.as_millis() as i64);
    }
}
