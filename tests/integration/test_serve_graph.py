"""The linking graph on Ray Serve with real parts (MiniLM, faiss, local Ray on 127.0.0.1): request ids in answers
and replica logs, Prometheus metrics, online == offline (`mel link`), overload -> fast 503s, and an index switch
without dropped requests.

Each test deploys its own application (name and route prefix) on one Serve instance, method 'retrieval' (no LLM).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"
DEMO_MENTIONS = REPO / "data" / "demo" / "mentions.jsonl"


def _cfg(port: int, app: str, **overrides: Any) -> Any:
    from mel.config import load_config

    return load_config(None, {"method": "retrieval", "serve.port": port, "serve.app_name": app,
                              "serve.route_prefix": f"/{app}", **overrides})


@pytest.fixture(scope="module")
def serve_port(ray_local) -> Any:
    from ray import serve

    try:  # another module may have left Serve running on another port
        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    yield free_port()
    serve.shutdown()


@pytest.fixture(scope="module")
def app(serve_port: int, demo_index: Path) -> tuple[str, Any]:
    from mel.entrypoints import commands

    cfg = _cfg(serve_port, "ret")
    return commands.start_serve(cfg, str(demo_index)), cfg


def _mentions() -> list[Any]:
    from mel.mentions import read_mentions

    return list(read_mentions(DEMO_MENTIONS))


def _body(mentions: list[Any], **extra: Any) -> dict[str, Any]:
    return {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context} for m in mentions], **extra}


def _serve_log_lines(app_name: str, deployment: str) -> list[dict[str, Any]]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = []
    for f in sorted(logs.glob(f"replica_{app_name}_{deployment}_*.log")):
        for line in f.read_text().splitlines():
            if line.strip():
                lines.append(json.loads(line))  # every line is JSON (serve.log_encoding)
    return lines


# ----------------------------------------------------------------------------- request ids and logs
def test_request_id_is_returned_and_follows_the_request_into_replica_logs(app) -> None:
    url, _ = app
    rid = f"itest-{time.time_ns()}"
    r = httpx.post(f"{url}/v1/link", json=_body(_mentions()[:3]), headers={"X-Request-ID": rid}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers.get_list("x-request-id") == [rid]
    assert r.json()["request_id"] == rid
    # Without one, the server makes one and returns it the same way.
    r2 = httpx.post(f"{url}/v1/link", json=_body(_mentions()[:1]), timeout=120)
    assert r2.status_code == 200 and r2.headers["x-request-id"] == r2.json()["request_id"] != ""
    bad = httpx.post(f"{url}/v1/link", json=_body(_mentions()[:1]), headers={"X-Request-ID": "x" * 200}, timeout=60)
    assert bad.status_code == 400 and "X-Request-ID" in bad.json()["error"]

    deadline = time.monotonic() + 30
    while True:
        ours = {d: [x for x in _serve_log_lines("ret", d) if x.get("request_id") == rid and "stage" in x]
                for d in ("Ingress", "Retriever")}
        if all(ours.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert [x["stage"] for x in ours["Ingress"]] == ["link"], ours
    assert [x["stage"] for x in ours["Retriever"]] == ["retrieve"], ours
    for line in ours["Ingress"] + ours["Retriever"]:
        assert {"request_id", "stage", "deployment", "latency_ms"} <= set(line), line
        assert line["latency_ms"] >= 0
    assert ours["Retriever"][0]["mentions"] == 3 and ours["Ingress"][0]["status"] == 200
    # Serve's own lines for the request carry the same id (it passes the request context to handle calls).
    assert any(x.get("request_id") == rid and "stage" not in x for x in _serve_log_lines("ret", "Retriever"))


# ----------------------------------------------------------------------------- metrics
def _scrape() -> str:
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    assert node["NodeManagerAddress"] == "127.0.0.1"
    return httpx.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=30).text


def _samples(text: str, name: str, **labels: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        tags = dict(kv.split("=", 1) for kv in line[len(name) + 1: line.rindex("}")].split('",') if "=" in kv)
        tags = {k.strip(): v.strip('"') for k, v in tags.items()}
        if all(tags.get(k) == v for k, v in labels.items()):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def test_stage_metrics_are_exported_on_loopback(app) -> None:
    url, _ = app
    for _ in range(3):
        assert httpx.post(f"{url}/v1/link", json=_body(_mentions()[:2]), timeout=120).status_code == 200
    deadline = time.monotonic() + 90
    while True:
        text = _scrape()
        req = _samples(text, "ray_mel_stage_requests_total", application="ret", deployment="Ingress", stage="link")
        ret = _samples(text, "ray_mel_stage_requests_total", application="ret", deployment="Retriever",
                       stage="retrieve")
        if (req and sum(req) >= 3 and ret) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sum(req) >= 3 and sum(ret) >= 3, [x for x in text.splitlines() if "mel_" in x][:20]
    assert _samples(text, "ray_mel_stage_latency_ms_count", application="ret", stage="retrieve")
    assert sum(_samples(text, "ray_mel_stage_batch_size_count", application="ret", stage="retrieve")) >= 1
    assert sum(_samples(text, "ray_mel_stage_candidates_count", application="ret", stage="link")) >= 6
    assert _samples(text, "ray_mel_index_entities", application="ret") == [54.0]


# ----------------------------------------------------------------------------- online == offline
def test_online_and_batch_answers_are_identical(app, demo_index: Path, tmp_path: Path) -> None:
    from mel.entrypoints.cli import main

    url, _ = app
    ms = _mentions()
    online = httpx.post(f"{url}/v1/link", json=_body(ms), timeout=300)
    assert online.status_code == 200, online.text
    out = tmp_path / "batch.jsonl"
    assert main(["link", "--index", str(demo_index), "--mentions", str(DEMO_MENTIONS), "--out", str(out),
                 "--method", "retrieval", "--set", "pipelines.link.batch_size=7"]) == 0
    batch = [json.loads(x) for x in out.read_text().splitlines()]
    on = online.json()["results"]
    assert [r["mention_id"] for r in on] == [r["mention_id"] for r in batch] == [m.id for m in ms]
    for o, b in zip(on, batch):
        assert o["entity_id"] == b["entity_id"] and o["nil"] == b["nil"] and o["method"] == b["method"]
        assert [c["entity_id"] for c in o["candidates"]] == [c["entity_id"] for c in b["candidates"]]
        assert len(o["candidates"]) == 20
        for co, cb in zip(o["candidates"], b["candidates"]):
            assert co["score"] == pytest.approx(cb["score"], abs=1e-6)
            assert co["scores"].keys() == cb["scores"].keys()
    # One mention per request, concurrently (other batch compositions): the same answers.
    async def singles() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as c:
            return await asyncio.gather(*(c.post(f"{url}/v1/link", json=_body([m])) for m in ms))

    for r, b in zip(asyncio.run(singles()), batch):
        res = r.json()["results"][0]
        assert [c["entity_id"] for c in res["candidates"]] == [c["entity_id"] for c in b["candidates"]]
        assert res["score"] == pytest.approx(b["score"], abs=1e-6)


def test_online_and_batch_llm_selection_agree(serve_port: int, demo_index: Path, tmp_path: Path,
                                              selector_adapter: str) -> None:
    """llm-select with the real vLLM engine (one in the Selector replica, one in `mel link --local`), one mention
    per engine batch on both sides: the same answers, candidates and fused scores. A request naming the freshly
    trained selector adapter is answered with it (other LLM scores) by a replica that then holds it (Serve
    multiplexing); an unknown adapter is a 404 naming the known."""
    from ray import serve

    from mel.entrypoints import commands

    cfg = _cfg(serve_port, "sel", **{"method": "llm-select", "models.llm.kv_cache_gb": 0.5,
                                     "models.llm.max_model_len": 1024, "retrieval.top_k": 5,
                                     "pipelines.link.batch_size": 1, "selection.adapters": {"fresh": selector_adapter}})
    url = commands.start_serve(cfg, str(demo_index))
    ms = _mentions()[:6]
    online = []
    for m in ms:
        r = httpx.post(f"{url}/v1/link", json=_body([m]), timeout=300)
        assert r.status_code == 200, r.text
        online.append(r.json()["results"][0])
    tuned = httpx.post(f"{url}/v1/link", json=_body(ms[:1], adapter="fresh"), timeout=300)
    assert tuned.status_code == 200, tuned.text
    llm = [c["scores"].get("llm") for c in tuned.json()["results"][0]["candidates"]]
    assert any(x is not None for x in llm)
    base_llm = {c["entity_id"]: c["scores"].get("llm") for c in online[0]["candidates"]}
    pairs = [(c["scores"]["llm"], base_llm[c["entity_id"]]) for c in tuned.json()["results"][0]["candidates"]
             if c["scores"].get("llm") is not None and base_llm.get(c["entity_id"]) is not None]
    assert pairs and any(abs(a - b) > 1e-6 for a, b in pairs), pairs
    # the request was routed with the adapter as its multiplexed model id: the Selector replica now holds it
    assert httpx.get(f"{url}/healthz", timeout=60).json()["adapters"] == {
        "configured": ["fresh"], "default": None, "multiplexed": True, "merged": False, "held": ["fresh"]}
    bad = httpx.post(f"{url}/v1/link", json=_body(ms[:1], adapter="nope"), timeout=60)
    assert bad.status_code == 404 and "fresh" in bad.json()["error"]
    serve.delete("sel")  # one engine at a time on this machine
    subset = tmp_path / "mentions.jsonl"
    subset.write_text("".join(line + "\n" for line in DEMO_MENTIONS.read_text().splitlines()[:6]))
    out = tmp_path / "batch.jsonl"
    assert commands.link_batch(cfg, str(demo_index), str(subset), str(out), local=True) == 6
    batch = [json.loads(x) for x in out.read_text().splitlines()]
    assert any("llm" in c["scores"] for r in online for c in r["candidates"])
    for o, b in zip(online, batch):
        assert o["mention_id"] == b["mention_id"] and o["entity_id"] == b["entity_id"]
        assert [c["entity_id"] for c in o["candidates"]] == [c["entity_id"] for c in b["candidates"]]
        for co, cb in zip(o["candidates"], b["candidates"]):
            assert co["score"] == pytest.approx(cb["score"], abs=1e-6)
            assert co["scores"].get("llm") == pytest.approx(cb["scores"].get("llm"), abs=1e-6)


# ----------------------------------------------------------------------------- overload
def test_overload_gets_fast_503s_with_retry_after_and_no_request_is_lost(serve_port: int, demo_index: Path,
                                                                         text_encoder) -> None:
    from mel.entrypoints import commands
    from mel.runner import Runner
    from mel.types import Mention

    cfg = _cfg(serve_port, "ovl", **{"serve.retriever.max_ongoing_requests": 1,
                                     "serve.retriever.max_queued_requests": 1, "serve.retry_after_s": 2})
    url = commands.start_serve(cfg, str(demo_index))
    kb = [json.loads(x) for x in DEMO_KB.read_text().splitlines() if x.strip()][:20]
    bodies = [{"mentions": [{"id": e["id"], "surface": e["name"], "context": e["description"]}]} for e in kb]
    graph = Runner.load(cfg, str(demo_index), text_encoder=text_encoder)
    expected = {r.mention_id: r.entity_id for r in graph.link([Mention(e["id"], e["name"], e["description"])
                                                               for e in kb])}

    async def burst() -> list[tuple[str, httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as c:
            async def one(i: int, body: dict[str, Any]) -> tuple[str, httpx.Response, float]:
                rid = f"ovl-{i}-{time.time_ns()}"
                t = time.perf_counter()
                r = await c.post(f"{url}/v1/link", json=body, headers={"X-Request-ID": rid})
                return rid, r, time.perf_counter() - t

            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    results = asyncio.run(burst())
    codes = [r.status_code for _, r, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    for rid, r, secs in results:
        assert r.json()["request_id"] == rid  # every request got its own answer
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            body = r.json()
            assert body["deployment"] == "Retriever" and "overloaded" in body["error"], body
            assert secs < 10
        else:
            res = r.json()["results"][0]
            assert res["entity_id"] == expected[res["mention_id"]]
    # Exactly one answer per request: one ingress log line per request id.
    deadline = time.monotonic() + 30
    sent = {rid for rid, _, _ in results}
    while True:
        lines = [x["request_id"] for x in _serve_log_lines("ovl", "Ingress") if x.get("stage") == "link"
                 and x.get("request_id") in sent]
        if len(set(lines)) == len(sent) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(lines) == sorted(sent)
    from ray import serve

    serve.delete("ovl")


def test_request_past_its_timeout_gets_a_504_naming_the_stage(serve_port: int, demo_index: Path) -> None:
    from ray import serve

    from mel.entrypoints import commands

    # The retriever waits up to 2 s to fill a batch: far past the 0.3 s budget.
    cfg = _cfg(serve_port, "tmo", **{"serve.request_timeout_s": 0.3, "serve.retriever.batch_wait_timeout_s": 2.0})
    url = commands.start_serve(cfg, str(demo_index))
    t = time.perf_counter()
    r = httpx.post(f"{url}/v1/link", json=_body(_mentions()[:2]), headers={"X-Request-ID": "slow-1"}, timeout=60)
    assert r.status_code == 504, r.text
    body = r.json()
    assert "timed out after 0.3s in stage retrieve" in body["error"] and body["deployment"] == "Retriever"
    assert body["request_id"] == "slow-1" and time.perf_counter() - t < 10
    serve.delete("tmo")


# ----------------------------------------------------------------------------- index switch
def test_switch_index_without_dropping_requests(serve_port: int, demo_index: Path, text_encoder,
                                                tmp_path: Path) -> None:
    from mel.entrypoints import commands
    from pipelines.index import run_index_local

    new_entity = {"id": "demo:zorblax", "name": "Zorblax Quintessence",
                  "description": "Zorblax Quintessence is a fictional violet mineral that hums when cold.",
                  "attributes": {"instance of": "mineral"}}
    kb2 = tmp_path / "kb2.jsonl"
    kb2.write_text(DEMO_KB.read_text().rstrip("\n") + "\n" + json.dumps(new_entity) + "\n")
    cfg = _cfg(serve_port, "sw")
    index2 = run_index_local(kb2, tmp_path / "index-v2", cfg, encoder=text_encoder)

    url = commands.start_serve(cfg, str(demo_index))
    probe = {"mentions": [{"id": "z", "surface": "Zorblax Quintessence", "context": "a violet mineral that hums"}]}
    before = httpx.post(f"{url}/v1/link", json=probe, timeout=60).json()["results"][0]
    assert before["entity_id"] != "demo:zorblax"
    replica_before = httpx.get(f"{url}/healthz", timeout=30).json()["index"]["replica"]

    stop = threading.Event()
    outcomes: list[tuple[float, int, str | None]] = []
    bodies = [_body([m]) for m in _mentions()]

    def stream() -> None:
        with httpx.Client(timeout=120) as c:
            i = 0
            while not stop.is_set():
                r = c.post(f"{url}/v1/link", json=bodies[i % len(bodies)])
                outcomes.append((time.monotonic(), r.status_code,
                                 r.json()["results"][0]["entity_id"] if r.status_code == 200 else r.text))
                i += 1

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t_switch0 = time.monotonic()
    health = commands.switch_index(cfg, str(index2))
    t_switch1 = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert health["index"]["entities"] == 55 and health["index"]["index_dir"] == str(Path(index2).resolve())
    assert all(code == 200 for _, code, _ in outcomes), [o for o in outcomes if o[1] != 200][:5]
    during = [o for o in outcomes if t_switch0 <= o[0] <= t_switch1]
    assert during, "no request was answered while the index was switched"
    assert len(outcomes) >= 10
    after = httpx.post(f"{url}/v1/link", json=probe, timeout=60).json()["results"][0]
    assert after["entity_id"] == "demo:zorblax"
    assert httpx.get(f"{url}/healthz", timeout=30).json()["index"]["replica"] == replica_before  # not restarted
    from ray import serve

    serve.delete("sw")


# ----------------------------------------------------------------------------- a method declared in a test
TOY_SET = ["method=toy-lexical-rerank", "plugins=[tests.fixtures.toy_method]",
           "methods.toy-lexical-rerank.overlap_weight=0.5"]


def test_a_method_declared_only_in_a_test_gives_identical_answers_everywhere(serve_port: int, demo_index: Path,
                                                                             text_encoder, tmp_path: Path) -> None:
    """tests/fixtures/toy_method.py registers two steps and a method (through the config's ``plugins``); nothing in
    mel, pipelines or serve names it. `mel eval`, the in-process runner, `mel link` on Ray Data and the Serve app
    (its toy-lexical step on the Retriever, toy-short-names and NIL in the ingress) give the same answers."""
    from ray import serve

    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.entrypoints.cli import main
    from mel.runner import Runner

    ms = _mentions()
    report_path = tmp_path / "report.json"
    assert main(["eval", "--dataset", "demo", "--data-dir", str(REPO / "data"), "--index", str(demo_index),
                 "--per-mention", "--report", str(report_path), *sum((["--set", s] for s in TOY_SET), [])]) == 0
    report = json.loads(report_path.read_text())
    assert report["methods"] == ["toy-lexical-rerank"] and report["counts"]["mentions"] == len(ms)
    evaluated = {r["mention_id"]: r["predicted"] for r in report["per_mention"]}

    cfg = load_config(None, TOY_SET)
    runner = Runner.load(cfg, str(demo_index), text_encoder=text_encoder)
    offline = runner.link(ms)
    plain = Runner.load(load_config(None, ["method=retrieval"]), str(demo_index), text_encoder=text_encoder).link(ms)
    # the toy steps really act: they re-order some candidate lists
    assert any([c.entity_id for c in a.candidates] != [c.entity_id for c in b.candidates]
               for a, b in zip(offline, plain))
    assert all(set(r.timings_ms) == {"retrieve", "toy-lexical", "toy-short-names"} for r in offline)
    assert {r.mention_id: r.entity_id for r in offline} == evaluated

    out = tmp_path / "batch.jsonl"
    assert main(["link", "--index", str(demo_index), "--mentions", str(DEMO_MENTIONS), "--out", str(out),
                 *sum((["--set", s] for s in TOY_SET), []), "--set", "pipelines.link.batch_size=7"]) == 0
    batch = [json.loads(x) for x in out.read_text().splitlines()]

    scfg = _cfg(serve_port, "toy", **{"method": "toy-lexical-rerank", "plugins": ["tests.fixtures.toy_method"],
                                      "methods": {"toy-lexical-rerank": {"overlap_weight": 0.5}}})
    url = commands.start_serve(scfg, str(demo_index))
    try:
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["steps"] == ["retrieve", "toy-lexical", "toy-short-names", "nil"]
        r = httpx.post(f"{url}/v1/link", json=_body(ms), timeout=300)
        assert r.status_code == 200, r.text
        online = r.json()["results"]
    finally:
        serve.delete("toy")
    for e, b, o in zip(offline, batch, online, strict=True):
        assert e.mention_id == b["mention_id"] == o["mention_id"]
        assert e.entity_id == b["entity_id"] == o["entity_id"] and o["method"] == "toy-lexical-rerank"
        ids = [c.entity_id for c in e.candidates]
        assert ids == [c["entity_id"] for c in b["candidates"]] == [c["entity_id"] for c in o["candidates"]]
        assert [c["score"] for c in o["candidates"]] == pytest.approx([c.score for c in e.candidates], abs=1e-6)
