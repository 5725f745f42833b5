//! `switchboard-bench`: the load generator. It starts the system under test itself (a real
//! `switchboard dev` process, extra `switchboard gateway` processes, nats-server) unless told
//! where one runs, drives one scenario, checks what it received, and reports.
//!
//! # Layout
//! - [`fanout`]: the fan-out scenario against Switchboard, the limit server and NATS.
//! - [`connections`], [`posts`]: idle sessions per gateway; durable post throughput.
//! - [`store`]: durable appends straight into the embedded store (its writers' ceiling).
//! - [`cql`]: the Cassandra node (or cluster) the posts scenario runs the CQL store on.
//! - [`limit`]: the plain WebSocket broadcast server, a child process (the machine's ceiling).
//! - [`nats`]: NATS text protocol over WebSocket, and starting nats-server.
//! - [`order`]: the in-order, no-loss, no-duplicate check.
//! - [`stats`], [`svg`], [`report`]: histograms, the plot, tables, JSON, progress.
//! - [`sut`], [`slack`], [`ws`]: the processes under test, their Web API, WebSocket clients.
//!
//! # Invariants
//! - Only loopback addresses are ever connected to or bound (127.0.0.0/8).
//! - A lost, repeated, reordered or wrong message fails the run (non-zero exit).
//! - Every process the bench starts is killed when it ends.

mod connections;
mod cql;
mod fanout;
mod limit;
mod nats;
mod order;
mod pace;
mod posts;
mod promtext;
mod rawws;
mod report;
mod search;
mod slack;
mod stats;
mod store;
mod sut;
mod svg;
mod ws;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::report::{note, RunInfo, Table};
use crate::stats::{fmt_rate, fmt_us, LatencySummary};
use crate::svg::Series;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Benchmarks for Switchboard: fan-out, connections, durable posts, the machine's limit, and NATS"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// P posters into C channels, S subscribers per channel over G gateways: deliveries per
    /// second, post-to-screen latency, in-order check. `--with-limit`/`--with-nats` run the
    /// same shape against the limit server and nats-server in the same run.
    Fanout(FanoutArgs),
    /// N idle sessions on one gateway process: connect time and gateway memory per session.
    Connections(ConnectionsArgs),
    /// Durable chat.postMessage throughput and latency on the embedded store, and with
    /// `--stores embedded,cql` on the CQL store (a Cassandra node the bench starts) in the
    /// same run, side by side.
    Posts(PostsArgs),
    /// The fan-out shape over a plain tokio-tungstenite broadcast server (a child process).
    /// Flags that only shape a Switchboard or NATS run (`-g`, `-p`, `--target-urls`,
    /// `--nats-url`, ...) are refused.
    Limit(FanoutArgs),
    /// The fan-out shape over nats-server's WebSocket listener, one publisher. Flags that only
    /// shape a Switchboard or limit server run (`-g`, `-p`, `--target-urls`,
    /// `--limit-threads`, ...) are refused.
    Nats(FanoutArgs),
    /// Durable appends straight into the embedded store, in this process (no server): the
    /// ceiling its writer threads put on posts, with a shard per workspace and with a
    /// workspace's channels spread over the shards, side by side on fresh stores.
    Store(StoreArgs),
    /// search.messages latency on a workspace of many stored messages (a real webapp process
    /// indexing a filled store).
    Search(SearchArgs),
    /// Internal: the limit server as a process of its own (used when a run's sockets do not
    /// fit in one process's open-files limit); prints its URL, serves until stdin closes.
    #[command(hide = true)]
    LimitServer {
        #[arg(long)]
        channels: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The `switchboard` binary (default: beside this executable).
    #[arg(long)]
    switchboard_bin: Option<PathBuf>,
    /// Use a running deployment: the `urls.json` that `switchboard dev --data-dir D` wrote
    /// (its directory must also hold the store, for the bench workspace).
    #[arg(long)]
    target_urls: Option<PathBuf>,
    /// Where the JSON and SVG go (default: bench/out/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Channel servers for `switchboard dev` [default: 2].
    #[arg(long)]
    channel_servers: Option<usize>,
    /// RUST_LOG for the Switchboard processes the bench starts [default: warn].
    #[arg(long)]
    server_log: Option<String>,
    /// Tiny sizes that finish in a few seconds (explicit flags still win).
    #[arg(long)]
    smoke: bool,
}

