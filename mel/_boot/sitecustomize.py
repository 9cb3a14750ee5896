"""Start-up hook for child interpreters of a process that ran :func:`mel.compat.prepare`.

``mel.compat.install_subprocess_fix`` puts this directory on ``PYTHONPATH``, so Python imports this
module at start-up (``site``). It loads ``mel/compat.py`` by file path (without importing the ``mel``
package, which may not be importable in the child) and installs the lazy torchvision import hook. A
``sitecustomize`` that this one shadows (later on ``sys.path``) is still run.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _install() -> None:
    compat_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat.py")
    spec = importlib.util.spec_from_file_location("_mel_compat_boot", compat_py)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_mel_compat_boot"] = module
    spec.loader.exec_module(module)
    module.install_import_hook()


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path, if any (e.g. a distribution's own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_sitecustomize_chained", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_install()
_chain()
