//! Search: Tantivy indexes fed from the store shards' change feeds (one index for all of
//! them, or one per shard in a deployment that began that way).
//!
//! # Layout
//! - [`query`]: Slack's query syntax, parsed (pure).
//! - [`SearchIndex`]: one index (schema, writes, commits, queries, highlights).
//! - [`search_all`]: one query over several indexes, merged.
//! - [`indexer`]: tails change feeds into an index.
//!
//! # Invariants
//! - The index's commit payload records, for each change feed (store shard) it follows, the
//!   last change id it holds, so after a crash the indexer resumes from there and nothing
//!   acknowledged is missing from search.
//! - A query only ever matches messages of the caller's workspace in the channels the caller
//!   may read (the caller passes that set; the index enforces it as a filter).

pub mod indexer;
pub mod query;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;

use parking_lot::Mutex;
use tantivy::collector::{Count, DocSetCollector, FilterCollector, TopDocs};
use tantivy::query::{
    BooleanQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value, FAST,
    INDEXED, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    doc, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use crate::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use crate::protocol::Message;

/// Start and end of a highlighted match, as Slack marks them with `highlight=true`.
pub const HIGHLIGHT_START: char = '\u{e000}';
pub const HIGHLIGHT_END: char = '\u{e001}';
const WRITER_HEAP_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("search index error: {0}")]
pub struct SearchError(pub String);

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError(e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Score,
    Timestamp,
}

/// A query, resolved against the store: names turned into ids, permissions into a channel set.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    pub workspace: WorkspaceId,
    pub words: Vec<String>,
    pub phrases: Vec<String>,
    pub excluded: Vec<String>,
    /// Channels the caller may read, already narrowed by any `in:`.
    pub channels: Vec<ChannelId>,
    /// Authors from `from:`; empty means anyone.
    pub users: Vec<UserId>,
    pub after: Option<Ts>,
    pub before: Option<Ts>,
    pub has_link: bool,
    /// Only thread replies (`is:thread`).
    pub thread_only: bool,
    /// Only messages that shared files (`search.files`), whose words may also match the
    /// files' names and titles.
    pub files_only: bool,
    /// Authors whose messages are left out (`to:`: messages sent to them, not by them).
    pub not_users: Vec<UserId>,
    /// Only these messages (`has:pin`: the pinned ones of the channels searched), by channel
    /// and seq; `None`: any.
    pub only: Option<Vec<(ChannelId, Seq)>>,
    pub sort: SortBy,
    /// Newest (or best) first when true.
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
    pub highlight: bool,
    /// With [`SortBy::Timestamp`]: page from here instead of by `offset`, and say where the
    /// next page starts ([`SearchResults::next`]). A deep page then costs what the first
    /// does, and pages do not skip or repeat matches while messages come and go.
    pub resume: Option<Resume>,
}

/// A match's place among matches of the same `ts`: its channel and seq.
pub type MatchKey = (ChannelId, Seq);

/// Most matches of one microsecond whose documents a resumed page loads to order them
/// (Slack's `ts` is unique in a channel, so ties are messages of different channels posted in
/// the same microsecond: a few at most, where more would be passed over).
const MAX_TIED: usize = 10_000;

/// Where a page of a timestamp-ordered search starts (`search.messages`' `cursor`): the
/// matches at `at` not given yet, then those past `at` in the request's order. Matches of one
/// `ts` are given in (channel, seq) order when a page starts among them, so those given are
/// the ones up to `after`, and `seen`: the ones the last page took from the end of its run
/// (at most a page).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// `None`: from the first match.
    pub at: Option<Ts>,
    pub after: Option<MatchKey>,
    pub seen: Vec<MatchKey>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    pub channel: ChannelId,
    pub seq: Seq,
    pub ts: Ts,
    pub user: UserId,
    pub text: String,
    pub score: f32,
}

#[derive(Clone, Debug, Default)]
pub struct SearchResults {
    pub total: usize,
    pub hits: Vec<SearchHit>,
    /// For a request with [`SearchRequest::resume`]: where the next page starts, if any
    /// match is left.
    pub next: Option<Resume>,
}

