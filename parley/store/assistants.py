"""Assistants: a base model with a role (system prompt), default parameters, starter prompts and knowledge.

Private to their owner unless shared; another user's private assistant is "not found", exactly as one that does
not exist. The owner changes an assistant; admins also curate the shared ones. A shared assistant's collections
must be shared too, so that nobody reads through it what they could not read themselves.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import or_, select

from parley.errors import ParleyError
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.knowledge import KnowledgeError
from parley.store.models import Assistant, Collection, User, utcnow


class AssistantSpec(BaseModel):
    """What an assistant is made of: what `create` takes, what export writes and import reads."""

    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    base_model: str = Field(min_length=1, max_length=200)
    system_prompt: str = Field("", max_length=20000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    starters: list[str] = Field(default_factory=list, max_length=8)
    shared: bool = False
    in_battles: bool = False
    collections: list[str] = Field(default_factory=list, max_length=32)  # ids
    top_k: int = Field(5, ge=1, le=20)
    min_score: float = Field(0.25, ge=-1.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a name is needed")
        return v.strip()

    @field_validator("starters")
    @classmethod
    def _starters(cls, v: list[str]) -> list[str]:
        v = [s.strip() for s in v if s.strip()]
        if any(len(s) > 500 for s in v):
            raise ValueError("a starter prompt is at most 500 characters")
        return v


class AssistantView(AssistantSpec):
    id: str
    owner: str
    created_at: datetime
    updated_at: datetime
    writable: bool = False  # whether the user asking may change it
    collection_names: list[str] = []


class Forbidden(ParleyError):
    """The user may read this, but not change it."""


def _view(s, a: Assistant, user: User) -> AssistantView:
    owner = s.get(User, a.user_id)
    return AssistantView(id=a.id, name=a.name, description=a.description, base_model=a.base_model,
                         system_prompt=a.system_prompt, temperature=a.temperature, top_p=a.top_p,
                         max_tokens=a.max_tokens, starters=list(a.starters or []), shared=a.shared,
                         in_battles=a.in_battles, collections=[c.id for c in a.collections],
                         collection_names=[c.name for c in a.collections], top_k=a.top_k, min_score=a.min_score,
                         owner=owner.username if owner else "?", created_at=a.created_at, updated_at=a.updated_at,
                         writable=_may_change(a, user))


def _may_change(a: Assistant, user: User) -> bool:
    return a.user_id == user.id or (a.shared and user.is_admin)


def is_assistant_id(name: str | None) -> bool:
    return bool(name) and name.startswith("asst_")


class Assistants:
    def __init__(self, db: Database):
        self.db = db

    @staticmethod
    def _visible(user: User):
        return or_(Assistant.user_id == user.id, Assistant.shared.is_(True))

    def _get(self, s, user: User, assistant_id: str, change: bool = False) -> Assistant:
        a = s.get(Assistant, assistant_id) if isinstance(assistant_id, str) else None
        if a is None or not (a.user_id == user.id or a.shared):
            raise NotFound("assistant")
        if change and not _may_change(a, user):
            raise Forbidden(f"only its owner or an admin may change the shared assistant {a.name!r}")
        return a

    def _collections(self, s, owner_id: int, spec: AssistantSpec) -> list[Collection]:
        found = []
        for cid in dict.fromkeys(spec.collections):
            c = s.get(Collection, cid)
            if c is None or not (c.user_id == owner_id or c.shared):
                raise NotFound(f"collection {cid}")
            if spec.shared and not c.shared:
                raise KnowledgeError(f"a shared assistant can only use shared collections: share {c.name!r} first")
            found.append(c)
        return found

    def _apply(self, s, a: Assistant, spec: AssistantSpec) -> None:
        for field in ("name", "description", "base_model", "system_prompt", "temperature", "top_p", "max_tokens",
                      "starters", "shared", "in_battles", "top_k", "min_score"):
            setattr(a, field, getattr(spec, field))
        a.collections = self._collections(s, a.user_id, spec)
        a.updated_at = utcnow()

    def create(self, user: User, spec: AssistantSpec) -> AssistantView:
        with self.db.session() as s:
            a = Assistant(user_id=user.id)
            self._apply(s, a, spec)
            s.add(a)
            s.flush()
            return _view(s, a, user)

    def update(self, user: User, assistant_id: str, spec: AssistantSpec) -> AssistantView:
        with self.db.session() as s:
            a = self._get(s, user, assistant_id, change=True)
            self._apply(s, a, spec)
            s.flush()
            return _view(s, a, user)

    def duplicate(self, user: User, assistant_id: str) -> AssistantView:
        """A private copy for the user, named "… (copy)"."""
        original = self.get(user, assistant_id)
        spec = AssistantSpec(**original.model_dump(include=set(AssistantSpec.model_fields)))
        spec.name = (spec.name[:93] + " (copy)")
        spec.shared = spec.in_battles = False
        with self.db.session() as s:  # the user's copy keeps only the collections the user can read
            spec.collections = [cid for cid in spec.collections
                                if (c := s.get(Collection, cid)) is not None and (c.user_id == user.id or c.shared)]
        return self.create(user, spec)

    def delete(self, user: User, assistant_id: str) -> None:
        with self.db.session() as s:
            s.delete(self._get(s, user, assistant_id, change=True))

    def get(self, user: User, assistant_id: str) -> AssistantView:
        with self.db.session() as s:
            return _view(s, self._get(s, user, assistant_id), user)

    def find(self, user: User, id_or_name: str) -> AssistantView:
        """By id, or by name among the user's own assistants, then the shared ones."""
        with self.db.session() as s:
            a = s.get(Assistant, id_or_name)
            if a is None or not (a.user_id == user.id or a.shared):
                a = s.scalars(select(Assistant).where(self._visible(user), Assistant.name == id_or_name)
                              .order_by((Assistant.user_id == user.id).desc())).first()
            if a is None:
                raise NotFound("assistant")
            return _view(s, a, user)

    def list(self, user: User) -> list[AssistantView]:
        with self.db.session() as s:
            found = s.scalars(select(Assistant).where(self._visible(user)).order_by(Assistant.name)).all()
            return [_view(s, a, user) for a in found]

    def for_battles(self) -> list[AssistantView]:
        """The shared assistants an admin put into anonymous battles."""
        with self.db.session() as s:
            found = s.scalars(select(Assistant).where(Assistant.shared.is_(True), Assistant.in_battles.is_(True))
                              .order_by(Assistant.name)).all()
            anyone = User(id=-1, username="", is_admin=False)
            return [_view(s, a, anyone) for a in found]
