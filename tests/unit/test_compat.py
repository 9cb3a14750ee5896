"""mel.compat: the torchvision fix on CPU-only torch, checked in fresh interpreters (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mel.compat import BOOT_DIR

REPO = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    """The environment of a fresh interpreter that has NOT been prepared (no mel/_boot on PYTHONPATH)."""
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOT_DIR]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *parts])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_torchvision_needs_the_fix() -> None:
    r = _run("import torchvision")
    assert r.returncode != 0, ("torchvision now imports without mel.compat.prepare(): the environment has a "
                               "working torchvision build and the workaround may be unnecessary")
    assert "torchvision::nms" in r.stderr


def test_prepare_makes_torchvision_users_import() -> None:
    r = _run("""
        import mel.compat
        mel.compat.prepare()
        mel.compat.prepare()  # idempotent
        import torchvision, open_clip, sentence_transformers, peft, transformers
        from transformers import AutoModelForCausalLM  # model imports pull torchvision in
        from PIL import Image
        transform = open_clip.image_transform(224, is_train=False)
        x = transform(Image.new("RGB", (50, 80), (200, 10, 10)))
        print("SHAPE", tuple(x.shape), x.dtype)
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SHAPE (3, 224, 224) torch.float32" in r.stdout


def test_children_of_a_prepared_process_get_the_fix() -> None:
    # vLLM inspects models in `python -m ...` subprocesses and spawns its engine: they must import torchvision.
    r = _run("""
        import os, subprocess, sys
        import mel.compat
        mel.compat.prepare()
        mel.compat.prepare()
        parts = os.environ["PYTHONPATH"].split(os.pathsep)
        assert parts.count(mel.compat.BOOT_DIR) == 1, parts
        child = subprocess.run([sys.executable, "-c", "import sys, torchvision; print('torch' in sys.modules)"],
                               capture_output=True, text=True)
        print("CHILD", child.returncode, child.stdout.strip(), child.stderr[-2000:])
        light = subprocess.run([sys.executable, "-c", "import sys, json; print('torch' in sys.modules)"],
                               capture_output=True, text=True)
        print("LIGHT", light.returncode, light.stdout.strip())
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CHILD 0 True" in r.stdout, r.stdout
    assert "LIGHT 0 False" in r.stdout, "the start-up hook must not import torch in processes that do not need it"
