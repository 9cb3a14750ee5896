"""The heavy parts steps are built from, and the one function that builds (or takes) them.

Parts are passed in, never built inside a step, so tests hand in doubles and a Serve replica builds its models once
and swaps only the index (:func:`load_parts` with the models given)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mel.ameli.clip_adapter import EmbeddingAdapter
    from mel.ameli.entail import EntailmentScorer
    from mel.config import Config
    from mel.encoders.base import ImageEncoder, TextEncoder
    from mel.gemel.lm import PrefixLM
    from mel.index.artifact import IndexArtifact
    from mel.llm.base import LLMEngine
    from mel.rerank.base import CrossEncoder


@dataclass
class Parts:
    """The heavy parts of a linking graph (any may be absent when no step of the method needs it)."""

    index: IndexArtifact | None = None
    text_encoder: TextEncoder | None = None
    image_encoder: ImageEncoder | None = None
    engine: LLMEngine | None = None
    cross_encoder: CrossEncoder | None = None
    adapter_engines: dict[str, LLMEngine] = field(default_factory=dict)
    """Adapter name -> an engine serving that adapter merged into the base model (``selection.merge_adapters``)."""
    nli: EntailmentScorer | None = None
    """Scores (context, statement) pairs for AMELI's text stream: an NLI model, or the cross-encoder as a proxy."""
    clip_adapter: EmbeddingAdapter | None = None
    """AMELI's image stream adapter (``ameli.image.adapter_path``; the identity, plain CLIP cosine, when unset)."""
    gemel_lm: PrefixLM | None = None
    """GEMEL's frozen LLM (models.llm through transformers: prefix embeddings and trie-constrained beams)."""

    def require(self, name: str, step: str) -> object:
        """The part ``name`` (attribute name; ``llm`` is ``engine``), or a clear error naming the step."""
        attr = "engine" if name == "llm" else name
        value = getattr(self, attr)
        if value is None:
            raise ValueError(f"step {step!r} needs the {name} part, but none was built or given (Parts.{attr})")
        return value


def load_parts(cfg: Config, index_dir: str | None, needs: Iterable[str], *, text_encoder: TextEncoder | None = None,
               image_encoder: ImageEncoder | None = None, engine: LLMEngine | None = None,
               cross_encoder: CrossEncoder | None = None, index: IndexArtifact | None = None,
               adapter_engines: dict[str, LLMEngine] | None = None, nli: EntailmentScorer | None = None,
               clip_adapter: EmbeddingAdapter | None = None, gemel_lm: PrefixLM | None = None) -> Parts:
    """Build the parts in ``needs`` that were not given, and load the index checked against the encoders.

    The image encoder is built only when ``models.image_encoder.enabled``; the index is refused when its manifest
    names another encoder (the message says what to rebuild)."""
    needs = set(needs)
    cache = cfg.models.cache_path()
    if "index" in needs or "text_encoder" in needs:
        if text_encoder is None:
            from mel.encoders import build_text_encoder

            text_encoder = build_text_encoder(cfg.models.text_encoder, cache)
        wants_images = "image_encoder" in needs or "index" in needs
        if image_encoder is None and cfg.models.image_encoder.enabled and wants_images:
            from mel.encoders import build_image_encoder

            image_encoder = build_image_encoder(cfg.models.image_encoder)
    if "index" in needs and index is None:
        if index_dir is None:
            raise ValueError("an index directory is needed: a step of this method searches the index")
        from mel.index.artifact import IndexArtifact

        assert text_encoder is not None
        index = IndexArtifact.load(
            index_dir, expect_encoder_id=text_encoder.id, expect_dim=text_encoder.dim,
            expect_image_encoder_id=image_encoder.id if image_encoder is not None else None,
            nprobe=cfg.index.nprobe, use_gpu=cfg.index.use_gpu)
        from mel.augment.entity import check_index_summaries

        check_index_summaries(index.manifest.summaries, cfg.index.summaries, index_dir)
    if "llm" in needs and engine is None:
        from mel.llm import build_llm_engine

        engine = build_llm_engine(cfg.models.llm, cache)
    if "llm" in needs and adapter_engines is None and cfg.selection.merge_adapters and cfg.selection.adapters:
        from mel.llm import build_merged_engines

        adapter_engines = build_merged_engines(cfg.models.llm, cfg.selection.adapters, cache)
    proxy = "nli" in needs and nli is None and cfg.ameli.text.nli_model is None
    if ("cross_encoder" in needs or proxy) and cross_encoder is None:
        from mel.rerank import build_cross_encoder

        cross_encoder = build_cross_encoder(cfg.retrieval.rerank, cache)
    if "nli" in needs and nli is None:
        from mel.ameli.entail import build_entailment_scorer

        nli = build_entailment_scorer(cfg.ameli.text, cross_encoder=cross_encoder, cache_dir=cache)
    if "clip_adapter" in needs and clip_adapter is None:
        from mel.ameli.clip_adapter import IdentityAdapter, load_clip_adapter

        path = cfg.ameli.image.adapter_path
        clip_adapter = IdentityAdapter() if path is None else load_clip_adapter(
            path, expect_image_encoder_id=image_encoder.id if image_encoder is not None else None,
            expect_dim=image_encoder.dim if image_encoder is not None else None)
    if "gemel_lm" in needs and gemel_lm is None:
        from mel.gemel.lm import HFPrefixLM
        from mel.models.sources import resolve_model

        gemel_lm = HFPrefixLM(resolve_model(cfg.models.llm.model, kind="llm", cache_dir=cache),
                              device=cfg.gemel.device, dtype=cfg.gemel.dtype)
    return Parts(index, text_encoder, image_encoder, engine, cross_encoder, dict(adapter_engines or {}), nli,
                 clip_adapter, gemel_lm)


# The name the foundation used; kept for callers that build parts by hand.
Components = Parts
