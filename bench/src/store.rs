//! The store scenario: durable appends straight into the embedded store, in this process,
//! with no HTTP, channel server or network in the way. It measures the ceiling that the
//! store's writer threads put on durable posts, once per shard key on a fresh store each,
//! with the same load: `workspace` (one busy workspace's messages share one shard, so one
//! writer commits them all) and `channel` (its channels spread over every shard, each with
//! its own writer). Appends go through `append_new`, one message per group, as a channel
//! server with one poster per channel makes them.
//!
//! The check: every acknowledged append is in its channel's history at its seq, each
//! channel's last seq is the number acknowledged, and the shards' change feeds hold exactly
//! the appended messages, each once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shared::ids::{ChannelId, Ts, UserId};
use shared::protocol::{Message, MessageKind};
use shared::store::sqlite::SqliteStore;
use shared::store::{GroupAppend, MessageStore, ShardKey};

use crate::report::{note, Progress};
use crate::stats::{fmt_rate, percentile_curve, LatencySummary, SharedHistogram};
use crate::sut::cpu_seconds;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Concurrent appenders; each owns the channels `i, i + appenders, ...`.
    pub appenders: usize,
    pub channels: usize,
    pub shards: u32,
    pub duration_s: f64,
    pub text_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// `workspace` or `channel`.
    pub shard_key: String,
    pub appends: u64,
    pub elapsed_s: f64,
    pub appends_per_s: f64,
    /// `append_new` called to acknowledged (committed and synced).
    pub latency: LatencySummary,
    /// CPU seconds of this process (appenders and the store's threads) over the phase.
    pub cpu_s: f64,
    /// Shards that received appends.
    pub shards_used: usize,
    pub problems: Vec<String>,
    #[serde(skip)]
    pub curve: Vec<(f64, u64)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.appends > 0
    }
}

/// The channels appender `a` of `appenders` owns, of `channels`.
pub fn owned(a: usize, appenders: usize, channels: usize) -> Vec<usize> {
    (a..channels).step_by(appenders.max(1)).collect()
}

