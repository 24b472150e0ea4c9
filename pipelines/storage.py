"""Dagster's sqlite event log with its connections kept open (``event_log_storage`` in dagster.yaml).

Dagster's :class:`SqliteEventLogStorage` creates a SQLAlchemy engine, opens a sqlite connection, and
disposes of both, for every event it writes and every read. A run of the pipeline writes about 150 events
(a step's start, output and success, each asset materialisation and check evaluation, planned and done)
and reads asset records for data versions: creating, connecting and closing came to about 0.8 s of a
6.6 s incremental run on the 1M-record bench, more than half of what the event log cost.

This subclass keeps one engine per database file (the index shard, and the few run shards being written
or read), whose pool keeps a connection open between uses, and whose connections write ahead (sqlite's WAL:
a commit does not wait for the disk, see :func:`_write_ahead`). Everything else is Dagster's: the same files
under ``$DAGSTER_HOME/history/runs``, the same schema and migrations, the same lock around each use, so
the run history written before stays readable and the UI (``make dev``) reads it through this class too.

Each run writes its events to a new shard, which Dagster initialises by reading every one of its event log
migrations twice (alembic loads the migration files anew for each revision lookup and each stamp: about
60 ms a run). This class starts a new run shard as a copy of a template, an empty shard created and stamped
once per Dagster release (``.templates/`` beside the shards, which Dagster's ``*.db`` globs do not see):
20 ms of every run's start, each run being a process of its own, against 1 ms for the copy. When no
template can be written or linked into place, it stamps the shard itself, with the migrations read once per
process (:func:`_migrations`). The index shard, which may need migrating, keeps Dagster's own initialisation.

Since commits wait in each shard's ``-wal`` file, the watch that streams a running run's events to the UI is
also woken by that file (:class:`_RunWatchdog`); Dagster's watches the ``.db`` file only.

It overrides private methods of Dagster's (``_connect``, ``_initdb``, ``watch``), writes the rows of events
that concern no asset, check or run status itself (``store_event``, with Dagster's row mapping), and uses its
lock: Dagster is pinned in requirements.lock, and tests/pipelines/test_event_log_storage.py runs jobs through
the class and compares what it stores with what Dagster's own class does, so an upgrade that changes them
fails there first. Removing the ``event_log_storage`` block from dagster.yaml
returns to Dagster's own class over the same files.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import sqlite3
import tempfile
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import dagster as dg
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import get_alembic_config
from dagster._serdes import ConfigurableClassData
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import Connection
from watchdog.events import FileSystemEvent, PatternMatchingEventHandler
from watchdog.observers import Observer

#: The insert of one event log row, compiled once (see PooledSqliteEventLogStorage.store_event).
_INSERT_EVENT = SqlEventLogStorageTable.insert()
#: Event types whose rows Dagster also mirrors in the index shard or the run storage.
_RUN_STATUS_EVENTS = frozenset(EVENT_TYPE_TO_PIPELINE_RUN_STATUS)

#: Engines kept at once: the index shard, the run being written, and a few runs the UI is reading.
MAX_ENGINES = 8


#: Storages of this process, for :func:`_after_fork`.
_LIVE: weakref.WeakSet[PooledSqliteEventLogStorage] = weakref.WeakSet()


def _after_fork() -> None:
    for storage in list(_LIVE):
        storage._forget_engines()  # a forked child opens connections of its own


os.register_at_fork(after_in_child=_after_fork)


def _write_ahead(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    """Each new sqlite connection writes ahead (WAL) and syncs the file at checkpoints, not at every commit.

    Every event is a commit, and by default every commit waits for the disk (two fsyncs): 300 of them took
    0.27 s on this machine, against 0.01 s written ahead, and far longer while the disk was busy. The cost:
    after a power cut (not a crash of the process) the last events of a run may be missing from its history;
    the file stays consistent, and no business data is there (that is in the DuckDB store). A shard another
    process holds in the old mode keeps it (the change needs the file to itself): that connection then only
    syncs less often."""
    cursor = dbapi_connection.cursor()
    try:
        with suppress(sqlite3.OperationalError):  # "database is locked": another process has it open
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


@functools.cache
def _migrations() -> ScriptDirectory:
    """Dagster's sqlite event log migrations, read once per process (a ScriptDirectory keeps its revision map)."""
    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


