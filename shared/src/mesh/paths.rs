//! The QUIC paths of this process's live mesh connections, as Prometheus metrics read when
//! `/metrics` is scraped: round-trip time, congestion window, packets sent and lost, and
//! congestion events, per connection. A hop that waits on QUIC's congestion control (a small
//! window, losses) shows here; the lane timings (`switchboard_mesh_lane_wait_seconds`) only
//! say that the time went somewhere inside QUIC.
//!
//! A connection is listed from its handshake until the last handle to it is dropped; one that
//! closed meanwhile is left out. Labels: `peer` (its address), `side` (`connected` or
//! `accepted`) and `conn`, a number unique in the process, since two roles of one process may
//! each hold a connection to the same peer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Once};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

/// Which end of the connection this process is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Connected,
    Accepted,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Connected => "connected",
            Side::Accepted => "accepted",
        }
    }
}

struct Live {
    conn: quinn::Connection,
    side: Side,
}

static LIVE: LazyLock<Mutex<HashMap<u64, Live>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(1);
static REGISTER: Once = Once::new();

/// Held by every clone of a `MeshConn`: the last one dropped takes the connection off the
/// list (and with it the list's handle, so the connection can close as quinn closes one
/// nobody holds).
pub(crate) struct Tracked {
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.lock().remove(&self.id);
    }
}

/// Lists `conn` until the returned guard is dropped.
pub(crate) fn track(conn: &quinn::Connection, side: Side) -> Arc<Tracked> {
    REGISTER.call_once(|| {
        if let Err(e) = prometheus::register(Box::new(PathCollector::new())) {
            tracing::warn!(error = %e, "mesh path metrics not registered");
        }
    });
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    LIVE.lock().insert(
        id,
        Live {
            conn: conn.clone(),
            side,
        },
    );
    Arc::new(Tracked { id })
}

/// Reads every live connection's path statistics at each scrape.
struct PathCollector {
    rtt: GaugeVec,
    cwnd: IntGaugeVec,
    sent: IntCounterVec,
    lost: IntCounterVec,
    congestion: IntCounterVec,
    descs: Vec<Desc>,
    /// One scrape at a time: each resets the families and fills them again.
    scrape: Mutex<()>,
}

const LABELS: &[&str] = &["peer", "side", "conn"];

impl PathCollector {
    fn new() -> PathCollector {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let rtt = GaugeVec::new(
            opts(
                "switchboard_mesh_path_rtt_seconds",
                "Smoothed round-trip time of a live mesh connection's path, as QUIC estimates it.",
            ),
            LABELS,
        )
        .expect("valid metric");
        let cwnd = IntGaugeVec::new(
            opts(
                "switchboard_mesh_path_cwnd_bytes",
                "Congestion window of a live mesh connection: the bytes it may have in flight.",
            ),
            LABELS,
        )
        .expect("valid metric");
        let sent = IntCounterVec::new(
            opts(
                "switchboard_mesh_path_sent_packets_total",
                "Packets a live mesh connection sent.",
            ),
            LABELS,
        )
        .expect("valid metric");
        let lost = IntCounterVec::new(
            opts(
                "switchboard_mesh_path_lost_packets_total",
                "Packets of a live mesh connection that QUIC declared lost (and sent again).",
            ),
            LABELS,
        )
        .expect("valid metric");
        let congestion = IntCounterVec::new(
            opts(
                "switchboard_mesh_path_congestion_events_total",
                "Times a live mesh connection's congestion window was cut after a loss.",
            ),
            LABELS,
        )
        .expect("valid metric");
        let descs = [
            rtt.desc(),
            cwnd.desc(),
            sent.desc(),
            lost.desc(),
            congestion.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        PathCollector {
            rtt,
            cwnd,
            sent,
            lost,
            congestion,
            descs,
            scrape: Mutex::new(()),
        }
    }
}

impl Collector for PathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock();
        self.rtt.reset();
        self.cwnd.reset();
        self.sent.reset();
        self.lost.reset();
        self.congestion.reset();
        // Read under the list's lock, written after it: `stats` takes each connection's own.
        let live: Vec<(u64, quinn::Connection, Side)> = LIVE
            .lock()
            .iter()
            .map(|(id, l)| (*id, l.conn.clone(), l.side))
            .collect();
        for (id, conn, side) in live {
            if conn.close_reason().is_some() {
                continue;
            }
            let stats = conn.stats();
            let (peer, id) = (conn.remote_address().to_string(), id.to_string());
            let labels = [peer.as_str(), side.as_str(), id.as_str()];
            self.rtt
                .with_label_values(&labels)
                .set(stats.path.rtt.as_secs_f64());
            self.cwnd
                .with_label_values(&labels)
                .set(i64::try_from(stats.path.cwnd).unwrap_or(i64::MAX));
            self.sent
                .with_label_values(&labels)
                .inc_by(stats.path.sent_packets);
            self.lost
                .with_label_values(&labels)
                .inc_by(stats.path.lost_packets);
            self.congestion
                .with_label_values(&labels)
                .inc_by(stats.path.congestion_events);
        }
        [
            self.rtt.collect(),
            self.cwnd.collect(),
            self.sent.collect(),
            self.lost.collect(),
            self.congestion.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families a scrape gives for the connection numbered `id`.
    fn scraped(id: u64) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for family in prometheus::gather() {
            if !family.name().starts_with("switchboard_mesh_path_") {
                continue;
            }
            for metric in family.get_metric() {
                let ours = metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "conn" && l.value() == id.to_string());
                if ours {
                    let value = if family.get_field_type() == prometheus::proto::MetricType::GAUGE {
                        metric.get_gauge().get_value()
                    } else {
                        metric.get_counter().get_value()
                    };
                    out.insert(family.name().to_string(), value);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_live_connection_reports_its_path_until_its_last_handle_goes() {
        let dir = tempfile::tempdir().unwrap();
        let tls = crate::mesh::MeshTls::dev(dir.path()).unwrap();
        let (server, client) = crate::mesh::tests::pair_with(&tls);
        let addr = server.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(client.connect(addr), server.accept());
        let (connected, accepted) = (connected.unwrap(), accepted.unwrap());
        // Some traffic, so that QUIC has measured the path.
        let (mut w, _r) = connected.open().await.unwrap();
        w.send(&crate::protocol::MeshFrame::Ok).await.unwrap();
        let (_w2, mut r2) = accepted.accept().await.unwrap();
        assert!(r2.read().await.unwrap().is_some());

        let id = connected.tracked.id;
        let got = scraped(id);
        for family in [
            "switchboard_mesh_path_rtt_seconds",
            "switchboard_mesh_path_cwnd_bytes",
            "switchboard_mesh_path_sent_packets_total",
            "switchboard_mesh_path_lost_packets_total",
            "switchboard_mesh_path_congestion_events_total",
        ] {
            assert!(got.contains_key(family), "{family} missing: {got:?}");
        }
        assert!(got["switchboard_mesh_path_rtt_seconds"] > 0.0, "{got:?}");
        assert!(got["switchboard_mesh_path_cwnd_bytes"] > 0.0, "{got:?}");
        assert!(
            got["switchboard_mesh_path_sent_packets_total"] > 0.0,
            "{got:?}"
        );
        assert!(
            !scraped(accepted.tracked.id).is_empty(),
            "the accepting side is listed too"
        );

        // A clone keeps it listed; the last handle takes it off.
        let clone = connected.clone();
        drop(connected);
        assert!(!scraped(id).is_empty());
        drop(w);
        drop(clone);
        assert!(scraped(id).is_empty(), "gone with its last handle");
    }
}
