"""The one in-process runner of a declared method: ``mel eval``, ``mel link`` (inside each Ray Data actor) and the
benchmarks run methods through it; the Serve ingress walks the same step list across deployments.

Timing convention (everywhere): ``timings_ms[step]`` is the time the step took for the batch divided by the number
of mentions in it, i.e. milliseconds per mention.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mel.steps.base import MentionState, Step
from mel.types import LinkResult, Mention

if TYPE_CHECKING:
    from mel.config import Config
    from mel.parts import Parts


def run_steps(steps: list[Step], states: list[MentionState]) -> list[MentionState]:
    """Run ``steps`` in order over a batch, recording each timed step's per-mention time in every state."""
    n = max(1, len(states))
    for step in steps:
        t0 = time.perf_counter()
        states = step.run(states)
        if step.timed:
            per = 1000 * (time.perf_counter() - t0) / n
            for s in states:
                s.timings_ms[step.name] = per
    return states


def close_results(states: list[MentionState], method: str) -> list[LinkResult]:
    """The results of closed states, labelled with the method; a state left open is an error naming the method."""
    out = []
    for s in states:
        if s.result is None:
            raise RuntimeError(f"method {method!r}: mention {s.mention.id!r} has no result after the last step")
        s.result.method = method
        s.result.timings_ms = dict(s.timings_ms)
        out.append(s.result)
    return out


class Runner:
    """A method's active steps built from ``parts``, run in this process.

    ``withheld``: entity ids hidden from the index for this runner (the NIL protocol, :mod:`mel.withhold`): no
    search returns them and a result naming one is an error. The NIL threshold is resolved once, from the method's
    calibration for the index or from ``nil.threshold`` (:func:`mel.calibration.resolve_nil`), and is in
    :attr:`nil` with its source."""

    def __init__(self, cfg: Config, parts: Parts, *, method: str | None = None,
                 withheld: Collection[str] = ()) -> None:
        from mel.calibration import resolve_nil
        from mel.methods import registry

        registry.load_plugins(cfg.plugins)
        self.name = method or cfg.method
        self.spec = registry.get(self.name)
        self.spec.method_settings(cfg)  # refuse bad methods.<name> settings before building anything
        self.default_adapter = self.spec.default_adapter(cfg)
        cfg, self.nil = resolve_nil(cfg, self.spec, parts.index)
        self.cfg = cfg
        self.withheld: frozenset[str] = frozenset()
        base = getattr(parts.index, "unmasked", parts.index)
        if withheld:
            from mel.index.masked import MaskedIndex

            if base is None:
                raise ValueError(f"method {self.name!r} holds no index: entities cannot be withheld")
            masked = MaskedIndex(base, withheld)
            parts = replace(parts, index=masked)  # type: ignore[arg-type]
            self.withheld = masked.hidden
        elif base is not parts.index:
            parts = replace(parts, index=base)
        self.parts = parts
        self.steps: list[Step] = [cls(cfg, parts) for cls in self.spec.active_steps(cfg)]
        if parts.index is not None and any("llm" in c.needs for c in self.spec.active_steps(cfg)):
            from mel.llm.adapters import check_adapters_for_index

            check_adapters_for_index(cfg.selection.adapters, parts.index.manifest.kb_hash,
                                     index_dir=str(getattr(parts.index, "path", "")))

    @classmethod
    def load(cls, cfg: Config, index_dir: str | None, *, method: str | None = None, withheld: Collection[str] = (),
             **given: Any) -> Runner:
        """Build (or take, as keyword arguments: ``text_encoder=``, ``engine=``...) the parts the method's active
        steps need, load the index checked against the encoders, and build the runner."""
        from mel.methods import registry
        from mel.parts import load_parts

        registry.load_plugins(cfg.plugins)
        spec = registry.get(method or cfg.method)
        parts = load_parts(cfg, index_dir, spec.needs(cfg), **given)
        return cls(cfg, parts, method=spec.name, withheld=withheld)

    def withholding(self, entities: Collection[str]) -> Runner:
        """A runner of the same method on the same parts with ``entities`` withheld (steps are rebuilt; models and
        the index are shared, nothing is reloaded)."""
        return Runner(self.cfg, self.parts, method=self.name, withheld=entities)

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def link(self, mentions: list[Mention], images: list[Any] | None = None, adapter: str | None = None,
             k: int | None = None) -> list[LinkResult]:
        """Link a batch. ``images[i]``: a PIL image for mention i (None: its ``image`` file, when retrieval uses
        images); ``adapter``: a LoRA adapter name (default: the method's, see ``MethodSpec.default_adapter``);
        ``k``: candidates returned (default ``retrieval.top_k``)."""
        if not mentions:
            return []
        images = images if images is not None else [None] * len(mentions)
        if len(images) != len(mentions):
            raise ValueError(f"{len(images)} images for {len(mentions)} mentions")
        name = adapter or self.default_adapter
        states = [MentionState(m, image=im, adapter=name, k=k) for m, im in zip(mentions, images)]
        results = close_results(run_steps(self.steps, states), self.name)
        if self.withheld:
            for r in results:
                leaked = {c.entity_id for c in r.candidates} & self.withheld
                if r.entity_id in self.withheld:
                    leaked.add(r.entity_id)
                if leaked:
                    raise RuntimeError(f"method {self.name!r}: withheld entities {sorted(leaked)} "
                                       f"came back for mention {r.mention_id!r} (a step bypassed the index)")
        return results

    def shutdown(self) -> None:
        for engine in [self.parts.engine, *self.parts.adapter_engines.values()]:
            if engine is not None:
                engine.shutdown()
