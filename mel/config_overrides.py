"""A validated config as ``--set`` overrides: the settings that differ from the built-in defaults, as
``section.key=<JSON>`` strings that :func:`mel.config.load_config` turns back into the same config.

This is how a config travels to a cluster without its file: ``mel submit`` appends them to the job's
command line, and ``mel cluster render`` writes them into the RayService's Serve config (``args.overrides``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from mel.config import Config, load_config
from mel.errors import ConfigError


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _diff(cur: BaseModel, base: BaseModel, prefix: str, skip: set[str], out: list[str]) -> None:
    for name in type(cur).model_fields:
        key = f"{prefix}{name}"
        if key in skip:
            continue
        v, b = getattr(cur, name), getattr(base, name)
        if isinstance(v, BaseModel) and type(v) is type(b):
            _diff(v, b, f"{key}.", skip, out)
            continue
        pv, pb = _plain(v), _plain(b)
        if pv != pb or type(pv) is not type(pb) and (isinstance(pv, bool) or isinstance(pb, bool)):
            out.append(f"{key}={_value_text(pv)}")


def _value_text(value: Any) -> str:
    """``value`` as parse_override reads it back (YAML): a plain string when it reads back unchanged, else JSON
    (JSON is YAML)."""
    import yaml

    if isinstance(value, str) and value and value == value.strip():
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _without(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    for dotted in keys:
        *parents, last = dotted.split(".")
        cur = data
        for p in parents:
            cur = cur.get(p, {})
        cur.pop(last, None)
    return data


def config_overrides(cfg: Config, *, exclude: Iterable[str] = ()) -> list[str]:
    """``key=value`` overrides that rebuild ``cfg`` from the built-in defaults (``exclude``: dotted keys or
    sections left out, e.g. ``submit``). Checked: applying them reproduces ``cfg`` (minus ``exclude``)."""
    skip = set(exclude)
    out: list[str] = []
    _diff(cfg, Config(), "", skip, out)
    rebuilt = load_config(None, out)
    if _without(rebuilt.model_dump(mode="json"), skip) != _without(cfg.model_dump(mode="json"), skip):
        raise ConfigError(f"config overrides do not reproduce the configuration: {out}")
    return out
