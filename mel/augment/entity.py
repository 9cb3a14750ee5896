"""Entity augmentation (UniMEL): an LLM writes a one-sentence summary of each entity from its name, aliases,
description and attributes; the summaries feed the entity text the index embeds (``{summary}`` in
``index.entity_template``; ``index.summaries`` or `mel index --summaries DIR`).

- :func:`summary_input` renders an entity's prompt (``augment.entities.prompt``; description and attributes cut
  to ``augment.entities.max_input_chars``); :func:`summary_key` is its cache key (LLM id + fingerprint, system message,
  template, max_tokens and the rendered input), so a rerun generates only new or changed entities
  (:mod:`mel.augment.store`). Decoding is greedy.
- :func:`summarise_kb` is the driver; a :class:`Summariser` does the generating: :class:`LocalSummariser` in this
  process, or the Ray Data actor pool of ``pipelines/augment.py``.
- :func:`load_summaries` reads the artifact; :meth:`EntitySummaries.join` gives the summary of each entity of a
  KB whose input is unchanged since it was summarised (others fall back: see :func:`mel.text.entity_text`);
  :meth:`EntitySummaries.record` is what an index manifest records about them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mel.augment.base import (
    ChatGenerator,
    ModelIdentity,
    Progress,
    chat_prompts,
    clean_generation,
    engine_identity,
    render_lines,
    truncate,
)
from mel.augment.store import MANIFEST, ArtifactKind, GenerationStore, generation_key, read_artifact, text_hash
from mel.errors import ArtifactMismatch, InputError
from mel.text import attributes_text

if TYPE_CHECKING:
    from mel.config import EntitySummariesConfig
    from mel.kb.model import KB
    from mel.types import Entity

log = logging.getLogger("mel.augment")

SUMMARIES = ArtifactKind("entity-summaries", "summaries.parquet", "entity_id", "summary",
                         command="mel augment entities")
PROMPT_VERSION = 1
"""Bumped when the way a summary prompt is rendered changes (the rendered text is in every key, too)."""
INPUT_COLUMNS = ("key", "entity_id", "input_hash", "input_text")
"""Columns a :class:`Summariser` is given; it hands back key, entity_id, input_hash, summary, model_id."""

Sink = Callable[[Mapping[str, Any]], None]


# ----------------------------------------------------------------------------- prompts and keys
def summary_input(entity: Entity, template: str, max_chars: int) -> str:
    """The user message summarising ``entity``: ``template`` with {name} {aliases} {description} {attributes}
    (lines whose fields are all empty left out; each field cut to ``max_chars``)."""
    values = {
        "name": truncate(entity.name, max_chars),
        "aliases": truncate(", ".join(entity.aliases), max_chars),
        "description": truncate(entity.description, max_chars),
        "attributes": truncate(attributes_text(entity.attributes), max_chars),
    }
    return render_lines(template, values)


def prompt_spec(cfg: EntitySummariesConfig) -> dict[str, Any]:
    """The summary prompt settings recorded in the manifest (and needed to check a summary is current)."""
    return {"system": cfg.system, "template": cfg.prompt, "max_tokens": cfg.max_tokens,
            "max_input_chars": cfg.max_input_chars}


def summary_key(model: ModelIdentity, cfg: EntitySummariesConfig, input_text: str) -> str:
    """Cache key of one summary: everything the generated text depends on."""
    return generation_key(SUMMARIES.name, model.id, model.fingerprint, cfg.system, cfg.prompt,
                          cfg.max_tokens, input_text)


# ----------------------------------------------------------------------------- generating
class Summariser(Protocol):
    """Generates summaries for :func:`summarise_kb`: in this process, or on Ray Data engine actors."""

    how: str

    def identity(self) -> ModelIdentity:
        """The LLM's identity (known before generating: the cache keys depend on it)."""
        ...

    def summarise(self, rows: dict[str, list[str]], sink: Sink) -> None:
        """Summarise the rows (columns :data:`INPUT_COLUMNS`); hand each finished batch to ``sink`` with columns
        key, entity_id, input_hash, summary, model_id (in any order)."""
        ...


