"""`pipelines.index.local_below`: a KB below the size is embedded in this process, at or above it on Ray Data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mel.config import Config
from mel.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"  # 54 entities


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    import mel.raylocal
    import pipelines.index

    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(pipelines.index, "run_index", lambda kb, out, cfg: seen.append(("ray", kb)) or out)
    monkeypatch.setattr(pipelines.index, "run_index_local", lambda kb, out, cfg: seen.append(("local", kb)) or out)
    monkeypatch.setattr(mel.raylocal, "init_ray", lambda _cfg: seen.append(("init_ray", None)))
    return seen


@pytest.mark.parametrize(("below", "expected"), [(0, "ray"), (54, "ray"), (55, "local"), (1000, "local")])
def test_size_decides_where_the_kb_is_embedded(calls, tmp_path: Path, below: int, expected: str) -> None:  # noqa: ANN001
    from mel.entrypoints import commands

    cfg = Config(method="retrieval", pipelines={"index": {"local_below": below}})
    commands.index(cfg, out=str(tmp_path / "i"), kb=str(DEMO_KB))
    kinds = [k for k, _ in calls]
    assert kinds == (["local"] if expected == "local" else ["init_ray", "ray"])  # no Ray started for a local build
    built_from = calls[-1][1]
    if below:  # the KB read to count it is handed on, not read twice
        assert len(built_from) == 54  # type: ignore[arg-type]
    else:
        assert built_from == DEMO_KB


def test_local_flag_wins_at_any_size(calls, tmp_path: Path) -> None:  # noqa: ANN001
    from mel.entrypoints import commands

    commands.index(Config(method="retrieval"), out=str(tmp_path / "i"), kb=str(DEMO_KB), local=True)
    assert [k for k, _ in calls] == ["local"]


def test_an_empty_kb_is_refused_by_the_build_with_its_path(tmp_path: Path) -> None:
    from mel.kb.reader import read_kb
    from pipelines.index import _read_kb

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no entities"):
        _read_kb(read_kb(empty))


def test_the_demo_config_builds_its_kb_in_process() -> None:
    from mel.config import load_config
    from mel.kb.reader import read_kb

    cfg = load_config(str(REPO / "configs" / "demo.yaml"), [])
    assert len(read_kb(DEMO_KB)) < cfg.pipelines.index.local_below
