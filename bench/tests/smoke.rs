//! A short run of every scenario against the real binaries, so the harness cannot rot.
//!
//! Each test runs `switchboard-bench <scenario> --smoke` (which starts `switchboard dev`,
//! extra gateways and nats-server itself), expects exit 0, and checks the JSON and SVG it
//! wrote. The `switchboard` binary comes from the same target directory (built if missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_switchboard-bench");
/// A smoke run takes seconds; this only stops a hung one.
const TIMEOUT: Duration = Duration::from_secs(240);

/// `target/<profile>/switchboard`, beside this bench binary. `cargo test --workspace` builds
/// it in the same run (the root package's end-to-end tests need it); when it is missing (say,
/// `cargo test -p bench` on a fresh checkout) it is built here, once. It is not rebuilt when
/// present: a build of one package resolves features differently from the workspace build
/// and would recompile half the dependency tree in the middle of a test run.
fn switchboard_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(BENCH).parent().expect("bench binary has a directory");
        let bin = dir.join("switchboard");
        if bin.is_file() {
            return bin;
        }
        let release = dir.file_name().is_some_and(|n| n == "release");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "switchboard", "--bin", "switchboard"])
            .current_dir(workspace)
            .stdin(Stdio::null());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status();
        assert!(
            bin.is_file(),
            "the switchboard binary is needed at {} and `cargo build -p switchboard --bin switchboard` \
             did not produce it ({status:?}); build it and run again",
            bin.display()
        );
        bin
    })
}

struct Run {
    stdout: String,
    stderr: String,
    json: serde_json::Value,
    out_dir: tempfile::TempDir,
}

fn run(scenario: &str, extra: &[&str]) -> Run {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(BENCH);
    cmd.arg(scenario).arg("--smoke");
    // The store scenario runs the store in the bench's own process, with no server.
    if scenario != "store" {
        cmd.arg("--switchboard-bin").arg(switchboard_bin());
    }
    let mut child = cmd
        .arg("--out")
        .arg(out_dir.path())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard-bench");
    let started = Instant::now();
    // Read the pipes on threads so a chatty run cannot block on them.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out_pipe, &mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err_pipe, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`switchboard-bench {scenario} --smoke` ran past {TIMEOUT:?}; stderr:\n{}",
                err_t.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    assert!(
        status.success(),
        "`switchboard-bench {scenario} --smoke {extra:?}` failed ({status}).\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let json_path = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no JSON written in {files:?}"));
    let svg_path = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .unwrap_or_else(|| panic!("no SVG written in {files:?}"));
    let svg = std::fs::read_to_string(svg_path).expect("svg");
    assert!(
        svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json_path).expect("json")).expect("valid JSON");
    assert_eq!(json["ok"], true, "{json:#}");
    assert_eq!(json["run"]["scenario"], scenario);
    Run {
        stdout,
        stderr,
        json,
        out_dir,
    }
}

