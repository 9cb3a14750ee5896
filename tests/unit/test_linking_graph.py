"""Methods as declared step lists: validation, needs read from steps (never from names), hosts and segments,
per-method settings, plugins, and the versions that decide which Serve deployments restart."""

from __future__ import annotations

from typing import ClassVar

import pytest

from mel.config import load_config
from mel.errors import ConfigError
from mel.methods import MethodSpec, method_needs, registry
from mel.steps import get_step, host_of, segments
from mel.steps.base import Step

TOY = "tests.fixtures.toy_method"


def test_builtin_methods_are_declared_step_lists() -> None:
    assert registry.get("retrieval").steps == ("retrieve", "rerank", "nil")
    assert registry.get("llm-select").steps == ("retrieve", "rerank", "select", "nil")
    assert [host_of(get_step(s)).name for s in ("retrieve", "rerank", "select", "nil")] == [
        "retriever", "retriever", "llm", "local"]


def test_needs_come_from_the_active_steps_not_the_name() -> None:
    cfg = load_config(None)
    assert method_needs(cfg, "retrieval") == {"text_encoder", "image_encoder", "index"}
    assert "llm" in method_needs(cfg, "llm-select")
    assert "llm" not in method_needs(load_config(None, ["selection.fusion_weight=0"]), "llm-select")
    assert "cross_encoder" in method_needs(load_config(None, ["retrieval.rerank.enabled=true"]), "retrieval")
    # a method with any name that declares the select step needs the LLM
    spec = MethodSpec("anything", ("retrieve", "select", "nil"))
    spec.validate()
    assert "llm" in spec.needs(cfg)


def test_declarations_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown linking step 'nope'"):
        MethodSpec("m", ("retrieve", "nope", "nil")).validate()
    with pytest.raises(ValueError, match="must end with a closing step"):
        MethodSpec("m", ("retrieve",)).validate()
    with pytest.raises(ValueError, match="lists a step twice"):
        MethodSpec("m", ("retrieve", "retrieve", "nil")).validate()
    with pytest.raises(ValueError, match="must end with a closing step"):
        MethodSpec("m", ("nil", "retrieve")).validate()
    with pytest.raises(ValueError, match="declares no steps"):
        MethodSpec("m", ()).validate()


def test_a_step_needing_parts_no_host_holds_is_refused() -> None:
    from mel.steps import register_step

    class Greedy(Step):
        name: ClassVar[str] = "greedy-test-step"
        needs = frozenset({"index", "llm"})

    with pytest.raises(ValueError, match="no host holds all of them"):
        register_step(Greedy)

    class Odd(Step):
        name: ClassVar[str] = "odd-test-step"
        needs = frozenset({"gpu-magic"})

    with pytest.raises(ValueError, match="unknown parts"):
        register_step(Odd)


def test_segments_group_consecutive_steps_by_host() -> None:
    cfg = load_config(None, ["retrieval.rerank.enabled=true"])
    segs = segments(registry.get("llm-select").active_steps(cfg))
    assert [(h.name, [s.name for s in ss]) for h, ss in segs] == [
        ("retriever", ["retrieve", "rerank"]), ("llm", ["select"]), ("local", ["nil"])]


def test_plugins_register_methods_and_settings_are_validated() -> None:
    from mel.runner import Runner

    registry.load_plugins([TOY])
    spec = registry.get("toy-lexical-rerank")
    cfg = load_config(None, {"method": "toy-lexical-rerank", "methods": {"toy-lexical-rerank": {"overlap_weight": 2}}})
    assert spec.method_settings(cfg).overlap_weight == 2
    bad = load_config(None, {"method": "toy-lexical-rerank", "methods": {"toy-lexical-rerank": {"overlap": 1}}})
    with pytest.raises(ConfigError, match="methods.toy-lexical-rerank.overlap"):
        Runner(bad, None)  # type: ignore[arg-type]  # refused before any part is touched
    with pytest.raises(ConfigError, match="takes no settings"):
        registry.get("retrieval").method_settings(load_config(None, {"methods": {"retrieval": {"x": 1}}}))
    with pytest.raises(ConfigError, match="plugins: cannot import 'no.such.module'"):
        registry.load_plugins(["no.such.module"])


