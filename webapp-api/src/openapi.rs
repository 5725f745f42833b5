//! The OpenAPI 3.0 description of the Web API, generated from the table in this file: each
//! method's summary, parameters and the Slack errors it can answer, plus incoming webhooks,
//! `/health` and `/metrics`. Served at `GET /api/openapi.json` (and `/openapi.json`) and
//! checked in as `webapp-api/openapi.json`; a test keeps the two equal and checks that every
//! served method is described. After changing the table, regenerate the file with
//! `SWITCHBOARD_WRITE_OPENAPI=1 cargo test -p switchboard-webapp-api openapi`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::ratelimit;

/// A parameter's type as clients send it (form values are strings; JSON bodies may use the
/// native type).
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// A Slack timestamp, `"1700000000.000100"`.
    Ts,
    /// A comma-separated list of ids.
    List,
    /// A JSON object (or its text, in a form body).
    Object,
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

/// One parameter of a method.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub description: &'static str,
}

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No token needed.
    None,
    /// A user (or bot) token.
    User,
    /// A user token with admin rights in its workspace.
    Admin,
    /// A service token minted by a node of the cluster.
    Service,
}

/// One Web API method.
#[derive(Clone, Copy, Debug)]
pub struct MethodDoc {
    pub name: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    pub params: &'static [Param],
    /// The errors particular to the method (those every method of its `auth` can answer are
    /// added by the generator).
    pub errors: &'static [&'static str],
}

const fn p(name: &'static str, ty: Ty, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        description,
    }
}

const fn req(name: &'static str, ty: Ty, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: true,
        description,
    }
}

/// What `conversations.setTopic` and `conversations.setPurpose` may answer.
const SET_TEXT_ERRORS: &[&str] = &[
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "too_long",
    "invalid_arguments",
    "service_unavailable",
];

const CHANNEL: Param = req(
    "channel",
    Ty::Str,
    "conversation id (`C…`), or a channel name (`general` or `#general`)",
);
const CURSOR: Param = p(
    "cursor",
    Ty::Str,
    "`response_metadata.next_cursor` of the previous page",
);
const TYPES: Param = p(
    "types",
    Ty::Str,
    "comma-separated `public_channel`, `private_channel`, `mpim` (group direct messages), `im` (1:1 direct messages); default: public and private channels. Direct messages are listed only for `im` / `mpim`",
);
const EXCLUDE_ARCHIVED: Param = p("exclude_archived", Ty::Bool, "leave archived channels out");

const fn limit(description: &'static str) -> Param {
    p("limit", Ty::Int, description)
}

