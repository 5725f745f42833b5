//! The posts scenario: durable `chat.postMessage` throughput and latency on the embedded
//! store. Every post is acknowledged only once it is in the store; the check is that each
//! channel's acknowledged sequence numbers are 1..n, each once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::pace::Pacer;
use crate::report::{note, Progress};
use crate::slack::{for_each_concurrent, Api};
use crate::stats::{fmt_rate, percentile_curve, LatencySummary, SharedHistogram};
use crate::sut::{CpuMeter, CpuUsage, Sut};

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
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub posts: u64,
    pub elapsed_s: f64,
    pub posts_per_s: f64,
    /// Post sent (or scheduled, with `--rate`) to 200 received.
    pub latency: LatencySummary,
    pub cpu: CpuUsage,
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

pub async fn run(plan: &Plan, sut: &mut Sut) -> anyhow::Result<Outcome> {
    let api = Api::new(&sut.urls.api)?;
    let admin = sut.bench_workspace()?;
    let run = format!("{:x}", std::process::id());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 1_000_000;
    note(format!("posts: creating {} channels", plan.channels));
    let channel_ids: Vec<String> = for_each_concurrent((0..plan.channels).collect(), 8, {
        let (api, admin, run) = (api.clone(), admin.clone(), run.clone());
        move |i: usize| {
            let (api, admin) = (api.clone(), admin.clone());
            let name = format!("p{run}-{stamp}-{i}");
            async move { api.create_channel(&admin, &name).await }
        }
    })
    .await?;
    let channel_ids = Arc::new(channel_ids);
    let acked: Arc<Vec<Mutex<Vec<u64>>>> =
        Arc::new((0..plan.channels).map(|_| Mutex::new(Vec::new())).collect());
    let hist = SharedHistogram::default();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let filler = "x".repeat(plan.text_bytes.saturating_sub(24));
    let base = Instant::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(plan.duration_s);
    let first_ns = Arc::new(AtomicU64::new(u64::MAX));
    let last_ns = Arc::new(AtomicU64::new(0));
    let pacer = plan
        .rate
        .map(|r| Arc::new(Pacer::start(r, start, deadline)));
    let cpu = CpuMeter::start(sut.pids());
    let progress = {
        let done = done.clone();
        let mut last = (Instant::now(), 0u64);
        Progress::start("posts".into(), move || {
            let d = done.load(Ordering::Relaxed);
            let now = Instant::now();
            let r = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, d);
            format!("{d} acknowledged ({}/s)", fmt_rate(r))
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.posters {
        let (api, admin, ids, acked, hist, next, done, failed, errors, filler) = (
            api.clone(),
            admin.clone(),
            channel_ids.clone(),
            acked.clone(),
            hist.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
            filler.clone(),
        );
        let (first_ns, last_ns) = (first_ns.clone(), last_ns.clone());
        let (pacer, max_posts) = (pacer.clone(), plan.max_posts);
        let run = format!("{run}-{stamp}");
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
                    .post(&admin, &ids[c], &text, &format!("{run}-{k}"))
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
    let cpu = cpu.stop();
    progress.finish().await;
    sut.check_alive()?;
    let posts = done.load(Ordering::Relaxed);
    let (f, l) = (
        first_ns.load(Ordering::Relaxed),
        last_ns.load(Ordering::Relaxed),
    );
    let elapsed_s = if l > f && f != u64::MAX {
        (l - f) as f64 / 1e9
    } else {
        0.0
    };
    let per_channel: Vec<Vec<u64>> = acked.iter().map(|m| m.lock().clone()).collect();
    let h = hist.snapshot();
    let errors = errors.lock().clone();
    Ok(Outcome {
        posts,
        elapsed_s,
        posts_per_s: if elapsed_s > 0.0 {
            posts as f64 / elapsed_s
        } else {
            0.0
        },
        latency: LatencySummary::of(&h),
        cpu,
        seq_problems: check_seqs(&per_channel),
        errors,
        curve: percentile_curve(&h),
    })
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
}
