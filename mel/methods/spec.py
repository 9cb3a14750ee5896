"""A linking method is a declaration: a name and an ordered list of registered steps (plus, where it needs one, a
settings model for its own ``methods.<name>`` config section). What it needs is read from its steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mel.config import Config
    from mel.steps.base import Step


@dataclass(frozen=True)
class MethodSpec:
    """``steps``: registered step names, in order; the last must close (turn states into results). A step whose
    ``active(cfg)`` is false is skipped (an optional stage switched off). ``settings``: a pydantic model validating
    ``cfg.methods[name]`` (None: the method takes no settings of its own). ``score``: what the method's final score
    (the top candidate's, which ``nil.threshold`` and ``mel calibrate`` act on) is; the registry refuses a method
    that does not say, so every method's NIL figures compare."""

    name: str
    steps: tuple[str, ...]
    description: str = ""
    settings: type[BaseModel] | None = None
    score: str = ""

    def config_hash(self, cfg: Config) -> str:
        """A hash of what decides the method's scores under ``cfg``: its name, active steps, the config sections
        those steps and their parts read, its ``methods.<name>`` section and ``plugins``; not the NIL settings
        (what calibration chooses), caches or serving. Calibrations record it."""
        import hashlib
        import json

        from mel.steps.base import config_section, config_sections

        raw = cfg.model_dump(mode="json")
        steps = self.active_steps(cfg)
        sections = (config_sections(steps) | {"plugins", f"methods.{self.name}"}) - {"nil", "models.cache_dir"}
        blob = json.dumps([self.name, [s.name for s in steps], {k: config_section(raw, k) for k in sorted(sections)}],
                          sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def step_classes(self) -> list[type[Step]]:
        from mel.steps import get_step

        return [get_step(s) for s in self.steps]

    def active_steps(self, cfg: Config) -> list[type[Step]]:
        return [s for s in self.step_classes() if s.active(cfg)]

    def needs(self, cfg: Config) -> set[str]:
        """The heavy parts the method's active steps need under ``cfg``."""
        out: set[str] = set()
        for s in self.active_steps(cfg):
            out |= s.needs
        return out

    def validate(self) -> None:
        """Check the declaration: known steps, no repeats, ending with a closing step (and only there)."""
        if not self.steps:
            raise ValueError(f"method {self.name!r} declares no steps")
        classes = self.step_classes()  # unknown step names raise, naming the known ones
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"method {self.name!r} lists a step twice: {list(self.steps)}")
        if not classes[-1].closes:
            raise ValueError(f"method {self.name!r} must end with a closing step (e.g. 'nil'), "
                             f"not {self.steps[-1]!r}")
        early = [c.name for c in classes[:-1] if c.closes]
        if early:
            raise ValueError(f"method {self.name!r}: closing step(s) {early} must come last")

    def default_adapter(self, cfg: Config) -> str | None:
        """The LoRA adapter name used when a call names none: the method's own ``methods.<name>.adapter`` when its
        settings have one, else ``selection.lora_adapter``. It must be one of ``selection.adapters``."""
        settings = self.method_settings(cfg)
        name = getattr(settings, "adapter", None) or cfg.selection.lora_adapter
        if name is not None and name not in cfg.selection.adapters:
            from mel.errors import ConfigError

            raise ConfigError(f"default adapter {name!r} of method {self.name!r} is not in selection.adapters "
                              f"(known: {sorted(cfg.selection.adapters)})")
        return name

    def method_settings(self, cfg: Config) -> Any:
        """The validated ``methods.<name>`` section (None when the method takes none). Unknown keys are refused."""
        raw = cfg.methods.get(self.name)
        if self.settings is None:
            if raw:
                from mel.errors import ConfigError

                raise ConfigError(f"methods.{self.name}: method {self.name!r} takes no settings, got {sorted(raw)}")
            return None
        from pydantic import ValidationError

        from mel.errors import ConfigError

        try:
            return self.settings.model_validate(raw or {})
        except ValidationError as e:
            lines = [f"  methods.{self.name}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                     for err in e.errors()]
            raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
