"""Where parley keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Converted models and other re-creatable data: $PARLEY_CACHE_DIR, else ~/.cache/parley."""
    if env := os.environ.get("PARLEY_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "parley"


def data_home() -> Path:
    """The user's data (MT-bench files, the web UI's database, the leaderboard): $PARLEY_DATA_DIR, else
    $XDG_DATA_HOME/parley, else ~/.local/share/parley."""
    if env := os.environ.get("PARLEY_DATA_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "parley"
