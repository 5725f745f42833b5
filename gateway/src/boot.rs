//! Boot data for `hello`, from the Flannel instance that holds the client's workspace.
//!
//! `gateway.flannel_urls` lists the Flannel instances; consistent hashing over them (the same
//! [`Placement`] every gateway computes) picks the one for a workspace, so each workspace is
//! cached on one instance and adding an instance moves only the workspaces it takes over. The
//! boot call runs while the gateway asks the Web API for the user's channels, before the
//! WebSocket upgrade. When no Flannel is configured or it cannot answer in time, `hello`
//! goes without `boot` and the session works as before; a metric counts the failures.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use shared::ids::{ChannelId, Seq, WorkspaceId};
use shared::protocol::client::UnreadCount;
use shared::ring::{Placement, DEFAULT_VNODES};

use crate::metrics as m;

/// How long a connect waits for boot data (a cold workspace loads first).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(3);

/// The Flannel instances and a client for them.
pub struct BootSource {
    placement: Placement,
    http: reqwest::Client,
}

impl BootSource {
    pub fn new(flannel_urls: &[String]) -> anyhow::Result<BootSource> {
        Ok(BootSource {
            placement: Placement::new(
                flannel_urls
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_string()),
                DEFAULT_VNODES,
            ),
            http: reqwest::Client::builder().timeout(BOOT_TIMEOUT).build()?,
        })
    }

    /// The Flannel base URL that holds `workspace`.
    pub fn url_for(&self, workspace: &WorkspaceId) -> Option<&str> {
        self.placement.pick(workspace.as_str().as_bytes())
    }

    /// The boot data of the token's user (the Flannel answer without `ok`), or `None` when
    /// no Flannel is configured or it did not answer with data.
    pub async fn fetch(&self, workspace: &WorkspaceId, token: &str) -> Option<Value> {
        let base = self.url_for(workspace)?;
        let failed = |reason: &'static str| {
            m::BOOT_FAILURES.with_label_values(&[reason]).inc();
            None
        };
        let resp = match self
            .http
            .get(format!("{base}/boot"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(flannel = base, error = %e, "flannel unreachable; hello goes without boot data");
                return failed("unreachable");
            }
        };
        let mut body: Value = match resp.json().await {
            Ok(v) => v,
            Err(_) => return failed("bad_answer"),
        };
        if body["ok"] != true {
            tracing::info!(flannel = base, error = %body["error"], "flannel refused the boot call");
            return failed("refused");
        }
        if let Some(fields) = body.as_object_mut() {
            fields.remove("ok");
        }
        Some(body)
    }
}

/// The channels of `boot` with entries past the reader's read position: each with its
/// `last_read` and its position (`seq`, as `hello` reports it), whose unread messages
/// [`crate::hub::Hub::unread_counts`] counts.
pub fn unread_ranges(boot: &Value, positions: &Value) -> Vec<(ChannelId, Seq, Seq)> {
    let Some(channels) = boot["channels"].as_array() else {
        return Vec::new();
    };
    channels
        .iter()
        .filter_map(|c| {
            let id = c["id"].as_str()?;
            let seq = positions[id].as_u64()?;
            let last_read = c["last_read"].as_u64()?;
            (seq > last_read).then(|| (ChannelId::from(id), last_read, seq))
        })
        .collect()
}

