"""What a linking step is: a named unit over a batch of mention states that declares the heavy parts it needs.

A method (``mel.methods``) is a declared list of step names. The runner (``mel.runner``) executes the steps in one
process; the Serve app (``serve``) places each step on the deployment that hosts the parts it needs (its
:class:`Host`) and walks the same list. Nothing here knows which method runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mel.types import Candidate, LinkResult, Mention

if TYPE_CHECKING:
    from mel.config import Config
    from mel.parts import Parts

# The heavy parts a step may need, and the config sections that decide how each is built.
PART_CONFIG: dict[str, tuple[str, ...]] = {
    "text_encoder": ("models.text_encoder", "models.cache_dir"),
    "image_encoder": ("models.image_encoder",),
    "index": ("index",),
    "cross_encoder": ("retrieval.rerank", "models.cache_dir"),
    "llm": ("models.llm", "models.cache_dir"),
    "nli": ("ameli.text", "retrieval.rerank", "models.cache_dir"),
    "clip_adapter": ("ameli.image", "models.image_encoder"),
    "gemel_lm": ("models.llm", "gemel.dtype", "gemel.device", "models.cache_dir"),
}
PARTS: frozenset[str] = frozenset(PART_CONFIG)


def config_sections(steps: list[type[Step]]) -> set[str]:
    """The dotted config sections ``steps`` read: their own ``reads`` and those of the parts they need."""
    out: set[str] = set()
    for s in steps:
        out.update(s.reads)
        for part in s.needs:
            out.update(PART_CONFIG[part])
    return out


def config_section(raw: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path of a dumped config (None when absent)."""
    cur: Any = raw
    for key in dotted.split("."):
        cur = cur.get(key) if isinstance(cur, dict) else None
    return cur


@dataclass
class MentionState:
    """One mention on its way through a method's steps. Plain and picklable: Serve passes it between deployments.

    ``texts`` carries entity passages (id -> text) for steps that run where the index is not (the LLM host);
    ``k`` is the number of candidates the caller asked for (None: ``retrieval.top_k``); ``result`` is set by the
    closing step (NIL decision)."""

    mention: Mention
    image: Any = None
    adapter: str | None = None
    k: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    result: LinkResult | None = None
    description: str | None = None
    """What the mention refers to, in the words of an LLM (the ``describe`` step)."""
    description_in: tuple[str, ...] = ()
    """Where later steps show the description: "retrieval" (retrieval and re-ranking), "selection"."""
    demos: list[Any] = field(default_factory=list)
    """GEMEL's in-context demonstrations for the mention (``mel.gemel.demos.Demo``, least similar first)."""
    image_features: dict[str, Any] | None = None
    """CLIP features for AMELI's image stream (the ``image_features`` step): ``mention`` (d,) or None, ``entities``
    (id -> (k, d) vectors of the entity's images), ``encoder`` (the image encoder's id)."""

    def view(self, use: str) -> Mention:
        """The mention as a step of kind ``use`` ("retrieval" or "selection") shows it: with the description
        appended to its context where the describe step asked for it."""
        if self.description and use in self.description_in:
            from mel.augment.mention import with_description

            return with_description(self.mention, self.description)
        return self.mention


class Step:
    """Base of every registered step. Subclasses set the class attributes and implement :meth:`run`.

    - ``name``: the registered name methods list;
    - ``needs``: heavy parts (keys of :data:`PART_CONFIG`) the step is built from; they decide where it runs;
    - ``reads``: dotted config sections the step reads (with its parts' sections they version its deployment);
    - ``code``: modules besides its own whose code it runs (they version its deployment too);
    - ``closes``: the step that turns states into results (a method must end with one);
    - ``timed``: whether the runner records its time in ``timings_ms``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    reads: ClassVar[tuple[str, ...]] = ()
    code: ClassVar[tuple[str, ...]] = ()
    closes: ClassVar[bool] = False
    timed: ClassVar[bool] = True

    def __init__(self, cfg: Config, parts: Parts) -> None:
        self.cfg = cfg
        self.parts = parts

    @classmethod
    def active(cls, cfg: Config) -> bool:
        """Whether the step takes part under ``cfg`` (an optional step switched off, or one whose weight is 0,
        neither runs nor needs its parts)."""
        return True

    def run(self, states: list[MentionState]) -> list[MentionState]:
        raise NotImplementedError


@dataclass(frozen=True)
class Host:
    """Where steps run: the process holding a set of heavy parts. ``local`` steps need none and run wherever the
    runner or the Serve ingress is; every other host is one Serve deployment (``deployment``, resources and batching
    from ``serve.<serve_section>``)."""

    name: str
    parts: frozenset[str]
    deployment: str | None = None
    serve_section: str | None = None


HOSTS: tuple[Host, ...] = (
    Host("local", frozenset()),
    Host("retriever", frozenset({"text_encoder", "image_encoder", "index", "cross_encoder", "nli", "gemel_lm"}),
         "Retriever",
         "retriever"),
    Host("llm", frozenset({"llm"}), "Selector", "selector"),
    Host("scorer", frozenset({"clip_adapter"}), "Scorer", "scorer"),
)


def host_of(step: type[Step]) -> Host:
    """The first host whose parts cover the step's needs."""
    unknown = step.needs - PARTS
    if unknown:
        raise ValueError(f"step {step.name!r} needs unknown parts {sorted(unknown)}; known: {sorted(PARTS)}")
    for h in HOSTS:
        if step.needs <= h.parts:
            return h
    raise ValueError(f"step {step.name!r} needs {sorted(step.needs)}: no host holds all of them "
                     f"(hosts: {', '.join(f'{h.name}={sorted(h.parts)}' for h in HOSTS)})")


def segments(steps: list[type[Step]]) -> list[tuple[Host, list[type[Step]]]]:
    """Consecutive steps grouped by host, in order: what the Serve ingress sends to each deployment."""
    out: list[tuple[Host, list[type[Step]]]] = []
    for s in steps:
        h = host_of(s)
        if out and out[-1][0] == h:
            out[-1][1].append(s)
        else:
            out.append((h, [s]))
    return out
