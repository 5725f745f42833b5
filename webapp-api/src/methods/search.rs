//! `search.messages`, `search.files` and `search.all`: Slack's query syntax over the caller's
//! readable channels.
//!
//! `search.messages` pages by `page` (up to 100 pages) or, as Slack's does, by `cursor`
//! (`*` for the first page, then each answer's `response_metadata.next_cursor`). Sorted by
//! timestamp, a cursor resumes the search where the last page ended ([`Resume`]), so a
//! consumer can read every match of a workspace, each once, at the first page's cost per
//! page; sorted by score, it carries the offset, as far as pages reach.
//!
//! `search.files` finds the files shared in those channels: the messages that shared files
//! whose text, or whose files' names or titles, match, each message's files as they are now
//! (a deleted file left out), paged by those messages. A file never shared is not found
//! (only its uploader could see it).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use shared::ids::{ChannelId, Ts, UserId};
use shared::search::query::{parse, QueryError};
use shared::search::{
    search_all, MatchKey, Resume, SearchIndex, SearchRequest, SearchResults, SortBy,
};
use shared::store::Channel;

use super::members;
use crate::api::{
    decode_cursor, encode_cursor, object, ApiError, ApiResult, AppState, Caller, Params,
    RequestInfo,
};

const DEFAULT_COUNT: u32 = 20;
const MAX_COUNT: u32 = 100;
const MAX_PAGE: u32 = 100;
/// How deep a search sorted by score reaches, by pages or by cursor.
const MAX_SCORE_REACH: u32 = MAX_PAGE * MAX_COUNT;
/// Most matches of one microsecond a cursor lists as given (a page's worth, and more from
/// a client is not a cursor this node made).
const MAX_CURSOR_SEEN: usize = 1_000;
/// What a match carries of its message as stored, beyond what the index gives: what a
/// consumer needs to show it, or to tell a bot's from a person's.
const MATCH_KEYS_FROM_MESSAGE: &[&str] = &[
    "blocks",
    "attachments",
    "files",
    "thread_ts",
    "subtype",
    "bot_id",
    "bot_profile",
];
/// The kind of a search cursor ([`encode_cursor`]).
const CURSOR_KIND: &str = "search";
/// Channels whose pins (`has:pin`) or reacted messages (`has::name:`) are read at once.
const PIN_LOOKUPS_AT_ONCE: usize = 16;
/// Most messages per channel and reaction that `has::name:` finds (the newest).
const MAX_REACTED_PER_CHANNEL: usize = 10_000;

/// Where a `search.messages` page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    /// Sorted by timestamp: resume there, `before` matches having been given.
    Resume { before: u32, resume: Resume },
    /// Sorted by score: the offset.
    Offset(u32),
}

fn key_text((channel, seq): &MatchKey) -> String {
    format!("{}/{seq}", channel.0)
}

fn parse_key(raw: &str) -> Option<MatchKey> {
    let (channel, seq) = raw.split_once('/')?;
    Some((ChannelId::parse(channel)?, seq.parse().ok()?))
}

