//! The system under test: a `switchboard dev` process this run starts (or one named by
//! `--target-urls`), extra `switchboard gateway` processes, and what the reports read from
//! their `/proc` entries (resident memory, CPU time).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

/// What `switchboard dev` writes to `<data dir>/urls.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Urls {
    pub webapp: String,
    pub api: String,
    pub gateway: String,
    pub admin_mesh: String,
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A gateway of the system under test.
pub struct Gateway {
    /// `ws://127.0.0.1:port/rtm`
    pub url: String,
    /// `http://127.0.0.1:port` (for `/health` and `/metrics`).
    pub http: String,
    /// The process holding only this gateway, when this run started one.
    pub proc: Option<Proc>,
}

/// Options for starting the system under test.
#[derive(Clone, Debug)]
pub struct SutOptions {
    pub switchboard_bin: PathBuf,
    pub target_urls: Option<PathBuf>,
    pub channel_servers: usize,
    /// `RUST_LOG` for the processes this run starts.
    pub server_log: String,
    /// `--set SECTION.KEY=VALUE` flags for every `switchboard` process and `admin` command
    /// this run starts (say, the `store.*` keys of a CQL store).
    pub extra_set: Vec<String>,
}

pub struct Sut {
    pub urls: Urls,
    pub data_dir: PathBuf,
    pub bin: PathBuf,
    /// The `switchboard dev` process (all roles), when this run started it.
    pub dev: Option<Proc>,
    pub gateways: Vec<Gateway>,
    opts: SutOptions,
    // Last, so the processes above are killed before the directory goes.
    _tmp: Option<tempfile::TempDir>,
}

/// The default `switchboard` binary: beside this executable (`target/<profile>/`).
pub fn default_switchboard_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("switchboard"))
        .unwrap_or_else(|| PathBuf::from("switchboard"))
}

impl Sut {
    /// Starts `switchboard dev` in a fresh data directory (or attaches to `--target-urls`)
    /// and waits until it is ready.
    pub fn start(opts: &SutOptions) -> anyhow::Result<Sut> {
        if !opts.switchboard_bin.is_file() {
            bail!(
                "switchboard binary not found at {} (build it with `cargo build --release -p switchboard`, \
                 or pass --switchboard-bin)",
                opts.switchboard_bin.display()
            );
        }
        if let Some(path) = &opts.target_urls {
            let urls = read_urls(path)?;
            let data_dir = path
                .parent()
                .context("--target-urls has no parent directory")?
                .to_path_buf();
            return Ok(Sut {
                gateways: vec![gateway_from_url(&urls.gateway, None)?],
                urls,
                data_dir,
                bin: opts.switchboard_bin.clone(),
                dev: None,
                opts: opts.clone(),
                _tmp: None,
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix("bench-switchboard-")
            .tempdir()?;
        let data_dir = tmp.path().to_path_buf();
        let log = data_dir.join("dev.log");
        let mut cmd = Command::new(&opts.switchboard_bin);
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--http-port")
            .arg("0")
            .arg("--channel-servers")
            .arg(opts.channel_servers.to_string())
            .args(set_flags(&opts.extra_set))
            .env("RUST_LOG", &opts.server_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to start {}", opts.switchboard_bin.display()))?;
        // `dev` prints its welcome once the channel servers joined the ring; keep draining
        // its stdout after that so it never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Switchboard dev is running") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let mut dev = Proc {
            name: "switchboard dev".into(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    dev.check_alive()?;
                    bail!(
                        "switchboard dev closed its stdout; log tail:\n{}",
                        dev.log_tail()
                    );
                }
            }
            dev.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "switchboard dev not ready within 120 s; log tail:\n{}",
                    dev.log_tail()
                );
            }
        }
        let urls = read_urls(&data_dir.join("urls.json"))?;
        Ok(Sut {
            gateways: vec![gateway_from_url(&urls.gateway, None)?],
            urls,
            data_dir,
            bin: opts.switchboard_bin.clone(),
            dev: Some(dev),
            opts: opts.clone(),
            _tmp: Some(tmp),
        })
    }

