//! Importing a Slack workspace export (`switchboard admin import-slack`): a team that moves
//! from Slack brings its people, channels and history.
//!
//! A Slack export, unzipped, is a directory of `users.json`, `channels.json` (public
//! channels), `groups.json` (private ones, in exports that include them) and one directory per
//! channel, named as the channel, of one JSON file per day (`2024-01-31.json`), each an array
//! of messages. What is read:
//! - users: their name, real and display names, email, admin and bot flags. Switchboard gives
//!   them ids of its own; mentions (`<@U…>`) in the imported text are rewritten to them. A
//!   user whose name the workspace already has is that user (an import run again adds none).
//! - channels: name, creator, creation time, topic, purpose, archived, members; Slack's ids
//!   are kept when free. A channel whose name the workspace already has receives the history.
//! - messages, in time order, with their Slack `ts` (permalinks and threads keep working):
//!   text, Block Kit blocks, attachments, threads (a reply whose parent is not in the export
//!   is kept at the top level), `thread_broadcast`, `me_message`, topic and purpose changes,
//!   bots' messages (their user's), and reactions (an entry each, just after the message).
//!   Each message's `client_msg_id` (Slack's, else one made of its `ts`) makes an import run
//!   again store nothing twice.
//! - not read, and counted in the report: direct messages (`dms.json`, `mpims.json`), joins
//!   and leaves and other system messages, files (a message with files keeps its text), edit
//!   marks, messages by users the export does not list.
//!
//! It writes the store directly, as `admin create-user` does: run it before the cluster
//! starts, or while it runs into channels that are new (a channel server that already owns a
//! channel knows its last sequence number, which the import moves). The Web API's search
//! index takes the messages from the store's change feed when it next runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;
use shared::ids::{ChannelId, Seq, Ts, UserId, WorkspaceId};
use shared::protocol::{ChannelSetting, Message, MessageKind};
use shared::store::{AppendOutcome, Channel, SharedStore, StorageErrorKind};

use crate::methods::content::{self, Part, Parts};
use crate::methods::{parse_email, set_email, IM_PREFIX, MPIM_PREFIX};
use crate::seed::validate_user_name;

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub workspace: String,
    pub users_created: u64,
    pub users_existing: u64,
    pub channels_created: u64,
    pub channels_existing: u64,
    pub memberships: u64,
    pub messages: u64,
    /// Messages the store already had (an import run again).
    pub messages_existing: u64,
    pub replies_at_top_level: u64,
    pub reactions: u64,
    /// What was left out, by reason (a Slack subtype, `files`, `unknown_user`, …).
    pub skipped: BTreeMap<String, u64>,
}

impl ImportReport {
    /// The report as JSON, as the command prints it.
    pub fn json(&self) -> Value {
        serde_json::json!({
            "workspace": self.workspace,
            "users_created": self.users_created,
            "users_existing": self.users_existing,
            "channels_created": self.channels_created,
            "channels_existing": self.channels_existing,
            "memberships": self.memberships,
            "messages": self.messages,
            "messages_existing": self.messages_existing,
            "replies_at_top_level": self.replies_at_top_level,
            "reactions": self.reactions,
            "skipped": self.skipped,
        })
    }

    fn skip(&mut self, why: impl Into<String>) {
        *self.skipped.entry(why.into()).or_default() += 1;
    }
}

