"""The Serve config file is valid for Ray Serve and its app builder refuses bad args."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def test_serve_config_validates_against_ray_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((REPO / "cluster" / "serve-app.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "serve.app:app_builder"
    assert data["http_options"]["host"] == "127.0.0.1"
    assert (REPO / app.args["config"]).is_file()


def test_app_builder_checks_args(tmp_path: Path) -> None:
    from serve.app import app_builder

    with pytest.raises(ValueError, match="unknown app args"):
        app_builder({"index": "x", "colour": 1})
    with pytest.raises(ValueError, match="need 'index'"):
        app_builder({"config": str(REPO / "configs" / "default.yaml")})


def test_build_app_composes_deployments_with_config_options() -> None:
    from mel.config import load_config
    from serve.app import build_app, deployment_options

    cfg = load_config(None, ["serve.retriever.num_replicas=2", "serve.selector.autoscaling.max_replicas=3"])
    opts = deployment_options(cfg.serve.retriever, "Retriever")
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts
    sel = deployment_options(cfg.serve.selector, "Selector")
    assert sel["autoscaling_config"]["max_replicas"] == 3
    assert "runtime_env" not in sel["ray_actor_options"]
    env = load_config(None, {"serve.selector.env": {"OMP_NUM_THREADS": "1"}})
    assert deployment_options(env.serve.selector, "Selector")["ray_actor_options"]["runtime_env"] == {
        "env_vars": {"OMP_NUM_THREADS": "1"}}
    app = build_app(cfg, "/nonexistent/index")  # building binds; nothing runs until serve.run
    assert app is not None
    no_llm = build_app(load_config(None, ["method=retrieval"]), "/nonexistent/index")
    assert no_llm is not None


def _deployments(app) -> dict:  # noqa: ANN001
    """name -> Deployment of a built app (the ingress and the deployments bound into it)."""
    ingress = app._bound_deployment
    out = {ingress.name: ingress}
    for handle in ingress._replica_config.init_args[1].values():
        out[handle._bound_deployment.name] = handle._bound_deployment
    return out


def test_deployment_options_pass_queue_limits_backpressure_autoscaling_and_logging() -> None:
    from mel.config import load_config
    from serve.app import deployment_options

    cfg = load_config(None, ["serve.retriever.max_queued_requests=3", "serve.retriever.num_gpus=0.25",
                             "serve.retriever.autoscaling.max_replicas=4",
                             "serve.retriever.autoscaling.upscale_delay_s=2",
                             "serve.retriever.autoscaling.downscale_delay_s=60"])
    r = deployment_options(cfg.serve.retriever, "Retriever")
    assert r["max_queued_requests"] == 3 and r["max_ongoing_requests"] == 32
    assert r["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert r["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4,
                                       "upscale_delay_s": 2.0, "downscale_delay_s": 60.0}
    assert r["logging_config"] == {"encoding": "JSON"} and "backpressure_config" not in r
    i = deployment_options(cfg.serve.ingress, "Ingress", retry_after_s=1.2, log_encoding="TEXT")
    assert i["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.0}
    assert i["max_queued_requests"] == 64 and i["logging_config"] == {"encoding": "TEXT"}


def test_serve_deployment_schema_accepts_the_options() -> None:
    """Serve validates the options we produce (types, ranges, names) when they become a DeploymentSchema."""
    from ray.serve.schema import DeploymentSchema

    from mel.config import load_config
    from serve.app import deployment_options

    cfg = load_config(None)
    for name, d in [("Ingress", cfg.serve.ingress), ("Retriever", cfg.serve.retriever),
                    ("Selector", cfg.serve.selector)]:
        DeploymentSchema.model_validate(deployment_options(d, name, retry_after_s=cfg.serve.retry_after_s))


def test_config_refuses_bad_limits() -> None:
    from mel.config import load_config
    from mel.errors import ConfigError

    with pytest.raises(ConfigError, match="max_queued_requests"):
        load_config(None, ["serve.retriever.max_queued_requests=0"])
    with pytest.raises(ConfigError, match="min_replicas"):
        load_config(None, ["serve.selector.autoscaling.min_replicas=3"])
    with pytest.raises(ConfigError, match="request_timeout_s"):
        load_config(None, ["serve.request_timeout_s=0"])


def test_index_dir_travels_as_user_config_and_versions_ignore_it() -> None:
    """Same config + another index: equal versions (a light reconfigure); another config: new versions."""
    from mel.config import load_config
    from serve.app import build_app

    cfg = load_config(None, ["method=retrieval"])
    a, b = _deployments(build_app(cfg, "/idx/v1")), _deployments(build_app(cfg, "/idx/v2"))
    assert set(a) == {"Ingress", "Retriever"}
    assert a["Retriever"].user_config == {"index_dir": "/idx/v1"}
    assert b["Retriever"].user_config == {"index_dir": "/idx/v2"}
    assert all(a[n].version == b[n].version and a[n].version for n in a)
    assert a["Retriever"].max_queued_requests == 64
    c = _deployments(build_app(load_config(None, ["method=retrieval", "retrieval.top_k=7"]), "/idx/v1"))
    assert all(a[n].version != c[n].version for n in a)
    with_llm = _deployments(build_app(load_config(None), "/idx/v1"))
    assert set(with_llm) == {"Ingress", "Retriever", "Selector"}
