"""Rate limits and token budgets, counted in the database so that every API and web process shares them.

A scope (an API key, a user, a sign-in name or address) has a counter row per window of time: requests and tokens
in the current minute, tokens in the current day or month. A request is admitted by counting it in its scopes'
minute counters, each with one statement that counts only below the limit, which the database serializes: 50
requests at once against a limit of 10 admit exactly 10. Tokens are known when a reply ends; the usage writer adds them (parley.store.usage), so a
tokens-per-minute limit or a budget refuses the requests after the one that crossed it, as OpenAI's do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from parley.store.database import Database
from parley.store.models import LimitCounter

BudgetPeriod = Literal["day", "month"]


class Limits(BaseModel):
    """What a key or a user may use (None: no limit)."""

    rpm: int | None = Field(None, ge=1, le=2**31 - 1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, le=2**62, description="tokens (prompt + completion) per minute")
    token_budget: int | None = Field(None, ge=1, le=2**62, description="tokens per budget period")
    budget_period: BudgetPeriod | None = Field(None, description="day or month (UTC); default month")

    @model_validator(mode="after")
    def _period(self) -> Limits:
        if self.token_budget is not None and self.budget_period is None:
            self.budget_period = "month"
        return self

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.token_budget))

    @classmethod
    def of(cls, row) -> Limits:
        """The limits stored on a User or ApiKey row."""
        return cls(rpm=row.rpm, tpm=row.tpm, token_budget=row.token_budget, budget_period=row.budget_period)

    def describe(self) -> str:
        parts = [f"{self.rpm} requests/min" if self.rpm else "", f"{self.tpm} tokens/min" if self.tpm else "",
                 f"{self.token_budget} tokens/{self.budget_period}" if self.token_budget else ""]
        return ", ".join(p for p in parts if p) or "none"


class Used(BaseModel):
    """What a scope's limits have counted in their current windows (a limit that is not set counts nothing)."""

    requests_this_minute: int
    tokens_this_minute: int
    tokens_this_period: int  # the budget's day or month


@dataclass(frozen=True)
class Scope:
    """What one set of limits applies to: `name` is its counters' key (key:ID, user:ID), `label` how an error names it."""

    name: str
    label: str
    limits: Limits


class LimitExceeded(Exception):
    """A limit is reached: a 429 with Retry-After; `quota` is a spent budget (OpenAI's insufficient_quota);
    `kind` says which rate was reached, "requests" or "tokens" (OpenAI's error type for a rate limit)."""

    def __init__(self, message: str, retry_after_s: int, quota: bool = False,
                 kind: Literal["requests", "tokens"] = "requests"):
        super().__init__(message)
        self.message = message
        self.retry_after_s = max(1, retry_after_s)
        self.quota = quota
        self.kind = kind


