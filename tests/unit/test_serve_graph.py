"""The declared linking graph without a Ray cluster: the in-process runner, the ingress walking the same steps
over in-process host handles (same answers), and the ingress' error answers, with test doubles.

The fake encoder and engine are unit-test doubles; the real parts run in tests/integration/test_serve_*.py.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from mel.config import Config, load_config
from mel.parts import Parts
from mel.runner import Runner, run_steps
from mel.steps.base import MentionState
from mel.types import Candidate, Mention
from tests.conftest import REPO
from tests.doubles.encoders import HashingTextEncoder
from tests.doubles.llm import FakeLLMEngine
from tests.unit.test_serve_telemetry import FakeRegistry

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"
MENTIONS = REPO / "data" / "demo" / "mentions.jsonl"
TOY = "tests.fixtures.toy_method"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.index import run_index_local

    out = tmp_path_factory.mktemp("graph") / "index"
    return run_index_local(DEMO_KB, out, load_config(None), HashingTextEncoder(dim=64))


def _parts(index_dir: Path, engine: Any = None) -> Parts:
    from mel.index.artifact import IndexArtifact

    return Parts(IndexArtifact.load(index_dir), HashingTextEncoder(dim=64), None, engine)


def _mentions() -> list[Mention]:
    from mel.mentions import read_mentions

    return list(read_mentions(MENTIONS))


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class InProcessHost:
    """Stands in for a host deployment's handle: runs the named steps built from ``parts`` on copies of the states
    (pickled, as Serve would send them), like :class:`serve.deployments.HostDeployment` does."""

    def __init__(self, cfg: Config, parts: Parts, names: list[str]) -> None:
        from mel.steps import get_step

        self.steps = {n: get_step(n)(cfg, parts) for n in names}
        self.run = _Method(self._run)
        self.info = _Method(self._info)
        self.calls: list[list[str]] = []

    async def _info(self) -> dict[str, Any]:
        return {"entities": 54}

    async def _run(self, states: list[MentionState], names: list[str], rid: str) -> Any:
        self.calls.append(list(names))
        states = pickle.loads(pickle.dumps(states))
        t0 = time.perf_counter()
        states = run_steps([self.steps[n] for n in names], states)
        return pickle.loads(pickle.dumps(states)), 1000 * (time.perf_counter() - t0), [len(states)]


def _in_process_handles(cfg: Config, parts: Parts) -> dict[str, InProcessHost]:
    from serve.app import plan

    return {h.name: InProcessHost(cfg, parts, [c.name for c in steps]) for h, steps in plan(cfg)}


CASES = [
    ({"method": "retrieval"}, {"retrieve"}),
    ({"method": "llm-select"}, {"retrieve", "select"}),
    ({"method": "llm-select", "retrieval.rerank.enabled": True, "retrieval.rerank.candidates": 6},
     {"retrieve", "rerank", "select"}),
    ({"method": "toy-lexical-rerank", "plugins": [TOY], "methods": {"toy-lexical-rerank": {"overlap_weight": 0.5}}},
     {"retrieve", "toy-lexical", "toy-short-names"}),
    ({"method": "unimel", "augment.mentions.enabled": True, "retrieval.rerank.enabled": True},
     {"describe", "retrieve", "rerank", "select"}),
]


@pytest.mark.parametrize("overrides,timed", CASES,
                         ids=["retrieval", "llm-select", "llm-select+rerank", "toy", "unimel+describe"])
def test_ingress_walks_the_declared_steps_with_the_runners_answers(index_dir: Path, overrides: dict[str, Any],
                                                                   timed: set[str]) -> None:
    from tests.doubles.rerank import FakeCrossEncoder

    cfg = load_config(None, {"selection.fusion_weight": 0.5, "retrieval.top_k": 8, **overrides})
    parts = _parts(index_dir, FakeLLMEngine())
    parts.cross_encoder = FakeCrossEncoder()
    runner = Runner(cfg, parts)
    assert runner.step_names == [s for s in ("describe", "retrieve", "rerank", "toy-lexical", "toy-short-names",
                                             "select", "nil") if s in timed or s == "nil"]
    ms = _mentions()
    offline = runner.link(ms)
    assert len(offline) == len(ms)
    assert all(r.method == cfg.method and set(r.timings_ms) == timed for r in offline)
    if "select" in timed:
        assert any("llm" in c.scores for r in offline for c in r.candidates)
    if "rerank" in timed:
        assert any("rerank" in c.scores for r in offline for c in r.candidates)

    handles = _in_process_handles(cfg, parts)
    ing, _ = _ingress(cfg, handles)
    status, body, _ = _call(ing, {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context}
                                               for m in ms]})
    assert status == 200, body
    online = body["results"]
    for e, g in zip(offline, online, strict=True):
        assert g["mention_id"] == e.mention_id and g["entity_id"] == e.entity_id and g["method"] == cfg.method
        assert [c["entity_id"] for c in g["candidates"]] == [c.entity_id for c in e.candidates]
        assert [c["score"] for c in g["candidates"]] == pytest.approx([c.score for c in e.candidates], abs=1e-9)
        assert timed <= set(g["timings_ms"]) and "total" in g["timings_ms"]
        assert g.get("description") == e.description and (e.description is not None) == ("describe" in timed)
    # consecutive steps of one host go in one call; local steps (NIL, toy-short-names) run in the ingress
    assert handles["retriever"].calls[0] == [s for s in ("retrieve", "rerank", "toy-lexical") if s in timed]


def test_retrieve_step_fetches_at_least_top_k_and_nil_cuts_to_k(index_dir: Path) -> None:
    from mel.steps import get_step

    cfg = load_config(None, {"retrieval.top_k": 6, "nil.threshold": 0.99})
    parts = _parts(index_dir)
    step = get_step("retrieve")(cfg, parts)
    assert step.pool(None) == 6 and step.pool(3) == 6 and step.pool(9) == 9
    m = _mentions()[0]
    (st,) = run_steps([step], [MentionState(m, k=3)])
    assert len(st.candidates) == 6 and set(st.timings_ms) == {"retrieve"}
    assert list(st.texts) == [c.entity_id for c in st.candidates]
    (st,) = run_steps([get_step("nil")(cfg, parts)], [st])
    assert len(st.result.candidates) == 3
    assert st.result.entity_id is None  # NIL decided on the top score (< 0.99), before cutting


def test_runner_refuses_missing_parts_and_unknown_methods(index_dir: Path) -> None:
    from mel.errors import ConfigError

    with pytest.raises(ValueError, match="needs the llm part"):
        Runner(load_config(None, {"method": "llm-select"}), _parts(index_dir))
    with pytest.raises(ConfigError, match="unknown linking method 'something-else'"):
        Runner(load_config(None, {"method": "something-else"}), _parts(index_dir))


# ----------------------------------------------------------------------------- ingress
class FakeRetriever:
    """Stands in for the Retriever deployment's handle: ``retrieve.remote(...)`` is awaitable."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.request_ids: list[str] = []
        self.run = _Method(self._run)
        self.info = _Method(self._info)

    async def _info(self) -> dict[str, Any]:
        return {"entities": 3}

    async def _run(self, states: list[MentionState], names: list[str], rid: str) -> Any:
        from ray.serve.exceptions import BackPressureError

        self.request_ids.append(rid)
        if self.behaviour == "overloaded":
            raise BackPressureError(num_queued_requests=1, max_queued_requests=1)
        if self.behaviour == "slow":
            await asyncio.sleep(5)
        cands = [Candidate(f"Q{i}", f"E{i}", 1.0 - 0.1 * i, {"retrieval": 1.0 - 0.1 * i}) for i in range(10)]
        for s in states:
            s.candidates = list(cands)
            s.timings_ms["retrieve"] = 1.5
        return states, 1.5, [len(states)]


