//! Files, as Slack's current upload flow has them (what `slack_sdk`'s `files_upload_v2` and
//! Bolt call):
//! 1. `files.getUploadURLExternal` (`filename`, `length`) makes a pending file and answers an
//!    `upload_url` that needs no token: a signed ticket naming the file, valid for
//!    [`TICKET_SECS`].
//! 2. `POST <upload_url>` with the bytes as the body (or as a `multipart/form-data` file
//!    field, as `curl -F file=@x.png` sends them): stored durably before it answers
//!    `OK - <size>`.
//! 3. `files.completeUploadExternal` (`files`, `channel_id`/`channels`, `initial_comment`,
//!    `thread_ts`) titles the files and shares them: a message in the channel carrying the
//!    file objects (`files`, `upload: true`), posted like any other, so every session there
//!    sees it.
//!
//! `files.info`, `files.list` and `files.delete` read and remove them; `url_private`
//! (`GET /files/<id>/<name>`, with the token in `Authorization: Bearer`, as Slack's) serves
//! the bytes. A file is visible to its uploader and to whoever can read a conversation it
//! was shared in. Bytes are read whole into memory, at most `webapp.max_file_bytes`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use shared::ids::{ChannelId, FileId, Ts, WorkspaceId};
use shared::protocol::{MessageKind, NewMessage, RichContent, UserEvent};
use shared::store::FileRecord;

use super::{visible_channel, VisibleChannel};
use crate::api::{object, read_body, ApiError, ApiResult, AppState, Caller, Params, RequestInfo};

/// What upload tickets are signed for (see `TokenSigner::sign_payload`).
const TICKET_PURPOSE: &str = "upload";
/// How long an upload URL takes bytes.
pub const TICKET_SECS: u64 = 600;
/// Where upload URLs point: this, then the ticket.
pub const UPLOAD_PATH_PREFIX: &str = "/upload/v1/";
/// Longest file name, in characters.
const MAX_FILENAME_CHARS: usize = 255;
/// Longest `alt_txt`, in characters.
const MAX_ALT_TXT_CHARS: usize = 1000;
/// Most files one `files.completeUploadExternal` finishes.
const MAX_FILES_PER_COMPLETION: usize = 10;
/// `files.list`'s page: default and most.
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 1000;

fn now_secs() -> u64 {
    Ts::now().0 / 1_000_000
}

/// A file's MIME type and Slack `filetype`, from its name's extension.
fn kind_of(name: &str) -> (&'static str, &'static str) {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => ("image/png", "png"),
        "jpg" | "jpeg" => ("image/jpeg", "jpg"),
        "gif" => ("image/gif", "gif"),
        "webp" => ("image/webp", "webp"),
        "svg" => ("image/svg+xml", "svg"),
        "pdf" => ("application/pdf", "pdf"),
        "txt" | "log" => ("text/plain", "text"),
        "md" => ("text/markdown", "markdown"),
        "csv" => ("text/csv", "csv"),
        "json" => ("application/json", "json"),
        "html" | "htm" => ("text/html", "html"),
        "zip" => ("application/zip", "zip"),
        "gz" | "tgz" => ("application/gzip", "gzip"),
        "mp4" => ("video/mp4", "mp4"),
        "mp3" => ("audio/mpeg", "mp3"),
        _ => ("application/octet-stream", "binary"),
    }
}

/// Slack's file object.
pub(crate) fn file_json(f: &FileRecord, base: &str) -> Value {
    let (_, filetype) = kind_of(&f.name);
    let url = format!("{base}files/{}/{}", f.id, url_segment(&f.name));
    let mut v = json!({
        "id": f.id,
        "created": f.created.0 / 1_000_000,
        "timestamp": f.created.0 / 1_000_000,
        "name": f.name,
        "title": f.title,
        "mimetype": f.mimetype,
        "filetype": filetype,
        "pretty_type": filetype.to_uppercase(),
        "user": f.user,
        "user_team": f.workspace,
        "editable": false,
        "size": f.size,
        "mode": "hosted",
        "is_external": false,
        "external_type": "",
        "is_public": false,
        "public_url_shared": false,
        "display_as_bot": false,
        "username": "",
        "url_private": url,
        "url_private_download": format!("{url}?download=1"),
        "permalink": format!("{base}files/{}/{}", f.user, f.id),
        "channels": f.channels,
        "groups": [],
        "ims": [],
        "comments_count": 0,
    });
    if !f.alt_txt.is_empty() {
        v["alt_txt"] = f.alt_txt.as_str().into();
    }
    v
}