def minute_bucket(now: float) -> tuple[str, int]:
    start = int(now // 60) * 60
    return f"m{start // 60}", start + 60


def window_bucket(now: float, seconds: int) -> tuple[str, int]:
    start = int(now // seconds) * seconds
    return f"w{seconds}:{start // seconds}", start + seconds


def period_bucket(now: float, period: BudgetPeriod) -> tuple[str, int]:
    day = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return f"d{day:%Y-%m-%d}", int((day + timedelta(days=1)).timestamp())
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return f"M{first:%Y-%m}", int(following.timestamp())


def _upsert(insert):
    """Add to a counter (created at zero) and return its new (requests, tokens): one atomic statement, its values
    parameters, so that it is built once (building a statement per call costs more than running it)."""
    statement = insert(LimitCounter).values(scope=bindparam("scope"), bucket=bindparam("bucket"),
                                            requests=bindparam("requests"), tokens=bindparam("tokens"),
                                            expires_at=bindparam("expires_at"))
    return statement.on_conflict_do_update(
        index_elements=["scope", "bucket"],
        set_={"requests": LimitCounter.requests + statement.excluded.requests,
              "tokens": LimitCounter.tokens + statement.excluded.tokens},
    ).returning(LimitCounter.requests, LimitCounter.tokens)


def _count_below(insert):
    """Count one request unless the counter has reached `limit`: one atomic statement that returns the new
    (requests, tokens), or no row when the limit is reached (and nothing is counted)."""
    statement = insert(LimitCounter).values(scope=bindparam("scope"), bucket=bindparam("bucket"), requests=1,
                                            tokens=0, expires_at=bindparam("expires_at"))
    return statement.on_conflict_do_update(
        index_elements=["scope", "bucket"], set_={"requests": LimitCounter.requests + 1},
        where=LimitCounter.requests < bindparam("limit"),
    ).returning(LimitCounter.requests, LimitCounter.tokens)


_UPSERT = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}
_COUNT_BELOW = {"postgresql": _count_below(postgresql.insert), "sqlite": _count_below(sqlite.insert)}
_UNCOUNT = (update(LimitCounter).where(LimitCounter.scope == bindparam("b_scope"),
                                       LimitCounter.bucket == bindparam("b_bucket"))
            .values(requests=LimitCounter.requests - 1))
_TOKENS = select(LimitCounter.tokens).where(LimitCounter.scope == bindparam("scope"),
                                            LimitCounter.bucket == bindparam("bucket"))


def add(session: Session, scope: str, bucket: str, expires_at: int, requests: int = 0, tokens: int = 0) -> tuple[int, int]:
    """Add to a counter (created at zero) and return its new (requests, tokens): one atomic statement. (On the
    session's connection: the ORM's way of running a statement costs several times the statement itself, and every
    admitted request pays this.)"""
    connection = session.connection()
    row = connection.execute(_UPSERT[connection.dialect.name], {
        "scope": scope, "bucket": bucket, "requests": requests, "tokens": tokens, "expires_at": expires_at}).one()
    return row[0], row[1]


def _tokens(session: Session, scope: str, bucket: str) -> int:
    return session.connection().execute(_TOKENS, {"scope": scope, "bucket": bucket}).scalar() or 0


class Counters:
    def __init__(self, db: Database):
        self.db = db

    def admit(self, scopes: list[Scope], now: float | None = None) -> None:
        """Count one request against each scope's limits, or raise LimitExceeded (and count nothing).

        Each requests-per-minute count is one statement that commits by itself and counts only below the limit,
        so the database serializes concurrent requests exactly (50 at once against 10 admit 10) in one round trip
        per scope. A scope refused after another was counted takes that count back."""
        scopes = [s for s in scopes if s.limits.any]
        if not scopes:
            return
        now = time.time() if now is None else now
        for attempt in (1, 2):
            counted: list[str] = []
            try:
                with self.db.autocommit() as connection:
                    try:
                        return self._admit(connection, scopes, now, counted)
                    except LimitExceeded:
                        minute = minute_bucket(now)[0]
                        for name in counted:
                            connection.execute(_UNCOUNT, {"b_scope": name, "b_bucket": minute})
                        raise
            except DBAPIError as exc:
                # A pooled connection the server dropped (it is not pinged first): once more, on a fresh one,
                # if nothing was counted on it.
                if attempt == 2 or counted or not exc.connection_invalidated:
                    raise

    @staticmethod
    def _admit(connection, scopes: list[Scope], now: float, counted: list[str]) -> None:
        minute, minute_ends = minute_bucket(now)
        wait = int(minute_ends - now) + 1
        minute_tokens: dict[str, int] = {}  # what the counts returned: a read fewer for a tokens-per-minute limit
        for scope in scopes:
            if scope.limits.rpm is not None:
                row = connection.execute(_COUNT_BELOW[connection.dialect.name], {
                    "scope": scope.name, "bucket": minute, "expires_at": minute_ends,
                    "limit": scope.limits.rpm}).first()
                if row is None:
                    raise LimitExceeded(f"Rate limit reached for {scope.label}: {scope.limits.rpm} requests per "
                                        f"minute. Try again in {wait} s.", wait)
                counted.append(scope.name)
                minute_tokens[scope.name] = row[1]
        for scope in scopes:
            limits = scope.limits
            if limits.token_budget is not None:
                bucket, ends = period_bucket(now, limits.budget_period or "month")
                used = connection.execute(_TOKENS, {"scope": scope.name, "bucket": bucket}).scalar() or 0
                if used >= limits.token_budget:
                    raise LimitExceeded(
                        f"You exceeded the token budget of {scope.label}: {limits.token_budget} tokens per "
                        f"{limits.budget_period}. It renews in {_duration(ends - now)}.", int(ends - now) + 1,
                        quota=True, kind="tokens")
            if limits.tpm is not None:
                used = minute_tokens.get(scope.name)
                if used is None:
                    used = connection.execute(_TOKENS, {"scope": scope.name, "bucket": minute}).scalar() or 0
                if used >= limits.tpm:
                    raise LimitExceeded(f"Rate limit reached for {scope.label}: {limits.tpm} tokens per minute. "
                                        f"Try again in {wait} s.", wait, kind="tokens")

    @staticmethod
    def charge(session: Session, scopes: list[Scope], tokens: int, now: float) -> None:
        """Add a finished request's tokens to the counters its scopes' limits read (in the caller's transaction)."""
        if tokens <= 0:
            return
        for scope in scopes:
            if scope.limits.tpm is not None:
                bucket, ends = minute_bucket(now)
                add(session, scope.name, bucket, ends, tokens=tokens)
            if scope.limits.token_budget is not None:
                bucket, ends = period_bucket(now, scope.limits.budget_period or "month")
                add(session, scope.name, bucket, ends, tokens=tokens)

    def hit(self, scope: str, limit: int, window_s: int, now: float | None = None) -> int | None:
        """Count one event (a sign-in attempt) in a window of `window_s`; past `limit`, the seconds to wait."""
        now = time.time() if now is None else now
        bucket, ends = window_bucket(now, window_s)
        with self.db.session() as s:
            requests, _ = add(s, scope, bucket, ends, requests=1)
        return int(ends - now) + 1 if requests > limit else None

    def used(self, scope: Scope, now: float | None = None) -> Used:
        """What a scope has used in its current windows: requests and tokens this minute, tokens this period."""
        now = time.time() if now is None else now
        minute, _ = minute_bucket(now)
        with self.db.session() as s:
            row = s.get(LimitCounter, (scope.name, minute))
            period = period_bucket(now, scope.limits.budget_period or "month")[0]
            return Used(requests_this_minute=row.requests if row else 0, tokens_this_minute=row.tokens if row else 0,
                        tokens_this_period=_tokens(s, scope.name, period))

    @staticmethod
    def purge(session: Session, now: float) -> None:
        """Drop counters whose window ended over an hour ago."""
        session.execute(delete(LimitCounter).where(LimitCounter.expires_at < int(now) - 3600))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{max(seconds, 1) // 60} min {seconds % 60} s" if seconds >= 60 else f"{max(seconds, 1)} s"
