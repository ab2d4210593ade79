"""Usage: one row per API request and per web reply, and the sums that the usage pages, the CSV export and
`parley usage` show.

Rows are written by a `UsageRecorder`, off the request path: a request hands its event to a queue and goes on;
a background task writes what has gathered in one transaction (which also adds the tokens to the rate-limit
counters) and, when its server stops, writes the rest before the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Date, String, case, cast, func, select
from sqlalchemy.exc import InterfaceError, OperationalError

from parley.store.database import Database
from parley.store.limits import Counters, Scope
from parley.store.models import ApiKey, UsageRecord, User

log = logging.getLogger("parley.usage")

GroupBy = Literal["user", "key", "model", "day"]
# The endpoint of an anonymous Arena battle's replies: a user's own usage shows their model as HIDDEN_MODEL, so
# that it cannot tell them which models they are comparing before they vote.
ANONYMOUS_BATTLE = "arena-anonymous"
HIDDEN_MODEL = "(anonymous battle)"
GROUPS: tuple[str, ...] = ("user", "key", "model", "day")
MAX_QUEUED = 1_000_000  # usage records held while the database is unreachable (about 0.5 GB at most)


@dataclass
class UsageEvent:
    source: Literal["api", "web"]
    endpoint: str
    model: str
    status: int
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    user_id: int | None = None
    key_id: str | None = None
    charge: list[Scope] = field(default_factory=list)  # the scopes whose token limits this counts against
    at: float = field(default_factory=time.time)


def parse_groups(by: str) -> list[str]:
    """`by` as given (comma-separated, any order) as a list of GROUPS; a ValueError names anything else."""
    wanted = [g.strip() for g in by.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        raise ValueError(f"usage is grouped by {', '.join(GROUPS)}; not by {', '.join(unknown)}")
    return wanted


def _text(value: str, length: int) -> str:
    """A client's text as every database stores it: no NUL (PostgreSQL refuses it), no lone surrogate (no driver
    encodes it), at most `length` characters. A model name is whatever the request said."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:length]


class UsageRow(BaseModel):
    """Sums over one group (the fields grouped by are set, the others None)."""

    user: str | None = None
    key: str | None = None  # the key's name (and id)
    key_id: str | None = None
    model: str | None = None
    day: date | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: int  # requests answered with a status of 400 or more
    mean_latency_ms: float


class Usage:
    def __init__(self, db: Database):
        self.db = db

    def write(self, events: list[UsageEvent]) -> None:
        """Store events, and add their tokens to the counters of their scopes' limits: one transaction."""
        if not events:
            return
        with self.db.session() as s:
            s.add_all([UsageRecord(created_at=datetime.fromtimestamp(e.at, timezone.utc), user_id=e.user_id,
                                   key_id=e.key_id, source=e.source, endpoint=_text(e.endpoint, 64),
                                   model=_text(e.model, 200),
                                   prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens,
                                   latency_ms=e.latency_ms, status=e.status) for e in events])
            for e in events:
                Counters.charge(s, e.charge, e.prompt_tokens + e.completion_tokens, e.at)
            Counters.purge(s, time.time())

    def summary(self, by: list[str], user_id: int | None = None, since: date | None = None,
                until: date | None = None, hide_battle_models: bool = False) -> list[UsageRow]:
        """Sums grouped by any of user, key, model and day (an empty `by`: one total row), over one user's usage
        (None: everyone's), from `since` to `until` (UTC days, both included). `hide_battle_models`: anonymous
        battles' replies are summed under HIDDEN_MODEL (what a user sees of their own usage)."""
        # The UTC day: SQLite's date() reads the stored ISO text; PostgreSQL casts in the session's time zone (UTC).
        day = (func.date(UsageRecord.created_at, type_=String) if self.db.is_sqlite
               else cast(func.timezone("UTC", UsageRecord.created_at), Date))
        model = (case((UsageRecord.endpoint == ANONYMOUS_BATTLE, HIDDEN_MODEL), else_=UsageRecord.model)
                 if hide_battle_models else UsageRecord.model)
        columns = {"user": User.username, "key": ApiKey.name, "key_id": UsageRecord.key_id, "model": model, "day": day}
        wanted = [g for g in GROUPS if g in by] + (["key_id"] if "key" in by else [])
        total = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
        query = (select(*(columns[g].label(g) for g in wanted), func.count().label("requests"),
                        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
                        func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
                        func.coalesce(func.sum(total), 0).label("total_tokens"),
                        func.coalesce(func.sum(case((UsageRecord.status >= 400, 1), else_=0)), 0).label("errors"),
                        func.coalesce(func.avg(UsageRecord.latency_ms), 0).label("mean_latency_ms"))
                 .select_from(UsageRecord)
                 .outerjoin(User, User.id == UsageRecord.user_id)
                 .outerjoin(ApiKey, ApiKey.id == UsageRecord.key_id))
        if user_id is not None:
            query = query.where(UsageRecord.user_id == user_id)
        if since is not None:
            query = query.where(UsageRecord.created_at >= datetime(since.year, since.month, since.day,
                                                                   tzinfo=timezone.utc))
        if until is not None:
            query = query.where(day <= until)
        if wanted:
            query = query.group_by(*(columns[g] for g in wanted)).order_by(*(columns[g] for g in wanted))
        with self.db.session() as s:
            rows = s.execute(query).mappings().all()
        result = []
        for row in rows:
            values = dict(row)
            if values.get("day") is not None and not isinstance(values["day"], date):
                values["day"] = date.fromisoformat(str(values["day"])[:10])  # SQLite gives text
            result.append(UsageRow(**values))
        return result


