//! Boot data for `hello`, from the Flannel instance that holds the client's workspace.
//!
//! `gateway.flannel_urls` lists the Flannel instances; consistent hashing over them (the same
//! [`Placement`] every gateway computes) picks the one for a workspace, so each workspace is
//! cached on one instance and adding an instance moves only the workspaces it takes over. The
//! boot call runs while the gateway asks the Web API for the user's channels, before the
//! WebSocket upgrade. When no Flannel is configured or it cannot answer in time, `hello`
//! goes without `boot` and the session works as before; a metric counts the failures.

use std::time::Duration;

use serde_json::Value;
use shared::ids::WorkspaceId;
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

/// `boot` for `hello`, with `unread` on each channel whose position (`seq`, as `hello`
/// reports it) and read position (`last_read`) are both known.
pub fn with_unread(mut boot: Value, positions: &Value) -> Value {
    if let Some(channels) = boot["channels"].as_array_mut() {
        for c in channels {
            let seq = c["id"].as_str().and_then(|id| positions[id].as_u64());
            if let (Some(seq), Some(last_read)) = (seq, c["last_read"].as_u64()) {
                c["unread"] = seq.saturating_sub(last_read).into();
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
    fn unread_is_position_minus_last_read_when_both_are_known() {
        let boot = json!({ "channels": [
            { "id": "CA", "last_read": 3 },
            { "id": "CB", "last_read": 0 },
            { "id": "CC", "last_read": 9 },
        ]});
        let out = with_unread(boot, &json!({ "CA": 10, "CC": 5 }));
        assert_eq!(out["channels"][0]["unread"], 7);
        assert!(out["channels"][1].get("unread").is_none());
        assert_eq!(out["channels"][2]["unread"], 0);
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
