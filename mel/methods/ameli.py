"""``ameli``: AMELI's attribute-aware linking on the shared steps: retrieval -> cross-encoder re-ranking (the
candidate fusion of bi-encoder, image similarity and cross-encoder: ``retrieval.image_weight``,
``retrieval.rerank.weight``) -> the image features (``image_features``: CLIP embeddings of the mention's image and
of the head's stored entity images) -> the text stream (``entail``: does the mention's context entail each of a
candidate's attribute statements?) -> attribute filtering (``attribute_filter``) -> the image stream
(``image_stream``, on the Scorer deployment: both sides through the residual CLIP adapter trained by
`mel train adapter`) -> fusion (``fuse``) -> NIL.

Its score is ``p * incoming + (1 - p) * (lam * text + (1 - lam) * image)`` over the head, each part min-max
normalised per mention (``ameli.fusion``), so ``nil.threshold`` acts on a [0, 1] score; the text stream alone where
either side has no image. The image steps run only with ``models.image_encoder.enabled`` (and an index holding
image vectors from that encoder).

Variants, each a declaration of its own (nothing is inferred from the name):

- ``ameli-no-nli``: no text stream (retrieval, re-ranking, filtering, fusion of the incoming score alone);
- ``ameli-no-filter``: no attribute filtering.

``configs/ameli.yaml`` turns re-ranking on and holds the fusion weights tuned on dev (``bench/tune_ameli.py``).
"""

from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec

SCORE = ("p x the incoming (re-ranked) score + (1 - p) x the text stream (entailment of attribute statements), each "
         "min-max normalised over the head, in [0, 1]; filtered candidates last")

register_method(MethodSpec(
    "ameli", ("retrieve", "rerank", "image_features", "entail", "attribute_filter", "image_stream", "fuse", "nil"),
    "AMELI: retrieval, re-ranking, an NLI text stream over attribute statements, attribute filtering, a CLIP-adapter "
    "image stream, fusion",
    score=SCORE))
register_method(MethodSpec(
    "ameli-no-nli", ("retrieve", "rerank", "image_features", "attribute_filter", "image_stream", "fuse", "nil"),
    "AMELI without the text stream: retrieval, re-ranking, attribute filtering, the image stream",
    score="p x the incoming (re-ranked) score + (1 - p) x the image stream (the incoming score alone without images), "
    "min-max normalised over the head; filtered candidates last"))
register_method(MethodSpec(
    "ameli-no-filter", ("retrieve", "rerank", "image_features", "entail", "image_stream", "fuse", "nil"),
    "AMELI without attribute filtering: retrieval, re-ranking, the NLI text stream, the image stream, fusion",
    score=SCORE))