    /// Starts a `switchboard gateway` process joined to this cluster and waits for its
    /// `/health`.
    pub async fn start_gateway(&self, node_id: &str) -> anyhow::Result<Gateway> {
        let port = free_port()?;
        let log = self.data_dir.join(format!("{node_id}.log"));
        let child = Command::new(&self.bin)
            .arg("gateway")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--set")
            .arg(format!("mesh.admin_addr=\"{}\"", self.urls.admin_mesh))
            .arg("--set")
            .arg(format!("gateway.http_addr=\"127.0.0.1:{port}\""))
            .arg("--set")
            .arg(format!("gateway.webapp_url=\"{}\"", self.urls.webapp))
            .arg("--set")
            .arg(format!("node.id=\"{node_id}\""))
            .args(set_flags(&self.opts.extra_set))
            .env("RUST_LOG", &self.opts.server_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("failed to start gateway {node_id}"))?;
        let mut proc = Proc {
            name: format!("gateway {node_id}"),
            child,
            log,
        };
        let http = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            proc.check_alive()?;
            if let Ok(r) = client.get(format!("{http}/health")).send().await {
                if r.status().as_u16() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway {node_id} not healthy within 30 s; log tail:\n{}",
                    proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Gateway {
            url: format!("ws://127.0.0.1:{port}/rtm"),
            http,
            proc: Some(proc),
        })
    }

    /// Adds gateways until there are `n`.
    pub async fn ensure_gateways(&mut self, n: usize) -> anyhow::Result<()> {
        while self.gateways.len() < n {
            let id = format!("gw-bench-{}", self.gateways.len() + 1);
            let g = self.start_gateway(&id).await?;
            self.gateways.push(g);
        }
        Ok(())
    }

    /// The pids of every process of the system under test that this run started.
    /// Each process's pid with a name for reports: `dev`, `gateway-1`, ...
    pub fn process_names(&self) -> HashMap<u32, String> {
        let dev = self.dev.iter().map(|p| (p.pid(), "dev".to_string()));
        let gateways = self
            .gateways
            .iter()
            .filter_map(|g| g.proc.as_ref().map(Proc::pid))
            .enumerate()
            .map(|(i, pid)| (pid, format!("gateway-{}", i + 1)));
        dev.chain(gateways).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.dev
            .iter()
            .map(Proc::pid)
            .chain(
                self.gateways
                    .iter()
                    .filter_map(|g| g.proc.as_ref().map(Proc::pid)),
            )
            .collect()
    }

    /// Fails if a process of the system under test has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &mut self.dev {
            d.check_alive()?;
        }
        for g in &mut self.gateways {
            if let Some(p) = &mut g.proc {
                p.check_alive()?;
            }
        }
        Ok(())
    }

    /// Creates a workspace of its own for this run (so bench users are not in the demo's
    /// #general, whose presence traffic would grow with the square of the users) with an
    /// admin user, through `switchboard admin` on the store; returns the admin's token.
    pub fn bench_workspace(&self) -> anyhow::Result<String> {
        let name = format!(
            "bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                % 1_000_000_000
        );
        self.admin_cli(&["create-workspace", &name])?;
        let out = self.admin_cli(&[
            "create-user",
            "--workspace",
            &name,
            "--name",
            "bench-admin",
            "--admin",
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("unexpected output of create-user: {out}"))?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("create-user printed no token")
    }

    fn admin_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("admin")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .args(set_flags(&self.opts.extra_set))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run switchboard admin {args:?}"))?;
        if !out.status.success() {
            bail!(
                "switchboard admin {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The demo workspace's admin token from `tokens.json`.
    pub fn demo_admin_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join("tokens.json");
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?,
        )?;
        v["admin"]
            .as_str()
            .map(str::to_string)
            .context("tokens.json has no admin token")
    }
}

/// `["--set", a, "--set", b, …]`.
fn set_flags(sets: &[String]) -> Vec<&str> {
    sets.iter().flat_map(|s| ["--set", s.as_str()]).collect()
}

fn read_urls(path: &Path) -> anyhow::Result<Urls> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let urls: Urls = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a switchboard urls.json", path.display()))?;
    for u in [&urls.webapp, &urls.api, &urls.gateway] {
        let parsed = crate::ws::url_lite::Url::parse(u)?;
        crate::ws::loopback_addr(&parsed)?;
    }
    Ok(urls)
}

fn gateway_from_url(ws_url: &str, proc: Option<Proc>) -> anyhow::Result<Gateway> {
    let u = crate::ws::url_lite::Url::parse(ws_url)?;
    Ok(Gateway {
        url: ws_url.to_string(),
        http: format!("http://{}:{}", u.host, u.port),
        proc,
    })
}

