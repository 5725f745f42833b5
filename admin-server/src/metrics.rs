//! Admin server metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, Histogram, IntCounterVec,
    IntGauge,
};

pub static RING_EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("switchboard_admin_ring_epoch", "current ring epoch").unwrap()
});
pub static RING_OWNERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_admin_ring_owners",
        "channel servers that own channels in the current epoch"
    )
    .unwrap()
});
pub static ROUTED_POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_admin_routed_posts_total",
        "posts routed to channel servers, by outcome (ok, retried, no_owner, error, unknown: sent but unanswered, not resent)",
        &["outcome"]
    )
    .unwrap()
});
/// One routed post's round trip to its owner (one attempt), as the admin server sees it: the
/// channel server's own time plus the hop. Finer buckets than most, since the whole post is a
/// few milliseconds and this is one of its parts.
pub static OWNER_POST_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "switchboard_admin_owner_post_duration_seconds",
        "one attempt at a routed post, from sending it to the owning channel server to its answer",
        shared::telemetry::HOP_BUCKETS.to_vec()
    )
    .unwrap()
});
pub static NODES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_admin_connected_nodes",
        "nodes following the ring"
    )
    .unwrap()
});
pub static BAD_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_admin_bad_requests_total",
        "requests refused, by reason",
        &["reason"]
    )
    .unwrap()
});

pub static PRESENCE_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_admin_presence_changes_total",
        "presence changes broadcast, by presence",
        &["presence"]
    )
    .unwrap()
});
pub static FOLLOWER_WRITE_TIMEOUTS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "switchboard_admin_follower_write_timeouts_total",
        "membership streams ended because the node stopped reading them (a write waited past the timeout)"
    )
    .unwrap()
});
