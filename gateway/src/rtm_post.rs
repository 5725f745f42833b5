//! Messages a client sends over its WebSocket (Slack's RTM `message` event):
//! `{"id":1,"type":"message","channel":"C…","text":"hello"}`.
//!
//! The gateway does not store or sequence anything itself: it posts the message through the
//! Web API's `chat.postMessage` as the session's user, so an RTM message is checked
//! (membership, archived channels, length, rate limits, `client_msg_id` idempotency), stored,
//! sequenced, indexed and relayed exactly like an HTTP post. It then answers as Slack's RTM
//! does: `{"ok":true,"reply_to":1,"ts":"…","text":"hello"}`, or
//! `{"ok":false,"reply_to":1,"error":{"code":N,"msg":"<the Web API's error>"}}`.
//!
//! A session's messages are posted one at a time, in the order it sent them, so two messages
//! to one channel keep their order. At most [`PENDING`] wait; past that the client is told
//! to slow down (`rate_limited`) instead of the gateway queueing without bound. Nothing is
//! made for a session until it sends its first message, so idle sessions pay nothing: not
//! even a copy of their token, since a token is the cluster secret's signature over its
//! claims, which the session keeps anyway; the poster signs the same claims again.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use shared::auth::{Claims, TokenSigner};
use shared::protocol::client::error_code;
use tokio::sync::mpsc;

use crate::metrics as m;

/// Messages of one session waiting to be posted, past which the client is refused.
pub const PENDING: usize = 32;

/// Where RTM messages are posted: the Web API's `chat.postMessage`, as each session's user.
pub struct WebApi {
    http: reqwest::Client,
    url: String,
    signer: TokenSigner,
}

impl WebApi {
    /// `base` is `gateway.webapp_url` (the same Web API the gateway asks for channels);
    /// `signer` holds the cluster secret that verified the sessions' tokens.
    pub fn new(http: reqwest::Client, base: &str, signer: TokenSigner) -> WebApi {
        WebApi {
            http,
            url: format!("{}/api/chat.postMessage", base.trim_end_matches('/')),
            signer,
        }
    }

    /// For sessions in tests that send no messages.
    #[cfg(test)]
    pub fn nowhere() -> Arc<WebApi> {
        let signer = TokenSigner::new(b"unused");
        Arc::new(WebApi::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            signer,
        ))
    }

    /// Posts one message; returns the Web API's JSON answer, or why there is none.
    async fn post(
        &self,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "web api unreachable for an RTM message");
                "webapp_unavailable".to_string()
            })?;
        resp.json()
            .await
            .map_err(|_| "webapp_bad_answer".to_string())
    }
}

/// One RTM message, as the client sent it.
pub struct RtmMessage {
    pub id: Option<u64>,
    pub channel: String,
    pub text: String,
    pub thread_ts: Option<String>,
    pub client_msg_id: Option<String>,
}

impl RtmMessage {
    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "channel": self.channel, "text": self.text });
        if let Some(t) = &self.thread_ts {
            body["thread_ts"] = t.as_str().into();
        }
        if let Some(c) = &self.client_msg_id {
            body["client_msg_id"] = c.as_str().into();
        }
        body
    }
}

/// The sending end of a session's poster.
pub struct Poster {
    tx: mpsc::Sender<RtmMessage>,
}

impl Poster {
    /// Starts the poster of the session of `claims` (verified when it connected) on `runtime`
    /// (one with a reactor, for its HTTP connections); its answers (one per message, in order)
    /// go to `replies`. It ends when the `Poster` is dropped, after the post under way.
    pub fn start(
        api: &Arc<WebApi>,
        claims: &Claims,
        reply_tx: mpsc::Sender<Utf8Bytes>,
        runtime: &tokio::runtime::Handle,
    ) -> Poster {
        let (tx, mut rx) = mpsc::channel::<RtmMessage>(PENDING);
        let api = api.clone();
        let token = api.signer.issue(claims);
        runtime.spawn(async move {
            while let Some(msg) = rx.recv().await {
                let answer = api.post(&token, &msg.body()).await;
                let (reply, outcome) = reply(&msg, answer);
                m::RTM_POSTS.with_label_values(&[outcome]).inc();
                if reply_tx.send(reply.into()).await.is_err() {
                    break;
                }
            }
        });
        Poster { tx }
    }

    /// Queues a message; when [`PENDING`] already wait, returns the refusal to send back.
    pub fn submit(&self, msg: RtmMessage) -> Result<(), Utf8Bytes> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = e.into_inner();
                m::RTM_POSTS.with_label_values(&["too_many_pending"]).inc();
                let refusal = error_reply(msg.id, error_code::RATE_LIMITED, "too_many_pending");
                Err(refusal.into())
            }
        }
    }
}