/// A process's resident memory (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read /proc/{pid}/status"))?;
    parse_status_kb(&status, "VmRSS:")
        .map(|kb| kb * 1024)
        .context("no VmRSS in /proc/<pid>/status")
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A process's CPU time (user + system), in seconds. Linux counts it in clock ticks, which
/// are 1/100 s on every architecture the bench runs on.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_stat_cpu_ticks(&s))
        .map(|t| t as f64 / 100.0)
        .unwrap_or(0.0)
}

fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds of a set of processes and of the bench itself over a phase.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    /// Each server process's CPU seconds at the start, in `pids` order.
    process_start: Vec<f64>,
    bench_start: f64,
    /// Each server thread's CPU ticks at the start, by (pid, tid).
    threads_start: HashMap<(u32, u32), u64>,
    /// Each server process's context switches at the start.
    switches_start: HashMap<u32, (u64, u64)>,
    started: Instant,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CpuUsage {
    /// CPU seconds used by the system under test's processes.
    pub server_cpu_s: f64,
    /// CPU seconds used by the bench process (the clients).
    pub bench_cpu_s: f64,
    pub wall_s: f64,
    /// The server threads that used the most CPU over the phase, busiest first: a thread
    /// near one core is a serial bottleneck whatever the other cores do.
    pub busiest_threads: Vec<ThreadCpu>,
    /// Each server process's context switches over the phase, summed over its threads (a
    /// thread that ended during the phase is not counted): how often its threads slept and
    /// were woken, which a wake-up per task costs on many cores.
    pub context_switches: Vec<ProcessSwitches>,
    /// Each server process's CPU seconds over the phase, in the order the meter was given
    /// them: which role the CPU went to (`dev` against the gateways, say).
    pub processes: Vec<ProcessCpu>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub cpu_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessSwitches {
    pub pid: u32,
    /// The threads gave up the CPU to wait.
    pub voluntary: u64,
    /// The threads were preempted.
    pub involuntary: u64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ThreadCpu {
    pub pid: u32,
    /// The thread's name (`/proc/<pid>/task/<tid>/comm`: `tokio-rt-worker`, `store-shard-3`).
    pub name: String,
    /// Cores it kept busy on average: CPU seconds over wall seconds.
    pub cores: f64,
}

/// How many threads [`CpuUsage::busiest_threads`] lists.
const BUSIEST_THREADS: usize = 8;

/// Every thread of `pids` with its name and CPU ticks.
fn thread_ticks(pids: &[u32]) -> HashMap<(u32, u32), (String, u64)> {
    let mut out = HashMap::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let dir = task.path();
            let ticks = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| parse_stat_cpu_ticks(&s));
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if let Some(ticks) = ticks {
                out.insert((pid, tid), (name.trim().to_string(), ticks));
            }
        }
    }
    out
}

/// Each process's context switches so far, voluntary and involuntary, summed over its live
/// threads (`/proc/<pid>/task/*/status`).
fn process_switches(pids: &[u32]) -> HashMap<u32, (u64, u64)> {
    let mut out = HashMap::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let mut sum = (0, 0);
        for task in tasks.flatten() {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                let (v, n) = parse_switches(&status);
                sum.0 += v;
                sum.1 += n;
            }
        }
        out.insert(pid, sum);
    }
    out
}

