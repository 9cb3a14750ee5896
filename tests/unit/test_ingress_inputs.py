"""Hostile request inputs get a 4xx naming the field and the limit, never a 500: decompression bombs (refused from
the image header, before decoding), truncated or malformed images, deep JSON nesting."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest

from serve.ingress import BadRequest, decode_image, json_depth_exceeds


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _png(w: int = 16, h: int = 16) -> bytes:
    """A noisy PNG (its pixel data does not compress away, so a cut lands inside it)."""
    import random

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), random.Random(0).randbytes(w * h * 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("w,h", [(30000, 30000), (100000, 100000), (7000, 7000)])
def test_huge_images_are_refused_from_the_header(w: int, h: int) -> None:
    with pytest.raises(BadRequest) as e:
        decode_image(0, None, _b64(png_header_only(w, h)), None, max_pixels=40_000_000)
    assert e.value.status == 413 and "image too large" in e.value.error
    assert f"mentions.0.image_base64: {w}x{h}" in e.value.details[0] or "bomb" in e.value.error


def test_the_pixel_limit_is_configurable() -> None:
    assert decode_image(0, None, _b64(_png(64, 64)), None, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(BadRequest, match="serve.max_image_pixels"):
        decode_image(0, None, _b64(_png(64, 64)), None, max_pixels=64 * 64 - 1)


@pytest.mark.parametrize("raw", [_png()[:40], _png(32, 32)[:1500], b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"GIF89a\x01",
                                 png_header_only(10, 10)])
def test_truncated_or_malformed_images_are_400(raw: bytes) -> None:
    with pytest.raises(BadRequest) as e:
        decode_image(3, None, _b64(raw), None)
    assert e.value.status == 400 and "cannot decode image" in e.value.error
    assert e.value.details[0].startswith("mentions.3.image_base64")


def test_json_depth() -> None:
    assert not json_depth_exceeds({"mentions": [{"surface": "x"}]}, 4)
    assert json_depth_exceeds({"mentions": [{"surface": [[1]]}]}, 4)
    deep: list = []
    cur = deep
    for _ in range(100_000):  # no recursion: a very deep structure is fine to check
        cur.append([])
        cur = cur[0]
    assert json_depth_exceeds(deep, 32)
