"""`mel augment entities` with the real SmolLM2-135M: summaries generated on a Ray Data actor pool of vLLM engines,
reused by a rerun (only new entities generated), embedded by `mel index --summaries`, and an index built from
other summaries refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"


def test_summaries_on_ray_data_reused_and_indexed(ray_local: None, llm_dir: str, vllm_engine,  # noqa: ANN001
                                                  tmp_path: Path) -> None:
    from mel.augment.entity import SUMMARIES, load_summaries
    from mel.augment.store import read_artifact
    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.entrypoints.cli import main
    from mel.errors import ArtifactMismatch
    from mel.index.artifact import IndexArtifact
    from mel.kb.reader import read_kb
    from pipelines.augment import run_summaries

    # the engine settings of the session's shared engine: the same model id, so its summaries count as the same
    sets = [f"models.llm.model={llm_dir}", "models.llm.dtype=bfloat16", "models.llm.max_model_len=1024",
            "models.llm.kv_cache_gb=0.5", "augment.entities.batch_size=4", "augment.entities.max_tokens=24"]
    out = tmp_path / "summaries"
    args = ["augment", "entities", "--kb", str(DEMO_KB), "--out", str(out), "--limit", "6"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0  # Ray Data: one engine actor
    manifest, cols = read_artifact(out, SUMMARIES)
    kb = read_kb(DEMO_KB)
    assert cols["entity_id"] == kb.ids[:6] and all(len(s.split()) >= 3 for s in cols["summary"]), cols["summary"]
    assert manifest["llm"] == {"id": vllm_engine.id, "fingerprint": vllm_engine.fingerprint}
    assert manifest["how"].startswith("Ray Data") and manifest["counts"]["generated"] == 6
    assert not (tmp_path / "summaries.staging").exists()

    cfg = load_config(None, sets)
    again = run_summaries(kb, out, cfg, engine=vllm_engine, only=kb.ids[:8])
    assert (again.generated, again.reused, again.summarised) == (2, 6, 8), "only the two new entities generated"

    index_dir = tmp_path / "index"
    icfg = load_config(None, [*sets, "method=retrieval", "index.entity_template='{name}. {summary}'"])
    commands.index(icfg, out=str(index_dir), kb=str(DEMO_KB), local=True, summaries=str(out))
    art = IndexArtifact.load(index_dir)
    summaries = load_summaries(out)
    record = art.manifest.summaries
    assert record is not None and record["hash"] == summaries.hash
    assert (record["with_summary"], record["missing"]) == (8, len(kb) - 8)
    first, last = kb.entities[0], kb.entities[-1]
    assert art.text(first.id) == " ".join(f"{first.name}. {summaries.rows[first.id][0]}".split())
    assert art.text(last.id) == " ".join(f"{last.name}. {last.description}".split()), "no summary: description"

    other = tmp_path / "other"
    run_summaries(kb, other, cfg, engine=vllm_engine, only=kb.ids[:1])
    refused = icfg.model_copy(update={"index": icfg.index.model_copy(update={"summaries": str(other)})})
    with pytest.raises(ArtifactMismatch, match="rebuild it with `mel index --summaries"):
        commands.preflight_index(refused, str(index_dir))
    accepted = icfg.model_copy(update={"index": icfg.index.model_copy(update={"summaries": str(out)})})
    commands.preflight_index(accepted, str(index_dir))


def test_describe_step_with_the_real_engine(demo_index: Path, text_encoder, vllm_engine,  # noqa: ANN001
                                            tmp_path: Path) -> None:
    """unimel with `augment.mentions.enabled`: SmolLM2 describes each mention, retrieval embeds the description
    with the context, and the descriptions are cached by mention for the next run."""
    from mel.augment.mention import DescriptionCache, describe
    from mel.config import load_config
    from mel.index.artifact import IndexArtifact
    from mel.mentions import read_mentions
    from mel.parts import Parts
    from mel.runner import Runner

    ms = list(read_mentions(REPO / "data" / "demo" / "mentions.jsonl"))[:4]
    parts = Parts(IndexArtifact.load(demo_index), text_encoder, None, vllm_engine)
    base = {"method": "unimel", "selection.fusion_weight": 0.3, "retrieval.rerank.enabled": False}
    plain = Runner(load_config(None, base), parts).link(ms)
    cfg = load_config(None, {**base, "augment.mentions.enabled": True, "augment.mentions.cache_dir": str(tmp_path)})
    described = Runner(cfg, parts).link(ms)
    assert all("describe" in r.timings_ms for r in described) and not any("describe" in r.timings_ms for r in plain)
    assert all(r.description for r in described) and not any(r.description for r in plain)
    retrieval = [[c.scores.get("retrieval") for c in r.candidates] for r in (plain + described)]
    assert retrieval[:4] != retrieval[4:], "the description changes the retrieval query"
    cache = DescriptionCache(tmp_path)
    texts = describe(vllm_engine, ms, cfg.augment.mentions, cache)
    assert all(len(t.split()) >= 3 for t in texts), texts
    assert len(list((tmp_path / "cache.staging").glob("part-*.parquet"))) == 1, "the second run generated nothing"