class FakeSelector:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.run = _Method(self._run)

    async def _run(self, states: list[MentionState], names: list[str], rid: str) -> Any:
        if self.fail:
            raise RuntimeError("engine exploded")
        for s in states:
            s.candidates = list(reversed(s.candidates))
            s.timings_ms["select"] = 2.0
        return states, 2.0, [len(states)]


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
    """The ingress over host handles: a dict (host name -> handle), or a retriever and optional LLM handle."""
    from serve.ingress import Ingress
    from serve.telemetry import StageMetrics

    handles = retriever if isinstance(retriever, dict) else {"retriever": retriever}
    if selector is not None:
        handles["llm"] = selector
    reg = FakeRegistry()
    return Ingress(cfg.model_dump(mode="json"), handles, StageMetrics("link", cfg.method, reg)), reg


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


def test_ingress_answers_404_naming_the_known_adapters() -> None:
    cfg = load_config(None, {"method": "llm-select", "selection.adapters": {"rp": "/x"}})
    retr = FakeRetriever()
    ing, _ = _ingress(cfg, retr, FakeSelector())
    status, body, _ = _call(ing, {"mentions": [{"surface": "a"}], "adapter": "wiki"})
    assert status == 404 and "unknown adapter 'wiki'" in body["error"] and "rp" in body["error"]
    assert retr.request_ids == []


class RoutedSelector(FakeSelector):
    """A Selector handle recording the multiplexed model id each call was routed with (``options``)."""

    def __init__(self) -> None:
        super().__init__()
        self.routed: list[str | None] = []
        self._id: str | None = None

    def options(self, multiplexed_model_id: str) -> RoutedSelector:
        routed = RoutedSelector()
        routed.routed, routed._id = self.routed, multiplexed_model_id
        return routed

    async def _run(self, states: list[MentionState], names: list[str], rid: str) -> Any:
        self.routed.append(self._id)
        assert self._id is None or all(s.adapter == self._id for s in states)
        return await super()._run(states, names, rid)


