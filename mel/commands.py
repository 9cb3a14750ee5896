"""What the ``mel`` subcommands do, as functions taking typed config (the CLI's edge to Ray jobs and
the Serve app; the core library never imports ``pipelines`` or ``serve``, only this edge does)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mel.config import Config
from mel.errors import ArtifactMismatch, InputError

log = logging.getLogger("mel")


def _dataset_kb_file(cfg: Config, dataset: str, data_dir: str | None) -> Path:
    """Write a benchmark dataset's KB once to the cache as JSONL (atomic) and return its path."""
    from mel.datasets import load_dataset
    from mel.kb import write_kb
    from mel.models.sources import default_cache_dir

    ds = load_dataset(dataset, data_dir)
    path = Path(default_cache_dir(cfg.models.cache_dir)) / "kb" / f"{dataset}-{ds.kb.content_hash()}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_kb(ds.kb, path)
    return path


def index(cfg: Config, *, out: str, kb: str | None = None, dataset: str | None = None,
          data_dir: str | None = None, local: bool = False) -> Path:
    if (kb is None) == (dataset is None):
        raise InputError("give exactly one of --kb or --dataset")
    kb_path = Path(kb) if kb is not None else _dataset_kb_file(cfg, str(dataset), data_dir)
    if local:
        from pipelines.index import run_index_local

        return Path(run_index_local(kb_path, out, cfg))
    from mel.raylocal import init_ray
    from pipelines.index import run_index

    init_ray(cfg.ray)
    return Path(run_index(kb_path, out, cfg))


def preflight_index(cfg: Config, index_dir: str) -> None:
    """Refuse, before anything is deployed, an index that is missing, incomplete, or was built with an
    encoder other than the configured one (cheap: resolves model ids without loading models)."""
    from mel.index.artifact import IndexArtifact
    from mel.index.manifest import check_compatible
    from mel.models.sources import default_cache_dir, model_id, resolve_model

    art = IndexArtifact.load(index_dir)
    te = cfg.models.text_encoder
    cache = default_cache_dir(cfg.models.cache_dir)
    text_id = model_id(te.model, resolve_model(te.model, kind="text", cache_dir=cache))
    check_compatible(art.manifest, encoder_id=text_id, dim=None, metric=cfg.index.metric, where=str(index_dir))


def start_serve(cfg: Config, index_dir: str, *, timeout_s: float = 600) -> str:
    """Start Ray (loopback unless an address is configured) and the Serve app; return its base URL once
    it answers ``/healthz``."""
    import httpx
    from ray import serve

    from mel.raylocal import init_ray
    from serve.app import build_app

    preflight_index(cfg, index_dir)
    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(cfg, index_dir), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix,
              blocking=False)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve app did not become healthy at {url} within {timeout_s:.0f}s")
        time.sleep(1)


def stop_serve() -> None:
    from ray import serve

    from mel.raylocal import shutdown_ray

    try:
        serve.shutdown()
    finally:
        shutdown_ray()


def serve_forever(cfg: Config, index_dir: str) -> None:
    url = start_serve(cfg, index_dir)
    print(f"linking API at {url}/v1/link  (docs: {url}/docs)  -- Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_serve()


def link_batch(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *, method: str | None = None,
               local: bool = False) -> int:
    if local:
        from pipelines.link import run_link_local

        return run_link_local(cfg, index_dir, mentions_path, out_path, method=method)
    from mel.raylocal import init_ray
    from pipelines.link import run_link

    init_ray(cfg.ray)
    return run_link(cfg, index_dir, mentions_path, out_path, method=method)


def ensure_dataset_index(cfg: Config, dataset: Any, index_dir: str, data_dir: str | None) -> None:
    """Build the dataset's index when the directory does not exist; refuse one built from another KB."""
    from mel.index.manifest import read_manifest

    p = Path(index_dir)
    if not (p / "manifest.json").exists():
        if p.exists() and any(p.iterdir()):
            raise InputError(f"{p} exists but holds no index manifest: not an index directory")
        log.info("index %s not found: building it from the %s KB", p, dataset.name)
        index(cfg, out=str(p), dataset=dataset.name, data_dir=data_dir, local=cfg.ray.address is None and
              len(dataset.kb) <= 2000)
    m = read_manifest(p)
    if m.kb_hash != dataset.kb.content_hash():
        raise ArtifactMismatch(f"{p}: index was built from KB {m.kb_hash}, but dataset {dataset.name!r} has KB "
                               f"{dataset.kb.content_hash()}; rebuild with `mel index --dataset {dataset.name}`")


def link_in_batches(linker: Any, mentions: list[Any], batch_size: int, progress: bool = True) -> list[Any]:
    results = []
    t0 = time.perf_counter()
    for i in range(0, len(mentions), batch_size):
        results.extend(linker.link(mentions[i:i + batch_size]))
        if progress:
            done = len(results)
            rate = done / max(1e-9, time.perf_counter() - t0)
            log.info("linked %d/%d mentions (%.1f/s)", done, len(mentions), rate)
    return results


def evaluate(cfg: Config, *, dataset: str, split: str, index_dir: str, method: str | None = None,
             limit: int | None = None, data_dir: str | None = None, report_path: str | None = None,
             batch_size: int = 64, linker: Any = None) -> dict[str, Any]:
    from mel.datasets import load_dataset
    from mel.eval import evaluate as score
    from mel.eval import write_report
    from mel.methods import build_linker

    ds = load_dataset(dataset, data_dir)
    if split not in ds.splits:
        raise InputError(f"dataset {dataset!r} has no split {split!r}; splits: {sorted(ds.splits)}")
    mentions = ds.splits[split][:limit] if limit else ds.splits[split]
    ensure_dataset_index(cfg, ds, index_dir, data_dir)
    linker = linker or build_linker(cfg, index_dir, method=method)
    t0 = time.perf_counter()
    results = link_in_batches(linker, mentions, batch_size)
    elapsed = time.perf_counter() - t0
    report = score(mentions, results, {e.id for e in ds.kb})
    report["dataset"], report["split"], report["method"] = dataset, split, linker.name
    report["mentions_per_s"] = len(mentions) / max(elapsed, 1e-9)
    report["dataset_stats"] = ds.stats
    if report_path:
        write_report(report, report_path)
    return report
