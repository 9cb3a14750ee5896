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
    app = build_app(cfg, "/nonexistent/index")  # building binds; nothing runs until serve.run
    assert app is not None
    no_llm = build_app(load_config(None, ["method=retrieval"]), "/nonexistent/index")
    assert no_llm is not None
