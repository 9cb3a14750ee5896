"""`mel submit` against a real Ray head started with `ray start --head` on 127.0.0.1: an index build of the demo
KB runs as a job on that cluster and leaves a working index; a failing job returns non-zero with its error in
the followed logs. Every socket of that head is on loopback; the head is stopped by its own process tree
(never `ray stop`, which would stop every Ray of this user)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

psutil = pytest.importorskip("psutil")

DEMO_KB = "data/demo/kb/entities.jsonl"  # relative: resolved inside the job's uploaded working dir


@dataclass
class Head:
    address: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def processes(self) -> dict[int, str]:
        """The head's process tree: `ray start --block` and everything it started (GCS, raylet, workers...)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        out = {}
        for p in procs:
            try:
                out[p.pid] = p.name()
            except psutil.NoSuchProcess:
                pass
        return out


def _stop_head(head: Head) -> None:
    procs = head.processes()
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.proc.kill()
    time.sleep(1)
    for pid in procs:  # anything left of this head (and only of this head)
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """A Ray head of its own (not the session's `ray_local`): every port chosen free on 127.0.0.1."""
    temp_dir = Path(tempfile.mkdtemp(prefix="mel-sub-", dir="/tmp"))  # short: Ray's socket paths are limited
    dash = free_port()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep the node address 127.0.0.1 (see mel/raylocal.py)
        "RAY_USAGE_STATS_ENABLED": "0",
        # Loopback-only test cluster: no token (the in-process client may or may not hold one).
        "RAY_AUTH_MODE": "disabled",
        # Fixed by default (44217/44227): would collide with any other head on this machine.
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # no Serve here to drain: stop at once on SIGTERM
        # The job's `python` is this interpreter (the head runs from the project's environment).
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    })
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--object-store-memory=300000000",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = temp_dir / "head.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(address=f"http://127.0.0.1:{dash}", proc=proc, temp_dir=temp_dir, log=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{head.address}/api/version", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head's job API did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield head
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_index_job_builds_a_working_index(ray_head: Head, tmp_path: Path, text_encoder,  # noqa: ANN001
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mel.entrypoints.cli import main
    from mel.index import IndexArtifact
    from tests.integration.test_ray_loopback import bound_sockets, non_loopback

    # An extra py_module in the job's runtime_env: it must survive the merge with the driver's runtime_env.
    extra = tmp_path / "mel_submit_extra"
    extra.mkdir()
    (extra / "__init__.py").write_text("VALUE = 7\n")
    out = tmp_path / "index"
    code = main(["submit", "index", "--kb", DEMO_KB, "--out", str(out), "--address", ray_head.address,
                 "--set", "pipelines.index.workers=1", "--set", "method=retrieval",
                 "--set", f'submit.runtime_env={{"py_modules": ["{extra}"]}}', "--set", "submit.timeout_s=600"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed[-4000:] + captured.err[-2000:]
    assert "SUCCEEDED" in printed and f"index written to {out}" in printed  # the job's own output, followed
    assert "ray.address=auto" in printed  # the job joined this cluster instead of starting a Ray of its own
    assert "starting a local Ray" not in printed

    art = IndexArtifact.load(out, expect_encoder_id=text_encoder.id)
    assert len(art) == sum(1 for line in (REPO / DEMO_KB).read_text().splitlines() if line.strip())
    _, ids = art.search_text(text_encoder.encode(["Jaguar, the British maker of luxury sports cars from Coventry"]),
                             k=3)
    assert ids[0][0] == "demo:jaguar-cars"

    procs = ray_head.processes()
    sockets = bound_sockets(procs)
    assert {"gcs_server", "raylet"} <= {name for *_, name in sockets}
    assert non_loopback(sockets) == [], f"sockets of the submit test's Ray head not on loopback: {sockets}"


def test_failing_job_returns_nonzero_with_its_error_in_the_logs(ray_head: Head, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mel.entrypoints.cli import main

    code = main(["submit", "index", "--kb", "data/demo/kb/no-such-kb.jsonl", "--out", str(tmp_path / "index"),
                 "--address", ray_head.address, "--set", "pipelines.index.workers=1"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 1, printed[-4000:] + captured.err[-2000:]
    assert "FAILED" in printed
    assert "no-such-kb.jsonl" in printed.split("submitted", 1)[1]  # the job's error, from its followed logs
    assert not (tmp_path / "index").exists()
