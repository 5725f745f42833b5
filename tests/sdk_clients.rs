//! The official Slack SDKs as Switchboard clients, unchanged: Python's `slack_sdk` (Web API and
//! RTM v2 client) and Node's `@slack/web-api` and `@slack/rtm-api`, each against a real
//! `switchboard dev` that their suites start on free loopback ports (`sdk-tests/`).
//!
//! `.ci/run` installs the SDKs (`pip install -r sdk-tests/python/requirements.txt`,
//! `npm ci` in `sdk-tests/node`); here a missing one fails with the command that installs it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(what: &str, cmd: &mut Command, install: &str) {
    let out = cmd
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .output()
        .unwrap_or_else(|e| {
            panic!("could not run the {what} suite ({e}); install it with: {install}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {what} suite failed ({}); if a package is missing, install it with: {install}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
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
