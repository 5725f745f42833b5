//! Gateway metrics.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};

pub static SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("switchboard_gateway_sessions", "WebSocket sessions open").unwrap()
});
pub static SESSIONS_OPENED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_sessions_opened_total",
        "WebSocket sessions accepted"
    )
    .unwrap()
});
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_rejected_connections_total",
        "WebSocket upgrades refused, by reason",
        &["reason"]
    )
    .unwrap()
});
pub static HELLO_BEFORE_LIVE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_hello_before_live_total",
        "sessions whose hello went out before all their channels were subscribed here (the \
         wait for a subscription ran out): a post right after that hello may reach them only \
         on resume"
    )
    .unwrap()
});
pub static UNREAD_COUNTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_unread_counts_total",
        "channels whose unread messages a hello counted, by source (window: this gateway's \
         recent entries; owner: a page from the channel's owner; failed: the owner's answer \
         was an error, late: the owner had not answered within a second; those two give the \
         entries since the read position instead)",
        &["source"]
    )
    .unwrap()
});
pub static SESSION_OVERFLOWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_session_overflows_total",
        "sessions whose send queue overflowed and were told to resync"
    )
    .unwrap()
});
pub static SESSION_WRITE_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_session_write_timeouts_total",
        "sessions closed because a write to the client made no progress within the idle timeout (the client stopped reading)"
    )
    .unwrap()
});
pub static BAD_INPUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_bad_input_total",
        "client frames refused, by kind (malformed_json, unknown_event, binary, too_big, not_in_channel, ...)",
        &["kind"]
    )
    .unwrap()
});
pub static CLIENT_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_client_events_total",
        "client events handled, by type",
        &["type"]
    )
    .unwrap()
});
pub static SOCKET_MODE_ENVELOPES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_socket_mode_envelopes_total",
        "events written to Socket Mode sessions in events_api envelopes"
    )
    .unwrap()
});
pub static SOCKET_MODE_CLAIMED_ELSEWHERE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_socket_mode_claimed_elsewhere_total",
        "events not sent on a Socket Mode connection because another connection of its app sent them"
    )
    .unwrap()
});
pub static SOCKET_MODE_REDELIVERED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_socket_mode_redelivered_total",
        "Socket Mode envelopes sent again (retry_attempt one higher), after their connection closed or their acknowledgement timed out"
    )
    .unwrap()
});
pub static SOCKET_MODE_ACK_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_socket_mode_ack_timeouts_total",
        "Socket Mode envelopes not acknowledged within three seconds (each is retried, up to three times)"
    )
    .unwrap()
});
pub static SOCKET_MODE_UNDELIVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_socket_mode_undelivered_total",
        "unacknowledged Socket Mode envelopes given up on, by reason (retries: sent four times; expired: no connection of the app within the wait; overflow / unacked_overflow: over the kept count)",
        &["reason"]
    )
    .unwrap()
});
pub static NOTICES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_notices_total",
        "workspace events (channel created, renamed, archived; user joined or changed) offered to this gateway's sessions"
    )
    .unwrap()
});
pub static SESSIONS_CLOSED_INACTIVE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_sessions_closed_inactive_total",
        "sessions ended because their user was deactivated"
    )
    .unwrap()
});
pub static PRESENCE_REPEATS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_presence_repeats_total",
        "presence changes not written to sessions because they repeated the last one announced"
    )
    .unwrap()
});
pub static EPHEMERAL_MESSAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_ephemeral_messages_total",
        "ephemeral messages (chat.postEphemeral) written to sessions"
    )
    .unwrap()
});
pub static RTM_POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_rtm_posts_total",
        "messages sent by clients over RTM, by outcome (ok, refused, ratelimited, unavailable, too_many_pending)",
        &["outcome"]
    )
    .unwrap()
});
pub static MESSAGES_IN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_messages_received_total",
        "channel messages received from channel servers"
    )
    .unwrap()
});
pub static SESSION_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_session_messages_total",
        "messages written to sessions"
    )
    .unwrap()
});
pub static GAP_FETCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_gap_fetches_total",
        "fetches to fill a gap in a channel's sequence"
    )
    .unwrap()
});
pub static GAPS_SKIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_gaps_skipped_total",
        "gaps that the store itself does not hold (an append that failed), skipped"
    )
    .unwrap()
});
pub static SUBSCRIBES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_subscribes_total",
        "channel subscriptions sent to channel servers"
    )
    .unwrap()
});
pub static LINK_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_link_failures_total",
        "channel server links lost"
    )
    .unwrap()
});
pub static SUBSCRIBED_CHANNELS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_gateway_subscribed_channels",
        "channels with at least one local session"
    )
    .unwrap()
});
pub static BOOT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_boot_failures_total",
        "connects whose hello went without boot data because Flannel did not answer with it, by reason (unreachable, bad_answer, refused)",
        &["reason"]
    )
    .unwrap()
});
pub static MEMBERSHIP_RESYNCS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_membership_resyncs_total",
        "users whose channels were re-read from the Web API after the admin server's stream restarted, by result (unchanged, changed, raced, failed)",
        &["result"]
    )
    .unwrap()
});
pub static MEMBERSHIP_RESYNC_CHANNELS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_gateway_membership_resync_channels_total",
        "channel memberships that a resync found missed (a session joined or left them then)",
        &["change"]
    )
    .unwrap()
});
pub static BACKFILL_GIVE_UPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_backfill_give_ups_total",
        "sessions told to resync because filling a gap kept failing (no owner, owner unreachable) for about 15 s"
    )
    .unwrap()
});
pub static PENDING_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_pending_dropped_total",
        "live messages past a gap not held while the gap was fetched (fetched after it instead)"
    )
    .unwrap()
});
pub static EPHEMERAL_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_ephemeral_dropped_total",
        "typing and presence events not relayed because their channel server's link had too many queued"
    )
    .unwrap()
});

pub static SESSIONS_CLOSED_REVOKED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_gateway_sessions_closed_revoked_total",
        "Sessions closed because their token was revoked (auth.revoke)"
    )
    .expect("metric registers once")
});
