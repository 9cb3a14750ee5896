"""Selector training without a model: examples (gold insertion, NIL mentions counted), the prompt shared with the
serving selector, the training sample, the carved dev split, and the batch order that makes resume exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mel.config import load_config
from mel.stages.select import LLMSelector, selection_prompt
from mel.train.lora import _batch_indices
from mel.train.selector import (
    build_examples,
    carve_dev,
    dev_accuracy,
    letter_accuracy,
    option_order,
    pick_training_mentions,
)
from mel.types import Candidate, Mention
from tests.doubles.llm import FakeLLMEngine

NAMES = {f"Q{i}": f"Entity {i}" for i in range(10)}
KB = set(NAMES)


def _fmt(system: str, user: str) -> str:
    return f"<s>{system}</s><u>{user}</u>"


def _cands(ids: list[int]) -> list[Candidate]:
    return [Candidate(f"Q{i}", NAMES[f"Q{i}"], 1.0 - 0.1 * r) for r, i in enumerate(ids)]


def _text(eid: str) -> str:
    return f"text of {eid}"


def test_examples_insert_a_missed_gold_count_nil_and_use_the_selector_prompt() -> None:
    cfg = load_config(None, ["selection.candidates=3"]).selection
    ms = [Mention("a", "x", "ctx", gold="Q1"),            # retrieved at rank 2
          Mention("b", "y", "ctx", gold="Q9"),            # not retrieved: replaces the last option
          Mention("c", "z", "ctx", gold=None),            # NIL: counted, not trained
          Mention("d", "w", "ctx", gold="Q99"),           # gold outside the KB: counted, not trained
          Mention("e", "v", "ctx", gold="Q5")]            # one candidate, which is the gold: nothing to choose
    lists = [_cands([0, 1, 2, 3]), _cands([0, 1, 2, 3]), _cands([0, 1]), _cands([0, 1]), _cands([5])]
    ex, stats = build_examples(ms, lists, _text, NAMES.__getitem__, KB, cfg, _fmt, shuffle=False)
    assert stats == {"mentions": 5, "trained": 2, "gold_retrieved": 1, "gold_inserted": 1, "not_in_kb": 2,
                     "gold_missed": 0, "single_option": 1}
    a, b = ex
    assert a.answer == "B" and a.gold_rank == 2 and a.letters == ("A", "B", "C")
    assert b.answer == "C" and b.gold_rank is None and "Entity 9" in b.prompt and "Entity 2" not in b.prompt
    # unshuffled, a training prompt is exactly what the serving selector sends the engine
    selector = LLMSelector(FakeLLMEngine(), cfg, _text, format_chat=_fmt)
    assert selector.prompts([ms[0]], [lists[0]])[0] == (a.prompt, list(a.letters))
    assert selection_prompt(ms[0], lists[0][:3], _text, cfg, _fmt) == (a.prompt, list(a.letters))
    # without insertion (dev), a missed gold is counted and left out
    ex2, stats2 = build_examples(ms[:2], lists[:2], _text, NAMES.__getitem__, KB, cfg, _fmt, shuffle=False,
                                 insert_gold=False)
    assert len(ex2) == 1 and stats2["gold_missed"] == 1


def test_shuffled_options_are_seeded_per_mention() -> None:
    cfg = load_config(None, ["selection.candidates=5"]).selection
    ms = [Mention(f"m{i}", "x", "", gold="Q0") for i in range(40)]
    lists = [_cands([0, 1, 2, 3, 4])] * 40
    ex1, _ = build_examples(ms, lists, _text, NAMES.__getitem__, KB, cfg, _fmt, seed=3)
    ex2, _ = build_examples(ms, lists, _text, NAMES.__getitem__, KB, cfg, _fmt, seed=3)
    assert [e.answer for e in ex1] == [e.answer for e in ex2]
    assert len({e.answer for e in ex1}) >= 4  # the gold (retrieved first) lands on many letters
    assert option_order("m1", 5, 0) == option_order("m1", 5, 0) != option_order("m1", 5, 1)
    assert sorted(option_order("m1", 5, 0)) == [0, 1, 2, 3, 4]


def test_training_sample_takes_hard_mentions_first_and_is_deterministic() -> None:
    ms = [Mention(f"m{i}", "x", "", gold="Q1" if i % 5 == 0 else "Q0") for i in range(100)]
    lists = [_cands([0, 1, 2])] * 100  # gold Q1 is retrieved at rank 2: the 20 mentions i % 5 == 0 are hard
    pick = pick_training_mentions(ms, lists, 30, head=3, seed=0, hard_first=True)
    assert len(pick) == 30 and pick == sorted(pick)
    assert sum(i % 5 == 0 for i in pick) >= 15
    assert pick == pick_training_mentions(ms, lists, 30, head=3, seed=0, hard_first=True)
    assert pick_training_mentions(ms, lists, None, head=3, seed=0, hard_first=True) == list(range(100))


def test_carved_dev_is_deterministic_and_disjoint() -> None:
    ms = [Mention(f"m{i}", "x", "", gold="Q0") for i in range(1000)]
    train, dev = carve_dev(ms, 0.1)
    assert 60 < len(dev) < 140 and len(train) + len(dev) == 1000
    assert not {m.id for m in train} & {m.id for m in dev}
    assert [m.id for m in carve_dev(list(reversed(ms)), 0.1)[1]] == [m.id for m in reversed(dev)]


def test_batches_are_a_function_of_the_step_so_resume_is_exact() -> None:
    full = [_batch_indices(10, s, 4, seed=1, shuffle=True) for s in range(6)]
    assert all(len(b) == 4 for b in full)
    assert sorted(full[0] + full[1] + full[2][:2]) == list(range(10))  # one pass covers every pair once
    assert [_batch_indices(10, s, 4, seed=1, shuffle=True) for s in range(3, 6)] == full[3:]
    assert _batch_indices(10, 0, 4, seed=1, shuffle=False) == [0, 1, 2, 3]


def test_letter_accuracy_reads_the_letter_logits() -> None:
    import torch

    from mel.train.selector import SelectorExample

    vocab = {"A": 1, "B": 2, "C": 3}

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [vocab.get(text, 0)] if len(text) == 1 else [0, 0, 9]

    class Model:  # always prefers B
        def __call__(self, input_ids: torch.Tensor) -> SimpleNamespace:
            logits = torch.zeros(1, input_ids.shape[1], 30)
            logits[0, -1, 2] = 5.0
            return SimpleNamespace(logits=logits)

    ex = [SelectorExample("a", "p", ("A", "B", "C"), "B", 2), SelectorExample("b", "p", ("A", "B"), "A", 1)]
    assert letter_accuracy(ex)(Model(), Tok())["accuracy"] == pytest.approx(50.0)
    assert letter_accuracy([])(Model(), Tok())["accuracy"] is None
    # a position prior (always B) is caught by the shuffled dev prompts: the same mentions, other letters
    shuffled = [SelectorExample("a", "p", ("A", "B", "C"), "C", 2), SelectorExample("b", "p", ("A", "B"), "B", 1)]
    both = dev_accuracy(ex, shuffled)(Model(), Tok())
    assert both["accuracy"] == pytest.approx(50.0) and both["shuffled_accuracy"] == pytest.approx(50.0)


def test_learning_rate_warms_up_then_holds_or_decays_as_a_function_of_the_step() -> None:
    from mel.errors import InputError
    from mel.train.lora import lr_at

    assert [lr_at(s, 10, 1.0, "constant", 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = [lr_at(s, 10, 1.0, "cosine", 2) for s in range(10)]
    assert cos[:2] == [0.5, 1.0] and cos[2] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cos[2:], cos[3:]))
    assert lr_at(0, 1, 2e-4, "cosine", 0) == 2e-4
    with pytest.raises(InputError, match="unknown lr schedule 'linear'"):
        lr_at(0, 10, 1.0, "linear", 0)


def test_the_loss_is_on_the_answer_tokens_only_with_or_without_eos() -> None:
    from mel.train.lora import _encode_pairs

    class Tok:
        eos_token_id, pad_token_id = 7, 0

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in text]

    ids, mask, labels = _encode_pairs(Tok(), [("ab", "C"), ("a", "D")], append_eos=False)
    assert labels.tolist() == [[-100, -100, ord("C")], [-100, ord("D"), -100]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    _, _, labels = _encode_pairs(Tok(), [("ab", "C")], append_eos=True)
    assert labels.tolist() == [[-100, -100, ord("C"), 7]]


def test_training_refuses_a_method_without_a_select_step_and_a_rank_the_engine_cannot_serve(tmp_path) -> None:  # noqa: ANN001
    from mel.errors import InputError
    from mel.train.selector import candidates_before_selection, train_selector

    with pytest.raises(InputError, match="has no select step"):
        candidates_before_selection(load_config(None, ["method=retrieval"]), str(tmp_path), [])
    with pytest.raises(InputError, match="exceeds models.llm.max_lora_rank"):
        train_selector(load_config(None, ["train.selector.rank=32"]), index_dir=str(tmp_path), out=str(tmp_path / "a"),
                       mentions_path="x.jsonl")
