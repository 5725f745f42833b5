//! The few Web API methods the bench calls, over keep-alive HTTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:port/api`
    base: Arc<str>,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .context("http client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').into(),
        })
    }

    /// Calls a method; fails unless the answer is `{"ok":true,…}`.
    pub async fn call(&self, method: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{method}: request failed"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("{method}: answer is not JSON (HTTP {status})"))?;
        if v["ok"] != true {
            bail!("{method}: HTTP {status}, error {}", v["error"]);
        }
        Ok(v)
    }

    /// `admin.users.create`: returns the user's id and token.
    pub async fn create_user(
        &self,
        admin_token: &str,
        name: &str,
    ) -> anyhow::Result<(String, String)> {
        let v = self
            .call("admin.users.create", admin_token, json!({ "name": name }))
            .await?;
        let id = v["user"]["id"].as_str().context("no user.id")?.to_string();
        let token = v["token"].as_str().context("no token")?.to_string();
        Ok((id, token))
    }

    /// `conversations.create`: returns the channel id.
    pub async fn create_channel(&self, token: &str, name: &str) -> anyhow::Result<String> {
        let v = self
            .call("conversations.create", token, json!({ "name": name }))
            .await?;
        Ok(v["channel"]["id"]
            .as_str()
            .context("no channel.id")?
            .to_string())
    }

    pub async fn join(&self, token: &str, channel: &str) -> anyhow::Result<()> {
        self.call("conversations.join", token, json!({ "channel": channel }))
            .await
            .map(|_| ())
    }

    /// `chat.postMessage`: returns the message's `seq`.
    pub async fn post(
        &self,
        token: &str,
        channel: &str,
        text: &str,
        client_msg_id: &str,
    ) -> anyhow::Result<u64> {
        let v = self
            .call(
                "chat.postMessage",
                token,
                json!({ "channel": channel, "text": text, "client_msg_id": client_msg_id }),
            )
            .await?;
        v["message"]["seq"]
            .as_u64()
            .context("answer has no message.seq")
    }
}

/// Runs `f` over `items` with at most `concurrency` at once; fails on the first error.
pub async fn for_each_concurrent<T, R, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<R>> + Send + 'static,
{
    use futures_util::StreamExt;
    let f = Arc::new(f);
    let results: Vec<anyhow::Result<R>> =
        futures_util::stream::iter(items.into_iter().map(|item| {
            let f = f.clone();
            async move { f(item).await }
        }))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}