/// A file name as one URL path segment.
fn url_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The upload ticket of `file`: `base64url(JSON {w, f, u, l, e}) "." base64url(signature)`.
fn ticket(state: &AppState, file: &FileRecord) -> String {
    let payload = URL_SAFE_NO_PAD.encode(
        json!({
            "w": file.workspace,
            "f": file.id,
            "u": file.user,
            "l": file.size,
            "e": now_secs() + TICKET_SECS,
        })
        .to_string(),
    );
    let sig = state
        .signer
        .sign_payload(TICKET_PURPOSE, payload.as_bytes());
    format!("{payload}.{sig}")
}

/// What a valid, unexpired ticket names: workspace, file and declared length.
fn verify_ticket(state: &AppState, ticket: &str) -> Option<(WorkspaceId, String, u64)> {
    if ticket.len() > 2048 {
        return None;
    }
    let (payload, sig) = ticket.split_once('.')?;
    state
        .signer
        .verify_payload(TICKET_PURPOSE, payload.as_bytes(), sig)
        .ok()?;
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    if v["e"].as_u64()? < now_secs() {
        return None;
    }
    Some((
        WorkspaceId::parse(v["w"].as_str()?)?,
        v["f"].as_str()?.to_string(),
        v["l"].as_u64()?,
    ))
}

/// `files.getUploadURLExternal`: a pending file and the URL that takes its bytes.
pub(super) async fn get_upload_url(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let name = params
        .non_empty("filename")
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && n.chars().count() <= MAX_FILENAME_CHARS
                && !n.chars().any(|c| c.is_control() || c == '/' || c == '\\')
        })
        .ok_or_else(|| {
            ApiError::InvalidArguments(
                "filename must be 1 to 255 characters, without slashes or control characters"
                    .into(),
            )
        })?;
    let max = state.max_file_bytes as u64;
    let length = params
        .non_empty("length")
        .and_then(|l| l.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::InvalidArguments("length must be the file's size in bytes".into())
        })?;
    if length > max {
        return Err(ApiError::FileTooLarge { max });
    }
    let alt_txt = params.get("alt_txt").unwrap_or_default().trim();
    if alt_txt.chars().count() > MAX_ALT_TXT_CHARS {
        return Err(ApiError::InvalidArguments(
            "alt_txt is longer than 1000 characters".into(),
        ));
    }
    let file = FileRecord {
        id: FileId::generate().0,
        workspace: caller.claims.workspace.clone(),
        user: caller.user.id.clone(),
        name: name.to_string(),
        title: name.to_string(),
        mimetype: kind_of(name).0.to_string(),
        size: length,
        created: Ts::now(),
        uploaded: false,
        complete: false,
        channels: Vec::new(),
        alt_txt: alt_txt.to_string(),
        shares: Vec::new(),
    };
    state.store.create_file(&file).await?;
    crate::metrics::FILES
        .with_label_values(&["announced"])
        .inc();
    let base = request.base_url(state);
    let upload_url = format!(
        "{}{UPLOAD_PATH_PREFIX}{}",
        base.trim_end_matches('/'),
        ticket(state, &file)
    );
    Ok(object(
        json!({ "upload_url": upload_url, "file_id": file.id }),
    ))
}

