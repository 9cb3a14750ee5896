"""The Serve linking graph over HTTP on 127.0.0.1: answers, batching of many mentions, bad requests."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.unit.test_ingress_inputs import png_header_only

pytestmark = pytest.mark.integration

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"


@pytest.fixture(scope="module")
def server(ray_local, demo_index: Path, tmp_path_factory: pytest.TempPathFactory):
    from mel.config import load_config
    from mel.entrypoints import commands

    img_root = tmp_path_factory.mktemp("imgroot")
    cfg = load_config(None, {
        "method": "llm-select",
        "serve.port": free_port(),
        "serve.max_body_bytes": 64 * 1024,
        "serve.image_root": str(img_root),
        "models.llm.kv_cache_gb": 0.5,
        "models.llm.max_model_len": 1024,
        "retrieval.top_k": 5,
    })
    url = commands.start_serve(cfg, str(demo_index))
    yield url, img_root
    from ray import serve

    serve.delete(cfg.serve.app_name)


def _kb() -> dict[str, dict]:
    return {e["id"]: e for e in map(json.loads, DEMO_KB.read_text().splitlines()) if e}


def _post(url: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(f"{url}/v1/link", json=body, timeout=120, **kw)
    return httpx.post(f"{url}/v1/link", content=body, timeout=120,
                      headers={"content-type": "application/json"}, **kw)


def test_healthz_and_openapi(server) -> None:
    url, _ = server
    h = httpx.get(f"{url}/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["selector"] is True
    assert h["index"]["entities"] == len(_kb())
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert "/v1/link" in spec["paths"]
    assert "LinkRequest" in spec["components"]["schemas"]


def test_links_by_name_and_context(server) -> None:
    url, _ = server
    kb = _kb()
    # Pick an entity and describe it with its own description: retrieval + selection must find it.
    eid, e = next(iter(kb.items()))
    r = _post(url, {"mentions": [{"id": "m1", "surface": e["name"], "context": e.get("description", "")}]})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["mention_id"] == "m1"
    assert res["candidates"], res
    assert eid in [c["entity_id"] for c in res["candidates"]]
    assert {"retrieve", "select", "total"} <= set(res["timings_ms"])
    assert "llm" in res["candidates"][0]["scores"]


def test_many_mentions_in_one_request_keep_order(server) -> None:
    url, _ = server
    kb = list(_kb().values())[:6]
    body = {"mentions": [{"id": f"x{i}", "surface": e["name"], "context": e.get("description", "")}
                         for i, e in enumerate(kb)]}
    r = _post(url, body)
    assert r.status_code == 200, r.text
    assert [x["mention_id"] for x in r.json()["results"]] == [f"x{i}" for i in range(len(kb))]


@pytest.mark.parametrize("body,status,needle", [
    (b'{"mentions": [', 400, "malformed JSON"),
    ({"mentions": []}, 422, "mentions"),
    ({}, 422, "mentions"),
    ({"mentions": [{"context": "no surface"}]}, 422, "mentions.0.surface"),
    ({"mentions": [{"surface": "   "}]}, 422, "mentions.0.surface"),
    ({"mentions": [{"surface": "x", "colour": "red"}]}, 422, "mentions.0.colour"),
    ({"mentions": [{"surface": "x"}], "adapter": "nope"}, 404, "unknown adapter"),
    ({"mentions": [{"surface": "x", "image_base64": "!!!notbase64"}]}, 400, "base64"),
    ({"mentions": [{"surface": "x", "image_base64": base64.b64encode(b"not an image").decode()}]}, 400,
     "cannot decode image"),
    ({"mentions": [{"surface": "x", "image_path": "../../etc/passwd"}]}, 400, "outside the allowed image root"),
    ({"mentions": [{"surface": "x", "image_path": "missing.png"}]}, 400, "not found"),
    # hostile input: deep nesting (past the C parser's recursion limit, and past serve.max_json_depth), a number
    # Python refuses to convert, a 30000x30000 PNG header in a few bytes (decompression bomb), a truncated image
    (b"[" * 30000 + b"]" * 30000, 400, "nested too deeply"),
    (b'{"mentions": [{"surface": "x", "context": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}]}", 400,
     "nested too deeply"),
    (b'{"mentions": [{"surface": "x"}], "top_k": ' + b"9" * 5000 + b"}", 400, "malformed JSON"),
    ({"mentions": [{"surface": "x", "image_base64": base64.b64encode(png_header_only(30000, 30000)).decode()}]},
     413, "image too large"),
    ({"mentions": [{"surface": "x", "image_base64": base64.b64encode(png_header_only(10, 10)).decode()}]}, 400,
     "cannot decode image"),
])
def test_bad_requests_get_4xx_naming_the_problem(server, body, status: int, needle: str) -> None:
    url, _ = server
    r = _post(url, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert "error" in err
    assert needle in err["error"] + " " + " ".join(err["details"]), err


def test_oversized_body_is_refused_and_server_keeps_serving(server) -> None:
    url, _ = server
    big = {"mentions": [{"surface": "x", "context": "y" * 100_000}]}
    r = _post(url, big)
    assert r.status_code == 413, r.text
    assert "too large" in r.json()["error"]
    ok = _post(url, {"mentions": [{"surface": "Paris"}]})
    assert ok.status_code == 200


def test_image_inputs_accepted(server) -> None:
    from PIL import Image

    url, root = server
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "red.png")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 10, 200)).save(buf, format="PNG")
    r = _post(url, {"mentions": [
        {"surface": "Jaguar", "image_path": "red.png"},
        {"surface": "Jaguar", "image_base64": base64.b64encode(buf.getvalue()).decode()},
    ]})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2


def test_serve_and_replicas_listen_on_loopback_only(server) -> None:
    from tests.integration.test_ray_loopback import _process_tree, bound_sockets, non_loopback

    url, _ = server
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    sockets = bound_sockets(_process_tree())
    assert any(p == port for _, p, _, _ in sockets), f"HTTP proxy port {port} not found among {sockets}"
    assert non_loopback(sockets) == [], f"sockets not on loopback: {non_loopback(sockets)}"


def test_refuses_index_built_with_another_encoder(demo_index: Path, tmp_path: Path) -> None:
    import shutil

    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.errors import ArtifactMismatch
    from mel.index.manifest import read_manifest, write_manifest

    copy = tmp_path / "index"
    shutil.copytree(demo_index, copy)
    m = read_manifest(copy)
    m.encoder_id = "some-other-encoder@1"
    write_manifest(copy, m)
    with pytest.raises(ArtifactMismatch, match="encoder_id"):
        commands.preflight_index(load_config(None), str(copy))


def _fuzz_value(rng, depth: int = 0):  # noqa: ANN001, ANN202
    kinds = ["str", "int", "float", "bool", "null", "bigint", "unicode", "surrogate", "long", "nan"]
    if depth < 3:
        kinds += ["list", "dict"]
    k = rng.choice(kinds)
    if k == "str":
        return "".join(rng.choice("aZ09 .,-_/\\\"'{}[]") for _ in range(rng.randint(0, 20)))
    if k == "int":
        return rng.choice([0, -1, 1, 2, 5, 100, 101, 2**31, -(2**63)])
    if k == "float":
        return rng.choice([0.5, -3.25, 1e308, -1e-308, 1e30])
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "bigint":
        return int("9" * rng.randint(20, 400))
    if k == "unicode":
        return "".join(chr(rng.choice([0x00, 0x7F, 0xE9, 0x4E2D, 0x1F600, 0x202E, 0xFEFF])) for _ in range(8))
    if k == "surrogate":
        return "\ud800x\udfff"
    if k == "long":
        return "y" * rng.randint(1000, 20000)
    if k == "nan":
        return float("nan")
    if k == "list":
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["surface", "context", "id", "x", "image_base64", "mentions", ""]): _fuzz_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _fuzz_body(rng) -> bytes:  # noqa: ANN001
    """A request body: a valid link request with fields replaced, added or dropped, or any JSON, or broken bytes."""
    mode = rng.random()
    if mode < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    if mode < 0.25:
        body = _fuzz_value(rng)
    else:
        mention = {"surface": "Jaguar", "context": "a big cat", "id": "m1"}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(["surface", "context", "id", "image_base64", "image_path", "attributes", "gold", "zz"])
            if rng.random() < 0.2:
                mention.pop(key, None)
            else:
                mention[key] = _fuzz_value(rng)
        body = {"mentions": [mention] * rng.randint(1, 3)}
        for key in ("top_k", "adapter", "extra"):
            if rng.random() < 0.3:
                body[key] = _fuzz_value(rng)
    return json.dumps(body, allow_nan=True).encode()


def test_fuzzed_requests_never_get_a_5xx(server) -> None:
    """A seeded, bounded fuzz over the request schema (wrong types, unknown and missing fields, huge numbers and
    strings, NaN, lone surrogates, control characters, nesting, garbage bytes): every answer is a 2xx or a 4xx
    JSON error, and the server keeps serving."""
    import random

    url, _ = server
    rng = random.Random(20261207)
    seen: dict[int, int] = {}
    with httpx.Client(timeout=120) as client:
        for i in range(250):
            body = _fuzz_body(rng)
            r = client.post(f"{url}/v1/link", content=body, headers={"content-type": "application/json"})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, f"request {i} got {r.status_code}: {body[:300]!r} -> {r.text[:300]}"
            data = r.json()
            assert ("results" in data) if r.status_code == 200 else ("error" in data), data
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if 400 <= k < 500) > 100, seen
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
