"""The steps of the linking graph as plain classes, shared by the Serve deployments and by ``mel link``.

The Retriever deployment runs :class:`RetrieveStep` on each ``@serve.batch``, the Selector deployment runs
:class:`SelectStep`, and the ingress closes each mention with :func:`finish`. ``mel link`` (``pipelines/link.py``)
runs the same three in-process through :class:`LocalGraph`, so batch and online answers for the same mention are the
same (up to the float noise of a different batch composition in the encoder).

The steps are the ``mel`` stages: ``Retriever.retrieve`` -> [``Reranker.rerank``] -> [``LLMSelector.select``] ->
``finalize``, composed as :class:`mel.methods.base.Linker` composes them. Retrieval always fetches the configured
``retrieval.top_k`` (more when a request asks for more), so a request's ``top_k`` only cuts the answer short and
never changes what the later stages see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mel.config import Config
from mel.errors import ConfigError
from mel.stages.nil import finalize
from mel.types import Candidate, LinkResult, Mention

if TYPE_CHECKING:
    from mel.index.artifact import IndexArtifact
    from mel.llm.base import LLMEngine
    from mel.methods.base import Components

# Methods whose stages the graph composes (retrieve [-> rerank] [-> select]).
GRAPH_METHODS = ("retrieval", "llm-select")


def check_graph_method(name: str) -> None:
    if name not in GRAPH_METHODS:
        raise ConfigError(f"method {name!r} cannot run on the linking graph (Serve / `mel link`); "
                          f"supported: {', '.join(GRAPH_METHODS)}")


def uses_selector(cfg: Config, method: str | None = None) -> bool:
    """True when the method of ``cfg`` (or ``method``) runs the LLM selector (decided like ``build_linker``)."""
    from mel.methods import needs_llm

    name = method or cfg.method
    check_graph_method(name)
    return needs_llm(cfg, name)


@dataclass
class Retrieved:
    """What retrieval hands on for one mention: its candidates, best first, and the texts of the head (the
    options the selector shows the LLM)."""

    candidates: list[Candidate]
    texts: dict[str, str] = field(default_factory=dict)


class RetrieveStep:
    """Text (and image) retrieval, then cross-encoder re-ranking when ``retrieval.rerank`` is on, for a batch."""

    def __init__(self, cfg: Config, parts: Components) -> None:
        from mel.methods.base import build_reranker
        from mel.stages.retrieve import Retriever

        self.cfg = cfg
        self.index: IndexArtifact = parts.index
        self.retriever = Retriever(parts.index, parts.text_encoder, cfg.retrieval, parts.image_encoder)
        self.reranker = build_reranker(cfg, parts)
        self.head = cfg.selection.candidates

    def pool(self, k: int | None) -> int:
        """Candidates fetched for a request asking for ``k``: the configured top_k, or ``k`` when larger."""
        return max(k or 0, self.cfg.retrieval.top_k)

    def run(self, mentions: list[Mention], images: list[Any], k: int | None = None) -> tuple[list[Retrieved],
                                                                                             dict[str, float]]:
        """Candidates for each mention (``images[i]``: a PIL image or None), and the time the batch took in each
        stage (ms, for the whole batch)."""
        if not mentions:
            return [], {}
        t0 = time.perf_counter()
        cands = self.retriever.retrieve(mentions, list(images), k=self.pool(k))
        t1 = time.perf_counter()
        timings = {"retrieve": 1000 * (t1 - t0)}
        if self.reranker is not None:
            cands = self.reranker.rerank(mentions, cands)
            timings["rerank"] = 1000 * (time.perf_counter() - t1)
        out = [Retrieved(c, {x.entity_id: self.index.text(x.entity_id) for x in c[: self.head]}) for c in cands]
        return out, timings


class SelectStep:
    """The LLM multiple-choice selector over a batch; mentions are grouped by LoRA adapter (None: base model)."""

    def __init__(self, cfg: Config, engine: LLMEngine) -> None:
        self.cfg = cfg
        self.engine = engine

    def run(self, mentions: list[Mention], retrieved: list[Retrieved],
            adapters: list[str | None]) -> list[list[Candidate]]:
        from mel.llm.base import LoRASpec
        from mel.stages.select import LLMSelector

        texts: dict[str, str] = {}
        for r in retrieved:
            texts.update(r.texts)
        selector = LLMSelector(self.engine, self.cfg.selection, lambda eid: texts.get(eid, ""))
        out: list[list[Candidate]] = [[] for _ in mentions]
        by_adapter: dict[str | None, list[int]] = {}
        for i, name in enumerate(adapters):
            by_adapter.setdefault(name, []).append(i)
        for name, idx in by_adapter.items():
            lora = LoRASpec(name, self.cfg.selection.adapters[name]) if name else None
            res = selector.select([mentions[i] for i in idx], [retrieved[i].candidates for i in idx], lora=lora)
            for i, r in zip(idx, res):
                out[i] = r
        return out


def finish(mention: Mention, candidates: list[Candidate], *, k: int | None, cfg: Config, method: str,
           timings_ms: dict[str, float]) -> LinkResult:
    """The NIL decision on the full list, then the answer cut to ``k`` candidates (None: the configured top_k)."""
    res = finalize(mention, candidates, threshold=cfg.nil.threshold, method=method, timings_ms=timings_ms)
    res.candidates = res.candidates[: k or cfg.retrieval.top_k]
    return res


class LocalGraph:
    """The graph's steps in one process (``mel link``): the same code the deployments run, without Serve."""

    def __init__(self, cfg: Config, parts: Components, *, method: str | None = None) -> None:
        self.cfg = cfg
        self.method = method or cfg.method
        self.retrieve_step = RetrieveStep(cfg, parts)
        self.select_step: SelectStep | None = None
        if uses_selector(cfg, self.method):
            if parts.engine is None:
                raise ValueError(f"method {self.method!r} needs an LLM engine (Components.engine)")
            self.select_step = SelectStep(cfg, parts.engine)

    @classmethod
    def load(cls, cfg: Config, index_dir: str, *, method: str | None = None, **parts: Any) -> LocalGraph:
        """Load the encoders, index (checked against them) and, when selection runs, the engine; keyword
        arguments pass ready-made parts (``text_encoder=``, ``engine=``...)."""
        from mel.methods.base import load_components

        comps = load_components(cfg, index_dir, need_llm=uses_selector(cfg, method), **parts)
        return cls(cfg, comps, method=method)

    def link(self, mentions: list[Mention], images: list[Any] | None = None,
             adapter: str | None = None) -> list[LinkResult]:
        """Link a batch. ``images`` default to each mention's image file when retrieval uses images."""
        if not mentions:
            return []
        if images is None:
            images = self._images(mentions)
        retrieved, batch_ms = self.retrieve_step.run(mentions, images)
        n = len(mentions)
        timings = {key: v / n for key, v in batch_ms.items()}  # per mention, as Linker reports them
        cands = [r.candidates for r in retrieved]
        if self.select_step is not None:
            t0 = time.perf_counter()
            name = adapter or self.cfg.selection.lora_adapter
            cands = self.select_step.run(mentions, retrieved, [name] * n)
            timings["select"] = 1000 * (time.perf_counter() - t0) / n
        return [finish(m, c, k=None, cfg=self.cfg, method=self.method, timings_ms=dict(timings))
                for m, c in zip(mentions, cands)]

    def _images(self, mentions: list[Mention]) -> list[Any]:
        if not self.retrieve_step.retriever.uses_images:
            return [None] * len(mentions)
        from mel.stages.retrieve import load_mention_image

        return [load_mention_image(m) for m in mentions]

    def shutdown(self) -> None:
        if self.select_step is not None:
            self.select_step.engine.shutdown()
