from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from mel.config import Config, config_hash, load_config
from mel.errors import ConfigError


def _models(model: type[BaseModel], seen: set | None = None):
    seen = seen if seen is not None else set()
    if model in seen:
        return
    seen.add(model)
    yield model
    for f in model.model_fields.values():
        t = f.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            yield from _models(t, seen)


def test_every_field_is_described_and_unknown_keys_rejected() -> None:
    for m in _models(Config):
        assert m.model_config.get("extra") == "forbid", m.__name__
        for name, f in m.model_fields.items():
            assert f.description, f"{m.__name__}.{name} has no description"


def test_unknown_key_named_in_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("retrieval:\n  topk: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "retrieval.topk" in str(e.value) and str(p) in str(e.value)


def test_bad_values_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retrieval.top_k"):
        load_config(None, ["retrieval.top_k=0"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    # the method name is checked where the config meets the registry (the CLI, the runner), not by the config
    assert load_config(None, ["method=nope"]).method == "nope"
    from mel.methods import registry

    with pytest.raises(ConfigError, match="unknown linking method 'nope'"):
        registry.check_name("nope")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["retrieval"])


def test_overrides_parse_yaml_values_and_hash_changes() -> None:
    a = load_config(None)
    b = load_config(None, ["retrieval.top_k=7", "nil.threshold=0.5", "selection.enabled=false"])
    assert b.retrieval.top_k == 7 and b.nil.threshold == 0.5 and b.selection.enabled is False
    assert a.hash() != b.hash()
    assert a.hash() == load_config(None).hash()
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})


def test_adapter_default_must_be_known() -> None:
    with pytest.raises(ConfigError, match="lora_adapter"):
        load_config(None, {"selection.lora_adapter": "x"})
    cfg = load_config(None, {"selection.adapters": {"x": "/a"}, "selection.lora_adapter": "x"})
    assert cfg.selection.adapters == {"x": "/a"}


def test_defaults_bind_loopback() -> None:
    cfg = load_config(None)
    assert cfg.serve.host == "127.0.0.1"
    assert cfg.ray.address is None