/// The names and titles of the files `msg` shared (its `files`, Slack's file objects), one
/// per line.
fn file_text(msg: &Message) -> String {
    let Some(files) = msg.rich.as_ref().and_then(|r| r.files.as_deref()) else {
        return String::new();
    };
    let Ok(serde_json::Value::Array(files)) = serde_json::from_str(files) else {
        return String::new();
    };
    let mut out = String::new();
    for f in &files {
        for key in ["name", "title"] {
            if let Some(s) = f[key].as_str() {
                out.push_str(s);
                out.push('\n');
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    workspace: Field,
    channel: Field,
    user: Field,
    text: Field,
    ts: Field,
    seq: Field,
    has_link: Field,
    in_thread: Field,
    has_file: Field,
    /// The names and titles of the files a message shared: searched by `search.files`.
    file_text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let file_text_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        workspace: b.add_text_field("workspace", STRING),
        channel: b.add_text_field("channel", STRING | STORED),
        user: b.add_text_field("user", STRING | STORED),
        text: b.add_text_field("text", text_options),
        ts: b.add_u64_field("ts", NumericOptions::default() | INDEXED | FAST | STORED),
        seq: b.add_u64_field("seq", NumericOptions::default() | STORED),
        has_link: b.add_u64_field("has_link", INDEXED),
        in_thread: b.add_u64_field("in_thread", INDEXED),
        has_file: b.add_u64_field("has_file", INDEXED),
        file_text: b.add_text_field("file_text", file_text_options),
    };
    (b.build(), fields)
}

/// One Tantivy index of messages.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it if needed. An index built with another schema
    /// (an older release's) is removed and made again, empty: it holds nothing that the
    /// store's change feeds do not, and its indexer then reads them from the start.
    pub fn open(dir: &Path) -> Result<SearchIndex, SearchError> {
        let (schema, fields) = schema();
        let index = match Self::open_dir(dir, &schema) {
            Err(tantivy::TantivyError::SchemaError(e)) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "search index has another schema: rebuilding it from the change feeds"
                );
                std::fs::remove_dir_all(dir)
                    .map_err(|e| SearchError(format!("remove {}: {e}", dir.display())))?;
                Self::open_dir(dir, &schema)?
            }
            other => other?,
        };
        Self::with_index(index, fields)
    }

    fn open_dir(dir: &Path, schema: &Schema) -> tantivy::Result<Index> {
        std::fs::create_dir_all(dir)?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        Index::open_or_create(directory, schema.clone())
    }

    /// An index in memory, for tests.
    pub fn in_memory() -> Result<SearchIndex, SearchError> {
        let (schema, fields) = schema();
        Self::with_index(Index::create_in_ram(schema), fields)
    }

    fn with_index(index: Index, fields: Fields) -> Result<SearchIndex, SearchError> {
        // One indexing thread: each commit then makes one segment rather than one per
        // thread. Commits come every poll (a few a second), each with a few thousand small
        // messages at most, and every segment costs a fixed amount (tantivy allocates and
        // scans a 2^19-slot term table per segment writer, then merges the segments).
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    /// The last change id applied from each of `feeds` change feeds (shards), as the last
    /// commit recorded them: 0 for a new index, and for a feed it did not record.
    pub fn positions(&self, feeds: usize) -> Vec<u64> {
        let recorded = self
            .index
            .load_metas()
            .ok()
            .and_then(|m| m.payload)
            .map(|p| parse_positions(&p))
            .unwrap_or_default();
        (0..feeds)
            .map(|i| recorded.get(i).copied().unwrap_or(0))
            .collect()
    }

    /// The last change id of an index that follows one feed.
    pub fn last_change_id(&self) -> u64 {
        self.positions(1)[0]
    }

    fn doc_id(channel: &ChannelId, seq: Seq) -> String {
        format!("{}:{seq}", channel.0)
    }

    /// Adds (or replaces) a message. Visible to searches after the next [`commit`](Self::commit).
    pub fn upsert(&self, msg: &Message) -> Result<(), SearchError> {
        self.apply([(msg, false)])
    }

    /// Applies changes in their order, each `(message, deleted)`: a message's last change
    /// wins, dropping it from the index when deleted and replacing what the index held
    /// otherwise. Takes effect at the next [`commit`](Self::commit).
    ///
    /// The messages' earlier versions go in one delete for the whole call. A delete per
    /// message made Tantivy build a term scorer for each segment at the commit, for messages
    /// that are mostly new and were never in the index.
    pub fn apply<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a Message, bool)>,
    ) -> Result<(), SearchError> {
        // Each message's last change, in the order the messages first came.
        let mut order: Vec<(&Message, bool)> = Vec::new();
        let mut at: HashMap<(&str, Seq), usize> = HashMap::new();
        for (msg, deleted) in changes {
            match at.entry((msg.channel.0.as_str(), msg.seq)) {
                Entry::Occupied(i) => order[*i.get()] = (msg, deleted),
                Entry::Vacant(slot) => {
                    slot.insert(order.len());
                    order.push((msg, deleted));
                }
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let f = self.fields;
        let writer = self.writer.lock();
        let ids = order
            .iter()
            .map(|(msg, _)| Term::from_field_text(f.id, &Self::doc_id(&msg.channel, msg.seq)));
        writer.delete_query(Box::new(TermSetQuery::new(ids)))?;
        for (msg, deleted) in order {
            // Gone, or a channel's topic or purpose announcement (what the channel says of
            // itself, not what anyone said): not searchable, as in Slack.
            if deleted || msg.rich.as_ref().is_some_and(|r| r.sets.is_some()) {
                continue;
            }
            writer.add_document(doc!(
                f.id => Self::doc_id(&msg.channel, msg.seq),
                f.workspace => msg.workspace.0.clone(),
                f.channel => msg.channel.0.clone(),
                f.user => msg.user.0.clone(),
                f.text => msg.text.clone(),
                f.ts => msg.ts.0,
                f.seq => msg.seq,
                f.has_link => u64::from(query::has_link(&msg.text)),
                f.in_thread => u64::from(msg.thread_ts.is_some()),
                f.has_file => u64::from(msg.rich.as_ref().is_some_and(|r| r.files.is_some())),
                f.file_text => file_text(msg),
            ))?;
        }
        Ok(())
    }

    /// Makes everything added so far searchable and records `change_id` as applied, for an
    /// index that follows one feed.
    pub fn commit(&self, change_id: u64) -> Result<(), SearchError> {
        self.commit_positions(&[change_id])
    }

    /// Makes everything added so far searchable and records, for each feed it follows, the
    /// last change id applied.
    pub fn commit_positions(&self, positions: &[u64]) -> Result<(), SearchError> {
        {
            let mut writer = self.writer.lock();
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&format_positions(positions));
            prepared.commit()?;
        }
        self.reader.reload()?;
        Ok(())
    }

    /// Number of messages searchable now.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The query's terms for `field` after its tokenizer (lower-casing, splitting).
    fn text_terms(&self, field: Field, s: &str) -> Vec<Term> {
        let Ok(mut tokenizer) = self.index.tokenizer_for_field(field) else {
            return Vec::new();
        };
        let mut stream = tokenizer.token_stream(s);
        let mut terms = Vec::new();
        while let Some(tok) = stream.next() {
            terms.push(Term::from_field_text(field, &tok.text));
        }
        terms
    }

    /// A clause that matches `s` in `field` as a word (one token) or as a phrase (several).
    fn field_clause(&self, field: Field, s: &str) -> Option<Box<dyn Query>> {
        let terms = self.text_terms(field, s);
        match terms.len() {
            0 => None,
            1 => Some(Box::new(TermQuery::new(
                terms[0].clone(),
                IndexRecordOption::WithFreqs,
            ))),
            _ => Some(Box::new(PhraseQuery::new(terms))),
        }
    }

    /// A clause that matches `s` in a message's text, or for `search.files` (`files`) also
    /// in the names and titles of the files it shared.
    fn text_clause(&self, s: &str, files: bool) -> Option<Box<dyn Query>> {
        let text = self.field_clause(self.fields.text, s)?;
        if !files {
            return Some(text);
        }
        let Some(names) = self.field_clause(self.fields.file_text, s) else {
            return Some(text);
        };
        Some(Box::new(BooleanQuery::new(vec![
            (Occur::Should, text),
            (Occur::Should, names),
        ])))
    }

    fn build_query(&self, r: &SearchRequest) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(f.workspace, &r.workspace.0),
                IndexRecordOption::Basic,
            )),
        ));
        if r.channels.is_empty() {
            return None;
        }
        clauses.push((
            Occur::Must,
            Box::new(TermSetQuery::new(
                r.channels
                    .iter()
                    .map(|c| Term::from_field_text(f.channel, &c.0)),
            )),
        ));
        if !r.users.is_empty() {
            clauses.push((
                Occur::Must,
                Box::new(TermSetQuery::new(
                    r.users.iter().map(|u| Term::from_field_text(f.user, &u.0)),
                )),
            ));
        }
        if let Some(only) = &r.only {
            if only.is_empty() {
                return None;
            }
            clauses.push((
                Occur::Must,
                Box::new(TermSetQuery::new(only.iter().map(|(c, seq)| {
                    Term::from_field_text(f.id, &Self::doc_id(c, *seq))
                }))),
            ));
        }
        if !r.not_users.is_empty() {
            clauses.push((
                Occur::MustNot,
                Box::new(TermSetQuery::new(
                    r.not_users
                        .iter()
                        .map(|u| Term::from_field_text(f.user, &u.0)),
                )),
            ));
        }
        let mut any_text = false;
        for w in r.words.iter().chain(r.phrases.iter()) {
            match self.text_clause(w, r.files_only) {
                Some(q) => {
                    any_text = true;
                    clauses.push((Occur::Must, q));
                }
                // A word of punctuation alone matches nothing rather than everything.
                None if !w.trim().is_empty() => return None,
                None => {}
            }
        }
        for w in &r.excluded {
            if let Some(q) = self.text_clause(w, r.files_only) {
                clauses.push((Occur::MustNot, q));
            }
        }
        if r.after.is_some() || r.before.is_some() {
            let lower = r.after.map_or(Bound::Unbounded, |t| {
                Bound::Excluded(Term::from_field_u64(f.ts, t.0))
            });
            let upper = r.before.map_or(Bound::Unbounded, |t| {
                Bound::Excluded(Term::from_field_u64(f.ts, t.0))
            });
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        if r.has_link {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.has_link, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if r.thread_only {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.in_thread, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if r.files_only {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.has_file, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let _ = any_text;
        Some(Box::new(BooleanQuery::new(clauses)))
    }

    /// Runs a search: total matches and one page of hits, highlighted when asked.
    pub fn search(&self, r: &SearchRequest) -> Result<SearchResults, SearchError> {
        search_all(&[self], r)
    }

    /// This index's best `n` matches of `r`, best first, with what orders them; and how many
    /// there are in all.
    fn top(
        &self,
        searcher: &Searcher,
        query: &dyn Query,
        r: &SearchRequest,
        n: usize,
    ) -> Result<(usize, Vec<Ranked>), SearchError> {
        let top = TopDocs::with_limit(n.max(1));
        Ok(match r.sort {
            SortBy::Score => {
                let (total, docs) = searcher.search(query, &(Count, top))?;
                let docs = docs
                    .into_iter()
                    .map(|(score, addr)| Ranked { score, ts: 0, addr })
                    .collect();
                (total, docs)
            }
            SortBy::Timestamp => {
                let order = if r.descending {
                    Order::Desc
                } else {
                    Order::Asc
                };
                let (total, docs) = searcher
                    .search(query, &(Count, top.order_by_fast_field::<u64>("ts", order)))?;
                let docs = docs
                    .into_iter()
                    .map(|(ts, addr)| Ranked {
                        score: 0.0,
                        ts,
                        addr,
                    })
                    .collect();
                (total, docs)
            }
        })
    }

    /// The channel and seq of the stored message at `addr`.
    fn key(&self, searcher: &Searcher, addr: tantivy::DocAddress) -> Result<MatchKey, SearchError> {
        let doc: TantivyDocument = searcher.doc(addr)?;
        let channel = doc
            .get_first(self.fields.channel)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let seq = doc
            .get_first(self.fields.seq)
            .and_then(|v| v.as_u64())
            .unwrap_or_default();
        Ok((ChannelId(channel.to_string()), seq))
    }

    /// The stored message at `addr`, highlighted by `snippets` when given.
    fn hit(
        &self,
        searcher: &Searcher,
        addr: tantivy::DocAddress,
        score: f32,
        snippets: Option<&SnippetGenerator>,
    ) -> Result<SearchHit, SearchError> {
        let f = self.fields;
        let doc: TantivyDocument = searcher.doc(addr)?;
        let text_of = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let u64_of = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_u64())
                .unwrap_or_default()
        };
        let mut text = text_of(f.text);
        if let Some(g) = snippets {
            text = highlight(&text, g);
        }
        Ok(SearchHit {
            channel: ChannelId(text_of(f.channel)),
            seq: u64_of(f.seq),
            ts: Ts(u64_of(f.ts)),
            user: UserId(text_of(f.user)),
            text,
            score,
        })
    }
}

