"""The builder: the only bridge from configuration to a running linking graph.

``build_app(config, index_dir)`` returns a Serve application (use it from Python with ``serve.run``);
``app_builder(args)`` is the same for a Serve config YAML::

    applications:
      - name: mel
        import_path: serve.app:app_builder
        args: {config: configs/default.yaml, index: runs/index}

The app is built from the method's declaration: one deployment per host (``mel.steps.HOSTS``) that the method's
active steps need, each running its steps, and an ingress walking the same step list. A method added to the
registry is servable without editing this package.

The index directory reaches the index-holding host only as its ``user_config``, and each model deployment gets a
version derived from the code of the steps it runs and the config sections those steps and their parts read
(plus its own ``serve.<section>``): changing an unrelated setting does not restart it, changing its step code or
its settings does; deploying the same configuration again with another index directory is a light update (Serve
calls ``reconfigure`` on the running replicas, which swap the index without a restart; see
:func:`mel.entrypoints.commands.switch_index`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from mel.config import Config, DeploymentConfig, load_config
from mel.steps.base import Host, Step, config_section, config_sections
from serve.deployments import HostDeployment
from serve.ingress import INGRESS, Ingress, api

_SERVE_DIR = Path(__file__).resolve().parent
# The code every host deployment runs besides its steps'.
_HOST_CODE = ("mel.steps.base", "mel.runner", "mel.parts", "serve.deployments", "serve.telemetry")


def deployment_options(d: DeploymentConfig, name: str, *, retry_after_s: float | None = None,
                       log_encoding: str = "JSON") -> dict[str, Any]:
    """Serve deployment options (resources, replicas or autoscaling, request and queue limits, logging) from
    config. ``retry_after_s``: the Retry-After of the HTTP 503 Serve's proxy answers when this deployment's queue
    at the proxy is full (matters for the ingress)."""
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus,
                              **({"runtime_env": {"env_vars": dict(d.env)}} if d.env else {})},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "logging_config": {"encoding": log_encoding},
    }
    if retry_after_s is not None:
        opts["backpressure_config"] = {"status_code": 503, "retry_after_s": float(math.ceil(retry_after_s))}
    if d.num_replicas is not None:
        opts["num_replicas"] = d.num_replicas
    else:
        a = d.autoscaling
        opts["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    return opts


def _module_source(name: str) -> bytes:
    mod = importlib.import_module(name)
    return Path(inspect.getfile(mod)).read_bytes()


def host_version(cfg: Config, host: Host, steps: list[type[Step]]) -> str:
    """The version of a host deployment running ``steps``: a hash of the code those steps run (their modules and
    the modules they declare in ``code``, plus the host code) and of the config sections they read, the sections of
    the parts they need, and the host's ``serve.<section>``. Nothing else in the config enters it."""
    raw = cfg.model_dump(mode="json")
    sections = config_sections(steps) | {f"serve.{host.serve_section}", "plugins"}
    modules: set[str] = set(_HOST_CODE)
    for s in steps:
        modules.add(s.__module__)
        modules.update(s.code)
    h = hashlib.sha256()
    h.update(json.dumps([host.name, [s.name for s in steps]]).encode())
    for name in sorted(modules):
        h.update(name.encode())
        h.update(_module_source(name))
    h.update(json.dumps({k: config_section(raw, k) for k in sorted(sections)}, sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


def ingress_version(cfg: Config, hosts: list[str]) -> str:
    """The ingress restarts on any config change (it is light) or any change to the serve package's code."""
    h = hashlib.sha256()
    for f in sorted(_SERVE_DIR.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for name in ("mel.steps.base", "mel.runner"):
        h.update(_module_source(name))
    h.update(json.dumps([cfg.model_dump(mode="json"), hosts], sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


def _versioned(d: Deployment, version: str) -> Deployment:
    # ``serve.deployment(version=...)`` was removed from the public API; Serve still reads ``Deployment._version``
    # (client.deploy_applications: ``deployment._version or get_random_string()``). Without it every
    # ``serve.run`` restarts every replica, which would drop requests on an index switch.
    d._version = version  # noqa: SLF001
    return d


def plan(cfg: Config) -> list[tuple[Host, list[type[Step]]]]:
    """The deployments the method of ``cfg`` needs: each non-local host with the active steps that run on it, in
    the order the method first reaches them."""
    from mel.methods import registry
    from mel.steps import host_of

    registry.load_plugins(cfg.plugins)
    out: dict[str, tuple[Host, list[type[Step]]]] = {}
    for s in registry.get(cfg.method).active_steps(cfg):
        h = host_of(s)
        if h.name != "local":
            out.setdefault(h.name, (h, []))[1].append(s)
    return list(out.values())


def build_app(config: Config | dict[str, Any], index_dir: str) -> Application:
    """Compose the ingress and one deployment per host the method's active steps need, as one Serve application."""
    cfg = config if isinstance(config, Config) else Config.model_validate(config)
    cfg, nil = calibrated(cfg, index_dir)
    raw = cfg.model_dump(mode="json")
    s = cfg.serve
    enc = s.log_encoding
    handles: dict[str, Any] = {}
    for host, steps in plan(cfg):
        names = [c.name for c in steps]
        opts = deployment_options(getattr(s, str(host.serve_section)), str(host.deployment), log_encoding=enc)
        if any("index" in c.needs for c in steps):
            opts["user_config"] = {"index_dir": str(index_dir)}
        d = serve.deployment(HostDeployment).options(**opts)
        handles[host.name] = _versioned(d, host_version(cfg, host, steps)).bind(raw, host.name, names)
    ingress_cls = serve.ingress(api)(Ingress)
    ingress_d = serve.deployment(ingress_cls).options(
        **deployment_options(s.ingress, INGRESS, retry_after_s=s.retry_after_s, log_encoding=enc))
    return _versioned(ingress_d, ingress_version(cfg, sorted(handles))).bind(raw, handles, None, nil)


def calibrated(cfg: Config, index_dir: str) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with the NIL threshold the method's calibration for the index gives (``nil.calibration``; see
    :func:`mel.calibration.resolve_nil`), and where it came from. A mismatched calibration is refused here,
    before anything is deployed."""
    from mel.calibration import resolve_nil
    from mel.methods import registry

    registry.load_plugins(cfg.plugins)
    spec = registry.get(cfg.method)
    return resolve_nil(cfg, spec, _IndexRef(Path(index_dir)))


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / Serve config files: ``args = {config: PATH, index: DIR, overrides: [...]}``."""
    unknown = set(args) - {"config", "index", "overrides"}
    if unknown:
        raise ValueError(f"unknown app args {sorted(unknown)}; expected config, index, overrides")
    if "index" not in args:
        raise ValueError("app args need 'index': the index directory built by `mel index`")
    cfg = load_config(args.get("config"), list(args.get("overrides", [])))
    return build_app(cfg, str(args["index"]))


class _IndexRef:
    """An index directory as the calibration lookup sees it: its path, and its manifest read only when needed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def manifest(self) -> Any:
        from mel.index.manifest import read_manifest

        return read_manifest(self.path)
