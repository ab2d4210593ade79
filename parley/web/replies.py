"""A reply being written for the web app: streamed from the workers within a reply slot, and stored as it grows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from parley.knowledge.grounding import ground
from parley.serving.cluster_errors import ClusterError
from parley.store.assistants import is_assistant_id
from parley.store.conversations import (
    FAILED,
    INCOMPLETE,
    STOPPED,
    NotFound,
)
from parley.store.knowledge import KnowledgeError
from parley.store.limits import Scope
from parley.store.usage import UsageEvent
from parley.web.live_replies import SoFar
from parley.web.model_client import ReplyParams, ReplyProgress
from parley.web.reply_slots import Busy

if TYPE_CHECKING:
    from parley.web.services import WebServices

log = logging.getLogger(__name__)

# At most this often a streaming reply's text (and reasoning) is written to the store (a crash loses at most this
# much).
SAVE_EVERY_S = 0.5


class StreamedReply:
    """One reply being written: streamed from the model within a reply slot, saved to the store as it grows
    (at most every SAVE_EVERY_S) and once more at its end, whatever the end is (done, an error, Stop, busy)."""

    def __init__(self, services: WebServices, user_id: int, reply_id: int, model: str, params: ReplyParams,
                 base: SoFar = SoFar()):
        self._services, self._user_id, self.reply_id, self.model, self.params = services, user_id, reply_id, model, params
        self.base = base  # the reply it continues (Continue), else nothing
        self.text, self.reasoning = base  # a reasoning model's thinking is stored apart from the answer (`text`)
        self.finish_reason = STOPPED  # until the stream ends by itself, the user stopped it
        self.error: str | None = None
        self.status = 200  # as its usage records it: 200 (also when stopped), 404, 502 failed, 503 busy
        self.progress: ReplyProgress | None = None
        self.sources: list[dict] | None = None  # an assistant's retrieved chunks, numbered as the reply cites them
        self._started = self._saved_at = time.monotonic()
        self.elapsed_s: float | None = None  # from the start to the end of the stream (a stop included)
        self._last_save: asyncio.Task | None = None  # saves run one after another, the final one last

    async def _grounded(self, messages: list[dict]) -> tuple[str, list[dict]]:
        """The model that answers and what it is given: an assistant's base model, with the assistant's system
        prompt and the sources its knowledge gives for the question (stored with the reply at once)."""
        if not is_assistant_id(self.model):
            return self.model, messages
        services = self._services
        user = await asyncio.to_thread(services.accounts.by_id, self._user_id)
        assistant = await asyncio.to_thread(services.assistants.get, user, self.model)
        messages, sources = await ground(services.knowledge, services.embedder, self._user_id, assistant, messages)
        if sources is not None:
            self.sources = [s.model_dump() for s in sources]
            self._save(finish_reason=INCOMPLETE)
        return assistant.base_model, messages

    async def stream(self, messages: list[dict]) -> AsyncIterator[SoFar]:
        """The reply so far (its text and reasoning), each time it grows."""
        try:
            async with self._services.reply_slots.hold():
                model, messages = await self._grounded(messages)
                async for progress in self._services.client.stream(model, messages, self.params,
                                                                   continue_final=bool(self.base.text)):
                    self.progress = progress
                    if progress.error:
                        self.error = progress.error
                        break
                    so_far = SoFar(self.base.text + progress.text, self.base.reasoning + progress.reasoning)
                    if so_far != (self.text, self.reasoning):
                        self.text, self.reasoning = so_far
                        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                            self._save(finish_reason=INCOMPLETE)  # runs beside the stream; saves keep their order
                        yield so_far
        except Busy as exc:
            self.error, self.status = str(exc), 503
        except NotFound:
            self.error, self.status = "this assistant no longer exists (or is no longer shared with you)", 404
        except (KnowledgeError, ClusterError) as exc:  # the embedding model could not be reached, or refused
            self.error = f"the assistant's knowledge could not be searched: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug or a malformed answer: this reply fails, and says so
            log.exception("reply %d from %s failed", self.reply_id, self.model)
            self.error = f"the reply failed: {type(exc).__name__}: {exc}"
        if self.error:
            self.finish_reason = FAILED
            if self.status == 200:
                self.status = 502  # the model (or what an assistant needs) failed
        elif self.progress is not None and self.progress.done:
            self.finish_reason = self.progress.finish_reason or "stop"

    async def save_final(self) -> None:
        """Store the reply as it ended, after any save still running; it completes even if the handler is
        cancelled meanwhile."""
        p = self.progress or ReplyProgress()
        self.elapsed_s = time.monotonic() - self._started
        await asyncio.shield(self._save(
            finish_reason=self.finish_reason, error=self.error, parameters=self.params.model_dump(),
            latency_s=p.latency_s, first_token_s=p.first_token_s, prompt_tokens=p.prompt_tokens,
            completion_tokens=p.completion_tokens))

    def usage_event(self, charge: Scope, endpoint: str = "web") -> UsageEvent:
        """The reply's usage, with the token counts stored with it (for a reply stopped before the model reported
        them: the tokens it streamed); its tokens count against `charge`'s limits. `endpoint`: web (a chat), arena
        (side by side) or arena-anonymous (a battle's side, whose model its user's own usage does not name)."""
        p = self.progress or ReplyProgress()
        elapsed = self.elapsed_s if self.elapsed_s is not None else time.monotonic() - self._started
        return UsageEvent(source="web", endpoint=endpoint, model=self.model, status=self.status,
                          latency_ms=elapsed * 1000, prompt_tokens=p.prompt_tokens or 0,
                          completion_tokens=p.generated_tokens if p.completion_tokens is None else p.completion_tokens,
                          user_id=self._user_id, charge=[charge])

    def _save(self, **details) -> asyncio.Task:
        self._saved_at = time.monotonic()
        if self.sources is not None:
            details["sources"] = self.sources
        if self.reasoning:  # a reply without reasoning leaves it None
            details["reasoning"] = self.reasoning
        previous, text = self._last_save, self.text

        async def save() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await asyncio.to_thread(self._services.conversations.update_reply, self._user_id, self.reply_id,
                                        text, **details)
            except NotFound:  # the conversation was deleted meanwhile: nothing to keep
                log.info("reply %d: its conversation was deleted while it was written", self.reply_id)

        self._last_save = asyncio.ensure_future(save())
        return self._last_save
