//! The official Slack SDKs as Switchboard clients, unchanged: Python's `slack_sdk` (Web API and
//! RTM v2 client) and Node's `@slack/web-api` and `@slack/rtm-api`, each against a real
//! `switchboard dev` that their suites start on free loopback ports (`sdk-tests/`).
//!
//! `.ci/run` installs the SDKs (`pip install -r sdk-tests/python/requirements.txt`,
//! `npm ci` in `sdk-tests/node`); here a missing one fails with the command that installs it.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one SDK suite may run (it starts its own `switchboard dev`); past it the suite and
/// everything it started are killed and the test fails, rather than hang the whole run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the pipes may stay open once the suite exited or was killed.
const PIPE_TIMEOUT: Duration = Duration::from_secs(10);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reads `pipe` to the end on a thread; the text arrives on the returned channel.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Every process below `root` (children, grandchildren, ...), from `/proc` (empty elsewhere).
/// The suites start `switchboard dev` in a session of its own, so killing the suite's process
/// group would miss it.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(pid, ppid)| *ppid == parent && !found.contains(pid))
                .map(|(pid, _)| *pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Kills `child` and every process it started (SIGKILL, by pid), and reaps it.
fn kill_tree(child: &mut Child) {
    let below = descendants(child.id());
    let _ = child.kill();
    for pid in below {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}

fn run(what: &str, cmd: &mut Command, install: &str) {
    let mut child = cmd
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("could not run the {what} suite ({e}); install it with: {install}")
        });
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > SUITE_TIMEOUT => {
                kill_tree(&mut child);
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("waiting for the {what} suite: {e}"),
        }
    };
    let stdout = stdout.recv_timeout(PIPE_TIMEOUT).unwrap_or_default();
    let stderr = stderr.recv_timeout(PIPE_TIMEOUT).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "the {what} suite ran past {SUITE_TIMEOUT:?} and was killed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    };
    assert!(
        status.success(),
        "the {what} suite failed ({status}); if a package is missing, install it with: {install}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    println!(
        "{what}: {}",
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
    );
}

#[test]
fn python_slack_sdk_web_api_and_rtm_clients_work_unchanged() {
    run(
        "Python slack_sdk",
        Command::new("python3")
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "sdk-tests/python",
            ])
            .current_dir(root()),
        "python3 -m pip install -r sdk-tests/python/requirements.txt",
    );
}

#[test]
fn node_slack_web_api_and_rtm_clients_work_unchanged() {
    let node_dir = root().join("sdk-tests/node");
    assert!(
        node_dir.join("node_modules/@slack/web-api").exists()
            && node_dir.join("node_modules/@slack/rtm-api").exists(),
        "the Node SDKs are not installed: run `npm ci` in sdk-tests/node"
    );
    run(
        "Node @slack/web-api",
        Command::new("node").arg("--test").current_dir(&node_dir),
        "cd sdk-tests/node && npm ci",
    );
}