impl Common {
    fn sut_options(&self) -> sut::SutOptions {
        sut::SutOptions {
            switchboard_bin: self
                .switchboard_bin
                .clone()
                .unwrap_or_else(sut::default_switchboard_bin),
            target_urls: self.target_urls.clone(),
            channel_servers: self.channel_servers.unwrap_or(2),
            server_log: self.server_log.clone().unwrap_or_else(|| "warn".into()),
            extra_set: Vec::new(),
        }
    }
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Channels [default: 1; smoke 2].
    #[arg(long, short = 'c')]
    channels: Option<usize>,
    /// Subscribers per channel [default: 1000; smoke 3].
    #[arg(long, short = 's')]
    subscribers: Option<usize>,
    /// Switchboard gateways to spread subscribers over [default: 2].
    #[arg(long, short = 'g')]
    gateways: Option<usize>,
    /// Concurrent HTTP posters (Switchboard) [default: the window, so that as many messages
    /// are in flight as NATS's and the limit server's pipelining publisher keep; smoke 2].
    #[arg(long, short = 'p')]
    posters: Option<usize>,
    /// Seconds per measured phase [default: 15; smoke 1.5].
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Offered load, messages per second over all channels (default: as fast as the
    /// window allows).
    #[arg(long)]
    rate: Option<f64>,
    /// After the first phase, measure again at half of its message rate.
    #[arg(long)]
    half_peak: bool,
    /// Messages in flight (posted, not yet received by all their subscribers)
    /// [default: 256; smoke 16].
    #[arg(long)]
    window: Option<usize>,
    /// Most messages per phase.
    #[arg(long, default_value_t = 2_000_000)]
    max_messages: u64,
    /// Seconds to wait for the last messages after posting stops.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Loopback source addresses to spread client sockets over.
    #[arg(long, default_value_t = 16)]
    source_ips: u32,
    /// WebSocket read buffer per subscriber, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer: usize,
    /// Bench users in the demo workspace (all in its #general) instead of their own.
    #[arg(long)]
    demo_workspace: bool,
    /// Also put subscribers on the gateway inside the `dev` process (which runs the Web API,
    /// admin and channel servers too). By default all G gateways are processes of their own,
    /// as edge gateways are deployed, so fan-out and the post path do not share a runtime.
    #[arg(long)]
    dev_gateway: bool,
    /// Also run the limit server with the same shape (fanout only).
    #[arg(long)]
    with_limit: bool,
    /// Also run nats-server with the same shape (fanout only).
    #[arg(long)]
    with_nats: bool,
    /// A running nats-server's WebSocket URL (default: start one).
    #[arg(long)]
    nats_url: Option<String>,
    /// The nats-server binary (default: from PATH or /usr/sbin).
    #[arg(long)]
    nats_server_bin: Option<PathBuf>,
    /// Worker threads of the limit server [default: number of CPUs].
    #[arg(long)]
    limit_threads: Option<usize>,
    /// Threads of the publishers' own runtime, so that posting is not queued behind the
    /// subscribers' reads in one scheduler, as a poster on another machine would not be
    /// [default: a quarter of the CPUs, at least 1, at most 8]. 0: publish on the
    /// subscribers' runtime, as the bench did before it had its own (for comparison).
    #[arg(long)]
    publisher_threads: Option<usize>,
    /// Threads that each run a share of the subscribers on a single-threaded runtime, so that
    /// one message wakes each thread once rather than every subscriber's task on any of the
    /// bench's workers [default: 0, the subscribers on the bench's multi-threaded runtime].
    #[arg(long, default_value_t = 0)]
    subscriber_threads: usize,
}

impl FanoutArgs {
    fn plan(&self) -> fanout::Plan {
        let smoke = self.common.smoke;
        let pick = |v: Option<usize>, normal: usize, small: usize| {
            v.unwrap_or(if smoke { small } else { normal })
        };
        fanout::Plan {
            channels: pick(self.channels, 1, 2).max(1),
            subs_per_channel: pick(self.subscribers, 1000, 3).max(1),
            gateways: pick(self.gateways, 2, 2).max(1),
            posters: pick(self.posters, pick(self.window, 256, 16), 2).max(1),
            duration_s: self.duration.unwrap_or(if smoke { 1.5 } else { 15.0 }),
            max_messages: self.max_messages,
            rate: self.rate.filter(|r| *r > 0.0),
            half_peak: self.half_peak || smoke,
            window: pick(self.window, 256, 16).max(1),
            drain_timeout_s: self.drain_timeout,
            connect_concurrency: self.connect_concurrency,
            source_ips: self.source_ips,
            read_buffer: self.read_buffer,
            demo_workspace: self.demo_workspace,
            limit_threads: self.limit_threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
            no_dev_gateway: !self.dev_gateway,
            publisher_threads: self.publisher_threads.unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(2, |n| n.get());
                (n / 4).clamp(1, 8)
            }),
            subscriber_threads: self.subscriber_threads,
        }
    }
}

#[derive(Args, Clone)]
struct ConnectionsArgs {
    #[command(flatten)]
    common: Common,
    /// Idle sessions to open [default: 5000; smoke 50]. 50,000 needs RLIMIT_NOFILE above
    /// 50,512 for the bench and the gateway.
    #[arg(long, short = 'n')]
    sessions: Option<usize>,
    /// Users the sessions are spread over [default: 50; smoke 5].
    #[arg(long)]
    users: Option<usize>,
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 16)]
    source_ips: u32,
    /// Seconds to hold the sessions open after the last connected [default: 5; smoke 1].
    #[arg(long)]
    hold: Option<f64>,
    /// WebSocket read buffer per session on the client side, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    #[arg(long)]
    demo_workspace: bool,
}

#[derive(Args, Clone)]
struct PostsArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent posters [default: 64; smoke 4].
    #[arg(long, short = 'p')]
    posters: Option<usize>,
    /// Channels posted into, round-robin [default: 64; smoke 2].
    #[arg(long, short = 'c')]
    channels: Option<usize>,
    /// Seconds [default: 15; smoke 1.5].
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Offered posts per second (default: back to back).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 10_000_000)]
    max_posts: u64,
    /// Bytes of text per post.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// Stores to measure in this run, one after the other, with the same load: `embedded`,
    /// `cql`, or both (`embedded,cql`, in that order).
    #[arg(long, value_delimiter = ',', default_value = "embedded")]
    stores: Vec<StoreKind>,
    /// Seconds of the same load before each store's measured phase, not counted
    /// [default: 60 when --stores includes cql (a fresh Cassandra JVM compiles its hot paths
    /// for about a minute before its rate settles), else 0; smoke 0].
    #[arg(long)]
    warmup: Option<f64>,
    /// A running CQL cluster's contact point, host:port (repeatable or comma-separated),
    /// instead of the single-node Cassandra the bench starts.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    cql_node: Vec<String>,
    /// Data directory of the Cassandra the bench starts (deploy/cassandra/start.sh)
    /// [default: <repo>/target/cassandra-bench].
    #[arg(long)]
    cql_data_dir: Option<PathBuf>,
    /// CQL port of the Cassandra the bench starts (away from the test node's 19042 and from
    /// the end-to-end tests' 20000-32000).
    #[arg(long, default_value_t = 19142)]
    cql_port: u16,
    /// Storage (gossip) port of the Cassandra the bench starts.
    #[arg(long, default_value_t = 17100)]
    cql_storage_port: u16,
    /// Leave the Cassandra the bench started running at the end (a later run reuses it).
    #[arg(long)]
    cql_keep_node: bool,
    /// Keep this run's keyspaces (default: drop them, and only them, at the end).
    #[arg(long)]
    cql_keep_keyspaces: bool,
    /// store.cql_replication_factor of this run's keyspaces.
    #[arg(long, default_value_t = 1)]
    cql_replication_factor: u32,
    /// Another --set for the system under test on the CQL store, after the bench's own
    /// (say, `store.cql_write_consistency="ONE"`); repeatable.
    #[arg(long, value_name = "SECTION.KEY=VALUE")]
    cql_set: Vec<String>,
}

