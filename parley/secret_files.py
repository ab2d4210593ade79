"""Secrets read from a file or the environment, never from a command line (which `ps` shows every user)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from parley.errors import ParleyError


def read_secret(path: str | Path | None, env_var: str | None, what: str,
                environ: Mapping[str, str] = os.environ) -> str | None:
    """The secret in the file at `path` (surrounding whitespace stripped), else in $env_var, else None."""
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ParleyError(f"cannot read the {what} from {path}: {exc.strerror or exc}") from None
        if not value:
            raise ParleyError(f"the {what} file {path} is empty")
        return value
    value = environ.get(env_var, "").strip() if env_var else ""
    return value or None
