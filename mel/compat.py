"""Environment fixes that must run before heavy libraries are imported.

PyPI ships only CUDA builds of torchvision. With the CPU torch wheel, ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist`` because torchvision registers Python
implementations (fake/meta kernels) for ops whose schemas its compiled extension failed to define.
That failure breaks every library that imports torchvision (transformers' model imports, peft,
sentence-transformers, open_clip).

:func:`ensure_torchvision_ops` defines the schemas of the two ops that torchvision's Python code
touches at import time (``torchvision::nms`` and ``torchvision::qnms``) with ``torch.library`` --
only when torch is a CPU build and the ops are missing, and only before torchvision is first
imported. The ops then import; calling ``nms`` itself still needs the real extension.

It is called at the top of every module that wraps a library importing torchvision, and as Ray's
``worker_process_setup_hook`` so it also runs inside Ray workers. Calling it twice is harmless.

Fresh Python subprocesses need the fix too: vLLM inspects model classes in ``python -m
vllm.model_executor.models.registry`` and runs its engine core in a spawned process, both importing
transformers -> torchvision before any of our code runs. :func:`install_subprocess_fix` (part of
:func:`prepare`) puts ``mel/_boot`` on ``PYTHONPATH``; its ``sitecustomize.py`` runs at start-up of every
child interpreter and installs :func:`install_import_hook`, which applies :func:`ensure_torchvision_ops`
lazily, the moment something first imports torchvision (processes that never do pay nothing).
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from types import ModuleType
from typing import Any

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
"""Directory holding the ``sitecustomize.py`` that applies the torchvision fix in child interpreters."""

_done = False
_lib = None  # keep the torch.library.Library alive: the schemas vanish when it is collected


def ensure_torchvision_ops() -> bool:
    """Define missing torchvision op schemas on CPU-only torch. Returns True if it defined them."""
    global _done, _lib
    if _done:
        return False
    _done = True
    if "torchvision" in sys.modules:
        return False
    import torch

    if torch.version.cuda is not None:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False  # a working torchvision extension is present
    except RuntimeError:
        pass
    _lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_ops` just before ``torchvision`` is first imported, then steps aside."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> None:
        if fullname == "torchvision":
            uninstall_import_hook()
            ensure_torchvision_ops()
        return None  # the normal finders locate the module


def install_import_hook() -> None:
    """Apply the torchvision fix lazily at the first ``import torchvision`` (idempotent)."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportHook())


def uninstall_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionImportHook)]


def install_subprocess_fix() -> None:
    """Make child Python processes (vLLM's engine core and model inspection, multiprocessing spawns) apply
    the torchvision fix at start-up, by putting :data:`BOOT_DIR` first on ``PYTHONPATH`` (idempotent)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if BOOT_DIR not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *parts])


def offline_hub() -> None:
    """Make Hugging Face libraries fail fast instead of hanging on downloads where no network exists.

    Respects values the user already set (users with network can set HF_HUB_OFFLINE=0).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare() -> None:
    """Everything that must happen before importing torchvision users: call first in worker code."""
    offline_hub()
    install_subprocess_fix()
    ensure_torchvision_ops()