/// A store the posts scenario can run the system under test on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// The embedded store (SQLite files in the data directory).
    Embedded,
    /// The CQL store (`store.kind = "cql"`) on a Cassandra node or a running cluster.
    Cql,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Cql => "cql",
        }
    }
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Where the JSON and SVG go (default: bench/out/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tiny sizes that finish in a few seconds (explicit flags still win).
    #[arg(long)]
    smoke: bool,
    /// Concurrent appenders, each owning its own channels [default: 256; smoke 4].
    #[arg(long, short = 'p')]
    appenders: Option<usize>,
    /// Channels of the one workspace [default: 256; smoke 8].
    #[arg(long, short = 'c')]
    channels: Option<usize>,
    /// Store shards (`store.shards`; `dev` gives a new store one per core, 4 to 16).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Seconds per shard key [default: 10; smoke 1].
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// Shard keys to run, one after the other on a fresh store each.
    #[arg(long, value_delimiter = ',', default_value = "workspace,channel")]
    keys: Vec<String>,
    /// Directory for the stores (default: the output directory: a disk, as a deployment's
    /// store is, where /tmp may be memory). Each run's store is removed after it.
    #[arg(long)]
    dir: Option<PathBuf>,
}

async fn store_cmd(a: StoreArgs) -> anyhow::Result<bool> {
    let info = RunInfo::new("store");
    report::warn_if_busy(&info);
    let smoke = a.smoke;
    let plan = store::Plan {
        appenders: a.appenders.unwrap_or(if smoke { 4 } else { 256 }),
        channels: a.channels.unwrap_or(if smoke { 8 } else { 256 }),
        shards: a.shards.max(1),
        duration_s: a.duration.unwrap_or(if smoke { 1.0 } else { 10.0 }),
        text_bytes: a.text_bytes,
    };
    let keys = a
        .keys
        .iter()
        .map(|k| {
            shared::store::ShardKey::from_name(k)
                .ok_or_else(|| anyhow::anyhow!("--keys: {k:?} is neither workspace nor channel"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out_dir = report::out_dir(a.out.as_deref());
    let parent = a.dir.clone().unwrap_or_else(|| out_dir.clone());
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("failed to create {}", parent.display()))?;
    let mut results = Vec::new();
    for key in keys {
        let dir = tempfile::Builder::new()
            .prefix("store-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("failed to make a store directory in {}", parent.display()))?;
        results.push(store::run(&plan, key, dir.path()).await?);
    }
    let mut t = Table::new(&[
        "shard key",
        "appenders",
        "channels",
        "shards used",
        "appends",
        "appends/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "cpu",
        "check",
    ]);
    for o in &results {
        let l = &o.latency;
        t.row(vec![
            o.shard_key.clone(),
            plan.appenders.to_string(),
            plan.channels.to_string(),
            format!("{}/{}", o.shards_used, plan.shards),
            o.appends.to_string(),
            fmt_rate(o.appends_per_s),
            fmt_us(l.p50_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            format!("{:.1}s", o.cpu_s),
            if o.ok() { "ok".into() } else { "FAILED".into() },
        ]);
    }
    println!("\nstore: durable appends into the embedded store, one workspace");
    println!("{}", t.render());
    let find = |k: &str| results.iter().find(|o| o.shard_key == k);
    let ratio_channel_over_workspace = match (find("channel"), find("workspace")) {
        (Some(c), Some(w)) => {
            let r = ratio(c.appends_per_s, w.appends_per_s);
            if let Some(r) = r {
                println!("channel / workspace: appends/s {r:.3}");
            }
            r
        }
        _ => None,
    };
    let mut ok = true;
    for o in &results {
        if !o.ok() {
            ok = false;
            eprintln!("bench: store ({} key) FAILED its checks:", o.shard_key);
        }
        for p in &o.problems {
            eprintln!("bench: store ({}): {p}", o.shard_key);
        }
    }
    let series: Vec<Series> = results
        .iter()
        .map(|o| Series {
            label: format!("{} key", o.shard_key),
            points: o.curve.clone(),
        })
        .collect();
    let svg = svg::percentile_plot(
        "store: append_new called to acknowledged",
        &format!(
            "{} appenders, {} channels, {} shards | {} cpus | {}",
            plan.appenders, plan.channels, plan.shards, info.machine.nproc, info.git_commit
        ),
        &series,
    );
    let out = json!({
        "run": info,
        "plan": plan,
        "results": results,
        "ratios": { "channel_over_workspace_appends_per_s": ratio_channel_over_workspace },
        "ok": ok,
        "loadavg_end": report::loadavg(),
    });
    for p in report::write_outputs(&out_dir, "store", &out, Some(&svg))? {
        println!("wrote {}", p.display());
    }
    Ok(ok)
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    common: Common,
    /// Messages stored before querying [default: 1,000,000; smoke 2,000].
    #[arg(long)]
    messages: Option<u64>,
    #[arg(long, default_value_t = 100)]
    channels: u32,
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Queries measured [default: 2,000; smoke 50].
    #[arg(long)]
    queries: Option<u32>,
    /// Distinct words in the generated text.
    #[arg(long, default_value_t = 20_000)]
    vocabulary: u32,
    /// Keep the generated data directory.
    #[arg(long)]
    keep: bool,
}

async fn search_cmd(a: SearchArgs) -> anyhow::Result<bool> {
    if a.common.target_urls.is_some() {
        anyhow::bail!(
            "search fills a store of its own and starts a Web API on it: --target-urls is not supported"
        );
    }
    let info = RunInfo::new("search");
    report::warn_if_busy(&info);
    let smoke = a.common.smoke;
    let plan = search::Plan {
        messages: a.messages.unwrap_or(if smoke { 2_000 } else { 1_000_000 }),
        channels: a.channels.max(1),
        users: a.users.max(1),
        queries: a.queries.unwrap_or(if smoke { 50 } else { 2_000 }),
        vocabulary: a.vocabulary.max(100),
    };
    let bin = a.common.sut_options().switchboard_bin;
    let o = search::run(&plan, &bin, a.keep).await?;
    let l = &o.http;
    let mut t = Table::new(&[
        "messages",
        "fill",
        "index catch-up",
        "queries",
        "mean hits",
        "p50",
        "p99",
        "p99.9",
        "max",
    ]);
    t.row(vec![
        plan.messages.to_string(),
        format!("{:.1}s", o.fill_s),
        format!("{:.1}s", o.index_s),
        l.count.to_string(),
        format!("{:.0}", o.mean_hits),
        fmt_us(l.p50_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
    ]);
    println!("{}", t.render());
    let r = &o.read_all;
    let mut t = Table::new(&[
        "read everything",
        "matches",
        "pages",
        "time",
        "page p50",
        "page p99",
        "page 100",
        "max",
    ]);
    t.row(vec![
        "by cursor".into(),
        r.matches.to_string(),
        r.cursor_pages.to_string(),
        format!("{:.1}s", r.cursor_s),
        fmt_us(r.cursor_page.p50_us),
        fmt_us(r.cursor_page.p99_us),
        fmt_us(r.cursor_page_100_us),
        fmt_us(r.cursor_page.max_us),
    ]);
    t.row(vec![
        "by page (1-100)".into(),
        (r.offset_page.count * 100).min(r.matches).to_string(),
        r.offset_page.count.to_string(),
        "".into(),
        fmt_us(r.offset_page.p50_us),
        fmt_us(r.offset_page.p99_us),
        fmt_us(r.offset_page_100_us),
        fmt_us(r.offset_page.max_us),
    ]);
    println!("{}", t.render());
    // The run fails before this point if the index never held every message (or held more),
    // or if reading by cursor missed, repeated or misordered a match.
    let ok = l.count > 0;
    let svg = svg::percentile_plot(
        "search: search.messages called to answered",
        &format!(
            "{} messages, {} channels, one query at a time | {} cpus | {}",
            plan.messages, plan.channels, info.machine.nproc, info.git_commit
        ),
        &[Series {
            label: "search.messages".into(),
            points: o.curve.clone(),
        }],
    );
    let json = json!({
        "run": info,
        "ok": ok,
        "plan": { "messages": plan.messages, "channels": plan.channels, "users": plan.users, "queries": plan.queries, "vocabulary": plan.vocabulary },
        "fill_s": o.fill_s,
        "index_catch_up_s": o.index_s,
        "mean_hits": o.mean_hits,
        "latency": l,
        "read_all": {
            "query": "the commonest word, sort=timestamp, count=100",
            "matches": r.matches,
            "cursor_pages": r.cursor_pages,
            "cursor_s": r.cursor_s,
            "cursor_page": r.cursor_page,
            "cursor_page_100_us": r.cursor_page_100_us,
            "offset_page": r.offset_page,
            "offset_page_100_us": r.offset_page_100_us,
        },
        "switchboard_bin": report::binary_info(&bin),
    });
    for p in report::write_outputs(
        &report::out_dir(a.common.out.as_deref()),
        "search",
        &json,
        Some(&svg),
    )? {
        note(format!("wrote {}", p.display()));
    }
    Ok(ok)
}

fn main() {
    let cli = Cli::parse();
    if let Scenario::LimitServer { channels, threads } = cli.scenario {
        raise_nofile();
        if let Err(e) = limit::serve_child(channels, threads) {
            eprintln!("limit server: {e:#}");
            std::process::exit(2);
        }
        return;
    }
    // A worker per CPU, said explicitly: tokio would otherwise read `TOKIO_WORKER_THREADS`,
    // which a run sets to size only the Switchboard processes it starts (they inherit it).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .enable_all()
        .build()
        .expect("tokio runtime");
    // On SIGINT or SIGTERM the run is dropped, which kills the processes it started.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}")),
        }
    });
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("bench: FAILED (see above)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Raises the soft open-files limit to the hard one; returns the limit now in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let nofile = raise_nofile();
    match cli.scenario {
        Scenario::Fanout(a) => fanout_cmd("fanout", a).await,
        Scenario::Limit(a) => fanout_cmd("limit", a).await,
        Scenario::Nats(a) => fanout_cmd("nats", a).await,
        Scenario::LimitServer { .. } => unreachable!("handled before the runtime starts"),
        Scenario::Connections(a) => connections_cmd(a, nofile).await,
        Scenario::Posts(a) => posts_cmd(a).await,
        Scenario::Search(a) => search_cmd(a).await,
        Scenario::Store(a) => store_cmd(a).await,
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| (a / b * 1000.0).round() / 1000.0)
}

/// The fan-out flags that `scenario` would ignore, each with why: `limit` and `nats` run one
/// system of their own, so what shapes the Switchboard side of a run (its processes,
/// gateways, posters, workspace) or the other system does nothing there, and a run that took
/// such a flag would report something other than what was asked. None for `fanout`.
///
/// `--switchboard-bin` is taken by every scenario: it is recorded in the JSON, and harnesses
/// (`tests/smoke.rs`) pass it to each one alike.
fn unused_fanout_flags(scenario: &str, a: &FanoutArgs) -> Vec<(&'static str, String)> {
    let alone = match scenario {
        "limit" => "the limit server",
        "nats" => "nats-server",
        _ => return Vec::new(),
    };
    let c = &a.common;
    let no_switchboard = format!("{scenario} starts no Switchboard, only {alone}");
    let mut unused = Vec::new();
    let mut check = |given: bool, flag: &'static str, why: String| {
        if given {
            unused.push((flag, why));
        }
    };
    check(
        c.target_urls.is_some(),
        "--target-urls",
        format!("it points at a running Switchboard; {scenario} measures {alone} only"),
    );
    check(
        c.channel_servers.is_some(),
        "--channel-servers",
        format!("it sizes the `switchboard dev` the bench starts; {no_switchboard}"),
    );
    check(
        c.server_log.is_some(),
        "--server-log",
        format!("it sets RUST_LOG of the Switchboard processes the bench starts; {no_switchboard}"),
    );
    check(
        a.gateways.is_some(),
        "--gateways",
        format!("it spreads subscribers over Switchboard gateways; {scenario} has one server"),
    );
    check(
        a.posters.is_some(),
        "--posters",
        format!(
            "it sets Switchboard's concurrent HTTP posters; {scenario} has one publisher that \
             pipelines up to --window"
        ),
    );
    check(
        a.demo_workspace,
        "--demo-workspace",
        format!("it puts the bench users in Switchboard's demo workspace; {no_switchboard}"),
    );
    check(
        a.dev_gateway,
        "--dev-gateway",
        format!("it adds the gateway inside `switchboard dev`; {no_switchboard}"),
    );
    let side_by_side = "fanout --with-limit --with-nats runs all three side by side";
    check(
        a.with_limit,
        "--with-limit",
        format!("it adds the limit server to a fanout run; {side_by_side}"),
    );
    check(
        a.with_nats,
        "--with-nats",
        format!("it adds nats-server to a fanout run; {side_by_side}"),
    );
    if scenario == "limit" {
        check(
            a.nats_url.is_some(),
            "--nats-url",
            "it picks the nats-server of nats (or fanout --with-nats); limit runs no NATS".into(),
        );
        check(
            a.nats_server_bin.is_some(),
            "--nats-server-bin",
            "it picks the nats-server of nats (or fanout --with-nats); limit runs no NATS".into(),
        );
    } else {
        check(
            a.limit_threads.is_some(),
            "--limit-threads",
            "it sizes the limit server of limit (or fanout --with-limit); nats does not run it"
                .into(),
        );
    }
    unused
}

/// Refuses a `limit` or `nats` run given flags it would ignore ([`unused_fanout_flags`]).
fn refuse_unused_fanout_flags(scenario: &str, a: &FanoutArgs) -> anyhow::Result<()> {
    let unused = unused_fanout_flags(scenario, a);
    if unused.is_empty() {
        return Ok(());
    }
    if let [(flag, why)] = unused.as_slice() {
        anyhow::bail!("{scenario} does not take {flag}: {why}");
    }
    let flags: Vec<&str> = unused.iter().map(|(flag, _)| *flag).collect();
    let why: Vec<String> = unused
        .iter()
        .map(|(flag, why)| format!("\n  {flag}: {why}"))
        .collect();
    anyhow::bail!(
        "{scenario} does not take {}:{}",
        flags.join(", "),
        why.concat()
    )
}

async fn fanout_cmd(scenario: &str, a: FanoutArgs) -> anyhow::Result<bool> {
    refuse_unused_fanout_flags(scenario, &a)?;
    let info = RunInfo::new(scenario);
    report::warn_if_busy(&info);
    let plan = a.plan();
    let run_sb = scenario == "fanout";
    let run_limit = scenario == "limit" || (run_sb && a.with_limit);
    let run_nats = scenario == "nats" || (run_sb && a.with_nats);
    note(format!(
        "{scenario}: {} channel(s) x {} subscribers{}, {} s per phase{}",
        plan.channels,
        plan.subs_per_channel,
        if run_sb {
            format!(" over {} gateway(s)", plan.gateways)
        } else {
            String::new()
        },
        plan.duration_s,
        if plan.half_peak {
            ", then half of peak"
        } else {
            ""
        }
    ));
    let mut results = Vec::new();
    if run_sb {
        let mut sut = sut::Sut::start(&a.common.sut_options())?;
        let r = fanout::run_switchboard(&plan, &mut sut).await;
        drop(sut);
        results.push(r.context("switchboard fan-out")?);
    }
    if run_limit {
        results.push(fanout::run_limit(&plan).await.context("limit fan-out")?);
    }
    if run_nats {
        let (url, server) = match &a.nats_url {
            Some(u) => (u.clone(), None),
            None => {
                let bin = nats::find_server(a.nats_server_bin.as_deref())?;
                let s = nats::start_server(&bin)?;
                (s.ws_url.clone(), Some(s))
            }
        };
        let pid = server.as_ref().map(|s| s.pid());
        let r = fanout::run_nats(&plan, &url, pid)
            .await
            .context("nats fan-out")?;
        drop(server);
        results.push(r);
    }

    // Table.
    let mut t = Table::new(&[
        "system",
        "phase",
        "msgs",
        "deliveries",
        "deliv/s",
        "msgs/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "post ack p99",
        "server cpu",
        "bench cpu",
        "check",
    ]);
    for r in &results {
        for p in &r.phases {
            t.row(vec![
                r.system.clone(),
                p.phase.clone(),
                p.messages.to_string(),
                p.deliveries.to_string(),
                fmt_rate(p.deliveries_per_s),
                fmt_rate(p.messages_per_s),
                fmt_us(p.latency.p50_us),
                fmt_us(p.latency.p99_us),
                fmt_us(p.latency.p999_us),
                fmt_us(p.latency.max_us),
                p.post_ack_latency
                    .as_ref()
                    .map(|l| fmt_us(l.p99_us))
                    .unwrap_or_else(|| "-".into()),
                format!("{:.1}s", p.cpu.server_cpu_s),
                format!("{:.1}s", p.cpu.bench_cpu_s),
                if r.ok() { "ok".into() } else { "FAILED".into() },
            ]);
        }
    }
    println!(
        "\n{scenario}: {} channel(s) x {} subscribers ({} total), gateways {}, posters {}, window {}",
        plan.channels,
        plan.subs_per_channel,
        plan.subscribers(),
        plan.gateways,
        plan.posters,
        plan.window
    );
    println!("{}", t.render());

    // Ratios.
    let find = |name: &str| results.iter().find(|r| r.system == name);
    let mut ratios = serde_json::Map::new();
    if let Some(sb) = find("switchboard") {
        for (other, key) in [("nats", "nats"), ("limit", "limit")] {
            let Some(o) = find(other) else { continue };
            for (i, (ps, po)) in sb.phases.iter().zip(&o.phases).enumerate() {
                let phase = if i == 0 { "first" } else { "half_peak" };
                let d = ratio(ps.deliveries_per_s, po.deliveries_per_s);
                let p99 = ratio(ps.latency.p99_us, po.latency.p99_us);
                // The second phase runs each system at half of its own peak: their p99s are
                // at different loads, so the ratio says so (and gives both rates).
                let mut entry = json!({ "deliveries_per_s": d, "p99": p99 });
                let mut load = String::new();
                if i > 0 {
                    entry["note"] = json!("each system at half of its own peak");
                    entry["switchboard_messages_per_s"] = json!(ps.target_rate);
                    entry[format!("{key}_messages_per_s")] = json!(po.target_rate);
                    load = format!(
                        ", each at half of its own peak: {} against {} messages/s",
                        ps.target_rate.map(fmt_rate).unwrap_or_else(|| "-".into()),
                        po.target_rate.map(fmt_rate).unwrap_or_else(|| "-".into()),
                    );
                }
                ratios.insert(format!("switchboard_over_{key}_{phase}"), entry);
                println!(
                    "switchboard / {other} ({}): deliveries/s {}, p99 {}{load}",
                    ps.phase,
                    d.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
                    p99.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
                );
            }
        }
    }
    let mut ok = true;
    for r in &results {
        if !r.ok() {
            ok = false;
            eprintln!("bench: {} FAILED its checks:", r.system);
            eprintln!(
                "  lost {}, duplicates {}, reordered {}, gaps {}, wrong {}, misrouted {}",
                r.check.lost,
                r.check.duplicates,
                r.check.reordered,
                r.check.gaps,
                r.check.wrong_messages,
                r.check.misrouted
            );
            for p in r.check.problems.iter().chain(&r.errors) {
                eprintln!("  {p}");
            }
        }
        for n in &r.notes {
            eprintln!("bench: {}: {n}", r.system);
        }
    }
    let series: Vec<Series> = results
        .iter()
        .flat_map(|r| {
            r.phases.iter().map(move |p| Series {
                label: format!("{} {}", r.system, p.phase),
                points: p.curve.clone(),
            })
        })
        .collect();
    let subtitle = format!(
        "{} ch x {} subs, {} gw, {} | {} cpus, {} | {}",
        plan.channels,
        plan.subs_per_channel,
        plan.gateways,
        info.started_utc,
        info.machine.nproc,
        info.machine.cpu_model,
        info.git_commit
    );
    let svg = svg::percentile_plot(
        &format!("{scenario}: post sent to message received"),
        &subtitle,
        &series,
    );
    let out = json!({
        "run": info,
        "plan": plan,
        "results": results,
        "ratios": ratios,
        "ok": ok,
        "loadavg_end": report::loadavg(),
        "switchboard_bin": report::binary_info(&a.common.sut_options().switchboard_bin),
    });
    let paths = report::write_outputs(
        &report::out_dir(a.common.out.as_deref()),
        scenario,
        &out,
        Some(&svg),
    )?;
    for p in paths {
        println!("wrote {}", p.display());
    }
    Ok(ok)
}

async fn connections_cmd(a: ConnectionsArgs, nofile: u64) -> anyhow::Result<bool> {
    let info = RunInfo::new("connections");
    report::warn_if_busy(&info);
    let smoke = a.common.smoke;
    let sessions = a.sessions.unwrap_or(if smoke { 50 } else { 5000 }).max(1);
    let plan = connections::Plan {
        sessions,
        users: a
            .users
            .unwrap_or(if smoke { 5 } else { 50 })
            .clamp(1, sessions),
        connect_concurrency: a.connect_concurrency,
        source_ips: a.source_ips,
        hold_s: a.hold.unwrap_or(if smoke { 1.0 } else { 5.0 }),
        read_buffer: a.read_buffer,
        demo_workspace: a.demo_workspace,
    };
    connections::check_nofile(&plan, nofile)?;
    let mut sut = sut::Sut::start(&a.common.sut_options())?;
    let o = connections::run(&plan, &mut sut, nofile).await?;
    drop(sut);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0);
    let mut t = Table::new(&[
        "sessions",
        "users",
        "connected",
        "connect time",
        "sessions/s",
        "connect p50",
        "connect p99",
        "connect max",
        "gw RSS before",
        "gw RSS after",
        "gw KiB/session",
        "closed early",
        "check",
    ]);
    t.row(vec![
        o.sessions.to_string(),
        o.users.to_string(),
        o.connected.to_string(),
        format!("{:.1}s", o.connect_wall_s),
        fmt_rate(o.sessions_per_s),
        fmt_us(o.connect_latency.p50_us),
        fmt_us(o.connect_latency.p99_us),
        fmt_us(o.connect_latency.max_us),
        mib(o.gateway_rss_before_bytes),
        mib(o
            .gateway_rss_after_bytes
            .max(o.gateway_rss_after_hold_bytes)),
        format!("{:.1}", o.gateway_bytes_per_session / 1024.0),
        o.closed_early.to_string(),
        if o.ok() { "ok".into() } else { "FAILED".into() },
    ]);
    println!(
        "\nconnections: {} idle sessions on one gateway process",
        o.sessions
    );
    println!("{}", t.render());
    for e in &o.errors {
        eprintln!("bench: {e}");
    }
    let svg = svg::percentile_plot(
        "connections: time to open a session (connect, upgrade, hello)",
        &format!(
            "{} sessions | {} cpus | {}",
            o.sessions, info.machine.nproc, info.git_commit
        ),
        &[Series {
            label: "switchboard gateway".into(),
            points: o.curve.clone(),
        }],
    );
    let ok = o.ok();
    let out = json!({
        "run": info,
        "plan": plan,
        "result": o,
        "ok": ok,
        "loadavg_end": report::loadavg(),
        "switchboard_bin": report::binary_info(&a.common.sut_options().switchboard_bin),
    });
    for p in report::write_outputs(
        &report::out_dir(a.common.out.as_deref()),
        "connections",
        &out,
        Some(&svg),
    )? {
        println!("wrote {}", p.display());
    }
    Ok(ok)
}

async fn posts_cmd(a: PostsArgs) -> anyhow::Result<bool> {
    let info = RunInfo::new("posts");
    report::warn_if_busy(&info);
    let smoke = a.common.smoke;
    let mut stores: Vec<StoreKind> = Vec::new();
    for s in &a.stores {
        if !stores.contains(s) {
            stores.push(*s);
        }
    }
    if stores.is_empty() {
        stores.push(StoreKind::Embedded);
    }
    let with_cql = stores.contains(&StoreKind::Cql);
    if with_cql && a.common.target_urls.is_some() {
        anyhow::bail!(
            "--target-urls measures a running deployment with whatever store it has; \
             --stores cql needs the bench to start the system under test"
        );
    }
    let plan = posts::Plan {
        posters: a.posters.unwrap_or(if smoke { 4 } else { 64 }).max(1),
        channels: a.channels.unwrap_or(if smoke { 2 } else { 64 }).max(1),
        duration_s: a.duration.unwrap_or(if smoke { 1.5 } else { 15.0 }),
        rate: a.rate.filter(|r| *r > 0.0),
        max_posts: a.max_posts,
        text_bytes: a.text_bytes,
        warmup_s: a
            .warmup
            .unwrap_or(if with_cql && !smoke { 60.0 } else { 0.0 })
            .max(0.0),
    };
    let mut results: Vec<posts::Outcome> = Vec::new();
    let mut cql_info = serde_json::Value::Null;
    // What the CQL store ran on, for the title and the plot: "Cassandra 5.0.7, 1 node, …".
    let mut cql_detail = String::new();
    for store in &stores {
        match store {
            StoreKind::Embedded => {
                let mut sut = sut::Sut::start(&a.common.sut_options())?;
                let o = posts::run(&plan, &mut sut, "embedded", None).await;
                drop(sut);
                results.push(o.context("posts on the embedded store")?);
            }
            StoreKind::Cql => {
                let (o, info, label) = posts_on_cql(&a, &plan).await?;
                results.push(o);
                cql_info = info;
                cql_detail = label;
            }
        }
    }

    let mut t = Table::new(&[
        "store",
        "posters",
        "channels",
        "posts",
        "posts/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "server cpu",
        "store cpu",
        "bench cpu",
        "check",
    ]);
    for o in &results {
        let l: &LatencySummary = &o.latency;
        t.row(vec![
            o.store.clone(),
            plan.posters.to_string(),
            plan.channels.to_string(),
            o.posts.to_string(),
            fmt_rate(o.posts_per_s),
            fmt_us(l.p50_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            format!("{:.1}s", o.cpu.server_cpu_s),
            o.store_cpu_s
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "-".into()),
            format!("{:.1}s", o.cpu.bench_cpu_s),
            if o.ok() { "ok".into() } else { "FAILED".into() },
        ]);
    }
    let names: Vec<String> = results
        .iter()
        .map(|o| {
            if o.store == "cql" {
                format!("cql store ({cql_detail})")
            } else {
                format!("{} store", o.store)
            }
        })
        .collect();
    println!(
        "\nposts: durable chat.postMessage on the {}{}",
        names.join(" and on the "),
        if plan.warmup_s > 0.0 {
            format!(" ({} s warm-up each, not counted)", plan.warmup_s)
        } else {
            String::new()
        }
    );
    println!("{}", t.render());

    // Ratios.
    let find = |name: &str| results.iter().find(|o| o.store == name);
    let mut ratios = serde_json::Map::new();
    if let (Some(c), Some(e)) = (find("cql"), find("embedded")) {
        let r = json!({
            "posts_per_s": ratio(c.posts_per_s, e.posts_per_s),
            "p50": ratio(c.latency.p50_us, e.latency.p50_us),
            "p99": ratio(c.latency.p99_us, e.latency.p99_us),
            "p999": ratio(c.latency.p999_us, e.latency.p999_us),
        });
        let f = |v: &serde_json::Value| {
            v.as_f64()
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "cql / embedded: posts/s {}, p50 {}, p99 {}",
            f(&r["posts_per_s"]),
            f(&r["p50"]),
            f(&r["p99"])
        );
        ratios.insert("cql_over_embedded".into(), r);
    }
    for o in &results {
        if !o.server_latency.is_empty() {
            println!(
                "inside dev ({} store): {}",
                o.store,
                promtext::describe(&o.server_latency)
            );
        }
        if let Some(paths) = &o.mesh_paths {
            println!(
                "inside dev ({} store): {}",
                o.store,
                promtext::describe_paths(paths)
            );
        }
        if !o.busiest_threads.is_empty() {
            println!(
                "busiest server threads, cores ({} store): {}",
                o.store, o.busiest_threads
            );
        }
        if !o.context_switches.is_empty() {
            println!(
                "context switches per second, voluntary + involuntary ({} store): {}",
                o.store, o.context_switches
            );
        }
    }
    let mut ok = true;
    for o in &results {
        if !o.ok() {
            ok = false;
            eprintln!("bench: posts on the {} store FAILED its checks:", o.store);
        }
        for e in o.errors.iter().chain(&o.seq_problems) {
            eprintln!("bench: {}: {e}", o.store);
        }
    }
    let series: Vec<Series> = results
        .iter()
        .map(|o| Series {
            label: format!("switchboard {} store", o.store),
            points: o.curve.clone(),
        })
        .collect();
    let svg = svg::percentile_plot(
        "posts: chat.postMessage sent to acknowledged",
        &format!(
            "{} posters, {} channels | {} cpus | {}{}",
            plan.posters,
            plan.channels,
            info.machine.nproc,
            info.git_commit,
            if with_cql {
                format!(" | cql: {cql_detail}")
            } else {
                String::new()
            }
        ),
        &series,
    );
    // `result`: the embedded store's (or the only) outcome, as before `--stores` existed.
    let first = find("embedded").or(results.first());
    let out = json!({
        "run": info,
        "plan": plan,
        "stores": stores.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "result": first,
        "results": results,
        "ratios": ratios,
        "cql": cql_info,
        "ok": ok,
        "loadavg_end": report::loadavg(),
        "switchboard_bin": report::binary_info(&a.common.sut_options().switchboard_bin),
    });
    for p in report::write_outputs(
        &report::out_dir(a.common.out.as_deref()),
        "posts",
        &out,
        Some(&svg),
    )? {
        println!("wrote {}", p.display());
    }
    Ok(ok)
}

/// The posts scenario on the CQL store: the cluster (started here unless `--cql-node`), a
/// fresh keyspace prefix, `switchboard dev` on it (which creates the keyspaces), the load,
/// then the keyspaces dropped and a node started here stopped. Returns the outcome, what the
/// JSON says about the cluster, and the store's label for the table and the plot.
async fn posts_on_cql(
    a: &PostsArgs,
    plan: &posts::Plan,
) -> anyhow::Result<(posts::Outcome, serde_json::Value, String)> {
    let cluster = cql::Cluster::ensure(&cql::NodeOptions {
        nodes: a.cql_node.clone(),
        data_dir: a.cql_data_dir.clone().unwrap_or_else(cql::default_data_dir),
        cql_port: a.cql_port,
        storage_port: a.cql_storage_port,
        keep_node: a.cql_keep_node,
    })?;
    let prefix = cql::fresh_prefix();
    let sets = cql::store_sets(
        &cluster.nodes,
        &prefix,
        a.cql_replication_factor,
        &a.cql_set,
    );
    let (store_config, settings) = cql::settings_for(&sets)?;
    let keyspaces = cql::keyspace_names(&settings);
    let before = cluster
        .keyspaces()
        .context("listing the cluster's keyspaces")?;
    if let Some(ks) = keyspaces.iter().find(|k| before.contains(k)) {
        anyhow::bail!("keyspace {ks} already exists on the cluster; not touching it");
    }
    note(format!(
        "cql: keyspaces {} (created by switchboard dev, {} at the end)",
        keyspaces.join(", "),
        if a.cql_keep_keyspaces {
            "kept"
        } else {
            "dropped"
        }
    ));
    let mut opts = a.common.sut_options();
    opts.extra_set = sets.clone();
    let outcome = async {
        let mut sut = sut::Sut::start(&opts)?;
        let o = posts::run(plan, &mut sut, "cql", cluster.pid).await;
        drop(sut);
        o
    }
    .await;
    // Only keyspaces this run named and that did not exist before it are dropped.
    let dropped = if a.cql_keep_keyspaces {
        Vec::new()
    } else {
        match cluster.drop_keyspaces(&keyspaces) {
            Ok(d) => {
                note(format!("cql: dropped {} keyspaces of this run", d.len()));
                d
            }
            Err(e) => {
                note(format!(
                    "cql: could not drop this run's keyspaces ({prefix}_*): {e:#}"
                ));
                Vec::new()
            }
        }
    };
    let version = cluster.release_version.as_deref().unwrap_or("unknown");
    let what = if cluster.started_by_bench || cluster.data_dir.is_some() {
        format!("Cassandra {version}, 1 node")
    } else {
        format!(
            "cluster at {}, release_version {version}",
            cluster.nodes.join(",")
        )
    };
    let label = format!(
        "{what}, RF {}, writes {}",
        settings.replication_factor,
        store_config.cql_write_consistency.to_ascii_uppercase()
    );
    let info = json!({
        "cluster": cluster,
        "keyspace_prefix": prefix,
        "keyspaces": keyspaces,
        "dropped": dropped,
        "replication_factor": settings.replication_factor,
        "write_consistency": store_config.cql_write_consistency.to_ascii_uppercase(),
        "read_consistency": store_config.cql_read_consistency.to_ascii_uppercase(),
        "sets": sets,
    });
    drop(cluster);
    Ok((outcome.context("posts on the CQL store")?, info, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario and fan-out arguments of `switchboard-bench <args>`.
    fn fanout_args(args: &str) -> (String, FanoutArgs) {
        let argv = std::iter::once("switchboard-bench").chain(args.split_whitespace());
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args}: {e}"));
        match cli.scenario {
            Scenario::Fanout(a) => ("fanout".into(), a),
            Scenario::Limit(a) => ("limit".into(), a),
            Scenario::Nats(a) => ("nats".into(), a),
            _ => panic!("{args} is not a fan-out scenario"),
        }
    }

    /// The flags `switchboard-bench <args>` refuses, and its error (if any).
    fn refused(args: &str) -> (Vec<&'static str>, Option<String>) {
        let (scenario, a) = fanout_args(args);
        let flags = unused_fanout_flags(&scenario, &a)
            .into_iter()
            .map(|(flag, _)| flag)
            .collect();
        let err = refuse_unused_fanout_flags(&scenario, &a)
            .err()
            .map(|e| e.to_string());
        (flags, err)
    }

    /// Flags that shape only a Switchboard run, or only fanout's.
    const SWITCHBOARD_ONLY: [&str; 9] = [
        "--target-urls /tmp/urls.json",
        "--channel-servers 3",
        "--server-log debug",
        "--gateways 4",
        "--posters 8",
        "--demo-workspace",
        "--dev-gateway",
        "--with-limit",
        "--with-nats",
    ];
    const NATS_ONLY: [&str; 2] = ["--nats-url ws://127.0.0.1:1", "--nats-server-bin /x"];
    const LIMIT_ONLY: [&str; 1] = ["--limit-threads 2"];
    /// What every fan-out scenario uses.
    const SHAPE: &str = "--smoke -c 3 -s 5 -d 2 --rate 100 --half-peak --window 32 \
        --max-messages 1000 --drain-timeout 5 --connect-concurrency 8 --source-ips 4 \
        --read-buffer 8192 --out /tmp/o --switchboard-bin /tmp/switchboard";

    #[test]
    fn limit_and_nats_refuse_the_flags_they_would_ignore() {
        for (scenario, own, other) in [
            ("limit", &LIMIT_ONLY[..], &NATS_ONLY[..]),
            ("nats", &NATS_ONLY[..], &LIMIT_ONLY[..]),
        ] {
            for given in SWITCHBOARD_ONLY.iter().chain(other) {
                let flag = given.split_whitespace().next().unwrap();
                let (flags, err) = refused(&format!("{scenario} {SHAPE} {given}"));
                assert_eq!(flags, [flag], "{scenario} {given}");
                let err = err.unwrap_or_else(|| panic!("{scenario} {given} was accepted"));
                assert!(
                    err.starts_with(&format!("{scenario} does not take {flag}: it ")),
                    "{err}"
                );
            }
            // Short forms count too, and every ignored flag is named at once.
            let (flags, err) = refused(&format!("{scenario} -g 2 -p 4 --with-nats"));
            assert_eq!(flags, ["--gateways", "--posters", "--with-nats"]);
            let err = err.unwrap();
            assert!(
                err.starts_with(&format!(
                    "{scenario} does not take --gateways, --posters, --with-nats:\n  --gateways: it "
                )),
                "{err}"
            );
            assert_eq!(err.lines().count(), 4, "{err}");
            // What the scenario uses is taken, its own flags included.
            assert_eq!(refused(scenario), (vec![], None));
            let args = format!("{scenario} {SHAPE} {}", own.join(" "));
            assert_eq!(refused(&args), (vec![], None), "{args}");
        }
    }

    #[test]
    fn fanout_takes_every_fan_out_flag() {
        let all = [&SWITCHBOARD_ONLY[..], &NATS_ONLY[..], &LIMIT_ONLY[..]].concat();
        let args = format!("fanout {SHAPE} {}", all.join(" "));
        assert_eq!(refused(&args), (vec![], None), "{args}");
        // The flags that lost their clap defaults (to tell "given" from "not given") keep
        // their values.
        let opts = fanout_args("fanout").1.common.sut_options();
        assert_eq!(
            (opts.channel_servers, opts.server_log.as_str()),
            (2, "warn")
        );
        let opts = fanout_args("fanout --channel-servers 3 --server-log info")
            .1
            .common
            .sut_options();
        assert_eq!(
            (opts.channel_servers, opts.server_log.as_str()),
            (3, "info")
        );
    }
}