/// Checks one fan-out system's result: measured, drained, every check clean.
fn assert_fanout_system(json: &serde_json::Value, system: &str) {
    let results = json["results"].as_array().expect("results");
    let r = results
        .iter()
        .find(|r| r["system"] == system)
        .unwrap_or_else(|| panic!("no {system} result in {json:#}"));
    let phases = r["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "peak and half of peak: {r:#}");
    for p in phases {
        assert!(p["deliveries"].as_u64().unwrap() > 0, "{p:#}");
        assert!(p["deliveries_per_s"].as_f64().unwrap() > 0.0, "{p:#}");
        assert!(p["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{p:#}");
        assert_eq!(p["drained"], true);
    }
    let check = &r["check"];
    for k in [
        "lost",
        "duplicates",
        "reordered",
        "gaps",
        "wrong_messages",
        "misrouted",
    ] {
        assert_eq!(check[k], 0, "{system} {k}: {check:#}");
    }
    assert_eq!(check["streams"].as_u64(), r["subscribers"].as_u64());
}

#[test]
fn fanout_smoke() {
    let r = run("fanout", &[]);
    assert_fanout_system(&r.json, "switchboard");
    assert!(r.stdout.contains("| switchboard"), "{}", r.stdout);
    let _ = (&r.stderr, &r.out_dir);
}

#[test]
fn limit_smoke() {
    // Its subscribers on two threads of their own (`--subscriber-threads`), so that placing
    // them there is run too.
    let r = run("limit", &["--subscriber-threads", "2"]);
    assert_fanout_system(&r.json, "limit");
}

#[test]
fn nats_smoke() {
    // nats-server must be installed (`apt-get install -y nats-server`; .ci/run does it). The
    // bench fails with that advice when it is missing, and so does this test.
    let r = run("nats", &[]);
    assert_fanout_system(&r.json, "nats");
}

#[test]
fn posts_smoke() {
    let r = run("posts", &[]);
    let o = &r.json["result"];
    assert!(o["posts"].as_u64().unwrap() > 0, "{o:#}");
    assert!(o["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    assert_eq!(o["seq_problems"].as_array().map(Vec::len), Some(0));
}

#[test]
fn store_smoke() {
    let r = run("store", &[]);
    let results = r.json["results"].as_array().expect("results");
    let keys: Vec<&str> = results
        .iter()
        .map(|o| o["shard_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["workspace", "channel"]);
    for o in results {
        assert!(o["appends"].as_u64().unwrap() > 0, "{o:#}");
        assert!(o["latency"]["p99_us"].as_f64().unwrap() > 0.0);
        assert_eq!(o["problems"].as_array().map(Vec::len), Some(0));
    }
    assert_eq!(results[0]["shards_used"], 1);
    assert!(r.json["ratios"]["channel_over_workspace_appends_per_s"].is_number());
    // Each phase's store is removed after it; only the JSON and the SVG remain.
    let left: Vec<_> = std::fs::read_dir(r.out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn search_smoke() {
    let r = run("search", &[]);
    let j = &r.json;
    // Caught up means a search for the commonest word found every message holding it.
    assert!(j["index_catch_up_s"].as_f64().unwrap() >= 0.0, "{j:#}");
    assert_eq!(j["latency"]["count"], j["plan"]["queries"], "{j:#}");
    assert!(j["mean_hits"].as_f64().unwrap() > 0.0, "{j:#}");
    // Every match of the commonest word read by cursor (the run checks each came once, in
    // order), 100 a page, and the pages `page` reaches of it.
    let r = &j["read_all"];
    let matches = r["matches"].as_u64().unwrap();
    assert!(matches > 100, "{r:#}");
    assert_eq!(r["cursor_pages"], matches.div_ceil(100), "{r:#}");
    assert_eq!(
        r["offset_page"]["count"],
        matches.div_ceil(100).min(100),
        "{r:#}"
    );
}

#[test]
fn connections_smoke() {
    let r = run("connections", &[]);
    let o = &r.json["result"];
    assert_eq!(o["connected"], o["sessions"], "{o:#}");
    assert_eq!(o["closed_early"], 0);
    assert!(o["gateway_rss_after_bytes"].as_u64().unwrap() > 0);
}

/// `posts --stores embedded,cql` on the test suite's Cassandra node (the one
/// `shared::store::cql::testing::ensure_cluster` starts if it is not running, or
/// `SWITCHBOARD_TEST_CQL`): both rows, the ratio, and this run's keyspaces dropped at the
/// end. About 10 s when the node is already up.
#[test]
fn posts_cql_smoke() {
    let node = shared::store::cql::testing::ensure_cluster();
    let r = run("posts", &["--stores", "embedded,cql", "--cql-node", &node]);
    let results = r.json["results"].as_array().expect("results");
    let stores: Vec<&str> = results.iter().filter_map(|o| o["store"].as_str()).collect();
    assert_eq!(stores, ["embedded", "cql"], "{:#}", r.json);
    for o in results {
        assert!(o["posts"].as_u64().unwrap() > 0, "{o:#}");
        assert!(o["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{o:#}");
        assert_eq!(o["seq_problems"].as_array().map(Vec::len), Some(0));
    }
    let ratio = &r.json["ratios"]["cql_over_embedded"];
    assert!(ratio["posts_per_s"].as_f64().unwrap() > 0.0, "{ratio:#}");
    let cql = &r.json["cql"];
    assert_eq!(cql["cluster"]["started_by_bench"], false);
    assert!(!cql["keyspaces"].as_array().unwrap().is_empty(), "{cql:#}");
    assert_eq!(cql["dropped"], cql["keyspaces"], "{cql:#}");
    assert!(r.stdout.contains("| cql "), "{}", r.stdout);
    assert!(r.stdout.contains("cql / embedded: posts/s"), "{}", r.stdout);
}
