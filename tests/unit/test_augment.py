"""Entity summaries without models: cache keys, the generation store (staging shards, atomic publish, damage
detection), resume after an interruption, restricted runs that add up, stale-summary joins, and the index side
(`{summary}` in the entity template, the manifest record, refusal of an index built from other summaries).

The engine here is the unit-test double (tests/doubles/llm.py); integration tests use SmolLM2 on vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.augment.base import ModelIdentity
from mel.augment.entity import (
    SUMMARIES,
    LocalSummariser,
    check_index_summaries,
    load_summaries,
    summaries_hash,
    summarise_kb,
    summary_input,
    summary_key,
)
from mel.augment.store import GenerationStore, generation_key, read_artifact
from mel.config import load_config
from mel.errors import ArtifactMismatch, ConfigError, InputError
from mel.kb.model import KB
from mel.types import Entity
from tests.doubles.llm import FakeLLMEngine


def kb(**changes: str) -> KB:
    ents = [Entity(f"E{i}", f"Entity {i}", ("alias",) if i % 2 else (), f"Description number {i}.",
                   {"kind": "thing"}) for i in range(6)]
    return KB([Entity(e.id, e.name, e.aliases, changes.get(e.id, e.description), e.attributes) for e in ents])


class FailingEngine(FakeLLMEngine):
    """Fails on the call after ``ok_calls`` generate calls (an interrupted run)."""

    def __init__(self, ok_calls: int) -> None:
        super().__init__()
        self.ok_calls = ok_calls

    def generate(self, prompts: list[str], max_tokens: int = 64, lora=None) -> list[str]:  # noqa: ANN001
        if sum(c[0] == "generate" for c in self.calls) >= self.ok_calls:
            raise KeyboardInterrupt
        return super().generate(prompts, max_tokens, lora)


def gen_calls(engine: FakeLLMEngine) -> int:
    return sum(n for what, n, _ in engine.calls if what == "generate")


def acfg(*sets: str):  # noqa: ANN201
    return load_config(None, [f"augment.entities.{s}" for s in sets]).augment.entities


def test_generation_key_depends_on_every_part() -> None:
    cfg = acfg()
    model = ModelIdentity("m", "fp")
    text = summary_input(kb().entities[0], cfg.prompt, cfg.max_input_chars)
    base = summary_key(model, cfg, text)
    assert base == summary_key(ModelIdentity("m", "fp"), cfg, text)
    assert base != summary_key(ModelIdentity("m2", "fp"), cfg, text)
    assert base != summary_key(ModelIdentity("m", "fp2"), cfg, text)
    assert base != summary_key(model, cfg.model_copy(update={"max_tokens": 7}), text)
    assert base != summary_key(model, cfg.model_copy(update={"system": "x"}), text)
    assert base != summary_key(model, cfg, text + " ")
    assert generation_key("a", 1) != generation_key("b", 1)
    # lines whose fields are all empty are left out
    assert "Also known as" not in text and "Also known as: alias" in summary_input(
        kb().entities[1], cfg.prompt, cfg.max_input_chars)
    long = Entity("L", "Long", (), "word " * 2000, {})
    assert len(summary_input(long, cfg.prompt, 100)) < 400, "descriptions are cut to max_input_chars"


def test_prompt_fields_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        acfg("prompt='Summarise {name} from {wikipedia}'")


def test_summaries_resume_rerun_and_stale(tmp_path: Path) -> None:
    cfg = acfg("batch_size=2")
    out = tmp_path / "summ"
    engine = FailingEngine(ok_calls=1)
    with pytest.raises(KeyboardInterrupt):
        summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c")
    assert not out.exists(), "nothing is published before the run finishes"
    shards = list((tmp_path / "summ.staging").glob("part-*.parquet"))
    assert len(shards) == 1, "the finished batch is kept as a staging shard"

    engine = FakeLLMEngine()
    r = summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c")
    assert (r.generated, r.reused, r.entities, r.summarised) == (4, 2, 6, 6) and gen_calls(engine) == 4
    assert not (tmp_path / "summ.staging").exists()
    manifest, cols = read_artifact(out, SUMMARIES)
    assert cols["entity_id"] == [f"E{i}" for i in range(6)] and all(cols["summary"])
    assert manifest["counts"]["generated"] == 4 and manifest["llm"]["id"] == "fake:word-overlap"
    assert manifest["kb_hash"] == kb().content_hash() and manifest["generation"]["temperature"] == 0.0
    assert manifest["prompt"]["template"] == cfg.prompt and manifest["prompt_version"] >= 1

    engine = FakeLLMEngine()
    assert summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c").generated == 0
    assert gen_calls(engine) == 0
    changed = kb(E3="A brand new description.")
    r = summarise_kb(changed, out, cfg, LocalSummariser(engine, cfg), config_hash="c")
    assert (r.generated, r.reused) == (1, 5) and gen_calls(engine) == 1

    old = load_summaries(out)
    assert old.join(changed).stale == 0 and len(old.join(changed).summaries) == 6
    joined = old.join(kb())  # the artifact now holds E3's new input: the old KB's E3 is stale
    assert (joined.stale, joined.missing, len(joined.summaries)) == (1, 0, 5)
    assert old.get(kb().entities[3]) is None and old.get(changed.entities[3])


def test_restricted_runs_add_up(tmp_path: Path) -> None:
    cfg = acfg()
    out = tmp_path / "s"
    engine = FakeLLMEngine()
    r = summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c", only=["E1", "E4"])
    assert (r.generated, r.summarised, r.entities) == (2, 2, 6)
    assert read_artifact(out, SUMMARIES)[1]["entity_id"] == ["E1", "E4"]
    assert load_summaries(out).join(kb()).missing == 4
    r = summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c", only=["E0", "E1"])
    assert (r.generated, r.summarised) == (1, 3), "E1 is reused, E4 stays"
    assert read_artifact(out, SUMMARIES)[1]["entity_id"] == ["E0", "E1", "E4"]
    with pytest.raises(InputError, match="not in the KB"):
        summarise_kb(kb(), out, cfg, LocalSummariser(engine, cfg), config_hash="c", only=["E0", "nope"])
    with pytest.raises(InputError, match="no entities"):
        summarise_kb(KB([]), tmp_path / "empty", cfg, LocalSummariser(engine, cfg), config_hash="c")


def test_damaged_or_foreign_artifacts_are_refused(tmp_path: Path) -> None:
    cfg = acfg()
    out = tmp_path / "s"
    summarise_kb(kb(), out, cfg, LocalSummariser(FakeLLMEngine(), cfg), config_hash="c")
    with pytest.raises(InputError, match="mel augment entities"):
        load_summaries(tmp_path / "missing")
    m = json.loads((out / "manifest.json").read_text())
    m["content_hash"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactMismatch, match="damaged or edited"):
        load_summaries(out)
    m["kind"] = "something-else"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactMismatch, match="expected 'entity-summaries'"):
        summaries_hash(out)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path / "s", SUMMARIES)
    with store.lock(), pytest.raises(InputError, match="in progress"), GenerationStore(tmp_path / "s",
                                                                                         SUMMARIES).lock():
        pass


def test_check_index_summaries(tmp_path: Path) -> None:
    cfg = acfg()
    summarise_kb(kb(), tmp_path / "a", cfg, LocalSummariser(FakeLLMEngine(), cfg), config_hash="c")
    summarise_kb(kb(E0="Other."), tmp_path / "b", cfg, LocalSummariser(FakeLLMEngine(), cfg), config_hash="c")
    a = load_summaries(tmp_path / "a")
    assert a.hash != summaries_hash(tmp_path / "b") and a.hash == summaries_hash(tmp_path / "a")
    record = a.record(a.join(kb()))
    check_index_summaries(record, tmp_path / "a", "idx")
    check_index_summaries(record, None, "idx")  # nothing configured: the index is served with what it embedded
    with pytest.raises(ArtifactMismatch, match="mel index --summaries"):
        check_index_summaries(record, tmp_path / "b", "idx")
    with pytest.raises(ArtifactMismatch, match="built without summaries"):
        check_index_summaries(None, tmp_path / "a", "idx")


def test_index_summaries_need_the_summary_field(tmp_path: Path) -> None:
    from mel.index.build import entity_texts
    from pipelines.index import _join_summaries

    summarise_kb(kb(), tmp_path / "a", acfg(), LocalSummariser(FakeLLMEngine(), acfg()), config_hash="c")
    cfg = load_config(None, [f"index.summaries={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="no {summary}"):
        _join_summaries(cfg, kb())
    cfg = load_config(None, [f"index.summaries={tmp_path / 'a'}", "index.entity_template='{name}. {summary}'"])
    changed = kb(E2="Changed.")
    summaries, record = _join_summaries(cfg, changed)
    assert record is not None and record["stale"] == 1 and record["with_summary"] == 5
    texts = entity_texts(changed, cfg.index.entity_template, summaries)
    assert texts[2] == "Entity 2. Changed.", "a stale entity falls back to its description"
    assert texts[0] == f"Entity 0. {load_summaries(tmp_path / 'a').rows['E0'][0]}"


def test_id_list_file_errors_name_the_line(tmp_path: Path) -> None:
    from mel.entrypoints.commands import read_id_list

    f = tmp_path / "ids.txt"
    f.write_text("# wanted\nE1\n\nE2  # a comment\n")
    assert read_id_list(str(f)) == ["E1", "E2"]
    f.write_text("E1\nE2 E3\n")
    with pytest.raises(InputError, match=r"ids.txt:2: one entity id per line"):
        read_id_list(str(f))
    f.write_text("# nothing\n")
    with pytest.raises(InputError, match="no entity ids"):
        read_id_list(str(f))
