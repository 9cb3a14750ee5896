"""What the ``mel`` subcommands do, as functions taking typed config (the CLI's edge to Ray jobs and
the Serve app; the core library never imports ``pipelines`` or ``serve``, only this edge does)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mel.config import Config
from mel.errors import ArtifactMismatch, InputError

log = logging.getLogger("mel")


def _dataset_kb_file(cfg: Config, dataset: str, data_dir: str | None) -> Path:
    """Write a benchmark dataset's KB once to the cache as JSONL (atomic) and return its path."""
    from mel.datasets import load_dataset
    from mel.kb import write_kb
    ds = load_dataset(dataset, data_dir)
    path = Path(cfg.models.cache_path()) / "kb" / f"{dataset}-{ds.kb.content_hash()}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_kb(ds.kb, path)
    return path


def index(cfg: Config, *, out: str | None = None, kb: str | None = None, dataset: str | None = None,
          data_dir: str | None = None, local: bool = False, update: str | None = None,
          base: str | None = None, summaries: str | None = None) -> Path:
    """Build an index (``kb`` or ``dataset``), or update one (``update`` = a KB delta applied to ``base``).
    ``summaries``: entity summaries joined into {summary} of the entity template (sets ``index.summaries``)."""
    if sum(x is not None for x in (kb, dataset, update)) != 1:
        raise InputError("give exactly one of --kb, --dataset or --update")
    if summaries is not None:
        cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"summaries": summaries})})
    if update is not None:
        if base is None:
            raise InputError("--update needs --from: the index directory (or versioned root) to update")
        from pipelines.index import run_update

        return Path(run_update(update, base, out, cfg, local=local))
    if base is not None:
        raise InputError("--from is only used with --update")
    if out is None:
        raise InputError("--out is required: the index directory to write")
    kb_path = Path(kb) if kb is not None else _dataset_kb_file(cfg, str(dataset), data_dir)
    entities: Any = kb_path
    below = cfg.pipelines.index.local_below
    if not local and below:
        from mel.kb.reader import read_kb

        entities = read_kb(kb_path)  # read once; the build reuses it
        if len(entities) < below:
            log.info("%d entities, below pipelines.index.local_below=%d: embedding in this process, not on Ray Data",
                     len(entities), below)
            local = True
    if local:
        from pipelines.index import run_index_local

        return Path(run_index_local(entities, out, cfg))
    from mel.raylocal import init_ray
    from pipelines.index import run_index

    init_ray(cfg.ray)
    return Path(run_index(entities, out, cfg))


def augment_entities(cfg: Config, *, out: str, kb: str | None = None, dataset: str | None = None,
                     data_dir: str | None = None, local: bool = False, limit: int | None = None,
                     ids_file: str | None = None) -> Any:
    """`mel augment entities`: LLM summaries of the KB's entities into the artifact ``out`` (Ray Data unless
    ``local``). ``limit`` (the first N entities) and ``ids_file`` (one entity id per line) restrict what is
    generated; summaries made earlier for other entities stay in the artifact."""
    if (kb is None) == (dataset is None):
        raise InputError("give exactly one of --kb or --dataset")
    from mel.kb.reader import read_kb

    entities = read_kb(Path(kb) if kb is not None else _dataset_kb_file(cfg, str(dataset), data_dir))
    only: list[str] | None = None
    if ids_file is not None:
        only = read_id_list(ids_file)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        only = (only if only is not None else entities.ids)[:limit]
    if local:
        from pipelines.augment import run_summaries

        return run_summaries(entities, out, cfg, local=True, only=only)
    from pipelines.augment import run_summaries

    with ray_for_job(cfg):
        return run_summaries(entities, out, cfg, only=only)


@contextmanager
def ray_for_job(cfg: Config) -> Iterator[None]:
    """Ray for one job: connect (``ray.address``) or start a local Ray on loopback when none runs in this process;
    a Ray this starts is stopped when the job ends, also on error (and on SIGTERM, by :mod:`mel.raylocal`)."""
    import ray

    from mel.raylocal import init_ray, shutdown_ray

    ours = not ray.is_initialized()
    init_ray(cfg.ray)
    try:
        yield
    finally:
        if ours:
            shutdown_ray()


