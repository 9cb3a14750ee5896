"""In-context demonstrations: the labelled mentions most similar to the query, shown before it in the prompt.

The pool is a list of labelled mentions (a dataset's training split, or a mentions file); each is embedded once
with the text encoder (the retrieval mention template), and a query's demonstrations are its ``n`` nearest pool
mentions by cosine similarity (dot product of L2-normalised vectors). They are returned in ASCENDING similarity:
the most similar demonstration is the last one, nearest the query. :func:`trim_to_budget` drops the least similar
ones first until the prompt fits.

Skipped from the pool:

- mentions with a NIL gold (``gold is None``) and mentions whose gold is not in the KB: a demonstration shows a
  mention followed by the KB name it links to, and a NIL mention has no name to show (nor could the trie generate
  one);
- at query time, the query mention itself when it is in the pool (same id, surface and context), so evaluating on
  the pool's own split never shows the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mel.errors import InputError
from mel.text import mention_text
from mel.types import Mention

if TYPE_CHECKING:
    import numpy as np

    from mel.config import GemelDemosConfig
    from mel.encoders.base import TextEncoder

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Demo:
    """One demonstration: a labelled mention, the KB name of its gold entity, its similarity to the query."""

    mention: Mention
    name: str
    similarity: float


def same_mention(a: Mention, b: Mention) -> bool:
    """True when ``a`` and ``b`` are the same mention record (id, surface and context all equal)."""
    return a.id == b.id and a.surface == b.surface and a.context == b.context


class DemoPool:
    """Labelled mentions with their gold names and text vectors (row i of ``vectors`` embeds ``mentions[i]``)."""

    def __init__(self, mentions: Sequence[Mention], names: Sequence[str], vectors: np.ndarray, *,
                 skipped_nil: int = 0, skipped_not_in_kb: int = 0) -> None:
        import numpy as np

        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(mentions) != len(names) or vecs.ndim != 2 or len(vecs) != len(mentions):
            raise ValueError(f"demo pool: {len(mentions)} mentions, {len(names)} names and vectors of shape "
                             f"{vecs.shape} must agree")
        self.mentions = list(mentions)
        self.names = list(names)
        self.vectors = vecs
        self.skipped_nil = skipped_nil
        self.skipped_not_in_kb = skipped_not_in_kb

    @classmethod
    def build(cls, mentions: Sequence[Mention], gold_name: Callable[[str], str | None], encoder: TextEncoder,
              template: str = "{surface}. {context}") -> DemoPool:
        """Keep the mentions whose gold ``gold_name`` knows (None: not in the KB), embed them with ``encoder``."""
        kept: list[Mention] = []
        names: list[str] = []
        nil = not_in_kb = 0
        for m in mentions:
            if m.gold is None:
                nil += 1
                continue
            name = gold_name(m.gold)
            if name is None or not name.strip():
                not_in_kb += 1
                continue
            kept.append(m)
            names.append(name)
        if not kept and mentions:
            raise InputError(f"demonstration pool: none of {len(mentions)} mentions has a gold entity in the KB "
                             f"({nil} NIL, {not_in_kb} gold not in the KB)")
        vectors = encoder.encode([mention_text(m, template) for m in kept])
        log.info("GEMEL demonstration pool: %d mentions (skipped %d NIL, %d gold not in KB)", len(kept), nil,
                 not_in_kb)
        return cls(kept, names, vectors, skipped_nil=nil, skipped_not_in_kb=not_in_kb)

    def __len__(self) -> int:
        return len(self.mentions)

    def nearest(self, query: Mention, query_vec: np.ndarray, n: int) -> list[Demo]:
        """The ``n`` pool mentions most similar to ``query`` (itself excluded), least similar FIRST, most similar
        LAST. Ties are broken by pool order (deterministic)."""
        import numpy as np

        if n <= 0 or not self.mentions:
            return []
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.vectors.shape[1]:
            raise InputError(f"query vector has dim {q.shape[0]}, the demonstration pool {self.vectors.shape[1]}")
        sims = self.vectors @ q
        want = min(len(sims), n + 1)  # one spare in case the query itself is in the pool
        if want < len(sims):
            part = np.argpartition(-sims, want - 1)[:want]
            cutoff = sims[part].min()
            part = np.flatnonzero(sims >= cutoff)  # every tie at the cut-off, so pool order decides among them
        else:
            part = np.arange(len(sims))
        order = part[np.lexsort((part, -sims[part]))]  # similarity descending, then pool position
        picked = [int(i) for i in order if not same_mention(self.mentions[int(i)], query)][:n]
        return [Demo(self.mentions[i], self.names[i], float(sims[i])) for i in reversed(picked)]


def trim_to_budget(demos: Sequence[T], cost: Callable[[T], int], budget: int) -> list[T]:
    """The longest tail of ``demos`` (ordered least similar first) whose total ``cost`` fits ``budget``:
    the least similar demonstrations are dropped first, and the kept ones stay in order."""
    kept: list[T] = []
    total = 0
    for d in reversed(demos):
        c = cost(d)
        if total + c > budget:
            break
        kept.append(d)
        total += c
    return kept[::-1]


# ----------------------------------------------------------------------------- the stored demonstration index
DEMOS_FORMAT = 1
DEMOS_MANIFEST = "manifest.json"


def pool_source(cfg: GemelDemosConfig) -> tuple[str, list[Mention]]:
    """The configured pool: (a description, its mentions): ``dataset``/``split``, or a ``mentions`` file."""
    if cfg.mentions is not None:
        from mel.mentions import read_mentions

        return f"file:{cfg.mentions}", list(read_mentions(cfg.mentions))
    if cfg.dataset is not None:
        from mel.datasets import load_dataset

        return f"dataset:{cfg.dataset}/{cfg.split}", load_dataset(cfg.dataset).split(cfg.split)
    raise InputError("GEMEL demonstrations need a pool: set gemel.demos.dataset (and split) or gemel.demos.mentions "
                     "(or gemel.demos.n=0, or the method gemel-no-icl)")


def _content_hash(mentions: Sequence[Mention]) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for m in mentions:
        h.update(json.dumps([m.id, m.surface, m.context, m.gold], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def load_or_build_pool(cfg: GemelDemosConfig, *, encoder: TextEncoder, kb_hash: str,
                       gold_name: Callable[[str], str | None], index_dir: str | None) -> DemoPool:
    """The demonstration pool of ``cfg``: loaded from its stored index when one was built for the same pool,
    encoder, template and KB, else built (embedding every pool mention once) and stored, atomically, with a
    manifest. A stored index made otherwise is refused, naming what differs."""
    import hashlib
    import json
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from mel.atomic import publish_dir
    from mel.errors import ArtifactMismatch

    source, mentions = pool_source(cfg)
    want = {"format": DEMOS_FORMAT, "source": source, "pool_hash": _content_hash(mentions),
            "encoder_id": encoder.id, "template": cfg.template, "kb_hash": kb_hash}
    key = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:16]
    if cfg.index_dir is not None:
        root = Path(cfg.index_dir)
    elif index_dir is not None:
        root = Path(index_dir) / "extras" / f"gemel-demos-{key}"
    else:
        root = None
    if root is not None and (root / DEMOS_MANIFEST).is_file():
        meta = json.loads((root / DEMOS_MANIFEST).read_text())
        differ = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if differ:
            raise ArtifactMismatch(f"demonstration index {root} was made otherwise ("
                                   + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differ.items())
                                   + "); delete it (it is rebuilt on next use) or point gemel.demos.index_dir "
                                   "elsewhere")
        rows = [json.loads(x) for x in (root / "demos.jsonl").read_text().splitlines() if x]
        vectors = np.load(root / "vectors.npy", allow_pickle=False)
        kept = [Mention(r["id"], r["surface"], r.get("context", ""), gold=r["gold"]) for r in rows]
        return DemoPool(kept, [r["name"] for r in rows], vectors, skipped_nil=meta["skipped_nil"],
                        skipped_not_in_kb=meta["skipped_not_in_kb"])
    t0 = time.perf_counter()
    pool = DemoPool.build(mentions, gold_name, encoder, cfg.template)
    if root is None:
        return pool
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        np.save(tmp / "vectors.npy", pool.vectors, allow_pickle=False)
        (tmp / "demos.jsonl").write_text("".join(
            json.dumps({"id": m.id, "surface": m.surface, "context": m.context, "gold": m.gold, "name": n},
                       ensure_ascii=False) + "\n" for m, n in zip(pool.mentions, pool.names, strict=True)))
        meta = {**want, "mentions": len(pool), "skipped_nil": pool.skipped_nil,
                "skipped_not_in_kb": pool.skipped_not_in_kb, "build_s": round(time.perf_counter() - t0, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / DEMOS_MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        publish_dir(tmp, root)
    except OSError as e:
        log.warning("cannot store the demonstration index in %s (%s): it is rebuilt on every load", root, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pool
