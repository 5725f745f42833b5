//! What a posted message is stored with, from what Slack lets a poster send: `text`,
//! `blocks` and `attachments`. `chat.postMessage`, `chat.update`, `chat.postEphemeral` and
//! incoming webhooks all compose it here, so a bot's message reads the same whichever way it
//! came.
//!
//! The blocks and attachments are kept as given (checked, then stored as compact JSON), and
//! clients get them back in history and live events. The message's `text` also holds their
//! text, for notifications, search and clients that draw only text. Slack treats `text` as
//! the plain version of `blocks`, so the text is `text`, or the text of `blocks` when there
//! is none ([`super::blocks`]). Attachments are drawn below the message's text in Slack, not
//! instead of it, so their text ([`super::attachments`]) follows, on a line of its own.

use std::borrow::Cow;

use serde_json::Value;
use shared::protocol::RichContent;

use super::attachments::{self, AttachmentsError};
use super::blocks;

/// Longest message text in characters, as in Slack.
pub const MAX_TEXT_CHARS: usize = 40_000;
/// Most blocks in one message, as in Slack.
pub const MAX_BLOCKS: usize = 50;
/// Most bytes of a message's blocks and attachments together, as stored (compact JSON).
pub const MAX_RICH_BYTES: usize = 256 * 1024;

/// Why a message has no text to store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ContentError {
    /// Neither `text`, nor `blocks`, nor `attachments` gave any.
    NoText,
    /// `blocks` is not a JSON array of block objects, or has more than [`MAX_BLOCKS`].
    InvalidBlocks,
    /// `attachments` is not a JSON array of attachment objects.
    InvalidAttachments,
    /// More than [`attachments::MAX_ATTACHMENTS`] attachments.
    TooManyAttachments,
    /// The text is longer than [`MAX_TEXT_CHARS`], or the blocks and attachments than
    /// [`MAX_RICH_BYTES`].
    TooLong,
}

/// What a poster sent; each part is `None` when absent (or empty).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Parts<'a> {
    pub text: Option<&'a str>,
    pub blocks: Option<Part<'a>>,
    pub attachments: Option<Part<'a>>,
}

/// `blocks` or `attachments`: JSON text (a Web API parameter, or what the store holds) or a
/// parsed value (a webhook's JSON body).
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

/// A message as it is stored: its text, and its blocks and attachments when it has any (an
/// empty array is none).
#[derive(Debug)]
pub(crate) struct Composed<'a> {
    pub text: Cow<'a, str>,
    pub rich: Option<Box<RichContent>>,
}