/// `POST /upload/v1/<ticket>`: the bytes of the file the ticket names, as the body or as a
/// multipart file field. Answers in plain text, as Slack's upload URLs do.
pub(crate) async fn upload(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ticket = uri
        .path()
        .strip_prefix(UPLOAD_PATH_PREFIX)
        .unwrap_or_default();
    let (status, text) = match store_upload(&state, ticket, &headers, body).await {
        Ok(size) => {
            crate::metrics::FILES.with_label_values(&["uploaded"]).inc();
            (StatusCode::OK, format!("OK - {size}"))
        }
        Err((status, error)) => {
            crate::metrics::FILES
                .with_label_values(&[&format!("refused_{error}")])
                .inc();
            (status, error.to_string())
        }
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn store_upload(
    state: &AppState,
    ticket: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<u64, (StatusCode, &'static str)> {
    let Some((workspace, id, length)) = verify_ticket(state, ticket) else {
        return Err((StatusCode::FORBIDDEN, "invalid_or_expired_upload_url"));
    };
    let unavailable = |_| (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    let file = match state
        .store
        .file(&workspace, &id)
        .await
        .map_err(unavailable)?
    {
        Some(f) if !f.complete => f,
        _ => return Err((StatusCode::NOT_FOUND, "file_not_found")),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).ok();
    // A multipart body carries its framing besides the bytes.
    let max = length as usize + if boundary.is_some() { 64 * 1024 } else { 0 };
    let raw = read_body(headers, body, max)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "file_larger_than_its_length"))?;
    let bytes = match boundary {
        Some(boundary) => file_part(raw, boundary)
            .await
            .ok_or((StatusCode::BAD_REQUEST, "no_file_in_multipart_body"))?,
        None => raw.to_vec(),
    };
    if bytes.len() as u64 > length {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "file_larger_than_its_length"));
    }
    let size = bytes.len() as u64;
    state
        .store
        .put_file_content(&workspace, &id, bytes)
        .await
        .map_err(unavailable)?;
    let mut file = file;
    file.uploaded = true;
    file.size = size;
    state.store.update_file(&file).await.map_err(unavailable)?;
    Ok(size)
}

/// The first file field of a multipart body (one with a file name, else the first field).
async fn file_part(raw: bytes::Bytes, boundary: String) -> Option<Vec<u8>> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(raw) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut first = None;
    while let Ok(Some(field)) = parts.next_field().await {
        let named = field.file_name().is_some();
        let bytes = field.bytes().await.ok()?;
        if named {
            return Some(bytes.to_vec());
        }
        first.get_or_insert(bytes.to_vec());
    }
    first
}

/// The file `id` of the caller's workspace, if the caller may see it: its uploader, or a
/// reader of a conversation it was shared in.
async fn visible_file(
    state: &AppState,
    caller: &Caller,
    id: Option<&str>,
) -> ApiResult<FileRecord> {
    let id = id.map(str::trim).filter(|id| FileId::is_well_formed(id));
    let Some(id) = id else {
        return Err(ApiError::FileNotFound);
    };
    let file = state
        .store
        .file(&caller.claims.workspace, id)
        .await?
        .ok_or(ApiError::FileNotFound)?;
    if file.user == caller.user.id || can_read_any(state, caller, &file.channels).await? {
        Ok(file)
    } else {
        Err(ApiError::FileNotFound)
    }
}

