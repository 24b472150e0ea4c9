"""Resources of the code location: the DuckDB store and the inbox it reads.

Values come from :func:`cdp.config.load_settings` when the definitions load (``make dev``) and from the
command line when ``cdp run`` materialises the graph; assets never read the environment themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from cdp.config import Settings, load_settings
from cdp.store import connect
from cdp.store import session as store_session

#: Dagster's metadata key for the rows of the table an asset is (TableMetadataSet's row_count): the asset
#: catalog and the asset's page show it.
ROW_COUNT = "dagster/row_count"
#: A run tag: the run's launcher prints what of the inbox no run reads itself (``cdp run``), so the raw assets
#: do not log it too.
INBOX_REPORTED = "cdp/inbox_reported"

#: The settings a run's resource carries (the rest come from cdp.yaml and CDP_* as load_settings reads them).
_SETTINGS = (
    "db_path", "home", "default_region", "match_threshold", "engine", "spark_master", "spark_staging", "threads",
    "memory_limit",
)  # fmt: skip


class CdpStore(dg.ConfigurableResource):
    """The DuckDB file every asset reads and writes, with the settings of the installation.

    In a run, the steps share one connection: the first step opens it, the end of the run closes (and so
    checkpoints) it. Opening a large store and checkpointing it costs tens of milliseconds, which a run of
    two dozen small incremental steps would otherwise pay fifty times. Outside a run, every
    :meth:`session` opens and closes its own connection.
    """

    db_path: str
    home: str = ".cdp"
    default_region: str = "GB"
    match_threshold: float = 0.9
    engine: str = "duckdb"
    spark_master: str = "local[2]"
    spark_staging: str = ""
    threads: int = 2
    memory_limit: str = "8GB"
    #: Rebuild every derived table from the raw rows instead of only what new batches changed.
    full_refresh: bool = False

    _in_run: bool = PrivateAttr(default=False)
    _con: duckdb.DuckDBPyConnection | None = PrivateAttr(default=None)
    #: Per table updated incrementally in this run: the checks that had verified it before, and the temp
    #: table (on the run's connection) of the customers the update wrote. See :meth:`scope_checks`.
    _check_scopes: dict[str, tuple[frozenset[str], str]] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True
        self._check_scopes = {}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._check_scopes = {}
        if self._con is not None:
            self._con.close()
            self._con = None

    def scope_checks(
        self, con: duckdb.DuckDBPyConnection, table: str, verified: frozenset[str], customers: str
    ) -> None:
        """After this run's step updated ``table`` incrementally: its checks in ``verified`` (those that had
        passed on the table as it was before the update, :func:`cdp.store.verified_checks`) may verify only
        the rows of the customers ``customers`` (SQL of one column of customer ids) names, the rows the
        update wrote. Only within the run, on its shared connection: a check evaluated anywhere else (the
        activation job, the UI, a step of another process) verifies its whole table."""
        if not verified or not self._in_run or con is not self._con:
            return
        scope = f"_check_scope_{table}"  # a table name of the code's own
        con.execute(f"CREATE OR REPLACE TEMP TABLE {scope} AS SELECT DISTINCT c AS customer_id FROM ({customers}) t(c)")
        self._check_scopes[table] = (verified, scope)

    def check_scope(self, table: str, check: str) -> str | None:
        """SQL of the customer ids ``check`` of ``table`` has to verify (:meth:`scope_checks`); None: all."""
        verified, scope = self._check_scopes.get(table, (frozenset(), ""))
        return f"SELECT customer_id FROM {scope}" if check in verified else None

    @classmethod
    def from_settings(cls, settings: Settings, full_refresh: bool = False) -> CdpStore:
        values: dict[str, Any] = {
            name: str(value) if isinstance(value, Path) else value
            for name, value in ((name, getattr(settings, name)) for name in _SETTINGS)
        }
        return cls(full_refresh=full_refresh, **values)

    @property
    def settings(self) -> Settings:
        return load_settings(**{name: getattr(self, name) for name in _SETTINGS})

    def connect(self) -> duckdb.DuckDBPyConnection:
        """The run's connection. An erasure interrupted before its file rewrite is finished first, whoever
        launched the run (``cdp run``, the Dagster UI, a schedule): a run must not work on, and copy forward,
        a file whose free blocks still hold an erased subject's bytes."""
        from consent.erasure import finish_interrupted

        con = connect(self.db_path, threads=self.threads, memory_limit=self.memory_limit)
        con, finished = finish_interrupted(self.settings, con)
        if finished:
            con.close()
            for request_id in finished:
                dg.get_dagster_logger().info(f"finished the interrupted erasure {request_id} (file rewritten)")
            con = connect(self.db_path, threads=self.threads, memory_limit=self.memory_limit)
        return con

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one step: the run's shared one in a run, else one closed when the block ends."""
        if not self._in_run:
            with store_session(self.db_path, threads=self.threads, memory_limit=self.memory_limit) as con:
                yield con
            return
        if self._con is None:
            self._con = self.connect()
        try:
            yield self._con
        except BaseException:
            with suppress(duckdb.TransactionException):  # no transaction open: nothing to undo
                self._con.execute("ROLLBACK")  # a failed step leaves nothing half-done for the next one
            raise


class Inbox(dg.ConfigurableResource):
    """The inbox folder: one sub-folder per source, one file per export batch."""

    path: str

    @property
    def folder(self) -> Path:
        return Path(self.path)


def default_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or load_settings()
    return {"store": CdpStore.from_settings(settings), "inbox": Inbox(path=str(settings.inbox))}
