"""AMELI's image stream, in two steps so that the index and the image encoder stay on the Retriever and the CLIP
adapter runs on a Scorer deployment of its own:

- ``image_features`` (Retriever): the mention's CLIP image embedding (its image in the request, or its ``image``
  file) and the stored image vectors of the head of its candidate list (``ameli.text.candidates``), into
  ``state.image_features``; a mention without an image gets none;
- ``image_stream`` (Scorer): both sides through the residual adapter (``ameli.image.adapter_path``; plain CLIP
  cosine without one), a candidate's score the best cosine over its images, into ``scores["image_stream"]``;
  candidates without images get no score (``fuse`` then uses the text stream alone for them).

Both are active only when ``models.image_encoder.enabled``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step

if TYPE_CHECKING:
    from mel.config import Config


def images_enabled(cfg: Config) -> bool:
    return cfg.models.image_encoder.enabled


@register_step
class ImageFeaturesStep(Step):
    name: ClassVar[str] = "image_features"
    needs = frozenset({"image_encoder", "index"})
    reads = ("ameli.text.candidates",)
    code = ("mel.stages.retrieve",)

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return images_enabled(cfg)

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        super().__init__(cfg, parts)
        self.encoder = parts.require("image_encoder", self.name)
        self.index = parts.require("index", self.name)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.stages.retrieve import load_mention_image

        images = [s.image if s.image is not None else load_mention_image(s.mention) for s in states]
        with_img = [i for i, im in enumerate(images) if im is not None]
        if not with_img:
            return states
        vecs = self.encoder.encode([images[i] for i in with_img])
        n = self.cfg.ameli.text.candidates
        for i, v in zip(with_img, vecs, strict=True):
            s = states[i]
            ids = [c.entity_id for c in s.candidates[:n]]
            ent = {e: x for e, x in zip(ids, self.index.entity_image_vectors(ids), strict=True) if x is not None}
            s.image_features = {"mention": v, "entities": ent, "encoder": self.encoder.id}
        return states


@register_step
class ImageStreamStep(Step):
    name: ClassVar[str] = "image_stream"
    needs = frozenset({"clip_adapter"})
    reads = ("ameli.image",)
    code = ("mel.ameli.clip_adapter",)

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return images_enabled(cfg)

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        super().__init__(cfg, parts)
        self.adapter = parts.require("clip_adapter", self.name)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        import numpy as np

        from mel.errors import ArtifactMismatch

        todo = [s for s in states if s.image_features and s.image_features.get("entities")]
        if not todo:
            return states
        want = self.adapter.image_encoder_id
        rows: list[np.ndarray] = []
        for s in todo:
            f = s.image_features
            assert f is not None
            if want is not None and f["encoder"] != want:
                raise ArtifactMismatch(f"the CLIP adapter ({self.cfg.ameli.image.adapter_path}) was trained on image "
                                       f"encoder {want!r}, but the features come from {f['encoder']!r}; train one "
                                       "for it with `mel train adapter`")
            rows.append(np.asarray(f["mention"], dtype=np.float32)[None, :])
            rows.extend(np.asarray(v, dtype=np.float32) for v in f["entities"].values())
        out = self.adapter.transform(np.concatenate(rows))  # one call per batch
        pos = 0
        for s in todo:
            f = s.image_features
            assert f is not None
            m = out[pos]
            pos += 1
            best: dict[str, float] = {}
            for eid, v in f["entities"].items():
                best[eid] = float((out[pos:pos + len(v)] @ m).max())
                pos += len(v)
            for c in s.candidates:
                if c.entity_id in best:
                    c.scores["image_stream"] = best[c.entity_id]
        return states
