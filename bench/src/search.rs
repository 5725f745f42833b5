//! The `search` scenario: `search.messages` latency on a workspace with many stored messages.
//!
//! It fills a fresh embedded store directly (the workspace, users, channels, then N messages
//! appended through the store's group commit, as channel servers do), starts a real
//! `switchboard webapp` process on it, waits until that process's indexer has caught up from
//! the store's change feed, then sends typical 1-3 word queries (with and without Slack
//! modifiers) one at a time over a keep-alive HTTP connection and records each latency.
//!
//! Then it reads every match of the commonest word, 100 a page, newest first, by `cursor`
//! (checking that each comes once, in order, and that they are all there), and the 100 pages
//! that `page` reaches of the same search, each page timed: what a search API consumer that
//! reads everything a workspace said pays per page, and what the deep pages cost by offset.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use shared::auth::{Claims, TokenSigner};
use shared::ids::{ChannelId, Ts, UserId, WorkspaceId};
use shared::protocol::{Message, MessageKind};
use shared::store::sqlite::SqliteStore;
use shared::store::{Channel, SharedStore};

use crate::stats::LatencySummary;

pub struct Plan {
    pub messages: u64,
    pub channels: u32,
    pub users: u32,
    pub queries: u32,
    pub vocabulary: u32,
}

pub struct Outcome {
    pub fill_s: f64,
    pub index_s: f64,
    pub http: LatencySummary,
    pub mean_hits: f64,
    /// The latency distribution, for the plot.
    pub curve: Vec<(f64, u64)>,
    pub read_all: ReadAll,
}

/// Reading every match of one search (the commonest word's), 100 a page.
pub struct ReadAll {
    /// Matches read by cursor (every one the search has: the run fails otherwise).
    pub matches: u64,
    pub cursor_pages: u64,
    pub cursor_s: f64,
    /// Each cursor page, called to answered.
    pub cursor_page: LatencySummary,
    /// The last of the first 100 cursor pages (matches 9,901 to 10,000).
    pub cursor_page_100_us: f64,
    /// Pages 1 to 100 by `page` (as far as it reaches), each.
    pub offset_page: LatencySummary,
    pub offset_page_100_us: f64,
}

/// Matches per page when reading everything (Slack's most).
const READ_ALL_COUNT: u64 = 100;

/// A deterministic word list: `w<n>` spelled as syllables, so the tokenizer sees real words.
fn word(n: u32) -> String {
    const SYL: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ba", "de", "fu", "go", "hi", "jo", "pe",
        "zu",
    ];
    let mut s = String::new();
    let mut n = n + 16;
    while n > 0 {
        s.push_str(SYL[(n % 16) as usize]);
        n /= 16;
    }
    s
}

/// xorshift: reproducible and cheap.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed word choice: a few words are common, most are rare (like real chat).
    fn word(&mut self, vocabulary: u32) -> u32 {
        ((self.unit().powi(3)) * f64::from(vocabulary)) as u32
    }
}