/// A commit's payload: `changes:<id of feed 0>,<id of feed 1>,...`.
fn format_positions(positions: &[u64]) -> String {
    let ids: Vec<String> = positions.iter().map(u64::to_string).collect();
    format!("changes:{}", ids.join(","))
}

/// The positions in a payload; `change:<id>` is how an index of one feed recorded it before
/// indexes could follow several. Anything else reads as nothing applied (the index catches
/// up from the start, which repeats upserts but loses nothing).
fn parse_positions(payload: &str) -> Vec<u64> {
    if let Some(ids) = payload.strip_prefix("changes:") {
        let parsed: Result<Vec<u64>, _> = ids.split(',').map(str::parse).collect();
        return parsed.unwrap_or_default();
    }
    payload
        .strip_prefix("change:")
        .and_then(|v| v.parse().ok())
        .map(|id| vec![id])
        .unwrap_or_default()
}

/// One match in one index, before its document is loaded.
struct Ranked {
    score: f32,
    ts: u64,
    addr: tantivy::DocAddress,
}

/// Runs `r` on every index in `indexes` and merges them: the total over all of them and the
/// page that one index holding all their messages would give. A workspace's messages may lie
/// in several (the embedded store spreads its channels over its shards, and each shard has an
/// index). Each index ranks its own best `offset + limit` and only the page's documents are
/// loaded. Scores are each index's own (BM25 with that index's term statistics), as in any
/// sharded search engine that does not exchange them.
pub fn search_all(
    indexes: &[&SearchIndex],
    r: &SearchRequest,
) -> Result<SearchResults, SearchError> {
    if let (SortBy::Timestamp, Some(resume)) = (r.sort, &r.resume) {
        return search_resumed(indexes, r, resume);
    }
    let limit = r.limit.clamp(1, 1000);
    let want = r.offset.saturating_add(limit);
    let mut total = 0;
    let mut ranked: Vec<(usize, Ranked)> = Vec::new();
    let mut opened: Opened = Vec::with_capacity(indexes.len());
    for (i, index) in indexes.iter().enumerate() {
        let Some(query) = index.build_query(r) else {
            // The request matches nothing anywhere (no readable channel, or a word that is
            // only punctuation): the same for every index.
            return Ok(SearchResults::default());
        };
        let searcher = index.reader.searcher();
        let (n, top) = index.top(&searcher, &*query, r, want)?;
        total += n;
        ranked.extend(top.into_iter().map(|m| (i, m)));
        opened.push((searcher, query, None));
    }
    // Best first; equal ones in index order, then document order, so pages never overlap.
    ranked.sort_by(|(ia, a), (ib, b)| {
        let key = match r.sort {
            SortBy::Score => b.score.total_cmp(&a.score),
            SortBy::Timestamp if r.descending => b.ts.cmp(&a.ts),
            SortBy::Timestamp => a.ts.cmp(&b.ts),
        };
        key.then(ia.cmp(ib)).then(a.addr.cmp(&b.addr))
    });
    let page = ranked
        .into_iter()
        .skip(r.offset)
        .take(limit)
        .map(|(i, m)| (i, m.addr, m.score));
    let hits = load_page(indexes, &mut opened, page, r.highlight)?;
    Ok(SearchResults {
        total,
        hits,
        next: None,
    })
}