/// Reads the export in `dir` into workspace `workspace_name` (made if it does not exist).
pub async fn import_slack_export(
    store: &SharedStore,
    dir: &Path,
    workspace_name: &str,
) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport {
        workspace: workspace_name.to_string(),
        ..ImportReport::default()
    };
    let ws = match store.workspace_by_name(workspace_name).await? {
        Some(ws) => ws,
        None => crate::seed::create_workspace(store, workspace_name).await?,
    };
    let users = read_array(&dir.join("users.json"))?
        .with_context(|| format!("{} has no users.json: not a Slack export", dir.display()))?;
    let user_ids = import_users(store, &ws.id, &users, &mut report).await?;
    let mut channels = read_array(&dir.join("channels.json"))?.unwrap_or_default();
    let private_from = channels.len();
    channels.extend(read_array(&dir.join("groups.json"))?.unwrap_or_default());
    for file in ["dms.json", "mpims.json"] {
        for _ in read_array(&dir.join(file))?.unwrap_or_default() {
            report.skip("direct_message_conversation");
        }
    }
    let mut channel_ids: HashMap<String, ChannelId> = HashMap::new();
    let mut to_read: Vec<(ChannelId, String)> = Vec::new();
    for (n, raw) in channels.iter().enumerate() {
        let Some(slack_id) = raw["id"].as_str() else {
            report.skip("channel_without_id");
            continue;
        };
        let Some(dir_name) = raw["name"].as_str() else {
            report.skip("channel_without_name");
            continue;
        };
        let channel = import_channel(
            store,
            &ws.id,
            raw,
            n >= private_from,
            &user_ids,
            &mut report,
        )
        .await?;
        channel_ids.insert(slack_id.to_string(), channel.id.clone());
        to_read.push((channel.id, dir_name.to_string()));
    }
    let refs = Refs {
        users: &user_ids,
        channels: &channel_ids,
    };
    for (channel, dir_name) in to_read {
        let days = dir.join(&dir_name);
        if days.is_dir() {
            import_history(store, &ws.id, &channel, &days, &refs, &mut report)
                .await
                .with_context(|| format!("importing the history of #{dir_name}"))?;
        }
    }
    Ok(report)
}

/// `path`'s JSON array, or `None` when there is no such file.
fn read_array(path: &Path) -> anyhow::Result<Option<Vec<Value>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => Ok(Some(items)),
        Ok(_) => bail!("{} is not a JSON array", path.display()),
        Err(e) => Err(e).with_context(|| format!("{} is not valid JSON", path.display())),
    }
}

