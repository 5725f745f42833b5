//! Where workspaces are loaded from: the Web API's `internal.flannel.snapshot` in production
//! ([`WebappSource`]), or a store directly ([`StoreSource`], for the benchmark).

use std::time::Duration;

use shared::auth::{Claims, TokenSigner};
use shared::ids::{Ts, WorkspaceId};
use shared::protocol::WorkspaceSnapshot;
use shared::store::SharedStore;

/// Why a workspace could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The Web API knows no such workspace (a token naming it cannot be valid).
    #[error("no such workspace")]
    NoSuchWorkspace,
    /// The Web API (or the store) could not answer; the next use tries again.
    #[error("workspace source unavailable: {0}")]
    Unavailable(String),
}

/// Reads a workspace's snapshot.
#[async_trait::async_trait]
pub trait SnapshotSource: Send + Sync + 'static {
    async fn snapshot(&self, workspace: &WorkspaceId) -> Result<WorkspaceSnapshot, LoadError>;
}

/// Loads from the Web API with a service token minted per call (signed with the cluster
/// secret, which every node holds).
pub struct WebappSource {
    http: reqwest::Client,
    url: String,
    signer: TokenSigner,
}

/// How long one snapshot call may take (a large workspace is megabytes of JSON).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

impl WebappSource {
    pub fn new(webapp_url: &str, signer: TokenSigner) -> anyhow::Result<WebappSource> {
        Ok(WebappSource {
            http: reqwest::Client::builder().timeout(LOAD_TIMEOUT).build()?,
            url: format!(
                "{}/api/internal.flannel.snapshot",
                webapp_url.trim_end_matches('/')
            ),
            signer,
        })
    }
}

#[async_trait::async_trait]
impl SnapshotSource for WebappSource {
    async fn snapshot(&self, workspace: &WorkspaceId) -> Result<WorkspaceSnapshot, LoadError> {
        let token = self
            .signer
            .issue(&Claims::service(workspace.clone(), Ts::now().0 / 1_000_000));
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "workspace": workspace }))
            .send()
            .await
            .map_err(|e| LoadError::Unavailable(format!("web api unreachable: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| LoadError::Unavailable(format!("web api answer cut short: {e}")))?;
        let envelope: Envelope = serde_json::from_slice(&body).map_err(|e| {
            LoadError::Unavailable(format!("web api answered {status} without JSON: {e}"))
        })?;
        if !envelope.ok {
            return match envelope.error.as_deref() {
                Some("team_not_found") => Err(LoadError::NoSuchWorkspace),
                other => Err(LoadError::Unavailable(format!(
                    "web api answered {status}: {}",
                    other.unwrap_or("no error name")
                ))),
            };
        }
        serde_json::from_slice(&body)
            .map_err(|e| LoadError::Unavailable(format!("snapshot does not parse: {e}")))
    }
}

/// Loads straight from a store (the same read the Web API makes), without HTTP.
pub struct StoreSource {
    pub store: SharedStore,
}

#[async_trait::async_trait]
impl SnapshotSource for StoreSource {
    async fn snapshot(&self, workspace: &WorkspaceId) -> Result<WorkspaceSnapshot, LoadError> {
        shared::store::snapshot::workspace_snapshot(self.store.as_ref(), workspace)
            .await
            .map_err(|e| LoadError::Unavailable(e.to_string()))?
            .ok_or(LoadError::NoSuchWorkspace)
    }
}
