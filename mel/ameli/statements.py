"""AMELI's hypotheses: what a candidate's attributes say about the mentioned thing, one statement each.

For a candidate, ``ameli.text.name_template`` (e.g. "{mention} is {name}.") comes first when set, then one
``ameli.text.statement_template`` (default "{key} of {mention} is {value}.") per attribute in KB order, blank values
skipped, long values cut at a word boundary, at most ``max_statements`` in all. ``{mention}`` is the mention's
surface ("the product" when blank).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mel.config import AmeliTextConfig
    from mel.types import Entity, Mention

BLANK_MENTION = "the product"
AGGREGATIONS = ("mean", "max", "entailment-minus-contradiction")


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head.rsplit(" ", 1)[0] if " " in head else head


def statements(mention: Mention, entity: Entity, cfg: AmeliTextConfig) -> list[str]:
    """The hypotheses scored for ``entity`` (see the module docstring)."""
    subject = " ".join(mention.surface.split()) or BLANK_MENTION
    out: list[str] = []
    if cfg.name_template is not None:
        out.append(cfg.name_template.format(key="name", value=entity.name, mention=subject, name=entity.name))
    for key, value in entity.attributes.items():
        if len(out) >= cfg.max_statements:
            break
        value = _cut(value, cfg.max_value_chars)
        if value and str(key).strip():
            out.append(cfg.statement_template.format(key=str(key).strip(), value=value, mention=subject,
                                                     name=entity.name))
    return out[: cfg.max_statements]


def aggregate(entail: Sequence[float], contradiction: Sequence[float | None], how: str) -> float:
    """A candidate's text-stream score from its statements' scores; 0.0 when it has none.

    ``mean`` / ``max`` act on the entailment scores; ``entailment-minus-contradiction`` is the mean of
    ``entail - contradiction`` and needs contradiction scores (an NLI model gives them, a cross-encoder does not)."""
    if len(entail) != len(contradiction):
        raise ValueError(f"{len(entail)} entailment scores but {len(contradiction)} contradiction scores")
    if not entail:
        return 0.0
    if how == "mean":
        return float(sum(entail) / len(entail))
    if how == "max":
        return float(max(entail))
    if how == "entailment-minus-contradiction":
        if any(c is None for c in contradiction):
            raise ValueError("aggregation 'entailment-minus-contradiction' needs contradiction scores: set "
                             "ameli.text.nli_model to an NLI checkpoint (a cross-encoder scores relevance only)")
        return float(sum(e - c for e, c in zip(entail, contradiction)) / len(entail))  # type: ignore[operator]
    raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")