#: What another process initialising the same shard at the same moment raises (the UI reading a run as it
#: starts): Dagster's _initdb tries again on these, and so does this class.
_CONCURRENT_INIT = re.compile(
    r"table [A-Za-z_]* already exists|database is locked|UNIQUE constraint failed: alembic_version.version_num"
)


def _create_run_shard_schema(engine: Engine, connection: Connection) -> None:
    """Dagster's event log schema in the empty shard of ``engine``, stamped (on ``connection``) with the head
    revision of its migrations: a new run shard, or the template new ones are copied from."""
    SqlEventLogStorageMetadata.create_all(engine)
    MigrationContext.configure(connection).stamp(_migrations(), "head")
    connection.commit()


def _write_template(path: str) -> None:
    """An empty run shard at ``path``: Dagster's schema, stamped with the head revision of its migrations."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        engine = create_engine(f"sqlite:///{staging}")
        try:
            with engine.connect() as connection:
                _create_run_shard_schema(engine, connection)
        finally:
            engine.dispose()
        os.replace(staging, path)  # whole or not at all, for every process
    finally:
        with suppress(FileNotFoundError):
            os.unlink(staging)


def default_base_dir() -> str:
    """Where Dagster's default storage keeps event logs: ``$DAGSTER_HOME/history/runs``.

    Without DAGSTER_HOME (a ``dagster`` command run from the repository, which reads ./dagster.yaml into a
    temporary instance), a temporary directory removed when the process exits, as Dagster's own is.
    """
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return os.path.join(home, "history", "runs")
    temporary = tempfile.mkdtemp(prefix="dagster-event-log-")
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    return temporary


class _RunWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watchdog of a run's shard (what streams a running run's events to the UI), woken by writes to
    the shard's ``-wal`` file as well as the shard itself.

    Dagster's watches the ``.db`` file alone. Its own storage closes the connection after every event, which
    checkpoints the log into the ``.db``; the kept connections here leave commits in the ``-wal`` until a
    checkpoint, so the UI showed a running run's events only when it ended.
    """

    def __init__(self, storage: SqliteEventLogStorage, run_id: str, callback: Any, cursor: str | None):
        super().__init__(storage, run_id, callback, cursor)
        PatternMatchingEventHandler.__init__(self, patterns=[self._log_path, f"{self._log_path}-wal"])

    def on_modified(self, event: FileSystemEvent) -> None:  # Dagster's asserts the path is the .db file
        self._process_log()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """:class:`SqliteEventLogStorage` reusing an engine, and its pooled connection, per shard.

    Configured in dagster.yaml; ``base_dir`` defaults to :func:`default_base_dir`::

        event_log_storage:
          module: pipelines.storage
          class: PooledSqliteEventLogStorage
    """

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # guarded by Dagster's own _db_lock
        self._schema_found: set[tuple[str, str]] = set()  # see has_table
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)
        _LIVE.add(self)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(base_dir=config_value.get("base_dir"), inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        """The kept engine of ``shard`` (the caller holds ``_db_lock``)."""
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _write_ahead)
        self._engines[shard] = engine
        while len(self._engines) > MAX_ENGINES:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """As Dagster's: a shard without a migration stamp gets the schema and the head revision's stamp; for a
        run's shard, with the migrations read once per process (:func:`_migrations`)."""
        if for_index_shard:  # created once, perhaps by an older Dagster: Dagster's own rules for old files
            super()._initdb(engine, for_index_shard=True)
            return
        for retries_left in range(10, -1, -1):
            try:
                with engine.connect() as connection:
                    if MigrationContext.configure(connection).get_current_revision() is None:
                        connection.execute(text("PRAGMA journal_mode=WAL;"))
                        _create_run_shard_schema(engine, connection)
                return
            except (exc.DatabaseError, sqlite3.DatabaseError) as error:
                if not retries_left or not _CONCURRENT_INIT.search(str(error)):
                    raise
                time.sleep(0.2)

    def _from_template(self, shard: str) -> None:
        """A run shard not created yet, as a copy of the template (see the module's notes), which is written first
        if missing. The copy is linked into place, so that a shard another process created meanwhile (the UI
        reading a run as it starts) is left as it is; on a file system without links :meth:`_initdb` stamps it."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return
        template = os.path.join(self._base_dir, ".templates", f"run-shard-{dg.__version__}.db")
        with suppress(OSError):
            if not os.path.exists(template):
                _write_template(template)
            fd, copy = tempfile.mkstemp(dir=self._base_dir, prefix=".run-shard-", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(template, copy)
                os.link(copy, path)
            finally:
                os.unlink(copy)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # type: ignore[override]
        # As Dagster's own, but with a kept engine, not one created and disposed of per use.
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                if shard != INDEX_SHARD_NAME:
                    self._from_template(shard)
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event(self, event: EventLogEntry) -> None:
        """As Dagster's; an event that concerns no asset, check or run status (a step starting or ending, its
        output, a log line: 79 of a batch run's 135 events) goes to its run's shard through one compiled INSERT
        with the row as parameters. Dagster's builds a new statement holding the row for each event, which
        SQLAlchemy then keys and looks up in its cache: 0.6 ms an event, against 0.4 ms."""
        dagster_type = event.dagster_event_type if event.is_dagster_event else None
        if dagster_type in ASSET_EVENTS or dagster_type in ASSET_CHECK_EVENTS or dagster_type in _RUN_STATUS_EVENTS:
            super().store_event(event)
            return
        with self.run_connection(event.run_id) as conn:
            conn.execute(_INSERT_EVENT, self._event_to_row(event))

    def has_table(self, table_name: str) -> bool:
        """As Dagster's (whether the index shard has the table), remembering a table once found.

        Dagster's opens an engine and a connection to the index shard to read its schema at every call, and
        calls it for every asset event and check evaluation it stores: about 60 calls a run, and the 1M
        bench's incremental run is about 40 ms shorter without them. A table found stays (migrations add
        tables, none drops one; :meth:`wipe` deletes the files and forgets them); a table not found is looked
        for again, since ``dagster instance migrate`` in another process may add it."""
        return self._found("table", table_name, super().has_table)

    def has_asset_key_col(self, column_name: str) -> bool:
        """As Dagster's (whether the index shard's ``asset_keys`` table has the column), remembering a column once
        found, as :meth:`has_table` does: Dagster reads the table's schema three times for each asset record it
        reads (19 reads a run of the 1M bench: 53 ms, a third of it these lookups and the next), and once for
        each asset event it stores (:meth:`_has_asset_key_col_on_connection`)."""
        return self._found("asset_keys column", column_name, super().has_asset_key_col)

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        dagsters = super()._has_asset_key_col_on_connection
        return self._found("asset_keys column", column_name, lambda name: dagsters(conn, name))

    def has_secondary_index(self, name: str) -> bool:
        """As Dagster's (whether a data migration of the index shard has completed), remembering one once found,
        as :meth:`has_table` does: Dagster asks twice for each asset record it reads, and a completed migration
        stays completed (none is undone; :meth:`wipe` forgets them)."""
        return self._found("secondary index", name, super().has_secondary_index)

    def _found(self, kind: str, name: str, look: Callable[[str], bool]) -> bool:
        """Whether the index shard has the ``kind`` called ``name``, asking ``look`` until it has."""
        if (kind, name) in self._schema_found:
            return True
        found = look(name)
        if found:
            self._schema_found.add((kind, name))
        return found

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        """As Dagster's, with a watchdog that the shard's write-ahead log wakes too (see :class:`_RunWatchdog`)."""
        observer: Any = self._obs  # Dagster declares it None until the first watch
        if not observer:
            observer = Observer()
            observer.start()
            self._obs = observer
        watchdog = _RunWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, observer.schedule(watchdog, self._base_dir, recursive=True))

    def _dispose_engines(self) -> None:
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def _forget_engines(self) -> None:
        # In a forked child the parent's connections are not ours to close (SQLAlchemy's advice for forks).
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines = OrderedDict()

    def wipe(self) -> None:
        self._dispose_engines()  # the run shards' files are deleted
        self._schema_found.clear()
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()
