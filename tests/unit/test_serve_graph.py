"""The graph's steps (shared by Serve and `mel link`) and the ingress' answers, with test doubles (no Ray cluster).

The fake encoder and engine are unit-test doubles; the real parts run in tests/integration/test_serve_*.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mel.config import Config, load_config
from mel.encoders.fake import HashingTextEncoder
from mel.llm.fake import FakeLLMEngine
from mel.methods.base import Components, Linker
from mel.types import Candidate, Mention
from serve.linking import LocalGraph, Retrieved, RetrieveStep, finish
from tests.conftest import REPO
from tests.unit.test_serve_telemetry import FakeRegistry

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"
MENTIONS = REPO / "data" / "demo" / "mentions.jsonl"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.index import run_index_local

    out = tmp_path_factory.mktemp("graph") / "index"
    return run_index_local(DEMO_KB, out, load_config(None), HashingTextEncoder(dim=64))


def _parts(index_dir: Path, engine: Any = None) -> Components:
    from mel.index.artifact import IndexArtifact

    return Components(IndexArtifact.load(index_dir), HashingTextEncoder(dim=64), None, engine)


def _mentions() -> list[Mention]:
    from mel.mentions import read_mentions

    return list(read_mentions(MENTIONS))


@pytest.mark.parametrize("method,rerank", [("retrieval", False), ("llm-select", False), ("llm-select", True)])
def test_local_graph_answers_like_the_method_linker(index_dir: Path, method: str, rerank: bool) -> None:
    from mel.methods import registry
    from mel.rerank.fake import FakeCrossEncoder

    cfg = load_config(None, {"method": method, "selection.fusion_weight": 0.5, "retrieval.top_k": 8,
                             "retrieval.rerank.enabled": rerank, "retrieval.rerank.candidates": 6})
    parts = _parts(index_dir, FakeLLMEngine())
    if rerank:
        parts.cross_encoder = FakeCrossEncoder()
    linker: Linker = registry.get(method)(cfg, parts)
    graph = LocalGraph(cfg, parts)
    assert (graph.select_step is not None) == (method == "llm-select")
    ms = _mentions()
    expected, got = linker.link(ms), graph.link(ms)
    assert len(got) == len(ms)
    for e, g in zip(expected, got):
        assert g.mention_id == e.mention_id and g.entity_id == e.entity_id and g.method == method
        assert [c.entity_id for c in g.candidates] == [c.entity_id for c in e.candidates]
        assert [c.score for c in g.candidates] == pytest.approx([c.score for c in e.candidates], abs=1e-9)
        assert set(g.timings_ms) == set(e.timings_ms)
    if method == "llm-select":
        assert any("llm" in c.scores for r in got for c in r.candidates)
    assert (graph.retrieve_step.reranker is not None) == rerank
    assert all(("rerank" in r.timings_ms) == rerank for r in got)
    if rerank:
        assert any("rerank" in c.scores for r in got for c in r.candidates)


def test_retrieve_step_fetches_at_least_top_k_and_finish_cuts_to_k(index_dir: Path) -> None:
    cfg = load_config(None, {"retrieval.top_k": 6, "nil.threshold": 0.99})
    step = RetrieveStep(cfg, _parts(index_dir))
    assert step.pool(None) == 6 and step.pool(3) == 6 and step.pool(9) == 9
    m = _mentions()[0]
    (r,), ms = step.run([m], [None], 3)
    assert len(r.candidates) == 6 and set(ms) == {"retrieve"}
    assert list(r.texts) == [c.entity_id for c in r.candidates[: cfg.selection.candidates]]
    res = finish(m, r.candidates, k=3, cfg=cfg, method="retrieval", timings_ms={})
    assert len(res.candidates) == 3
    assert res.entity_id is None  # NIL decided on the top score (< 0.99), before cutting


def test_local_graph_refuses_a_method_the_graph_cannot_run(index_dir: Path) -> None:
    from mel.errors import ConfigError
    from serve.linking import check_graph_method

    check_graph_method("retrieval")
    with pytest.raises(ConfigError, match="cannot run on the linking graph"):
        check_graph_method("something-else")
    with pytest.raises(ValueError, match="needs an LLM engine"):
        LocalGraph(load_config(None, {"method": "llm-select"}), _parts(index_dir))


# ----------------------------------------------------------------------------- ingress
class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class FakeRetriever:
    """Stands in for the Retriever deployment's handle: ``retrieve.remote(...)`` is awaitable."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.request_ids: list[str] = []
        self.retrieve = _Method(self._retrieve)
        self.info = _Method(self._info)

    async def _info(self) -> dict[str, Any]:
        return {"entities": 3}

    async def _retrieve(self, mentions: list[Mention], images: list[Any], k: int, rid: str) -> Any:
        from ray.serve.exceptions import BackPressureError

        self.request_ids.append(rid)
        if self.behaviour == "overloaded":
            raise BackPressureError(num_queued_requests=1, max_queued_requests=1)
        if self.behaviour == "slow":
            await asyncio.sleep(5)
        cands = [Candidate(f"Q{i}", f"E{i}", 1.0 - 0.1 * i, {"retrieval": 1.0 - 0.1 * i}) for i in range(10)]
        return [Retrieved(list(cands), {}) for _ in mentions], {"retrieve": 1.5}, [len(mentions)]


