"""Conversations and their messages, each user seeing only their own.

Every call names the user; a conversation of another user is "not found", exactly as one that
does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import random
import time
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from parley.errors import ParleyError
from parley.store.database import Database
from parley.store.models import Conversation, Feedback, Message, random_id, utcnow

TITLE_CHARS = 60
APPEND_ATTEMPTS = 50
# A reply's finish_reason while it streams; it stays so when the process died mid-reply.
INCOMPLETE = "incomplete"
STOPPED = "stopped"  # the user pressed Stop
FAILED = "error"  # the model could not answer; `error` says why


class _Raced(Exception):
    """Another writer changed the branch shown while this one wrote (retried)."""


class NotFound(ParleyError):
    def __init__(self, what: str = "conversation"):
        super().__init__(f"no such {what}")


class MessageView(BaseModel):
    id: int
    parent_id: int | None = None
    position: int
    role: str
    content: str  # a reply's answer
    reasoning: str | None = None  # a reasoning model's thinking before its answer; None for other models' replies
    model: str | None = None
    parameters: dict | None = None
    created_at: datetime
    latency_s: float | None = None
    first_token_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    sources: list[dict] | None = None  # what an assistant's reply was given to cite, as [n]
    # The versions at this point of the conversation (this message and its siblings: earlier questions that
    # were edited, earlier replies that were regenerated), oldest first; one when there is no other.
    versions: list[int] = []


class ConversationSummary(BaseModel):
    id: str
    title: str
    model: str | None
    mode: str
    assistant_id: str | None = None  # the assistant it is with (its `model` is then the assistant's id)
    assistant_name: str | None = None
    created_at: datetime
    updated_at: datetime


class ConversationView(ConversationSummary):
    system_prompt: str | None
    messages: list[MessageView]

    def openai_messages(self, before: int | None = None) -> list[dict]:
        """The conversation as a model sees it, up to (not including) the message with id `before`.
        A question whose reply failed with nothing written (and so its empty reply) is left out, as are the
        unanswered user turns that versions before replies were kept could store in a row; the last user
        turn (the one being answered) always stays. So roles alternate, whatever happened to earlier replies.
        A reply is given by its answer alone: its reasoning is not sent back (as OpenAI's and vLLM's servers
        drop earlier turns' reasoning), and a reply that only reasoned counts as one with nothing written."""
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
                               updated_at=c.updated_at, assistant_id=c.assistant_id,
                               assistant_name=c.assistant.name if c.assistant is not None else None)


