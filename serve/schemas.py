"""HTTP request and response bodies of the linking API (strict: unknown fields are refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _valid_text(v: Any) -> Any:
    """Refuse strings that are not Unicode text: JSON may escape lone surrogates (``"\\ud800"``), which no encoder
    or tokenizer accepts."""
    items = [v] if isinstance(v, str) else [x for kv in v.items() for x in kv] if isinstance(v, dict) else []
    for x in items:
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"not valid Unicode text (lone surrogate at position {e.start})") from None
    return v


class MentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Caller's id for the mention; defaults to its position.")
    surface: str = Field(..., description="The mention's surface text (non-empty).")
    context: str = Field("", description="Sentence or passage around the mention.")
    image_path: str | None = Field(None, description="Path of an image under the server's allowed image root.")
    image_base64: str | None = Field(None, description="Image file bytes, base64-encoded.")
    attributes: dict[str, str] = Field(default_factory=dict, description="Attributes extracted from the mention.")

    @field_validator("surface")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("id", "surface", "context", "image_path", "image_base64", "attributes")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _valid_text(v)


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mentions: list[MentionIn] = Field(..., min_length=1, description="Mentions to link (one or many).")
    adapter: str | None = Field(None, description="Name of a configured LoRA adapter for selection.")
    top_k: int | None = Field(None, ge=1, le=100, description="Candidates returned per mention.")

    @field_validator("adapter")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _valid_text(v)


class CandidateOut(BaseModel):
    entity_id: str
    name: str
    score: float
    scores: dict[str, float]


class LinkResultOut(BaseModel):
    mention_id: str
    entity_id: str | None = Field(..., description="Linked entity id, or null for NIL.")
    nil: bool
    score: float
    method: str
    candidates: list[CandidateOut]
    timings_ms: dict[str, float]
    description: str | None = Field(None, description="What the LLM said the mention refers to, when the method "
                                    "describes mentions (augment.mentions.enabled).")


class LinkResponse(BaseModel):
    results: list[LinkResultOut]
    request_id: str = Field(..., description="The request's id (the client's X-Request-ID, or one made by the "
                            "server); also in the X-Request-ID response header and in every log line.")


class ErrorOut(BaseModel):
    error: str = Field(..., description="What was wrong with the request.")
    details: list[str] = Field(default_factory=list, description="One line per problem, naming the field.")
    request_id: str | None = Field(None, description="The request's id (null when the client sent an invalid one).")
    deployment: str | None = Field(None, description="The deployment that refused, failed or timed out (503, "
                                   "500, 504).")
