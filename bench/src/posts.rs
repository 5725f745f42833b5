//! The posts scenario: durable `chat.postMessage` throughput and latency on one store (the
//! embedded store, or the CQL store on a Cassandra/ScyllaDB cluster; `--stores` runs several
//! in one run, one after the other). Every post is acknowledged only once it is in the store;
//! the check is that each channel's acknowledged sequence numbers are 1..n, each once
//! (warm-up posts included).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::pace::Pacer;
use crate::report::{note, Progress};
use crate::slack::{for_each_concurrent, Api};
use crate::stats::{fmt_rate, percentile_curve, LatencySummary, SharedHistogram};
use crate::sut::{cpu_seconds, CpuMeter, CpuUsage, Sut};

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub posters: usize,
    pub channels: usize,
    pub duration_s: f64,
    /// Offered posts per second over all posters; `None`: each poster posts back to back.
    pub rate: Option<f64>,
    pub max_posts: u64,
    /// Bytes of text per post.
    pub text_bytes: usize,
    /// Seconds of the same load, not measured, before the measured phase (same channels).
    pub warmup_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Which store the system under test ran on: `embedded` or `cql`.
    pub store: String,
    pub posts: u64,
    pub elapsed_s: f64,
    pub posts_per_s: f64,
    /// Post sent (or scheduled, with `--rate`) to 200 received.
    pub latency: LatencySummary,
    pub cpu: CpuUsage,
    /// CPU seconds of the CQL node's process over the measured phase, when the bench knows
    /// its pid (a node it started); not part of `cpu.server_cpu_s`.
    pub store_cpu_s: Option<f64>,
    /// Where a post's time went inside the `dev` process (its own histograms over the
    /// measured phase).
    pub server_latency: Vec<crate::promtext::ServerLatency>,
    /// The `dev` process's mesh connections' QUIC paths over the measured phase.
    pub mesh_paths: Option<crate::promtext::MeshPaths>,
    /// The server threads that used the most CPU, as a line (`dev store-shard-1 0.31, ...`).
    pub busiest_threads: String,
    /// The server processes' context switches per second, as a line (`dev 3,590 + 467`).
    pub context_switches: String,
    /// Posts acknowledged during the warm-up (not in the figures above).
    pub warmup_posts: u64,
    /// Acknowledged sequence numbers that were missing or repeated in a channel.
    pub seq_problems: Vec<String>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub curve: Vec<(f64, u64)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.seq_problems.is_empty() && self.errors.is_empty()
    }
}

/// Checks that each channel's acknowledged sequence numbers are exactly 1..n.
pub fn check_seqs(per_channel: &[Vec<u64>]) -> Vec<String> {
    let mut problems = Vec::new();
    for (c, seqs) in per_channel.iter().enumerate() {
        let mut s = seqs.clone();
        s.sort_unstable();
        for (i, &seq) in s.iter().enumerate() {
            let want = i as u64 + 1;
            if seq != want {
                problems.push(format!(
                    "channel {c}: acknowledged seq {seq} where {want} was due ({} posts)",
                    s.len()
                ));
                break;
            }
        }
    }
    problems
}

/// Compares one channel's stored seqs (from its history) with its acknowledged ones: each
/// acknowledged post must be stored once, and nothing else.
pub fn check_stored(channel: usize, acked: &[u64], stored: &[u64]) -> Option<String> {
    let mut a = acked.to_vec();
    a.sort_unstable();
    let mut s = stored.to_vec();
    s.sort_unstable();
    if a == s {
        return None;
    }
    let missing = a.iter().filter(|x| s.binary_search(x).is_err()).count();
    let extra = s.len() + missing - a.len();
    Some(format!(
        "channel {channel}: {} acknowledged, {} stored: {missing} acknowledged posts missing \
         from history, {extra} stored that were not acknowledged (or stored twice)",
        a.len(),
        s.len()
    ))
}