/// The user groups the booting user is in (Flannel's `subteams.self`), whose mentions are
/// the user's mentions too.
pub fn reader_groups(boot: &Value) -> Vec<String> {
    boot["subteams"]["self"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `boot` for `hello`, with `unread` on each channel whose position and read position are
/// both known: the messages counted in `counts`, or for a channel not counted there, the
/// entries past the read position (reactions and edits included), more than it should be
/// rather than a channel shown read that is not. And `mention_count`, the unread messages
/// that mention the user (Slack's badge): in a DM or group DM every one of them, in a
/// channel those counted so in `counts` (left out where the channel was not counted).
pub fn with_unread(
    mut boot: Value,
    positions: &Value,
    counts: &HashMap<ChannelId, UnreadCount>,
) -> Value {
    if let Some(channels) = boot["channels"].as_array_mut() {
        for c in channels {
            let Some(id) = c["id"].as_str().map(ChannelId::from) else {
                continue;
            };
            let seq = positions[id.as_str()].as_u64();
            let direct = c["is_im"] == true || c["is_mpim"] == true;
            if let (Some(seq), Some(last_read)) = (seq, c["last_read"].as_u64()) {
                let (unread, mentions) = match counts.get(&id) {
                    Some(n) if seq > last_read => (n.messages, Some(n.mentions)),
                    Some(_) => (0, Some(0)),
                    None if seq <= last_read => (0, Some(0)),
                    None => (seq - last_read, None),
                };
                c["unread"] = unread.into();
                let mentions = if direct { Some(unread) } else { mentions };
                if let Some(mentions) = mentions {
                    c["mention_count"] = mentions.into();
                }
            }
        }
    }
    boot
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unread_is_the_count_else_the_entries_past_the_read_position() {
        let boot = json!({ "channels": [
            { "id": "CA", "last_read": 3 },
            { "id": "CB", "last_read": 0 },
            { "id": "CC", "last_read": 9 },
            { "id": "CD", "last_read": 2 },
        ]});
        let positions = json!({ "CA": 10, "CC": 5, "CD": 8 });
        assert_eq!(
            unread_ranges(&boot, &positions),
            vec![
                (ChannelId::from("CA"), 3, 10),
                (ChannelId::from("CD"), 2, 8)
            ],
            "only channels with entries past the read position, and a known position"
        );
        let counts = HashMap::from([(
            ChannelId::from("CA"),
            UnreadCount {
                messages: 2,
                mentions: 1,
            },
        )]);
        let out = with_unread(boot, &positions, &counts);
        let field = |i: usize, name: &str| out["channels"][i].get(name).cloned();
        assert_eq!(field(0, "unread"), Some(json!(2)), "counted");
        assert_eq!(field(0, "mention_count"), Some(json!(1)));
        assert_eq!(field(1, "unread"), None);
        assert_eq!(field(1, "mention_count"), None);
        assert_eq!(field(2, "unread"), Some(json!(0)));
        assert_eq!(field(2, "mention_count"), Some(json!(0)));
        assert_eq!(
            field(3, "unread"),
            Some(json!(6)),
            "not counted: the entries"
        );
        assert_eq!(field(3, "mention_count"), None, "not known");
        assert!(unread_ranges(&json!({}), &positions).is_empty());
    }

    #[test]
    fn every_unread_message_of_a_dm_is_a_mention() {
        let boot = json!({ "channels": [
            { "id": "DA", "is_im": true, "last_read": 3 },
            { "id": "GB", "is_mpim": true, "last_read": 1 },
            { "id": "DC", "is_im": true, "last_read": 4 },
        ]});
        let positions = json!({ "DA": 10, "GB": 5, "DC": 4 });
        let counts = HashMap::from([(
            ChannelId::from("DA"),
            UnreadCount {
                messages: 3,
                mentions: 0,
            },
        )]);
        let out = with_unread(boot, &positions, &counts);
        let pair = |i: usize| {
            (
                out["channels"][i]["unread"].clone(),
                out["channels"][i]["mention_count"].clone(),
            )
        };
        assert_eq!(pair(0), (json!(3), json!(3)));
        assert_eq!(pair(1), (json!(4), json!(4)), "not counted: the entries");
        assert_eq!(pair(2), (json!(0), json!(0)));
        assert_eq!(
            reader_groups(&json!({"subteams": {"self": ["S1", "S2"], "all": []}})),
            vec!["S1".to_string(), "S2".to_string()]
        );
        assert!(reader_groups(&json!({})).is_empty());
    }

    #[test]
    fn workspaces_are_placed_on_one_configured_flannel() {
        let none = BootSource::new(&[]).unwrap();
        assert_eq!(none.url_for(&WorkspaceId::from("T1")), None);
        let urls = vec![
            "http://127.0.0.1:7400/".to_string(),
            "http://127.0.0.1:7401".to_string(),
        ];
        let two = BootSource::new(&urls).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let url = two.url_for(&WorkspaceId(format!("T{i}"))).unwrap();
            assert!(!url.ends_with('/'));
            seen.insert(url.to_string());
        }
        assert_eq!(seen.len(), 2, "both instances hold some workspaces");
    }
}
