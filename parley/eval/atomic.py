"""Writing a file whole or not at all, so that a reader never sees half of it and a killed writer leaves the old one."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file in `path`'s directory, flush it to disk, then rename it over `path`
    (atomic on POSIX and Windows): readers see the old content or the new, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique: writers may race
    try:
        with tmp.open("x", encoding="utf-8") as f:  # created with the usual permissions (umask), unlike mkstemp
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
