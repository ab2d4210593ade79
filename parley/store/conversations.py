"""Conversations and their messages, each user seeing only their own.

Every call names the user; a conversation of another user is "not found", exactly as one that
does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import random
import time
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from parley.errors import ParleyError
from parley.store.database import Database
from parley.store.models import Conversation, Message, utcnow

TITLE_CHARS = 60
APPEND_ATTEMPTS = 50


class NotFound(ParleyError):
    def __init__(self, what: str = "conversation"):
        super().__init__(f"no such {what}")


class MessageView(BaseModel):
    id: int
    position: int
    role: str
    content: str
    model: str | None = None
    parameters: dict | None = None
    created_at: datetime
    latency_s: float | None = None
    first_token_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class ConversationSummary(BaseModel):
    id: str
    title: str
    model: str | None
    mode: str
    created_at: datetime
    updated_at: datetime


class ConversationView(ConversationSummary):
    system_prompt: str | None
    messages: list[MessageView]

    def openai_messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": m.role, "content": m.content} for m in self.messages]


def _summary(c: Conversation) -> ConversationSummary:
    return ConversationSummary(id=c.id, title=c.title, model=c.model, mode=c.mode, created_at=c.created_at,
                               updated_at=c.updated_at)


class Conversations:
    def __init__(self, db: Database):
        self.db = db

    def _owned(self, s, user_id: int, conversation_id: str, lock: bool = False) -> Conversation:
        c = s.get(Conversation, conversation_id, with_for_update=lock) if isinstance(conversation_id, str) else None
        if c is None or c.user_id != user_id:
            raise NotFound()
        return c

    def create(self, user_id: int, model: str | None, mode: str = "chat", system_prompt: str | None = None,
               title: str | None = None) -> ConversationSummary:
        with self.db.session() as s:
            c = Conversation(user_id=user_id, model=model, mode=mode, system_prompt=system_prompt or None,
                             title=title or "New chat")
            s.add(c)
            s.flush()
            return _summary(c)

    def add_message(self, user_id: int, conversation_id: str, role: str, content: str, **details) -> MessageView:
        """Append a message; the first user message also titles a conversation that has no title yet.
        Two writers appending to one conversation at once: the loser of the position retries."""
        for attempt in range(APPEND_ATTEMPTS):
            try:
                return self._append(user_id, conversation_id, role, content, details)
            except IntegrityError:  # SQLite has no row locks: another append took this position first
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.02))
        raise AssertionError("unreachable")

    def _append(self, user_id: int, conversation_id: str, role: str, content: str, details: dict) -> MessageView:
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id, lock=True)  # PostgreSQL: appenders take turns
            position = s.scalar(select(func.count()).where(Message.conversation_id == c.id))
            m = Message(conversation_id=c.id, position=position, role=role, content=content, **details)
            s.add(m)
            c.updated_at = utcnow()
            if role == "user" and c.title == "New chat":
                text = " ".join(content.split())
                c.title = text[:TITLE_CHARS] + ("…" if len(text) > TITLE_CHARS else "")
            s.flush()
            return MessageView.model_validate(m, from_attributes=True)

    def drop_last_reply(self, user_id: int, conversation_id: str) -> MessageView | None:
        """Remove the last message if it is the assistant's (to regenerate it)."""
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id)
            last = s.scalar(select(Message).where(Message.conversation_id == c.id).order_by(Message.position.desc()))
            if last is None or last.role != "assistant":
                return None
            view = MessageView.model_validate(last, from_attributes=True)
            s.delete(last)
            return view

    def get(self, user_id: int, conversation_id: str) -> ConversationView:
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id)
            return ConversationView(**_summary(c).model_dump(), system_prompt=c.system_prompt,
                                    messages=[MessageView.model_validate(m, from_attributes=True) for m in c.messages])

    def list(self, user_id: int, search: str | None = None, limit: int = 200,
             modes: tuple[str, ...] = ("chat",)) -> list[ConversationSummary]:
        """The user's conversations, newest first; `search` matches titles and message text."""
        with self.db.session() as s:
            query = select(Conversation).where(Conversation.user_id == user_id, Conversation.mode.in_(modes))
            if search and search.strip():
                pattern = f"%{search.strip()}%"
                in_messages = select(Message.conversation_id).where(Message.content.ilike(pattern))
                query = query.where(or_(Conversation.title.ilike(pattern), Conversation.id.in_(in_messages)))
            rows = s.scalars(query.order_by(Conversation.updated_at.desc()).limit(limit)).all()
            return [_summary(c) for c in rows]

    def rename(self, user_id: int, conversation_id: str, title: str) -> None:
        title = " ".join(title.split())[:200]
        if not title:
            raise ParleyError("a title cannot be empty")
        with self.db.session() as s:
            self._owned(s, user_id, conversation_id).title = title

    def delete(self, user_id: int, conversation_id: str) -> None:
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id)
            s.execute(delete(Message).where(Message.conversation_id == c.id))
            s.delete(c)

    def export_json(self, user_id: int, conversation_id: str) -> str:
        return self.get(user_id, conversation_id).model_dump_json(indent=2)

    def export_markdown(self, user_id: int, conversation_id: str) -> str:
        c = self.get(user_id, conversation_id)
        lines = [f"# {c.title}", "", f"*{c.mode}, {c.model or 'no model'}, {c.created_at:%Y-%m-%d %H:%M} UTC*", ""]
        if c.system_prompt:
            lines += ["**System**", "", c.system_prompt, ""]
        for m in c.messages:
            who = "User" if m.role == "user" else (m.model or "Assistant") if m.role == "assistant" else m.role.title()
            lines += [f"**{who}**", "", m.content, ""]
        return "\n".join(lines)