/// Slack's RTM answer to a sent message, and the outcome to count.
fn reply(msg: &RtmMessage, answer: Result<serde_json::Value, String>) -> (String, &'static str) {
    let answer = match answer {
        Ok(a) => a,
        Err(why) => {
            return (
                error_reply(msg.id, error_code::UNAVAILABLE, &why),
                "unavailable",
            )
        }
    };
    if answer["ok"] == true {
        let mut v = serde_json::json!({
            "ok": true,
            "channel": answer["channel"],
            "ts": answer["ts"],
            "text": answer["message"]["text"].as_str().unwrap_or(&msg.text),
            "seq": answer["message"]["seq"],
        });
        if let Some(id) = msg.id {
            v["reply_to"] = id.into();
        }
        return (v.to_string(), "ok");
    }
    let error = answer["error"].as_str().unwrap_or("webapp_bad_answer");
    let (code, outcome) = match error {
        "channel_not_found" => (error_code::CHANNEL_NOT_FOUND, "refused"),
        "not_in_channel" => (error_code::NOT_IN_CHANNEL, "refused"),
        "ratelimited" => (error_code::RATE_LIMITED, "ratelimited"),
        "service_unavailable" | "internal_error" | "webapp_bad_answer" => {
            (error_code::UNAVAILABLE, "unavailable")
        }
        _ => (error_code::MESSAGE_REFUSED, "refused"),
    };
    (error_reply(msg.id, code, error), outcome)
}

/// `{"ok":false,"reply_to":id,"error":{"code":…,"msg":…}}`, as Slack answers a sent message.
fn error_reply(id: Option<u64>, code: u16, msg: &str) -> String {
    let mut v = serde_json::json!({ "ok": false, "error": { "code": code, "msg": msg } });
    if let Some(id) = id {
        v["reply_to"] = id.into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(id: Option<u64>) -> RtmMessage {
        RtmMessage {
            id,
            channel: "C1".into(),
            text: "hi".into(),
            thread_ts: Some("1.000001".into()),
            client_msg_id: None,
        }
    }

    #[test]
    fn the_body_carries_what_the_client_gave() {
        let body = msg(Some(1)).body();
        assert_eq!(
            body,
            json!({ "channel": "C1", "text": "hi", "thread_ts": "1.000001" })
        );
    }

    #[tokio::test]
    async fn past_the_pending_limit_a_message_is_refused_not_queued() {
        // A poster whose posting has stalled (nothing takes from its queue).
        let (tx, _rx) = mpsc::channel(PENDING);
        let poster = Poster { tx };
        for id in 0..PENDING as u64 {
            assert!(poster.submit(msg(Some(id))).is_ok());
        }
        let before = m::RTM_POSTS.with_label_values(&["too_many_pending"]).get();
        let refusal = poster.submit(msg(Some(99))).unwrap_err();
        let r: serde_json::Value = serde_json::from_str(refusal.as_str()).unwrap();
        assert_eq!(
            r,
            json!({ "ok": false, "reply_to": 99, "error": { "code": 7, "msg": "too_many_pending" } })
        );
        let after = m::RTM_POSTS.with_label_values(&["too_many_pending"]).get();
        assert_eq!(after, before + 1);
    }

    #[test]
    fn answers_become_slack_rtm_replies() {
        let ok = json!({ "ok": true, "channel": "C1", "ts": "5.000001", "message": { "text": "hi", "seq": 9 } });
        let (r, outcome) = reply(&msg(Some(7)), Ok(ok));
        let r: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(outcome, "ok");
        assert_eq!(
            r,
            json!({ "ok": true, "reply_to": 7, "channel": "C1", "ts": "5.000001", "text": "hi", "seq": 9 })
        );

        let cases = [
            (
                Ok(json!({ "ok": false, "error": "not_in_channel" })),
                4,
                "not_in_channel",
                "refused",
            ),
            (
                Ok(json!({ "ok": false, "error": "channel_not_found" })),
                3,
                "channel_not_found",
                "refused",
            ),
            (
                Ok(json!({ "ok": false, "error": "msg_too_long" })),
                8,
                "msg_too_long",
                "refused",
            ),
            (
                Ok(json!({ "ok": false, "error": "ratelimited" })),
                7,
                "ratelimited",
                "ratelimited",
            ),
            (
                Ok(json!({ "ok": false, "error": "service_unavailable" })),
                6,
                "service_unavailable",
                "unavailable",
            ),
            (
                Ok(json!({ "unexpected": 1 })),
                6,
                "webapp_bad_answer",
                "unavailable",
            ),
            (
                Err("webapp_unavailable".to_string()),
                6,
                "webapp_unavailable",
                "unavailable",
            ),
        ];
        for (answer, code, error, want) in cases {
            let (r, outcome) = reply(&msg(Some(3)), answer);
            let r: serde_json::Value = serde_json::from_str(&r).unwrap();
            assert_eq!(outcome, want, "{r}");
            assert_eq!(
                r,
                json!({ "ok": false, "reply_to": 3, "error": { "code": code, "msg": error } })
            );
        }
        let (r, _) = reply(&msg(None), Err("webapp_unavailable".into()));
        assert!(!r.contains("reply_to"), "{r}");
    }
}