/// `v`'s text, trimmed, when it has some.
fn text(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// A Slack name as a Switchboard name: lower case, other characters as `_`, at most 80;
/// `fallback` when nothing is left.
fn clean_name(raw: &str, keep: impl Fn(char) -> bool, fallback: &str) -> String {
    let name: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .take(crate::seed::MAX_NAME)
        .collect();
    if name.trim_matches('_').is_empty() {
        fallback.to_string()
    } else {
        name
    }
}

async fn import_users(
    store: &SharedStore,
    ws: &WorkspaceId,
    users: &[Value],
    report: &mut ImportReport,
) -> anyhow::Result<HashMap<String, UserId>> {
    let mut ids = HashMap::new();
    for raw in users {
        let Some(slack_id) = raw["id"].as_str() else {
            report.skip("user_without_id");
            continue;
        };
        let profile = &raw["profile"];
        let keep =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
        let fallback = clean_name(&format!("user_{slack_id}"), keep, "user");
        let name = clean_name(raw["name"].as_str().unwrap_or_default(), keep, &fallback);
        validate_user_name(&name)
            .map_err(|e| anyhow::anyhow!("user name {name:?} from {slack_id}: {e}"))?;
        if let Some(existing) = store.user_by_name(ws, &name).await? {
            report.users_existing += 1;
            ids.insert(slack_id.to_string(), existing.id);
            continue;
        }
        let real_name = text(&profile["real_name"])
            .or(text(&raw["real_name"]))
            .unwrap_or(&name)
            .to_string();
        let is_bot = raw["is_bot"].as_bool().unwrap_or(false);
        let is_admin = !is_bot
            && (raw["is_admin"].as_bool().unwrap_or(false)
                || raw["is_owner"].as_bool().unwrap_or(false));
        let user = match store
            .create_user(ws, &name, &real_name, is_admin, is_bot)
            .await
        {
            Ok(user) => user,
            Err(e) if e.kind == StorageErrorKind::AlreadyExists => {
                bail!("user {name:?} was created meanwhile; run the import again")
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(display) = text(&profile["display_name"]) {
            store
                .update_user_profile(&user.id, None, Some(display))
                .await?;
        }
        // An address another user has (or a malformed one) is left out, not fatal.
        if let Some(email) = text(&profile["email"]).and_then(|e| parse_email(e).ok()) {
            let free = store.user_by_email(ws, &email).await?.is_none();
            if !free || set_email(store, &user.id, &email).await.is_err() {
                report.skip("email_taken_or_refused");
            }
        }
        report.users_created += 1;
        ids.insert(slack_id.to_string(), user.id);
    }
    Ok(ids)
}

async fn import_channel(
    store: &SharedStore,
    ws: &WorkspaceId,
    raw: &Value,
    private: bool,
    users: &HashMap<String, UserId>,
    report: &mut ImportReport,
) -> anyhow::Result<Channel> {
    let slack_id = raw["id"].as_str().unwrap_or_default();
    let keep = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_');
    let fallback = clean_name(&format!("imported-{slack_id}"), keep, "imported");
    let mut name = clean_name(raw["name"].as_str().unwrap_or_default(), keep, &fallback);
    if name.starts_with(IM_PREFIX) || name.starts_with(MPIM_PREFIX) {
        // Names of direct messages are Switchboard's own.
        name = clean_name(&format!("imported-{name}"), keep, &fallback);
    }
    let members: Vec<UserId> = raw["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|u| users.get(u.as_str()?).cloned())
                .collect()
        })
        .unwrap_or_default();
    let channel = match store.channel_by_name(ws, &name).await? {
        Some(existing) => {
            report.channels_existing += 1;
            existing
        }
        None => {
            let id = ChannelId::parse(slack_id).unwrap_or_else(ChannelId::generate);
            let id = match store.channel(&id).await? {
                Some(_) => ChannelId::generate(),
                None => id,
            };
            let Some(creator) = raw["creator"]
                .as_str()
                .and_then(|c| users.get(c))
                .or(members.first())
                .cloned()
            else {
                bail!("channel #{name} has neither a known creator nor a known member");
            };
            let text = |key: &str| raw[key]["value"].as_str().unwrap_or_default().to_string();
            let channel = Channel {
                id,
                workspace: ws.clone(),
                name: name.clone(),
                is_private: private || raw["is_private"].as_bool().unwrap_or(false),
                creator,
                created: Ts(raw["created"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_mul(1_000_000)),
                topic: text("topic"),
                purpose: text("purpose"),
                is_archived: raw["is_archived"].as_bool().unwrap_or(false),
            };
            store.create_channel(&channel).await?;
            report.channels_created += 1;
            channel
        }
    };
    for member in &members {
        if store.add_member(&channel.id, member).await? {
            report.memberships += 1;
        }
    }
    Ok(channel)
}

/// How Slack's ids map to this workspace's.
struct Refs<'a> {
    users: &'a HashMap<String, UserId>,
    channels: &'a HashMap<String, ChannelId>,
}

impl Refs<'_> {
    /// `text` with its user and channel mentions (`<@U…>`, `<@U…|name>`, `<#C…|name>`)
    /// naming this workspace's ids.
    fn rewrite(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let Some(end) = tail.find('>') else {
                out.push_str(tail);
                return out;
            };
            let inner = &tail[1..end];
            let (target, label) = match inner.split_once('|') {
                Some((t, l)) => (t, Some(l)),
                None => (inner, None),
            };
            let mapped = if let Some(id) = target.strip_prefix('@') {
                self.users.get(id).map(|u| format!("@{u}"))
            } else if let Some(id) = target.strip_prefix('#') {
                self.channels.get(id).map(|c| format!("#{c}"))
            } else {
                None
            };
            match mapped {
                Some(target) => {
                    out.push('<');
                    out.push_str(&target);
                    if let Some(label) = label {
                        out.push('|');
                        out.push_str(label);
                    }
                    out.push('>');
                }
                None => out.push_str(&tail[..=end]),
            }
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// The Slack subtypes imported as messages; any other is counted and left out.
const IMPORTED_SUBTYPES: &[&str] = &[
    "thread_broadcast",
    "me_message",
    "bot_message",
    "channel_topic",
    "channel_purpose",
    "file_share",
];

/// A message of the export, as it will be stored, and its reactions.
struct Entry {
    message: Message,
    reactions: Vec<(String, UserId)>,
}

async fn import_history(
    store: &SharedStore,
    ws: &WorkspaceId,
    channel: &ChannelId,
    days: &Path,
    refs: &Refs<'_>,
    report: &mut ImportReport,
) -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(days)
        .with_context(|| format!("reading {}", days.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut raw_messages = Vec::new();
    for file in files {
        raw_messages.extend(read_array(&file)?.unwrap_or_default());
    }
    let mut entries: Vec<Entry> = raw_messages
        .iter()
        .filter_map(|raw| entry(ws, channel, raw, refs, report))
        .collect();
    entries.sort_by_key(|e| e.message.ts);
    // A reply whose thread did not come along stays at the top level.
    let parents: HashSet<Ts> = entries
        .iter()
        .filter(|e| e.message.thread_ts.is_none())
        .map(|e| e.message.ts)
        .collect();
    // Each stored entry's successor's time: a message's reactions fit before it.
    let next_ts: Vec<Option<Ts>> = (0..entries.len())
        .map(|n| entries.get(n + 1).map(|e| e.message.ts))
        .collect();
    let head = store.last_message(ws, channel).await?;
    let mut seq: Seq = head.as_ref().map_or(0, |m| m.seq);
    // The stream's times only grow: what is older than the channel's last entry is either
    // there already (an import run again) or left out.
    let mut last_ts = head.map_or(Ts(0), |m| m.ts);
    for (n, mut e) in entries.into_iter().enumerate() {
        if e.message.ts <= last_ts {
            let id = e.message.client_msg_id.as_deref().unwrap_or_default();
            if store
                .message_by_client_msg_id(ws, channel, id)
                .await?
                .is_some()
            {
                report.messages_existing += 1;
            } else {
                report.skip("older_than_the_channels_history");
            }
            continue;
        }
        if let Some(parent) = e.message.thread_ts {
            if !parents.contains(&parent) {
                e.message.thread_ts = None;
                e.message.broadcast = false;
                report.replies_at_top_level += 1;
            }
        }
        seq += 1;
        e.message.seq = seq;
        match store.append(&e.message).await? {
            AppendOutcome::Stored => report.messages += 1,
            AppendOutcome::Duplicate(_) => {
                seq -= 1;
                report.messages_existing += 1;
                continue;
            }
        }
        last_ts = e.message.ts;
        // Reactions just after their message, each with a ts of its own before the next
        // message's (the stream's times only grow).
        for (name, user) in e.reactions {
            let ts = Ts(last_ts.0 + 1);
            if next_ts[n].is_some_and(|next| ts >= next) {
                report.skip("reaction_without_room");
                continue;
            }
            seq += 1;
            let reaction = Message {
                seq,
                ts,
                user,
                text: String::new(),
                client_msg_id: None,
                thread_ts: None,
                kind: MessageKind::ReactionAdded {
                    target: e.message.ts,
                    reaction: name,
                },
                previous: None,
                broadcast: false,
                bot: false,
                rich: None,
                ..e.message.clone()
            };
            store.append(&reaction).await?;
            last_ts = ts;
            report.reactions += 1;
        }
    }
    Ok(())
}

/// One exported message as a stored one, or `None` (counted) when it is left out.
fn entry(
    ws: &WorkspaceId,
    channel: &ChannelId,
    raw: &Value,
    refs: &Refs<'_>,
    report: &mut ImportReport,
) -> Option<Entry> {
    if raw["type"] != "message" {
        report.skip("not_a_message");
        return None;
    }
    let subtype = raw["subtype"].as_str();
    if let Some(sub) = subtype.filter(|s| !IMPORTED_SUBTYPES.contains(s)) {
        report.skip(sub);
        return None;
    }
    let Some(ts) = raw["ts"].as_str().and_then(Ts::parse_slack) else {
        report.skip("message_without_ts");
        return None;
    };
    let Some(user) = raw["user"]
        .as_str()
        .and_then(|u| refs.users.get(u))
        .cloned()
    else {
        report.skip("unknown_user");
        return None;
    };
    if raw["files"].as_array().is_some_and(|f| !f.is_empty()) {
        report.skip("files");
    }
    let given = refs.rewrite(raw["text"].as_str().unwrap_or_default());
    let part = |key: &'static str| match &raw[key] {
        Value::Array(items) if !items.is_empty() => Some(Part::Value(&raw[key])),
        _ => None,
    };
    // As a post composes it: the text as given, else the blocks' text, then the
    // attachments'; blocks or attachments that do not check out leave the text alone.
    let composed = content::compose(Parts {
        text: Some(given.as_str()).filter(|t| !t.trim().is_empty()),
        blocks: part("blocks"),
        attachments: part("attachments"),
    });
    let (text, rich) = match composed {
        Ok(c) => (c.text.into_owned(), c.rich),
        Err(_) if !given.trim().is_empty() => {
            report.skip("invalid_blocks_or_attachments");
            (given.clone(), None)
        }
        Err(_) => {
            report.skip("empty");
            return None;
        }
    };
    let mut rich = rich.map(|r| *r).unwrap_or_default();
    rich.me = subtype == Some("me_message");
    let setting = |key: &str| {
        raw[key]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.clone())
    };
    rich.sets = match subtype {
        Some("channel_topic") => Some(ChannelSetting::Topic(setting("topic"))),
        Some("channel_purpose") => Some(ChannelSetting::Purpose(setting("purpose"))),
        _ => None,
    };
    let thread_ts = raw["thread_ts"]
        .as_str()
        .and_then(Ts::parse_slack)
        .filter(|t| *t != ts);
    let reactions = raw["reactions"]
        .as_array()
        .map(|all| {
            all.iter()
                .flat_map(|r| {
                    let name = r["name"].as_str().unwrap_or_default().to_string();
                    r["users"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| refs.users.get(u.as_str()?).cloned())
                        .map(move |u| (name.clone(), u))
                })
                .filter(|(name, _)| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let client_msg_id = raw["client_msg_id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map_or_else(|| format!("slack-import-{}", ts.to_slack()), str::to_string);
    Some(Entry {
        message: Message {
            workspace: ws.clone(),
            channel: channel.clone(),
            seq: 0,
            ts,
            user,
            text,
            client_msg_id: Some(client_msg_id),
            thread_ts,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: thread_ts.is_some() && subtype == Some("thread_broadcast"),
            bot: raw["bot_id"].is_string(),
            rich: rich.boxed(),
        },
        reactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_rewritten_to_the_imported_ids() {
        let users = HashMap::from([("UOLD1".to_string(), UserId::from("UNEW1"))]);
        let channels = HashMap::from([("COLD1".to_string(), ChannelId::from("CNEW1"))]);
        let refs = Refs {
            users: &users,
            channels: &channels,
        };
        assert_eq!(
            refs.rewrite("hi <@UOLD1> and <@UOLD1|ann>, see <#COLD1|general> <@UOTHER> <!here> <https://x.example|x> a < b"),
            "hi <@UNEW1> and <@UNEW1|ann>, see <#CNEW1|general> <@UOTHER> <!here> <https://x.example|x> a < b"
        );
    }

    #[test]
    fn names_are_cleaned_to_switchboard_rules() {
        let user = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        assert_eq!(clean_name("Ann.Lee", user, "x"), "ann.lee");
        assert_eq!(clean_name("Jörg Müller", user, "x"), "j_rg_m_ller");
        assert_eq!(clean_name("  ", user, "fallback"), "fallback");
        assert_eq!(clean_name(&"a".repeat(200), user, "x").len(), 80);
        // Every character it keeps is ASCII: a cut never splits one.
        assert_eq!(clean_name(&"é".repeat(200), user, "x"), "x");
        assert_eq!(clean_name(&"aé".repeat(100), user, "x"), "a_".repeat(40));
    }
}
