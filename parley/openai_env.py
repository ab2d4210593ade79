"""`$OPENAI_API_KEY` goes only where the user meant it to go.

A key found in the environment is sent to OpenAI's own API (api.openai.com) and to the hosts listed in
`$PARLEY_OPENAI_KEY_HOSTS` (comma-separated host names), never to any other `--base-url`: a benchmark
against a colleague's server must not hand it the team's OpenAI key. A key given explicitly (a flag's
file, an endpoint file) goes where it is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

KEY_ENV = "OPENAI_API_KEY"
HOSTS_ENV = "PARLEY_OPENAI_KEY_HOSTS"
OPENAI_HOSTS = frozenset({"api.openai.com"})


def key_hosts(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    named = {h.strip().lower() for h in environ.get(HOSTS_ENV, "").split(",") if h.strip()}
    return OPENAI_HOSTS | named


def environment_key_for(base_url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """$OPENAI_API_KEY if `base_url`'s host may have it, else None."""
    key = environ.get(KEY_ENV, "").strip()
    host = (urlsplit(base_url).hostname or "").lower()
    return key if key and host in key_hosts(environ) else None
