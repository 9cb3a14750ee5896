"""Beam search constrained by the name trie: every finished beam is a complete KB name.

Deterministic: no sampling; at each step every live beam may only take a token the trie allows after it, scored
with the LM's full-vocabulary log-probability (so a name's score is its true log-probability under the model,
end marker included). Candidates are ranked by summed log-probability, ties broken by token ids; ``num_beams``
live beams are kept and a candidate ending with the end marker becomes a finished hypothesis. The search stops
when ``num_beams`` hypotheses are finished and no live beam can still beat the worst of them (log-probabilities
only decrease), when no beam is live, or after ``max_new_tokens`` steps.

The LM is any :class:`mel.gemel.lm.PrefixLM` (HF transformers for real use; unit tests may pass a double). No
vLLM: see the module docstring of :mod:`mel.gemel.lm` for why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mel.gemel.lm import PrefixLM
    from mel.gemel.trie import NameTrie, Node


@dataclass(frozen=True)
class Beam:
    """A finished hypothesis: a KB name and the log-probability of its tokens (end marker included)."""

    name: str
    token_ids: tuple[int, ...]
    logprob: float
    """Sum of the token log-probabilities."""

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, len(self.token_ids))

    @property
    def confidence(self) -> float:
        """exp(mean token log-probability), in (0, 1]: the per-token probability of the name (length-fair)."""
        return math.exp(self.mean_logprob)


@dataclass
class _Live:
    tokens: tuple[int, ...]
    logprob: float
    node: Node


class ConstrainedBeamSearch:
    """Generate the ``num_beams`` most probable KB names after a prompt."""

    def __init__(self, lm: PrefixLM, trie: NameTrie, *, num_beams: int = 4, max_new_tokens: int = 32) -> None:
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")
        self.lm = lm
        self.trie = trie
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens

    def search(self, prompt_ids: list[int], prefix: Any | None = None) -> list[Beam]:
        """Finished beams, best first (at most ``num_beams``; [] when no name fits in ``max_new_tokens``)."""
        state, logprobs = self.lm.start(prompt_ids, prefix)
        live = [_Live((), 0.0, self.trie.root)]
        rows = [logprobs]
        finished: list[Beam] = []
        end = self.trie.end_id
        for _ in range(self.max_new_tokens):
            cands: list[tuple[float, tuple[int, ...], int, int]] = []  # (-score, tokens, parent, token)
            for b, beam in enumerate(live):
                row = rows[b]
                for tok in beam.node:
                    lp = float(row[tok])
                    if lp == -math.inf:
                        continue
                    cands.append((-(beam.logprob + lp), beam.tokens + (tok,), b, tok))
            if not cands:
                break
            cands.sort()
            parents: list[int] = []
            tokens: list[int] = []
            new_live: list[_Live] = []
            done: list[Beam] = []
            for neg, seq, parent, tok in cands:
                if tok == end:
                    name = self.trie.name_of(seq)
                    if name is not None and len(done) < self.num_beams:
                        done.append(Beam(name, seq, -neg))
                elif len(new_live) < self.num_beams:
                    new_live.append(_Live(seq, -neg, live[parent].node[tok]))
                    parents.append(parent)
                    tokens.append(tok)
                if len(new_live) >= self.num_beams and len(done) >= self.num_beams:
                    break
            finished = sorted(finished + done, key=lambda h: (-h.logprob, h.token_ids))[: self.num_beams]
            if not new_live:
                break
            if len(finished) >= self.num_beams and new_live[0].logprob <= finished[-1].logprob:
                break  # a live beam's score can only fall: none can overtake the finished ones
            live = new_live
            state, out = self.lm.advance(state, parents, tokens)
            rows = list(out)
        return finished
