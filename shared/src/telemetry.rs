//! Logging and metrics: one tracing subscriber per process (human or JSON lines), the
//! process-wide Prometheus registry, and the `/metrics` and `/health` routes every role serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tracing_subscriber::EnvFilter;

/// Starts logging. `RUST_LOG` overrides `filter`. Safe to call twice (the second is ignored).
pub fn init_tracing(format: &str, filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|env| EnvFilter::try_new(quiet_dependencies(&env)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_dependencies(filter)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).try_init()
    };
}

/// Libraries whose `info` is about their own housekeeping, not the service's: Tantivy logs six
/// lines per index commit ("Preparing commit", "save metas", "Garbage collect"...), which is
/// four commits a second while messages arrive. They log at `warn` unless `filter` names them.
const QUIET_DEPENDENCIES: &[&str] = &["tantivy"];

/// `filter` with a `warn` directive for each of [`QUIET_DEPENDENCIES`] that it does not name.
fn quiet_dependencies(filter: &str) -> String {
    let mut out = filter.trim().to_string();
    for dep in QUIET_DEPENDENCIES {
        if !out.contains(dep) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(dep);
            out.push_str("=warn");
        }
    }
    out
}

/// The Prometheus text exposition of every registered metric.
pub fn render_metrics() -> String {
    use prometheus::Encoder;
    let families = prometheus::gather();
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding succeeds");
    String::from_utf8(out).expect("prometheus text is utf-8")
}

/// A check `/health` makes on each request: `Some(reason)` when something the role depends on
/// is broken (its store's files were removed under it, say).
pub type HealthCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Whether a role is ready to serve; `/health` answers 503 until it is, while draining, and
/// while one of its checks fails.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    checks: Arc<std::sync::Mutex<Vec<HealthCheck>>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    /// Adds a check that `/health` makes on each request.
    pub fn add_check(&self, check: HealthCheck) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }
    /// What the checks find wrong now (empty: nothing).
    pub fn failing(&self) -> Vec<String> {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        checks.iter().filter_map(|c| c()).collect()
    }
}

/// `/metrics` (Prometheus text) and `/health` for a role's HTTP listener.
pub fn ops_router(role: &'static str, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render_metrics(),
                )
            }),
        )
        .route(
            "/health",
            get(move || {
                let health = health.clone();
                async move {
                    let failing = health.failing();
                    let ok = health.is_ready() && failing.is_empty();
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let mut body = serde_json::json!({ "role": role, "ok": ok });
                    if !failing.is_empty() {
                        body["failing"] = failing.into();
                    }
                    (status, axum::Json(body)).into_response()
                }
            }),
        )
}

/// Histogram bounds (seconds) for one hop of a post between servers: a whole post takes a few
/// milliseconds, so these are finer below 10 ms than the request histograms' bounds, which
/// would put most of a hop's observations in one bucket.
pub const HOP_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// Histogram bounds (seconds) for the waits between a lane's tasks: a hand-off from one task
/// to another takes microseconds when a worker is free, so these start at 10 µs.
pub const WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
    1.0,
];

/// Metrics of the shared parts (mesh transport, store).
pub mod metrics {
    use std::sync::LazyLock;
    use std::time::Instant;

    use prometheus::Histogram;

