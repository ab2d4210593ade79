"""Arena votes and per-reply feedback: recorded, counted, turned into battles for `parley eval ratings`,
and exported as FastChat-format conversation logs for FastChat's own analysis scripts."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import func, select

from parley.arena_record import VOTE_TYPES, Battle
from parley.errors import ParleyError
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.models import Conversation, Feedback, Message, User, Vote

VOTE_KINDS = tuple(VOTE_TYPES.values())  # model_a, model_b, tie, tie (bothbad)
FEEDBACK_KINDS = ("upvote", "downvote", "flag")
LOG_TYPE = {kind: log_type for log_type, kind in VOTE_TYPES.items()}


class VoteStats(BaseModel):
    votes: int
    by_kind: dict[str, int]
    by_model: dict[str, int]  # battles each model took part in
    feedback: dict[str, int]
    users_voting: int


class Votes:
    def __init__(self, db: Database):
        self.db = db

    def record(self, user_id: int, kind: str, model_a: str, model_b: str, anony: bool,
               conversation_a_id: str | None = None, conversation_b_id: str | None = None) -> int:
        if kind not in VOTE_KINDS:
            raise ParleyError(f"a vote is one of {', '.join(VOTE_KINDS)}, not {kind!r}")
        with self.db.session() as s:
            for cid in (conversation_a_id, conversation_b_id):
                if cid is not None:
                    c = s.get(Conversation, cid)
                    if c is None or c.user_id != user_id:
                        raise NotFound()
            vote = Vote(user_id=user_id, kind=kind, model_a=model_a, model_b=model_b, anony=anony,
                        conversation_a_id=conversation_a_id, conversation_b_id=conversation_b_id)
            s.add(vote)
            s.flush()
            return vote.id

    def kind_for(self, user_id: int, conversation_a_id: str) -> str | None:
        """The user's vote on the round whose first side is this conversation, if any."""
        with self.db.session() as s:
            return s.scalar(select(Vote.kind).where(Vote.user_id == user_id,
                                                    Vote.conversation_a_id == conversation_a_id).limit(1))

    def feedback(self, user_id: int, message_id: int, kind: str, comment: str | None = None) -> int:
        if kind not in FEEDBACK_KINDS:
            raise ParleyError(f"feedback is one of {', '.join(FEEDBACK_KINDS)}, not {kind!r}")
        with self.db.session() as s:
            m = s.get(Message, message_id)
            if m is None or s.get(Conversation, m.conversation_id).user_id != user_id:
                raise NotFound("message")
            row = Feedback(user_id=user_id, message_id=message_id, kind=kind, comment=comment)
            s.add(row)
            s.flush()
            return row.id

    def stats(self) -> VoteStats:
        with self.db.session() as s:
            by_kind = dict(s.execute(select(Vote.kind, func.count()).group_by(Vote.kind)).all())
            models: Counter = Counter()
            for column in (Vote.model_a, Vote.model_b):
                for name, n in s.execute(select(column, func.count()).group_by(column)).all():
                    models[name] += n
            feedback = dict(s.execute(select(Feedback.kind, func.count()).group_by(Feedback.kind)).all())
            users = s.scalar(select(func.count(func.distinct(Vote.user_id)))) or 0
        return VoteStats(votes=sum(by_kind.values()), by_kind=by_kind, by_model=dict(models.most_common()),
                         feedback=feedback, users_voting=users)

    def _rows(self, s):
        votes = s.scalars(select(Vote).order_by(Vote.created_at, Vote.id)).all()
        ids = {cid for v in votes for cid in (v.conversation_a_id, v.conversation_b_id) if cid}
        messages: dict[str, list[Message]] = {cid: [] for cid in ids}
        if ids:
            for m in s.scalars(select(Message).where(Message.conversation_id.in_(ids)).order_by(Message.position)):
                messages[m.conversation_id].append(m)
        return votes, messages

    def battles(self) -> list[Battle]:
        """Every vote as a battle (anonymous or named), with both sides' conversations."""
        with self.db.session() as s:
            votes, messages = self._rows(s)
            return [Battle(model_a=v.model_a, model_b=v.model_b, winner=v.kind, anony=v.anony,
                           tstamp=v.created_at.timestamp(), question_id=v.conversation_a_id, judge=f"user-{v.user_id}",
                           turn=max(1, sum(m.role == "user" for m in messages.get(v.conversation_a_id, []))),
                           conversation_a=[{"role": m.role, "content": m.content} for m in messages.get(v.conversation_a_id, [])],
                           conversation_b=[{"role": m.role, "content": m.content} for m in messages.get(v.conversation_b_id, [])])
                    for v in votes]

    def export_fastchat_log(self, path: Path) -> int:
        """Votes as FastChat conversation-log records (leftvote, rightvote, tievote, bothbad_vote): JSON lines."""
        with self.db.session() as s:
            votes, messages = self._rows(s)
            names = dict(s.execute(select(User.id, User.username)).all())
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for v in votes:
                states = []
                for cid, model in ((v.conversation_a_id, v.model_a), (v.conversation_b_id, v.model_b)):
                    states.append({"conv_id": cid, "model_name": model, "offset": 0, "template_name": "openai",
                                   "messages": [[m.role.upper(), m.content] for m in messages.get(cid, [])
                                                if m.role != "system"]})
                user = hashlib.sha256(names.get(v.user_id, "").encode()).hexdigest()[:16]
                record = {"tstamp": v.created_at.timestamp(), "type": LOG_TYPE[v.kind],
                          "models": ["", ""] if v.anony else [v.model_a, v.model_b], "states": states, "ip": user}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(votes)
