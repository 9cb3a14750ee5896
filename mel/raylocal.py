"""Start (or connect to) Ray the same way everywhere: a local Ray bound to loopback, or a cluster.

A local Ray started by :func:`init_ray` listens on 127.0.0.1 only: ``_node_ip_address="127.0.0.1"`` alone
is not enough, because Ray resolves a loopback node address to the host's routable address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when ``ray._private.ray_constants`` is imported). Every
worker runs :func:`mel.compat.prepare` first (``worker_process_setup_hook``) and sees the offline-hub
environment variables of the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence

from mel.compat import offline_hub
from mel.config import RayConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_ENABLE_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Passed on to every Ray worker when set in the driver.
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM",
                  "HF_HOME", "MEL_CACHE")
# Project packages whose code Ray workers run (Ray Data / Serve classes), found next to ``mel`` by path only.
_SIBLING_PACKAGES = ("pipelines", "serve")
_keep_logs_in: str | None = None

_owned_temp_dir: str | None = None


def _package_dir(module_file: str) -> str:
    return os.path.dirname(os.path.abspath(module_file))


def worker_runtime_env(code_paths: Sequence[str] = (), *, local: bool = True) -> dict[str, object]:
    """The runtime_env every Ray worker of this project gets: the torchvision fix, the hub settings, and
    the code: ``mel`` and the ``pipelines``/``serve`` packages beside it (when present), plus
    ``code_paths`` (other package directories workers import). A local Ray finds them through
    PYTHONPATH; a cluster gets them uploaded as ``py_modules``."""
    offline_hub()
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    mel_dir = _package_dir(__file__)
    siblings = [os.path.join(os.path.dirname(mel_dir), name) for name in _SIBLING_PACKAGES]
    packages = [mel_dir] + [p for p in siblings if os.path.isfile(os.path.join(p, "__init__.py"))]
    packages += [os.path.abspath(p) for p in code_paths]
    runtime_env: dict[str, object] = {"worker_process_setup_hook": "mel.raylocal.worker_setup", "env_vars": env_vars}
    if local:
        env_vars[_LOOPBACK_ENV] = "1"
        roots = list(dict.fromkeys(os.path.dirname(p) for p in packages))
        if os.environ.get("PYTHONPATH"):
            roots.append(os.environ["PYTHONPATH"])
        env_vars["PYTHONPATH"] = os.pathsep.join(roots)
    else:
        runtime_env["py_modules"] = list(dict.fromkeys(_job_py_modules() + packages))
    return runtime_env


def _job_py_modules() -> list[str]:
    """The py_modules (uploaded URIs) of the Ray job this driver runs as (``mel submit``), if any: the driver's
    runtime_env replaces the job's ``py_modules``, so they are carried over for the workers."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        modules = (job.get("runtime_env") or {}).get("py_modules") or []
    except (ValueError, AttributeError):
        return []
    return [str(m) for m in modules]


_LOOPBACK_ENV = "MEL_RAY_LOOPBACK_ONLY"


def worker_setup() -> None:
    """Ray ``worker_process_setup_hook``: the torchvision fix, and for a local Ray, loopback-only gRPC.

    Ray Serve 2.60 replicas start their inter-deployment gRPC server on ``[::]:0`` (all interfaces) with no
    setting to change it. For a local, loopback-only Ray the address is rewritten to 127.0.0.1 before the
    replica module imports the helper (peers reach replicas at the node address, 127.0.0.1).
    """
    from mel.compat import prepare

    prepare()
    if os.environ.get(_LOOPBACK_ENV) == "1":
        patch_grpc_bind_loopback()


def patch_grpc_bind_loopback() -> None:
    """Make Ray's ``add_port_to_grpc_server`` bind wildcard addresses on 127.0.0.1 instead (idempotent)."""
    from ray._common import tls_utils

    original = tls_utils.add_port_to_grpc_server
    if getattr(original, "_mel_loopback", False):
        return

    def add_port_loopback(server, address: str):  # noqa: ANN001, ANN202
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"{LOOPBACK}:{port}"
        return original(server, address)

    add_port_loopback._mel_loopback = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port_loopback
    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:  # imported earlier: it holds its own reference to the helper
        replica.add_port_to_grpc_server = add_port_loopback  # type: ignore[attr-defined]


def _force_loopback() -> None:
    os.environ[_ENABLE_CLUSTER_ENV] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local Ray reports nothing anywhere
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        # Ray was imported before this call: the env var was already read, so set the value it produced.
        constants.ENABLE_RAY_CLUSTER = False