class FakeSelector:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.select = _Method(self._select)

    async def _select(self, mentions: list[Mention], retrieved: list[Retrieved], adapter: str | None,
                      rid: str) -> Any:
        if self.fail:
            raise RuntimeError("engine exploded")
        return [list(reversed(r.candidates)) for r in retrieved], 2.0, [len(mentions)]


def _request(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from starlette.requests import Request

    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/link", "headers": hdrs, "query_string": b""}
    return Request(scope, receive)


def _ingress(cfg: Config, retriever: Any, selector: Any = None) -> tuple[Any, FakeRegistry]:
    from serve.ingress import Ingress
    from serve.telemetry import StageMetrics

    reg = FakeRegistry()
    return Ingress(cfg.model_dump(mode="json"), retriever, selector, StageMetrics("link", cfg.method, reg)), reg


def _call(ingress: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    resp = asyncio.run(ingress.link(_request(body, headers)))
    return resp.status_code, json.loads(resp.body), resp.headers


def test_ingress_answers_with_request_id_timings_and_cut_candidates() -> None:
    cfg = load_config(None, {"method": "llm-select", "retrieval.top_k": 5})
    retr = FakeRetriever()
    ing, reg = _ingress(cfg, retr, FakeSelector())
    status, body, _ = _call(ing, {"mentions": [{"surface": "a"}, {"surface": "b"}], "top_k": 3},
                            {"X-Request-ID": "client-42"})
    assert status == 200, body
    assert body["request_id"] == "client-42" and retr.request_ids == ["client-42"]
    r0 = body["results"][0]
    assert [c["entity_id"] for c in r0["candidates"]] == ["Q9", "Q8", "Q7"]  # selector's order, cut to top_k
    assert {"retrieve", "retrieve_hop", "select", "select_hop", "total"} <= set(r0["timings_ms"])
    assert reg.values("mel_stage_candidates") == [(3.0, {"stage": "link", "method": "llm-select"})] * 2
    assert reg.values("mel_stage_errors") == []


def test_ingress_answers_503_with_retry_after_naming_the_full_deployment() -> None:
    cfg = load_config(None, {"method": "retrieval", "serve.retry_after_s": 2.5})
    ing, reg = _ingress(cfg, FakeRetriever("overloaded"))
    status, body, headers = _call(ing, {"mentions": [{"surface": "a"}]}, {"X-Request-ID": "r-1"})
    assert status == 503
    assert headers["retry-after"] == "3"
    assert body["deployment"] == "Retriever" and "overloaded" in body["error"] and body["request_id"] == "r-1"
    assert [t["error"] for _, t in reg.values("mel_stage_errors")] == ["overloaded"]


def test_ingress_answers_504_naming_the_stage_on_timeout() -> None:
    cfg = load_config(None, {"method": "retrieval", "serve.request_timeout_s": 0.2})
    ing, reg = _ingress(cfg, FakeRetriever("slow"))
    status, body, _ = _call(ing, {"mentions": [{"surface": "a"}]})
    assert status == 504
    assert "timed out after 0.2s in stage retrieve" in body["error"] and body["deployment"] == "Retriever"
    assert body["request_id"]  # one was made
    assert [t["error"] for _, t in reg.values("mel_stage_errors")] == ["timeout"]


def test_ingress_answers_500_naming_a_failing_stage() -> None:
    cfg = load_config(None, {"method": "llm-select"})
    ing, _ = _ingress(cfg, FakeRetriever(), FakeSelector(fail=True))
    status, body, _ = _call(ing, {"mentions": [{"surface": "a"}]})
    assert status == 500 and body["deployment"] == "Selector"
    assert "engine exploded" in " ".join(body["details"])


def test_ingress_refuses_an_invalid_request_id() -> None:
    cfg = load_config(None, {"method": "retrieval"})
    retr = FakeRetriever()
    ing, _ = _ingress(cfg, retr)
    status, body, _ = _call(ing, {"mentions": [{"surface": "a"}]}, {"X-Request-ID": "x" * 129})
    assert status == 400 and "X-Request-ID" in body["error"] and body["request_id"] is None
    assert retr.request_ids == []
