"""Mention descriptions (UniMEL): an LLM writes one sentence on what a mention refers to, from its surface and
context; the ``describe`` step (mel.steps.describe) adds it to the mention's context for retrieval and/or selection.

- :func:`mention_input` renders the prompt (``augment.mentions.prompt``, context cut to ``max_context_chars``).
- :func:`description_key` hashes everything a description depends on (model id and fingerprint, system message,
  template, max_tokens, the rendered prompt); with the mention id it is the cache key.
- :class:`DescriptionCache` keeps descriptions in Parquet shards under ``augment.mentions.cache_dir`` (one shard
  per generated batch, written atomically), so evaluation runs and ablations reuse them.
- :func:`describe` generates what the cache lacks, in one batched engine call.
- :func:`with_description` is the mention as a step shows it: the description appended to its context.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.augment.base import ModelIdentity, clean_generation, engine_identity, render_lines, truncate
from mel.augment.store import ArtifactKind, GenerationStore, generation_key, text_hash

if TYPE_CHECKING:
    from mel.config import MentionDescriptionsConfig
    from mel.types import Mention

log = logging.getLogger("mel.augment")

DESCRIPTIONS = ArtifactKind("mention-descriptions", "descriptions.parquet", "mention_id", "description",
                            command="the describe step (augment.mentions.cache_dir)")


def mention_input(mention: Mention, template: str, max_chars: int) -> str:
    """The user message asking what ``mention`` refers to (lines whose fields are all empty left out)."""
    return render_lines(template, {"surface": truncate(mention.surface, max_chars),
                                   "context": truncate(mention.context, max_chars)})


def description_key(model: ModelIdentity, cfg: MentionDescriptionsConfig, mention_id: str, input_text: str) -> str:
    """Cache key of one description: the mention id and everything the generated text depends on."""
    return generation_key(DESCRIPTIONS.name, model.id, model.fingerprint, cfg.system, cfg.prompt, cfg.max_tokens,
                          mention_id, input_text)


def with_description(mention: Mention, description: str | None) -> Mention:
    """``mention`` with ``description`` appended to its context (unchanged without one)."""
    if not description:
        return mention
    context = f"{mention.context} {description}".strip()
    return replace(mention, context=context)


class DescriptionCache:
    """Descriptions by key in ``<dir>`` (Parquet shards named by the hash of their keys). Read once, on first use;
    every batch generated later is added as one shard (atomic), so concurrent writers (Ray Data actors, Serve
    replicas) never clash, and none deletes another's file in progress."""

    def __init__(self, directory: str | Path) -> None:
        self.store = GenerationStore(Path(directory) / "cache", DESCRIPTIONS)
        self._rows: dict[str, str] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        if self._rows is None:
            self._rows = {k: str(r["description"] or "") for k, r in self.store.known(clean=False).items()}
            log.info("mention description cache %s: %d descriptions", self.store.staging, len(self._rows))
        return self._rows

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._load().get(key)

    def add(self, columns: dict[str, list[Any]]) -> None:
        with self._lock:
            self.store.add(columns)
            self._load().update(zip(columns["key"], (str(d) for d in columns["description"]), strict=True))


def describe(engine: Any, mentions: Sequence[Mention], cfg: MentionDescriptionsConfig,
             cache: DescriptionCache | None = None, model: ModelIdentity | None = None) -> list[str]:
    """One description per mention: from ``cache`` where it holds one, else generated (greedy, one batched
    ``generate`` call for all the missing ones) and added to it."""
    if not mentions:
        return []
    model = model or engine_identity(engine)
    inputs = [mention_input(m, cfg.prompt, cfg.max_context_chars) for m in mentions]
    keys = [description_key(model, cfg, m.id, t) for m, t in zip(mentions, inputs, strict=True)]
    out: list[str | None] = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, d in enumerate(out) if d is None]
    if todo:
        prompts = [engine.format_chat(cfg.system or None, inputs[i]) for i in todo]
        texts = engine.generate(prompts, max_tokens=cfg.max_tokens)
        if len(texts) != len(todo):
            raise RuntimeError(f"engine {model.id!r} returned {len(texts)} texts for {len(todo)} prompts")
        for i, t in zip(todo, texts, strict=True):
            out[i] = clean_generation(t)
        if cache is not None:
            cache.add({"key": [keys[i] for i in todo], "mention_id": [mentions[i].id for i in todo],
                       "description": [out[i] for i in todo], "input_hash": [text_hash(inputs[i]) for i in todo],
                       "model_id": [model.id] * len(todo)})
    return [d or "" for d in out]
