"""`mel augment entities`: UniMEL's LLM entity summaries as a Ray Data job.

Entity prompts -> an actor pool of vLLM engine actors (``augment.entities.workers`` actors, each
``cpus_per_worker`` CPUs / ``gpus_per_worker`` GPUs, ``batch_size`` prompts per call; engine settings from
``models.llm``) -> finished batches streamed back to the driver, which writes each as a staging shard at once
(:class:`mel.augment.store.GenerationStore`). ``local=True`` runs the same batches in this process
(:class:`mel.augment.entity.LocalSummariser`). Resumable: a rerun generates only entities whose key (model, prompt,
input) is found neither in the previous artifact nor in the staging shards.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mel.augment.entity import INPUT_COLUMNS, LocalSummariser, Sink, SummaryReport, summarise_batch, summarise_kb
from mel.config import Config, LLMConfig
from mel.errors import ArtifactMismatch
from pipelines.common import dataset_from_table, model_cache_dir, set_progress, start_ray

if TYPE_CHECKING:
    from mel.augment.base import EngineSlot, ModelIdentity
    from mel.kb.model import KB

log = logging.getLogger("mel.augment")

OUT_COLUMNS = ("key", "entity_id", "input_hash", "summary", "model_id")


# ----------------------------------------------------------------------------- worker side
class SummaryActor:
    """Ray Data callable class: one vLLM engine per actor (checked to be the model the keys were computed for);
    summarises one batch per call."""

    def __init__(self, llm_cfg: dict[str, Any], cache_dir: str, system: str, max_tokens: int,
                 expect_id: str) -> None:
        from mel.compat import prepare

        prepare()
        from mel.llm.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(LLMConfig.model_validate(llm_cfg), cache_dir)
        if self.engine.id != expect_id:
            raise ArtifactMismatch(f"engine actor built {self.engine.id!r}, the driver keyed the summaries for "
                                   f"{expect_id!r} (models.llm resolves differently on this node)")
        self.system, self.max_tokens = system, max_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = summarise_batch(self.engine, self.system, self.max_tokens, batch)
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}


def _identity(llm_cfg: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    """The LLM's identity, resolved where the engine actors run (a Ray task)."""
    from mel.augment.base import vllm_identity
    from mel.compat import prepare

    prepare()
    return vllm_identity(LLMConfig.model_validate(llm_cfg), cache_dir).to_dict()


# ----------------------------------------------------------------------------- driver side
class RaySummariser:
    """Implements :class:`mel.augment.entity.Summariser` with a Ray Data actor pool of vLLM engines."""

    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        start_ray(cfg)
        set_progress(progress)
        self.cfg, self.a, self.cache = cfg, cfg.augment.entities, model_cache_dir(cfg)
        self.how = f"Ray Data, {self.a.workers} engine actor(s)"
        self._identity: ModelIdentity | None = None

    def identity(self) -> ModelIdentity:
        if self._identity is None:
            import ray

            from mel.augment.base import ModelIdentity

            task = ray.remote(_identity).options(num_cpus=min(1.0, self.a.cpus_per_worker))
            d = ray.get(task.remote(self.cfg.models.llm.model_dump(mode="json"), self.cache))
            self._identity = ModelIdentity(str(d["id"]), d["fingerprint"])
        return self._identity

    def summarise(self, rows: dict[str, list[str]], sink: Sink) -> None:
        import pyarrow as pa
        import ray.data

        a = self.a
        table = pa.table({c: pa.array([str(x) for x in rows[c]], pa.string()) for c in INPUT_COLUMNS})
        ds = dataset_from_table(table, a.batch_size).map_batches(
            SummaryActor,
            fn_constructor_args=(self.cfg.models.llm.model_dump(mode="json"), self.cache, a.system, a.max_tokens,
                                 self.identity().id),
            batch_format="numpy", batch_size=a.batch_size,
            compute=ray.data.ActorPoolStrategy(size=a.workers), num_cpus=a.cpus_per_worker,
            num_gpus=a.gpus_per_worker)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            sink({k: [str(x) for x in batch[k]] for k in OUT_COLUMNS})


class _LazyEngine:
    """A ChatGenerator that builds the slot's engine on the first call (a fully cached run starts none)."""

    def __init__(self, slot: EngineSlot) -> None:
        self.slot = slot

    @property
    def id(self) -> str:
        return str(self.slot.identity.id)

    def format_chat(self, system: str | None, user: str) -> str:
        return str(self.slot.get().format_chat(system, user))

    def generate(self, prompts: list[str], max_tokens: int = 64) -> list[str]:
        return list(self.slot.get().generate(prompts, max_tokens=max_tokens))


def run_summaries(kb: KB | str | Path, out_dir: str | Path, cfg: Config, *, local: bool = False,
                  engine: Any = None, only: Collection[str] | None = None, progress: bool = True) -> SummaryReport:
    """Summarise the KB (a KB or its file) into the artifact ``out_dir``: on Ray Data, or in this process when
    ``local`` or an ``engine`` is given (else built from ``models.llm``, only if something has to be generated).
    ``only``: entity ids to generate (others already summarised are kept)."""
    from mel.augment.base import EngineSlot, vllm_identity
    from mel.kb.reader import read_kb
    from mel.llm import build_llm_engine

    kb = read_kb(kb) if isinstance(kb, (str, Path)) else kb
    a = cfg.augment.entities
    if engine is not None:
        return summarise_kb(kb, out_dir, a, LocalSummariser(engine, a), config_hash=cfg.hash(), only=only)
    if local:
        cache = model_cache_dir(cfg)
        slot = EngineSlot(vllm_identity(cfg.models.llm, cache), lambda: build_llm_engine(cfg.models.llm, cache))
        summariser = LocalSummariser(_LazyEngine(slot), a, identity=slot.identity)
        try:
            return summarise_kb(kb, out_dir, a, summariser, config_hash=cfg.hash(), only=only)
        finally:
            if slot.built:
                slot.get().shutdown()
    return summarise_kb(kb, out_dir, a, RaySummariser(cfg, progress=progress), config_hash=cfg.hash(), only=only)