/// Composes a message: its text is `text` as given (spaces too), else the text of `blocks`,
/// then the text of `attachments` on its own line; text taken from blocks or attachments
/// must hold more than spaces. Blocks and attachments are checked whenever given.
pub(crate) fn compose<'a>(parts: Parts<'a>) -> Result<Composed<'a>, ContentError> {
    let mut rich = RichContent::default();
    let blocks = match parts.blocks {
        Some(b) => {
            let value = b.parse().map_err(|()| ContentError::InvalidBlocks)?;
            let text = blocks::text_of(&value).map_err(|_| ContentError::InvalidBlocks)?;
            let count = value.as_array().map_or(0, Vec::len);
            if count > MAX_BLOCKS {
                return Err(ContentError::InvalidBlocks);
            }
            if count > 0 {
                rich.blocks = Some(value.to_string());
            }
            Some(text)
        }
        None => None,
    };
    let mut text: Cow<'a, str> = match (parts.text, blocks) {
        (Some(text), _) => Cow::Borrowed(text),
        (None, Some(text)) if !text.trim().is_empty() => Cow::Owned(text),
        (None, _) => Cow::Borrowed(""),
    };
    if let Some(a) = parts.attachments {
        let value = a.parse().map_err(|()| ContentError::InvalidAttachments)?;
        let more = attachments::text_of(&value).map_err(|e| match e {
            AttachmentsError::Malformed => ContentError::InvalidAttachments,
            AttachmentsError::TooMany => ContentError::TooManyAttachments,
        })?;
        if value.as_array().is_some_and(|a| !a.is_empty()) {
            rich.attachments = Some(value.to_string());
        }
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
    let rich_bytes = rich.blocks.as_ref().map_or(0, String::len)
        + rich.attachments.as_ref().map_or(0, String::len);
    if text.chars().count() > MAX_TEXT_CHARS || rich_bytes > MAX_RICH_BYTES {
        return Err(ContentError::TooLong);
    }
    Ok(Composed {
        text,
        rich: rich.boxed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The composed text, or the error's name.
    fn text(text: Option<&str>, blocks: Option<&str>, attachments: Option<&str>) -> String {
        compose(Parts {
            text,
            blocks: blocks.map(Part::Json),
            attachments: attachments.map(Part::Json),
        })
        .map(|c| c.text.into_owned())
        .unwrap_or_else(|e| format!("{e:?}"))
    }

    #[test]
    fn text_then_blocks_then_attachments() {
        let blocks = r#"[{"type":"section","text":{"type":"mrkdwn","text":"from blocks"}}]"#;
        let attachments = r#"[{"title":"Build 7","text":"failed"}]"#;
        assert_eq!(text(Some("hi"), Some(blocks), None), "hi");
        assert_eq!(text(None, Some(blocks), None), "from blocks");
        assert_eq!(text(None, None, Some(attachments)), "Build 7\nfailed");
        assert_eq!(
            text(Some("hi"), Some(blocks), Some(attachments)),
            "hi\nBuild 7\nfailed"
        );
        assert_eq!(
            text(None, Some(blocks), Some(attachments)),
            "from blocks\nBuild 7\nfailed"
        );
        // Text as given is kept as is, spaces too; an attachment with no text adds nothing.
        assert_eq!(text(Some("  "), None, Some(r#"[{"color":"good"}]"#)), "  ");
    }

    #[test]
    fn blocks_and_attachments_are_kept_as_compact_json() {
        let c = compose(Parts {
            text: Some("hi"),
            blocks: Some(Part::Json(r#"[ {"type": "divider"} ]"#)),
            attachments: Some(Part::Json(r#"[{"color": "good", "fallback": "ok"}]"#)),
        })
        .unwrap();
        let rich = c.rich.expect("kept");
        assert_eq!(rich.blocks.as_deref(), Some(r#"[{"type":"divider"}]"#));
        assert_eq!(
            rich.attachments.as_deref(),
            Some(r#"[{"color":"good","fallback":"ok"}]"#)
        );
        // Empty arrays are none (what `chat.update` uses to remove them).
        let c = compose(Parts {
            text: Some("hi"),
            blocks: Some(Part::Json("[]")),
            attachments: Some(Part::Json("[]")),
        })
        .unwrap();
        assert!(c.rich.is_none());
        assert!(compose(Parts {
            text: Some("plain"),
            ..Parts::default()
        })
        .unwrap()
        .rich
        .is_none());
    }

    #[test]
    fn nothing_to_read_and_bad_parts_are_named() {
        assert_eq!(text(None, None, None), "NoText");
        assert_eq!(text(None, Some(r#"[{"type":"divider"}]"#), None), "NoText");
        let blank = r#"[{"type":"section","text":{"type":"plain_text","text":"  "}}]"#;
        assert_eq!(text(None, Some(blank), None), "NoText");
        assert_eq!(text(None, None, Some(r#"[{"color":"good"}]"#)), "NoText");
        assert_eq!(text(None, Some("{"), None), "InvalidBlocks");
        // Blocks are kept, so they are checked beside text too.
        assert_eq!(text(Some("hi"), Some("{"), None), "InvalidBlocks");
        let many_blocks = serde_json::to_string(&vec![json!({"type": "divider"}); 51]).unwrap();
        assert_eq!(text(Some("hi"), Some(&many_blocks), None), "InvalidBlocks");
        assert_eq!(text(Some("hi"), None, Some("[1]")), "InvalidAttachments");
        assert_eq!(
            text(Some("hi"), None, Some("not json")),
            "InvalidAttachments"
        );
        let many = serde_json::to_string(&vec![json!({"text": "x"}); 101]).unwrap();
        assert_eq!(text(Some("hi"), None, Some(&many)), "TooManyAttachments");
        let long = "x".repeat(MAX_TEXT_CHARS);
        assert_eq!(text(Some(&long), None, None), long);
        let attachment = serde_json::to_string(&json!([{ "text": "y" }])).unwrap();
        assert_eq!(text(Some(&long), None, Some(&attachment)), "TooLong");
        let big = "z".repeat(2_000);
        let heavy: Vec<Value> = (0..50)
            .map(|_| json!({"type": "image", "image_url": big, "alt_text": big, "title": {"type": "plain_text", "text": big}}))
            .collect();
        let heavy = serde_json::to_string(&heavy).unwrap();
        assert!(heavy.len() > MAX_RICH_BYTES);
        assert_eq!(text(Some("hi"), Some(&heavy), None), "TooLong");
    }

    #[test]
    fn a_webhook_body_s_values_read_as_parameters_do() {
        let body = json!({"attachments": [{"fallback": "disk full"}]});
        let c = compose(Parts {
            text: None,
            blocks: None,
            attachments: body.get("attachments").map(Part::Value),
        })
        .unwrap();
        assert_eq!(c.text, "disk full");
        assert_eq!(
            c.rich.unwrap().attachments.as_deref(),
            Some(r#"[{"fallback":"disk full"}]"#)
        );
    }
}
