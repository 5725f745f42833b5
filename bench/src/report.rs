//! What every run writes: the machine and commit it ran on, a live progress line on stderr,
//! a table on stdout, a JSON file and an SVG plot.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_total_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub scenario: String,
    pub command: String,
    pub started_utc: String,
    /// HEAD when the run started (the binaries under test may be older: see
    /// `switchboard_bin` in the JSON).
    pub git_commit: String,
    /// Whether the work tree had uncommitted changes.
    pub git_dirty: bool,
    pub build_profile: &'static str,
    pub machine: Machine,
    /// `/proc/loadavg` when the run started: other work on the machine skews every figure.
    pub loadavg_start: String,
}

impl RunInfo {
    pub fn new(scenario: &str) -> RunInfo {
        let args: Vec<String> = std::env::args().collect();
        RunInfo {
            scenario: scenario.to_string(),
            command: shell_join(&args),
            started_utc: utc_string(SystemTime::now(), false),
            git_commit: git_commit(),
            git_dirty: git_dirty(),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            machine: Machine::probe(),
            loadavg_start: loadavg(),
        }
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Warns when the machine is busy before a run.
pub fn warn_if_busy(info: &RunInfo) {
    let one: f64 = info
        .loadavg_start
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if one > 0.5 * info.machine.nproc as f64 {
        note(format!(
            "the machine is busy (load average {} on {} cpus): figures will be skewed",
            info.loadavg_start, info.machine.nproc
        ));
    }
}

fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn git_dirty() -> bool {
    std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty())
}

/// A binary's path and modification time, so a result names what it measured.
pub fn binary_info(path: &Path) -> serde_json::Value {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| utc_string(t, false))
        .unwrap_or_else(|_| "unknown".into());
    serde_json::json!({ "path": path.display().to_string(), "modified_utc": modified })
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-25T18:03:00Z`, or `20261125-180300` for file names.
pub fn utc_string(t: SystemTime, compact: bool) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let (h, mi, se) = (s / 3600, s / 60 % 60, s % 60);
    if compact {
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}Z")
    }
}

/// Where a run's files go: `--out DIR`, else `bench/out/`.
pub fn out_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("out"))
}

/// Writes `<dir>/<scenario>-<timestamp>.json` (and `.svg` when given); returns the paths.
pub fn write_outputs(
    dir: &Path,
    scenario: &str,
    json: &serde_json::Value,
    svg: Option<&str>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let stamp = utc_string(SystemTime::now(), true);
    let base = dir.join(format!("{scenario}-{stamp}"));
    let json_path = base.with_extension("json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(json)?)
        .with_context(|| format!("failed to write {}", json_path.display()))?;
    let mut paths = vec![json_path];
    if let Some(svg) = svg {
        let p = base.with_extension("svg");
        std::fs::write(&p, svg).with_context(|| format!("failed to write {}", p.display()))?;
        paths.push(p);
    }
    Ok(paths)
}

/// A table with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                s.push_str(&format!(" {c:<w$} |"));
            }
            s
        };
        let mut out = vec![line(&self.header)];
        out.push(format!(
            "|{}",
            widths
                .iter()
                .map(|w| format!("{}|", "-".repeat(w + 2)))
                .collect::<String>()
        ));
        for r in &self.rows {
            out.push(line(r));
        }
        out.join("\n")
    }
}

/// A progress line on stderr, redrawn in place on a terminal and printed every few seconds
/// otherwise, until dropped.
pub struct Progress {
    stop: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start<F>(label: String, mut status: F) -> Progress
    where
        F: FnMut() -> String + Send + 'static,
    {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = stop.clone();
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.notified() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let line = format!(
                    "[{label} {:>5.1}s] {}",
                    started.elapsed().as_secs_f64(),
                    status()
                );
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
            if tty {
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            }
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    pub async fn finish(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// A status message on stderr (setup steps).
pub fn note(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_string(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_629_551);
        assert_eq!(utc_string(t, false), "2026-11-25T17:59:11Z");
        assert_eq!(utc_string(t, true), "20261125-175911");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_string(leap, false), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["wide cell".into(), "1".into()]);
        let r = t.render();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{r}");
    }

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let args = vec![
            "bench".to_string(),
            "--set".into(),
            "a b".into(),
            "it's".into(),
        ];
        assert_eq!(shell_join(&args), r#"bench --set 'a b' 'it'\''s'"#);
    }

    #[test]
    fn machine_probe_reads_proc() {
        let m = Machine::probe();
        assert!(m.nproc >= 1);
        assert!(m.mem_total_gib > 0.0);
    }
}