def read_id_list(path: str) -> list[str]:
    """Entity ids, one per line ('#' comments and blank lines skipped); errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=str(p))
    ids: list[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if any(c.isspace() for c in item):
            raise InputError(f"one entity id per line, got {item!r}", path=str(p), line=n)
        ids.append(item)
    if not ids:
        raise InputError("no entity ids in the file", path=str(p))
    return ids


def preflight_index(cfg: Config, index_dir: str) -> None:
    """Refuse, before anything is deployed, an index that is missing, incomplete, or was built with an
    encoder other than the configured one (cheap: resolves model ids without loading models)."""
    from mel.index.artifact import IndexArtifact
    from mel.index.manifest import check_compatible
    from mel.models.sources import model_id, resolve_model

    art = IndexArtifact.load(index_dir)
    te = cfg.models.text_encoder
    cache = cfg.models.cache_path()
    text_id = model_id(te.model, resolve_model(te.model, kind="text", cache_dir=cache))
    check_compatible(art.manifest, encoder_id=text_id, dim=None, metric=cfg.index.metric, where=str(index_dir))
    from mel.augment.entity import check_index_summaries

    check_index_summaries(art.manifest.summaries, cfg.index.summaries, index_dir)
    from mel.methods import method_needs

    if "llm" in method_needs(cfg):  # adapters trained for another KB, or another base model, are refused here
        from mel.llm.adapters import check_adapters_for_index, check_lora_adapter
        from mel.models.fingerprint import architecture_fingerprint

        check_adapters_for_index(cfg.selection.adapters, art.manifest.kb_hash, index_dir=str(index_dir))
        base = resolve_model(cfg.models.llm.model, kind="llm", cache_dir=cache)
        fingerprint = architecture_fingerprint(base)
        for path in cfg.selection.adapters.values():
            check_lora_adapter(path, max_rank=cfg.models.llm.max_lora_rank, base_fingerprint=fingerprint)


# The proxy's own timeout (HTTP 408) is set this much later than serve.request_timeout_s, so the ingress answers
# a slow request first, with its JSON 504 naming the stage.
PROXY_TIMEOUT_GRACE_S = 5.0


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _running_http_port(default: int) -> int:
    """The port of the Serve proxy already running in this cluster (Serve keeps the HTTP options it started
    with), or ``default``."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # noqa: BLE001 -- private API: fall back to the configured port
        return default


def _app_url(cfg: Config, port: int) -> str:
    return f"http://{cfg.serve.host}:{port}{cfg.serve.route_prefix.rstrip('/')}"