/// Whether the caller can read one of `channels`: a public one of its workspace, or one it
/// is in.
async fn can_read_any(
    state: &AppState,
    caller: &Caller,
    channels: &[ChannelId],
) -> ApiResult<bool> {
    for c in channels {
        let read = state
            .store
            .user_channel_membership(&caller.user.id, c)
            .await?;
        if read.channel.is_some_and(|ch| {
            ch.workspace == caller.claims.workspace && (!ch.is_private || read.is_member)
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `files.completeUploadExternal`: titles the uploaded files and, with `channel_id` (or
/// `channels`), shares them there in one message.
pub(super) async fn complete_upload(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let listed: Vec<Value> = params
        .non_empty("files")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .and_then(|v: Value| v.as_array().cloned())
        .filter(|a| !a.is_empty() && a.len() <= MAX_FILES_PER_COMPLETION)
        .ok_or_else(|| {
            ApiError::InvalidArguments(
                "files must be a JSON array of 1 to 10 objects with an id (and a title)".into(),
            )
        })?;
    let mut files = Vec::with_capacity(listed.len());
    for item in &listed {
        let mut file = state
            .store
            .file(
                &caller.claims.workspace,
                item["id"].as_str().unwrap_or_default(),
            )
            .await?
            .filter(|f| f.user == caller.user.id)
            .ok_or(ApiError::FileNotFound)?;
        if !file.uploaded {
            return Err(ApiError::InvalidArguments(format!(
                "file {} has no bytes yet: POST them to its upload_url first",
                file.id
            )));
        }
        if let Some(title) = item["title"]
            .as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            file.title = title.chars().take(MAX_FILENAME_CHARS).collect();
        }
        file.complete = true;
        files.push(file);
    }
    let channel = params.non_empty("channel_id").or_else(|| {
        params
            .non_empty("channels")
            .and_then(|c| c.split(',').map(str::trim).find(|c| !c.is_empty()))
    });
    let base = request.base_url(state);
    if let Some(channel) = channel {
        let visible =
            visible_channel(state, caller, &Params::from_pairs(&[("channel", channel)])).await?;
        for f in &mut files {
            if !f.channels.contains(&visible.channel.id) {
                f.channels.push(visible.channel.id.clone());
            }
        }
        let channel = visible.channel.id.clone();
        let ts = share(state, caller, visible, params, &files, &base).await?;
        for f in &mut files {
            if !f.shares.contains(&(channel.clone(), ts)) {
                f.shares.push((channel.clone(), ts));
            }
        }
    }
    for f in &files {
        state.store.update_file(f).await?;
    }
    crate::metrics::FILES
        .with_label_values(&["completed"])
        .inc_by(files.len() as u64);
    let objects: Vec<Value> = files.iter().map(|f| file_json(f, &base)).collect();
    Ok(object(json!({ "files": objects })))
}

/// Posts the message that shares `files` in the channel: `initial_comment` (or nothing) as
/// its text, the file objects in it. Its ts.
async fn share(
    state: &AppState,
    caller: &Caller,
    visible: VisibleChannel,
    params: &Params,
    files: &[FileRecord],
    base: &str,
) -> ApiResult<Ts> {
    let channel = visible.channel;
    super::chat::may_post(visible.is_member, &channel)?;
    let text = params
        .get("initial_comment")
        .unwrap_or_default()
        .to_string();
    if text.chars().count() > super::content::MAX_TEXT_CHARS {
        return Err(ApiError::MsgTooLong {
            max: super::content::MAX_TEXT_CHARS,
        });
    }
    let thread_ts = super::chat::thread_ts_param(params)?;
    super::chat::check_thread(state, &channel, thread_ts).await?;
    let objects: Vec<Value> = files.iter().map(|f| file_json(f, base)).collect();
    let rich = RichContent {
        files: Some(Value::Array(objects).to_string()),
        bot_name: caller.is_bot().then(|| caller.user.name.clone()),
        ..RichContent::default()
    };
    let new = NewMessage {
        workspace: caller.claims.workspace.clone(),
        channel: channel.id.clone(),
        user: caller.user.id.clone(),
        text,
        // The files' ids: sharing them again (a retried completion) posts once.
        client_msg_id: Some(format!(
            "files-{}",
            files
                .iter()
                .map(|f| f.id.as_str())
                .collect::<Vec<_>>()
                .join("-")
        )),
        thread_ts,
        kind: MessageKind::Posted,
        broadcast: false,
        bot: caller.is_bot(),
        rich: rich.boxed(),
    };
    let (posted, repeat) = state.admin.post(new).await?;
    if !repeat {
        super::members::tell_reopened(state, &channel, &posted).await;
        // Slack's `file_shared`, which apps that handle uploads (Bolt's
        // `app.event("file_shared")`) wait for: to the sessions that follow the channel.
        let events = files
            .iter()
            .map(|f| UserEvent::Notice {
                workspace: channel.workspace.clone(),
                members_of: Some(channel.id.clone()),
                event: json!({
                    "type": "file_shared",
                    "channel_id": channel.id,
                    "file_id": f.id,
                    "user_id": caller.user.id,
                    "file": { "id": f.id },
                    "event_ts": posted.ts.to_slack(),
                })
                .to_string(),
            })
            .collect();
        super::publish_all(state, events).await;
    }
    Ok(posted.ts)
}

/// `files.info`: one file the caller can see.
pub(super) async fn info(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let file = visible_file(state, caller, params.non_empty("file")).await?;
    Ok(object(json!({
        "file": file_json(&file, &request.base_url(state)),
        "comments": [],
        "response_metadata": super::response_metadata(None),
    })))
}

/// `files.list`: the workspace's files the caller can see, the newest first; `user`,
/// `channel`, `ts_from` and `ts_to` (Unix seconds) narrow it; paged by cursor.
pub(super) async fn list(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    request: &RequestInfo,
) -> ApiResult {
    let user = match params.non_empty("user") {
        Some(raw) => Some(super::user_in_workspace(state, caller, Some(raw)).await?.id),
        None => None,
    };
    let channel = match params.non_empty("channel") {
        Some(_) => Some(visible_channel(state, caller, params).await?.channel.id),
        None => None,
    };
    let secs = |key: &str| {
        params
            .non_empty(key)
            .map(|raw| {
                raw.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::InvalidArguments(format!("{key} must be a Unix time")))
            })
            .transpose()
    };
    let (from, to) = (secs("ts_from")?, secs("ts_to")?);
    let limit = match params.non_empty("count") {
        Some(_) if params.non_empty("limit").is_none() => {
            let count: u32 = params
                .non_empty("count")
                .and_then(|c| c.trim().parse().ok())
                .ok_or(ApiError::InvalidLimit)?;
            count.clamp(1, LIST_MAX)
        }
        _ => params.limit(LIST_DEFAULT, LIST_MAX)?,
    } as usize;
    let mut before = crate::api::decode_cursor(params, "files")?
        .map(|raw| {
            raw.parse::<u64>()
                .map(Ts)
                .map_err(|_| ApiError::InvalidCursor)
        })
        .transpose()?;
    if let Some(to) = to {
        let end = Ts(to.saturating_add(1).saturating_mul(1_000_000));
        before = Some(before.map_or(end, |b| b.min(end)));
    }
    let base = request.base_url(state);
    let mut page: Vec<Value> = Vec::new();
    let mut next = None;
    // Reads batches until the page is full or the files (in range) run out.
    'reading: for _ in 0..20 {
        let batch = state
            .store
            .files(&caller.claims.workspace, before, limit.max(100))
            .await?;
        let done = batch.len() < limit.max(100);
        for f in batch {
            before = Some(f.created);
            if from.is_some_and(|from| f.created.0 / 1_000_000 < from) {
                break 'reading;
            }
            let wanted = f.complete
                && user.as_ref().is_none_or(|u| &f.user == u)
                && channel.as_ref().is_none_or(|c| f.channels.contains(c));
            if !wanted
                || !(f.user == caller.user.id || can_read_any(state, caller, &f.channels).await?)
            {
                continue;
            }
            if page.len() == limit {
                next = Some(crate::api::encode_cursor(
                    "files",
                    &(f.created.0 + 1).to_string(),
                ));
                break 'reading;
            }
            page.push(file_json(&f, &base));
        }
        if done {
            break;
        }
    }
    Ok(object(json!({
        "files": page,
        "response_metadata": super::response_metadata(next),
    })))
}

/// `files.delete`: its uploader, or an admin of the workspace, removes a file and its bytes.
/// Messages that shared it keep their copy of its object; its URL then answers 404.
pub(super) async fn delete(state: &AppState, caller: &Caller, params: &Params) -> ApiResult {
    let file = visible_file(state, caller, params.non_empty("file")).await?;
    if file.user != caller.user.id && !caller.claims.admin {
        return Err(ApiError::CantDeleteFile);
    }
    state
        .store
        .delete_file(&caller.claims.workspace, &file.id)
        .await?;
    crate::metrics::FILES.with_label_values(&["deleted"]).inc();
    tombstone(state, &file).await;
    Ok(object(json!({})))
}

/// After a file is deleted: each message that shared it shows Slack's tombstone in its
/// place (`{"id": …, "mode": "tombstone"}`, through an edit of the message, so history and
/// connected clients see it), and the sessions of each channel hear `file_deleted`. The file
/// is gone whatever happens here: a message that cannot be changed now (the mesh away)
/// keeps the file's object, whose URL answers 404, and is counted.
async fn tombstone(state: &AppState, file: &FileRecord) {
    let mut channels: Vec<ChannelId> = Vec::new();
    for (channel, ts) in &file.shares {
        if !channels.contains(channel) {
            channels.push(channel.clone());
        }
        if let Err(e) = tombstone_in(state, file, channel, *ts).await {
            tracing::warn!(file = %file.id, %channel, error = %e, "a message keeps a deleted file's object");
            crate::metrics::FILES
                .with_label_values(&["tombstone_failed"])
                .inc();
        }
    }
    let events = channels
        .iter()
        .map(|channel| UserEvent::Notice {
            workspace: file.workspace.clone(),
            members_of: Some(channel.clone()),
            event: json!({
                "type": "file_deleted",
                "file_id": file.id,
                "channel_ids": [channel],
                "event_ts": Ts::now().to_slack(),
            })
            .to_string(),
        })
        .collect();
    super::publish_all(state, events).await;
}

/// [`tombstone`] in the message `ts` of `channel`: an edit by its author with the same text
/// and the file's object replaced.
async fn tombstone_in(
    state: &AppState,
    file: &FileRecord,
    channel: &ChannelId,
    ts: Ts,
) -> ApiResult<()> {
    let Some(view) = state
        .store
        .message_view(&file.workspace, channel, ts)
        .await?
    else {
        return Ok(());
    };
    let Some(rich) = view.message.rich.as_deref().filter(|_| !view.deleted) else {
        return Ok(());
    };
    let Some(Value::Array(objects)) = rich
        .files
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
    else {
        return Ok(());
    };
    let objects: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            if o["id"] == file.id.as_str() {
                json!({ "id": file.id, "mode": "tombstone" })
            } else {
                o
            }
        })
        .collect();
    let mut rich = rich.clone();
    rich.files = Some(Value::Array(objects).to_string());
    let edit = NewMessage {
        workspace: file.workspace.clone(),
        channel: channel.clone(),
        user: view.message.user.clone(),
        text: view.message.text.clone(),
        client_msg_id: None,
        thread_ts: None,
        kind: MessageKind::Edited { target: ts },
        broadcast: false,
        bot: view.message.bot,
        rich: Some(Box::new(rich)),
    };
    state.admin.post(edit).await?;
    Ok(())
}

