//! Where a post's time went inside the servers: the `switchboard dev` process's own latency
//! histograms (its `/metrics`), read before and after a phase, so that a phase's post-ack
//! latency can be split into the Web API's, the channel server's and the store's parts.
//!
//! The histograms are Prometheus's: cumulative counts per upper bound. A quantile is placed
//! by linear interpolation inside the bucket that holds it, so it is only as fine as the
//! buckets (5 ms, 10 ms, 25 ms...); a quantile past the last finite bound reads as that bound
//! and is flagged.

use serde::Serialize;

/// The server histograms a phase reports, as (label, metric family, label filter).
pub const POST_PATH: &[(&str, &str, &str)] = &[
    (
        "web API chat.postMessage",
        "switchboard_webapp_request_duration_seconds",
        "method=\"chat.postMessage\"",
    ),
    (
        "web API to admin server post",
        "switchboard_webapp_admin_request_duration_seconds",
        "request=\"post\"",
    ),
    (
        "admin server to channel server post",
        "switchboard_admin_owner_post_duration_seconds",
        "",
    ),
    (
        "channel server post",
        "switchboard_cs_post_duration_seconds",
        "",
    ),
    (
        "store append batch",
        "switchboard_store_op_duration_seconds",
        "op=\"append_batch\"",
    ),
    (
        "store checkpoint",
        "switchboard_store_op_duration_seconds",
        "op=\"checkpoint\"",
    ),
    // The waits inside the two hops, summed over every lane of the process (the Web API's
    // to the admin server and the admin server's to the channel servers).
    (
        "lane call queued",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"call_queued\"",
    ),
    (
        "lane calls written",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"calls_written\"",
    ),
    (
        "lane call started",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"call_started\"",
    ),
    (
        "lane answer queued",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"answer_queued\"",
    ),
    (
        "lane answers written",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"answers_written\"",
    ),
    (
        "lane answer handed",
        "switchboard_mesh_lane_wait_seconds",
        "stage=\"answer_handed\"",
    ),
];

/// One histogram's cumulative buckets: (upper bound in seconds, count), ascending, the last
/// one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of `family` (its `_bucket` lines) whose labels contain `filter`.
    pub fn parse(body: &str, family: &str, filter: &str) -> Option<Buckets> {
        let prefix = format!("{family}_bucket{{");
        let mut out = Vec::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            if !labels.contains(filter) {
                continue;
            }
            let Some(le) = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))
                .and_then(|v| v.strip_suffix('"'))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            let Ok(count) = value.trim().parse::<f64>() else {
                continue;
            };
            out.push((le, count as u64));
        }
        if out.is_empty() {
            return None;
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Buckets(out))
    }

    /// What was observed between `before` and `self` (same buckets).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before
                        .0
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map_or(0, |&(_, c)| c);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |&(_, n)| n)
    }

    /// The `q` quantile in seconds, interpolated in its bucket, and whether it lies past the
    /// last finite bound (then the value is that bound).
    pub fn quantile(&self, q: f64) -> Option<(f64, bool)> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lo, mut below) = (0.0, 0u64);
        for &(le, n) in &self.0 {
            if n as f64 >= rank && n > below {
                if le.is_infinite() {
                    return Some((lo, true));
                }
                let within = (rank - below as f64) / (n - below) as f64;
                return Some((lo + (le - lo) * within.clamp(0.0, 1.0), false));
            }
            if le.is_finite() {
                lo = le;
            }
            below = n;
        }
        Some((lo, true))
    }
}

/// One server histogram over one phase.
#[derive(Clone, Debug, Serialize)]
pub struct ServerLatency {
    pub what: String,
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The p99 lies past the histogram's last bound (`p99_ms` is that bound).
    pub p99_past_last_bucket: bool,
}

