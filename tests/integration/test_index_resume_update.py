"""Resume and incremental update with the real parts: the Ray Data job (local Ray on 127.0.0.1) and MiniLM.

- an interrupted Ray build resumes from its staged shards: only the missing ranges go to the actor pool, and
  the result equals a clean single-process build;
- ``mel index --update`` (CLI, Ray) on the demo KB embeds only the added and changed entities, points CURRENT at
  the new version, and equals a full build of the resulting KB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mel.config import Config
from mel.types import Entity

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"


def _entities() -> list[Entity]:
    kinds = ["museum", "bridge", "football club", "university", "cathedral"]
    return [Entity(id=f"Q{2000 + n}", name=f"{kinds[n % 5]} {n}", description=f"A {kinds[n % 5]}, number {n}.",
                   attributes={"instance of": kinds[n % 5], "serial": str(n)}) for n in range(40)]


def test_interrupted_ray_build_resumes_from_staged_shards(ray_local: None, tmp_path: Path, text_encoder,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.index as job
    from mel.index import IndexArtifact, read_manifest
    from mel.index.staging import ShardWriter, staging_dir_for
    from mel.kb.reader import write_kb

    kb = write_kb(_entities(), tmp_path / "kb.jsonl")
    cfg = Config(method="retrieval", pipelines={"index": {"workers": 1, "batch_size": 4, "shard_rows": 8}})
    out = tmp_path / "idx"

    class Interrupted(ShardWriter):
        def add(self, columns):  # noqa: ANN001, ANN201
            if len(self.files) >= 2:
                raise KeyboardInterrupt  # the user hits Ctrl-C once two shards are on disk
            return super().add(columns)

    with monkeypatch.context() as m:
        m.setattr(job, "ShardWriter", Interrupted)
        with pytest.raises(KeyboardInterrupt):
            job.run_index(kb, out, cfg, progress=False)
    assert not out.exists()
    staged = sorted(p.name for p in staging_dir_for(out).iterdir())
    assert len(staged) >= 2 and all(n.startswith("text-") for n in staged)

    fed: list[int] = []
    real = job.dataset_from_table

    def spy(table, batch_size):  # noqa: ANN001, ANN202
        fed.append(table.num_rows)
        return real(table, batch_size)

    monkeypatch.setattr(job, "dataset_from_table", spy)
    job.run_index(kb, out, cfg, progress=False)
    counts = read_manifest(out).counts
    assert counts["resumed_vectors"] == 8 * len(staged) and counts["embedded_vectors"] == 40 - 8 * len(staged)
    assert fed == [counts["embedded_vectors"]]  # only the missing ranges went to the actor pool
    assert not staging_dir_for(out).exists()

    clean = job.run_index_local(kb, tmp_path / "clean", cfg, text_encoder)
    np.testing.assert_allclose(np.load(out / "text.npy"), np.load(clean / "text.npy"), atol=1e-5)
    assert (out / "entities.parquet").read_bytes() == (clean / "entities.parquet").read_bytes()
    art = IndexArtifact.load(out, expect_encoder_id=text_encoder.id)
    _, ids = art.search_text(text_encoder.encode([art.text(i) for i in art.ids]), k=1)
    assert [r[0] for r in ids] == art.ids


def test_cli_update_on_ray_embeds_only_the_delta(ray_local: None, tmp_path: Path, text_encoder,  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.index as job
    from mel.config import load_config
    from mel.entrypoints.cli import main
    from mel.index import IndexArtifact, read_manifest
    from mel.index.update import latest_version
    from mel.kb.delta import apply_delta, read_delta
    from mel.kb.reader import read_kb, write_kb

    root = tmp_path / "indexes"
    sets = ["--set", "method=retrieval", "--set", "pipelines.index.workers=1", "--set", "pipelines.index.shard_rows=16"]
    assert main(["index", "--kb", str(DEMO_KB), "--out", str(root / "v0001"), "--local", *sets]) == 0
    delta = tmp_path / "delta.jsonl"
    delta.write_text("\n".join(json.dumps(r) for r in [
        {"id": "demo:zorblax-gadget", "name": "Zorblax Gadget", "description": "A fictional kitchen gadget.",
         "attributes": {"instance of": "kitchen gadget", "maker": "Zorblax Industries"}},
        {"id": "demo:atari-jaguar", "name": "Atari Jaguar", "aliases": ["Jaguar"],
         "attributes": {"instance of": "retro video game console", "manufacturer": "Atari Corporation"}},
        {"id": "demo:mercury-god", "op": "delete"},
    ]) + "\n")
    fed: list[int] = []
    real = job.dataset_from_table

    def spy(table, batch_size):  # noqa: ANN001, ANN202
        fed.append(table.num_rows)
        return real(table, batch_size)

    monkeypatch.setattr(job, "dataset_from_table", spy)
    assert main(["index", "--update", str(delta), "--from", str(root), *sets]) == 0  # Ray, default --out
    v2 = root / "v0002"
    assert latest_version(root) == v2 and fed == [2]
    m = read_manifest(v2)
    assert (m.version, m.counts["added"], m.counts["changed"], m.counts["removed"]) == (2, 1, 1, 1)
    assert (m.counts["embedded_vectors"], m.counts["reused_vectors"]) == (2, 52)

    new, old = IndexArtifact.load(v2), IndexArtifact.load(root / "v0001")
    q = text_encoder.encode(["Zorblax kitchen gadget", "Mercury, Roman god of messengers"])
    _, ids = new.search_text(q, k=3)
    assert ids[0][0] == "demo:zorblax-gadget" and "demo:mercury-god" not in ids[1]
    nv, ov = np.load(v2 / "text.npy"), np.load(root / "v0001" / "text.npy")
    for eid in ("demo:jaguar-animal", "demo:mercury-planet"):
        np.testing.assert_array_equal(nv[new.position(eid)], ov[old.position(eid)])

    cfg = load_config(None, ["method=retrieval", "pipelines.index.shard_rows=16"])
    kb2 = write_kb(apply_delta(read_kb(DEMO_KB), read_delta(delta)).kb, tmp_path / "kb2.jsonl")
    full = job.run_index_local(kb2, tmp_path / "full", cfg, text_encoder)
    assert IndexArtifact.load(full).ids == new.ids and read_manifest(full).kb_hash == m.kb_hash
    np.testing.assert_allclose(np.load(full / "text.npy"), nv, atol=1e-5)
