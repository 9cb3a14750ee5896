"""Small PNG line charts drawn with Pillow (no plotting library in the dependency set): the NIL calibration curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mel.calibration import Calibration

_COLOURS = ((200, 30, 30), (30, 80, 200), (20, 20, 20), (30, 150, 60), (150, 60, 170))


def line_chart(path: str | Path, series: dict[str, Sequence[tuple[float, float]]], *, title: str, xlabel: str,
               ylabel: str, y_range: tuple[float, float] = (0.0, 100.0), marker_x: float | None = None,
               marker_label: str = "", size: tuple[int, int] = (760, 460)) -> Path:
    """Draw ``series`` (label -> (x, y) points) as lines on one chart and save it as PNG, atomically."""
    from PIL import Image, ImageDraw, ImageFont

    from mel.atomic import atomic_path

    w, h = size
    left, right, top, bottom = 60, 180, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts] + ([marker_x] if marker_x is not None else [])
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    y0, y1 = y_range

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (min(max(y, y0), y1) - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i in range(6):
        yv = y0 + i * (y1 - y0) / 5
        _, yy = px(x0, yv)
        d.line([left, yy, w - right, yy], fill=(225, 225, 225))
        d.text((left - 35, yy - 6), f"{yv:g}", fill=(0, 0, 0), font=font)
    for i in range(6):
        xv = x0 + i * (x1 - x0) / 5
        xx, _ = px(xv, y0)
        d.text((xx - 14, h - bottom + 6), f"{xv:.3g}", fill=(0, 0, 0), font=font)
    d.text((left, 12), title, fill=(0, 0, 0), font=font)
    d.text(((w - right + left) / 2 - 30, h - 22), xlabel, fill=(0, 0, 0), font=font)
    d.text((6, top - 18), ylabel, fill=(0, 0, 0), font=font)
    for n, (label, pts) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        line = [px(x, y) for x, y in pts if y is not None]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        d.line([w - right + 12, top + 14 + 18 * n, w - right + 32, top + 14 + 18 * n], fill=colour, width=3)
        d.text((w - right + 38, top + 8 + 18 * n), label, fill=(0, 0, 0), font=font)
    if marker_x is not None:
        mx, _ = px(marker_x, y0)
        for yy in range(top, h - bottom, 8):
            d.line([mx, yy, mx, yy + 4], fill=(90, 90, 90), width=1)
        if marker_label:
            d.text((w - right + 12, top + 14 + 18 * len(series)), marker_label, fill=(90, 90, 90), font=font)
    out = Path(path)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out


def plot_nil_curve(cal: Calibration, path: str | Path) -> Path:
    """NIL precision, NIL recall, overall accuracy and in-KB accuracy against the threshold, the choice marked."""
    keys = {"NIL precision": "nil_precision", "NIL recall": "nil_recall", "accuracy (NIL a class)": "accuracy",
            "in-KB accuracy": "in_kb_accuracy"}
    series = {label: [(p["threshold"], p[k]) for p in cal.curve if p[k] is not None] for label, k in keys.items()}
    dev = cal.dev
    auc = "-" if cal.auc is None else f"{cal.auc:.3f}"
    title = (f"NIL calibration: {cal.method} on {dev.get('dataset', '?')} {dev.get('split', '?')} "
             f"({dev.get('mentions', '?')} mentions, {dev.get('fraction', '?')} of golds withheld), AUC {auc}")
    label = "chosen: none" if cal.threshold is None else f"chosen {cal.threshold:.4f}"
    return line_chart(path, series, title=title, xlabel="threshold on the final score", ylabel="%",
                      marker_x=cal.threshold, marker_label=label)