def _wait_healthy(url: str, timeout_s: float, check: Any = None) -> dict[str, Any]:
    """Poll ``{url}/healthz`` until it answers 200 (and ``check(body)`` holds); return the body."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code == 200 and (check is None or check(r.json())):
                return r.json()
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve app at {url} not ready within {timeout_s:.0f}s (last: {last})")
        time.sleep(0.5)


def _resolve_index(path: str) -> Path:
    """An index directory as is; a versioned root (vNNNN + CURRENT) as the version it names."""
    from mel.index.update import resolve_index_dir

    return Path(resolve_index_dir(path)).absolute()


def start_serve(cfg: Config, index_dir: str, *, timeout_s: float = 600) -> str:
    """Start Ray (loopback unless an address is configured) and the Serve app; return its base URL once
    it answers ``/healthz``. ``index_dir``: an index directory, or a versioned root (its CURRENT version is
    served). When Serve already runs in the cluster, its proxy (and port) is reused."""
    from ray import serve

    from mel.raylocal import init_ray
    from serve.app import build_app

    index_dir = str(_resolve_index(index_dir))
    preflight_index(cfg, index_dir)
    init_ray(cfg.ray)
    from mel.raylocal import quiet_ray_loggers

    quiet_ray_loggers()  # Serve set its driver logger up when imported
    port = cfg.serve.port or _free_port(cfg.serve.host)
    http: dict[str, Any] = {"host": cfg.serve.host, "port": port}
    if cfg.serve.request_timeout_s is not None:
        http["request_timeout_s"] = cfg.serve.request_timeout_s + PROXY_TIMEOUT_GRACE_S
    serve.start(http_options=http)
    running = _running_http_port(port)
    if running != port:
        log.warning("Serve already runs in this cluster with its proxy on port %d: using it (not %d)", running, port)
    serve.run(build_app(cfg, index_dir), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix,
              blocking=False)
    url = _app_url(cfg, running)
    _wait_healthy(url, timeout_s)
    return url


def switch_index(cfg: Config, index_dir: str, *, timeout_s: float = 600) -> dict[str, Any]:
    """Serve another index version from the running app ``cfg.serve.app_name`` without dropping requests.

    ``cfg`` must be the configuration the app was started with (anything else that differs restarts the replicas
    it concerns). The index is checked against the configured encoder first; then the app is redeployed with the
    new ``index_dir`` as the Retriever's ``user_config``: each Retriever replica loads it beside the old one and
    swaps it in (in-flight requests finish on the old index). Returns ``/healthz`` once it reports the new index.
    """
    import os

    from ray import serve

    from mel.raylocal import init_ray
    from serve.app import build_app

    index_dir = str(_resolve_index(index_dir))
    preflight_index(cfg, index_dir)
    host = (cfg.ray.address or "").split("://")[-1].rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost"):  # a loopback-only local Ray (`mel serve`): connect on loopback too
        from mel.raylocal import _force_loopback

        _force_loopback()
    init_ray(cfg.ray)
    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 -- Serve not running in this cluster
        apps = {}
    if cfg.serve.app_name not in apps:
        raise InputError(f"no Serve application {cfg.serve.app_name!r} is running in this Ray cluster "
                         f"(running: {sorted(apps) or 'none'}); start it with `mel serve` or set ray.address")
    target = os.path.abspath(index_dir)
    t0 = time.perf_counter()
    serve.run(build_app(cfg, target), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix,
              blocking=False)
    health = _wait_healthy(_app_url(cfg, _running_http_port(cfg.serve.port)), timeout_s,
                           check=lambda h: h.get("index", {}).get("index_dir") == target)
    log.info("now serving index %s (%s entities) after %.1fs", target, health["index"].get("entities"),
             time.perf_counter() - t0)
    return health


def stop_serve() -> None:
    from ray import serve

    from mel.raylocal import shutdown_ray

    log.info("stopping Serve and Ray")
    try:
        serve.shutdown()
    finally:
        shutdown_ray()
        log.info("stopped")


def point_current(version_dir: str) -> Path:
    """Make ``<root>/CURRENT`` name ``version_dir`` (a complete ``vNNNN`` index directory under a versioned root):
    a ``mel serve --index <root>`` watching that root switches to it within ``serve.index_poll_s``."""
    from mel.index.update import is_version_dir, set_current

    d = Path(version_dir).absolute()
    if not is_version_dir(d):
        raise InputError("without ray.address, --switch-index takes a version directory (vNNNN) of the versioned "
                         "root a local `mel serve --index <root>` watches; for a cluster set ray.address",
                         path=str(version_dir))
    return set_current(d.parent, d.name)


def serve_forever(cfg: Config, index_dir: str) -> None:
    """Serve until Ctrl-C. When ``index_dir`` is a versioned root, follow its CURRENT: every
    ``serve.index_poll_s`` the version it names is compared with the one served, and a new one is switched in
    (:func:`switch_index`; a version that fails to load is logged and the old one kept)."""
    served = _resolve_index(index_dir)
    watch = served != Path(index_dir).absolute() and cfg.serve.index_poll_s is not None
    try:  # start-up included: a SIGTERM or Ctrl-C while Serve starts stops everything too
        url = start_serve(cfg, str(served))
        print(f"linking API at {url}/v1/link  (docs: {url}/docs)  -- Ctrl-C to stop", flush=True)
        if watch:
            print(f"serving {served.name} of {index_dir}; a new CURRENT there is switched in within "
                  f"{cfg.serve.index_poll_s:g}s (`mel serve --switch-index {Path(index_dir) / 'vNNNN'}`)",
                  flush=True)
        while True:
            time.sleep(cfg.serve.index_poll_s if watch else 3600)  # type: ignore[arg-type]
            if watch:
                served = follow_current(cfg, index_dir, served)
    except KeyboardInterrupt:
        pass
    finally:
        stop_serve()


def follow_current(cfg: Config, root: str, served: Path) -> Path:
    """One check of a versioned root: switch the running app to the version ``<root>/CURRENT`` names when it is not
    ``served``; return the version served afterwards (``served`` when the new one cannot be loaded: logged)."""
    from mel.errors import MelError
    from mel.index.update import resolve_index_dir

    try:
        latest = Path(resolve_index_dir(root)).absolute()
        if latest == served:
            return served
        log.info("%s now names %s: switching", Path(root) / "CURRENT", latest.name)
        switch_index(cfg, str(latest))
        return latest
    except (MelError, TimeoutError) as e:
        log.error("keeping %s: cannot switch to the new version: %s", served, e)
        return served


def link_batch(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *, method: str | None = None,
               local: bool = False) -> int:
    if local:
        from pipelines.link import run_link_local

        return run_link_local(cfg, index_dir, mentions_path, out_path, method=method)
    from pipelines.link import run_link

    with ray_for_job(cfg):
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
    from mel.augment.entity import check_index_summaries

    check_index_summaries(m.summaries, cfg.index.summaries, p)


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


def _split_mentions(ds: Any, split: str, limit: int | None, sample: int | None, seed: int) -> list[Any]:
    from mel.eval import fixed_sample

    if split not in ds.splits:
        raise InputError(f"dataset {ds.name!r} has no split {split!r}; splits: {sorted(ds.splits)}")
    if limit and sample:
        raise InputError("give --limit or --sample, not both")
    everything = ds.splits[split]
    if sample:
        return fixed_sample(everything, sample, seed)
    return everything[:limit] if limit else everything


def evaluate(cfg: Config, *, dataset: str, split: str, index_dir: str, method: str | None = None,
             limit: int | None = None, data_dir: str | None = None, report_path: str | None = None,
             batch_size: int = 64, linker: Any = None, sample: int | None = None, seed: int = 0,
             per_mention: bool = False, nil_withhold: float | None = None) -> dict[str, Any]:
    """Link a split (or its first ``limit`` mentions, or the fixed seeded ``sample`` of it) and score it.

    ``nil_withhold`` F: the NIL protocol (:mod:`mel.withhold`): the golds of a seeded fraction F of the mentions are
    hidden from the KB for this run (``seed``), and those mentions expect NIL."""
    from mel.calibration import auc, score_points
    from mel.datasets import load_dataset
    from mel.eval import evaluate as score
    from mel.eval import write_report
    from mel.methods import build_linker

    ds = load_dataset(dataset, data_dir)
    mentions = _split_mentions(ds, split, limit, sample, seed)
    ensure_dataset_index(cfg, ds, index_dir, data_dir)
    linker = linker or build_linker(cfg, index_dir, method=method)
    kb_ids = {e.id for e in ds.kb}
    withheld = None
    if nil_withhold:
        from mel.withhold import choose_withheld

        withheld = choose_withheld(mentions, kb_ids, nil_withhold, seed)
        linker = linker.withholding(withheld.entities)
        kb_ids -= withheld.entities
        log.info("NIL protocol: %d gold entities withheld, %d of %d mentions now expect NIL",
                 len(withheld.entities), len(withheld.nil_mentions), len(mentions))
    t0 = time.perf_counter()
    results = link_in_batches(linker, mentions, batch_size)
    elapsed = time.perf_counter() - t0
    report = score(mentions, results, kb_ids, per_mention=per_mention)
    report["dataset"], report["split"], report["method"] = dataset, split, linker.name
    report["mentions_per_s"] = len(mentions) / max(elapsed, 1e-9)
    report["dataset_stats"] = ds.stats
    report["nil"]["threshold"] = getattr(linker, "nil", None)
    report["nil"]["score_auc"] = auc(score_points(mentions, results, kb_ids))
    if withheld is not None:
        report["withheld"] = withheld.summary(len(mentions))
    if sample:
        report["sample"] = {"n": len(mentions), "of": len(ds.splits[split]), "seed": seed}
    if report_path:
        write_report(report, report_path)
    return report


def calibrate(cfg: Config, *, dataset: str, index_dir: str, split: str = "dev", method: str | None = None,
              fraction: float = 0.1, seed: int = 0, sample: int | None = None, limit: int | None = None,
              data_dir: str | None = None, out: str | None = None, plot: str | None = None, batch_size: int = 64,
              linker: Any = None, confidence: bool = True) -> tuple[Any, Path]:
    """``mel calibrate``: link ``split`` under the NIL protocol with no threshold, choose the threshold that
    maximises overall accuracy, and write the calibration file (default: beside the index, where ``nil.calibration:
    auto`` finds it). ``confidence``: fit a link-confidence model (:mod:`mel.confidence`) on the same run and put the
    threshold on its probability (else on the method's raw final score). ``plot``: also draw NIL precision/recall
    and accuracy against the threshold as a PNG."""
    from mel.calibration import auc, calibration_path, fit_confidence, score_points, with_nil, write_calibration
    from mel.calibration import calibrate as choose
    from mel.datasets import load_dataset
    from mel.index.manifest import index_id, read_manifest
    from mel.methods import build_linker, registry
    from mel.withhold import choose_withheld

    if not 0 < fraction < 1:
        raise InputError(f"--nil-withhold must lie in (0, 1), got {fraction}")
    registry.load_plugins(cfg.plugins)
    spec = registry.get(method or cfg.method)
    ds = load_dataset(dataset, data_dir)
    mentions = _split_mentions(ds, split, limit, sample, seed)
    ensure_dataset_index(cfg, ds, index_dir, data_dir)
    free = with_nil(cfg.model_copy(update={"nil": cfg.nil.model_copy(update={"calibration": "off"})}), None)
    linker = linker or build_linker(free, index_dir, method=spec.name)
    if linker.cfg.nil.threshold is not None or linker.cfg.nil.confidence is not None:
        raise InputError("calibrate: the linker given answers NIL under a threshold or confidence model already; "
                         "build it with nil.threshold=null and nil.calibration=off")
    kb_ids = {e.id for e in ds.kb}
    withheld = choose_withheld(mentions, kb_ids, fraction, seed)
    runner = linker.withholding(withheld.entities)
    t0 = time.perf_counter()
    results = link_in_batches(runner, mentions, batch_size)
    protocol = {"dataset": dataset, "split": split, "sample": sample, "limit": limit,
                "seconds": round(time.perf_counter() - t0, 1), **withheld.summary(len(mentions))}
    points = score_points(mentions, results, kb_ids - withheld.entities)
    model = None
    if confidence:
        protocol["raw_score_auc"] = auc(points)
        model, points = fit_confidence(mentions, results, points)
    cal = choose(points, method=spec.name, method_hash=spec.config_hash(cfg),
                 index_id=index_id(read_manifest(index_dir)), score=spec.score, protocol=protocol, confidence=model)
    path = write_calibration(cal, out or calibration_path(index_dir, spec.name))
    if plot:
        from mel.plot import plot_nil_curve

        plot_nil_curve(cal, plot)
    return cal, path