/// The `/metrics` text of a process, or `None` when it cannot be read.
pub async fn scrape(http: &str) -> Option<String> {
    reqwest::get(format!("{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The [`POST_PATH`] histograms between two scrapes.
pub fn post_path(before: &str, after: &str) -> Vec<ServerLatency> {
    POST_PATH
        .iter()
        .filter_map(|&(what, family, filter)| {
            let after = Buckets::parse(after, family, filter)?;
            let d = match Buckets::parse(before, family, filter) {
                Some(b) => after.since(&b),
                None => after,
            };
            let p50 = d.quantile(0.5);
            let p99 = d.quantile(0.99);
            Some(ServerLatency {
                what: what.to_string(),
                count: d.count(),
                p50_ms: p50.map(|(v, _)| v * 1e3),
                p99_ms: p99.map(|(v, _)| v * 1e3),
                p99_past_last_bucket: p99.is_some_and(|(_, past)| past),
            })
        })
        .collect()
}

/// The QUIC paths of the process's mesh connections over a phase
/// (`switchboard_mesh_path_*`): whether a hop waited on congestion control.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeshPaths {
    /// Live connections at the end of the phase.
    pub connections: usize,
    /// Over the phase, summed over the connections (a connection made during the phase
    /// counts from zero).
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub congestion_events: u64,
    /// The connection that sent the most packets in the phase (a hop's), at the end of it.
    pub busiest: Option<BusiestPath>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BusiestPath {
    pub peer: String,
    /// `connected` or `accepted`.
    pub side: String,
    pub sent_packets: u64,
    pub rtt_ms: f64,
    pub cwnd_bytes: u64,
}

/// One sample's labels and value.
struct Sample {
    peer: String,
    side: String,
    value: f64,
}

/// Per `conn` label, the sample of `family` in a `/metrics` text.
fn per_connection(body: &str, family: &str) -> std::collections::HashMap<String, Sample> {
    let label = |labels: &str, name: &str| -> Option<String> {
        labels.split(',').find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix("=\"")?;
            Some(v.trim_end_matches('"').to_string())
        })
    };
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let sample = Sample {
                peer: label(labels, "peer").unwrap_or_default(),
                side: label(labels, "side").unwrap_or_default(),
                value: value.trim().parse().ok()?,
            };
            Some((label(labels, "conn")?, sample))
        })
        .collect()
}

/// The mesh paths between two scrapes; `None` when the process reports none.
pub fn mesh_paths(before: &str, after: &str) -> Option<MeshPaths> {
    let rtt = per_connection(after, "switchboard_mesh_path_rtt_seconds");
    if rtt.is_empty() {
        return None;
    }
    let cwnd = per_connection(after, "switchboard_mesh_path_cwnd_bytes");
    let delta = |family: &str| -> std::collections::HashMap<String, u64> {
        let (b, a) = (
            per_connection(before, family),
            per_connection(after, family),
        );
        a.iter()
            .map(|(conn, s)| {
                let was = b.get(conn).map_or(0.0, |s| s.value);
                (conn.clone(), (s.value - was).max(0.0) as u64)
            })
            .collect()
    };
    let sent = delta("switchboard_mesh_path_sent_packets_total");
    let busiest = sent
        .iter()
        .max_by_key(|(conn, n)| (**n, (*conn).clone()))
        .and_then(|(conn, n)| {
            let r = rtt.get(conn)?;
            Some(BusiestPath {
                peer: r.peer.clone(),
                side: r.side.clone(),
                sent_packets: *n,
                rtt_ms: r.value * 1e3,
                cwnd_bytes: cwnd.get(conn).map_or(0, |c| c.value as u64),
            })
        });
    Some(MeshPaths {
        connections: rtt.len(),
        sent_packets: sent.values().sum(),
        lost_packets: delta("switchboard_mesh_path_lost_packets_total")
            .values()
            .sum(),
        congestion_events: delta("switchboard_mesh_path_congestion_events_total")
            .values()
            .sum(),
        busiest,
    })
}

/// One line for the terminal: `mesh paths 6: 1234 packets sent, 0 lost, 0 congestion
/// events; busiest (to 127.0.0.1:7100, connected): 800 packets, rtt 0.41 ms, cwnd 120 KiB`.
pub fn describe_paths(p: &MeshPaths) -> String {
    let mut line = format!(
        "mesh paths {}: {} packets sent, {} lost, {} congestion events",
        p.connections, p.sent_packets, p.lost_packets, p.congestion_events
    );
    if let Some(b) = &p.busiest {
        line.push_str(&format!(
            "; busiest ({} {}): {} packets, rtt {:.2} ms, cwnd {} KiB",
            b.side,
            b.peer,
            b.sent_packets,
            b.rtt_ms,
            b.cwnd_bytes / 1024
        ));
    }
    line
}