class Conversations:
    def __init__(self, db: Database):
        self.db = db

    def _owned(self, s, user_id: int, conversation_id: str, lock: bool = False) -> Conversation:
        c = s.get(Conversation, conversation_id, with_for_update=lock) if isinstance(conversation_id, str) else None
        if c is None or c.user_id != user_id:
            raise NotFound()
        return c

    def create(self, user_id: int, model: str | None, mode: str = "chat", system_prompt: str | None = None,
               title: str | None = None, assistant_id: str | None = None) -> ConversationSummary:
        """`assistant_id`: the conversation is with that assistant (the caller checked the user may use it)."""
        with self.db.session() as s:
            c = Conversation(user_id=user_id, model=model, mode=mode, system_prompt=system_prompt or None,
                             title=title or "New chat", assistant_id=assistant_id)
            s.add(c)
            s.flush()
            return _summary(c)

    def create_battle(self, user_id: int, models: list[str], anonymous: bool) -> str:
        """An Arena round: one conversation per model, in this order, sharing the round's id (returned)."""
        battle_id = random_id()
        with self.db.session() as s:
            for side, model in enumerate(models):
                s.add(Conversation(user_id=user_id, model=model, mode="battle" if anonymous else "side-by-side",
                                   battle_id=battle_id, side=side, title="Arena round",
                                   assistant_id=model if model.startswith("asst_") else None))
        return battle_id

    def battle(self, user_id: int, battle_id: str) -> list[ConversationView]:
        """The sides of an Arena round of this user, in order; none when there is no such round."""
        with self.db.session() as s:
            ids = s.scalars(select(Conversation.id).where(Conversation.battle_id == battle_id,
                                                          Conversation.user_id == user_id)
                            .order_by(Conversation.side)).all()
        return [self.get(user_id, cid) for cid in ids]

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
            last = s.get(Message, c.current_message_id) if c.current_message_id else None
            if user_text is not None:
                self._append(s, c, "user", user_text, {})
            elif last is None:
                raise ParleyError("there is no message to reply to")
            elif last.role == "assistant" and not last.content and not last.reasoning:  # nothing written: replaced
                s.execute(delete(Feedback).where(Feedback.message_id == last.id))
                for key, value in {"content": "", "reasoning": None, "finish_reason": INCOMPLETE, "error": None,
                                   "created_at": utcnow(), "latency_s": None, "first_token_s": None,
                                   "prompt_tokens": None, "completion_tokens": None, **details}.items():
                    setattr(last, key, value)
                s.flush()
                return MessageView.model_validate(last, from_attributes=True)
            elif last.role == "assistant":  # a new version beside it: the earlier one stays reachable
                return self._add(s, c, last.parent_id, last.position, "assistant", "",
                                 {**details, "finish_reason": INCOMPLETE})
            return self._append(s, c, "assistant", "", {**details, "finish_reason": INCOMPLETE})

        return self._appending(user_id, conversation_id, begin)

    def continue_reply(self, user_id: int, conversation_id: str, **details) -> MessageView:
        """Continue: the last reply of the branch shown (one with text) is written on, marked incomplete until
        it ends; its text so far stays."""
        def reopen(s, c):
            last = s.get(Message, c.current_message_id) if c.current_message_id else None
            if last is None or last.role != "assistant" or not last.content:
                raise ParleyError("there is no reply to continue")
            # the prompt ends at its text (a chat template strips trailing space), and so does the reply
            for key, value in {"content": last.content.rstrip(), "finish_reason": INCOMPLETE, "error": None,
                               **details}.items():
                setattr(last, key, value)
            c.updated_at = utcnow()
            s.flush()
            return MessageView.model_validate(last, from_attributes=True)

        return self._appending(user_id, conversation_id, reopen)

    def edit(self, user_id: int, conversation_id: str, message_id: int, user_text: str,
             **details) -> tuple[MessageView, MessageView]:
        """Edit-and-resend: the edited question becomes a new version beside `message_id` (a user message of the
        branch shown), with an empty reply to it, marked incomplete; the branch it replaces stays reachable.
        Returns the question and the reply."""
        def branch(s, c):
            old = s.get(Message, message_id)
            if old is None or old.conversation_id != c.id or old.role != "user":
                raise NotFound("question")
            asked = self._add(s, c, old.parent_id, old.position, "user", user_text, {})
            return asked, self._append(s, c, "assistant", "", {**details, "finish_reason": INCOMPLETE})

        return self._appending(user_id, conversation_id, branch)

    def switch(self, user_id: int, conversation_id: str, message_id: int) -> ConversationView:
        """Show the branch through `message_id`: below it, the newest version at each point."""
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id, lock=True)
            m = s.get(Message, message_id)
            if m is None or m.conversation_id != c.id:
                raise NotFound("message")
            children: dict[int | None, list[Message]] = {}
            by_id = {other.id: other for other in c.messages}
            for other in c.messages:
                children.setdefault(other.parent_id, []).append(other)
            if m.parent_id is not None:
                by_id[m.parent_id].shown_child_id = m.id
            while children.get(m.id):  # down the versions last shown (the newest where none was)
                below = {x.id: x for x in children[m.id]}
                m = below.get(m.shown_child_id) or max(below.values(), key=lambda x: x.id)
            c.current_message_id = m.id
        return self.get(user_id, conversation_id)

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
            except (IntegrityError, _Raced):  # SQLite has no row locks: another writer came first
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.02))
        raise AssertionError("unreachable")

    @classmethod
    def _append(cls, s, c: Conversation, role: str, content: str, details: dict) -> MessageView:
        """A message after the last one of the branch shown."""
        last = s.get(Message, c.current_message_id) if c.current_message_id else None
        return cls._add(s, c, last.id if last else None, last.position + 1 if last else 0, role, content, details)

    @staticmethod
    def _add(s, c: Conversation, parent_id: int | None, position: int, role: str, content: str,
             details: dict) -> MessageView:
        """A message under `parent_id`, shown from now on. Its branch is the next free one at its depth: two
        writers taking the same one at once conflict (IntegrityError), and the loser retries."""
        branch = s.scalar(select(func.count()).where(Message.conversation_id == c.id, Message.position == position))
        m = Message(conversation_id=c.id, parent_id=parent_id, position=position, branch=branch, role=role,
                    content=content, **details)
        s.add(m)
        s.flush()
        # The branch shown moves to it only if no other writer moved it meanwhile (SQLite has no row locks and
        # reads outside the write transaction): else this attempt is retried from the branch as it is now.
        moved = s.execute(update(Conversation).where(
            Conversation.id == c.id, Conversation.current_message_id.is_not_distinct_from(c.current_message_id),
        ).values(current_message_id=m.id))
        if moved.rowcount != 1:
            raise _Raced()
        set_committed_value(c, "current_message_id", m.id)
        if parent_id is not None:
            s.execute(update(Message).where(Message.id == parent_id).values(shown_child_id=m.id))
        c.updated_at = utcnow()
        if role == "user" and c.title == "New chat":
            text = " ".join(content.split())
            c.title = text[:TITLE_CHARS] + ("…" if len(text) > TITLE_CHARS else "")
        s.flush()
        return MessageView.model_validate(m, from_attributes=True)

    def get(self, user_id: int, conversation_id: str) -> ConversationView:
        """The conversation along the branch shown, each message with its versions."""
        with self.db.session() as s:
            c = self._owned(s, user_id, conversation_id)
            by_id = {m.id: m for m in c.messages}
            siblings: dict[int | None, list[int]] = {}
            for m in sorted(c.messages, key=lambda m: m.id):
                siblings.setdefault(m.parent_id, []).append(m.id)
            path: list[Message] = []
            m = by_id.get(c.current_message_id) if c.current_message_id else None
            while m is not None:
                path.append(m)
                m = by_id.get(m.parent_id) if m.parent_id else None
            shown = []
            for m in reversed(path):
                view = MessageView.model_validate(m, from_attributes=True)
                view.versions = siblings[m.parent_id]
                shown.append(view)
            return ConversationView(**_summary(c).model_dump(), system_prompt=c.system_prompt, messages=shown)

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
            lines += [f"**{who}**", ""]
            if m.reasoning:  # folded, as the app shows it
                lines += ["<details><summary>Reasoning</summary>", "", m.reasoning, "", "</details>", ""]
            lines += [m.content, ""]
        return "\n".join(lines)
