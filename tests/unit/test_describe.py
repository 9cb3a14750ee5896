"""Mention descriptions (the ``describe`` step) with the unit-test engine double: prompts and keys, the cache that
lets ablations reuse descriptions, and where later steps show them (retrieval and/or selection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mel.augment.base import ModelIdentity
from mel.augment.mention import DescriptionCache, describe, description_key, mention_input
from mel.config import load_config
from mel.errors import ConfigError
from mel.steps.base import MentionState
from mel.types import Mention
from tests.doubles.llm import FakeLLMEngine


def mcfg(*sets: str):  # noqa: ANN201
    return load_config(None, [f"augment.mentions.{s}" for s in sets]).augment.mentions


def gen_calls(engine: FakeLLMEngine) -> list[int]:
    return [n for what, n, _ in engine.calls if what == "generate"]


MENTIONS = [Mention("m1", "Jaguar", "The jaguar hunted at dusk near the river."),
            Mention("m2", "Mercury", "Mercury is the closest planet to the Sun."),
            Mention("m3", "Python", "")]


def test_prompt_and_key() -> None:
    cfg = mcfg()
    text = mention_input(MENTIONS[0], cfg.prompt, cfg.max_context_chars)
    assert "Jaguar" in text and "river" in text
    assert "Context" not in mention_input(MENTIONS[2], cfg.prompt, cfg.max_context_chars), "empty lines left out"
    model = ModelIdentity("m", "fp")
    key = description_key(model, cfg, "m1", text)
    assert key != description_key(model, cfg, "m2", text), "keyed by mention id"
    assert key != description_key(ModelIdentity("m", "fp2"), cfg, "m1", text)
    assert key != description_key(model, cfg.model_copy(update={"max_tokens": 3}), "m1", text)
    assert key != description_key(model, cfg, "m1", text + ".")
    with pytest.raises(ConfigError, match="unknown field"):
        mcfg("prompt='What is {surface} in {wikipedia}?'")


def test_descriptions_are_generated_once_and_cached(tmp_path: Path) -> None:
    cfg = mcfg()
    engine = FakeLLMEngine()
    first = describe(engine, MENTIONS, cfg, DescriptionCache(tmp_path))
    assert gen_calls(engine) == [3] and all(first)
    again = describe(engine, MENTIONS, cfg, DescriptionCache(tmp_path))  # a new run: read back from the shards
    assert again == first and gen_calls(engine) == [3]
    changed = [MENTIONS[0], Mention("m2", "Mercury", "Mercury was the messenger of the gods.")]
    out = describe(engine, changed, cfg, DescriptionCache(tmp_path))
    assert gen_calls(engine) == [3, 1] and out[0] == first[0] and out[1] != first[1]
    shorter = describe(engine, MENTIONS[:1], cfg.model_copy(update={"max_tokens": 3}), DescriptionCache(tmp_path))
    assert gen_calls(engine) == [3, 1, 1] and len(shorter[0].split()) <= 3
    assert describe(engine, [], cfg) == []
    assert describe(FakeLLMEngine(), MENTIONS, cfg) == first, "no cache: generated again, the same (greedy)"


def test_later_steps_see_the_description_where_asked() -> None:
    s = MentionState(MENTIONS[0], description="A big cat.", description_in=("retrieval",))
    assert s.view("retrieval").context == "The jaguar hunted at dusk near the river. A big cat."
    assert s.view("selection") is s.mention
    assert MentionState(MENTIONS[0]).view("retrieval") is MENTIONS[0]


def test_the_step_fills_states_and_the_switches(tmp_path: Path) -> None:
    from mel.parts import Parts
    from mel.steps import get_step

    cfg = load_config(None, ["augment.mentions.enabled=true", "augment.mentions.in_retrieval=false",
                             f"augment.mentions.cache_dir={tmp_path}"])
    step = get_step("describe")(cfg, Parts(engine=FakeLLMEngine()))
    states = step.run([MentionState(m) for m in MENTIONS])
    assert all(s.description for s in states) and all(s.description_in == ("selection",) for s in states)
    assert states[1].view("selection").context.startswith("Mercury is the closest planet to the Sun. ")
    assert states[1].view("retrieval") is MENTIONS[1]
    assert list((tmp_path / "cache.staging").glob("part-*.parquet")), "the cache was written"
    assert not get_step("describe").active(load_config(None)), "off by default"


def test_a_shared_cache_leaves_other_writers_files_alone(tmp_path: Path) -> None:
    staging = tmp_path / "cache.staging"
    staging.mkdir()
    in_progress = staging / ".part-0123.parquet.tmp-abcd1234"
    in_progress.write_bytes(b"half written")
    describe(FakeLLMEngine(), MENTIONS[:1], mcfg(), DescriptionCache(tmp_path))
    assert in_progress.exists(), "another actor's write in progress is not ours to delete"