impl Cursor {
    /// The cursor's text: `t;<before>;<at>;<after>;<seen,...>` (empty fields for none), or
    /// `s;<offset>`.
    fn encode(&self) -> String {
        let value = match self {
            Cursor::Resume { before, resume } => format!(
                "t;{before};{};{};{}",
                resume.at.map(|t| t.0.to_string()).unwrap_or_default(),
                resume.after.as_ref().map(key_text).unwrap_or_default(),
                resume
                    .seen
                    .iter()
                    .map(key_text)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Cursor::Offset(offset) => format!("s;{offset}"),
        };
        encode_cursor(CURSOR_KIND, &value)
    }

    /// The call's `cursor` for a search sorted by `sort`: `None` without one, the first page
    /// for `*`; `invalid_cursor` for one this API did not make, or made for the other sort.
    fn from_params(params: &Params, sort: SortBy) -> ApiResult<Option<Cursor>> {
        match params.non_empty("cursor").map(str::trim) {
            None => return Ok(None),
            Some("*") => {
                return Ok(Some(match sort {
                    SortBy::Timestamp => Cursor::Resume {
                        before: 0,
                        resume: Resume::default(),
                    },
                    SortBy::Score => Cursor::Offset(0),
                }))
            }
            Some(_) => {}
        }
        let value = decode_cursor(params, CURSOR_KIND)?.ok_or(ApiError::InvalidCursor)?;
        let fields: Vec<&str> = value.split(';').collect();
        let cursor = match (sort, fields.as_slice()) {
            (SortBy::Timestamp, ["t", before, at, after, seen]) => {
                let before = before.parse().map_err(|_| ApiError::InvalidCursor)?;
                let at = match *at {
                    "" => None,
                    t => Some(Ts(t.parse().map_err(|_| ApiError::InvalidCursor)?)),
                };
                let after = match *after {
                    "" => None,
                    k => Some(parse_key(k).ok_or(ApiError::InvalidCursor)?),
                };
                let seen = seen
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(parse_key)
                    .collect::<Option<Vec<_>>>()
                    .ok_or(ApiError::InvalidCursor)?;
                if seen.len() > MAX_CURSOR_SEEN
                    || (at.is_none() && (after.is_some() || !seen.is_empty()))
                {
                    return Err(ApiError::InvalidCursor);
                }
                Cursor::Resume {
                    before,
                    resume: Resume { at, after, seen },
                }
            }
            (SortBy::Score, ["s", offset]) => match offset.parse() {
                Ok(offset) if offset < MAX_SCORE_REACH => Cursor::Offset(offset),
                _ => return Err(ApiError::InvalidCursor),
            },
            _ => return Err(ApiError::InvalidCursor),
        };
        Ok(Some(cursor))
    }
}

fn number(params: &Params, key: &str, default: u32, max: u32) -> ApiResult<u32> {
    match params.non_empty(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n.min(max)),
            _ => Err(ApiError::InvalidArguments(format!(
                "{key} must be a positive integer"
            ))),
        },
    }
}

/// Every channel the caller may read: the workspace's public channels and its private ones.
async fn readable_channels(
    state: &AppState,
    caller: &Caller,
) -> ApiResult<HashMap<ChannelId, Channel>> {
    let mut out = HashMap::new();
    let mut after: Option<ChannelId> = None;
    loop {
        let page = state
            .store
            .channels(&caller.claims.workspace, after.as_ref(), 1000)
            .await?;
        let done = page.len() < 1000;
        after = page.last().map(|c| c.id.clone());
        for c in page.into_iter().filter(|c| !c.is_private) {
            out.insert(c.id.clone(), c);
        }
        if done {
            break;
        }
    }
    for c in state.store.user_channels(&caller.user.id).await? {
        if c.workspace == caller.claims.workspace {
            out.insert(c.id.clone(), c);
        }
    }
    Ok(out)
}

/// The user a query names (`@name`, an id, or `me`, the caller), in the caller's workspace;
/// one that does not exist there is an id that matches nothing.
async fn user_ref(state: &AppState, caller: &Caller, r: &str) -> ApiResult<UserId> {
    if r == "me" {
        return Ok(caller.user.id.clone());
    }
    let found = match UserId::parse(r) {
        Some(id) => state.store.user(&id).await?,
        None => {
            state
                .store
                .user_by_name(&caller.claims.workspace, r)
                .await?
        }
    };
    Ok(
        match found.filter(|u| u.workspace == caller.claims.workspace) {
            Some(u) => u.id,
            None => UserId("U-NOBODY".into()),
        },
    )
}

/// A search run: what was asked, the page of hits, and the channels the caller can read.
struct Found {
    raw: String,
    count: u32,
    /// Matches before this page.
    before: u32,
    /// With a `cursor`: the next page's (empty after the last page).
    next_cursor: Option<String>,
    results: SearchResults,
    readable: HashMap<ChannelId, Channel>,
}

