from __future__ import annotations

import sys

import pytest

from mel.entrypoints.cli import build_parser, main
from mel.errors import ConfigError
from mel.methods import registry
from mel.registry import Registry


def test_registry_validates_names_and_duplicates() -> None:
    r: Registry = Registry("thing")
    with pytest.raises(ValueError, match="slug"):
        r.register("Bad Name")
    r.register("ok")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        r.register("ok")(lambda: 2)
    with pytest.raises(TypeError):
        r.register("nc")(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="known: ok"):
        r.get("missing")


def test_builtin_methods_registered() -> None:
    assert {"retrieval", "llm-select"} <= set(registry.names())


def test_cli_is_light_and_parses() -> None:
    heavy = {"torch", "ray", "faiss", "vllm", "sentence_transformers", "open_clip"}
    before = heavy & set(sys.modules)
    p = build_parser()
    ns = p.parse_args(["index", "--kb", "kb.jsonl", "--out", "o", "--set", "retrieval.top_k=3"])
    assert ns.command == "index" and ns.overrides == ["retrieval.top_k=3"]
    assert heavy & set(sys.modules) == before


def test_cli_reports_config_errors_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["index", "--kb", "kb.jsonl", "--out", "o", "--set", "retrieval.nope=1"])
    assert rc == 2
    assert "retrieval.nope" in capsys.readouterr().err
