"""The DuckDB store: connections, the schema of the ingestion layer, and the source column contract.

Every table of the platform lives in one DuckDB file. This module owns the raw, quarantine, ledger and
staging tables; ``identity`` and ``consent`` own the DDL of theirs and call :func:`connect` like
everyone else.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from cdp.errors import CdpError, StoreBusyError

SOURCES = ("web", "app", "store", "crm", "consent")
RECORD_SOURCES = ("web", "app", "store", "crm")


@dataclass(frozen=True)
class SourceSpec:
    """One inbox source: its key, its required columns and the typed columns of its raw table."""

    name: str
    key: str
    time_column: str | None
    required: tuple[str, ...]
    #: column -> DuckDB type of the raw table; VARCHAR columns are kept as written.
    columns: dict[str, str]
    #: The column that says whose record a key is (a receipt's store, an event's cookie or device), if the
    #: source has one. Staging keeps one version of each key, so a row whose key another owner already holds
    #: (two stores numbering their receipts alike, an SDK reusing an event id on another device) is not a new
    #: version of that record: ingestion quarantines it, with its reason.
    owner: str | None = None


_MONEY = "DECIMAL(18,2)"
SUBJECT_IDENTIFIERS = ("email", "phone", "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")

SOURCE_SPECS: dict[str, SourceSpec] = {
    "web": SourceSpec(
        "web",
        key="event_id",
        time_column="event_time",
        required=("event_id", "event_time", "anonymous_id"),
        owner="anonymous_id",
        columns={
            "event_id": "VARCHAR",
            "event_time": "TIMESTAMP",
            "anonymous_id": "VARCHAR",
            "user_id": "VARCHAR",
            "email": "VARCHAR",
            "event_type": "VARCHAR",
            "page_url": "VARCHAR",
            "order_id": "VARCHAR",
            "revenue": _MONEY,
            "currency": "VARCHAR",
            "utm_source": "VARCHAR",
            "utm_medium": "VARCHAR",
            "utm_campaign": "VARCHAR",
        },
    ),
    "app": SourceSpec(
        "app",
        key="event_id",
        time_column="event_time",
        required=("event_id", "event_time", "device_id"),
        owner="device_id",
        columns={
            "event_id": "VARCHAR",
            "event_time": "TIMESTAMP",
            "device_id": "VARCHAR",
            "user_id": "VARCHAR",
            "email": "VARCHAR",
            "phone": "VARCHAR",
            "event_type": "VARCHAR",
            "platform": "VARCHAR",
            "app_version": "VARCHAR",
            "order_id": "VARCHAR",
            "revenue": _MONEY,
            "currency": "VARCHAR",
        },
    ),
    "store": SourceSpec(
        "store",
        key="transaction_id",
        time_column="transaction_time",
        required=("transaction_id", "transaction_time"),
        owner="store_id",
        columns={
            "transaction_id": "VARCHAR",
            "transaction_time": "TIMESTAMP",
            "store_id": "VARCHAR",
            "loyalty_id": "VARCHAR",
            "email": "VARCHAR",
            "phone": "VARCHAR",
            "first_name": "VARCHAR",
            "last_name": "VARCHAR",
            "postcode": "VARCHAR",
            "amount": _MONEY,
            "currency": "VARCHAR",
            "items": "INTEGER",
        },
    ),
    "crm": SourceSpec(
        "crm",
        key="crm_id",
        time_column="updated_at",
        required=("crm_id",),
        columns={
            "crm_id": "VARCHAR",
            "first_name": "VARCHAR",
            "last_name": "VARCHAR",
            "email": "VARCHAR",
            "phone": "VARCHAR",
            "date_of_birth": "DATE",
            "address_line1": "VARCHAR",
            "address_line2": "VARCHAR",
            "city": "VARCHAR",
            "postcode": "VARCHAR",
            "country": "VARCHAR",
            "loyalty_id": "VARCHAR",
            "user_id": "VARCHAR",
            "created_at": "TIMESTAMP",
            "updated_at": "TIMESTAMP",
        },
    ),
    "consent": SourceSpec(
        "consent",
        key="consent_id",
        time_column="event_time",
        required=("consent_id", "event_time", "purpose", "status"),
        columns={
            "consent_id": "VARCHAR",
            "event_time": "TIMESTAMP",
            "purpose": "VARCHAR",
            "status": "VARCHAR",
            "source": "VARCHAR",
            "policy_version": "VARCHAR",
            "email": "VARCHAR",
            "phone": "VARCHAR",
            "user_id": "VARCHAR",
            "crm_id": "VARCHAR",
            "loyalty_id": "VARCHAR",
            "device_id": "VARCHAR",
            "anonymous_id": "VARCHAR",
        },
    ),
}

# Columns every raw table carries besides the source's own.
RAW_META = {"batch_id": "VARCHAR", "file": "VARCHAR", "row_number": "BIGINT", "extra": "JSON"}

CORE_DDL = [
    """CREATE TABLE IF NOT EXISTS ingest_batches (
        batch_id VARCHAR PRIMARY KEY, source VARCHAR, file VARCHAR, content_hash VARCHAR,
        rows_in BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT, rows_suppressed BIGINT,
        status VARCHAR, error VARCHAR, ingested_at TIMESTAMP)""",
    # The content hash of each inbox file as last read, with what identifies that version of the file (size,
    # inode, change times): a file that still matches is not read again to be recognised as ingested.
    """CREATE TABLE IF NOT EXISTS inbox_file_hashes (
        path VARCHAR PRIMARY KEY, size BIGINT, inode BIGINT, mtime_ns BIGINT, ctime_ns BIGINT,
        content_hash VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        batch_id VARCHAR, source VARCHAR, file VARCHAR, row_number BIGINT, reason VARCHAR, raw JSON,
        quarantined_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS suppression_list (
        identifier_type VARCHAR, identifier_hash VARCHAR, request_id VARCHAR, created_at TIMESTAMP,
        PRIMARY KEY (identifier_type, identifier_hash))""",
]


def raw_table(source: str) -> str:
    return f"raw_{source}"


def raw_ddl(source: str) -> str:
    spec = SOURCE_SPECS[source]
    cols = {**spec.columns, **RAW_META}
    body = ", ".join(f"{name} {kind}" for name, kind in cols.items())
    return f"CREATE TABLE IF NOT EXISTS {raw_table(source)} ({body})"


def ensure_core_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in CORE_DDL:
        con.execute(ddl)
    for source in SOURCES:
        con.execute(raw_ddl(source))


def require_store(db_path: Path) -> None:
    """Refuse a store file that does not exist: a mistyped ``--db`` must not become a new, empty store."""
    if not db_path.exists():
        raise CdpError(f"{db_path}: no database yet; run `cdp run --inbox DIR` first")


@contextmanager
def file_swap_guard(db_path: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on ``<db>.lock`` around opening the store (shared) and around putting a rewritten file
    in its place (exclusive, :func:`consent.erasure.rewrite_database`). DuckDB's own lock is gone once the
    old file is closed, and a process opening it before the new one is moved in would write where nobody
    reads again: an opener waits for the swap instead (a fraction of a second)."""
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        if exclusive:
            raise
        yield  # no folder, or one this user may only read: DuckDB says what is wrong, nobody rewrites here
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open(db_path: Path, read_only: bool, create: bool = True) -> duckdb.DuckDBPyConnection:
    if create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    # The database and its WAL are readable by their owner only. DuckDB creates the WAL at the first write,
    # long after the file is opened, and a killed process leaves it behind: the process keeps group and
    # others out of what it creates from now on (exports and access documents are owner-only anyway).
    old = os.umask(0o077)
    try:
        with file_swap_guard(db_path, exclusive=False):
            return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "lock" in reason.lower():
            raise StoreBusyError(
                f"{db_path}: the database is in use by another process (a pipeline run?); try again when it ends"
            ) from None
        # DuckDB's own text repeats the absolute path; one line naming the path as given says it better.
        if db_path.is_dir():
            raise CdpError(f"{db_path}: is a directory, not a DuckDB database file") from None
        if "not a valid DuckDB database file" in reason:
            raise CdpError(f"{db_path}: not a DuckDB database file (or a damaged one)") from None
        raise CdpError(f"{db_path}: cannot open the database ({reason.removeprefix('IO Error: ')})") from None
    finally:
        os.umask(old | 0o077)


def connect(
    db_path: Path | str,
    read_only: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
    create: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open the store, creating the core schema when writable.

    A read-only store, and a writable one with ``create=False`` (every command that reads or changes an
    existing store), must exist already: see :func:`require_store`. Only a pipeline run (and what builds
    a store on purpose, such as tests) creates the file.
    """
    db_path = Path(db_path)
    if read_only or not create:
        require_store(db_path)
    con = _open(db_path, read_only, create=create)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")  # a setting, not user text
    # Times in the store are UTC: now(), current_date and casts to TIMESTAMP must not follow the machine's zone.
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        ensure_core_schema(con)
    return con


@contextmanager
def session(
    db_path: Path | str, read_only: bool = False, threads: int | None = None, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is closed (and so checkpointed) when the block ends."""
    con = connect(db_path, read_only=read_only, threads=threads, memory_limit=memory_limit)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one transaction: committed when it ends, rolled back when it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


#: Tables :func:`drop_primary_key` has looked at, per open connection.
_UNKEYED: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, set[str]] = weakref.WeakKeyDictionary()


def drop_primary_key(con: duckdb.DuckDBPyConnection, ddl: str) -> bool:
    """Declare the table of ``ddl`` (its ``CREATE TABLE IF NOT EXISTS``, without a primary key) anew, rows kept,
    when a store made before gave it a primary key; returns whether it did. Outside a transaction (it runs its
    own).

    A primary key is an ART index that DuckDB keeps beside the table and writes again at every checkpoint where
    the table changed: the consent ledger's, the consent state's and the phone map's were three quarters of
    what the 1M bench's 1% batch made the final checkpoint write (54 MB for a 13 MB WAL, the file 48 MB larger),
    about 0.1 s of the run. Those tables' rows are unique by construction (a check counts the consent state's
    duplicates, a test the ledger's). Looked at once a connection (nothing here declares a key again)."""
    table = _declared_table(ddl)
    seen = _UNKEYED.setdefault(con, set())
    if table in seen:
        return False
    seen.add(table)
    # The table's own columns, not duckdb_constraints(), which reads every table's (7 ms against 1 ms, once a run).
    if not table_exists(con, table):  # not declared yet: nothing made it with a key
        return False
    keyed = con.execute("SELECT count(*) FROM pragma_table_info(?) WHERE pk", [_qualified(con, table)]).fetchall()
    if not keyed[0][0]:
        return False
    with transaction(con):
        con.execute(f"ALTER TABLE {table} RENAME TO {table}__keyed")  # table names of the code's own
        con.execute(ddl)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {table}__keyed")
        con.execute(f"DROP TABLE {table}__keyed")
    return True


#: Ledgers of the batches a step has taken in, per target table (batch ids only, no personal data):
#: ``staged_batches`` (staging), ``validated_batches`` (expectation suites that passed).
BATCH_LEDGERS = ("staged_batches", "validated_batches")


def _ensure_batch_ledger(con: duckdb.DuckDBPyConnection, ledger: str) -> None:
    if ledger not in BATCH_LEDGERS:
        raise ValueError(f"not a batch ledger: {ledger!r}")
    ensure_table(con, f"CREATE TABLE IF NOT EXISTS {ledger} (table_name VARCHAR, batch_id VARCHAR)")


def sql_strings(values: Iterable[str]) -> str:
    """Values of the code's own (batch ids, table and source names, constants) as a comma-separated list of SQL
    string literals, for an ``IN (...)``; never user text."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def batches_not_in(con: duckdb.DuckDBPyConnection, ledger: str, name: str, sources: tuple[str, ...]) -> list[str]:
    """Batches with rows in the ``sources`` tables that ``ledger`` does not list for ``name`` (all of them
    when it lists none), in order. ``ledger`` is one of :data:`BATCH_LEDGERS`; tables are the code's own."""
    return sorted(b for batches in new_batches_by_table(con, ledger, name, sources).values() for b in batches)


def new_batches_by_table(
    con: duckdb.DuckDBPyConnection, ledger: str, name: str, sources: tuple[str, ...]
) -> dict[str, list[str]]:
    """:func:`batches_not_in`, per source table (only the tables with such batches). A batch is one inbox
    file, so it has rows in one table only, and a scan filtered by its table's own batches reads less: on the
    1M bench's store, raw_app by the one batch of its own 0.7 ms, by the five of a 1% batch 3.5 ms."""
    _ensure_batch_ledger(con, ledger)
    union = " UNION ALL ".join(
        f"SELECT '{source}' AS t, batch_id FROM (SELECT DISTINCT batch_id FROM {source})" for source in sources
    )
    rows = con.execute(
        f"SELECT t, batch_id FROM ({union}) WHERE batch_id NOT IN "
        f"(SELECT batch_id FROM {ledger} WHERE table_name = ?) ORDER BY 1, 2",
        [name],
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, batch in rows:
        out.setdefault(table, []).append(batch)
    return out


def record_batches(con: duckdb.DuckDBPyConnection, ledger: str, name: str, batches: list[str]) -> None:
    """Add ``batches`` to ``ledger`` for ``name``."""
    _ensure_batch_ledger(con, ledger)
    if batches:
        con.executemany(f"INSERT INTO {ledger} VALUES (?, ?)", [(name, b) for b in batches])


def forget_batches(con: duckdb.DuckDBPyConnection, ledger: str, name: str) -> None:
    """Remove every batch ``ledger`` lists for ``name`` (a table rebuilt from all of them)."""
    _ensure_batch_ledger(con, ledger)
    con.execute(f"DELETE FROM {ledger} WHERE table_name = ?", [name])


#: The asset checks that passed on a table as it is now (check names only). A check that passes adds itself
#: (:func:`mark_verified`); whatever writes the table removes them all (:func:`unverify`), in the transaction
#: of its write. A check run just after an incremental update of the table, by the run that made it, may
#: then verify only the rows that update wrote, if it had verified the table before (see
#: ``pipelines.checks.scoped_check``), as the expectation suites validate only batches they have not passed.
CHECK_PASSES_DDL = "CREATE TABLE IF NOT EXISTS check_passes (table_name VARCHAR, check_name VARCHAR)"


def verified_checks(con: duckdb.DuckDBPyConnection, table: str) -> frozenset[str]:
    """The checks that passed on ``table`` since it was last written."""
    ensure_table(con, CHECK_PASSES_DDL)
    rows = con.execute("SELECT check_name FROM check_passes WHERE table_name = ?", [table]).fetchall()
    return frozenset(name for (name,) in rows)


def mark_verified(con: duckdb.DuckDBPyConnection, table: str, check: str) -> None:
    """Record that ``check`` passed on ``table`` as it is now."""
    ensure_table(con, CHECK_PASSES_DDL)
    con.execute(
        """INSERT INTO check_passes SELECT $table, $check WHERE NOT EXISTS (
               SELECT 1 FROM check_passes WHERE table_name = $table AND check_name = $check)""",
        {"table": table, "check": check},
    )


def unverify(con: duckdb.DuckDBPyConnection, table: str | None = None) -> None:
    """``table`` (every table when None) changed: no check has verified it as it is now. Call it in the
    transaction of the write, so that a write that commits never leaves a check's word standing."""
    ensure_table(con, CHECK_PASSES_DDL)
    if table is None:
        con.execute("DELETE FROM check_passes")
    else:
        con.execute("DELETE FROM check_passes WHERE table_name = ?", [table])


def quarantine_reasons(con: duckdb.DuckDBPyConnection, batch_ids: list[str]) -> dict[str, int]:
    """The quarantined rows of ``batch_ids`` by reason, most first (reasons are fixed texts naming columns,
    never values)."""
    rows = con.execute(
        "SELECT reason, count(*) FROM quarantine WHERE batch_id IN (SELECT unnest($ids)) GROUP BY 1 ORDER BY 2 DESC, 1",
        {"ids": batch_ids},
    ).fetchall()
    return dict(rows)


def code_digest(*files: str | Path | Traversable) -> str:
    """SHA-256 (16 hex digits) of ``files``' bytes, in order; a missing file counts as empty. Stored as the
    basis of a derived table, it makes the next run rebuild the table in full after an edit to the code (or
    data) that derives it, whether or not anyone remembered to bump a version."""
    digest = hashlib.sha256()
    for file in files:
        path = Path(file) if isinstance(file, str) else file
        digest.update((path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()[:16]


#: The default database of each open connection, for :func:`table_exists`.
_DATABASES: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, str] = weakref.WeakKeyDictionary()


def table_exists(con: duckdb.DuckDBPyConnection, name: str, temporary: bool = False) -> bool:
    """Whether the store (schema ``main`` of the connection's database) has table ``name``; with ``temporary``,
    whether the connection has temp table ``name``.

    Asked by binding a relation to it, which a missing table fails without aborting the caller's transaction
    (a query of it would). ``duckdb_tables()`` writes out every table's CREATE statement, the connection's
    temp tables included, to answer: 1-2 ms against 0.1-0.2 ms, 29 times in a batch of the 1M bench."""
    try:
        return con.table(_qualified(con, name, temporary)).type == "TABLE_RELATION"  # a view is a query relation
    except duckdb.CatalogException:
        return False


def _qualified(con: duckdb.DuckDBPyConnection, name: str, temporary: bool = False) -> str:
    """``name`` in schema ``main`` of the connection's database (or of its temp tables), quoted: a temp table's
    schema is ``main`` too, so that ``main.name`` alone could name a temp table."""
    catalog = "temp" if temporary else _DATABASES.get(con)
    if catalog is None:  # a query, 0.1-0.5 ms: asked once a connection (nothing here switches databases)
        catalog = _DATABASES[con] = con.execute("SELECT current_database()").fetchall()[0][0]
    return ".".join('"' + part.replace('"', '""') + '"' for part in (catalog, "main", name))


_DECLARED = re.compile(r"\s*CREATE TABLE IF NOT EXISTS\s+(\w+)", re.IGNORECASE)


def _declared_table(ddl: str) -> str:
    """The table a ``CREATE TABLE IF NOT EXISTS`` of the code's own declares."""
    declared = _DECLARED.match(ddl)
    if declared is None:
        raise ValueError(f"a table's declaration if it does not exist was expected, not {ddl[:30]!r}")
    return declared.group(1)


def ensure_table(con: duckdb.DuckDBPyConnection, ddl: str) -> None:
    """Run ``ddl`` (``CREATE TABLE IF NOT EXISTS <name> ...``, one of the code's own) unless the store has the
    table: asked by binding (:func:`table_exists`, 0.1-0.2 ms) before a statement that DuckDB parses, binds
    and runs whatever (0.5-1 ms). A 1% batch of the 1M bench declared its bookkeeping tables ~50 times."""
    if not table_exists(con, _declared_table(ddl)):
        con.execute(ddl)


#: Column option for the id columns incremental runs look rows up by (``unit_id``, ``customer_id``, ...).
#:
#: A batch finds its few thousand rows in tables of a million by scanning the id column whole (DuckDB has no
#: index join), and for random ids such as ``web:<uuid>`` most of such a scan was decompressing them: DuckDB's
#: string compression (DICT_FSST) halves them on disk, and scanning the 800k ``customer_source_records`` for
#: 5,000 customers took 36-40 ms compressed against 16 ms stored plain. With these columns plain, the 1M
#: bench's store file grows from 287 to 401 MB, and its 1% batch took 12% less CPU time and 9% less time
#: (six runs of each layout, alternating; bench/HISTORY.md).
UNCOMPRESSED = "USING COMPRESSION uncompressed"


def create_table_as(
    con: duckdb.DuckDBPyConnection,
    table: str,
    query: str,
    params: list | dict | None = None,
    uncompressed: tuple[str, ...] = (),
) -> None:
    """``CREATE OR REPLACE TABLE <table> AS <query>``, with the columns ``uncompressed`` stored plain
    (:data:`UNCOMPRESSED`): ``CREATE TABLE ... AS`` takes no column options, so the table is declared from
    the query's columns and filled by it. ``table`` and ``query`` are the caller's SQL, never user text."""
    columns = con.execute(f"DESCRIBE {query}", params).fetchall()
    missing = set(uncompressed) - {name for name, *_ in columns}
    if missing:
        raise ValueError(f"{table}: no column {', '.join(sorted(missing))} in its query")
    declared = ", ".join(
        f'"{name}" {kind}' + (f" {UNCOMPRESSED}" if name in uncompressed else "") for name, kind, *_ in columns
    )
    con.execute(f"CREATE OR REPLACE TABLE {table} ({declared})")
    con.execute(f"INSERT INTO {table} {query}", params)