def init_ray(cfg: RayConfig, *, code_paths: Sequence[str] = ()) -> None:
    """Start a loopback-only local Ray (``cfg.address`` None) or connect to ``cfg.address``. Idempotent:
    does nothing when Ray is already initialised in this process. ``code_paths``: see
    :func:`worker_runtime_env`."""
    if cfg.address is None:
        _force_loopback()
    import ray

    if ray.is_initialized():
        return
    with _keeping_sigterm_handler():
        _init(cfg, code_paths)


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """Keep a Python SIGTERM handler installed before Ray starts (the `mel` CLI's, which runs each command's clean-up).
    ``ray.init`` replaces it with ``sys.exit`` and Ray's core worker adds a C++ failure handler whose 3-second alarm
    aborts the process while Serve and Ray are still shutting down."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _init(cfg: RayConfig, code_paths: Sequence[str]) -> None:
    global _owned_temp_dir
    import ray

    runtime_env = worker_runtime_env(code_paths, local=cfg.address is None)
    if cfg.address is not None:
        log.info("connecting to Ray at %s", cfg.address)
        ray.init(address=cfg.address, runtime_env=runtime_env, log_to_driver=cfg.log_to_driver)
        return
    if cfg.temp_dir is not None:
        os.makedirs(cfg.temp_dir, exist_ok=True)
        temp_dir = os.path.abspath(cfg.temp_dir)
    else:
        # Short on purpose: Ray puts Unix sockets under it and socket paths are limited to 107 chars.
        temp_dir = tempfile.mkdtemp(prefix="mel-ray-")
        _owned_temp_dir = temp_dir
    object_store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb is not None else None
    log.info("starting a local Ray on %s (num_cpus=%s, session files in %s)", LOOPBACK, cfg.num_cpus, temp_dir)
    if not cfg.log_to_driver:
        quiet_ray_loggers(force=True)
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        object_store_memory=object_store,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=cfg.log_to_driver,
        logging_level=logging.INFO if cfg.log_to_driver else logging.WARNING,
        _node_ip_address=LOOPBACK,
        _temp_dir=temp_dir,
    )
    global _keep_logs_in
    _keep_logs_in = _logs_home(cfg)
    if not cfg.log_to_driver:
        print(f"Ray, Serve and vLLM logs: {session_logs_dir(temp_dir)} (kept in {_keep_logs_in} when Ray stops)",
              file=sys.stderr, flush=True)


_QUIET = False


def quiet_ray_loggers(force: bool = False) -> None:
    """Ray's, Ray Data's and Serve's driver-side messages at WARNING and above only (progress logs, "started"
    lines). Ray Data and Serve configure their loggers when imported, so this runs again after they are (with
    ``force=False`` only once :func:`init_ray` started a quiet local Ray)."""
    global _QUIET
    if not (force or _QUIET):
        return
    _QUIET = True
    for name in ("ray", "ray.serve", "ray.data", "ray.data._internal.execution.streaming_executor",
                 "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _logs_home(cfg: RayConfig) -> str:
    if cfg.logs_dir is not None:
        return os.path.abspath(cfg.logs_dir)
    return os.path.join(os.environ.get("MEL_CACHE") or os.path.expanduser("~/.cache/mel"), "logs")


def session_logs_dir(temp_dir: str) -> str:
    """The log folder of the Ray session under ``temp_dir`` (Ray's ``session_latest/logs``)."""
    return os.path.join(temp_dir, "session_latest", "logs")


def _keep_logs(temp_dir: str, home: str) -> str | None:
    """Copy the session's logs to ``<home>/<session name>`` before the session files are removed."""
    src = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    logs = os.path.join(src, "logs")
    if not os.path.isdir(logs):
        return None
    dst = os.path.join(home, os.path.basename(src))
    try:
        shutil.copytree(logs, dst, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("*.sock", "*.lock"))
    except (OSError, shutil.Error) as e:
        log.warning("could not keep the Ray logs of %s in %s: %s", logs, dst, e)
        return None
    return dst


def shutdown_ray() -> None:
    """Disconnect from (and for a local Ray, stop) Ray; stop any Ray process of this process's tree that outlived
    it (agents that ignore SIGTERM); remove the session temp dir init_ray created."""
    global _owned_temp_dir
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        left = reap_ray_children()
        if left:
            log.info("stopped %d Ray processes that outlived ray.shutdown()", len(left))
    if _owned_temp_dir is not None:
        kept = _keep_logs(_owned_temp_dir, _keep_logs_in) if _keep_logs_in else None
        if kept:
            print(f"Ray, Serve and vLLM logs kept in {kept}", file=sys.stderr, flush=True)
        log.info("removing Ray session files %s", _owned_temp_dir)
        shutil.rmtree(_owned_temp_dir, ignore_errors=True)
        _owned_temp_dir = None


def _is_ray_process(p: object) -> bool:
    try:
        cmd = " ".join(p.cmdline())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 -- gone, or not ours to read
        return False
    return "ray" in cmd or "raylet" in cmd or "gcs_server" in cmd


def reap_ray_children(timeout_s: float = 10.0) -> list[int]:
    """Terminate, then kill after ``timeout_s``, the Ray processes (raylet, GCS, agents, workers) still running
    below this process. Returns their pids. Does nothing without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    except psutil.Error:
        return []
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    if procs:
        log.debug("stopped %d Ray processes left below this one: %s", len(procs), [p.pid for p in procs])
    return [p.pid for p in procs]
