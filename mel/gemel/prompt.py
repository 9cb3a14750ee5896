"""The GEMEL prompt as token ids: a header, the demonstrations, then the query, one mention per line.

Layout (the image prefix embeddings, when any, come before all of it; see :mod:`mel.methods.gemel`)::

    Link each mention to the name of the knowledge-base entity it refers to.\\n
    <context> | <surface> -> <gold name>\\n        (one line per demonstration, the most similar last)
    <context> | <surface> ->                       (the query; generation continues with " <name>\\n")

A mention line is :func:`mention_line` (the context cut to ``max_mention_chars`` at a word boundary). The answer
tokens of a demonstration are exactly the trie's sequence for that name (:func:`mel.gemel.trie.name_token_ids`), so
demonstrations, the constrained generation and the mapper's training targets use the same token ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from mel.gemel.demos import Demo, trim_to_budget
from mel.gemel.trie import Tokenizer, end_token_id, name_token_ids
from mel.types import Mention

HEADER = "Link each mention to the name of the knowledge-base entity it refers to.\n"


def cut(text: str, max_chars: int) -> str:
    """``text`` whitespace-normalised and cut to at most ``max_chars`` characters at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip()


def mention_line(mention: Mention, max_chars: int) -> str:
    """``"<context> | <surface> ->"`` (just ``"<surface> ->"`` without context)."""
    surface = " ".join(mention.surface.split())
    context = cut(mention.context, max_chars) if max_chars > 0 else ""
    return f"{context} | {surface} ->" if context else f"{surface} ->"


class PromptFormat:
    """Token ids of prompts and answers for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer, *, max_mention_chars: int = 300) -> None:
        self.tokenizer = tokenizer
        self.max_mention_chars = max_mention_chars
        self.end_id = end_token_id(tokenizer)
        self.header_ids = self._encode(HEADER)

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def query_ids(self, mention: Mention) -> list[int]:
        return self._encode(mention_line(mention, self.max_mention_chars))

    def answer_ids(self, name: str) -> list[int]:
        """The generated continuation for ``name``: its trie sequence (`` <name>`` + end marker)."""
        return name_token_ids(self.tokenizer, name, self.end_id)

    def demo_ids(self, demo: Demo) -> list[int]:
        return self.query_ids(demo.mention) + self.answer_ids(demo.name)

    def build(self, mention: Mention, demos: Sequence[Demo], budget: int) -> tuple[list[int], list[Demo]]:
        """Header + the demonstrations that fit + query, within ``budget`` tokens. Returns the ids and the
        demonstrations kept (the least similar are dropped first). A query longer than the budget on its own
        keeps its last tokens (the end of the context, the surface and ``->``)."""
        query = self.query_ids(mention)
        room = budget - len(self.header_ids) - len(query)
        if room < 0:
            if budget <= 0:
                raise ValueError(f"prompt budget must be positive, got {budget}")
            keep = budget - len(self.header_ids)
            return (self.header_ids + query[-keep:] if keep > 0 else query[-budget:]), []
        encoded = {id(d): self.demo_ids(d) for d in demos}
        kept = trim_to_budget(list(demos), lambda d: len(encoded[id(d)]), room)
        ids = list(self.header_ids)
        for d in kept:
            ids.extend(encoded[id(d)])
        return ids + query, kept
