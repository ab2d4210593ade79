"""Assistants behind the OpenAI API: a request whose `model` is an assistant's id gets the assistant's system
prompt, its defaults (the request's own values win) and its knowledge, and goes to the assistant's base model.

Who asks decides which assistants are visible (parley.serving.key_auth says who): a user's key, its owner, who
sees their own assistants and the shared ones; a static key (--api-keys), which belongs to no user, the shared
ones only; where no key is needed, the one local user (as the web app without --auth).
"""

from __future__ import annotations

import asyncio

from parley.knowledge.grounding import Embedder, Source, ground
from parley.serving.api_errors import APIError
from parley.serving.cluster_client import Cluster
from parley.serving.key_auth import model_not_found
from parley.serving.openai_schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    ModelCard,
)
from parley.store.assistants import Assistants, AssistantView, is_assistant_id
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.knowledge import Knowledge, KnowledgeError
from parley.store.models import User


def _message_dict(m: ChatMessageIn) -> dict:
    data = m.model_dump(exclude_none=True)
    if isinstance(m.content, list):
        data["content"] = "".join(p.text or "" for p in m.content)
    return data


class AssistantRequests:
    def __init__(self, db: Database, cluster: Cluster):
        self.db = db
        self.assistants = Assistants(db)
        self.knowledge = Knowledge(db)
        self.embedder = Embedder.of_cluster(cluster)

    async def cards(self, user: User) -> list[ModelCard]:
        found = await asyncio.to_thread(self.assistants.list, user)
        return [ModelCard(id=a.id, owned_by=a.owner, name=a.name, description=a.description, base_model=a.base_model)
                for a in found]

    async def get(self, assistant_id: str, user: User) -> AssistantView:
        try:
            return await asyncio.to_thread(self.assistants.get, user, assistant_id)
        except NotFound:  # another user's private assistant is "not found", as one that does not exist
            raise model_not_found(assistant_id) from None

    async def apply(self, body: ChatCompletionRequest, user: User) -> tuple[ChatCompletionRequest, list[Source] | None]:
        """The request for the assistant's base model, as `user` asks it, and the sources its last question
        retrieved (None: the assistant has no knowledge)."""
        assistant = await self.get(body.model, user)
        try:
            messages, sources = await ground(self.knowledge, self.embedder, user.id, assistant,
                                             [_message_dict(m) for m in body.messages])
        except KnowledgeError as exc:
            raise APIError(400, str(exc), code="knowledge_error") from None
        update: dict = {"model": assistant.base_model, "messages": [ChatMessageIn.model_validate(m) for m in messages]}
        if body.temperature is None and assistant.temperature is not None:
            update["temperature"] = assistant.temperature
        if body.top_p is None and assistant.top_p is not None:
            update["top_p"] = assistant.top_p
        if body.max_tokens is None and body.max_completion_tokens is None and assistant.max_tokens is not None:
            update["max_tokens"] = assistant.max_tokens
        return body.model_copy(update=update), sources


__all__ = ["AssistantRequests", "is_assistant_id"]
