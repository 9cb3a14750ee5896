"""``retrieval``: dense retrieval (then cross-encoder re-ranking when ``retrieval.rerank`` is on); the top candidate
is the answer."""

from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec

register_method(MethodSpec(
    "retrieval", ("retrieve", "rerank", "nil"),
    "embedding retrieval (+ cross-encoder re-ranking when enabled); the top candidate is the answer",
    score="cosine similarity of mention and entity embeddings (+ image_weight x image similarity); with "
          "re-ranking, the fused re-ranked score"))
