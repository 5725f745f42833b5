//! Metrics of the Web API, registered with the process-wide Prometheus registry that
//! `/metrics` renders.
//!
//! The `method` label only ever holds a known method name or `unknown`, so a client cannot
//! grow the label set by calling made-up methods.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_requests_total",
        "Web API requests, by method",
        &["method"]
    )
    .expect("metric registers once")
});

pub static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_errors_total",
        "Web API requests answered with ok=false, by method and Slack error name",
        &["method", "error"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchboard_webapp_request_duration_seconds",
        "Web API request latency, from the first byte of the body to the answer",
        &["method"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("metric registers once")
});

/// One request to the admin server (one attempt), from sending it to its answer: for a post,
/// the admin server's routing, the channel server's durable append and both hops.
pub static ADMIN_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchboard_webapp_admin_request_duration_seconds",
        "one attempt at a request to the admin server, by request kind",
        &["request"],
        shared::telemetry::HOP_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static GATEWAY_UNREACHABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_webapp_gateway_unreachable_total",
        "gateways that refused a connection, or answered /health with 503 (stopping), when apps.connections.open tried them (its app went to the next)"
    )
    .unwrap()
});
pub static ADMIN_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_admin_retries_total",
        "requests to the admin server tried again after a retryable failure, by request kind",
        &["request"]
    )
    .expect("metric registers once")
});

pub static USER_EVENT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_webapp_user_event_failures_total",
        "changes stored but not relayed to gateways, for any reason (sessions pick them up on \
         reconnect)"
    )
    .expect("metric registers once")
});

/// The changes counted in [`USER_EVENT_FAILURES`], by why they were dropped.
pub static USER_EVENTS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_user_events_dropped_total",
        "change events stored but not relayed to gateways, by reason: failed (after the admin \
         link's retries), deadline (the call's relay deadline passed), store_read (a store read \
         deciding who is told failed)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static CLIENT_MSG_ID_CONFLICTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_client_msg_id_conflicts_total",
        "posts refused because their client_msg_id (or Idempotency-Key) already names another \
         message of the channel, by entry point (api, hook) and reason (other_user: posted by \
         another user; other_request: the same user's with another text or thread)",
        &["via", "reason"]
    )
    .expect("metric registers once")
});

pub static RING_EPOCH: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "switchboard_webapp_ring_epoch",
        "the ring epoch this Web API node last learned"
    )
    .unwrap()
});

/// Scheduled messages (`chat.scheduleMessage`), by what became of them: `scheduled`,
/// `deleted`, `restricted` (refused: too many waiting), `posted`, `retried` (the post failed
/// for now; tried again on the next look), and `dropped_<why>` where the post could no longer
/// be made when due (`user_gone`, `not_in_channel`, `archived`, `thread_gone`, `refused`).
pub static SCHEDULED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_scheduled_messages_total",
        "scheduled messages, by outcome (scheduled, deleted, restricted, posted, retried, dropped_*)",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// How long after its `post_at` each scheduled message was posted.
pub static SCHEDULED_LATENESS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::register_histogram!(
        "switchboard_webapp_scheduled_lateness_seconds",
        "how long after its post_at a scheduled message was posted",
        vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]
    )
    .expect("metric registers once")
});

/// Users deactivated or brought back by an admin: `deactivated`, `reactivated`.
pub static USERS_DEACTIVATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_user_activations_total",
        "users deactivated or reactivated by an admin (admin.users.setInactive / setActive), by event",
        &["event"]
    )
    .expect("metric registers once")
});

/// Channel bookmark changes, by the event each sent; `raced`: a change retried.
pub static BOOKMARKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_bookmarks_total",
        "channel bookmark changes, by event (bookmark_added, bookmark_updated, bookmark_removed; raced: a change retried because another changed the channel's bookmarks first)",
        &["event"]
    )
    .expect("metric registers once")
});

/// Custom emoji changes: `added`, `removed`, `renamed`; `raced`: a change retried.
pub static DND: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_dnd_total",
        "Do Not Disturb changes, by event (snoozed, ended: a running snooze ended early; lapsed: a snooze's end told; raced: a change retried because another changed the DND records first; unreadable: a stored snooze end that does not parse, dropped)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static EMOJI: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_emoji_total",
        "custom emoji changes, by event (added, removed, renamed; raced: a change retried because another changed the workspace's emoji first)",
        &["event"]
    )
    .expect("metric registers once")
});

/// User group changes: `created`, `updated`, `disabled`, `enabled`, `members_changed`;
/// `raced`: a change retried.
pub static USERGROUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_usergroups_total",
        "user group changes, by event (created, updated, disabled, enabled, members_changed; raced: a change retried because another changed the workspace's groups first)",
        &["event"]
    )
    .expect("metric registers once")
});

/// Files, by what happened: `announced` (an upload URL handed out), `uploaded`, `completed`,
/// `downloaded`, `deleted`, `refused_<why>` for an upload refused, and `tombstone_failed`
/// for a message that shared a deleted file and could not be changed.
pub static FILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_files_total",
        "files, by event (announced, uploaded, completed, downloaded, deleted, refused_*; tombstone_failed: a message that shared a deleted file could not be changed)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static EVENT_SUBSCRIPTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_event_subscriptions_total",
        "apps.eventSubscriptions changes, by event (set, deleted, disabled: a request URL that failed more than 95 % of its events for webapp.events_failure_window_secs, or one that is not a public address while webapp.private_request_urls is off, its events stopped until it is set again; verification_failed, address_refused: a request URL that is not a public address while webapp.private_request_urls is off; raced: a change retried because another changed the subscriptions first)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static EVENTS_HTTP: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_events_http_total",
        "Events API requests to apps' request URLs, by outcome (delivered; refused_no_retry: not taken, no retry asked; http_error, http_timeout, connection_failed: sent again later; session_failed: an app's Socket Mode session could not be held; unreadable: a stored subscription skipped; refused_address: a request URL that is not a public address, not called while webapp.private_request_urls is off)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static EVENTS_HTTP_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "switchboard_webapp_events_http_seconds",
        "How long apps' request URLs took to answer an event",
        vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    )
    .expect("metric registers once")
});

pub static EVENTS_HTTP_APPS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_webapp_events_http_apps",
        "Apps whose events this node sends to their request URLs"
    )
    .expect("metric registers once")
});

pub static TOKENS_REVOKED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_tokens_revoked_total",
        "auth.revoke, by event (revoked; raced: a revocation retried because another changed the set first)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static RECORD_POLLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_webapp_record_polls_total",
        "Looks at the cluster's record sets (event_subscriptions, revoked_tokens, dnd_lapses) every webapp.records_poll_ms, by set and read (version: the set had not changed, only its version was read; set: it had, and was read whole)",
        &["kind", "read"]
    )
    .expect("metric registers once")
});

pub static REVOKED_TOKENS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_webapp_revoked_tokens",
        "Revoked tokens this node refuses, as it last read them"
    )
    .expect("metric registers once")
});
