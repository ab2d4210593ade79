"""Users' keys to the OpenAI API: made, listed and revoked by their owners (and admins); only a hash is kept.

A key is 40 random characters after `sk-parley-`, so a fast hash (SHA-256) is as safe as a slow one: there is no
dictionary to try. The API looks a key up by its hash (parley.serving.key_auth caches the answer briefly).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from parley.errors import ParleyError
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.limits import Limits, Scope
from parley.store.models import ApiKey, User, utcnow

KEY_PREFIX = "sk-parley-"
SHOWN_PREFIX = len(KEY_PREFIX) + 6  # how much of a key lists show
MAX_KEYS_PER_USER = 100


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class KeySpec(Limits):
    """A new key: its name, its limits and the models it may use."""

    name: str = Field(min_length=1, max_length=100)
    models: list[str] | None = Field(None, max_length=200, description="models and assistants it may use; null: all")


class KeyView(BaseModel):
    id: str
    name: str
    prefix: str  # e.g. sk-parley-a1b2c3…
    user_id: int
    owner: str
    created_at: datetime
    revoked_at: datetime | None = None
    limits: Limits
    models: list[str] | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        return cls(id=key.id, name=key.name, prefix=key.prefix + "…", user_id=key.user_id, owner=key.user.username,
                   created_at=key.created_at, revoked_at=key.revoked_at, limits=Limits.of(key), models=key.models)


class NewKey(BaseModel):
    key: KeyView
    secret: str  # shown once


@dataclass(frozen=True)
class KeyGrant:
    """What a valid key gives: its owner and the limits on it, as the API applies them."""

    key_id: str
    key_name: str
    user_id: int
    username: str
    is_admin: bool
    key_limits: Limits
    user_limits: Limits
    models: frozenset[str] | None  # None: every model

    def scopes(self) -> list[Scope]:
        return [Scope(f"key:{self.key_id}", f"the API key '{self.key_name}'", self.key_limits),
                Scope(f"user:{self.user_id}", f"the user '{self.username}'", self.user_limits)]

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def user_scope(user: User) -> Scope:
    return Scope(f"user:{user.id}", f"the user '{user.username}'", Limits.of(user))


class ApiKeys:
    def __init__(self, db: Database):
        self.db = db

    def create(self, user: User, spec: KeySpec) -> NewKey:
        secret = KEY_PREFIX + secrets.token_urlsafe(30)[:40]
        with self.db.session() as s:
            count = len(s.scalars(select(ApiKey.id).where(ApiKey.user_id == user.id,
                                                          ApiKey.revoked_at.is_(None))).all())
            if count >= MAX_KEYS_PER_USER:
                raise ParleyError(f"{user.username} has {count} keys; revoke some first")
            key = ApiKey(user_id=user.id, name=spec.name.strip(), prefix=secret[:SHOWN_PREFIX],
                         secret_hash=hash_key(secret), rpm=spec.rpm, tpm=spec.tpm, token_budget=spec.token_budget,
                         budget_period=spec.budget_period if spec.token_budget else None,
                         models=sorted(set(spec.models)) if spec.models is not None else None)
            s.add(key)
            s.flush()
            s.refresh(key)
            return NewKey(key=KeyView.of(key), secret=secret)

    def list(self, user: User | None = None, include_revoked: bool = True) -> list[KeyView]:
        """A user's keys (None: everyone's, for admins), newest first."""
        with self.db.session() as s:
            query = select(ApiKey).order_by(ApiKey.created_at.desc())
            if user is not None:
                query = query.where(ApiKey.user_id == user.id)
            if not include_revoked:
                query = query.where(ApiKey.revoked_at.is_(None))
            return [KeyView.of(k) for k in s.scalars(query)]

    def revoke(self, user: User, key_id: str) -> KeyView:
        """Revoke a key of one's own (an admin: anyone's). Revoking twice is harmless."""
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None or (key.user_id != user.id and not user.is_admin):
                raise NotFound("key")
            if key.revoked_at is None:
                key.revoked_at = utcnow()
            s.flush()
            return KeyView.of(key)

    def grant(self, secret: str) -> KeyGrant | None:
        """What a key gives, or None: unknown, revoked, or its owner is not active."""
        if not secret.startswith(KEY_PREFIX):
            return None
        with self.db.session() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_key(secret)))
            if key is None or key.revoked_at is not None or key.user.status != "active":
                return None
            return KeyGrant(key_id=key.id, key_name=key.name, user_id=key.user_id, username=key.user.username,
                            is_admin=key.user.is_admin, key_limits=Limits.of(key), user_limits=Limits.of(key.user),
                            models=frozenset(key.models) if key.models is not None else None)
