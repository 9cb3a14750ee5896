"""Rebuild the demo images in ``data/demo`` from the sample images shipped inside scikit-image.

The JPEGs are committed, so the demo never needs this script; it exists so that anyone can check where
every picture came from (see ``data/demo/README.md`` for sources and licences) and reproduce them::

    python data/demo/make_images.py            # rewrite the images next to this file
    python data/demo/make_images.py --check    # exit 1 if a committed image is missing or differs in size

Only scikit-image sample images whose docstring states public domain or CC0 are used.
Each output is optionally cropped and mirrored, resized so its long side is at most 256 px (Lanczos),
converted to RGB and saved as JPEG, quality 85.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_SIDE = 256
QUALITY = 85


@dataclass(frozen=True)
class ImageSpec:
    out: str
    """Output path relative to ``data/demo``."""
    source: str
    """Name of the ``skimage.data`` function."""
    crop: tuple[float, float, float, float] | None = None
    """(top, left, bottom, right) as fractions of the source height/width; None keeps the whole image."""
    mirror: bool = False
    """Flip left-right (used to make mention images differ from KB images)."""


SPECS: tuple[ImageSpec, ...] = (
    # KB entity images (referenced from kb/entities.jsonl, relative to kb/)
    ImageSpec("kb/images/eileen_collins.jpg", "astronaut"),
    ImageSpec("kb/images/chelsea_cat.jpg", "chelsea"),
    ImageSpec("kb/images/java_coffee.jpg", "coffee"),
    ImageSpec("kb/images/falcon9_dscovr.jpg", "rocket"),
    ImageSpec("kb/images/hubble_xdf.jpg", "hubble_deep_field"),
    ImageSpec("kb/images/mustang_horse.jpg", "horse"),
    ImageSpec("kb/images/cell.jpg", "cell"),
    ImageSpec("kb/images/retina.jpg", "retina"),
    ImageSpec("kb/images/grass.jpg", "grass"),
    # Mention images (referenced from mentions.jsonl, relative to data/demo/): other crops of the same photos
    ImageSpec("mention_images/chelsea_face.jpg", "chelsea", crop=(0.0, 0.25, 0.75, 0.75)),
    ImageSpec("mention_images/coffee_cup.jpg", "coffee", crop=(0.05, 0.2, 0.95, 0.8)),
    ImageSpec("mention_images/rocket_liftoff.jpg", "rocket", crop=(0.0, 0.25, 1.0, 0.75)),
    ImageSpec("mention_images/astronaut_portrait.jpg", "astronaut", crop=(0.0, 0.1, 0.6, 0.7)),
    ImageSpec("mention_images/horse_mirrored.jpg", "horse", mirror=True),
)


def render(spec: ImageSpec):  # noqa: ANN201 - returns a PIL image
    import numpy as np
    import skimage.data
    from PIL import Image

    arr = np.asarray(getattr(skimage.data, spec.source)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if spec.crop is not None:
        h, w = arr.shape[:2]
        top, left, bottom, right = spec.crop
        arr = arr[int(top * h):int(bottom * h), int(left * w):int(right * w)]
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if spec.mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def write(spec: ImageSpec, root: Path) -> Path:
    """Write one image atomically (temp file in the same folder, then rename)."""
    dest = root / spec.out
    dest.parent.mkdir(parents=True, exist_ok=True)
    img = render(spec)
    fd, tmp = tempfile.mkstemp(suffix=".jpg", dir=dest.parent)
    os.close(fd)
    try:
        img.save(tmp, format="JPEG", quality=QUALITY, optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def check(root: Path) -> list[str]:
    """Problems with the committed images: missing files or sizes that differ from what SPECS give."""
    from PIL import Image

    problems = []
    for spec in SPECS:
        path = root / spec.out
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        with Image.open(path) as have:
            want = render(spec).size
            if have.size != want:
                problems.append(f"{path}: size {have.size}, expected {want} from skimage.data.{spec.source}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="root folder (default: data/demo next to this script)")
    ap.add_argument("--check", action="store_true", help="only verify the committed images")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for spec in SPECS:
        path = write(spec, args.out)
        print(f"{path.relative_to(args.out)}  <- skimage.data.{spec.source}()")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