/// Each index's searcher and query in a search, and its highlighter once one is needed.
type Opened = Vec<(Searcher, Box<dyn Query>, Option<SnippetGenerator>)>;

/// Loads a page's documents, given as (index, address, score), highlighted when asked.
fn load_page(
    indexes: &[&SearchIndex],
    opened: &mut Opened,
    page: impl Iterator<Item = (usize, tantivy::DocAddress, f32)>,
    highlight: bool,
) -> Result<Vec<SearchHit>, SearchError> {
    let mut hits = Vec::new();
    for (i, addr, score) in page {
        let (searcher, query, snippets) = &mut opened[i];
        if highlight && snippets.is_none() {
            let mut g = SnippetGenerator::create(searcher, &**query, indexes[i].fields.text)?;
            g.set_max_num_chars(40_000);
            *snippets = Some(g);
        }
        hits.push(indexes[i].hit(searcher, addr, score, snippets.as_ref())?);
    }
    Ok(hits)
}

/// [`search_all`] of a request that pages by [`Resume`]: the matches of `resume.at` not yet
/// given (read whole, in (channel, seq) order), then each index's first `limit + 1` past it,
/// merged. `total` counts every match of the request, as on its first page.
fn search_resumed(
    indexes: &[&SearchIndex],
    r: &SearchRequest,
    resume: &Resume,
) -> Result<SearchResults, SearchError> {
    let limit = r.limit.clamp(1, 1000);
    let mut total = 0;
    let mut tied: Vec<(MatchKey, usize, tantivy::DocAddress)> = Vec::new();
    let mut past: Vec<(usize, Ranked)> = Vec::new();
    let mut opened: Opened = Vec::with_capacity(indexes.len());
    for (i, index) in indexes.iter().enumerate() {
        let Some(query) = index.build_query(r) else {
            return Ok(SearchResults::default());
        };
        let searcher = index.reader.searcher();
        match resume.at {
            None => {
                let (n, top) = index.top(&searcher, &*query, r, limit + 1)?;
                total += n;
                past.extend(top.into_iter().map(|m| (i, m)));
            }
            Some(at) => {
                // One pass over the request's matches, reading each one's `ts`: the count,
                // the matches of `at`, and the first `limit + 1` past it. (A range query
                // joined to the request costs a second pass over the whole range.)
                let (at, descending) = (at.0, r.descending);
                let order = if descending { Order::Desc } else { Order::Asc };
                let ties = FilterCollector::new(
                    "ts".to_string(),
                    move |ts: u64| ts == at,
                    DocSetCollector,
                );
                let beyond = FilterCollector::new(
                    "ts".to_string(),
                    move |ts: u64| if descending { ts < at } else { ts > at },
                    TopDocs::with_limit(limit + 1).order_by_fast_field::<u64>("ts", order),
                );
                let (n, tied_docs, top) = searcher.search(&*query, &(Count, ties, beyond))?;
                total += n;
                let mut tied_docs: Vec<_> = tied_docs.into_iter().collect();
                tied_docs.sort();
                for addr in tied_docs.into_iter().take(MAX_TIED) {
                    let key = index.key(&searcher, addr)?;
                    let given = resume.after.as_ref().is_some_and(|after| &key <= after)
                        || resume.seen.contains(&key);
                    if !given {
                        tied.push((key, i, addr));
                    }
                }
                past.extend(top.into_iter().map(|(ts, addr)| {
                    (
                        i,
                        Ranked {
                            score: 0.0,
                            ts,
                            addr,
                        },
                    )
                }));
            }
        }
        opened.push((searcher, query, None));
    }
    tied.sort_by(|a, b| a.0.cmp(&b.0));
    // As `search_all` orders a page of one `ts`: index order, then document order.
    past.sort_by(|(ia, a), (ib, b)| {
        let key = if r.descending {
            b.ts.cmp(&a.ts)
        } else {
            a.ts.cmp(&b.ts)
        };
        key.then(ia.cmp(ib)).then(a.addr.cmp(&b.addr))
    });
    let more = tied.len() + past.len() > limit;
    let from_tied = tied.len().min(limit);
    let page = tied
        .into_iter()
        .map(|(_, i, addr)| (i, addr, 0.0))
        .chain(past.into_iter().map(|(i, m)| (i, m.addr, 0.0)))
        .take(limit);
    let hits = load_page(indexes, &mut opened, page, r.highlight)?;
    let next = match hits.last() {
        Some(last) if more => Some(if hits.len() == from_tied {
            // The page ended among `at`'s matches: the next starts after this one.
            Resume {
                at: resume.at,
                after: Some((last.channel.clone(), last.seq)),
                seen: resume.seen.clone(),
            }
        } else {
            // It ended past `at`: the next starts at the last `ts` given, leaving out the
            // matches of that `ts` this page gave.
            Resume {
                at: Some(last.ts),
                after: None,
                seen: hits[from_tied..]
                    .iter()
                    .filter(|h| h.ts == last.ts)
                    .map(|h| (h.channel.clone(), h.seq))
                    .collect(),
            }
        }),
        _ => None,
    };
    Ok(SearchResults { total, hits, next })
}