/// One line for the terminal: `web API chat.postMessage p50 1.2 ms p99 8.4 ms (n 1234); ...`.
pub fn describe(lat: &[ServerLatency]) -> String {
    lat.iter()
        .filter(|l| l.count > 0)
        .map(|l| {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
            format!(
                "{} p50 {} p99 {}{} (n {})",
                l.what,
                ms(l.p50_ms),
                if l.p99_past_last_bucket { ">" } else { "" },
                ms(l.p99_ms),
                l.count
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/metrics` text with the store's two histograms, cumulative counts at 1 ms, 5 ms,
    /// 10 ms and `+Inf`.
    fn scrape_text(append_batch: [u64; 4], checkpoint: [u64; 4]) -> String {
        let mut out = String::from(
            "# HELP switchboard_store_op_duration_seconds embedded store operation latency\n\
             # TYPE switchboard_store_op_duration_seconds histogram\n",
        );
        for (op, counts) in [("append_batch", append_batch), ("checkpoint", checkpoint)] {
            for (le, n) in ["0.001", "0.005", "0.01", "+Inf"].iter().zip(counts) {
                out.push_str(&format!(
                    "switchboard_store_op_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {n}\n"
                ));
            }
        }
        out
    }

    fn before() -> String {
        scrape_text([10, 10, 10, 10], [3, 3, 3, 3])
    }

    fn after() -> String {
        scrape_text([60, 108, 109, 110], [3, 3, 3, 7])
    }

    #[test]
    fn a_phase_sees_only_its_own_observations() {
        let f = "switchboard_store_op_duration_seconds";
        let a = Buckets::parse(&after(), f, "op=\"append_batch\"").unwrap();
        let b = Buckets::parse(&before(), f, "op=\"append_batch\"").unwrap();
        let d = a.since(&b);
        assert_eq!(d.count(), 100);
        assert_eq!(
            d.0,
            vec![(0.001, 50), (0.005, 98), (0.01, 99), (f64::INFINITY, 100)]
        );
        // The median is the 50th of 100: the top of the first bucket.
        let (p50, past) = d.quantile(0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12 && !past, "{p50}");
        // The 99th lies in (5 ms, 10 ms], at its top.
        let (p99, past) = d.quantile(0.99).unwrap();
        assert!((p99 - 0.01).abs() < 1e-12 && !past, "{p99}");
        // The 98th is the last of (1 ms, 5 ms]: 48 of 48 in, so its top.
        let (p98, _) = d.quantile(0.98).unwrap();
        assert!((p98 - 0.005).abs() < 1e-12, "{p98}");
        // Half-way through a bucket is half-way through its range.
        let (p74, _) = d.quantile(0.74).unwrap();
        assert!((p74 - 0.003).abs() < 1e-12, "{p74}");
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_flagged() {
        let f = "switchboard_store_op_duration_seconds";
        let a = Buckets::parse(&after(), f, "op=\"checkpoint\"").unwrap();
        let b = Buckets::parse(&before(), f, "op=\"checkpoint\"").unwrap();
        let d = a.since(&b);
        assert_eq!(d.count(), 4);
        assert_eq!(d.quantile(0.5), Some((0.01, true)));
    }

    #[test]
    fn mesh_paths_are_summed_over_connections_for_the_phase() {
        let scrape = |sent_a: u64, lost_a: u64, with_b: bool| {
            let mut t = format!(
                "switchboard_mesh_path_rtt_seconds{{conn=\"1\",peer=\"127.0.0.1:1\",side=\"connected\"}} 0.0004\n\
                 switchboard_mesh_path_cwnd_bytes{{conn=\"1\",peer=\"127.0.0.1:1\",side=\"connected\"}} 200000\n\
                 switchboard_mesh_path_sent_packets_total{{conn=\"1\",peer=\"127.0.0.1:1\",side=\"connected\"}} {sent_a}\n\
                 switchboard_mesh_path_lost_packets_total{{conn=\"1\",peer=\"127.0.0.1:1\",side=\"connected\"}} {lost_a}\n"
            );
            if with_b {
                t.push_str(
                    "switchboard_mesh_path_rtt_seconds{conn=\"2\",peer=\"127.0.0.1:2\",side=\"accepted\"} 0.002\n\
                     switchboard_mesh_path_cwnd_bytes{conn=\"2\",peer=\"127.0.0.1:2\",side=\"accepted\"} 14720\n\
                     switchboard_mesh_path_sent_packets_total{conn=\"2\",peer=\"127.0.0.1:2\",side=\"accepted\"} 50\n",
                );
            }
            t
        };
        // Connection 2 appeared during the phase: it counts from zero. Connection 1 sent
        // the most.
        let p = mesh_paths(&scrape(100, 1, false), &scrape(400, 3, true)).unwrap();
        assert_eq!(
            p,
            MeshPaths {
                connections: 2,
                sent_packets: 350,
                lost_packets: 2,
                congestion_events: 0,
                busiest: Some(BusiestPath {
                    peer: "127.0.0.1:1".into(),
                    side: "connected".into(),
                    sent_packets: 300,
                    rtt_ms: 0.4,
                    cwnd_bytes: 200000,
                }),
            }
        );
        assert!(describe_paths(&p).contains("2 lost"));
        assert_eq!(mesh_paths("", "up 1\n"), None);
    }

    #[test]
    fn missing_or_empty_histograms_give_nothing() {
        assert_eq!(Buckets::parse("", "x", ""), None);
        assert_eq!(Buckets::parse(&after(), "switchboard_nothing", ""), None);
        let empty = Buckets(vec![(0.001, 0), (f64::INFINITY, 0)]);
        assert_eq!(empty.quantile(0.99), None);
        // A family the "before" scrape lacked counts from zero.
        let lat = post_path("", &after());
        let batch = lat.iter().find(|l| l.what == "store append batch").unwrap();
        assert_eq!(batch.count, 110);
        assert!(lat.iter().all(|l| l.what != "web API chat.postMessage"));
        assert!(describe(&lat).contains("store append batch p50 "));
    }
}