/// `GET /files/<id>/<name>` (`url_private`; `?download=1` as an attachment): the bytes, for
/// a token (`Authorization: Bearer`) that can see the file.
pub(crate) async fn download(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let id = uri
        .path()
        .strip_prefix("/files/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(shared::auth::bearer);
    let result = async {
        let caller = crate::api::authenticate(&state, token).await?;
        let file = visible_file(&state, &caller, Some(&id)).await?;
        let bytes = state
            .store
            .file_content(&caller.claims.workspace, &file.id)
            .await?
            .ok_or(ApiError::FileNotFound)?;
        Ok::<_, ApiError>((file, bytes))
    }
    .await;
    match result {
        Ok((file, bytes)) => {
            crate::metrics::FILES
                .with_label_values(&["downloaded"])
                .inc();
            let attachment = uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "download=1"));
            let disposition = format!(
                "{}; filename*=UTF-8''{}",
                if attachment { "attachment" } else { "inline" },
                url_segment(&file.name)
            );
            let mut resp = (StatusCode::OK, bytes).into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&file.mimetype) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
        Err(e) => {
            let status = match e {
                ApiError::NotAuthed | ApiError::InvalidAuth => StatusCode::UNAUTHORIZED,
                ApiError::FileNotFound => StatusCode::NOT_FOUND,
                ref other => other.status(),
            };
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                e.code(),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_extension() {
        assert_eq!(kind_of("Chart.PNG"), ("image/png", "png"));
        assert_eq!(kind_of("notes.txt"), ("text/plain", "text"));
        assert_eq!(kind_of("noext"), ("application/octet-stream", "binary"));
        assert_eq!(url_segment("a b/ä.txt"), "a%20b%2F%C3%A4.txt");
    }
}
