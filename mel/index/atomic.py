"""Write a directory so that it appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a file via a temp file in the same directory and a rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir next to ``final_path`` (``.<name>.tmp-<uuid>``); fill it inside the block.

    On success the temp dir is renamed to ``final_path`` (an existing ``final_path`` is first moved aside,
    then removed). On any exception, KeyboardInterrupt included, the temp dir is removed and
    ``final_path`` is left as it was. The temp dir is a sibling so that the rename stays on one filesystem.
    """
    final = Path(final_path).absolute()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = final.with_name(f".{final.name}{TMP_MARK}{tag}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}{OLD_MARK}{tag}")
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
