"""Following a versioned index root while serving (`mel serve --index ROOT`, `mel serve --switch-index`), with
switch_index replaced by a recorder (the real switch runs in tests/integration/test_serve_graph.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mel.config import load_config
from mel.entrypoints import commands
from mel.errors import ArtifactMismatch, InputError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("v0001", "v0002"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")  # "complete" for the versioned layout
    (tmp_path / "CURRENT").write_text("v0001\n")
    return tmp_path


def test_point_current_names_a_version_and_refuses_other_dirs(root: Path, tmp_path: Path) -> None:
    commands.point_current(str(root / "v0002"))
    assert (root / "CURRENT").read_text().strip() == "v0002"
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="vNNNN"):
        commands.point_current(str(tmp_path / "plain"))


def test_follow_current_switches_once_to_the_new_version(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(commands, "switch_index", lambda cfg, d, **kw: calls.append(d) or {})
    cfg = load_config(None)
    served = (root / "v0001").absolute()
    assert commands.follow_current(cfg, str(root), served) == served and calls == []
    (root / "CURRENT").write_text("v0002\n")
    now = commands.follow_current(cfg, str(root), served)
    assert now == (root / "v0002").absolute() and calls == [str(now)]
    assert commands.follow_current(cfg, str(root), now) == now and len(calls) == 1


def test_follow_current_keeps_the_old_version_when_the_new_one_is_refused(
        root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(cfg, d, **kw):  # noqa: ANN001, ANN202
        raise ArtifactMismatch(f"{d}: built with another encoder")

    monkeypatch.setattr(commands, "switch_index", refuse)
    (root / "CURRENT").write_text("v0002\n")
    served = (root / "v0001").absolute()
    assert commands.follow_current(load_config(None), str(root), served) == served
    assert "another encoder" in caplog.text and "keeping" in caplog.text
