"""Shared test set-up: loopback-only Ray, offline hubs, tiny models built once per session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Before anything imports Ray or Hugging Face libraries.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MEL_DATA_DIR", REPO.parent / "shared" / "data"))

pytest_plugins = ["tests.fixtures.models"]


@contextmanager
def serve_app(cfg, index_dir: str | Path) -> Iterator[str]:  # noqa: ANN001
    """A Serve application of ``cfg`` on ``index_dir`` for one test (any Serve left running is shut down first):
    yields its base URL, shuts Serve down after."""
    from ray import serve

    from mel.entrypoints import commands

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    url = commands.start_serve(cfg, str(index_dir))
    try:
        yield url
    finally:
        serve.shutdown()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "richpedia-mel").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (set MEL_DATA_DIR or place ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray per test session, bound to 127.0.0.1, session files under a temp dir of the run."""
    from mel.config import RayConfig
    from mel.raylocal import init_ray, shutdown_ray

    tmp = Path(os.environ.get("MEL_TEST_RAY_TMP", "/tmp")) / f"mel-ray-{os.getpid()}"
    init_ray(RayConfig(num_cpus=4, temp_dir=str(tmp), object_store_memory_mb=400))
    yield
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    shutdown_ray()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory: pytest.TempPathFactory, text_encoder) -> Path:
    """The shipped demo KB indexed once per session (single process, real MiniLM)."""
    from mel.config import load_config
    from pipelines.index import run_index_local

    out = tmp_path_factory.mktemp("demo") / "index"
    run_index_local(REPO / "data" / "demo" / "kb" / "entities.jsonl", out, load_config(None), encoder=text_encoder)
    return out
