"""``llm-select``: retrieval, [cross-encoder re-ranking,] then an LLM picks among the top candidates as multiple
choice, fused with the incoming score (``selection``)."""

from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec

register_method(MethodSpec(
    "llm-select", ("retrieve", "rerank", "select", "nil"),
    "retrieval (+ re-ranking), then the LLM picks one candidate as multiple choice, fused with retrieval",
    score="(1 - w) x the incoming (re-ranked or retrieval) score + w x the LLM probability of the chosen option"))
