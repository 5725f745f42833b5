//! The connections scenario: N idle RTM sessions on one gateway process of its own, the time
//! to open them, and the gateway's resident memory per session.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{note, Progress};
use crate::slack::{for_each_concurrent, Api};
use crate::stats::{percentile_curve, LatencySummary, SharedHistogram};
use crate::sut::{rss_bytes, Sut};
use crate::ws::{self, SourceAddrs};

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub sessions: usize,
    /// Users the sessions are spread over (a user's first session announces its presence to
    /// the channel, so presence traffic grows with users squared, not with sessions).
    pub users: usize,
    pub connect_concurrency: usize,
    pub source_ips: u32,
    /// Seconds the sessions stay open, idle, after the last one connected.
    pub hold_s: f64,
    pub read_buffer: usize,
    pub demo_workspace: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub sessions: usize,
    pub users: usize,
    pub connected: usize,
    pub connect_wall_s: f64,
    pub sessions_per_s: f64,
    /// TCP connect + WebSocket handshake + `hello`, per session.
    pub connect_latency: LatencySummary,
    pub gateway_rss_before_bytes: u64,
    pub gateway_rss_after_bytes: u64,
    pub gateway_rss_after_hold_bytes: u64,
    pub gateway_bytes_per_session: f64,
    pub bench_rss_bytes: u64,
    /// Sessions the gateway closed while they should have stayed open.
    pub closed_early: u64,
    pub errors: Vec<String>,
    pub nofile_limit: u64,
    #[serde(skip)]
    pub curve: Vec<(f64, u64)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.closed_early == 0 && self.connected == self.sessions
    }
}

/// Fails early when this many sessions cannot be held under the open-files limit.
pub fn check_nofile(plan: &Plan, nofile: u64) -> anyhow::Result<()> {
    // The bench holds one socket per session; so does the gateway, which inherits the limit.
    let needed = plan.sessions as u64 + 512;
    if needed > nofile {
        bail!(
            "{} sessions need about {needed} open files in the bench and in the gateway, but \
             RLIMIT_NOFILE is {nofile} here (hard limit; raising it needs root with \
             CAP_SYS_RESOURCE: `ulimit -n {needed}` or LimitNOFILE= in the gateway's unit)",
            plan.sessions
        );
    }
    Ok(())
}

pub async fn run(plan: &Plan, sut: &mut Sut, nofile: u64) -> anyhow::Result<Outcome> {
    check_nofile(plan, nofile)?;
    let gw = sut.start_gateway("gw-conn").await?;
    let gw_pid = gw
        .proc
        .as_ref()
        .map(|p| p.pid())
        .context("gateway process")?;
    let api = Api::new(&sut.urls.api)?;
    let admin = if plan.demo_workspace {
        sut.demo_admin_token()?
    } else {
        sut.bench_workspace()?
    };
    let run = format!("{:x}", std::process::id());
    let channel = api
        .create_channel(
            &admin,
            // Unique across runs against one deployment (`--target-urls`), not only within one.
            &format!(
                "idle{run}-{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or_default()
            ),
        )
        .await?;
    note(format!("connections: creating {} users", plan.users));
    let tokens: Vec<String> = for_each_concurrent((0..plan.users).collect(), 16, {
        let (api, admin, channel, run) = (api.clone(), admin.clone(), channel.clone(), run.clone());
        move |u: usize| {
            let (api, admin, channel) = (api.clone(), admin.clone(), channel.clone());
            let name = format!("idle{run}-{u}");
            async move {
                let (_, token) = api.create_user(&admin, &name).await?;
                api.join(&token, &channel).await?;
                Ok(token)
            }
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes(gw_pid)?;

    note(format!(
        "connections: opening {} sessions on {}",
        plan.sessions, gw.url
    ));
    let (stop, stop_rx) = watch::channel(false);
    let sources = Arc::new(SourceAddrs::new(plan.source_ips));
    let limit = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let hist = SharedHistogram::default();
    let connected = Arc::new(AtomicUsize::new(0));
    let closed_early = Arc::new(AtomicU64::new(0));
    let total = plan.sessions;
    let progress = {
        let connected = connected.clone();
        Progress::start("connections".into(), move || {
            format!("{} / {total} sessions", connected.load(Ordering::Relaxed))
        })
    };
    let started = Instant::now();
    let mut readies = Vec::with_capacity(total);
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let url = format!("{}?token={}", gw.url, tokens[i % tokens.len()]);
        let (tx, rx) = oneshot::channel::<anyhow::Result<()>>();
        readies.push(rx);
        let (sources, limit, hist, connected, closed_early) = (
            sources.clone(),
            limit.clone(),
            hist.clone(),
            connected.clone(),
            closed_early.clone(),
        );
        let mut stop_rx = stop_rx.clone();
        let read_buffer = plan.read_buffer;
        handles.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let t0 = Instant::now();
            let opened = open_session(&url, sources.take(), read_buffer).await;
            drop(permit);
            let mut ws = match opened {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            hist.record(t0.elapsed().as_nanos() as u64);
            connected.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Ok(()));
            // Idle: read (answering pings) until told to stop.
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    f = ws.next() => match f {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            closed_early.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }));
    }
    let mut errors = Vec::new();
    for r in readies {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
            Err(_) => errors.push("session task died".into()),
        }
    }
    let connect_wall_s = started.elapsed().as_secs_f64();
    progress.finish().await;
    let n = connected.load(Ordering::Relaxed);
    note(format!(
        "connections: {n} sessions open in {connect_wall_s:.1} s; settling, then holding {} s",
        plan.hold_s
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(gw_pid)?;
    tokio::time::sleep(Duration::from_secs_f64(plan.hold_s)).await;
    let rss_hold = rss_bytes(gw_pid)?;
    let bench_rss = rss_bytes(std::process::id()).unwrap_or(0);
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }
    sut.check_alive()?;
    let h = hist.snapshot();
    let grown = rss_after.max(rss_hold).saturating_sub(rss_before);
    drop(gw);
    Ok(Outcome {
        sessions: plan.sessions,
        users: plan.users,
        connected: n,
        connect_wall_s,
        sessions_per_s: n as f64 / connect_wall_s.max(1e-9),
        connect_latency: LatencySummary::of(&h),
        gateway_rss_before_bytes: rss_before,
        gateway_rss_after_bytes: rss_after,
        gateway_rss_after_hold_bytes: rss_hold,
        gateway_bytes_per_session: if n > 0 { grown as f64 / n as f64 } else { 0.0 },
        bench_rss_bytes: bench_rss,
        closed_early: closed_early.load(Ordering::Relaxed),
        errors,
        nofile_limit: nofile,
        curve: percentile_curve(&h),
    })
}

async fn open_session(
    url: &str,
    source: std::net::Ipv4Addr,
    read_buffer: usize,
) -> anyhow::Result<ws::Ws> {
    let mut ws = ws::connect(url, source, ws::client_config(read_buffer)).await?;
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"type\":\"hello\"") => Ok(ws),
        Ok(other) => bail!("expected hello, got {other:?}"),
        Err(_) => bail!("no hello within 60 s"),
    }
}
