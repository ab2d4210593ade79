"""Connecting to the store: a SQLite file by default (WAL mode), PostgreSQL with a postgresql:// URL.

The schema comes from the Alembic migrations, applied by `upgrade()` (the web UI does it at start). Migrations run
under a lock, so that several processes started at once on an empty database migrate it once and all succeed:
a PostgreSQL advisory lock held by the migration's transaction, or, for a SQLite file, a lock file beside it
(`parley.db.migrate.lock`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from parley.errors import ParleyError
from parley.paths import data_home

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x7061726C6579  # "parley": the PostgreSQL advisory lock taken while migrating
MIGRATION_LOCK_TIMEOUT_S = 600.0  # how long a process waits for another one's migration (SQLite)


def default_url() -> str:
    """sqlite:///$PARLEY_DATA_DIR/parley.db (~/.local/share/parley/parley.db)."""
    return f"sqlite:///{data_home() / 'parley.db'}"


def normalize_url(url: str) -> str:
    """postgresql:// and postgres:// use psycopg 3 (the driver we install)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def sqlite_driver():
    """The DB-API module for SQLite: Python's own sqlite3 when it can load extensions (sqlite-vec is one), else
    pysqlite3 (pysqlite3-binary, installed with parley[knowledge] where Python's cannot, as in pyenv's builds),
    else Python's own without vector search."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        return sqlite3
    return dbapi2


def _load_sqlite_vec(dbapi_connection) -> None:
    """sqlite-vec's vector functions on this connection, where the extension and the driver allow it."""
    try:
        import sqlite_vec
    except ImportError:
        return
    if not hasattr(dbapi_connection, "enable_load_extension"):
        return
    dbapi_connection.enable_load_extension(True)
    try:
        sqlite_vec.load(dbapi_connection)
    finally:
        dbapi_connection.enable_load_extension(False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    _load_sqlite_vec(dbapi_connection)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # writers wait for each other instead of failing
    # Readers do not block the writer. Switching a new file to WAL needs it alone, and SQLite answers "locked"
    # at once (no busy wait) when several processes open a new database together: try again for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:  # noqa: BLE001 - OperationalError of whichever driver (sqlite3 or pysqlite3)
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    def __init__(self, url: str | None = None):
        self.url = normalize_url(url or default_url())
        try:
            parsed = make_url(self.url)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError
            raise ParleyError(f"not a database URL: {url!r} ({exc})") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._migration_lock: Path | None = None  # the lock file of a SQLite file database
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                path = Path(parsed.database).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                self._migration_lock = path.with_name(path.name + ".migrate.lock")
            self.engine: Engine = create_engine(self.url, module=sqlite_driver(),
                                                connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # See autocommit(). Made now (no connection is opened until one is used), so that threads share one.
        self._autocommit_engine: Engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_sqlite
            else create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=8))

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _alembic(self, connection):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    @contextmanager
    def _migrating(self) -> Iterator[Connection]:
        """A transaction that no other process migrates the same database during; the lock is released after
        the transaction ends (committed or rolled back), so the next process finds the schema it left."""
        if self.is_sqlite:
            with self._file_lock(), self.engine.connect() as connection:
                # Alembic's batch mode rebuilds a table (copy, DROP, rename); with foreign keys on, the DROP
                # would run the ON DELETE actions of the tables that point at it (feedback, messages, votes).
                # The pragma is a no-op inside a transaction: set it first, check the keys before committing.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
                try:
                    with connection.begin():
                        yield connection
                        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise ParleyError(f"the migration left {len(broken)} rows pointing nowhere: {broken[:3]}")
                finally:
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            return
        with self._file_lock(), self.engine.begin() as connection:
            if not self.is_sqlite:
                # Transaction-scoped: PostgreSQL releases it at commit or rollback, also when this process dies,
                # and a pooled connection never keeps it.
                key = {"key": MIGRATION_LOCK_KEY}
                if not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), key).scalar():
                    log.info("database %s: waiting for another process's migration", self.display_url)
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
            yield connection

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self._migration_lock is None:  # PostgreSQL (locked in the transaction), or SQLite in memory
            yield
            return
        lock = FileLock(self._migration_lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("database %s: waiting for another process's migration (%s)", self.display_url,
                     self._migration_lock)
            try:
                lock.acquire(timeout=MIGRATION_LOCK_TIMEOUT_S)
            except Timeout:
                raise ParleyError(f"another process has held {self._migration_lock} for "
                                  f"{MIGRATION_LOCK_TIMEOUT_S:.0f} s; is a migration stuck?") from None
        try:
            yield
        finally:
            lock.release()

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        log.info("database %s: migrating to %s", self.display_url, revision)
        with self._migrating() as connection:
            command.upgrade(self._alembic(connection), revision)

    def downgrade(self, revision: str = "base") -> None:
        from alembic import command

        with self._migrating() as connection:
            command.downgrade(self._alembic(connection), revision)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def tables(self) -> set[str]:
        return set(inspect(self.engine).get_table_names())

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement commits by itself, for the hot path of rate limits (one atomic
        statement each). On PostgreSQL its pool does not ping a connection before handing it out (the ping is a
        round trip, as long as the statement); a connection the server dropped raises an error whose
        `connection_invalidated` is set, and the caller may try once more on a fresh one."""
        with self._autocommit_engine.connect() as connection:
            yield connection

    def close(self) -> None:
        if not self.is_sqlite:
            self._autocommit_engine.dispose()
        self.engine.dispose()
