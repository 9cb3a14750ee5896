"""The shipped configuration files are valid: the Ray cluster launcher config against the schema of the
installed Ray, and every mel config (configs/*.yaml, cluster/job-*.yaml) with mel.config.load_config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mel.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster" / "ray-cluster.yaml"
MEL_CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "cluster").glob("job-*.yaml"))


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def cluster_cfg() -> dict[str, Any]:
    data = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(data, dict)
    return data


def test_cluster_yaml_matches_ray_schema(cluster_cfg: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(cluster_cfg, _ray_schema())


def test_cluster_yaml_schema_check_can_fail(cluster_cfg: dict[str, Any]) -> None:
    import jsonschema

    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["cpu_worker"]["min_wokers"] = 1  # a typo the schema must reject
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())


def test_cluster_yaml_passes_ray_launcher_validation(cluster_cfg: dict[str, Any]) -> None:
    """What `ray up` itself checks after filling in defaults (node types, head type, worker bounds)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_cfg)))


def test_cluster_yaml_node_types(cluster_cfg: dict[str, Any]) -> None:
    types = cluster_cfg["available_node_types"]
    assert cluster_cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cluster_cfg["head_node_type"]}
    assert set(workers) == {"cpu_worker", "gpu_worker"}
    for name, t in workers.items():
        assert 0 <= t["min_workers"] < t["max_workers"] <= cluster_cfg["max_workers"], name
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "gpu" in types["gpu_worker"]["docker"]["worker_image"]
    setup = " ".join(cluster_cfg["setup_commands"])
    assert "-c ~/mel/constraints.txt" in setup and '-e "$HOME/mel[cpu]"' in setup
    gpu_setup = " ".join(types["gpu_worker"]["worker_setup_commands"])
    assert "constraints.txt" in gpu_setup and '-e "$HOME/mel[gpu]"' in gpu_setup
    assert cluster_cfg["file_mounts"] == {"~/mel": "."}
    # the dashboard / job API is reached through `ray dashboard` (SSH tunnel), never opened to the network
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster_cfg["head_start_ray_commands"])


def test_ray_versions_agree(cluster_cfg: dict[str, Any]) -> None:
    import ray

    gpu = cluster_cfg["available_node_types"]["gpu_worker"]
    images = [cluster_cfg["docker"]["image"], gpu["docker"]["worker_image"]]
    for image in images:
        assert f":{ray.__version__}-py311-" in image, f"{image} does not match the installed Ray {ray.__version__}"


@pytest.mark.parametrize("path", MEL_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mel_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.serve.host == "127.0.0.1"


def test_expected_mel_configs_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MEL_CONFIGS}
    assert {"configs/default.yaml", "configs/demo.yaml", "configs/test.yaml", "configs/gpu.yaml",
            "cluster/job-index.yaml"} <= names


def test_default_yaml_spells_out_the_builtin_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml").model_dump() == load_config(None).model_dump()


def test_config_specifics() -> None:
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.ray.num_cpus == 2 and demo.serve.port == 8000 and demo.models.llm.kv_cache_gb == 1.0
    test = load_config(ROOT / "configs" / "test.yaml")
    assert test.serve.port == 18080 and test.ray.address is None
    gpu = load_config(ROOT / "configs" / "gpu.yaml")
    assert gpu.models.text_encoder.device == "cuda"
    assert gpu.serve.retriever.num_gpus + gpu.serve.selector.num_gpus <= 1  # share one GPU
    assert load_config(ROOT / "cluster" / "job-index.yaml").ray.address == "auto"
