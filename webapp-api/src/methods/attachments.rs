//! The text of Slack's legacy message `attachments`, which most bots still send: alert
//! managers, CI servers and dashboards post an attachment per alert or build, often with no
//! `text` of their own.
//!
//! The attachments are kept and given back to clients ([`super::content`]); their text also
//! follows the message's `text`, for notifications, search and clients that cannot draw
//! them. Each attachment becomes lines of that text, in the order Slack draws them:
//! - `pretext`, then `author_name`, then `title` (as Slack's link `<title_link|title>` when it
//!   has a link), then `text`;
//! - each of its `fields` as `title: value` (or whichever of the two it has);
//! - the text of its `blocks` (as for a message's blocks, [`super::blocks`]);
//! - `footer`;
//! - `fallback`, Slack's plain summary for clients that cannot draw attachments, only when
//!   none of the above gave any text.
//!
//! Colors, images, icons, actions and times are left out of the text. Attachments are joined
//! with a newline.

use serde_json::Value;

use super::blocks;

/// Most attachments on one message, as Slack allows.
pub(crate) const MAX_ATTACHMENTS: usize = 100;

/// Why `attachments` gave no text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AttachmentsError {
    /// Not a JSON array of objects (or an attachment's `fields` or `blocks` malformed).
    Malformed,
    /// More than [`MAX_ATTACHMENTS`].
    TooMany,
}

/// The text of `attachments`, a JSON array: empty when no attachment has any.
pub(crate) fn text_of(attachments: &Value) -> Result<String, AttachmentsError> {
    let attachments = attachments.as_array().ok_or(AttachmentsError::Malformed)?;
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(AttachmentsError::TooMany);
    }
    let mut lines: Vec<String> = Vec::new();
    for attachment in attachments {
        let attachment = attachment.as_object().ok_or(AttachmentsError::Malformed)?;
        let field = |key: &str| {
            attachment
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
        };
        let mut parts: Vec<String> = Vec::new();
        parts.extend(field("pretext").map(str::to_string));
        parts.extend(field("author_name").map(str::to_string));
        match (field("title"), field("title_link")) {
            (Some(title), Some(link)) => parts.push(format!("<{link}|{title}>")),
            (Some(title), None) => parts.push(title.to_string()),
            _ => {}
        }
        parts.extend(field("text").map(str::to_string));
        match attachment.get("fields") {
            None | Some(Value::Null) => {}
            Some(Value::Array(fields)) => {
                for f in fields {
                    let f = f.as_object().ok_or(AttachmentsError::Malformed)?;
                    let s = |key: &str| {
                        f.get(key)
                            .and_then(Value::as_str)
                            .filter(|s| !s.trim().is_empty())
                    };
                    match (s("title"), s("value")) {
                        (Some(title), Some(value)) => parts.push(format!("{title}: {value}")),
                        (Some(one), None) | (None, Some(one)) => parts.push(one.to_string()),
                        (None, None) => {}
                    }
                }
            }
            Some(_) => return Err(AttachmentsError::Malformed),
        }
        match attachment.get("blocks") {
            None | Some(Value::Null) => {}
            Some(b) => {
                let text = blocks::text_of(b).map_err(|_| AttachmentsError::Malformed)?;
                if !text.is_empty() {
                    parts.push(text);
                }
            }
        }
        parts.extend(field("footer").map(str::to_string));
        if parts.is_empty() {
            parts.extend(field("fallback").map(str::to_string));
        }
        if !parts.is_empty() {
            lines.push(parts.join("\n"));
        }
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alert_attachment_reads_as_slack_draws_it() {
        // The shape Prometheus Alertmanager's Slack receiver sends, with no `text` beside it.
        let attachments = json!([{
            "color": "danger",
            "fallback": "[FIRING:1] HighLatency api",
            "pretext": "Production",
            "author_name": "alertmanager",
            "title": "[FIRING:1] HighLatency api",
            "title_link": "http://alerts.example/#/alerts?receiver=ops",
            "text": "p99 above 250 ms for 10 minutes",
            "fields": [
                {"title": "severity", "value": "page", "short": true},
                {"title": "", "value": "runbook: http://wiki/latency"},
                {"title": "empty"}
            ],
            "footer": "eu-west-1",
            "ts": 1795629551,
            "image_url": "http://graph.example/p99.png"
        }]);
        assert_eq!(
            text_of(&attachments).unwrap(),
            "Production\nalertmanager\n\
             <http://alerts.example/#/alerts?receiver=ops|[FIRING:1] HighLatency api>\n\
             p99 above 250 ms for 10 minutes\nseverity: page\nrunbook: http://wiki/latency\n\
             empty\neu-west-1"
        );
    }

    #[test]
    fn fallback_only_when_nothing_else_reads_and_blocks_count() {
        let attachments = json!([
            {"fallback": "build 41 passed", "color": "good", "image_url": "http://x/y.png"},
            {"color": "#ff0000"},
            {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*build 42* failed"}}],
             "fallback": "build 42 failed"}
        ]);
        assert_eq!(
            text_of(&attachments).unwrap(),
            "build 41 passed\n*build 42* failed"
        );
        assert_eq!(text_of(&json!([])).unwrap(), "");
        assert_eq!(text_of(&json!([{"color": "good"}])).unwrap(), "");
    }

    #[test]
    fn malformed_or_too_many_attachments_are_refused() {
        for bad in [
            json!({}),
            json!("text"),
            json!([1]),
            json!([{"fields": "severity"}]),
            json!([{"fields": ["severity"]}]),
            json!([{"blocks": {"type": "section"}}]),
        ] {
            assert_eq!(text_of(&bad), Err(AttachmentsError::Malformed), "{bad}");
        }
        let many = Value::Array(vec![json!({"text": "x"}); MAX_ATTACHMENTS + 1]);
        assert_eq!(text_of(&many), Err(AttachmentsError::TooMany));
        let most = Value::Array(vec![json!({"text": "x"}); MAX_ATTACHMENTS]);
        assert_eq!(text_of(&most).unwrap().lines().count(), MAX_ATTACHMENTS);
    }
}