pub async fn run(plan: &Plan, bin: &Path, keep: bool) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("switchboard-bench-search-")
        .tempdir()?;
    let data = dir.path().to_path_buf();
    let status = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(data.join("tls"))
        .output()?;
    if !status.status.success() {
        bail!(
            "switchboard certs failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let secret = shared::config::load_cluster_secret(&data.join("cluster-secret"), true)?;
    let signer = TokenSigner::new(&secret);

    // Fill the store as channel servers would.
    let started = Instant::now();
    let store: SharedStore =
        Arc::new(SqliteStore::open(&data.join("store"), 1).map_err(|e| anyhow::anyhow!("{e}"))?);
    let ws = store
        .create_workspace("searchbench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut users = Vec::new();
    for i in 0..plan.users {
        users.push(
            store
                .create_user(
                    &ws.id,
                    &format!("user{i}"),
                    &format!("User {i}"),
                    i == 0,
                    false,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    let mut channels = Vec::new();
    for i in 0..plan.channels {
        let c = Channel {
            id: ChannelId::generate(),
            workspace: ws.id.clone(),
            name: format!("chan-{i}"),
            is_private: false,
            creator: users[0].id.clone(),
            created: Ts::now(),
            topic: String::new(),
            purpose: String::new(),
            is_archived: false,
        };
        store
            .create_channel(&c)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store
            .add_member(&c.id, &users[0].id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        channels.push(c.id);
    }
    let base_ts = Ts::now().0 - plan.messages * 1000;
    let mut seqs = vec![0u64; channels.len()];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    // How many messages hold the commonest word: the index has caught up when a search for
    // it finds exactly that many.
    let common = word(0);
    let mut with_common = 0u64;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt;
    for n in 0..plan.messages {
        let c = (rng.next() % channels.len() as u64) as usize;
        seqs[c] += 1;
        let words = 4 + rng.next() % 14;
        let text: Vec<String> = (0..words)
            .map(|_| word(rng.word(plan.vocabulary)))
            .collect();
        if text.contains(&common) {
            with_common += 1;
        }
        let msg = Message {
            workspace: ws.id.clone(),
            channel: channels[c].clone(),
            seq: seqs[c],
            ts: Ts(base_ts + n * 1000),
            user: users[(rng.next() % users.len() as u64) as usize].id.clone(),
            text: text.join(" "),
            client_msg_id: None,
            thread_ts: None,
            kind: MessageKind::Posted,
            previous: None,
            broadcast: false,
            bot: false,
            rich: None,
        };
        let store = store.clone();
        pending.push(async move { store.append(&msg).await });
        if pending.len() >= 2048 {
            pending
                .next()
                .await
                .transpose()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if n % 100_000 == 0 && n > 0 {
            eprintln!("search: {n} messages stored");
        }
    }
    while let Some(r) = pending.next().await {
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(store);
    let fill_s = started.elapsed().as_secs_f64();

    // A real webapp on that store; its indexer catches up from the change feed.
    let port = crate::sut::free_port()?;
    let api = format!("http://127.0.0.1:{port}/api");
    let log = std::fs::File::create(data.join("webapp.log"))?;
    let mut child = std::process::Command::new(bin)
        .args(["webapp", "--data-dir"])
        .arg(&data)
        .args([
            "--set",
            "store.shards=1",
            "--set",
            &format!("webapp.http_addr=\"127.0.0.1:{port}\""),
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("failed to start switchboard webapp")?;
    let result = measure(plan, &api, &signer, &ws.id, &users[0].id, with_common).await;
    let _ = child.kill();
    let _ = child.wait();
    if keep {
        let kept: PathBuf = dir.keep();
        eprintln!("search: data kept in {}", kept.display());
    }
    let (index_s, http, mean_hits, curve, read_all) = result?;
    Ok(Outcome {
        fill_s,
        index_s,
        http,
        mean_hits,
        curve,
        read_all,
    })
}

async fn measure(
    plan: &Plan,
    api: &str,
    signer: &TokenSigner,
    ws: &WorkspaceId,
    user: &UserId,
    with_common: u64,
) -> anyhow::Result<(f64, LatencySummary, f64, Vec<(f64, u64)>, ReadAll)> {
    let token = signer.issue(&Claims {
        workspace: ws.clone(),
        user: user.clone(),
        admin: true,
        bot: false,
        issued_at: 1,
        service: false,
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let call_with = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let token = token.clone();
        let url = format!("{api}/search.messages");
        async move {
            let v: serde_json::Value = http
                .post(url)
                .bearer_auth(token)
                .form(&form)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    let call = |query: String| call_with(vec![("query", query), ("count", "20".into())]);
    // The index has caught up when a search for the commonest word finds every stored
    // message that holds it (counted while filling): not before, and never more.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let common = word(0);
    loop {
        if Instant::now() > deadline {
            bail!("the index did not catch up within 30 minutes");
        }
        if let Ok(v) = call(common.clone()).await {
            if v["ok"] == true {
                let total = v["messages"]["total"].as_u64().unwrap_or(0);
                if total > with_common {
                    bail!("{total} messages found for {common:?}, but only {with_common} hold it");
                }
                if total == with_common {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let index_s = started.elapsed().as_secs_f64();

    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    let queries: Vec<String> = (0..plan.queries)
        .map(|i| {
            let n = 1 + (rng.next() % 3) as u32;
            let mut q: Vec<String> = (0..n)
                .map(|_| word(rng.word(plan.vocabulary / 4)))
                .collect();
            match i % 4 {
                1 => q.push(format!(
                    "in:#chan-{}",
                    rng.next() % u64::from(plan.channels)
                )),
                2 => q.push(format!("from:@user{}", rng.next() % u64::from(plan.users))),
                _ => {}
            }
            q.join(" ")
        })
        .collect();
    // Warm up, then measure one query at a time.
    for q in queries.iter().take(50) {
        call(q.clone()).await?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut hits = 0u64;
    for q in &queries {
        let t = Instant::now();
        let v = call(q.clone()).await?;
        h.record(t.elapsed().as_nanos() as u64)?;
        if v["ok"] != true {
            bail!("search failed for {q:?}: {v}");
        }
        hits += v["messages"]["total"].as_u64().unwrap_or(0);
    }
    let read_all = read_all(call_with, &common, with_common).await?;
    Ok((
        index_s,
        LatencySummary::of(&h),
        hits as f64 / f64::from(plan.queries.max(1)),
        crate::stats::percentile_curve(&h),
        read_all,
    ))
}

/// Reads every match of `query` (`expected` of them) by cursor, newest first, checking that
/// each comes once and in order; then pages 1 to 100 of the same search by `page`.
async fn read_all<F, Fut>(call: F, query: &str, expected: u64) -> anyhow::Result<ReadAll>
where
    F: Fn(Vec<(&'static str, String)>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let base = |query: &str| {
        vec![
            ("query", query.to_string()),
            ("count", READ_ALL_COUNT.to_string()),
            ("sort", "timestamp".to_string()),
        ]
    };
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut seen = std::collections::HashSet::new();
    let mut last_ts = f64::INFINITY;
    let (mut cursor, mut pages, mut page_100_us) = ("*".to_string(), 0u64, 0.0);
    let started = Instant::now();
    loop {
        let mut form = base(query);
        form.push(("cursor", cursor.clone()));
        let t = Instant::now();
        let v = call(form).await?;
        let took = t.elapsed();
        h.record(took.as_nanos() as u64)?;
        pages += 1;
        if pages == 100 {
            page_100_us = took.as_secs_f64() * 1e6;
        }
        if v["ok"] != true {
            bail!("search by cursor failed on page {pages}: {v}");
        }
        for m in v["messages"]["matches"].as_array().into_iter().flatten() {
            let ts: f64 = m["ts"].as_str().unwrap_or("").parse().unwrap_or(f64::NAN);
            if ts.is_nan() || ts > last_ts {
                bail!("page {pages} by cursor is out of order at {m}");
            }
            last_ts = ts;
            let key = (
                m["channel"]["id"].to_string(),
                m["seq"].as_u64().unwrap_or(0),
            );
            if !seen.insert(key) {
                bail!("page {pages} by cursor repeats {m}");
            }
        }
        cursor = v["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if cursor.is_empty() {
            break;
        }
        if pages > expected / READ_ALL_COUNT + 10 {
            bail!("reading {expected} matches by cursor took more than {pages} pages");
        }
    }
    let cursor_s = started.elapsed().as_secs_f64();
    if seen.len() as u64 != expected {
        bail!(
            "read {} matches of {query:?} by cursor, but {expected} messages hold it",
            seen.len()
        );
    }
    let mut by_offset = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut offset_page_100_us = 0.0;
    let reach = expected.div_ceil(READ_ALL_COUNT).clamp(1, 100);
    for page in 1..=reach {
        let mut form = base(query);
        form.push(("page", page.to_string()));
        let t = Instant::now();
        let v = call(form).await?;
        let took = t.elapsed();
        by_offset.record(took.as_nanos() as u64)?;
        if page == 100 {
            offset_page_100_us = took.as_secs_f64() * 1e6;
        }
        if v["ok"] != true {
            bail!("search page {page} failed: {v}");
        }
    }
    Ok(ReadAll {
        matches: seen.len() as u64,
        cursor_pages: pages,
        cursor_s,
        cursor_page: LatencySummary::of(&h),
        cursor_page_100_us: page_100_us,
        offset_page: LatencySummary::of(&by_offset),
        offset_page_100_us,
    })
}