/// Reads every channel's history back through the Web API (`conversations.history`, pages of
/// 1,000) and checks it against what was acknowledged: a store that acknowledged a post it did
/// not keep fails the run.
async fn verify_stored(ctx: &Ctx, acked: &[Vec<u64>]) -> Vec<String> {
    let jobs: Vec<usize> = (0..ctx.channel_ids.len()).collect();
    let (api, tokens, ids) = (ctx.api.clone(), ctx.tokens.clone(), ctx.channel_ids.clone());
    let acked: Arc<Vec<Vec<u64>>> = Arc::new(acked.to_vec());
    let checked = for_each_concurrent(jobs, 8, move |c| {
        let (api, tokens, ids, acked) = (api.clone(), tokens.clone(), ids.clone(), acked.clone());
        async move {
            let mut stored = Vec::new();
            let mut cursor = String::new();
            // Bounded: one page more than the acknowledged posts need.
            for _ in 0..acked[c].len() / 1000 + 2 {
                let v = api
                    .call(
                        "conversations.history",
                        &tokens[c],
                        json!({"channel": ids[c], "limit": 1000, "cursor": cursor}),
                    )
                    .await?;
                for m in v["messages"].as_array().into_iter().flatten() {
                    stored.push(m["seq"].as_u64().context("a message without seq")?);
                }
                cursor = v["response_metadata"]["next_cursor"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if v["has_more"] != true || cursor.is_empty() {
                    break;
                }
            }
            Ok(check_stored(c, &acked[c], &stored))
        }
    })
    .await;
    match checked {
        Ok(problems) => problems.into_iter().flatten().collect(),
        Err(e) => vec![format!("reading history back failed: {e:#}")],
    }
}

/// What every phase of one run posts with.
struct Ctx {
    api: Api,
    /// The token of each channel's poster.
    tokens: Arc<Vec<String>>,
    channel_ids: Arc<Vec<String>>,
    /// Every acknowledged seq, per channel, over all phases (the check covers the warm-up).
    acked: Arc<Vec<Mutex<Vec<u64>>>>,
    filler: String,
    /// `<pid>-<stamp>`: makes this run's `client_msg_id`s unique.
    run: String,
    posters: usize,
    rate: Option<f64>,
}

/// One phase's figures.
struct Phase {
    posts: u64,
    elapsed_s: f64,
    hist: hdrhistogram::Histogram<u64>,
    errors: Vec<String>,
}

pub async fn run(
    plan: &Plan,
    sut: &mut Sut,
    store: &str,
    store_pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let api = Api::new(&sut.urls.api)?;
    let admin = sut.bench_workspace()?;
    let run = format!("{:x}", std::process::id());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 1_000_000;
    note(format!(
        "posts ({store} store): creating {} channels, each with a user who posts to it",
        plan.channels
    ));
    // One user per channel, who creates it: rate limits are per user (as Slack's are), and a
    // workspace's posts come from many people, not from one user at thousands a second.
    let channels: Vec<(String, String)> = for_each_concurrent((0..plan.channels).collect(), 8, {
        let (api, admin, run) = (api.clone(), admin.clone(), run.clone());
        move |i: usize| {
            let (api, admin) = (api.clone(), admin.clone());
            let name = format!("p{run}-{stamp}-{i}");
            async move {
                let (_, token) = api.create_user(&admin, &format!("u{name}")).await?;
                let id = api.create_channel(&token, &name).await?;
                Ok((id, token))
            }
        }
    })
    .await?;
    let (channel_ids, tokens): (Vec<String>, Vec<String>) = channels.into_iter().unzip();
    let ctx = Ctx {
        api,
        tokens: Arc::new(tokens),
        acked: Arc::new((0..plan.channels).map(|_| Mutex::new(Vec::new())).collect()),
        channel_ids: Arc::new(channel_ids),
        filler: "x".repeat(plan.text_bytes.saturating_sub(24)),
        run: format!("{run}-{stamp}"),
        posters: plan.posters,
        rate: plan.rate,
    };
    let mut errors = Vec::new();
    let mut warmup_posts = 0;
    if plan.warmup_s > 0.0 {
        note(format!(
            "posts ({store} store): warming up for {} s (not measured)",
            plan.warmup_s
        ));
        let w = drive(
            &ctx,
            &format!("posts {store} warm-up"),
            "w",
            plan.warmup_s,
            u64::MAX,
        )
        .await;
        sut.check_alive()?;
        warmup_posts = w.posts;
        errors.extend(w.errors.into_iter().map(|e| format!("warm-up: {e}")));
    }
    let metrics_before = crate::promtext::scrape(&sut.urls.webapp).await;
    let cpu = CpuMeter::start(sut.pids());
    let store_cpu_start = store_pid.map(|p| cpu_seconds(Some(p)));
    let m = if errors.is_empty() {
        drive(
            &ctx,
            &format!("posts {store}"),
            "",
            plan.duration_s,
            plan.max_posts,
        )
        .await
    } else {
        Phase {
            posts: 0,
            elapsed_s: 0.0,
            hist: crate::stats::new_histogram(),
            errors: Vec::new(),
        }
    };
    let cpu = cpu.stop();
    let busiest_threads = crate::sut::describe_threads(&cpu.busiest_threads, &sut.process_names());
    let context_switches =
        crate::sut::describe_switches(&cpu.context_switches, cpu.wall_s, &sut.process_names());
    let (server_latency, mesh_paths) = match (
        metrics_before,
        crate::promtext::scrape(&sut.urls.webapp).await,
    ) {
        (Some(before), Some(after)) => (
            crate::promtext::post_path(&before, &after),
            crate::promtext::mesh_paths(&before, &after),
        ),
        _ => (Vec::new(), None),
    };
    let store_cpu_s = store_pid
        .zip(store_cpu_start)
        .map(|(p, start)| cpu_seconds(Some(p)) - start);
    sut.check_alive()?;
    errors.extend(m.errors);
    let per_channel: Vec<Vec<u64>> = ctx.acked.iter().map(|m| m.lock().clone()).collect();
    let mut seq_problems = check_seqs(&per_channel);
    note(format!(
        "posts ({store} store): reading every channel's history back"
    ));
    seq_problems.extend(verify_stored(&ctx, &per_channel).await);
    Ok(Outcome {
        store: store.to_string(),
        posts: m.posts,
        elapsed_s: m.elapsed_s,
        posts_per_s: if m.elapsed_s > 0.0 {
            m.posts as f64 / m.elapsed_s
        } else {
            0.0
        },
        latency: LatencySummary::of(&m.hist),
        cpu,
        store_cpu_s,
        server_latency,
        mesh_paths,
        busiest_threads,
        context_switches,
        warmup_posts,
        seq_problems,
        errors,
        curve: percentile_curve(&m.hist),
    })
}

/// Posts from `ctx.posters` tasks for `duration_s` (or `max_posts`), round-robin over the
/// channels; `tag` goes into each `client_msg_id` so phases never share one.
async fn drive(ctx: &Ctx, label: &str, tag: &str, duration_s: f64, max_posts: u64) -> Phase {
    let hist = SharedHistogram::default();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let base = Instant::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let first_ns = Arc::new(AtomicU64::new(u64::MAX));
    let last_ns = Arc::new(AtomicU64::new(0));
    let pacer = ctx.rate.map(|r| Arc::new(Pacer::start(r, start, deadline)));
    let progress = {
        let done = done.clone();
        let mut last = (Instant::now(), 0u64);
        Progress::start(label.to_string(), move || {
            let d = done.load(Ordering::Relaxed);
            let now = Instant::now();
            let r = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, d);
            format!("{d} acknowledged ({}/s)", fmt_rate(r))
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.posters {
        let (api, tokens, ids, acked, hist, next, done, failed, errors, filler) = (
            ctx.api.clone(),
            ctx.tokens.clone(),
            ctx.channel_ids.clone(),
            ctx.acked.clone(),
            hist.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
            ctx.filler.clone(),
        );
        let (first_ns, last_ns) = (first_ns.clone(), last_ns.clone());
        let pacer = pacer.clone();
        let run = format!("{}-{tag}", ctx.run);
        tasks.spawn(async move {
            loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= max_posts {
                    break;
                }
                let at = pacer.as_ref().map(|p| p.due(k));
                if let (Some(at), Some(p)) = (at, &pacer) {
                    if at >= deadline {
                        break;
                    }
                    p.wait(k).await;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let t = at.unwrap_or(now);
                first_ns.fetch_min(t.duration_since(base).as_nanos() as u64, Ordering::Relaxed);
                let c = (k % ids.len() as u64) as usize;
                let text = format!("post {k} {filler}");
                match api
                    .post(&tokens[c], &ids[c], &text, &format!("{run}{k}"))
                    .await
                {
                    Ok(seq) => {
                        let end = Instant::now();
                        hist.record(end.duration_since(t).as_nanos() as u64);
                        last_ns.fetch_max(
                            end.duration_since(base).as_nanos() as u64,
                            Ordering::Relaxed,
                        );
                        acked[c].lock().push(seq);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        errors.lock().push(format!("post {k}: {e:#}"));
                        break;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    progress.finish().await;
    let (f, l) = (
        first_ns.load(Ordering::Relaxed),
        last_ns.load(Ordering::Relaxed),
    );
    let errors = errors.lock().clone();
    Phase {
        posts: done.load(Ordering::Relaxed),
        elapsed_s: if l > f && f != u64::MAX {
            (l - f) as f64 / 1e9
        } else {
            0.0
        },
        hist: hist.snapshot(),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check() {
        assert!(check_seqs(&[vec![3, 1, 2], vec![], vec![1]]).is_empty());
        assert_eq!(check_seqs(&[vec![1, 3]]).len(), 1);
        assert_eq!(check_seqs(&[vec![1, 1, 2]]).len(), 1);
        assert_eq!(check_seqs(&[vec![2]]).len(), 1);
    }

    #[test]
    fn stored_check() {
        assert_eq!(check_stored(0, &[1, 2, 3], &[3, 2, 1]), None);
        let lost = check_stored(1, &[1, 2, 3], &[3, 1]).unwrap();
        assert!(lost.contains("1 acknowledged posts missing"), "{lost}");
        let twice = check_stored(2, &[1, 2], &[2, 1, 2]).unwrap();
        assert!(
            twice.contains("1 stored that were not acknowledged"),
            "{twice}"
        );
        let foreign = check_stored(3, &[1], &[1, 2]).unwrap();
        assert!(
            foreign.contains("0 acknowledged posts missing"),
            "{foreign}"
        );
    }
}