    /// The steps of a call on a lane ([`crate::mesh::lane`]) that are waits or writes, each
    /// a `stage` of `switchboard_mesh_lane_wait_seconds`. What a hop takes beyond their sum
    /// and the answer's own time is QUIC's (packets, the connection's driver tasks).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum LaneStage {
        /// Client: from the caller queuing its call to the lane's writer taking it.
        CallQueued,
        /// Client: one write of the calls the writer took (per write, not per call).
        CallsWritten,
        /// Server: from the call read off the stream to its answer's task first running.
        CallStarted,
        /// Server: from an answer being ready to the lane's writer taking it.
        AnswerQueued,
        /// Server: one write of the answers the writer took (per write, not per answer).
        AnswersWritten,
        /// Client: from the reader taking an answer off the stream to its caller resuming.
        AnswerHanded,
    }

    impl LaneStage {
        pub const ALL: [LaneStage; 6] = [
            LaneStage::CallQueued,
            LaneStage::CallsWritten,
            LaneStage::CallStarted,
            LaneStage::AnswerQueued,
            LaneStage::AnswersWritten,
            LaneStage::AnswerHanded,
        ];

        pub fn as_str(self) -> &'static str {
            match self {
                LaneStage::CallQueued => "call_queued",
                LaneStage::CallsWritten => "calls_written",
                LaneStage::CallStarted => "call_started",
                LaneStage::AnswerQueued => "answer_queued",
                LaneStage::AnswersWritten => "answers_written",
                LaneStage::AnswerHanded => "answer_handed",
            }
        }
    }

    /// The lane stages' histograms, looked up once: every call observes several.
    static LANE_WAITS: LazyLock<[Histogram; 6]> = LazyLock::new(|| {
        let vec = register_histogram_vec!(
            "switchboard_mesh_lane_wait_seconds",
            "waits and writes of calls on mesh lanes, by stage: call_queued, calls_written, \
             call_started, answer_queued, answers_written, answer_handed",
            &["stage"],
            super::WAIT_BUCKETS.to_vec()
        )
        .unwrap();
        LaneStage::ALL.map(|s| vec.with_label_values(&[s.as_str()]))
    });

    /// How many times `stage` was observed in this process.
    pub fn lane_wait_count(stage: LaneStage) -> u64 {
        LANE_WAITS[stage as usize].get_sample_count()
    }

    /// Observes the time from `since` to now for `stage`.
    pub fn lane_wait(stage: LaneStage, since: Instant) {
        lane_wait_between(stage, since, Instant::now());
    }

    /// Observes the time from `since` to `until` for `stage`.
    pub fn lane_wait_between(stage: LaneStage, since: Instant, until: Instant) {
        LANE_WAITS[stage as usize].observe(until.saturating_duration_since(since).as_secs_f64());
    }

    use prometheus::{
        register_histogram_vec, register_int_counter, register_int_counter_vec, HistogramVec,
        IntCounter, IntCounterVec,
    };

    pub static MESH_CONNECTIONS_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_connections_accepted_total",
            "QUIC mesh connections accepted"
        )
        .unwrap()
    });
    pub static MESH_HANDSHAKE_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_handshake_failures_total",
            "QUIC mesh handshakes that failed (no or foreign certificate, garbage)"
        )
        .unwrap()
    });
    pub static MESH_CONNECT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_connect_failures_total",
            "outgoing mesh connections that failed"
        )
        .unwrap()
    });
    pub static MESH_BAD_FRAMES: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_bad_frames_total",
            "mesh frames refused as oversized, truncated or malformed"
        )
        .unwrap()
    });
    pub static MESH_LANES_OPENED: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_lanes_opened_total",
            "request lanes opened (one per connection, again after one fails)"
        )
        .unwrap()
    });
    pub static MESH_LOCAL_CALLS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "switchboard_mesh_local_calls_total",
            "mesh requests answered by a server of the same process, without QUIC (`dev`)"
        )
        .unwrap()
    });
    pub static MESH_FRAMES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("switchboard_mesh_frames_sent_total", "mesh frames written").unwrap()
    });
    pub static MESH_FRAMES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("switchboard_mesh_frames_received_total", "mesh frames read").unwrap()
    });
    pub static RING_EPOCH_REGRESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "switchboard_ring_epoch_regressions_total",
            "rings from the admin server with a lower epoch than the one held, by outcome: \
             adopted (first on a new stream: the admin server's epochs restarted, e.g. it lost \
             its saved ring) or ignored (out of order within one stream)",
            &["outcome"]
        )
        .unwrap()
    });
    pub static STORE_OPS: LazyLock<HistogramVec> = LazyLock::new(|| {
        register_histogram_vec!(
            "switchboard_store_op_duration_seconds",
            "embedded store operation latency",
            &["op"],
            vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]
        )
        .unwrap()
    });
    pub static STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "switchboard_store_errors_total",
            "store operations that failed",
            &["op"]
        )
        .unwrap()
    });
    pub static STORE_CONNECTIONS_OPENED: LazyLock<IntCounter> = LazyLock::new(|| {
        prometheus::register_int_counter!(
            "switchboard_store_connections_opened_total",
            "embedded store connections opened by the read pools (at most 32 per file)"
        )
        .unwrap()
    });
    pub static STORE_READS_HANDED_OFF: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
        prometheus::register_int_counter_vec!(
            "switchboard_store_reads_handed_off_total",
            "embedded store point reads that could not finish on the calling thread without \
             waiting (a locked file) or failed there, and ran again on the blocking pool",
            &["op"]
        )
        .unwrap()
    });
    pub static STORE_WAL_FRAMES: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
        prometheus::register_int_gauge_vec!(
            "switchboard_store_wal_frames",
            "pages in an embedded store shard's write-ahead log at its last checkpoint",
            &["shard"]
        )
        .unwrap()
    });
    pub static STORE_FILES_LOST: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "switchboard_store_files_lost_total",
            "embedded store files found deleted or replaced while open (every write to such a \
             file is refused from then on; the server needs a restart on a good data directory)",
            &["file"]
        )
        .unwrap()
    });
    pub static STORE_BATCH_SIZE: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
        prometheus::register_histogram!(
            "switchboard_store_commit_batch_messages",
            "messages committed per group commit",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
        )
        .unwrap()
    });
}

#[cfg(test)]
mod tests {
    use super::quiet_dependencies;

    #[test]
    fn chatty_libraries_log_warnings_unless_the_filter_names_them() {
        assert_eq!(quiet_dependencies("info"), "info,tantivy=warn");
        assert_eq!(
            quiet_dependencies(" debug,switchboard_gateway=trace "),
            "debug,switchboard_gateway=trace,tantivy=warn"
        );
        assert_eq!(quiet_dependencies(""), "tantivy=warn");
        // Named, in any form, it is left as given.
        assert_eq!(
            quiet_dependencies("info,tantivy=debug"),
            "info,tantivy=debug"
        );
        assert_eq!(
            quiet_dependencies("warn,tantivy::indexer=info"),
            "warn,tantivy::indexer=info"
        );
        // What comes out is a filter tracing accepts.
        for f in ["info", "debug,hyper=warn", ""] {
            let q = quiet_dependencies(f);
            assert!(tracing_subscriber::EnvFilter::try_new(&q).is_ok(), "{q}");
        }
    }
}
