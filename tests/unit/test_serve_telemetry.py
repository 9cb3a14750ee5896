"""Metrics recording, request ids and structured log lines of the linking graph (no Ray cluster)."""

from __future__ import annotations

import json
import logging

import pytest

from serve.telemetry import LOGGER_NAME, IndexMetrics, StageMetrics, log_event, request_id_problem


class FakeMetric:
    def __init__(self, registry: FakeRegistry, kind: str, name: str, tag_keys: tuple[str, ...],
                 boundaries: tuple[float, ...] = ()) -> None:
        self.registry, self.kind, self.name, self.tag_keys, self.boundaries = registry, kind, name, tag_keys, boundaries

    def _record(self, value: float, tags: dict[str, str] | None) -> None:
        tags = dict(tags or {})
        assert set(tags) == set(self.tag_keys), f"{self.name}: tags {sorted(tags)} != declared {self.tag_keys}"
        self.registry.records.append((self.name, value, tags))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._record(value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record(value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record(value, tags)


class FakeRegistry:
    """A MetricsFactory that records every value with its tags, and checks tags against the declared keys."""

    def __init__(self) -> None:
        self.metrics: dict[str, FakeMetric] = {}
        self.records: list[tuple[str, float, dict[str, str]]] = []

    def _make(self, kind: str, name: str, tag_keys: tuple[str, ...], boundaries: tuple[float, ...] = ()) -> FakeMetric:
        assert name.startswith("mel_"), name
        m = FakeMetric(self, kind, name, tuple(tag_keys), tuple(boundaries))
        self.metrics[name] = m
        return m

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> FakeMetric:
        assert description
        return self._make("counter", name, tag_keys)

    def histogram(self, name: str, description: str, boundaries, tag_keys: tuple[str, ...]) -> FakeMetric:  # noqa: ANN001
        assert description and list(boundaries) == sorted(boundaries) and min(boundaries) > 0  # as Ray requires
        return self._make("histogram", name, tag_keys, tuple(boundaries))

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> FakeMetric:
        return self._make("gauge", name, tag_keys)

    def values(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return [(v, t) for n, v, t in self.records if n == name]


def test_stage_metrics_record_requests_latency_candidates_and_batches() -> None:
    reg = FakeRegistry()
    m = StageMetrics("retrieve", "llm-select", reg)
    assert {"mel_stage_requests", "mel_stage_errors", "mel_stage_latency_ms", "mel_stage_batch_size",
            "mel_stage_candidates"} <= set(reg.metrics)
    m.call(12.5, candidates=[20, 7])
    m.batch(16)
    tags = {"stage": "retrieve", "method": "llm-select"}
    assert reg.values("mel_stage_requests") == [(1.0, tags)]
    assert reg.values("mel_stage_latency_ms") == [(12.5, tags)]
    assert reg.values("mel_stage_candidates") == [(20.0, tags), (7.0, tags)]
    assert reg.values("mel_stage_batch_size") == [(16.0, tags)]
    assert reg.values("mel_stage_errors") == []


def test_stage_metrics_count_errors_by_kind() -> None:
    reg = FakeRegistry()
    m = StageMetrics("link", "retrieval", reg)
    m.call(3.0, error="overloaded")
    m.call(4.0, error="timeout")
    errs = reg.values("mel_stage_errors")
    assert [t["error"] for _, t in errs] == ["overloaded", "timeout"]
    assert all(t["stage"] == "link" and t["method"] == "retrieval" for _, t in errs)
    assert len(reg.values("mel_stage_requests")) == 2  # failed calls are requests too


def test_index_metrics() -> None:
    reg = FakeRegistry()
    IndexMetrics(reg).loaded(42)
    assert reg.values("mel_index_entities") == [(42.0, {})]
    assert reg.values("mel_index_switches") == [(1.0, {})]


@pytest.mark.parametrize("value,ok", [
    ("abc-123", True), ("a" * 128, True), ("with space", True), ("x" * 129, False), ("", False),
    ("bad\nline", False), ("t\u00e9l\u00e9", False), ("tab\there", False),
])
def test_request_id_rules(value: str, ok: bool) -> None:
    problem = request_id_problem(value)
    assert (problem is None) == ok, problem


def test_log_event_carries_request_id_stage_deployment_latency(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log_event("retrieve", "Retriever", "rid-1", 12.34567, mentions=3)
    rec = caplog.records[-1]
    assert (rec.request_id, rec.stage, rec.deployment, rec.latency_ms, rec.mentions) == (
        "rid-1", "retrieve", "Retriever", 12.346, 3)
    # Serve's JSON formatter writes these record attributes as top-level keys.
    from ray._common.formatters import JSONFormatter

    line = json.loads(JSONFormatter().format(rec))
    assert {"request_id": "rid-1", "stage": "retrieve", "deployment": "Retriever", "latency_ms": 12.346}.items() \
        <= line.items()


def test_gather_batched_records_a_failed_stage_call() -> None:
    import asyncio

    from serve.deployments import gather_batched

    async def ok(x: int) -> int:
        return x

    async def boom() -> int:
        raise ValueError("encoder down")

    reg = FakeRegistry()
    m = StageMetrics("retrieve", "retrieval", reg)
    assert asyncio.run(gather_batched(m, "Retriever", "r-1", 0.0, [ok(1), ok(2)])) == [1, 2]
    assert reg.values("mel_stage_errors") == []
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]  # Ray Serve's logger does not propagate to caplog
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        with pytest.raises(ValueError, match="encoder down"):
            asyncio.run(gather_batched(m, "Retriever", "r-2", 0.0, [ok(1), boom()]))
    finally:
        logger.removeHandler(handler)
    errs = reg.values("mel_stage_errors")
    assert [t["error"] for _, t in errs] == ["internal"]
    recs = [r for r in seen if getattr(r, "request_id", None) == "r-2"]
    assert len(recs) == 1 and recs[0].levelno == logging.ERROR
    assert (recs[0].stage, recs[0].deployment, recs[0].mentions) == ("retrieve", "Retriever", 2)
    assert "encoder down" in recs[0].getMessage()
