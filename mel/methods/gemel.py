"""``gemel``: GEMEL's generative linking on the shared steps: in-context demonstrations (``demonstrate``) -> the
frozen LLM writes the entity's name under beam search constrained to the KB's names (``generate``) -> a name borne
by several entities is resolved by text similarity (``name_to_id``) -> NIL. No candidate retrieval decides the
answer. ``gemel-no-icl``: the same without demonstrations. The image mapper's prefix is not part of the
declaration yet (issue 15).

Its score is the top beam's per-token probability, ``exp(mean token log-probability)`` in (0, 1].
"""

from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec

SCORE = "exp(mean token log-probability) of the generated name under the LLM, in (0, 1]"

register_method(MethodSpec(
    "gemel", ("demonstrate", "generate", "name_to_id", "nil"),
    "GEMEL: in-context demonstrations, the LLM generates a KB name (trie-constrained beams), names to ids",
    score=SCORE))
register_method(MethodSpec(
    "gemel-no-icl", ("generate", "name_to_id", "nil"),
    "GEMEL without in-context demonstrations", score=SCORE))
