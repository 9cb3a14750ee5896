"""FastAPI ingress: validates requests, walks the method's declared steps (sending each run of consecutive steps to
the deployment of their host, and running host-less steps such as the NIL decision itself), and answers JSON.

Every answer is JSON and carries the request id (the client's ``X-Request-ID`` when valid, else one Serve made; the
proxy returns it in the ``X-Request-ID`` response header). Bad requests get a 4xx naming the problem; a full queue
at a model deployment (its ``max_queued_requests``) gets a fast 503 with ``Retry-After`` naming the deployment; a
request past ``serve.request_timeout_s`` gets a 504 naming the stage it was in; a failing stage gets a 500."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from mel.config import Config, adapters_multiplexed
from mel.steps.base import MentionState
from mel.types import Mention
from serve.schemas import ErrorOut, LinkRequest, LinkResponse
from serve.telemetry import REQUEST_ID_HEADER, StageMetrics, current_request_id, log_event, request_id_problem

INGRESS = "Ingress"

api = FastAPI(title="mel: multimodal entity linking", version="0.1.0",
              description="Link mentions (text, optional image) to KB entities or NIL.")


class HTTPFailure(Exception):
    """A request answered with an error: status, message, details, and what it is for metrics and logs."""

    kind = "error"

    def __init__(self, status: int, error: str, details: list[str] | None = None, *, deployment: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []
        self.deployment, self.headers = deployment, headers or {}


class BadRequest(HTTPFailure):
    kind = "bad_request"


class Overloaded(HTTPFailure):
    kind = "overloaded"


class TimedOut(HTTPFailure):
    kind = "timeout"


class StageFailed(HTTPFailure):
    kind = "internal"


def _error(status: int, error: str, details: list[str] | None = None, *, request_id: str | None = None,
           deployment: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorOut(error=error, details=details or [], request_id=request_id, deployment=deployment)
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _describe(errors: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        out.append(f"{loc or '<body>'}: {e.get('msg', 'invalid')}")
    return out


def _openapi() -> dict[str, Any]:
    """OpenAPI document; the link body is parsed by hand (for size limits and clear errors), so its
    schema is added to the components here."""
    if api.openapi_schema:
        return api.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    req = LinkRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps.update(req.pop("$defs", {}))
    comps["LinkRequest"] = req
    api.openapi_schema = schema
    return schema


api.openapi = _openapi  # type: ignore[method-assign]

_LINK_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/LinkRequest"}}}},
}
_ERRORS = {s: {"model": ErrorOut} for s in (400, 404, 413, 422, 500, 503, 504)}


@api.exception_handler(RequestValidationError)
async def _validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid request body", _describe(exc.errors()))


def json_depth_exceeds(data: Any, limit: int) -> bool:
    """Whether parsed JSON nests arrays/objects deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(data, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _open_checked(source: Any, where: str, max_pixels: int) -> Any:
    """Open an image, refuse it from its header when it has more than ``max_pixels`` pixels, then decode it to RGB.
    Every failure is a 4xx naming the field (never a 500)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadRequest(413, f"image too large: {w}x{h} = {w * h} pixels > the limit {max_pixels} "
                                 "(serve.max_image_pixels)", [f"{where}: {w}x{h}"])
            return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRequest(413, "image too large (decompression bomb)", [f"{where}: {e}"]) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        # PIL raises these for truncated or malformed files (e.g. a broken PNG chunk is a SyntaxError)
        raise BadRequest(400, "cannot decode image", [f"{where}: {e}"]) from None


def decode_image(m_index: int, path: str | None, b64: str | None, image_root: str | None,
                 max_pixels: int = 40_000_000) -> Any:
    """Return an RGB PIL image, or None. Only files under ``image_root`` or base64 bytes are accepted."""

    field = f"mentions.{m_index}"
    if path is not None and b64 is not None:
        raise BadRequest(400, "give either image_path or image_base64, not both", [f"{field}: both set"])
    if path is not None:
        if image_root is None:
            raise BadRequest(400, "image paths are not allowed on this server (no image root configured); "
                             "send image_base64", [f"{field}.image_path: refused"])
        root = os.path.realpath(image_root)
        real = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, real]) != root:
            raise BadRequest(400, "image path is outside the allowed image root", [f"{field}.image_path: {path}"])
        if not os.path.isfile(real):
            raise BadRequest(400, "image file not found", [f"{field}.image_path: {path}"])
        return _open_checked(real, f"{field}.image_path", max_pixels)
    if b64 is not None:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, "image_base64 is not valid base64", [f"{field}.image_base64"]) from None
        return _open_checked(io.BytesIO(raw), f"{field}.image_base64", max_pixels)
    return None


class Ingress:
    """The HTTP entry point of the linking graph."""

    def __init__(self, cfg: dict[str, Any], handles: dict[str, Any], metrics: StageMetrics | None = None,
                 nil: dict[str, Any] | None = None) -> None:
        """``handles``: host name -> the handle of its deployment, for every host the method's active steps need
        besides ``local`` (whose steps run here). ``nil``: where ``cfg``'s NIL threshold came from (reported by
        ``/healthz``)."""
        from mel.methods import registry
        from mel.parts import Parts
        from mel.steps import segments

        self.cfg = Config.model_validate(cfg)
        registry.load_plugins(self.cfg.plugins)
        self.spec = registry.get(self.cfg.method)
        self.default_adapter = self.spec.default_adapter(self.cfg)
        self.segments = segments(self.spec.active_steps(self.cfg))
        missing = sorted({h.name for h, _ in self.segments if h.name != "local"} - set(handles))
        if missing:
            raise ValueError(f"method {self.cfg.method!r} needs deployments for hosts {missing}; got {sorted(handles)}")
        self.handles = handles
        self.local_steps = {c.name: c(self.cfg, Parts()) for h, cs in self.segments if h.name == "local" for c in cs}
        self.metrics = metrics or StageMetrics("link", self.cfg.method)
        self.nil = nil or {"source": "config", "threshold": self.cfg.nil.threshold}
        self.multiplexed = adapters_multiplexed(self.cfg)

    async def _parse(self, request: Request) -> LinkRequest:
        limit = self.cfg.serve.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body too large ({declared} bytes > {limit})")
        body = await request.body()
        if len(body) > limit:
            raise BadRequest(413, f"request body too large ({len(body)} bytes > {limit})")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, "malformed JSON", [str(e)]) from None
        except RecursionError:
            raise BadRequest(400, f"JSON nested too deeply (limit {self.cfg.serve.max_json_depth} levels)",
                             ["<body>: nesting"]) from None
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise BadRequest(400, "malformed JSON", [f"<body>: {e}"]) from None
        if json_depth_exceeds(data, self.cfg.serve.max_json_depth):
            raise BadRequest(400, f"JSON nested too deeply (limit {self.cfg.serve.max_json_depth} levels, "
                             "serve.max_json_depth)", ["<body>: nesting"])
        try:
            req = LinkRequest.model_validate(data)
        except ValidationError as e:
            raise BadRequest(422, "invalid request body", _describe(e.errors())) from None
        if len(req.mentions) > self.cfg.serve.max_mentions_per_request:
            raise BadRequest(413, f"too many mentions ({len(req.mentions)} > "
                             f"{self.cfg.serve.max_mentions_per_request})")
        if req.adapter is not None and req.adapter not in self.cfg.selection.adapters:
            raise BadRequest(404, f"unknown adapter {req.adapter!r}; known: {sorted(self.cfg.selection.adapters)}",
                             [f"adapter: known: {sorted(self.cfg.selection.adapters)}"])
        return req

    @staticmethod
    def _request_id(request: Request) -> str:
        """The client's X-Request-ID (checked), else the id Serve made for this request."""
        sent = request.headers.get(REQUEST_ID_HEADER)
        if sent is not None:
            problem = request_id_problem(sent)
            if problem:
                raise BadRequest(400, f"invalid {REQUEST_ID_HEADER} header: it {problem}",
                                 [f"header {REQUEST_ID_HEADER}: 1 to 128 printable ASCII characters"])
            return sent
        return current_request_id() or os.urandom(16).hex()

    @api.post("/v1/link", response_model=LinkResponse, responses=_ERRORS, openapi_extra=_LINK_DOC,
              summary="Link one or many mentions")
    async def link(self, request: Request) -> JSONResponse:
        t_start = time.perf_counter()
        rid: str | None = None
        state = {"stage": "parse", "deployment": INGRESS}
        mentions: list[Mention] = []
        try:
            rid = self._request_id(request)
            req = await self._parse(request)
            images = [decode_image(i, m.image_path, m.image_base64, self.cfg.serve.image_root,
                                   self.cfg.serve.max_image_pixels)
                      for i, m in enumerate(req.mentions)]
            mentions = [Mention(id=m.id if m.id is not None else str(i), surface=m.surface, context=m.context,
                                attributes=dict(m.attributes)) for i, m in enumerate(req.mentions)]
            k = req.top_k or self.cfg.retrieval.top_k
            adapter = req.adapter or self.default_adapter
            budget = self.cfg.serve.request_timeout_s
            run = self._run(mentions, images, k, adapter, rid, state, t_start)
            if budget is None:
                out = await run
            else:
                try:
                    out = await asyncio.wait_for(run, timeout=max(0.0, budget - (time.perf_counter() - t_start)))
                except asyncio.TimeoutError:
                    raise TimedOut(504, f"request timed out after {budget:g}s in stage {state['stage']} "
                                   f"(deployment {state['deployment']})", [f"serve.request_timeout_s: {budget:g}"],
                                   deployment=state["deployment"]) from None
        except HTTPFailure as e:
            ms = 1000 * (time.perf_counter() - t_start)
            self.metrics.call(ms, error=e.kind)
            log_event("link", INGRESS, rid or "", ms, f"{e.status} {e.error}", status=e.status, error=e.kind,
                      failed_stage=state["stage"], failed_deployment=e.deployment, mentions=len(mentions))
            return _error(e.status, e.error, e.details, request_id=rid, deployment=e.deployment, headers=e.headers)
        ms = 1000 * (time.perf_counter() - t_start)
        self.metrics.call(ms, candidates=[len(r["candidates"]) for r in out])
        log_event("link", INGRESS, rid, ms, status=200, mentions=len(mentions))
        return JSONResponse(LinkResponse.model_validate({"results": out, "request_id": rid}).model_dump())

    async def _call(self, stage: str, deployment: str, state: dict[str, str], response: Any) -> Any:
        """Await one handle call, turning Serve's refusals and stage failures into HTTP failures."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        state["stage"], state["deployment"] = stage, deployment
        try:
            return await response
        except BackPressureError as e:
            retry = self.cfg.serve.retry_after_s
            raise Overloaded(503, f"overloaded: deployment {deployment} has a full queue; retry after "
                             f"{retry:g}s", [f"{deployment}: {e}"], deployment=deployment,
                             headers={"Retry-After": str(max(0, math.ceil(retry)))}) from None
        except DeploymentUnavailableError as e:
            retry = self.cfg.serve.retry_after_s
            raise Overloaded(503, f"deployment {deployment} is unavailable", [f"{deployment}: {e}"],
                             deployment=deployment, headers={"Retry-After": str(max(0, math.ceil(retry)))}) from None
        except Exception as e:  # noqa: BLE001 -- any replica failure becomes a 500 naming the stage
            from mel.errors import InputError

            cause = getattr(e, "cause", None)
            bad = cause if isinstance(cause, InputError) else e if isinstance(e, InputError) else None
            if bad is not None:  # the request's content cannot be processed (e.g. too long for the LLM)
                raise BadRequest(422, f"stage {stage} cannot process this request: {str(bad)[:300]}",
                                 [f"mentions: {str(bad)[:500]} (shorten the mention context)"],
                                 deployment=deployment) from None
            raise StageFailed(500, f"stage {stage} failed in deployment {deployment}",
                              [f"{type(e).__name__}: {str(e)[:500]}"], deployment=deployment) from None

    async def _run(self, mentions: list[Mention], images: list[Any], k: int, adapter: str | None, rid: str,
                   state: dict[str, str], t_start: float) -> list[dict[str, Any]]:
        from mel.runner import close_results, run_steps

        states = [MentionState(m, image=im, adapter=adapter, k=k) for m, im in zip(mentions, images)]
        for host, classes in self.segments:
            names = [c.name for c in classes]
            if host.name == "local":
                state["stage"], state["deployment"] = names[0], INGRESS
                states = run_steps([self.local_steps[n] for n in names], states)
                continue
            t0 = time.perf_counter()
            handle = self.handles[host.name]
            if adapter is not None and self.multiplexed and "llm" in host.parts:
                handle = handle.options(multiplexed_model_id=adapter)  # to a replica holding it, when one does
            states, model_ms, _ = await self._call(
                names[0], str(host.deployment), state, handle.run.remote(states, names, rid))
            hop = max(0.0, 1000 * (time.perf_counter() - t0) - model_ms)
            for s in states:
                s.timings_ms[f"{names[0]}_hop"] = hop
        state["stage"], state["deployment"] = "finalize", INGRESS
        results = close_results(states, self.cfg.method)
        total = 1000 * (time.perf_counter() - t_start)
        out = []
        for r in results:
            r.timings_ms["total"] = total
            out.append(r.to_dict())
        return out

    @api.get("/healthz", summary="Liveness and the loaded index")
    async def healthz(self) -> dict[str, Any]:
        index_host = next((h.name for h, cs in self.segments if any("index" in c.needs for c in cs)), None)
        info = await self.handles[index_host].info.remote() if index_host is not None else None
        out = {"status": "ok", "method": self.cfg.method, "selector": "llm" in self.handles,
               "steps": [c.name for _, cs in self.segments for c in cs], "index": info, "nil": self.nil,
               "deployments": list(dict.fromkeys(h.deployment for h, _ in self.segments if h.deployment))}
        if self.cfg.selection.adapters and "llm" in self.handles:
            out["adapters"] = {"configured": sorted(self.cfg.selection.adapters), "default": self.default_adapter,
                               "multiplexed": self.multiplexed, "merged": self.cfg.selection.merge_adapters}
            if self.multiplexed:  # what the replica answering this call holds
                out["adapters"]["held"] = (await self.handles["llm"].info.remote()).get("adapters_held", [])
        return out
