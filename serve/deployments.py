"""The model-bearing deployments of the linking graph: one :class:`HostDeployment` per host (``mel.steps.HOSTS``)
that the chosen method's active steps need: the Retriever (encoders, index, cross-encoder), the LLM host (deployed as
``Selector``), and any later host. Plain classes here; ``serve.app`` turns them into Serve deployments with
resources, autoscaling, queue limits and batching from ``serve.<section>``.

A host deployment runs the steps the ingress names for it, through :func:`mel.runner.run_steps` (the code the
in-process runner runs, so online and offline answers agree). Each takes one handle call per HTTP request (all its
mention states), so queue limits count requests; inside the replica the states of all callers are batched together
by ``@serve.batch``.

A host whose steps search the index loads it in :meth:`HostDeployment.reconfigure` from
``user_config={"index_dir": ...}``, so a new index version is served by redeploying with another ``index_dir``:
Serve calls ``reconfigure`` on the running replicas, which load and validate the new index beside the old one and
then swap a single reference; batches already running finish on the old index, and no request is refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from mel.config import Config, adapters_multiplexed
from mel.steps.base import MentionState, Step
from serve.telemetry import IndexMetrics, StageMetrics, current_request_id, log_event


def host_named(name: str) -> Any:
    from mel.steps import HOSTS

    for h in HOSTS:
        if h.name == name:
            return h
    raise ValueError(f"unknown host {name!r}; known: {[h.name for h in HOSTS]}")


class HostDeployment:
    """The parts of one host and the method's steps that run on it."""

    def __init__(self, cfg: dict[str, Any], host: str, steps: list[str]) -> None:
        from mel import compat

        compat.prepare()
        from mel.methods.registry import load_plugins
        from mel.parts import load_parts
        from mel.steps import get_step

        self.cfg = Config.model_validate(cfg)
        load_plugins(self.cfg.plugins)
        self.host = host_named(host)
        self.deployment = str(self.host.deployment)
        self.step_classes: list[type[Step]] = [get_step(n) for n in steps]
        needs: set[str] = set()
        for c in self.step_classes:
            needs |= c.needs
        self.uses_index = "index" in needs
        self.models = load_parts(self.cfg, None, needs - {"index"})
        self.steps: dict[str, Step] | None = None if self.uses_index else self._build(self.models)
        self.index_dir: str | None = None
        self._switch_lock = asyncio.Lock()
        self._batches = 0
        self.metrics = StageMetrics(steps[0], self.cfg.method)
        self.index_metrics = IndexMetrics() if self.uses_index else None
        dcfg = getattr(self.cfg.serve, str(self.host.serve_section))
        self.run_batch.set_max_batch_size(dcfg.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(dcfg.batch_wait_timeout_s)
        self.adapters_held: list[str] = []
        self.multiplexed = "llm" in needs and adapters_multiplexed(self.cfg)
        if self.multiplexed:
            held = self.cfg.serve.selector.max_adapters_per_replica or self.cfg.models.llm.max_loras
            self.load_adapter = serve.multiplexed(max_num_models_per_replica=held)(self._adapter_loader())

    def _adapter_loader(self) -> Any:
        """The multiplexed-model loader of this replica: a request's adapter (its multiplexed model id) is checked
        against the engine and loaded once; Serve keeps the most recently used ones, tells the router which this
        replica holds (requests naming them come here first) and drops the least recently used."""
        from mel.errors import InputError
        from mel.llm.base import LoRASpec, preload_adapter

        async def load(name: str) -> _HeldAdapter:
            if name not in self.cfg.selection.adapters:
                raise InputError(f"unknown adapter {name!r}; known: {sorted(self.cfg.selection.adapters)}",
                                 field="adapter")
            spec = LoRASpec(name, self.cfg.selection.adapters[name])
            t0 = time.perf_counter()
            await asyncio.to_thread(preload_adapter, self.models.engine, spec)
            log_event("adapter", self.deployment, current_request_id(), 1000 * (time.perf_counter() - t0),
                      f"loaded adapter {name!r}", adapter=name, path=spec.path)
            return _HeldAdapter(name, self.adapters_held)

        return load

    def _build(self, parts: Any) -> dict[str, Step]:
        return {c.name: c(self.cfg, parts) for c in self.step_classes}

    # ------------------------------------------------------------------ index versions
    def _load(self, index_dir: str) -> tuple[dict[str, Step], Any]:
        from mel.parts import load_parts

        m = self.models
        parts = load_parts(self.cfg, index_dir, {"index"}, text_encoder=m.text_encoder, image_encoder=m.image_encoder,
                           cross_encoder=m.cross_encoder, engine=m.engine, adapter_engines=m.adapter_engines, nli=m.nli,
                           clip_adapter=m.clip_adapter, gemel_lm=m.gemel_lm)
        return self._build(parts), parts.index

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config`` at start and whenever it changes. Loads (and
        validates against the configured encoder) the index in ``index_dir`` off the event loop, then swaps it in;
        requests keep being served from the old index until the swap."""
        if not self.uses_index:
            raise ValueError(f"{self.deployment} takes no user_config: none of its steps searches an index")
        unknown = set(user_config) - {"index_dir"}
        if unknown or not isinstance(user_config.get("index_dir"), str):
            raise ValueError(f"{self.deployment} user_config must be {{'index_dir': '<index directory>'}}, got "
                             f"{user_config!r}")
        index_dir = os.path.abspath(user_config["index_dir"])
        async with self._switch_lock:
            if index_dir == self.index_dir and self.steps is not None:
                return
            t0 = time.perf_counter()
            steps, index = await asyncio.to_thread(self._load, index_dir)
            old = self.index_dir
            self.steps, self.index_dir, self.index = steps, index_dir, index  # running batches keep their steps
            assert self.index_metrics is not None
            self.index_metrics.loaded(len(index))
            log_event("reconfigure", self.deployment, current_request_id(), 1000 * (time.perf_counter() - t0),
                      f"serving index {index_dir}", index_dir=index_dir, previous_index_dir=old,
                      entities=len(index), kb_hash=index.manifest.kb_hash)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": [c.name for c in self.step_classes],
                               "replica": serve.get_replica_context().replica_tag}
        if self.multiplexed:
            out["adapters_held"] = list(self.adapters_held)
        if self.uses_index:
            self._steps()
            m = self.index.manifest
            out.update({"entities": len(self.index), "encoder_id": m.encoder_id, "kb_hash": m.kb_hash,
                        "factory": m.factory, "image_encoder_id": m.image_encoder_id, "index_dir": self.index_dir})
        return out

    def _steps(self) -> dict[str, Step]:
        if self.steps is None:
            raise RuntimeError(f"{self.deployment} has no index loaded (user_config.index_dir was never applied)")
        return self.steps

    # ------------------------------------------------------------------ requests
    async def run(self, states: list[MentionState], step_names: list[str],
                  request_id: str = "") -> tuple[list[MentionState], float, list[int]]:
        """The states of one request in; batched with other callers' states by ``run_batch``. Returns the states
        after ``step_names`` ran on them, the model time of the batches they ran in (ms, for the hop figure), and
        the sizes of those batches."""
        t0 = time.perf_counter()
        rid = request_id or current_request_id()
        names = tuple(step_names)
        if self.multiplexed and (adapter := serve.get_multiplexed_model_id()):
            await self.load_adapter(adapter)  # a dict lookup once this replica holds it
        outs = await gather_batched(self.metrics, self.deployment, rid, t0,
                                    [self.run_batch((s, names)) for s in states])
        results = [o[0] for o in outs]
        model_ms, sizes = batch_totals(outs)
        ms = 1000 * (time.perf_counter() - t0)
        self.metrics.call(ms, candidates=[len(s.candidates) for s in results])
        log_event(names[0], self.deployment, rid, ms, mentions=len(states), batch_sizes=sizes,
                  model_ms=round(model_ms, 3), steps=list(names), index_dir=self.index_dir)
        return results, model_ms, sizes

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def run_batch(self, items: list[tuple[MentionState, tuple[str, ...]]]) -> list[tuple[MentionState, float,
                                                                                               int, int]]:
        from mel.runner import run_steps

        steps = self._steps()  # taken once: an index switch during this batch does not affect it
        self._batches += 1
        self.metrics.batch(len(items))
        t0 = time.perf_counter()
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (_, names) in enumerate(items):
            groups.setdefault(names, []).append(i)
        out: list[MentionState | None] = [None] * len(items)
        for names, idx in groups.items():
            unknown = [n for n in names if n not in steps]
            if unknown:
                raise ValueError(f"{self.deployment} does not run steps {unknown}; it runs {sorted(steps)}")
            done = run_steps([steps[n] for n in names], [items[i][0] for i in idx])
            for i, s in zip(idx, done, strict=True):
                out[i] = s
        ms = 1000 * (time.perf_counter() - t0)
        return [(s, ms, len(items), self._batches) for s in out if s is not None]

    def __del__(self) -> None:
        models = getattr(self, "models", None)
        for engine in [getattr(models, "engine", None), *getattr(models, "adapter_engines", {}).values()]:
            if engine is not None:
                try:
                    engine.shutdown()
                except Exception:  # noqa: BLE001 -- best effort at teardown
                    pass


class _HeldAdapter:
    """An adapter a replica holds, as Serve's multiplexing keeps it: listed in ``held`` (reported by ``info``) from
    its load until Serve drops it (least recently used), which calls ``__del__``. The engine's own LRU
    (``models.llm.max_loras``) decides which adapter weights stay resident."""

    def __init__(self, name: str, held: list[str]) -> None:
        self.name, self._held, self._listed = name, held, True
        held.append(name)

    def __del__(self) -> None:  # called by Serve when it drops the adapter, and by the garbage collector later
        if self._listed:
            self._listed = False
            if self.name in self._held:
                self._held.remove(self.name)


async def gather_batched(metrics: StageMetrics, deployment: str, request_id: str, t0: float,
                         calls: list[Any]) -> list[Any]:
    """Await one request's per-mention ``@serve.batch`` calls; on failure record the error metric and an error
    log line for the stage (``metrics.stage``) before re-raising."""
    try:
        return list(await asyncio.gather(*calls))
    except Exception as e:
        ms = 1000 * (time.perf_counter() - t0)
        metrics.call(ms, error="internal")
        log_event(metrics.stage, deployment, request_id, ms, f"{metrics.stage} failed: {e!r}", level=logging.ERROR,
                  mentions=len(calls))
        raise


def batch_totals(outs: list[tuple[Any, float, int, int]]) -> tuple[float, list[int]]:
    """The model time of the distinct batches a request's items ran in (ms, summed), and their sizes."""
    seen: dict[int, tuple[float, int]] = {}
    for _, ms, size, batch_id in outs:
        seen.setdefault(batch_id, (ms, size))
    return sum(ms for ms, _ in seen.values()), [size for _, size in seen.values()]