@pytest.mark.parametrize(("overrides", "routed"), [
    ({}, ["rp", "wiki", "wiki"]),  # request's adapter, else the method's default
    ({"serve.selector.multiplex_adapters": False}, [None, None, None]),
    ({"selection.merge_adapters": True}, [None, None, None]),  # every replica holds every merged adapter
])
def test_ingress_routes_a_request_to_its_adapter_as_a_multiplexed_model(overrides: dict, routed: list) -> None:
    from mel.config import adapters_multiplexed

    cfg = load_config(None, {"method": "unimel", "retrieval.rerank.enabled": False, "selection.adapters":
                             {"rp": "/a", "wiki": "/b"}, "methods.unimel.adapter": "wiki", **overrides})
    assert adapters_multiplexed(cfg) == (routed[0] is not None)
    sel = RoutedSelector()
    ing, _ = _ingress(cfg, FakeRetriever(), sel)
    for body in ({"mentions": [{"surface": "a"}], "adapter": "rp"}, {"mentions": [{"surface": "a"}]},
                 {"mentions": [{"surface": "a"}, {"surface": "b"}], "adapter": "wiki"}):
        status, out, _ = _call(ing, body)
        assert status == 200, out
    assert sel.routed == routed
    assert not adapters_multiplexed(load_config(None, {"method": "unimel"}))  # no adapters: nothing to route


def test_a_replica_lists_the_adapters_it_holds_until_serve_drops_them() -> None:
    from serve.deployments import _HeldAdapter

    held: list[str] = []
    a, b = _HeldAdapter("rp", held), _HeldAdapter("wiki", held)
    assert held == ["rp", "wiki"]
    a.__del__()  # Serve's multiplexing calls it when it drops the least recently used adapter
    assert held == ["wiki"]
    again = _HeldAdapter("rp", held)  # loaded again later
    a.__del__()  # the garbage collector calls the dropped one's __del__ again: the reloaded one stays listed
    assert held == ["wiki", "rp"] and b.name == "wiki" and again.name == "rp"


def test_select_step_uses_an_adapters_merged_engine_and_lora_otherwise(index_dir: Path) -> None:
    from mel.steps import get_step

    cfg = load_config(None, {"method": "llm-select", "selection.adapters": {"rp": "/rp", "wiki": "/wiki"}})
    base, merged = FakeLLMEngine(), FakeLLMEngine()
    parts = _parts(index_dir, base)
    parts.adapter_engines = {"rp": merged}
    runner = Runner(cfg, parts)
    ms = _mentions()[:4]
    runner.link(ms, adapter="rp")
    assert merged.calls == [("choose", 4, None)] and base.calls == []  # merged: no per-request LoRA
    runner.link(ms, adapter="wiki")
    runner.link(ms)
    assert base.calls == [("choose", 4, "wiki"), ("choose", 4, None)]
    assert get_step("select").needs == frozenset({"llm"})


def test_merged_engines_are_built_once_per_adapter_from_a_cached_merge(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import mel.llm as llm
    import mel.models.sources as sources

    built: list[tuple[str, bool]] = []
    merged: list[str] = []
    monkeypatch.setattr(sources, "resolve_model", lambda model, kind, cache_dir: "/base")
    monkeypatch.setattr(llm, "merged_adapter_dir", lambda base, path, cache, dtype: merged.append(path) or
                        f"{cache}/merged-{path.strip('/')}")
    monkeypatch.setattr(llm, "build_llm_engine", lambda cfg, cache=None: built.append((cfg.model, cfg.enable_lora))
                        or FakeLLMEngine())
    cfg = load_config(None, {"selection.adapters": {"rp": "/rp", "wiki": "/wiki"}})
    engines = llm.build_merged_engines(cfg.models.llm, cfg.selection.adapters, str(tmp_path))
    assert sorted(engines) == ["rp", "wiki"] and merged == ["/rp", "/wiki"]
    assert built == [(f"{tmp_path}/merged-rp", False), (f"{tmp_path}/merged-wiki", False)]


def test_merged_adapter_folder_is_cached_by_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mel.train.lora as lora
    from mel.llm import merged_adapter_dir

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    calls: list[str] = []

    def fake_merge(base_dir: str, adapter_dir: str, out_dir: str, **kw: Any) -> str:
        calls.append(out_dir)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(lora, "merge_lora_adapter", fake_merge)
    cache = str(tmp_path / "cache")
    a = merged_adapter_dir(str(base), str(adapter), cache, "bfloat16")
    assert merged_adapter_dir(str(base), str(adapter), cache, "bfloat16") == a and len(calls) == 1
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")  # retrained: a new merge
    b = merged_adapter_dir(str(base), str(adapter), cache, "bfloat16")
    assert b != a and len(calls) == 2
