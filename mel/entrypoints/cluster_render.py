"""``mel cluster render``: KubeRay manifests generated from a mel config, not written by hand.

* ``rayservice.yaml`` -- a ``RayService`` running the linking graph. Its ``serveConfigV2`` is what Ray's own
  ``serve build`` would write for ``serve.app:app_builder`` called with our args: the app is built from the
  config (its settings travel as ``args.overrides``, see :mod:`mel.config_overrides`) and every deployment's
  options (replicas/autoscaling, ``ray_actor_options``, request limits...) are read back from the built app.
* ``rayjob-index.yaml`` -- a ``RayJob`` running ``mel index`` on a cluster it creates and deletes afterwards,
  with the same entrypoint ``mel submit index`` would send (config as ``--set`` overrides, ``ray.address=auto``).

Both clusters have a CPU head (``num-cpus: 0``: drivers, Serve controller, dashboard only), an autoscaling
CPU worker group and an autoscaling GPU worker group, sized from the config: the replicas (or encoder
actors) at their minimum and maximum counts are packed onto pods of the shapes below. Images are the ones
``cluster/docker/Dockerfile.{cpu,gpu}`` build (:func:`image`). Like :mod:`mel.entrypoints.commands`, this is the CLI's
edge: it imports ``serve.app`` (lazily) to build the app.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mel.config import Config, load_config
from mel.config_overrides import config_overrides
from mel.errors import ConfigError

PYTHON_TAG = "py311"  # the Python of the pinned stack (constraints.txt) and of the rayproject/ray base images
IMAGE_REPO = "mel"  # push the built images to your registry and render with --image-repo REGISTRY/mel
APP_DIR = "/home/ray/mel"  # where the Dockerfiles put the checkout (installed editable)
SHARED_CLAIM = "mel-data"  # PersistentVolumeClaim (ReadWriteMany) of cluster/kuberay/storage.yaml
SHARED_MOUNT = "/mnt/mel"  # ... mounted here in every pod: KBs in, indexes out
DEFAULT_INDEX = f"{SHARED_MOUNT}/indexes/demo"
DEFAULT_KB = f"{APP_DIR}/data/demo/kb/entities.jsonl"
IMPORT_PATH = "serve.app:app_builder"
FILES = ("rayservice.yaml", "rayjob-index.yaml")


@dataclass(frozen=True)
class PodShape:
    """Kubernetes resources of one pod of a group; Ray is told the same CPUs and GPUs (rayStartParams)."""

    cpus: int
    memory: str
    gpus: int = 0


HEAD = PodShape(cpus=4, memory="16Gi")
CPU_WORKER = PodShape(cpus=8, memory="32Gi")
GPU_WORKER = PodShape(cpus=8, memory="32Gi", gpus=1)  # e.g. one A10G/L4/A100/H100 per pod


# ------------------------------------------------------------------------------------------ versions and images
def ray_version() -> str:
    return importlib.metadata.version("ray")


def mel_version() -> str:
    try:
        return importlib.metadata.version("mel-ray")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def base_image(kind: Literal["cpu", "gpu"]) -> str:
    """The rayproject/ray image the Dockerfile of ``kind`` starts FROM."""
    return f"rayproject/ray:{ray_version()}-{PYTHON_TAG}-{kind}"


def image(kind: Literal["cpu", "gpu"], repo: str = IMAGE_REPO) -> str:
    """Tag of the image ``cluster/docker/Dockerfile.<kind>`` builds: mel, Ray and Python versions in it."""
    return f"{repo}:{mel_version()}-ray{ray_version()}-{PYTHON_TAG}-{kind}"


# ------------------------------------------------------------------------------------------ sizing
def pods_needed(items: Iterable[tuple[float, float]], shape: PodShape, used: list[list[float]] | None = None) -> int:
    """Pods of ``shape`` that hold ``items`` ((cpus, gpus) each, first-fit decreasing); ``used``: pods already
    open (their [cpus, gpus] in use), filled first and updated. Returns the number of new pods."""
    bins = used if used is not None else []
    opened = 0
    for c, g in sorted(items, reverse=True, key=lambda x: (x[1], x[0])):
        if c > shape.cpus or g > shape.gpus:
            raise ConfigError(f"a replica/actor needs {c:g} CPUs and {g:g} GPUs: more than one pod has "
                              f"({shape.cpus} CPUs, {shape.gpus} GPUs)")
        for b in bins:
            if b[0] + c <= shape.cpus + 1e-9 and b[1] + g <= shape.gpus + 1e-9:
                b[0] += c
                b[1] += g
                break
        else:
            bins.append([c, g])
            opened += 1
    return opened


def _group_sizes(items: list[tuple[float, float]]) -> tuple[int, int]:
    """(GPU pods, CPU pods) for ``items``: GPU users on GPU pods, the rest in their spare CPUs, then CPU pods."""
    gpu_bins: list[list[float]] = []
    gpu_pods = pods_needed([i for i in items if i[1] > 0], GPU_WORKER, gpu_bins)
    # CPU-only items first fill what GPU pods leave free (as Ray's scheduler would), then CPU pods.
    cpu_only = sorted((i for i in items if i[1] == 0), reverse=True)
    rest: list[tuple[float, float]] = []
    for c, g in cpu_only:
        for b in gpu_bins:
            if b[0] + c <= GPU_WORKER.cpus + 1e-9:
                b[0] += c
                break
        else:
            rest.append((c, g))
    return gpu_pods, pods_needed(rest, CPU_WORKER)


def _replicas(deployment: dict[str, Any]) -> tuple[int, int]:
    """(min, max) replicas of a deployment of a Serve config."""
    auto = deployment.get("autoscaling_config")
    if auto:
        return int(auto.get("min_replicas", 1)), int(auto.get("max_replicas", 1))
    n = deployment.get("num_replicas", 1)
    return (1, 1) if n == "auto" else (int(n), int(n))


# ------------------------------------------------------------------------------------------ pod templates
def _quantity(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _container(name: str, img: str, shape: PodShape, ports: Sequence[tuple[str, int]]) -> dict[str, Any]:
    res: dict[str, Any] = {"cpu": _quantity(shape.cpus), "memory": shape.memory}
    if shape.gpus:
        res["nvidia.com/gpu"] = _quantity(shape.gpus)
    c: dict[str, Any] = {
        "name": name,
        "image": img,
        "resources": {"requests": dict(res), "limits": dict(res)},
        "volumeMounts": [{"name": SHARED_CLAIM, "mountPath": SHARED_MOUNT}],
    }
    if ports:
        c["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    if name != "ray-head":
        c["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
    return c


def _template(container: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [container],
                     "volumes": [{"name": SHARED_CLAIM, "persistentVolumeClaim": {"claimName": SHARED_CLAIM}}]}}


def _start_params(shape: PodShape, num_cpus: float | None = None) -> dict[str, str]:
    p = {"num-cpus": _quantity(shape.cpus if num_cpus is None else num_cpus)}
    if shape.gpus:
        p["num-gpus"] = _quantity(shape.gpus)
    return p


def ray_cluster_spec(*, gpu_pods: tuple[int, int], cpu_pods: tuple[int, int], image_repo: str,
                     serve_port: int | None = None) -> dict[str, Any]:
    """A RayCluster spec: head (no workloads) plus CPU and GPU worker groups of (min, max) pods."""
    head_ports = [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)]
    worker_ports: list[tuple[str, int]] = []
    if serve_port is not None:
        head_ports.append(("serve", serve_port))
        worker_ports.append(("serve", serve_port))

    def group(name: str, kind: Literal["cpu", "gpu"], shape: PodShape, bounds: tuple[int, int]) -> dict[str, Any]:
        lo, hi = bounds
        return {"groupName": name, "replicas": lo, "minReplicas": lo, "maxReplicas": max(1, hi),
                "rayStartParams": _start_params(shape),
                "template": _template(_container("ray-worker", image(kind, image_repo), shape, worker_ports))}

    return {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 600},
        "headGroupSpec": {
            # The operator and the head Service reach the dashboard/job API at the pod IP: it listens on the pod's
            # interfaces, inside the cluster network only (ClusterIP Service; nothing here exposes it outside).
            "rayStartParams": {"dashboard-host": "0.0.0.0", **_start_params(HEAD, num_cpus=0)},
            "template": _template(_container("ray-head", image("cpu", image_repo), HEAD, head_ports)),
        },
        "workerGroupSpecs": [group("cpu", "cpu", CPU_WORKER, cpu_pods), group("gpu", "gpu", GPU_WORKER, gpu_pods)],
    }


# ------------------------------------------------------------------------------------------ RayService
def serve_app_args(cfg: Config, index: str) -> dict[str, Any]:
    """``args`` of ``serve.app:app_builder``: the index and the config as overrides of the defaults."""
    return {"index": index, "overrides": config_overrides(cfg, exclude=("submit",))}


def serve_config(cfg: Config, index: str) -> dict[str, Any]:
    """The Serve config (``serve deploy`` schema) of the linking graph, its deployments read from the built app."""
    from ray.serve._private.build_app import build_app
    from ray.serve.deployment import deployment_to_schema
    from ray.serve.schema import ServeDeploySchema

    from serve.app import app_builder

    args = serve_app_args(cfg, index)
    built = build_app(app_builder(args), name=cfg.serve.app_name)
    deployments = [deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments]
    out = {
        "proxy_location": "EveryNode",
        # Inside the pod: the RayService's Serve Service (ClusterIP) forwards to this port on the pod IP.
        "http_options": {"host": "0.0.0.0", "port": cfg.serve.port},
        "applications": [{
            "name": cfg.serve.app_name,
            "route_prefix": cfg.serve.route_prefix,
            "import_path": IMPORT_PATH,
            "args": args,
            "deployments": deployments,
        }],
    }
    ServeDeploySchema.model_validate(out)
    return out


def rayservice(cfg: Config, index: str, image_repo: str = IMAGE_REPO) -> dict[str, Any]:
    if cfg.serve.port == 0:
        raise ConfigError("serve.port 0 (pick a free port) cannot be used on Kubernetes: set a fixed port")
    sc = serve_config(cfg, index)
    lo: list[tuple[float, float]] = []
    hi: list[tuple[float, float]] = []
    for dep in sc["applications"][0]["deployments"]:
        opts = dep.get("ray_actor_options", {})
        item = (float(opts.get("num_cpus", 1) or 0), float(opts.get("num_gpus", 0) or 0))
        mn, mx = _replicas(dep)
        lo += [item] * mn
        hi += [item] * mx
    (gpu_lo, cpu_lo), (gpu_hi, cpu_hi) = _group_sizes(lo), _group_sizes(hi)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "mel", "labels": {"app.kubernetes.io/name": "mel"}},
        "spec": {
            "serveConfigV2": _dump_yaml(sc),
            "rayClusterConfig": ray_cluster_spec(gpu_pods=(gpu_lo, gpu_hi), cpu_pods=(cpu_lo, cpu_hi),
                                                 image_repo=image_repo, serve_port=cfg.serve.port),
        },
    }


# ------------------------------------------------------------------------------------------ RayJob
def rayjob_index(cfg: Config, kb: str, index: str, image_repo: str = IMAGE_REPO) -> dict[str, Any]:
    """A RayJob running ``mel index --kb KB --out INDEX`` (the ``mel submit index`` entrypoint)."""
    from mel.entrypoints.submit import JOB_ENV_VARS, job_entrypoint

    p = cfg.pipelines.index
    actors = [(p.cpus_per_worker, p.gpus_per_worker)] * p.workers
    gpu_hi, cpu_hi = _group_sizes(actors)
    spec: dict[str, Any] = {
        "entrypoint": job_entrypoint(cfg, "index", ["--kb", kb, "--out", index]),
        "runtimeEnvYAML": _dump_yaml({"env_vars": dict(JOB_ENV_VARS)}),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "backoffLimit": 0,
    }
    if cfg.submit.timeout_s is not None:
        spec["activeDeadlineSeconds"] = math.ceil(cfg.submit.timeout_s)
    if cfg.submit.entrypoint_num_cpus:
        spec["entrypointNumCpus"] = cfg.submit.entrypoint_num_cpus
    if cfg.submit.entrypoint_num_gpus:
        spec["entrypointNumGpus"] = cfg.submit.entrypoint_num_gpus
    spec["rayClusterSpec"] = ray_cluster_spec(gpu_pods=(0, gpu_hi), cpu_pods=(0, cpu_hi), image_repo=image_repo)
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": "mel-index", "labels": {"app.kubernetes.io/name": "mel"}}, "spec": spec}


# ------------------------------------------------------------------------------------------ output
def _dump_yaml(data: Any) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


def render_manifests(cfg: Config, job_cfg: Config, *, index: str = DEFAULT_INDEX, kb: str = DEFAULT_KB,
                     image_repo: str = IMAGE_REPO, command: str = "mel cluster render") -> dict[str, str]:
    """File name -> YAML text of the RayService and the index RayJob."""
    header = ("# GENERATED from mel's config (mel/config.py) by\n"
              f"#   {command}\n"
              "# Do not edit: change the config and render again. tests/unit/test_cluster_configs.py renders it\n"
              "# again and fails when this file differs. Images: cluster/docker/Dockerfile.{cpu,gpu};\n"
              "# shared volume (KBs, indexes): cluster/kuberay/storage.yaml. See cluster/README.md.\n")
    return {
        "rayservice.yaml": header + _dump_yaml(rayservice(cfg, index, image_repo)),
        "rayjob-index.yaml": header + _dump_yaml(rayjob_index(job_cfg, kb, index, image_repo)),
    }


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-config", help="config of the index RayJob (default: --config)")
    p.add_argument("--job-set", dest="job_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the RayJob's config (repeatable)")
    p.add_argument("--index", default=DEFAULT_INDEX, help=f"index directory in the pods (default {DEFAULT_INDEX})")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"KB the RayJob indexes, a path in the pods (default {DEFAULT_KB})")
    p.add_argument("--image-repo", default=IMAGE_REPO, help=f"repository of the built images (default {IMAGE_REPO})")
    p.add_argument("--out", required=True, help="directory to write rayservice.yaml and rayjob-index.yaml to")


def render_command(args: argparse.Namespace) -> str:
    """The command line that reproduces ``args`` (recorded in the files' header)."""
    parts = ["mel", "cluster", "render"]
    if args.config:
        parts += ["--config", args.config]
    for o in args.overrides:
        parts += ["--set", o]
    if args.job_config:
        parts += ["--job-config", args.job_config]
    for o in args.job_overrides:
        parts += ["--job-set", o]
    for flag, value, default in (("--index", args.index, DEFAULT_INDEX), ("--kb", args.kb, DEFAULT_KB),
                                 ("--image-repo", args.image_repo, IMAGE_REPO)):
        if value != default:
            parts += [flag, value]
    return shlex.join(parts + ["--out", args.out])


def render(args: argparse.Namespace) -> list[Path]:
    """CLI: write the manifests (each appears complete or not at all); returns their paths."""
    from mel.atomic import write_text_atomic

    cfg = load_config(args.config, args.overrides)
    job_cfg = load_config(args.job_config or args.config, args.job_overrides)
    texts = render_manifests(cfg, job_cfg, index=args.index, kb=args.kb, image_repo=args.image_repo,
                             command=render_command(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths
