"""GEMEL's steps: the LLM writes the entity's name, constrained to the KB's names.

- ``demonstrate``: the ``gemel.demos.n`` labelled mentions most similar to the query (MiniLM over a stored
  demonstration index, :func:`mel.gemel.demos.load_or_build_pool`), into ``state.demos``;
- ``generate``: the prompt (header, demonstrations that fit ``gemel.prompt_tokens``, the query) and a beam search
  constrained by the KB's name trie (:mod:`mel.gemel.trie`, stored beside the index); every bearer of every beam's
  name becomes a candidate, scored by the beam's per-token probability ``exp(mean log-probability)``;
- ``name_to_id``: a name borne by several entities (a collision) is resolved by the mention's text-embedding
  similarity to each bearer; the top candidate is flagged ``scores["name_collision"] = 1`` when its name collided,
  so the evaluator counts collisions and how often they were resolved right.

The final score (``nil.threshold``) is the top beam's per-token probability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step
from mel.types import Candidate

if TYPE_CHECKING:
    from mel.config import Config


@register_step
class DemonstrateStep(Step):
    name: ClassVar[str] = "demonstrate"
    needs = frozenset({"text_encoder", "index"})
    reads = ("gemel.demos",)
    code = ("mel.gemel.demos",)

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return cfg.gemel.demos.n > 0

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.gemel.demos import load_or_build_pool

        super().__init__(cfg, parts)
        self.encoder = parts.require("text_encoder", self.name)
        index = parts.require("index", self.name)
        base = getattr(index, "unmasked", index)
        self.pool = load_or_build_pool(
            cfg.gemel.demos, encoder=self.encoder, kb_hash=base.manifest.kb_hash,
            gold_name=lambda g: base.name(g) if g in base else None, index_dir=str(base.path))

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.text import mention_text

        if not states:
            return states
        vecs = self.encoder.encode([mention_text(s.mention, self.cfg.gemel.demos.template) for s in states])
        for s, v in zip(states, vecs, strict=True):
            s.demos = self.pool.nearest(s.mention, v, self.cfg.gemel.demos.n)
        return states


@register_step
class GenerateStep(Step):
    name: ClassVar[str] = "generate"
    needs = frozenset({"gemel_lm", "index"})
    reads = ("gemel",)
    code = ("mel.gemel.decode", "mel.gemel.prompt", "mel.gemel.trie", "mel.gemel.lm")

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.gemel.decode import ConstrainedBeamSearch
        from mel.gemel.prompt import PromptFormat
        from mel.gemel.trie import load_or_build_trie

        super().__init__(cfg, parts)
        lm = parts.require("gemel_lm", self.name)
        self.index = parts.require("index", self.name)
        g = cfg.gemel
        self.trie = load_or_build_trie(getattr(self.index, "unmasked", self.index), lm.tokenizer,
                                       use_aliases=g.use_aliases)
        self.format = PromptFormat(lm.tokenizer, max_mention_chars=g.max_mention_chars)
        self.search = ConstrainedBeamSearch(lm, self.trie, num_beams=g.beams, max_new_tokens=g.max_new_tokens)
        self.budget = min(g.prompt_tokens, lm.max_positions - g.max_new_tokens)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        for s in states:
            ids, kept = self.format.build(s.view("retrieval"), s.demos, self.budget)
            s.demos = kept
            cands: list[Candidate] = []
            for rank, beam in enumerate(self.search.search(ids)):
                bearers = [e for e in self.trie.ids_for(beam.name) if e in self.index]  # withheld ids are not
                for eid in bearers:
                    cands.append(Candidate(eid, self.index.name(eid), beam.confidence, {
                        "generated": beam.confidence, "logprob": beam.logprob, "beam": float(rank),
                        "bearers": float(len(bearers))}))
            s.candidates = cands
        return states


@register_step
class NameToIdStep(Step):
    name: ClassVar[str] = "name_to_id"
    needs = frozenset({"text_encoder", "index"})
    reads = ("retrieval.mention_template",)
    code = ("mel.text",)

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        super().__init__(cfg, parts)
        self.encoder = parts.require("text_encoder", self.name)
        self.index = parts.require("index", self.name)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.text import mention_text

        todo = [s for s in states if any(c.scores.get("bearers", 1.0) > 1 for c in s.candidates)]
        if todo:
            vecs = self.encoder.encode([mention_text(s.view("retrieval"), self.cfg.retrieval.mention_template)
                                        for s in todo])
            for s, v in zip(todo, vecs, strict=True):
                sims = self.index.text_scores(v, [c.entity_id for c in s.candidates])
                for c, sim in zip(s.candidates, sims, strict=True):
                    c.scores["retrieval"] = float(sim)
                # beams keep their order; the bearers of one name are ordered by retrieval similarity
                s.candidates.sort(key=lambda c: (c.scores["beam"], -c.scores["retrieval"]))
        for s in states:
            if s.candidates:
                top = s.candidates[0]
                top.scores["name_collision"] = 1.0 if top.scores.get("bearers", 1.0) > 1 else 0.0
        return states
