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
from parley.store.models import Conversation, Feedback, Message, utcnow

TITLE_CHARS = 60
APPEND_ATTEMPTS = 50
# A reply's finish_reason while it streams; it stays so when the process died mid-reply.
INCOMPLETE = "incomplete"
STOPPED = "stopped"  # the user pressed Stop
FAILED = "error"  # the model could not answer; `error` says why


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
    error: str | None = None


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

    def openai_messages(self, before: int | None = None) -> list[dict]:
        """The conversation as a model sees it, up to (not including) the message with id `before`.
        A question whose reply failed with nothing written (and so its empty reply) is left out, as are the
        unanswered user turns that versions before replies were kept could store in a row; the last user
        turn (the one being answered) always stays. So roles alternate, whatever happened to earlier replies."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        shown: list[MessageView] = []
        for m in self.messages:
            if m.id == before:
                break
            shown.append(m)
        turns: list[dict] = []
        for i, m in enumerate(shown):
            following = shown[i + 1] if i + 1 < len(shown) else None
            if m.role == "assistant" and not m.content:
                continue
            if m.role == "user" and following is not None and not (following.role == "assistant" and following.content):
                continue
            turns.append({"role": m.role, "content": m.content})
        return system + turns


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
        def append(s, c):
            return self._append(s, c, role, content, details)

        return self._appending(user_id, conversation_id, append)

    def begin_reply(self, user_id: int, conversation_id: str, user_text: str | None, **details) -> MessageView:
        """Store the user's message (unless `user_text` is None: a regenerate) and the assistant's reply to it,
        empty and marked incomplete, in one transaction: whatever then happens to the reply (an error, Stop,
        this process killed), the stored roles alternate and the conversation can be continued. A regenerate
        resets the last reply in place (or adds one after a trailing user message). Fill the reply in with
        `update_reply` as it streams."""
        def begin(s, c):
            last = s.scalar(select(Message).where(Message.conversation_id == c.id).order_by(Message.position.desc()))
            if user_text is not None:
                self._append(s, c, "user", user_text, {})
            elif last is None:
                raise ParleyError("there is no message to reply to")
            elif last.role == "assistant":
                s.execute(delete(Feedback).where(Feedback.message_id == last.id))  # it rated the text replaced now
                for key, value in {"content": "", "finish_reason": INCOMPLETE, "error": None, "created_at": utcnow(),
                                   "latency_s": None, "first_token_s": None, "prompt_tokens": None,
                                   "completion_tokens": None, **details}.items():
                    setattr(last, key, value)
                s.flush()
                return MessageView.model_validate(last, from_attributes=True)
            return self._append(s, c, "assistant", "", {**details, "finish_reason": INCOMPLETE})

        return self._appending(user_id, conversation_id, begin)

    def update_reply(self, user_id: int, message_id: int, content: str, **details) -> None:
        """Store what a reply holds so far (or at its end: with its finish_reason, tokens and timings)."""
        with self.db.session() as s:
            m = s.get(Message, message_id)
            if m is None or m.role != "assistant":
                raise NotFound("reply")
            self._owned(s, user_id, m.conversation_id)
            m.content = content
            for key, value in details.items():
                setattr(m, key, value)
            m.conversation.updated_at = utcnow()

    def _appending(self, user_id: int, conversation_id: str, write):
        for attempt in range(APPEND_ATTEMPTS):
            try:
                with self.db.session() as s:
                    c = self._owned(s, user_id, conversation_id, lock=True)  # PostgreSQL: appenders take turns
                    return write(s, c)
            except IntegrityError:  # SQLite has no row locks: another append took this position first
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.02))
        raise AssertionError("unreachable")

    @staticmethod
    def _append(s, c: Conversation, role: str, content: str, details: dict) -> MessageView:
        position = s.scalar(select(func.count()).where(Message.conversation_id == c.id))
        m = Message(conversation_id=c.id, position=position, role=role, content=content, **details)
        s.add(m)
        c.updated_at = utcnow()
        if role == "user" and c.title == "New chat":
            text = " ".join(content.split())
            c.title = text[:TITLE_CHARS] + ("…" if len(text) > TITLE_CHARS else "")
        s.flush()
        return MessageView.model_validate(m, from_attributes=True)

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

    def change(self, user_id: int, conversation_id: str, title: str | None = None, system_prompt: str | None = None,
               model: str | None = None) -> None:
        """Change what is given (None: kept); an empty system prompt removes it."""
        if title is not None:
            self.rename(user_id, conversation_id, title)
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id)
            if system_prompt is not None:
                c.system_prompt = system_prompt or None
            if model is not None:
                c.model = model or None

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
