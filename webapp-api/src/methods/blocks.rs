//! The text of Slack Block Kit `blocks`, for a message posted with blocks and no `text`.
//!
//! The blocks are kept and given back to clients ([`super::content`]); this text is the
//! message's `text`, for notifications, search and clients that cannot draw blocks:
//! - `header`: its text; `section`: its text, then each of its `fields`; `context`: each text
//!   element (images are left out);
//! - `rich_text`: its sections, lists (an item per line), quotes and preformatted parts, with
//!   text as written (styles dropped), links as their text or URL, mentions as Slack's
//!   `<@U…>`, `<#C…>`, `<!subteam^…>`, `<!here>` and emoji as `:name:`;
//! - every other block (`image`, `divider`, `actions`, `input`, `file`, `video`, …) is left
//!   out.
//!
//! Blocks are joined with a newline.

use serde_json::Value;

/// Why `blocks` gave no text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BlocksError {
    /// Not a JSON array of objects.
    Malformed,
}

/// The text of `raw`, the `blocks` parameter (JSON text): empty when no block has any.
#[cfg(test)]
fn fallback_text(raw: &str) -> Result<String, BlocksError> {
    let blocks: Value = serde_json::from_str(raw).map_err(|_| BlocksError::Malformed)?;
    text_of(&blocks)
}

/// The text of `blocks`, a JSON array of blocks: empty when no block has any.
pub(crate) fn text_of(blocks: &Value) -> Result<String, BlocksError> {
    let blocks = blocks.as_array().ok_or(BlocksError::Malformed)?;
    let mut lines: Vec<String> = Vec::new();
    for block in blocks {
        let block = block.as_object().ok_or(BlocksError::Malformed)?;
        let mut parts: Vec<String> = Vec::new();
        match block.get("type").and_then(Value::as_str) {
            Some("header") => parts.extend(text_object(block.get("text"))),
            Some("section") => {
                parts.extend(text_object(block.get("text")));
                for field in array(block.get("fields")) {
                    parts.extend(text_object(Some(field)));
                }
            }
            Some("context") => {
                for element in array(block.get("elements")) {
                    parts.extend(text_object(Some(element)));
                }
            }
            Some("rich_text") => {
                for element in array(block.get("elements")) {
                    rich_text_element(element, &mut parts);
                }
            }
            _ => {}
        }
        let text = parts.join("\n");
        if !text.trim().is_empty() {
            lines.push(text);
        }
    }
    Ok(lines.join("\n"))
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// A composition text object (`plain_text` or `mrkdwn`): its `text`.
fn text_object(v: Option<&Value>) -> Option<String> {
    let v = v?;
    match str_field(v, "type") {
        Some("plain_text" | "mrkdwn") => str_field(v, "text")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        _ => None,
    }
}

/// One element of a `rich_text` block, as lines pushed to `out`.
fn rich_text_element(element: &Value, out: &mut Vec<String>) {
    match str_field(element, "type") {
        Some("rich_text_section" | "rich_text_preformatted" | "rich_text_quote") => {
            let line = inline(array(element.get("elements")));
            if !line.is_empty() {
                out.push(line);
            }
        }
        Some("rich_text_list") => {
            for item in array(element.get("elements")) {
                rich_text_element(item, out);
            }
        }
        _ => {}
    }
}

/// The inline elements of a rich text section, as one string.
fn inline(elements: &[Value]) -> String {
    let mut s = String::new();
    for e in elements {
        match str_field(e, "type") {
            Some("text") => s.push_str(str_field(e, "text").unwrap_or_default()),
            Some("link") => {
                let shown = str_field(e, "text")
                    .filter(|t| !t.is_empty())
                    .or_else(|| str_field(e, "url"));
                s.push_str(shown.unwrap_or_default());
            }
            Some("user") => mention(&mut s, "@", str_field(e, "user_id")),
            Some("channel") => mention(&mut s, "#", str_field(e, "channel_id")),
            Some("usergroup") => mention(&mut s, "!subteam^", str_field(e, "usergroup_id")),
            Some("broadcast") => mention(&mut s, "!", str_field(e, "range")),
            Some("emoji") => {
                if let Some(name) = str_field(e, "name") {
                    s.push(':');
                    s.push_str(name);
                    s.push(':');
                }
            }
            _ => {}
        }
    }
    s
}

fn mention(s: &mut String, sigil: &str, id: Option<&str>) {
    if let Some(id) = id {
        s.push('<');
        s.push_str(sigil);
        s.push_str(id);
        s.push('>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_comes_from_text_blocks_only() {
        let blocks = r#"[
            {"type": "header", "text": {"type": "plain_text", "text": "Deploy"}},
            {"type": "divider"},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*prod* is green"},
             "fields": [{"type": "mrkdwn", "text": "a"}, {"type": "plain_text", "text": "b"}],
             "accessory": {"type": "image", "image_url": "https://x/y.png", "alt_text": "y"}},
            {"type": "image", "image_url": "https://x/z.png", "alt_text": "z"},
            {"type": "context", "elements": [
                {"type": "image", "image_url": "https://x/i.png", "alt_text": "i"},
                {"type": "mrkdwn", "text": "by ops"}]},
            {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Ack"}}]},
            {"type": "rich_text", "elements": [
                {"type": "rich_text_section", "elements": [
                    {"type": "text", "text": "hi ", "style": {"bold": true}},
                    {"type": "user", "user_id": "UBOB"},
                    {"type": "text", "text": " see "},
                    {"type": "link", "url": "https://example.com"},
                    {"type": "text", "text": " in "},
                    {"type": "channel", "channel_id": "CGENERAL"},
                    {"type": "emoji", "name": "tada"},
                    {"type": "broadcast", "range": "here"}]},
                {"type": "rich_text_list", "style": "bullet", "elements": [
                    {"type": "rich_text_section", "elements": [{"type": "text", "text": "one"}]},
                    {"type": "rich_text_section", "elements": [{"type": "link", "url": "u", "text": "two"}]}]},
                {"type": "rich_text_preformatted", "elements": [{"type": "text", "text": "code"}]}]}
        ]"#;
        assert_eq!(
            fallback_text(blocks).unwrap(),
            "Deploy\n*prod* is green\na\nb\nby ops\n\
             hi <@UBOB> see https://example.com in <#CGENERAL>:tada:<!here>\none\ntwo\ncode"
        );
    }

    #[test]
    fn blocks_without_text_give_none_and_garbage_is_refused() {
        assert_eq!(
            fallback_text(r#"[{"type":"divider"},{"type":"image"}]"#).unwrap(),
            ""
        );
        assert_eq!(fallback_text("[]").unwrap(), "");
        for bad in ["", "{}", "[1]", "not json", r#"{"type":"section"}"#] {
            assert_eq!(fallback_text(bad), Err(BlocksError::Malformed), "{bad}");
        }
    }
}