/// Wraps each matched range of `text` in Slack's highlight markers.
fn highlight(text: &str, g: &SnippetGenerator) -> String {
    let snippet = g.snippet(text);
    if snippet.fragment() != text || snippet.highlighted().is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut at = 0;
    for r in snippet.highlighted() {
        if r.start < at || r.end > text.len() {
            continue;
        }
        out.push_str(&text[at..r.start]);
        out.push(HIGHLIGHT_START);
        out.push_str(&text[r.start..r.end]);
        out.push(HIGHLIGHT_END);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ch: &str, seq: u64, user: &str, text: &str, ts: u64) -> Message {
        Message {
            workspace: WorkspaceId::from("TW"),
            channel: ChannelId::from(ch),
            seq,
            ts: Ts(ts),
            user: UserId::from(user),
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

    /// A newest-first request for `words` in channels CA and CB of workspace TW.
    pub(super) fn request(words: &[&str]) -> SearchRequest {
        SearchRequest {
            workspace: WorkspaceId::from("TW"),
            words: words.iter().map(|w| w.to_string()).collect(),
            phrases: vec![],
            excluded: vec![],
            channels: vec![ChannelId::from("CA"), ChannelId::from("CB")],
            users: vec![],
            after: None,
            before: None,
            has_link: false,
            thread_only: false,
            files_only: false,
            not_users: Vec::new(),
            only: None,
            sort: SortBy::Timestamp,
            descending: true,
            offset: 0,
            limit: 20,
            highlight: false,
            resume: None,
        }
    }

    fn index() -> SearchIndex {
        let idx = SearchIndex::in_memory().unwrap();
        idx.upsert(&msg("CA", 1, "UA", "the release train leaves at noon", 100))
            .unwrap();
        idx.upsert(&msg(
            "CA",
            2,
            "UB",
            "Release notes: https://example.com/notes",
            200,
        ))
        .unwrap();
        idx.upsert(&msg("CB", 1, "UA", "train delayed, flaky test again", 300))
            .unwrap();
        idx.upsert(&msg("CSECRET", 1, "UA", "secret release plans", 400))
            .unwrap();
        let mut other = msg("CA", 9, "UA", "release from another workspace", 500);
        other.workspace = WorkspaceId::from("TOTHER");
        idx.upsert(&other).unwrap();
        idx.commit(5).unwrap();
        idx
    }

    fn seqs(r: &SearchResults) -> Vec<(String, u64)> {
        r.hits
            .iter()
            .map(|h| (h.channel.0.clone(), h.seq))
            .collect()
    }

    /// Several indexes searched together page like one index holding all their messages:
    /// the same totals, the same pages by time both ways, and by score every match once.
    #[test]
    fn several_indexes_page_like_one() {
        let channels: Vec<String> = (0..6).map(|n| format!("C{n}")).collect();
        let parts: Vec<SearchIndex> = (0..3).map(|_| SearchIndex::in_memory().unwrap()).collect();
        let whole = SearchIndex::in_memory().unwrap();
        for n in 0..60u64 {
            let ch = &channels[(n % 6) as usize];
            let text = if n % 4 == 0 {
                "deploy deploy deploy tonight"
            } else {
                "deploy tonight"
            };
            // Some equal timestamps, which must still page without overlap.
            let m = msg(ch, n, "UA", text, 1_000 + n / 2);
            parts[(n % 6 % 3) as usize].upsert(&m).unwrap();
            whole.upsert(&m).unwrap();
        }
        for idx in parts.iter().chain([&whole]) {
            idx.commit(1).unwrap();
        }
        let parts: Vec<&SearchIndex> = parts.iter().collect();
        let ask = |sort, descending, offset| SearchRequest {
            channels: channels.iter().map(|c| ChannelId(c.clone())).collect(),
            sort,
            descending,
            offset,
            limit: 7,
            ..request(&["deploy"])
        };
        for descending in [true, false] {
            for offset in (0..63).step_by(7) {
                let r = ask(SortBy::Timestamp, descending, offset);
                let (merged, single) = (search_all(&parts, &r).unwrap(), whole.search(&r).unwrap());
                assert_eq!((merged.total, single.total), (60, 60));
                let ts = |r: &SearchResults| r.hits.iter().map(|h| h.ts).collect::<Vec<_>>();
                assert_eq!(ts(&merged), ts(&single), "offset {offset}");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut last_score = f32::INFINITY;
        for offset in (0..63).step_by(7) {
            let r = search_all(&parts, &ask(SortBy::Score, true, offset)).unwrap();
            assert_eq!(r.total, 60);
            for h in &r.hits {
                assert!(seen.insert((h.channel.0.clone(), h.seq)), "{h:?} twice");
                assert!(h.score <= last_score, "best first");
                last_score = h.score;
            }
        }
        assert_eq!(seen.len(), 60);
        // Only what the request may read, and nothing at all without a readable channel.
        let none = SearchRequest {
            channels: vec![],
            ..ask(SortBy::Score, true, 0)
        };
        assert_eq!(search_all(&parts, &none).unwrap().total, 0);
        assert_eq!(
            search_all(&[], &ask(SortBy::Score, true, 0)).unwrap().total,
            0
        );
    }

    /// Follows `resume` pages of `limit` from the start to the end: every hit, in order.
    fn walk(indexes: &[&SearchIndex], r: &SearchRequest) -> (Vec<SearchHit>, usize) {
        let mut r = SearchRequest {
            resume: Some(Resume::default()),
            ..r.clone()
        };
        let (mut all, mut pages) = (Vec::new(), 0);
        loop {
            let found = search_all(indexes, &r).unwrap();
            assert!(found.hits.len() <= r.limit);
            all.extend(found.hits);
            pages += 1;
            match found.next {
                Some(next) => r.resume = Some(next),
                None => return (all, pages),
            }
            assert!(pages < 1_000, "the pages end");
        }
    }

    /// Resumed pages give every match once, in time order both ways, over one index or
    /// several, with many matches in one microsecond (in several channels) falling across
    /// page ends; and a page resumed after messages came in gives the older ones it had not
    /// reached, not the newer ones.
    #[test]
    fn resumed_pages_give_every_match_once_in_order() {
        let channels: Vec<String> = (0..5).map(|n| format!("C{n}")).collect();
        let parts: Vec<SearchIndex> = (0..2).map(|_| SearchIndex::in_memory().unwrap()).collect();
        let whole = SearchIndex::in_memory().unwrap();
        let mut expected = Vec::new();
        for n in 0..83u64 {
            let ch = &channels[(n % 5) as usize];
            // Runs of up to 12 matches of one microsecond, spread over the channels.
            let ts = 1_000
                + if (20..44).contains(&n) {
                    20 + n / 12
                } else {
                    n
                };
            let text = if n % 9 == 4 {
                "lunch"
            } else {
                "deploy tonight"
            };
            let m = msg(ch, n, "UA", text, ts);
            parts[(n % 5 % 2) as usize].upsert(&m).unwrap();
            whole.upsert(&m).unwrap();
            if text != "lunch" {
                expected.push((ts, ch.clone(), n));
            }
        }
        for idx in parts.iter().chain([&whole]) {
            idx.commit(1).unwrap();
        }
        let parts: Vec<&SearchIndex> = parts.iter().collect();
        for limit in [1, 4, 7, 12, 13, 100] {
            for descending in [true, false] {
                let r = SearchRequest {
                    channels: channels.iter().map(|c| ChannelId(c.clone())).collect(),
                    descending,
                    limit,
                    ..request(&["deploy"])
                };
                for indexes in [&parts[..], &[&whole][..]] {
                    let (hits, pages) = walk(indexes, &r);
                    let mut got: Vec<(u64, String, u64)> = hits
                        .iter()
                        .map(|h| (h.ts.0, h.channel.0.clone(), h.seq))
                        .collect();
                    let order: Vec<u64> = got.iter().map(|g| g.0).collect();
                    let mut sorted = order.clone();
                    sorted.sort();
                    if descending {
                        sorted.reverse();
                    }
                    assert_eq!(order, sorted, "time order, limit {limit}");
                    got.sort();
                    let mut want = expected.clone();
                    want.sort();
                    assert_eq!(
                        got, want,
                        "each match once, limit {limit} desc {descending}"
                    );
                    assert!(pages <= expected.len() / limit + 2, "{pages} pages");
                }
            }
        }
        // The total is the request's, on every page.
        let r = SearchRequest {
            channels: channels.iter().map(|c| ChannelId(c.clone())).collect(),
            limit: 10,
            resume: Some(Resume::default()),
            ..request(&["deploy"])
        };
        let first = search_all(&parts, &r).unwrap();
        assert_eq!(first.total, expected.len());
        let second = search_all(
            &parts,
            &SearchRequest {
                resume: first.next.clone(),
                ..r.clone()
            },
        )
        .unwrap();
        assert_eq!(second.total, expected.len());
        // Messages posted after the first page and older ones found late (an import): the
        // next page goes on from where the first ended, with the older ones in their place.
        let (newer, older) = (
            msg("C0", 500, "UA", "deploy", 5_000),
            msg("C1", 501, "UA", "deploy", 1_010),
        );
        parts[0].upsert(&newer).unwrap();
        parts[1].upsert(&older).unwrap();
        for p in &parts {
            p.commit(2).unwrap();
        }
        let mut rest = Vec::new();
        let mut resume = first.next.clone();
        while let Some(at) = resume {
            let page = search_all(
                &parts,
                &SearchRequest {
                    resume: Some(at),
                    ..r.clone()
                },
            )
            .unwrap();
            rest.extend(page.hits.iter().map(|h| (h.channel.0.clone(), h.seq)));
            resume = page.next;
        }
        assert!(
            !rest.contains(&("C0".to_string(), 500)),
            "newer than the first page"
        );
        assert!(
            rest.contains(&("C1".to_string(), 501)),
            "older, in its place"
        );
        assert_eq!(rest.len() + first.hits.len(), expected.len() + 1);
        // With nothing left, no next page; with nothing found, none either.
        let none = search_all(
            &parts,
            &SearchRequest {
                resume: Some(Resume::default()),
                ..request(&["nothing-matches-this"])
            },
        )
        .unwrap();
        assert_eq!((none.total, none.hits.len(), none.next), (0, 0, None));
    }

    #[test]
    fn file_searches_find_messages_that_shared_files_by_text_or_file_name() {
        let idx = SearchIndex::in_memory().unwrap();
        let mut shared = msg("CA", 1, "UA", "numbers are in", 100);
        shared.rich = crate::protocol::RichContent {
            files: Some(
                r#"[{"id":"F1","name":"q3-report.csv","title":"Quarterly revenue"},{"id":"F2","name":"chart.png"}]"#
                    .into(),
            ),
            ..Default::default()
        }
        .boxed();
        idx.upsert(&shared).unwrap();
        idx.upsert(&msg("CA", 2, "UA", "revenue numbers look fine", 200))
            .unwrap();
        idx.commit(1).unwrap();
        let files = |words: &[&str]| {
            let r = SearchRequest {
                files_only: true,
                ..request(words)
            };
            idx.search(&r)
                .unwrap()
                .hits
                .iter()
                .map(|h| h.seq)
                .collect::<Vec<_>>()
        };
        let messages = |words: &[&str]| {
            idx.search(&request(words))
                .unwrap()
                .hits
                .iter()
                .map(|h| h.seq)
                .collect::<Vec<_>>()
        };
        // By a file's title, name (as tokens), or the message's own text; only a message
        // that shared files.
        assert_eq!(files(&["quarterly"]), [1]);
        assert_eq!(files(&["chart"]), [1]);
        assert_eq!(files(&["q3", "report"]), [1]);
        assert_eq!(files(&["numbers"]), [1]);
        assert_eq!(files(&["revenue"]), [1]);
        assert!(files(&["fine"]).is_empty());
        // A message search reads the message's text alone.
        assert_eq!(messages(&["revenue"]), [2]);
        assert!(messages(&["chart"]).is_empty());
        let excluded = SearchRequest {
            files_only: true,
            excluded: vec!["chart".into()],
            ..request(&["numbers"])
        };
        assert_eq!(idx.search(&excluded).unwrap().total, 0);
    }

    #[test]
    fn commits_record_a_position_per_feed_and_read_the_one_feed_form() {
        let idx = SearchIndex::in_memory().unwrap();
        assert_eq!(idx.positions(3), vec![0, 0, 0]);
        idx.commit_positions(&[7, 0, 12]).unwrap();
        assert_eq!(idx.positions(3), vec![7, 0, 12]);
        assert_eq!(
            idx.positions(4),
            vec![7, 0, 12, 0],
            "a feed it never recorded"
        );
        idx.commit(9).unwrap();
        assert_eq!(idx.last_change_id(), 9);
        assert_eq!(parse_positions("change:41"), vec![41]);
        assert_eq!(parse_positions("changes:1,2"), vec![1, 2]);
        assert_eq!(parse_positions("changes:1,x"), Vec::<u64>::new());
        assert_eq!(parse_positions("something else"), Vec::<u64>::new());
    }

    #[test]
    fn words_match_case_insensitively_within_readable_channels_only() {
        let idx = index();
        let r = idx.search(&request(&["RELEASE"])).unwrap();
        assert_eq!(
            r.total, 2,
            "not the secret channel, not the other workspace"
        );
        assert_eq!(seqs(&r), vec![("CA".into(), 2), ("CA".into(), 1)]);
    }

    #[test]
    fn phrases_exclusions_authors_dates_and_links() {
        let idx = index();
        let mut r = request(&[]);
        r.phrases = vec!["release train".into()];
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 1)]);
        let mut r = request(&["train"]);
        r.excluded = vec!["flaky".into()];
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 1)]);
        let mut r = request(&["release"]);
        r.users = vec![UserId::from("UB")];
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 2)]);
        let mut r = request(&[]);
        r.after = Some(Ts(100));
        r.before = Some(Ts(300));
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 2)]);
        let mut r = request(&[]);
        r.has_link = true;
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 2)]);
    }

    #[test]
    fn topic_announcements_are_not_searched() {
        let idx = index();
        let mut topic = msg("CA", 3, "UA", "Set the topic: release train schedule", 250);
        topic.rich = crate::protocol::RichContent {
            sets: Some(crate::protocol::ChannelSetting::Topic(
                "release train schedule".into(),
            )),
            ..Default::default()
        }
        .boxed();
        idx.upsert(&topic).unwrap();
        idx.commit(6).unwrap();
        assert_eq!(
            seqs(&idx.search(&request(&["schedule"])).unwrap()),
            Vec::<(String, u64)>::new()
        );
    }

    #[test]
    fn thread_replies_and_excluded_authors() {
        let idx = index();
        let mut reply = msg("CB", 2, "UB", "on it, the train is fixed", 350);
        reply.thread_ts = Some(Ts(300));
        idx.upsert(&reply).unwrap();
        idx.commit(6).unwrap();
        let mut r = request(&["train"]);
        r.thread_only = true;
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CB".into(), 2)]);
        // No words: every reply the caller can read.
        let mut r = request(&[]);
        r.thread_only = true;
        assert_eq!(idx.search(&r).unwrap().total, 1);
        // Everyone's but UA's.
        let mut r = request(&[]);
        r.not_users = vec![UserId::from("UA")];
        assert_eq!(
            seqs(&idx.search(&r).unwrap()),
            vec![("CB".into(), 2), ("CA".into(), 2)]
        );
        // Only the messages named (pinned ones), and none when none is.
        let mut r = request(&["train"]);
        r.only = Some(vec![(ChannelId::from("CB"), 1), (ChannelId::from("CA"), 9)]);
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CB".into(), 1)]);
        r.only = Some(Vec::new());
        assert_eq!(idx.search(&r).unwrap().total, 0);
    }

    #[test]
    fn pages_sort_and_highlight() {
        let idx = index();
        let mut r = request(&["train"]);
        r.limit = 1;
        let first = idx.search(&r).unwrap();
        assert_eq!(first.total, 2);
        assert_eq!(seqs(&first), vec![("CB".into(), 1)]);
        r.offset = 1;
        assert_eq!(seqs(&idx.search(&r).unwrap()), vec![("CA".into(), 1)]);
        r.offset = 0;
        r.limit = 10;
        r.descending = false;
        assert_eq!(
            seqs(&idx.search(&r).unwrap()),
            vec![("CA".into(), 1), ("CB".into(), 1)]
        );
        r.sort = SortBy::Score;
        r.highlight = true;
        let hits = idx.search(&r).unwrap().hits;
        assert!(
            hits.iter()
                .all(|h| h.text.contains("\u{e000}train\u{e001}")),
            "{hits:?}"
        );
    }

    #[test]
    fn upserts_replace_and_commits_record_progress() {
        let idx = index();
        assert_eq!(idx.last_change_id(), 5);
        idx.upsert(&msg("CA", 1, "UA", "edited text", 100)).unwrap();
        idx.commit(6).unwrap();
        assert_eq!(idx.last_change_id(), 6);
        assert_eq!(idx.search(&request(&["noon"])).unwrap().total, 0);
        assert_eq!(idx.search(&request(&["edited"])).unwrap().total, 1);
    }

    /// One round of changes: each message's last change wins, earlier versions and deleted
    /// messages go, and a message new in the round is found once.
    #[test]
    fn a_round_keeps_each_messages_last_change() {
        let idx = index();
        let edited = msg("CA", 1, "UA", "rerouted train", 100);
        let gone = msg("CB", 1, "UA", "train delayed, flaky test again", 300);
        let posted = msg("CB", 2, "UB", "a new train", 600);
        let posted_then_edited = msg("CB", 3, "UB", "brand new train", 700);
        let edit_of_it = msg("CB", 3, "UB", "quietly edited", 700);
        let posted_then_deleted = msg("CA", 3, "UA", "train typo", 800);
        idx.apply([
            (&edited, false),
            (&gone, true),
            (&posted, false),
            (&posted_then_edited, false),
            (&posted_then_deleted, false),
            (&edit_of_it, false),
            (&posted_then_deleted, true),
        ])
        .unwrap();
        idx.commit(6).unwrap();
        let found = |w: &str| seqs(&idx.search(&request(&[w])).unwrap());
        assert_eq!(
            found("train"),
            vec![("CB".to_string(), 2), ("CA".to_string(), 1)]
        );
        assert_eq!(found("noon"), vec![]);
        assert_eq!(found("delayed"), vec![]);
        assert_eq!(found("brand"), vec![]);
        assert_eq!(found("quietly"), vec![("CB".to_string(), 3)]);
        assert_eq!(found("typo"), vec![]);
        // Applying the same round again leaves one copy of each.
        idx.apply([(&posted, false), (&edit_of_it, false)]).unwrap();
        idx.commit(7).unwrap();
        assert_eq!(idx.search(&request(&["train"])).unwrap().total, 2);
        assert_eq!(idx.search(&request(&["quietly"])).unwrap().total, 1);
    }

    /// An index left by a release with another schema is made again, empty and at the start
    /// of the feeds, and then takes messages as any index does.
    #[test]
    fn an_index_of_another_schema_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all");
        {
            let mut b = Schema::builder();
            let id = b.add_text_field("id", STRING);
            std::fs::create_dir_all(&path).unwrap();
            let old = Index::create_in_dir(&path, b.build()).unwrap();
            let mut writer: IndexWriter = old.writer_with_num_threads(1, 15_000_000).unwrap();
            writer.add_document(doc!(id => "CA:1")).unwrap();
            let mut prepared = writer.prepare_commit().unwrap();
            prepared.set_payload(&format_positions(&[41]));
            prepared.commit().unwrap();
        }
        let idx = SearchIndex::open(&path).unwrap();
        assert_eq!(idx.positions(1), vec![0]);
        assert_eq!(idx.num_docs(), 0);
        idx.upsert(&msg("CA", 1, "UA", "the release train", 100))
            .unwrap();
        idx.commit(1).unwrap();
        drop(idx);
        let idx = SearchIndex::open(&path).unwrap();
        assert_eq!(idx.last_change_id(), 1);
        assert_eq!(idx.search(&request(&["train"])).unwrap().total, 1);
    }

    #[test]
    fn empty_permission_sets_and_punctuation_find_nothing() {
        let idx = index();
        let mut r = request(&["release"]);
        r.channels.clear();
        assert_eq!(idx.search(&r).unwrap().total, 0);
        assert_eq!(idx.search(&request(&["!!!"])).unwrap().total, 0);
    }
}