/// Every method of the Web API, in the order of `methods::METHODS`, then the ones served by
/// other modules.
pub const METHOD_DOCS: &[MethodDoc] = &[
    MethodDoc {
        name: "api.test",
        summary: "Echoes its arguments (all but `token`) as `args`; needs no token.",
        auth: Auth::None,
        params: &[],
        errors: &[],
    },
    MethodDoc {
        name: "auth.test",
        summary: "Who the token speaks for: `user`, `user_id`, `team`, `team_id`, `url`, `bot_id`.",
        auth: Auth::User,
        params: &[],
        errors: &[],
    },
    MethodDoc {
        name: "rtm.connect",
        summary: "A gateway WebSocket `url` (carrying the token) for real-time events, with `self` and `team`.",
        auth: Auth::User,
        params: &[p(
            "presence_sub",
            Ty::Bool,
            "Slack's option: no `presence_change` until the client sends `presence_sub`",
        )],
        errors: &["service_unavailable"],
    },
    MethodDoc {
        name: "rtm.start",
        summary: "The same as `rtm.connect` (as Slack's `rtm.start` now answers): a gateway WebSocket `url`, `self` and `team`; no boot data (the WebSocket `hello` carries Flannel's).",
        auth: Auth::User,
        params: &[p(
            "presence_sub",
            Ty::Bool,
            "Slack's option: no `presence_change` until the client sends `presence_sub`",
        )],
        errors: &["service_unavailable"],
    },
    MethodDoc {
        name: "apps.connections.open",
        summary: "A gateway WebSocket `url` (carrying the token) for a Socket Mode session: Slack's Socket Mode framing (`hello`, `events_api` envelopes the client acknowledges with their `envelope_id`, `disconnect`), as Bolt apps and the SDKs' Socket Mode clients speak it. The app token is the bot's own token; the session receives the events of the bot's channels.",
        auth: Auth::User,
        params: &[],
        errors: &["service_unavailable"],
    },
    MethodDoc {
        name: "auth.revoke",
        summary: "Revokes the calling token: every method then answers `token_revoked` (the node that revoked it at once, the others within `webapp.records_poll_ms`), gateways refuse new sessions with it, and its live sessions hear Slack's `tokens_revoked` (with `token_ids`) and close with code 4005. The user's other tokens stay. With `test`, nothing is revoked and the answer says `revoked: false`.",
        auth: Auth::User,
        params: &[p("test", Ty::Bool, "only try: revoke nothing")],
        errors: &[],
    },
    MethodDoc {
        name: "apps.eventSubscriptions.set",
        summary: "The caller's app takes its events over HTTP, as Slack's Events API sends them: each event a Socket Mode session would get is POSTed to `request_url` as its `event_callback` payload, signed (`X-Slack-Request-Timestamp`, `X-Slack-Signature`: `v0=` and the hex HMAC-SHA256 of `v0:<timestamp>:<body>` under the signing secret). A `2xx` answer within 2.75 s (Slack's three seconds, less a margin) takes the event; otherwise it is sent again at once, after a minute and after five (`X-Slack-Retry-Num`, `X-Slack-Retry-Reason`), unless the answer said `X-Slack-No-Retry: 1`. A URL that fails more than 95 % of at least ten tries for `webapp.events_failure_window_secs` (an hour, as Slack) is disabled: no more events until it is set again, which clears `disabled`; so is a URL set while `webapp.private_request_urls` was on whose address is not public once it is off. The URL must first answer Slack's `url_verification` challenge, and be a public address (not loopback, a private network, link-local and the like; a name is called only at its public addresses) unless `webapp.private_request_urls` is on. Answers `request_url`, `signing_secret` (made once, kept when the URL changes) and `verification_token`.",
        auth: Auth::User,
        params: &[req("request_url", Ty::Str, "an `http` or `https` URL of at most 2,000 bytes")],
        errors: &["missing_argument", "invalid_url", "url_verification_failed"],
    },
    MethodDoc {
        name: "apps.eventSubscriptions.info",
        summary: "The caller's app's request URL (empty when none is set), signing secret and verification token: made at the first ask and kept, so that an app knows its secret before it sets a URL. `disabled` is true when the Web API stopped sending events because the URL kept failing them, with `disabled_at` (a Slack timestamp) and `disabled_reason`; setting the URL again clears it.",
        auth: Auth::User,
        params: &[],
        errors: &[],
    },
    MethodDoc {
        name: "apps.eventSubscriptions.delete",
        summary: "The caller's app no longer takes its events over HTTP; its secrets stay.",
        auth: Auth::User,
        params: &[],
        errors: &["no_request_url"],
    },
    MethodDoc {
        name: "team.info",
        summary: "The caller's workspace as Slack's team object: `id`, `name`, `domain` (the workspace's name), `url`, `icon`.",
        auth: Auth::User,
        params: &[p(
            "team",
            Ty::Str,
            "a workspace id (`T…`); only the caller's own is answered, any other is `team_not_found`",
        )],
        errors: &["team_not_found"],
    },
    MethodDoc {
        name: "conversations.create",
        summary: "Creates a channel with the caller as its first member.",
        auth: Auth::User,
        params: &[
            req("name", Ty::Str, "lower-case letters, digits, `-` and `_`; at most 80 characters"),
            p("is_private", Ty::Bool, "create a private channel"),
        ],
        errors: &[
            "name_taken",
            "invalid_name_required",
            "invalid_name_specials",
            "invalid_name_maxlength",
        ],
    },
    MethodDoc {
        name: "conversations.join",
        summary: "Joins a public channel; joining again answers `ok` with the warning `already_in_channel`.",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &["channel_not_found", "method_not_supported_for_channel_type", "is_archived"],
    },
    MethodDoc {
        name: "conversations.leave",
        summary: "Leaves a channel (not a direct message).",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "method_not_supported_for_channel_type",
            "cant_leave_general",
        ],
    },
    MethodDoc {
        name: "conversations.kick",
        summary: "Removes a user from a channel, the way `conversations.leave` takes the caller out (their sessions stop receiving it). Workspace admins may remove from any channel they can see; other members only from a private channel they are in (`restricted_action` on a public one). Not from direct messages or #general, not oneself.",
        auth: Auth::User,
        params: &[CHANNEL, req("user", Ty::Str, "the member to remove (`U…`)")],
        errors: &[
            "channel_not_found",
            "user_not_found",
            "method_not_supported_for_channel_type",
            "cant_kick_self",
            "cant_kick_from_general",
            "restricted_action",
            "not_in_channel",
        ],
    },
    MethodDoc {
        name: "conversations.list",
        summary: "The workspace's channels the caller may see, paged by cursor. A call reads a bounded part of the workspace, so a page may hold fewer than `limit` channels, even none, with a `next_cursor` to continue; the listing ends when `next_cursor` is empty.",
        auth: Auth::User,
        params: &[CURSOR, limit("page size at most (default 100, at most 1000)"), TYPES, EXCLUDE_ARCHIVED],
        errors: &["invalid_cursor", "invalid_limit", "invalid_types"],
    },
    MethodDoc {
        name: "conversations.info",
        summary: "One conversation. For a member, also its read position `last_read` (the `ts` of the entry it marked read, zeros before any) and `unread_count` / `unread_count_display`: the messages others posted to the channel since (thread replies sent to the channel too, not those deleted since; reactions, edits and pins are not messages), counted up to 1,000, and `mention_count` / `mention_count_display`: those that mention the member as they read now (its id, `<!channel>`, `<!here>`, `<!everyone>`, or an enabled user group it is in; in a DM or group DM every one).",
        auth: Auth::User,
        params: &[CHANNEL, p("include_num_members", Ty::Bool, "add `num_members`")],
        errors: &["channel_not_found"],
    },
    MethodDoc {
        name: "conversations.history",
        summary: "A conversation's messages, newest first, paged by cursor; messages carry `seq`.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            CURSOR,
            limit("page size (default 100, at most 1000)"),
            p("oldest", Ty::Ts, "only messages after this timestamp"),
            p("latest", Ty::Ts, "only messages before this timestamp"),
            p("inclusive", Ty::Bool, "include messages at exactly `oldest` or `latest`"),
            p("include_all_metadata", Ty::Bool, "give each message's app metadata (`metadata`), left out otherwise"),
        ],
        errors: &[
            "channel_not_found",
            "invalid_cursor",
            "invalid_limit",
            "invalid_ts_oldest",
            "invalid_ts_latest",
        ],
    },
    MethodDoc {
        name: "users.conversations",
        summary: "The conversations a user (the caller by default) is a member of, paged by cursor.",
        auth: Auth::User,
        params: &[
            CURSOR,
            limit("page size (default 100, at most 1000)"),
            TYPES,
            EXCLUDE_ARCHIVED,
            p("user", Ty::Str, "another user of the workspace (`U…`)"),
        ],
        errors: &["invalid_cursor", "invalid_limit", "invalid_types", "user_not_found"],
    },
    MethodDoc {
        name: "chat.postMessage",
        summary: "Posts a message; answers once the channel's owner stored it durably. Idempotent on `client_msg_id`.",
        auth: Auth::User,
        params: &[
            req("channel", Ty::Str, "conversation id (`C…`), a channel name (`general` or `#general`), or a user id (`U…`): the caller's DM with that user, opened if it was not"),
            p("text", Ty::Str, "the message, at most 40000 characters; required unless `blocks` or `attachments` give text"),
            p("blocks", Ty::Str, "Block Kit blocks (a JSON array of at most 50), kept and given back in history and live events; their text is the message's text when `text` is absent (header, section and its fields, context text, rich text; other blocks are left out)"),
            p("attachments", Ty::Str, "legacy attachments (a JSON array, at most 100), kept and given back in history and live events; their text also follows the message's text on lines of its own: pretext, author, title (`<title_link|title>`), text, fields as `title: value`, blocks' text, footer, and `fallback` when none of these has any"),
            p("client_msg_id", Ty::Str, "idempotency key, per channel: a retry (same user, text and thread) answers the stored message; the key reused by another user or for another text or thread answers `client_msg_id_conflict`"),
            p("thread_ts", Ty::Ts, "post as a reply in this message's thread"),
            p("reply_broadcast", Ty::Bool, "with `thread_ts`: the reply is also shown in the channel (its history and live events), as subtype `thread_broadcast`, with `root` (the thread's first message as it was then); ignored without `thread_ts`"),
            p("link_names", Ty::Bool, "Slack's `link_names`: `@handle` of an enabled user group becomes `<!subteam^S…|@handle>`, `@here`/`@channel`/`@everyone` become `<!here>`/`<!channel>`/`<!everyone>`"),
            p("username", Ty::Str, "a bot's own name for this message (1 to 80 characters), given back as `username` in history and live events and kept by edits; ignored on a person's token, as in Slack"),
            p("icon_emoji", Ty::Str, "a bot's own icon for this message, an emoji name (`:robot_face:`), given back as `icons.emoji`; ignored on a person's token"),
            p("icon_url", Ty::Str, "a bot's own icon for this message, an `http(s)` image URL, given back as `icons.image_48` (and 36, 72); `icon_emoji` wins when both are given; ignored on a person's token"),
            p("metadata", Ty::Str, "an app's metadata for the message (bot tokens only): a JSON object of exactly `event_type` (1 to 255 characters) and `event_payload` (an object), at most 8192 bytes; given back in live events, and in history with `include_all_metadata`"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_text",
            "invalid_blocks",
            "invalid_attachments",
            "too_many_attachments",
            "msg_too_long",
            "invalid_thread_ts",
            "thread_not_found",
            "invalid_arguments",
            "client_msg_id_conflict",
            "invalid_metadata_format",
            "invalid_metadata_schema",
            "metadata_too_large",
            "metadata_must_be_sent_from_app",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "chat.scheduleMessage",
        summary: "Schedules a message: checked now as `chat.postMessage` checks it, posted at `post_at` through the same path (within `webapp.scheduled_poll_ms`; a Web API that was down posts it when back). Answers `scheduled_message_id`, `post_at` and the `delayed_message`. If the poster has left the channel, the channel was archived or the thread deleted by then, it is not posted.",
        auth: Auth::User,
        params: &[
            req("channel", Ty::Str, "conversation id (`C…`), a channel name, or a user id (`U…`) for the caller's DM with that user"),
            req("post_at", Ty::Int, "when to post it: a Unix time in seconds (a fraction is dropped), in the future and at most 120 days ahead"),
            p("text", Ty::Str, "the message, as for `chat.postMessage`; required unless `blocks` or `attachments` give text"),
            p("blocks", Ty::Str, "Block Kit blocks, as for `chat.postMessage`"),
            p("attachments", Ty::Str, "legacy attachments, as for `chat.postMessage`"),
            p("thread_ts", Ty::Ts, "post as a reply in this message's thread"),
            p("reply_broadcast", Ty::Bool, "with `thread_ts`: the reply is also shown in the channel"),
            p("link_names", Ty::Bool, "Slack's `link_names`: `@handle` of an enabled user group becomes `<!subteam^S…|@handle>`, `@here`/`@channel`/`@everyone` become `<!here>`/`<!channel>`/`<!everyone>`"),
            p("username", Ty::Str, "a bot's own name for this message, as for `chat.postMessage`"),
            p("icon_emoji", Ty::Str, "a bot's own icon, as for `chat.postMessage`"),
            p("icon_url", Ty::Str, "a bot's own icon URL, as for `chat.postMessage`"),
            p("metadata", Ty::Str, "an app's metadata for the message, as for `chat.postMessage`"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "invalid_time",
            "time_in_past",
            "time_too_far",
            "restricted_too_many",
            "no_text",
            "invalid_blocks",
            "invalid_attachments",
            "too_many_attachments",
            "msg_too_long",
            "invalid_thread_ts",
            "thread_not_found",
            "invalid_arguments",
            "invalid_metadata_format",
            "invalid_metadata_schema",
            "metadata_too_large",
            "metadata_must_be_sent_from_app",
        ],
    },
    MethodDoc {
        name: "chat.scheduledMessages.list",
        summary: "The messages the caller scheduled that are still waiting, earliest first, each as `{id, channel_id, post_at, date_created, text}`.",
        auth: Auth::User,
        params: &[
            p("channel", Ty::Str, "only this conversation's"),
            p("oldest", Ty::Int, "only those due at or after this Unix time (seconds)"),
            p("latest", Ty::Int, "only those due at or before this Unix time (seconds)"),
            p("limit", Ty::Int, "page size (default 100, at most 1000)"),
            CURSOR,
        ],
        errors: &[
            "channel_not_found",
            "invalid_ts_oldest",
            "invalid_ts_latest",
            "invalid_limit",
            "invalid_cursor",
        ],
    },
    MethodDoc {
        name: "chat.deleteScheduledMessage",
        summary: "Takes back a message the caller scheduled, unless it is due within 60 seconds (or past due), as in Slack.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("scheduled_message_id", Ty::Str, "the id `chat.scheduleMessage` answered"),
        ],
        errors: &["channel_not_found", "invalid_scheduled_message_id"],
    },
    MethodDoc {
        name: "chat.meMessage",
        summary: "Posts a `/me` message (Slack's subtype `me_message`, kept by edits); answers `channel` and `ts` once it is durable.",
        auth: Auth::User,
        params: &[
            req("channel", Ty::Str, "conversation id (`C…`), a channel name, or a user id (`U…`): the caller's DM with that user"),
            p("text", Ty::Str, "the message, at most 40000 characters"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_text",
            "msg_too_long",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "chat.update",
        summary: "The author edits a message's text, also from outside the channel if it can still see it.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("ts", Ty::Ts, "the message"),
            p("text", Ty::Str, "the new text, at most 40000 characters; required unless `blocks` or `attachments` give text"),
            p("blocks", Ty::Str, "Block Kit blocks (a JSON array), as for `chat.postMessage`; absent: the message keeps its blocks, `[]`: it has none"),
            p("attachments", Ty::Str, "legacy attachments (a JSON array), as for `chat.postMessage`; absent: the message keeps its attachments, `[]`: it has none"),
            p("metadata", Ty::Str, "new app metadata, as for `chat.postMessage`; absent: the message keeps its metadata"),
            p("link_names", Ty::Bool, "Slack's `link_names`: `@handle` of an enabled user group becomes `<!subteam^S…|@handle>`, `@here`/`@channel`/`@everyone` become `<!here>`/`<!channel>`/`<!everyone>`"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "cant_update_message",
            "no_text",
            "invalid_blocks",
            "invalid_attachments",
            "too_many_attachments",
            "msg_too_long",
            "invalid_metadata_format",
            "invalid_metadata_schema",
            "metadata_too_large",
            "metadata_must_be_sent_from_app",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "chat.delete",
        summary: "The author (or a workspace admin) deletes a message, in the channel or not, as long as the caller can see the channel (a private one only its members).",
        auth: Auth::User,
        params: &[CHANNEL, req("ts", Ty::Ts, "the message")],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "cant_delete_message",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "chat.postEphemeral",
        summary: "A message only `user` sees, in a channel both are in (Slack's \"Only visible to you\"): not stored, sequenced or searchable; written to the user's connected sessions as an RTM `message` with `is_ephemeral: true` and no `seq`. Answers `message_ts`.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("user", Ty::Str, "who sees it; a member of the channel"),
            p("text", Ty::Str, "the message, at most 40000 characters; required unless `blocks` or `attachments` give text"),
            p("blocks", Ty::Str, "Block Kit blocks (a JSON array), written with the message, as for `chat.postMessage`"),
            p("attachments", Ty::Str, "legacy attachments (a JSON array), written with the message, as for `chat.postMessage`"),
            p("thread_ts", Ty::Ts, "show it in this message's thread"),
            p("username", Ty::Str, "a bot's own name for this message, as for `chat.postMessage`"),
            p("icon_emoji", Ty::Str, "a bot's own icon for this message, as for `chat.postMessage`"),
            p("icon_url", Ty::Str, "a bot's own icon for this message, as for `chat.postMessage`"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_text",
            "invalid_blocks",
            "invalid_attachments",
            "too_many_attachments",
            "msg_too_long",
            "invalid_thread_ts",
            "user_not_found",
            "user_not_in_channel",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "chat.getPermalink",
        summary: "A link to a message of a conversation the caller can read: `<base>/archives/<channel>/p<ts without the dot>` (with `?thread_ts=…&cid=…` for a reply), the base being `webapp.public_url` when set (the address behind a proxy), else the Web API as the request's `Host` names it.",
        auth: Auth::User,
        params: &[CHANNEL, req("message_ts", Ty::Ts, "the message")],
        errors: &["channel_not_found", "message_not_found", "invalid_arguments"],
    },
    MethodDoc {
        name: "conversations.replies",
        summary: "A thread: its parent and replies, oldest first, paged by cursor.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("ts", Ty::Ts, "the thread's parent message"),
            CURSOR,
            limit("page size (default 100, at most 1000)"),
            p("include_all_metadata", Ty::Bool, "give each message's app metadata (`metadata`), left out otherwise"),
        ],
        errors: &[
            "channel_not_found",
            "thread_not_found",
            "invalid_cursor",
            "invalid_limit",
            "invalid_arguments",
        ],
    },
    MethodDoc {
        name: "conversations.open",
        summary: "Finds or creates the direct message (1:1, or a group of up to 9 people, the caller included) between the caller and `users`, and opens it for the caller if the caller had closed it (the caller's sessions hear `im_open` / `mpim_open`; `already_open` only when it was open). A 1:1 DM's object names the other member in `user`, wherever it is shown.",
        auth: Auth::User,
        params: &[
            req("users", Ty::List, "user ids (`U…`), comma-separated, at most 8 besides the caller; the caller is added whether listed or not"),
            p("return_im", Ty::Bool, "return the whole conversation object"),
        ],
        errors: &["user_not_found", "invalid_arguments"],
    },
    MethodDoc {
        name: "conversations.close",
        summary: "Closes a direct message or group DM for the caller, as Slack's sidebar does: `conversations.info` then says `is_open: false` to the caller (the others' stay as they were) until the caller opens it again or a message arrives in it (any member's; reactions, edits and thread replies do not open it), when the caller's sessions hear `im_open` / `mpim_open`. The caller's sessions hear `im_close` / `mpim_close` when it closes. Closing a closed one answers `no_op` and `already_closed`.",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &["channel_not_found", "method_not_supported_for_channel_type"],
    },
    MethodDoc {
        name: "conversations.invite",
        summary: "A member adds users to a channel (not to a direct message). A listed user already in it (`already_in_channel`) or the caller (`cant_invite_self`) fails the call, each such user listed in `errors` (`{user, ok, error}`), and no one is invited; with `force` the others are invited and the call answers `ok` with those `errors`.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("users", Ty::List, "user ids (`U…`), comma-separated, at most 1000"),
            p("force", Ty::Bool, "invite the users who can be, reporting the others in `errors`"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "method_not_supported_for_channel_type",
            "is_archived",
            "user_not_found",
            "invalid_arguments",
            "already_in_channel",
            "cant_invite_self",
        ],
    },
    MethodDoc {
        name: "conversations.members",
        summary: "A conversation's member ids, paged by cursor.",
        auth: Auth::User,
        params: &[CHANNEL, CURSOR, limit("page size (default 100, at most 1000)")],
        errors: &["channel_not_found", "invalid_cursor", "invalid_limit"],
    },
    MethodDoc {
        name: "reactions.add",
        summary: "Adds the caller's reaction to a message.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("timestamp", Ty::Ts, "the message"),
            req("name", Ty::Str, "emoji name, with or without colons (`thumbsup`, `+1::skin-tone-2`)"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "invalid_name",
            "already_reacted",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "reactions.remove",
        summary: "Removes the caller's reaction from a message.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            req("timestamp", Ty::Ts, "the message"),
            req("name", Ty::Str, "emoji name"),
        ],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "invalid_name",
            "no_reaction",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "reactions.get",
        summary: "A message with its reactions.",
        auth: Auth::User,
        params: &[CHANNEL, req("timestamp", Ty::Ts, "the message")],
        errors: &["channel_not_found", "no_item_specified", "message_not_found"],
    },
    MethodDoc {
        name: "files.getUploadURLExternal",
        summary: "Starts an upload (Slack's current flow, `files_upload_v2`): a pending file and an `upload_url` that takes its bytes, without a token, for 10 minutes: `POST` them as the body, or as a multipart file field. Then `files.completeUploadExternal`.",
        auth: Auth::User,
        params: &[
            req("filename", Ty::Str, "the file's name (1 to 255 characters, no slashes)"),
            req("length", Ty::Int, "its size in bytes, at most `webapp.max_file_bytes` (64 MiB by default)"),
            p("alt_txt", Ty::Str, "a description for screen readers (at most 1000 characters)"),
            p("snippet_type", Ty::Str, "ignored"),
        ],
        errors: &["invalid_arguments", "file_too_large"],
    },
    MethodDoc {
        name: "files.completeUploadExternal",
        summary: "Finishes uploads: titles the files and, with `channel_id` (or `channels`), shares them there in one message (`files`, `upload: true`; `initial_comment` as its text) that every session of the channel sees. Answers the file objects (`url_private` serves the bytes to a token that can see the file).",
        auth: Auth::User,
        params: &[
            req("files", Ty::Str, "a JSON array of 1 to 10 `{\"id\": …, \"title\": …}`"),
            p("channel_id", Ty::Str, "where to share them"),
            p("channels", Ty::List, "where to share them (the first)"),
            p("initial_comment", Ty::Str, "the message's text"),
            p("thread_ts", Ty::Ts, "share in this message's thread"),
        ],
        errors: &[
            "invalid_arguments",
            "file_not_found",
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "msg_too_long",
            "invalid_thread_ts",
            "thread_not_found",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "files.info",
        summary: "A file the caller can see (its uploader's, or shared in a conversation the caller can read).",
        auth: Auth::User,
        params: &[req("file", Ty::Str, "the file's id (`F…`)")],
        errors: &["file_not_found"],
    },
    MethodDoc {
        name: "files.list",
        summary: "The workspace's shared files the caller can see, the newest first; paged by cursor.",
        auth: Auth::User,
        params: &[
            p("user", Ty::Str, "only this user's"),
            p("channel", Ty::Str, "only those shared in this conversation"),
            p("ts_from", Ty::Int, "only those created at or after this Unix time"),
            p("ts_to", Ty::Int, "only those created at or before this Unix time"),
            p("limit", Ty::Int, "page size (default 100, at most 1000; `count` too)"),
            CURSOR,
        ],
        errors: &["user_not_found", "channel_not_found", "invalid_arguments", "invalid_limit", "invalid_cursor"],
    },
    MethodDoc {
        name: "files.delete",
        summary: "Removes a file and its bytes: its uploader, or an admin of the workspace. Each message that shared it shows Slack's tombstone in its place (`{id, mode: tombstone}`), and the channel's sessions hear `file_deleted`; its URL answers 404.",
        auth: Auth::User,
        params: &[req("file", Ty::Str, "the file's id")],
        errors: &["file_not_found", "cant_delete_file"],
    },
    MethodDoc {
        name: "reactions.list",
        summary: "The messages a user (the caller by default) reacted to, the latest reaction first, each as `{type: message, channel, message}` with its reactions; only in conversations the caller can read.",
        auth: Auth::User,
        params: &[
            p("user", Ty::Str, "whose reactions (default: the caller's)"),
            p("limit", Ty::Int, "page size (default 100, at most 1000)"),
            CURSOR,
        ],
        errors: &["user_not_found", "invalid_limit", "invalid_cursor"],
    },
    MethodDoc {
        name: "pins.add",
        summary: "A member pins a message to its channel: every session there hears `pin_added` (with the message), and history shows it in `pinned_to` and `pin_count`.",
        auth: Auth::User,
        params: &[CHANNEL, req("timestamp", Ty::Ts, "the message")],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "already_pinned",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "pins.remove",
        summary: "A member unpins a message: `pin_removed` to the channel's sessions.",
        auth: Auth::User,
        params: &[CHANNEL, req("timestamp", Ty::Ts, "the message")],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "no_item_specified",
            "message_not_found",
            "no_pin",
            "service_unavailable",
        ],
    },
    MethodDoc {
        name: "pins.list",
        summary: "The channel's pinned messages, the most recently pinned first (at most 1000), each as `{type: message, channel, created, created_by, message}`. A deleted message leaves the list.",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &["channel_not_found"],
    },
    MethodDoc {
        name: "bookmarks.add",
        summary: "A member bookmarks a link at the top of a channel. The channel's sessions hear `bookmark_added`.",
        auth: Auth::User,
        params: &[
            req("channel_id", Ty::Str, "the channel"),
            req("title", Ty::Str, "at most 256 characters"),
            req("type", Ty::Str, "`link` (the only type)"),
            req("link", Ty::Str, "an `http` or `https` URL"),
            p("emoji", Ty::Str, "`:name:`"),
        ],
        errors: &["channel_not_found", "not_in_channel", "is_archived", "invalid_title", "invalid_link", "invalid_bookmark_type", "invalid_emoji", "too_many_bookmarks"],
    },
    MethodDoc {
        name: "bookmarks.edit",
        summary: "A member changes a bookmark's title, link or emoji (each only when given); `bookmark_updated`.",
        auth: Auth::User,
        params: &[
            req("channel_id", Ty::Str, "the channel"),
            req("bookmark_id", Ty::Str, "the bookmark (`Bk…`)"),
            p("title", Ty::Str, "a new title"),
            p("link", Ty::Str, "a new link"),
            p("emoji", Ty::Str, "a new emoji (empty: none)"),
        ],
        errors: &["channel_not_found", "not_in_channel", "is_archived", "not_found", "invalid_title", "invalid_link", "invalid_emoji"],
    },
    MethodDoc {
        name: "bookmarks.remove",
        summary: "A member removes a bookmark; `bookmark_removed`.",
        auth: Auth::User,
        params: &[
            req("channel_id", Ty::Str, "the channel"),
            req("bookmark_id", Ty::Str, "the bookmark"),
        ],
        errors: &["channel_not_found", "not_in_channel", "is_archived", "not_found"],
    },
    MethodDoc {
        name: "bookmarks.list",
        summary: "A channel's bookmarks, the oldest first, for anyone who can read it.",
        auth: Auth::User,
        params: &[req("channel_id", Ty::Str, "the channel")],
        errors: &["channel_not_found"],
    },
    MethodDoc {
        name: "search.messages",
        summary: "Searches the messages of every conversation the caller can read, with Slack's query syntax (words, \"phrases\", `in:#channel`, `in:@user`, `from:@user`, `to:@user`/`to:me`, `is:thread`, `before:`/`after:`/`on:`, `during:` a day, month or year, `has:link`, `has:pin`, `has::emoji:` (with that reaction), `hasmy::emoji:` (the caller reacted so), `-word`). Each match carries its message's `blocks`, `attachments`, `files` and `thread_ts`, and a bot's `bot_id`.",
        auth: Auth::User,
        params: &[
            req("query", Ty::Str, "the search query"),
            p("count", Ty::Int, "results per page (default 20, at most 100)"),
            p("page", Ty::Int, "page number, from 1 (at most 100)"),
            p("cursor", Ty::Str, "pages by cursor instead: `*` for the first page, then the last answer's `response_metadata.next_cursor` (empty after the last page). Sorted by `timestamp` it reaches every match, each once, at the first page's cost per page; sorted by `score`, as far as `page` does"),
            p("sort", Ty::OneOf(&["score", "timestamp"]), "order of results (default `score`)"),
            p("sort_dir", Ty::OneOf(&["desc", "asc"]), "direction (default `desc`)"),
            p("highlight", Ty::Bool, "mark matches in the text"),
        ],
        errors: &["invalid_arguments", "invalid_cursor", "service_unavailable"],
    },
    MethodDoc {
        name: "search.files",
        summary: "Searches the files shared in the conversations the caller can read: the messages that shared files whose text, or whose files' names or titles, match (the query syntax of `search.messages`); their files as they are now, each once, paged by those messages. A file never shared is not found.",
        auth: Auth::User,
        params: &[
            req("query", Ty::Str, "the search query"),
            p("count", Ty::Int, "sharing messages per page (default 20, at most 100)"),
            p("page", Ty::Int, "page number, from 1 (at most 100)"),
            p("sort", Ty::OneOf(&["score", "timestamp"]), "order of results (default `score`)"),
            p("sort_dir", Ty::OneOf(&["desc", "asc"]), "direction (default `desc`)"),
        ],
        errors: &["invalid_arguments", "service_unavailable"],
    },
    MethodDoc {
        name: "search.all",
        summary: "`search.messages` and `search.files` of one query in one answer (`messages` and `files`).",
        auth: Auth::User,
        params: &[
            req("query", Ty::Str, "the search query"),
            p("count", Ty::Int, "results per page of each (default 20, at most 100)"),
            p("page", Ty::Int, "page number, from 1 (at most 100)"),
            p("sort", Ty::OneOf(&["score", "timestamp"]), "order of results (default `score`)"),
            p("sort_dir", Ty::OneOf(&["desc", "asc"]), "direction (default `desc`)"),
            p("highlight", Ty::Bool, "mark matches in the messages' text"),
        ],
        errors: &["invalid_arguments", "service_unavailable"],
    },
    MethodDoc {
        name: "users.list",
        summary: "The workspace's users, paged by cursor.",
        auth: Auth::User,
        params: &[CURSOR, limit("page size (default 100, at most 1000)")],
        errors: &["invalid_cursor", "invalid_limit"],
    },
    MethodDoc {
        name: "users.info",
        summary: "One user of the workspace.",
        auth: Auth::User,
        params: &[req("user", Ty::Str, "user id (`U…`)")],
        errors: &["user_not_found"],
    },
    MethodDoc {
        name: "bots.info",
        summary: "The bot a message's `bot_id` names: a bot user of the workspace (its id is its bot id), with `name`, `user_id` and `app_id`.",
        auth: Auth::User,
        params: &[req("bot", Ty::Str, "bot id (a bot user's id, as `auth.test` and messages give it)")],
        errors: &["bot_not_found"],
    },
    MethodDoc {
        name: "users.lookupByEmail",
        summary: "The user of the workspace with this email (compared without case).",
        auth: Auth::User,
        params: &[req("email", Ty::Str, "an email address")],
        errors: &["users_not_found", "invalid_email"],
    },
    MethodDoc {
        name: "admin.users.create",
        summary: "Switchboard's own: creates a user of the caller's workspace (joined to #general) and returns it with its `token`.",
        auth: Auth::Admin,
        params: &[
            req("name", Ty::Str, "lower-case letters, digits, `.`, `-` and `_`; at most 80 characters"),
            p("real_name", Ty::Str, "at most 200 characters (default: `name`)"),
            p("is_admin", Ty::Bool, "make the user an admin (its token is then an admin token)"),
            p("is_bot", Ty::Bool, "make the user a bot user: its token is a bot token (`xoxb-`), `auth.test` gives its id as `bot_id`, and its messages carry that `bot_id` (a bot cannot be an admin: `invalid_arguments`)"),
            p("email", Ty::Str, "the user's email (unique in the workspace; `users.lookupByEmail` finds it)"),
        ],
        errors: &[
            "email_taken",
            "invalid_email",
            "name_taken",
            "invalid_name_required",
            "invalid_name_specials",
            "invalid_name_maxlength",
            "invalid_arguments",
        ],
    },
    MethodDoc {
        name: "emoji.list",
        summary: "The workspace's custom emoji: each name with its image URL or `alias:<name>` (no standard emoji, no categories); `cache_ts` is when the newest was made.",
        auth: Auth::User,
        params: &[],
        errors: &[],
    },
    MethodDoc {
        name: "admin.emoji.add",
        summary: "An admin adds a custom emoji: a name for an image URL (the URL is kept, not the image). The workspace's sessions hear `emoji_changed` (`add`).",
        auth: Auth::Admin,
        params: &[
            req("name", Ty::Str, "lower-case letters, digits, `-` and `_` (colons around it are dropped); at most 100"),
            req("url", Ty::Str, "the image, `http` or `https`"),
        ],
        errors: &["not_allowed_token_type", "error_missing_name", "error_lower_case_names_only", "error_bad_name_i18n", "error_name_taken", "error_no_image", "error_bad_format", "emoji_limit_reached"],
    },
    MethodDoc {
        name: "admin.emoji.addAlias",
        summary: "An admin adds a name for a custom emoji (an alias of an alias names the emoji itself); `emoji_changed` (`add`, value `alias:<name>`).",
        auth: Auth::Admin,
        params: &[
            req("name", Ty::Str, "the new name"),
            req("alias_for", Ty::Str, "a custom emoji's name"),
        ],
        errors: &["not_allowed_token_type", "emoji_not_found", "error_name_taken", "error_bad_name_i18n", "emoji_limit_reached"],
    },
    MethodDoc {
        name: "admin.emoji.remove",
        summary: "An admin removes a custom emoji and its aliases; `emoji_changed` (`remove`, with `names`).",
        auth: Auth::Admin,
        params: &[req("name", Ty::Str, "its name")],
        errors: &["not_allowed_token_type", "emoji_not_found"],
    },
    MethodDoc {
        name: "admin.emoji.rename",
        summary: "An admin renames a custom emoji; its aliases follow it; `emoji_changed` (`rename`, with `old_name`, `new_name` and `value`).",
        auth: Auth::Admin,
        params: &[
            req("name", Ty::Str, "its name"),
            req("new_name", Ty::Str, "the new name"),
        ],
        errors: &["not_allowed_token_type", "emoji_not_found", "error_name_taken", "error_bad_name_i18n"],
    },
    MethodDoc {
        name: "admin.emoji.list",
        summary: "An admin lists the custom emoji by name, each with `url` or `alias_for`, `date_created` and `uploaded_by`; paged by cursor.",
        auth: Auth::Admin,
        params: &[CURSOR, limit("page size (default 100, at most 1000)")],
        errors: &["not_allowed_token_type", "invalid_cursor", "invalid_limit"],
    },
    MethodDoc {
        name: "admin.users.setInactive",
        summary: "Switchboard's own: an admin deactivates a user of the workspace (not itself). Its tokens, bot tokens too, are refused with `account_inactive`, its hooks and scheduled messages post nothing, the gateways end its sessions after the workspace's `user_change` (`deleted: true`); it stays listed, in its channels, with its messages. Again is no error.",
        auth: Auth::Admin,
        params: &[req("user", Ty::Str, "user id (`U…`)")],
        errors: &["not_allowed_token_type", "user_not_found", "invalid_arguments"],
    },
    MethodDoc {
        name: "admin.users.setActive",
        summary: "Switchboard's own: an admin brings a deactivated user back; its tokens work again.",
        auth: Auth::Admin,
        params: &[req("user", Ty::Str, "user id (`U…`)")],
        errors: &["not_allowed_token_type", "user_not_found"],
    },
    MethodDoc {
        name: "users.profile.set",
        summary: "Sets the caller's `real_name` and/or `display_name` (an admin token may set another user's), and with an admin token `email`.",
        auth: Auth::User,
        params: &[
            p("profile", Ty::Object, "`{\"real_name\": …, \"display_name\": …, \"email\": …}`; `email` needs an admin token, and an empty one clears it"),
            p("name", Ty::OneOf(&["real_name", "display_name", "email"]), "the one field to set (with `value`)"),
            p("value", Ty::Str, "its value"),
            p("user", Ty::Str, "another user (`U…`), admin tokens only"),
        ],
        errors: &["not_allowed_token_type", "user_not_found", "too_long", "invalid_arguments", "invalid_email", "email_taken"],
    },
    MethodDoc {
        name: "users.profile.get",
        summary: "The caller's profile, or another user's of the workspace.",
        auth: Auth::User,
        params: &[p("user", Ty::Str, "user id (`U…`)")],
        errors: &["user_not_found"],
    },
    MethodDoc {
        name: "usergroups.create",
        summary: "Creates a user group (Slack's subteam) with no members yet; any member of the workspace may. Every session of the workspace gets `subteam_created`.",
        auth: Auth::User,
        params: &[
            req("name", Ty::Str, "unique among the workspace's groups, ignoring case; at most 80 characters"),
            p("handle", Ty::Str, "what `@handle` mentions: lower-case letters, digits, `-`, `_`, `.`; unique among the workspace's groups, users and channels (default: made from the name)"),
            p("description", Ty::Str, "at most 1000 characters"),
            p("channels", Ty::List, "default channels of its members (ids the caller can see)"),
            p("include_count", Ty::Bool, "add `user_count`"),
        ],
        errors: &["missing_argument", "invalid_arguments", "name_already_exists", "handle_already_exists", "channel_not_found"],
    },
    MethodDoc {
        name: "usergroups.list",
        summary: "The workspace's user groups by name.",
        auth: Auth::User,
        params: &[
            p("include_disabled", Ty::Bool, "also disabled groups"),
            p("include_users", Ty::Bool, "add each group's `users`"),
            p("include_count", Ty::Bool, "add each group's `user_count`"),
        ],
        errors: &[],
    },
    MethodDoc {
        name: "usergroups.update",
        summary: "Changes a user group's name, handle, description or default channels (each only when given). Every session of the workspace gets `subteam_updated`.",
        auth: Auth::User,
        params: &[
            req("usergroup", Ty::Str, "the group's id (`S…`)"),
            p("name", Ty::Str, "a new name"),
            p("handle", Ty::Str, "a new handle"),
            p("description", Ty::Str, "a new description"),
            p("channels", Ty::List, "the new default channels (empty: none)"),
            p("include_count", Ty::Bool, "add `user_count`"),
        ],
        errors: &["no_such_subteam", "missing_argument", "invalid_arguments", "name_already_exists", "handle_already_exists", "channel_not_found"],
    },
    MethodDoc {
        name: "usergroups.disable",
        summary: "Disables a user group: it keeps its members and settings but leaves `usergroups.list` (unless asked for). Again is no error.",
        auth: Auth::User,
        params: &[
            req("usergroup", Ty::Str, "the group's id"),
            p("include_count", Ty::Bool, "add `user_count`"),
        ],
        errors: &["no_such_subteam"],
    },
    MethodDoc {
        name: "usergroups.enable",
        summary: "Enables a disabled user group again, as it was (unless its name or handle was taken meanwhile).",
        auth: Auth::User,
        params: &[
            req("usergroup", Ty::Str, "the group's id"),
            p("include_count", Ty::Bool, "add `user_count`"),
        ],
        errors: &["no_such_subteam", "name_already_exists", "handle_already_exists"],
    },
    MethodDoc {
        name: "usergroups.users.list",
        summary: "A user group's members.",
        auth: Auth::User,
        params: &[
            req("usergroup", Ty::Str, "the group's id"),
            p("include_disabled", Ty::Bool, "answer for a disabled group too"),
        ],
        errors: &["no_such_subteam"],
    },
    MethodDoc {
        name: "usergroups.users.update",
        summary: "Replaces a user group's members (at least one; people, not bots). Every session of the workspace gets `subteam_updated` and `subteam_members_changed` (who was added and removed).",
        auth: Auth::User,
        params: &[
            req("usergroup", Ty::Str, "the group's id"),
            req("users", Ty::List, "the whole new member list (user ids)"),
            p("include_count", Ty::Bool, "add `user_count`"),
        ],
        errors: &["no_such_subteam", "no_users_provided", "invalid_users", "invalid_arguments"],
    },
    MethodDoc {
        name: "conversations.rename",
        summary: "A member renames a channel (not a direct message).",
        auth: Auth::User,
        params: &[CHANNEL, req("name", Ty::Str, "the new name")],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "method_not_supported_for_channel_type",
            "name_taken",
            "invalid_name_required",
            "invalid_name_specials",
            "invalid_name_maxlength",
        ],
    },
    MethodDoc {
        name: "conversations.archive",
        summary: "A member archives a channel (not a direct message).",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "method_not_supported_for_channel_type",
            "already_archived",
            "cant_archive_general",
        ],
    },
    MethodDoc {
        name: "conversations.unarchive",
        summary: "A member unarchives a channel (not a direct message).",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &[
            "channel_not_found",
            "not_in_channel",
            "method_not_supported_for_channel_type",
            "not_archived",
        ],
    },
    MethodDoc {
        name: "conversations.setTopic",
        summary: "A member sets a channel's topic, announced in the channel by a `channel_topic` message from the caller (with `topic`).",
        auth: Auth::User,
        params: &[CHANNEL, req("topic", Ty::Str, "at most 250 characters; empty clears it")],
        errors: SET_TEXT_ERRORS,
    },
    MethodDoc {
        name: "conversations.setPurpose",
        summary: "A member sets a channel's purpose, announced in the channel by a `channel_purpose` message from the caller (with `purpose`).",
        auth: Auth::User,
        params: &[CHANNEL, req("purpose", Ty::Str, "at most 250 characters; empty clears it")],
        errors: SET_TEXT_ERRORS,
    },
    MethodDoc {
        name: "conversations.mark",
        summary: "Moves the caller's read position in a conversation (shown as `last_read`). The caller's sessions hear Slack's `channel_marked` (`group_marked` for a private channel or group DM, `im_marked` for a DM) with `ts`, `seq`, `unread_count` / `unread_count_display` and `mention_count` / `mention_count_display`, so that its other clients clear the channel too.",
        auth: Auth::User,
        params: &[
            CHANNEL,
            p("ts", Ty::Ts, "a message of the conversation (this or `seq` is required)"),
            p("seq", Ty::Int, "Switchboard's own: a sequence number of the conversation"),
        ],
        errors: &["channel_not_found", "not_in_channel", "invalid_timestamp", "invalid_arguments"],
    },
    MethodDoc {
        name: "users.getPresence",
        summary: "A user's presence: `active` or `away`.",
        auth: Auth::User,
        params: &[p("user", Ty::Str, "user id (`U…`; default: the caller)")],
        errors: &["user_not_found", "service_unavailable"],
    },
    MethodDoc {
        name: "users.setPresence",
        summary: "Sets the caller's presence: `away` (manual away) or `auto` (active while connected).",
        auth: Auth::User,
        params: &[req("presence", Ty::OneOf(&["auto", "away"]), "the presence")],
        errors: &["invalid_arguments", "service_unavailable"],
    },
    MethodDoc {
        name: "dnd.info",
        summary: "A user's Do Not Disturb state (default: the caller's): `dnd_enabled` with `next_dnd_start_ts` and `next_dnd_end_ts` (the snooze's start and end while snoozed, else 1 and 1); for the caller also `snooze_enabled`, `snooze_endtime`, `snooze_remaining`.",
        auth: Auth::User,
        params: &[p("user", Ty::Str, "user id (`U…`; default: the caller)")],
        errors: &["user_not_found", "internal_error"],
    },
    MethodDoc {
        name: "dnd.teamInfo",
        summary: "The Do Not Disturb state of up to 50 users of the workspace, by id (`users`: `dnd_enabled`, `next_dnd_start_ts`, `next_dnd_end_ts` each).",
        auth: Auth::User,
        params: &[req("users", Ty::Str, "user ids (`U…`), comma-separated or a JSON array, at most 50")],
        errors: &["missing_argument", "invalid_arguments", "user_not_found", "internal_error"],
    },
    MethodDoc {
        name: "dnd.setSnooze",
        summary: "Pauses the caller's notifications for `num_minutes` (a snooze; one running is replaced). Tells the caller's sessions `dnd_updated` and the workspace's `dnd_updated_user`, and again when the snooze lapses (within `webapp.records_poll_ms` of its end). A person's token only.",
        auth: Auth::User,
        params: &[req("num_minutes", Ty::Int, "minutes from now, 1 to 525600")],
        errors: &["not_allowed_token_type", "missing_argument", "invalid_arguments", "service_unavailable"],
    },
    MethodDoc {
        name: "dnd.endSnooze",
        summary: "Ends the caller's snooze now; answers the caller's state after it.",
        auth: Auth::User,
        params: &[],
        errors: &["not_allowed_token_type", "snooze_not_active", "internal_error", "service_unavailable"],
    },
    MethodDoc {
        name: "dnd.endDnd",
        summary: "Ends the caller's Do Not Disturb now (Switchboard has no DND schedule: the snooze, if any).",
        auth: Auth::User,
        params: &[],
        errors: &["not_allowed_token_type", "internal_error", "service_unavailable"],
    },
    MethodDoc {
        name: "hooks.create",
        summary: "Switchboard's own: creates an incoming webhook posting into `channel` as the caller (a member); answers its `url` (and `path`) for `POST /hooks/{token}`.",
        auth: Auth::User,
        params: &[CHANNEL],
        errors: &["channel_not_found", "not_in_channel", "is_archived"],
    },
    MethodDoc {
        name: "internal.flannel.snapshot",
        summary: "Internal: a workspace's users, channels and memberships, for Flannel.",
        auth: Auth::Service,
        params: &[p("workspace", Ty::Str, "the workspace (`T…`); must be the token's")],
        errors: &["team_access_not_granted", "team_not_found"],
    },
];

/// Errors any call of a method with this `auth` may answer, besides its own.
fn common_errors(auth: Auth) -> &'static [&'static str] {
    match auth {
        Auth::None => &[
            "invalid_json",
            "invalid_form_data",
            "request_too_large",
            "internal_error",
        ],
        Auth::User => &[
            "not_authed",
            "invalid_auth",
            "account_inactive",
            "token_revoked",
            "ratelimited",
            "invalid_json",
            "invalid_form_data",
            "request_too_large",
            "internal_error",
        ],
        Auth::Admin | Auth::Service => &[
            "not_authed",
            "invalid_auth",
            "account_inactive",
            "token_revoked",
            "not_allowed_token_type",
            "ratelimited",
            "invalid_json",
            "invalid_form_data",
            "request_too_large",
            "internal_error",
        ],
    }
}

/// The HTTP status a Web API error answers with (see `ApiError::status`): like Slack, 200 for
/// the logical errors of a well-formed call.
pub fn error_status(code: &str) -> u16 {
    match code {
        "invalid_json" | "invalid_form_data" => 400,
        "unknown_method" => 404,
        "method_not_allowed" => 405,
        "request_too_large" => 413,
        "ratelimited" => 429,
        "internal_error" => 500,
        "service_unavailable" => 503,
        _ => 200,
    }
}

fn param_schema(param: &Param) -> Value {
    let mut schema = match param.ty {
        Ty::Str => json!({ "type": "string" }),
        Ty::Int => json!({ "type": "integer", "minimum": 0 }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Ts => {
            json!({ "type": "string", "pattern": "^[0-9]+\\.[0-9]{6}$", "example": "1700000000.000100" })
        }
        Ty::List => json!({ "type": "string", "example": "U0123456789,U9876543210" }),
        Ty::Object => json!({ "type": "object", "additionalProperties": true }),
        Ty::OneOf(values) => json!({ "type": "string", "enum": values }),
    };
    schema["description"] = param.description.into();
    schema
}

fn request_schema(doc: &MethodDoc) -> Value {
    let mut properties = Map::new();
    if doc.auth != Auth::None {
        properties.insert(
            "token".into(),
            json!({ "type": "string", "description": "the token, where no `Authorization: Bearer` header carries it" }),
        );
    }
    for param in doc.params {
        properties.insert(param.name.into(), param_schema(param));
    }
    let required: Vec<&str> = doc
        .params
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name)
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": doc.auth == Auth::None,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn error_schema(codes: &[&str]) -> Value {
    json!({
        "type": "object",
        "required": ["ok", "error"],
        "properties": {
            "ok": { "type": "boolean", "enum": [false] },
            "error": { "type": "string", "enum": codes },
        },
    })
}

fn error_response(description: &str, codes: &[&str], retry_after: bool) -> Value {
    let mut resp = json!({
        "description": description,
        "content": { "application/json": { "schema": error_schema(codes) } },
    });
    if retry_after {
        resp["headers"] = json!({ "Retry-After": { "$ref": "#/components/headers/Retry-After" } });
    }
    resp
}

/// The answers with a non-200 status, the same for every method that can give them: status,
/// component name, description, error names.
const SHARED_RESPONSES: &[(u16, &str, &str, &[&str])] = &[
    (
        400,
        "BadRequest",
        "the body cannot be read",
        &["invalid_json", "invalid_form_data"],
    ),
    (
        413,
        "PayloadTooLarge",
        "the body is larger than `webapp.max_body_bytes`",
        &["request_too_large"],
    ),
    (
        429,
        "RateLimited",
        "rate limited: retry after `Retry-After` seconds",
        &["ratelimited"],
    ),
    (
        500,
        "InternalError",
        "a failure of the server",
        &["internal_error"],
    ),
    (
        503,
        "ServiceUnavailable",
        "a dependency is unavailable; safe to retry (with the same `client_msg_id` for posts)",
        &["service_unavailable"],
    ),
];

fn family(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

fn method_operation(doc: &MethodDoc) -> Value {
    let mut errors: Vec<&str> = common_errors(doc.auth).to_vec();
    for e in doc.errors {
        if !errors.contains(e) {
            errors.push(e);
        }
    }
    let logical: Vec<&str> = errors
        .iter()
        .copied()
        .filter(|e| error_status(e) == 200)
        .collect();
    let mut responses = Map::new();
    let ok_or_error = if logical.is_empty() {
        json!({ "$ref": "#/components/schemas/Ok" })
    } else {
        json!({ "oneOf": [ { "$ref": "#/components/schemas/Ok" }, error_schema(&logical) ] })
    };
    responses.insert(
        "200".into(),
        json!({
            "description": "`ok: true` with the method's fields, or `ok: false` with one of the method's errors",
            "content": { "application/json": { "schema": ok_or_error } },
        }),
    );
    for (status, name, _, _) in SHARED_RESPONSES {
        if errors.iter().any(|e| error_status(e) == *status) {
            responses.insert(
                status.to_string(),
                json!({ "$ref": format!("#/components/responses/{name}") }),
            );
        }
    }
    let body_schema = json!({ "$ref": format!("#/components/schemas/{}.request", doc.name) });
    let mut op = json!({
        "operationId": doc.name,
        "summary": doc.summary,
        "tags": [family(doc.name)],
        "requestBody": {
            "required": false,
            "content": {
                "application/x-www-form-urlencoded": { "schema": body_schema },
                "application/json": { "schema": body_schema },
            },
        },
        "responses": responses,
        "x-slack-errors": errors,
    });
    match doc.auth {
        Auth::None => op["security"] = json!([]),
        Auth::Service => {
            op["description"] = "Service tokens only (`xoxs-…`, minted by nodes of the cluster); they can call nothing else.".into()
        }
        Auth::Admin => op["description"] = "Needs an admin token of the workspace.".into(),
        Auth::User => {}
    }
    if let Some(tier) = ratelimit::tier(doc.name) {
        op["x-slack-rate-limit-tier"] = tier.name().into();
    }
    op
}

fn hook_operation() -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "posted",
            "content": { "text/plain": { "schema": { "type": "string", "enum": ["ok"] } } },
        }),
    );
    let mut statuses: Vec<u16> = crate::hooks::HOOK_ERRORS.iter().map(|e| e.0).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let errors: Vec<_> = crate::hooks::HOOK_ERRORS
            .iter()
            .filter(|e| e.0 == status)
            .collect();
        let codes: Vec<&str> = errors.iter().map(|e| e.1).collect();
        let description = errors
            .iter()
            .map(|e| format!("`{}`: {}", e.1, e.2))
            .collect::<Vec<_>>()
            .join("; ");
        let mut resp = json!({
            "description": description,
            "content": { "text/plain": { "schema": { "type": "string", "enum": codes } } },
        });
        if status == 429 {
            resp["headers"] =
                json!({ "Retry-After": { "$ref": "#/components/headers/Retry-After" } });
        }
        responses.insert(status.to_string(), resp);
    }
    let payload = json!({
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": { "type": "string", "description": "the message, at most 40000 characters" },
            "thread_ts": { "type": "string", "description": "post as a reply in this message's thread" },
            "client_msg_id": { "type": "string", "description": "idempotency key (the `Idempotency-Key` header wins)" },
        },
        "additionalProperties": true,
    });
    json!({
        "post": {
            "operationId": "hooks.post",
            "summary": "Incoming webhook: posts `text` into the hook's channel as the hook's creator (see `hooks.create`). Other Slack fields (`username`, `blocks`, …) are ignored.",
            "tags": ["hooks"],
            "security": [],
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": true,
                    "description": "the hook token, as `hooks.create` made it",
                    "schema": { "type": "string" },
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "makes retries post once (a `client_msg_id`, per channel); reused for another text or thread, or by a hook of another user, it answers 422 `client_msg_id_conflict`",
                    "schema": { "type": "string", "maxLength": 128 },
                },
            ],
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": { "schema": payload },
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["payload"],
                            "properties": { "payload": { "type": "string", "description": "the JSON object above, as text" } },
                        },
                    },
                },
            },
            "responses": responses,
            "x-slack-rate-limit-tier": ratelimit::Tier::Hook.name(),
        }
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Ok".into(),
        json!({
            "type": "object",
            "required": ["ok"],
            "properties": { "ok": { "type": "boolean", "enum": [true] } },
            "additionalProperties": true,
        }),
    );
    for doc in METHOD_DOCS {
        paths.insert(
            format!("/api/{}", doc.name),
            json!({ "post": method_operation(doc) }),
        );
        schemas.insert(format!("{}.request", doc.name), request_schema(doc));
    }
    paths.insert("/hooks/{token}".into(), hook_operation());
    paths.insert(
        "/health".into(),
        json!({ "get": {
            "operationId": "health",
            "summary": "Readiness: 200 while serving, 503 while starting or draining.",
            "tags": ["ops"],
            "security": [],
            "responses": {
                "200": { "description": "ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } },
                "503": { "description": "not ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } },
            },
        } }),
    );
    schemas.insert(
        "Health".into(),
        json!({
            "type": "object",
            "required": ["role", "ok"],
            "properties": { "role": { "type": "string", "enum": ["webapp"] }, "ok": { "type": "boolean" } },
        }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text format 0.0.4).",
            "tags": ["ops"],
            "security": [],
            "responses": { "200": { "description": "the metrics", "content": { "text/plain": { "schema": { "type": "string" } } } } },
        } }),
    );
    let spec = json!({ "get": {
        "operationId": "openapi",
        "summary": "This OpenAPI description (also at `/openapi.json`).",
        "tags": ["ops"],
        "security": [],
        "responses": { "200": { "description": "the description", "content": { "application/json": { "schema": { "type": "object" } } } } },
    } });
    paths.insert("/api/openapi.json".into(), spec);
    let shared_responses: Map<String, Value> = SHARED_RESPONSES
        .iter()
        .map(|(status, name, description, codes)| {
            (
                name.to_string(),
                error_response(description, codes, *status == 429),
            )
        })
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Switchboard Web API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Slack's Web API shape: `POST` (or `GET` with a query string) `/api/<method>`, parameters as a form (`application/x-www-form-urlencoded`), a JSON object, or the query string (the body wins). The token goes in `Authorization: Bearer …` or a `token` parameter. Every answer is JSON: `{\"ok\":true,…}` or `{\"ok\":false,\"error\":\"<name>\"}`; like Slack, logical errors answer HTTP 200, and an unreadable body 400, a too large one 413, an unknown method 404 (`unknown_method`), rate limiting 429 (`ratelimited`, with `Retry-After`), our own failures 5xx. Rate limits are per user and per tier (`x-slack-rate-limit-tier`). `x-slack-errors` lists every error a method can answer.",
        },
        "servers": [ { "url": "/" } ],
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "a Switchboard token (`xoxp-…`, `xoxb-…`, `xoxa-…`)" },
            },
            "headers": {
                "Retry-After": { "description": "seconds to wait before calling again", "schema": { "type": "integer", "minimum": 1 } },
            },
            "responses": shared_responses,
            "schemas": schemas,
        },
    })
}

