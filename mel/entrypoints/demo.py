"""``mel demo``: the main job on a fresh machine. Indexes the KB shipped in ``data/demo`` (in this process: it
is below ``pipelines.index.local_below`` in configs/demo.yaml; a larger ``--kb`` goes to Ray Data), starts the
linking graph on Ray Serve (127.0.0.1), links the example mentions over HTTP, prints each answer with its top
candidates and the accuracy, shows a refused bad request, and shuts down."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "data" / "demo"
PROMISED = "27/30"
"""What the README promises `make demo` scores (measured; a unit test keeps the README saying the same)."""


def _payload(m) -> dict:  # noqa: ANN001
    d = {"id": m.id, "surface": m.surface, "context": m.context}
    if m.image:
        d["image_base64"] = base64.b64encode(Path(m.image).read_bytes()).decode()
    return d


CLIENTS = 8
"""Requests the demo keeps in flight while linking its mentions."""


async def _link_each(url: str, mentions: list) -> list[dict]:  # noqa: ANN001
    """One ``POST /v1/link`` per mention, ``CLIENTS`` at a time; the answers in the mentions' order."""
    import httpx

    gate = asyncio.Semaphore(CLIENTS)

    async def one(client: httpx.AsyncClient, m) -> dict:  # noqa: ANN001
        async with gate:
            r = await client.post(f"{url}/v1/link", json={"mentions": [_payload(m)], "top_k": 3})
            r.raise_for_status()
            return r.json()["results"][0]

    async with httpx.AsyncClient(timeout=300) as client:
        return list(await asyncio.gather(*(one(client, m) for m in mentions)))


def calibrate_over_http(cfg, url: str, index_dir: Path, kb_file: Path, dev_path: Path) -> object:  # noqa: ANN001
    """Choose the NIL threshold of the served method on labelled dev mentions (their NIL mentions name things the KB
    lacks): link them through the running app, pick the threshold that maximises accuracy (``mel.calibration``),
    write it beside the index, and redeploy so the ingress uses it (only the ingress restarts). Returns the
    calibration."""
    import httpx

    from mel.calibration import calibrate, calibration_path, fit_confidence, score_points, write_calibration
    from mel.index.manifest import index_id, read_manifest
    from mel.kb import read_kb
    from mel.mentions import read_mentions
    from mel.methods import registry
    from mel.types import LinkResult

    dev = read_mentions(dev_path)
    body = {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context} for m in dev]}
    r = httpx.post(f"{url}/v1/link", json=body, timeout=600)
    r.raise_for_status()
    results = [LinkResult.from_dict(x) for x in r.json()["results"]]
    kb_ids = {e.id for e in read_kb(kb_file)}
    points = score_points(dev, results, kb_ids)
    model, points = fit_confidence(dev, results, points)
    spec = registry.get(cfg.method)
    cal = calibrate(points, method=spec.name, method_hash=spec.config_hash(cfg),
                    index_id=index_id(read_manifest(index_dir)), score=spec.score, confidence=model,
                    protocol={"dataset": "demo", "split": "dev", "file": str(dev_path), "mentions": len(dev),
                              "nil_mentions": sum(m.gold is None for m in dev), "fraction": 0.0})
    path = write_calibration(cal, calibration_path(index_dir, spec.name))
    from mel.entrypoints import commands

    commands.switch_index(cfg, str(index_dir))  # same index: the ingress restarts with the calibration
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/healthz", timeout=30).json().get("nil", {}).get("source") != str(path):
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not pick up the NIL calibration within 120 s")
        time.sleep(0.5)
    return cal


def run(config: str | None, overrides: list[str], *, workdir: str | None = None, port: int | None = None,
        kb: Path | None = None, mentions_path: Path | None = None, dev_path: Path | None = None) -> int:
    import httpx

    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.mentions import read_mentions

    cfg = load_config(config, overrides)
    if port is not None:
        cfg.serve.port = port
    kb = kb or DEMO_DIR / "kb" / "entities.jsonl"
    mentions_path = mentions_path or DEMO_DIR / "mentions.jsonl"
    dev_path = dev_path or DEMO_DIR / "dev.jsonl"
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mel-demo-"))
    index_dir = work / "index"

    try:  # every step inside: Ctrl-C or SIGTERM at any point stops Ray and Serve
        below = cfg.pipelines.index.local_below
        where = "on Ray Data" if not below else f"(in this process below {below} entities, else on Ray Data)"
        print(f"== 1/4 indexing {kb} {where} -> {index_dir}", flush=True)
        t0 = time.perf_counter()
        commands.index(cfg, out=str(index_dir), kb=str(kb))
        print(f"   done in {time.perf_counter() - t0:.1f}s", flush=True)

        print("== 2/4 starting the linking graph on Ray Serve (Ingress -> Retriever -> Selector)", flush=True)
        url = commands.start_serve(cfg, str(index_dir))
        print(f"   serving at {url}/v1/link (OpenAPI docs at {url}/docs)", flush=True)
        if dev_path.is_file():
            print(f"== 3/4 choosing the NIL threshold on {dev_path.name} (other mentions, some of things the KB "
                  "lacks)", flush=True)
            cal = calibrate_over_http(cfg, url, index_dir, kb, dev_path)
            at, without = cal.dev["at_threshold"], cal.dev["without_threshold"]
            what = "link confidence" if cal.confidence else "final score"
            t = "none" if cal.threshold is None else f"{cal.threshold:.3f}"
            print(f"   NIL when the {what} < {t}: dev accuracy {at['accuracy']:.1f}% "
                  f"({without['accuracy']:.1f}% never answering NIL; {cal.dev['nil_mentions']} of "
                  f"{cal.dev['mentions']} dev mentions are NIL)", flush=True)
        mentions = read_mentions(mentions_path)
        print(f"== 4/4 linking {len(mentions)} mentions over HTTP, one request each, {CLIENTS} at a time (the "
              "graph batches concurrent requests)", flush=True)
        correct = 0
        t0 = time.perf_counter()
        answers = asyncio.run(_link_each(url, mentions))
        link_s = time.perf_counter() - t0
        with httpx.Client(timeout=300) as client:
            for m, res in zip(mentions, answers, strict=True):
                ok = res["entity_id"] == m.gold
                correct += ok
                answer = res["entity_id"] or "NIL"
                print(f"\n[{'ok' if ok else 'XX'}] {m.surface!r} in: {m.context[:90]}"
                      + (" [+image]" if m.image else ""))
                print(f"     answer: {answer}  (gold: {m.gold or 'NIL'}, score {res['score']:.3f})")
                w_id = max((len(c["entity_id"]) for c in res["candidates"]), default=0)
                w_name = max((len(c["name"]) for c in res["candidates"]), default=0)
                for c in res["candidates"]:
                    parts = ", ".join(f"{k}={v:.2f}" for k, v in c["scores"].items())
                    print(f"       - {c['entity_id']:<{w_id}}  {c['name']:<{w_name}}  {parts}")
            bad = client.post(f"{url}/v1/link", json={"mentions": [{"surface": ""}]})
            print(f"\nbad request (empty mention) -> HTTP {bad.status_code}: {bad.json()}")
        print(f"\nlinked {len(mentions)} mentions in {link_s:.1f}s")
        print(f"accuracy: {correct}/{len(mentions)} = {100 * correct / max(1, len(mentions)):.1f}%"
              + (f"  (the README promises {PROMISED} with configs/demo.yaml)" if mentions_path == DEMO_DIR /
                 "mentions.jsonl" else ""))
    finally:
        print("shutting down Serve and Ray", flush=True)
        commands.stop_serve()
    return 0
