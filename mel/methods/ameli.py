"""``ameli``: AMELI's attribute-aware linking on the shared steps: retrieval -> cross-encoder re-ranking (the
candidate fusion of bi-encoder, image similarity and cross-encoder: ``retrieval.image_weight``,
``retrieval.rerank.weight``) -> the text stream (``entail``: does the mention's context entail each of a candidate's
attribute statements?) -> attribute filtering (``attribute_filter``) -> fusion (``fuse``) -> NIL.

Its score is ``p * incoming + (1 - p) * (lam * text + (1 - lam) * image)`` over the head, each part min-max
normalised per mention (``ameli.fusion``), so ``nil.threshold`` acts on a [0, 1] score. The image stream (a CLIP
adapter on a Scorer deployment) is not part of the declaration yet: with no image scores the stream is the text
stream alone, as the paper does when either side has no image.

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
    "ameli", ("retrieve", "rerank", "entail", "attribute_filter", "fuse", "nil"),
    "AMELI: retrieval, re-ranking, an NLI text stream over attribute statements, attribute filtering, fusion",
    score=SCORE))
register_method(MethodSpec(
    "ameli-no-nli", ("retrieve", "rerank", "attribute_filter", "fuse", "nil"),
    "AMELI without the text stream: retrieval, re-ranking, attribute filtering",
    score="the incoming (re-ranked) score min-max normalised over the head; filtered candidates last"))
register_method(MethodSpec(
    "ameli-no-filter", ("retrieve", "rerank", "entail", "fuse", "nil"),
    "AMELI without attribute filtering: retrieval, re-ranking, the NLI text stream, fusion",
    score=SCORE))