/// Parses the call's `query`, `count`, `page` (or `cursor`, with `cursors`), `sort`,
/// `sort_dir` and `highlight`, resolves the query against the store and runs it: for
/// `search.files` (`files_only`) over the messages that shared files.
async fn run(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    files_only: bool,
    cursors: bool,
) -> ApiResult<Found> {
    let Some(search) = state.search.as_ref() else {
        return Err(ApiError::ServiceUnavailable(
            "search is not enabled on this node".into(),
        ));
    };
    let raw = params
        .non_empty("query")
        .ok_or_else(|| ApiError::InvalidArguments("query is required".into()))?;
    let parsed = parse(raw, Ts::now()).map_err(|e| match e {
        QueryError::Empty => ApiError::InvalidArguments("query has no search terms".into()),
        other => ApiError::InvalidArguments(other.to_string()),
    })?;
    let count = number(params, "count", DEFAULT_COUNT, MAX_COUNT)?;
    let page = number(params, "page", 1, MAX_PAGE)?;
    let sort = match params.non_empty("sort").unwrap_or("score") {
        "score" => SortBy::Score,
        "timestamp" => SortBy::Timestamp,
        _ => {
            return Err(ApiError::InvalidArguments(
                "sort must be score or timestamp".into(),
            ))
        }
    };
    let descending = match params.non_empty("sort_dir").unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        _ => {
            return Err(ApiError::InvalidArguments(
                "sort_dir must be asc or desc".into(),
            ))
        }
    };
    let highlight = params.flag("highlight", false);
    let cursor = if cursors {
        Cursor::from_params(params, sort)?
    } else {
        None
    };
    let (before, resume) = match &cursor {
        None => ((page - 1) * count, None),
        Some(Cursor::Offset(offset)) => (*offset, None),
        Some(Cursor::Resume { before, resume }) => (*before, Some(resume.clone())),
    };

    let readable = readable_channels(state, caller).await?;
    let mut users: Vec<UserId> = Vec::new();
    for r in &parsed.from_users {
        users.push(user_ref(state, caller, r).await?);
    }
    let mut in_users: Vec<UserId> = Vec::new();
    for r in &parsed.in_users {
        in_users.push(user_ref(state, caller, r).await?);
    }
    let mut to_users: Vec<UserId> = Vec::new();
    for r in &parsed.to_users {
        to_users.push(user_ref(state, caller, r).await?);
    }
    let channels: Vec<ChannelId> = readable
        .values()
        .filter(|c| {
            // `in:` names channels, or 1:1 direct messages by the other person: any of them.
            let named = parsed
                .in_channels
                .iter()
                .any(|r| r == &c.id.0 || r.eq_ignore_ascii_case(&c.name))
                || members::im_user(c, &caller.user.id).is_some_and(|u| in_users.contains(&u));
            let in_ok = (parsed.in_channels.is_empty() && in_users.is_empty()) || named;
            // `to:` keeps direct conversations of one of its people.
            let to_ok = to_users.is_empty()
                || members::dm_members(c).is_some_and(|m| m.iter().any(|u| to_users.contains(u)));
            in_ok && to_ok
        })
        .map(|c| c.id.clone())
        .collect();
    // `has:pin`, `has::name:` and `hasmy::name:` read from the store which messages of the
    // channels searched qualify (pins and reactions are not in the index), a few channels at
    // a time; a message must qualify for each.
    let mut only: Option<HashSet<(ChannelId, u64)>> = None;
    if parsed.has_pin {
        let mut pinned = HashSet::new();
        for some in channels.chunks(PIN_LOOKUPS_AT_ONCE) {
            let lists = futures_util::future::try_join_all(some.iter().map(|c| {
                state
                    .store
                    .pins(&caller.claims.workspace, c, super::chat::MAX_PINS_LISTED)
            }))
            .await?;
            pinned.extend(
                lists
                    .into_iter()
                    .flatten()
                    .map(|v| (v.message.channel, v.message.seq)),
            );
        }
        only = Some(pinned);
    }
    let by_anyone = parsed.has_reactions.iter().map(|r| (r, None));
    let by_me = parsed
        .my_reactions
        .iter()
        .map(|r| (r, Some(&caller.user.id)));
    for (reaction, user) in by_anyone.chain(by_me) {
        let mut reacted = HashSet::new();
        for some in channels.chunks(PIN_LOOKUPS_AT_ONCE) {
            let lists = futures_util::future::try_join_all(some.iter().map(|c| {
                state.store.reacted(
                    &caller.claims.workspace,
                    c,
                    reaction,
                    user,
                    MAX_REACTED_PER_CHANNEL,
                )
            }))
            .await?;
            for (c, seqs) in some.iter().zip(lists) {
                reacted.extend(seqs.into_iter().map(|seq| (c.clone(), seq)));
            }
        }
        only = Some(match only {
            Some(before) => before.intersection(&reacted).cloned().collect(),
            None => reacted,
        });
    }
    let only: Option<Vec<(ChannelId, u64)>> = only.map(|set| set.into_iter().collect());
    let request = SearchRequest {
        workspace: caller.claims.workspace.clone(),
        words: parsed.words,
        phrases: parsed.phrases,
        excluded: parsed.excluded,
        channels,
        users,
        after: parsed.after,
        before: parsed.before,
        has_link: parsed.has_link,
        thread_only: parsed.is_thread,
        files_only,
        // Sent to them: not by them.
        not_users: to_users,
        only,
        sort,
        descending,
        offset: before as usize,
        limit: count as usize,
        highlight,
        resume,
    };
    let indexes = search.indexes_for(&state.store, &caller.claims.workspace, &request.channels);
    let results = tokio::task::spawn_blocking(move || {
        let indexes: Vec<&SearchIndex> = indexes.iter().map(|i| &**i).collect();
        search_all(&indexes, &request)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let given = before.saturating_add(results.hits.len() as u32);
    let next_cursor = cursor.map(|cursor| {
        let next = match cursor {
            Cursor::Resume { .. } => results.next.clone().map(|resume| Cursor::Resume {
                before: given,
                resume,
            }),
            Cursor::Offset(_) => (given < MAX_SCORE_REACH.min(results.total as u32)
                && !results.hits.is_empty())
            .then_some(Cursor::Offset(given)),
        };
        next.map(|c| c.encode()).unwrap_or_default()
    });
    Ok(Found {
        raw: raw.to_string(),
        count,
        before,
        next_cursor,
        results,
        readable,
    })
}

/// Slack's `pagination` and `paging` of a page of `shown` matches.
fn pages(found: &Found, shown: usize) -> (Value, Value) {
    let (count, before) = (found.count, found.before);
    let page = before / count + 1;
    let total = found.results.total as u32;
    let pages = total.div_ceil(count).max(1);
    // A cursor's `before` is the client's to send: no sum of it may overflow.
    let first = if total == 0 {
        0
    } else {
        before.saturating_add(1)
    };
    let last = before.saturating_add(shown as u32).min(total);
    (
        json!({ "total_count": total, "page": page, "per_page": count, "page_count": pages, "first": first, "last": last }),
        json!({ "count": count, "total": total, "page": page, "pages": pages }),
    )
}

/// `search.messages`.
pub async fn messages(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    info: &RequestInfo,
) -> ApiResult {
    let found = run(state, caller, params, false, true).await?;
    let messages = message_matches(state, caller, &found, info).await?;
    let mut out = object(json!({ "query": found.raw, "messages": messages }));
    if let Some(next) = found.next_cursor {
        out.insert("response_metadata".into(), json!({ "next_cursor": next }));
    }
    Ok(out)
}

/// `search.files`: the files shared with the messages found (see the module's note).
pub async fn files(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    info: &RequestInfo,
) -> ApiResult {
    let found = run(state, caller, params, true, false).await?;
    let files = file_matches(state, &found, info).await?;
    Ok(object(json!({ "query": found.raw, "files": files })))
}

/// `search.all`: `search.messages` and `search.files` of one query, in one answer.
pub async fn all(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    info: &RequestInfo,
) -> ApiResult {
    let (in_messages, in_files) = tokio::try_join!(
        run(state, caller, params, false, false),
        run(state, caller, params, true, false)
    )?;
    let (messages, files) = tokio::try_join!(
        message_matches(state, caller, &in_messages, info),
        file_matches(state, &in_files, info)
    )?;
    Ok(object(json!({
        "query": in_messages.raw,
        "messages": messages,
        "files": files,
    })))
}

/// The files of the found messages, each once, as they are now.
async fn file_matches(state: &AppState, found: &Found, info: &RequestInfo) -> ApiResult<Value> {
    let base = info.base_url(state);
    let views = futures_util::future::try_join_all(found.results.hits.iter().map(|hit| async {
        let Some(channel) = found.readable.get(&hit.channel) else {
            return Ok(None);
        };
        Ok::<_, ApiError>(
            state
                .store
                .message_view(&channel.workspace, &hit.channel, hit.ts)
                .await?
                .map(|v| (channel.workspace.clone(), v)),
        )
    }))
    .await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut matches = Vec::new();
    for (workspace, view) in views.into_iter().flatten() {
        let shared: Vec<Value> = view
            .message
            .rich
            .as_ref()
            .and_then(|r| r.files.as_deref())
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or_default();
        for f in shared {
            let Some(id) = f["id"].as_str() else { continue };
            if !seen.insert(id.to_string()) {
                continue;
            }
            if let Some(record) = state.store.file(&workspace, id).await? {
                matches.push(super::files::file_json(&record, &base));
            }
        }
    }
    let (pagination, paging) = pages(found, found.results.hits.len());
    Ok(json!({
        "total": found.results.total,
        "matches": matches,
        "pagination": pagination,
        "paging": paging,
    }))
}

/// Slack's `messages` of a search answer: the page of matches, with pages.
async fn message_matches(
    state: &AppState,
    caller: &Caller,
    found: &Found,
    info: &RequestInfo,
) -> ApiResult<Value> {
    let readable = &found.readable;
    let results = &found.results;
    let mut names: HashMap<UserId, String> = HashMap::new();
    let base = info.base_url(state);
    // A reply's link names its thread, as `chat.getPermalink`'s does, and a match carries its
    // message's blocks, attachments and files, as Slack's do (the index keeps none of them, so
    // each hit's message is read: one page of point reads, side by side).
    let stored = futures_util::future::try_join_all(results.hits.iter().map(|hit| async {
        let Some(channel) = readable.get(&hit.channel) else {
            return Ok(None);
        };
        let view = state
            .store
            .message_view(&channel.workspace, &hit.channel, hit.ts)
            .await?;
        Ok::<_, ApiError>(view.filter(|v| !v.deleted).map(|v| v.message))
    }))
    .await?;
    let mut matches = Vec::with_capacity(results.hits.len());
    for (hit, message) in results.hits.iter().zip(stored) {
        let thread_ts = message.as_ref().and_then(|m| m.thread_ts);
        let username = match names.get(&hit.user) {
            Some(n) => n.clone(),
            None => {
                let n = state
                    .store
                    .user(&hit.user)
                    .await?
                    .map(|u| u.name)
                    .unwrap_or_default();
                names.insert(hit.user.clone(), n.clone());
                n
            }
        };
        let channel = readable.get(&hit.channel);
        matches.push(json!({
            "type": "message",
            "iid": format!("{}-{}", hit.channel.0, hit.seq),
            "team": caller.claims.workspace,
            "channel": {
                "id": hit.channel,
                "name": channel.map(|c| c.name.clone()).unwrap_or_default(),
                "is_private": channel.is_some_and(|c| c.is_private),
            },
            "user": hit.user,
            "username": username,
            "ts": hit.ts.to_slack(),
            "text": hit.text,
            "seq": hit.seq,
            "score": hit.score,
            "permalink": super::chat::permalink(&base, &hit.channel, hit.ts, thread_ts),
        }));
        if let (Some(message), Some(out)) = (&message, matches.last_mut()) {
            let full = super::message_json(message);
            for key in MATCH_KEYS_FROM_MESSAGE {
                if let Some(v) = full.get(*key) {
                    out[*key] = v.clone();
                }
            }
        }
    }
    let (pagination, paging) = pages(found, matches.len());
    Ok(json!({
        "total": results.total,
        "matches": matches,
        "pagination": pagination,
        "paging": paging,
    }))
}
