"""``mel demo``: the main job on a fresh machine. Indexes the KB shipped in ``data/demo`` on Ray Data,
starts the linking graph on Ray Serve (127.0.0.1), links the example mentions over HTTP, prints each
answer with its top candidates and the accuracy, shows a refused bad request, and shuts down."""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "data" / "demo"


def _payload(m) -> dict:  # noqa: ANN001
    d = {"id": m.id, "surface": m.surface, "context": m.context}
    if m.image:
        d["image_base64"] = base64.b64encode(Path(m.image).read_bytes()).decode()
    return d


def run(config: str | None, overrides: list[str], *, workdir: str | None = None, port: int | None = None,
        kb: Path | None = None, mentions_path: Path | None = None) -> int:
    import httpx

    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.mentions import read_mentions

    cfg = load_config(config, overrides)
    if port is not None:
        cfg.serve.port = port
    kb = kb or DEMO_DIR / "kb" / "entities.jsonl"
    mentions_path = mentions_path or DEMO_DIR / "mentions.jsonl"
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mel-demo-"))
    index_dir = work / "index"

    try:  # every step inside: Ctrl-C or SIGTERM at any point stops Ray and Serve
        print(f"== 1/3 indexing {kb} on Ray Data -> {index_dir}", flush=True)
        t0 = time.perf_counter()
        commands.index(cfg, out=str(index_dir), kb=str(kb))
        print(f"   done in {time.perf_counter() - t0:.1f}s", flush=True)

        print("== 2/3 starting the linking graph on Ray Serve (Ingress -> Retriever -> Selector)", flush=True)
        url = commands.start_serve(cfg, str(index_dir))
        print(f"   serving at {url}/v1/link (OpenAPI docs at {url}/docs)", flush=True)
        mentions = read_mentions(mentions_path)
        print(f"== 3/3 linking {len(mentions)} mentions over HTTP", flush=True)
        correct = 0
        with httpx.Client(timeout=300) as client:
            for m in mentions:
                r = client.post(f"{url}/v1/link", json={"mentions": [_payload(m)], "top_k": 3})
                r.raise_for_status()
                res = r.json()["results"][0]
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
        print(f"\naccuracy: {correct}/{len(mentions)} = {100 * correct / max(1, len(mentions)):.1f}%")
    finally:
        print("shutting down Serve and Ray", flush=True)
        commands.stop_serve()
    return 0
