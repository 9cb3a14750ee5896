"""The builder: the only bridge from configuration to a running linking graph.

``build_app(config, index_dir)`` returns a Serve application (use it from Python with ``serve.run``);
``app_builder(args)`` is the same for a Serve config YAML::

    applications:
      - name: mel
        import_path: serve.app:app_builder
        args: {config: configs/default.yaml, index: runs/index}

The index directory reaches the Retriever only as its ``user_config``, and every deployment gets a version derived
from its code and init arguments (the configuration), so deploying the same configuration again with another index
directory is a light update: Serve calls ``reconfigure`` on the running Retriever replicas, which swap the index
without a restart (see :func:`mel.commands.switch_index`). Any other change restarts the replicas it concerns.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

import mel.stages as mel_stages
from mel.config import Config, DeploymentConfig, load_config
from serve.deployments import RETRIEVER, SELECTOR, RetrieverDeployment, SelectorDeployment
from serve.ingress import INGRESS, Ingress, api
from serve.linking import uses_selector

_CODE_DIRS = (Path(__file__).resolve().parent, Path(mel_stages.__file__).resolve().parent)


def deployment_options(d: DeploymentConfig, name: str, *, retry_after_s: float | None = None,
                       log_encoding: str = "JSON") -> dict[str, Any]:
    """Serve deployment options (resources, replicas or autoscaling, request and queue limits, logging) from
    config. ``retry_after_s``: the Retry-After of the HTTP 503 Serve's proxy answers when this deployment's queue
    at the proxy is full (matters for the ingress)."""
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
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


def code_version(cls: type, *init_args: Any) -> str:
    """A deployment version that changes when the graph's code (``serve/*.py``, ``mel/stages/*.py``) or the
    deployment's class or init arguments change, and only then: redeploying with equal versions and another
    ``user_config`` reconfigures the replicas in place."""
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    h.update(json.dumps([cls.__qualname__, init_args], sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


def _versioned(d: Deployment, version: str) -> Deployment:
    # ``serve.deployment(version=...)`` was removed from the public API; Serve still reads ``Deployment._version``
    # (client.deploy_applications: ``deployment._version or get_random_string()``). Without it every
    # ``serve.run`` restarts every replica, which would drop requests on an index switch.
    d._version = version  # noqa: SLF001
    return d


def build_app(config: Config | dict[str, Any], index_dir: str) -> Application:
    """Compose Ingress -> Retriever -> [Selector] as one Serve application."""
    cfg = config if isinstance(config, Config) else Config.model_validate(config)
    raw = cfg.model_dump(mode="json")
    s = cfg.serve
    enc = s.log_encoding
    retriever_d = serve.deployment(RetrieverDeployment).options(
        user_config={"index_dir": str(index_dir)}, **deployment_options(s.retriever, RETRIEVER, log_encoding=enc))
    retriever = _versioned(retriever_d, code_version(RetrieverDeployment, raw)).bind(raw)
    selector = None
    if uses_selector(cfg):
        selector_d = serve.deployment(SelectorDeployment).options(
            **deployment_options(s.selector, SELECTOR, log_encoding=enc))
        selector = _versioned(selector_d, code_version(SelectorDeployment, raw)).bind(raw)
    ingress_cls = serve.ingress(api)(Ingress)
    ingress_d = serve.deployment(ingress_cls).options(
        **deployment_options(s.ingress, INGRESS, retry_after_s=s.retry_after_s, log_encoding=enc))
    return _versioned(ingress_d, code_version(Ingress, raw, selector is not None)).bind(raw, retriever, selector)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / Serve config files: ``args = {config: PATH, index: DIR, overrides: [...]}``."""
    unknown = set(args) - {"config", "index", "overrides"}
    if unknown:
        raise ValueError(f"unknown app args {sorted(unknown)}; expected config, index, overrides")
    if "index" not in args:
        raise ValueError("app args need 'index': the index directory built by `mel index`")
    cfg = load_config(args.get("config"), list(args.get("overrides", [])))
    return build_app(cfg, str(args["index"]))
