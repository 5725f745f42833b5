//! Invariant 4: one slow consumer never slows the others. A session that stops reading fills
//! its bounded queue; it is told to resync (and closed) and a metric counts it, while another
//! session of the same gateway keeps up with the posts all along and receives everything.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Large messages fill the stalled socket's buffers quickly.
const TEXT_CHARS: usize = 30_000;
const MAX_POSTS: usize = 1500;
/// How far (in messages) carol may be behind the newest acknowledged post at any check while
/// the posts go on. Generous: a healthy gateway on a loaded host keeps her within a few
/// messages. A gateway that held fan-out while bob's queue was full would leave her stuck for
/// as long as it held it, while the posts (acknowledged by the channel server, not the
/// gateway) went on.
const MAX_LAG: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_told_to_resync_without_slowing_the_others() {
    let cluster = Cluster::start(
        ClusterOpts::standard(&["alice", "bob", "carol"])
            .set("gateway", "gateway.session_queue=32"),
    )
    .await;
    let alice = cluster.user("acme", "alice").clone();
    let bob = cluster.user("acme", "bob").clone();
    let carol = cluster.user("acme", "carol").clone();
    let c = cluster.create_channel(&alice, "firehose").await;
    cluster.join(&bob, &c).await;
    cluster.join(&carol, &c).await;
    let gw = cluster.gateways[0].clone();

    // carol reads normally; bob's socket is never read until the end.
    let carol_ws = cluster.connect(0, &carol).await;
    let url = format!("{}?token={}", gw.ws_url, bob.token);
    let (stalled, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (_stalled_sink, mut stalled_stream) = stalled.split();
    cluster
        .warm_up(&alice, std::slice::from_ref(&c), &[&carol_ws])
        .await;
    let overflows_before = cluster
        .metric(&gw.http, "switchboard_gateway_session_overflows_total", &[])
        .await;

    // Post big messages from a few concurrent posters until the gateway reports an overflow.
    let overflowed = AtomicBool::new(false);
    let count = AtomicUsize::new(0);
    // The newest seq acknowledged to any poster, and whether the posters are done.
    let acked = AtomicU64::new(0);
    let posting_done = AtomicBool::new(false);
    let text = "x".repeat(TEXT_CHARS);
    let started = Instant::now();
    let poster = |p: usize| {
        let (cluster, alice, c, text, overflowed, count, acked) =
            (&cluster, &alice, &c, &text, &overflowed, &count, &acked);
        async move {
            let mut last = 0;
            while !overflowed.load(Ordering::SeqCst)
                && count.fetch_add(1, Ordering::SeqCst) < MAX_POSTS
            {
                let seq = seq_of(&cluster.post(alice, c, &format!("{p} {text}")).await);
                acked.fetch_max(seq, Ordering::SeqCst);
                last = last.max(seq);
            }
            last
        }
    };
    // While the posts go on (bob's queue filling, then overflowing), carol keeps up: a count
    // of messages, not a time.
    let keeping_up = async {
        let mut worst = 0;
        while !posting_done.load(Ordering::SeqCst) {
            let newest = acked.load(Ordering::SeqCst);
            let has = carol_ws.max_seq(&c).unwrap_or(0);
            let lag = newest.saturating_sub(has);
            assert!(
                lag <= MAX_LAG,
                "carol fell {lag} messages behind the posts (seq {newest} acknowledged, she has \
                 {has}): the stalled session held up the others"
            );
            worst = worst.max(lag);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst
    };
    let watcher = async {
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline && count.load(Ordering::SeqCst) < MAX_POSTS {
            let n = cluster
                .metric(&gw.http, "switchboard_gateway_session_overflows_total", &[])
                .await;
            if n > overflows_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        overflowed.store(true, Ordering::SeqCst);
    };
    let posting = async {
        let lasts = futures_util::future::join_all((0..3).map(poster)).await;
        posting_done.store(true, Ordering::SeqCst);
        lasts
    };
    let (lasts, (), worst_lag) = tokio::join!(posting, watcher, keeping_up);
    let last = lasts.into_iter().max().unwrap();
    let overflows = cluster
        .metric(&gw.http, "switchboard_gateway_session_overflows_total", &[])
        .await;
    assert!(
        overflows > overflows_before,
        "no overflow counted after {} posts of {TEXT_CHARS} characters in {:?}",
        count.load(Ordering::SeqCst),
        started.elapsed()
    );

    // The reading session was not held back: it has everything, in order.
    carol_ws.wait_seq(&c, last, WAIT).await;
    assert_contiguous(&carol_ws.messages(&c), "carol next to a stalled session");
    assert!(
        carol_ws.closed().is_none(),
        "carol's session was closed: {:?}",
        carol_ws.closed()
    );

    // The stalled client, reading at last: a contiguous prefix, then resync_required with
    // its positions, then close 4008.
    let mut seqs_seen = Vec::new();
    let mut resync: Option<Value> = None;
    let mut close_code = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let frame = match tokio::time::timeout(Duration::from_secs(5), stalled_stream.next()).await
        {
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
        };
        match frame {
            WsMessage::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON event");
                if v["type"] == "message" && v["channel"] == c.as_str() {
                    assert!(
                        resync.is_none(),
                        "a message after resync_required: {}",
                        v["seq"]
                    );
                    seqs_seen.push(seq_of(&v));
                } else if v["type"] == "resync_required" {
                    resync = Some(v);
                }
            }
            WsMessage::Close(f) => {
                close_code = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    for w in seqs_seen.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "the stalled session's prefix has a gap or repeat: {seqs_seen:?}"
        );
    }
    let resync =
        resync.unwrap_or_else(|| panic!("no resync_required; got seqs {:?}", seqs_seen.last()));
    // Its socket buffers held some messages before the queue overflowed.
    let seen = *seqs_seen
        .last()
        .unwrap_or_else(|| panic!("the stalled session got no message before {resync}"));
    let pos = resync["seq"][&c]
        .as_u64()
        .unwrap_or_else(|| panic!("resync_required has no seq for {c}: {resync}"));
    assert_eq!(
        pos, seen,
        "resync_required reports the last seq written: {resync}"
    );
    assert_eq!(close_code, Some(4008), "close code after resync_required");
    eprintln!(
        "slow consumer: overflow after {} posts in {:?}; the stalled session got {} messages; \
         carol was at most {worst_lag} behind",
        count.load(Ordering::SeqCst),
        started.elapsed(),
        seqs_seen.len()
    );
}
