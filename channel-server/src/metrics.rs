//! Channel server metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

pub static POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_cs_posts_total",
        "posts handled by this channel server, by outcome",
        &["outcome"]
    )
    .unwrap()
});
pub static POST_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "switchboard_cs_post_duration_seconds",
        "time from a post reaching the channel server to its durable ack",
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
    )
    .unwrap()
});
pub static DELIVERIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_cs_gateway_deliveries_total",
        "message frames queued to subscribed gateways (one per gateway per message)"
    )
    .unwrap()
});
pub static GATEWAY_OVERFLOWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_cs_gateway_overflows_total",
        "gateway links cut off because their queue was full (they resubscribe and fill the gap)"
    )
    .unwrap()
});
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_cs_refused_total",
        "requests refused, by reason (wrong_owner, bad_request, ...)",
        &["reason"]
    )
    .unwrap()
});
pub static ACTIVE_CHANNELS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_cs_active_channels",
        "channels with state loaded on this channel server"
    )
    .unwrap()
});
pub static GATEWAY_LINKS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_cs_gateway_links",
        "gateway subscription streams open"
    )
    .unwrap()
});
pub static SEQ_CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_cs_seq_conflicts_total",
        "appends refused by the store because another owner took the sequence (ring change race)"
    )
    .unwrap()
});
