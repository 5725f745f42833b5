//! Flannel's metrics, registered with the process-wide Prometheus registry that `/metrics`
//! renders. Label values come from fixed sets (query names, error names, reasons).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

pub static HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_cache_hits_total",
        "queries answered from a fresh cached workspace"
    )
    .expect("metric registers once")
});

pub static MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_cache_misses_total",
        "queries that had to wait for a workspace load (absent or evicted; or a token naming a user the copy lacks)"
    )
    .expect("metric registers once")
});

pub static EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_cache_evictions_total",
        "workspaces evicted to stay within flannel.max_workspaces and flannel.max_cached_users"
    )
    .expect("metric registers once")
});

pub static LOAD_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "switchboard_flannel_load_duration_seconds",
        "time to load one workspace from the Web API and index it",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("metric registers once")
});

pub static LOAD_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_load_failures_total",
        "workspace loads that failed (the workspace's next load waits for a backoff)"
    )
    .expect("metric registers once")
});

pub static STALE_SERVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_stale_served_total",
        "queries answered at once from a stale cached workspace (its reload runs in the background)"
    )
    .expect("metric registers once")
});

pub static RELOADS_DEFERRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_flannel_reloads_deferred_total",
        "loads due but not started, by reason: the workspace's last load failed too recently (backoff), or every load turn was taken (busy; the stale copy was served)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static LOADS_RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_flannel_loads_running",
        "workspace loads running now (at most flannel's max_concurrent_loads per cache)"
    )
    .expect("metric registers once")
});

pub static LOADS_QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_flannel_loads_queued",
        "workspace loads that queries wait for, waiting now for a load turn"
    )
    .expect("metric registers once")
});

pub static CACHED_WORKSPACES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_flannel_cached_workspaces",
        "workspaces held in memory"
    )
    .expect("metric registers once")
});

pub static CACHED_USERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_flannel_cached_users",
        "users held in memory over all cached workspaces"
    )
    .expect("metric registers once")
});

pub static EVENTS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_events_applied_total",
        "change events applied to cached workspaces (or queued behind their load)"
    )
    .expect("metric registers once")
});

pub static EVENTS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_events_dropped_total",
        "change events of workspaces not cached here (they load fresh)"
    )
    .expect("metric registers once")
});

pub static EVENTS_IGNORED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "switchboard_flannel_events_ignored_total",
        "change events that change nothing Flannel caches (presence), dropped before any lock"
    )
    .expect("metric registers once")
});

pub static INVALIDATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_flannel_invalidations_total",
        "cached workspaces marked stale, by reason (link_down, link_up, unknown_in_event, unknown_user, pending_overflow)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static LINK_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchboard_flannel_admin_link_up",
        "1 while the change-event stream from the admin server is up"
    )
    .expect("metric registers once")
});

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_flannel_requests_total",
        "queries, by method",
        &["method"]
    )
    .expect("metric registers once")
});

pub static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchboard_flannel_errors_total",
        "queries answered with ok=false, by Slack error name",
        &["error"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchboard_flannel_request_duration_seconds",
        "query latency, loads included",
        &["method"],
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0]
    )
    .expect("metric registers once")
});
