"""Starts a real `switchboard dev` (every role, embedded store) on free loopback ports for the
session's tests, and stops it afterwards."""

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def switchboard_bin() -> str:
    explicit = os.environ.get("SWITCHBOARD_BIN")
    if explicit:
        return explicit
    path = ROOT / "target" / "debug" / "switchboard"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: build it with `cargo build --bin switchboard` first")
    return str(path)


@pytest.fixture(scope="session")
def dev():
    data = tempfile.mkdtemp(prefix="switchboard-sdk-py-")
    log = open(Path(data) / "dev.log", "w")
    proc = subprocess.Popen(
        [switchboard_bin(), "dev", "--data-dir", data, "--http-port", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        urls_path, tokens_path = Path(data) / "urls.json", Path(data) / "tokens.json"
        deadline = time.time() + 30
        while time.time() < deadline and not (urls_path.exists() and tokens_path.exists()):
            if proc.poll() is not None:
                raise RuntimeError(f"switchboard dev exited: {(Path(data) / 'dev.log').read_text()[-2000:]}")
            time.sleep(0.1)
        urls = json.loads(urls_path.read_text())
        tokens = json.loads(tokens_path.read_text())
        # Ready once the Web API answers and a channel server owns channels.
        import urllib.request

        while time.time() < deadline:
            try:
                ring = json.loads(urllib.request.urlopen(urls["admin"] + "/ring", timeout=2).read())
                if any(m["status"] == "up" for m in ring["members"]):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield {"urls": urls, "tokens": tokens, "data": data}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
