"""Retrieval stage: mention -> top-K KB candidates by text (and image) embedding similarity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.config import RetrievalConfig
from mel.text import mention_text
from mel.types import Candidate, Mention

if TYPE_CHECKING:
    from PIL import Image

    from mel.encoders.base import ImageEncoder, TextEncoder
    from mel.index.artifact import IndexArtifact


def load_mention_image(mention: Mention) -> Image.Image | None:
    """Open a mention's image file as RGB, or None when it has none. Errors name the file."""
    if not mention.image:
        return None
    from PIL import Image, UnidentifiedImageError

    from mel.errors import InputError

    try:
        with Image.open(mention.image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError("image file not found", path=mention.image, field="image") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot decode image: {e}", path=mention.image, field="image") from None


class Retriever:
    """Dense retrieval over an :class:`IndexArtifact`.

    Text similarity ranks the KB; where the mention has an image and the index has image vectors,
    ``image_weight`` times the best image-image similarity of each candidate is added (entities
    found only through the image index join the pool, scored exactly on both sides).
    """

    def __init__(self, index: IndexArtifact, text_encoder: TextEncoder, cfg: RetrievalConfig,
                 image_encoder: ImageEncoder | None = None) -> None:
        self.index = index
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.cfg = cfg

    @property
    def uses_images(self) -> bool:
        return (self.image_encoder is not None and self.cfg.image_weight > 0
                and self.index.manifest.image_encoder_id is not None)

    def retrieve(self, mentions: list[Mention], images: list[Image.Image | None] | None = None,
                 k: int | None = None) -> list[list[Candidate]]:
        """Top-``k`` candidates per mention, best first. ``images`` overrides loading ``mention.image``."""
        if not mentions:
            return []
        k = k or self.cfg.top_k
        texts = [mention_text(m, self.cfg.mention_template) for m in mentions]
        qv = self.text_encoder.encode(texts)
        pool = k if not self.uses_images else max(k, self.cfg.image_pool)
        scores, ids = self.index.search_text(qv, min(pool, len(self.index)))
        out: list[list[Candidate]] = []
        if not self.uses_images:
            for row_s, row_ids in zip(scores, ids):
                out.append([self._cand(eid, float(s), {"text": float(s)}) for s, eid in zip(row_s, row_ids)][:k])
            return out
        if images is None:
            images = [load_mention_image(m) for m in mentions]
        with_img = [i for i, im in enumerate(images) if im is not None]
        img_vecs = {}
        if with_img:
            assert self.image_encoder is not None
            enc = self.image_encoder.encode([images[i] for i in with_img])
            img_vecs = dict(zip(with_img, enc))
        for i, (row_s, row_ids) in enumerate(zip(scores, ids)):
            text_s = {eid: float(s) for s, eid in zip(row_s, row_ids)}
            if i not in img_vecs:
                out.append([self._cand(e, s, {"text": s}) for e, s in text_s.items()][:k])
                continue
            iv = img_vecs[i]
            _, img_ids = self.index.search_image(iv[None, :], self.cfg.image_pool)
            pool_ids = list(dict.fromkeys(list(text_s) + list(img_ids[0])))
            t_all = self.index.text_scores(qv[i], pool_ids)
            i_all = self.index.image_scores(iv, pool_ids)
            cands = []
            for eid, ts, isc in zip(pool_ids, t_all, i_all):
                ts, isc = float(ts), float(isc) if isc is not None else None
                total = ts + (self.cfg.image_weight * isc if isc is not None else 0.0)
                parts = {"text": ts} if isc is None else {"text": ts, "image": isc}
                cands.append(self._cand(eid, total, parts))
            cands.sort(key=lambda c: -c.score)
            out.append(cands[:k])
        return out

    def _cand(self, entity_id: str, score: float, parts: dict[str, float]) -> Candidate:
        parts = dict(parts)
        parts["retrieval"] = score
        return Candidate(entity_id=entity_id, name=self.index.name(entity_id), score=score, scores=parts)
