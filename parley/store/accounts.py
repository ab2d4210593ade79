"""Users: the local user (no login) and accounts with argon2-hashed passwords."""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from parley.errors import ParleyError
from parley.store.database import Database
from parley.store.models import User

LOCAL_USER = "local"
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8


class Accounts:
    def __init__(self, db: Database):
        self.db = db
        self._hasher = PasswordHasher()

    def local_user(self) -> User:
        """The one user of a UI without login (created on first use)."""
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.username == LOCAL_USER))
            if user:
                return user
        try:
            with self.db.session() as s:
                user = User(username=LOCAL_USER, password_hash=None, is_admin=True)
                s.add(user)
            return user
        except IntegrityError:  # another thread created it first
            with self.db.session() as s:
                return s.scalar(select(User).where(User.username == LOCAL_USER))

    def create(self, username: str, password: str, is_admin: bool = False) -> User:
        if not USERNAME.match(username) or username == LOCAL_USER:
            raise ParleyError("a username is 2-64 letters, digits or _ . @ - (and not 'local')")
        if len(password) < MIN_PASSWORD:
            raise ParleyError(f"a password has at least {MIN_PASSWORD} characters")
        try:
            with self.db.session() as s:
                user = User(username=username, password_hash=self._hasher.hash(password), is_admin=is_admin)
                s.add(user)
            return user
        except IntegrityError:
            raise ParleyError(f"the username {username!r} is taken") from None

    def authenticate(self, username: str, password: str) -> User | None:
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.username == username))
        if user is None or user.password_hash is None:
            self._hasher.hash(password)  # the same work as a real check: no timing hint that the user is absent
            return None
        try:
            self._hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            with self.db.session() as s:
                s.get(User, user.id).password_hash = self._hasher.hash(password)
        return user

    def get(self, username: str) -> User | None:
        with self.db.session() as s:
            return s.scalar(select(User).where(User.username == username))

    def by_id(self, user_id: int) -> User | None:
        with self.db.session() as s:
            return s.get(User, user_id)
