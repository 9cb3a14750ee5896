"""What the augmentation stages share: the engine interface they call, model identities (recorded in cache keys
and manifests), and prompt rendering."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mel.config import LLMConfig


@runtime_checkable
class ChatGenerator(Protocol):
    """A text LLM as the augmentation stages use it (:class:`mel.llm.vllm_engine.VLLMEngine` is one)."""

    @property
    def id(self) -> str: ...

    def format_chat(self, system: str | None, user: str) -> str:
        """The prompt of one chat turn with the model's chat template, the assistant turn opened."""
        ...

    def generate(self, prompts: list[str], max_tokens: int = 64) -> list[str]:
        """Greedy continuations, one per prompt."""
        ...


@dataclass(frozen=True)
class ModelIdentity:
    """How a model is named in cache keys and manifests: its engine id and architecture fingerprint (None when
    the engine has no model folder, e.g. a unit-test double)."""

    id: str
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fingerprint": self.fingerprint}


def vllm_identity(cfg: LLMConfig, cache_dir: str | None = None) -> ModelIdentity:
    """The identity of the :class:`~mel.llm.vllm_engine.VLLMEngine` that ``cfg`` builds, without starting it
    (resolves the model; the first use of a packaged GGUF converts it). Engine actors check their engine's id
    against it, so a drift between the two formulas is caught."""
    from mel.models.fingerprint import architecture_fingerprint
    from mel.models.sources import model_id, resolve_model

    path = resolve_model(cfg.model, kind="llm", cache_dir=cache_dir)
    return ModelIdentity(f"vllm:{model_id(cfg.model, path)}:{cfg.dtype}", architecture_fingerprint(path))


def engine_identity(engine: Any) -> ModelIdentity:
    """The identity of a built engine: ``engine.id`` and the fingerprint of ``engine.model_path`` if it has one."""
    path = getattr(engine, "model_path", None)
    fingerprint = getattr(engine, "fingerprint", None)
    if fingerprint is None and path is not None:
        from mel.models.fingerprint import architecture_fingerprint

        fingerprint = architecture_fingerprint(path)
    return ModelIdentity(str(engine.id), fingerprint)


@dataclass
class EngineSlot:
    """An engine known by identity, built on first use (a rerun that finds everything cached starts nothing)."""

    identity: ModelIdentity
    factory: Callable[[], Any]
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, engine: Any) -> EngineSlot:
        """A slot holding an engine that is already built."""
        return cls(engine_identity(engine), lambda: engine, engine)

    @property
    def built(self) -> bool:
        return self._engine is not None

    def get(self) -> Any:
        if self._engine is None:
            self._engine = self.factory()
            got = str(self._engine.id)
            if got != self.identity.id:
                from mel.errors import ArtifactMismatch

                raise ArtifactMismatch(f"the engine built reports id {got!r}, the cache keys were computed for "
                                       f"{self.identity.id!r}; refusing to mix models in one artifact")
        return self._engine


# ----------------------------------------------------------------------------- prompt text
def truncate(text: str, max_chars: int) -> str:
    """``text`` with whitespace collapsed, cut to at most ``max_chars`` characters at a word boundary ('...'
    marks a cut)."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max(1, max_chars - 3)]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


def template_fields(template: str) -> set[str]:
    """The field names a ``str.format`` template uses."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def render_lines(template: str, values: Mapping[str, str]) -> str:
    """``template.format(**values)`` line by line, leaving out each line that uses fields and whose fields all
    render empty (e.g. 'Also known as: {aliases}' for an entity without aliases)."""
    out = []
    for line in template.split("\n"):
        used = template_fields(line)
        if used and not any(str(values.get(f, "")).strip() for f in used):
            continue
        out.append(line.format(**values))
    return "\n".join(out).strip()


def clean_generation(text: str) -> str:
    """A generated text as stored: whitespace collapsed to single spaces, stripped."""
    return " ".join(str(text).split())


def chat_prompts(engine: ChatGenerator, system: str, users: list[str]) -> list[str]:
    """Each user message in the engine's chat template, after ``system`` ('' for none)."""
    return [engine.format_chat(system or None, u) for u in users]


class Progress:
    """Logs how many of ``total`` generations are done, their rate and the time left (at most every
    ``every_s`` seconds, and at the end)."""

    def __init__(self, what: str, total: int, logger: Any, *, every_s: float = 10.0) -> None:
        import time

        self.what, self.total, self.log, self.every_s = what, total, logger, every_s
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    @property
    def seconds(self) -> float:
        import time

        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        """Generations per second so far."""
        return self.done / max(self.seconds, 1e-9)

    def update(self, n: int) -> None:
        import time

        self.done += n
        now = time.perf_counter()
        if now - self._last < self.every_s and self.done < self.total:
            return
        self._last = now
        left = (self.total - self.done) / self.rate if self.rate > 0 else float("inf")
        self.log.info("%s: %d/%d generated (%.2f/s, ~%.0f s left)", self.what, self.done, self.total, self.rate, left)
