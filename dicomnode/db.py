"""Engine and transaction helpers. SQLite runs in WAL mode with a busy timeout.

SQLite keeps ``synchronous=FULL``: in WAL mode that fsyncs the WAL at every commit, so a committed
receipt survives a power cut, which the 0x0000 promises. ``synchronous=NORMAL`` would fsync only at
checkpoints: it survives a killed process (the WAL is in the page cache) but a power cut can undo the
last commits after their instances were acknowledged, so it is not durable enough. The receiver's
group commit amortises that fsync over concurrent associations instead.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ClauseElement, Connection, DateTime, Dialect, Engine, MetaData, Select, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

_READ_ONLY = "dicomnode_read_only"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: DateTime(timezone=True)}  # noqa: RUF012 (SQLAlchemy API)


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite connections get WAL, foreign keys and a 30 s busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # A writer (session_scope, a migration) takes the write lock at BEGIN: no deadlock-prone read-to-write
    # upgrades between threads. A session that only reads (the sessionmaker's default: read_scope, or a
    # plain ``with sessions()``, which never commits) begins a plain snapshot, which in WAL mode never
    # waits for a writer: a readiness probe, a metrics scrape, a peer check or a console page answers
    # while a long write runs, and does not queue the group commit behind it.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


@contextmanager
def read_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A read-only transaction (rolled back at the end); on SQLite it takes no write lock."""
    session = factory()
    try:
        session.connection(execution_options={_READ_ONLY: True})
        yield session
    finally:
        session.rollback()
        session.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that read unless :func:`session_scope` makes them a writer (on SQLite: a plain BEGIN,
    not BEGIN IMMEDIATE; see ``_sqlite_begin_immediate``)."""
    return sessionmaker(engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception (on SQLite it holds the write lock
    from its start)."""
    session = factory()
    try:
        session.connection(execution_options={_READ_ONLY: False})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def anything(factory: sessionmaker[Session], query: Select[Any]) -> bool:
    """Whether ``query`` finds a row, read in a plain snapshot (no write lock on SQLite).

    A periodic writer (the sweep's steps, the worker's claim, the lease check: several a second) asks
    this before its :func:`session_scope`, which it repeats the query in: with nothing to do it never
    takes the write lock, which would make a group commit of received instances wait in SQLite's busy
    handler (1 ms and up each time) while it held it."""
    with read_scope(factory) as session:
        return session.execute(query.limit(1)).first() is not None


class Prepared:
    """A Core statement compiled once per dialect and run on the transaction's own DB-API cursor.

    The receiver runs three statements for every instance; through ``Connection.execute`` each costs
    SQLAlchemy's per-execution work (cache key, execution context, result object), which measured a
    third of an instance's database time (issue 11). Here the values go through the columns' own bind
    processors, as SQLAlchemy would send them, and a DB-API error is raised as SQLAlchemy's
    (:class:`~sqlalchemy.exc.DBAPIError` and its subclasses), so that callers handle it alike.
    """

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._by_dialect: dict[Dialect, tuple[SQLCompiler, dict[str, Callable[[Any], Any]]]] = {}
        self._lock = threading.Lock()

    def _compiled(self, dialect: Dialect) -> tuple[SQLCompiler, dict[str, Callable[[Any], Any]]]:
        found = self._by_dialect.get(dialect)
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
            assert isinstance(compiled, SQLCompiler)
            processors: dict[str, Callable[[Any], Any]] = {
                name: process for bind, name in compiled.bind_names.items()
                if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}
            with self._lock:
                found = self._by_dialect.setdefault(dialect, (compiled, processors))
        return found

    def run(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Execute on ``conn``'s transaction; returns the DB-API cursor (the caller closes it)."""
        compiled, processors = self._compiled(conn.dialect)
        values = compiled.construct_params(params)
        for name, process in processors.items():
            values[name] = process(values[name])
        args = [values[name] for name in compiled.positiontup or ()] if compiled.positional else values
        cursor = conn.connection.cursor()
        try:
            cursor.execute(compiled.string, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise DBAPIError.instance(compiled.string, args, exc, conn.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=conn.dialect) from exc  # UIDs stay out of logs
        return cursor
