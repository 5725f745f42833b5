//! The text a posted message is stored with, from what Slack lets a poster send: `text`,
//! `blocks` and `attachments`. `chat.postMessage`, `chat.update`, `chat.postEphemeral` and
//! incoming webhooks all compose it here, so a bot's message reads the same whichever way it
//! came.
//!
//! Switchboard stores a message's text only. Slack treats `text` as the plain version of
//! `blocks` (what a notification shows), so the text is `text`, or the text of `blocks` when
//! there is none ([`super::blocks`]). Attachments are drawn below the message's text in Slack,
//! not instead of it, so their text ([`super::attachments`]) follows, on a line of its own.

use std::borrow::Cow;

use serde_json::Value;

use super::attachments::{self, AttachmentsError};
use super::blocks;

/// Longest message text in characters, as in Slack.
pub const MAX_TEXT_CHARS: usize = 40_000;

/// Why a message has no text to store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ContentError {
    /// Neither `text`, nor `blocks`, nor `attachments` gave any.
    NoText,
    /// `blocks` (read only without `text`) is not a JSON array of block objects.
    InvalidBlocks,
    /// `attachments` is not a JSON array of attachment objects.
    InvalidAttachments,
    /// More than [`attachments::MAX_ATTACHMENTS`] attachments.
    TooManyAttachments,
    /// The text is longer than [`MAX_TEXT_CHARS`].
    TooLong,
}

/// What a poster sent; each part is `None` when absent (or empty).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Parts<'a> {
    pub text: Option<&'a str>,
    pub blocks: Option<Part<'a>>,
    pub attachments: Option<Part<'a>>,
}

/// `blocks` or `attachments`: JSON text (a Web API parameter) or a parsed value (a webhook's
/// JSON body).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part<'a> {
    Json(&'a str),
    Value(&'a Value),
}

impl<'a> Part<'a> {
    fn parse(self) -> Result<Cow<'a, Value>, ()> {
        match self {
            Part::Json(raw) => serde_json::from_str(raw).map(Cow::Owned).map_err(|_| ()),
            Part::Value(v) => Ok(Cow::Borrowed(v)),
        }
    }
}

/// The message's text: `text` as given (spaces too), else the text of `blocks`, then the text
/// of `attachments` on its own line. Text taken from blocks or attachments must hold more than
/// spaces.
pub(crate) fn message_text<'a>(parts: Parts<'a>) -> Result<Cow<'a, str>, ContentError> {
    let mut text: Cow<'a, str> = match (parts.text, parts.blocks) {
        (Some(text), _) => Cow::Borrowed(text),
        (None, Some(b)) => {
            let value = b.parse().map_err(|()| ContentError::InvalidBlocks)?;
            let text = blocks::text_of(&value).map_err(|_| ContentError::InvalidBlocks)?;
            if text.trim().is_empty() {
                Cow::Borrowed("")
            } else {
                Cow::Owned(text)
            }
        }
        (None, None) => Cow::Borrowed(""),
    };
    if let Some(a) = parts.attachments {
        let value = a.parse().map_err(|()| ContentError::InvalidAttachments)?;
        let more = attachments::text_of(&value).map_err(|e| match e {
            AttachmentsError::Malformed => ContentError::InvalidAttachments,
            AttachmentsError::TooMany => ContentError::TooManyAttachments,
        })?;
        if !more.is_empty() {
            text = if text.is_empty() {
                Cow::Owned(more)
            } else {
                Cow::Owned(format!("{text}\n{more}"))
            };
        }
    }
    if text.is_empty() {
        return Err(ContentError::NoText);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ContentError::TooLong);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compose(text: Option<&str>, blocks: Option<&str>, attachments: Option<&str>) -> String {
        message_text(Parts {
            text,
            blocks: blocks.map(Part::Json),
            attachments: attachments.map(Part::Json),
        })
        .map(Cow::into_owned)
        .unwrap_or_else(|e| format!("{e:?}"))
    }

    #[test]
    fn text_then_blocks_then_attachments() {
        let blocks = r#"[{"type":"section","text":{"type":"mrkdwn","text":"from blocks"}}]"#;
        let attachments = r#"[{"title":"Build 7","text":"failed"}]"#;
        assert_eq!(compose(Some("hi"), Some(blocks), None), "hi");
        assert_eq!(compose(None, Some(blocks), None), "from blocks");
        assert_eq!(compose(None, None, Some(attachments)), "Build 7\nfailed");
        assert_eq!(
            compose(Some("hi"), Some(blocks), Some(attachments)),
            "hi\nBuild 7\nfailed"
        );
        assert_eq!(
            compose(None, Some(blocks), Some(attachments)),
            "from blocks\nBuild 7\nfailed"
        );
        // Text as given is kept as is, spaces too; an attachment with no text adds nothing.
        assert_eq!(
            compose(Some("  "), None, Some(r#"[{"color":"good"}]"#)),
            "  "
        );
    }

    #[test]
    fn nothing_to_read_and_bad_parts_are_named() {
        assert_eq!(compose(None, None, None), "NoText");
        assert_eq!(
            compose(None, Some(r#"[{"type":"divider"}]"#), None),
            "NoText"
        );
        let blank = r#"[{"type":"section","text":{"type":"plain_text","text":"  "}}]"#;
        assert_eq!(compose(None, Some(blank), None), "NoText");
        assert_eq!(compose(None, None, Some(r#"[{"color":"good"}]"#)), "NoText");
        assert_eq!(compose(None, Some("{"), None), "InvalidBlocks");
        // Blocks beside text are not read (they only repeat it), attachments always are.
        assert_eq!(compose(Some("hi"), Some("{"), None), "hi");
        assert_eq!(compose(Some("hi"), None, Some("[1]")), "InvalidAttachments");
        assert_eq!(
            compose(Some("hi"), None, Some("not json")),
            "InvalidAttachments"
        );
        let many = serde_json::to_string(&vec![json!({"text": "x"}); 101]).unwrap();
        assert_eq!(compose(Some("hi"), None, Some(&many)), "TooManyAttachments");
        let long = "x".repeat(MAX_TEXT_CHARS);
        assert_eq!(compose(Some(&long), None, None), long);
        let attachment = serde_json::to_string(&json!([{ "text": "y" }])).unwrap();
        assert_eq!(compose(Some(&long), None, Some(&attachment)), "TooLong");
    }

    #[test]
    fn a_webhook_body_s_values_read_as_parameters_do() {
        let body = json!({"attachments": [{"fallback": "disk full"}]});
        let text = message_text(Parts {
            text: None,
            blocks: None,
            attachments: body.get("attachments").map(Part::Value),
        })
        .unwrap();
        assert_eq!(text, "disk full");
    }
}
