"""The chat loop: read a message or command, stream a reply, repeat."""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Callable, Iterator

from anyio.from_thread import BlockingPortal, start_blocking_portal

from parley.chat.backends import ChatBackend, ChatParams
from parley.chat.session import HELP, ChatSession
from parley.chat.styles import ChatStyle
from parley.errors import ParleyError

_DONE = object()


def iterate_in_portal(portal: BlockingPortal, make: Callable[[], AsyncIterator[str]]) -> Iterator[str]:
    """Consume an async iterator from synchronous code. Closing this generator (or Ctrl-C while
    it waits) cancels the async side, which cancels the request in the engine."""
    items: queue.Queue = queue.Queue()

    async def pump() -> None:
        try:
            async for item in make():
                items.put(item)
            items.put(_DONE)
        except Exception as exc:
            items.put(exc)

    future = portal.start_task_soon(pump)
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        if not future.done():
            future.cancel()


class ChatApp:
    def __init__(self, backend: ChatBackend, style: ChatStyle, session: ChatSession, params: ChatParams, portal: BlockingPortal):
        self.backend, self.style, self.session, self.params, self.portal = backend, style, session, params, portal

    def run(self) -> None:
        while True:
            try:
                text = self.style.read_message("user")
            except KeyboardInterrupt:
                self.style.info("")
                return
            if text is None:
                return
            text = text.strip()
            if not text:
                continue
            if not self._command(text):
                return

    def _command(self, text: str) -> bool:
        """Handle one input line; False means leave."""
        word, _, arg = text.partition(" ")
        arg = arg.strip()
        if word in ("!!exit", "exit"):
            return False
        if word in ("!!reset", "clear"):
            self.session.reset()
            self.style.info("(new conversation)")
        elif word == "!!remove":
            self.style.info("(removed the last exchange)" if self.session.remove_last_exchange() else "(nothing to remove)")
        elif word == "!!regen":
            user = self.session.pop_last_exchange()
            if user is None:
                self.style.info("(nothing to regenerate)")
            else:
                self._reply(user)
        elif word in ("!!save", "!!load"):
            if not arg:
                self.style.error(f"usage: {word} FILE")
            else:
                self._save_or_load(word, arg)
        elif word in ("help", "!!help"):
            self.style.info(HELP)
        elif word.startswith("!!"):
            self.style.error(f"unknown command {word}; type help")
        else:
            self._reply(text)
        return True

    def _save_or_load(self, word: str, path: str) -> None:
        try:
            if word == "!!save":
                self.session.save(path, self.backend.model_name)
                self.style.info(f"(saved to {path})")
            else:
                self.session.load(path)
                self.style.info(f"(loaded {len(self.session.turns) // 2} exchanges from {path})")
        except (ParleyError, OSError) as exc:
            self.style.error(str(exc))

    def _reply(self, user: str) -> None:
        messages = self.session.request_messages(user)
        pieces = iterate_in_portal(self.portal, lambda: self.backend.stream(messages, self.params))
        try:
            reply = self.style.show_reply(self.backend.model_name, pieces)
        except KeyboardInterrupt:
            pieces.close()
            self.style.info("\n(stopped; the conversation is unchanged)")
            return
        except ParleyError as exc:
            self.style.error(str(exc))
            return
        self.session.record(user, reply)


def run_chat(backend: ChatBackend, style: ChatStyle, session: ChatSession, params: ChatParams) -> None:
    with start_blocking_portal() as portal:
        try:
            ChatApp(backend, style, session, params, portal).run()
        finally:
            portal.call(backend.aclose)