class LocalSummariser:
    """Summarises in this process with a given engine, ``batch_size`` prompts per ``generate`` call."""

    how = "single process"

    def __init__(self, engine: ChatGenerator, cfg: EntitySummariesConfig, *,
                 identity: ModelIdentity | None = None) -> None:
        self.engine, self.cfg = engine, cfg
        self._identity = identity

    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self._identity = engine_identity(self.engine)
        return self._identity

    def summarise(self, rows: dict[str, list[str]], sink: Sink) -> None:
        summarise_batches(self.engine, self.cfg.system, self.cfg.max_tokens, rows, sink,
                          self.cfg.batch_size)


def summarise_batch(engine: ChatGenerator, system: str, max_tokens: int, batch: Mapping[str, Any]) -> dict[str, Any]:
    """One batch (columns :data:`INPUT_COLUMNS`) -> the sink's columns. Shared by the local loop and the actors."""
    users = [str(t) for t in batch["input_text"]]
    out = engine.generate(chat_prompts(engine, system, users), max_tokens=max_tokens)
    if len(out) != len(users):
        raise RuntimeError(f"engine {engine.id!r} returned {len(out)} texts for {len(users)} prompts")
    return {"key": [str(k) for k in batch["key"]], "entity_id": [str(i) for i in batch["entity_id"]],
            "input_hash": [str(h) for h in batch["input_hash"]], "summary": [clean_generation(t) for t in out],
            "model_id": [str(engine.id)] * len(users)}


def summarise_batches(engine: ChatGenerator, system: str, max_tokens: int, rows: Mapping[str, list[str]],
                      sink: Sink, batch_size: int) -> None:
    n = len(rows["key"])
    for i in range(0, n, batch_size):
        sink(summarise_batch(engine, system, max_tokens, {k: rows[k][i:i + batch_size] for k in INPUT_COLUMNS}))


