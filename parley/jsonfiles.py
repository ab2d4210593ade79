"""Reading record files: a JSON list or JSON lines, told apart by the first character."""

from __future__ import annotations

import json
from pathlib import Path

from parley.errors import ParleyError


def read_records(path: Path) -> list:
    """The records of `path`; a clear error naming the file (and line) when it is missing or not JSON."""
    if not path.is_file():
        raise ParleyError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParleyError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(records, list):
            raise ParleyError(f"{path}: expected a list of records")
        return records
    return parse_json_lines(text, path)


def parse_json_lines(text: str, path: Path) -> list:
    """One record per non-empty line; a clear error naming the file and line of one that is not JSON."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ParleyError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return records
