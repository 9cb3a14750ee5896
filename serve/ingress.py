"""FastAPI ingress: validates requests, fans mentions out to the Retriever and Selector deployments,
applies the NIL decision, and answers JSON. Bad requests get a 4xx JSON error naming the problem."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from mel.config import Config
from mel.stages.nil import finalize
from mel.types import Mention
from serve.schemas import ErrorOut, LinkRequest, LinkResponse

api = FastAPI(title="mel: multimodal entity linking", version="0.1.0",
              description="Link mentions (text, optional image) to KB entities or NIL.")


class BadRequest(Exception):
    def __init__(self, status: int, error: str, details: list[str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []


def _error(status: int, error: str, details: list[str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=ErrorOut(error=error, details=details or []).model_dump())


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
_ERRORS = {s: {"model": ErrorOut} for s in (400, 413, 422)}


@api.exception_handler(RequestValidationError)
async def _validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid request body", _describe(exc.errors()))


def decode_image(m_index: int, path: str | None, b64: str | None, image_root: str | None) -> Any:
    """Return an RGB PIL image, or None. Only files under ``image_root`` or base64 bytes are accepted."""
    from PIL import Image, UnidentifiedImageError

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
        try:
            with Image.open(real) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise BadRequest(400, "cannot decode image", [f"{field}.image_path: {e}"]) from None
    if b64 is not None:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, "image_base64 is not valid base64", [f"{field}.image_base64"]) from None
        try:
            with Image.open(io.BytesIO(raw)) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise BadRequest(400, "cannot decode image", [f"{field}.image_base64: {e}"]) from None
    return None


class Ingress:
    """The HTTP entry point of the linking graph."""

    def __init__(self, cfg: dict[str, Any], retriever: Any, selector: Any | None) -> None:
        self.cfg = Config.model_validate(cfg)
        self.retriever = retriever
        self.selector = selector

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
        try:
            req = LinkRequest.model_validate(data)
        except ValidationError as e:
            raise BadRequest(422, "invalid request body", _describe(e.errors())) from None
        if len(req.mentions) > self.cfg.serve.max_mentions_per_request:
            raise BadRequest(413, f"too many mentions ({len(req.mentions)} > "
                             f"{self.cfg.serve.max_mentions_per_request})")
        if req.adapter is not None and req.adapter not in self.cfg.selection.adapters:
            raise BadRequest(400, f"unknown adapter {req.adapter!r}",
                             [f"adapter: known: {sorted(self.cfg.selection.adapters)}"])
        return req

    @api.post("/v1/link", response_model=LinkResponse, responses=_ERRORS, openapi_extra=_LINK_DOC,
              summary="Link one or many mentions")
    async def link(self, request: Request) -> JSONResponse:
        t_start = time.perf_counter()
        try:
            req = await self._parse(request)
            images = [decode_image(i, m.image_path, m.image_base64, self.cfg.serve.image_root)
                      for i, m in enumerate(req.mentions)]
        except BadRequest as e:
            return _error(e.status, e.error, e.details)
        mentions = [Mention(id=m.id if m.id is not None else str(i), surface=m.surface, context=m.context,
                            attributes=dict(m.attributes)) for i, m in enumerate(req.mentions)]
        k = req.top_k or self.cfg.retrieval.top_k
        adapter = req.adapter or self.cfg.selection.lora_adapter
        results = await asyncio.gather(*(self._one(m, im, k, adapter) for m, im in zip(mentions, images)))
        total = 1000 * (time.perf_counter() - t_start)
        out = []
        for r in results:
            r.timings_ms["total"] = total
            r.candidates = r.candidates[:k]
            out.append(r.to_dict())
        return JSONResponse(LinkResponse.model_validate({"results": out}).model_dump())

    async def _one(self, mention: Mention, image: Any, k: int, adapter: str | None) -> Any:
        t0 = time.perf_counter()
        cands, texts, t_retr = await self.retriever.retrieve.remote(mention, image, k)
        t1 = time.perf_counter()
        timings = {"retrieve": t_retr, "retrieve_hop": 1000 * (t1 - t0) - t_retr}
        if self.selector is not None:
            cands, t_sel = await self.selector.select.remote(mention, cands, texts, adapter)
            timings["select"] = t_sel
            timings["select_hop"] = 1000 * (time.perf_counter() - t1) - t_sel
        return finalize(mention, cands, threshold=self.cfg.nil.threshold, method=self.cfg.method,
                        timings_ms=timings)

    @api.get("/healthz", summary="Liveness and the loaded index")
    async def healthz(self) -> dict[str, Any]:
        info = await self.retriever.info.remote()
        return {"status": "ok", "method": self.cfg.method, "selector": self.selector is not None, "index": info}
