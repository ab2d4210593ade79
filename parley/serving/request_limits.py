"""Limits on one HTTP request, for every parley server: how big its body may be, and how long its
client may leave a streamed reply unread before it is disconnected (and its batch slot freed).

Both are ASGI middleware, so they act before any route parses a byte, and their refusals are
OpenAI-shaped errors like every other.
"""

from __future__ import annotations

import asyncio
import json
import logging

from parley.serving.api_errors import APIError

log = logging.getLogger("parley.serving")

MiB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * MiB  # the API; a 4 MiB message is far beyond any context window
DEFAULT_SEND_TIMEOUT_S = 60.0
# A body over the limit is read to its end (and dropped) up to this much, so that a client still sending it
# gets the 413 rather than a connection reset; past this the connection is just closed after the 413.
DRAIN_LIMIT_BYTES = 64 * MiB


def _error(status: int, message: str, code: str) -> tuple[dict, bytes]:
    body = json.dumps(APIError(status, message, code=code).body()).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, body


class BodySizeLimit:
    """A body over `max_bytes` is a 413, whether it says its length up front or streams it in chunks."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, receive, send, size: str, read: int) -> None:
        while read <= DRAIN_LIMIT_BYTES:  # drop the rest of the body
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
            read += len(message.get("body", b""))
        start, body = _error(413, f"the request body is {size} bytes; this server takes at most {self.max_bytes}",
                             "request_too_large")
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                read = 0 if declared.isdigit() and int(declared) <= DRAIN_LIMIT_BYTES else DRAIN_LIMIT_BYTES + 1
                return await self._refuse(receive, send, declared.decode("latin-1")[:20], read)
            return await self.app(scope, receive, send)  # the server delivers no more than declared
        # Chunked: read it here, up to the limit, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                if not message.get("more_body"):
                    size = DRAIN_LIMIT_BYTES + 1  # nothing left to drop
                return await self._refuse(receive, send, f"more than {self.max_bytes}", size)
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


class SendTimeout:
    """A client that reads nothing of its response for `timeout_s` is disconnected.

    Sending waits while the client's TCP window is full; a stream whose client has stopped reading
    would otherwise hold its generation (and batch slot) until the reply ends on its own."""

    def __init__(self, app, timeout_s: float = DEFAULT_SEND_TIMEOUT_S):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def bounded_send(message):
            # wait_for runs the send in a task of its own (16 µs a send, against 0.1 µs bare). asyncio.timeout would
            # cost 5.8 µs, but its cancellation does not get through the stream's task group (tried: the stalled
            # reply's generation went on), so the task it is.
            try:
                await asyncio.wait_for(send(message), self.timeout_s)
            except asyncio.TimeoutError:
                raise _ClientStalled() from None

        try:
            await self.app(scope, receive, bounded_send)
        except _ClientStalled:
            # Returning with the response unfinished makes the server close the connection; the reply's
            # generator is closed with it, which stops the generation.
            log.warning("%s: the client read nothing for %.0f s; disconnected it and stopped its reply",
                        scope.get("path"), self.timeout_s)


class _ClientStalled(Exception):
    pass
