"""The cluster secret: how the controller, workers, API and web UI know one another.

With a secret set, every request between them carries `Authorization: Bearer SECRET`, and the
controller and the workers answer 401 to any request without it — except `/health`, which load
balancers and supervisors poll. Without a secret the FastChat protocol stays open, as FastChat's
own servers are (so FastChat workers and clients still interoperate), and a server that listens
beyond loopback says so in its log.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from collections.abc import Iterable

ENV_VAR = "PARLEY_CLUSTER_SECRET"
MIN_LENGTH = 16
OPEN_PATHS = frozenset({"/health"})


class ClusterSecretError(ValueError):
    pass


def check_secret(secret: str, source: str) -> str:
    """The secret, stripped, if it is usable as a bearer token: printable ASCII, no spaces, long enough."""
    secret = secret.strip()
    if len(secret) < MIN_LENGTH:
        raise ClusterSecretError(f"the cluster secret from {source} is shorter than {MIN_LENGTH} characters "
                                 "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if not all(33 <= ord(c) <= 126 for c in secret):
        raise ClusterSecretError(f"the cluster secret from {source} must be printable ASCII without spaces")
    return secret


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def auth_headers(secret: str | None) -> dict[str, str]:
    """Headers for a request to another server of the cluster."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def warn_if_open(log: logging.Logger, what: str, host: str, secret: str | None) -> None:
    if secret is None and not is_loopback(host):
        log.warning("the %s listens on %s without a cluster secret: anyone who reaches it can %s. Set "
                    "--cluster-secret-file or $%s on every server of the cluster (see the README)", what, host,
                    "register a worker and receive every user's prompts" if what == "controller"
                    else "generate with it and see its prompts", ENV_VAR)


class ClusterAuthMiddleware:
    """ASGI middleware: a request without the cluster secret gets a 401 (OpenAI's error shape)."""

    def __init__(self, app, secret: str, open_paths: Iterable[str] = OPEN_PATHS):
        self.app = app
        self._expected = f"Bearer {secret}".encode()
        self._open = frozenset(open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self._open:
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if secrets.compare_digest(given, self._expected):  # bytes: any header value compares, none raises
            return await self.app(scope, receive, send)
        message = ("this server belongs to a parley cluster with a secret: send it as 'Authorization: Bearer SECRET'"
                   if not given else "wrong cluster secret")
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "invalid_cluster_secret"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
