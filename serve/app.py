"""The builder: the only bridge from configuration to a running linking graph.

``build_app(config, index_dir)`` returns a Serve application (use it from Python with ``serve.run``);
``app_builder(args)`` is the same for a Serve config YAML::

    applications:
      - name: mel
        import_path: serve.app:app_builder
        args: {config: configs/default.yaml, index: runs/index}
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from mel.config import Config, DeploymentConfig, load_config
from serve.deployments import RetrieverDeployment, SelectorDeployment
from serve.ingress import Ingress, api


def deployment_options(d: DeploymentConfig, name: str) -> dict[str, Any]:
    """Serve deployment options (resources, replicas or autoscaling, request limits) from config."""
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
    }
    if d.num_replicas is not None:
        opts["num_replicas"] = d.num_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": d.autoscaling.min_replicas,
            "max_replicas": d.autoscaling.max_replicas,
            "target_ongoing_requests": d.autoscaling.target_ongoing_requests,
        }
    return opts


def build_app(config: Config | dict[str, Any], index_dir: str) -> Application:
    """Compose Ingress -> Retriever -> [Selector] as one Serve application."""
    cfg = config if isinstance(config, Config) else Config.model_validate(config)
    from mel.methods import needs_llm

    raw = cfg.model_dump(mode="json")
    s = cfg.serve
    retriever = serve.deployment(RetrieverDeployment).options(
        **deployment_options(s.retriever, "Retriever")).bind(raw, index_dir)
    selector = None
    if needs_llm(cfg):
        selector = serve.deployment(SelectorDeployment).options(
            **deployment_options(s.selector, "Selector")).bind(raw)
    ingress_cls = serve.ingress(api)(Ingress)
    return serve.deployment(ingress_cls).options(**deployment_options(s.ingress, "Ingress")).bind(
        raw, retriever, selector)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / Serve config files: ``args = {config: PATH, index: DIR, overrides: [...]}``."""
    unknown = set(args) - {"config", "index", "overrides"}
    if unknown:
        raise ValueError(f"unknown app args {sorted(unknown)}; expected config, index, overrides")
    if "index" not in args:
        raise ValueError("app args need 'index': the index directory built by `mel index`")
    cfg = load_config(args.get("config"), list(args.get("overrides", [])))
    return build_app(cfg, str(args["index"]))
