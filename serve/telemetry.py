"""Observability of the linking graph: Prometheus metrics per stage, JSON log lines that carry the request id,
and the request-id rules.

Metrics are ``ray.serve.metrics`` objects: Ray exports them on each node's metrics export port (Prometheus text,
127.0.0.1 for a local Ray) as ``ray_mel_*``, tagged by Serve with ``deployment``, ``replica`` and ``application``
and by us with ``stage`` and ``method``:

- ``mel_stage_requests`` (counter): calls of a stage (one per HTTP request at the ingress, one per handle call in
  the model deployments);
- ``mel_stage_errors`` (counter, ``error`` tag: overloaded, timeout, bad_request, internal...);
- ``mel_stage_latency_ms`` (histogram): time in the stage, per call;
- ``mel_stage_batch_size`` (histogram): mentions per model batch (``@serve.batch``);
- ``mel_stage_candidates`` (histogram): candidates returned per mention;
- ``mel_index_entities`` (gauge): entities in the index the Retriever serves.

Log lines go to the ``ray.serve.mel`` logger, a child of Serve's own logger, so they land in the replica's log file
(``<session>/logs/serve/replica_<app>_<deployment>_<id>.log``) in the deployment's ``logging_config`` encoding
(``serve.log_encoding``; JSON by default). Every line of ours carries ``request_id``, ``stage``, ``deployment`` and
``latency_ms`` as top-level JSON keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 128
LOGGER_NAME = "ray.serve.mel"

LATENCY_BOUNDARIES_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
                                            60000, 120000)
BATCH_BOUNDARIES: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CANDIDATE_BOUNDARIES: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # Ray: boundaries > 0

log = logging.getLogger(LOGGER_NAME)


# ----------------------------------------------------------------------------- request ids
def request_id_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable client request id (None when it is): 1..128 printable ASCII characters."""
    if not value:
        return "is empty"
    if len(value) > MAX_REQUEST_ID_CHARS:
        return f"is {len(value)} characters long (at most {MAX_REQUEST_ID_CHARS})"
    bad = next((c for c in value if not (" " <= c <= "~")), None)
    if bad is not None:
        return f"holds the non-printable or non-ASCII character {bad!r}"
    return None


def current_request_id() -> str:
    """The request id Serve carries for the request being handled ('' outside a request). The HTTP proxy takes it
    from the client's ``X-Request-ID`` (or makes one), and Serve passes it on to every handle call."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id


# ----------------------------------------------------------------------------- logs
def log_event(stage: str, deployment: str, request_id: str, latency_ms: float, message: str = "",
              level: int = logging.INFO, **fields: Any) -> None:
    """One structured log line: ``request_id``, ``stage``, ``deployment``, ``latency_ms`` plus ``fields``."""
    extra = {"request_id": request_id, "stage": stage, "deployment": deployment,
             "latency_ms": round(float(latency_ms), 3), **fields}
    log.log(level, message or f"{stage} done", extra=extra)


# ----------------------------------------------------------------------------- metrics
class CounterLike(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class HistogramLike(Protocol):
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class GaugeLike(Protocol):
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class MetricsFactory(Protocol):
    """Makes metric objects; :class:`ServeMetricsFactory` in replicas, a recording fake in unit tests."""

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> CounterLike: ...

    def histogram(self, name: str, description: str, boundaries: Sequence[float],
                  tag_keys: tuple[str, ...]) -> HistogramLike: ...

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> GaugeLike: ...


class ServeMetricsFactory:
    """``ray.serve.metrics`` objects (Serve adds the deployment, replica and application tags)."""

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> CounterLike:
        from ray.serve.metrics import Counter

        return Counter(name, description=description, tag_keys=tag_keys)

    def histogram(self, name: str, description: str, boundaries: Sequence[float],
                  tag_keys: tuple[str, ...]) -> HistogramLike:
        from ray.serve.metrics import Histogram

        return Histogram(name, description=description, boundaries=list(boundaries), tag_keys=tag_keys)

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> GaugeLike:
        from ray.serve.metrics import Gauge

        return Gauge(name, description=description, tag_keys=tag_keys)


class StageMetrics:
    """The metrics of one stage of one deployment (``stage`` and ``method`` tags fixed at construction)."""

    TAGS = ("stage", "method")

    def __init__(self, stage: str, method: str, factory: MetricsFactory | None = None) -> None:
        f = factory or ServeMetricsFactory()
        self.stage = stage
        self.tags = {"stage": stage, "method": method}
        self.requests = f.counter("mel_stage_requests", "Calls of a linking stage.", self.TAGS)
        self.errors = f.counter("mel_stage_errors", "Failed calls of a linking stage, by error kind.",
                                self.TAGS + ("error",))
        self.latency = f.histogram("mel_stage_latency_ms", "Time spent in a linking stage per call (ms).",
                                   LATENCY_BOUNDARIES_MS, self.TAGS)
        self.batch_sizes = f.histogram("mel_stage_batch_size", "Mentions per model batch.", BATCH_BOUNDARIES,
                                       self.TAGS)
        self.candidates = f.histogram("mel_stage_candidates", "Candidates returned per mention.",
                                      CANDIDATE_BOUNDARIES, self.TAGS)

    def call(self, latency_ms: float, *, error: str | None = None, candidates: Sequence[int] = ()) -> None:
        """One call of the stage finished (``error``: its kind when it failed); ``candidates``: per mention."""
        self.requests.inc(1.0, tags=self.tags)
        self.latency.observe(float(latency_ms), tags=self.tags)
        if error is not None:
            self.errors.inc(1.0, tags={**self.tags, "error": error})
        for n in candidates:
            self.candidates.observe(float(n), tags=self.tags)

    def batch(self, size: int) -> None:
        self.batch_sizes.observe(float(size), tags=self.tags)


class IndexMetrics:
    """What the Retriever serves: the entity count of its index, and index switches."""

    def __init__(self, factory: MetricsFactory | None = None) -> None:
        f = factory or ServeMetricsFactory()
        self.entities = f.gauge("mel_index_entities", "Entities in the index being served.", ())
        self.switches = f.counter("mel_index_switches", "Index versions loaded by reconfigure.", ())

    def loaded(self, entities: int) -> None:
        self.entities.set(float(entities), tags={})
        self.switches.inc(1.0, tags={})
