"""Users: the local user (no login), accounts with argon2-hashed passwords or an OpenID Connect identity, their
status (active, pending approval, disabled), admin rights and limits."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from parley.errors import ParleyError
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.limits import Limits
from parley.store.models import User, utcnow

LOCAL_USER = "local"
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

# Who may make an account: only admins (closed), anyone (open), anyone, active once an admin approves (approval).
SignupPolicy = Literal["closed", "open", "approval"]
Status = Literal["active", "pending", "disabled"]


class UserView(BaseModel):
    id: int
    username: str
    is_admin: bool
    status: Status
    sign_in: Literal["password", "oidc", "none"]
    created_at: datetime
    last_login_at: datetime | None = None
    limits: Limits

    @classmethod
    def of(cls, user: User) -> UserView:
        sign_in = "oidc" if user.oidc_subject else "password" if user.password_hash else "none"
        return cls(id=user.id, username=user.username, is_admin=user.is_admin, status=user.status, sign_in=sign_in,
                   created_at=user.created_at, last_login_at=user.last_login_at, limits=Limits.of(user))


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ParleyError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ParleyError(f"a password has at most {MAX_PASSWORD} characters")


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

    def create(self, username: str, password: str | None, is_admin: bool = False, status: Status = "active",
               oidc: tuple[str, str] | None = None) -> User:
        if not USERNAME.match(username) or username == LOCAL_USER:
            raise ParleyError("a username is 2-64 letters, digits or _ . @ - (and not 'local')")
        if password is not None:
            check_password(password)
        try:
            with self.db.session() as s:
                user = User(username=username, password_hash=self._hasher.hash(password) if password else None,
                            is_admin=is_admin, status=status, oidc_issuer=oidc[0] if oidc else None,
                            oidc_subject=oidc[1] if oidc else None)
                s.add(user)
            return user
        except IntegrityError:
            raise ParleyError(f"the username {username!r} is taken") from None

    def sign_up(self, username: str, password: str, policy: SignupPolicy) -> User:
        """An account made by its user: active (open), or pending until an admin approves it (approval)."""
        if policy == "closed":
            raise ParleyError("sign-up is closed on this server: ask an admin for an account")
        return self.create(username, password, status="active" if policy == "open" else "pending")

    def oidc_user(self, issuer: str, subject: str, preferred: str, policy: SignupPolicy) -> User:
        """The account of an OpenID Connect identity; on its first sign-in one is made as the sign-up policy says
        (closed: none is, and the sign-in is refused), named after the provider's preferred username (made
        unique with a number)."""
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject))
            if user is not None:
                return user
        if policy == "closed":
            raise ParleyError("there is no account for you here and sign-up is closed: ask an admin")
        base = re.sub(r"[^A-Za-z0-9_.@-]", "_", preferred or subject)[:60].strip("_") or "user"
        base = base if len(base) >= 2 else f"{base}_user"
        for n in range(1, 100):
            name = base if n == 1 else f"{base}{n}"
            if name == LOCAL_USER or self.get(name) is not None:
                continue
            try:
                return self.create(name, None, status="active" if policy == "open" else "pending",
                                   oidc=(issuer, subject))
            except ParleyError:
                with self.db.session() as s:  # the same identity signing in twice at once: use the first
                    user = s.scalar(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject))
                    if user is not None:
                        return user
        raise ParleyError(f"no free username like {base!r}")

    def signed_in(self, user_id: int) -> None:
        with self.db.session() as s:
            s.get(User, user_id).last_login_at = utcnow()

    def change_password(self, user: User, current: str, new: str) -> User:
        """The user's own change: the current password must be right. Other sessions of the user end."""
        if self.authenticate(user.username, current) is None:
            raise ParleyError("the current password is wrong")
        return self.set_password(user.id, new)

    def set_password(self, user_id: int, new: str) -> User:
        """Set a password (an admin's reset, or the user's change); sessions signed in before end."""
        check_password(new)
        with self.db.session() as s:
            user = s.get(User, user_id)
            if user is None or user.username == LOCAL_USER:
                raise NotFound("user")
            user.password_hash = self._hasher.hash(new)
            user.session_version += 1
            return user

    def update(self, user_id: int, status: Status | None = None, is_admin: bool | None = None,
               limits: Limits | None = None) -> User:
        """An admin's change: approve or disable an account, grant or revoke admin, set its limits. The last
        active admin stays one."""
        with self.db.session() as s:
            user = s.get(User, user_id)
            if user is None or user.username == LOCAL_USER:
                raise NotFound("user")
            losing_admin = user.is_admin and user.status == "active" and (is_admin is False or status in ("pending", "disabled"))
            if losing_admin:
                admins = s.scalar(select(func.count()).select_from(User).where(
                    User.is_admin.is_(True), User.status == "active", User.username != LOCAL_USER))
                if admins <= 1:
                    raise ParleyError("this is the last active admin: make another admin first")
            if status is not None and status != user.status:
                if status == "disabled":
                    user.session_version += 1  # signed out everywhere
                user.status = status
            if is_admin is not None:
                user.is_admin = is_admin
            if limits is not None:
                user.rpm, user.tpm = limits.rpm, limits.tpm
                user.token_budget = limits.token_budget
                user.budget_period = limits.budget_period if limits.token_budget else None
            return user

    def list(self) -> list[UserView]:
        with self.db.session() as s:
            users = s.scalars(select(User).where(User.username != LOCAL_USER).order_by(User.username))
            return [UserView.of(u) for u in users]

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