/// One phase on a fresh store in `dir` (created; left for the caller to remove).
pub async fn run(plan: &Plan, key: ShardKey, dir: &Path) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        plan.appenders >= 1 && plan.appenders <= plan.channels,
        "store: each appender owns at least one channel, so 1 <= appenders <= channels \
         (got {} appenders, {} channels)",
        plan.appenders,
        plan.channels
    );
    let store = Arc::new(SqliteStore::open_with_key(dir, plan.shards, key)?);
    anyhow::ensure!(
        store.shard_key() == key,
        "store: {} was not a fresh store",
        dir.display()
    );
    let ws = store.create_workspace("store-bench").await?;
    let channels: Arc<Vec<ChannelId>> = Arc::new(
        (0..plan.channels)
            .map(|i| ChannelId(format!("CSTOREBENCH{i}")))
            .collect(),
    );
    note(format!(
        "store ({} key): {} appenders into {} channels over {} shards for {} s",
        key.name(),
        plan.appenders,
        plan.channels,
        plan.shards,
        plan.duration_s
    ));
    let hist = SharedHistogram::default();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let filler = Arc::new("x".repeat(plan.text_bytes.saturating_sub(24)));
    let progress = {
        let done = done.clone();
        let mut last = (Instant::now(), 0u64);
        Progress::start(format!("store {}", key.name()), move || {
            let d = done.load(Ordering::Relaxed);
            let now = Instant::now();
            let r = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, d);
            format!("{d} acknowledged ({}/s)", fmt_rate(r))
        })
    };
    let cpu_start = cpu_seconds(None);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(plan.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for a in 0..plan.appenders {
        let mine = owned(a, plan.appenders, plan.channels);
        let (store, ws, channels, hist, done, failed, errors, filler) = (
            store.clone(),
            ws.id.clone(),
            channels.clone(),
            hist.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
            filler.clone(),
        );
        tasks.spawn(async move {
            // Acknowledged appends per owned channel (their seqs are 1..=n).
            let mut acked = vec![0u64; mine.len()];
            let mut rec = hist.local();
            let mut k = 0usize;
            while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                let slot = k % mine.len();
                k += 1;
                let seq = acked[slot] + 1;
                let msg = Message {
                    workspace: ws.clone(),
                    channel: channels[mine[slot]].clone(),
                    seq,
                    ts: Ts(1_700_000_000_000_000 + seq),
                    user: UserId::from("USTOREBENCH"),
                    text: format!("append {seq} {filler}"),
                    client_msg_id: Some(format!("sb-{}-{seq}", mine[slot])),
                    thread_ts: None,
                    kind: MessageKind::Posted,
                    previous: None,
                    broadcast: false,
                    bot: false,
                    rich: None,
                };
                let t = Instant::now();
                let outcome = match store.append_new(vec![msg]).await {
                    Ok(GroupAppend::Appended(mut r)) if r.len() == 1 => {
                        r.pop().expect("one").map(|_| ())
                    }
                    Ok(other) => Err(shared::store::StorageError::new(
                        shared::store::StorageErrorKind::Corrupt,
                        format!("unexpected outcome {other:?}"),
                    )),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        rec.record(t.elapsed().as_nanos() as u64);
                        acked[slot] = seq;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        errors.lock().push(format!(
                            "append seq {seq} to {}: {e}",
                            channels[mine[slot]].0
                        ));
                    }
                }
            }
            rec.flush();
            mine.into_iter().zip(acked).collect::<Vec<_>>()
        });
    }
    let mut acked = vec![0u64; plan.channels];
    while let Some(r) = tasks.join_next().await {
        for (c, n) in r? {
            acked[c] = n;
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(None) - cpu_start;
    progress.finish().await;
    let mut problems = errors.lock().clone();
    let (found, per_shard) = verify(&store, &ws.id, &channels, &acked).await?;
    problems.extend(found);
    let appends = done.load(Ordering::Relaxed);
    let h = hist.snapshot();
    Ok(Outcome {
        shard_key: key.name().to_string(),
        appends,
        elapsed_s,
        appends_per_s: appends as f64 / elapsed_s.max(1e-9),
        latency: LatencySummary::of(&h),
        cpu_s,
        shards_used: per_shard.iter().filter(|&&n| n > 0).count(),
        problems,
        curve: percentile_curve(&h),
    })
}

/// What the store holds against what was acknowledged: each channel's last seq, and every
/// change in the feeds once (a channel's changes are in order, at seqs 1..=n). Returns the
/// problems found and how many changes each shard's feed holds.
async fn verify(
    store: &SqliteStore,
    ws: &shared::ids::WorkspaceId,
    channels: &[ChannelId],
    acked: &[u64],
) -> anyhow::Result<(Vec<String>, Vec<u64>)> {
    let index: std::collections::HashMap<&ChannelId, usize> =
        channels.iter().enumerate().map(|(i, c)| (c, i)).collect();
    let mut per_shard = vec![0u64; store.num_shards() as usize];
    let mut problems = Vec::new();
    for (ch, &n) in channels.iter().zip(acked) {
        let last = store.last_message(ws, ch).await?.map_or(0, |m| m.seq);
        if last != n {
            problems.push(format!(
                "{}: {n} appends acknowledged but the last stored seq is {last}",
                ch.0
            ));
        }
    }
    let mut seen = vec![0u64; channels.len()];
    for shard in 0..store.num_shards() {
        let mut after = 0;
        loop {
            let page = store.changes_since(shard, after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for c in &page {
                per_shard[shard as usize] += 1;
                let Some(&i) = index.get(&c.message.channel) else {
                    problems.push(format!(
                        "a change of unknown channel {}",
                        c.message.channel.0
                    ));
                    continue;
                };
                if store.shard_of(ws, &c.message.channel) != shard {
                    problems.push(format!(
                        "{} has a change in shard {shard}",
                        c.message.channel.0
                    ));
                }
                if c.message.seq != seen[i] + 1 {
                    problems.push(format!(
                        "{}: change for seq {} after seq {}",
                        c.message.channel.0, c.message.seq, seen[i]
                    ));
                }
                seen[i] = c.message.seq;
            }
        }
    }
    for (i, (&s, &n)) in seen.iter().zip(acked).enumerate() {
        if s != n {
            problems.push(format!(
                "{}: the change feed ends at seq {s}, {n} acknowledged",
                channels[i].0
            ));
        }
    }
    problems.truncate(20);
    Ok((problems, per_shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appenders_own_disjoint_channels_that_cover_all() {
        let mut all: Vec<usize> = (0..3).flat_map(|a| owned(a, 3, 10)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(owned(1, 3, 10), vec![1, 4, 7]);
        assert_eq!(owned(0, 1, 2), vec![0, 1]);
    }

    /// A short phase on each key: everything acknowledged is verified in the store, and the
    /// channel key spreads appends over the shards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_phase_verifies_on_both_keys() {
        let plan = Plan {
            appenders: 4,
            channels: 16,
            shards: 4,
            duration_s: 0.3,
            text_bytes: 64,
        };
        for key in [ShardKey::Workspace, ShardKey::Channel] {
            let dir = tempfile::tempdir().unwrap();
            let o = run(&plan, key, dir.path()).await.unwrap();
            assert!(o.ok(), "{o:?}");
            assert_eq!(o.latency.count, o.appends);
            let want = if key == ShardKey::Workspace { 1 } else { 4 };
            assert_eq!(o.shards_used, want, "{o:?}");
        }
    }
}