/// The document as served and checked in: pretty JSON with a final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("a JSON value serializes");
    text.push('\n');
    text
}

static RENDERED: LazyLock<String> = LazyLock::new(render);

/// `GET /api/openapi.json`.
pub(crate) async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        RENDERED.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiError;

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

    #[test]
    fn openapi_checked_in_file_matches_the_generator() {
        let generated = render();
        if std::env::var_os("SWITCHBOARD_WRITE_OPENAPI").is_some() {
            std::fs::write(CHECKED_IN, &generated).expect("write openapi.json");
        }
        let on_disk = std::fs::read_to_string(CHECKED_IN).expect("webapp-api/openapi.json exists");
        // Compared as JSON values, so that key order (serde_json's map order may differ
        // between builds) does not matter.
        let on_disk: Value = serde_json::from_str(&on_disk).expect("openapi.json is JSON");
        assert!(
            on_disk == document(),
            "webapp-api/openapi.json is stale: regenerate it with \
             `SWITCHBOARD_WRITE_OPENAPI=1 cargo test -p switchboard-webapp-api openapi`"
        );
    }

    #[test]
    fn openapi_documents_every_served_method_and_only_those() {
        let names: Vec<&str> = METHOD_DOCS.iter().map(|d| d.name).collect();
        for m in crate::methods::METHODS {
            assert!(names.contains(m), "{m} is served but not described");
        }
        for extra in ["hooks.create", "search.messages"] {
            assert!(names.contains(&extra), "{extra}");
        }
        for n in &names {
            assert!(
                crate::methods::METHODS.contains(n),
                "{n} is described but not served"
            );
            assert_eq!(
                names.iter().filter(|m| *m == n).count(),
                1,
                "{n} is described twice"
            );
        }
    }

    #[test]
    fn openapi_is_shaped_like_openapi_3() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
        assert!(doc["info"]["title"].is_string());
        assert!(doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().unwrap();
        for path in ["/hooks/{token}", "/health", "/metrics", "/api/hooks.create"] {
            assert!(paths.contains_key(path), "{path}");
        }
        for m in crate::methods::METHODS {
            assert!(paths.contains_key(&format!("/api/{m}")), "{m}");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            for (verb, op) in item.as_object().unwrap() {
                assert!(matches!(verb.as_str(), "get" | "post"), "{path} {verb}");
                assert!(op["operationId"].is_string(), "{path}");
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{path}");
                for (status, resp) in responses {
                    assert!(status.parse::<u16>().is_ok(), "{path} {status}");
                    let resp = match resp["$ref"].as_str() {
                        Some(r) => {
                            let name = r.strip_prefix("#/components/responses/").unwrap();
                            &doc["components"]["responses"][name]
                        }
                        None => resp,
                    };
                    assert!(resp["description"].is_string(), "{path} {status}");
                }
            }
        }
        // Every local reference resolves.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            let (kind, name) = target.split_once('/').unwrap();
            assert!(
                doc["components"][kind].get(name).is_some(),
                "dangling $ref {target}"
            );
        }
        assert!(schemas.contains_key("chat.postMessage.request"));
        let post = &doc["paths"]["/api/chat.postMessage"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/chat.postMessage.request"
        );
        assert_eq!(
            doc["components"]["schemas"]["chat.postMessage.request"]["required"],
            json!(["channel"])
        );
        assert_eq!(
            post["responses"]["429"]["$ref"],
            "#/components/responses/RateLimited"
        );
        assert!(
            doc["components"]["responses"]["RateLimited"]["headers"]["Retry-After"].is_object()
        );
        assert!(post["responses"]["503"].is_object());
        let api_test = &doc["paths"]["/api/api.test"]["post"];
        assert!(api_test["responses"].get("429").is_none());
        assert_eq!(api_test["security"], json!([]));
        assert_eq!(
            post["x-slack-rate-limit-tier"],
            "Special (chat.postMessage)"
        );
    }

    fn doc(name: &str) -> &'static MethodDoc {
        METHOD_DOCS
            .iter()
            .find(|d| d.name == name)
            .expect("documented")
    }

    /// The text says what the code does where it once did not.
    #[test]
    fn the_text_matches_the_code() {
        // One parser (`methods::Types`) selects for both listings: DMs only under im/mpim.
        let types = |name: &str| {
            doc(name)
                .params
                .iter()
                .find(|p| p.name == "types")
                .expect("types")
                .description
        };
        assert_eq!(types("conversations.list"), types("users.conversations"));
        assert!(types("users.conversations").contains("only for `im` / `mpim`"));
        // Permalinks start at `webapp.public_url` when it is set (`RequestInfo::base_url`).
        assert!(doc("chat.getPermalink")
            .summary
            .contains("`webapp.public_url`"));
    }

    #[test]
    fn openapi_error_names_and_statuses_are_the_servers() {
        // A sample of every error the table names, built as the server builds it.
        let samples = [
            ApiError::NotAuthed,
            ApiError::InvalidAuth,
            ApiError::NotAllowedTokenType,
            ApiError::ChannelNotFound,
            ApiError::UserNotFound,
            ApiError::NotInChannel,
            ApiError::IsArchived,
            ApiError::NoText,
            ApiError::MsgTooLong { max: 1 },
            ApiError::NameTaken,
            ApiError::InvalidNameRequired,
            ApiError::InvalidNameSpecials,
            ApiError::InvalidNameMaxlength { max: 1 },
            ApiError::MethodNotSupportedForChannelType,
            ApiError::CantLeaveGeneral,
            ApiError::InvalidCursor,
            ApiError::InvalidLimit,
            ApiError::InvalidTypes,
            ApiError::InvalidTsOldest,
            ApiError::InvalidTsLatest,
            ApiError::InvalidThreadTs,
            ApiError::InvalidArguments(String::new()),
            ApiError::InvalidJson,
            ApiError::InvalidFormData,
            ApiError::RequestTooLarge { max: 1 },
            ApiError::UnknownMethod,
            ApiError::MethodNotAllowed,
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::InvalidTimestamp,
            ApiError::AlreadyArchived,
            ApiError::NotArchived,
            ApiError::CantArchiveGeneral,
            ApiError::TooLong { max: 1 },
            ApiError::TeamNotFound,
            ApiError::TeamAccessNotGranted,
            ApiError::MessageNotFound,
            ApiError::CantUpdateMessage,
            ApiError::CantDeleteMessage,
            ApiError::ThreadNotFound,
            ApiError::AlreadyReacted,
            ApiError::NoReaction,
            ApiError::InvalidReactionName,
            ApiError::NoItemSpecified,
            ApiError::FileNotFound,
            ApiError::CantDeleteFile,
            ApiError::FileTooLarge { max: 1 },
            ApiError::InvalidTime,
            ApiError::TimeInPast,
            ApiError::TimeTooFar,
            ApiError::RestrictedTooMany,
            ApiError::InvalidScheduledMessageId,
            ApiError::MissingArgument("name"),
            ApiError::AccountInactive,
            ApiError::Named("error_name_taken"),
            ApiError::Named("emoji_not_found"),
            ApiError::Named("error_missing_name"),
            ApiError::Named("error_lower_case_names_only"),
            ApiError::Named("error_bad_name_i18n"),
            ApiError::Named("error_no_image"),
            ApiError::Named("error_bad_format"),
            ApiError::Named("emoji_limit_reached"),
            ApiError::Named("invalid_title"),
            ApiError::Named("invalid_url"),
            ApiError::Named("no_request_url"),
            ApiError::Named("token_revoked"),
            ApiError::Named("snooze_not_active"),
            ApiError::UrlVerificationFailed(String::new()),
            ApiError::Named("invalid_link"),
            ApiError::Named("invalid_bookmark_type"),
            ApiError::Named("invalid_emoji"),
            ApiError::Named("too_many_bookmarks"),
            ApiError::Named("not_found"),
            ApiError::NameAlreadyExists,
            ApiError::HandleAlreadyExists,
            ApiError::NoSuchSubteam,
            ApiError::NoUsersProvided,
            ApiError::InvalidUsers,
            ApiError::ClientMsgIdConflict,
            ApiError::CantKickSelf,
            ApiError::CantKickFromGeneral,
            ApiError::RestrictedAction,
            ApiError::UserNotInChannel,
            ApiError::InvalidBlocks,
            ApiError::InvalidAttachments,
            ApiError::TooManyAttachments,
            ApiError::AlreadyPinned,
            ApiError::NoPin,
            ApiError::InvalidMetadataFormat,
            ApiError::InvalidMetadataSchema,
            ApiError::MetadataTooLarge { max: 1 },
            ApiError::MetadataMustBeSentFromApp,
            ApiError::InvalidEmail,
            ApiError::EmailTaken,
            ApiError::UsersNotFound,
            ApiError::BotNotFound,
            ApiError::NotInvited(vec![crate::api::UserError {
                user: shared::ids::UserId::from("UA"),
                error: "already_in_channel",
            }]),
            ApiError::NotInvited(vec![crate::api::UserError {
                user: shared::ids::UserId::from("UA"),
                error: "cant_invite_self",
            }]),
            ApiError::ServiceUnavailable(String::new()),
            ApiError::Internal(String::new()),
        ];
        for e in &samples {
            assert_eq!(error_status(e.code()), e.status().as_u16(), "{}", e.code());
        }
        let known: Vec<&str> = samples.iter().map(ApiError::code).collect();
        for doc in METHOD_DOCS {
            for code in doc.errors.iter().chain(common_errors(doc.auth)) {
                assert!(
                    known.contains(code),
                    "{}: {code} is no error of the server",
                    doc.name
                );
            }
        }
    }
}
