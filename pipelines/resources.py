"""Resources of the code location: the DuckDB store and the inbox it reads.

Values come from :func:`cdp.config.load_settings` when the definitions load (``make dev``) and from the
command line when ``cdp run`` materialises the graph; assets never read the environment themselves.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import dagster as dg
import duckdb

from cdp.config import Settings, load_settings
from cdp.store import connect
from cdp.store import session as store_session


class CdpStore(dg.ConfigurableResource):
    """The DuckDB file every asset reads and writes, with the settings of the installation."""

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

    @classmethod
    def from_settings(cls, settings: Settings, full_refresh: bool = False) -> CdpStore:
        return cls(
            full_refresh=full_refresh,
            db_path=str(settings.db_path),
            home=str(settings.home),
            default_region=settings.default_region,
            match_threshold=settings.match_threshold,
            engine=settings.engine,
            spark_master=settings.spark_master,
            spark_staging=settings.spark_staging,
            threads=settings.threads,
            memory_limit=settings.memory_limit,
        )

    @property
    def settings(self) -> Settings:
        return load_settings(
            db_path=self.db_path,
            home=self.home,
            default_region=self.default_region,
            match_threshold=self.match_threshold,
            engine=self.engine,
            spark_master=self.spark_master,
            spark_staging=self.spark_staging,
            threads=self.threads,
            memory_limit=self.memory_limit,
        )

    def connect(self) -> duckdb.DuckDBPyConnection:
        return connect(self.db_path, threads=self.threads, memory_limit=self.memory_limit)

    def session(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection for one step, closed (and so checkpointed) when the block ends."""
        return store_session(self.db_path, threads=self.threads, memory_limit=self.memory_limit)


class Inbox(dg.ConfigurableResource):
    """The inbox folder: one sub-folder per source, one file per export batch."""

    path: str

    @property
    def folder(self) -> Path:
        return Path(self.path)


def default_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or load_settings()
    return {"store": CdpStore.from_settings(settings), "inbox": Inbox(path=str(settings.inbox))}
