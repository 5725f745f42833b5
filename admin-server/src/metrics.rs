//! Admin server metrics.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

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
