"""Who is asking the API: the request's key, checked against the static `--api-keys` and the users' keys in the
database, and the limits of a user's key, applied before the work.

Looking a key up in the database costs a thread hop and a query (a millisecond or more); the answer is cached by
the key's hash, good and bad alike, for TTL_S seconds, so a key seen again costs a dictionary lookup, and a revoked
key or a disabled user's key stops working within TTL_S seconds on every API process, with no message between
them. Keys without limits (nor limits on their user) skip the rate-limit counters altogether.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from parley.serving.api_errors import APIError
from parley.store.accounts import Accounts
from parley.store.api_keys import KEY_PREFIX, ApiKeys, KeyGrant
from parley.store.database import Database
from parley.store.limits import Counters, LimitExceeded, Scope
from parley.store.models import User

log = logging.getLogger("parley.api")

TTL_S = 2.0  # how long a key's answer is trusted: a revoked key works at most this long after
CACHE_SIZE = 10_000  # keys remembered (the least recently used go first): random keys cannot grow it past this

API_USER = User(id=-1, username="api", is_admin=False)  # a static key's: owns nothing, sees the shared assistants


@dataclass(frozen=True)
class Caller:
    """Who is asking: a user's key (`grant`), one of the static keys, or, where no key is needed, the local user.
    `user` is whose assistants the request sees (None: the API has no database)."""

    user: User | None
    grant: KeyGrant | None = None
    static_key: bool = False
    scopes: tuple[Scope, ...] = ()  # the limits the request counts against
    limited: bool = False  # whether any of them limits anything (else the counters are skipped)

    @classmethod
    def of_grant(cls, grant: KeyGrant) -> Caller:
        scopes = tuple(grant.scopes())
        return cls(user=User(id=grant.user_id, username=grant.username, is_admin=grant.is_admin), grant=grant,
                   scopes=scopes, limited=any(s.limits.any for s in scopes))

    @property
    def user_id(self) -> int | None:
        """The user the usage is recorded for (None: a static key's, or no database)."""
        if self.grant is not None:
            return self.grant.user_id
        return None if self.static_key or self.user is None else self.user.id

    @property
    def key_id(self) -> str | None:
        return self.grant.key_id if self.grant is not None else None

    def may_use(self, model: str) -> bool:
        return self.grant is None or self.grant.may_use(model)


STATIC = Caller(user=API_USER, static_key=True)


def model_not_found(model: str) -> APIError:
    """The same answer for a model that does not exist and one the key may not use: nothing leaks which is which."""
    return APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                    code="model_not_found", param="model")


def limit_error(exc: LimitExceeded) -> APIError:
    """OpenAI's answers: a rate limit is a 429 of type "requests" or "tokens", code rate_limit_exceeded; a spent
    budget is a 429 insufficient_quota. Both say when to try again."""
    headers = {"Retry-After": str(exc.retry_after_s)}
    if exc.quota:
        return APIError(429, exc.message, type="insufficient_quota", code="insufficient_quota", headers=headers)
    return APIError(429, exc.message, type=exc.kind, code="rate_limit_exceeded", headers=headers)


class _TTLCache:
    """Answers for TTL_S seconds, at most `size` of them (the least recently used go first)."""

    def __init__(self, ttl_s: float, size: int):
        self.ttl_s = ttl_s
        self.size = size
        self._entries: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()

    def get(self, digest: str) -> tuple[bool, Caller | None]:
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        if entry[0] < time.monotonic():
            del self._entries[digest]
            return False, None
        self._entries.move_to_end(digest)
        return True, entry[1]

    def put(self, digest: str, caller: Caller | None) -> None:
        self._entries[digest] = (time.monotonic() + self.ttl_s, caller)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class KeyAuth:
    """The API's key check and limits. `required`: every request needs a key (a static one, or a user's key when
    there is a database); otherwise requests are the local user's (or, without a database, nobody's)."""

    def __init__(self, static_keys: list[str], db: Database | None, required: bool, ttl_s: float = TTL_S,
                 cache_size: int = CACHE_SIZE):
        self._static = [k.encode() for k in static_keys]
        self.db = db
        self.required = required or bool(static_keys)
        self._keys = ApiKeys(db) if db is not None else None
        self._counters = Counters(db) if db is not None else None
        self._cache = _TTLCache(ttl_s, cache_size)
        self._pending: dict[str, asyncio.Task] = {}  # lookups under way: one per key, however many ask at once
        self._anonymous = Caller(user=None)  # set by start(): the local user, where no key is needed

    async def start(self) -> None:
        """Where no key is needed, the requests are the local user's (made on first use, as the web UI does)."""
        if self.db is not None and not self.required:
            self._anonymous = Caller(user=await asyncio.to_thread(Accounts(self.db).local_user))

    def describe(self) -> str:
        """Which keys are accepted, for the log at start."""
        if not self.required:
            return "no API key needed (requests are the local user's)" if self.db is not None \
                else "no API key needed"
        sources = []
        if self._static:
            sources.append(f"{len(self._static)} static key(s) (--api-keys)")
        if self.db is not None:
            sources.append(f"users' keys (sk-parley-…) from {self.db.display_url}, with their limits")
        return "API keys required: " + " and ".join(sources)

    async def check(self, authorization: str | None) -> Caller:
        """The caller a request's Authorization header names, or a 401."""
        if not self.required:
            return self._anonymous
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        given = key.encode("latin-1")  # the header's own bytes (any of them), compared as bytes
        if any(secrets.compare_digest(given, k) for k in self._static):
            return STATIC
        caller = await self._user_key(key) if self._keys is not None and key.startswith(KEY_PREFIX) else None
        if caller is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return caller

    async def _user_key(self, key: str) -> Caller | None:
        digest = hashlib.sha256(key.encode("latin-1")).hexdigest()
        found, caller = self._cache.get(digest)
        if found:
            return caller
        task = self._pending.get(digest)
        if task is None:
            task = self._pending[digest] = asyncio.create_task(self._look_up(key, digest))
            task.add_done_callback(lambda _: self._pending.pop(digest, None))
        return await asyncio.shield(task)  # one request giving up does not cancel the others' lookup

    async def _look_up(self, key: str, digest: str) -> Caller | None:
        try:
            grant = await asyncio.to_thread(self._keys.grant, key)
        except Exception as exc:  # noqa: BLE001 - whichever error the database driver raises
            log.warning("could not check an API key: %s", exc)
            raise APIError(503, "API keys cannot be checked now: the database is unreachable. Try again later.",
                           type="server_error", code="service_unavailable") from None
        caller = Caller.of_grant(grant) if grant is not None else None
        self._cache.put(digest, caller)
        return caller

    def check_model(self, caller: Caller, model: str) -> None:
        if not caller.may_use(model):
            raise model_not_found(model)

    async def admit(self, caller: Caller) -> None:
        """Count the request against its key's and user's limits, or refuse it with a 429 (counted nowhere)."""
        if not caller.limited:
            return
        try:
            await asyncio.to_thread(self._counters.admit, list(caller.scopes))
        except LimitExceeded as exc:
            raise limit_error(exc) from None
        except Exception as exc:  # noqa: BLE001 - whichever error the database driver raises
            log.warning("could not count a request against its limits: %s", exc)
            raise APIError(503, "Rate limits cannot be checked now: the database is unreachable. Try again later.",
                           type="server_error", code="service_unavailable") from None
