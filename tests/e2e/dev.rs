//! `switchboard dev`, every role in one process, as a newcomer runs it: a post reaches a live
//! session and the history, whether the roles call each other in-process (the default,
//! `mesh.local_calls`) or over QUIC as separate processes do; and SIGTERM stops it cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// A `switchboard dev` process in a directory of its own; killed on drop (its log printed
/// when the test failed).
struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    urls: Value,
    tokens: Value,
    http: reqwest::Client,
}

impl Dev {
    /// Starts `switchboard dev` and waits until a post can succeed.
    async fn start(sets: &[&str]) -> Dev {
        let mut dev = Dev::spawn(sets);
        dev.wait_started().await;
        dev
    }

    /// Starts `switchboard dev` without waiting for it.
    fn spawn(sets: &[&str]) -> Dev {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("dev.log")).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-port", "0"]);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn switchboard dev");
        Dev {
            child,
            dir,
            urls: Value::Null,
            tokens: Value::Null,
            http: reqwest::Client::new(),
        }
    }

    async fn wait_started(&mut self) {
        let dev = self;
        let data = dev.dir.path().join("data");
        let deadline = Instant::now() + Duration::from_secs(60);
        // `urls.json` is written once every role runs and the channel servers are in the ring.
        loop {
            if let (Some(urls), Some(tokens)) = (
                read_json(&data.join("urls.json")),
                read_json(&data.join("tokens.json")),
            ) {
                dev.urls = urls;
                dev.tokens = tokens;
                break;
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!("switchboard dev exited: {status}");
            }
            assert!(Instant::now() < deadline, "switchboard dev did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ring = format!("{}/ring", dev.url("admin"));
        loop {
            let up = match dev.http.get(&ring).send().await {
                Ok(r) => r.json::<Value>().await.ok().is_some_and(|ring| {
                    ring["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["status"] == "up"))
                }),
                Err(_) => false,
            };
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "no channel server came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the process to end.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                return exit;
            }
            assert!(Instant::now() < deadline, "dev did not stop within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, what: &str) -> String {
        self.urls[what].as_str().expect("a URL").to_string()
    }

    fn token(&self, user: &str) -> String {
        self.tokens["users"][user]["token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    async fn api(&self, method: &str, user: &str, body: Value) -> Value {
        let answer: Value = self
            .http
            .post(format!("{}/{method}", self.url("api")))
            .bearer_auth(self.token(user))
            .json(&body)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON answer");
        assert_eq!(answer["ok"], true, "{method}: {answer}");
        answer
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url("webapp")))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metric_sample(&text, name, &[]).unwrap_or(0.0)
    }

    fn general(&self) -> String {
        self.tokens["general"]
            .as_str()
            .expect("#general's id in tokens.json")
            .to_string()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Posts as alice in #general and checks that bob's live session and the history get it;
/// returns how many mesh requests were answered in-process meanwhile.
async fn post_and_receive(dev: &Dev, text: &str) -> f64 {
    let general = dev.general();
    let bob = Client::connect(&dev.url("gateway"), &dev.token("bob"), None)
        .await
        .expect("bob's session");
    let local_before = dev.metric("switchboard_mesh_local_calls_total").await;
    let posted = dev
        .api(
            "chat.postMessage",
            "alice",
            json!({"channel": general, "text": text}),
        )
        .await;
    let live = bob
        .wait_event(0, WAIT, "the posted message", |e| {
            e["type"] == "message" && e["text"] == text
        })
        .await;
    assert_eq!(live["ts"], posted["ts"], "{live}");
    assert_eq!(live["channel"], general.as_str());
    let history = dev
        .api(
            "conversations.history",
            "bob",
            json!({"channel": general, "limit": 5}),
        )
        .await;
    assert!(
        history["messages"].as_array().is_some_and(|m| m
            .iter()
            .any(|m| m["ts"] == posted["ts"] && m["text"] == text)),
        "{history}"
    );
    dev.metric("switchboard_mesh_local_calls_total").await - local_before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_roles_call_each_other_in_process_and_over_quic() {
    // The default: the post's two hops (Web API to admin server, admin server to channel
    // server) are calls within the process.
    let dev = Dev::start(&[]).await;
    let local = post_and_receive(&dev, "in-process hops").await;
    assert!(local >= 2.0, "the post's hops were not local: {local}");
    drop(dev);

    // Switched off, the same roles talk QUIC, as they do across processes.
    let dev = Dev::start(&["mesh.local_calls=false"]).await;
    let local = post_and_receive(&dev, "hops over QUIC").await;
    assert_eq!(local, 0.0, "local calls while switched off");
    assert!(
        dev.metric("switchboard_mesh_lanes_opened_total").await >= 1.0,
        "no lane opened over QUIC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stops_cleanly_on_sigterm() {
    let mut dev = Dev::start(&[]).await;
    post_and_receive(&dev, "before stopping").await;
    let exit = dev.terminate().await;
    assert!(exit.success(), "dev exited with {exit}");
    // Its data stays for the next start.
    let data: PathBuf = dev.dir.path().join("data");
    assert!(data.join("tokens.json").exists());
}

/// SIGTERM while `dev` is still starting (its roles running, the ring not yet waited for)
/// stops it cleanly too, rather than killing it with the signal's default action: the handler
/// is installed before anything starts. (A SIGTERM just after startup used to kill it: the
/// test above failed so once, in a full test run on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stops_cleanly_on_sigterm_while_starting() {
    let mut dev = Dev::spawn(&[]);
    let urls = dev.dir.path().join("data").join("urls.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !urls.exists() {
        if let Ok(Some(status)) = dev.child.try_wait() {
            panic!("switchboard dev exited: {status}");
        }
        assert!(Instant::now() < deadline, "switchboard dev did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let exit = dev.terminate().await;
    assert!(exit.success(), "dev exited with {exit}");
}
