"""GEMEL name trie: build, allowed next tokens, collisions, storage with the index and refusal on mismatch.

Uses a tiny deterministic tokenizer (word pieces with their leading space, hashed to ids); the real SmolLM2
tokenizer is exercised in tests/integration/test_gemel.py.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import pytest

from mel.errors import ArtifactMismatch
from mel.gemel.trie import (
    NameTrie,
    end_token_id,
    load_or_build_trie,
    name_token_ids,
    tokenizer_fingerprint,
    trie_path,
)

REPO = Path(__file__).resolve().parents[2]
NEWLINE, EOS = 1, 0


class _Backend:
    def __init__(self, ident: str) -> None:
        self.ident = ident

    def to_str(self) -> str:
        return self.ident


class WordTokenizer:
    """' Jaguar Cars\\n' -> [id(' Jaguar'), id(' Cars'), 1]; ids are crc32 of the piece (stable)."""

    eos_token_id = EOS
    name_or_path = "test:word-tokenizer"

    def __init__(self, ident: str = "word-v1") -> None:
        self.backend_tokenizer = _Backend(ident)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [NEWLINE if p == "\n" else 10 + zlib.crc32(p.encode()) % 100_000
                for p in re.findall(r" ?[^\s]+|\n", text)]


ENTRIES = [
    ("e:jaguar-animal", ["Jaguar", "Panthera onca"]),
    ("e:jaguar-cars", ["Jaguar Cars", "Jaguar", "Jag"]),
    ("e:fender", ["Fender Jaguar", "Jaguar", "Jaguar"]),  # alias repeated: counted once
    ("e:smith-1", ["John  Smith"]),  # whitespace normalised
    ("e:smith-2", ["John Smith"]),
    ("e:blank", ["  ", "Blanky"]),
]


@pytest.fixture()
def tok() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture()
def trie(tok: WordTokenizer) -> NameTrie:
    return NameTrie.build(ENTRIES, tok, kb_hash="kb1")


def test_sequences_end_with_the_newline_marker(tok: WordTokenizer, trie: NameTrie) -> None:
    assert end_token_id(tok) == NEWLINE
    seq = name_token_ids(tok, "Jaguar  Cars ", NEWLINE)
    assert seq == tok.encode(" Jaguar Cars") + [NEWLINE] and len(seq) == 3
    assert trie.sequence("Jaguar Cars") == seq
    assert trie.name_of(seq) == "Jaguar Cars"
    assert trie.name_of(seq[:-1]) is None  # a prefix is not a name


def test_allowed_next_tokens_follow_the_names(tok: WordTokenizer, trie: NameTrie) -> None:
    jag, cars, jag_lc = tok.encode(" Jaguar")[0], tok.encode(" Cars")[0], tok.encode(" Jag")[0]
    first = set(trie.allowed([]))
    assert first == {tok.encode(" " + w)[0] for w in ("Jaguar", "Panthera", "Jag", "Fender", "John", "Blanky")}
    assert set(trie.allowed([jag])) == {NEWLINE, cars}  # "Jaguar" may end or continue as "Jaguar Cars"
    assert trie.allowed([jag_lc]) == [NEWLINE]
    assert trie.allowed([jag, cars, NEWLINE]) == []  # after a complete name
    assert trie.allowed([cars]) == []  # off the trie
    assert trie.max_depth == 3


def test_collisions_map_a_name_to_every_bearer_in_kb_order(trie: NameTrie) -> None:
    assert trie.ids_for("Jaguar") == ["e:jaguar-animal", "e:jaguar-cars", "e:fender"]
    assert trie.ids_for("John Smith") == ["e:smith-1", "e:smith-2"]
    assert trie.ids_for("Jaguar Cars") == ["e:jaguar-cars"]
    assert trie.ids_for("Nobody") == []
    assert trie.ids_for("Blanky") == ["e:blank"] and "" not in trie.names
    assert trie.meta["colliding_names"] == 2 and trie.meta["entities"] == len(ENTRIES)


def test_without_aliases_only_names(tok: WordTokenizer) -> None:
    t = NameTrie.build(ENTRIES, tok, kb_hash="kb1", use_aliases=False)
    assert t.ids_for("Jaguar") == ["e:jaguar-animal"] and t.ids_for("Jag") == []
    assert t.meta["use_aliases"] is False


def test_save_load_roundtrip_and_refusals(tmp_path: Path, tok: WordTokenizer, trie: NameTrie) -> None:
    path = trie.save(tmp_path / "t.json")
    fp = tokenizer_fingerprint(tok)
    back = NameTrie.load(path, expect_kb_hash="kb1", expect_tokenizer_fingerprint=fp, expect_use_aliases=True)
    assert back.names == trie.names and back.entity_ids == trie.entity_ids and back.root == trie.root
    assert back.meta["tokenizer_id"] == "test:word-tokenizer"
    with pytest.raises(ArtifactMismatch, match="KB content hash 'kb1'"):
        NameTrie.load(path, expect_kb_hash="kb2")
    other = tokenizer_fingerprint(WordTokenizer("word-v2"))
    assert other != fp
    with pytest.raises(ArtifactMismatch, match="tokenizer"):
        NameTrie.load(path, expect_tokenizer_fingerprint=other)
    data = json.loads(path.read_text())
    data["sequences"][0] = data["sequences"][0][:-1]  # end marker lost
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactMismatch, match="damaged"):
        NameTrie.load(path)
    path.write_text("{not json")
    with pytest.raises(ArtifactMismatch, match="not a readable"):
        NameTrie.load(path)


def test_stored_with_the_index_and_reused(tmp_path: Path, tok: WordTokenizer) -> None:
    from mel.config import load_config
    from mel.index.artifact import IndexArtifact
    from mel.index.manifest import read_manifest
    from pipelines.index import run_index_local
    from tests.doubles.encoders import HashingTextEncoder

    out = run_index_local(REPO / "data" / "demo" / "kb" / "entities.jsonl", tmp_path / "idx", load_config(None),
                          HashingTextEncoder(32))
    index = IndexArtifact.load(out)
    trie = load_or_build_trie(index, tok)
    files = list((out / "extras").glob("gemel-trie-*.json"))
    assert len(files) == 1 and not list((out / "extras").glob(".*"))  # written atomically: no temp file left
    assert trie.ids_for("Jaguar")[:2] == ["demo:jaguar-animal", "demo:jaguar-cars"]
    assert set(trie.ids_for("Mercury")) >= {"demo:mercury-planet", "demo:freddie-mercury"}
    read_manifest(out)
    IndexArtifact.load(out)  # the manifest stays valid with extras/ beside it
    mtime = files[0].stat().st_mtime_ns
    again = load_or_build_trie(IndexArtifact.load(out), tok)
    assert again.names == trie.names and files[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
    other = load_or_build_trie(index, WordTokenizer("word-v2"))  # another tokenizer: its own file
    assert len(list((out / "extras").glob("gemel-trie-*.json"))) == 2 and other.names == trie.names
    # a file under the right name but made for another KB is refused
    key_path = files[0]
    data = json.loads(key_path.read_text())
    data["meta"]["kb_hash"] = "another-kb"
    key_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactMismatch, match="another-kb"):
        load_or_build_trie(index, tok)
    assert trie_path(out, "k").parent == out / "extras"