@dataclass
class SummaryReport:
    """What one :func:`summarise_kb` run did."""

    out: Path
    entities: int
    """Entities in the KB."""
    summarised: int
    """Entities of the KB the published artifact holds a current summary for."""
    generated: int
    """Distinct prompts generated in this run (entities with identical input share one)."""
    reused: int
    """Entities whose summary was found in the previous artifact or the staging shards."""
    empty: int
    """Summaries that came out empty (those entities fall back to their description in the index)."""
    seconds: float
    generate_seconds: float
    """Time spent generating (engine start-up on the actors included; the driver's reading and writing not)."""
    how: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Summaries generated per second of generating."""
        return self.generated / max(self.generate_seconds, 1e-9)

    def summary(self) -> str:
        return (f"entity summaries {self.out}: {self.summarised} of {self.entities} entities summarised "
                f"({self.generated} generated, {self.reused} reused, {self.empty} empty) in {self.seconds:.1f}s "
                f"({self.rate:.2f} generated/s, {self.how})")


def summarise_kb(kb: KB, out_dir: str | Path, cfg: EntitySummariesConfig, summariser: Summariser, *, config_hash: str,
                 only: Collection[str] | None = None, progress_every_s: float = 10.0) -> SummaryReport:
    """Summarise the entities of ``kb`` not already summarised (same key) and publish the artifact ``out_dir``.

    ``only`` (entity ids) restricts what is generated to those entities (ids the KB lacks are an InputError).
    The artifact holds every entity of ``kb`` whose current summary is known: generated now, or found in the
    previous artifact at ``out_dir`` or in the staging shards. So an interrupted run, or a run on a KB where a few
    entities changed, generates only the missing summaries, and restricted runs add up.
    """
    import time

    t0 = time.perf_counter()
    if len(kb) == 0:
        raise InputError("the KB holds no entities; nothing to summarise", path=kb.report.source or None)
    wanted: set[str] | None = None
    if only is not None:
        wanted = {str(i) for i in only}
        unknown = sorted(wanted - set(kb.ids))
        if unknown:
            raise InputError(f"{len(unknown)} entity id(s) to summarise are not in the KB (first: {unknown[:5]})",
                             path=kb.report.source or None)
    model = summariser.identity()
    inputs = [summary_input(e, cfg.prompt, cfg.max_input_chars) for e in kb.entities]
    keys = [summary_key(model, cfg, t) for t in inputs]
    store = GenerationStore(out_dir, SUMMARIES)
    gen_s = 0.0
    with store.lock():
        known = store.known()
        reused = sum(k in known for k in keys)
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in known and (wanted is None or kb.entities[i].id in wanted):
                todo.setdefault(k, i)
        log.info("entity summaries for %d entities%s: %d found, %d to generate (%s, LLM %s)", len(kb),
                 "" if wanted is None else f" ({len(wanted)} asked for)", reused, len(todo), summariser.how, model.id)
        progress = Progress("entity summaries", len(todo), log, every_s=progress_every_s)

        def sink(columns: Mapping[str, Any]) -> None:
            bad = sorted({str(m) for m in columns["model_id"]} - {model.id})
            if bad:
                raise ArtifactMismatch(f"summaries came from model(s) {bad}, the cache keys are for {model.id!r}")
            unknown = [k for k in columns["key"] if k not in todo]
            if unknown:
                raise RuntimeError(f"the summariser returned {len(unknown)} rows that were not asked for")
            store.add(columns)
            for j, k in enumerate(columns["key"]):
                known[str(k)] = {c: columns[c][j] for c in SUMMARIES.columns}
            progress.update(len(columns["key"]))

        if todo:
            idx = list(todo.values())
            t_gen = time.perf_counter()
            summariser.summarise({"key": [keys[i] for i in idx], "entity_id": [kb.entities[i].id for i in idx],
                                  "input_hash": [text_hash(inputs[i]) for i in idx],
                                  "input_text": [inputs[i] for i in idx]}, sink)
            gen_s = time.perf_counter() - t_gen
        missing = [k for k in todo if k not in known]
        if missing:
            raise RuntimeError(f"{len(missing)} summaries were not generated (the summariser dropped rows)")
        have = [i for i, k in enumerate(keys) if k in known]
        rows = [known[keys[i]] for i in have]
        columns = {"entity_id": [kb.entities[i].id for i in have], "summary": [r["summary"] for r in rows],
                   "input_hash": [text_hash(inputs[i]) for i in have], "key": [keys[i] for i in have],
                   "model_id": [r["model_id"] for r in rows]}
        empty = sum(not s for s in columns["summary"])
        counts = {"entities": len(kb), "summarised": len(have), "generated": len(todo), "reused": reused,
                  "empty": empty}
        manifest = store.publish(columns, {
            "llm": model.to_dict(), "prompt": prompt_spec(cfg), "prompt_version": PROMPT_VERSION,
            "prompt_hash": generation_key("prompt", prompt_spec(cfg)),
            "generation": {"temperature": 0.0, "max_tokens": cfg.max_tokens}, "kb_hash": kb.content_hash(),
            "kb_source": kb.report.source, "config_hash": config_hash, "counts": counts, "how": summariser.how,
        }, keep_staging=cfg.keep_staging)
    report = SummaryReport(store.out, len(kb), len(have), len(todo), reused, empty, time.perf_counter() - t0,
                           gen_s, summariser.how, manifest)
    log.info("%s", report.summary())
    return report


# ----------------------------------------------------------------------------- using the artifact
@dataclass
class SummaryJoin:
    """The summaries of one KB's entities: ``summaries`` (entity id -> summary) holds the current ones only."""

    summaries: dict[str, str]
    missing: int = 0
    """Entities the artifact has no (non-empty) summary for."""
    stale: int = 0
    """Entities whose input changed since they were summarised (name, aliases, description or attributes)."""

    @property
    def fallback(self) -> int:
        return self.missing + self.stale


