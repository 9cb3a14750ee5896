"""After SIGTERM, `mel serve` leaves nothing running: no process of its tree (Ray's raylet, GCS, agents, Serve
replicas) is alive within 30 s, and the Ray session directory it made is removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def test_mel_serve_leaves_nothing_running_after_sigterm(demo_index: Path, tmp_path: Path) -> None:
    import shutil
    import tempfile

    import psutil

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="mst-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": str(tmp)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mel", "serve", "--index", str(demo_index), "--port", str(port),
         "--set", "method=retrieval", "--set", "serve.app_name=shutdown-test",
         "--set", f"ray.logs_dir={tmp_path / 'logs'}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mel serve did not come up"
            time.sleep(2)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree)  # the tree holds Ray's processes
        assert list(tmp.glob("mel-ray-*")), "Ray's session directory should be under TMPDIR"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, 143)  # stopped cleanly (serve_forever treats it like Ctrl-C)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    _, alive = psutil.wait_procs(tree, timeout=30)
    names = [(p.pid, " ".join(p.cmdline())[:120]) for p in alive if p.is_running()]
    for p in alive:  # do not leave them to the next test
        p.kill()
    left = list(tmp.glob("mel-ray-*"))
    shutil.rmtree(tmp, ignore_errors=True)
    assert not names, f"still running 30 s after SIGTERM: {names}"
    assert not left, "the Ray session directory was left behind"
    out = (tmp_path / "serve.log").read_text()
    assert "stopping Serve and Ray" in out and "removing Ray session files" in out
    # quiet: replica logs are not in the command's output, they are kept in ray.logs_dir (path printed)
    assert "ServeReplica" not in out and "Ray, Serve and vLLM logs kept in" in out
    kept = list((tmp_path / "logs").glob("session_*/serve/replica_shutdown-test_Retriever_*.log"))
    assert kept and "serving index" in kept[0].read_text()