/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of a `status` file (0 where
/// absent).
fn parse_switches(status: &str) -> (u64, u64) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

/// Switches per process between two readings, in `pids` order.
fn switches_between(
    pids: &[u32],
    start: &HashMap<u32, (u64, u64)>,
    end: &HashMap<u32, (u64, u64)>,
) -> Vec<ProcessSwitches> {
    pids.iter()
        .filter_map(|pid| {
            let (s, e) = (start.get(pid).copied().unwrap_or((0, 0)), end.get(pid)?);
            Some(ProcessSwitches {
                pid: *pid,
                voluntary: e.0.saturating_sub(s.0),
                involuntary: e.1.saturating_sub(s.1),
            })
        })
        .collect()
}

/// The threads that used the most CPU between two readings, busiest first.
fn busiest(
    start: &HashMap<(u32, u32), u64>,
    end: HashMap<(u32, u32), (String, u64)>,
    wall_s: f64,
    n: usize,
) -> Vec<ThreadCpu> {
    let mut threads: Vec<ThreadCpu> = end
        .into_iter()
        .map(|(key, (name, ticks))| {
            let used = ticks.saturating_sub(start.get(&key).copied().unwrap_or(0));
            ThreadCpu {
                pid: key.0,
                name,
                cores: used as f64 / 100.0 / wall_s.max(1e-9),
            }
        })
        .filter(|t| t.cores > 0.0)
        .collect();
    threads.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    threads.truncate(n);
    threads
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        let process_start = pids.iter().map(|p| cpu_seconds(Some(*p))).collect();
        let threads_start = thread_ticks(&pids)
            .into_iter()
            .map(|(key, (_, ticks))| (key, ticks))
            .collect();
        CpuMeter {
            switches_start: process_switches(&pids),
            pids,
            process_start,
            bench_start: cpu_seconds(None),
            threads_start,
            started: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUsage {
        let processes: Vec<ProcessCpu> = self
            .pids
            .iter()
            .zip(&self.process_start)
            .map(|(&pid, start)| ProcessCpu {
                pid,
                cpu_s: (cpu_seconds(Some(pid)) - start).max(0.0),
            })
            .collect();
        let wall_s = self.started.elapsed().as_secs_f64();
        CpuUsage {
            server_cpu_s: processes.iter().map(|p| p.cpu_s).sum(),
            processes,
            bench_cpu_s: cpu_seconds(None) - self.bench_start,
            wall_s,
            busiest_threads: busiest(
                &self.threads_start,
                thread_ticks(&self.pids),
                wall_s,
                BUSIEST_THREADS,
            ),
            context_switches: switches_between(
                &self.pids,
                &self.switches_start,
                &process_switches(&self.pids),
            ),
        }
    }
}

/// A process by its name in `names` (pid to name), else by its pid.
fn process_label(names: &HashMap<u32, String>, pid: u32) -> String {
    names.get(&pid).cloned().unwrap_or_else(|| pid.to_string())
}

/// One line for the terminal: `dev 12,034 + 310, gateway-1 8,120 + 95`: each process's
/// voluntary and involuntary context switches per second over `wall_s`.
pub fn describe_switches(
    switches: &[ProcessSwitches],
    wall_s: f64,
    names: &HashMap<u32, String>,
) -> String {
    let per_s = |n: u64| crate::stats::fmt_rate(n as f64 / wall_s.max(1e-9));
    let parts: Vec<String> = switches
        .iter()
        .map(|s| {
            let process = process_label(names, s.pid);
            format!(
                "{process} {} + {}",
                per_s(s.voluntary),
                per_s(s.involuntary)
            )
        })
        .collect();
    parts.join(", ")
}

/// One line for the terminal: what each server process spent per message over a phase, and
/// all of them together per message and per delivery: `dev 182 µs, gateway-1 41 µs,
/// gateway-2 40 µs; all 263 µs per message, 26.3 µs per delivery`. `None` without messages.
pub fn describe_cost(
    processes: &[ProcessCpu],
    messages: u64,
    deliveries: u64,
    names: &HashMap<u32, String>,
) -> Option<String> {
    if messages == 0 || processes.is_empty() {
        return None;
    }
    let us = |cpu_s: f64, n: u64| cpu_s * 1e6 / n as f64;
    let parts: Vec<String> = processes
        .iter()
        .map(|p| {
            format!(
                "{} {:.0} µs",
                process_label(names, p.pid),
                us(p.cpu_s, messages)
            )
        })
        .collect();
    let all: f64 = processes.iter().map(|p| p.cpu_s).sum();
    let mut line = format!(
        "{}; all {:.0} µs per message",
        parts.join(", "),
        us(all, messages)
    );
    if deliveries > 0 {
        line.push_str(&format!(", {:.1} µs per delivery", us(all, deliveries)));
    }
    Some(line)
}

/// One line for the terminal: `dev tokio-rt-worker 0.62, gateway store-shard-1 0.31, ...`,
/// naming each process by `names` (pid to name) where known.
pub fn describe_threads(threads: &[ThreadCpu], names: &HashMap<u32, String>) -> String {
    let parts: Vec<String> = threads
        .iter()
        .map(|t| format!("{} {} {:.2}", process_label(names, t.pid), t.name, t.cores))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_threads_are_listed_by_their_share_of_a_core() {
        let start: HashMap<(u32, u32), u64> = [((1, 10), 100), ((1, 11), 0), ((2, 20), 50)]
            .into_iter()
            .collect();
        let end: HashMap<(u32, u32), (String, u64)> = [
            ((1, 10), ("tokio-rt-worker".to_string(), 300)),
            ((1, 11), ("store-shard-0".to_string(), 500)),
            ((2, 20), ("tokio-rt-worker".to_string(), 50)),
            // Started during the phase: counted from zero.
            ((2, 21), ("tokio-rt-worker".to_string(), 100)),
        ]
        .into_iter()
        .collect();
        let got = busiest(&start, end, 10.0, 2);
        let expected = [(1, "store-shard-0", 0.5), (1, "tokio-rt-worker", 0.2)];
        assert_eq!(got.len(), 2, "{got:?}");
        for (t, (pid, name, cores)) in got.iter().zip(expected) {
            assert_eq!((t.pid, t.name.as_str()), (pid, name));
            assert!((t.cores - cores).abs() < 1e-9, "{t:?}");
        }
        let names: HashMap<u32, String> = [(1, "dev".to_string())].into_iter().collect();
        assert_eq!(
            describe_threads(&got, &names),
            "dev store-shard-0 0.50, dev tokio-rt-worker 0.20"
        );
    }

    #[test]
    fn each_process_cost_is_given_per_message_and_all_per_delivery() {
        let processes = [
            ProcessCpu { pid: 1, cpu_s: 2.0 },
            ProcessCpu { pid: 7, cpu_s: 0.5 },
        ];
        let names: HashMap<u32, String> = [(1, "dev".to_string())].into_iter().collect();
        assert_eq!(
            describe_cost(&processes, 10_000, 100_000, &names).as_deref(),
            Some("dev 200 µs, 7 50 µs; all 250 µs per message, 25.0 µs per delivery")
        );
        assert_eq!(
            describe_cost(&processes, 10_000, 0, &names).as_deref(),
            Some("dev 200 µs, 7 50 µs; all 250 µs per message")
        );
        assert_eq!(describe_cost(&processes, 0, 0, &names), None);
        assert_eq!(describe_cost(&[], 10, 10, &names), None);
        // The meter sums its processes into the server's CPU.
        let meter = CpuMeter::start(vec![std::process::id()]);
        let used = meter.stop();
        assert_eq!(used.processes.len(), 1);
        assert_eq!(used.server_cpu_s, used.processes[0].cpu_s);
    }

    #[test]
    fn context_switches_are_read_summed_and_described_per_second() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), (120, 7));
        assert_eq!(parse_switches("Name:\tx\n"), (0, 0));
        let start: HashMap<u32, (u64, u64)> = [(1, (100, 10))].into_iter().collect();
        let end: HashMap<u32, (u64, u64)> =
            [(1, (20_100, 410)), (2, (5_000, 0))].into_iter().collect();
        let got = switches_between(&[1, 2, 3], &start, &end);
        assert_eq!(
            got,
            [
                ProcessSwitches {
                    pid: 1,
                    voluntary: 20_000,
                    involuntary: 400
                },
                // Started during the phase: counted from zero. Pid 3 is gone: left out.
                ProcessSwitches {
                    pid: 2,
                    voluntary: 5_000,
                    involuntary: 0
                },
            ]
        );
        let names: HashMap<u32, String> = [(1, "dev".to_string())].into_iter().collect();
        assert_eq!(
            describe_switches(&got, 2.0, &names),
            "dev 10,000 + 200, 2 2,500 + 0"
        );
        let me = std::process::id();
        let mine = process_switches(&[me])[&me];
        assert!(mine.0 + mine.1 > 0, "this process has switched: {mine:?}");
    }

    #[test]
    fn this_process_has_threads_to_list() {
        let me = std::process::id();
        let threads = thread_ticks(&[me]);
        assert!(threads.keys().any(|(pid, tid)| *pid == me && *tid == me));
    }

    #[test]
    fn reads_proc_status_and_stat() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kb(s, "VmSwap:"), None);
        let stat =
            "42 (tokio (worker) 1) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let _ = cpu_seconds(None);
    }
}
