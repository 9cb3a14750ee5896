"""Selection and NIL stages with a fake engine (unit tests only; the real engine is tested in integration)."""

from __future__ import annotations

from mel.config import SelectionConfig
from mel.llm.base import Choice
from mel.stages.nil import finalize
from mel.stages.select import LLMSelector, build_prompt
from mel.types import Candidate, Mention


class ScriptedEngine:
    """Returns a fixed distribution over letters; records prompts."""

    id = "scripted"

    def __init__(self, probs: dict[str, float]) -> None:
        self.probs = probs
        self.seen: list[tuple[str, list[str]]] = []

    def choose(self, prompts, choices, lora=None):  # noqa: ANN001, ANN201
        self.seen.extend(zip(prompts, choices))
        out = []
        for ch in choices:
            p = {c: self.probs.get(c, 0.0) for c in ch}
            best = max(p, key=p.get)
            out.append(Choice(best, 0.0, p))
        return out


def _cands() -> list[Candidate]:
    return [Candidate(f"Q{i}", f"Name{i}", 0.9 - 0.1 * i, {"retrieval": 0.9 - 0.1 * i}) for i in range(4)]


def test_prompt_lists_options_with_letters() -> None:
    p = build_prompt(Mention("m", "Jaguar", "the car maker"), [("Jaguar Cars", "British maker"), ("Jaguar", "cat")],
                     50)
    assert "Mention: Jaguar" in p and "A. Jaguar Cars -- British maker" in p and "B. Jaguar -- cat" in p


def test_selector_fuses_llm_probability_and_reorders() -> None:
    eng = ScriptedEngine({"C": 0.9, "A": 0.1})
    sel = LLMSelector(eng, SelectionConfig(candidates=3, fusion_weight=0.5), lambda e: f"text of {e}")
    out = sel.select([Mention("m", "x")], [_cands()])[0]
    assert out[0].entity_id == "Q2"  # 0.5*0.7 + 0.5*0.9 = 0.8 > 0.5*0.9 + 0.5*0.1 = 0.5
    assert out[0].scores["llm"] == 0.9 and "final" in out[0].scores
    assert eng.seen[0][1] == ["A", "B", "C"]  # only the head is shown
    assert "llm" not in next(c for c in out if c.entity_id == "Q3").scores


def test_selector_weight_zero_keeps_retrieval_order_without_calling_the_engine() -> None:
    eng = ScriptedEngine({"D": 1.0})
    sel = LLMSelector(eng, SelectionConfig(candidates=4, fusion_weight=0.0), lambda e: "")
    out = sel.select([Mention("a", "x")], [_cands()])
    assert [c.entity_id for c in out[0]] == ["Q0", "Q1", "Q2", "Q3"]
    assert eng.seen == []


def test_selector_skips_lists_with_one_candidate() -> None:
    eng = ScriptedEngine({"A": 1.0})
    sel = LLMSelector(eng, SelectionConfig(candidates=4, fusion_weight=0.5), lambda e: "")
    out = sel.select([Mention("a", "x"), Mention("b", "y")], [_cands(), _cands()[:1]])
    assert out[1][0].entity_id == "Q0" and len(eng.seen) == 1


def test_nil_threshold() -> None:
    m = Mention("m", "x")
    assert finalize(m, _cands(), threshold=None, method="t").entity_id == "Q0"
    r = finalize(m, _cands(), threshold=0.95, method="t")
    assert r.is_nil and r.entity_id is None and r.candidates
    assert finalize(m, [], threshold=None, method="t").is_nil
    assert r.to_dict()["nil"] is True


def test_fuse_and_weight_zero_needs_no_engine() -> None:
    from mel.config import load_config
    from mel.methods import method_needs
    from mel.stages.select import fuse

    def needs_llm(cfg) -> bool:  # noqa: ANN001
        return "llm" in method_needs(cfg)

    assert fuse(0.8, 0.2, 0.25) == 0.75 * 0.8 + 0.25 * 0.2
    assert needs_llm(load_config(None, ["method=llm-select"]))
    assert not needs_llm(load_config(None, ["method=llm-select", "selection.fusion_weight=0"]))
    assert not needs_llm(load_config(None, ["method=llm-select", "selection.enabled=false"]))
    assert not needs_llm(load_config(None, ["method=retrieval"]))
