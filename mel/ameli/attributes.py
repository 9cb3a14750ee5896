"""Attribute values a mention names, and the filter that removes candidates contradicting them (AMELI's attribute
filtering, by rules over the KB's attribute vocabulary).

**Values.** A candidate's attribute value is split into values by ``ameli.filter.value_separator`` ("politician,
lawyer" -> two values) and normalised (lower case, whitespace collapsed). A value is *matchable* when it has at least
``min_chars`` characters, is not a bare number and is not uninformative (yes, no, none, other, n/a, unknown): "55" or
"yes" in a text says nothing about which key it belongs to.

**Extraction.** For each key some candidate has (only ``ameli.filter.keys`` when set), the matchable values the
candidates give for it are looked up in the mention's surface and context as whole phrases (not inside a longer word
or number); the ones found are *named* for that key. A value equal to the mention's own surface is never named
(a KB where one entity's "Spouse" is the mentioned person's name would otherwise read the name as that attribute).
Values the mention itself carries (``Mention.attributes``) are named for their key as given.

**Contradiction.** A candidate contradicts a key with named values when it has matchable values for the key and none
of them is compatible with a named value (equal, or one contains the other as a whole phrase: "space gray" and
"gray"). So a candidate is dropped only because the text names *another* candidate's value for the same key and none
of its own. A candidate without the key, or with no matchable value for it, is unknown, never contradicting.

**Filter.** Keys are applied one at a time in order of first appearance among the candidates; a key that every
remaining candidate contradicts is skipped, so the filter never removes the last candidate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from mel.types import Entity, Mention

UNINFORMATIVE = frozenset({"yes", "no", "none", "other", "n/a", "na", "unknown", "not applicable", "true", "false"})
_NUMBER = re.compile(r"^[\d\s.,/-]+$")


def normalize(text: str) -> str:
    return " ".join(str(text).lower().split())


def matchable(value: str, min_chars: int) -> bool:
    """Whether a (normalised) value may be looked up in text (see the module docstring)."""
    return len(value) >= min_chars and value not in UNINFORMATIVE and not _NUMBER.match(value)


def split_values(value: str, separator: str | None) -> list[str]:
    """The normalised, non-blank values of one attribute value string."""
    parts = [value] if not separator else str(value).split(separator)
    out: list[str] = []
    for p in parts:
        v = normalize(p)
        if v and v not in out:
            out.append(v)
    return out


@lru_cache(maxsize=16384)
def _phrase(value: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in value.split()]
    return re.compile(r"(?<![0-9a-z])" + r"\s+".join(words) + r"(?![0-9a-z])")


def contains_phrase(text: str, value: str) -> bool:
    """``value`` occurs in ``text`` as a whole phrase (both normalised)."""
    return bool(value) and _phrase(value).search(text) is not None


def compatible(value: str, named: set[str]) -> bool:
    return value in named or any(contains_phrase(value, n) or contains_phrase(n, value) for n in named)


@dataclass(frozen=True)
class FilterRule:
    """The filter's settings (``ameli.filter``)."""

    min_chars: int = 3
    separator: str | None = ","
    keys: tuple[str, ...] | None = None

    def values(self, entity: Entity, key: str) -> list[str]:
        """The matchable values ``entity`` gives for ``key`` (empty: it does not say)."""
        if key not in entity.attributes:
            return []
        return [v for v in split_values(entity.attributes[key], self.separator) if matchable(v, self.min_chars)]


def extract_attribute_values(mention: Mention, entities: Sequence[Entity], rule: FilterRule) -> dict[str, set[str]]:
    """Key -> the normalised values of that key named by the mention (keys with nothing named are left out)."""
    text = normalize(f"{mention.surface} {mention.context}")
    surface = normalize(mention.surface)
    given = {k: normalize(v) for k, v in mention.attributes.items() if normalize(v)}
    keys: dict[str, None] = {}
    for e in entities:
        for k in e.attributes:
            if rule.keys is None or k in rule.keys:
                keys.setdefault(k, None)
    out: dict[str, set[str]] = {}
    for key in keys:
        named = {given[key]} if key in given else set()
        for e in entities:
            named.update(v for v in rule.values(e, key) if v != surface and contains_phrase(text, v))
        if named:
            out[key] = named
    return out


def contradicts(entity: Entity, key: str, named: set[str], rule: FilterRule) -> bool:
    """``entity`` has matchable values for ``key``, none compatible with the named values."""
    values = rule.values(entity, key)
    return bool(values) and not any(compatible(v, named) for v in values)


@dataclass
class FilterResult:
    """Indices of the candidates kept (in order) and of those removed with the keys they contradicted;
    ``skipped_keys``: named keys not applied because every remaining candidate contradicted them."""

    kept: list[int]
    removed: dict[int, list[str]] = field(default_factory=dict)
    extracted: dict[str, set[str]] = field(default_factory=dict)
    skipped_keys: list[str] = field(default_factory=list)


def attribute_filter(mention: Mention, entities: Sequence[Entity], rule: FilterRule) -> FilterResult:
    """Apply the extraction rule and the filter (module docstring) to one mention's candidate entities."""
    extracted = extract_attribute_values(mention, entities, rule)
    remaining = list(range(len(entities)))
    removed: dict[int, list[str]] = {}
    skipped: list[str] = []
    for key, named in extracted.items():
        bad = [i for i in remaining if contradicts(entities[i], key, named, rule)]
        if not bad:
            continue
        if len(bad) == len(remaining):
            skipped.append(key)  # never drop every candidate
            continue
        for i in bad:
            removed.setdefault(i, []).append(key)
        remaining = [i for i in remaining if i not in removed]
    return FilterResult(remaining, removed, extracted, skipped)