CSV_FIELDS = ("day", "user", "key", "key_id", "model", "requests", "prompt_tokens", "completion_tokens",
              "total_tokens", "errors", "mean_latency_ms")


def _cell(value):
    """A spreadsheet runs a cell that starts with = + - @ (or a tab or carriage return) as a formula: key and model
    names are anyone's text, so such a cell is written with a leading apostrophe."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def to_csv(rows: list[UsageRow], by: list[str]) -> str:
    fields = [f for f in CSV_FIELDS if f in by or (f == "key_id" and "key" in by) or f not in GROUPS + ("key_id",)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = {k: _cell(v) for k, v in row.model_dump().items()}
        values["mean_latency_ms"] = f"{row.mean_latency_ms:.1f}"
        writer.writerow(values)
    return out.getvalue()


class UsageRecorder:
    """Writes usage events in the background; `record` never waits on the database."""

    def __init__(self, db: Database, flush_interval_s: float = 0.5, batch: int = 500):
        self.usage = Usage(db)
        self.flush_interval_s = flush_interval_s
        self.batch = batch
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.written = 0
        self.dropped = 0

    def record(self, event: UsageEvent) -> None:
        if self._queue.qsize() >= MAX_QUEUED:  # the database has been down a long while: keep the memory bounded
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("the usage queue is full (%d records): dropped %d so far", MAX_QUEUED, self.dropped)
            return
        self._queue.put_nowait(event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            events = [await self._queue.get()]
            if events[0] is not None:  # let a burst gather into one transaction (a stop ends the wait)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.flush_interval_s)
            while not self._queue.empty() and len(events) < self.batch:
                events.append(self._queue.get_nowait())
            stopping = None in events
            events = [e for e in events if e is not None]
            await self._store(events, stopping)
            if stopping and not self._queue.empty():
                stopping = False  # events came after the stop: write them too
                self._queue.put_nowait(None)

    async def _store(self, events: list[UsageEvent], stopping: bool) -> None:
        """Write a batch. While the database is unreachable, try again each second (three times when stopping, then
        say what is lost). A batch the database refuses for its content is written one event at a time, and an event
        it still refuses is logged and dropped: one bad event never holds up the others."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.usage.write, events)
                self.written += len(events)
                return
            except (OperationalError, InterfaceError) as exc:
                attempt += 1
                if stopping and attempt >= 3:
                    log.error("lost %d usage records: the database is unreachable at shutdown (%s)", len(events), exc)
                    return
                if attempt == 1 or attempt % 60 == 0:
                    log.warning("could not store %d usage records (%s); trying again each second", len(events), exc)
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - one of the events: find it
                break
        for event in events:
            try:
                await asyncio.to_thread(self.usage.write, [event])
                self.written += 1
            except Exception:  # noqa: BLE001 - whichever error the database gives for it
                log.exception("dropped a usage record the database refuses: %r", event)

    async def stop(self) -> None:
        """Write everything still queued (a clean shutdown loses nothing), then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)  # type: ignore[arg-type] - the writer stops when it reaches it
        self._stopping.set()
        try:
            await self._task
        finally:
            self._task = None
        log.info("usage writer stopped (%d records stored)", self.written)