# ----------------------------------------------------------------------------- deployment versions
def _versions(overrides: list[str]) -> dict[str, str]:
    from serve.app import host_version, plan

    cfg = load_config(None, overrides)
    return {h.name: host_version(cfg, h, steps) for h, steps in plan(cfg)}


def test_a_host_restarts_only_for_its_own_settings_and_step_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import serve.app as app

    base = _versions([])
    assert set(base) == {"retriever", "llm"}
    # unrelated to either host: neither restarts
    assert _versions(["nil.threshold=0.3", "serve.ingress.num_cpus=0.2", "pipelines.link.batch_size=9"]) == base
    # the selector's settings restart the LLM host only; retrieval settings the retriever only
    sel = _versions(["selection.candidates=3"])
    assert sel["retriever"] == base["retriever"] and sel["llm"] != base["llm"]
    ret = _versions(["retrieval.top_k=7"])
    assert ret["retriever"] != base["retriever"] and ret["llm"] == base["llm"]
    llm_model = _versions(["models.llm.kv_cache_gb=2"])
    assert llm_model["retriever"] == base["retriever"] and llm_model["llm"] != base["llm"]
    srv = _versions(["serve.retriever.max_batch_size=4"])
    assert srv["retriever"] != base["retriever"] and srv["llm"] == base["llm"]
    # changing the code of a step restarts the host running it, and only that one
    real = app._module_source

    def edited(name: str) -> bytes:
        return real(name) + (b"# edited" if name == "mel.stages.select" else b"")

    monkeypatch.setattr(app, "_module_source", edited)
    code = _versions([])
    assert code["retriever"] == base["retriever"] and code["llm"] != base["llm"]


def test_unimel_is_declared_and_its_default_adapter_is_checked() -> None:
    spec = registry.get("unimel")
    assert spec.steps == ("describe", "retrieve", "rerank", "select", "nil")
    assert [c.name for c in spec.active_steps(load_config(None, {"method": "unimel"}))][0] != "describe"
    described = load_config(None, {"method": "unimel", "augment.mentions.enabled": True})
    assert [c.name for c in spec.active_steps(described)][0] == "describe"
    cfg = load_config(None, {"method": "unimel", "selection.adapters": {"rp": "/a", "wiki": "/b"},
                             "selection.lora_adapter": "wiki"})
    assert spec.default_adapter(cfg) == "wiki"
    cfg.methods["unimel"] = {"adapter": "rp"}
    assert spec.default_adapter(cfg) == "rp"
    cfg.methods["unimel"] = {"adapter": "nope"}
    with pytest.raises(ConfigError, match="default adapter 'nope' of method 'unimel' is not in selection.adapters"):
        spec.default_adapter(cfg)
    assert registry.get("llm-select").default_adapter(load_config(None)) is None


def test_an_adapter_trained_for_another_kb_is_refused(tmp_path) -> None:  # noqa: ANN001
    import json

    from mel.errors import ArtifactMismatch
    from mel.llm.adapters import ADAPTER_META, check_adapters_for_index

    a = tmp_path / "a"
    a.mkdir()
    (a / ADAPTER_META).write_text(json.dumps({"kb_hash": "kb-1"}))
    b = tmp_path / "b"
    b.mkdir()  # made by hand: no manifest, nothing to check
    check_adapters_for_index({"a": str(a), "b": str(b)}, "kb-1")
    with pytest.raises(ArtifactMismatch, match="adapter 'a' .* trained for KB kb-1, but the index .* serves KB kb-2"):
        check_adapters_for_index({"a": str(a)}, "kb-2", index_dir="/idx")