@dataclass
class EntitySummaries:
    """A loaded summaries artifact: entity id -> (summary, input_hash), plus its manifest."""

    path: str
    manifest: dict[str, Any]
    rows: dict[str, tuple[str, str]]

    @property
    def hash(self) -> str:
        """The artifact's content hash (recorded in the manifest of an index built from it)."""
        return str(self.manifest["content_hash"])

    @property
    def model_id(self) -> str:
        return str(self.manifest.get("llm", {}).get("id", ""))

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, entity: Entity) -> str | None:
        """The summary of ``entity`` when there is one and its input is unchanged since it was summarised."""
        row = self.rows.get(entity.id)
        if row is None or not row[0]:
            return None
        return row[0] if row[1] == self._input_hash(entity) else None

    def _input_hash(self, entity: Entity) -> str:
        p = self.manifest["prompt"]
        return text_hash(summary_input(entity, str(p["template"]), int(p["max_input_chars"])))

    def join(self, kb: KB) -> SummaryJoin:
        """The current summary of every entity of ``kb`` that has one; counts the others."""
        out = SummaryJoin({})
        for e in kb.entities:
            row = self.rows.get(e.id)
            if row is None or not row[0]:
                out.missing += 1
            elif row[1] != self._input_hash(e):
                out.stale += 1
            else:
                out.summaries[e.id] = row[0]
        return out

    def record(self, joined: SummaryJoin) -> dict[str, Any]:
        """What an index manifest records about the summaries it embedded."""
        return {"hash": self.hash, "path": self.path, "llm_id": self.model_id,
                "prompt_hash": self.manifest.get("prompt_hash"), "with_summary": len(joined.summaries),
                "missing": joined.missing, "stale": joined.stale}


def load_summaries(path: str | Path) -> EntitySummaries:
    """Read a summaries artifact written by `mel augment entities` (checked: see :func:`read_artifact`)."""
    manifest, columns = read_artifact(path, SUMMARIES)
    prompt = manifest.get("prompt")
    if not isinstance(prompt, dict) or not {"template", "max_input_chars"} <= prompt.keys():
        raise ArtifactMismatch(f"{path}: the manifest records no summary prompt; rerun `mel augment entities`")
    rows = {str(i): (str(s or ""), str(h)) for i, s, h in
            zip(columns["entity_id"], columns["summary"], columns["input_hash"], strict=True)}
    return EntitySummaries(str(Path(path).absolute()), manifest, rows)


def summaries_hash(path: str | Path) -> str:
    """The content hash of the summaries artifact at ``path``, from its manifest alone (cheap; the rows are checked
    against it when the artifact is loaded for a build)."""
    from mel.fileio import read_json_object

    d = Path(path)
    hint = f"run `{SUMMARIES.command} --out {d}`"
    if not (d / MANIFEST).is_file():
        raise InputError(f"no {MANIFEST}: not a {SUMMARIES.name} artifact, or its run did not finish; {hint}",
                         path=str(d))
    manifest = read_json_object(d / MANIFEST)
    if manifest.get("kind") != SUMMARIES.name or not manifest.get("content_hash"):
        raise ArtifactMismatch(f"{d}: a {manifest.get('kind')!r} artifact, expected {SUMMARIES.name!r}; {hint}")
    return str(manifest["content_hash"])


def check_index_summaries(index_record: Mapping[str, Any] | None, configured: str | Path | None,
                          where: str | Path) -> None:
    """With summaries configured (``index.summaries``), refuse an index built from other summaries or none.

    ``index_record`` is the index manifest's ``summaries`` field. Raises ArtifactMismatch naming the fix. Without
    summaries configured, any index passes (it is served with the texts it embedded).
    """
    if configured is None:
        return
    want = summaries_hash(configured)
    have = None if index_record is None else index_record.get("hash")
    if have != want:
        built = "without summaries" if have is None else f"with summaries {have} ({index_record.get('path')})"
        raise ArtifactMismatch(f"index {where} was built {built}, the configuration names summaries {want} "
                               f"({configured}); rebuild it with `mel index --summaries {configured}`, or set "
                               "index.summaries to the ones it was built with")
