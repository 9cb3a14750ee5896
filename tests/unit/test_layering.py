"""The core of ``mel`` imports no adapter: only ``mel/entrypoints`` may import ``serve`` or ``pipelines``, and
``pipelines`` never imports ``serve``. Checked by walking every import statement (module level and inside
functions) of every module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

ADAPTERS = ("serve", "pipelines")


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names (absolute imports)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def violations(root: Path, package: str, forbidden: tuple[str, ...], allowed_room: str | None = None) -> list[str]:
    bad = []
    for f in sorted((root / package).rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if allowed_room is not None and rel.startswith(allowed_room):
            continue
        for mod in sorted(imported_modules(f.read_text())):
            if mod.split(".")[0] in forbidden:
                bad.append(f"{rel} imports {mod}")
    return bad


def test_only_the_entrypoints_room_imports_serve_or_pipelines() -> None:
    assert violations(REPO, "mel", ADAPTERS, allowed_room="mel/entrypoints/") == []


def test_pipelines_do_not_import_serve() -> None:
    assert violations(REPO, "pipelines", ("serve",)) == []


def test_config_does_not_import_the_method_registry() -> None:
    assert not {m for m in imported_modules((REPO / "mel" / "config.py").read_text()) if m.startswith("mel.methods")}


def test_test_doubles_are_not_shipped() -> None:
    assert not [p for p in (REPO / "mel").rglob("fake*.py")]


def test_the_check_itself_can_fail(tmp_path: Path) -> None:
    core = tmp_path / "mel" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("def f():\n    from serve.app import build_app\n    import pipelines.index\n")
    (tmp_path / "mel" / "entrypoints").mkdir()
    (tmp_path / "mel" / "entrypoints" / "ok.py").write_text("from serve.app import build_app\n")
    assert violations(tmp_path, "mel", ADAPTERS, allowed_room="mel/entrypoints/") == [
        "mel/core/bad.py imports pipelines.index", "mel/core/bad.py imports serve.app"]
